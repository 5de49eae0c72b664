//! The reconcile loop: the only place the operator talks to the API server.
//!
//! One pass: render the desired children (pure), read what the stack owns from the watch
//! caches (no request), plan the writes (pure: what differs, what is no longer wanted), send
//! each as a dry run, then apply with server-side apply and prune, then write status if it
//! changed. A pass over an unchanged stack makes no
//! request at all. Every owned kind is watched, so a child deleted or edited by someone else
//! brings its stack back within a second, not at the next resync.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use recstack_crds::{BuildStatus, Component, RecommenderStack, StreamEngine};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::cache::ChildCache;
use crate::diff::is_subset;
use crate::labels::{self, FIELD_MANAGER, FINALIZER};
use crate::metrics::{ErrorLabels, Metrics, OutcomeLabels, WriteLabels};
use crate::render::{self, Child, ChildKind, RenderError};
use crate::status::{self, Observed, Outcome};

/// Annotation holding the hash of the object the operator last applied; it tells a spec
/// change (hash differs) from drift (hash equal, object changed by someone else).
pub const APPLIED_HASH: &str = "recstack.io/applied-hash";

/// Requeue interval when all is well: status is refreshed by watch events in between.
const RESYNC: Duration = Duration::from_secs(300);
/// Requeue interval while a component is not ready. Deployments are watched, but a
/// FlinkDeployment's job state is not (its CRD may be absent), so poll it.
const SETTLING: Duration = Duration::from_secs(30);

/// Everything that can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot render the stack: {0}")]
    Render(#[from] RenderError),
    #[error("listing {kind}: {source}")]
    List { kind: &'static str, source: kube::Error },
    #[error("{verb} {kind} {name}: {source}")]
    Child {
        verb: &'static str,
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    /// The API server refused one of a reconcile's writes in its dry run, before any was made.
    #[error("{verb} {kind} {name}: the API server refused it in a dry run, so nothing was written: {source}")]
    Refused {
        verb: &'static str,
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    /// The objects a reconcile would create do not fit together in one of the namespace's
    /// ResourceQuotas, though each passed its dry run alone.
    #[error("{0}, so nothing was written")]
    Quota(#[from] crate::quota::Shortfall),
    #[error("writing status: {0}")]
    Status(kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the RecommenderStack has no namespace")]
    MissingNamespace,
}

impl Error {
    /// Where in a reconcile it failed: the errors metric's `stage` label.
    pub fn stage(&self) -> &'static str {
        match self {
            Error::Render(_) => "render",
            Error::List { .. } => "list",
            Error::Child { .. } => "apply",
            Error::Refused { .. } | Error::Quota(_) => "dry_run",
            Error::Status(_) => "status",
            // A reconcile's own error comes wrapped by the finalizer helper: report its stage.
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.stage()
                }
                _ => "finalizer",
            },
            Error::MissingNamespace => "spec",
        }
    }

    /// Why it failed: the errors metric's `cause` label (forbidden, conflict, invalid, …), so
    /// an RBAC gap, a conflict and a network fault are told apart on a dashboard.
    pub fn cause(&self) -> &'static str {
        match self {
            Error::Render(_) | Error::MissingNamespace => "invalid_spec",
            // What the API server's own quota admission answers: 403.
            Error::Quota(_) => "forbidden",
            Error::List { source, .. }
            | Error::Child { source, .. }
            | Error::Refused { source, .. }
            | Error::Status(source) => cause(source),
            Error::Finalizer(e) => {
                match e.as_ref() {
                    kube::runtime::finalizer::Error::ApplyFailed(e)
                    | kube::runtime::finalizer::Error::CleanupFailed(e) => e.cause(),
                    kube::runtime::finalizer::Error::AddFinalizer(e)
                    | kube::runtime::finalizer::Error::RemoveFinalizer(e) => cause(e),
                    kube::runtime::finalizer::Error::UnnamedObject
                    | kube::runtime::finalizer::Error::InvalidFinalizer => "client",
                }
            }
        }
    }
}

/// A kube error's cause, from the API server's status code or the kind of client failure.
pub fn cause(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(status) => match status.code {
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            410 => "expired",
            422 => "invalid",
            429 => "throttled",
            500..=599 => "server_error",
            _ => "api",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => "connection",
        kube::Error::SerdeError(_) => "decode",
        _ => "client",
    }
}

/// State shared by every reconcile and the web server.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Where a reconcile reads the children that exist.
    children: Children,
    /// Consecutive failures per stack, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Reconciles running now, so a shutdown can wait for them (and only them).
    in_flight: Arc<AtomicUsize>,
    /// Clock for condition transition times; tests pin it.
    clock: fn() -> Time,
    /// Stacks (namespace/name/uid) whose generated access Secret is known to exist: it is
    /// created once (a create answered 409 means it is there) and never read or re-applied.
    access_secrets: Mutex<std::collections::HashSet<String>>,
}

/// Where the live children come from.
enum Children {
    /// A LIST per kind and reconcile (tests against the in-memory API, which does not watch).
    List,
    /// The controller's watch caches (what [`run`] uses), and whether every one of them holds
    /// its first full list.
    Watched {
        cache: ChildCache,
        ready: tokio::sync::watch::Receiver<bool>,
    },
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, reporter_instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: reporter_instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            children: Children::List,
            failures: Mutex::default(),
            in_flight: Arc::default(),
            clock: || Time(jiff::Timestamp::now()),
            access_secrets: Mutex::default(),
        }
    }

    /// A context whose clock always reads `now` (for deterministic tests).
    pub fn with_clock(mut self, clock: fn() -> Time) -> Self {
        self.clock = clock;
        self
    }
}

/// Watches every stack and every kind a stack owns, and reconciles until `shutdown` resolves.
/// `concurrency` bounds parallel reconciles. A reconcile reads the caches only once each holds
/// a full list, so a restarted operator never mistakes an empty cache for missing children.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    identity: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let mut controller = Controller::new(Api::<RecommenderStack>::all(client.clone()), watcher::Config::default());
    let mut cache = ChildCache::new();
    for kind in ChildKind::ALL {
        if kind.optional() && !installed(&client, kind).await {
            info!(kind = kind.kind(), "not installed in this cluster; not watched");
            continue;
        }
        let stream = cache.watch(&client, kind);
        controller = controller.owns_stream_with(stream, kind.api_resource());
    }
    // One task waits for the caches (a store's readiness wakes only one waiter), and tells
    // every reconcile through a watch channel.
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let waiting = cache.clone();
    tokio::spawn(async move {
        waiting.wait_until_ready().await;
        let _ = ready_tx.send(true);
    });
    let ctx = Arc::new(Context {
        children: Children::Watched { cache, ready },
        ..Context::new(client, metrics, identity)
    });
    // On shutdown the controller stops taking work, and this waits for the reconciles already
    // running. (The controller's own graceful end also waits out every scheduled requeue,
    // minutes away; those are simply not needed by the next leader, which lists afresh.)
    let shutdown = shutdown.shared();
    let in_flight = ctx.in_flight.clone();
    let drained = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            info!(
                running = in_flight.load(Ordering::Acquire),
                "waiting for running reconciles"
            );
            while in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let controller = controller
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        });
    tokio::select! {
        _ = controller => {}
        _ = drained => info!("running reconciles finished"),
    }
}

/// Whether an optional kind's CRD is served (a LIST of one answers 404 when it is not).
async fn installed(client: &Client, kind: ChildKind) -> bool {
    let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource());
    !matches!(api.list(&ListParams::default().limit(1)).await, Err(kube::Error::Api(s)) if s.code == 404)
}

/// Reconciles one stack: adds the finalizer, then applies or cleans up.
pub async fn reconcile(stack: Arc<RecommenderStack>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _running = InFlight::enter(&ctx.in_flight);
    tracing::debug!(stack = %stack.name_any(), "reconcile");
    let started = Instant::now();
    let ns = stack.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<RecommenderStack> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, stack, |event| async {
        match event {
            Finalizer::Apply(stack) => apply(&stack, &ctx).await,
            Finalizer::Cleanup(stack) => cleanup(&stack, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.get_or_create(&OutcomeLabels { outcome }).inc();
    result
}

/// Counts a running reconcile for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requeue with exponential backoff (5 s, 10 s, … 5 min) and count the error.
pub fn error_policy(stack: Arc<RecommenderStack>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            stage: error.stage(),
            cause: error.cause(),
        })
        .inc();
    let key = stack_key(&stack);
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    Action::requeue(backoff(*n))
}

/// Delay before retry number `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

fn stack_key(stack: &RecommenderStack) -> String {
    format!("{}/{}", stack.namespace().unwrap_or_default(), stack.name_any())
}

async fn apply(stack: &RecommenderStack, ctx: &Context) -> Result<Action, Error> {
    let ns = stack.namespace().ok_or(Error::MissingNamespace)?;
    let name = stack.name_any();

    let desired = match render::render(stack) {
        Ok(children) => children,
        Err(e) => {
            let e = Error::Render(e);
            let build = stack.status.as_ref().and_then(|s| s.build.clone());
            write_status(stack, ctx, &[], &Outcome::Failed(e.to_string()), build).await?;
            return Err(e);
        }
    };
    let mut live = list_children(ctx, &ns, &name).await?;

    let mut outcome = Outcome::Applied;
    let mut first_error = None;
    if stack.spec.paused {
        outcome = Outcome::Paused;
    } else if let Err(e) = sync_children(stack, ctx, &ns, desired, &mut live).await {
        publish(
            ctx,
            stack,
            EventType::Warning,
            "ReconcileFailed",
            "Apply",
            e.to_string(),
        )
        .await;
        outcome = Outcome::Failed(e.to_string());
        first_error = Some(e);
    }

    let observed = observe(stack, &live);
    let build = live
        .iter()
        .find(|((kind, _), _)| *kind == ChildKind::Job)
        .map(|(_, job)| status::observe_build(&to_value(job)));
    write_status(stack, ctx, &observed, &outcome, build).await?;
    match first_error {
        Some(e) => Err(e),
        None => {
            ctx.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&stack_key(stack));
            let settled = observed.iter().all(status::Observed::rolled_out);
            Ok(Action::requeue(if settled { RESYNC } else { SETTLING }))
        }
    }
}

/// Creates the stack's access Secret (random tokens) when it names none and it does not exist
/// yet. Only `create`: the operator never reads Secrets (a 409 says it is there already).
async fn ensure_access_secret(stack: &RecommenderStack, ctx: &Context, ns: &str) -> Result<(), Error> {
    if stack.spec.paused || stack.spec.access.secret_ref.is_some() {
        return Ok(());
    }
    let key = format!("{}/{}", stack_key(stack), stack.uid().unwrap_or_default());
    if ctx
        .access_secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&key)
    {
        return Ok(());
    }
    let Some(secret) = render::access_secret(stack, random_token)? else {
        return Ok(());
    };
    let name = stack.spec.access.secret_name(&stack.name_any());
    let child_error = |source| Error::Child {
        verb: "create",
        kind: "Secret",
        name: name.clone(),
        source,
    };
    let object: DynamicObject = serde_json::from_value(secret).map_err(|e| child_error(kube::Error::SerdeError(e)))?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
    );
    match api.create(&kube::api::PostParams::default(), &object).await {
        Ok(_) => {
            publish(
                ctx,
                stack,
                EventType::Normal,
                "AccessSecretCreated",
                "Create",
                format!("Secret {name} created with random access tokens (reader, admin, debug, pseudonym-key)"),
            )
            .await;
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(child_error(e)),
    }
    ctx.access_secrets.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
    Ok(())
}

/// 32 random alphanumeric characters (~190 bits) from the operating system's generator.
fn random_token() -> String {
    use rand::Rng;
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Applies what differs from the live objects and prunes what is no longer desired. `live`
/// is updated with what the API server returned.
///
/// Every write is first sent as a dry run (`dryRun=All`: the API server validates, defaults
/// and runs admission, quota and policies included, and stores nothing). Only when the server
/// would take all of them is anything written, the access Secret included: a stack whose
/// objects the server refuses in a way render did not foresee is left as it was, not half
/// applied.
async fn sync_children(
    stack: &RecommenderStack,
    ctx: &Context,
    ns: &str,
    desired: Vec<Child>,
    live: &mut BTreeMap<(ChildKind, String), DynamicObject>,
) -> Result<(), Error> {
    let plan = plan(desired, live);
    preflight(ctx, ns, &plan).await?;
    ensure_access_secret(stack, ctx, ns).await?;
    let mut changes = Changes::default();
    let result = apply_and_prune(stack, ctx, ns, plan, live, &mut changes).await;
    // One Event per kind of change and reconcile (not one per object: a new stack's 37
    // children would be 37 more writes to the API server), also when an apply failed midway.
    for (reason, objects) in changes.0 {
        let note = changes_note(reason, &objects);
        let action = if reason == "Pruned" { "Delete" } else { "Apply" };
        publish(ctx, stack, EventType::Normal, reason, action, note).await;
    }
    result
}

/// The writes one reconcile makes: each child that differs from its live object, with why,
/// and each live object no longer desired.
#[derive(Debug, Default)]
pub struct Plan {
    /// Children to apply, stamped with their hash, in render order.
    pub apply: Vec<(Child, &'static str)>,
    /// Live objects to delete.
    pub prune: Vec<(ChildKind, String)>,
}

/// Compares the desired children with the live objects (pure): a child whose every field is
/// already live is left alone; one that is missing is `Created`; one whose applied hash
/// matches but whose fields differ was changed by someone else (`DriftRepaired`); the rest
/// are `Updated`.
pub fn plan(desired: Vec<Child>, live: &BTreeMap<(ChildKind, String), DynamicObject>) -> Plan {
    let mut plan = Plan::default();
    let mut wanted = Vec::with_capacity(desired.len());
    for child in desired {
        let child = stamp(child);
        let key = (child.kind, child.name());
        let reason = match live.get(&key) {
            None => Some("Created"),
            Some(current) if is_subset(&to_value(&child.object), &to_value(current)) => None,
            Some(current)
                if current.annotations().get(APPLIED_HASH) == child.object.annotations().get(APPLIED_HASH) =>
            {
                Some("DriftRepaired")
            }
            Some(_) => Some("Updated"),
        };
        wanted.push(key);
        if let Some(reason) = reason {
            plan.apply.push((child, reason));
        }
    }
    plan.prune = live.keys().filter(|k| !wanted.contains(k)).cloned().collect();
    plan
}

/// Whether a write of the plan can be checked by a dry run on its own. A dry run stores
/// nothing, so an object the server validates against another object of the same plan cannot
/// be: a RoleBinding whose Role the plan creates is refused in a dry run (the server resolves the
/// Role's rules to check the binding grants nothing its writer lacks, and the Role is not there
/// yet). It is written after its Role, as render orders them, unchecked.
pub fn checked_in_dry_run(child: &Child, plan: &Plan) -> bool {
    if child.kind != ChildKind::RoleBinding {
        return true;
    }
    let data = &child.object.data;
    let role = (data.pointer("/roleRef/kind") == Some(&json!("Role")))
        .then(|| data.pointer("/roleRef/name").and_then(Value::as_str))
        .flatten();
    !plan
        .apply
        .iter()
        .any(|(c, reason)| c.kind == ChildKind::Role && *reason == "Created" && Some(c.name().as_str()) == role)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Sends each of the plan's writes as a dry run. The first the API server refuses fails the
/// reconcile before anything is written, naming the object and the server's reason. A refusal
/// the real pass handles itself (a Service field that is recreated, an object already gone)
/// passes.
async fn preflight(ctx: &Context, ns: &str, plan: &Plan) -> Result<(), Error> {
    let dry_apply = apply_params().dry_run();
    for (child, _) in plan.apply.iter().filter(|(child, _)| checked_in_dry_run(child, plan)) {
        let name = child.name();
        match child_api(ctx, child.kind, ns)
            .patch(&name, &dry_apply, &Patch::Apply(&child.object))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if must_recreate(child.kind, status.code, &status.message) => {}
            Err(source) => {
                return Err(Error::Refused {
                    verb: "applying",
                    kind: child.kind.kind(),
                    name,
                    source,
                });
            }
        }
    }
    check_quotas(ctx, ns, plan).await?;
    let dry_delete = DeleteParams::background().dry_run();
    for (kind, name) in &plan.prune {
        delete_child(ctx, *kind, ns, name, &dry_delete)
            .await
            .map_err(|source| Error::Refused {
                verb: "pruning",
                kind: kind.kind(),
                name: name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Holds the objects the plan creates against the namespace's ResourceQuotas together
/// ([`crate::quota`]): each dry run checked one object alone. One list request, only for a plan
/// that creates something. An install whose RBAC predates the check (no `list` on
/// ResourceQuotas) skips it with a warning, as before it.
async fn check_quotas(ctx: &Context, ns: &str, plan: &Plan) -> Result<(), Error> {
    let mut creates = BTreeMap::new();
    for (child, reason) in &plan.apply {
        if *reason == "Created" {
            *creates.entry(child.kind).or_insert(0i64) += 1;
        }
    }
    if creates.is_empty() {
        return Ok(());
    }
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), ns);
    match api.list(&ListParams::default()).await {
        Ok(quotas) => Ok(crate::quota::check(&creates, &quotas.items)?),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            warn!(
                namespace = ns,
                "cannot list ResourceQuotas (RBAC): new objects are checked one at a time only"
            );
            Ok(())
        }
        Err(source) => Err(Error::List {
            kind: "ResourceQuota",
            source,
        }),
    }
}

/// What one reconcile changed: reason → "Kind name" of each object.
#[derive(Default)]
struct Changes(BTreeMap<&'static str, Vec<String>>);

impl Changes {
    fn add(&mut self, reason: &'static str, kind: ChildKind, name: &str) {
        self.0
            .entry(reason)
            .or_default()
            .push(format!("{} {name}", kind.kind()));
    }
}

/// An Event's note for `objects` changed for `reason`, within the API's 1 KiB limit.
pub fn changes_note(reason: &str, objects: &[String]) -> String {
    let what = match reason {
        "Created" => "created",
        "DriftRepaired" => "changed outside the operator; re-applied the stack's version of",
        "Pruned" => "no longer part of the stack; deleted",
        _ => "updated to match the spec:",
    };
    let mut note = format!(
        "{} object{} {what}",
        objects.len(),
        if objects.len() == 1 { "" } else { "s" }
    );
    for (i, object) in objects.iter().enumerate() {
        let more = format!(" … and {} more", objects.len() - i);
        if note.len() + object.len() + 2 + more.len() > 1000 {
            note.push_str(&more);
            break;
        }
        note.push_str(if i == 0 { ": " } else { ", " });
        note.push_str(object);
    }
    note
}

async fn apply_and_prune(
    stack: &RecommenderStack,
    ctx: &Context,
    ns: &str,
    plan: Plan,
    live: &mut BTreeMap<(ChildKind, String), DynamicObject>,
    changes: &mut Changes,
) -> Result<(), Error> {
    let params = apply_params();
    for (child, reason) in plan.apply {
        let key = (child.kind, child.name());
        let api = child_api(ctx, child.kind, ns);
        if let Some(current) = live.get(&key)
            && let Some(replicas) = replicas_to_hand_over(&child, current)
        {
            hand_over_replicas(&api, &key.1, current, replicas)
                .await
                .map_err(|source| Error::Child {
                    verb: "handing over replicas of",
                    kind: child.kind.kind(),
                    name: key.1.clone(),
                    source,
                })?;
        }
        let patch = Patch::Apply(&child.object);
        let apply = || api.patch(&key.1, &params, &patch);
        let child_error = |verb, source| Error::Child {
            verb,
            kind: child.kind.kind(),
            name: key.1.clone(),
            source,
        };
        let (applied, reason) = match apply().await {
            Ok(applied) => (applied, reason),
            Err(kube::Error::Api(status)) if must_recreate(child.kind, status.code, &status.message) => {
                // A field the API server will not change in place (a Service that becomes
                // headless, from an operator before 0.2): delete the object and create it.
                info!(stack = %stack.name_any(), kind = child.kind.kind(), name = %key.1, message = %status.message, "recreating");
                api.delete(&key.1, &DeleteParams::background())
                    .await
                    .map(|_| ())
                    .or_else(ignore_not_found)
                    .map_err(|source| child_error("deleting, to recreate,", source))?;
                let applied = apply().await.map_err(|source| child_error("recreating", source))?;
                (applied, "Recreated")
            }
            Err(source) => return Err(child_error("applying", source)),
        };
        ctx.metrics
            .writes
            .get_or_create(&WriteLabels {
                kind: child.kind.kind(),
                reason: metric_reason(reason),
            })
            .inc();
        info!(stack = %stack.name_any(), kind = child.kind.kind(), name = %key.1, reason, "applied");
        changes.add(reason, child.kind, &key.1);
        live.insert(key, applied);
    }

    for key in plan.prune {
        let (kind, name) = &key;
        delete_child(ctx, *kind, ns, name, &DeleteParams::background())
            .await
            .map_err(|source| Error::Child {
                verb: "pruning",
                kind: kind.kind(),
                name: name.clone(),
                source,
            })?;
        ctx.metrics
            .writes
            .get_or_create(&WriteLabels {
                kind: kind.kind(),
                reason: "pruned",
            })
            .inc();
        changes.add("Pruned", *kind, name);
        live.remove(&key);
    }
    Ok(())
}

/// Whether an apply refused with `code` and `message` should be retried by deleting and
/// creating the object: only for a field the API server never changes in place, on a kind
/// where a brief absence is harmless (a Service: clients keep their connections, and its
/// endpoints follow the pods). Deployments are never recreated (their pods would go).
pub fn must_recreate(kind: ChildKind, code: u16, message: &str) -> bool {
    // The API server says `spec.clusterIPs[0]: … may not change once set` (older versions:
    // `spec.clusterIP: … field is immutable`).
    kind == ChildKind::Service
        && code == 422
        && message.contains("spec.clusterIP")
        && (message.contains("may not change once set") || message.contains("field is immutable"))
}

/// Field manager that keeps a Deployment's `spec.replicas` while an autoscaler takes it over.
pub const HANDOVER_MANAGER: &str = "recstack-operator-handover";

/// When a component moves from fixed replicas to an autoscaler, the operator stops applying
/// `spec.replicas`. Server-side apply would then *remove* the field it no longer sends, and the
/// Deployment would fall back to its default of 1 replica — scaling a loaded service down to
/// one pod until the HPA reacts. The Kubernetes-documented way out: first give the field to
/// another manager at its current value, then apply without it. Returns the replicas to keep,
/// when that hand-over is due.
pub fn replicas_to_hand_over(desired: &Child, live: &DynamicObject) -> Option<i64> {
    if desired.kind != ChildKind::Deployment || desired.object.data.pointer("/spec/replicas").is_some() {
        return None;
    }
    let replicas = live.data.pointer("/spec/replicas").and_then(Value::as_i64)?;
    let ours = crate::cache::operator_owns_replicas(live);
    ours.then_some(replicas)
}

async fn hand_over_replicas(
    api: &Api<DynamicObject>,
    name: &str,
    live: &DynamicObject,
    replicas: i64,
) -> Result<(), kube::Error> {
    let types = live.types.clone().unwrap_or_default();
    let patch = json!({
        "apiVersion": types.api_version,
        "kind": types.kind,
        "metadata": { "name": name },
        "spec": { "replicas": replicas },
    });
    api.patch(
        name,
        &PatchParams::apply(HANDOVER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// Deletes what owner references cannot: PriorityClasses that operators before 0.2 created
/// per stack (cluster-scoped, labelled with the stack and its namespace). Every other child
/// has the stack as owner and goes with it through the garbage collector.
async fn cleanup(stack: &RecommenderStack, ctx: &Context) -> Result<Action, Error> {
    let ns = stack.namespace().ok_or(Error::MissingNamespace)?;
    let name = stack.name_any();
    let api: Api<PriorityClass> = Api::all(ctx.client.clone());
    let selector = labels::legacy_priority_class_selector(&ns, &name);
    let classes = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::List {
            kind: "PriorityClass",
            source,
        })?;
    for pc in classes {
        let pc_name = pc.name_any();
        api.delete(&pc_name, &DeleteParams::background())
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(|source| Error::Child {
                verb: "deleting",
                kind: "PriorityClass",
                name: pc_name.clone(),
                source,
            })?;
        ctx.metrics
            .writes
            .get_or_create(&WriteLabels {
                kind: "PriorityClass",
                reason: "pruned",
            })
            .inc();
    }
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&stack_key(stack));
    publish(
        ctx,
        stack,
        EventType::Normal,
        "Deleted",
        "Cleanup",
        format!("stack {ns}/{name} cleaned up"),
    )
    .await;
    Ok(Action::await_change())
}

/// Every child the stack owns now, by (kind, name): from the watch caches, or one LIST per
/// kind without them. Kinds whose CRD is not installed have none.
async fn list_children(
    ctx: &Context,
    ns: &str,
    stack: &str,
) -> Result<BTreeMap<(ChildKind, String), DynamicObject>, Error> {
    match &ctx.children {
        Children::Watched { cache, ready } => {
            // Returns at once after every cache's first full list.
            let _ = ready.clone().wait_for(|r| *r).await;
            Ok(cache.children(ns, stack))
        }
        Children::List => {
            let selector = labels::children_selector(stack);
            let mut live = BTreeMap::new();
            for kind in ChildKind::ALL {
                let list = match child_api(ctx, kind, ns)
                    .list(&ListParams::default().labels(&selector))
                    .await
                {
                    Ok(list) => list.items,
                    Err(kube::Error::Api(status)) if kind.optional() && status.code == 404 => Vec::new(),
                    Err(source) => {
                        return Err(Error::List {
                            kind: kind.kind(),
                            source,
                        });
                    }
                };
                live.extend(list.into_iter().map(|o| ((kind, o.name_any()), o)));
            }
            Ok(live)
        }
    }
}

/// Per-component replicas from the live objects.
fn observe(stack: &RecommenderStack, live: &BTreeMap<(ChildKind, String), DynamicObject>) -> Vec<Observed> {
    let name = stack.name_any();
    let get = |kind: ChildKind, c: Component| live.get(&(kind, labels::component_name(&name, c))).map(to_value);
    let mut observed: Vec<Observed> = Component::ONLINE
        .iter()
        .map(|&c| {
            status::observe_deployment(
                c,
                stack.spec.workload(c).replicas,
                get(ChildKind::Deployment, c).as_ref(),
                stack,
            )
        })
        .collect();
    match stack.spec.stream.engine {
        // The StatefulSet: the built-in worker, or the consumer applying the Flink job's output.
        StreamEngine::Builtin | StreamEngine::Flink => {
            observed.push(status::observe_deployment(
                Component::Stream,
                Some(stack.spec.stream.parallelism),
                get(ChildKind::StatefulSet, Component::Stream).as_ref(),
                stack,
            ));
            if stack.spec.stream.engine == StreamEngine::Flink {
                let job = live.get(&(ChildKind::FlinkDeployment, labels::flink_name(&name)));
                observed.push(status::observe_flink(job.map(to_value).as_ref()));
            }
        }
        // Nothing deployed, nothing to observe.
        StreamEngine::None => {}
        // Render refuses it before anything is observed.
        StreamEngine::Unknown => observed.push(status::Observed::default()),
    }
    if stack.spec.dashboard.is_some() {
        for c in Component::OBSERVABILITY {
            observed.push(status::observe_deployment(
                c,
                stack.spec.workload(c).replicas,
                get(ChildKind::Deployment, c).as_ref(),
                stack,
            ));
        }
    }
    observed
}

/// Writes status only when it differs from the stored one.
async fn write_status(
    stack: &RecommenderStack,
    ctx: &Context,
    observed: &[Observed],
    outcome: &Outcome,
    build: Option<BuildStatus>,
) -> Result<(), Error> {
    let new = status::desired_status(stack, observed, outcome, build, &(ctx.clock)());
    if stack.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let ns = stack.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<RecommenderStack> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = json!(new);
    // A merge patch removes a field only when told to: the build status of a stack whose
    // `spec.build` was unset goes, and the stream plan of one that no longer runs the
    // built-in engine on Kafka.
    if new.build.is_none() {
        status["build"] = Value::Null;
    }
    if new.stream.is_none() {
        status["stream"] = Value::Null;
    }
    api.patch_status(
        &stack.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(Error::Status)?;
    ctx.metrics.status_writes.inc();
    Ok(())
}

/// Adds the applied-hash annotation (a hash of the object without it).
pub fn stamp(mut child: Child) -> Child {
    let hash = format!("{:016x}", render_hash(&child.object));
    child.object.annotations_mut().insert(APPLIED_HASH.to_string(), hash);
    child
}

fn render_hash(object: &DynamicObject) -> u64 {
    crate::render::stable_hash(to_value(object).to_string().as_bytes())
}

fn child_api(ctx: &Context, kind: ChildKind, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource())
}

/// Deletes a child (or, with `dry_run`, asks whether it may); one already gone is no error.
async fn delete_child(
    ctx: &Context,
    kind: ChildKind,
    ns: &str,
    name: &str,
    params: &DeleteParams,
) -> Result<(), kube::Error> {
    child_api(ctx, kind, ns)
        .delete(name, params)
        .await
        .map(|_| ())
        .or_else(ignore_not_found)
}

fn to_value(o: &DynamicObject) -> Value {
    // A DynamicObject is JSON already; this cannot fail.
    serde_json::to_value(o).unwrap_or(Value::Null)
}

fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        e => Err(e),
    }
}

fn metric_reason(reason: &str) -> &'static str {
    match reason {
        "Created" => "created",
        "DriftRepaired" => "drift",
        "Recreated" => "recreated",
        _ => "updated",
    }
}

/// Publishes a Kubernetes Event on the stack. Failing to publish never fails a reconcile.
async fn publish(ctx: &Context, stack: &RecommenderStack, type_: EventType, reason: &str, action: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &stack.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(spec: Value, managed: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "s-recall", "namespace": "n", "managedFields": managed},
            "spec": spec,
        }))
        .unwrap()
    }

    fn desired(spec: Value) -> Child {
        Child {
            kind: ChildKind::Deployment,
            object: deployment(spec, json!([])),
        }
    }

    fn ours(fields: Value) -> Value {
        json!([{"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1", "fieldsV1": fields}])
    }

    #[test]
    fn replicas_are_handed_over_when_the_operator_stops_applying_them() {
        let live = deployment(json!({"replicas": 3}), ours(json!({"f:spec": {"f:replicas": {}}})));
        assert_eq!(replicas_to_hand_over(&desired(json!({})), &live), Some(3));
        // Still applying replicas: nothing to hand over.
        assert_eq!(replicas_to_hand_over(&desired(json!({"replicas": 2})), &live), None);
        // Someone else (the HPA, an earlier hand-over) owns them already.
        let theirs = deployment(
            json!({"replicas": 3}),
            json!([{"manager": "kube-controller-manager", "operation": "Update",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]),
        );
        assert_eq!(replicas_to_hand_over(&desired(json!({})), &theirs), None);
        // The operator owns other fields but not replicas.
        let other = deployment(json!({"replicas": 3}), ours(json!({"f:spec": {"f:template": {}}})));
        assert_eq!(replicas_to_hand_over(&desired(json!({})), &other), None);
        // Only Deployments have replicas to hand over.
        let cm = Child {
            kind: ChildKind::ConfigMap,
            object: deployment(json!({}), json!([])),
        };
        assert_eq!(replicas_to_hand_over(&cm, &live), None);
    }

    #[test]
    fn change_notes_name_the_objects_within_the_limit() {
        assert_eq!(
            changes_note("Pruned", &["Deployment s-stream".into()]),
            "1 object no longer part of the stack; deleted: Deployment s-stream"
        );
        let many: Vec<String> = (0..200)
            .map(|i| format!("NetworkPolicy stack-with-a-long-name-{i}"))
            .collect();
        let note = changes_note("Created", &many);
        assert!(note.starts_with("200 objects created: NetworkPolicy stack-with-a-long-name-0, "));
        assert!(note.len() <= 1024, "{}", note.len());
        assert!(note.ends_with(" more"), "{note}");
    }

    #[test]
    fn error_causes_from_status_codes() {
        let api = |code| kube::Error::Api(Box::new(kube::core::Status::failure("m", "r").with_code(code)));
        assert_eq!(cause(&api(403)), "forbidden");
        assert_eq!(cause(&api(409)), "conflict");
        assert_eq!(cause(&api(422)), "invalid");
        assert_eq!(cause(&api(503)), "server_error");
        assert_eq!(cause(&api(418)), "api");
    }
}
