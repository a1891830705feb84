//! The rollout state machine: pure, driven by the config (desired state), measurements, operator
//! commands and the time, given as milliseconds since the Unix epoch.
//!
//! One [`Rollout`] per service with a strategy. It decides the canary weight the route table
//! serves ([`Rollout::weight`]), records every decision as an event with its numbers, and is
//! persisted whole after every change (see `state.rs`), so a restart resumes the same revision,
//! step and weight.
//!
//! Semantics follow Argo Rollouts (steps, background analysis, promote/abort/retry/undo) and
//! Flagger (stepWeight/maxWeight/threshold progression). Where they differ from the users'
//! complaints about those tools, weir chooses: no data is inconclusive (a pause), never a failure;
//! a provider outage is an error measurement, never a failed one; every abort names the metric,
//! the value, the condition and the window.

pub mod run;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use weir_config::{
    AnalysisTemplate, BuiltinMetric, BuiltinProvider, CheckKind, LatencyQuantile, Metric, Provider,
    Service, Step, Weight,
};

use self::run::{millis, AnalysisRun, Measurement, RunKind, RunPhase};
use crate::engine::analysis::{Outcome, Verdict};

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
    /// Argument values for `{{args.NAME}}`.
    pub args: BTreeMap<String, String>,
}

/// A builtin measurement the shell answers synchronously from its stats window.
#[derive(Clone, Debug)]
pub struct BuiltinQuery<'a> {
    /// What to measure.
    pub provider: &'a BuiltinProvider,
    /// The version label whose stats to read.
    pub version: &'a str,
}

/// Flagger progression state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Failed checks so far in this revision.
    pub failed_checks: u32,
    /// When checks run next.
    pub next_check_ms: u64,
    /// Template checks still measuring for the current interval: run ids.
    pub pending_runs: Vec<u64>,
    /// Builtin check results already taken for the current interval: (passed, message).
    pub pending_results: Vec<CheckResult>,
}

/// One Flagger check's result for an interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Successful, Failed, Inconclusive or Error.
    pub verdict: Verdict,
    /// The numbers.
    pub message: String,
}

/// A service's rollout, persisted whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The current step (Argo steps) or weight index (Flagger).
    pub step_index: usize,
    /// When the current step started (ms since the Unix epoch).
    pub step_started_ms: u64,
    /// The canary weight while progressing or paused, in basis points.
    pub weight_bp: u16,
    /// The canary is promoted: its arm serves everything as weir's stable.
    pub promoted: bool,
    /// Why paused, when paused.
    pub pause: Option<PauseReason>,
    /// When an operator pause began (its time does not count toward the step).
    pub paused_at_ms: Option<u64>,
    /// The current inline analysis (an `analysis` step).
    pub inline_run: Option<AnalysisRun>,
    /// The background analysis.
    pub background_run: Option<AnalysisRun>,
    /// Finished runs of this revision, newest last.
    pub finished_runs: Vec<AnalysisRun>,
    /// Template check runs of the Flagger progression.
    pub check_runs: Vec<AnalysisRun>,
    /// Flagger progression state.
    pub progress: Progress,
    /// Next run id.
    pub next_run_id: u64,
    /// Revisions, newest last.
    pub history: Vec<Revision>,
    /// Recent events, newest last.
    pub events: VecDeque<Event>,
    /// Events not yet handed to the shell.
    #[serde(skip)]
    pub new_events: Vec<Event>,
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
            step_index: 0,
            step_started_ms: 0,
            weight_bp: 0,
            promoted: false,
            pause: None,
            paused_at_ms: None,
            inline_run: None,
            background_run: None,
            finished_runs: Vec::new(),
            check_runs: Vec::new(),
            progress: Progress::default(),
            next_run_id: 1,
            history: Vec::new(),
            events: VecDeque::new(),
            new_events: Vec::new(),
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
            rollout.step_started_ms = now_ms;
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
                Weight::from_basis_points(self.weight_bp).unwrap_or(Weight::ZERO)
            }
            _ => Weight::ZERO,
        }
    }

    /// Steps in the plan (Argo steps, or Flagger weights plus the promotion).
    pub fn step_count(service: &Service) -> usize {
        match service.strategy.as_ref() {
            Some(strategy) => match &strategy.progression() {
                Some(progression) => progression.step_weights.len(),
                None => strategy.steps().len(),
            },
            None => 0,
        }
    }

    fn in_rollout(&self) -> bool {
        matches!(self.phase, Phase::Progressing | Phase::Paused) && self.canary_version.is_some()
    }

    /// Brings the state in line with the config (the desired state).
    pub fn reconcile(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        let service = ctx.service;
        let config_stable = service.stable.version.clone();
        let config_canary = service.canary.as_ref().map(|c| c.version.version.clone());
        if self.config_stable_version != config_stable {
            self.config_stable_version = config_stable.clone();
            if !self.promoted || self.canary_version.as_deref() != Some(config_stable.as_str()) {
                // The config's stable arm serves as stable at once: the file is the truth for it.
                self.stable_version = config_stable.clone();
            }
        }
        match config_canary {
            None => {
                if self.in_rollout() {
                    let version = self.canary_version.clone().unwrap_or_default();
                    let message = format!(
                        "Rolling back {}: canary {version} removed from the config; {config_stable} serves 100%",
                        self.service
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
                self.weight_bp = 0;
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
    }

    fn start_revision(&mut self, ctx: Ctx<'_>, canary: String, now_ms: u64) {
        if self.in_rollout() {
            let previous = self.canary_version.clone().unwrap_or_default();
            let message = format!(
                "Restarting {} rollout: canary changed from {previous} to {canary}",
                self.service
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
        self.emit(
            now_ms,
            "Started",
            format!(
                "New revision {}: rolling out {} {canary} over {steps} steps (stable {})",
                self.revision, self.service, self.stable_version
            ),
        );
    }

    fn restart_steps(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        self.clear_runs("terminated: the rollout started over");
        self.phase = Phase::Progressing;
        self.pause = None;
        self.paused_at_ms = None;
        self.step_index = 0;
        self.step_started_ms = now_ms;
        self.weight_bp = 0;
        self.progress = Progress::default();
        if let Some(progression) = ctx.service.strategy.as_ref().and_then(|s| s.progression()) {
            self.progress.next_check_ms = now_ms + millis(progression.interval);
            if let Some(first) = progression.step_weights.first() {
                self.weight_bp = first.basis_points();
            }
        }
        self.message = "progressing".into();
    }

    /// Ends the current runs; one still measuring is marked terminated with `reason`.
    fn clear_runs(&mut self, reason: &str) {
        for mut run in [self.inline_run.take(), self.background_run.take()]
            .into_iter()
            .flatten()
        {
            run.terminate(reason);
            self.finished_runs.push(run);
        }
        self.check_runs.clear();
        self.progress.pending_runs.clear();
        self.progress.pending_results.clear();
        let keep = 10;
        if self.finished_runs.len() > keep {
            let drop = self.finished_runs.len() - keep;
            self.finished_runs.drain(..drop);
        }
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

    fn emit(&mut self, now_ms: u64, kind: &str, message: String) {
        let event = Event {
            at_ms: now_ms,
            service: self.service.clone(),
            revision: self.revision,
            kind: kind.to_string(),
            message,
            weight: self.weight().percent(),
            phase: self.phase,
        };
        self.events.push_back(event.clone());
        while self.events.len() > KEPT_EVENTS {
            self.events.pop_front();
        }
        self.new_events.push(event);
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.new_events)
    }

    /// Advances time: measures due builtin metrics through `builtin`, moves through steps, and
    /// returns the external measurements now due.
    pub fn tick(
        &mut self,
        ctx: Ctx<'_>,
        now_ms: u64,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) -> Vec<Due> {
        if !self.in_rollout() {
            return Vec::new();
        }
        let mut external = Vec::new();
        // Measure, then decide, until nothing moves: a step that completes may start an analysis
        // whose first measurement is due at once.
        for _ in 0..32 {
            let before = (self.step_index, self.phase, self.weight_bp);
            self.ensure_runs(ctx, now_ms);
            external.extend(self.measure_due(ctx, now_ms, builtin));
            self.evaluate(ctx, now_ms, builtin);
            if (self.step_index, self.phase, self.weight_bp) == before {
                break;
            }
        }
        external
    }

    /// Records an external measurement.
    pub fn record(
        &mut self,
        ctx: Ctx<'_>,
        run_id: u64,
        metric_idx: usize,
        outcome: &Outcome,
        now_ms: u64,
    ) {
        self.record_outcome(ctx, run_id, metric_idx, outcome, now_ms);
        self.evaluate(ctx, now_ms, &mut |_| Outcome::NoData("not measured".into()));
    }

    fn runs_mut(&mut self) -> impl Iterator<Item = &mut AnalysisRun> {
        self.inline_run
            .iter_mut()
            .chain(self.background_run.iter_mut())
            .chain(self.check_runs.iter_mut())
    }

    fn ensure_runs(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        let Some(strategy) = ctx.service.strategy.as_ref() else {
            return;
        };
        // Background analysis keeps watching through `pause: {}` and operator pauses.
        let watching = match self.phase {
            Phase::Progressing => true,
            Phase::Paused => matches!(self.pause, Some(PauseReason::Step | PauseReason::Operator)),
            _ => false,
        };
        if !watching {
            return;
        }
        if let Some(background) = &strategy.background() {
            // Not before the canary has traffic: a measurement of a version nobody reached yet
            // can only be inconclusive.
            if self.background_run.is_none()
                && self.step_index >= background.starting_step
                && self.weight_bp > 0
                && strategy.progression().is_none()
            {
                let id = self.take_run_id();
                self.background_run = Some(AnalysisRun::new(
                    id,
                    RunKind::Background,
                    &background.analysis,
                    ctx.templates,
                    now_ms,
                ));
                self.emit(
                    now_ms,
                    "AnalysisStarted",
                    format!(
                        "{}: background analysis started at step {}",
                        self.service,
                        self.step_index + 1
                    ),
                );
            }
        }
        if self.phase != Phase::Progressing {
            return;
        }
        if let Some(Step::Analysis(analysis)) = strategy.steps().get(self.step_index) {
            if self.inline_run.is_none() {
                let id = self.take_run_id();
                self.inline_run = Some(AnalysisRun::new(
                    id,
                    RunKind::Inline {
                        step: self.step_index,
                    },
                    analysis,
                    ctx.templates,
                    now_ms,
                ));
            }
        }
    }

    fn take_run_id(&mut self) -> u64 {
        let id = self.next_run_id;
        self.next_run_id += 1;
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
        for run in self.runs_mut() {
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
                    args,
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
        let Some(run) = self.runs_mut().find(|r| r.id == run_id) else {
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
        let (verdict, explanation) = judge(&spec, outcome);
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

    /// Moves through steps as far as the state allows.
    fn evaluate(
        &mut self,
        ctx: Ctx<'_>,
        now_ms: u64,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) {
        let Some(strategy) = ctx.service.strategy.as_ref() else {
            return;
        };
        // Background analysis decides at any time, also while the rollout waits at a `pause: {}`
        // step or an operator's pause: a canary that fails while waiting keeps its weight only
        // until the failure is measured, as in Argo Rollouts.
        let waiting = self.phase == Phase::Paused
            && matches!(self.pause, Some(PauseReason::Step | PauseReason::Operator));
        if self.phase != Phase::Progressing && !waiting {
            return;
        }
        if let Some(run) = &self.background_run {
            match run.phase {
                RunPhase::Failed | RunPhase::Error => {
                    let reason = run_failure(run, ctx.templates);
                    return self.abort(now_ms, reason);
                }
                RunPhase::Inconclusive if !waiting => {
                    let reason = run_failure(run, ctx.templates);
                    return self.pause_inconclusive(now_ms, reason);
                }
                _ => {}
            }
        }
        if self.phase != Phase::Progressing {
            return;
        }
        if let Some(progression) = &strategy.progression() {
            return self.evaluate_progression(ctx, progression, now_ms, builtin);
        }
        let steps = &strategy.steps();
        let n_steps = steps.len();
        loop {
            if self.phase != Phase::Progressing {
                return;
            }
            let Some(step) = steps.get(self.step_index) else {
                return self.promote(now_ms);
            };
            let display = self.step_index + 1;
            match step {
                // Routes are applied by the engine's strategy state (not yet): move on.
                Step::SetHeaderRoute(_) | Step::SetMirrorRoute(_) => self.next_step(now_ms),
                Step::SetWeight(weight) => {
                    self.weight_bp = weight.basis_points();
                    self.message = format!("canary weight {weight} (step {display}/{n_steps})");
                    let line = format!(
                        "Advance {} canary weight {weight} (step {display}/{n_steps})",
                        self.service
                    );
                    self.emit(now_ms, "Advance", line);
                    self.next_step(now_ms);
                }
                Step::Pause(Some(duration)) => {
                    if now_ms >= self.step_started_ms + millis(*duration) {
                        self.next_step(now_ms);
                    } else {
                        self.message = format!(
                            "pausing {} at weight {} (step {display}/{n_steps})",
                            humantime(*duration),
                            self.weight()
                        );
                        break;
                    }
                }
                Step::Pause(None) => {
                    self.phase = Phase::Paused;
                    self.pause = Some(PauseReason::Step);
                    self.message = format!(
                        "paused at weight {} (step {display}/{n_steps}) until promoted",
                        self.weight()
                    );
                    let line = format!("Paused {} at canary weight {} (step {display}/{n_steps}): waiting for promote", self.service, self.weight());
                    self.emit(now_ms, "Paused", line);
                    return;
                }
                Step::Analysis(_) => {
                    let Some(run) = &self.inline_run else { break };
                    match run.phase {
                        RunPhase::Successful => {
                            let line = format!(
                                "Analysis passed {} (step {display}/{n_steps}): {}",
                                self.service,
                                run_summary(run)
                            );
                            self.emit(now_ms, "AnalysisPassed", line);
                            self.next_step(now_ms);
                        }
                        RunPhase::Failed | RunPhase::Error => {
                            let reason = run_failure(run, ctx.templates);
                            return self.abort(now_ms, reason);
                        }
                        RunPhase::Inconclusive => {
                            let reason = run_failure(run, ctx.templates);
                            return self.pause_inconclusive(now_ms, reason);
                        }
                        RunPhase::Running | RunPhase::Terminated => {
                            self.message = format!(
                                "analysis running at weight {} (step {display}/{n_steps})",
                                self.weight()
                            );
                            break;
                        }
                    }
                }
            }
        }
        // The deadline: any step but an indefinite pause must finish in time.
        if self.phase == Phase::Progressing
            && now_ms > self.step_started_ms + millis(strategy.progress_deadline)
        {
            let reason = format!(
                "step {}/{n_steps} did not finish within progressDeadline {}",
                self.step_index + 1,
                humantime(strategy.progress_deadline)
            );
            self.abort(now_ms, reason);
        }
    }

    fn evaluate_progression(
        &mut self,
        ctx: Ctx<'_>,
        progression: &weir_config::Progression,
        now_ms: u64,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) {
        let n_steps = progression.step_weights.len();
        if self.progress.pending_runs.is_empty() && self.progress.pending_results.is_empty() {
            if now_ms < self.progress.next_check_ms {
                self.message = format!(
                    "canary weight {} (step {}/{n_steps}); next check in {}s",
                    self.weight(),
                    self.step_index + 1,
                    (self.progress.next_check_ms - now_ms).div_ceil(1000)
                );
                return;
            }
            // Start this interval's checks.
            self.progress.next_check_ms = now_ms + millis(progression.interval);
            let canary = self.canary_version.clone().unwrap_or_default();
            for check in &progression.checks {
                match &check.kind {
                    CheckKind::RequestSuccessRate | CheckKind::RequestDuration => {
                        let metric = match check.kind {
                            CheckKind::RequestSuccessRate => BuiltinMetric::SuccessRate,
                            _ => BuiltinMetric::LatencyQuantile(LatencyQuantile::P99),
                        };
                        let provider = BuiltinProvider {
                            metric,
                            window: check.window,
                            arm: weir_config::Arm::Canary,
                            min_requests: CHECK_MIN_REQUESTS,
                            traffic: weir_config::Traffic::Primary,
                        };
                        let outcome = builtin(BuiltinQuery {
                            provider: &provider,
                            version: &canary,
                        });
                        self.progress
                            .pending_results
                            .push(judge_check(check, &outcome));
                    }
                    CheckKind::Template(analysis) => {
                        let id = self.take_run_id();
                        let run = AnalysisRun::new(
                            id,
                            RunKind::Check {
                                check: check.name.clone(),
                            },
                            analysis,
                            ctx.templates,
                            now_ms,
                        );
                        self.check_runs.push(run);
                        self.progress.pending_runs.push(id);
                    }
                }
            }
            if !self.progress.pending_runs.is_empty() {
                // Template checks are measured by the next measure pass.
                return;
            }
        }
        // Collect finished template checks.
        let mut still_pending = Vec::new();
        for id in std::mem::take(&mut self.progress.pending_runs) {
            let Some(pos) = self.check_runs.iter().position(|r| r.id == id) else {
                continue;
            };
            let run = &self.check_runs[pos];
            if run.phase == RunPhase::Running {
                still_pending.push(id);
                continue;
            }
            let run = self.check_runs.remove(pos);
            let RunKind::Check { check } = &run.kind else {
                continue;
            };
            let verdict = match run.phase {
                RunPhase::Successful => Verdict::Successful,
                RunPhase::Failed => Verdict::Failed,
                RunPhase::Inconclusive => Verdict::Inconclusive,
                _ => Verdict::Error,
            };
            self.progress.pending_results.push(CheckResult {
                name: check.clone(),
                verdict,
                message: run_summary(&run),
            });
            self.finished_runs.push(run);
        }
        self.progress.pending_runs = still_pending;
        if !self.progress.pending_runs.is_empty() {
            return;
        }
        let results = std::mem::take(&mut self.progress.pending_results);
        let failed: Vec<&CheckResult> = results
            .iter()
            .filter(|r| r.verdict == Verdict::Failed)
            .collect();
        let undecided: Vec<&CheckResult> = results
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Inconclusive | Verdict::Error))
            .collect();
        if !failed.is_empty() {
            self.progress.failed_checks += 1;
            let what = failed
                .iter()
                .map(|r| format!("{} {}", r.name, r.message))
                .collect::<Vec<_>>()
                .join("; ");
            let line = format!(
                "Halt {} advancement: {what} (failed checks {}/{})",
                self.service, self.progress.failed_checks, progression.threshold
            );
            self.emit(now_ms, "Halt", line);
            if self.progress.failed_checks >= progression.threshold {
                let reason = format!(
                    "failed checks threshold reached {}: {what}",
                    progression.threshold
                );
                self.abort(now_ms, reason);
            } else {
                self.message = format!("halted at weight {}: {what}", self.weight());
            }
            return;
        }
        if !undecided.is_empty() {
            let what = undecided
                .iter()
                .map(|r| format!("{} {}", r.name, r.message))
                .collect::<Vec<_>>()
                .join("; ");
            let line = format!(
                "Halt {} advancement: {what} (not counted as a failure)",
                self.service
            );
            self.message = format!("halted at weight {}: {what}", self.weight());
            self.emit(now_ms, "Halt", line);
            return;
        }
        // Every check passed: the next weight, or promotion after the last.
        if self.step_index + 1 < n_steps {
            self.step_index += 1;
            self.step_started_ms = now_ms;
            self.weight_bp = progression.step_weights[self.step_index].basis_points();
            let line = format!(
                "Advance {} canary weight {} (step {}/{n_steps})",
                self.service,
                self.weight(),
                self.step_index + 1
            );
            self.message = format!(
                "canary weight {} (step {}/{n_steps})",
                self.weight(),
                self.step_index + 1
            );
            self.emit(now_ms, "Advance", line);
        } else {
            self.promote(now_ms);
        }
    }

    fn next_step(&mut self, now_ms: u64) {
        if let Some(run) = self.inline_run.take() {
            self.finished_runs.push(run);
        }
        self.step_index += 1;
        self.step_started_ms = now_ms;
    }

    fn promote(&mut self, now_ms: u64) {
        let canary = self.canary_version.clone().unwrap_or_default();
        self.clear_runs("terminated: the canary was promoted");
        self.promoted = true;
        self.phase = Phase::Healthy;
        self.pause = None;
        self.stable_version = canary.clone();
        self.message = promoted_message(&canary, &self.config_stable_version);
        let line = format!("Promotion completed: {} {canary} is stable", self.service);
        self.end_revision(now_ms, RevisionOutcome::Promoted, &line);
        self.emit(now_ms, "Promoted", line);
    }

    fn abort(&mut self, now_ms: u64, reason: String) {
        self.clear_runs("terminated: the rollout was aborted");
        self.phase = Phase::Degraded;
        self.pause = None;
        self.weight_bp = 0;
        let canary = self.canary_version.clone().unwrap_or_default();
        self.message = format!(
            "{canary} aborted: {reason}; {} serves 100% until the config names another canary or an operator runs retry",
            self.stable_version
        );
        let line = format!("Rolling back {}: {reason}", self.service);
        self.end_revision(now_ms, RevisionOutcome::Aborted, &reason);
        self.emit(now_ms, "Rollback", line);
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
    pub fn command(&mut self, ctx: Ctx<'_>, command: Command, now_ms: u64) -> Result<(), String> {
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
                    self.promote(now_ms);
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
                let skipped = self.step_index + 1;
                self.phase = Phase::Progressing;
                self.pause = None;
                self.paused_at_ms = None;
                let progression = ctx.service.strategy.as_ref().and_then(|s| s.progression());
                match progression {
                    Some(progression) => {
                        self.check_runs.clear();
                        self.progress.pending_runs.clear();
                        self.progress.pending_results.clear();
                        if self.step_index + 1 < progression.step_weights.len() {
                            self.step_index += 1;
                            self.weight_bp =
                                progression.step_weights[self.step_index].basis_points();
                            self.progress.next_check_ms = now_ms + millis(progression.interval);
                        } else {
                            self.promote(now_ms);
                            return Ok(());
                        }
                    }
                    None => {
                        if let Some(run) = &self.background_run {
                            if run.phase != RunPhase::Running {
                                // An inconclusive background run starts over.
                                let run = self.background_run.take();
                                self.finished_runs.extend(run);
                            }
                        }
                        self.next_step(now_ms);
                    }
                }
                self.emit(
                    now_ms,
                    "Promoted step",
                    format!("{service}: step {skipped} promoted by operator"),
                );
                Ok(())
            }
            Command::Abort => {
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
                    Some(PauseReason::Step) => {
                        return self.command(ctx, Command::Promote { full: false }, now_ms)
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
                    self.step_started_ms += now_ms.saturating_sub(paused_at);
                }
                if self.pause == Some(PauseReason::Inconclusive) {
                    // Measure again from scratch.
                    self.inline_run = None;
                    self.background_run = None;
                    self.check_runs.clear();
                    self.progress.pending_runs.clear();
                    self.progress.pending_results.clear();
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
                self.weight_bp = 0;
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
        self.in_rollout()
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
fn judge(metric: &Metric, outcome: &Outcome) -> (Verdict, String) {
    use crate::engine::analysis::condition::Condition;
    let compile = |text: &Option<String>| -> Result<Option<Condition>, String> {
        match text {
            Some(text) => Condition::compile(text)
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
