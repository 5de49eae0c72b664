//! Values the CRD's schema and CEL rules let through but the API server refuses in the objects
//! they are rendered into, checked before anything is rendered (docs/operator.md, "What CEL
//! cannot check, render does").

use recstack_crds::names::{valid_label_key, valid_label_value};
use recstack_crds::{Component, RecommenderStackSpec};

use super::RenderError;

/// Values the CRD cannot check but the API server checks in the objects they are rendered
/// into: every container's resources as the API server takes them (names, quantities,
/// requests within limits: [`recstack_crds::quantity::resources_error`]), the GPU node
/// selector's keys and values as labels', and its tolerations well formed. The first that is
/// not is refused, by its field.
pub(super) fn check(spec: &RecommenderStackSpec) -> Result<(), RenderError> {
    let invalid = |field: String, message: String| Err(RenderError::InvalidValue { field, message });
    // Traces and Dashboard share `spec.dashboard`; the stream workload's are its own.
    let workloads = Component::ONLINE
        .into_iter()
        .chain([Component::Dashboard, Component::Stream])
        .map(|c| {
            let path = match c {
                Component::Stream => "stream.workload",
                other => other.name(),
            };
            (path, spec.workload(c).resources)
        });
    let build = ("build", spec.build.as_ref().and_then(|b| b.resources.as_ref()));
    for (path, resources) in workloads.chain([build]) {
        if let Some((field, message)) = resources.and_then(recstack_crds::quantity::resources_error) {
            return invalid(format!("spec.{path}.resources.{field}"), message);
        }
    }
    let Some(gpu) = &spec.ranking.gpu else {
        return Ok(());
    };
    for (key, value) in &gpu.node_selector {
        if !valid_label_key(key) {
            return invalid(
                "spec.ranking.gpu.nodeSelector".into(),
                format!("{key:?} is not a label key ([prefix/]name, the name at most 63 characters)"),
            );
        }
        if !valid_label_value(value) {
            return invalid(
                format!("spec.ranking.gpu.nodeSelector.{key}"),
                format!("{value:?} is not a label value (at most 63 letters, digits, '-', '_' or '.')"),
            );
        }
    }
    for (i, t) in gpu.tolerations.iter().flatten().enumerate() {
        let field = format!("spec.ranking.gpu.tolerations[{i}]");
        let (key, value) = (t.key.as_deref().unwrap_or(""), t.value.as_deref().unwrap_or(""));
        let message = match (
            t.operator.as_deref().unwrap_or("Equal"),
            t.effect.as_deref().unwrap_or(""),
        ) {
            (op, _) if op != "Equal" && op != "Exists" => format!("operator {op:?}: Equal or Exists"),
            (_, effect) if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) => {
                format!("effect {effect:?}: NoSchedule, PreferNoSchedule or NoExecute")
            }
            _ if !key.is_empty() && !valid_label_key(key) => format!("key {key:?} is not a label key"),
            ("Equal", _) if key.is_empty() => "an empty key tolerates every taint only with operator Exists".into(),
            ("Exists", _) if !value.is_empty() => format!("value {value:?} must be empty with operator Exists"),
            ("Equal", _) if !valid_label_value(value) => format!("value {value:?} is not a label value"),
            (_, effect) if t.toleration_seconds.is_some() && effect != "NoExecute" => {
                "tolerationSeconds applies to effect NoExecute only".into()
            }
            _ => continue,
        };
        return invalid(field, message);
    }
    Ok(())
}
