//! Calling another service: over gRPC on a channel that connects lazily, or directly when it
//! runs in this process (`recstack up`). Shared by every service that calls another (the
//! gateway's four downstreams, ingest's impressions to recall).
//!
//! A downstream named by host name (a headless Service in a cluster) is balanced across every
//! address the name resolves to, re-resolved every [`RESOLVE_EVERY`]: added replicas get
//! traffic, and a stopping pod (gone from the Service's endpoints, so from DNS) gets no new
//! calls while it drains.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::util::{BoxCloneSyncService, MapErr};

use crate::coalesce::Coalesced;

#[derive(Debug, thiserror::Error)]
#[error("downstream endpoint {0}: {1}")]
pub struct EndpointError(pub String, pub String);

/// Calls a peer with a request's newer form (`send(true, budget)`) and, when `older` reads the
/// answer as one from a peer that predates that form (a rollout in progress), once more with
/// the form every peer reads (`send(false, left)`), within the same budget. The candidate
/// hops' id columns use it: an older pod ignores the columns it does not know.
pub async fn newer_form_first<T, Fut>(
    budget: Duration,
    send: impl Fn(bool, Duration) -> Fut,
    older: impl FnOnce(&Result<T, Status>) -> bool,
) -> Result<T, Status>
where
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + budget;
    let answer = send(true, budget).await;
    if !older(&answer) {
        return answer;
    }
    send(false, deadline.saturating_duration_since(Instant::now())).await
}

/// How often a downstream's host name is resolved again (shorter than a pod's drain delay).
pub const RESOLVE_EVERY: Duration = Duration::from_secs(2);

fn endpoint(url: &str) -> Result<Endpoint, EndpointError> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| EndpointError(url.to_string(), e.to_string()))?
        .connect_timeout(Duration::from_millis(200)))
}

/// What a link's gRPC client sends through: a connection per address of the downstream (a
/// host name is balanced over every address it resolves to), each writing through
/// [`Coalesced`].
pub type LinkChannel = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, LinkError>;

/// Why a link's channel failed a call (connecting, or the connection): tonic's error as its
/// source, where tonic's client finds what status to answer (`UNAVAILABLE` when the peer
/// cannot be reached). A type of its own rather than a boxed error: a boxed one as the
/// service's error type trips the compiler's check that the clients' futures are `Send`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(#[source] StdError);

impl LinkError {
    fn new(e: impl Into<StdError>) -> Self {
        Self(e.into())
    }
}

/// A connection to the endpoint's address: `TCP_NODELAY` on (a unary call must not wait out
/// Nagle's algorithm against the peer's delayed ACK), writes coalesced (a call's headers and
/// message in one write).
async fn connect(uri: Uri) -> std::io::Result<TokioIo<Coalesced<TcpStream>>> {
    let stream = TcpStream::connect(host_port(&uri)).await?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(Coalesced::new(stream)))
}

/// A URL's host (an IPv6 address without its brackets) and port (the scheme's when absent).
fn host_port(uri: &Uri) -> (&str, u16) {
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    (host, port)
}

/// A channel to one endpoint that connects on first use.
fn lazy_connection(ep: &Endpoint) -> Channel {
    ep.connect_with_connector_lazy(tower::service_fn(connect))
}

/// A channel that connects on first use: the gateway starts, and answers, while downstreams
/// are still down. A host name (not an IP literal) is balanced over what it resolves to.
pub fn lazy_channel(url: &str) -> Result<LinkChannel, EndpointError> {
    lazy_channel_counted(url, Gauge::default())
}

/// [`lazy_channel`], keeping `addresses` at the number of addresses the channel balances over
/// (1 for an IP literal): whether, and to how many replicas, a caller can reach the service.
pub fn lazy_channel_counted(url: &str, addresses: Gauge) -> Result<LinkChannel, EndpointError> {
    let ep = endpoint(url)?;
    let uri = ep.uri().clone();
    let (host, port) = host_port(&uri);
    let literal = host.parse::<std::net::IpAddr>().is_ok() || host == "localhost";
    let runtime = tokio::runtime::Handle::try_current();
    match (literal, runtime) {
        (false, Ok(runtime)) => {
            let (host, scheme) = (host.to_string(), uri.scheme_str().unwrap_or("http").to_string());
            let (changes, mut received) = tokio::sync::mpsc::channel(64);
            runtime.spawn(resolve(host, port, scheme, changes, addresses));
            // Each address a connection (built here: tonic's own balanced channel takes no
            // connector); a call goes to the one with fewer calls in flight of two picked at
            // random (tonic's picks at random).
            let discover = futures::stream::poll_fn(move |cx| received.poll_recv(cx)).map(|change| {
                Ok::<_, std::convert::Infallible>(match change {
                    Change::Insert(addr, ep) => tower::discover::Change::Insert(
                        addr,
                        PendingRequests::new(lazy_connection(&ep), CompleteOnResponse::default()),
                    ),
                    Change::Remove(addr) => tower::discover::Change::Remove(addr),
                })
            });
            let (balanced, worker) = Buffer::pair(Balance::new(discover), BUFFERED_CALLS);
            runtime.spawn(worker);
            Ok(BoxCloneSyncService::new(MapErr::new(balanced, LinkError::new)))
        }
        _ => {
            addresses.set(1);
            Ok(BoxCloneSyncService::new(MapErr::new(
                lazy_connection(&ep),
                LinkError::new,
            )))
        }
    }
}

/// Calls a balanced channel holds while it picks a connection (tonic's default).
const BUFFERED_CALLS: usize = 1024;

/// Keeps a balanced channel's endpoints equal to what `host` resolves to, until the channel is
/// dropped. A failed lookup keeps the last known set.
async fn resolve(
    host: String,
    port: u16,
    scheme: String,
    changes: tokio::sync::mpsc::Sender<Change<SocketAddr, Endpoint>>,
    addresses: Gauge,
) {
    let mut current: BTreeSet<SocketAddr> = BTreeSet::new();
    loop {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                let now: BTreeSet<SocketAddr> = addrs.collect();
                let (add, remove) = diff(&current, &now);
                for addr in remove {
                    tracing::info!(%host, %addr, "downstream address gone");
                    if changes.send(Change::Remove(addr)).await.is_err() {
                        return;
                    }
                }
                for addr in add {
                    let Ok(ep) = endpoint(&format!("{scheme}://{addr}")) else {
                        continue;
                    };
                    tracing::info!(%host, %addr, "downstream address added");
                    if changes.send(Change::Insert(addr, ep)).await.is_err() {
                        return;
                    }
                }
                addresses.set(now.len() as i64);
                current = now;
            }
            Err(e) => tracing::debug!(%host, error = %e, "resolving a downstream failed; keeping its addresses"),
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

/// What to add to and remove from `current` to reach `now`.
fn diff(current: &BTreeSet<SocketAddr>, now: &BTreeSet<SocketAddr>) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    (
        now.difference(current).copied().collect(),
        current.difference(now).copied().collect(),
    )
}

/// The channel a link's gRPC client sends through: tonic's [`Channel`], with each request's
/// body handed to it whole, so that its one message leaves as one DATA frame that ends the
/// stream.
///
/// tonic's request body learns it has ended only when polled once more after its message, so
/// HTTP/2 sent the message, then an empty DATA frame to end the stream: a write (and a packet
/// for the peer to read) of its own, on every call (`strace` of the deployed gateway: three
/// `writev`s a call — headers, message, end of stream). A body that holds the whole message
/// says it has ended as the message is taken, and the flag rides on the message's frame. Every
/// call here is unary: the message is encoded in memory before the body is read, so reading it
/// whole waits for nothing.
#[derive(Clone, Debug)]
pub struct Wire<S = LinkChannel>(S);

impl<S> Wire<S> {
    pub fn new(channel: S) -> Self {
        Self(channel)
    }
}

impl<S> Service<http::Request<Body>> for Wire<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Error: Into<StdError>,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The channel made ready is the one that must take the call (it holds the slot
        // `poll_ready` reserved); a clone stays for the next.
        let clone = self.0.clone();
        let mut ready = std::mem::replace(&mut self.0, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let message = body.collect().await?.to_bytes();
            let request = http::Request::from_parts(parts, Body::new(Full::new(message)));
            ready.call(request).await.map_err(Into::into)
        })
    }
}

/// A service in this process and whether it has been stopped.
pub struct Direct<S: ?Sized> {
    pub service: Arc<S>,
    pub stopped: watch::Receiver<bool>,
}

impl<S: ?Sized> Clone for Direct<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            stopped: self.stopped.clone(),
        }
    }
}

impl<S: ?Sized> Direct<S> {
    pub fn check(&self, name: &str) -> Result<(), Status> {
        if *self.stopped.borrow() {
            Err(Status::unavailable(format!("{name} has stopped")))
        } else {
            Ok(())
        }
    }
}

/// One link type per downstream call: the gRPC client or the service itself (in this process).
/// `service_link!(Name, Client, ServerTrait, method, Request, Response, "service")`.
macro_rules! service_link {
    ($link:ident, $client:ident, $trait:ident, $method:ident, $req:ty, $resp:ty, $name:literal) => {
        #[derive(Clone)]
        pub enum $link {
            Grpc($client<$crate::link::Wire>),
            Direct($crate::link::Direct<dyn $trait>),
        }

        impl $link {
            pub fn grpc(url: &str) -> Result<Self, $crate::link::EndpointError> {
                Self::grpc_counted(url, Default::default())
            }

            /// [`Self::grpc`], keeping `addresses` at the number of addresses it balances over.
            pub fn grpc_counted(
                url: &str,
                addresses: ::prometheus_client::metrics::gauge::Gauge,
            ) -> Result<Self, $crate::link::EndpointError> {
                Ok(Self::Grpc($client::new($crate::link::Wire::new(
                    $crate::link::lazy_channel_counted(url, addresses)?,
                ))))
            }

            /// Opens the connection with an empty call, retried until `deadline`: any answer,
            /// even an error, means the peer is reached. Whether it was.
            pub async fn warm(&self, deadline: ::std::time::Instant) -> bool {
                let Self::Grpc(client) = self else {
                    return true;
                };
                loop {
                    // A balanced channel with no address yet holds the call: bound each try.
                    let mut client = client.clone();
                    let call = client.$method(::tonic::Request::new(<$req>::default()));
                    match ::tokio::time::timeout(::std::time::Duration::from_millis(500), call).await {
                        Ok(Ok(_)) => return true,
                        Ok(Err(status)) if status.code() != ::tonic::Code::Unavailable => return true,
                        _ if ::std::time::Instant::now() >= deadline => return false,
                        Ok(Err(_)) => ::tokio::time::sleep(::std::time::Duration::from_millis(100)).await,
                        Err(_) => {}
                    }
                }
            }

            pub async fn call(
                &self,
                request: ::tonic::Request<$req>,
            ) -> Result<::tonic::Response<$resp>, ::tonic::Status> {
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
pub(crate) use service_link;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_adds_new_addresses_and_removes_gone_ones() {
        let a: SocketAddr = "10.0.0.1:9090".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:9090".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:9090".parse().unwrap();
        let current = BTreeSet::from([a, b]);
        assert_eq!(diff(&current, &BTreeSet::from([b, c])), (vec![c], vec![a]));
        assert_eq!(diff(&current, &current), (vec![], vec![]));
        assert_eq!(diff(&BTreeSet::new(), &current), (vec![a, b], vec![]));
    }

    #[tokio::test]
    async fn a_named_downstream_is_balanced_over_every_address() {
        // `localhost` stays a plain channel; any other name gets a resolver task.
        assert!(lazy_channel("http://127.0.0.1:1").is_ok());
        assert!(lazy_channel("http://localhost:1").is_ok());
        assert!(lazy_channel("http://recall.example.invalid:9090").is_ok());
        assert!(lazy_channel("not a url").is_err());
    }

    #[tokio::test]
    async fn the_address_count_follows_what_the_name_resolves_to() {
        let literal = Gauge::default();
        lazy_channel_counted("http://127.0.0.1:1", literal.clone()).unwrap();
        assert_eq!(literal.get(), 1);
        // A name that does not resolve keeps no address (its calls wait, then time out).
        let unknown = Gauge::default();
        let _channel = lazy_channel_counted("http://recall.example.invalid:9090", unknown.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(unknown.get(), 0);
    }

    /// A call's body reaches the channel as one frame that says the stream has ended (HTTP/2
    /// then sets END_STREAM on the message's DATA frame instead of sending an empty one), with
    /// the message whole and the headers as sent; a body like tonic's, which learns it has
    /// ended only when polled again, does not.
    #[tokio::test]
    async fn a_calls_message_reaches_the_channel_as_one_frame_that_ends_the_stream() {
        use std::sync::Mutex;
        use tonic::codegen::{Body as _, Bytes};
        const MESSAGE: &[u8] = b"\0\0\0\0\x02hi";
        // Like tonic's request body: the encoded message from a stream of one.
        let tonic_like = || {
            let frames = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(MESSAGE))]);
            Body::new(axum::body::Body::from_stream(frames))
        };
        /// What a body says after its first frame: the frame's bytes, whether it had ended then,
        /// and how many data frames were left.
        type FirstFrame = (Vec<u8>, bool, usize);
        async fn first_frame(mut body: Body) -> FirstFrame {
            let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
            let ended = body.is_end_stream();
            let mut left = 0;
            while let Some(f) = body.frame().await {
                left += usize::from(f.unwrap().is_data());
            }
            (frame.to_vec(), ended, left)
        }
        assert_eq!(first_frame(tonic_like()).await, (MESSAGE.to_vec(), false, 0));

        /// The channel's place: keeps the path and what the body said.
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Option<(String, FirstFrame)>>>);
        impl Service<http::Request<Body>> for Capture {
            type Response = http::Response<Body>;
            type Error = Status;
            type Future = BoxFuture<Self::Response, Self::Error>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, request: http::Request<Body>) -> Self::Future {
                let seen = self.0.clone();
                Box::pin(async move {
                    let (parts, body) = request.into_parts();
                    *seen.lock().unwrap() = Some((parts.uri.path().to_string(), first_frame(body).await));
                    Ok(http::Response::new(Body::empty()))
                })
            }
        }
        let capture = Capture::default();
        let mut wire = Wire::new(capture.clone());
        let request = http::Request::builder()
            .uri("http://ranking:9090/recstack.Ranking/Rank")
            .body(tonic_like())
            .unwrap();
        std::future::poll_fn(|cx| wire.poll_ready(cx)).await.unwrap();
        wire.call(request).await.unwrap();
        let (path, (frame, ended, left)) = capture.0.lock().unwrap().take().unwrap();
        assert_eq!(path, "/recstack.Ranking/Rank");
        assert_eq!(frame, MESSAGE);
        assert!(ended, "the message's frame must end the stream");
        assert_eq!(left, 0);
    }

    /// Calls through a link's channel to a server on [`crate::ops::grpc_incoming`], both ends
    /// writing through [`Coalesced`]: each of many concurrent calls gets its own answer, whole;
    /// an address where nothing listens answers `UNAVAILABLE` (the status the gateway's
    /// breakers and levels read as a dead peer).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_through_coalesced_connections_get_their_own_answers() {
        use crate::features::proto::features_client::FeaturesClient;
        use crate::features::proto::features_server::{Features, FeaturesServer};
        use crate::features::proto::{GetItemsRequest, GetItemsResponse, GetUserRequest, GetUserResponse};
        use crate::features::{ItemFeatures, UserFeatures};

        struct Echo;
        #[tonic::async_trait]
        impl Features for Echo {
            async fn get_user(
                &self,
                request: tonic::Request<GetUserRequest>,
            ) -> Result<tonic::Response<GetUserResponse>, Status> {
                let user_id = request.into_inner().user_id;
                // Long enough that one answer spans several HTTP/2 frames.
                let recent_items = (0..3000).map(|i| format!("{user_id}-{i}")).collect();
                Ok(tonic::Response::new(GetUserResponse {
                    features: Some(UserFeatures {
                        user_id,
                        recent_items,
                        ..Default::default()
                    }),
                }))
            }
            async fn get_items(
                &self,
                request: tonic::Request<GetItemsRequest>,
            ) -> Result<tonic::Response<GetItemsResponse>, Status> {
                let items = request.into_inner().item_ids;
                Ok(tonic::Response::new(GetItemsResponse {
                    items: items
                        .into_iter()
                        .map(|item_id| ItemFeatures {
                            item_id,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }))
            }
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FeaturesServer::new(Echo))
                .serve_with_incoming(crate::ops::grpc_incoming(listener)),
        );
        let client = FeaturesClient::new(Wire::new(lazy_channel(&format!("http://{addr}")).unwrap()));
        let calls = (0..64).map(|i| {
            let mut client = client.clone();
            async move {
                let user_id = format!("user{i}");
                if i % 2 == 0 {
                    let answer = client
                        .get_user(GetUserRequest {
                            user_id: user_id.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let features = answer.features.unwrap();
                    assert_eq!(features.user_id, user_id);
                    assert_eq!(features.recent_items.len(), 3000);
                    assert_eq!(features.recent_items[2999], format!("{user_id}-2999"));
                } else {
                    let ids = vec![format!("{user_id}-a"), format!("{user_id}-b")];
                    let answer = client
                        .get_items(GetItemsRequest {
                            item_ids: ids.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(answer.items.into_iter().map(|i| i.item_id).collect::<Vec<_>>(), ids);
                }
            }
        });
        futures::future::join_all(calls).await;

        // Nothing listens there once the listener is dropped.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut dead = FeaturesClient::new(Wire::new(lazy_channel(&format!("http://{closed}")).unwrap()));
        let status = dead.get_user(GetUserRequest { user_id: "1".into() }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    /// The newer form goes first; the older form follows only when the answer reads as an
    /// older peer's, with what is left of the same budget, and its answer (or error) is the
    /// call's.
    #[tokio::test]
    async fn the_older_form_is_sent_only_when_the_answer_reads_as_an_older_peers() {
        use std::sync::Mutex;
        let budget = Duration::from_secs(5);
        for (first, older_peer, want_forms, want) in [
            (Ok(1), false, vec![true], Ok(1)),
            (Ok(0), true, vec![true, false], Ok(7)),
            (Err("bad"), true, vec![true, false], Ok(7)),
            (Err("bad"), false, vec![true], Err("bad")),
        ] {
            let sent = Mutex::new(Vec::new());
            let answer = newer_form_first(
                budget,
                |newer, left| {
                    sent.lock().unwrap().push((newer, left));
                    let answer = if newer { first } else { Ok(7) };
                    async move { answer.map_err(Status::invalid_argument) }
                },
                |_| older_peer,
            )
            .await;
            assert_eq!(
                answer.map_err(|s| s.message().to_string()),
                want.map_err(str::to_string)
            );
            let sent = sent.into_inner().unwrap();
            assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), want_forms);
            assert_eq!(sent[0].1, budget);
            assert!(sent.iter().all(|s| s.1 <= budget));
        }
    }
}
