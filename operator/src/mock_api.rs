//! An in-memory Kubernetes API behind a `tower_test` mock service, for the fast reconcile
//! tests and the reconcile benchmark. The real API server's behaviour (RBAC, admission, CEL,
//! canonicalisation, garbage collection, watches) is tested by the cluster e2e (`scripts/e2e`).
//!
//! It serves what the operator uses: GET and LIST (with equality label selectors), server-side
//! apply, merge and JSON patches (status subresource included), POST and DELETE (finalizers
//! hold an object until they are removed). Every request is recorded so tests can assert on
//! the exact calls a scenario makes — "a no-op reconcile writes nothing" is checked here.
//! Failures can be injected per method and path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl Call {
    /// True for requests that change state: anything but a GET or a dry run.
    pub fn is_write(&self) -> bool {
        self.method != Method::GET && !self.is_dry_run()
    }

    /// True for a request the API server validates and does not store: `dryRun=All` in the
    /// query, or in a DELETE's body (`DeleteOptions.dryRun`).
    pub fn is_dry_run(&self) -> bool {
        query_param(&self.query, "dryRun").is_some()
            || self
                .body
                .as_ref()
                .and_then(|b| b.get("dryRun"))
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "All"))
    }

    /// `"PATCH deployments/web"`-style summary for readable test failures.
    pub fn summary(&self) -> String {
        let path = self.path.trim_start_matches("/api/v1/").trim_start_matches("/apis/");
        let tail: Vec<&str> = path.split('/').collect();
        let short = match tail.iter().position(|s| *s == "namespaces") {
            Some(i) => tail[i + 2..].join("/"),
            None => tail.iter().skip(2).copied().collect::<Vec<_>>().join("/"),
        };
        format!("{} {short}", self.method)
    }
}

#[derive(Clone, Debug)]
struct Failure {
    method: Method,
    path_contains: String,
    status: u16,
    message: String,
    remaining: usize,
    /// Whether it fails dry runs (`true`) or real requests (`false`).
    dry_run: bool,
}

#[derive(Default)]
struct State {
    /// (resource path prefix without name, name) → object. The prefix is e.g.
    /// `/apis/apps/v1/namespaces/ns/deployments`.
    objects: BTreeMap<(String, String), Value>,
    calls: Vec<Call>,
    failures: Vec<Failure>,
    /// Plural resource names that answer 404 (a CRD that is not installed).
    missing: Vec<String>,
    resource_version: u64,
    record: bool,
}

/// Handle to the in-memory API. Cloning shares the state.
#[derive(Clone)]
pub struct MockApi {
    state: Arc<Mutex<State>>,
}

impl MockApi {
    /// A client wired to a fresh in-memory API. Must be called inside a Tokio runtime.
    pub fn start() -> (Client, MockApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = MockApi {
            state: Arc::new(Mutex::new(State {
                record: true,
                ..State::default()
            })),
        };
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = server.serve(request).await;
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), api)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // === test controls ===

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Writes so far (anything but a GET or a dry run).
    pub fn writes(&self) -> Vec<Call> {
        self.lock().calls.iter().filter(|c| c.is_write()).cloned().collect()
    }

    /// Forgets recorded calls.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Turns call recording off (the benchmark's 1,000 stacks would otherwise keep every body).
    pub fn set_recording(&self, on: bool) {
        self.lock().record = on;
    }

    /// The next `times` requests with `method` whose path contains `path_contains` fail with
    /// `status`; dry runs of them pass (a fault the server could not have foreseen).
    pub fn fail(&self, method: Method, path_contains: &str, status: u16, message: &str, times: usize) {
        self.push_failure(method, path_contains, status, message, times, false);
    }

    /// The next `times` dry runs with `method` whose path contains `path_contains` fail with
    /// `status` (what an admission policy, a quota or a validation render did not foresee
    /// does); real requests are not affected.
    pub fn fail_dry_run(&self, method: Method, path_contains: &str, status: u16, message: &str, times: usize) {
        self.push_failure(method, path_contains, status, message, times, true);
    }

    fn push_failure(
        &self,
        method: Method,
        path_contains: &str,
        status: u16,
        message: &str,
        times: usize,
        dry_run: bool,
    ) {
        self.lock().failures.push(Failure {
            method,
            path_contains: path_contains.into(),
            status,
            message: message.into(),
            remaining: times,
            dry_run,
        });
    }

    /// Makes a resource (by plural) answer 404, as when its CRD is not installed.
    pub fn without_resource(&self, plural: &str) {
        self.lock().missing.push(plural.into());
    }

    /// Stores an object as if created by someone else (a kubectl user, a kubelet).
    pub fn put(&self, collection: &str, name: &str, object: Value) {
        let mut s = self.lock();
        s.resource_version += 1;
        s.objects.insert((collection.into(), name.into()), object);
    }

    /// The stored object at `collection`/`name`.
    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&(collection.into(), name.into())).cloned()
    }

    /// Names stored under `collection`.
    pub fn names(&self, collection: &str) -> Vec<String> {
        self.lock()
            .objects
            .keys()
            .filter(|(c, _)| c == collection)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Deletes a stored object behind the operator's back.
    pub fn remove(&self, collection: &str, name: &str) -> Option<Value> {
        self.lock().objects.remove(&(collection.to_string(), name.to_string()))
    }

    /// Edits a stored object in place.
    pub fn edit(&self, collection: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.lock();
        if let Some(o) = s.objects.get_mut(&(collection.to_string(), name.to_string())) {
            f(o);
        }
    }

    /// Plays the HPA controller and the kubelet: a Deployment without replicas gets its HPA's
    /// minReplicas (or the API default of 1), then every Deployment and StatefulSet reports
    /// them all ready.
    pub fn make_deployments_ready(&self) {
        let mut s = self.lock();
        let hpa_min: BTreeMap<(String, String), i64> = s
            .objects
            .iter()
            .filter(|((c, _), _)| c.ends_with("/horizontalpodautoscalers"))
            .map(|((c, n), o)| {
                let ns_prefix = c
                    .rsplit_once("/apis/autoscaling/v2")
                    .map_or(c.as_str(), |(_, rest)| rest)
                    .to_string();
                (
                    (ns_prefix.replace("/horizontalpodautoscalers", ""), n.clone()),
                    o["spec"]["minReplicas"].as_i64().unwrap_or(1),
                )
            })
            .collect();
        for ((collection, name), o) in s.objects.iter_mut() {
            if let Some(prefix) = collection
                .strip_suffix("/deployments")
                .or_else(|| collection.strip_suffix("/statefulsets"))
            {
                let ns_prefix = prefix.trim_start_matches("/apis/apps/v1").to_string();
                let replicas = o
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or_else(|| hpa_min.get(&(ns_prefix, name.clone())).copied().unwrap_or(1));
                o["spec"]["replicas"] = json!(replicas);
                let generation = o.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
                o["status"] = json!({
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                });
            }
        }
    }

    // === the API ===

    async fn serve(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();
        let call = Call {
            method: parts.method.clone(),
            path,
            query,
            content_type,
            body,
        };

        let mut s = self.lock();
        if s.record {
            s.calls.push(call.clone());
        }
        let (status, value) = s.handle(&call);
        drop(s);
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

/// Where a request points.
struct Target {
    collection: String,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match *segs.first()? {
        "api" => 2,
        "apis" => 3,
        _ => return None,
    };
    let mut i = rest;
    if segs.get(i) == Some(&"namespaces") && segs.len() > i + 2 {
        i += 2;
    }
    let plural = segs.get(i)?.to_string();
    let collection = segs[..=i].iter().fold(String::new(), |acc, s| acc + "/" + s);
    Some(Target {
        collection,
        plural,
        name: segs.get(i + 1).map(|s| s.to_string()),
        subresource: segs.get(i + 2).map(|s| s.to_string()),
    })
}

fn status(code: u16, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code }),
    )
}

fn selector_matches(selector: &str, labels: Option<&Value>) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels.and_then(|l| l.get(k)).and_then(Value::as_str) == Some(v),
            None => true,
        })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 7386 merge, also used as the mock's approximation of server-side apply.
fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

impl State {
    fn handle(&mut self, call: &Call) -> (StatusCode, Value) {
        if let Some(f) = self.failures.iter_mut().find(|f| {
            f.remaining > 0
                && f.method == call.method
                && f.dry_run == call.is_dry_run()
                && call.path.contains(&f.path_contains)
        }) {
            f.remaining -= 1;
            let (code, message) = (f.status, f.message.clone());
            return status(code, "InjectedFailure", &message);
        }
        let Some(target) = parse(&call.path) else {
            return status(404, "NotFound", &format!("no route for {}", call.path));
        };
        if self.missing.contains(&target.plural) {
            return status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({})", target.plural),
            );
        }
        if call.is_dry_run() {
            // Validated and answered as a real request would be; nothing kept.
            let name = target.name.clone().or_else(|| {
                call.body
                    .as_ref()
                    .and_then(|b| b.pointer("/metadata/name"))
                    .and_then(Value::as_str)
                    .map(String::from)
            });
            let key = (target.collection.clone(), name.unwrap_or_default());
            let (kept, rv) = (self.objects.get(&key).cloned(), self.resource_version);
            let answer = self.dispatch(&target, call);
            match kept {
                Some(object) => self.objects.insert(key, object),
                None => self.objects.remove(&key),
            };
            self.resource_version = rv;
            return answer;
        }
        self.dispatch(&target, call)
    }

    fn dispatch(&mut self, target: &Target, call: &Call) -> (StatusCode, Value) {
        match (&call.method, &target.name) {
            (&Method::GET, None) => self.list(target, &call.query),
            (&Method::GET, Some(name)) => match self.objects.get(&(target.collection.clone(), name.clone())) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => status(404, "NotFound", &format!("{} \"{name}\" not found", target.plural)),
            },
            (&Method::POST, None) => self.create(target, call.body.clone().unwrap_or_default()),
            (&Method::PATCH, Some(name)) => self.patch(target, name, call),
            (&Method::DELETE, Some(name)) => self.delete(target, name),
            _ => status(405, "MethodNotAllowed", &format!("{} {}", call.method, call.path)),
        }
    }

    /// Whether a plural names a cluster-scoped kind (among those the operator uses).
    fn is_cluster_scoped(&self, plural: &str) -> bool {
        matches!(plural, "priorityclasses" | "namespaces" | "customresourcedefinitions")
    }

    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn list(&mut self, target: &Target, query: &str) -> (StatusCode, Value) {
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        let matches = |o: &Value| selector_matches(&selector, o.pointer("/metadata/labels"));
        let items: Vec<Value> = if target.collection.contains("/namespaces/") || self.is_cluster_scoped(&target.plural)
        {
            // One collection: a range scan over its keys.
            let from = (target.collection.clone(), String::new());
            self.objects
                .range(from..)
                .take_while(|((c, _), _)| c == &target.collection)
                .filter(|(_, o)| matches(o))
                .map(|(_, o)| o.clone())
                .collect()
        } else {
            // A namespaced kind listed across all namespaces.
            let suffix = format!("/{}", target.plural);
            self.objects
                .iter()
                .filter(|((c, _), _)| c.ends_with(&suffix) && c.contains("/namespaces/"))
                .filter(|(_, o)| matches(o))
                .map(|(_, o)| o.clone())
                .collect()
        };
        let rv = self.resource_version.to_string();
        (
            StatusCode::OK,
            json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": rv }, "items": items }),
        )
    }

    fn create(&mut self, target: &Target, mut object: Value) -> (StatusCode, Value) {
        let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) => n.to_string(),
            None => match object.pointer("/metadata/generateName").and_then(Value::as_str) {
                Some(prefix) => format!("{prefix}{}", self.resource_version + 1),
                None => return status(422, "Invalid", "metadata.name: Required value"),
            },
        };
        let key = (target.collection.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", target.plural),
            );
        }
        self.init_meta(&mut object, &name);
        self.objects.insert(key, object.clone());
        (StatusCode::CREATED, object)
    }

    fn init_meta(&mut self, object: &mut Value, name: &str) {
        let rv = self.next_rv();
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        meta["uid"] = json!(format!("uid-{rv}"));
        meta["resourceVersion"] = json!(rv);
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }

    fn patch(&mut self, target: &Target, name: &str, call: &Call) -> (StatusCode, Value) {
        let key = (target.collection.clone(), name.to_string());
        let patch = call.body.clone().unwrap_or_default();
        let content_type = call.content_type.as_deref().unwrap_or_default();
        let is_apply = content_type.starts_with("application/apply-patch");
        let existing = self.objects.get(&key).cloned();
        let mut object = match (existing, is_apply) {
            (Some(o), _) => o,
            (None, true) => {
                let mut fresh = patch.clone();
                self.init_meta(&mut fresh, name);
                fresh
            }
            (None, false) => return status(404, "NotFound", &format!("{} \"{name}\" not found", target.plural)),
        };
        // The API server allocates a Service's cluster IP on create and never changes it.
        if target.plural == "services" {
            let had = object
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .map(String::from);
            let wants = patch.pointer("/spec/clusterIP").and_then(Value::as_str);
            match (&had, wants) {
                (Some(had), Some(wants)) if had != wants => {
                    return status(
                        422,
                        "Invalid",
                        &format!(
                            "Service \"{name}\" is invalid: spec.clusterIP: Invalid value: \"{wants}\": field is immutable"
                        ),
                    );
                }
                (None, None) => {
                    object["spec"]["clusterIP"] = json!("10.96.0.10");
                }
                _ => {}
            }
        }
        let before_spec = object.get("spec").cloned();
        if content_type.starts_with("application/json-patch") {
            // Like the real API server, a "test" for null passes on a missing path (the
            // finalizer helper sends one before adding the first finalizer).
            let patch = match patch {
                Value::Array(ops) => Value::Array(
                    ops.into_iter()
                        .filter(|op| {
                            let missing_null_test = op["op"] == "test"
                                && op["value"].is_null()
                                && op["path"].as_str().is_some_and(|p| object.pointer(p).is_none());
                            !missing_null_test
                        })
                        .collect(),
                ),
                other => other,
            };
            let ops: json_patch::Patch = match serde_json::from_value(patch) {
                Ok(p) => p,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            };
            if let Err(e) = json_patch::patch(&mut object, &ops) {
                // The finalizer helper's "test" ops fail like this on a conflict.
                return status(422, "Invalid", &e.to_string());
            }
        } else if target.subresource.as_deref() == Some("status") {
            if let Some(st) = patch.get("status") {
                merge(&mut object["status"], st);
            }
        } else {
            let mut patch = patch;
            // The status subresource is separate: a patch of the main resource ignores it.
            if let Some(m) = patch.as_object_mut() {
                m.remove("status");
            }
            merge(&mut object, &patch);
        }
        if object.get("spec").cloned() != before_spec {
            let g = object
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            object["metadata"]["generation"] = json!(g + 1);
        }
        object["metadata"]["resourceVersion"] = json!(self.next_rv());
        // Removing the last finalizer of an object being deleted deletes it.
        let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        (StatusCode::OK, object)
    }

    fn delete(&mut self, target: &Target, name: &str) -> (StatusCode, Value) {
        let key = (target.collection.clone(), name.to_string());
        let Some(mut object) = self.objects.get(&key).cloned() else {
            return status(404, "NotFound", &format!("{} \"{name}\" not found", target.plural));
        };
        let finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if finalizers {
            object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            object["metadata"]["resourceVersion"] = json!(self.next_rv());
            self.objects.insert(key, object.clone());
            return (StatusCode::OK, object);
        }
        self.objects.remove(&key);
        (
            StatusCode::OK,
            json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success" }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        let t = parse("/apis/apps/v1/namespaces/prod/deployments/web").unwrap();
        assert_eq!(t.collection, "/apis/apps/v1/namespaces/prod/deployments");
        assert_eq!(t.name.as_deref(), Some("web"));
        let t = parse("/api/v1/namespaces/prod/configmaps").unwrap();
        assert_eq!(t.collection, "/api/v1/namespaces/prod/configmaps");
        assert_eq!(t.name, None);
        let t = parse("/apis/recstack.io/v1alpha1/namespaces/p/recommenderstacks/s/status").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse("/apis/scheduling.k8s.io/v1/priorityclasses/x").unwrap();
        assert_eq!(t.collection, "/apis/scheduling.k8s.io/v1/priorityclasses");
        assert_eq!(t.name.as_deref(), Some("x"));
    }

    #[test]
    fn selectors_and_queries() {
        let labels = json!({"a": "1", "b": "2"});
        assert!(selector_matches("a=1,b=2", Some(&labels)));
        assert!(!selector_matches("a=1,b=3", Some(&labels)));
        assert!(selector_matches("", None));
        assert_eq!(
            query_param("labelSelector=a%3D1%2Cb%3D2&x=y", "labelSelector").as_deref(),
            Some("a=1,b=2")
        );
    }
}
