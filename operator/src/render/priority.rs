//! The stack's two PriorityClasses: online serving preempts; streaming never does.
//!
//! PriorityClasses are cluster-scoped, so they cannot have the (namespaced) stack as owner;
//! they are labelled with the stack and its namespace and deleted by the finalizer.

use serde_json::json;

use super::{Child, ChildKind, RenderError, StackCtx, child};
use crate::labels;

pub(super) fn priority_classes(ctx: &StackCtx) -> Result<Vec<Child>, RenderError> {
    let policy = &ctx.spec().policies.priority_classes;
    let mut labels = labels::stack_labels(&ctx.name);
    labels.insert(labels::STACK_NAMESPACE.to_string(), ctx.namespace.clone());
    [
        ("online", policy.online_value, "PreemptLowerPriority", "online serving"),
        ("offline", policy.offline_value, "Never", "streaming and offline work"),
    ]
    .into_iter()
    .map(|(tier, value, preemption, what)| {
        child(
            ChildKind::PriorityClass,
            json!({
                "metadata": {
                    "name": labels::priority_class_name(&ctx.namespace, &ctx.name, tier),
                    "labels": labels,
                },
                "value": value,
                "globalDefault": false,
                "preemptionPolicy": preemption,
                "description": format!("recstack {what} of stack {}/{}", ctx.namespace, ctx.name),
            }),
        )
    })
    .collect()
}
