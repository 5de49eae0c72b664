//! How the gateway reaches each downstream: over gRPC (separate processes or pods, as in a
//! cluster) or, when the services run in the gateway's own process (`recstack up`), by calling
//! the service directly — the same request and response types, without encoding, HTTP/2 or a
//! socket. A direct link to a stopped service answers `UNAVAILABLE`, as a dead peer would.

use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

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

/// One link type per downstream: the gRPC client or the service itself.
macro_rules! link {
    ($link:ident, $client:ident, $trait:ident, $method:ident, $req:ty, $resp:ty, $name:literal) => {
        #[derive(Clone)]
        pub enum $link {
            Grpc($client<Channel>),
            Direct(Direct<dyn $trait>),
        }

        impl $link {
            pub fn grpc(url: &str) -> Result<Self, EndpointError> {
                Ok(Self::Grpc($client::new(lazy_channel(url)?)))
            }

            /// Opens the connection with an empty call, retried until `deadline`: any answer,
            /// even an error, means the peer is reached. Whether it was.
            pub async fn warm(&self, deadline: Instant) -> bool {
                let Self::Grpc(client) = self else {
                    return true;
                };
                loop {
                    // A balanced channel with no address yet holds the call: bound each try.
                    let mut client = client.clone();
                    let call = client.$method(Request::new(<$req>::default()));
                    match tokio::time::timeout(Duration::from_millis(500), call).await {
                        Ok(Ok(_)) => return true,
                        Ok(Err(status)) if status.code() != Code::Unavailable => return true,
                        _ if Instant::now() >= deadline => return false,
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(_) => {}
                    }
                }
            }

            pub async fn call(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                match self {
                    Self::Grpc(client) => client.clone().$method(request).await,
                    Self::Direct(d) => {
                        d.check($name)?;
                        d.service.$method(request).await
                    }
                }
            }
        }
    };
}

link!(
    RecallLink,
    RecallClient,
    Recall,
    recall,
    RecallRequest,
    RecallResponse,
    "recall"
);
link!(
    FeaturesLink,
    FeaturesClient,
    Features,
    get_user,
    GetUserRequest,
    GetUserResponse,
    "features"
);
link!(
    RankingLink,
    RankingClient,
    Ranking,
    rank,
    RankRequest,
    RankResponse,
    "ranking"
);
link!(
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
        Ok(Self {
            recall: RecallLink::grpc(&downstreams.recall)?,
            features: FeaturesLink::grpc(&downstreams.features)?,
            ranking: RankingLink::grpc(&downstreams.ranking)?,
            rerank: RerankLink::grpc(&downstreams.rerank)?,
        })
    }
}
