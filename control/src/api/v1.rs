//! What the admin API and the CLI show: a serializable snapshot of every service, rebuilt by the
//! driver after each change and read lock-free by the admin handlers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_config::{AffinityKey, HeaderRoute, Model, Service, Step, StrategyKind};
use weir_proxy::RouteTable;

use crate::engine::rollout::blue_green::{self, BlueGreenPhase};
use crate::engine::rollout::routes::{HeaderRouteState, MirrorRouteState};
use crate::engine::rollout::{
    humantime, run::AnalysisRun, Event, Phase, Revision, Rollout, StrategyState,
};

/// Every service's status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// In config order.
    pub services: Vec<ServiceStatus>,
}

/// What weir applied of its config file (`GET /api/v1/config`), so a client can tell a status
/// that already reflects the file it just wrote from an older one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// The config file weir watches, as given to `weir run --config`.
    pub path: String,
    /// Bumped by every config applied (1: the file weir started with).
    pub generation: u64,
    /// SHA-256 of the config file's bytes last applied, in hex (what `sha256sum` prints).
    pub digest: String,
    /// When it was applied (ms since the Unix epoch).
    pub applied_at_ms: u64,
    /// The folder holding rollout (and ACME) state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// Where that folder comes from: `stateDir`, `$STATE_DIRECTORY` or `next to the config file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir_origin: Option<String>,
    /// The newest file content was refused (the last good config keeps serving); cleared when a
    /// newer content is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<RefusedConfig>,
}

/// A config file content weir refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedConfig {
    /// SHA-256 of the refused bytes, in hex.
    pub digest: String,
    /// Every problem, one per entry, with its field path.
    pub problems: Vec<String>,
    /// When it was refused (ms since the Unix epoch).
    pub at_ms: u64,
}

/// One service: the summary fields, then the details.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Phase.
    pub phase: Phase,
    /// `steps`, `progression` (Flagger), `iterations` (Flagger A/B), `blueGreen`, or `manual`
    /// (no strategy: the file's weight); in the list view too.
    #[serde(default)]
    pub strategy: String,
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
    /// Where the strategy is, in its own unit (`step 3/6`, `iteration 2/3`); absent before the
    /// first rollout and without a strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The config generation this status reflects: the last config applied to this service
    /// (see [`ConfigStatus::generation`]); 0 from a weir that does not report it.
    #[serde(default)]
    pub observed_generation: u64,
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
    /// The strategy's own phase, where it has one beyond [`ServiceStatus::phase`] (blue-green).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy_phase: Option<String>,
    /// The rules in force besides the weight.
    #[serde(default)]
    pub rules: Rules,
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
    /// When the current timed `pause: {duration}` step ends (ms since the Unix epoch), while it
    /// is counting (not while an operator holds the rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ends_at_ms: Option<u64>,
    /// The conditions of every metric in this service's analysis runs, so a measurement can be
    /// shown against what it is judged by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<MetricConditions>,
}

/// A metric's conditions, as written in its template.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricConditions {
    /// The template.
    pub template: String,
    /// The metric.
    pub metric: String,
    /// `successCondition`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// `failureCondition`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
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

/// Where a strategy is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// `step` (Argo steps, Flagger weights) or `iteration` (Flagger A/B).
    pub unit: String,
    /// Steps: the current step, from 1. Iterations: the iterations passed.
    pub current: usize,
    /// Steps in the plan, or iterations needed.
    pub total: usize,
    /// `step 3/6`, `iteration 2/3`.
    pub text: String,
}

/// The rules a service's route applies before (or besides) the weighted split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    /// Header and cookie routes to the canary, in order.
    #[serde(default)]
    pub header_routes: Vec<HeaderRouteStatus>,
    /// Mirror routes to the canary.
    #[serde(default)]
    pub mirror_routes: Vec<MirrorRouteStatus>,
    /// Sticky versions, from the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<AffinityStatus>,
    /// The blue-green preview, from the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewStatus>,
}

/// A header route in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRouteStatus {
    /// The route's name.
    pub name: String,
    /// `header x-beta: exact "yes" or cookie beta: regex "yes|on"`.
    pub conditions: String,
}

/// A mirror route in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorRouteStatus {
    /// The route's name.
    pub name: String,
    /// Percent of the matching requests copied to the canary.
    pub percentage: f64,
    /// `method: exact "GET" and path: prefix "/api"`, or `every request`.
    pub conditions: String,
}

/// A service's session affinity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityStatus {
    /// `cookie` or `header`.
    pub kind: String,
    /// The cookie's or header's name.
    pub name: String,
    /// The cookie's lifetime (`24h`); absent for the header form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// A blue-green preview.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewStatus {
    /// Whether the preview reaches the new version now.
    pub active: bool,
    /// Preview hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The preview listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Header conditions, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<String>,
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
                        strategy: "manual".into(),
                        message,
                        revision: 0,
                        stable_version: service.stable.version.clone(),
                        canary_version: canary,
                        canary_weight: served,
                        step_index: 0,
                        step_count: 0,
                        progress: None,
                        observed_generation: 0,
                        details: Some(Details {
                            config_stable_version: service.stable.version.clone(),
                            strategy_phase: None,
                            rules: rules(service, None),
                            steps: Vec::new(),
                            pause_reason: None,
                            failed_checks: None,
                            analysis_runs: Vec::new(),
                            events: Vec::new(),
                            history: Vec::new(),
                            blue_green: None,
                            pause_ends_at_ms: None,
                            conditions: Vec::new(),
                        }),
                    }
                }
                Some(rollout) => {
                    let strategy = service.strategy.as_ref();
                    let progression = strategy.and_then(|c| c.progression());
                    let iterations = strategy.and_then(|c| c.iterations());
                    let descriptions: Vec<String> = match strategy.map(|s| &s.kind) {
                        Some(StrategyKind::Progression(progression)) => progression
                            .step_weights
                            .iter()
                            .map(|w| {
                                format!(
                                    "weight {w}, then check every {}",
                                    humantime(progression.interval)
                                )
                            })
                            .collect(),
                        Some(StrategyKind::Iterations(iterations)) => (1..=iterations.iterations)
                            .map(|k| {
                                format!(
                                    "iteration {k}: checks pass over {}",
                                    humantime(iterations.interval)
                                )
                            })
                            .collect(),
                        Some(StrategyKind::Steps(plan)) => {
                            plan.steps.iter().map(describe_step).collect()
                        }
                        Some(StrategyKind::BlueGreen(bg)) => blue_green::describe_phases(bg),
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
                    let blue_green = blue_green_status(service, rollout);
                    runs.extend(rollout.finished_runs.iter().rev().cloned());
                    let metric_conditions = conditions(model, &runs);
                    ServiceStatus {
                        name: service.name.clone(),
                        phase: rollout.phase,
                        strategy: strategy.map_or("steps", |s| s.name()).into(),
                        message: rollout.message.clone(),
                        revision: rollout.revision,
                        stable_version: rollout.stable_version.clone(),
                        canary_version: rollout.canary_version.clone(),
                        canary_weight: served,
                        step_index: rollout.step_index(),
                        step_count: Rollout::step_count(service),
                        progress: progress(rollout, service),
                        observed_generation: 0,
                        details: Some(Details {
                            config_stable_version: service.stable.version.clone(),
                            strategy_phase: blue_green.as_ref().and_then(|b| b.phase.clone()),
                            rules: rules(service, Some(rollout)),
                            steps,
                            pause_reason: rollout.pause.as_ref().map(|p| format!("{p:?}")),
                            failed_checks: progression
                                .map(|p| p.threshold)
                                .or(iterations.map(|i| i.threshold))
                                .map(|threshold| (rollout.strategy.failed_checks(), threshold)),
                            analysis_runs: runs,
                            events: rollout.events.iter().cloned().collect(),
                            history: rollout.history.clone(),
                            blue_green,
                            pause_ends_at_ms: pause_ends_at(service, rollout),
                            conditions: metric_conditions,
                        }),
                    }
                }
            }
        })
        .collect();
    Status { services }
}

/// The conditions of the metrics `runs` measure (each template and metric once).
fn conditions(model: &Model, runs: &[AnalysisRun]) -> Vec<MetricConditions> {
    let mut out: Vec<MetricConditions> = Vec::new();
    for metric in runs.iter().flat_map(|r| &r.metrics) {
        if out
            .iter()
            .any(|c| c.template == metric.template && c.metric == metric.name)
        {
            continue;
        }
        let Some(found) = model
            .analysis_templates
            .iter()
            .filter(|t| t.name == metric.template)
            .flat_map(|t| &t.metrics)
            .find(|m| m.name == metric.name)
        else {
            continue;
        };
        out.push(MetricConditions {
            template: metric.template.clone(),
            metric: metric.name.clone(),
            success_condition: found.success_condition.clone(),
            failure_condition: found.failure_condition.clone(),
        });
    }
    out
}

/// When the current timed pause step ends, while it counts down.
fn pause_ends_at(service: &Service, rollout: &Rollout) -> Option<u64> {
    let StrategyState::Steps(state) = &rollout.strategy else {
        return None;
    };
    if rollout.phase != Phase::Progressing || rollout.pause.is_some() {
        return None;
    }
    let Some(StrategyKind::Steps(plan)) = service.strategy.as_ref().map(|s| &s.kind) else {
        return None;
    };
    match plan.steps.get(state.step_index)? {
        Step::Pause(Some(duration)) => Some(
            state
                .step_started_ms
                .saturating_add(crate::engine::rollout::run::millis(*duration)),
        ),
        _ => None,
    }
}

/// Where the rollout is, in its strategy's unit.
fn progress(rollout: &Rollout, service: &Service) -> Option<Progress> {
    let total = Rollout::step_count(service);
    if rollout.revision == 0 || total == 0 {
        return None;
    }
    let (unit, current) = match rollout.strategy {
        StrategyState::Iterations(_) => ("iteration", rollout.step_index().min(total)),
        _ => ("step", (rollout.step_index() + 1).min(total)),
    };
    Some(Progress {
        unit: unit.into(),
        current,
        total,
        text: format!("{unit} {current}/{total}"),
    })
}

/// The rules in force: the rollout's routes (from the policy it asks the route table for), and
/// the config's affinity and preview.
fn rules(service: &Service, rollout: Option<&Rollout>) -> Rules {
    let policy = rollout.map(Rollout::policy).unwrap_or_default();
    let session_affinity = service.session_affinity.as_ref().map(|a| match &a.key {
        AffinityKey::Cookie(name) => AffinityStatus {
            kind: "cookie".into(),
            name: name.clone(),
            max_age: Some(humantime(a.max_age)),
        },
        AffinityKey::Header(name) => AffinityStatus {
            kind: "header".into(),
            name: name.clone(),
            max_age: None,
        },
    });
    let preview = service
        .strategy
        .as_ref()
        .and_then(|s| s.blue_green())
        .map(|b| PreviewStatus {
            active: policy.preview,
            hosts: b.preview.hosts.iter().map(|h| h.to_string()).collect(),
            listener: b.preview.listener.clone(),
            headers: (!b.preview.headers.is_empty()).then(|| {
                HeaderRouteState::from_config(&HeaderRoute {
                    name: String::new(),
                    any_of: vec![b.preview.headers.clone()],
                })
                .conditions()
            }),
        });
    Rules {
        header_routes: policy
            .header_routes
            .iter()
            .map(|r| HeaderRouteStatus {
                name: r.name.clone(),
                conditions: HeaderRouteState::from_config(r).conditions(),
            })
            .collect(),
        mirror_routes: policy
            .mirror_routes
            .iter()
            .map(|r| MirrorRouteStatus {
                name: r.name.clone(),
                percentage: r.percentage.percent(),
                conditions: MirrorRouteState::from_config(r).conditions(),
            })
            .collect(),
        session_affinity,
        preview,
    }
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
            Some(
                s.preview_up_ms
                    .saturating_add(crate::engine::rollout::run::millis(after)),
            )
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
        Step::SetHeaderRoute(route) => format!(
            "header route {}: {}",
            route.name,
            HeaderRouteState::from_config(route).conditions()
        ),
        Step::SetMirrorRoute(route) if route.any_of.is_empty() => {
            format!("remove mirror route {}", route.name)
        }
        Step::SetMirrorRoute(route) => format!(
            "mirror route {}: {}% of {}",
            route.name,
            route.percentage,
            MirrorRouteState::from_config(route).conditions()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use weir_config::{CanarySteps, RequestMatch, SessionAffinity, StringMatch};

    use super::*;
    use crate::engine::analysis::Outcome;
    use crate::engine::rollout::Ctx;

    const CONFIG: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: checkout
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      canary:
        steps:
          - setWeight: 10
"#;

    #[test]
    fn the_status_shows_the_strategy_its_progress_and_the_rules_in_force() {
        let mut model = weir_config::parse(CONFIG, Path::new("/")).expect("valid");
        let service = &mut model.services[0];
        service.strategy.as_mut().expect("strategy").kind = StrategyKind::Steps(CanarySteps {
            steps: vec![
                Step::SetHeaderRoute(HeaderRoute {
                    name: "beta".into(),
                    any_of: vec![vec![RequestMatch::Header {
                        name: "x-beta".into(),
                        value: StringMatch::Exact("yes".into()),
                    }]],
                }),
                Step::Pause(None),
            ],
            background: None,
        });
        service.session_affinity = Some(SessionAffinity {
            key: AffinityKey::Cookie("weir-checkout".into()),
            max_age: Duration::from_secs(86_400),
        });
        let service = &model.services[0];
        let mut rollout = Rollout::new(service);
        let ctx = Ctx {
            service,
            templates: &model.analysis_templates,
        };
        let _ = rollout.reconcile(ctx, 1_000);
        let _ = rollout.tick(ctx, 1_100, &mut |_| Outcome::NoData("none".into()));
        let rollouts = BTreeMap::from([("checkout".to_string(), rollout)]);
        let status = build(&model, &rollouts, &RouteTable::empty(), 1_100);
        let checkout = status.service("checkout").expect("listed");
        assert_eq!(
            checkout.progress.as_ref().map(|p| p.text.as_str()),
            Some("step 2/2")
        );
        let details = checkout.details.as_ref().expect("details");
        assert_eq!(checkout.strategy, "steps");
        assert_eq!(
            details.rules.header_routes,
            vec![HeaderRouteStatus {
                name: "beta".into(),
                conditions: r#"header x-beta: exact "yes""#.into(),
            }]
        );
        assert_eq!(
            details.rules.session_affinity,
            Some(AffinityStatus {
                kind: "cookie".into(),
                name: "weir-checkout".into(),
                max_age: Some("24h".into()),
            })
        );
        assert_eq!(
            details.steps[0].description,
            r#"header route beta: header x-beta: exact "yes""#
        );
        let json = serde_json::to_value(checkout).expect("serializes");
        assert_eq!(json["rules"]["headerRoutes"][0]["name"], "beta");
        assert_eq!(json["progress"]["unit"], "step");
        assert_eq!(json["stepIndex"], 1, "the existing fields stay");
    }
}

#[cfg(test)]
mod blue_green_tests {
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
        assert_eq!(orders.strategy, "blueGreen");
        // The details are flattened into the service: no key may be sent twice (a client
        // refuses such JSON), so the status reads back as it was sent.
        let json = serde_json::to_string(orders).expect("serializes");
        let back: ServiceStatus =
            serde_json::from_str(&json).expect("reads back: no duplicate keys");
        assert_eq!(back.strategy, "blueGreen");
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
