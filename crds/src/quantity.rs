//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e9`), checked before a stack's
//! objects are rendered.
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
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return false;
    }
    match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        _ => suffix.strip_prefix(['e', 'E']).is_some_and(|exponent| {
            let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            !exponent.is_empty() && exponent.bytes().all(|b| b.is_ascii_digit())
        }),
    }
}

/// The first request or limit of `resources` that is not a quantity: its path below
/// `resources` (`limits.cpu`) and its value.
pub fn first_bad_quantity(resources: &ResourceRequirements) -> Option<(String, String)> {
    let sides: [(&str, &Option<BTreeMap<String, Quantity>>); 2] =
        [("limits", &resources.limits), ("requests", &resources.requests)];
    sides.into_iter().find_map(|(side, map)| {
        map.iter()
            .flatten()
            .find(|(_, q)| !is_quantity(&q.0))
            .map(|(name, q)| (format!("{side}.{name}"), q.0.clone()))
    })
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
    fn the_first_bad_request_or_limit_is_named() {
        let q = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            )
        };
        let good = ResourceRequirements {
            limits: q(&[("cpu", "2"), ("memory", "1Gi")]),
            requests: q(&[("cpu", "500m")]),
            ..Default::default()
        };
        assert_eq!(first_bad_quantity(&good), None);
        assert_eq!(first_bad_quantity(&ResourceRequirements::default()), None);
        let bad = ResourceRequirements {
            requests: q(&[("cpu", "500m"), ("memory", "lots")]),
            ..good
        };
        assert_eq!(
            first_bad_quantity(&bad),
            Some(("requests.memory".into(), "lots".into()))
        );
    }
}
