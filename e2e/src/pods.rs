//! What a kubelet and a CNI would make of the objects the operator wrote, as plain data: each
//! Deployment's pod template resolved into a process plan (command, args, env with
//! `fieldRef` / `resourceFieldRef` / `secretKeyRef` / `envFrom`, volumes), the Services' names
//! mapped to their ready pods (a hosts file), and the NetworkPolicies turned into per-pod allow
//! lists (an nftables ruleset). No I/O here: [`crate::netns`] runs the plans.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Objects read from the API server, by name.
#[derive(Default)]
pub struct Objects {
    pub config_maps: BTreeMap<String, Value>,
    pub secrets: BTreeMap<String, Value>,
    /// What a kubelet gives pods that mount their ServiceAccount's token.
    pub api_access: Option<ApiAccess>,
}

/// The API server as pods see it: the `kubernetes` Service's address, the cluster CA, and a
/// token per ServiceAccount (the kubelet's projected `kube-api-access` volume).
#[derive(Clone, Debug, Default)]
pub struct ApiAccess {
    pub host: String,
    pub port: u16,
    pub ca_crt: Vec<u8>,
    pub tokens: BTreeMap<String, String>,
}

/// Where a kubelet mounts a pod's ServiceAccount token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A volume a pod mounts.
#[derive(Clone, Debug, PartialEq)]
pub enum VolumeSource {
    /// Files (name → content), written fresh for the pod.
    Files(BTreeMap<String, Vec<u8>>),
    /// An empty directory owned by the pod's fsGroup.
    Empty,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    pub volume: String,
    pub source: VolumeSource,
    pub path: String,
    pub read_only: bool,
}

/// One pod of a Deployment or a Job, as a process.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    pub name: String,
    /// The Deployment or Job it belongs to.
    pub workload: String,
    /// A Job's pod runs to completion (`restartPolicy: Never`/`OnFailure`); a Deployment's
    /// serves until stopped.
    pub completes: bool,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// command + args, as the container runs them (the first resolved on the image's PATH).
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// Container ports by name.
    pub ports: BTreeMap<String, u16>,
    /// The readiness probe's HTTP path and port.
    pub readiness: Option<(String, u16)>,
    pub run_as: Option<(u32, u32)>,
    pub read_only_root: bool,
    pub termination_grace_seconds: u64,
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn secret_data(secret: &Value) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for (k, v) in secret["data"].as_object().into_iter().flatten() {
        out.insert(k.clone(), base64_decode(v.as_str().unwrap_or_default())?);
    }
    for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
        out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
    }
    Ok(out)
}

/// Standard base64 (what the API server returns for a Secret's `data`).
pub fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {c:?}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// A `resourceFieldRef`'s value, as the kubelet gives it: the container's request or limit over
/// the divisor (default 1), rounded up. An unset request reads as 0; an unset limit as this
/// machine's (the node's allocatable: its cores; memory is not resolved).
fn resource_field(resources: &Value, field: &serde_json::Map<String, Value>) -> anyhow::Result<String> {
    let resource = field
        .get("resource")
        .and_then(Value::as_str)
        .context("resourceFieldRef without a resource")?;
    let (kind, name) = resource
        .split_once('.')
        .with_context(|| format!("resourceFieldRef {resource}: not <requests|limits>.<name>"))?;
    let divisor = match field.get("divisor").and_then(Value::as_str) {
        Some(d) => recstack_crds::quantity::value(d).with_context(|| format!("divisor {d}: not a quantity"))?,
        None => 1.0,
    };
    anyhow::ensure!(divisor > 0.0, "resourceFieldRef {resource}: divisor must be above 0");
    let amount = match resources[kind][name].as_str() {
        Some(q) => recstack_crds::quantity::value(q).with_context(|| format!("{resource} {q}: not a quantity"))?,
        None if kind == "requests" => 0.0,
        None if kind == "limits" && name == "cpu" => {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64
        }
        None => bail!("resourceFieldRef {resource}: unset, and the harness knows no node value for it"),
    };
    Ok(format!("{}", (amount / divisor).ceil() as u64))
}

/// Sets `key` in a container's environment, replacing an earlier value (as a later `env` entry
/// overrides an `envFrom` one).
fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
}

/// The pods of a Deployment or StatefulSet (`spec.replicas` of them) or a Job
/// (`spec.parallelism`, default 1), named `<workload>-<i>` (a StatefulSet's pod names and
/// `apps.kubernetes.io/pod-index` labels, as its controller gives them).
pub fn plan_workload(workload: &Value, objects: &Objects) -> anyhow::Result<Vec<PodPlan>> {
    let name = workload["metadata"]["name"]
        .as_str()
        .context("a workload without a name")?;
    let namespace = workload["metadata"]["namespace"].as_str().unwrap_or("default");
    let completes = workload["kind"] == "Job";
    let replicas = if completes {
        workload["spec"]["parallelism"].as_u64().unwrap_or(1)
    } else {
        workload["spec"]["replicas"].as_u64().unwrap_or(1)
    };
    let template = &workload["spec"]["template"];
    let pod = &template["spec"];
    if pod["initContainers"].as_array().is_some_and(|c| !c.is_empty()) {
        bail!("{name}: init containers are not run by this harness yet");
    }
    let containers = pod["containers"].as_array().context("no containers")?;
    let [container] = containers.as_slice() else {
        bail!("{name}: {} containers; the harness runs one per pod", containers.len());
    };
    let mut plans = Vec::new();
    for i in 0..replicas {
        let pod_name = format!("{name}-{i}");
        let mut env = Vec::new();
        for from in container["envFrom"].as_array().into_iter().flatten() {
            if let Some(secret) = from["secretRef"]["name"].as_str() {
                let s = objects
                    .secrets
                    .get(secret)
                    .with_context(|| format!("{name}: envFrom Secret {secret} not found"))?;
                for (k, v) in secret_data(s)? {
                    env.push((k, String::from_utf8_lossy(&v).into_owned()));
                }
            }
            if let Some(cm) = from["configMapRef"]["name"].as_str() {
                let c = objects
                    .config_maps
                    .get(cm)
                    .with_context(|| format!("{name}: envFrom ConfigMap {cm} not found"))?;
                env.extend(str_map(&c["data"]));
            }
        }
        for e in container["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().context("env without a name")?.to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => namespace.to_string(),
                    "metadata.labels['apps.kubernetes.io/pod-index']" if workload["kind"] == "StatefulSet" => {
                        i.to_string()
                    }
                    other => bail!("{name}: env {key} from field {other} is not supported by the harness"),
                }
            } else if let Some(field) = e["valueFrom"]["resourceFieldRef"].as_object() {
                resource_field(&container["resources"], field).with_context(|| format!("{name}: env {key}"))?
            } else if let Some(secret) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                let k = e["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap_or_default();
                let s = objects
                    .secrets
                    .get(secret)
                    .with_context(|| format!("{name}: env {key}: Secret {secret} not found"))?;
                let data = secret_data(s)?;
                String::from_utf8_lossy(
                    data.get(k)
                        .with_context(|| format!("{name}: Secret {secret} has no key {k}"))?,
                )
                .into_owned()
            } else {
                String::new()
            };
            set_env(&mut env, key, value);
        }
        let volumes: BTreeMap<String, &Value> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?.to_string(), v)))
            .collect();
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = m["name"].as_str().context("volumeMount without a name")?;
            let v = volumes
                .get(volume)
                .with_context(|| format!("{name}: volume {volume} not declared"))?;
            let source = if let Some(cm) = v["configMap"]["name"].as_str() {
                let c = objects
                    .config_maps
                    .get(cm)
                    .with_context(|| format!("{name}: ConfigMap {cm} not found"))?;
                VolumeSource::Files(
                    str_map(&c["data"])
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect(),
                )
            } else if let Some(secret) = v["secret"]["secretName"].as_str() {
                let s = objects
                    .secrets
                    .get(secret)
                    .with_context(|| format!("{name}: Secret {secret} not found"))?;
                VolumeSource::Files(secret_data(s)?)
            } else if v.get("emptyDir").is_some() {
                VolumeSource::Empty
            } else {
                bail!("{name}: volume {volume} has a source the harness does not run");
            };
            mounts.push(Mount {
                volume: volume.to_string(),
                source,
                path: m["mountPath"]
                    .as_str()
                    .context("volumeMount without a mountPath")?
                    .to_string(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
            });
        }
        // `automountServiceAccountToken` (default true): the token, CA and namespace, and the
        // API server's address in the environment, as a kubelet gives them.
        if pod["automountServiceAccountToken"].as_bool().unwrap_or(true) {
            let account = pod["serviceAccountName"].as_str().unwrap_or("default");
            let access = objects
                .api_access
                .as_ref()
                .with_context(|| format!("{name}: mounts a ServiceAccount token, but the harness has no API access"))?;
            let token = access
                .tokens
                .get(account)
                .with_context(|| format!("{name}: no token for ServiceAccount {account}"))?;
            mounts.push(Mount {
                volume: "kube-api-access".into(),
                source: VolumeSource::Files(BTreeMap::from([
                    ("token".into(), token.clone().into_bytes()),
                    ("ca.crt".into(), access.ca_crt.clone()),
                    ("namespace".into(), namespace.as_bytes().to_vec()),
                ])),
                path: SERVICE_ACCOUNT_DIR.into(),
                read_only: true,
            });
            for (k, v) in [
                ("KUBERNETES_SERVICE_HOST", access.host.clone()),
                ("KUBERNETES_SERVICE_PORT", access.port.to_string()),
            ] {
                set_env(&mut env, k.into(), v);
            }
        }
        let ports: BTreeMap<String, u16> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["containerPort"].as_u64()? as u16)))
            .collect();
        let probe = &container["readinessProbe"]["httpGet"];
        let readiness = match (probe["path"].as_str(), &probe["port"]) {
            (Some(path), Value::String(port)) => Some((
                path.to_string(),
                *ports.get(port).with_context(|| format!("{name}: probe port {port}"))?,
            )),
            (Some(path), Value::Number(n)) => Some((path.to_string(), n.as_u64().unwrap_or(0) as u16)),
            _ => None,
        };
        let security = &container["securityContext"];
        let uid = security["runAsUser"]
            .as_u64()
            .or(pod["securityContext"]["runAsUser"].as_u64());
        let gid = security["runAsGroup"]
            .as_u64()
            .or(pod["securityContext"]["fsGroup"].as_u64())
            .or(uid);
        let mut argv: Vec<String> = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        argv.extend(
            container["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from)),
        );
        if argv.is_empty() {
            bail!("{name}: no command (the image's entrypoint is not known to the harness)");
        }
        plans.push(PodPlan {
            name: pod_name,
            workload: name.to_string(),
            completes,
            namespace: namespace.to_string(),
            labels: str_map(&template["metadata"]["labels"]),
            argv,
            env,
            mounts,
            ports,
            readiness,
            run_as: uid.map(|u| (u as u32, gid.unwrap_or(u) as u32)),
            read_only_root: security["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
            termination_grace_seconds: pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
        });
    }
    Ok(plans)
}

/// A pod as the network sees it.
#[derive(Clone, Debug)]
pub struct PodAddr {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub ports: BTreeMap<String, u16>,
    pub ready: bool,
}

fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = str_map(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: BTreeSet<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        match e["operator"].as_str() {
            Some("In") => labels.get(key).is_some_and(|v| values.contains(v.as_str())),
            Some("NotIn") => labels.get(key).is_none_or(|v| !values.contains(v.as_str())),
            Some("Exists") => labels.contains_key(key),
            Some("DoesNotExist") => !labels.contains_key(key),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// `/etc/hosts` for every pod: each Service's names (`svc`, `svc.ns`, `svc.ns.svc`,
/// `svc.ns.svc.cluster.local`) → the ready pods it selects (headless Services: clients see
/// every pod), plus `extra` names (stores outside the cluster).
pub fn hosts_file(services: &[Value], pods: &[PodAddr], extra: &[(String, Ipv4Addr)]) -> String {
    let mut out = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (name, ip) in extra {
        out.push_str(&format!("{ip} {name}\n"));
    }
    for svc in services {
        let name = svc["metadata"]["name"].as_str().unwrap_or_default();
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
        let selector = &svc["spec"]["selector"];
        if selector.as_object().is_none_or(|m| m.is_empty()) {
            continue;
        }
        let wrapped = serde_json::json!({ "matchLabels": selector });
        for pod in pods
            .iter()
            .filter(|p| p.ready && p.namespace == ns && selects(&wrapped, &p.labels))
        {
            out.push_str(&format!(
                "{} {name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}\n",
                pod.ip
            ));
        }
    }
    out
}

/// One allowed flow: from/to these addresses (`None`: any), on these TCP ports (`None`: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    pub peers: Option<BTreeSet<String>>,
    pub ports: Option<BTreeSet<u16>>,
}

/// A pod's policy: `None` in a direction means not isolated there (everything allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPolicy {
    pub ingress: Option<Vec<Allow>>,
    pub egress: Option<Vec<Allow>>,
}

/// What the NetworkPolicies in `policies` allow for `pod`, with the other pods resolved to
/// their addresses (Kubernetes semantics: a pod selected by any policy of a type is isolated in
/// that direction; the allowed flows are the union of the rules).
pub fn pod_policy(policies: &[Value], pod: &PodAddr, pods: &[PodAddr]) -> PodPolicy {
    let mut policy = PodPolicy::default();
    for np in policies {
        let ns = np["metadata"]["namespace"].as_str().unwrap_or("default");
        if ns != pod.namespace || !selects(&np["spec"]["podSelector"], &pod.labels) {
            continue;
        }
        let types: Vec<&str> = np["spec"]["policyTypes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        for (direction, peers_key, slot) in [
            ("Ingress", "from", &mut policy.ingress),
            ("Egress", "to", &mut policy.egress),
        ] {
            let key = direction.to_lowercase();
            // No policyTypes: Ingress only (the API server fills it in anyway).
            let applies = types.contains(&direction) || (direction == "Ingress" && types.is_empty());
            if !applies {
                continue;
            }
            let allows = slot.get_or_insert_with(Vec::new);
            for rule in np["spec"][key.as_str()].as_array().into_iter().flatten() {
                let ports: Option<BTreeSet<u16>> = rule["ports"].as_array().map(|ps| {
                    ps.iter()
                        .filter(|p| p["protocol"].as_str().is_none_or(|proto| proto == "TCP"))
                        .filter_map(|p| match &p["port"] {
                            Value::Number(n) => n.as_u64().map(|n| n as u16),
                            // A named port: the peer's (ingress: this pod's) container port.
                            Value::String(name) => pod.ports.get(name).copied(),
                            _ => None,
                        })
                        .collect()
                });
                if ports.as_ref().is_some_and(BTreeSet::is_empty) {
                    continue; // UDP only (DNS): nothing for TCP.
                }
                let peers: Option<BTreeSet<String>> = rule[peers_key].as_array().map(|peers| {
                    peers
                        .iter()
                        .flat_map(|peer| -> Vec<String> {
                            if let Some(cidr) = peer["ipBlock"]["cidr"].as_str() {
                                return vec![cidr.to_string()];
                            }
                            let pod_sel = peer.get("podSelector");
                            let ns_sel = peer.get("namespaceSelector");
                            pods.iter()
                                .filter(|p| match ns_sel {
                                    // Namespaces are matched by their name label only.
                                    Some(sel) => str_map(&sel["matchLabels"])
                                        .get("kubernetes.io/metadata.name")
                                        .is_none_or(|n| *n == p.namespace),
                                    None => p.namespace == ns,
                                })
                                .filter(|p| pod_sel.is_none_or(|sel| selects(sel, &p.labels)))
                                .map(|p| p.ip.to_string())
                                .collect()
                        })
                        .collect()
                });
                allows.push(Allow { peers, ports });
            }
        }
    }
    policy
}

fn nft_set(items: impl IntoIterator<Item = String>) -> String {
    format!("{{ {} }}", items.into_iter().collect::<Vec<_>>().join(", "))
}

fn nft_rules(allows: &[Allow], peer_field: &str) -> Vec<String> {
    allows
        .iter()
        .filter(|a| a.peers.as_ref().is_none_or(|p| !p.is_empty()))
        .map(|a| {
            let mut rule = String::new();
            if let Some(peers) = &a.peers {
                rule.push_str(&format!("ip {peer_field} {} ", nft_set(peers.iter().cloned())));
            }
            match &a.ports {
                Some(ports) => rule.push_str(&format!(
                    "tcp dport {} accept",
                    nft_set(ports.iter().map(u16::to_string))
                )),
                None => rule.push_str("accept"),
            }
            rule
        })
        .collect()
}

/// The nftables ruleset enforcing `policy` inside a pod's network namespace. Traffic from the
/// node (`node`: kubelet probes, and the suite's client as a node-local caller) is always let
/// in, as CNIs do for the host; egress has no such exception.
pub fn nft_ruleset(policy: &PodPolicy, node: Ipv4Addr) -> String {
    let mut out = String::from("table inet netpol {\n");
    let mut chain = |name: &str, hook: &str, allows: &Option<Vec<Allow>>, peer: &str, local: &str| {
        out.push_str(&format!(
            "  chain {name} {{\n    type filter hook {hook} priority 0; policy {};\n",
            if allows.is_some() { "drop" } else { "accept" }
        ));
        out.push_str(&format!(
            "    ct state established,related accept\n    {local} lo accept\n"
        ));
        if hook == "input" {
            out.push_str(&format!("    ip {peer} {node} accept\n"));
        }
        for rule in nft_rules(allows.as_deref().unwrap_or_default(), peer) {
            out.push_str(&format!("    {rule}\n"));
        }
        out.push_str("  }\n");
    };
    chain("input", "input", &policy.ingress, "saddr", "iif");
    chain("output", "output", &policy.egress, "daddr", "oif");
    out.push_str("}\n");
    out
}

/// The image's `ENV` lines (final stage) of a Dockerfile: what a container gets before the
/// pod's own env.
pub fn dockerfile_env(dockerfile: &str) -> Vec<(String, String)> {
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    let last = stages.last().copied().unwrap_or_default();
    let mut env = Vec::new();
    for line in last.lines() {
        let Some(rest) = line.trim().strip_prefix("ENV ") else {
            continue;
        };
        for pair in rest.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                env.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "s-recall", "namespace": "ns"},
            "spec": {"replicas": 2, "template": {
                "metadata": {"labels": {"app.kubernetes.io/component": "recall", "recstack.io/stack": "s"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {"fsGroup": 65532},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "recall", "command": ["recstack"], "args": ["serve", "recall", "--config", "/etc/recstack/config.yaml"],
                        "env": [
                            {"name": "A", "value": "1"},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}
                        ],
                        "envFrom": [{"secretRef": {"name": "creds"}}],
                        "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                        "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": true},
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/recstack", "readOnly": true},
                            {"name": "data", "mountPath": "/var/lib/recstack"}
                        ]
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "s-config"}},
                        {"name": "data", "emptyDir": {}}
                    ]
                }
            }}
        })
    }

    fn objects() -> Objects {
        Objects {
            config_maps: BTreeMap::from([("s-config".into(), json!({"data": {"config.yaml": "stack: s\n"}}))]),
            secrets: BTreeMap::from([(
                "creds".into(),
                json!({"data": {"k": "c2VjcmV0", "AWS_REGION": "dXMtZWFzdC0x"}}),
            )]),
            api_access: None,
        }
    }

    #[test]
    fn a_deployment_becomes_one_plan_per_replica_with_everything_resolved() {
        let plans = plan_workload(&deployment(), &objects()).unwrap();
        assert_eq!(plans.len(), 2);
        let p = &plans[1];
        assert_eq!(p.name, "s-recall-1");
        assert_eq!(
            p.argv,
            ["recstack", "serve", "recall", "--config", "/etc/recstack/config.yaml"]
        );
        let env: BTreeMap<_, _> = p.env.iter().cloned().collect();
        assert_eq!(env["POD_NAME"], "s-recall-1");
        assert_eq!(env["KEY"], "secret");
        assert_eq!(env["AWS_REGION"], "us-east-1");
        assert_eq!(env["A"], "1");
        assert_eq!(
            p.mounts[0].source,
            VolumeSource::Files(BTreeMap::from([("config.yaml".into(), b"stack: s\n".to_vec())]))
        );
        assert!(p.mounts[0].read_only);
        assert_eq!(p.mounts[1].source, VolumeSource::Empty);
        assert_eq!(p.readiness, Some(("/readyz".into(), 8080)));
        assert_eq!(p.run_as, Some((65532, 65532)));
        assert!(p.read_only_root);
    }

    #[test]
    fn a_pod_that_mounts_its_service_account_token_gets_it_and_the_api_address() {
        let mut d = deployment();
        let pod = &mut d["spec"]["template"]["spec"];
        pod["automountServiceAccountToken"] = json!(true);
        pod["serviceAccountName"] = json!("s-dashboard");
        let e = plan_workload(&d, &objects()).unwrap_err().to_string();
        assert!(e.contains("no API access"), "{e}");
        let mut o = objects();
        o.api_access = Some(ApiAccess {
            host: "kubernetes.default.svc".into(),
            port: 443,
            ca_crt: b"CA".to_vec(),
            tokens: BTreeMap::from([("s-dashboard".into(), "tok".into())]),
        });
        let plan = &plan_workload(&d, &o).unwrap()[0];
        let mount = plan.mounts.iter().find(|m| m.path == SERVICE_ACCOUNT_DIR).unwrap();
        assert!(mount.read_only);
        let VolumeSource::Files(files) = &mount.source else {
            panic!("{mount:?}")
        };
        assert_eq!(files["token"], b"tok");
        assert_eq!(files["ca.crt"], b"CA");
        assert_eq!(files["namespace"], b"ns");
        let env: BTreeMap<_, _> = plan.env.iter().cloned().collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "kubernetes.default.svc");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        // Another ServiceAccount has no token: an error naming it.
        d["spec"]["template"]["spec"]["serviceAccountName"] = json!("other");
        let e = plan_workload(&d, &o).unwrap_err().to_string();
        assert!(e.contains("ServiceAccount other"), "{e}");
    }

    #[test]
    fn a_job_becomes_one_pod_that_runs_to_completion() {
        let mut job = deployment();
        job["kind"] = json!("Job");
        job["metadata"]["name"] = json!("s-build-0abcd");
        job["spec"]["replicas"] = Value::Null;
        let plans = plan_workload(&job, &objects()).unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].name, "s-build-0abcd-0");
        assert_eq!(plans[0].workload, "s-build-0abcd");
        assert!(plans[0].completes);
        assert!(!plan_workload(&deployment(), &objects()).unwrap()[0].completes);
    }

    #[test]
    fn a_missing_secret_or_volume_is_an_error_naming_it() {
        let mut o = objects();
        o.secrets.clear();
        let e = plan_workload(&deployment(), &o).unwrap_err().to_string();
        assert!(e.contains("Secret creds"), "{e}");
    }

    fn pod(name: &str, component: &str, ip: [u8; 4]) -> PodAddr {
        PodAddr {
            name: name.into(),
            namespace: "ns".into(),
            labels: BTreeMap::from([
                ("app.kubernetes.io/component".into(), component.into()),
                ("recstack.io/stack".into(), "s".into()),
            ]),
            ip: Ipv4Addr::from(ip),
            ports: BTreeMap::from([("grpc".into(), 9090), ("http".into(), 8080)]),
            ready: true,
        }
    }

    #[test]
    fn policies_isolate_selected_pods_and_allow_the_union_of_rules() {
        let pods = [
            pod("g", "gateway", [10, 0, 0, 1]),
            pod("r", "recall", [10, 0, 0, 2]),
            pod("i", "ingest", [10, 0, 0, 3]),
        ];
        let deny = json!({"metadata": {"namespace": "ns"}, "spec": {"podSelector": {"matchLabels": {"recstack.io/stack": "s"}}, "policyTypes": ["Ingress", "Egress"]}});
        let recall = json!({"metadata": {"namespace": "ns"}, "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "recall"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}], "ports": [{"protocol": "TCP", "port": 9090}]}],
            "egress": [{"ports": [{"protocol": "TCP", "port": 6379}]}, {"ports": [{"protocol": "UDP", "port": 53}]}]
        }});
        let p = pod_policy(&[deny.clone(), recall], &pods[1], &pods);
        let ingress = p.ingress.clone().unwrap();
        assert_eq!(ingress.len(), 1);
        assert_eq!(ingress[0].peers, Some(BTreeSet::from(["10.0.0.1".to_string()])));
        assert_eq!(ingress[0].ports, Some(BTreeSet::from([9090])));
        assert_eq!(
            p.egress.clone().unwrap(),
            vec![Allow {
                peers: None,
                ports: Some(BTreeSet::from([6379]))
            }]
        );
        // Only the default deny selects ingest: isolated both ways, nothing allowed.
        let i = pod_policy(&[deny], &pods[2], &pods);
        assert_eq!((i.ingress, i.egress), (Some(vec![]), Some(vec![])));
        let rules = nft_ruleset(&p, Ipv4Addr::new(10, 0, 0, 254));
        assert!(
            rules.contains("ip saddr { 10.0.0.1 } tcp dport { 9090 } accept"),
            "{rules}"
        );
        assert!(rules.contains("tcp dport { 6379 } accept"), "{rules}");
        assert!(rules.contains("policy drop"), "{rules}");
        // Not selected by anything: not isolated.
        let open = nft_ruleset(&PodPolicy::default(), Ipv4Addr::new(10, 0, 0, 254));
        assert!(!open.contains("policy drop"), "{open}");
    }

    #[test]
    fn hosts_list_the_ready_pods_of_each_service() {
        let mut pods = vec![pod("r0", "recall", [10, 0, 0, 2]), pod("r1", "recall", [10, 0, 0, 3])];
        pods[1].ready = false;
        let svc = json!({"metadata": {"name": "s-recall", "namespace": "ns"}, "spec": {"selector": {"app.kubernetes.io/component": "recall"}}});
        let hosts = hosts_file(
            &[svc],
            &pods,
            &[("redis.infra.svc".into(), Ipv4Addr::new(10, 0, 0, 254))],
        );
        assert!(
            hosts.contains("10.0.0.2 s-recall.ns.svc.cluster.local s-recall.ns.svc"),
            "{hosts}"
        );
        assert!(!hosts.contains("10.0.0.3"), "{hosts}");
        assert!(hosts.contains("10.0.0.254 redis.infra.svc"), "{hosts}");
    }

    #[test]
    fn resource_fields_read_as_the_kubelet_gives_them() {
        let resources = json!({"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "2"}});
        let field = |v: Value| resource_field(&resources, v.as_object().unwrap());
        assert_eq!(field(json!({"resource": "requests.cpu", "divisor": "1"})).unwrap(), "1");
        assert_eq!(
            field(json!({"resource": "requests.cpu", "divisor": "1m"})).unwrap(),
            "250"
        );
        assert_eq!(field(json!({"resource": "limits.cpu"})).unwrap(), "2");
        assert_eq!(
            field(json!({"resource": "requests.memory", "divisor": "1Mi"})).unwrap(),
            "1024"
        );
        let none = json!({});
        assert_eq!(
            resource_field(&none, json!({"resource": "requests.cpu"}).as_object().unwrap()).unwrap(),
            "0"
        );
        assert!(field(json!({"resource": "requests.cpu", "divisor": "0"})).is_err());
        assert!(field(json!({"resource": "cpu"})).is_err());
    }

    #[test]
    fn image_env_comes_from_the_final_stage() {
        let d = "FROM a AS b\nENV X=1\nFROM c\nENV ORT_DYLIB_PATH=/opt/o.so PATH=/usr/local/bin:/usr/bin\nUSER 1\n";
        assert_eq!(
            dockerfile_env(d),
            [
                ("ORT_DYLIB_PATH".to_string(), "/opt/o.so".to_string()),
                ("PATH".into(), "/usr/local/bin:/usr/bin".into())
            ]
        );
        assert_eq!(base64_decode("c2VjcmV0").unwrap(), b"secret");
    }
}
