//! The pure part of a reconcile's writes: which children a pass applies and why, which it
//! prunes, and which of them a dry run can check before anything is written.

mod common;

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use recstack_operator::reconcile::{APPLIED_HASH, Plan, checked_in_dry_run, plan, stamp};
use recstack_operator::render::{self, Child, ChildKind};
use serde_json::json;

type Live = BTreeMap<(ChildKind, String), DynamicObject>;

fn desired(sample: &str) -> Vec<Child> {
    let mut stack = common::sample(sample);
    stack.metadata.uid = Some("stack-uid".into());
    render::render(&stack).unwrap()
}

/// The children as the server holds them after an apply: the same fields, plus what the
/// server adds (a uid, a status).
fn applied(children: &[Child]) -> Live {
    children
        .iter()
        .map(|c| {
            let mut object = stamp(c.clone()).object;
            object.metadata.uid = Some(format!("uid-{}", c.name()));
            object.data["status"] = json!({"observedGeneration": 1});
            ((c.kind, c.name()), object)
        })
        .collect()
}

fn writes(plan: &Plan) -> Vec<(String, &'static str)> {
    plan.apply
        .iter()
        .map(|(c, reason)| (format!("{} {}", c.kind.kind(), c.name()), *reason))
        .collect()
}

#[test]
fn a_new_stack_creates_every_child_in_render_order() {
    let children = desired("gpu-ranking");
    let plan = plan(children.clone(), &Live::new());
    let names: Vec<String> = children
        .iter()
        .map(|c| format!("{} {}", c.kind.kind(), c.name()))
        .collect();
    assert_eq!(writes(&plan).into_iter().map(|(n, _)| n).collect::<Vec<_>>(), names);
    assert!(plan.apply.iter().all(|(_, reason)| *reason == "Created"));
    assert!(plan.prune.is_empty());
    assert!(
        plan.apply.iter().all(|(c, _)| c
            .object
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(APPLIED_HASH))),
        "each child is stamped with its hash"
    );
}

#[test]
fn what_the_server_holds_already_is_not_written_again() {
    let children = desired("gpu-ranking");
    let plan = plan(children.clone(), &applied(&children));
    assert!(plan.apply.is_empty(), "{:?}", writes(&plan));
    assert!(plan.prune.is_empty());
}

#[test]
fn each_difference_is_named_for_its_cause() {
    let children = desired("gpu-ranking");
    let mut live = applied(&children);
    // Someone else changed the gateway's image: the hash we applied is still on it.
    let gateway = live.get_mut(&(ChildKind::Deployment, "gpu-gateway".into())).unwrap();
    gateway.data["spec"]["template"]["spec"]["containers"][0]["image"] = json!("someone/else:latest");
    // The spec changed recall: the live object carries the hash of the spec before.
    let recall = live.get_mut(&(ChildKind::Deployment, "gpu-recall".into())).unwrap();
    recall.data["spec"]["replicas"] = json!(9);
    recall
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(APPLIED_HASH.into(), "0000000000000000".into());
    // The ranking Service is gone.
    live.remove(&(ChildKind::Service, "gpu-ranking".into()));
    // A child of an older spec is still there.
    let mut orphan = live[&(ChildKind::ConfigMap, "gpu-config".into())].clone();
    orphan.metadata.name = Some("gpu-old".into());
    live.insert((ChildKind::ConfigMap, "gpu-old".into()), orphan);

    let order: Vec<String> = children
        .iter()
        .map(|c| format!("{} {}", c.kind.kind(), c.name()))
        .collect();
    let plan = plan(children, &live);
    let mut got = writes(&plan);
    let positions: Vec<usize> = got
        .iter()
        .map(|(n, _)| order.iter().position(|o| o == n).unwrap())
        .collect();
    assert!(positions.is_sorted(), "in render order: {got:?}");
    got.sort();
    assert_eq!(
        got,
        [
            ("Deployment gpu-gateway".to_string(), "DriftRepaired"),
            ("Deployment gpu-recall".to_string(), "Updated"),
            ("Service gpu-ranking".to_string(), "Created"),
        ]
    );
    assert_eq!(plan.prune, [(ChildKind::ConfigMap, "gpu-old".to_string())]);
}

#[test]
fn a_binding_to_a_role_the_pass_creates_is_the_one_write_a_dry_run_cannot_check() {
    let children = desired("gpu-ranking");
    let binding = |plan: &Plan| {
        plan.apply
            .iter()
            .find(|(c, _)| c.kind == ChildKind::RoleBinding)
            .map(|(c, _)| c.clone())
            .expect("the dashboard's RoleBinding")
    };

    // A new stack: its Role is created in the same pass.
    let new = plan(children.clone(), &Live::new());
    let unchecked: Vec<String> = new
        .apply
        .iter()
        .filter(|(c, _)| !checked_in_dry_run(c, &new))
        .map(|(c, _)| format!("{} {}", c.kind.kind(), c.name()))
        .collect();
    assert_eq!(unchecked, ["RoleBinding gpu-dashboard"]);

    // The Role exists: a change to the binding alone is checked.
    let mut live = applied(&children);
    live.get_mut(&(ChildKind::RoleBinding, "gpu-dashboard".into()))
        .unwrap()
        .data["subjects"] = json!([]);
    let change = plan(children.clone(), &live);
    assert_eq!(
        writes(&change),
        [("RoleBinding gpu-dashboard".to_string(), "DriftRepaired")]
    );
    assert!(checked_in_dry_run(&binding(&change), &change));

    // The Role is only updated, not created: the server holds it, so the binding is checked.
    let mut live = applied(&children);
    live.remove(&(ChildKind::RoleBinding, "gpu-dashboard".into()));
    live.get_mut(&(ChildKind::Role, "gpu-dashboard".into())).unwrap().data["rules"] = json!([]);
    let both = plan(children.clone(), &live);
    assert!(checked_in_dry_run(&binding(&both), &both));

    // A binding to a ClusterRole of the same name is checked: the pass creates no ClusterRole.
    let mut to_cluster_role = binding(&new);
    to_cluster_role.object.data["roleRef"]["kind"] = json!("ClusterRole");
    assert!(checked_in_dry_run(&to_cluster_role, &new));
}
