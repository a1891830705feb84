//! Flagger progression (`stepWeight`/`maxWeight`/`stepWeights`): every interval the checks run;
//! passing raises the weight (promotion after the last), failing counts toward `threshold`.

use serde::{Deserialize, Serialize};
use weir_config::{Progression, Traffic, WebhookKind};

use super::checks::{Checks, Interval};
use super::deadline::checks_due_ms;
use super::run::millis;
use super::{BuiltinQuery, Ctx, Outcome, Rollout, StrategyState};

/// The state of a Flagger progression.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressionState {
    /// The current weight's index in `stepWeights`.
    pub step_index: usize,
    /// When the current weight was set (ms since the Unix epoch).
    pub step_started_ms: u64,
    /// The canary weight, in basis points.
    pub weight_bp: u16,
    /// The interval checks.
    pub checks: Checks,
}

// === impl ProgressionState ===

impl ProgressionState {
    /// At the first weight; the first checks run one interval later.
    pub fn start(progression: &Progression, now_ms: u64) -> ProgressionState {
        ProgressionState {
            step_index: 0,
            step_started_ms: now_ms,
            weight_bp: progression
                .step_weights
                .first()
                .map_or(0, |w| w.basis_points()),
            checks: Checks::start(now_ms, progression.interval),
        }
    }
}

// === impl Rollout (progression) ===

impl Rollout {
    /// Runs the interval's checks when due, then advances, halts or rolls back.
    pub(super) fn evaluate_progression(
        &mut self,
        ctx: Ctx<'_>,
        progression: &Progression,
        now_ms: u64,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) {
        let canary = self.canary_version.clone().unwrap_or_default();
        let StrategyState::Progression(state) = &mut self.strategy else {
            return;
        };
        let outcome = state.checks.evaluate(
            ctx,
            &progression.checks,
            progression.interval,
            &canary,
            Traffic::Primary,
            now_ms,
            &mut self.next_run_id,
            &mut self.finished_runs,
            builtin,
        );
        let step = state.step_index;
        let n_steps = progression.step_weights.len();
        match outcome {
            Interval::Waiting { next_in_ms } => {
                self.set_message(format!(
                    "canary weight {} (step {}/{n_steps}); next check in {}s",
                    self.weight(),
                    step + 1,
                    next_in_ms.div_ceil(1000)
                ));
            }
            Interval::Measuring { changed } => {
                if changed {
                    self.touch();
                }
            }
            Interval::Failed(what) => {
                state.checks.failed_checks += 1;
                let failed = state.checks.failed_checks;
                let halted = format!("halted at weight {}: {what}", self.weight());
                self.failed_interval(failed, progression.threshold, &what, halted, now_ms);
            }
            Interval::Undecided(what) => {
                let line = format!(
                    "Halt {} advancement: {what} (not counted as a failure)",
                    self.service
                );
                self.set_message(format!("halted at weight {}: {what}", self.weight()));
                self.emit(now_ms, "Halt", line);
            }
            Interval::Passed => {
                // Every check passed: the next weight, or promotion after the last (each behind
                // its gate, if any).
                let gate = if step + 1 < n_steps {
                    WebhookKind::ConfirmTrafficIncrease
                } else {
                    WebhookKind::ConfirmPromotion
                };
                if let Some(failing) = self.failing_hooks(ctx) {
                    // Counted when it failed; no advance until it answers 2xx again.
                    self.set_message(format!(
                        "halted at weight {}: rollout webhook {failing} failing",
                        self.weight()
                    ));
                    return;
                }
                if self.gate(ctx, gate, now_ms) {
                    return;
                }
                let StrategyState::Progression(state) = &mut self.strategy else {
                    return;
                };
                if step + 1 < n_steps {
                    state.step_index += 1;
                    state.step_started_ms = now_ms;
                    state.weight_bp = progression.step_weights[step + 1].basis_points();
                    let line = format!(
                        "Advance {} canary weight {} (step {}/{n_steps})",
                        self.service,
                        self.weight(),
                        step + 2
                    );
                    self.set_message(format!(
                        "canary weight {} (step {}/{n_steps})",
                        self.weight(),
                        step + 2
                    ));
                    self.emit(now_ms, "Advance", line);
                } else {
                    self.promote(now_ms);
                }
            }
        }
        self.progression_deadline(ctx, progression, now_ms);
    }

    /// The deadline (`deadline.rs`): the next weight is due at the first check after the current
    /// one was set (and its template checks' schedule); intervals that keep halting stall it.
    fn progression_deadline(&mut self, ctx: Ctx<'_>, progression: &Progression, now_ms: u64) {
        let (Some(strategy), StrategyState::Progression(state)) =
            (ctx.service.strategy.as_ref(), &self.strategy)
        else {
            return;
        };
        let due_ms = checks_due_ms(
            &state.checks,
            ctx,
            state.step_started_ms,
            progression.interval,
        );
        let n_steps = progression.step_weights.len();
        let step = state.step_index + 1;
        let weight = self.weight();
        self.enforce_deadline(
            strategy,
            Some(due_ms),
            || format!("step {step}/{n_steps} (canary weight {weight})"),
            now_ms,
        );
    }

    /// `promote` (not `--full`): the next weight now, or promotion after the last. Returns
    /// whether the canary was promoted.
    pub(super) fn skip_progression_step(&mut self, progression: &Progression, now_ms: u64) -> bool {
        let StrategyState::Progression(state) = &mut self.strategy else {
            return false;
        };
        state.checks.clear();
        if state.step_index + 1 < progression.step_weights.len() {
            state.step_index += 1;
            state.step_started_ms = now_ms;
            state.weight_bp = progression.step_weights[state.step_index].basis_points();
            state.checks.next_check_ms = now_ms.saturating_add(millis(progression.interval));
            self.touch();
            false
        } else {
            self.promote(now_ms);
            true
        }
    }
}
