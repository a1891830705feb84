//! Active health checks (`services[].healthCheck`): one tokio task per upstream address of every
//! version of every service that asks for them, probing `GET path` every `interval`.
//!
//! A probe's verdict flips the upstream's shared [`UpstreamHealth`] atomic, which the data plane
//! reads when it picks an upstream: no route table is rebuilt per probe, and nothing runs on the
//! driver's loop. After every publish the set of probes is reconciled with the table: probes of
//! removed upstreams (or of a changed `healthCheck`) stop, new ones start. An upstream fails after
//! `unhealthyThreshold` failed probes in a row (no connection, no response head within `timeout`,
//! or a status outside `expectedStatuses`) and is back after `healthyThreshold` passed probes in a
//! row; a new upstream starts healthy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use weir_config::{HealthCheck, UpstreamProtocol};
use weir_proxy::routes::UpstreamRoute;
use weir_proxy::{RouteTable, Routes};

/// (service, version, address).
type Key = (Arc<str>, Arc<str>, SocketAddr);

/// A running probe; stops when dropped.
struct Probe {
    target: Target,
    task: tokio::task::AbortHandle,
}

/// What one probe asks of whom, and how it speaks to it.
#[derive(Clone)]
struct Target {
    check: HealthCheck,
    host: String,
    upstream: UpstreamRoute,
    protocol: UpstreamProtocol,
}

impl Target {
    /// Whether `self` probes exactly like `other` (same check, host, health state and transport).
    fn same(&self, other: &Target) -> bool {
        self.check == other.check
            && self.host == other.host
            && self.protocol == other.protocol
            && Arc::ptr_eq(self.upstream.health(), other.upstream.health())
            && self.upstream.same_tls(&other.upstream)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The probes in force, reconciled with each published table.
#[derive(Default)]
pub struct Checker {
    probes: HashMap<Key, Probe>,
}

impl Checker {
    /// How many probes run.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// Whether no probe runs.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// Starts the probes `table` asks for that do not run yet, and stops those it no longer has.
    /// Must run inside a tokio runtime.
    pub fn reconcile(&mut self, table: &RouteTable) {
        let mut wanted: HashMap<Key, Target> = HashMap::new();
        for service in table.services() {
            let Some(check) = service.health_check() else {
                continue;
            };
            for arm in service.arms() {
                for upstream in arm.upstreams() {
                    let key = (
                        Arc::from(service.name()),
                        Arc::from(arm.version()),
                        upstream.addr(),
                    );
                    let host = check
                        .host
                        .clone()
                        .unwrap_or_else(|| upstream.name().to_string());
                    let target = Target {
                        check: check.clone(),
                        host,
                        upstream: upstream.clone(),
                        protocol: arm.protocol(),
                    };
                    wanted.insert(key, target);
                }
            }
        }
        self.probes.retain(|key, probe| {
            wanted
                .get(key)
                .is_some_and(|target| target.same(&probe.target))
        });
        for (key, target) in wanted {
            if self.probes.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(probe_loop(target.clone()));
            self.probes.insert(
                key,
                Probe {
                    target,
                    task: task.abort_handle(),
                },
            );
        }
    }
}

/// Keeps the probes in step with the published tables until `generation` closes (or the task is
/// aborted); every probe stops with it.
pub async fn run(routes: Routes, mut generation: watch::Receiver<u64>) {
    let mut checker = Checker::default();
    loop {
        generation.borrow_and_update();
        checker.reconcile(&routes.current());
        if generation.changed().await.is_err() {
            return;
        }
    }
}

/// Probes one upstream every `interval` and flips its health after the thresholds.
async fn probe_loop(target: Target) {
    let Target {
        check,
        host,
        upstream,
        protocol,
    } = target;
    let health = Arc::clone(upstream.health());
    let addr = health.addr();
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passed_in_row, mut failed_in_row) = (0u32, 0u32);
    loop {
        interval.tick().await;
        match probe(&upstream, protocol, &check, &host).await {
            Ok(()) => {
                failed_in_row = 0;
                passed_in_row = passed_in_row.saturating_add(1);
                if !health.probe_healthy()
                    && passed_in_row >= check.healthy_threshold
                    && health.set_probe_healthy(true)
                {
                    tracing::info!(
                        service = health.service(),
                        version = health.version(),
                        upstream = %addr,
                        "upstream healthy again (health check)"
                    );
                }
            }
            Err(reason) => {
                passed_in_row = 0;
                failed_in_row = failed_in_row.saturating_add(1);
                tracing::debug!(upstream = %addr, %reason, "health probe failed");
                if health.probe_healthy()
                    && failed_in_row >= check.unhealthy_threshold
                    && health.set_probe_healthy(false)
                {
                    tracing::warn!(
                        service = health.service(),
                        version = health.version(),
                        upstream = %addr,
                        %reason,
                        "upstream unhealthy (health check): no traffic until it passes again"
                    );
                }
            }
        }
    }
}

/// One `GET` over a new connection, in the version's protocol; passes when the head arrives
/// within `timeout` with an expected status.
async fn probe(
    upstream: &UpstreamRoute,
    protocol: UpstreamProtocol,
    check: &HealthCheck,
    host: &str,
) -> Result<(), String> {
    let status =
        weir_proxy::probe::probe(upstream, protocol, &check.path, host, check.timeout).await?;
    if check.expects(status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}
