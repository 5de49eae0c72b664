//! Stacks nobody wrote (`recstack_crds::random`): those the CRD's CEL rules accept must render
//! without a panic, into objects whose names and labels Kubernetes takes and whose runtime
//! config the pods read back, or be refused with a field named. (The cluster e2e applies such
//! stacks to a real API server.)

mod common;

use std::collections::BTreeMap;

use recstack_crds::RecommenderStack;
use recstack_crds::names::valid_label_value;
use recstack_crds::quantity::is_quantity;
use recstack_crds::random::{Draw, samples};
use recstack_crds::runtime::RuntimeConfig;
use recstack_operator::render::{self, ChildKind, RenderError};
use serde_json::{Value, json};

/// A DNS-1123 name of at most `max` characters: a label, or with `dots` a subdomain.
fn dns_name(s: &str, max: usize, dots: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || (dots && *c == b'.'))
}

/// Calls `visit` with each key of every object anywhere in `v`, its value and its path.
fn walk(v: &Value, path: &str, visit: &mut impl FnMut(&str, &Value, &str)) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{path}.{k}");
                visit(k, child, &p);
                walk(child, &p, visit);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), visit);
            }
        }
        _ => {}
    }
}

/// What in a rendered object the API server would refuse: a label (or `matchLabels`, or
/// `nodeSelector`) value that is not a label value, a request or limit that is not a quantity.
fn check_object(object: &Value, path: &str, out: &mut Vec<String>) {
    walk(object, path, &mut |key, child, p| match key {
        "labels" | "matchLabels" | "nodeSelector" => {
            for (lk, lv) in child.as_object().into_iter().flatten() {
                if !lv.as_str().is_some_and(valid_label_value) {
                    out.push(format!("{p}.{lk}: {lv}"));
                }
            }
        }
        "resources" => {
            for side in ["requests", "limits"] {
                for (name, q) in child.get(side).and_then(Value::as_object).into_iter().flatten() {
                    let text = q.as_str().map_or_else(|| q.to_string(), str::to_string);
                    if !is_quantity(&text) {
                        out.push(format!("{p}.{side}.{name}: {q} is not a quantity"));
                    }
                }
            }
        }
        _ => {}
    });
}

#[test]
fn random_stacks_that_pass_the_crds_rules_render_into_objects_kubernetes_takes_or_name_a_field() {
    let samples = samples(&common::repo_root().join("manifests/samples")).unwrap();
    let mut draw = Draw::new(0x5eed_0031, samples);
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rules: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let stacks: usize = std::env::var("RECSTACK_RANDOM_STACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    for n in 0..stacks {
        let (spec, name) = (draw.spec(), draw.name());
        let mut doc = Draw::document(&name, "team-a", spec);
        doc["metadata"]["uid"] = json!("0000-1111");
        let stack: RecommenderStack = match serde_json::from_value(doc.clone()) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!(
                    "stack {n}: the schema's shape does not deserialize: {e}\n{doc}"
                ));
                continue;
            }
        };
        if let Err(errors) = stack.validate_cel() {
            *tally.entry("refused by the CRD's rules").or_default() += 1;
            for e in errors.as_slice() {
                *rules.entry(e.message.clone()).or_default() += 1;
            }
            continue;
        }
        let rendered = std::panic::catch_unwind(|| render::render(&stack));
        let children = match rendered {
            Err(_) => {
                failures.push(format!("stack {n}: render panicked\n{doc}"));
                continue;
            }
            Ok(Err(RenderError::InvalidField { field, message })) => {
                assert!(!message.is_empty(), "stack {n}: {field} refused without a message");
                *tally.entry("refused by render, a field named").or_default() += 1;
                continue;
            }
            Ok(Err(RenderError::InvalidValue { field, message })) => {
                assert!(field.starts_with("spec.") && !message.is_empty(), "{field}: {message}");
                *tally.entry("refused by render, a value named").or_default() += 1;
                continue;
            }
            Ok(Err(e)) => {
                failures.push(format!("stack {n}: render failed without naming a field: {e}\n{doc}"));
                continue;
            }
            Ok(Ok(children)) => children,
        };
        *tally.entry("rendered").or_default() += 1;
        let mut problems = Vec::new();
        for child in &children {
            let object = serde_json::to_value(&child.object).unwrap();
            let name = child.name();
            // Services and StatefulSets (whose pods' host names they make) and Jobs (named in
            // their pods' `job-name` label) take a DNS-1123 label; a CronJob at most 52
            // characters (its Jobs add 11); the rest a DNS-1123 subdomain.
            let (max, dots) = match child.kind {
                ChildKind::Service | ChildKind::StatefulSet | ChildKind::Job => (63, false),
                ChildKind::CronJob => (52, false),
                _ => (253, true),
            };
            if !dns_name(&name, max, dots) {
                problems.push(format!("{:?} name {name:?}", child.kind));
            }
            check_object(&object, &format!("{:?}/{name}", child.kind), &mut problems);
            if child.kind == ChildKind::ConfigMap
                && let Some(text) = object["data"]["config.yaml"].as_str()
            {
                match RuntimeConfig::parse(text) {
                    Ok(config) => {
                        let model = recstack_crds::runtime::model_uri("ranking.model.uri", &config.ranking.model.uri);
                        if let Err(e) = model {
                            problems.push(format!("the ranking pod refuses its model: {e}"));
                        }
                    }
                    Err(e) => problems.push(format!("the pods cannot read their config: {e}")),
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("stack {n}: {}\n{doc}", problems.join("; ")));
        }
    }
    println!("{stacks} random stacks: {tally:?}");
    let mut by_count: Vec<_> = rules.iter().collect();
    by_count.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    for (rule, n) in by_count.iter().take(12) {
        println!("  {n:>5}  {rule}");
    }
    assert!(
        failures.is_empty(),
        "{} of {stacks} stacks failed; the first:\n{}",
        failures.len(),
        failures.iter().take(3).cloned().collect::<Vec<_>>().join("\n\n")
    );
    // The draw reaches render often, and both ways out of it: a change to the schema or the
    // rules that made nearly every stack fail the CEL rules would test nothing.
    assert!(tally.get("rendered").copied().unwrap_or(0) >= stacks / 10, "{tally:?}");
}
