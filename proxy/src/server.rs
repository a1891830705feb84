//! Listeners and workers: N threads, each a single-threaded tokio runtime accepting on every
//! listener, terminating TLS, and serving HTTP/1.1, h2c and h2 with hyper.
//!
//! Each listener has its own timeouts and limits ([`ListenerSettings`]): connections beyond
//! `maxConnections` are shed, and a watchdog per connection ([`crate::limits::Activity`]) closes
//! one that sends nothing, stalls its head (408), idles between requests, or keeps an HTTP/2
//! connection with no stream open.
//!
//! Shutdown: stop accepting, ask every connection to finish (HTTP/1 closes after its in-flight
//! request, HTTP/2 sends GOAWAY), wait for them and for upgraded tunnels up to the drain timeout,
//! then close what is left.

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use weir_config::MIN_HEADER_BYTES;

use crate::forward::{self, ConnInfo, MirrorLimits, Worker};
use crate::framing::Inspect;
use crate::limits::{
    Activity, ActivityIo, ConnSlot, ConnectionStats, Expired, ListenerConns, ListenerSettings,
    LiveSettings, MemoryPressure, RefuseReason, SettingsSnapshot, TimeoutReason, TrackedBody,
    TunnelScope, WorkerConns,
};
use crate::routes::Routes;

/// On shutdown, how long connections keep being served (answers say `Connection: close`) before
/// idle ones are closed; the drain timeout still bounds the whole drain.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// How long in-flight requests and upgraded tunnels may take to finish after shutdown begins;
    /// what is left then is closed.
    pub drain_timeout: Duration,
    /// The access log (one line per request), off by default.
    pub access_log: Option<crate::forward::AccessLog>,
    /// Timeouts and limits by listener name; a listener not named here gets the defaults
    /// ([`ListenerSettings::default`]).
    pub listeners: HashMap<String, ListenerSettings>,
    /// Open client connections across all listeners (upgraded tunnels included); beyond it new
    /// ones are shed. Default 50 000 (the config's top-level `limits.maxConnections`).
    pub max_connections: usize,
    /// Where connection counts, sheds and timeouts are counted (register it with
    /// [`crate::limits::register`]).
    pub connections: ConnectionStats,
    /// Bounds of traffic mirroring, per worker.
    pub mirror: MirrorLimits,
    /// The settings in force: [`spawn`] sets them from `listeners` and `max_connections`; replace
    /// them ([`LiveSettings::set`], e.g. on a config reload) and connections accepted afterwards
    /// get the new ones (open connections keep theirs).
    pub live: LiveSettings,
    /// Set while the process is over its memory limit: new connections are shed.
    pub memory: MemoryPressure,
}

impl ServeConfig {
    /// Defaults: one worker per core, 30 s drain, no access log, default listener settings,
    /// default mirror limits.
    pub fn new(workers: usize) -> ServeConfig {
        ServeConfig {
            workers: workers.max(1),
            drain_timeout: Duration::from_secs(30),
            access_log: None,
            listeners: HashMap::new(),
            max_connections: weir_config::GlobalLimits::default().max_connections,
            connections: ConnectionStats::new(),
            mirror: MirrorLimits::default(),
            live: LiveSettings::new(),
            memory: MemoryPressure::new(),
        }
    }

    /// The settings of listener `name`.
    pub fn listener(&self, name: &str) -> ListenerSettings {
        self.listeners.get(name).cloned().unwrap_or_default()
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
    config.live.set(SettingsSnapshot {
        listeners: config.listeners.clone(),
        max_connections: config.max_connections,
    });
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
        let tasks = config.connections.task_counter();
        let handle = std::thread::Builder::new()
            .name(format!("weir-worker-{idx}"))
            .spawn(move || {
                crate::routes::rules::set_worker_slot(idx);
                crate::tasks::set_counter(tasks);
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

/// What every connection of one listener on one worker shares (rebuilt when the settings in
/// force change: a connection keeps the one it was accepted with).
struct ListenerCtx {
    name: Rc<str>,
    settings: ListenerSettings,
    builder: auto::Builder<LocalExec>,
    conns: Arc<ListenerConns>,
    worker_conns: Arc<WorkerConns>,
    global_max: usize,
    /// The [`LiveSettings::version`] these settings come from.
    version: u64,
}

impl ListenerCtx {
    /// The context of listener `name` with the settings in force now.
    fn current(
        name: Rc<str>,
        live: &LiveSettings,
        conns: Arc<ListenerConns>,
        worker_conns: Arc<WorkerConns>,
    ) -> ListenerCtx {
        // The version first: a change racing with this read is picked up at the next accept.
        let version = live.version();
        let snapshot = live.current();
        let settings = snapshot.listeners.get(&*name).cloned().unwrap_or_default();
        ListenerCtx {
            builder: builder(&settings),
            name,
            settings,
            conns,
            worker_conns,
            global_max: snapshot.max_connections,
            version,
        }
    }
}

/// hyper's connection settings for a listener; every value is clamped to what hyper and h2 accept
/// (they assert on out-of-range values).
fn builder(settings: &ListenerSettings) -> auto::Builder<LocalExec> {
    let limits = &settings.limits;
    let timeouts = &settings.timeouts;
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Head and keep-alive timeouts are the watchdog's (hyper's would answer no 408 and would
        // tie idle to the head timeout).
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES) as usize)
        .max_headers(limits.max_headers.max(1));
    // RFC 9113 bounds.
    let window = |n: u32| n.clamp(65_535, (1 << 31) - 1);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .initial_stream_window_size(window(limits.http2_initial_stream_window))
        .initial_connection_window_size(window(limits.http2_initial_connection_window))
        .max_frame_size(limits.http2_max_frame_size.clamp(1 << 14, (1 << 24) - 1))
        .max_header_list_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets)
        .max_local_error_reset_streams(limits.http2_max_local_error_resets)
        .max_send_buf_size(limits.http2_max_send_buffer_size.max(1024) as usize)
        .keep_alive_interval(Some(timeouts.http2_keep_alive_interval))
        .keep_alive_timeout(timeouts.http2_keep_alive_timeout);
    builder
}

async fn run_worker(
    sockets: Vec<(String, std::net::TcpListener)>,
    routes: Routes,
    config: ServeConfig,
    shutdown: watch::Receiver<bool>,
) {
    let worker = Worker::new(&routes, config.access_log.clone(), &config.mirror);
    let worker_conns = Arc::new(WorkerConns::default());

    let mut accept_loops = Vec::new();
    for (name, socket) in sockets {
        let listener = match TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(listener = %name, %error, "cannot register listener");
                continue;
            }
        };
        let ctx = Rc::new(ListenerCtx::current(
            Rc::from(name.as_str()),
            &config.live,
            config.connections.listener(&name),
            worker_conns.clone(),
        ));
        accept_loops.push(tokio::task::spawn_local(accept_loop(
            ctx,
            listener,
            worker.clone(),
            shutdown.clone(),
            config.live.clone(),
            config.memory.clone(),
        )));
    }
    let mut shutdown_wait = shutdown.clone();
    let _ = shutdown_wait.wait_for(|stop| *stop).await;
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    // Connections saw the shutdown too and are finishing their in-flight requests; upgraded
    // tunnels hold their slot until they end. Whatever is left at the drain timeout is closed
    // when the worker's runtime is dropped.
    if tokio::time::timeout(config.drain_timeout, worker_conns.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = worker_conns.active(),
            "drain timeout reached; closing remaining connections"
        );
    }
}

async fn accept_loop(
    mut ctx: Rc<ListenerCtx>,
    listener: TcpListener,
    worker: Rc<Worker>,
    mut shutdown: watch::Receiver<bool>,
    live: LiveSettings,
    memory: MemoryPressure,
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
                tracing::warn!(listener = %ctx.name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if memory.is_over() {
            // Shed for memory: closed at once, counted with `reason="memory"`; the sampler that
            // sets the flag logs each episode.
            ctx.conns.shed_for_memory();
            drop(stream);
            continue;
        }
        if live.version() != ctx.version {
            ctx = Rc::new(ListenerCtx::current(
                ctx.name.clone(),
                &live,
                ctx.conns.clone(),
                ctx.worker_conns.clone(),
            ));
        }
        let max = ctx.settings.limits.max_connections;
        let Some(slot) = ctx
            .conns
            .try_acquire(&ctx.worker_conns, max, ctx.global_max)
        else {
            // Shed: closed at once, counted in `weir_connections_shed_total`.
            tracing::debug!(listener = %ctx.name, %peer, "connection limit reached; shedding");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        crate::tasks::spawn_local(serve_connection(
            ctx.clone(),
            stream,
            peer,
            worker.clone(),
            shutdown.clone(),
            slot,
        ));
    }
}

async fn serve_connection(
    ctx: Rc<ListenerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    worker: Rc<Worker>,
    shutdown: watch::Receiver<bool>,
    _slot: ConnSlot,
) {
    let tls = worker.table().tls(&ctx.name).cloned();
    match tls {
        None => {
            let conn = Rc::new(
                ConnInfo::new(peer.ip(), ctx.name.clone(), false).counted(ctx.conns.clone()),
            );
            // HTTP/1 framing checks (crate::framing)
            let stream = Inspect::new(stream).counted(ctx.conns.clone());
            drive(stream, worker, conn, &ctx, shutdown).await;
        }
        Some(config) => {
            let handshake = tokio::time::timeout(
                ctx.settings.timeouts.tls_handshake,
                TlsAcceptor::from(config).accept(stream),
            );
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
                Ok(Ok(mut tls_stream)) => {
                    if tls_stream.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                        // A tls-alpn-01 validation: the handshake was the answer; no HTTP on it.
                        use tokio::io::AsyncWriteExt;
                        let _ = tokio::time::timeout(CLOSE_GRACE, tls_stream.shutdown()).await;
                        return;
                    }
                    let conn = Rc::new(
                        ConnInfo::new(peer.ip(), ctx.name.clone(), true).counted(ctx.conns.clone()),
                    );
                    let tls_stream = Inspect::new(tls_stream).counted(ctx.conns.clone());
                    drive(tls_stream, worker, conn, &ctx, shutdown).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => {
                    ctx.conns.timed_out(TimeoutReason::TlsHandshake);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// How long a connection closed by a timeout may take to say so (408, GOAWAY).
const GOODBYE: Duration = Duration::from_secs(1);

async fn drive<S>(
    stream: S,
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    ctx: &ListenerCtx,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(&ctx.settings.timeouts);
    // Not `Send`: fine, the connection runs on this worker's `LocalSet`.
    let io = TokioIo::new(ActivityIo::new(stream, activity.clone()));
    let scope = TunnelScope::new(
        ctx.settings.timeouts.tunnel_idle,
        ctx.conns.clone(),
        ctx.worker_conns.clone(),
    );
    let requests = activity.clone();
    // Once draining, HTTP/1 answers say `Connection: close`, so busy keep-alive clients move to
    // the listener's next owner (an upgraded weir) at a response boundary instead of having an
    // idle connection closed under a request they are sending.
    // One receiver per connection, shared by its requests (an `Rc` clone, not a channel clone).
    let draining = Rc::new(shutdown.clone());
    let h2 = Rc::new(Cell::new(false));
    let seen_h2 = h2.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        let in_flight = requests.request_started();
        let http1 = request.version() <= hyper::Version::HTTP_11;
        seen_h2.set(!http1);
        // Only an upgrade can become a tunnel; other requests skip the extension map's allocation.
        if request.headers().contains_key(http::header::UPGRADE) {
            request.extensions_mut().insert(scope.clone());
        }
        let draining = draining.clone();
        // Boxed: hyper moves the service's future into its dispatcher on every request, and the
        // request path's future is several KiB; moving a pointer instead of copying it saves far
        // more than the allocation costs (callgrind: ~9k instructions of memcpy per request).
        let handled = Box::pin(forward::handle(worker.clone(), conn.clone(), request));
        async move {
            let mut response = match handled.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if http1
                && *draining.borrow()
                && response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
            {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, in_flight)))
        }
    });
    let mut connection = pin!(ctx.builder.serve_connection_with_upgrades(io, service));
    // The connection task wakes several times per request; the watchdog and the shutdown signal
    // are polled only when they were woken themselves.
    let watchdog = Gated::new(activity.watch());
    let stop = Gated::new(shutdown.wait_for(|stop| *stop));
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                // hyper answered 431 itself (head over maxHeaderBytes or maxHeaders).
                if error
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_parse_too_large)
                {
                    ctx.conns.refused(RefuseReason::HeaderTooLarge);
                }
                tracing::debug!(%error, "connection ended with an error");
            }
            return;
        }
        expired = watchdog => {
            match expired {
                Expired::Close(reason) => ctx.conns.timed_out(reason),
                Expired::RequestTimeout => {
                    ctx.conns.timed_out(TimeoutReason::HeaderRead);
                    activity.respond_408();
                    let _ = tokio::time::timeout(GOODBYE, connection.as_mut()).await;
                }
                Expired::GoAway => {
                    ctx.conns.timed_out(TimeoutReason::Http2Idle);
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GOODBYE, connection.as_mut()).await;
                }
            }
            return;
        }
        _ = stop => {}
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

/// Whether a [`Gated`] future was woken, and the task to wake then.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

pin_project_lite::pin_project! {
    /// A future that shares its task with others (a `select!` branch) but is polled only after
    /// its own waker fired (and on its first poll), so the others' wake-ups do not poll it.
    struct Gated<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
        waker: Waker,
        // The task waker last handed to `flag`.
        task: Option<Waker>,
    }
}

impl<F> Gated<F> {
    fn new(inner: F) -> Gated<F> {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Gated {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *this.task = Some(cx.waker().clone());
            *this
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        }
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

/// Runs hyper's background tasks (HTTP/2 streams) on the worker's own thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        crate::tasks::spawn_local(future);
    }
}
