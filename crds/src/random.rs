//! Stacks nobody wrote, for tests (feature `random`): a `RecommenderStack` drawn from the CRD's
//! own OpenAPI schema. A draw takes one of the given sample specs and draws one to four of its
//! fields, or whole parts, anew: integers at and between their bounds, enums, lists, and strings
//! from a pool of plausible and broken values for the field; now and then the GPU settings
//! whole. Stacks near the ones people write, which the CRD's rules mostly accept, and far from
//! the samples' values. Seeded, so a failure names a stack that can be drawn again.
//! `operator/tests/random_stacks.rs` renders them; the cluster e2e applies them to a real API
//! server.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use std::path::Path;

/// Draws stacks: one generator, the CRD's spec schema and the samples to start from.
pub struct Draw {
    rng: Rng,
    schema: Value,
    samples: Vec<Value>,
}

impl Draw {
    /// Draws from `samples` (specs, as JSON) with `seed`.
    pub fn new(seed: u64, samples: Vec<Value>) -> Self {
        let schema = crate::strict::openapi_schema()["properties"]["spec"].clone();
        Self {
            rng: Rng(ChaCha8Rng::seed_from_u64(seed)),
            schema,
            samples,
        }
    }

    /// A stack's `spec`.
    pub fn spec(&mut self) -> Value {
        let rng = &mut self.rng;
        let mut spec = rng.pick(&self.samples);
        for _ in 0..1 + rng.below(4) {
            overlay(&mut spec, &self.schema, rng);
        }
        // GPUs, node selectors and tolerations, more often than one field in ~150 would.
        if rng.chance(20) {
            let gpu = &self.schema["properties"]["ranking"]["properties"]["gpu"];
            spec["ranking"]["gpu"] = draw(gpu, "gpu", rng, 0);
        }
        spec
    }

    /// A whole `RecommenderStack` of `spec`, as JSON.
    pub fn document(name: &str, namespace: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "recstack.io/v1alpha1",
            "kind": "RecommenderStack",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        })
    }

    /// A stack name: short, or at the CRD's limits (45 with a stream engine, 51 without).
    pub fn name(&mut self) -> String {
        match self.rng.below(4) {
            0 => "s".into(),
            1 => "stack-1".into(),
            2 => "a".repeat(45),
            _ => "b".repeat(51),
        }
    }
}

/// The specs of the sample stacks in `dir` (`manifests/samples`), the draws' starting points.
pub fn samples(dir: &Path) -> std::io::Result<Vec<Value>> {
    ["minimal", "gpu-ranking", "flink-streaming"]
        .iter()
        .map(|sample| {
            let text = std::fs::read_to_string(dir.join(format!("{sample}.yaml")))?;
            let stack: Value = serde_yaml::from_str(&text).map_err(std::io::Error::other)?;
            Ok(stack["spec"].clone())
        })
        .collect()
}

/// A seeded generator and the few draws the stacks need.
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
                let required = required(schema);
                for (key, child) in properties {
                    if required.contains(key) || (depth < 6 && rng.chance(40)) {
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
        let Some(object) = here.as_object_mut() else {
            return;
        };
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
