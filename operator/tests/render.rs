//! The rendered children of the sample stacks: snapshots a reviewer reads as YAML, structural
//! checks, and strict schema validation against the oldest and newest supported Kubernetes.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use recstack_crds::{Component, RecommenderStack};
use recstack_operator::render::{self, Child, ChildKind};
use serde_json::{Value, json};

fn render_sample(name: &str) -> Vec<Child> {
    render::render(&common::sample(name)).expect("sample renders")
}

fn yaml(children: &[Child]) -> String {
    children
        .iter()
        .map(|c| format!("---\n{}", serde_yaml::to_string(&c.object).unwrap()))
        .collect()
}

fn find(children: &[Child], kind: ChildKind, name: &str) -> Value {
    let c = children
        .iter()
        .find(|c| c.kind == kind && c.name() == name)
        .unwrap_or_else(|| panic!("no {kind:?} {name}"));
    serde_json::to_value(&c.object).unwrap()
}

fn count(children: &[Child]) -> BTreeMap<ChildKind, usize> {
    children.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.kind).or_default() += 1;
        m
    })
}

#[test]
fn snapshots_of_the_samples() {
    for sample in ["minimal", "gpu-ranking", "flink-streaming"] {
        insta::assert_snapshot!(sample, yaml(&render_sample(sample)));
    }
}

#[test]
fn minimal_stack_has_every_workload_and_policy() {
    let children = render_sample("minimal");
    let counts = count(&children);
    assert_eq!(
        counts[&ChildKind::Deployment],
        6,
        "6 online components, no stream worker (engine none)"
    );
    assert_eq!(counts[&ChildKind::Service], 6, "one per online component");
    // gateway autoscales explicitly; ranking and feature by default; the rest are fixed.
    assert_eq!(counts[&ChildKind::HorizontalPodAutoscaler], 3);
    assert_eq!(counts[&ChildKind::PodDisruptionBudget], 6);
    assert_eq!(
        counts[&ChildKind::NetworkPolicy],
        8,
        "default deny + dns + one per deployed component"
    );
    // PriorityClasses belong to the install; pods name them.
    assert_eq!(counts.len(), 6, "{counts:?}");
    assert!(!counts.contains_key(&ChildKind::FlinkDeployment));

    let recall = find(&children, ChildKind::Deployment, "minimal-recall");
    assert_eq!(recall["spec"]["replicas"], 2);
    let gateway = find(&children, ChildKind::Deployment, "minimal-gateway");
    assert!(
        gateway["spec"].get("replicas").is_none(),
        "an autoscaled Deployment leaves replicas to the HPA"
    );
    let pod = &gateway["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["priorityClassName"], "recstack-online");
    assert_eq!(gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    // The stream worker (in the GPU sample) runs at the offline class.
    let gpu = render_sample("gpu-ranking");
    let stream = find(&gpu, ChildKind::StatefulSet, "gpu-stream");
    assert_eq!(
        stream["spec"]["template"]["spec"]["priorityClassName"],
        "recstack-offline"
    );
    // Its replicas share the event log: each learns its ordinal and how many they are.
    assert_eq!(stream["spec"]["replicas"], 2);
    assert_eq!(stream["spec"]["serviceName"], "gpu-stream");
    assert_eq!(stream["spec"]["podManagementPolicy"], "Parallel");
    let env = stream["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned().unwrap_or_default();
    assert_eq!(var("RECSTACK_STREAM_REPLICAS")["value"], "2");
    assert_eq!(
        var("RECSTACK_STREAM_REPLICA")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    let governing = find(&gpu, ChildKind::Service, "gpu-stream");
    assert_eq!(governing["spec"]["clusterIP"], "None");
    assert!(
        !gpu.iter()
            .any(|c| c.kind == ChildKind::Deployment && c.name() == "gpu-stream")
    );

    let hpa = find(&children, ChildKind::HorizontalPodAutoscaler, "minimal-gateway");
    assert_eq!(
        (hpa["spec"]["minReplicas"].as_i64(), hpa["spec"]["maxReplicas"].as_i64()),
        (Some(2), Some(6))
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
}

#[test]
fn gpu_ranking_gets_gpus_node_selector_and_tolerations() {
    let children = render_sample("gpu-ranking");
    let ranking = find(&children, ChildKind::Deployment, "gpu-ranking");
    let pod = &ranking["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(pod["containers"][0]["resources"]["limits"]["cpu"], "8");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    // No other component asks for a GPU.
    for c in children
        .iter()
        .filter(|c| c.kind == ChildKind::Deployment && c.name() != "gpu-ranking")
    {
        let v = serde_json::to_value(&c.object).unwrap();
        assert!(
            v["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                .get("nvidia.com/gpu")
                .is_none()
        );
    }
    let hpa = find(&children, ChildKind::HorizontalPodAutoscaler, "gpu-ranking");
    assert_eq!(
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"],
        "recstack_requests_per_second"
    );
    // Credentials come from the Secret, never the ConfigMap.
    let gateway = find(&children, ChildKind::Deployment, "gpu-gateway");
    let volumes = gateway["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("\"secretName\":\"es-credentials\""), "{volumes}");
    let env = gateway["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains("secretKeyRef"), "no secrets in env: {env}");
    let config = find(&children, ChildKind::ConfigMap, "gpu-config");
    let config_yaml = config["data"]["config.yaml"].as_str().unwrap();
    assert!(config_yaml.contains("device: cuda"), "{config_yaml}");
    assert!(config_yaml.contains("canaryPercent: 10"), "{config_yaml}");
    assert!(
        config_yaml.contains("credentialsDir: /var/run/secrets/recstack/elasticsearch"),
        "{config_yaml}"
    );
}

#[test]
fn network_policies_allow_exactly_the_request_and_event_paths() {
    let children = render_sample("gpu-ranking");
    let deny = find(&children, ChildKind::NetworkPolicy, "gpu-default-deny");
    assert_eq!(deny["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());

    // Who may call whom, read back from the rendered policies both ways (each callee's
    // ingress, each caller's egress), must be exactly the call table the services' clients
    // are built from.
    let peers = |rules: &serde_json::Value, side: &str| -> Vec<String> {
        rules
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| rule[side].as_array().cloned().unwrap_or_default())
            .filter_map(|peer| {
                peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    };
    let mut by_ingress = std::collections::BTreeSet::new();
    let mut by_egress = std::collections::BTreeSet::new();
    for component in Component::ALL.into_iter().chain(Component::OBSERVABILITY) {
        let np = find(
            &children,
            ChildKind::NetworkPolicy,
            &format!("gpu-{}", component.name()),
        );
        for caller in peers(&np["spec"]["ingress"], "from") {
            by_ingress.insert((caller, component.name().to_string()));
        }
        for callee in peers(&np["spec"]["egress"], "to") {
            by_egress.insert((component.name().to_string(), callee));
        }
    }
    let table: std::collections::BTreeSet<(String, String)> = recstack_crds::GRPC_CALLS
        .iter()
        .chain(recstack_crds::HTTP_CALLS)
        .map(|(a, b)| (a.name().to_string(), b.name().to_string()))
        .collect();
    assert_eq!(by_ingress, table, "ingress rules vs the call table");
    assert_eq!(by_egress, table, "egress rules vs the call table");
    assert!(
        table.contains(&("ingest".into(), "recall".into())),
        "impressions reach recall"
    );

    let gateway = find(&children, ChildKind::NetworkPolicy, "gpu-gateway");
    let ingress = gateway["spec"]["ingress"].to_string();
    assert!(
        ingress.contains("storefront"),
        "gateway clients restricted to the listed namespace: {ingress}"
    );
    let egress = gateway["spec"]["egress"].to_string();
    assert!(egress.contains("9200"), "gateway reaches Elasticsearch: {egress}");
    let feature = find(&children, ChildKind::NetworkPolicy, "gpu-feature");
    assert!(
        feature["spec"]["egress"].to_string().contains("6379"),
        "feature reaches Redis"
    );
    let ranking = find(&children, ChildKind::NetworkPolicy, "gpu-ranking");
    assert!(
        ranking["spec"]["egress"].to_string().contains("443"),
        "ranking fetches its s3:// model"
    );
    let dns = find(&children, ChildKind::NetworkPolicy, "gpu-allow-dns");
    assert!(dns["spec"]["egress"][0]["ports"].to_string().contains("53"));
}

#[test]
fn the_dashboard_and_its_trace_query_service_when_asked_for() {
    // The minimal stack has no dashboard: none of its objects.
    let minimal = render_sample("minimal");
    for kind in [ChildKind::ServiceAccount, ChildKind::Role, ChildKind::RoleBinding] {
        assert!(!minimal.iter().any(|c| c.kind == kind), "{kind:?} without a dashboard");
    }
    assert!(
        !minimal
            .iter()
            .any(|c| c.name().ends_with("-dashboard") || c.name().ends_with("-traces"))
    );

    let children = render_sample("gpu-ranking");
    let dashboard = find(&children, ChildKind::Deployment, "gpu-dashboard");
    let pod = &dashboard["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "serve",
            "dashboard",
            "--http-addr",
            "0.0.0.0:8080",
            "--traces-url",
            "http://gpu-traces.recstack.svc:8080",
            "--stack",
            "gpu",
            "--namespace",
            "recstack",
            "--site",
            "/usr/share/recstack/dashboard",
            "--access-dir",
            "/var/run/secrets/recstack/access",
            "--gateway-url",
            "http://gpu-gateway.recstack.svc:8080",
        ]
    );
    // The access Secret (the operator's own: the sample names none) is mounted where the
    // dashboard, the trace service and the gateway read it; no other pod gets it.
    let access_volume = json!({ "name": "access", "secret": { "secretName": "gpu-access", "defaultMode": 0o440 } });
    for deployment in ["gpu-dashboard", "gpu-traces", "gpu-gateway"] {
        let pod = &find(&children, ChildKind::Deployment, deployment)["spec"]["template"]["spec"];
        assert!(
            pod["volumes"].as_array().unwrap().contains(&access_volume),
            "{deployment}"
        );
        let mounts = pod["containers"][0]["volumeMounts"].to_string();
        assert!(
            mounts.contains("\"/var/run/secrets/recstack/access\""),
            "{deployment}: {mounts}"
        );
    }
    for deployment in ["gpu-recall", "gpu-ranking", "gpu-rerank", "gpu-feature", "gpu-ingest"] {
        let pod = &find(&children, ChildKind::Deployment, deployment)["spec"]["template"]["spec"];
        assert!(!pod["volumes"].to_string().contains("gpu-access"), "{deployment}");
    }
    assert_eq!(pod["serviceAccountName"], "gpu-dashboard");
    assert_eq!(pod["automountServiceAccountToken"], true, "it reads the stack's status");
    assert_eq!(dashboard["spec"]["replicas"], 1);

    // The query service reads Elasticsearch with the mounted credentials.
    let traces = find(&children, ChildKind::Deployment, "gpu-traces");
    let pod = &traces["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].to_string();
    assert!(
        args.contains("\"traces\"") && args.contains("--trace-credentials-dir"),
        "{args}"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(pod["volumes"].to_string().contains("es-credentials"));

    // Read access to this one stack, nothing else.
    let role = find(&children, ChildKind::Role, "gpu-dashboard");
    assert_eq!(
        role["rules"],
        serde_json::json!([{
            "apiGroups": ["recstack.io"], "resources": ["recommenderstacks"],
            "resourceNames": ["gpu"], "verbs": ["get"],
        }])
    );
    let binding = find(&children, ChildKind::RoleBinding, "gpu-dashboard");
    assert_eq!(binding["subjects"][0]["name"], "gpu-dashboard");
    assert_eq!(binding["roleRef"]["name"], "gpu-dashboard");

    // The dashboard reaches the query service over HTTP; the query service reaches ES.
    let policy = find(&children, ChildKind::NetworkPolicy, "gpu-traces");
    let ingress = policy["spec"]["ingress"].to_string();
    assert!(ingress.contains("dashboard") && ingress.contains("8080"), "{ingress}");
    assert!(policy["spec"]["egress"].to_string().contains("9200"));
    let policy = find(&children, ChildKind::NetworkPolicy, "gpu-dashboard");
    let egress = policy["spec"]["egress"].to_string();
    assert!(egress.contains("traces") && egress.contains("6443"), "{egress}");
    assert!(policy["spec"]["ingress"].to_string().contains("storefront"));
}

#[test]
fn flink_engine_renders_the_job_and_the_stateful_set_applying_its_output() {
    let children = render_sample("flink-streaming");
    // The stream StatefulSet stays: it applies the job's output (the runtime config's engine
    // tells its pods so).
    let sts = find(&children, ChildKind::StatefulSet, "flink-stream");
    assert_eq!(sts["spec"]["replicas"], 4);
    let selector = &sts["spec"]["selector"]["matchLabels"];
    let flink = find(&children, ChildKind::FlinkDeployment, "flink-flink");
    assert_eq!(flink["apiVersion"], "flink.apache.org/v1beta1");
    assert_eq!(flink["spec"]["flinkVersion"], "v2_2");
    assert_eq!(flink["spec"]["job"]["parallelism"], 4);
    assert_eq!(
        flink["spec"]["podTemplate"]["spec"]["priorityClassName"],
        "recstack-offline"
    );
    // The StatefulSet's selector does not match the Flink pods.
    let pod_labels = flink["spec"]["podTemplate"]["metadata"]["labels"].as_object().unwrap();
    assert!(
        selector
            .as_object()
            .unwrap()
            .iter()
            .any(|(k, v)| pod_labels.get(k) != Some(v)),
        "{selector} selects {pod_labels:?}"
    );
    let sql = find(&children, ChildKind::ConfigMap, "flink-flink-sql");
    let sql = sql["data"]["recstack-aggregate.sql"].as_str().unwrap();
    assert!(
        sql.contains("TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '1' MINUTE)"),
        "{sql}"
    );
    assert!(sql.contains("kafka-0.kafka.recstack-data.svc:9092,kafka-1.kafka.recstack-data.svc:9092"));
    assert!(sql.contains("'topic' = 'recstack-events-aggregates'"), "{sql}");
    // The Flink pods' own policy: each other, the REST port for the Flink operator, Kafka, the
    // state's store and the API server.
    let policy = find(&children, ChildKind::NetworkPolicy, "flink-flink");
    let egress_ports: Vec<u64> = policy["spec"]["egress"][1]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(egress_ports, [443, 6443, 9092]);
    let policy_selector = policy["spec"]["podSelector"]["matchLabels"].as_object().unwrap();
    assert!(
        policy_selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "{policy_selector:?} selects the Flink pods {pod_labels:?}"
    );
}

/// The FlinkDeployment names paths inside the job image: the recipe puts them there.
#[test]
fn the_job_image_recipe_holds_what_the_flink_deployment_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(root.join("services/flink/Dockerfile")).unwrap();
    let children = render_sample("flink-streaming");
    let flink = find(&children, ChildKind::FlinkDeployment, "flink-flink");
    let job = &flink["spec"]["job"];
    assert_eq!(job["entryClass"], "org.apache.flink.client.python.PythonDriver");
    assert_eq!(job["jarURI"], format!("local://{}", render::flink_image::PYTHON_JAR));
    let args: Vec<&str> = job["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[..4],
        [
            "-pyclientexec",
            render::flink_image::PYTHON,
            "-py",
            render::flink_image::SQL_RUNNER
        ]
    );
    for path in [render::flink_image::PYTHON_JAR, render::flink_image::SQL_RUNNER] {
        assert!(dockerfile.contains(path), "the Dockerfile makes {path}");
    }
    let venv = render::flink_image::PYTHON.trim_end_matches("/bin/python");
    assert!(
        dockerfile.contains(&format!("python3 -m venv {venv}")),
        "the Dockerfile makes {venv}"
    );
    // The SQL file is mounted where the last argument points.
    let mount = flink["spec"]["podTemplate"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    assert!(args[4].starts_with(mount), "{} under {mount}", args[4]);
    // The image's Flink and connector are the versions the tests run.
    let requirements = std::fs::read_to_string(root.join("scripts/requirements.txt")).unwrap();
    let pyflink = requirements
        .lines()
        .find_map(|l| l.strip_prefix("apache-flink=="))
        .unwrap();
    assert!(dockerfile.contains(&format!("ARG FLINK_VERSION={pyflink}")));
    let pom = std::fs::read_to_string(root.join("scripts/flink/pom.xml")).unwrap();
    let connector = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG KAFKA_CONNECTOR="))
        .unwrap();
    assert!(pom.contains(&format!("<kafka.connector.version>{connector}<")));
    // The operator's Flink version matches the image's (v2_2 for 2.2.x).
    let minor: Vec<&str> = pyflink.split('.').take(2).collect();
    assert_eq!(flink["spec"]["flinkVersion"], format!("v{}", minor.join("_")));
}

#[test]
fn flink_state_goes_to_the_object_store_and_a_changed_query_is_a_changed_spec() {
    let hash = |stack: &RecommenderStack| {
        let children = render::render(stack).unwrap();
        let flink = find(&children, ChildKind::FlinkDeployment, "flink-flink");
        (
            flink["spec"]["podTemplate"]["metadata"]["annotations"]["recstack.io/sql-hash"].clone(),
            flink,
        )
    };
    let mut stack: RecommenderStack = common::sample("flink-streaming");
    let (before, flink) = hash(&stack);
    let config = &flink["spec"]["flinkConfiguration"];
    assert_eq!(config["state.checkpoints.dir"], "s3://recstack-state/flink/checkpoints");
    assert_eq!(config["state.savepoints.dir"], "s3://recstack-state/flink/savepoints");
    assert_eq!(flink["spec"]["job"]["upgradeMode"], "savepoint");
    // Another window is another query: the FlinkDeployment's spec changes with it, so the
    // Flink operator takes a savepoint and starts the new job from it.
    stack.spec.stream.window = "30s".into();
    let (after, _) = hash(&stack);
    assert!(
        before.is_string() && after.is_string() && before != after,
        "{before} {after}"
    );
    // Without a stateUri the state goes beside the artifacts, on their store, endpoint and
    // credentials.
    stack.spec.stream.flink.as_mut().unwrap().state_uri = None;
    stack.spec.artifacts.uri = "s3://shop/recstack/artifacts/".into();
    stack.spec.artifacts.endpoint = Some("http://minio.storage.svc:9000".into());
    stack.spec.artifacts.credentials_secret_ref = Some(recstack_crds::SecretRef { name: "store".into() });
    let (_, flink) = hash(&stack);
    let config = &flink["spec"]["flinkConfiguration"];
    assert_eq!(
        config["state.checkpoints.dir"],
        "s3://shop/recstack/artifacts-flink/checkpoints"
    );
    assert_eq!(config["s3.endpoint"], "http://minio.storage.svc:9000");
    assert_eq!(config["s3.path.style.access"], "true");
    assert_eq!(
        flink["spec"]["podTemplate"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "store"
    );
    // And with neither, rendering says which field to set (CEL refuses it at admission).
    stack.spec.artifacts.uri = "file:///usr/share/recstack/artifacts".into();
    let err = render::render(&stack).unwrap_err().to_string();
    assert!(err.contains("spec.stream.flink.stateUri"), "{err}");
}

#[test]
fn owner_references_point_at_the_stack_when_it_has_a_uid() {
    let mut stack: RecommenderStack = common::sample("minimal");
    assert!(
        render::render(&stack)
            .unwrap()
            .iter()
            .all(|c| c.object.metadata.owner_references.is_none())
    );
    stack.metadata.uid = Some("1234".into());
    for c in render::render(&stack).unwrap() {
        let refs = c.object.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(refs.len(), 1, "{:?} {}", c.kind, c.name());
        assert_eq!((refs[0].uid.as_str(), refs[0].controller), ("1234", Some(true)));
    }
}

#[test]
fn config_change_rolls_the_pods() {
    let mut stack = common::sample("minimal");
    let hash = |s: &RecommenderStack| {
        let d = render::render(s)
            .unwrap()
            .into_iter()
            .find(|c| c.kind == ChildKind::Deployment && c.name() == "minimal-recall")
            .unwrap();
        serde_json::to_value(&d.object).unwrap()["spec"]["template"]["metadata"]["annotations"]["recstack.io/config-hash"].clone()
    };
    let before = hash(&stack);
    assert!(before.is_string(), "pods carry the config hash");
    assert_eq!(before, hash(&stack), "rendering is deterministic");
    stack.spec.ranking.model.version = "deepfm-7".into();
    assert_ne!(before, hash(&stack));
}

#[test]
fn rendered_objects_and_crd_pass_strict_schema_validation() {
    let validate = common::venv_tool("kubernetes-validate", "KUBERNETES_VALIDATE");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut files = vec![common::repo_root().join("crds/recommenderstack.yaml")];
    for sample in ["minimal", "gpu-ranking", "flink-streaming"] {
        // FlinkDeployment has no upstream schema; its shape is pinned by the snapshot instead.
        let builtin: Vec<Child> = render_sample(sample)
            .into_iter()
            .filter(|c| c.kind != ChildKind::FlinkDeployment)
            .collect();
        let path = dir.join(format!("{sample}.yaml"));
        std::fs::write(&path, yaml(&builtin)).unwrap();
        files.push(path);
    }
    for version in ["1.33.0", "1.37.0"] {
        let out = Command::new(&validate)
            .args(["-k", version, "--strict", "--quiet"])
            .args(&files)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubernetes-validate {version} failed:\n{text}");
        assert!(
            !text.contains("Couldn't find schema"),
            "every object must have a schema for {version}:\n{text}"
        );
    }
}

#[test]
fn a_stream_engine_this_operator_does_not_know_is_refused_by_name() {
    let text = std::fs::read_to_string(common::repo_root().join("manifests/samples/minimal.yaml")).unwrap();
    let text = text.replace("engine: none", "engine: spark");
    let stack: RecommenderStack = serde_yaml::from_str(&text).expect("a newer CRD's value still reads");
    assert_eq!(stack.spec.stream.engine, recstack_crds::StreamEngine::Unknown);
    let err = render::render(&stack).unwrap_err().to_string();
    assert!(
        err.starts_with("spec.stream.engine: a value this operator does not know"),
        "{err}"
    );
}

#[test]
fn a_resource_that_is_not_a_quantity_is_refused_by_its_field() {
    let text = std::fs::read_to_string(common::repo_root().join("manifests/samples/gpu-ranking.yaml")).unwrap();
    let stack = |patch: Value| -> RecommenderStack {
        let mut v: Value = serde_yaml::from_str(&text).unwrap();
        json_patch_merge(&mut v["spec"], &patch);
        serde_json::from_value(v).unwrap()
    };
    for (patch, field, value) in [
        (
            json!({"recall": {"resources": {"limits": {"cpu": "lots"}}}}),
            "spec.recall.resources.limits.cpu",
            "lots",
        ),
        (
            json!({"gateway": {"resources": {"requests": {"cpu": "250m", "memory": "1 GB"}}}}),
            "spec.gateway.resources.requests.memory",
            "1 GB",
        ),
        (
            json!({"dashboard": {"resources": {"requests": {"cpu": "-1"}}}}),
            "spec.dashboard.resources.requests.cpu",
            "-1",
        ),
        (
            json!({"stream": {"workload": {"resources": {"limits": {"memory": "2gb"}}}}}),
            "spec.stream.workload.resources.limits.memory",
            "2gb",
        ),
        (
            json!({"build": {"resources": {"limits": {"memory": "big"}}}}),
            "spec.build.resources.limits.memory",
            "big",
        ),
    ] {
        let err = render::render(&stack(patch)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{field}: {value:?} is not a Kubernetes quantity (500m, 2, 1.5Gi, 512Mi)")
        );
    }
    // What people write renders, into the container as written.
    let children = render::render(&stack(json!({"recall": {"resources": {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": 2, "memory": "1.5Gi", "ephemeral-storage": "1e9"}
    }}})))
    .unwrap();
    let recall = find(&children, ChildKind::Deployment, "gpu-recall");
    let resources = &recall["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"]["memory"], "1.5Gi");
    assert_eq!(resources["requests"]["cpu"], "500m");
}

#[test]
fn a_gpu_node_selector_or_toleration_the_api_server_would_refuse_is_refused_by_its_field() {
    let text = std::fs::read_to_string(common::repo_root().join("manifests/samples/gpu-ranking.yaml")).unwrap();
    let render_gpu = |gpu: Value| {
        let mut v: Value = serde_yaml::from_str(&text).unwrap();
        json_patch_merge(&mut v["spec"]["ranking"]["gpu"], &gpu);
        render::render(&serde_json::from_value(v).unwrap())
    };
    for (gpu, expected) in [
        (
            json!({"nodeSelector": {"zone": "eu west"}}),
            "spec.ranking.gpu.nodeSelector.zone: \"eu west\" is not a label value",
        ),
        (
            json!({"nodeSelector": {"Nvidia.com/gpu": "true"}}),
            "spec.ranking.gpu.nodeSelector: \"Nvidia.com/gpu\" is not a label key",
        ),
        (
            json!({"tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]}),
            "spec.ranking.gpu.tolerations[0]: value \"yes\" must be empty with operator Exists",
        ),
        (
            json!({"tolerations": [{"operator": "Exists"}, {"key": "gpu", "operator": "In"}]}),
            "spec.ranking.gpu.tolerations[1]: operator \"In\": Equal or Exists",
        ),
        (
            json!({"tolerations": [{"key": "gpu", "effect": "Never"}]}),
            "spec.ranking.gpu.tolerations[0]: effect \"Never\"",
        ),
        (
            json!({"tolerations": [{"value": "x"}]}),
            "spec.ranking.gpu.tolerations[0]: an empty key tolerates every taint only with operator Exists",
        ),
        (
            json!({"tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 30}]}),
            "spec.ranking.gpu.tolerations[0]: tolerationSeconds applies to effect NoExecute only",
        ),
    ] {
        let err = render_gpu(gpu.clone()).unwrap_err().to_string();
        assert!(err.starts_with(expected), "{gpu}: {err}");
    }
    // Well-formed ones render into the ranking pods as written.
    let children = render_gpu(json!({
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [
            {"operator": "Exists"},
            {"key": "gpu", "operator": "Equal", "value": "h100", "effect": "NoExecute", "tolerationSeconds": 60},
        ],
    }))
    .unwrap();
    let pod = &find(&children, ChildKind::Deployment, "gpu-ranking")["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.product"], "NVIDIA-H100-80GB-HBM3");
    assert_eq!(pod["tolerations"][1]["tolerationSeconds"], 60);
}

/// `patch` merged into `target` (RFC 7386: objects merge, anything else replaces).
fn json_patch_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                json_patch_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = patch.clone(),
    }
}

#[test]
fn the_build_is_a_job_named_by_its_spec_and_a_cron_job_on_the_schedule() {
    let children = render_sample("gpu-ranking");
    let jobs: Vec<&Child> = children.iter().filter(|c| c.kind == ChildKind::Job).collect();
    assert_eq!(jobs.len(), 1);
    let name = jobs[0].name();
    assert!(
        name.starts_with("gpu-build-") && name.len() == "gpu-build-".len() + 5,
        "{name}"
    );
    let job = find(&children, ChildKind::Job, &name);
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!([
            "build",
            "--data",
            "s3://recstack-data/ratings",
            "--out",
            "s3://recstack-artifacts/gpu"
        ])
    );
    // The store's credentials as files, never as environment.
    assert!(container.get("envFrom").is_none());
    assert!(
        container["volumeMounts"]
            .to_string()
            .contains(r#""mountPath":"/var/run/secrets/recstack/object-store""#)
    );
    assert!(
        pod["volumes"]
            .to_string()
            .contains(r#""secretName":"store-credentials""#)
    );
    assert!(container["env"].to_string().contains("RECSTACK_STORE_CREDENTIALS_DIR"));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["priorityClassName"], "recstack-offline");
    assert_eq!(job["spec"]["backoffLimit"], 2);
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 3600);
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"],
        "build"
    );

    // The CronJob runs the same Job on the schedule; its Jobs are not labelled as the
    // operator's (so neither cached nor pruned by it), its pods are the stack's (policies).
    let cron = find(&children, ChildKind::CronJob, "gpu-build");
    assert_eq!(cron["spec"]["schedule"], "0 3 * * *");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(cron["spec"]["jobTemplate"]["spec"], job["spec"]);
    let job_labels = &cron["spec"]["jobTemplate"]["metadata"]["labels"];
    assert!(job_labels.get("app.kubernetes.io/managed-by").is_none(), "{job_labels}");
    assert_eq!(job_labels["recstack.io/stack"], "gpu");

    // Its NetworkPolicy: nothing in, the object store out (https for s3:// without an
    // endpoint).
    let policy = find(&children, ChildKind::NetworkPolicy, "gpu-build");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "build"
    );
    assert!(policy["spec"].get("ingress").is_none());
    assert_eq!(
        policy["spec"]["egress"][0]["ports"],
        serde_json::json!([{ "protocol": "TCP", "port": 443 }])
    );

    // A change to the build makes a new Job; rendering again does not.
    let mut stack = common::sample("gpu-ranking");
    let again = render::render(&stack).unwrap();
    assert!(again.iter().any(|c| c.kind == ChildKind::Job && c.name() == name));
    stack.spec.build.as_mut().unwrap().data = "s3://recstack-data/ratings-2026".into();
    stack.spec.artifacts.endpoint = Some("http://minio.storage.svc:9000".into());
    let changed = render::render(&stack).unwrap();
    let job = changed.iter().find(|c| c.kind == ChildKind::Job).unwrap();
    assert_ne!(job.name(), name);
    let job = serde_json::to_value(&job.object).unwrap();
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.ends_with(r#""--endpoint","http://minio.storage.svc:9000"]"#),
        "{args}"
    );
    let policy = changed
        .iter()
        .find(|c| c.kind == ChildKind::NetworkPolicy && c.name() == "gpu-build")
        .unwrap();
    let policy = serde_json::to_value(&policy.object).unwrap();
    assert_eq!(
        policy["spec"]["egress"][0]["ports"],
        serde_json::json!([{ "protocol": "TCP", "port": 9000 }])
    );

    // No build, no Job, CronJob or build policy.
    let minimal = render_sample("minimal");
    assert!(
        !minimal
            .iter()
            .any(|c| matches!(c.kind, ChildKind::Job | ChildKind::CronJob))
    );
    assert!(!minimal.iter().any(|c| c.name() == "minimal-build"));
}

#[test]
fn otlp_export_reaches_the_gateway_its_network_policy_and_the_dashboard_link() {
    let mut stack = common::sample("gpu-ranking");
    stack.spec.otlp = Some(recstack_crds::OtlpSpec {
        endpoint: "http://otel-collector.observability:4317".into(),
        trace_link: Some("http://jaeger.observability:16686/trace/{trace_id}".into()),
    });
    let children = render::render(&stack).unwrap();
    let config = find(&children, ChildKind::ConfigMap, "gpu-config");
    let runtime: recstack_crds::runtime::RuntimeConfig =
        serde_yaml::from_str(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        runtime.otlp_endpoint.as_deref(),
        Some("http://otel-collector.observability:4317")
    );
    // The gateway may reach the collector's port; nothing else may.
    let egress_ports = |name: &str| -> Vec<i64> {
        let policy = find(&children, ChildKind::NetworkPolicy, name);
        policy["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule.get("to").is_none())
            .flat_map(|rule| rule["ports"].as_array().unwrap().clone())
            .filter_map(|p| p["port"].as_i64())
            .collect()
    };
    assert!(
        egress_ports("gpu-gateway").contains(&4317),
        "{:?}",
        egress_ports("gpu-gateway")
    );
    assert!(!egress_ports("gpu-recall").contains(&4317));
    let dashboard = find(&children, ChildKind::Deployment, "gpu-dashboard");
    let args = dashboard["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("\"--trace-link\",\"http://jaeger.observability:16686/trace/{trace_id}\""),
        "{args}"
    );
    // Without it: no endpoint, no link.
    let plain = render_sample("gpu-ranking");
    let args =
        find(&plain, ChildKind::Deployment, "gpu-dashboard")["spec"]["template"]["spec"]["containers"][0]["args"]
            .to_string();
    assert!(!args.contains("--trace-link"));
}
