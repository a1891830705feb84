//! The control plane's own series, encoded at scrape time from the status the driver publishes:
//! `weir_rollout_info{service,strategy,phase,strategy_phase} 1` (the strategy and where it stands,
//! for dashboards and alerts) and `weir_rollout_revision{service}`.
//!
//! Label values are bounded: service names come from the config, `strategy` is one of `steps`,
//! `progression`, `iterations`, `blueGreen` or `manual`, `phase` one of the four rollout phases and
//! `strategy_phase` one of the strategy's own few phases (empty when it has none).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::api::v1::Status;

/// Encodes the rollout series on every scrape.
#[derive(Debug)]
struct RolloutCollector {
    status: watch::Receiver<Arc<Status>>,
}

/// Registers the rollout series in `registry`, read from the driver's status channel.
pub fn register(registry: &mut Registry, status: watch::Receiver<Arc<Status>>) {
    registry.register_collector(Box::new(RolloutCollector { status }));
}

impl Collector for RolloutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let status = self.status.borrow().clone();
        {
            let mut info = encoder.encode_descriptor(
                "weir_rollout_info",
                "Each service's strategy and where its rollout stands (always 1)",
                None,
                MetricType::Gauge,
            )?;
            for service in &status.services {
                let strategy = service.strategy.as_str();
                let strategy_phase = service
                    .details
                    .as_ref()
                    .and_then(|d| d.strategy_phase.as_deref())
                    .unwrap_or("");
                let phase = format!("{:?}", service.phase);
                let labels = [
                    ("service", service.name.as_str()),
                    ("strategy", strategy),
                    ("phase", phase.as_str()),
                    ("strategy_phase", strategy_phase),
                ];
                ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
            }
        }
        let mut revision = encoder.encode_descriptor(
            "weir_rollout_revision",
            "The revision number of each service's current (or last) rollout",
            None,
            MetricType::Gauge,
        )?;
        for service in &status.services {
            let labels = [("service", service.name.as_str())];
            ConstGauge::new(service.revision as i64).encode(revision.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
