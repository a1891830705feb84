//! Argo canary steps (`strategy.canary.steps`): set weights, pauses, inline analysis, background
//! analysis from `startingStep`.

use serde::{Deserialize, Serialize};
use weir_config::{CanarySteps, Step, Strategy, WebhookKind};

use super::deadline::run_due_ms;
use super::routes::{RouteChange, Routes};
use super::run::{millis, AnalysisRun, RunKind, RunPhase};
use super::{humantime, run_failure, run_summary, Ctx, PauseReason, Phase, Rollout, StrategyState};

/// The state of an Argo step plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepsState {
    /// The current step, counted from 0.
    pub step_index: usize,
    /// When the current step started (ms since the Unix epoch).
    pub step_started_ms: u64,
    /// The canary weight, in basis points.
    pub weight_bp: u16,
    /// The current inline analysis (an `analysis` step).
    pub inline_run: Option<AnalysisRun>,
    /// The background analysis.
    pub background_run: Option<AnalysisRun>,
    /// Header and mirror routes set by steps (in force while the rollout progresses or pauses).
    #[serde(default)]
    pub routes: Routes,
    /// Fingerprint of the steps this state walks (`plan_fingerprint`); when the config's steps
    /// change mid-rollout the rollout starts over from step 1, as Argo Rollouts does with its
    /// `currentStepHash`. Absent in files written before it existed: the next reconcile adopts
    /// the config's steps without restarting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

// === impl StepsState ===

impl StepsState {
    /// At the first step of `plan`.
    pub fn start(plan: Option<&CanarySteps>, now_ms: u64) -> StepsState {
        StepsState {
            step_started_ms: now_ms,
            plan: plan.map(|p| plan_fingerprint(&p.steps)),
            ..StepsState::default()
        }
    }
}

/// A fingerprint of a step plan (FNV-1a over its debug form, in hex): equal plans give equal
/// fingerprints. Stable across runs of one weir build; a fingerprint written by another build
/// that differs only in form restarts the steps, which narrows canary traffic, never widens it.
pub fn plan_fingerprint(steps: &[Step]) -> String {
    let text = format!("{steps:?}");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

// === impl Rollout (steps) ===

impl Rollout {
    fn steps_ref(&self) -> Option<&StepsState> {
        match &self.strategy {
            StrategyState::Steps(state) => Some(state),
            _ => None,
        }
    }

    fn steps_state(&mut self) -> Option<&mut StepsState> {
        match &mut self.strategy {
            StrategyState::Steps(state) => Some(state),
            _ => None,
        }
    }

    /// Starts the background analysis once the canary has traffic, and an `analysis` step's run.
    pub(super) fn ensure_step_runs(&mut self, ctx: Ctx<'_>, plan: &CanarySteps, now_ms: u64) {
        // Background analysis keeps watching through `pause: {}` and operator pauses.
        let watching = match self.phase {
            Phase::Progressing => true,
            Phase::Paused => matches!(
                self.pause,
                Some(PauseReason::Step | PauseReason::Operator | PauseReason::Gate)
            ),
            _ => false,
        };
        if !watching {
            return;
        }
        let Some(state) = self.steps_state() else {
            return;
        };
        let step_index = state.step_index;
        // Header-routed requests count as the canary's too.
        let has_traffic = state.weight_bp > 0 || !state.routes.header_routes.is_empty();
        let needs_background = state.background_run.is_none();
        let needs_inline = state.inline_run.is_none();
        if let Some(background) = &plan.background {
            // Not before the canary has traffic: a measurement of a version nobody reached yet
            // can only be inconclusive.
            if needs_background && step_index >= background.starting_step && has_traffic {
                let id = self.take_run_id();
                let run = AnalysisRun::new(
                    id,
                    RunKind::Background,
                    &background.analysis,
                    ctx.templates,
                    now_ms,
                );
                if let Some(state) = self.steps_state() {
                    state.background_run = Some(run);
                }
                self.emit(
                    now_ms,
                    "AnalysisStarted",
                    format!(
                        "{}: background analysis started at step {}",
                        self.service,
                        step_index + 1
                    ),
                );
            }
        }
        if self.phase != Phase::Progressing {
            return;
        }
        if let Some(Step::Analysis(analysis)) = plan.steps.get(step_index) {
            if needs_inline {
                let id = self.take_run_id();
                let run = AnalysisRun::new(
                    id,
                    RunKind::Inline { step: step_index },
                    analysis,
                    ctx.templates,
                    now_ms,
                );
                if let Some(state) = self.steps_state() {
                    state.inline_run = Some(run);
                }
            }
        }
    }

    /// Moves through the steps as far as the state allows.
    pub(super) fn evaluate_steps(
        &mut self,
        ctx: Ctx<'_>,
        strategy: &Strategy,
        plan: &CanarySteps,
        now_ms: u64,
    ) {
        // Background analysis decides at any time, also while the rollout waits at a `pause: {}`
        // step or an operator's pause: a canary that fails while waiting keeps its weight only
        // until the failure is measured, as in Argo Rollouts.
        let waiting = self.phase == Phase::Paused
            && matches!(
                self.pause,
                Some(PauseReason::Step | PauseReason::Operator | PauseReason::Gate)
            );
        if self.phase != Phase::Progressing && !waiting {
            return;
        }
        let Some(state) = self.steps_ref() else {
            return;
        };
        if let Some(run) = &state.background_run {
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
        let steps = &plan.steps;
        let n_steps = steps.len();
        loop {
            if self.phase != Phase::Progressing {
                return;
            }
            let Some(state) = self.steps_ref() else {
                return;
            };
            let (index, started_ms) = (state.step_index, state.step_started_ms);
            let Some(step) = steps.get(index) else {
                if self.gate(ctx, WebhookKind::ConfirmPromotion, now_ms) {
                    return;
                }
                return self.promote(now_ms);
            };
            let display = index + 1;
            match step {
                Step::SetHeaderRoute(route) => {
                    let change = self.steps_ref().map(|s| s.routes.clone().set_header(route));
                    if self.mixes(change.and_then(RouteChange::widens)) {
                        // The next tick (a fresh operation) takes this step.
                        break;
                    }
                    self.snapshot_routes();
                    let change = match self.steps_state() {
                        Some(state) => state.routes.set_header(route),
                        None => return,
                    };
                    let at = format!("step {display}/{n_steps}");
                    self.header_route_set(route, change, &at, now_ms);
                    self.next_step(now_ms);
                }
                Step::SetMirrorRoute(route) => {
                    let change = self.steps_ref().map(|s| s.routes.clone().set_mirror(route));
                    if self.mixes(change.and_then(RouteChange::widens)) {
                        break;
                    }
                    self.snapshot_routes();
                    let change = match self.steps_state() {
                        Some(state) => state.routes.set_mirror(route),
                        None => return,
                    };
                    let at = format!("step {display}/{n_steps}");
                    self.mirror_route_set(route, change, &at, now_ms);
                    self.next_step(now_ms);
                }
                Step::SetWeight(weight) => {
                    let current = self.strategy.weight_bp();
                    let widens = weight
                        .basis_points()
                        .cmp(&current)
                        .is_ne()
                        .then(|| weight.basis_points() > current);
                    if self.mixes(widens) {
                        break;
                    }
                    if widens == Some(true)
                        && self.gate(ctx, WebhookKind::ConfirmTrafficIncrease, now_ms)
                    {
                        break;
                    }
                    if let Some(state) = self.steps_state() {
                        state.weight_bp = weight.basis_points();
                    }
                    self.set_message(format!("canary weight {weight} (step {display}/{n_steps})"));
                    let line = format!(
                        "Advance {} canary weight {weight} (step {display}/{n_steps})",
                        self.service
                    );
                    self.emit(now_ms, "Advance", line);
                    self.next_step(now_ms);
                }
                Step::Pause(Some(duration)) => {
                    if now_ms >= started_ms.saturating_add(millis(*duration)) {
                        self.next_step(now_ms);
                    } else {
                        self.set_message(format!(
                            "pausing {} at weight {} (step {display}/{n_steps})",
                            humantime(*duration),
                            self.weight()
                        ));
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
                    let Some(run) = self.steps_ref().and_then(|s| s.inline_run.as_ref()) else {
                        break;
                    };
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
                            self.set_message(format!(
                                "analysis running at weight {} (step {display}/{n_steps})",
                                self.weight()
                            ));
                            break;
                        }
                    }
                }
            }
        }
        // The deadline (`deadline.rs`): a step is due at once, an analysis step at the end of its
        // run's schedule; a timed pause never counts.
        let Some(state) = self.steps_ref() else {
            return;
        };
        let (index, started_ms) = (state.step_index, state.step_started_ms);
        let due_ms = match steps.get(index) {
            Some(Step::Pause(_)) | None => None,
            Some(Step::Analysis(_)) => match &state.inline_run {
                Some(run) => run_due_ms(run, ctx.templates, started_ms),
                None => Some(started_ms),
            },
            Some(_) => Some(started_ms),
        };
        let kind = match steps.get(index) {
            Some(Step::Analysis(_)) => " (analysis)",
            _ => "",
        };
        self.enforce_deadline(
            strategy,
            due_ms,
            || format!("step {}/{n_steps}{kind}", index + 1),
            now_ms,
        );
    }

    /// Completes the current step.
    pub(super) fn next_step(&mut self, now_ms: u64) {
        let Some(state) = self.steps_state() else {
            return;
        };
        let finished = state.inline_run.take();
        state.step_index += 1;
        state.step_started_ms = now_ms;
        self.finished_runs.extend(finished);
        self.touch();
    }

    /// `promote` (not `--full`): skips the current step; an inconclusive background run starts
    /// over.
    pub(super) fn skip_step(&mut self, now_ms: u64) {
        if let Some(state) = self.steps_state() {
            // A skipped `analysis` step's run ends as terminated, not as running forever.
            if let Some(run) = &mut state.inline_run {
                run.terminate("terminated: step skipped by operator");
            }
            let stopped = state
                .background_run
                .as_ref()
                .is_some_and(|run| run.phase != RunPhase::Running);
            if stopped {
                let run = state.background_run.take();
                self.finished_runs.extend(run);
            }
        }
        self.next_step(now_ms);
    }
}
