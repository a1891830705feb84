//! Upstream host names: resolved when a config loads, and re-resolved every
//! `upstreamDns.refreshRate` by a task of their own.
//!
//! The config crate never resolves (so `weir validate` works offline): a host-name upstream
//! arrives with no address. [`Dns`] keeps the last good answer of every host name the served config
//! uses and fills those addresses into a model ([`Dns::overlay`]):
//!
//! - **On load** ([`Dns::resolve_model`], on the reload task's blocking thread): a name already
//!   known takes its known addresses (the refresh task keeps them current); a new name is looked
//!   up now, and a name that has never resolved is a problem of that config (the start fails, a
//!   reload is rejected and the last good config keeps serving).
//! - **On refresh** ([`Dns::refresh`]): every name is looked up on tokio's blocking pool (a few
//!   at a time, at most one lookup per name in flight), never on the control thread. A changed
//!   address set wakes the driver (the single writer of the route table), which overlays the new
//!   addresses on the model it serves and publishes a table only if an upstream's addresses
//!   changed. A failed or empty answer keeps the last good addresses, is logged and counted in
//!   `weir_dns_resolution_failures_total{host}`; a version is never emptied.
//! - **Reload during a change**: the driver overlays the current answers on every newly loaded
//!   model too, so neither a reload nor a DNS change is lost.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::reload::Loader;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weir_config::{ConfigError, Model, Upstream, UpstreamDns, ValidationError, Version};

/// Looks a host name up: every address it has, in any order (the selection by family, sorting
/// and the cap happen after). Tests substitute their own; production uses [`system_lookup`].
pub type Lookup = Arc<dyn Fn(&str) -> io::Result<Vec<IpAddr>> + Send + Sync>;

/// The system resolver (`getaddrinfo`), blocking: only ever called on a blocking thread.
pub fn system_lookup() -> Lookup {
    Arc::new(|host: &str| Ok((host, 0).to_socket_addrs()?.map(|a| a.ip()).collect()))
}

/// `loader` followed by [`Dns::resolve_model`]: what the reload task runs (on a blocking thread).
pub fn loader(loader: Loader, dns: Dns) -> Loader {
    Arc::new(move |path: &Path| {
        let mut loaded = loader(path)?;
        dns.resolve_model(&mut loaded.model)
            .map_err(ConfigError::Invalid)?;
        Ok(loaded)
    })
}

/// `weir_dns_resolution_failures_total{host}`.
pub type FailureCounter = Family<Vec<(&'static str, String)>, Counter>;

/// Lookups run at the same time by the refresh task: a slow resolver holds at most this many
/// blocking threads, and leaves the blocking pool to state writes and reloads.
const MAX_CONCURRENT_LOOKUPS: usize = 8;
/// Addresses kept per answer before selection (the largest `upstreamDns.maxAddresses`).
const MAX_ANSWER: usize = 256;

/// The resolver state shared by the loader, the refresh task and the driver. Cheap to clone.
#[derive(Clone)]
pub struct Dns {
    shared: Arc<Shared>,
}

struct Shared {
    lookup: Lookup,
    state: Mutex<State>,
    failures: FailureCounter,
    /// The served config's `upstreamDns` (the refresh task's rate and selection).
    settings: watch::Sender<UpstreamDns>,
    /// Bumped whenever a known answer changes: the driver overlays and maybe publishes.
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// The last good answer of each host name (sorted, deduplicated, at most [`MAX_ANSWER`]).
    known: BTreeMap<String, Vec<IpAddr>>,
    /// The host names of the config being served: the ones refreshed.
    tracked: BTreeSet<String>,
}

impl Dns {
    /// A resolver state that looks names up with `lookup`.
    pub fn new(lookup: Lookup) -> Dns {
        Dns {
            shared: Arc::new(Shared {
                lookup,
                state: Mutex::new(State::default()),
                failures: FailureCounter::default(),
                settings: watch::channel(UpstreamDns::default()).0,
                changes: watch::channel(0).0,
            }),
        }
    }

    /// The failure counter, to register (`weir_dns_resolution_failures`).
    pub fn failures(&self) -> FailureCounter {
        self.shared.failures.clone()
    }

    /// Notified (the value is a change count) whenever a host name's answer changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a cache of answers: whatever a panicking holder left is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Fills in the addresses of every host-name upstream of a freshly loaded `model`. Blocking
    /// (it may look names up): call it on a blocking thread. A name already known takes its
    /// known answer; another is looked up now. Every name that does not resolve to a usable
    /// address, and never did, is a problem at its field path.
    pub fn resolve_model(&self, model: &mut Model) -> Result<(), Vec<ValidationError>> {
        let settings = model.upstream_dns.clone();
        let wanted: BTreeSet<String> = {
            let state = self.state();
            hostnames(model)
                .filter(|host| {
                    state
                        .known
                        .get(*host)
                        .is_none_or(|answer| settings.select(answer).is_empty())
                })
                .map(str::to_string)
                .collect()
        };
        // Looked up without the lock: a slow resolver must not hold up the driver's overlays.
        let mut failed = BTreeMap::new();
        for (host, answer) in lookup_all(&self.shared.lookup, wanted.into_iter().collect()) {
            match answer {
                Ok(answer) if !settings.select(&answer).is_empty() => {
                    self.state().known.insert(host, normalize(answer));
                }
                Ok(answer) if answer.is_empty() => {
                    failed.insert(host, "it has no address".to_string());
                }
                Ok(_) => {
                    let family = format!("{:?}", settings.family).to_ascii_lowercase();
                    failed.insert(
                        host,
                        format!("it has no address of the family upstreamDns.family: {family}"),
                    );
                }
                Err(error) => {
                    failed.insert(host, error.to_string());
                }
            }
        }
        if failed.is_empty() {
            self.overlay(model);
            return Ok(());
        }
        let mut problems = Vec::new();
        for (at, version) in versions(model) {
            for (idx, upstream) in version.upstreams.iter().enumerate() {
                let Some(reason) = upstream.hostname().and_then(|h| failed.get(h)) else {
                    continue;
                };
                problems.push(ValidationError::new(
                    format!("{at}.upstreams[{idx}]"),
                    format!(
                        "cannot resolve \"{}\" ({reason}); a host name must resolve before weir serves it",
                        upstream.name
                    ),
                ));
            }
        }
        Err(problems)
    }

    /// Sets the addresses of every host-name upstream of `model` from the known answers (a name
    /// with no usable answer keeps what it has). Returns whether any upstream changed.
    pub fn overlay(&self, model: &mut Model) -> bool {
        let settings = model.upstream_dns.clone();
        let state = self.state();
        let mut changed = false;
        for service in &mut model.services {
            let versions = std::iter::once(&mut service.stable)
                .chain(service.canary.as_mut().map(|c| &mut c.version));
            for version in versions {
                for upstream in &mut version.upstreams {
                    let Some(answer) = upstream.hostname().and_then(|h| state.known.get(h)) else {
                        continue;
                    };
                    let addrs: Vec<SocketAddr> = settings
                        .select(answer)
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, upstream.port))
                        .collect();
                    if !addrs.is_empty() && addrs != upstream.addrs {
                        upstream.addrs = addrs;
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Makes `model` (just published by the driver) the config whose names are refreshed, with
    /// its `upstreamDns` settings; forgets the answers and series of names it no longer uses.
    pub fn track(&self, model: &Model) {
        let names: BTreeSet<String> = hostnames(model).map(str::to_string).collect();
        {
            let mut state = self.state();
            state.known.retain(|host, _| names.contains(host));
            // A name resolved by a loader whose answer this state has since forgotten (a reload
            // racing another): its addresses in the model are its last good answer.
            for upstream in upstreams(model) {
                let Some(host) = upstream.hostname() else {
                    continue;
                };
                if !state.known.contains_key(host) && !upstream.addrs.is_empty() {
                    let answer = normalize(upstream.addrs.iter().map(SocketAddr::ip).collect());
                    state.known.insert(host.to_string(), answer);
                }
            }
            for gone in state.tracked.difference(&names) {
                self.shared.failures.remove(&labels(gone));
            }
            for host in &names {
                // Every series exists from the start, so `increase()` and alerts work.
                let _ = self.shared.failures.get_or_create(&labels(host));
            }
            state.tracked = names;
        }
        self.shared.settings.send_if_modified(|current| {
            let modified = *current != model.upstream_dns;
            if modified {
                *current = model.upstream_dns.clone();
            }
            modified
        });
    }

    /// Re-resolves every tracked host name every `upstreamDns.refreshRate`, for ever (abort the
    /// task to stop it). Lookups run on tokio's blocking pool, [`MAX_CONCURRENT_LOOKUPS`] at a
    /// time and at most one per name: a hung resolver delays only its own names.
    pub async fn refresh(self) {
        let mut settings = self.shared.settings.subscribe();
        let mut rate = settings.borrow_and_update().refresh_rate;
        let mut next_round = Instant::now() + rate;
        let (done_tx, mut done) = mpsc::unbounded_channel::<(String, io::Result<Vec<IpAddr>>)>();
        let mut queue: Vec<String> = Vec::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        loop {
            while in_flight.len() < MAX_CONCURRENT_LOOKUPS {
                let Some(host) = queue.pop() else {
                    break;
                };
                if !in_flight.insert(host.clone()) {
                    continue;
                }
                let lookup = self.shared.lookup.clone();
                let done_tx = done_tx.clone();
                // Detached: the answer comes back on `done`; a lookup still running when the task
                // is aborted ends on its own.
                drop(tokio::task::spawn_blocking(move || {
                    let answer = lookup(&host);
                    let _ = done_tx.send((host, answer));
                }));
            }
            tokio::select! {
                () = tokio::time::sleep_until(next_round) => {
                    let tracked = self.state().tracked.clone();
                    // Last first: `pop` takes from the end, so names go in sorted order.
                    queue = tracked
                        .into_iter()
                        .rev()
                        .filter(|host| !in_flight.contains(host))
                        .collect();
                    next_round = Instant::now() + rate;
                }
                Ok(()) = settings.changed() => {
                    rate = settings.borrow_and_update().refresh_rate;
                    next_round = next_round.min(Instant::now() + rate);
                }
                Some((host, answer)) = done.recv() => {
                    in_flight.remove(&host);
                    self.record(&host, answer);
                }
            }
        }
    }

    /// Takes a refresh answer: a changed usable answer replaces the known one and wakes the
    /// driver; a failed or unusable one keeps the last good answer and is counted.
    fn record(&self, host: &str, answer: io::Result<Vec<IpAddr>>) {
        let settings = self.shared.settings.borrow().clone();
        let reason = match answer {
            Ok(answer) if !settings.select(&answer).is_empty() => {
                let answer = normalize(answer);
                let mut state = self.state();
                if !state.tracked.contains(host) || state.known.get(host) == Some(&answer) {
                    return;
                }
                tracing::info!(host, addresses = ?settings.select(&answer), "upstream host name resolves to new addresses");
                state.known.insert(host.to_string(), answer);
                drop(state);
                self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
                return;
            }
            Ok(answer) if answer.is_empty() => "no address".to_string(),
            Ok(_) => "no address of the configured family".to_string(),
            Err(error) => error.to_string(),
        };
        if !self.state().tracked.contains(host) {
            return;
        }
        tracing::warn!(host, error = %reason, "cannot resolve an upstream host name: keeping its last good addresses");
        self.shared.failures.get_or_create(&labels(host)).inc();
    }
}

/// Looks every host up, [`MAX_CONCURRENT_LOOKUPS`] at a time on threads of their own (blocking):
/// a config with many new names, or a resolver that times out, costs one timeout per batch
/// rather than one per name.
fn lookup_all(lookup: &Lookup, hosts: Vec<String>) -> Vec<(String, io::Result<Vec<IpAddr>>)> {
    let mut answers = Vec::with_capacity(hosts.len());
    if hosts.len() <= 1 {
        answers.extend(hosts.into_iter().map(|host| {
            let answer = lookup(&host);
            (host, answer)
        }));
        return answers;
    }
    for batch in hosts.chunks(MAX_CONCURRENT_LOOKUPS) {
        std::thread::scope(|scope| {
            let running: Vec<_> = batch
                .iter()
                .map(|host| {
                    std::thread::Builder::new()
                        .name("weir-dns".into())
                        .spawn_scoped(scope, move || lookup(host))
                })
                .collect();
            for (host, thread) in batch.iter().zip(running) {
                let answer = match thread {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("the lookup panicked"))),
                    // No thread to spare: look it up here.
                    Err(_) => lookup(host),
                };
                answers.push((host.clone(), answer));
            }
        });
    }
    answers
}

/// Sorted, deduplicated, at most [`MAX_ANSWER`] addresses.
fn normalize(mut answer: Vec<IpAddr>) -> Vec<IpAddr> {
    answer.sort_unstable();
    answer.dedup();
    answer.truncate(MAX_ANSWER);
    answer
}

fn labels(host: &str) -> Vec<(&'static str, String)> {
    vec![("host", host.to_string())]
}

/// Every version of `model` with its field path (`services[0].stable`).
fn versions(model: &Model) -> impl Iterator<Item = (String, &Version)> {
    model.services.iter().enumerate().flat_map(|(i, service)| {
        std::iter::once((format!("services[{i}].stable"), &service.stable)).chain(
            service
                .canary
                .as_ref()
                .map(|c| (format!("services[{i}].canary"), &c.version)),
        )
    })
}

/// Every upstream of `model`.
fn upstreams(model: &Model) -> impl Iterator<Item = &Upstream> {
    model.services.iter().flat_map(|service| {
        std::iter::once(&service.stable)
            .chain(service.canary.as_ref().map(|c| &c.version))
            .flat_map(|v| v.upstreams.iter())
    })
}

/// The host names `model`'s upstreams use (with repeats).
fn hostnames(model: &Model) -> impl Iterator<Item = &str> {
    upstreams(model).filter_map(|u| u.hostname())
}

#[cfg(test)]
mod tests;
