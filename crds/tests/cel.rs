//! Each CEL rule of the CRD rejects the spec it is meant to reject, with its message, and
//! accepts the sample stacks. Rules are evaluated client-side by kube's `cel` support, the
//! same expressions the API server runs.

use recstack_crds::RecommenderStack;

/// Messages of the rules `spec` (YAML under `spec:`) breaks. A spec that says nothing about
/// streaming runs none (`stream: {engine: none}` is added), so each test sees only the rules it
/// is about; the stream-wiring rules have their own test.
fn broken_rules(spec: &str) -> Vec<String> {
    if spec.contains("stream:") {
        broken_rules_as_written(spec)
    } else {
        broken_rules_as_written(&format!("{spec}\n  stream: {{engine: none}}"))
    }
}

fn broken_rules_as_written(spec: &str) -> Vec<String> {
    let doc = format!(
        "apiVersion: recstack.io/v1alpha1\nkind: RecommenderStack\nmetadata: {{name: s, namespace: n}}\nspec:\n{spec}"
    );
    let stack: RecommenderStack = serde_yaml::from_str(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
    match stack.validate_cel() {
        Ok(()) => Vec::new(),
        Err(errors) => errors.as_slice().iter().map(|e| e.message.clone()).collect(),
    }
}

fn assert_rejects(spec: &str, expected: &str) {
    let broken = broken_rules(spec);
    assert!(
        broken.iter().any(|m| m.contains(expected)),
        "expected a rule saying {expected:?}; got {broken:?} for\n{spec}"
    );
}

#[test]
fn samples_and_a_stack_without_streaming_pass() {
    assert_eq!(
        broken_rules_as_written("  stream: {engine: none}"),
        Vec::<String>::new()
    );
    for sample in ["minimal", "gpu-ranking", "flink-streaming"] {
        let path = format!(
            "{}/../manifests/samples/{sample}.yaml",
            std::env::var("CARGO_MANIFEST_DIR").unwrap()
        );
        let stack: RecommenderStack = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if let Err(e) = stack.validate_cel() {
            panic!("{sample}: {e}");
        }
    }
}

#[test]
fn autoscaling_min_must_not_exceed_max() {
    assert_rejects(
        "  gateway: {autoscaling: {minReplicas: 5, maxReplicas: 2, targetCpuUtilization: 60}}",
        "minReplicas must be less than or equal to autoscaling.maxReplicas",
    );
    assert!(
        broken_rules("  gateway: {autoscaling: {minReplicas: 2, maxReplicas: 2, targetCpuUtilization: 60}}").is_empty()
    );
}

#[test]
fn autoscaling_needs_a_target() {
    assert_rejects(
        "  recall: {autoscaling: {minReplicas: 1, maxReplicas: 3}}",
        "autoscaling needs a target",
    );
    assert!(
        broken_rules("  recall: {autoscaling: {minReplicas: 1, maxReplicas: 3, targetRequestsPerSecond: 100}}")
            .is_empty()
    );
}

#[test]
fn replicas_and_autoscaling_are_exclusive() {
    for component in ["gateway", "recall", "rerank", "ingest", "ranking", "feature"] {
        assert_rejects(
            &format!(
                "  {component}: {{replicas: 3, autoscaling: {{minReplicas: 1, maxReplicas: 3, targetCpuUtilization: 50}}}}"
            ),
            "set either replicas (a fixed count) or autoscaling, not both",
        );
    }
}

#[test]
fn gpus_only_on_ranking() {
    for component in ["gateway", "recall", "rerank", "ingest", "feature"] {
        assert_rejects(
            &format!("  {component}: {{resources: {{limits: {{nvidia.com/gpu: '1'}}}}}}"),
            "GPUs can only be requested by the ranking component",
        );
    }
    assert_rejects(
        "  recall: {resources: {requests: {nvidia.com/gpu: '1'}}}",
        "GPUs can only be requested by the ranking component",
    );
    assert_rejects(
        "  ranking: {resources: {limits: {nvidia.com/gpu: '1'}}}",
        "ranking GPUs are set with spec.ranking.gpu.count",
    );
    assert!(broken_rules("  ranking: {gpu: {count: 2}}").is_empty());
}

#[test]
fn network_policy_namespaces_are_namespace_names() {
    for bad in ["A_B", "app.kubernetes.io/name", "-a", "a b"] {
        assert_rejects(
            &format!("  policies: {{networkPolicy: {{gatewayClientNamespaces: [apps, '{bad}']}}}}"),
            "gatewayClientNamespaces entries must be namespace names",
        );
        assert_rejects(
            &format!("  policies: {{networkPolicy: {{metricsNamespace: '{bad}'}}}}"),
            "metricsNamespace must be a namespace name",
        );
    }
    assert_eq!(
        broken_rules(
            "  policies: {networkPolicy: {gatewayClientNamespaces: [apps, team-2], metricsNamespace: monitoring}}"
        ),
        Vec::<String>::new()
    );
}

#[test]
fn canary_percent_and_canary_model() {
    assert_rejects(
        "  ranking: {model: {canaryPercent: 101, canaryUri: x, canaryVersion: v}}",
        "between 0 and 100",
    );
    assert_rejects("  ranking: {model: {canaryPercent: -1}}", "between 0 and 100");
    assert_rejects(
        "  ranking: {model: {canaryPercent: 10}}",
        "needs ranking.model.canaryUri",
    );
    assert_rejects(
        "  ranking: {model: {canaryPercent: 10, canaryUri: s3://m/2}}",
        "needs ranking.model.canaryVersion",
    );
    assert!(broken_rules("  ranking: {model: {canaryPercent: 10, canaryUri: s3://m/2, canaryVersion: v2}}").is_empty());
}

#[test]
fn flink_fields_only_with_engine_flink() {
    assert_rejects(
        "  stream: {engine: builtin, flink: {taskSlots: 2}}",
        "only allowed when stream.engine is 'flink'",
    );
    assert_rejects(
        "  stream: {engine: none, workload: {image: x}}",
        "stream.workload settings are only allowed when a stream engine runs",
    );
    // With flink the StatefulSet applying the job's output writes to Redis.
    assert_rejects(
        "  eventLog: {bootstrapServers: ['k:9092']}\n  artifacts: {uri: 's3://a/b'}\n  stream: {engine: flink}",
        "set spec.feature.redisUrl",
    );
    assert!(
        broken_rules("  eventLog: {bootstrapServers: ['k:9092']}\n  artifacts: {uri: 's3://a/b'}\n  feature: {redisUrl: 'redis://r:6379'}\n  stream: {engine: flink, workload: {image: x}}")
            .is_empty()
    );
    assert_rejects(
        "  stream: {engine: flink}",
        "stream.engine flink reads events from Kafka",
    );
    assert_rejects(
        "  eventLog: {bootstrapServers: ['k:9092']}\n  stream: {engine: flink, flink: {version: '1.20'}}",
        "must look like v1_20",
    );
    assert!(
        broken_rules(
            "  eventLog: {bootstrapServers: ['k:9092']}\n  feature: {redisUrl: 'redis://r:6379'}\n  stream: {engine: flink, flink: {taskSlots: 4, stateUri: 's3://b/flink'}}"
        )
        .is_empty()
    );
    // Checkpoints and savepoints need an object store: the artifacts' (state beside them) or
    // their own.
    assert_rejects(
        "  eventLog: {bootstrapServers: ['k:9092']}\n  stream: {engine: flink}",
        "stream.engine flink keeps its checkpoints and savepoints on an object store",
    );
    assert!(
        broken_rules(
            "  eventLog: {bootstrapServers: ['k:9092']}\n  feature: {redisUrl: 'redis://r:6379'}\n  artifacts: {uri: 's3://b/shop/artifacts'}\n  stream: {engine: flink}"
        )
        .is_empty()
    );
    assert_rejects(
        "  eventLog: {bootstrapServers: ['k:9092']}\n  stream: {engine: flink, flink: {stateUri: 'file:///tmp/flink'}}",
        "stream.flink.stateUri must be an object store prefix",
    );
}

#[test]
fn stream_window_is_a_duration() {
    for bad in ["0m", "1 m", "1d", "m", "-1s"] {
        assert_rejects(
            &format!("  stream: {{window: '{bad}'}}"),
            "stream.window must be a duration",
        );
    }
    for good in ["30s", "1m", "12h"] {
        assert!(
            broken_rules(&format!("  stream: {{engine: none, window: '{good}'}}")).is_empty(),
            "{good}"
        );
    }
}

#[test]
fn trace_store_url_and_sampling() {
    assert_rejects(
        "  traceStore: {elasticsearchUrl: 'es:9200'}",
        "must be an http:// or https:// URL",
    );
    assert_rejects(
        "  traceStore: {elasticsearchUrl: 'https://es:9200', sampling: 1.5}",
        "between 0.0 and 1.0",
    );
    assert!(broken_rules("  traceStore: {elasticsearchUrl: 'https://es:9200', sampling: 1.0}").is_empty());
}

#[test]
fn event_log_and_redis_addresses() {
    assert_rejects("  eventLog: {bootstrapServers: ['kafka']}", "entries must be host:port");
    assert_rejects(
        "  feature: {redisUrl: 'http://redis:6379'}",
        "feature.redisUrl must be redis://host:port[/db] (one server) or redis+cluster://",
    );
    assert!(broken_rules("  feature: {redisUrl: 'redis+cluster://r-0.r:6379,r-1.r:6379'}").is_empty());
    // The topic's settings: no acknowledgement could ever need more brokers than hold a copy.
    assert_rejects(
        "  eventLog: {bootstrapServers: ['kafka:9092'], replicationFactor: 1, minInsyncReplicas: 2}",
        "eventLog.minInsyncReplicas must not exceed eventLog.replicationFactor",
    );
    assert_rejects(
        "  eventLog: {bootstrapServers: ['kafka:9092'], topic: 'events/raw'}",
        "eventLog.topic must be a Kafka topic name",
    );
    // The stream replicas share the partitions: more replicas than partitions would idle.
    assert_rejects(
        "  eventLog: {bootstrapServers: ['kafka:9092'], partitions: 2}\n  feature: {redisUrl: 'redis://r:6379'}\n  stream: {parallelism: 3}",
        "stream.parallelism must not exceed eventLog.partitions",
    );
    assert!(
        broken_rules("  eventLog: {bootstrapServers: ['kafka:9092'], partitions: 3}\n  feature: {redisUrl: 'redis://r:6379'}\n  stream: {parallelism: 3}")
            .is_empty()
    );
}

#[test]
fn stack_names_fit_every_derived_name() {
    let with_name = |name: &str| {
        let doc = format!(
            "apiVersion: recstack.io/v1alpha1\nkind: RecommenderStack\nmetadata: {{name: '{name}', namespace: n}}\nspec: {{stream: {{engine: none}}}}"
        );
        let stack: RecommenderStack = serde_yaml::from_str(&doc).unwrap();
        stack.validate_cel().err().map(|e| e.to_string())
    };
    assert_eq!(with_name(&"a".repeat(51)), None);
    for bad in ["a".repeat(52), "1abc".into(), "a.b".into(), "abc-".into()] {
        let err = with_name(&bad).unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(
            err.contains("metadata.name must be a DNS-1035 label of at most 51"),
            "{err}"
        );
    }
    // A stream engine runs a StatefulSet, whose pods' controller-revision-hash label is the
    // tightest fit.
    let streaming = |name: &str| {
        let doc = format!(
            "apiVersion: recstack.io/v1alpha1\nkind: RecommenderStack\nmetadata: {{name: '{name}', namespace: n}}\nspec: {{eventLog: {{bootstrapServers: ['k:9092']}}, feature: {{redisUrl: 'redis://r:6379'}}}}"
        );
        let stack: RecommenderStack = serde_yaml::from_str(&doc).unwrap();
        stack.validate_cel().err().map(|e| e.to_string())
    };
    assert_eq!(streaming(&"a".repeat(45)), None);
    let err = streaming(&"a".repeat(46)).expect("a 46-character streaming stack accepted");
    assert!(
        err.contains("metadata.name must be at most 45 characters, or stream.engine none"),
        "{err}"
    );
}

#[test]
fn dashboard_needs_a_shared_trace_store() {
    assert_rejects(
        "  dashboard: {}",
        "dashboard reads traces from a shared store: set spec.traceStore",
    );
    assert!(broken_rules("  dashboard: {replicas: 2}\n  traceStore: {elasticsearchUrl: 'https://es:9200'}").is_empty());
    assert_rejects(
        "  dashboard: {resources: {limits: {nvidia.com/gpu: 1}}}\n  traceStore: {elasticsearchUrl: 'https://es:9200'}",
        "GPUs can only be requested by the ranking component",
    );
}

/// The built-in stream job runs in its own pods: it needs the events in a shared log and a
/// Redis to write to. The default engine is builtin, so an empty spec says what to set.
#[test]
fn builtin_streaming_needs_a_shared_event_log_and_redis() {
    let empty = broken_rules_as_written("  {}");
    assert_eq!(empty.len(), 2, "{empty:?}");
    assert_rejects(
        "  stream: {engine: builtin}\n  feature: {redisUrl: 'redis://r:6379'}",
        "stream.engine builtin reads the events ingest logs from another pod: set spec.eventLog.bootstrapServers",
    );
    assert_rejects(
        "  stream: {engine: builtin}\n  eventLog: {bootstrapServers: ['k:9092']}",
        "the stream job writes its windows to Redis (with engine flink, the StatefulSet applying the job's output does): set spec.feature.redisUrl, or set stream.engine: none",
    );
    assert!(
        broken_rules_as_written(
            "  stream: {engine: builtin}\n  eventLog: {bootstrapServers: ['k:9092']}\n  feature: {redisUrl: 'redis://r:6379'}"
        )
        .is_empty()
    );
    // Flink needs both too (its output is applied to Redis by the stream StatefulSet); `none`
    // needs neither.
    assert_eq!(
        broken_rules_as_written(
            "  stream: {engine: flink, flink: {stateUri: 's3://b/f'}}\n  eventLog: {bootstrapServers: ['k:9092']}"
        )
        .len(),
        1
    );
    assert!(
        broken_rules_as_written(
            "  stream: {engine: flink, flink: {stateUri: 's3://b/f'}}\n  eventLog: {bootstrapServers: ['k:9092']}\n  feature: {redisUrl: 'redis://r:6379'}"
        )
        .is_empty()
    );
    assert!(broken_rules_as_written("  stream: {engine: none}").is_empty());
}

#[test]
fn model_and_artifact_uris_name_a_readable_scheme() {
    assert_rejects(
        "  ranking: {model: {uri: 'ftp://host/m.onnx'}}",
        "ranking.model.uri must be file:///<absolute path> or an object store URI",
    );
    assert_rejects(
        "  ranking: {model: {uri: 'file://relative/m.onnx'}}",
        "ranking.model.uri must be file:///<absolute path>",
    );
    assert_rejects(
        "  artifacts: {uri: 'artifacts'}",
        "artifacts.uri must be file:///<absolute path> (a path inside every pod) or an object store URI",
    );
    assert_rejects(
        "  artifacts: {uri: 's3://b/a', endpoint: 'minio:9000'}",
        "artifacts.endpoint must be an http:// or https:// URL with no path",
    );
    assert!(broken_rules("  artifacts: {uri: 's3://b/a', endpoint: 'http://minio.storage.svc:9000'}\n  ranking: {model: {uri: 'gs://m/model.onnx'}}").is_empty());
}

#[test]
fn experiments_need_unique_variants_and_a_plain_name() {
    assert_rejects(
        "  experiment: {name: ab, variants: [{name: a, mmrLambda: 0.5}, {name: a, mmrLambda: 0.7}]}",
        "experiment.variants names must be unique",
    );
    assert_rejects(
        "  experiment: {name: 'AB test', variants: [{name: a, mmrLambda: 0.5}]}",
        "experiment.name must be lower-case letters, digits and '-'",
    );
    assert!(
        broken_rules(
            "  experiment: {name: mmr-lambda, trafficPercent: 20, variants: [{name: control, mmrLambda: 0.7}, {name: diverse, mmrLambda: 0.5}]}\n  businessRules: {block: ['0110912'], pin: [{item: '1375666', position: 0}]}"
        )
        .is_empty()
    );
}

#[test]
fn a_build_publishes_to_an_object_store_on_a_valid_schedule() {
    assert_rejects(
        "  build: {}",
        "build publishes to artifacts.uri, which every pod must read",
    );
    let s3 = "  artifacts: {uri: 's3://b/stack/artifacts'}\n";
    assert_eq!(broken_rules(&format!("{s3}  build: {{}}")), Vec::<String>::new());
    for ok in ["0 3 * * *", "*/15  * * * 1-5", "@daily", "@hourly"] {
        assert_eq!(
            broken_rules(&format!("{s3}  build: {{schedule: '{ok}', data: 's3://b/ratings'}}")),
            Vec::<String>::new(),
            "{ok}"
        );
    }
    for bad in ["0 3 * *", "every night", "@often", "0 3 * * * *"] {
        assert_rejects(
            &format!("{s3}  build: {{schedule: '{bad}'}}"),
            "build.schedule must be a cron schedule of five fields",
        );
    }
    assert_rejects(
        &format!("{s3}  build: {{data: 'ratings'}}"),
        "build.data must be file:///<absolute path>",
    );
    // The CronJob's name, <stack>-build, must fit in 52 characters.
    let with_name = |name: &str| {
        let doc = format!(
            "apiVersion: recstack.io/v1alpha1\nkind: RecommenderStack\nmetadata: {{name: '{name}', namespace: n}}\nspec: {{stream: {{engine: none}}, artifacts: {{uri: 's3://b/a'}}, build: {{schedule: '@daily'}}}}"
        );
        let stack: RecommenderStack = serde_yaml::from_str(&doc).unwrap();
        stack.validate_cel().err().map(|e| e.to_string())
    };
    assert_eq!(with_name(&"a".repeat(46)), None);
    let err = with_name(&"a".repeat(47)).expect("a 47-character stack with a schedule accepted");
    assert!(
        err.contains("metadata.name must be at most 46 characters to use a schedule"),
        "{err}"
    );
}

#[test]
fn otlp_endpoint_and_trace_link() {
    assert_rejects(
        "  otlp: {endpoint: 'otel:4317'}",
        "otlp.endpoint is the collector's OTLP/gRPC URL",
    );
    assert_rejects(
        "  otlp: {endpoint: 'http://otel:4317', traceLink: 'http://jaeger:16686/trace/'}",
        "otlp.traceLink must contain {trace_id}",
    );
    assert!(
        broken_rules("  otlp: {endpoint: 'http://otel:4317', traceLink: 'http://jaeger:16686/trace/{trace_id}'}")
            .is_empty()
    );
}

#[test]
fn access_debug_rate() {
    assert_rejects("  access: {debugPerSecond: -1}", "access.debugPerSecond");
    assert_rejects("  access: {debugPerSecond: 5000}", "access.debugPerSecond");
    assert!(broken_rules("  access: {debugPerSecond: 0, pseudonymizeUsers: true, secretRef: {name: mine}}").is_empty());
}
