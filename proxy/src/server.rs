//! Listeners and workers: N threads, each a single-threaded tokio runtime accepting on every
//! listener, terminating TLS, and serving HTTP/1.1, h2c and h2 with hyper.
//!
//! Shutdown: stop accepting, ask every connection to finish (HTTP/1 closes after its in-flight
//! request, HTTP/2 sends GOAWAY), wait for them up to the drain timeout, then stop.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

use crate::forward::{self, ConnInfo, MirrorLimits, Worker};
use crate::framing::Inspect;
use crate::routes::Routes;

/// On shutdown, how long connections keep being served (answers say `Connection: close`) before
/// idle ones are closed; the drain timeout still bounds the whole drain.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub drain_timeout: Duration,
    /// Log one line per request under the `weir::access` target.
    pub access_log: bool,
    /// Time allowed for a client to send a request head (slow-loris protection) and a TLS handshake.
    pub header_timeout: Duration,
    /// Bounds of traffic mirroring, per worker.
    pub mirror: MirrorLimits,
}

impl ServeConfig {
    /// Defaults: one worker per core, 30 s drain, no access log, 30 s header timeout, default
    /// mirror limits.
    pub fn new(workers: usize) -> ServeConfig {
        ServeConfig {
            workers: workers.max(1),
            drain_timeout: Duration::from_secs(30),
            access_log: false,
            header_timeout: Duration::from_secs(30),
            mirror: MirrorLimits::default(),
        }
    }
}

/// A bound client-facing listener. Whether it speaks TLS is decided by the route table (a listener
/// with a TLS config in the current table terminates TLS).
#[derive(Debug)]
pub struct Listener {
    /// The listener name from the config.
    pub name: String,
    /// The bound socket.
    pub socket: std::net::TcpListener,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
    local_addrs: Vec<(String, SocketAddr)>,
}

// === impl Server ===

impl Server {
    /// The listeners' bound addresses, by name.
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.local_addrs
    }

    /// Begins a graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every worker has drained and stopped.
    pub async fn wait(mut self) {
        for done in self.done.drain(..) {
            let _ = done.await;
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Starts the workers. Returns once every worker is accepting.
pub fn spawn(listeners: Vec<Listener>, routes: Routes, config: ServeConfig) -> io::Result<Server> {
    let mut local_addrs = Vec::new();
    for listener in &listeners {
        listener.socket.set_nonblocking(true)?;
        local_addrs.push((listener.name.clone(), listener.socket.local_addr()?));
    }
    let listeners = Arc::new(listeners);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut workers = Vec::new();
    let mut done = Vec::new();
    for idx in 0..config.workers.max(1) {
        let sockets = listeners
            .iter()
            .map(|l| Ok((l.name.clone(), l.socket.try_clone()?)))
            .collect::<io::Result<Vec<_>>>()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let routes = routes.clone();
        let config = config.clone();
        let shutdown_rx = shutdown_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("weir-worker-{idx}"))
            .spawn(move || {
                crate::routes::rules::set_worker_slot(idx);
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, run_worker(sockets, routes, config, shutdown_rx));
                drop(local);
                drop(runtime);
                let _ = done_tx.send(());
            })?;
        workers.push(handle);
        done.push(done_rx);
    }
    Ok(Server {
        shutdown,
        workers,
        done,
        local_addrs,
    })
}

/// Serves until `shutdown` resolves, then drains.
pub async fn serve(
    listeners: Vec<Listener>,
    routes: Routes,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let server = spawn(listeners, routes, config)?;
    shutdown.await;
    server.shutdown();
    server.wait().await;
    Ok(())
}

/// Live connections of one worker, and a wake-up for when the last one ends.
#[derive(Default)]
struct Tracker {
    active: Cell<usize>,
    idle: Notify,
}

struct ConnGuard(Rc<Tracker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let left = self.0.active.get() - 1;
        self.0.active.set(left);
        if left == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn run_worker(
    sockets: Vec<(String, std::net::TcpListener)>,
    routes: Routes,
    config: ServeConfig,
    shutdown: watch::Receiver<bool>,
) {
    let worker = Worker::new(&routes, config.access_log, &config.mirror);
    let tracker = Rc::new(Tracker::default());
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Rc::new(builder);

    let mut accept_loops = Vec::new();
    for (name, socket) in sockets {
        let listener = match TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(listener = %name, %error, "cannot register listener");
                continue;
            }
        };
        accept_loops.push(tokio::task::spawn_local(accept_loop(
            Rc::from(name.as_str()),
            listener,
            worker.clone(),
            builder.clone(),
            tracker.clone(),
            shutdown.clone(),
            config.header_timeout,
        )));
    }
    let mut shutdown_wait = shutdown.clone();
    let _ = shutdown_wait.wait_for(|stop| *stop).await;
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    // Connections saw the shutdown too and are finishing their in-flight requests.
    let drained = async {
        loop {
            let notified = tracker.idle.notified();
            if tracker.active.get() == 0 {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(config.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.active.get(),
            "drain timeout reached; closing remaining connections"
        );
    }
}

async fn accept_loop(
    name: Rc<str>,
    listener: TcpListener,
    worker: Rc<Worker>,
    builder: Rc<auto::Builder<LocalExec>>,
    tracker: Rc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
    handshake_timeout: Duration,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tracker.active.set(tracker.active.get() + 1);
        let guard = ConnGuard(tracker.clone());
        tokio::task::spawn_local(serve_connection(
            name.clone(),
            stream,
            peer,
            worker.clone(),
            builder.clone(),
            shutdown.clone(),
            handshake_timeout,
            guard,
        ));
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    listener: Rc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    worker: Rc<Worker>,
    builder: Rc<auto::Builder<LocalExec>>,
    shutdown: watch::Receiver<bool>,
    handshake_timeout: Duration,
    _guard: ConnGuard,
) {
    let tls = worker.table().tls(&listener).cloned();
    match tls {
        None => {
            let conn = Rc::new(ConnInfo::new(peer.ip(), listener.clone(), false));
            let stream = Inspect::new(stream); // HTTP/1 framing checks (crate::framing)
            drive(TokioIo::new(stream), worker, conn, &builder, shutdown).await;
        }
        Some(config) => {
            let handshake =
                tokio::time::timeout(handshake_timeout, TlsAcceptor::from(config).accept(stream));
            // A client that has not finished its handshake has no request in flight: do not let it
            // hold the drain beyond a short grace (one mid-handshake as an upgrade begins
            // finishes it and is answered).
            let mut stopping = shutdown.clone();
            let mut handshake = pin!(handshake);
            let accepted = tokio::select! {
                accepted = &mut handshake => accepted,
                _ = stopping.wait_for(|stop| *stop) => match tokio::time::timeout(CLOSE_GRACE, handshake).await {
                    Ok(accepted) => accepted,
                    Err(_) => return,
                },
            };
            match accepted {
                Ok(Ok(tls_stream)) => {
                    let conn = Rc::new(ConnInfo::new(peer.ip(), listener.clone(), true));
                    let tls_stream = Inspect::new(tls_stream);
                    drive(TokioIo::new(tls_stream), worker, conn, &builder, shutdown).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn drive<I>(
    io: I,
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    builder: &auto::Builder<LocalExec>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Once draining, HTTP/1 answers say `Connection: close`, so busy keep-alive clients move to
    // the listener's next owner (an upgraded weir) at a response boundary instead of having an
    // idle connection closed under a request they are sending.
    let draining = shutdown.clone();
    let h2 = Rc::new(Cell::new(false));
    let seen_h2 = h2.clone();
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let http1 = request.version() <= hyper::Version::HTTP_11;
        seen_h2.set(!http1);
        let draining = draining.clone();
        let response = forward::handle(worker.clone(), conn.clone(), request);
        async move {
            let mut response = response.await?;
            if http1
                && *draining.borrow()
                && response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
            {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut connection = pin!(builder.serve_connection_with_upgrades(io, service));
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
            return;
        }
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    // A request already on its way (a connection accepted just before, a keep-alive client
    // mid-send) is answered (with `Connection: close`) rather than cut; then idle ones close.
    // HTTP/2 needs no grace: GOAWAY tells the client which streams were not taken.
    if !h2.get()
        && tokio::time::timeout(CLOSE_GRACE, connection.as_mut())
            .await
            .is_ok()
    {
        return;
    }
    connection.as_mut().graceful_shutdown();
    if let Err(error) = connection.await {
        tracing::debug!(%error, "connection ended with an error while draining");
    }
}

/// Runs hyper's background tasks (HTTP/2 streams) on the worker's own thread.
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}
