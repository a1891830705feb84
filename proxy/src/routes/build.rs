//! Model + weights → [`RouteTable`]: compiles matchers and splits, attaches stats handles, builds TLS.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use weir_config::{Model, Service, Weight};

use super::matcher::HostIndex;
use super::split::Split;
use super::{ArmRoute, ListenerTls, Policy, RouteTable, ServiceRoute, UpstreamRoute};
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
    /// A TLS listener was given no certificate material.
    #[error("listener {listener:?}: no certificate material was loaded")]
    MissingTls {
        /// The listener name.
        listener: String,
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
        let previous_sequences: HashMap<&str, &Arc<AtomicU64>> = previous
            .services
            .iter()
            .filter_map(|s| match &s.split {
                Split::Weighted { sequence, .. } => Some((&*s.name, sequence)),
                _ => None,
            })
            .collect();

        let mut hosts = HostIndex::default();
        let mut services = Vec::with_capacity(model.services.len());
        for (idx, service) in model.services.iter().enumerate() {
            for pattern in &service.matcher.hosts {
                hosts.insert(pattern, &service.matcher.path_prefix, idx);
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
                .map(|c| arm(stats, service, &c.version));
            let weight = if canary.is_some() {
                weight
            } else {
                Weight::ZERO
            };
            services.push(ServiceRoute {
                name: Arc::from(service.name.as_str()),
                split: Split::new(weight, canary.is_some(), sequence),
                weight,
                stable: arm(stats, service, &service.stable),
                canary,
                options: service.upstream.clone(),
                policy,
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

        stats.retain(|service, version| {
            model.services.iter().any(|s| {
                s.name == service
                    && (s.stable.version == version
                        || s.canary
                            .as_ref()
                            .is_some_and(|c| c.version.version == version))
            })
        });

        Ok(RouteTable {
            generation: 0,
            hosts,
            services,
            tls: listeners_tls,
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

fn arm(stats: &Stats, service: &Service, version: &weir_config::Version) -> ArmRoute {
    ArmRoute {
        version: Arc::from(version.version.as_str()),
        upstreams: version
            .upstreams
            .iter()
            .map(|u| UpstreamRoute { addr: u.addr })
            .collect(),
        next_upstream: AtomicUsize::new(0),
        stats: stats.handle(&service.name, &version.version),
    }
}
