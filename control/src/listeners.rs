//! Listener settings on reload: a reloaded config's `timeouts`, `limits` (per listener and the
//! top-level `maxConnections`, `maxMemory`) apply to connections accepted afterwards (open ones
//! keep theirs); `trustedProxies` and certificates travel with the route table. What needs a
//! restart (a listener added, removed, or moved to another address: sockets are bound at start,
//! or handed over by a binary upgrade, which binds the new ones) is logged as a warning on every
//! reload and exported as `weir_listener_restart_pending{listener}` = 1 until the file matches
//! what is served again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weir_config::{MemoryLimit, Model};
use weir_proxy::limits::{LiveSettings, SettingsSnapshot};
use weir_proxy::ListenerSettings;

/// `weir_listener_restart_pending{listener}`.
pub type PendingGauge = Family<Vec<(String, String)>, Gauge>;

/// Why a listener in the file differs from the one served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// In the file, not served.
    Added,
    /// Served, not in the file (it keeps serving with its last settings).
    Removed,
    /// Served on another address than the file's.
    Address,
}

impl Pending {
    fn as_str(self) -> &'static str {
        match self {
            Pending::Added => "added",
            Pending::Removed => "removed",
            Pending::Address => "address changed",
        }
    }
}

/// Each listener's settings in `model`, for [`LiveSettings`].
pub fn snapshot(model: &Model) -> SettingsSnapshot {
    SettingsSnapshot {
        listeners: model
            .listeners
            .iter()
            .map(|l| {
                let settings = ListenerSettings {
                    timeouts: l.timeouts.clone(),
                    limits: l.limits.clone(),
                };
                (l.name.clone(), settings)
            })
            .collect(),
        max_connections: model.limits.max_connections,
    }
}

/// The listeners of `model` that differ from those `served` (name → configured address).
pub fn pending(served: &BTreeMap<String, SocketAddr>, model: &Model) -> BTreeMap<String, Pending> {
    let mut pending = BTreeMap::new();
    for listener in &model.listeners {
        match served.get(&listener.name) {
            None => {
                pending.insert(listener.name.clone(), Pending::Added);
            }
            Some(address) if *address != listener.address => {
                pending.insert(listener.name.clone(), Pending::Address);
            }
            Some(_) => {}
        }
    }
    for name in served.keys() {
        if !model.listeners.iter().any(|l| &l.name == name) {
            pending.insert(name.clone(), Pending::Removed);
        }
    }
    pending
}

/// What the driver calls with each applied config: new listener settings, the memory limit, and
/// the listener changes that wait for a restart.
pub struct ReloadHook {
    /// The served listeners (name → configured address), fixed at start.
    pub served: BTreeMap<String, SocketAddr>,
    /// The data plane's settings in force.
    pub live: LiveSettings,
    /// The memory sampler's limit.
    pub memory: mpsc::Sender<MemoryLimit>,
    /// `weir_listener_restart_pending`.
    pub gauge: PendingGauge,
    /// Every listener name the gauge has reported (set back to 0 once resolved).
    pub reported: std::collections::BTreeSet<String>,
}

impl ReloadHook {
    /// Registers `weir_listener_restart_pending` (every served listener at 0).
    pub fn register(&self, registry: &mut Registry) {
        for name in self.served.keys() {
            let _ = self
                .gauge
                .get_or_create(&vec![("listener".into(), name.clone())]);
        }
        registry.register(
            "weir_listener_restart_pending",
            "1 when the config file adds, removes or moves this listener: that takes a restart \
             (or a binary upgrade); other listener settings apply to new connections on reload",
            self.gauge.clone(),
        );
    }

    /// Applies `model`.
    pub fn apply(&mut self, model: &Model) {
        let mut next = snapshot(model);
        // A listener removed from the file keeps serving (until a restart) with what it had.
        let current = self.live.current();
        for name in self.served.keys() {
            if !next.listeners.contains_key(name) {
                if let Some(settings) = current.listeners.get(name) {
                    next.listeners.insert(name.clone(), settings.clone());
                }
            }
        }
        if self.live.set(next) {
            tracing::info!("listener timeouts and limits changed: new connections get them");
        }
        let _ = self.memory.send(model.limits.max_memory);
        let pending = pending(&self.served, model);
        // Every listener ever reported stays in the family (at 0 once resolved).
        self.reported.extend(self.served.keys().cloned());
        self.reported.extend(pending.keys().cloned());
        for name in self.reported.iter().cloned() {
            let value = i64::from(pending.contains_key(&name));
            self.gauge
                .get_or_create(&vec![("listener".into(), name)])
                .set(value);
        }
        for (name, why) in &pending {
            tracing::warn!(
                listener = %name,
                change = why.as_str(),
                "listener change needs a restart (or a binary upgrade, SIGUSR2); until then the listeners bound at start keep serving"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_changes_that_need_a_restart() {
        let model = weir_config::parse(
            "listeners:\n  - {name: a, address: 127.0.0.1:8080}\n  - {name: b, address: 127.0.0.1:8081}\n  - {name: c, address: 127.0.0.1:8082, limits: {maxConnections: 5}}\nlimits: {maxConnections: 7}\nservices:\n  - {name: web, stable: {version: v1, upstreams: [\"127.0.0.1:9001\"]}}\n",
            std::path::Path::new("."),
        )
        .expect("a valid config");
        let served: BTreeMap<String, SocketAddr> = [
            ("a", "127.0.0.1:8080"),
            ("b", "127.0.0.1:9999"),
            ("d", "127.0.0.1:8083"),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a.parse().expect("an address")))
        .collect();
        let pending = pending(&served, &model);
        assert_eq!(
            pending.into_iter().collect::<Vec<_>>(),
            vec![
                ("b".to_string(), Pending::Address),
                ("c".to_string(), Pending::Added),
                ("d".to_string(), Pending::Removed),
            ]
        );
        let snapshot = snapshot(&model);
        assert_eq!(snapshot.max_connections, 7);
        assert_eq!(snapshot.listeners["c"].limits.max_connections, 5);
    }
}
