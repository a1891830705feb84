//! Wiring: config file → driver + route channel → data-plane workers, admin listener, reload
//! watcher → drain on shutdown. Used by `weir run` and by the end-to-end tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use weir_proxy::{ServeConfig, Stats};

use crate::api::server::{self as admin, AdminState, ServeOptions};
use crate::engine::driver::{Driver, DriverError, Handle};
use crate::reload::{self, Loaded, ReloadError, Trigger};
use crate::resolve::{self, Dns};
use crate::upgrade::{self, Inherited};
use weir_config::ConfigError;

/// How `weir run` runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The config file.
    pub config_path: PathBuf,
    /// Data-plane worker threads.
    pub workers: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Log every request (to stdout, by the `weir-access-log` thread).
    pub access_log: bool,
    /// The access log's line format.
    pub access_log_format: weir_proxy::AccessLogFormat,
    /// How often the config file is re-read in case a file event was missed.
    pub poll_interval: Duration,
}

/// Why weir could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is invalid (exit code 64).
    #[error("invalid configuration in {path}:\n{problems}")]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// One problem per line.
        problems: String,
    },
    /// The first route table could not be built (e.g. unusable TLS material), or the state folder
    /// could not be created.
    #[error("cannot start the control loop: {0}")]
    Driver(#[from] DriverError),
    /// A listener could not be bound.
    #[error("cannot bind {name} on {address}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        address: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The workers could not start.
    #[error("cannot start workers: {0}")]
    Spawn(#[source] std::io::Error),
    /// `admin.tls` names files that cannot be read or used.
    #[error("cannot use admin.tls: {0}")]
    AdminTls(String),
}

/// A running weir: data plane, driver, admin API and watcher.
pub struct Running {
    server: weir_proxy::Server,
    admin_addr: SocketAddr,
    reload: mpsc::UnboundedSender<Trigger>,
    handle: Handle,
    stop_admin: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ready: Arc<AtomicBool>,
    /// Duplicates of every listening socket (admin included), by hand-over name, for a binary
    /// upgrade ([`upgrade::hand_over`]).
    handover: Vec<(String, std::net::TcpListener)>,
    /// The memory sampler (stops when dropped).
    _memory: crate::memory::MemoryGuard,
}

/// Loads the config, binds every listener and starts serving.
pub async fn start(options: RunOptions) -> Result<Running, StartError> {
    start_with(options, &mut Inherited::default()).await
}

/// [`start`], serving on the sockets a previous weir handed over where a listener's name and
/// address still match (binding the others).
pub async fn start_with(
    options: RunOptions,
    inherited: &mut Inherited,
) -> Result<Running, StartError> {
    start_with_lookup(options, inherited, resolve::system_lookup()).await
}

/// [`start_with`], resolving upstream host names with `lookup` (tests substitute their own).
pub async fn start_with_lookup(
    options: RunOptions,
    inherited: &mut Inherited,
    lookup: resolve::Lookup,
) -> Result<Running, StartError> {
    let dns = Dns::new(lookup);
    // Automatic certificates (crate::acme): its loader adds each ACME listener's certificate.
    let acme = crate::acme::Acme::new();
    // Reading the files and resolving host names block: not on the control thread.
    let loaded = {
        let path = options.config_path.clone();
        let dns = dns.clone();
        let acme = acme.clone();
        tokio::task::spawn_blocking(move || -> Result<Loaded, ReloadError> {
            let mut loaded = reload::load(&path)?;
            acme.attach(&mut loaded);
            dns.resolve_model(&mut loaded.model)
                .map_err(ConfigError::Invalid)?;
            Ok(loaded)
        })
        .await
        .map_err(|error| StartError::Spawn(std::io::Error::other(error.to_string())))?
        .map_err(|error| invalid(&options, &error))?
    };
    let model = loaded.model.clone();

    let mut listeners = Vec::new();
    let mut handover = Vec::new();
    for listener in &model.listeners {
        let key = upgrade::listener_key(&listener.name);
        let bind_error = |source| StartError::Bind {
            name: listener.name.clone(),
            address: listener.address,
            source,
        };
        let socket = match inherited.take(&key, listener.address) {
            Some(socket) => socket,
            None => bind(listener.address).map_err(bind_error)?,
        };
        handover.push((key, socket.try_clone().map_err(bind_error)?));
        listeners.push(weir_proxy::Listener {
            name: listener.name.clone(),
            socket,
        });
    }
    let admin_tls = match &model.admin.tls {
        Some(files) => Some(admin_tls(files).await?),
        None => None,
    };
    let admin_bind_error = |source| StartError::Bind {
        name: "admin".into(),
        address: model.admin.address,
        source,
    };
    let admin_socket = match inherited.take(upgrade::ADMIN, model.admin.address) {
        Some(socket) => socket,
        None => bind(model.admin.address).map_err(admin_bind_error)?,
    };
    handover.push((
        upgrade::ADMIN.to_string(),
        admin_socket.try_clone().map_err(admin_bind_error)?,
    ));
    admin_socket
        .set_nonblocking(true)
        .map_err(StartError::Spawn)?;
    let admin_addr = admin_socket.local_addr().map_err(StartError::Spawn)?;

    let stats = Stats::new();
    let reloads = reload::new_counter();
    // Both series exist from the start, so `rate()` and alerts work before the first reload.
    for result in ["success", "failure"] {
        let _ = reloads.get_or_create(&vec![("result", result)]);
    }
    let (mut driver, routes, handle) = Driver::new(loaded.clone(), stats.clone(), reloads.clone())?;
    let config_report = handle.config_report().clone();
    config_report.set_path(&options.config_path);
    let report = config_report.snapshot();
    tracing::info!(
        state_dir = report.state_dir.as_deref().unwrap_or("-"),
        origin = report.state_dir_origin.as_deref().unwrap_or("-"),
        "rollout state is kept in {} ({})",
        report.state_dir.as_deref().unwrap_or("memory"),
        report.state_dir_origin.as_deref().unwrap_or("no folder"),
    );
    driver.set_dns(dns.clone());
    driver.set_config_path(&options.config_path);
    driver.set_listener_addrs(
        listeners
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.socket.local_addr().ok()?))),
    );

    let mut registry = Registry::default();
    weir_proxy::metrics::register(&mut registry, stats.clone(), routes.clone());
    crate::api::metrics::register(&mut registry, handle.watch_status());
    acme.register(&mut registry);
    registry.register(
        "weir_config_reloads",
        "Config reload attempts by result",
        reloads.clone(),
    );
    registry.register(
        "weir_webhook_calls",
        "Webhook calls by service, webhook and result (success, failure, timeout, error, dropped)",
        handle.webhook_calls(),
    );
    registry.register(
        "weir_dns_resolution_failures",
        "Failed or empty re-resolutions of an upstream host name (its last good addresses are kept)",
        dns.failures(),
    );

    let mut serve_config = ServeConfig::new(options.workers);
    serve_config.drain_timeout = options.drain_timeout;
    if options.access_log {
        serve_config.access_log = Some(
            weir_proxy::AccessLog::stdout(options.access_log_format).map_err(StartError::Spawn)?,
        );
    }
    serve_config.listeners = model
        .listeners
        .iter()
        .map(|l| {
            let settings = weir_proxy::ListenerSettings {
                timeouts: l.timeouts.clone(),
                limits: l.limits.clone(),
            };
            (l.name.clone(), settings)
        })
        .collect();
    serve_config.max_connections = model.limits.max_connections;
    weir_proxy::limits::register(&mut registry, serve_config.connections.clone());
    let health_routes = routes.clone();
    // Memory-pressure shedding and listener settings on reload (crate::memory, crate::listeners).
    let memory =
        crate::memory::MemoryGuard::start(serve_config.memory.clone(), model.limits.max_memory)
            .map_err(StartError::Spawn)?;
    memory.register(&mut registry);
    let mut listener_hook = crate::listeners::ReloadHook {
        served: model
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.address))
            .collect(),
        live: serve_config.live.clone(),
        memory: memory.limit_sender(),
        gauge: crate::listeners::PendingGauge::default(),
        reported: Default::default(),
    };
    listener_hook.register(&mut registry);
    // Notifications (crate::notify): settings from each served config, delivery off the loop.
    let notify = crate::notify::Notify::new(&model, &options.config_path);
    notify.register(&mut registry);
    let mut notify_hook = notify.hook();
    driver.on_applied(Box::new(move |model| {
        listener_hook.apply(model);
        notify_hook(model);
    }));
    // The built-in load test (crate::loadtest): traffic of weir's own to the canaries the engine
    // names (rollouts in analysis with a `loadTest` webhook).
    let load_targets = handle.load_targets();
    let load_metrics = crate::loadtest::LoadTestMetrics::default();
    load_metrics.register(&mut registry);
    let load_tester = crate::loadtest::LoadTester::spawn(&routes, load_targets, load_metrics)
        .map_err(StartError::Spawn)?;
    let server = weir_proxy::spawn(listeners, routes, serve_config).map_err(StartError::Spawn)?;
    for (name, addr) in server.local_addrs() {
        tracing::info!(listener = %name, %addr, "listening");
    }
    tracing::info!(%admin_addr, "admin listening");

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    let admin_listener =
        tokio::net::TcpListener::from_std(admin_socket).map_err(StartError::Spawn)?;
    let admin_state = AdminState {
        registry: Arc::new(registry),
        ready: ready.clone(),
        driver: handle.clone(),
        token: model.admin.token_file.clone(),
        allowed_hosts: model.admin.allowed_hosts.clone(),
        max_event_subscribers: model.admin.max_event_subscribers,
        acme: acme.clone(),
        series: crate::series::Series::spawn(stats.clone()),
    };
    let admin_options = ServeOptions {
        max_connections: model.admin.max_connections,
        header_read_timeout: model.admin.header_read_timeout,
        tls: admin_tls,
    };
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(admin::serve(
        admin_listener,
        admin_state,
        admin_options,
        async move {
            let mut stop = stop_admin_rx;
            let _ = stop.wait_for(|s| *s).await;
        },
    )));

    let (apply_tx, apply_rx) = mpsc::channel(4);
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    // Subscribed before the driver runs: its first events (a rollout resumed or started at
    // start-up) are notified too.
    tasks.push(tokio::spawn(notify.run(handle.subscribe())));
    tasks.push(tokio::spawn(driver.run(apply_rx)));
    // Active health checks: their own tasks, reconciled after every publish.
    tasks.push(tokio::spawn(crate::health::run(
        health_routes,
        handle.generation(),
    )));
    tasks.push(tokio::spawn(reload::run(
        options.config_path.clone(),
        Some(loaded),
        reload_rx,
        apply_tx,
        reloads,
        options.poll_interval,
        config_report.loader(resolve::loader(
            acme.loader(reload::default_loader()),
            dns.clone(),
        )),
        handle.offload(),
    )));
    tasks.push(tokio::spawn(dns.refresh()));
    tasks.push(load_tester.into_task());
    tasks.push(tokio::spawn(acme.run(reload_tx.clone())));
    ready.store(true, Ordering::Release);
    Ok(Running {
        server,
        admin_addr,
        reload: reload_tx,
        handle,
        stop_admin,
        tasks,
        ready,
        handover,
        _memory: memory,
    })
}

/// The admin listener's rustls config: the certificate of `admin.tls`, HTTP/1.1 only.
async fn admin_tls(
    files: &weir_config::CertificateFiles,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let read = |path: PathBuf| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|e| StartError::AdminTls(format!("{}: {e}", path.display())))
    };
    let pem = weir_proxy::tls::CertificatePem {
        origin: files.cert_file.display().to_string(),
        cert_chain: read(files.cert_file.clone()).await?,
        private_key: read(files.key_file.clone()).await?,
    };
    let config =
        weir_proxy::tls::server_config(&[pem]).map_err(|e| StartError::AdminTls(e.to_string()))?;
    let mut config = rustls::ServerConfig::clone(&config);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn invalid(options: &RunOptions, error: &ReloadError) -> StartError {
    StartError::InvalidConfig {
        path: options.config_path.clone(),
        problems: error.problems().join("\n"),
    }
}

/// Binds a listening socket with `SO_REUSEADDR` (restarts don't wait for TIME_WAIT).
fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

// === impl Running ===

impl Running {
    /// The client listeners' bound addresses, by name.
    pub fn listener_addrs(&self) -> &[(String, SocketAddr)] {
        self.server.local_addrs()
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Asks for a reload now, as SIGHUP does.
    pub fn reload(&self) {
        let _ = self.reload.send(Trigger::Forced);
    }

    /// The route table generation, updated on every publish.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.handle.generation()
    }

    /// The driver: status, events, commands.
    pub fn driver(&self) -> &Handle {
        &self.handle
    }

    /// Duplicates of every listening socket (admin included) by hand-over name.
    pub fn handover_sockets(&self) -> &[(String, std::net::TcpListener)] {
        &self.handover
    }

    /// Stops accepting, drains in-flight requests, and stops every task.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        self.server.shutdown();
        self.server.wait().await;
        let _ = self.stop_admin.send(true);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}
