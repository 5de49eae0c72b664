//! Stacks nobody wrote: specs drawn at random from the CRD's own OpenAPI schema (every field
//! optional or not, integers at and between their bounds, enums, lists of 0–3, strings from a
//! pool of plausible and broken values for the field). The API server would accept each one's
//! shape; those its CEL rules accept too must render without a panic, into objects whose names
//! and labels Kubernetes takes and whose runtime config the pods read back, or be refused with a
//! field named.

mod common;

use std::collections::BTreeMap;

use kube::CustomResourceExt;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recstack_crds::RecommenderStack;
use recstack_crds::quantity::is_quantity;
use recstack_crds::runtime::RuntimeConfig;
use recstack_operator::render::{self, ChildKind, RenderError};
use serde_json::{Map, Value, json};

/// A seeded generator (a fixed seed, so a failure names a stack that can be drawn again) and
/// the few draws the stacks need.
struct Rng(ChaCha8Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.r#gen()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.gen_range(0..n)
    }
    fn chance(&mut self, percent: u32) -> bool {
        self.0.gen_ratio(percent, 100)
    }
    fn pick<T: Clone>(&mut self, options: &[T]) -> T {
        options[self.below(options.len())].clone()
    }
}

/// Values a string field named `name` may get: plausible ones for what it names, and broken
/// ones any field may meet.
fn strings_for(name: &str) -> Vec<String> {
    let plausible: &[&str] = match name {
        "uri" | "canaryUri" | "data" => &[
            "s3://bucket/models/deepfm/model.onnx",
            "file:///models/m.onnx",
            "gs://b/p",
            "https://objects.example/x",
            "s3://",
            "models/m.onnx",
        ],
        "stateUri" => &["s3://state/flink", "file:///state"],
        "endpoint" | "elasticsearchUrl" | "traceLink" => &[
            "http://es.example:9200",
            "https://objects.example",
            "http://collector:4317",
            "ftp://x",
        ],
        "redisUrl" => &[
            "redis://redis:6379",
            "rediss://redis:6380/1",
            "redis+cluster://r-0:6379,r-1:6379",
            "redis://",
        ],
        "bootstrapServers" => &["kafka-0.kafka:9092", "k:1", "kafka"],
        "window" => &["1m", "10s", "0s", "1h30m", "250ms", "10"],
        "schedule" => &["0 3 * * *", "@daily", "*/5 * * * *", "61 * * * *"],
        "image" => &["registry.example/recstack:1.0", "recstack@sha256:abc", "img"],
        "version" => &["deepfm-6", "1.20", "v-1"],
        "jobManagerMemory" | "taskManagerMemory" => &["1g", "2048m", "1Gi"],
        "online" | "offline" => &["recstack-online", "system-cluster-critical", "a.b"],
        "operator" => &["Exists", "Equal", "In"],
        "effect" => &["NoSchedule", "NoExecute", "PreferNoSchedule", "Never"],
        "topic" => &["recstack-events", "a.b_c"],
        "name"
        | "serviceAccount"
        | "metricsNamespace"
        | "gatewayClientNamespaces"
        | "key"
        | "value"
        | "item"
        | "block"
        | "request"
        | "canaryVersion" => &["a", "control", "x-y", "A_B", "app.kubernetes.io/name"],
        _ => &["a", "x"],
    };
    plausible.iter().map(|s| s.to_string()).collect()
}

/// Broken values any string field may meet.
fn broken_strings() -> Vec<String> {
    vec!["".to_string(), "ünï".to_string(), "x".repeat(300), " a ".to_string()]
}

/// A value for `schema` (an OpenAPI v3 schema as JSON) at a field named `name`.
fn draw(schema: &Value, name: &str, rng: &mut Rng, depth: usize) -> Value {
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        return rng.pick(options);
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return rng.pick(&[json!("100m"), json!("1Gi"), json!(2), json!("0"), json!("lots")]);
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut map = Map::new();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for (key, child) in properties {
                    if required.contains(&key.as_str()) || (depth < 6 && rng.chance(40)) {
                        map.insert(key.clone(), draw(child, key, rng, depth + 1));
                    }
                }
            } else if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
                for _ in 0..rng.below(3) {
                    let key = rng.pick(&["cpu", "memory", "nvidia.com/gpu", "zone", "a"]);
                    map.insert(key.to_string(), draw(values, name, rng, depth + 1));
                }
            }
            Value::Object(map)
        }
        Some("array") => {
            let min = bound("minItems").unwrap_or(0.0) as usize;
            let max = bound("maxItems").map_or(3, |m| m as usize).min(min + 3);
            let items = schema.get("items").cloned().unwrap_or(Value::Null);
            let n = min + rng.below(max - min + 1);
            Value::Array((0..n).map(|_| draw(&items, name, rng, depth + 1)).collect())
        }
        Some("integer") => {
            let lo = bound("minimum").unwrap_or(-1.0) as i64;
            let hi = bound("maximum").map_or(i64::from(i32::MAX), |m| m as i64);
            let v = match rng.below(4) {
                0 => lo,
                1 => hi,
                2 => lo.saturating_add(1).min(hi),
                _ => lo + (rng.next() % (hi - lo + 1) as u64) as i64,
            };
            json!(v)
        }
        Some("number") => {
            let lo = bound("minimum").unwrap_or(-1.0);
            let hi = bound("maximum").unwrap_or(1e9);
            json!(rng.pick(&[lo, hi, (lo + hi) / 2.0, 0.5f64.clamp(lo, hi), 0.0f64.clamp(lo, hi)]))
        }
        Some("boolean") => json!(rng.chance(50)),
        Some("string") => {
            // Mostly plausible: a stack of many fields with a broken value in each would stop
            // at the CRD's rules every time and never reach render.
            let mut s = if rng.chance(8) {
                rng.pick(&broken_strings())
            } else {
                rng.pick(&strings_for(name))
            };
            if let Some(max) = bound("maxLength") {
                s = s.chars().take(max as usize).collect();
            }
            if let Some(min) = bound("minLength") {
                while s.chars().count() < min as usize {
                    s.push('a');
                }
            }
            json!(s)
        }
        _ => Value::Null,
    }
}

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

/// A label value: at most 63 characters, alphanumerics with `-_.` inside, or empty.
fn label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c)))
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
                if !lv.as_str().is_some_and(label_value) {
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

/// The `required` names of an object schema.
fn required(schema: &Value) -> Vec<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Draws one random field of `schema` anew in `spec` (a whole subtree, or a leaf below it),
/// creating the objects on the way with their required fields; an optional field is sometimes
/// removed instead, a nullable one set to null.
fn overlay(spec: &mut Value, schema: &Value, rng: &mut Rng) {
    let (mut here, mut schema) = (spec, schema);
    while let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        if !here.is_object() {
            *here = draw(schema, "", rng, 6);
        }
        let keys: Vec<&String> = properties.keys().collect();
        let key = rng.pick(&keys).clone();
        let child = &properties[&key];
        let object = here.as_object_mut().unwrap();
        if rng.chance(25) || child.get("properties").is_none() {
            // This field: removed (when the schema allows), or drawn whole.
            if rng.chance(15) && !required(schema).contains(&key) {
                object.remove(&key);
            } else if rng.chance(5) && child.get("nullable") == Some(&Value::Bool(true)) {
                object.insert(key, Value::Null);
            } else {
                let value = draw(child, &key, rng, 0);
                object.insert(key, value);
            }
            return;
        }
        here = object.entry(key).or_insert(Value::Null);
        schema = child;
    }
}

#[test]
fn random_stacks_that_pass_the_crds_rules_render_into_objects_kubernetes_takes_or_name_a_field() {
    let crd = serde_json::to_value(RecommenderStack::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert!(schema.is_object(), "the CRD has a spec schema");
    let mut rng = Rng(ChaCha8Rng::seed_from_u64(0x5eed_0031));
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rules: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let samples: Vec<Value> = ["minimal", "gpu-ranking", "flink-streaming"]
        .iter()
        .map(|s| serde_json::to_value(common::sample(s)).unwrap()["spec"].clone())
        .collect();
    let names = ["s".to_string(), "stack-1".into(), "a".repeat(45), "b".repeat(51)];
    let stacks: usize = std::env::var("RECSTACK_RANDOM_STACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    for n in 0..stacks {
        // A sample, with one to four fields (or whole parts) drawn anew: stacks near the ones
        // people write, which the CRD's rules mostly accept, and far from the samples' values.
        let mut spec = rng.pick(&samples);
        for _ in 0..1 + rng.below(4) {
            overlay(&mut spec, schema, &mut rng);
        }
        // GPUs, node selectors and tolerations, more often than one field in ~150 would.
        if rng.chance(20) {
            let gpu = &schema["properties"]["ranking"]["properties"]["gpu"];
            spec["ranking"]["gpu"] = draw(gpu, "gpu", &mut rng, 0);
        }
        let name = rng.pick(&names);
        let doc = json!({
            "apiVersion": "recstack.io/v1alpha1",
            "kind": "RecommenderStack",
            "metadata": {"name": name, "namespace": "team-a", "uid": "0000-1111"},
            "spec": spec,
        });
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
