//! The route table: one immutable snapshot of everything the data plane serves, and the channel that
//! publishes it.
//!
//! A [`RouteTable`] holds compiled host/path matchers, each service's arms (stable, and the canary,
//! which is also the blue-green preview), its ordered per-request rules ([`rules`]: header/cookie
//! routes → blue-green preview → sticky assignment → the exact weighted split, plus mirror routes),
//! per-version stats handles and the listeners' TLS configs. [`channel`] creates one `ArcSwap` and hands out its only
//! writer ([`Publisher`], not `Clone`) and any number of readers ([`Routes`]). A request loads the table
//! once and finishes on that snapshot whatever is published meanwhile.

mod build;
pub mod health;
pub(crate) mod matcher;
pub(crate) mod rewrite;
pub mod rules;
pub mod split;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use weir_config::{HeaderRoute, MirrorRoute, UpstreamOptions, Weight};

pub use self::build::{file_weight, BuildError, TlsMaterial};
use self::health::{ArmHealth, LazyNow, Outlier, UpstreamHealth};
use self::matcher::HostIndex;
use self::rules::{Affinity, HeaderRule, MirrorRule, PreviewRule};
pub use self::rules::{DecidedBy, RequestHead, RuleError};
use self::split::{Pick, Split};
use crate::stats::{MirrorDrops, VersionStats};

/// What the control plane decides for one service beyond the file: compiled into the table by
/// [`RouteTable::build`]. The data plane never decides any of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// The canary weight of the weighted split.
    pub weight: Weight,
    /// Header and cookie routes in force, in order: a matching request goes to the canary.
    pub header_routes: Vec<HeaderRoute>,
    /// Mirror routes in force: copies of matching requests go to the canary.
    pub mirror_routes: Vec<MirrorRoute>,
    /// A blue-green preview is up: the strategy's preview hosts, listener and headers reach the
    /// canary (otherwise they reach stable, like Argo's preview service without a new version).
    pub preview: bool,
}

impl From<Weight> for Policy {
    fn from(weight: Weight) -> Policy {
        Policy {
            weight,
            ..Policy::default()
        }
    }
}

/// One immutable snapshot of routes, weights, upstreams and certificates.
#[derive(Debug)]
pub struct RouteTable {
    generation: u64,
    /// Shared with the next table when no service's name, matcher or preview hosts moved.
    hosts: Arc<HostIndex>,
    /// Shared with the next table when its config and policy did not change (see
    /// [`RouteTable::build`]): a reload that changes one service rebuilds one route.
    services: Vec<Arc<ServiceRoute>>,
    /// Index of each service in `services` by name: [`RouteTable::service`] is called per
    /// service when the control plane builds its status, so a scan would be quadratic. Shared
    /// like `hosts`.
    by_name: Arc<std::collections::HashMap<Arc<str>, usize>>,
    /// The config and stats registry this table was built from, so that the next build can
    /// tell what did not change (`None` for [`RouteTable::empty`]).
    built_from: Option<build::BuiltFrom>,
    tls: Vec<ListenerTls>,
    /// Each listener's `trustedProxies`, by listener name (listeners that trust nobody omitted).
    trusted_proxies: Vec<(String, weir_config::TrustedProxies)>,
    /// Each listener's `redirect`, by listener name (listeners without one omitted).
    redirects: Vec<(String, rewrite::RedirectTo)>,
    /// The ACME challenge store, when a listener uses ACME (`crate::acme`).
    pub(crate) acme: Option<crate::acme::ChallengeStore>,
}

/// A compiled service.
#[derive(Debug)]
pub struct ServiceRoute {
    pub(crate) name: Arc<str>,
    pub(crate) split: Split,
    pub(crate) weight: Weight,
    pub(crate) stable: ArmRoute,
    pub(crate) canary: Option<ArmRoute>,
    pub(crate) options: UpstreamOptions,
    /// Protocols a client may switch to with `Upgrade` (`services[].upgrades`).
    pub(crate) upgrades: Box<[weir_config::UpgradeProtocol]>,
    /// The control plane's decisions this route was built from.
    pub(crate) policy: Policy,
    /// Header/cookie routes in force, in order (empty without a canary arm).
    pub(crate) header_rules: Box<[HeaderRule]>,
    /// The blue-green preview, for a `blueGreen` service.
    pub(crate) preview: Option<PreviewRule>,
    /// Sticky versions, if configured.
    pub(crate) affinity: Option<Affinity>,
    /// Mirror routes in force (empty without a canary arm).
    pub(crate) mirror_rules: Box<[MirrorRule]>,
    /// Where mirrored exchanges and dropped copies are counted (with mirror routes in force).
    pub(crate) mirror_stats: Option<MirrorStatsHandles>,
    /// Active health checks of the upstreams (`healthCheck`), run by the control plane.
    pub(crate) health_check: Option<weir_config::HealthCheck>,
    /// Response compression (`compression`), compiled.
    pub(crate) compression: Option<Box<crate::forward::compress::Policy>>,
    /// The rate limiter (`rateLimit`), carried across tables while its config is unchanged.
    pub(crate) rate_limit: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// `rewrite` and `headers`, compiled (`None` without either).
    pub(crate) ingress: Option<Box<rewrite::Ingress>>,
    /// The `Host` of weir's own requests to this service (`crate::forward::pinned`).
    pub(crate) pinned_host: HeaderValue,
}

/// The stats handles of a service's mirror traffic, resolved when the table is built.
#[derive(Debug, Clone)]
pub(crate) struct MirrorStatsHandles {
    /// Mirrored exchanges with the canary version.
    pub(crate) exchanges: Arc<VersionStats>,
    /// Copies not sent, by reason.
    pub(crate) drops: Arc<MirrorDrops>,
}

/// The arm a request goes to and how that was decided.
#[derive(Debug)]
pub struct Decision<'t> {
    /// The arm serving the request.
    pub arm: &'t ArmRoute,
    /// Whether that arm is the canary.
    pub canary: bool,
    /// The rule that decided.
    pub by: DecidedBy,
    /// A `Set-Cookie` value to add to the response (a sticky client seen for the first time).
    pub set_cookie: Option<HeaderValue>,
}

/// How many rules of each kind a route has in force (the `weir_route_rules` gauge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// Header/cookie routes.
    pub header: usize,
    /// Mirror routes.
    pub mirror: usize,
    /// 1 while a blue-green preview is up.
    pub preview: usize,
    /// 1 with session affinity configured.
    pub affinity: usize,
}

/// One version of a service: its upstreams and stats handle.
#[derive(Debug)]
pub struct ArmRoute {
    pub(crate) service: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) upstreams: Box<[UpstreamRoute]>,
    pub(crate) next_upstream: AtomicUsize,
    pub(crate) stats: Arc<VersionStats>,
    /// How weir speaks to the upstreams (`protocol`).
    pub(crate) protocol: weir_config::UpstreamProtocol,
    /// Passive outlier detection, when on and the version has two or more upstreams.
    pub(crate) outlier: Option<Outlier>,
    /// Fail-open bookkeeping, shared across tables.
    pub(crate) health: Arc<ArmHealth>,
}

/// One upstream address.
#[derive(Debug, Clone)]
pub struct UpstreamRoute {
    pub(crate) addr: std::net::SocketAddr,
    /// The upstream as written in the file (`HOST:PORT`): the health probe's default `Host`.
    pub(crate) name: Arc<str>,
    /// Ejection and probe state, shared with every table that keeps this address.
    pub(crate) health: Arc<UpstreamHealth>,
    /// TLS to this upstream (`protocol: h2`), `None` otherwise.
    pub(crate) tls: Option<Arc<crate::upstream::tls::UpstreamTls>>,
}

impl UpstreamRoute {
    /// The address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The upstream as written in the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its health state.
    pub fn health(&self) -> &Arc<UpstreamHealth> {
        &self.health
    }

    /// Whether `other` is secured the same way (the same TLS settings, or none for both).
    pub fn same_tls(&self, other: &UpstreamRoute) -> bool {
        match (&self.tls, &other.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A listener's TLS server config, kept with the PEM it was built from so that a table that changes
/// only weights reuses it.
#[derive(Debug)]
pub(crate) struct ListenerTls {
    pub(crate) listener: String,
    pub(crate) material: Arc<TlsMaterial>,
    pub(crate) config: Arc<rustls::ServerConfig>,
}

/// The write half: the only way to change what the data plane serves. Not `Clone`.
#[derive(Debug)]
pub struct Publisher {
    shared: Arc<ArcSwap<RouteTable>>,
}

/// The read half. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Routes {
    shared: Arc<ArcSwap<RouteTable>>,
}

/// Creates the route channel with an initial table (generation 1).
pub fn channel(mut initial: RouteTable) -> (Publisher, Routes) {
    initial.generation = 1;
    let shared = Arc::new(ArcSwap::from_pointee(initial));
    (
        Publisher {
            shared: shared.clone(),
        },
        Routes { shared },
    )
}

// === impl RouteTable ===

impl RouteTable {
    /// An empty table: every request gets 404.
    pub fn empty() -> RouteTable {
        RouteTable {
            generation: 0,
            hosts: Arc::default(),
            services: Vec::new(),
            by_name: Arc::default(),
            built_from: None,
            tls: Vec::new(),
            trusted_proxies: Vec::new(),
            redirects: Vec::new(),
            acme: None,
        }
    }

    /// The publish count that produced this table (1 for the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The service routed for `host` (no port, any case) and `path`.
    #[inline]
    pub fn route(&self, host: &str, path: &str) -> Option<&ServiceRoute> {
        self.route_target(host, path).map(|(service, _)| service)
    }

    /// The service routed for `host` and `path`, and whether `host` is one of its blue-green
    /// preview hosts.
    #[inline]
    pub fn route_target(&self, host: &str, path: &str) -> Option<(&ServiceRoute, bool)> {
        self.hosts
            .lookup_target(host, path)
            .and_then(|(idx, preview)| self.services.get(idx).map(|s| (&**s, preview)))
    }

    /// Every compiled service, in file order (a route is shared with the tables before and after
    /// it for as long as its config and policy do not change).
    pub fn services(&self) -> &[Arc<ServiceRoute>] {
        &self.services
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&ServiceRoute> {
        self.by_name
            .get(name)
            .and_then(|&idx| self.services.get(idx))
            .map(|s| &**s)
    }

    /// Whether `listener` trusts the forwarded headers of `peer` (`trustedProxies`).
    pub fn trusts(&self, listener: &str, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .find(|(name, _)| name == listener)
            .is_some_and(|(_, trusted)| trusted.contains(peer))
    }

    /// The listener's `redirect`, if it has one.
    pub(crate) fn redirect(&self, listener: &str) -> Option<&rewrite::RedirectTo> {
        self.redirects
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, redirect)| redirect)
    }

    /// The TLS server config of a listener, if it terminates TLS.
    pub fn tls(&self, listener: &str) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls
            .iter()
            .find(|t| t.listener == listener)
            .map(|t| &t.config)
    }
}

// === impl ServiceRoute ===

impl ServiceRoute {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The canary weight this table serves (0 without a canary).
    pub fn canary_weight(&self) -> Weight {
        self.weight
    }

    /// The policy (weight, header and mirror routes, preview) this route was built from; the
    /// weight in it is the one asked for, [`ServiceRoute::canary_weight`] the one served.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The stable arm.
    pub fn stable(&self) -> &ArmRoute {
        &self.stable
    }

    /// The canary arm, if configured.
    pub fn canary(&self) -> Option<&ArmRoute> {
        self.canary.as_ref()
    }

    /// The stable arm, then the canary arm if any.
    pub fn arms(&self) -> impl Iterator<Item = &ArmRoute> {
        std::iter::once(&self.stable).chain(self.canary.as_ref())
    }

    /// The active health check of its upstreams, if configured.
    pub fn health_check(&self) -> Option<&weir_config::HealthCheck> {
        self.health_check.as_ref()
    }

    /// The rate limiter (`rateLimit`), if configured.
    pub fn rate_limiter(&self) -> Option<&Arc<crate::ratelimit::RateLimiter>> {
        self.rate_limit.as_ref()
    }

    /// Picks the arm for a request by the rules, in order: header/cookie routes → blue-green
    /// preview → sticky assignment → the exact weighted split. Only requests that reach the split
    /// advance its sequence. Without a canary arm every request goes to stable.
    #[inline]
    pub fn pick(&self, head: &RequestHead<'_>) -> Decision<'_> {
        let Some(canary) = &self.canary else {
            return self.decide(false, DecidedBy::Split);
        };
        if self.header_rules.iter().any(|r| r.any_of.matches(head)) {
            return self.decide(true, DecidedBy::HeaderRoute);
        }
        if let Some(preview) = &self.preview {
            if preview.matches(head) {
                return self.decide(preview.active, DecidedBy::Preview);
            }
        }
        if let Some(affinity) = &self.affinity {
            if let Some((bucket, new)) = affinity.bucket(head.headers) {
                let mut decision =
                    self.decide(rules::sticky_canary(bucket, self.weight), DecidedBy::Sticky);
                if new {
                    decision.set_cookie = affinity.set_cookie(bucket, head.tls);
                }
                return decision;
            }
        }
        match self.split.pick() {
            Pick::Canary => Decision {
                arm: canary,
                canary: true,
                by: DecidedBy::Split,
                set_cookie: None,
            },
            Pick::Stable => self.decide(false, DecidedBy::Split),
        }
    }

    #[inline]
    fn decide(&self, canary: bool, by: DecidedBy) -> Decision<'_> {
        let (arm, canary) = match (&self.canary, canary) {
            (Some(arm), true) => (arm, true),
            _ => (&self.stable, false),
        };
        Decision {
            arm,
            canary,
            by,
            set_cookie: None,
        }
    }

    /// The mirror route deciding `head` is the first one that matches it; when its percentage takes
    /// this request, a copy goes to the canary (a later matching route is not tried). Requests
    /// served by the canary are never mirrored.
    #[inline]
    pub(crate) fn mirror(&self, head: &RequestHead<'_>, primary_canary: bool) -> Option<&ArmRoute> {
        if primary_canary || self.mirror_rules.is_empty() {
            return None;
        }
        let canary = self.canary.as_ref()?;
        let rule = self.mirror_rules.iter().find(|r| r.any_of.matches(head))?;
        rule.take().then_some(canary)
    }

    /// The rules in force, by kind.
    pub fn rule_counts(&self) -> RuleCounts {
        RuleCounts {
            header: self.header_rules.len(),
            mirror: self.mirror_rules.len(),
            preview: usize::from(self.preview.as_ref().is_some_and(|p| p.active)),
            affinity: usize::from(self.affinity.is_some()),
        }
    }
}

// === impl ArmRoute ===

impl ArmRoute {
    /// The version label.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The stats handle of this version.
    pub fn stats(&self) -> &Arc<VersionStats> {
        &self.stats
    }

    /// The upstream addresses.
    pub fn upstream_addrs(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        self.upstreams.iter().map(|u| u.addr)
    }

    /// How weir speaks to the upstreams (`protocol`).
    pub fn protocol(&self) -> weir_config::UpstreamProtocol {
        self.protocol
    }

    /// The upstreams, with their health.
    pub fn upstreams(&self) -> &[UpstreamRoute] {
        &self.upstreams
    }

    /// Fail-open bookkeeping of this version.
    pub fn health(&self) -> &Arc<ArmHealth> {
        &self.health
    }

    /// The upstream for the next request: round-robin over the available ones (neither ejected
    /// nor failed by their health check), with a scan bounded by the number of upstreams. When
    /// none is available the round-robin choice is used anyway (fail open, counted and logged).
    /// A version with one upstream reads nothing.
    #[inline]
    pub(crate) fn next_index(&self) -> usize {
        let n = self.upstreams.len();
        if n == 1 {
            return 0;
        }
        let start = self
            .next_upstream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % n;
        let mut now = LazyNow::default();
        for offset in 0..n {
            let idx = (start + offset) % n;
            if self.upstreams[idx].health.available(&mut now) {
                self.health.recovered(&self.service, &self.version);
                return idx;
            }
        }
        self.health.failed_open(&self.service, &self.version);
        start
    }

    /// The upstream to retry on after `attempt` tries starting at `first` (the request could not
    /// be sent there): the next available one in round-robin order, else the next one (fail
    /// open); `None` once every upstream was tried. Advances `attempt`.
    pub(crate) fn retry_index(&self, first: usize, attempt: &mut usize) -> Option<usize> {
        let n = self.upstreams.len();
        let mut now = LazyNow::default();
        let next = (*attempt + 1..n)
            .find(|&a| self.upstreams[(first + a) % n].health.available(&mut now))
            .or_else(|| (*attempt + 1 < n).then_some(*attempt + 1))?;
        *attempt = next;
        Some((first + next) % n)
    }

    /// Records how an exchange with upstream `idx` ended for outlier detection: `failed` for a
    /// connect failure or timeout, a broken exchange, no head in time, or a status ≥ 500. Never
    /// called for what a client caused. Free for a version with one upstream.
    #[inline]
    pub(crate) fn record_outcome(&self, idx: usize, failed: bool) {
        let (Some(outlier), Some(upstream)) = (&self.outlier, self.upstreams.get(idx)) else {
            return;
        };
        let mut now = LazyNow::default();
        if failed {
            upstream
                .health
                .record_failure(outlier, &self.upstreams, &mut now);
        } else {
            upstream.health.record_success(outlier, &mut now);
        }
    }
}

// === impl Publisher ===

impl Publisher {
    /// Makes `table` the one every new request sees; returns its generation.
    pub fn publish(&self, mut table: RouteTable) -> u64 {
        table.generation = self.shared.load().generation + 1;
        let generation = table.generation;
        self.shared.store(Arc::new(table));
        generation
    }

    /// The table currently served.
    pub fn current(&self) -> Arc<RouteTable> {
        self.shared.load_full()
    }

    /// A reader of the same channel.
    pub fn routes(&self) -> Routes {
        Routes {
            shared: self.shared.clone(),
        }
    }
}

// === impl Routes ===

impl Routes {
    /// The table currently served.
    pub fn current(&self) -> Arc<RouteTable> {
        self.shared.load_full()
    }

    /// A per-worker cache: loading through it costs one atomic read when nothing changed.
    pub(crate) fn cache(&self) -> arc_swap::Cache<Arc<ArcSwap<RouteTable>>, Arc<RouteTable>> {
        arc_swap::Cache::new(self.shared.clone())
    }
}

#[cfg(test)]
mod tests;
