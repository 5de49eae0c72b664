//! Calling another service: over gRPC on a channel that connects lazily, or directly when it
//! runs in this process (`recstack up`). Shared by every service that calls another (the
//! gateway's four downstreams, ingest's impressions to recall).

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
#[error("downstream endpoint {0}: {1}")]
pub struct EndpointError(pub String, pub String);

/// A channel that connects on first use: the gateway starts, and answers, while downstreams
/// are still down.
pub fn lazy_channel(url: &str) -> Result<Channel, EndpointError> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| EndpointError(url.to_string(), e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_millis(200))
        .connect_lazy())
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
