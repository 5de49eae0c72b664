//! How the gateway reaches each downstream: over gRPC (separate processes or pods, as in a
//! cluster) or, when the services run in the gateway's own process (`recstack up`), by calling
//! the service directly — the same request and response types, without encoding, HTTP/2 or a
//! socket. A direct link to a stopped service answers `UNAVAILABLE`, as a dead peer would.

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

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
