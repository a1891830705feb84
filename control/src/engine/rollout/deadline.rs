//! `progressDeadline`: one rule for every strategy.
//!
//! The deadline bounds how long a rollout may go **without progress beyond its own schedule**.
//! Each strategy says when progress is due by its plan, and the rollout aborts when it has not
//! come `progressDeadline` after that:
//!
//! - Argo steps: `setWeight`, `setHeaderRoute` and `setMirrorRoute` are due at once; an
//!   `analysis` step when its last scheduled measurement is due (`initialDelay` + (`count`−1) ×
//!   `interval` after its run started; errors do not count toward `count`, so a provider that
//!   keeps failing within `consecutiveErrorLimit` stalls the step); a timed `pause` never (its
//!   duration is the plan, however long).
//! - Flagger progression (`stepWeight`/`stepWeights`) and A/B iterations: the next weight (the next
//!   passing iteration) is due at the first check after it was set (one `interval`, plus its
//!   template checks' own schedule); intervals that keep halting (no data, provider errors) or
//!   failing below `threshold` stall it.
//! - Blue-green: an analysis phase is due like an `analysis` step; the preview and
//!   `autoPromotionSeconds` are waits of the plan and never count.
//!
//! Waiting on an operator never counts and never aborts ([`Rollout::waits_for_operator`]): a
//! `pause: {}` step, `weir pause`, an inconclusive analysis, an unreadable state file, and any
//! later wait for a person (a confirm gate) must be one of the pause reasons listed there; the
//! time spent paused moves the step's clock (`StrategyState::shift_start`) when it resumes.

use weir_config::{AnalysisTemplate, Strategy};

use super::checks::Checks;
use super::run::{first_delay, millis, AnalysisRun, RunKind};
use super::{find_metric, humantime, Ctx, PauseReason, Phase, Rollout};

// === impl Rollout (deadline) ===

impl Rollout {
    /// Whether the rollout waits on an operator: such a wait never counts toward
    /// `progressDeadline` and never aborts. Every pause reason is one (a new reason must be
    /// listed here: the match is exhaustive on purpose).
    pub fn waits_for_operator(&self) -> bool {
        match self.pause {
            None => false,
            Some(
                PauseReason::Step
                | PauseReason::Operator
                | PauseReason::Inconclusive
                | PauseReason::StateUnreadable
                | PauseReason::Gate,
            ) => true,
        }
    }

    /// Aborts when progress that the plan made due at `due_ms` (`None`: a wait of the plan, never
    /// late) has not come `progressDeadline` later. `what` names the step for the message.
    pub(super) fn enforce_deadline(
        &mut self,
        strategy: &Strategy,
        due_ms: Option<u64>,
        what: impl FnOnce() -> String,
        now_ms: u64,
    ) {
        if self.phase != Phase::Progressing || self.waits_for_operator() {
            return;
        }
        let Some(due_ms) = due_ms else {
            return;
        };
        if now_ms > due_ms.saturating_add(millis(strategy.progress_deadline)) {
            let reason = format!(
                "{} did not finish within progressDeadline {} of its schedule",
                what(),
                humantime(strategy.progress_deadline)
            );
            self.abort(now_ms, reason);
        }
    }
}

/// When a run's last scheduled measurement is due: its start (or `clock_ms`, the step's start
/// moved by operator pauses, when later) plus the longest metric schedule. `None` for a run
/// without an end (background analysis without `count`).
pub(super) fn run_due_ms(
    run: &AnalysisRun,
    templates: &[AnalysisTemplate],
    clock_ms: u64,
) -> Option<u64> {
    let mut longest = 0u64;
    for metric in &run.metrics {
        let Some(spec) = find_metric(templates, &metric.template, &metric.name) else {
            // The template changed under the run: it is measured as an error at once.
            continue;
        };
        let count = match run.kind {
            RunKind::Check { .. } => 1,
            RunKind::Inline { .. } => spec.count.unwrap_or(1),
            RunKind::Background => spec.count?,
        };
        let schedule = first_delay(&run.kind, spec).saturating_add(
            millis(spec.interval).saturating_mul(u64::from(count.saturating_sub(1))),
        );
        longest = longest.max(schedule);
    }
    Some(run.started_at_ms.max(clock_ms).saturating_add(longest))
}

/// When the next Flagger advance (a weight, a passing iteration) is due: the first check one
/// `interval` after `clock_ms` (the current one began, moved by operator pauses), or the end of
/// the template checks' schedule when later.
pub(super) fn checks_due_ms(
    checks: &Checks,
    ctx: Ctx<'_>,
    clock_ms: u64,
    interval: std::time::Duration,
) -> u64 {
    let first_check = clock_ms.saturating_add(millis(interval));
    checks
        .runs
        .iter()
        .filter_map(|run| run_due_ms(run, ctx.templates, 0))
        .fold(first_check, u64::max)
}

#[cfg(test)]
mod tests;
