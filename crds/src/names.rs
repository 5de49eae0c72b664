//! Kubernetes' name rules that the CRD's own types cannot state: label keys (qualified names,
//! which resource names and node selector keys are too) and label values.

/// Whether `value` may be a label value: empty, or at most 63 characters of letters, digits,
/// `-`, `_` and `.`, beginning and ending with a letter or digit.
pub fn valid_label_value(value: &str) -> bool {
    value.is_empty() || valid_name_part(value)
}

/// Whether `key` may be a label key (or a node selector's, or a toleration's): a name part
/// (as a non-empty label value), with an optional DNS-1123 subdomain prefix and `/` before it
/// (`nvidia.com/gpu.product`).
pub fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                let b = part.as_bytes();
                !b.is_empty()
                    && b[0].is_ascii_alphanumeric()
                    && b[b.len() - 1].is_ascii_alphanumeric()
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            })
    });
    prefix_ok && valid_name_part(name)
}

/// 1–63 characters of letters, digits, `-`, `_` and `.`, beginning and ending with a letter or
/// digit.
fn valid_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "zone",
            "nvidia.com/gpu.product",
            "a",
            "kubernetes.io/hostname",
            "A_b-1.c",
        ] {
            assert!(valid_label_key(ok), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "Nvidia.com/x",
            "a b",
            "-a",
            "a-",
            "x/y/z",
            &"a".repeat(64),
            "ünï",
        ] {
            assert!(!valid_label_key(bad), "{bad:?}");
        }
        for ok in ["", "NVIDIA-H100-80GB-HBM3", "a", "1.2_3", &"v".repeat(63)] {
            assert!(valid_label_value(ok), "{ok}");
        }
        for bad in ["app.kubernetes.io/name", " a", "a ", "-a", "a.", &"v".repeat(64), "ünï"] {
            assert!(!valid_label_value(bad), "{bad:?}");
        }
    }
}
