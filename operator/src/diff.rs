//! Does a live object already hold what we would apply?
//!
//! A server-side apply that changes nothing is still a write request; skipping it is what
//! makes a no-op reconcile silent. The live object carries more than we sent (defaults,
//! status, other managers' fields), so the test is "every field we set has our value".

use recstack_crds::quantity::parse;
use serde_json::Value;

/// True when every field in `desired` is present in `live` with an equal value. Objects are
/// compared key by key (extra live keys are fine); arrays element by element with equal
/// length (an extra live element means someone added one and we must apply to remove it).
/// Resource quantities compare by value: the API server stores `1000m` as `1` and `1024Mi` as
/// `1Gi`, and reading that back as a change would re-apply the stack on every pass.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    subset_at(desired, live, false)
}

/// Keys whose string values (directly, or in the map below them) are quantities.
fn holds_quantities(key: &str) -> bool {
    matches!(key, "requests" | "limits" | "averageValue" | "sizeLimit")
}

fn subset_at(desired: &Value, live: &Value, quantity: bool) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| {
            let q = quantity || holds_quantities(k) || (k == "value" && is_metric_target(d));
            l.get(k).is_some_and(|lv| subset_at(dv, lv, q)) || dv.is_null()
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| subset_at(dv, lv, false))
        }
        // The API server normalizes numbers sent as strings in some places but not others;
        // compare numbers by value so 1 and 1.0 agree.
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (Value::String(d), Value::String(l)) if quantity && d != l => {
            matches!((parse(d.trim()), parse(l.trim())), (Some(a), Some(b)) if a == b)
        }
        (Value::String(d), Value::Number(l)) | (Value::Number(l), Value::String(d)) if quantity => parse(d.trim())
            .zip(l.as_f64())
            .is_some_and(|(a, b)| (a - b).abs() < f64::EPSILON),
        (d, l) => d == l,
    }
}

/// An HPA metric target (`{type: Utilization|Value|AverageValue, value: …}`), whose `value`
/// is a quantity; a container's env `{name, value}` has no `type` and stays a plain string.
fn is_metric_target(target: &serde_json::Map<String, Value>) -> bool {
    matches!(
        target.get("type").and_then(Value::as_str),
        Some("Value" | "AverageValue" | "Utilization")
    )
}

#[cfg(test)]
mod tests {
    use super::is_subset;
    use serde_json::json;

    #[test]
    fn extra_live_fields_are_fine() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a"}]}}}});
        let live = json!({"spec": {"replicas": 2, "progressDeadlineSeconds": 600,
            "template": {"spec": {"containers": [{"name": "a", "terminationMessagePath": "/dev/x"}]}}},
            "status": {"readyReplicas": 2}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn changed_value_is_drift() {
        let desired = json!({"spec": {"replicas": 2}});
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 3}})));
        assert!(!is_subset(&desired, &json!({"spec": {}})));
        assert!(!is_subset(&desired, &json!({})));
    }

    #[test]
    fn arrays_must_match_in_length_and_order() {
        let desired = json!({"ports": [{"port": 1}, {"port": 2}]});
        assert!(!is_subset(&desired, &json!({"ports": [{"port": 1}]})));
        assert!(!is_subset(
            &desired,
            &json!({"ports": [{"port": 1}, {"port": 2}, {"port": 3}]})
        ));
        assert!(!is_subset(&desired, &json!({"ports": [{"port": 2}, {"port": 1}]})));
        assert!(is_subset(
            &desired,
            &json!({"ports": [{"port": 1, "protocol": "TCP"}, {"port": 2}]})
        ));
    }

    #[test]
    fn quantities_compare_by_value_where_the_server_canonicalises_them() {
        let desired = json!({"resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"},
            "limits": {"nvidia.com/gpu": "1"}}});
        let live = json!({"resources": {"requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"nvidia.com/gpu": "1"}}});
        assert!(is_subset(&desired, &live));
        let changed = json!({"resources": {"requests": {"cpu": "2", "memory": "1Gi"},
            "limits": {"nvidia.com/gpu": "1"}}});
        assert!(!is_subset(&desired, &changed));
        // HPA targets are quantities too; env values are not.
        let hpa = json!({"target": {"type": "AverageValue", "averageValue": "500m"}});
        assert!(is_subset(
            &hpa,
            &json!({"target": {"type": "AverageValue", "averageValue": "0.5"}})
        ));
        let target = json!({"target": {"type": "Value", "value": "1k"}});
        assert!(is_subset(
            &target,
            &json!({"target": {"type": "Value", "value": "1000"}})
        ));
        let env = json!({"env": [{"name": "N", "value": "1000m"}]});
        assert!(!is_subset(&env, &json!({"env": [{"name": "N", "value": "1"}]})));
    }

    #[test]
    fn numbers_compare_by_value_and_nulls_mean_absent() {
        assert!(is_subset(&json!({"v": 1}), &json!({"v": 1.0})));
        assert!(!is_subset(&json!({"v": "1"}), &json!({"v": 1})));
        assert!(is_subset(&json!({"v": null}), &json!({})));
    }
}
