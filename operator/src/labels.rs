//! Labels and names every child object carries. Pruning, NetworkPolicies and status all select
//! children by these labels, so they are defined once, here.

use std::collections::BTreeMap;

use recstack_crds::Component;

/// The single field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "recstack-operator";
/// Finalizer that removes the stack's cluster-scoped PriorityClasses on deletion.
pub const FINALIZER: &str = "recstack.io/cleanup";

pub const STACK: &str = "recstack.io/stack";
pub const STACK_NAMESPACE: &str = "recstack.io/stack-namespace";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
/// Hash of the runtime ConfigMap on each pod template, so pods roll when the config changes.
pub const CONFIG_HASH: &str = "recstack.io/config-hash";

/// Labels on every child of `stack`.
pub fn stack_labels(stack: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_string(), "recstack".to_string()),
        (INSTANCE.to_string(), stack.to_string()),
        (PART_OF.to_string(), "recstack".to_string()),
        (MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
        (STACK.to_string(), stack.to_string()),
    ])
}

/// Labels on the children of one component.
pub fn component_labels(stack: &str, component: Component) -> BTreeMap<String, String> {
    let mut labels = stack_labels(stack);
    labels.insert(COMPONENT.to_string(), component.name().to_string());
    labels
}

/// The (immutable) pod selector of one component's Deployment.
pub fn selector(stack: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (STACK.to_string(), stack.to_string()),
        (COMPONENT.to_string(), component.name().to_string()),
    ])
}

/// Label selector (as a query string) for every namespaced child of `stack`.
pub fn children_selector(stack: &str) -> String {
    format!("{MANAGED_BY}={FIELD_MANAGER},{STACK}={stack}")
}

/// Label selector for the cluster-scoped children of `stack` in `namespace`.
pub fn cluster_children_selector(namespace: &str, stack: &str) -> String {
    format!("{},{STACK_NAMESPACE}={namespace}", children_selector(stack))
}

/// Name of a component's Deployment, Service, HPA, PDB and NetworkPolicy.
pub fn component_name(stack: &str, component: Component) -> String {
    format!("{stack}-{}", component.name())
}

/// Name of one of the stack's PriorityClasses; cluster-scoped, so it includes the namespace.
pub fn priority_class_name(namespace: &str, stack: &str, tier: &str) -> String {
    format!("recstack-{namespace}-{stack}-{tier}")
}
