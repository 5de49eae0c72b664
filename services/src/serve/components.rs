//! One function per service: build it from its parts, bind, serve.

use super::*;

/// Users whose channel lists a recall replica computes before it serves a version.
const WARM_USERS: usize = 32;

/// The recall service; with `reload`, polls the artifact root for new versions; reads the
/// stream job's output in `stream` (its hot channel leads with the trending list, users'
/// real-time items seed the history-seeded channels); users' seen filters in `seen`.
pub async fn recall(
    loaded: Loaded,
    reload: Option<(PathBuf, Duration)>,
    stream: StreamStore,
    seen: AnySeenStore,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let version = loaded.manifest.version.clone();
    // Warm before turning ready (and a new version before it is swapped in): a replica's first
    // requests then cost what later ones do.
    let began = std::time::Instant::now();
    let (loaded, lists) = tokio::task::spawn_blocking(move || {
        let lists = loaded.warm(WARM_USERS);
        (loaded, lists)
    })
    .await
    .map_err(|e| ServeError::Server {
        service: "recall",
        message: format!("warming up: {e}"),
    })?;
    let slot = Arc::new(ArtifactSlot::new(loaded));
    let metrics = Arc::new(RecallMetrics::default());
    let service =
        Arc::new(RecallService::new(slot.clone(), seen, SeenConfig::default(), metrics.clone()).with_stream(stream));
    // One whole request too: the seen store, the trending list and the worker pool.
    let warm_up = crate::recall::proto::RecallRequest {
        user_id: crate::ops::WARM_UP_USER.into(),
        ..Default::default()
    };
    let warmed = match crate::recall::validate(&warm_up) {
        Ok(q) => service.run(q).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = warmed {
        tracing::warn!(error = %e, "recall: the warm-up request failed");
    }
    tracing::info!(lists, ms = began.elapsed().as_millis() as u64, "recall: warmed up");
    let watcher = reload.map(|(root, every)| {
        watch_versions("recall", root, every, version, move |manifest, artifacts| {
            let loaded = Loaded::new(manifest, artifacts);
            loaded.warm(WARM_USERS);
            slot.swap(loaded);
        })
    });
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    spawn(
        "recall",
        addrs,
        Some(Routes::new(RecallServer::from_arc(service.clone()))),
        ops_router(encode),
        DirectService::Recall(service),
        async move {
            if let Some(w) = watcher {
                w.abort();
            }
        },
    )
    .await
}

/// Where the feature service finds real-time values (its L2).
pub enum FeatureSource<'a> {
    /// None: L1 over the snapshot.
    Snapshot,
    /// Redis at this URL.
    Redis(&'a str),
    /// The local stream job's store in this process.
    Memory(Arc<MemoryStore>),
}

/// The feature service: L1 over the real-time `source` over the snapshot; `dump` is read on
/// start and written on stop; with `reload`, a new artifact version's snapshot is swapped in.
pub async fn features(
    snapshot: Arc<Snapshot>,
    source: FeatureSource<'_>,
    dump: Option<PathBuf>,
    reload: Reload,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let metrics = Arc::new(FeatureMetrics::default());
    let policy = CachePolicy::default();
    match source {
        FeatureSource::Memory(store) => {
            features_with(
                FeatureStore::new(store, snapshot, policy, metrics.clone()),
                metrics,
                dump,
                reload,
                addrs,
            )
            .await
        }
        FeatureSource::Redis(url) => {
            let l2 = RedisL2::connect(url, Duration::from_millis(100))
                .await
                .map_err(|e| ServeError::Redis(e.to_string()))?;
            features_with(
                FeatureStore::new(l2, snapshot, policy, metrics.clone()),
                metrics,
                dump,
                reload,
                addrs,
            )
            .await
        }
        FeatureSource::Snapshot => {
            features_with(
                FeatureStore::new(NoL2, snapshot, policy, metrics.clone()),
                metrics,
                dump,
                reload,
                addrs,
            )
            .await
        }
    }
}

async fn features_with<L: L2>(
    store: FeatureStore<L>,
    metrics: Arc<FeatureMetrics>,
    dump: Option<PathBuf>,
    reload: Reload,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let store = Arc::new(store);
    let watcher = reload.map(|(root, every, version)| {
        let store = store.clone();
        watch_versions("features", root, every, version, move |_, artifacts| {
            store.swap_snapshot(Arc::new(Snapshot::from_artifacts(&artifacts)));
        })
    });
    if let Some(path) = &dump
        && path.exists()
    {
        match store.warm(path).await {
            Ok(n) => tracing::info!(n, path = %path.display(), "features: warmed L1"),
            Err(e) => tracing::warn!(error = %e, path = %path.display(), "features: unreadable L1 dump; starting cold"),
        }
    }
    let service = Arc::new(FeatureService { store: store.clone() });
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    let on_stop = {
        let store = store.clone();
        async move {
            if let Some(w) = watcher {
                w.abort();
            }
            if let Some(path) = dump {
                match store.dump(&path).await {
                    Ok(n) => tracing::info!(n, path = %path.display(), "features: dumped L1"),
                    Err(e) => tracing::warn!(error = %e, path = %path.display(), "features: L1 dump failed"),
                }
            }
        }
    };
    spawn(
        "features",
        addrs,
        Some(Routes::new(FeaturesServer::from_arc(service.clone()))),
        ops_router(encode),
        DirectService::Features(service),
        on_stop,
    )
    .await
}

/// The ranking service: loads the models (failing fast on a bad model or card), then watches
/// their files every `reload` for a hot swap; with `artifacts`, a new artifact version's item
/// table is swapped in the same way.
pub async fn ranking(
    items: Arc<Snapshot>,
    sources: ModelSources,
    reload: Duration,
    artifacts: Reload,
    realtime: Option<ItemsLink>,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let metrics = Arc::new(RankingMetrics::default());
    let set = {
        let (s, i, m) = (sources.clone(), items.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || load_models(&s, &i, m))
            .await
            .map_err(|e| ServeError::Server {
                service: "ranking",
                message: format!("model loader: {e}"),
            })??
    };
    tracing::info!(
        version = set.primary.batcher.version(),
        first_stage_folded = set.primary.folded.is_some(),
        trees_walked = set.primary.trees_walked,
        "ranking: model loaded"
    );
    metrics.serving(&set);
    let models = Arc::new(ArcSwap::from_pointee(set));
    let items = Arc::new(ArcSwap::new(items));
    let artifact_watcher = artifacts.map(|(root, every, version)| {
        let items = items.clone();
        watch_versions("ranking", root, every, version, move |_, artifacts| {
            items.store(Arc::new(Snapshot::from_artifacts(&artifacts)));
        })
    });
    let watcher = tokio::spawn(watch_models(models.clone(), sources, items, reload, metrics.clone()));
    let service = Arc::new(RankingService {
        models,
        metrics: metrics.clone(),
        realtime,
    });
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    spawn(
        "ranking",
        addrs,
        Some(Routes::new(RankingServer::from_arc(service.clone()))),
        ops_router(encode),
        DirectService::Ranking(service),
        async move {
            watcher.abort();
            if let Some(w) = artifact_watcher {
                w.abort();
            }
        },
    )
    .await
}

/// Where a service watches for new artifact versions: the local root, how often, and the
/// version it starts on.
pub type Reload = Option<(PathBuf, Duration, String)>;

/// Where rerank re-reads its business rules while it runs: the runtime config file (the
/// mounted ConfigMap, which the kubelet updates in place), the rules its flags give, and how
/// often to look.
pub struct RulesFile {
    pub path: PathBuf,
    pub base: RerankConfig,
    pub every: Duration,
}

/// The rerank service with its business rules (block list, pins, boost) and A/B experiment on
/// MMR's trade-off in `rules`; with `rules_file`, changes to them apply without a restart; with
/// `reload`, its item table follows new artifact versions.
pub async fn rerank(
    items: Arc<Snapshot>,
    rules: Rules,
    rules_file: Option<RulesFile>,
    reload: Reload,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    let metrics = Arc::new(RerankMetrics::default());
    let service = Arc::new(RerankService::with_rules(items, rules, metrics.clone()));
    let rules_watcher = rules_file.map(|file| {
        let service = service.clone();
        tokio::spawn(async move {
            let mut last = std::fs::read(&file.path).unwrap_or_default();
            loop {
                tokio::time::sleep(file.every).await;
                let Ok(bytes) = std::fs::read(&file.path) else { continue };
                if bytes == last {
                    continue;
                }
                last = bytes;
                match crate::config::RuntimeConfig::read(&file.path) {
                    Ok(config) => {
                        service.swap_rules(Rules::from_settings(&file.base, &config.rerank));
                    }
                    Err(e) => tracing::warn!(error = %e, "rerank: the changed runtime config does not read; keeping the serving rules"),
                }
            }
        })
    });
    let watcher = reload.map(|(root, every, version)| {
        let service = service.clone();
        watch_versions("rerank", root, every, version, move |_, artifacts| {
            service.swap_items(Arc::new(Snapshot::from_artifacts(&artifacts)));
        })
    });
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    spawn(
        "rerank",
        addrs,
        Some(Routes::new(RerankServer::from_arc(service.clone()))),
        ops_router(encode),
        DirectService::Rerank(service),
        async move {
            if let Some(w) = watcher {
                w.abort();
            }
            if let Some(w) = rules_watcher {
                w.abort();
            }
        },
    )
    .await
}

/// Where the gateway's traces go.
pub enum GatewayTraces {
    Off,
    /// The newest traces in memory (tests).
    Memory(Arc<MemorySink>),
    /// Through the writer queue into a store; with `retention_days`, older traces are deleted
    /// hourly (an embedded store is checked every minute, for its size cap too).
    Store {
        store: Arc<dyn TraceStore>,
        writer: WriterConfig,
        retention_days: Option<u32>,
    },
}

/// The gateway: HTTP API (with the operational endpoints) and gRPC. Stopping it flushes the
/// trace writer. With `reload`, its catalogue follows new artifact versions.
/// How long a starting gateway waits for its downstreams before it listens anyway.
const WARM_WITHIN: Duration = Duration::from_secs(10);

pub async fn gateway(
    catalogue: Arc<Catalogue>,
    links: Links,
    config: GatewayConfig,
    traces: GatewayTraces,
    reload: Reload,
    addrs: Addrs,
) -> Result<Service, ServeError> {
    // The first requests would otherwise pay for the connections (and answer degraded).
    let missing = links.warm(WARM_WITHIN).await;
    let links_for_warm_up = links.clone();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "downstreams not reachable at start; serving at a degraded level until they are"
        );
    }
    let mut metrics = GatewayMetrics::default();
    metrics.registry.register(
        "downstream_addresses",
        "Addresses each downstream's gRPC link balances over (its ready replicas, as resolved)",
        links.addresses.clone(),
    );
    let (sink, writer): (Arc<dyn TraceSink>, _) = match traces {
        GatewayTraces::Off => (Arc::new(NoSink), None),
        GatewayTraces::Memory(memory) => (memory, None),
        GatewayTraces::Store {
            store,
            writer,
            retention_days,
        } => {
            let (writer, task) = TraceWriter::spawn(store.clone(), writer, &mut metrics.registry);
            // An embedded store also keeps under its size cap, checked every minute (a
            // minute of traces is tens of MB at hundreds of requests a second).
            let every = Duration::from_secs(if store.kind() == "embedded" { 60 } else { 3_600 });
            let retention = retention_days.map(|days| spawn_retention(store, days, every));
            (Arc::new(writer), Some((task, retention)))
        }
    };
    // Spans over OTLP, beside the traces, when a collector is configured.
    let (sink, exporter): (Arc<dyn TraceSink>, _) = match config.otlp.clone() {
        Some(otlp) => {
            tracing::info!(endpoint = %otlp.endpoint, "gateway: spans of full traces to the OTLP collector");
            let otlp_metrics = crate::otlp::OtlpMetrics::default();
            otlp_metrics.register(&mut metrics.registry);
            let (sink, task) = crate::otlp::spawn_exporter(sink, otlp, otlp_metrics);
            (sink, Some(task))
        }
        None => (sink, None),
    };
    let metrics = Arc::new(metrics);
    let gateway = Arc::new(Gateway::new(links, catalogue, config, sink, metrics));
    let warm_up = |gateway: Arc<Gateway>| async move {
        let began = std::time::Instant::now();
        let (level, degraded) = gateway.warm_up().await;
        tracing::info!(
            level = level.name(),
            ?degraded,
            ms = began.elapsed().as_millis() as u64,
            "gateway: warmed up through every stage"
        );
    };
    let late_warm_up = if missing.is_empty() {
        warm_up(gateway.clone()).await;
        None
    } else {
        // Serving already (degraded); warm up once every downstream is reachable.
        let (gateway, links) = (gateway.clone(), links_for_warm_up);
        Some(tokio::spawn(async move {
            while !links.warm(WARM_WITHIN).await.is_empty() {}
            warm_up(gateway).await;
        }))
    };
    let http = crate::gateway::http::router(gateway.clone());
    let watcher = reload.map(|(root, every, version)| {
        let gateway = gateway.clone();
        watch_versions("gateway", root, every, version, move |manifest, artifacts| {
            gateway.swap_catalogue(Catalogue::new(&manifest, &artifacts));
        })
    });
    spawn(
        "gateway",
        addrs,
        Some(Routes::new(GatewayServer::new(GatewayGrpc(gateway)))),
        http,
        DirectService::None,
        async move {
            if let Some(w) = watcher {
                w.abort();
            }
            if let Some(w) = late_warm_up {
                w.abort();
            }
            if let Some(e) = exporter {
                e.abort();
            }
            if let Some((task, retention)) = writer {
                if let Some(r) = retention {
                    r.abort();
                }
                task.shutdown().await;
            }
        },
    )
    .await
}

/// The trace query API (HTTP only) over `store`; `index` lets why-not say "not in the index";
/// `access` says who may read.
pub async fn trace_query(
    store: Arc<dyn TraceStore>,
    index: Option<Arc<dyn ItemIndex>>,
    access: Arc<recstack_trace_store::access::Access>,
    http: SocketAddr,
) -> Result<Service, ServeError> {
    if access.is_open() {
        tracing::warn!("traces: no access tokens configured: anyone who reaches this port reads every trace");
    }
    let api = recstack_trace_store::api::router(recstack_trace_store::api::ApiState { store, index, access });
    http_service("traces", "recstack_trace_api", "Query API requests", api, http).await
}

/// The ingest service over `log`: HTTP `POST /v1/events` and gRPC `PostEvents`. It first
/// reloads the event ids of the log's tail, so a restart still refuses retried events.
pub async fn ingest<L: EventLog>(log: Arc<L>, seen: SeenLink, addrs: Addrs) -> Result<Service, ServeError> {
    let ingest = Arc::new(Ingest::new(log, seen, 2_000_000, Duration::from_secs(3_600)));
    match ingest.warm(100_000).await {
        Ok(n) => tracing::info!(n, "ingest: reloaded recent event ids"),
        Err(e) => tracing::warn!(error = %e, "ingest: could not read the log's tail; dedup starts empty"),
    }
    let http = crate::events::ingest::router(ingest.clone());
    spawn(
        "ingest",
        addrs,
        Some(Routes::new(IngestServer::new(IngestGrpc(ingest)))),
        http,
        DirectService::None,
        async {},
    )
    .await
}

/// The built-in stream job (HTTP: `/metrics`, `/healthz`, `/readyz`). Stopping it lets the
/// worker finish its round and commit what is safe.
pub async fn stream<L: EventLog, S: FeatureSink>(
    worker: Worker<L, S>,
    http: SocketAddr,
) -> Result<Service, ServeError> {
    let metrics = worker.metrics.clone();
    let encode: ops::Encode = Arc::new(move || metrics.encode());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let service = spawn(
        "stream",
        Addrs { grpc: http, http },
        None,
        ops_router(encode),
        DirectService::None,
        async move {
            let _ = done_rx.await;
        },
    )
    .await?;
    let stop = service.stopped();
    tokio::spawn(async move {
        if let Err(e) = worker.run(stop, false).await {
            tracing::error!(error = %e, "stream worker stopped");
        }
        let _ = done_tx.send(());
    });
    Ok(service)
}

/// The stream job over `log` into `sink` with `config` (e.g. [`StreamConfig::live`]).
pub async fn stream_job<L: EventLog, S: FeatureSink>(
    log: Arc<L>,
    sink: Arc<S>,
    snapshot: Arc<Snapshot>,
    config: StreamConfig,
    http: SocketAddr,
) -> Result<Service, ServeError> {
    let worker = Worker {
        log,
        sink,
        snapshot,
        config,
        metrics: Arc::new(StreamMetrics::default()),
    };
    stream(worker, http).await
}
