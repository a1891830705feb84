//! HTTP/2 upstreams (`protocol: h2c`): one multiplexed connection per upstream address per worker.
//!
//! hyper's `http2::SendRequest` is a cheap clone, so every request of the worker to that address
//! shares the connection; h2 queues streams beyond the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! until one ends. A connection that closed (GOAWAY, reset, idle close by the upstream) is
//! replaced on the next request; a request a closing connection gave back unsent is retried on a
//! new connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{OpenConnection, SendError};
use crate::server::LocalExec;
use crate::stats::{UpstreamErrorKind, VersionStats};

/// The worker's HTTP/2 connections, by upstream address.
pub(crate) struct H2Pool<B> {
    live: RefCell<HashMap<SocketAddr, http2::SendRequest<B>>>,
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

    /// Sends `request` to `addr` over the worker's connection to it (dialled if there is none).
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut request: Request<B>,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<Response<Incoming>, SendError<B>> {
        loop {
            let existing = {
                let mut live = self.live.borrow_mut();
                match live.get(&addr) {
                    Some(sender) if sender.is_closed() => {
                        live.remove(&addr);
                        None
                    }
                    other => other.cloned(),
                }
            };
            let (mut sender, reused) = match existing {
                Some(sender) => (sender, true),
                // Boxed: dialing is the cold path.
                None => match Box::pin(self.connect(addr, connect_timeout, counted)).await {
                    Ok(sender) => {
                        self.live.borrow_mut().insert(addr, sender.clone());
                        (sender, false)
                    }
                    Err((kind, message)) => {
                        return Err(SendError {
                            kind,
                            message,
                            request: Some(request),
                        })
                    }
                },
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut failed) => {
                    self.forget_closed(addr);
                    match failed.take_message() {
                        // The shared connection closed before the request left: dial anew.
                        Some(returned) if reused && sender.is_closed() => request = returned,
                        returned => {
                            return Err(SendError {
                                kind: UpstreamErrorKind::Protocol,
                                message: failed.into_error().to_string(),
                                request: returned,
                            })
                        }
                    }
                }
            }
        }
    }

    /// Drops the pooled connection to `addr` if it has closed.
    fn forget_closed(&self, addr: SocketAddr) {
        let mut live = self.live.borrow_mut();
        if live.get(&addr).is_some_and(http2::SendRequest::is_closed) {
            live.remove(&addr);
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<http2::SendRequest<B>, (UpstreamErrorKind, String)> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err((
                    UpstreamErrorKind::ConnectTimeout,
                    format!("connect to {addr} timed out after {connect_timeout:?}"),
                ))
            }
            Ok(Err(e)) => {
                return Err((
                    UpstreamErrorKind::Connect,
                    format!("connect to {addr}: {e}"),
                ))
            }
            Ok(Ok(stream)) => stream,
        };
        // Small frames (gRPC messages) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
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
