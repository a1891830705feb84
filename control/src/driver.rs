//! The driver: the single task that owns the route table's [`Publisher`]. Config reloads (and, with
//! rollouts, every weight change) pass through its one event loop, so they can never race.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, watch};
use weir_config::{Model, Weight};
use weir_proxy::routes::TlsMaterial;
use weir_proxy::{Publisher, RouteTable, Stats};

use crate::reload::{Loaded, ReloadCounter};

/// The driver's state.
pub struct Driver {
    publisher: Publisher,
    stats: Stats,
    model: Model,
    tls: BTreeMap<String, TlsMaterial>,
    reloads: ReloadCounter,
    generation: watch::Sender<u64>,
}

/// Why a table could not be built and published.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PublishError(#[from] weir_proxy::routes::BuildError);

// === impl Driver ===

impl Driver {
    /// Builds the first table from `loaded` and creates the route channel.
    pub fn new(
        loaded: Loaded,
        stats: Stats,
        reloads: ReloadCounter,
    ) -> Result<(Driver, weir_proxy::Routes), PublishError> {
        let weights = file_weights(&loaded.model);
        let table = RouteTable::build(&loaded.model, &weights, &loaded.tls, &stats, &RouteTable::empty())?;
        let (publisher, routes) = weir_proxy::channel(table);
        let (generation, _) = watch::channel(1);
        Ok((
            Driver {
                publisher,
                stats,
                model: loaded.model,
                tls: loaded.tls,
                reloads,
                generation,
            },
            routes,
        ))
    }

    /// The published table's generation, updated on every publish.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Applies a reloaded config: builds and publishes its table, or keeps the current one.
    pub fn apply(&mut self, loaded: Loaded) {
        if loaded.model.listeners != self.model.listeners {
            tracing::warn!("listener addresses changed: the new listeners take effect after a restart; certificates and routes apply now");
        }
        if loaded.model.admin != self.model.admin {
            tracing::warn!("admin settings changed: they take effect after a restart");
        }
        let weights = file_weights(&loaded.model);
        match self.publish(&loaded.model, &loaded.tls, &weights) {
            Ok(generation) => {
                self.model = loaded.model;
                self.tls = loaded.tls;
                self.reloads.get_or_create(&vec![("result", "success")]).inc();
                tracing::info!(generation, services = self.model.services.len(), "config applied");
            }
            Err(error) => {
                self.reloads.get_or_create(&vec![("result", "failure")]).inc();
                tracing::error!(%error, "config rejected; the last good config keeps serving");
            }
        }
    }

    fn publish(
        &self,
        model: &Model,
        tls: &BTreeMap<String, TlsMaterial>,
        weights: &BTreeMap<String, Weight>,
    ) -> Result<u64, PublishError> {
        let current = self.publisher.current();
        let table = RouteTable::build(model, weights, tls, &self.stats, &current)?;
        let generation = self.publisher.publish(table);
        self.generation.send_replace(generation);
        Ok(generation)
    }

    /// Runs until `configs` closes.
    pub async fn run(mut self, mut configs: mpsc::Receiver<Box<Loaded>>) {
        while let Some(loaded) = configs.recv().await {
            self.apply(*loaded);
        }
    }
}

/// Each service's file-configured canary weight.
fn file_weights(model: &Model) -> BTreeMap<String, Weight> {
    model
        .services
        .iter()
        .map(|s| (s.name.clone(), weir_proxy::routes::file_weight(s)))
        .collect()
}
