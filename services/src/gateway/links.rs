//! How the gateway reaches each downstream: over gRPC (separate processes or pods, as in a
//! cluster) or, when the services run in the gateway's own process (`recstack up`), by calling
//! the service directly — the same request and response types, without encoding, HTTP/2 or a
//! socket. A direct link to a stopped service answers `UNAVAILABLE`, as a dead peer would.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::link::service_link;
pub use crate::link::{Direct, EndpointError, lazy_channel};

use crate::features::proto::features_client::FeaturesClient;
use crate::features::proto::features_server::Features;
use crate::features::proto::{GetUserRequest, GetUserResponse};
use crate::ranking::service::proto::ranking_client::RankingClient;
use crate::ranking::service::proto::ranking_server::Ranking;
use crate::ranking::service::proto::{RankRequest, RankResponse};
use crate::recall::proto::recall_client::RecallClient;
use crate::recall::proto::recall_server::Recall;
use crate::recall::proto::{RecallRequest, RecallResponse};
use crate::rerank::proto::rerank_client::RerankClient;
use crate::rerank::proto::rerank_server::Rerank;
use crate::rerank::proto::{RerankRequest, RerankResponse};

service_link!(
    RecallLink,
    RecallClient,
    Recall,
    recall,
    RecallRequest,
    RecallResponse,
    "recall"
);
service_link!(
    FeaturesLink,
    FeaturesClient,
    Features,
    get_user,
    GetUserRequest,
    GetUserResponse,
    "features"
);
service_link!(
    RankingLink,
    RankingClient,
    Ranking,
    rank,
    RankRequest,
    RankResponse,
    "ranking"
);
service_link!(
    RerankLink,
    RerankClient,
    Rerank,
    rerank,
    RerankRequest,
    RerankResponse,
    "rerank"
);

/// Where the downstream services are (`http://host:port`).
#[derive(Clone, Debug)]
pub struct Downstreams {
    pub recall: String,
    pub features: String,
    pub ranking: String,
    pub rerank: String,
}

/// The gateway's four downstreams.
#[derive(Clone)]
pub struct Links {
    pub recall: RecallLink,
    pub features: FeaturesLink,
    pub ranking: RankingLink,
    pub rerank: RerankLink,
    /// How many addresses each gRPC link balances over (`downstream` label); empty for
    /// direct links. The gateway exports it as `recstack_gateway_downstream_addresses`.
    pub addresses: Family<DownstreamLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DownstreamLabels {
    pub downstream: &'static str,
}

impl Links {
    /// Connects every gRPC link before the gateway takes traffic, waiting at most `within` (a
    /// downstream still starting is not waited for longer: the gateway then answers at a
    /// degraded level until it is up). Returns the downstreams not reached.
    pub async fn warm(&self, within: Duration) -> Vec<&'static str> {
        let deadline = Instant::now() + within;
        let (recall, features, ranking, rerank) = tokio::join!(
            self.recall.warm(deadline),
            self.features.warm(deadline),
            self.ranking.warm(deadline),
            self.rerank.warm(deadline),
        );
        [
            (recall, "recall"),
            (features, "features"),
            (ranking, "ranking"),
            (rerank, "rerank"),
        ]
        .into_iter()
        .filter_map(|(reached, name)| (!reached).then_some(name))
        .collect()
    }

    /// gRPC to each endpoint (`http://host:port`).
    pub fn grpc(downstreams: &Downstreams) -> Result<Self, EndpointError> {
        let addresses = Family::<DownstreamLabels, Gauge>::default();
        let count = |downstream| addresses.get_or_create(&DownstreamLabels { downstream }).clone();
        Ok(Self {
            recall: RecallLink::grpc_counted(&downstreams.recall, count("recall"))?,
            features: FeaturesLink::grpc_counted(&downstreams.features, count("features"))?,
            ranking: RankingLink::grpc_counted(&downstreams.ranking, count("ranking"))?,
            rerank: RerankLink::grpc_counted(&downstreams.rerank, count("rerank"))?,
            addresses,
        })
    }
}
