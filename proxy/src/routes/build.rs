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

// === impl RouteTable ===

impl RouteTable {
    /// Compiles `model` into a table.
    ///
    /// - `policies` gives the control plane's decisions per service name (weight, header and
    ///   mirror routes, preview); a service not in it gets its file weight (`canary.weight`, or 0)
    ///   and no routes.
    /// - `tls` gives each TLS listener's PEM material by listener name.
    /// - `previous` is the table being replaced: split sequences carry over (so splits stay exact
    ///   across swaps) and TLS configs built from identical material are reused.
    /// - Stats handles come from `stats`; versions no longer configured are dropped from it.
    pub fn build(
        model: &Model,
        policies: &BTreeMap<String, Policy>,
        tls: &BTreeMap<String, TlsMaterial>,
        stats: &Stats,
        previous: &RouteTable,
    ) -> Result<RouteTable, BuildError> {
        let previous_health = PreviousHealth::of(previous);
        let previous_sequences: HashMap<&str, &Arc<AtomicU64>> = previous
            .services
            .iter()
            .filter_map(|s| match &s.split {
                Split::Weighted { sequence, .. } => Some((&*s.name, sequence)),
                _ => None,
            })
            .collect();
        let previous_mirrors: HashMap<(&str, &str), &Arc<AtomicU64>> = previous
            .services
            .iter()
            .flat_map(|s| {
                s.mirror_rules
                    .iter()
                    .filter_map(move |r| r.sequence().map(|seq| ((&*s.name, &*r.name), seq)))
            })
            .collect();

        let mut hosts = HostIndex::default();
        let mut services = Vec::with_capacity(model.services.len());
        for (idx, service) in model.services.iter().enumerate() {
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
            for pattern in &service.matcher.hosts {
                hosts.insert(pattern, &service.matcher.path_prefix, idx);
            }
            let blue_green = service.strategy.as_ref().and_then(|s| s.blue_green());
            if let Some(blue_green) = blue_green {
                for pattern in &blue_green.preview.hosts {
                    hosts.insert_target(pattern, &service.matcher.path_prefix, idx, true);
                }
            }
            let policy = policies
                .get(&service.name)
                .cloned()
                .unwrap_or_else(|| Policy::from(file_weight(service)));
            let weight = policy.weight;
            let sequence = previous_sequences
                .get(service.name.as_str())
                .map(|s| Arc::clone(s))
                .unwrap_or_default();
            let canary = service
                .canary
                .as_ref()
                .map(|c| arm(stats, service, &c.version, &previous_health));
            let weight = if canary.is_some() {
                weight
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
            services.push(ServiceRoute {
                name: Arc::from(service.name.as_str()),
                split: Split::new(weight, has_canary, sequence),
                weight,
                stable: arm(stats, service, &service.stable, &previous_health),
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
            });
        }
        hosts.finish();

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
                    let config = tls::server_config(&material.certificates).map_err(|source| {
                        BuildError::Tls {
                            listener: listener.name.clone(),
                            source,
                        }
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

        // The first of duplicate names wins, as a scan would (validation rejects duplicates).
        let mut by_name = HashMap::with_capacity(services.len());
        for (idx, service) in services.iter().enumerate() {
            by_name.entry(Arc::clone(&service.name)).or_insert(idx);
        }
        Ok(RouteTable {
            generation: 0,
            hosts,
            services,
            by_name,
            tls: listeners_tls,
            trusted_proxies: model
                .listeners
                .iter()
                .filter(|l| !l.trusted_proxies.is_empty())
                .map(|l| (l.name.clone(), l.trusted_proxies.clone()))
                .collect(),
        })
    }
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
) -> ArmRoute {
    let service_name: Arc<str> = Arc::from(service.name.as_str());
    let version_name: Arc<str> = Arc::from(version.version.as_str());
    let outlier = Outlier::compile(&service.outlier_detection);
    let mut seen = HashSet::new();
    let upstreams: Box<[UpstreamRoute]> = version
        .upstreams
        .iter()
        .flat_map(|u| u.addrs.iter().map(move |addr| (u, *addr)))
        .filter(|(_, addr)| seen.insert(*addr))
        .map(|(u, addr)| {
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
            UpstreamRoute {
                addr,
                name: Arc::from(u.name.as_str()),
                health,
            }
        })
        .collect();
    let health = previous
        .arms
        .get(&(service.name.as_str(), version.version.as_str()))
        .map(|&h| Arc::clone(h))
        .unwrap_or_default();
    ArmRoute {
        service: service_name,
        version: version_name,
        outlier: outlier.filter(|_| upstreams.len() > 1),
        upstreams,
        next_upstream: AtomicUsize::new(0),
        stats: stats.handle(&service.name, &version.version),
        health,
    }
}

#[cfg(test)]
mod fuzz;
