//! HTTP/2 upstreams (`protocol: h2c`, and `h2` over TLS): one multiplexed connection per upstream
//! address (and TLS settings) per worker.
//!
//! hyper's `http2::SendRequest` is a cheap clone, so every request of the worker to that address
//! shares the connection; h2 queues streams beyond the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! until one ends. Requests that arrive while the connection is being dialled wait for that
//! handshake rather than dialling their own. A connection that closed (GOAWAY, reset, idle close by
//! the upstream) or failed to dial is replaced on the next request; a request a closing connection
//! gave back unsent is retried on a new connection.
//!
//! For `h2` the key is the address and the table's [`UpstreamTls`] (carried across tables while
//! unchanged): a reload that changes the CA or the server name makes the next request dial a new
//! connection with the new settings; the old one is dropped from the map once no table uses its
//! settings (its streams in flight finish on it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::tls::UpstreamTls;
use super::{OpenConnection, SendError};
use crate::server::LocalExec;
use crate::stats::{UpstreamErrorKind, VersionStats};

/// A connection to one upstream: dialled once, shared by every request that asks while it is
/// being dialled (they wait for the same handshake instead of dialling their own).
type Dial<B> = Rc<OnceCell<Result<http2::SendRequest<B>, (UpstreamErrorKind, String)>>>;

/// A connection's key: the upstream address and, for `h2`, the address of its [`UpstreamTls`]
/// (0 for `h2c`). The entry holds a `Weak` of that `UpstreamTls`, so the address cannot be reused
/// by another one while the entry exists.
type Key = (SocketAddr, usize);

/// A connection and the TLS settings it was made with.
struct Entry<B> {
    dial: Dial<B>,
    /// `None` for `h2c`; dead once no table uses these settings (the entry can go).
    tls: Option<Weak<UpstreamTls>>,
}

/// The worker's HTTP/2 connections, by upstream address and TLS settings.
pub(crate) struct H2Pool<B> {
    live: RefCell<HashMap<Key, Entry<B>>>,
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

    /// The connection to `addr` with `tls`: the live one, the one being dialled, or a new dial
    /// (when there is none, it failed, or it closed).
    fn dial(&self, addr: SocketAddr, tls: Option<&Arc<UpstreamTls>>) -> Dial<B> {
        let key = (addr, tls.map_or(0, |t| Arc::as_ptr(t) as usize));
        let mut live = self.live.borrow_mut();
        let known = match live.get(&key) {
            Some(entry) => {
                let dead = entry
                    .dial
                    .get()
                    .is_some_and(|result| result.as_ref().map_or(true, |s| s.is_closed()));
                if !dead {
                    return Rc::clone(&entry.dial);
                }
                true
            }
            None => false,
        };
        if !known {
            // New settings (a new table): forget the connections whose settings no table uses
            // any more. Only here, so a failing upstream's redials never scan the map.
            live.retain(|_, e| e.tls.as_ref().is_none_or(|w| w.strong_count() > 0));
        }
        let dial = Rc::new(OnceCell::new());
        live.insert(
            key,
            Entry {
                dial: Rc::clone(&dial),
                tls: tls.map(Arc::downgrade),
            },
        );
        dial
    }

    /// Sends `request` to `addr` over the worker's connection to it (dialled if there is none),
    /// over TLS when `tls` is given (`protocol: h2`).
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        tls: Option<&Arc<UpstreamTls>>,
        connect_timeout: Duration,
        mut request: Request<B>,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<Response<Incoming>, SendError<B>> {
        loop {
            let dial = self.dial(addr, tls);
            let reused = dial.initialized();
            // Boxed: dialing is the cold path.
            let dialled = dial
                .get_or_init(|| Box::pin(self.connect(addr, tls, connect_timeout, counted)))
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

    /// Dials `addr`, then the TLS handshake (for `h2`) and the HTTP/2 handshake, all within
    /// `connect_timeout`.
    async fn connect(
        &self,
        addr: SocketAddr,
        tls: Option<&Arc<UpstreamTls>>,
        connect_timeout: Duration,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<http2::SendRequest<B>, (UpstreamErrorKind, String)> {
        // Checked: no accepted `connectTimeout` may overflow the clock.
        let deadline = crate::limits::after(Instant::now(), connect_timeout);
        let stream = super::dial(addr, connect_timeout).await?;
        match tls {
            None => {
                self.start(stream, addr, deadline, connect_timeout, counted)
                    .await
            }
            Some(tls) => {
                let stream = tls
                    .handshake(stream, addr, deadline, connect_timeout)
                    .await?;
                self.start(stream, addr, deadline, connect_timeout, counted)
                    .await
            }
        }
    }

    /// The HTTP/2 handshake over `stream` (plain or TLS), then the connection's task, which is
    /// counted among the version's open connections (`counted`) until it ends.
    async fn start<S>(
        &self,
        stream: S,
        addr: SocketAddr,
        deadline: Instant,
        connect_timeout: Duration,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<http2::SendRequest<B>, (UpstreamErrorKind, String)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let (sender, connection) = handshake(
            addr,
            deadline,
            connect_timeout,
            self.builder.handshake(TokioIo::new(stream)),
        )
        .await?;
        let open = counted.map(|stats| OpenConnection::new(stats.clone()));
        crate::tasks::spawn_local(async move {
            let _ = connection.await;
            drop(open);
        });
        Ok(sender)
    }
}

/// The HTTP/2 handshake, finished by `deadline`.
async fn handshake<T>(
    addr: SocketAddr,
    deadline: Instant,
    connect_timeout: Duration,
    handshake: impl std::future::Future<Output = hyper::Result<T>>,
) -> Result<T, (UpstreamErrorKind, String)> {
    tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| {
            (
                UpstreamErrorKind::ConnectTimeout,
                format!("HTTP/2 handshake with {addr} not done within the connect timeout ({connect_timeout:?})"),
            )
        })?
        .map_err(|e| {
            (
                UpstreamErrorKind::Protocol,
                format!("HTTP/2 handshake with {addr}: {e}"),
            )
        })
}
