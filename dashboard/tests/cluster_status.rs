//! The stack page in a cluster: the dashboard reads a RecommenderStack's status through the
//! Kubernetes API. No API server runs here, so the operator's in-memory API (behind
//! `tower_test`, as kube-rs tests do) stands in for it.
#![cfg(feature = "ssr")]

use recstack_dashboard::server::StatusSource;
use recstack_operator::mock_api::MockApi;
use serde_json::json;

const STACKS: &str = "/apis/recstack.io/v1alpha1/namespaces/shop/recommenderstacks";

#[tokio::test]
async fn reads_conditions_and_components_from_the_stack_status() {
    let (client, api) = MockApi::start();
    api.put(
        STACKS,
        "recs",
        json!({
            "apiVersion": "recstack.io/v1alpha1",
            "kind": "RecommenderStack",
            "metadata": { "name": "recs", "namespace": "shop", "uid": "u1", "generation": 3 },
            "spec": {},
            "status": {
                "observedGeneration": 3,
                "phase": "Degraded",
                "conditions": [
                    { "type": "Ready", "status": "False", "reason": "ComponentsUnavailable",
                      "message": "ranking: 1/2 ready", "lastTransitionTime": "2026-11-22T10:00:00Z" },
                    { "type": "Degraded", "status": "True", "reason": "ComponentsUnavailable",
                      "message": "ranking: 1/2 ready", "lastTransitionTime": "2026-11-22T10:00:00Z" }
                ],
                "components": [
                    { "name": "gateway", "desiredReplicas": 2, "readyReplicas": 2 },
                    { "name": "ranking", "desiredReplicas": 2, "readyReplicas": 1 }
                ]
            }
        }),
    );
    let source = StatusSource::Cluster {
        client: client.clone(),
        namespace: "shop".into(),
        name: "recs".into(),
    };
    let s = source.status().await;
    assert_eq!(s.name, "shop/recs");
    assert_eq!(s.phase, "Degraded");
    let kinds: Vec<(&str, &str)> = s
        .conditions
        .iter()
        .map(|c| (c.kind.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(kinds, [("Ready", "False"), ("Degraded", "True")]);
    assert_eq!(s.conditions[0].message, "ranking: 1/2 ready");
    let components: Vec<(&str, bool, &str)> = s
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.ready, c.detail.as_str()))
        .collect();
    assert_eq!(
        components,
        [
            ("gateway", true, "2/2 replicas ready"),
            ("ranking", false, "1/2 replicas ready")
        ]
    );
    // One GET of that one stack: what the dashboard's Role allows.
    let calls: Vec<String> = api.calls().iter().map(|c| format!("{} {}", c.method, c.path)).collect();
    assert_eq!(calls, [format!("GET {STACKS}/recs")]);

    // A stack that is not there: the page says so instead of failing.
    let missing = StatusSource::Cluster {
        client,
        namespace: "shop".into(),
        name: "gone".into(),
    };
    let s = missing.status().await;
    assert_eq!(s.phase, "Unknown");
    assert_eq!(s.conditions[0].kind, "Readable");
    assert_eq!(s.conditions[0].status, "False");
    assert!(
        s.conditions[0].message.contains("gone") || s.conditions[0].message.contains("404"),
        "{:?}",
        s.conditions[0]
    );
}
