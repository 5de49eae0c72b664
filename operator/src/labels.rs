//! Labels and names every child object carries. Pruning, NetworkPolicies and status all select
//! children by these labels, so they are defined once, here.

use std::collections::BTreeMap;

use recstack_crds::Component;

/// The single field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "recstack-operator";
/// Finalizer under which the operator sees a stack's deletion through: it removes what owner
/// references cannot (PriorityClasses that operators before 0.2 created per stack), records
/// the deletion as an Event and forgets the stack's retry state.
pub const FINALIZER: &str = "recstack.io/cleanup";

pub const STACK: &str = "recstack.io/stack";
/// On the per-stack PriorityClasses of operators before 0.2 (cluster-scoped, so labelled with
/// the stack's namespace); read only to delete them.
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

/// The `component` label of the offline build's Jobs and pods (a batch workload, not one of
/// the serving components).
pub const BUILD: &str = "build";

/// The `component` label of the Flink engine's objects and its JobManager and TaskManager pods
/// (the Flink operator runs them; the stream StatefulSet beside them must not select them).
pub const FLINK: &str = "flink";

/// Labels on the objects and pods of a workload that is not a serving component (`BUILD`,
/// `FLINK`).
pub fn workload_labels(stack: &str, workload: &str) -> BTreeMap<String, String> {
    let mut labels = stack_labels(stack);
    labels.insert(COMPONENT.to_string(), workload.to_string());
    labels
}

/// The pods of such a workload, for NetworkPolicies.
pub fn workload_selector(stack: &str, workload: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (STACK.to_string(), stack.to_string()),
        (COMPONENT.to_string(), workload.to_string()),
    ])
}

/// Labels on the offline build's objects and pods.
pub fn build_labels(stack: &str) -> BTreeMap<String, String> {
    workload_labels(stack, BUILD)
}

/// The build pods, for NetworkPolicies.
pub fn build_selector(stack: &str) -> BTreeMap<String, String> {
    workload_selector(stack, BUILD)
}

/// The Flink engine's FlinkDeployment (and the Flink operator's Deployment and Services).
pub fn flink_name(stack: &str) -> String {
    format!("{stack}-{FLINK}")
}

/// Label selector (as a query string) for every namespaced child of `stack`.
pub fn children_selector(stack: &str) -> String {
    format!("{MANAGED_BY}={FIELD_MANAGER},{STACK}={stack}")
}

/// Label selector for the PriorityClasses operators before 0.2 created per stack.
pub fn legacy_priority_class_selector(namespace: &str, stack: &str) -> String {
    format!("{},{STACK_NAMESPACE}={namespace}", children_selector(stack))
}

/// Name of a component's Deployment, Service, HPA, PDB and NetworkPolicy.
pub fn component_name(stack: &str, component: Component) -> String {
    format!("{stack}-{}", component.name())
}

/// Longest stack name: every derived name must fit. The longest derived DNS-1035 label is the
/// Service the Flink operator makes for a FlinkDeployment, `<stack>-flink-rest`. The CRD
/// enforces it with a CEL rule on `metadata.name`; `render` checks it too.
pub const MAX_STACK_NAME: usize = 51;

/// Longest name of a stack with a stream engine: its StatefulSet `<stack>-stream`'s pods carry
/// the label `controller-revision-hash: <stack>-stream-<hash>` (a hash of up to 10 characters),
/// and a label value holds at most 63 — so the StatefulSet's name at most 52, the stack's 45.
pub const MAX_STREAMING_STACK_NAME: usize = 45;

/// Whether `name` can name a stack (the CRD's CEL rule on `metadata.name`, client-side).
pub fn valid_stack_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_STACK_NAME
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names_that_fit_every_derived_name() {
        for ok in ["a", "minimal", "gpu-ranking-2", &"a".repeat(MAX_STACK_NAME)] {
            assert!(valid_stack_name(ok), "{ok}");
        }
        let too_long = "a".repeat(MAX_STACK_NAME + 1);
        for bad in ["", "1abc", "-abc", "abc-", "Abc", "a_b", "a.b", too_long.as_str()] {
            assert!(!valid_stack_name(bad), "{bad}");
        }
        // The longest derived names fit their limits.
        let longest = "a".repeat(MAX_STACK_NAME);
        let streaming = "a".repeat(MAX_STREAMING_STACK_NAME);
        assert!(
            format!("{streaming}-stream-0123456789").len() <= 63,
            "controller-revision-hash"
        );
        assert!(
            format!("{longest}-flink-rest").len() <= 63,
            "the Flink operator's REST Service"
        );
        for c in Component::ALL {
            assert!(component_name(&longest, c).len() <= 63);
        }
    }
}
