//! [`Proxy`]: the real data plane on pre-bound `127.0.0.1:0` listeners, built from a
//! [`weir_config::Model`] the way the control plane builds it, plus [`model`] to write that model as
//! YAML with upstream addresses substituted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use weir_config::{Model, Weight};
use weir_proxy::routes::{Policy, TlsMaterial};
use weir_proxy::stats::VersionStats;
use weir_proxy::{
    ConnectionStats, ListenerSettings, MirrorLimits, Publisher, RouteTable, Routes, ServeConfig,
    Stats,
};

/// The listeners block [`model`] adds when the YAML has none: one plain listener named `public`.
/// Listener addresses in the model are never bound by the harness (it binds `127.0.0.1:0`).
pub const DEFAULT_LISTENERS: &str = "listeners:\n  - name: public\n    address: 127.0.0.1:0\n";

/// Parses `template` into a validated [`Model`] after replacing every `${name}` with the address
/// of the same name in `vars` (relative paths resolve against the current directory).
///
/// If the text has no top-level `listeners:` key, [`DEFAULT_LISTENERS`] is prepended.
///
/// Panics on an unknown placeholder or an invalid config: a test's config is part of the test.
pub fn model(template: &str, vars: &[(&str, SocketAddr)]) -> Model {
    model_in(Path::new("."), template, vars)
}

/// Like [`model`], resolving relative paths (certificate files) against `base_dir`.
pub fn model_in(base_dir: &Path, template: &str, vars: &[(&str, SocketAddr)]) -> Model {
    let mut text = template.to_string();
    for (name, addr) in vars {
        text = text.replace(&format!("${{{name}}}"), &addr.to_string());
    }
    if let Some(at) = text.find("${") {
        let rest = &text[at..];
        let end = rest.find('}').map_or(rest.len(), |i| i + 1);
        panic!("no value for placeholder {} in test config", &rest[..end]);
    }
    if !text.lines().any(|line| line.starts_with("listeners:")) {
        text = format!("{DEFAULT_LISTENERS}{text}");
    }
    match weir_config::parse(&text, base_dir) {
        Ok(model) => model,
        Err(error) => panic!("invalid test config: {error}\n---\n{text}"),
    }
}

/// Options for starting a [`Proxy`].
#[derive(Debug)]
pub struct Builder {
    model: Model,
    weights: BTreeMap<String, Weight>,
    policies: BTreeMap<String, Policy>,
    tls: BTreeMap<String, TlsMaterial>,
    config: ServeConfig,
}

impl Builder {
    /// Serves `weight` for `service`'s canary instead of the file weight.
    pub fn weight(mut self, service: &str, weight: Weight) -> Self {
        self.weights.insert(service.to_string(), weight);
        self
    }

    /// Serves `policy` (weight, header and mirror routes, preview) for `service`; it wins over
    /// [`Builder::weight`].
    pub fn policy(mut self, service: &str, policy: Policy) -> Self {
        self.policies.insert(service.to_string(), policy);
        self
    }

    /// Bounds the mirror queue, concurrency and body size per worker.
    pub fn mirror_limits(mut self, limits: MirrorLimits) -> Self {
        self.config.mirror = limits;
        self
    }

    /// Gives TLS listener `listener` this certificate material.
    pub fn tls(mut self, listener: &str, material: TlsMaterial) -> Self {
        self.tls.insert(listener.to_string(), material);
        self
    }

    /// Writes the access log to `log` (default: off).
    pub fn access_log(mut self, log: weir_proxy::AccessLog) -> Self {
        self.config.access_log = Some(log);
        self
    }

    /// Runs `workers` worker threads (default 1).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers.max(1);
        self
    }

    /// How long shutdown waits for in-flight requests (default 5 s, so a broken test cannot hang
    /// on the production default of 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Gives listener `name` these timeouts and limits (default: the config's defaults).
    pub fn listener_settings(mut self, name: &str, settings: ListenerSettings) -> Self {
        self.config.listeners.insert(name.to_string(), settings);
        self
    }

    /// Bounds open connections across all listeners (default: the config's default).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Binds one `127.0.0.1:0` socket per listener of the model, builds the route table and starts
    /// the data plane (one worker unless [`Builder::workers`] says otherwise).
    pub fn start(self) -> Proxy {
        let Builder {
            model,
            weights,
            policies: explicit,
            tls,
            config,
        } = self;
        let stats = Stats::new();
        let mut all = policies(&weights);
        all.extend(explicit);
        let table = RouteTable::build(&model, &all, &tls, &stats, &RouteTable::empty())
            .expect("build the initial route table");
        let (publisher, routes) = weir_proxy::channel(table);
        let listeners = model
            .listeners
            .iter()
            .map(|l| weir_proxy::Listener {
                name: l.name.clone(),
                socket: crate::bind_ephemeral(),
            })
            .collect();
        let connections = config.connections.clone();
        let server = weir_proxy::spawn(listeners, routes.clone(), config).expect("start the proxy");
        let addrs = server.local_addrs().to_vec();
        Proxy {
            server: Some(server),
            publisher,
            routes,
            stats,
            model,
            tls,
            addrs,
            connections,
        }
    }
}

/// A running data plane. Always end a test with [`Proxy::shutdown`]; dropping it (e.g. when a test
/// panics) still begins a shutdown, so the worker threads end once drained.
#[derive(Debug)]
pub struct Proxy {
    server: Option<weir_proxy::Server>,
    publisher: Publisher,
    routes: Routes,
    stats: Stats,
    model: Model,
    tls: BTreeMap<String, TlsMaterial>,
    addrs: Vec<(String, SocketAddr)>,
    connections: ConnectionStats,
}

impl Proxy {
    /// Options for a proxy serving `model`.
    pub fn builder(model: Model) -> Builder {
        let mut config = ServeConfig::new(1);
        config.drain_timeout = Duration::from_secs(5);
        Builder {
            model,
            weights: BTreeMap::new(),
            policies: BTreeMap::new(),
            tls: BTreeMap::new(),
            config,
        }
    }

    /// Starts a proxy serving `model` with its file weights and no TLS material.
    pub fn start(model: Model) -> Proxy {
        Proxy::builder(model).start()
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    /// The address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener named {name:?}"))
            .1
    }

    /// Connection counts, sheds and timeouts by listener.
    pub fn connections(&self) -> &ConnectionStats {
        &self.connections
    }

    /// The stats registry the route tables record into.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The stats of (service, version); panics if the version was never configured.
    pub fn version_stats(&self, service: &str, version: &str) -> Arc<VersionStats> {
        self.stats
            .get(service, version)
            .unwrap_or_else(|| panic!("no stats for {service}/{version}"))
    }

    /// The publisher (the only writer of the route channel).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// A reader of the route channel.
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// The model the proxy was started with.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Builds a table from `model`, `weights` and `tls` on top of the current one (split sequences
    /// and identical TLS configs carry over) and publishes it; returns its generation.
    pub fn publish(
        &self,
        model: &Model,
        weights: &BTreeMap<String, Weight>,
        tls: &BTreeMap<String, TlsMaterial>,
    ) -> u64 {
        let previous = self.publisher.current();
        let table = RouteTable::build(model, &policies(weights), tls, &self.stats, &previous)
            .expect("build the route table");
        self.publisher.publish(table)
    }

    /// Publishes `model` with these policies (services not named get their file weight and no
    /// routes) and the start TLS material; returns the generation.
    pub fn publish_policies(&self, model: &Model, policies: &BTreeMap<String, Policy>) -> u64 {
        let previous = self.publisher.current();
        let table = RouteTable::build(model, policies, &self.tls, &self.stats, &previous)
            .expect("build the route table");
        self.publisher.publish(table)
    }

    /// Publishes the start model with `policy` for `service`.
    pub fn set_policy(&self, service: &str, policy: Policy) -> u64 {
        let policies = BTreeMap::from([(service.to_string(), policy)]);
        self.publish_policies(&self.model, &policies)
    }

    /// Publishes the start model and TLS material with `service`'s canary at `weight`.
    pub fn set_weight(&self, service: &str, weight: Weight) -> u64 {
        let weights = BTreeMap::from([(service.to_string(), weight)]);
        self.publish(&self.model, &weights, &self.tls)
    }

    /// Begins a graceful shutdown without waiting (idempotent).
    pub fn begin_shutdown(&self) {
        if let Some(server) = &self.server {
            server.shutdown();
        }
    }

    /// Shuts down gracefully and waits for every worker to stop; panics if that takes longer than
    /// the drain timeout plus a margin.
    pub async fn shutdown(mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        server.shutdown();
        tokio::time::timeout(Duration::from_secs(15), server.wait())
            .await
            .expect("the proxy stops within 15 s of shutdown");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // The workers drain and exit on their own threads; nothing is left serving.
            server.shutdown();
        }
    }
}

/// Weights as policies with no routes.
fn policies(weights: &BTreeMap<String, Weight>) -> BTreeMap<String, weir_proxy::routes::Policy> {
    weights
        .iter()
        .map(|(s, w)| (s.clone(), (*w).into()))
        .collect()
}
