//! The rollout state machine: pure, driven by the config (desired state), measurements, operator
//! commands and the time, given as milliseconds since the Unix epoch.
//!
//! One [`Rollout`] per service with a strategy: the fields every strategy shares (revision,
//! versions, phase, pause, history, events, finished runs) and one [`StrategyState`] for the
//! service's strategy (`steps.rs`, `progression.rs`, `iterations.rs`; `strategy.rs` says how to add
//! one). It decides what the route table serves ([`Rollout::policy`]: the canary weight and the
//! header and mirror routes in force) and records every decision as an event with its numbers.
//! Every operation ([`Rollout::tick`], [`Rollout::record`], [`Rollout::command`],
//! [`Rollout::reconcile`]) returns its [`Effects`]: the measurements now due, whether the
//! persisted state changed (save it, see `state.rs`), whether the policy changed (publish) and
//! whether that widened canary traffic (save after publishing, else before), so a restart resumes
//! the same revision, step, weight and routes. No operation both narrows and widens canary
//! traffic (there would be no safe order of saving and publishing): a step that would, waits for
//! the next tick (`Rollout::mixes`).
//!
//! The config is the desired state, also mid-rollout ([`Rollout::reconcile`]): a new canary
//! version starts a new revision from the config's stable (switching back first after a
//! blue-green switch); a removed canary rolls back; another strategy starts over; edited Argo
//! steps start over from step 1 (Argo's `currentStepHash`); edited Flagger weights keep the
//! highest weight not above the current one; an A/B test's routes follow its `match`/`mirror`.
//!
//! Semantics follow Argo Rollouts (steps, background analysis, promote/abort/retry/undo) and
//! Flagger (stepWeight/maxWeight/threshold progression). Where they differ from the users'
//! complaints about those tools, weir chooses: no data is inconclusive (a pause), never a failure;
//! a provider outage is an error measurement, never a failed one; every abort names the metric,
//! the value, the condition and the window.

pub mod blue_green;
mod checks;
mod deadline;
pub mod hooks;
mod iterations;
mod progression;
pub mod routes;
pub mod run;
mod steps;
mod strategy;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use weir_config::{
    AnalysisTemplate, BuiltinProvider, CheckKind, HeaderRoute, Metric, MirrorRoute, Provider,
    Service, StrategyKind, Weight,
};

pub use self::blue_green::{BlueGreenPhase, BlueGreenState};
pub use self::checks::{CheckResult, Checks};
pub use self::hooks::{HookAnswer, HookCall, HookState, Payload};
pub use self::iterations::{checked_traffic, IterationsState, AB_HEADER_ROUTE, AB_MIRROR_ROUTE};
pub use self::progression::ProgressionState;
pub use self::steps::StepsState;
pub use self::strategy::StrategyState;

use self::routes::{HeaderRouteState, MirrorRouteState, RouteChange, Routes};
use self::run::{millis, AnalysisRun, Measurement, RunPhase};
use crate::engine::analysis::{Outcome, Verdict};
use weir_proxy::routes::Policy;

/// Events kept per service.
const KEPT_EVENTS: usize = 100;
/// History entries kept per service.
const KEPT_HISTORY: usize = 50;
/// Requests a Flagger builtin check needs in its window before it can judge.
const CHECK_MIN_REQUESTS: u64 = 20;

/// A service's rollout phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Stable serves (everything, or the promoted canary does); nothing in progress.
    Healthy,
    /// A rollout is walking its steps.
    Progressing,
    /// A rollout is waiting for an operator (indefinite pause, inconclusive analysis, `pause`).
    Paused,
    /// The canary was aborted; stable serves everything until the config or an operator says otherwise.
    Degraded,
}

/// Why a rollout is paused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PauseReason {
    /// A `pause: {}` step: waits for `promote`.
    Step,
    /// An operator ran `pause`.
    Operator,
    /// An analysis was inconclusive beyond its `inconclusiveLimit`.
    Inconclusive,
    /// The state file could not be read; stable serves until an operator decides.
    StateUnreadable,
    /// A `confirm-*` webhook has not answered 2xx yet (`Rollout::hooks` says which).
    Gate,
}

/// How a revision ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevisionOutcome {
    /// Still in progress.
    Progressing,
    /// Promoted to stable.
    Promoted,
    /// Aborted (by analysis, deadline or operator).
    Aborted,
    /// The canary was removed from the config mid-rollout.
    RolledBack,
    /// Another canary version replaced it mid-rollout.
    Superseded,
    /// `undo` after promotion.
    Undone,
}

/// One revision in a service's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Revision number.
    pub revision: u64,
    /// The canary version rolled out.
    pub version: String,
    /// The stable version it started from.
    pub from_version: String,
    /// When it started.
    pub started_at_ms: u64,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// How it ended.
    pub outcome: RevisionOutcome,
    /// Why.
    pub message: String,
}

/// One decision, as logged and streamed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When.
    pub at_ms: u64,
    /// The service.
    pub service: String,
    /// The revision.
    pub revision: u64,
    /// `Advance`, `Halt`, `Rollback`, `Promoted`, `Paused`, `Resumed`, `Started`, `Measurement`, `Aborted`, …
    pub kind: String,
    /// The log line, with the numbers.
    pub message: String,
    /// The canary weight after the decision.
    pub weight: f64,
    /// The phase after the decision.
    pub phase: Phase,
    /// The version serving as stable when the decision was taken.
    #[serde(default)]
    pub stable_version: String,
    /// The canary version rolled out, if any.
    #[serde(default)]
    pub canary_version: Option<String>,
    /// Where the rollout was in its plan, counted from 0 (the step, or the Flagger weight).
    #[serde(default)]
    pub step: usize,
}

/// An operator command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Leave a pause or skip the current step; `full` skips every remaining step and analysis.
    Promote {
        /// Skip to the end.
        full: bool,
    },
    /// Send all traffic back to stable now.
    Abort,
    /// Start an aborted rollout again from the first step.
    Retry,
    /// Hold the current step.
    Pause,
    /// Continue after `pause` (or an inconclusive analysis), re-running the current step's analysis.
    Resume,
    /// Go back to the previous stable version immediately.
    Undo,
}

// === impl Command ===

impl Command {
    /// The admin API's (and the CLI's) verb.
    pub fn verb(self) -> &'static str {
        match self {
            Command::Promote { .. } => "promote",
            Command::Abort => "abort",
            Command::Retry => "retry",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Undo => "undo",
        }
    }

    /// The command a verb names; `full` applies to `promote`.
    pub fn from_verb(verb: &str, full: bool) -> Option<Command> {
        Some(match verb {
            "promote" => Command::Promote { full },
            "abort" => Command::Abort,
            "retry" => Command::Retry,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "undo" => Command::Undo,
            _ => return None,
        })
    }
}

/// A measurement the shell must take from an external provider, then [`Rollout::record`].
#[derive(Clone, Debug)]
pub struct Due {
    /// The run.
    pub run_id: u64,
    /// The metric's index in the run.
    pub metric_idx: usize,
    /// The metric (provider and conditions).
    pub metric: Metric,
    /// Argument values for `{{args.NAME}}` and the built-in variables (`{{service}}`,
    /// `{{stable.version}}`, `{{canary.version}}`).
    pub args: crate::engine::analysis::Vars,
}

/// A builtin measurement the shell answers synchronously from its stats window.
#[derive(Clone, Debug)]
pub struct BuiltinQuery<'a> {
    /// What to measure.
    pub provider: &'a BuiltinProvider,
    /// The version label whose stats to read.
    pub version: &'a str,
}

/// A service's rollout, persisted whole: the fields every strategy shares, and the state of the
/// service's strategy ([`StrategyState`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The service.
    pub service: String,
    /// Revision number of the current (or last) canary version; 0 before the first.
    pub revision: u64,
    /// The version weir serves as stable (the promoted canary after a promotion).
    pub stable_version: String,
    /// The version the config names as stable.
    pub config_stable_version: String,
    /// The canary version being (or last) rolled out.
    pub canary_version: Option<String>,
    /// The phase.
    pub phase: Phase,
    /// Why the rollout is where it is, with numbers.
    pub message: String,
    /// The canary is promoted: its arm serves everything as weir's stable.
    pub promoted: bool,
    /// Why paused, when paused.
    pub pause: Option<PauseReason>,
    /// When an operator pause began (its time does not count toward the step).
    pub paused_at_ms: Option<u64>,
    /// The strategy's own state.
    pub strategy: StrategyState,
    /// Finished runs of this revision, newest last.
    pub finished_runs: Vec<AnalysisRun>,
    /// Next run id.
    pub next_run_id: u64,
    /// Revisions, newest last.
    pub history: Vec<Revision>,
    /// Recent events, newest last.
    pub events: VecDeque<Event>,
    /// Events not yet handed to the shell.
    #[serde(skip)]
    pub new_events: Vec<Event>,
    /// The webhooks' state (`rollout/hooks.rs`); absent in files written before webhooks.
    #[serde(default)]
    pub hooks: HookState,
    /// Webhook calls not yet handed to the shell.
    #[serde(skip)]
    hook_calls: Vec<HookCall>,
    /// The event that ended the revision in the current operation, and whether it aborted.
    #[serde(skip)]
    ended: Option<(Event, bool)>,
    /// Persisted state changed since the current operation began.
    #[serde(skip)]
    dirty: bool,
    /// Whether routes were in force when the current operation began.
    #[serde(skip)]
    begin_routes_active: bool,
    /// The routes in force when the current operation began, taken before the first change to
    /// them (not taken when they did not change).
    #[serde(skip)]
    routes_before: Option<Routes>,
    /// Bumped whenever a route in force changes (not persisted: it only tells operations apart).
    #[serde(skip)]
    routes_epoch: u64,
    /// The weight served when the current operation began.
    #[serde(skip)]
    begin_weight: Weight,
    /// The current operation removed a route in force.
    #[serde(skip)]
    op_narrowed: bool,
    /// The current operation added or replaced a route in force.
    #[serde(skip)]
    op_widened: bool,
}

/// What one operation on a [`Rollout`] ([`Rollout::tick`], [`Rollout::record`],
/// [`Rollout::command`], [`Rollout::reconcile`]) did, for the shell to act on.
#[derive(Debug, Default)]
#[must_use]
pub struct Effects {
    /// External measurements now due: take them, then [`Rollout::record`].
    pub due: Vec<Due>,
    /// Persisted state changed: save it.
    pub changed: bool,
    /// [`Rollout::policy`] changed: publish a route table.
    pub policy_changed: bool,
    /// Canary traffic widened (a higher weight, a route added or replaced): save after
    /// publishing. Otherwise a policy change narrows canary traffic and is saved first, so a
    /// crash in between never leaves more canary traffic on disk than was served.
    pub widened: bool,
    /// Decisions made, oldest first.
    pub events: Vec<Event>,
    /// Webhook calls now due: make them, then [`Rollout::record_hook`].
    pub hooks: Vec<HookCall>,
    /// The revision ended (promoted, or aborted when `true`) with this event: tell the
    /// `post-rollout` hooks.
    pub ended: Option<(Event, bool)>,
}

/// What [`Rollout::policy`] depends on, compared before and after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PolicyKey {
    weight: Weight,
    preview: bool,
    routes_active: bool,
    routes_epoch: u64,
}

/// What a tick needs from the config.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    /// The service as the config names it now.
    pub service: &'a Service,
    /// Every analysis template.
    pub templates: &'a [AnalysisTemplate],
}

// === impl Rollout ===

impl Rollout {
    /// A service's state before anything happened: its config stable serves.
    pub fn new(service: &Service) -> Rollout {
        Rollout {
            service: service.name.clone(),
            revision: 0,
            stable_version: service.stable.version.clone(),
            config_stable_version: service.stable.version.clone(),
            canary_version: None,
            phase: Phase::Healthy,
            message: format!("{} is stable", service.stable.version),
            promoted: false,
            pause: None,
            paused_at_ms: None,
            strategy: StrategyState::initial(service.strategy.as_ref()),
            finished_runs: Vec::new(),
            next_run_id: 1,
            history: Vec::new(),
            events: VecDeque::new(),
            new_events: Vec::new(),
            hooks: HookState::default(),
            hook_calls: Vec::new(),
            ended: None,
            dirty: false,
            begin_routes_active: false,
            routes_before: None,
            routes_epoch: 0,
            begin_weight: Weight::ZERO,
            op_narrowed: false,
            op_widened: false,
        }
    }

    /// A rollout whose persisted state could not be read: stable serves everything and the canary
    /// waits for an operator, so a damaged file can never widen canary traffic.
    pub fn unreadable(service: &Service, problem: &str, now_ms: u64) -> Rollout {
        let mut rollout = Rollout::new(service);
        if let Some(canary) = &service.canary {
            rollout.canary_version = Some(canary.version.version.clone());
            rollout.revision = 1;
            rollout.phase = Phase::Paused;
            rollout.pause = Some(PauseReason::StateUnreadable);
            rollout.history.push(Revision {
                revision: 1,
                version: canary.version.version.clone(),
                from_version: service.stable.version.clone(),
                started_at_ms: now_ms,
                ended_at_ms: None,
                outcome: RevisionOutcome::Progressing,
                message: String::new(),
            });
        }
        let message = format!(
            "state file unreadable ({problem}): stable {} serves 100%; the rollout is paused — promote or resume restarts it from step 1, abort abandons it",
            service.stable.version
        );
        rollout.message = message.clone();
        rollout.emit(now_ms, "StateUnreadable", message);
        rollout
    }

    /// The canary weight the route table must serve.
    pub fn weight(&self) -> Weight {
        match self.phase {
            Phase::Healthy if self.promoted => Weight::FULL,
            Phase::Progressing | Phase::Paused => {
                Weight::from_basis_points(self.strategy.weight_bp()).unwrap_or(Weight::ZERO)
            }
            _ => Weight::ZERO,
        }
    }

    /// What the route table must serve for this service: the weight, and the rules in force.
    /// Rules exist only while a rollout is progressing or paused; they end with it.
    pub fn policy(&self) -> Policy {
        let mut policy = Policy::from(self.weight());
        if self.routes_active() {
            self.strategy.add_routes(&mut policy);
        }
        policy
    }

    fn routes_active(&self) -> bool {
        self.in_rollout()
    }

    fn policy_key(&self) -> PolicyKey {
        PolicyKey {
            weight: self.weight(),
            preview: self.policy().preview,
            routes_active: self.routes_active(),
            routes_epoch: self.routes_epoch,
        }
    }

    /// Starts an operation: returns what the policy depends on now.
    fn begin(&mut self) -> PolicyKey {
        self.dirty = false;
        self.begin_routes_active = self.routes_active();
        self.routes_before = None;
        self.begin_weight = self.weight();
        self.op_narrowed = false;
        self.op_widened = false;
        self.policy_key()
    }

    /// Whether a change in direction `widens` (`Some(true)`: more canary traffic, `Some(false)`:
    /// less) would make the current operation both narrow and widen canary traffic. Such an
    /// operation has no safe order of saving and publishing (saved first, a crash resumes the
    /// wider part before it was served; saved after, it resumes the narrower part undone), so
    /// the change waits for the next operation.
    fn mixes(&self, widens: Option<bool>) -> bool {
        let weight = self.weight();
        match widens {
            Some(true) => self.op_narrowed || weight < self.begin_weight,
            Some(false) => self.op_widened || weight > self.begin_weight,
            None => false,
        }
    }

    /// Ends an operation begun with [`Rollout::begin`].
    fn finish(&mut self, before: PolicyKey, due: Vec<Due>) -> Effects {
        let after = self.policy_key();
        let events = std::mem::take(&mut self.new_events);
        let policy_changed = after != before;
        let routes_before = self.routes_before.take();
        let widened = policy_changed
            && (after.weight > before.weight || (after.preview && !before.preview) || {
                let before_routes = routes_before.unwrap_or_else(|| self.routes_in_force());
                self.routes_in_force().adds_to(&before_routes)
            });
        Effects {
            due,
            changed: self.dirty || !events.is_empty() || policy_changed,
            policy_changed,
            widened,
            events,
            hooks: std::mem::take(&mut self.hook_calls),
            ended: self.ended.take(),
        }
    }

    /// ` (header route beta, mirror route shadow, preview removed)`: what ends with the rollout,
    /// for the event that ends it; empty when only the weight was in force.
    fn rules_ending(&self) -> String {
        let routes = self.routes_in_force();
        let mut names: Vec<String> = routes
            .header_routes
            .iter()
            .map(|r| format!("header route {}", r.name))
            .chain(
                routes
                    .mirror_routes
                    .iter()
                    .map(|r| format!("mirror route {}", r.name)),
            )
            .collect();
        if self.routes_active() && self.policy().preview {
            names.push("preview".into());
        }
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({} removed)", names.join(", "))
        }
    }

    /// The routes in the policy now.
    fn routes_in_force(&self) -> Routes {
        match self.strategy.routes() {
            Some(routes) if self.routes_active() => routes.clone(),
            _ => Routes::default(),
        }
    }

    /// Keeps the routes in force at the beginning of the operation before the first change to
    /// them, so that [`Effects::widened`] compares the net change.
    fn snapshot_routes(&mut self) {
        if self.routes_before.is_none() {
            let routes = match self.strategy.routes() {
                Some(routes) if self.begin_routes_active => routes.clone(),
                _ => Routes::default(),
            };
            self.routes_before = Some(routes);
        }
    }

    /// Marks persisted state as changed.
    fn touch(&mut self) {
        self.dirty = true;
    }

    /// A route in force was added or replaced (after [`Rollout::snapshot_routes`]).
    fn routes_widened(&mut self) {
        self.routes_epoch += 1;
        self.dirty = true;
        self.op_widened = true;
    }

    /// Records what a `setHeaderRoute` did, with one event naming the route and its conditions.
    fn header_route_set(
        &mut self,
        route: &HeaderRoute,
        change: RouteChange,
        at: &str,
        now_ms: u64,
    ) {
        let service = self.service.clone();
        let name = &route.name;
        let conditions = || HeaderRouteState::from_config(route).conditions();
        let line = match change {
            RouteChange::Added | RouteChange::Replaced | RouteChange::Unchanged => {
                if change != RouteChange::Unchanged {
                    self.routes_widened();
                }
                let verb = match change {
                    RouteChange::Added => "Set",
                    RouteChange::Unchanged => "Kept",
                    _ => "Replaced",
                };
                format!(
                    "{verb} header route {name} on {service}: requests matching {} go to the canary ({at})",
                    conditions()
                )
            }
            RouteChange::Removed => {
                self.routes_narrowed();
                format!("Removed header route {name} from {service} ({at})")
            }
            RouteChange::Absent => {
                format!("Header route {name} of {service} is not set: nothing to remove ({at})")
            }
        };
        self.emit(now_ms, "HeaderRoute", line);
    }

    /// Records what a `setMirrorRoute` did, with one event naming the route and its conditions.
    fn mirror_route_set(
        &mut self,
        route: &MirrorRoute,
        change: RouteChange,
        at: &str,
        now_ms: u64,
    ) {
        let service = self.service.clone();
        let name = &route.name;
        let line = match change {
            RouteChange::Added | RouteChange::Replaced | RouteChange::Unchanged => {
                if change != RouteChange::Unchanged {
                    self.routes_widened();
                }
                let verb = match change {
                    RouteChange::Added => "Set",
                    RouteChange::Unchanged => "Kept",
                    _ => "Replaced",
                };
                let state = MirrorRouteState::from_config(route);
                format!(
                    "{verb} mirror route {name} on {service}: {}% of requests matching {} are copied to the canary ({at})",
                    route.percentage,
                    state.conditions()
                )
            }
            RouteChange::Removed => {
                self.routes_narrowed();
                format!("Removed mirror route {name} from {service} ({at})")
            }
            RouteChange::Absent => {
                format!("Mirror route {name} of {service} is not set: nothing to remove ({at})")
            }
        };
        self.emit(now_ms, "MirrorRoute", line);
    }

    /// A route in force was removed: canary traffic narrows.
    fn routes_narrowed(&mut self) {
        self.routes_epoch += 1;
        self.dirty = true;
        self.op_narrowed = true;
    }

    fn set_message(&mut self, message: impl Into<String>) {
        let message = message.into();
        if self.message != message {
            self.message = message;
            self.dirty = true;
        }
    }

    /// Steps in the plan (Argo steps, Flagger weights, or Flagger iterations).
    pub fn step_count(service: &Service) -> usize {
        match service.strategy.as_ref().map(|s| &s.kind) {
            Some(StrategyKind::Progression(progression)) => progression.step_weights.len(),
            Some(StrategyKind::Steps(plan)) => plan.steps.len(),
            Some(StrategyKind::Iterations(iterations)) => iterations.iterations as usize,
            Some(StrategyKind::BlueGreen(_)) => blue_green::PHASES,
            _ => 0,
        }
    }

    /// Where the rollout is in its plan, counted from 0 (the step, or the Flagger weight).
    pub fn step_index(&self) -> usize {
        self.strategy.step_index()
    }

    fn in_rollout(&self) -> bool {
        matches!(self.phase, Phase::Progressing | Phase::Paused) && self.canary_version.is_some()
    }

    /// Brings the state in line with the config (the desired state).
    pub fn reconcile(&mut self, ctx: Ctx<'_>, now_ms: u64) -> Effects {
        let before = self.begin();
        self.reconcile_inner(ctx, now_ms);
        let mut effects = self.finish(before, Vec::new());
        // Rare (a reload or a restart): always saved.
        effects.changed = true;
        effects
    }

    fn reconcile_inner(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        let service = ctx.service;
        let config_stable = service.stable.version.clone();
        let config_canary = service.canary.as_ref().map(|c| c.version.version.clone());
        if self.config_stable_version != config_stable {
            self.config_stable_version = config_stable.clone();
            if !self.promoted {
                // The config's stable arm serves as stable at once: the file is the truth for it.
                // (A promoted canary keeps serving from its arm: it stays weir's stable until
                // the config moves on from it, below.)
                self.stable_version = config_stable.clone();
            }
        }
        match config_canary {
            None => {
                if self.in_rollout() {
                    self.note_switch_back(now_ms);
                    let version = self.canary_version.clone().unwrap_or_default();
                    let message = format!(
                        "Rolling back {}: canary {version} removed from the config; {config_stable} serves 100%{}",
                        self.service,
                        self.rules_ending()
                    );
                    self.end_revision(now_ms, RevisionOutcome::RolledBack, &message);
                    self.emit(now_ms, "Rollback", message);
                }
                if self.promoted && self.canary_version.as_deref() != Some(config_stable.as_str()) {
                    self.emit(
                        now_ms,
                        "StableChanged",
                        format!(
                            "{}: the config names {config_stable} as stable and no canary; {config_stable} serves 100%",
                            self.service
                        ),
                    );
                }
                self.canary_version = None;
                self.promoted = false;
                self.stable_version = config_stable.clone();
                self.clear_runs("terminated: the config changed the canary");
                self.phase = Phase::Healthy;
                self.pause = None;
                self.strategy.reset_weight();
                self.message = format!("{config_stable} is stable");
            }
            Some(canary) if Some(&canary) == self.canary_version.as_ref() => {
                if self.promoted {
                    self.message = promoted_message(&canary, &config_stable);
                }
            }
            Some(canary) if canary == self.stable_version => {
                // Declaring the stable version again: no steps, no analysis, at once.
                if self.in_rollout() {
                    let message = format!(
                        "Rolling back {}: {canary} is the stable version",
                        self.service
                    );
                    self.end_revision(now_ms, RevisionOutcome::RolledBack, &message);
                }
                self.canary_version = Some(canary.clone());
                self.promoted = true;
                self.clear_runs("terminated: the config changed the canary");
                self.phase = Phase::Healthy;
                self.pause = None;
                self.message = promoted_message(&canary, &config_stable);
                self.emit(
                    now_ms,
                    "Rollback",
                    format!(
                        "{} {canary} is already stable: switched at once, no steps or analysis",
                        self.service
                    ),
                );
            }
            Some(canary) => self.start_revision(ctx, canary, now_ms),
        }
        // The config switched strategies: a rollout in progress starts over under the new one.
        if !self.strategy.fits(service.strategy.as_ref()) {
            if self.in_rollout() && self.pause != Some(PauseReason::StateUnreadable) {
                let line = format!(
                    "{}: the strategy changed to {}; the rollout of revision {} starts over",
                    self.service,
                    service.strategy.as_ref().map_or("none", |s| s.name()),
                    self.revision
                );
                let operator_pause = self.pause == Some(PauseReason::Operator);
                self.restart_steps(ctx, now_ms);
                if operator_pause {
                    self.hold_for_operator(now_ms);
                }
                self.emit(now_ms, "StrategyChanged", line);
            } else {
                // Nothing in progress, or a rollout that waits for an operator after an unreadable
                // state file (its strategy state may also be a format-1 guess): the new strategy's
                // initial state, still waiting.
                self.snapshot_routes();
                let had_routes = !self.routes_in_force().is_empty();
                self.strategy = StrategyState::initial(service.strategy.as_ref());
                if had_routes {
                    self.routes_narrowed();
                } else {
                    self.touch();
                }
            }
        }
        self.reconcile_plan(ctx, now_ms);
    }

    /// Keeps an operator's `pause` across a restart of the plan (the config changed under it).
    fn hold_for_operator(&mut self, now_ms: u64) {
        self.phase = Phase::Paused;
        self.pause = Some(PauseReason::Operator);
        self.paused_at_ms = Some(now_ms);
        self.message = format!("paused by operator at weight {}", self.weight());
    }

    /// Brings a rollout in progress in line with an edited plan of the same strategy: changed
    /// Argo steps start over from step 1 (Argo's `currentStepHash`), so a removed step can never
    /// leave its route in force nor a shorter plan promote at once; Flagger weights that no
    /// longer hold the current one go back to the highest weight not above it; an A/B test's
    /// routes follow its `match` and `mirror`; blue-green waiting for `promote` goes on when
    /// `autoPromotionEnabled` is turned on.
    fn reconcile_plan(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        // A rollout waiting after an unreadable state file has no plan position to keep: the
        // operator's promote or resume starts it from the first step of the config's plan.
        if !self.in_rollout()
            || self.pause == Some(PauseReason::StateUnreadable)
            || self.before_traffic()
        {
            return;
        }
        let Some(strategy) = ctx.service.strategy.as_ref() else {
            return;
        };
        let service = self.service.clone();
        let revision = self.revision;
        let weight = self.weight();
        match (&strategy.kind, &mut self.strategy) {
            (StrategyKind::Steps(plan), StrategyState::Steps(state)) => {
                let fingerprint = steps::plan_fingerprint(&plan.steps);
                match &state.plan {
                    Some(old) if *old == fingerprint => {}
                    None => {
                        state.plan = Some(fingerprint);
                        self.touch();
                    }
                    Some(_) => {
                        let at = state.step_index + 1;
                        let line = format!(
                            "{service}: the steps changed at step {at} (canary weight {weight}); the rollout of revision {revision} starts over from step 1 of {}",
                            plan.steps.len()
                        );
                        let operator_pause = self.pause == Some(PauseReason::Operator);
                        self.restart_steps(ctx, now_ms);
                        if operator_pause {
                            self.hold_for_operator(now_ms);
                        }
                        self.emit(now_ms, "StepsChanged", line);
                    }
                }
            }
            (StrategyKind::Progression(progression), StrategyState::Progression(state)) => {
                let weights = &progression.step_weights;
                let holds = weights
                    .get(state.step_index)
                    .is_some_and(|w| w.basis_points() == state.weight_bp);
                if holds || weights.is_empty() {
                    return;
                }
                let from = state.step_index + 1;
                let index = weights
                    .iter()
                    .rposition(|w| w.basis_points() <= state.weight_bp)
                    .unwrap_or(0);
                state.step_index = index;
                // Never above the weight served: an edit narrows or keeps canary traffic.
                state.weight_bp = weights[index].basis_points().min(state.weight_bp);
                state.step_started_ms = now_ms;
                let after = self.weight();
                let line = format!(
                    "{service}: the weights changed (was step {from} at canary weight {weight}); now step {}/{} at canary weight {after}",
                    index + 1,
                    weights.len()
                );
                self.set_message(format!(
                    "canary weight {after} (step {}/{})",
                    index + 1,
                    weights.len()
                ));
                self.emit(now_ms, "WeightsChanged", line);
            }
            (StrategyKind::Iterations(iterations), StrategyState::Iterations(_)) => {
                self.sync_ab_routes(iterations, now_ms);
            }
            (StrategyKind::BlueGreen(bg), StrategyState::BlueGreen(state))
                if bg.auto_promotion_enabled
                    && state.phase == BlueGreenPhase::AwaitingPromotion
                    && self.pause == Some(PauseReason::Step) =>
            {
                self.phase = Phase::Progressing;
                self.pause = None;
                self.paused_at_ms = None;
                let line = format!(
                    "Resumed {service}: autoPromotionEnabled is now true, so the switch no longer waits for promote"
                );
                self.emit(now_ms, "Resumed", line);
            }
            _ => {}
        }
    }

    fn start_revision(&mut self, ctx: Ctx<'_>, canary: String, now_ms: u64) {
        // The new canary takes the canary arm: a promoted version is no longer routable, and the
        // config's stable arm serves as stable.
        self.stable_version = self.config_stable_version.clone();
        if self.in_rollout() {
            self.note_switch_back(now_ms);
            let previous = self.canary_version.clone().unwrap_or_default();
            let message = format!(
                "Restarting {} rollout: canary changed from {previous} to {canary}{}",
                self.service,
                self.rules_ending()
            );
            self.end_revision(now_ms, RevisionOutcome::Superseded, &message);
            self.emit(now_ms, "Superseded", message);
        }
        self.revision += 1;
        self.canary_version = Some(canary.clone());
        self.promoted = false;
        self.history.push(Revision {
            revision: self.revision,
            version: canary.clone(),
            from_version: self.stable_version.clone(),
            started_at_ms: now_ms,
            ended_at_ms: None,
            outcome: RevisionOutcome::Progressing,
            message: String::new(),
        });
        if self.history.len() > KEPT_HISTORY {
            self.history.remove(0);
        }
        self.finished_runs.clear();
        self.restart_steps(ctx, now_ms);
        let steps = Self::step_count(ctx.service);
        let unit = match ctx.service.strategy.as_ref().map(|s| &s.kind) {
            Some(StrategyKind::Iterations(_)) => "passing iterations (A/B test)",
            _ => "steps",
        };
        self.emit(
            now_ms,
            "Started",
            format!(
                "New revision {}: rolling out {} {canary} over {steps} {unit} (stable {})",
                self.revision, self.service, self.stable_version
            ),
        );
    }

    /// Starts the strategy over from its first step (a new revision, retry, a restart after an
    /// unreadable state file).
    fn restart_steps(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        self.clear_runs("terminated: the rollout started over");
        self.phase = Phase::Progressing;
        self.pause = None;
        self.paused_at_ms = None;
        self.snapshot_routes();
        self.strategy = StrategyState::start(ctx.service.strategy.as_ref(), now_ms);
        self.start_hooks(ctx);
        // Routes of the previous state are gone; the new state's come with it.
        self.routes_epoch += 1;
        if let Some(iterations) = ctx.service.strategy.as_ref().and_then(|s| s.iterations()) {
            self.sync_ab_routes(iterations, now_ms);
        }
        self.set_message("progressing");
    }

    /// Ends the current runs and routes (the rollout ended or starts over); a run still
    /// measuring is marked terminated with `reason`.
    fn clear_runs(&mut self, reason: &str) {
        self.snapshot_routes();
        if self.strategy.end_routes() {
            self.routes_narrowed();
        }
        for mut run in self.strategy.end_runs() {
            run.terminate(reason);
            self.finished_runs.push(run);
        }
        let keep = 10;
        if self.finished_runs.len() > keep {
            let drop = self.finished_runs.len() - keep;
            self.finished_runs.drain(..drop);
        }
        self.touch();
    }

    fn end_revision(&mut self, now_ms: u64, outcome: RevisionOutcome, message: &str) {
        if let Some(entry) = self
            .history
            .iter_mut()
            .rev()
            .find(|r| r.revision == self.revision)
        {
            if entry.ended_at_ms.is_none() {
                entry.ended_at_ms = Some(now_ms);
                entry.outcome = outcome;
                entry.message = message.to_string();
            }
        }
    }

    /// An event of this rollout as it stands now.
    pub fn event(&self, now_ms: u64, kind: &str, message: String) -> Event {
        Event {
            at_ms: now_ms,
            service: self.service.clone(),
            revision: self.revision,
            kind: kind.to_string(),
            message,
            weight: self.weight().percent(),
            phase: self.phase,
            stable_version: self.stable_version.clone(),
            canary_version: self.canary_version.clone(),
            step: self.step_index(),
        }
    }

    fn emit(&mut self, now_ms: u64, kind: &str, message: String) {
        let event = self.event(now_ms, kind, message);
        self.events.push_back(event.clone());
        while self.events.len() > KEPT_EVENTS {
            self.events.pop_front();
        }
        self.new_events.push(event);
        self.touch();
    }

    /// Events not yet returned in [`Effects`] (those of [`Rollout::unreadable`]).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.new_events)
    }

    /// Advances time: measures due builtin metrics through `builtin`, moves through the
    /// strategy, and returns what changed and the external measurements now due.
    pub fn tick(
        &mut self,
        ctx: Ctx<'_>,
        now_ms: u64,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) -> Effects {
        let before = self.begin();
        self.tick_scale_down(now_ms);
        if !self.in_rollout() {
            return self.finish(before, Vec::new());
        }
        let mut external = Vec::new();
        let held = self.tick_hooks(ctx, now_ms);
        // Measure, then decide, until nothing moves: a step that completes may start an analysis
        // whose first measurement is due at once.
        let rounds = if held { 0 } else { 32 };
        for _ in 0..rounds {
            let cursor = (self.strategy.cursor(), self.phase);
            self.ensure_runs(ctx, now_ms);
            external.extend(self.measure_due(ctx, now_ms, builtin));
            self.evaluate(ctx, now_ms, builtin);
            if (self.strategy.cursor(), self.phase) == cursor {
                break;
            }
        }
        self.finish(before, external)
    }

    /// Records an external measurement.
    pub fn record(
        &mut self,
        ctx: Ctx<'_>,
        run_id: u64,
        metric_idx: usize,
        outcome: &Outcome,
        now_ms: u64,
    ) -> Effects {
        let before = self.begin();
        self.record_outcome(ctx, run_id, metric_idx, outcome, now_ms);
        self.evaluate(ctx, now_ms, &mut |_| Outcome::NoData("not measured".into()));
        self.finish(before, Vec::new())
    }

    fn ensure_runs(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        let Some(strategy) = ctx.service.strategy.as_ref() else {
            return;
        };
        if self.before_traffic() {
            return;
        }
        match &strategy.kind {
            StrategyKind::Steps(plan) => self.ensure_step_runs(ctx, plan, now_ms),
            StrategyKind::BlueGreen(bg) => self.ensure_blue_green_runs(ctx, bg, now_ms),
            // Routes held back by an operation that narrowed canary traffic come now.
            StrategyKind::Iterations(iterations) => self.sync_ab_routes(iterations, now_ms),
            StrategyKind::Progression(_) => {}
        }
    }

    fn take_run_id(&mut self) -> u64 {
        let id = self.next_run_id;
        self.next_run_id += 1;
        self.touch();
        id
    }

    /// Takes every due measurement: builtin ones now, external ones returned.
    fn measure_due(
        &mut self,
        ctx: Ctx<'_>,
        now_ms: u64,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) -> Vec<Due> {
        let mut due = Vec::new();
        for run in self.strategy.runs_mut() {
            for idx in run.take_due(now_ms) {
                due.push((
                    run.id,
                    idx,
                    run.metrics[idx].template.clone(),
                    run.metrics[idx].name.clone(),
                    run.args.clone(),
                ));
            }
        }
        let mut external = Vec::new();
        for (run_id, metric_idx, template, name, args) in due {
            let Some(metric) = find_metric(ctx.templates, &template, &name) else {
                // The template changed under a running analysis: measure as an error.
                let outcome = Outcome::Error(format!(
                    "metric {template}/{name} is no longer in the config"
                ));
                self.record_outcome(ctx, run_id, metric_idx, &outcome, now_ms);
                continue;
            };
            match &metric.provider {
                Provider::Builtin(provider) => {
                    let version = self.version_for(provider, ctx.service);
                    let outcome = builtin(BuiltinQuery {
                        provider,
                        version: &version,
                    });
                    self.record_outcome(ctx, run_id, metric_idx, &outcome, now_ms);
                }
                _ => external.push(Due {
                    run_id,
                    metric_idx,
                    metric: metric.clone(),
                    args: crate::engine::analysis::Vars {
                        args,
                        service: ctx.service.name.clone(),
                        stable_version: ctx.service.stable.version.clone(),
                        canary_version: self.canary_version.clone().unwrap_or_default(),
                    },
                }),
            }
        }
        external
    }

    fn version_for(&self, provider: &BuiltinProvider, service: &Service) -> String {
        match provider.arm {
            weir_config::Arm::Canary => self.canary_version.clone().unwrap_or_default(),
            weir_config::Arm::Stable => service.stable.version.clone(),
        }
    }

    fn record_outcome(
        &mut self,
        ctx: Ctx<'_>,
        run_id: u64,
        metric_idx: usize,
        outcome: &Outcome,
        now_ms: u64,
    ) {
        let service = self.service.clone();
        let mut runs = self.strategy.runs_mut();
        let Some(run) = runs.iter_mut().find(|r| r.id == run_id) else {
            return;
        };
        let Some(metric_run) = run.metrics.get(metric_idx) else {
            return;
        };
        let Some(spec) =
            find_metric(ctx.templates, &metric_run.template, &metric_run.name).cloned()
        else {
            run.release(metric_idx);
            return;
        };
        // Conditions may use the same placeholders as queries (`result > {{args.threshold}}`).
        let vars = crate::engine::analysis::Vars {
            args: run.args.clone(),
            service: ctx.service.name.clone(),
            stable_version: ctx.service.stable.version.clone(),
            canary_version: self.canary_version.clone().unwrap_or_default(),
        };
        let (verdict, explanation) = judge(&spec, &vars, outcome);
        let message = explanation;
        let value = match outcome {
            Outcome::Value(measured) => Some(measured.value.clone()),
            _ => None,
        };
        let name = spec.name.clone();
        run.record(
            metric_idx,
            &spec,
            Measurement {
                at_ms: now_ms,
                value,
                verdict,
                message: message.clone(),
            },
        );
        drop(runs);
        self.touch();
        let line = match verdict {
            Verdict::Successful => None,
            Verdict::Failed => Some((
                "Halt",
                format!("Halt {service} advancement: {name} {message}"),
            )),
            Verdict::Inconclusive => Some((
                "Inconclusive",
                format!("Inconclusive {service} measurement: {name} {message}"),
            )),
            Verdict::Error => Some((
                "MeasurementError",
                format!("Measurement error {service}: {name} could not be measured: {message}"),
            )),
        };
        let dry_run = spec.dry_run;
        if let Some((kind, line)) = line {
            let line = if dry_run {
                format!("{line} (dryRun: not deciding)")
            } else {
                line
            };
            self.emit(now_ms, kind, line);
        }
    }

    /// Moves through the strategy as far as the state allows.
    fn evaluate(
        &mut self,
        ctx: Ctx<'_>,
        now_ms: u64,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) {
        let Some(strategy) = ctx.service.strategy.as_ref() else {
            return;
        };
        if self.before_traffic() {
            return;
        }
        match &strategy.kind {
            StrategyKind::Steps(plan) => self.evaluate_steps(ctx, strategy, plan, now_ms),
            StrategyKind::Progression(progression) => {
                if self.phase == Phase::Progressing {
                    self.evaluate_progression(ctx, progression, now_ms, builtin);
                }
            }
            StrategyKind::Iterations(iterations) => {
                if self.phase == Phase::Progressing {
                    self.evaluate_iterations(ctx, iterations, now_ms, builtin);
                }
            }
            StrategyKind::BlueGreen(bg) => self.evaluate_blue_green(ctx, strategy, bg, now_ms),
        }
    }

    fn promote(&mut self, now_ms: u64) {
        let canary = self.canary_version.clone().unwrap_or_default();
        let ending = self.rules_ending();
        self.clear_runs("terminated: the canary was promoted");
        self.promoted = true;
        self.phase = Phase::Healthy;
        self.pause = None;
        self.stable_version = canary.clone();
        self.message = promoted_message(&canary, &self.config_stable_version);
        let line = format!(
            "Promotion completed: {} {canary} is stable{ending}",
            self.service
        );
        self.end_revision(now_ms, RevisionOutcome::Promoted, &line);
        self.emit(now_ms, "Promoted", line);
        self.ended = self.new_events.last().map(|e| (e.clone(), false));
    }

    fn abort(&mut self, now_ms: u64, reason: String) {
        self.note_switch_back(now_ms);
        let ending = self.rules_ending();
        self.clear_runs("terminated: the rollout was aborted");
        self.phase = Phase::Degraded;
        self.pause = None;
        self.strategy.reset_weight();
        let canary = self.canary_version.clone().unwrap_or_default();
        self.message = format!(
            "{canary} aborted: {reason}; {} serves 100% until the config names another canary or an operator runs retry",
            self.stable_version
        );
        let line = format!("Rolling back {}: {reason}{ending}", self.service);
        self.end_revision(now_ms, RevisionOutcome::Aborted, &reason);
        self.emit(now_ms, "Rollback", line);
        self.ended = self.new_events.last().map(|e| (e.clone(), true));
    }

    fn pause_inconclusive(&mut self, now_ms: u64, reason: String) {
        self.phase = Phase::Paused;
        self.pause = Some(PauseReason::Inconclusive);
        self.paused_at_ms = Some(now_ms);
        self.message = format!(
            "paused at weight {}: {reason}; promote to go on, abort to roll back",
            self.weight()
        );
        let line = format!("Paused {}: {reason}", self.service);
        self.emit(now_ms, "Paused", line);
    }

    /// Applies an operator command.
    pub fn command(
        &mut self,
        ctx: Ctx<'_>,
        command: Command,
        now_ms: u64,
    ) -> Result<Effects, String> {
        let before = self.begin();
        self.command_inner(ctx, command, now_ms)?;
        let mut effects = self.finish(before, Vec::new());
        effects.changed = true;
        Ok(effects)
    }

    fn command_inner(&mut self, ctx: Ctx<'_>, command: Command, now_ms: u64) -> Result<(), String> {
        let service = self.service.clone();
        match command {
            Command::Promote { full } => {
                if !self.in_rollout() {
                    return Err(format!(
                        "{service} has no rollout in progress (phase {:?})",
                        self.phase
                    ));
                }
                if full {
                    self.emit(now_ms, "PromoteFull", format!("{service}: promote --full by operator: skipping remaining steps and analysis"));
                    match ctx.service.strategy.as_ref().and_then(|s| s.blue_green()) {
                        Some(bg) => self.promote_blue_green(bg, now_ms),
                        None => self.promote(now_ms),
                    }
                    return Ok(());
                }
                if self.pause == Some(PauseReason::StateUnreadable) {
                    self.emit(
                        now_ms,
                        "Resumed",
                        format!("{service}: operator restarted the rollout from step 1"),
                    );
                    self.restart_steps(ctx, now_ms);
                    return Ok(());
                }
                if self.pass_gate_by_operator(ctx, now_ms) {
                    return Ok(());
                }
                let skipped = self.strategy.step_index() + 1;
                self.phase = Phase::Progressing;
                self.pause = None;
                self.paused_at_ms = None;
                let promoted = match ctx.service.strategy.as_ref().map(|s| &s.kind) {
                    Some(StrategyKind::Progression(progression)) => {
                        self.skip_progression_step(progression, now_ms)
                    }
                    Some(StrategyKind::Iterations(iterations)) => {
                        self.skip_iteration(iterations, now_ms)
                    }
                    Some(StrategyKind::BlueGreen(bg)) => {
                        self.skip_blue_green_phase(bg, now_ms);
                        true
                    }
                    _ => {
                        self.skip_step(now_ms);
                        false
                    }
                };
                if promoted {
                    return Ok(());
                }
                self.emit(
                    now_ms,
                    "Promoted step",
                    format!("{service}: step {skipped} promoted by operator"),
                );
                Ok(())
            }
            Command::Abort => {
                if self.promoted && self.scaling_down() {
                    return Err(format!(
                        "{service} is already promoted (scaleDownDelay running): run undo to switch back"
                    ));
                }
                if self.promoted && self.phase == Phase::Healthy {
                    return Err(format!(
                        "{service}: {} is already promoted, nothing to abort; run undo to return to {}",
                        self.stable_version, self.config_stable_version
                    ));
                }
                if !self.in_rollout() {
                    return Err(format!(
                        "{service} has no rollout in progress (phase {:?})",
                        self.phase
                    ));
                }
                self.abort(now_ms, "aborted by operator".into());
                Ok(())
            }
            Command::Retry => {
                if self.phase != Phase::Degraded || self.canary_version.is_none() {
                    return Err(format!(
                        "{service} is not aborted (phase {:?}); retry restarts an aborted rollout",
                        self.phase
                    ));
                }
                if ctx.service.canary.as_ref().map(|c| &c.version.version)
                    != self.canary_version.as_ref()
                {
                    return Err(format!(
                        "{service}: the config no longer names the aborted canary"
                    ));
                }
                let canary = self.canary_version.clone().unwrap_or_default();
                if let Some(entry) = self
                    .history
                    .iter_mut()
                    .rev()
                    .find(|r| r.revision == self.revision)
                {
                    entry.ended_at_ms = None;
                    entry.outcome = RevisionOutcome::Progressing;
                    entry.message.clear();
                }
                self.finished_runs.clear();
                self.restart_steps(ctx, now_ms);
                self.emit(
                    now_ms,
                    "Retry",
                    format!(
                        "Retrying {service} rollout of {canary} from step 1 (revision {})",
                        self.revision
                    ),
                );
                Ok(())
            }
            Command::Pause => {
                if self.phase != Phase::Progressing {
                    return Err(format!(
                        "{service} is not progressing (phase {:?})",
                        self.phase
                    ));
                }
                self.phase = Phase::Paused;
                self.pause = Some(PauseReason::Operator);
                self.paused_at_ms = Some(now_ms);
                self.message = format!("paused by operator at weight {}", self.weight());
                self.emit(
                    now_ms,
                    "Paused",
                    format!(
                        "Paused {service} by operator at canary weight {}",
                        self.weight()
                    ),
                );
                Ok(())
            }
            Command::Resume => {
                if self.phase != Phase::Paused {
                    return Err(format!("{service} is not paused (phase {:?})", self.phase));
                }
                match self.pause {
                    Some(PauseReason::Step | PauseReason::Gate) => {
                        return self.command_inner(ctx, Command::Promote { full: false }, now_ms)
                    }
                    Some(PauseReason::StateUnreadable) => {
                        self.emit(
                            now_ms,
                            "Resumed",
                            format!("{service}: operator restarted the rollout from step 1"),
                        );
                        self.restart_steps(ctx, now_ms);
                        return Ok(());
                    }
                    _ => {}
                }
                // The paused time does not count toward the step's duration or deadline.
                if let Some(paused_at) = self.paused_at_ms.take() {
                    self.strategy.shift_start(now_ms.saturating_sub(paused_at));
                }
                if self.pause == Some(PauseReason::Inconclusive) {
                    // Measure again from scratch.
                    self.strategy.drop_runs();
                }
                self.phase = Phase::Progressing;
                self.pause = None;
                self.emit(
                    now_ms,
                    "Resumed",
                    format!("Resumed {service} at canary weight {}", self.weight()),
                );
                Ok(())
            }
            Command::Undo => {
                if let Some(result) = self.undo_blue_green(now_ms) {
                    return result;
                }
                if self.in_rollout() {
                    self.abort(now_ms, "undone by operator".into());
                    return Ok(());
                }
                if !self.promoted {
                    return Err(format!("{service}: no previous stable revision to return to (the config names only {})", self.config_stable_version));
                }
                let canary = self.canary_version.clone().unwrap_or_default();
                let previous = self.config_stable_version.clone();
                self.promoted = false;
                self.stable_version = previous.clone();
                self.phase = Phase::Degraded;
                self.strategy.reset_weight();
                self.message = format!(
                    "undone: {previous} is stable again and {canary} is rolled back; update the config (or run retry) to roll {canary} out again"
                );
                if let Some(entry) = self
                    .history
                    .iter_mut()
                    .rev()
                    .find(|r| r.revision == self.revision)
                {
                    entry.outcome = RevisionOutcome::Undone;
                    entry.ended_at_ms = Some(now_ms);
                    entry.message = format!("undone by operator: {previous} is stable again");
                }
                self.emit(
                    now_ms,
                    "Undo",
                    format!("Undo {service}: {previous} serves 100% again; {canary} rolled back"),
                );
                Ok(())
            }
        }
    }

    /// Whether anything is running that needs ticks.
    pub fn active(&self) -> bool {
        self.in_rollout() || self.scaling_down()
    }
}

fn promoted_message(canary: &str, config_stable: &str) -> String {
    if canary == config_stable {
        format!("{canary} is stable")
    } else {
        format!(
            "{canary} is stable (promoted); the config still names {config_stable} as stable — set stable to {canary} and remove the canary"
        )
    }
}

fn find_metric<'a>(
    templates: &'a [AnalysisTemplate],
    template: &str,
    name: &str,
) -> Option<&'a Metric> {
    templates
        .iter()
        .find(|t| t.name == template)?
        .metrics
        .iter()
        .find(|m| m.name == name)
}

/// Judges an outcome with the metric's conditions.
fn judge(
    metric: &Metric,
    vars: &crate::engine::analysis::Vars,
    outcome: &Outcome,
) -> (Verdict, String) {
    use crate::engine::analysis::condition::Condition;
    let compile = |text: &Option<String>| -> Result<Option<Condition>, String> {
        match text {
            Some(text) => Condition::compile(&crate::engine::analysis::substitute(text, vars))
                .map(Some)
                .map_err(|e| format!("condition `{text}`: {e}")),
            None => Ok(None),
        }
    };
    let success = match compile(&metric.success_condition) {
        Ok(c) => c,
        Err(message) => return (Verdict::Error, message),
    };
    let failure = match compile(&metric.failure_condition) {
        Ok(c) => c,
        Err(message) => return (Verdict::Error, message),
    };
    crate::engine::analysis::judge(success.as_ref(), failure.as_ref(), outcome)
}

/// A Flagger builtin check's verdict: success rate in percent, duration in milliseconds.
fn judge_check(check: &weir_config::Check, outcome: &Outcome) -> CheckResult {
    let (verdict, message) = match outcome {
        Outcome::Value(measured) => {
            match measured.value.as_f64() {
                Some(raw) => {
                    let (value, unit) = match check.kind {
                        CheckKind::RequestSuccessRate => (raw * 100.0, "%"),
                        _ => (raw * 1000.0, "ms"),
                    };
                    let window = measured.window.map(humantime).unwrap_or_default();
                    let requests = measured.requests.unwrap_or(0);
                    if let Some(min) = check.min.filter(|min| value < *min) {
                        (Verdict::Failed, format!("{value:.2}{unit} < {min}{unit} over {window} ({requests} requests)"))
                    } else if let Some(max) = check.max.filter(|max| value > *max) {
                        (Verdict::Failed, format!("{value:.2}{unit} > {max}{unit} over {window} ({requests} requests)"))
                    } else {
                        (
                            Verdict::Successful,
                            format!("{value:.2}{unit} over {window} ({requests} requests)"),
                        )
                    }
                }
                None => (Verdict::Error, format!("not a number: {}", measured.value)),
            }
        }
        Outcome::NoData(why) => (Verdict::Inconclusive, why.clone()),
        Outcome::Error(why) => (Verdict::Error, why.clone()),
    };
    CheckResult {
        name: check.name.clone(),
        verdict,
        message,
    }
}

/// Why a run failed, errored or was inconclusive, with the limit and the last measurement.
fn run_failure(run: &AnalysisRun, templates: &[AnalysisTemplate]) -> String {
    let Some(metric) = run.deciding_metric() else {
        return format!("analysis {:?}", run.phase);
    };
    let spec = find_metric(templates, &metric.template, &metric.name);
    let last = metric.measurements.iter().rev().find(|m| match run.phase {
        RunPhase::Failed => m.verdict == Verdict::Failed,
        RunPhase::Error => m.verdict == Verdict::Error,
        RunPhase::Inconclusive => m.verdict == Verdict::Inconclusive,
        _ => true,
    });
    let last = last.map(|m| m.message.as_str()).unwrap_or("no measurement");
    match (run.phase, spec) {
        (RunPhase::Failed, Some(spec)) => format!(
            "{} failed {} time(s) (failureLimit {}): {last}",
            metric.name, metric.failed, spec.failure_limit
        ),
        (RunPhase::Error, Some(spec)) => format!(
            "{} could not be measured {} time(s) in a row (consecutiveErrorLimit {}): {last} — a provider error, not an SLO breach",
            metric.name, metric.consecutive_errors, spec.consecutive_error_limit
        ),
        (RunPhase::Inconclusive, Some(spec)) => format!(
            "{} inconclusive {} time(s) (inconclusiveLimit {}): {last}",
            metric.name, metric.inconclusive, spec.inconclusive_limit
        ),
        _ => format!("{} {:?}: {last}", metric.name, run.phase),
    }
}

fn run_summary(run: &AnalysisRun) -> String {
    run.metrics
        .iter()
        .map(|m| {
            let last = m
                .measurements
                .last()
                .map(|x| x.message.as_str())
                .unwrap_or("-");
            format!("{} {last}", m.name)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `30s`, `2m`, `1m30s`, `500ms`.
pub fn humantime(duration: std::time::Duration) -> String {
    let ms = millis(duration);
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    match (secs / 3600, (secs % 3600) / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests;
