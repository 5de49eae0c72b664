//! The contract between the operator and the services: the runtime config the operator renders
//! for the sample stacks is what `recstack serve <component> --config` reads.

use std::path::PathBuf;

use recstack_crds::RecommenderStack;
use recstack_operator::render::{self, ChildKind};
use recstack_services::config::{ModelUri, RuntimeConfig, TraceStoreConfig, model_uri};
use recstack_services::traces::{POD_EMBEDDED_PATH, TraceSettings, TraceStoreSpec};

fn rendered_config(sample: &str) -> RuntimeConfig {
    let path =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(format!("../manifests/samples/{sample}.yaml"));
    let stack: RecommenderStack = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let children = render::render(&stack).unwrap();
    let cm = children
        .iter()
        .find(|c| c.kind == ChildKind::ConfigMap && c.name().ends_with("-config"))
        .expect("a runtime ConfigMap");
    let data = &cm.object.data["data"]["config.yaml"];
    RuntimeConfig::parse(data.as_str().unwrap()).unwrap()
}

#[test]
fn the_minimal_stack_config_names_every_peer_and_a_local_model() {
    let c = rendered_config("minimal");
    // Every call in the table the NetworkPolicies are rendered from resolves; any other is
    // refused, naming the field and why.
    for &(caller, callee) in recstack_crds::GRPC_CALLS {
        let url = c.endpoint_for(caller, callee).unwrap();
        assert!(
            url.starts_with("http://") && url.ends_with(&format!(":{}", c.grpc_port)),
            "{url}"
        );
    }
    let e = c
        .endpoint_for(recstack_crds::Component::Recall, recstack_crds::Component::Feature)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("grpcEndpoints.feature:") && e.contains("call table"),
        "{e}"
    );
    assert_eq!(c.ranking.device, "cpu");
    assert_eq!(c.gateway.latency_target_ms, Some(5), "the CRD's default objective");
    // The model and artifacts the services image bundles.
    assert_eq!(
        model_uri("ranking.model.uri", &c.ranking.model.uri).unwrap(),
        ModelUri::Local(PathBuf::from("/usr/share/recstack/models/gbdt/model.onnx"))
    );
    assert_eq!(c.artifacts.uri, "file:///usr/share/recstack/artifacts");
    assert_eq!(c.artifacts.poll_seconds, 30);
    let (grpc, http) = c.listen();
    assert_eq!((grpc.port(), http.port()), (c.grpc_port, c.http_port));
    assert!(grpc.ip().is_unspecified());
    // No traceStore in the spec: the gateway keeps traces in its embedded store.
    assert_eq!(c.trace_store, TraceStoreConfig::Embedded);
    let t = TraceSettings::from_config(&c).unwrap();
    assert_eq!(t.spec, TraceStoreSpec::Embedded(POD_EMBEDDED_PATH.into()));
}

#[test]
fn the_gpu_stack_config_asks_for_cuda_a_canary_and_redis() {
    let c = rendered_config("gpu-ranking");
    assert_eq!(c.ranking.device, "cuda");
    assert_eq!(c.gateway.latency_target_ms, Some(8));
    assert_eq!(c.ranking.model.canary_percent, 10);
    assert_eq!(c.ranking.batching.max_batch, 32768);
    assert_eq!(c.ranking.batching.max_requests, 64);
    assert_eq!(c.ranking.batching.max_wait_micros, 1000);
    assert_eq!(
        c.feature_store.redis_url.as_deref(),
        Some("redis://redis.recstack-data.svc:6379")
    );
    // Object-store model URIs are fetched by the service.
    assert_eq!(
        model_uri("ranking.model.uri", &c.ranking.model.uri).unwrap(),
        ModelUri::Remote("s3://models/deepfm/7/model.onnx".into())
    );
    // Traces to Elasticsearch with the Secret mounted as files, sampling and retention.
    let t = TraceSettings::from_config(&c).unwrap();
    let TraceStoreSpec::Elasticsearch { url, credentials_dir } = &t.spec else {
        panic!("{t:?}")
    };
    assert_eq!(url, "https://elasticsearch.observability.svc:9200");
    assert!(credentials_dir.as_ref().unwrap().is_absolute(), "{credentials_dir:?}");
    assert_eq!((t.full_sample, t.retention_days), (Some(0.05), 14));
}

/// The HPA's `recstack_requests_per_second` exists only through the prometheus-adapter rule in
/// manifests/: its name must be the one the operator renders, and its series query selects one
/// request counter for each online service.
#[test]
fn the_adapter_rule_serves_the_hpa_metric_from_every_online_service() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("../manifests/prometheus-adapter/rules.yaml")).unwrap())
            .unwrap();
    let rule = &rules[0];
    let series = rule["seriesQuery"].as_str().unwrap();
    let stack: RecommenderStack =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("../manifests/samples/gpu-ranking.yaml")).unwrap())
            .unwrap();
    let hpa = render::render(&stack)
        .unwrap()
        .into_iter()
        .find(|c| c.kind == ChildKind::HorizontalPodAutoscaler && c.object.data.to_string().contains("Pods"))
        .expect("an HPA on requests per second");
    let metric = hpa.object.data["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| m["pods"]["metric"]["name"].as_str())
        .unwrap()
        .to_string();
    assert_eq!(rule["name"]["as"].as_str(), Some(metric.as_str()));
    // `recstack_(a|b)_requests_total|recstack_(c)_calls_total` → the counters it selects.
    let selected: Vec<String> = series
        .split("recstack_(")
        .skip(1)
        .flat_map(|part| {
            let (names, rest) = part.split_once(")_").unwrap();
            let suffix = rest.split("_total").next().unwrap();
            names
                .split('|')
                .map(move |n| format!("recstack_{n}_{suffix}"))
                .collect::<Vec<_>>()
        })
        .collect();
    // One request counter per online service (their names: each service's metrics module).
    let mut services: Vec<&str> = selected
        .iter()
        .map(|c| c.trim_start_matches("recstack_").split('_').next().unwrap())
        .collect();
    services.sort();
    assert_eq!(
        services,
        ["features", "gateway", "ingest", "ranking", "recall", "rerank"]
    );
}
