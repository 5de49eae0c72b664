//! Does a live object already hold what we would apply?
//!
//! A server-side apply that changes nothing is still a write request; skipping it is what
//! makes a no-op reconcile silent. The live object carries more than we sent (defaults,
//! status, other managers' fields), so the test is "every field we set has our value".

use serde_json::Value;

/// True when every field in `desired` is present in `live` with an equal value. Objects are
/// compared key by key (extra live keys are fine); arrays element by element with equal
/// length (an extra live element means someone added one and we must apply to remove it).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| is_subset(dv, lv)) || dv.is_null()),
        (Value::Array(d), Value::Array(l)) => d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv)),
        // The API server normalizes numbers sent as strings in some places (quantities) but
        // not others; compare numbers by value so 1 and 1.0 agree.
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (d, l) => d == l,
    }
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
    fn numbers_compare_by_value_and_nulls_mean_absent() {
        assert!(is_subset(&json!({"v": 1}), &json!({"v": 1.0})));
        assert!(!is_subset(&json!({"v": "1"}), &json!({"v": 1})));
        assert!(is_subset(&json!({"v": null}), &json!({})));
    }
}
