//! The `recstack-operator` binary: `render` and `crd` without a cluster, and clear errors on
//! bad input.

mod common;

use std::process::{Command, Output};

fn operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recstack-operator"))
        .args(args)
        .output()
        .unwrap()
}

/// The stack in a temporary file, removed when the returned path is dropped.
fn write_stack(spec: &str) -> tempfile::TempPath {
    let doc =
        format!("apiVersion: recstack.io/v1alpha1\nkind: RecommenderStack\nmetadata: {{name: demo}}\nspec:\n{spec}");
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), doc).unwrap();
    file.into_temp_path()
}

#[test]
fn render_prints_every_child_as_yaml() {
    let sample = common::repo_root().join("manifests/samples/minimal.yaml");
    let out = operator(&["render", "-f", sample.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_yaml::Value> = text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    // The minimal stack runs no stream job: six components' Deployment, Service, PDB (the
    // autoscaled gateway has an HPA), their NetworkPolicies, the ConfigMap.
    assert_eq!(docs.len(), 30);
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "minimal-stream"));
    assert!(
        !docs.iter().any(|d| d["kind"] == "PriorityClass"),
        "the install owns PriorityClasses"
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "minimal-ranking")
    );
}

#[test]
fn render_defaults_the_namespace() {
    let file = write_stack("  stream: {engine: none}");
    let out = operator(&["render", "-f", file.to_str().unwrap(), "--namespace", "shop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace: shop"));
}

#[test]
fn render_rejects_broken_rules_with_their_message() {
    let file = write_stack("  ranking: {model: {canaryPercent: 30}}");
    let out = operator(&["render", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs ranking.model.canaryUri"), "{err}");
    assert!(out.stdout.is_empty(), "nothing rendered for an invalid stack");
}

#[test]
fn render_names_unknown_fields() {
    let file = write_stack("  recall: {replica: 3}");
    let out = operator(&["render", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `spec.recall.replica`"), "{err}");
}

#[test]
fn render_reports_a_missing_file() {
    let out = operator(&["render", "-f", "/nonexistent/stack.yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/stack.yaml"));
}

#[test]
fn crd_subcommand_prints_the_committed_crd() {
    let out = operator(&["crd"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(common::repo_root().join("crds/recommenderstack.yaml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}
