//! What the admin API and the CLI show: a serializable snapshot of every service, rebuilt by the
//! driver after each change and read lock-free by the admin handlers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_config::{Model, Step};
use weir_proxy::RouteTable;

use crate::engine::rollout::blue_green::{self, BlueGreenPhase};
use crate::engine::rollout::{
    humantime, run::AnalysisRun, Event, Phase, Revision, Rollout, StrategyState,
};

/// Every service's status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// In config order.
    pub services: Vec<ServiceStatus>,
}

/// One service: the summary fields, then the details.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Phase.
    pub phase: Phase,
    /// Why, with numbers.
    pub message: String,
    /// Revision number (0 before the first rollout).
    pub revision: u64,
    /// The version weir serves as stable.
    pub stable_version: String,
    /// The canary version, if any.
    pub canary_version: Option<String>,
    /// The canary weight served now, in percent.
    pub canary_weight: f64,
    /// The current step, counted from 0.
    pub step_index: usize,
    /// Steps in the plan.
    pub step_count: usize,
    /// Details (left out of the list view).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

/// The detail view of one service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Details {
    /// The version the config names as stable.
    pub config_stable_version: String,
    /// `steps`, `progression` (Flagger), `blueGreen` or `manual` (no strategy: the file's
    /// weight).
    pub strategy: String,
    /// The plan, with each step's state.
    pub steps: Vec<StepStatus>,
    /// Why the rollout is paused, if it is.
    pub pause_reason: Option<String>,
    /// Failed Flagger checks so far, and the threshold.
    pub failed_checks: Option<(u32, u32)>,
    /// Analysis runs: running first, then finished ones, newest first.
    pub analysis_runs: Vec<AnalysisRun>,
    /// Recent events, oldest first.
    pub events: Vec<Event>,
    /// Revisions, oldest first.
    pub history: Vec<Revision>,
    /// The blue-green phase and preview (blue-green services only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStatus>,
}

/// A blue-green service's phase and preview.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    /// `preview`, `prePromotionAnalysis`, `awaitingPromotion`, `postPromotionAnalysis`,
    /// `scaleDownDelay`, or `None` when no revision is in progress and no old version is kept.
    pub phase: Option<String>,
    /// The preview reaches the new version now.
    pub preview_up: bool,
    /// Preview hosts, as written in the config.
    pub preview_hosts: Vec<String>,
    /// The preview listener.
    pub preview_listener: Option<String>,
    /// The preview's header conditions in words.
    pub preview_headers: Option<String>,
    /// Whether the switch waits for `weir promote`.
    pub auto_promotion_enabled: bool,
    /// Seconds after the preview came up when the switch happens by itself.
    pub auto_promotion_seconds: Option<u64>,
    /// When the switch happens by itself (ms since the Unix epoch), while waiting for it.
    pub auto_promotion_at_ms: Option<u64>,
    /// When all traffic switched to the new version.
    pub switched_at_ms: Option<u64>,
    /// The old ("blue") version kept routable after the switch.
    pub blue_version: Option<String>,
    /// When the old version is released (the end of `scaleDownDelay`), while it is kept.
    pub scale_down_at_ms: Option<u64>,
}

/// One step of the plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// Counted from 0.
    pub index: usize,
    /// `setWeight 10`, `pause 10s`, `pause (until promoted)`, `analysis success-rate`, `weight 20` (Flagger).
    pub description: String,
    /// `completed`, `current` or `pending`.
    pub state: String,
}

// === impl Status ===

impl Status {
    /// The status of one service, with details.
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The list view: summaries only.
    pub fn summaries(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| ServiceStatus {
                details: None,
                ..s.clone()
            })
            .collect()
    }
}

/// Builds the status of every service.
pub fn build(
    model: &Model,
    rollouts: &BTreeMap<String, Rollout>,
    table: &RouteTable,
    now_ms: u64,
) -> Status {
    let _ = now_ms;
    let services = model
        .services
        .iter()
        .map(|service| {
            let served = table
                .service(&service.name)
                .map_or(0.0, |s| s.canary_weight().percent());
            match rollouts.get(&service.name) {
                None => {
                    let canary = service.canary.as_ref().map(|c| c.version.version.clone());
                    let message = match &canary {
                        Some(version) => {
                            format!("manual split: {version} at {served}% (canary.weight)")
                        }
                        None => format!("{} serves 100%", service.stable.version),
                    };
                    ServiceStatus {
                        name: service.name.clone(),
                        phase: Phase::Healthy,
                        message,
                        revision: 0,
                        stable_version: service.stable.version.clone(),
                        canary_version: canary,
                        canary_weight: served,
                        step_index: 0,
                        step_count: 0,
                        details: Some(Details {
                            config_stable_version: service.stable.version.clone(),
                            strategy: "manual".into(),
                            steps: Vec::new(),
                            pause_reason: None,
                            failed_checks: None,
                            analysis_runs: Vec::new(),
                            events: Vec::new(),
                            history: Vec::new(),
                            blue_green: None,
                        }),
                    }
                }
                Some(rollout) => {
                    let canary = service.strategy.as_ref();
                    let progression = canary.and_then(|c| c.progression());
                    let descriptions: Vec<String> = match (canary, progression) {
                        (_, Some(progression)) => progression
                            .step_weights
                            .iter()
                            .map(|w| {
                                format!(
                                    "weight {w}, then check every {}",
                                    humantime(progression.interval)
                                )
                            })
                            .collect(),
                        (Some(canary), None) => match canary.blue_green() {
                            Some(bg) => blue_green::describe_phases(bg),
                            None => canary.steps().iter().map(describe_step).collect(),
                        },
                        _ => Vec::new(),
                    };
                    let in_rollout = matches!(rollout.phase, Phase::Progressing | Phase::Paused);
                    let steps = descriptions
                        .into_iter()
                        .enumerate()
                        .map(|(index, description)| {
                            let state = if rollout.promoted || (index < rollout.step_index()) {
                                "completed"
                            } else if index == rollout.step_index() && in_rollout {
                                "current"
                            } else {
                                "pending"
                            };
                            StepStatus {
                                index,
                                description,
                                state: state.into(),
                            }
                        })
                        .collect();
                    let mut runs: Vec<AnalysisRun> =
                        rollout.strategy.runs().into_iter().cloned().collect();
                    runs.extend(rollout.finished_runs.iter().rev().cloned());
                    ServiceStatus {
                        name: service.name.clone(),
                        phase: rollout.phase,
                        message: rollout.message.clone(),
                        revision: rollout.revision,
                        stable_version: rollout.stable_version.clone(),
                        canary_version: rollout.canary_version.clone(),
                        canary_weight: served,
                        step_index: rollout.step_index(),
                        step_count: Rollout::step_count(service),
                        details: Some(Details {
                            config_stable_version: service.stable.version.clone(),
                            strategy: if progression.is_some() {
                                "progression"
                            } else if canary.and_then(|c| c.blue_green()).is_some() {
                                "blueGreen"
                            } else {
                                "steps"
                            }
                            .into(),
                            steps,
                            pause_reason: rollout.pause.as_ref().map(|p| format!("{p:?}")),
                            failed_checks: progression
                                .map(|p| (rollout.strategy.failed_checks(), p.threshold)),
                            analysis_runs: runs,
                            events: rollout.events.iter().cloned().collect(),
                            history: rollout.history.clone(),
                            blue_green: blue_green_status(service, rollout),
                        }),
                    }
                }
            }
        })
        .collect();
    Status { services }
}

/// The blue-green part of a service's status.
fn blue_green_status(service: &weir_config::Service, rollout: &Rollout) -> Option<BlueGreenStatus> {
    let bg = service.strategy.as_ref()?.blue_green()?;
    let state = match &rollout.strategy {
        StrategyState::BlueGreen(state) => Some(state),
        _ => None,
    };
    let in_rollout = matches!(rollout.phase, Phase::Progressing | Phase::Paused);
    let phase = state.and_then(|s| match s.phase {
        BlueGreenPhase::ScalingDown if rollout.promoted => Some(s.phase),
        BlueGreenPhase::Done | BlueGreenPhase::ScalingDown => None,
        phase if in_rollout => Some(phase),
        _ => None,
    });
    let auto_promotion_at_ms = match (state, bg.auto_promotion_after) {
        (Some(s), Some(after))
            if bg.auto_promotion_enabled
                && in_rollout
                && matches!(
                    s.phase,
                    BlueGreenPhase::Preview
                        | BlueGreenPhase::PrePromotion
                        | BlueGreenPhase::AwaitingPromotion
                ) =>
        {
            Some(s.preview_up_ms + crate::engine::rollout::run::millis(after))
        }
        _ => None,
    };
    Some(BlueGreenStatus {
        phase: phase.map(|p| p.api_name().to_string()),
        preview_up: rollout.policy().preview,
        preview_hosts: bg.preview.hosts.iter().map(ToString::to_string).collect(),
        preview_listener: bg.preview.listener.clone(),
        preview_headers: blue_green::describe_preview_headers(&bg.preview),
        auto_promotion_enabled: bg.auto_promotion_enabled,
        auto_promotion_seconds: bg.auto_promotion_after.map(|d| d.as_secs()),
        auto_promotion_at_ms,
        switched_at_ms: state.and_then(|s| s.switched_at_ms),
        blue_version: state.and_then(|s| s.blue_version.clone()),
        scale_down_at_ms: state
            .filter(|s| s.phase == BlueGreenPhase::ScalingDown && rollout.promoted)
            .and_then(|s| s.scale_down_at_ms),
    })
}

fn describe_step(step: &Step) -> String {
    match step {
        Step::SetWeight(weight) => format!("setWeight {weight}"),
        Step::Pause(Some(duration)) => format!("pause {}", humantime(*duration)),
        Step::Pause(None) => "pause (until promoted)".into(),
        Step::Analysis(analysis) => format!("analysis {}", analysis.templates.join(", ")),
        Step::SetHeaderRoute(route) if route.any_of.is_empty() => {
            format!("remove header route {}", route.name)
        }
        Step::SetHeaderRoute(route) => format!("header route {}", route.name),
        Step::SetMirrorRoute(route) if route.any_of.is_empty() => {
            format!("remove mirror route {}", route.name)
        }
        Step::SetMirrorRoute(route) => {
            format!("mirror route {} ({}%)", route.name, route.percentage)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::rollout::Ctx;

    const BLUE_GREEN: &str = r#"
listeners:
  - { name: public, address: "127.0.0.1:0" }
  - { name: preview, address: "127.0.0.1:0" }
services:
  - name: orders
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      blueGreen:
        preview: { listener: preview, hosts: ["preview.orders.example.com"] }
        autoPromotionSeconds: 60
"#;

    #[test]
    fn blue_green_status_names_the_phase_and_the_preview() {
        let model = weir_config::parse(BLUE_GREEN, Path::new("/")).unwrap();
        let service = &model.services[0];
        let mut rollout = Rollout::new(service);
        let ctx = Ctx {
            service,
            templates: &model.analysis_templates,
        };
        let _ = rollout.reconcile(ctx, 1_000);
        let _ = rollout.tick(ctx, 1_100, &mut |_| {
            crate::engine::analysis::Outcome::NoData("none".into())
        });
        let rollouts = BTreeMap::from([("orders".to_string(), rollout)]);
        let status = build(&model, &rollouts, &RouteTable::empty(), 1_100);
        let orders = status.service("orders").unwrap();
        assert_eq!(orders.step_count, 5);
        assert_eq!(orders.step_index, 2);
        let details = orders.details.as_ref().unwrap();
        assert_eq!(details.strategy, "blueGreen");
        assert_eq!(details.steps[2].state, "current");
        assert_eq!(
            details.steps[2].description,
            "auto-promotion 1m after the preview is up"
        );
        let bg = details.blue_green.as_ref().unwrap();
        assert_eq!(bg.phase.as_deref(), Some("awaitingPromotion"));
        assert!(bg.preview_up);
        assert_eq!(bg.preview_listener.as_deref(), Some("preview"));
        assert_eq!(bg.preview_hosts, ["preview.orders.example.com"]);
        assert_eq!(bg.auto_promotion_at_ms, Some(61_000));
        let json = serde_json::to_value(orders).unwrap();
        assert_eq!(json["blueGreen"]["phase"], "awaitingPromotion");
    }
}
