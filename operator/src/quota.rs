//! Object-count quotas, checked for a reconcile's new objects together (pure).
//!
//! Each write of a plan is sent as a dry run first, but a dry run stores nothing, so each is
//! checked against a namespace's ResourceQuotas alone: a quota with room for one more
//! Deployment passes every new Deployment's dry run, and the real writes then stop at the
//! second. So before writing, the objects a plan creates are counted by kind and held against
//! each quota's room (`status.hard − status.used`), as the API server's quota admission counts
//! them: `count/<plural>` (core kinds) or `count/<plural>.<group>`, and for ConfigMaps, Secrets
//! and Services also the older `configmaps`, `secrets` and `services`. A quota with scopes
//! only counts pods, which the operator never creates, and is skipped; so is a resource whose
//! hard limit or usage is not yet in the quota's status, or not a whole number.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::render::ChildKind;

/// A quota a plan's new objects do not fit in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "creating {need} {kind} object(s) would exceed ResourceQuota {quota}: {resource} has {left} left \
     (used {used} of {hard})"
)]
pub struct Shortfall {
    pub quota: String,
    pub resource: String,
    pub kind: &'static str,
    pub need: i64,
    pub used: i64,
    pub hard: i64,
    pub left: i64,
}

/// The quota resource names that count objects of `kind`.
pub fn resource_names(kind: ChildKind) -> Vec<String> {
    let (group, _, _, plural) = kind.gvk();
    let mut names = vec![if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }];
    if group.is_empty() && ["configmaps", "secrets", "services"].contains(&plural) {
        names.push(plural.to_string());
    }
    names
}

/// Checks that `creates` (new objects by kind) fit in every quota together; the first one they
/// do not fit in, by quota name and then kind, is the error.
pub fn check(creates: &BTreeMap<ChildKind, i64>, quotas: &[ResourceQuota]) -> Result<(), Shortfall> {
    let mut quotas: Vec<&ResourceQuota> = quotas.iter().filter(|q| !scoped(q)).collect();
    quotas.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for quota in quotas {
        let Some(status) = &quota.status else { continue };
        let (Some(hard), used) = (&status.hard, &status.used) else {
            continue;
        };
        for (&kind, &need) in creates.iter().filter(|(_, n)| **n > 0) {
            for resource in resource_names(kind) {
                let Some(hard) = hard.get(&resource).and_then(whole) else {
                    continue;
                };
                let Some(used) = used.as_ref().and_then(|u| u.get(&resource)).and_then(whole) else {
                    continue;
                };
                let left = (hard - used).max(0);
                if need > left {
                    return Err(Shortfall {
                        quota: quota.metadata.name.clone().unwrap_or_default(),
                        resource,
                        kind: kind.kind(),
                        need,
                        used,
                        hard,
                        left,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Whether a quota has scopes (which only pods match).
fn scoped(quota: &ResourceQuota) -> bool {
    quota.spec.as_ref().is_some_and(|s| {
        s.scopes.as_ref().is_some_and(|v| !v.is_empty())
            || s.scope_selector
                .as_ref()
                .is_some_and(|sel| sel.match_expressions.as_ref().is_some_and(|v| !v.is_empty()))
    })
}

/// A quantity that is a whole number of objects (`5`, `2k`, `1Ki`, `1e3`), read by the
/// project's quantity parser ([`recstack_crds::quantity::value`]). `None` for anything else (a
/// fraction, a negative, past `i64`), which the check then skips rather than guesses.
pub fn whole(q: &Quantity) -> Option<i64> {
    let v = recstack_crds::quantity::value(q.0.trim())?;
    (v.fract() == 0.0 && v < i64::MAX as f64).then_some(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn quota(name: &str, hard: serde_json::Value, used: serde_json::Value) -> ResourceQuota {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"hard": hard},
            "status": {"hard": hard, "used": used},
        }))
        .unwrap()
    }

    fn creates(kinds: &[(ChildKind, i64)]) -> BTreeMap<ChildKind, i64> {
        kinds.iter().copied().collect()
    }

    #[test]
    fn names_follow_the_api_servers_object_count_resources() {
        assert_eq!(resource_names(ChildKind::Deployment), ["count/deployments.apps"]);
        assert_eq!(resource_names(ChildKind::ConfigMap), ["count/configmaps", "configmaps"]);
        assert_eq!(resource_names(ChildKind::Service), ["count/services", "services"]);
        assert_eq!(resource_names(ChildKind::ServiceAccount), ["count/serviceaccounts"]);
        assert_eq!(
            resource_names(ChildKind::NetworkPolicy),
            ["count/networkpolicies.networking.k8s.io"]
        );
        assert_eq!(
            resource_names(ChildKind::FlinkDeployment),
            ["count/flinkdeployments.flink.apache.org"]
        );
    }

    #[test]
    fn objects_that_fit_one_at_a_time_but_not_together_are_refused() {
        let q = [quota(
            "objects",
            json!({"count/deployments.apps": "5"}),
            json!({"count/deployments.apps": "3"}),
        )];
        assert_eq!(check(&creates(&[(ChildKind::Deployment, 2)]), &q), Ok(()));
        let short = check(&creates(&[(ChildKind::Deployment, 3)]), &q).unwrap_err();
        assert_eq!(
            short,
            Shortfall {
                quota: "objects".into(),
                resource: "count/deployments.apps".into(),
                kind: "Deployment",
                need: 3,
                used: 3,
                hard: 5,
                left: 2,
            }
        );
        assert_eq!(
            short.to_string(),
            "creating 3 Deployment object(s) would exceed ResourceQuota objects: count/deployments.apps has 2 \
             left (used 3 of 5)"
        );
        // Other kinds do not count against it.
        assert_eq!(check(&creates(&[(ChildKind::ConfigMap, 40)]), &q), Ok(()));
    }

    #[test]
    fn the_older_names_count_too_and_the_first_quota_short_is_named() {
        let q = [
            quota("b-legacy", json!({"configmaps": "10"}), json!({"configmaps": "9"})),
            quota(
                "a-new",
                json!({"count/configmaps": "10"}),
                json!({"count/configmaps": "2"}),
            ),
        ];
        assert_eq!(check(&creates(&[(ChildKind::ConfigMap, 1)]), &q), Ok(()));
        let short = check(&creates(&[(ChildKind::ConfigMap, 2)]), &q).unwrap_err();
        assert_eq!(
            (short.quota.as_str(), short.resource.as_str()),
            ("b-legacy", "configmaps")
        );
        let short = check(&creates(&[(ChildKind::ConfigMap, 9)]), &q).unwrap_err();
        assert_eq!(short.quota, "a-new", "quotas are checked in name order");
    }

    #[test]
    fn a_quota_already_over_has_no_room_and_nothing_new_passes() {
        let q = [quota(
            "full",
            json!({"count/jobs.batch": "1"}),
            json!({"count/jobs.batch": "2"}),
        )];
        assert_eq!(check(&creates(&[]), &q), Ok(()));
        assert_eq!(check(&creates(&[(ChildKind::Job, 0)]), &q), Ok(()));
        assert_eq!(check(&creates(&[(ChildKind::Job, 1)]), &q).unwrap_err().left, 0);
    }

    #[test]
    fn scoped_uncomputed_and_unreadable_quotas_are_skipped() {
        let mut scoped = quota("scoped", json!({"count/deployments.apps": "0"}), json!({}));
        scoped.spec.as_mut().unwrap().scopes = Some(vec!["BestEffort".into()]);
        let mut selected = quota(
            "selected",
            json!({"count/deployments.apps": "0"}),
            json!({"count/deployments.apps": "0"}),
        );
        selected.spec.as_mut().unwrap().scope_selector = serde_json::from_value(json!({
            "matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]
        }))
        .unwrap();
        let mut fresh = quota("fresh", json!({}), json!({}));
        fresh.spec.as_mut().unwrap().hard = Some(
            [("count/deployments.apps".to_string(), Quantity("0".into()))]
                .into_iter()
                .collect(),
        );
        fresh.status = None;
        let odd = quota(
            "odd",
            json!({"count/deployments.apps": "1.5"}),
            json!({"count/deployments.apps": "0"}),
        );
        let d = creates(&[(ChildKind::Deployment, 7)]);
        assert_eq!(check(&d, &[scoped, selected, fresh, odd]), Ok(()));
    }

    #[test]
    fn whole_quantities() {
        let q = |s: &str| whole(&Quantity(s.into()));
        assert_eq!(q("0"), Some(0));
        assert_eq!(q("12"), Some(12));
        assert_eq!(q(" 7 "), Some(7));
        assert_eq!(q("2k"), Some(2_000));
        assert_eq!(q("1Ki"), Some(1_024));
        assert_eq!(q("3M"), Some(3_000_000));
        // Kubernetes' exponent form, as its own parser reads it.
        assert_eq!(q("1e3"), Some(1_000));
        for bad in ["", "-1", "1.5", "m", "5m", "10x", "99999999999999999999", "10E"] {
            assert_eq!(q(bad), None, "{bad}");
        }
    }
}
