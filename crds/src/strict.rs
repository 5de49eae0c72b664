//! Unknown fields, found against the CRD's own schema.
//!
//! The spec types accept fields they do not know, so an operator older than the CRD it runs
//! against (a field added in a newer release) keeps reconciling every stack instead of failing
//! to read them all. Strictness belongs where a person writes a stack: the API server prunes or
//! rejects unknown fields (`kubectl apply --validate=strict`), and `recstack-operator render`
//! rejects them with this check, which walks the same OpenAPI schema the server uses.

use kube::CustomResourceExt;
use serde_json::Value;

use crate::RecommenderStack;

/// Paths (`spec.recall.replica`) of every field of `object` that the CRD's schema does not
/// declare. `apiVersion`, `kind` and `metadata` (Kubernetes' own `ObjectMeta`) are not checked.
pub fn unknown_fields(object: &Value) -> Vec<String> {
    let schema = openapi_schema();
    let mut out = Vec::new();
    walk(object, &schema, "", &mut out);
    out
}

/// The CRD's OpenAPI v3 schema (of the whole object), as JSON: `Null` if it has none.
pub fn openapi_schema() -> Value {
    RecommenderStack::crd()
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

fn walk(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if path.is_empty() && matches!(key.as_str(), "metadata" | "apiVersion" | "kind") {
                    continue;
                }
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(s), _) => walk(child, s, &child_path, out),
                    (None, Some(Value::Object(s))) => walk(child, &Value::Object(s.clone()), &child_path, out),
                    (None, Some(Value::Bool(true))) => {}
                    (None, _) if properties.is_none() && additional.is_none() => {}
                    (None, _) => out.push(child_path),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::unknown_fields;
    use serde_json::json;

    #[test]
    fn names_each_unknown_field_by_its_path() {
        let stack = json!({
            "apiVersion": "recstack.io/v1alpha1", "kind": "RecommenderStack",
            "metadata": {"name": "s", "anything": 1},
            "spec": {
                "recall": {"replica": 3, "replicas": 2},
                "ranking": {"model": {"uri": "s3://m", "versoin": "2"}},
                "tolerate": true,
            },
        });
        assert_eq!(
            unknown_fields(&stack),
            ["spec.ranking.model.versoin", "spec.recall.replica", "spec.tolerate"]
        );
    }

    #[test]
    fn a_known_stack_has_none() {
        let stack = json!({"metadata": {"name": "s"}, "spec": {"recall": {"replicas": 2},
            "policies": {"priorityClasses": {"online": "x"}}}});
        assert!(unknown_fields(&stack).is_empty(), "{:?}", unknown_fields(&stack));
    }
}
