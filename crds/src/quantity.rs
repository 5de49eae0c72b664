//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e9`) and container resources,
//! checked before a stack's objects are rendered.
//!
//! The CRD takes `resources` as Kubernetes' own `ResourceRequirements`, whose schema accepts any
//! string or integer. A CEL rule cannot check them: the API server prices `isQuantity` over those
//! unbounded maps at twice its budget even with the maps bounded, and refuses the CRD. So the
//! operator checks them, and refuses a stack with a bad one before anything is applied, naming
//! the field in its status, where the API server would otherwise refuse the rendered Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Whether `s` is a quantity a container's requests and limits take: a non-negative decimal
/// number (`2`, `0.5`, `.5`, `5.`), then nothing, a decimal SI suffix (`n u m k M G T P E`), a
/// binary one (`Ki Mi Gi Ti Pi Ei`) or an exponent (`e3`, `E-2`). The grammar of Kubernetes'
/// `resource.ParseQuantity`; resources may not be negative.
pub fn is_quantity(s: &str) -> bool {
    value(s).is_some()
}

/// The number a quantity stands for (`1.5Gi` → 1610612736, `500m` → 0.5), or `None` for a
/// string that is not one ([`is_quantity`]). A float: enough to compare a request with a limit.
pub fn value(s: &str) -> Option<f64> {
    if s.starts_with('-') {
        return None;
    }
    parse(s)
}

/// A quantity's number, signed (`-1`, `+2`, `500m`), or `None`: also how the operator compares
/// the quantities it wrote with the canonical forms the API server gives back.
pub fn parse(s: &str) -> Option<f64> {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let number_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exponent.parse::<i32>().ok()?)
        }
    };
    let sign = if s.starts_with('-') { -1.0 } else { 1.0 };
    Some(sign * number * scale)
}

/// Resource names a container may request without a domain.
const STANDARD: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// What the API server refuses in a container's `resources`, first found: the field below
/// `resources` (`limits.cpu`) and why. Names must be standard (`cpu`, `memory`,
/// `ephemeral-storage`, `hugepages-<size>`) or fully qualified (`example.com/device`, outside
/// `kubernetes.io`); values quantities; a request at most its limit; an extended resource or
/// huge pages whole numbers requested only as limited, and huge pages beside cpu or memory; no
/// dynamic resource claims (a claim must name one of the pod's, and the operator declares none).
pub fn resources_error(resources: &ResourceRequirements) -> Option<(String, String)> {
    if let Some(claim) = resources.claims.iter().flatten().next() {
        return Some((
            "claims".into(),
            format!(
                "{:?}: dynamic resource claims are not supported (the operator declares none on its pods)",
                claim.name
            ),
        ));
    }
    let empty = BTreeMap::new();
    let limits = resources.limits.as_ref().unwrap_or(&empty);
    let requests = resources.requests.as_ref().unwrap_or(&empty);
    let sides: [(&str, &BTreeMap<String, Quantity>); 2] = [("limits", limits), ("requests", requests)];
    for (side, map) in sides {
        for (name, q) in map {
            let field = format!("{side}.{name}");
            if let Some(why) = name_error(name) {
                return Some((field, format!("{name:?} {why}")));
            }
            if !is_quantity(&q.0) {
                return Some((
                    field,
                    format!("{:?} is not a Kubernetes quantity (500m, 2, 1.5Gi, 512Mi)", q.0),
                ));
            }
        }
    }
    // Extended resources and huge pages cannot be overcommitted, and come in whole numbers.
    let whole = |name: &str| name.contains('/') || name.starts_with("hugepages-");
    for (name, request) in requests {
        let request = value(&request.0).unwrap_or_default();
        let limit = limits.get(name).and_then(|l| value(&l.0));
        let why = match limit {
            Some(limit) if request > limit => format!("{request} is more than its limit, {limit}"),
            Some(limit) if whole(name) && request != limit => {
                format!("must equal its limit ({limit}): {name} cannot be overcommitted")
            }
            None if whole(name) => format!("needs a limit equal to it: {name} cannot be overcommitted"),
            _ => continue,
        };
        return Some((format!("requests.{name}"), why));
    }
    for (name, limit) in limits {
        if whole(name) && value(&limit.0).unwrap_or_default().fract() != 0.0 {
            return Some((format!("limits.{name}"), format!("{name} takes whole numbers")));
        }
    }
    let huge_pages = limits
        .keys()
        .chain(requests.keys())
        .any(|n| n.starts_with("hugepages-"));
    let cpu_or_memory = ["cpu", "memory"]
        .iter()
        .any(|r| limits.contains_key(*r) || requests.contains_key(*r));
    if huge_pages && !cpu_or_memory {
        return Some((
            "limits".into(),
            "huge pages need a cpu or memory request or limit beside them".into(),
        ));
    }
    None
}

/// Why `name` is not a resource a container may name, or `None`.
fn name_error(name: &str) -> Option<&'static str> {
    if STANDARD.contains(&name) {
        return None;
    }
    if let Some(size) = name.strip_prefix("hugepages-") {
        return (!is_quantity(size)).then_some("is not hugepages-<size> (hugepages-2Mi)");
    }
    let Some((domain, _)) = name.split_once('/') else {
        return Some(
            "is not a standard resource (cpu, memory, ephemeral-storage, hugepages-<size>) or a fully qualified one (example.com/device)",
        );
    };
    let qualified = crate::names::valid_label_key(name);
    if !qualified {
        return Some("is not a fully qualified resource name (example.com/device)");
    }
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") || domain.starts_with("requests.") {
        return Some("is in a domain reserved for Kubernetes' own resources");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_people_write_pass() {
        for ok in [
            "0", "2", "500m", "0.5", ".5", "5.", "1.5Gi", "512Mi", "1Ki", "2Ti", "1Pi", "1Ei", "100k", "1M", "2G",
            "3T", "4P", "5E", "250u", "100n", "1e9", "1E3", "1e-3", "1e+2", "+1", "1.25e2",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "", "lots", "1 GB", "1GB", "1gi", "1.5.2", ".", "m", "Gi", "-1", "-500m", "1e", "1e1.5", "1ee3", "1Gii",
            " 1", "1 ", "1,5", "0x10", "1K", "ünï", "1e+", "++1",
        ] {
            assert!(!is_quantity(bad), "{bad:?}");
        }
    }

    #[test]
    fn values_compare_across_suffixes() {
        assert_eq!(value("500m"), Some(0.5));
        assert_eq!(value("1Gi"), Some(1_073_741_824.0));
        assert_eq!(value("1e3"), Some(1000.0));
        assert_eq!(value(".5"), Some(0.5));
        assert_eq!(value("5."), Some(5.0));
        assert!(value("1.5Gi") > value("1G"));
        assert_eq!(value("lots"), None);
        // `parse`, as the operator's diff compares the quantities it wrote with the server's.
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("1Gi"), Some(1073741824.0));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1.5k"), Some(1500.0));
        assert_eq!(parse("-1"), Some(-1.0));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("1Xi"), None);
        assert_eq!(parse(""), None);
    }

    fn resources(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> ResourceRequirements {
        let q = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            )
        };
        ResourceRequirements {
            limits: q(limits),
            requests: q(requests),
            ..Default::default()
        }
    }

    #[test]
    fn what_the_api_server_accepts_passes() {
        for (limits, requests) in [
            (&[("cpu", "2"), ("memory", "1Gi")][..], &[("cpu", "500m")][..]),
            (&[][..], &[][..]),
            (&[("cpu", "1")][..], &[("cpu", "1000m")][..]),
            (&[("example.com/fpga", "2")][..], &[("example.com/fpga", "2")][..]),
            (
                &[("hugepages-2Mi", "100Mi"), ("memory", "1Gi")][..],
                &[("hugepages-2Mi", "100Mi")][..],
            ),
            (&[("ephemeral-storage", "1e9")][..], &[][..]),
        ] {
            assert_eq!(
                resources_error(&resources(limits, requests)),
                None,
                "{limits:?} {requests:?}"
            );
        }
        assert_eq!(resources_error(&ResourceRequirements::default()), None);
    }

    #[test]
    fn what_the_api_server_refuses_is_named_by_field() {
        let err = |limits: &[(&str, &str)], requests: &[(&str, &str)]| {
            resources_error(&resources(limits, requests)).expect("refused")
        };
        let (field, why) = err(&[("cpu", "2")], &[("memory", "lots")]);
        assert_eq!(field, "requests.memory");
        assert!(why.starts_with("\"lots\" is not a Kubernetes quantity"), "{why}");
        for name in ["a", "zone", "gpu", "CPU"] {
            let (field, why) = err(&[(name, "1")], &[]);
            assert_eq!(field, format!("limits.{name}"));
            assert!(why.contains("is not a standard resource"), "{why}");
        }
        let (_, why) = err(&[("Example.com/x", "1")], &[]);
        assert!(why.contains("fully qualified"), "{why}");
        let (_, why) = err(&[("kubernetes.io/x", "1")], &[]);
        assert!(why.contains("reserved"), "{why}");
        let (_, why) = err(&[("hugepages-big", "1")], &[]);
        assert!(why.contains("hugepages-<size>"), "{why}");
        let (field, why) = err(&[("cpu", "500m")], &[("cpu", "2")]);
        assert_eq!(
            (field.as_str(), why.as_str()),
            ("requests.cpu", "2 is more than its limit, 0.5")
        );
        let (field, why) = err(&[("example.com/fpga", "2")], &[("example.com/fpga", "1")]);
        assert_eq!(field, "requests.example.com/fpga");
        assert!(why.starts_with("must equal its limit"), "{why}");
        let (_, why) = err(&[], &[("example.com/fpga", "1")]);
        assert!(why.starts_with("needs a limit equal to it"), "{why}");
        let (field, _) = err(&[("example.com/fpga", "1500m")], &[]);
        assert_eq!(field, "limits.example.com/fpga");
        let claimed = ResourceRequirements {
            claims: Some(vec![k8s_openapi::api::core::v1::ResourceClaim {
                name: "gpu".into(),
                request: None,
            }]),
            ..Default::default()
        };
        let (field, why) = resources_error(&claimed).expect("refused");
        assert_eq!(field, "claims");
        assert!(
            why.starts_with("\"gpu\": dynamic resource claims are not supported"),
            "{why}"
        );
        let (field, why) = err(&[("hugepages-2Mi", "100Mi")], &[]);
        assert_eq!(field, "limits");
        assert!(why.starts_with("huge pages need"), "{why}");
    }
}
