//! What the admin API and the CLI show: a serializable snapshot of every service, rebuilt by the
//! driver after each change and read lock-free by the admin handlers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_config::{Model, Step};
use weir_proxy::RouteTable;

use crate::engine::rollout::{humantime, run::AnalysisRun, Event, Phase, Revision, Rollout};

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
    /// `steps`, `progression` (Flagger) or `manual` (no strategy: the file's weight).
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
                        (Some(canary), None) => canary.steps().iter().map(describe_step).collect(),
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
                        }),
                    }
                }
            }
        })
        .collect();
    Status { services }
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
