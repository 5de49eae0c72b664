//! Fixtures shared by the operator's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use recstack_crds::RecommenderStack;

pub fn repo_root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A sample stack from `manifests/samples/`.
pub fn sample(name: &str) -> RecommenderStack {
    let path = repo_root().join("manifests/samples").join(format!("{name}.yaml"));
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A tool installed by `scripts/setup` into the project venv (or named by an env var).
pub fn venv_tool(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let venv = std::env::var("RECSTACK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".venv"));
    let tool = venv.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} not found: run scripts/setup (it installs {name} into .venv) or set {env}",
        tool.display()
    );
    tool
}
