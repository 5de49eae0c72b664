//! The whole stack in one process on loopback: `recstack up` and the integration tests.

use super::*;

/// Addresses of the local stack's services.
#[derive(Clone, Debug)]
pub struct LocalAddrs {
    pub gateway: Addrs,
    pub recall: Addrs,
    pub features: Addrs,
    pub ranking: Addrs,
    pub rerank: Addrs,
    /// The trace query API (HTTP only).
    pub traces: SocketAddr,
    /// The dashboard (HTTP only).
    pub dashboard: SocketAddr,
    pub ingest: Addrs,
    /// The stream job's operational endpoints.
    pub stream: SocketAddr,
}

impl LocalAddrs {
    /// The fixed loopback ports `recstack up` prints.
    pub fn standard() -> Self {
        let at = |grpc: u16, http: u16| Addrs {
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
        };
        Self {
            gateway: at(9000, 8000),
            recall: at(9090, 8080),
            features: at(9091, 8081),
            ranking: at(9092, 8082),
            rerank: at(9093, 8083),
            traces: SocketAddr::from(([127, 0, 0, 1], 8090)),
            dashboard: SocketAddr::from(([127, 0, 0, 1], 8091)),
            ingest: at(9094, 8084),
            stream: SocketAddr::from(([127, 0, 0, 1], 8085)),
        }
    }

    pub fn ephemeral() -> Self {
        Self {
            gateway: Addrs::ephemeral(),
            recall: Addrs::ephemeral(),
            features: Addrs::ephemeral(),
            ranking: Addrs::ephemeral(),
            rerank: Addrs::ephemeral(),
            traces: Addrs::ephemeral().http,
            dashboard: Addrs::ephemeral().http,
            ingest: Addrs::ephemeral(),
            stream: Addrs::ephemeral().http,
        }
    }
}

pub struct LocalOptions {
    pub addrs: LocalAddrs,
    pub model: ModelSources,
    pub redis_url: Option<String>,
    pub gateway: GatewayConfig,
    /// The rerank service's rules, and its A/B experiment on MMR's trade-off (no variants:
    /// every user gets `rerank.mmr_lambda`).
    pub rerank: RerankConfig,
    pub experiment: Experiment,
    pub traces: LocalTraces,
    /// The gateway calls the services in this process directly instead of over gRPC.
    pub direct_links: bool,
    /// The dashboard's router, made once the trace query API is up (the CLI builds it from
    /// `recstack-dashboard`, the only crate that depends on it). It runs with
    /// [`LocalTraces::Embedded`].
    pub dashboard: Option<MakeDashboard>,
    /// Ingest and the built-in stream job over an embedded event log.
    pub events: Option<LocalEvents>,
}

/// What the local dashboard is given: the trace query API's URL and every local component's
/// operational URL, by name.
#[derive(Clone, Debug)]
pub struct LocalDashboard {
    /// Who may sign in (the stack's tokens).
    pub access: Arc<recstack_trace_store::access::Access>,
    pub traces_url: String,
    /// The gateway, for replays.
    pub gateway_url: String,
    pub components: Vec<(String, String)>,
}

/// Makes the dashboard's router for the local stack.
pub type MakeDashboard = Box<dyn FnOnce(LocalDashboard) -> axum::Router + Send>;

/// The local event path: ingest → the embedded log → the stream job → the feature store
/// (Redis when the stack has a `redis_url`, else in process) → features and recall.
#[derive(Clone, Debug)]
pub struct LocalEvents {
    pub log_dir: PathBuf,
    pub partitions: u32,
    pub window: WindowConfig,
}

/// Where the local stack keeps traces.
pub enum LocalTraces {
    /// None kept (benchmarks of tracing's cost).
    Off,
    /// The newest N in memory, no query API (tests that read traces directly).
    Memory(usize),
    /// The embedded store at this file, with the query API on `LocalAddrs::traces`.
    Embedded(PathBuf),
}

/// The whole stack in this process.
pub struct LocalStack {
    pub services: Vec<Service>,
    /// The traces, with [`LocalTraces::Memory`].
    pub sink: Option<Arc<MemorySink>>,
    pub artifact_version: String,
}

impl LocalStack {
    pub fn find(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The named service; panics when the stack has none (a programming error).
    pub fn get(&self, name: &str) -> &Service {
        self.find(name).unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Stops one service (the others keep serving), returning it.
    pub async fn stop_one(&mut self, name: &str) -> Result<(), ServeError> {
        let i = self
            .services
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"));
        self.services.remove(i).stop().await
    }

    /// Stops every service, the gateway first.
    pub async fn stop(self) -> Result<(), ServeError> {
        let mut result = Ok(());
        for s in self.services {
            let r = s.stop().await;
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Starts recall, features, ranking, rerank and the gateway over the artifacts in `root`.
pub async fn start_local(root: &Path, opts: LocalOptions) -> Result<LocalStack, ServeError> {
    let loaded = {
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || load_artifacts(&root))
            .await
            .map_err(|e| ServeError::Server {
                service: "artifacts",
                message: e.to_string(),
            })??
    };
    let snapshot = Arc::new(Snapshot::from_artifacts(&loaded.artifacts));
    let catalogue = Arc::new(Catalogue::new(&loaded.manifest, &loaded.artifacts));
    let artifact_version = loaded.manifest.version.clone();
    let a = &opts.addrs;
    // The stream job's output: Redis when the stack has one, else in this process; none
    // without events.
    let sink = match (&opts.events, opts.redis_url.as_deref()) {
        (None, _) => StreamStore::None,
        (Some(_), None) => StreamStore::Memory(Arc::new(MemoryStore::default())),
        (Some(_), Some(url)) => StreamStore::Redis(
            RedisStore::connect(url, Duration::from_secs(2))
                .await
                .map_err(|e| ServeError::Redis(e.to_string()))?,
        ),
    };
    let reload = Some((root.to_path_buf(), Duration::from_secs(10)));
    let recall = recall(
        loaded,
        reload,
        sink.clone(),
        AnySeenStore::Memory(MemorySeenStore::default()),
        a.recall,
    )
    .await?;
    let source = match (&sink, opts.redis_url.as_deref()) {
        (StreamStore::Memory(m), _) => FeatureSource::Memory(m.clone()),
        (_, Some(url)) => FeatureSource::Redis(url),
        (_, None) => FeatureSource::Snapshot,
    };
    let features = features(snapshot.clone(), source, None, None, a.features).await?;
    // Ranking reads real-time item features (for a model that names them) from the feature
    // service in this process.
    let realtime = match &features.direct {
        DirectService::Features(f) => Some(ItemsLink::Direct(Direct {
            service: f.clone(),
            stopped: features.stopped(),
        })),
        _ => ItemsLink::grpc(&features.grpc_url()).ok(),
    };
    let ranking = ranking(
        snapshot.clone(),
        opts.model,
        Duration::from_secs(5),
        None,
        realtime,
        a.ranking,
    )
    .await?;
    let rules = Rules {
        config: opts.rerank,
        experiment: Some(opts.experiment).filter(|e| !e.variants.is_empty()),
    };
    let rerank = rerank(snapshot.clone(), rules, None, None, a.rerank).await?;
    let mut event_path = Vec::new();
    if let Some(ev) = &opts.events {
        let (log, recovered) = FileLog::open(&ev.log_dir, ev.partitions).map_err(|e| ServeError::Server {
            service: "ingest",
            message: e.to_string(),
        })?;
        tracing::info!(records = recovered.records, dir = %ev.log_dir.display(), "event log opened");
        let log = Arc::new(log);
        let seen = match &recall.direct {
            DirectService::Recall(r) => SeenLink::Direct(Direct {
                service: r.clone(),
                stopped: recall.stopped(),
            }),
            _ => SeenLink::grpc(&recall.grpc_url())?,
        };
        event_path.push(ingest(log.clone(), seen, a.ingest).await?);
        let config = StreamConfig::live(ev.window);
        match sink {
            StreamStore::Memory(sink) => event_path.push(stream_job(log, sink, snapshot, config, a.stream).await?),
            StreamStore::Redis(sink) => {
                event_path.push(stream_job(log, Arc::new(sink), snapshot, config, a.stream).await?)
            }
            // Only without events (above).
            StreamStore::None => {}
        }
    }
    let links = if opts.direct_links {
        direct_links(&recall, &features, &ranking, &rerank).ok_or(ServeError::Server {
            service: "gateway",
            message: "a local service offers no direct link".into(),
        })?
    } else {
        let url = Service::grpc_url;
        Links::grpc(&Downstreams {
            recall: url(&recall),
            features: url(&features),
            ranking: url(&ranking),
            rerank: url(&rerank),
        })?
    };
    let (traces, sink, store) = match opts.traces {
        LocalTraces::Off => (GatewayTraces::Off, None, None),
        LocalTraces::Memory(n) => {
            let sink = Arc::new(MemorySink::new(n));
            (GatewayTraces::Memory(sink.clone()), Some(sink), None)
        }
        LocalTraces::Embedded(path) => {
            let store: Arc<dyn TraceStore> = Arc::new(
                recstack_trace_store::embedded::EmbeddedStore::open(&path)
                    .map_err(|e| ServeError::Server {
                        service: "traces",
                        message: e.to_string(),
                    })?
                    .with_max_bytes(crate::traces::TraceSettings::EMBEDDED_MAX_BYTES),
            );
            let traces = GatewayTraces::Store {
                store: store.clone(),
                writer: WriterConfig::default(),
                retention_days: Some(crate::traces::TraceSettings::DEFAULT_RETENTION_DAYS),
            };
            (traces, None, Some(store))
        }
    };
    let index: Arc<dyn ItemIndex> = catalogue.clone();
    // The gateway's tokens guard the trace API and the dashboard too: one stack, one Secret.
    let access = opts.gateway.access.tokens.clone();
    let gateway = gateway(catalogue, links, opts.gateway, traces, None, a.gateway).await?;
    // The gateway first: stopping it flushes its traces before the rest go.
    let mut services = vec![gateway];
    // Ingest and the stream job stop next (the stream job commits), before the services they feed.
    services.extend(event_path);
    services.extend([recall, features, ranking, rerank]);
    if let Some(store) = store {
        let traces = trace_query(store, Some(index), access.clone(), a.traces).await?;
        let dashboard = LocalDashboard {
            access,
            gateway_url: format!("http://{}", services[0].http),
            traces_url: format!("http://{}", traces.http),
            components: services
                .iter()
                .chain([&traces])
                .map(|s| (s.name.to_string(), format!("http://{}", s.http)))
                .collect(),
        };
        services.push(traces);
        if let Some(make) = opts.dashboard {
            let help = "Dashboard requests (pages, server functions, files)";
            services.push(http_service("dashboard", "recstack_dashboard", help, make(dashboard), a.dashboard).await?);
        }
    }
    Ok(LocalStack {
        services,
        sink,
        artifact_version,
    })
}

/// Links that call the four services directly (`None` if one of them is not what its name says).
fn direct_links(recall: &Service, features: &Service, ranking: &Service, rerank: &Service) -> Option<Links> {
    let direct = |s: &Service| -> DirectService { s.direct.clone() };
    let (DirectService::Recall(r), DirectService::Features(f), DirectService::Ranking(k), DirectService::Rerank(x)) =
        (direct(recall), direct(features), direct(ranking), direct(rerank))
    else {
        return None;
    };
    Some(Links {
        recall: RecallLink::Direct(Direct {
            service: r,
            stopped: recall.stopped(),
        }),
        features: FeaturesLink::Direct(Direct {
            service: f,
            stopped: features.stopped(),
        }),
        ranking: RankingLink::Direct(Direct {
            service: k,
            stopped: ranking.stopped(),
        }),
        rerank: RerankLink::Direct(Direct {
            service: x,
            stopped: rerank.stopped(),
        }),
        addresses: Default::default(),
    })
}
