//! Model + weights → [`RouteTable`]: compiles matchers and splits, attaches stats handles, builds TLS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use std::net::SocketAddr;

use weir_config::{Model, Service, Weight};

use super::health::{ArmHealth, Outlier, UpstreamHealth};

use super::matcher::HostIndex;
use super::rules::{Affinity, Cond, HeaderRule, MirrorRule, PreviewRule, RuleError};
use super::split::Split;
use super::{
    ArmRoute, ListenerTls, MirrorStatsHandles, Policy, RouteTable, ServiceRoute, UpstreamRoute,
};
use crate::stats::Stats;
use crate::tls::{self, CertificatePem};

/// The PEM contents of one TLS listener's certificates, in SNI-default order. The data plane never
/// reads files: the control plane reads them and hands them over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// Certificates; the first is the default.
    pub certificates: Vec<CertificatePem>,
    /// The ACME challenge store, on every TLS listener when some listener uses `tls.acme`
    /// (tls-alpn-01 is answered from it; the table also answers http-01 from it on plain
    /// listeners).
    pub acme: Option<crate::acme::ChallengeStore>,
}

/// Why a table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A TLS listener's material is missing or unusable.
    #[error("listener {listener:?}: {source}")]
    Tls {
        /// The listener name.
        listener: String,
        /// What went wrong.
        #[source]
        source: tls::TlsError,
    },
    /// A header route, mirror route, preview or affinity rule does not compile (validation rejects
    /// these configs first).
    #[error("service {service:?}: {source}")]
    Rule {
        /// The service name.
        service: String,
        /// What went wrong.
        #[source]
        source: RuleError,
    },
    /// A TLS listener was given no certificate material.
    #[error("listener {listener:?}: no certificate material was loaded")]
    MissingTls {
        /// The listener name.
        listener: String,
    },
    /// A `protocol: h2` version's TLS settings cannot be used (a CA file that is not loaded or
    /// not a CA, a server name rustls refuses).
    #[error("service {service:?} version {version:?}: upstream TLS: {source}")]
    UpstreamTls {
        /// The service name.
        service: String,
        /// The version label.
        version: String,
        /// What went wrong.
        #[source]
        source: Box<crate::upstream::tls::UpstreamTlsError>,
    },
    /// None of a version's upstreams has an address (host names that were never resolved: the
    /// control plane resolves them before it builds a table).
    #[error(
        "service {service:?} version {version:?}: no upstream address (unresolved host names)"
    )]
    NoAddress {
        /// The service name.
        service: String,
        /// The version label.
        version: String,
    },
}

/// What a table was built from: the next build compares its config with this one's to reuse
/// the routes, host index and name index that did not change.
#[derive(Debug)]
pub(crate) struct BuiltFrom {
    model: Arc<Model>,
    stats: Stats,
}

// === impl RouteTable ===

impl RouteTable {
    /// Compiles `model` into a table. Like [`RouteTable::build_shared`], after cloning `model`
    /// (which the table keeps); the control plane calls `build_shared` with the `Arc` it holds.
    pub fn build(
        model: &Model,
        policies: &BTreeMap<String, Policy>,
        tls: &BTreeMap<String, TlsMaterial>,
        stats: &Stats,
        previous: &RouteTable,
    ) -> Result<RouteTable, BuildError> {
        RouteTable::build_shared(&Arc::new(model.clone()), policies, tls, stats, previous)
    }

    /// Compiles `model` into a table.
    ///
    /// - `policies` gives the control plane's decisions per service name (weight, header and
    ///   mirror routes, preview); a service not in it gets its file weight (`canary.weight`, or 0)
    ///   and no routes.
    /// - `tls` gives each TLS listener's PEM material by listener name.
    /// - `previous` is the table being replaced: split sequences carry over (so splits stay exact
    ///   across swaps) and TLS configs built from identical material are reused. A service whose
    ///   config (the whole `services[]` entry) and policy are equal to the ones `previous` was
    ///   built from keeps its compiled route: the same `Arc<ServiceRoute>`, so the same arms,
    ///   stats handles, rules and counters, and nothing allocated for it. The host and name
    ///   indexes are shared too while no service's name, order, matcher or preview hosts changed.
    ///   A reload that changes nothing, or one service, therefore rebuilds nothing, or one route.
    /// - Stats handles come from `stats`; versions no longer configured are dropped from it.
    ///   Routes are reused only from a table built with the same `stats`.
    ///
    /// The table keeps `model` (an `Arc`, shared with the caller) for the next build's comparison.
    pub fn build_shared(
        model: &Arc<Model>,
        policies: &BTreeMap<String, Policy>,
        tls: &BTreeMap<String, TlsMaterial>,
        stats: &Stats,
        previous: &RouteTable,
    ) -> Result<RouteTable, BuildError> {
        // The previous config, when its routes can be reused (built over the same registry).
        let reusable = previous
            .built_from
            .as_ref()
            .filter(|from| from.stats.same_registry(stats))
            .map(|from| &*from.model);
        let mut same_layout =
            reusable.is_some_and(|before| before.services.len() == model.services.len());

        let mut previous_sequences: Option<HashMap<&str, &Arc<AtomicU64>>> = None;
        let mut previous_mirrors: Option<HashMap<(&str, &str), &Arc<AtomicU64>>> = None;
        let mut previous_health: Option<PreviousHealth<'_>> = None;
        let mut services = Vec::with_capacity(model.services.len());
        for (idx, service) in model.services.iter().enumerate() {
            let file_policy;
            let policy = match policies.get(&service.name) {
                Some(policy) => policy,
                None => {
                    file_policy = Policy::from(file_weight(service));
                    &file_policy
                }
            };
            if same_layout {
                same_layout = reusable
                    .and_then(|before| before.services.get(idx))
                    .is_some_and(|before| same_place(before, service));
            }
            let unchanged = reusable.and_then(|before| {
                let &at = previous.by_name.get(service.name.as_str())?;
                let route = previous.services.get(at)?;
                (before.services.get(at)? == service && route.policy == *policy).then_some(route)
            });
            if let Some(route) = unchanged {
                services.push(Arc::clone(route));
                continue;
            }
            let sequences = previous_sequences.get_or_insert_with(|| sequences_of(previous));
            let mirrors = previous_mirrors.get_or_insert_with(|| mirror_sequences_of(previous));
            let health = previous_health.get_or_insert_with(|| PreviousHealth::of(previous));
            let mut route = compile(service, policy.clone(), stats, sequences, mirrors, health)?;
            route.rate_limit = crate::ratelimit::RateLimiter::carry(
                service.rate_limit.as_ref(),
                previous
                    .service(&service.name)
                    .and_then(|s| s.rate_limit.as_ref()),
            );
            services.push(Arc::new(route));
        }

        let (hosts, by_name) = if same_layout {
            (Arc::clone(&previous.hosts), Arc::clone(&previous.by_name))
        } else {
            (Arc::new(host_index(model)), Arc::new(name_index(&services)))
        };

        let mut listeners_tls = Vec::new();
        for listener in model.listeners.iter().filter(|l| l.tls.is_some()) {
            let material = tls
                .get(&listener.name)
                .ok_or_else(|| BuildError::MissingTls {
                    listener: listener.name.clone(),
                })?;
            let reused = previous
                .tls
                .iter()
                .find(|t| t.listener == listener.name && *t.material == *material);
            let (material, config) = match reused {
                Some(t) => (t.material.clone(), t.config.clone()),
                None => {
                    let config =
                        tls::server_config_with(&material.certificates, material.acme.as_ref())
                            .map_err(|source| BuildError::Tls {
                                listener: listener.name.clone(),
                                source,
                            })?;
                    (Arc::new(material.clone()), config)
                }
            };
            listeners_tls.push(ListenerTls {
                listener: listener.name.clone(),
                material,
                config,
            });
        }

        // A set, not a scan of the services per version: with 10,000 services the scan was
        // 200 million comparisons per reload.
        let configured: HashSet<(&str, &str)> = model
            .services
            .iter()
            .flat_map(|s| {
                std::iter::once(&s.stable)
                    .chain(s.canary.as_ref().map(|c| &c.version))
                    .map(|v| (s.name.as_str(), v.version.as_str()))
            })
            .collect();
        stats.retain(|service, version| configured.contains(&(service, version)));

        // One store per process: any ACME listener's (http-01 is answered on plain listeners).
        let acme = tls.values().find_map(|m| m.acme.clone());
        Ok(RouteTable {
            acme,
            generation: 0,
            hosts,
            services,
            by_name,
            built_from: Some(BuiltFrom {
                model: Arc::clone(model),
                stats: stats.clone(),
            }),
            tls: listeners_tls,
            trusted_proxies: model
                .listeners
                .iter()
                .filter(|l| !l.trusted_proxies.is_empty())
                .map(|l| (l.name.clone(), l.trusted_proxies.clone()))
                .collect(),
            redirects: model
                .listeners
                .iter()
                .filter_map(|l| {
                    let redirect = l.redirect.as_ref()?;
                    Some((
                        l.name.clone(),
                        super::rewrite::RedirectTo::compile(redirect, l.tls.is_some()),
                    ))
                })
                .collect(),
        })
    }

    /// How many of this table's routes are shared with `other` (the same compiled route).
    pub fn shared_routes(&self, other: &RouteTable) -> usize {
        let theirs: HashSet<*const ServiceRoute> = other.services.iter().map(Arc::as_ptr).collect();
        self.services
            .iter()
            .filter(|s| theirs.contains(&Arc::as_ptr(s)))
            .count()
    }
}

/// Whether `service` takes the same place in the host and name indexes as `before` did at the
/// same position: same name, matcher and blue-green preview hosts.
fn same_place(before: &Service, service: &Service) -> bool {
    fn preview_hosts(service: &Service) -> Option<&[weir_config::HostPattern]> {
        service
            .strategy
            .as_ref()
            .and_then(|s| s.blue_green())
            .map(|bg| bg.preview.hosts.as_slice())
    }
    before.name == service.name
        && before.matcher == service.matcher
        && preview_hosts(before) == preview_hosts(service)
}

/// Each weighted service's split sequence in `previous`, by name.
fn sequences_of(previous: &RouteTable) -> HashMap<&str, &Arc<AtomicU64>> {
    previous
        .services
        .iter()
        .filter_map(|s| match &s.split {
            Split::Weighted { sequence, .. } => Some((&*s.name, sequence)),
            _ => None,
        })
        .collect()
}

/// Each mirror route's sequence in `previous`, by (service, route) name.
fn mirror_sequences_of(previous: &RouteTable) -> HashMap<(&str, &str), &Arc<AtomicU64>> {
    previous
        .services
        .iter()
        .flat_map(|s| {
            s.mirror_rules
                .iter()
                .filter_map(move |r| r.sequence().map(|seq| ((&*s.name, &*r.name), seq)))
        })
        .collect()
}

/// The host index of `model`: each service's hosts and blue-green preview hosts.
fn host_index(model: &Model) -> HostIndex {
    let mut hosts = HostIndex::default();
    for (idx, service) in model.services.iter().enumerate() {
        for pattern in &service.matcher.hosts {
            hosts.insert(pattern, &service.matcher.path_prefix, idx);
        }
        if let Some(blue_green) = service.strategy.as_ref().and_then(|s| s.blue_green()) {
            for pattern in &blue_green.preview.hosts {
                hosts.insert_target(pattern, &service.matcher.path_prefix, idx, true);
            }
        }
    }
    hosts.finish();
    hosts
}

/// Each service's position by name; the first of duplicate names wins, as a scan would
/// (validation rejects duplicates).
fn name_index(services: &[Arc<ServiceRoute>]) -> HashMap<Arc<str>, usize> {
    let mut by_name = HashMap::with_capacity(services.len());
    for (idx, service) in services.iter().enumerate() {
        by_name.entry(Arc::clone(&service.name)).or_insert(idx);
    }
    by_name
}

/// Compiles one service's route with `policy`, carrying its split and mirror sequences over.
fn compile(
    service: &Service,
    policy: Policy,
    stats: &Stats,
    previous_sequences: &HashMap<&str, &Arc<AtomicU64>>,
    previous_mirrors: &HashMap<(&str, &str), &Arc<AtomicU64>>,
    previous_health: &PreviousHealth<'_>,
) -> Result<ServiceRoute, BuildError> {
    let versions =
        std::iter::once(&service.stable).chain(service.canary.as_ref().map(|c| &c.version));
    for version in versions {
        if version.upstreams.iter().all(|u| u.addrs.is_empty()) {
            return Err(BuildError::NoAddress {
                service: service.name.clone(),
                version: version.version.clone(),
            });
        }
    }
    let blue_green = service.strategy.as_ref().and_then(|s| s.blue_green());
    let sequence = previous_sequences
        .get(service.name.as_str())
        .map(|s| Arc::clone(s))
        .unwrap_or_default();
    let stable = arm(stats, service, &service.stable, previous_health)?;
    let canary = service
        .canary
        .as_ref()
        .map(|c| arm(stats, service, &c.version, previous_health))
        .transpose()?;
    let weight = if canary.is_some() {
        policy.weight
    } else {
        Weight::ZERO
    };
    let rule_error = |source| BuildError::Rule {
        service: service.name.clone(),
        source,
    };
    let has_canary = canary.is_some();
    let header_rules = if has_canary {
        policy
            .header_routes
            .iter()
            .filter(|r| !r.any_of.is_empty())
            .map(HeaderRule::compile)
            .collect::<Result<Box<_>, _>>()
            .map_err(rule_error)?
    } else {
        Box::default()
    };
    let mirror_rules = if has_canary {
        policy
            .mirror_routes
            .iter()
            .filter(|r| !r.any_of.is_empty())
            .map(|r| {
                let sequence = previous_mirrors
                    .get(&(service.name.as_str(), r.name.as_str()))
                    .map(|s| Arc::clone(s))
                    .unwrap_or_default();
                MirrorRule::compile(r, sequence)
            })
            .collect::<Result<Box<_>, _>>()
            .map_err(rule_error)?
    } else {
        Box::default()
    };
    let preview = blue_green
        .map(|bg| -> Result<PreviewRule, RuleError> {
            Ok(PreviewRule {
                active: policy.preview,
                listener: bg.preview.listener.as_deref().map(Into::into),
                headers: bg
                    .preview
                    .headers
                    .iter()
                    .map(Cond::compile)
                    .collect::<Result<_, _>>()?,
            })
        })
        .transpose()
        .map_err(rule_error)?;
    let affinity = service
        .session_affinity
        .as_ref()
        .map(|a| Affinity::compile(&a.key, a.max_age))
        .transpose()
        .map_err(rule_error)?;
    let mirror_stats = match (&service.canary, mirror_rules.is_empty()) {
        (Some(c), false) => Some(MirrorStatsHandles {
            exchanges: stats.mirror_handle(&service.name, &c.version.version),
            drops: stats.mirror_drops(&service.name),
        }),
        _ => None,
    };
    Ok(ServiceRoute {
        // The stats registry's interned label: one allocation per service name, not per table.
        name: Arc::clone(stable.stats.service_label()),
        split: Split::new(weight, has_canary, sequence),
        weight,
        stable,
        canary,
        options: service.upstream.clone(),
        upgrades: service.upgrades.clone().into(),
        policy,
        header_rules,
        preview,
        affinity,
        mirror_rules,
        mirror_stats,
        health_check: service.health_check.clone(),
        compression: service
            .compression
            .as_ref()
            .map(|c| Box::new(crate::forward::compress::Policy::new(c))),
        rate_limit: None,
        ingress: super::rewrite::Ingress::compile(service),
        pinned_host: crate::forward::pinned::host_of(service),
    })
}

/// The weight the file gives a service's canary (0 without one).
pub fn file_weight(service: &Service) -> Weight {
    service
        .canary
        .as_ref()
        .and_then(|c| c.weight)
        .unwrap_or(Weight::ZERO)
}

/// The health states of the table being replaced, by (service, version, address) and by
/// (service, version): an address still configured keeps its ejection and probe state.
struct PreviousHealth<'t> {
    upstreams: HashMap<(&'t str, &'t str, SocketAddr), &'t Arc<UpstreamHealth>>,
    arms: HashMap<(&'t str, &'t str), &'t Arc<ArmHealth>>,
    /// The upstream TLS settings in use, reused while unchanged.
    tls: crate::upstream::tls::TlsReuse,
}

impl<'t> PreviousHealth<'t> {
    fn of(previous: &'t RouteTable) -> Self {
        let arms = || previous.services.iter().flat_map(|s| s.arms());
        PreviousHealth {
            upstreams: arms()
                .flat_map(|a| {
                    a.upstreams
                        .iter()
                        .map(move |u| ((&*a.service, &*a.version, u.addr), &u.health))
                })
                .collect(),
            arms: arms()
                .map(|a| ((&*a.service, &*a.version), &a.health))
                .collect(),
            tls: crate::upstream::tls::TlsReuse::of(previous),
        }
    }
}

/// A version's arm: one endpoint per address of its upstreams (a host name stands for every
/// address it resolved to), each address once. Never empty: `build` checks first.
fn arm(
    stats: &Stats,
    service: &Service,
    version: &weir_config::Version,
    previous: &PreviousHealth<'_>,
) -> Result<ArmRoute, BuildError> {
    let stats = stats.handle(&service.name, &version.version);
    // Interned: the stats handle's labels, not allocated per table.
    let service_name: Arc<str> = Arc::clone(stats.service_label());
    let version_name: Arc<str> = Arc::clone(stats.version_label());
    let outlier = Outlier::compile(&service.outlier_detection);
    let mut seen = HashSet::new();
    let tls_error = |source| BuildError::UpstreamTls {
        service: service.name.clone(),
        version: version.version.clone(),
        source: Box::new(source),
    };
    let upstreams: Box<[UpstreamRoute]> = version
        .upstreams
        .iter()
        .flat_map(|u| u.addrs.iter().map(move |addr| (u, *addr)))
        .filter(|(_, addr)| seen.insert(*addr))
        .map(|(u, addr)| {
            let tls = previous
                .tls
                .upstream(version.tls.as_ref(), u)
                .map_err(tls_error)?;
            let key = (service.name.as_str(), version.version.as_str(), addr);
            let health = match previous.upstreams.get(&key) {
                Some(&health) => {
                    if outlier.is_none() {
                        health.clear_ejection();
                    }
                    if service.health_check.is_none() {
                        health.set_probe_healthy(true);
                    }
                    Arc::clone(health)
                }
                None => Arc::new(UpstreamHealth::new(
                    service_name.clone(),
                    version_name.clone(),
                    addr,
                )),
            };
            Ok(UpstreamRoute {
                addr,
                name: Arc::from(u.name.as_str()),
                health,
                tls,
            })
        })
        .collect::<Result<_, BuildError>>()?;
    let health = previous
        .arms
        .get(&(service.name.as_str(), version.version.as_str()))
        .map(|&h| Arc::clone(h))
        .unwrap_or_default();
    Ok(ArmRoute {
        service: service_name,
        version: version_name,
        outlier: outlier.filter(|_| upstreams.len() > 1),
        upstreams,
        next_upstream: AtomicUsize::new(0),
        stats,
        protocol: version.protocol,
        health,
    })
}

#[cfg(test)]
mod fuzz;
