//! HTTP/2 upstreams (`protocol: h2c`): one multiplexed connection per upstream address per worker.
//!
//! hyper's `http2::SendRequest` is a cheap clone, so every request of the worker to that address
//! shares the connection; h2 queues streams beyond the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! until one ends. Requests that arrive while the connection is being dialled wait for that
//! handshake rather than dialling their own. A connection that closed (GOAWAY, reset, idle close by
//! the upstream) or failed to dial is replaced on the next request; a request a closing connection
//! gave back unsent is retried on a new connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use tokio::sync::OnceCell;

use super::{OpenConnection, SendError};
use crate::server::LocalExec;
use crate::stats::{UpstreamErrorKind, VersionStats};

/// A connection to one upstream: dialled once, shared by every request that asks while it is
/// being dialled (they wait for the same handshake instead of dialling their own).
type Dial<B> = Rc<OnceCell<Result<http2::SendRequest<B>, (UpstreamErrorKind, String)>>>;

/// The worker's HTTP/2 connections, by upstream address.
pub(crate) struct H2Pool<B> {
    live: RefCell<HashMap<SocketAddr, Dial<B>>>,
    builder: http2::Builder<LocalExec>,
}

impl<B> H2Pool<B>
where
    B: Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new() -> H2Pool<B> {
        let mut builder = http2::Builder::new(LocalExec);
        // hyper's adaptive window grows the stream and connection windows with the measured
        // bandwidth-delay product, so a fast stream is not held to the 64 KiB default.
        builder.adaptive_window(true);
        H2Pool {
            live: RefCell::new(HashMap::new()),
            builder,
        }
    }

    /// The connection to `addr`: the live one, the one being dialled, or a new dial (when there
    /// is none, it failed, or it closed).
    fn dial(&self, addr: SocketAddr) -> Dial<B> {
        let mut live = self.live.borrow_mut();
        if let Some(dial) = live.get(&addr) {
            let dead = dial
                .get()
                .is_some_and(|result| result.as_ref().map_or(true, |s| s.is_closed()));
            if !dead {
                return Rc::clone(dial);
            }
        }
        let dial = Rc::new(OnceCell::new());
        live.insert(addr, Rc::clone(&dial));
        dial
    }

    /// Sends `request` to `addr` over the worker's connection to it (dialled if there is none).
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut request: Request<B>,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<Response<Incoming>, SendError<B>> {
        loop {
            let dial = self.dial(addr);
            let reused = dial.initialized();
            // Boxed: dialing is the cold path.
            let dialled = dial
                .get_or_init(|| Box::pin(self.connect(addr, connect_timeout, counted)))
                .await;
            let mut sender = match dialled {
                Ok(sender) => sender.clone(),
                Err((kind, message)) => {
                    return Err(SendError {
                        kind: *kind,
                        message: message.clone(),
                        request: Some(request),
                    })
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut failed) => match failed.take_message() {
                    // The shared connection closed before the request left: dial anew (the
                    // closed connection is replaced by the next `dial`).
                    Some(returned) if reused && sender.is_closed() => request = returned,
                    returned => {
                        return Err(SendError {
                            kind: UpstreamErrorKind::Protocol,
                            message: failed.into_error().to_string(),
                            request: returned,
                        })
                    }
                },
            }
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<http2::SendRequest<B>, (UpstreamErrorKind, String)> {
        let stream = super::dial(addr, connect_timeout).await?;
        let (sender, connection) = tokio::time::timeout(
            connect_timeout,
            self.builder.handshake(TokioIo::new(stream)),
        )
        .await
        .map_err(|_| {
            (
                UpstreamErrorKind::ConnectTimeout,
                format!("HTTP/2 handshake with {addr} timed out after {connect_timeout:?}"),
            )
        })?
        .map_err(|e| {
            (
                UpstreamErrorKind::Protocol,
                format!("HTTP/2 handshake with {addr}: {e}"),
            )
        })?;
        let open = counted.map(|stats| OpenConnection::new(stats.clone()));
        crate::tasks::spawn_local(async move {
            let _ = connection.await;
            drop(open);
        });
        Ok(sender)
    }
}
