//! Flagger checks, run once per interval by the progression and by A/B iterations: builtin
//! success-rate and duration checks answered from the stats window, and checks that name an
//! analysis template, measured as a one-measurement run.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_config::{BuiltinMetric, BuiltinProvider, Check, CheckKind, LatencyQuantile, Traffic};

use super::run::{millis, AnalysisRun, RunKind, RunPhase};
use super::{judge_check, run_summary, BuiltinQuery, Ctx, Rollout, CHECK_MIN_REQUESTS};
use crate::engine::analysis::{Outcome, Verdict};

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

/// The interval checks' state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checks {
    /// Failed checks so far in this revision.
    pub failed_checks: u32,
    /// When checks run next.
    pub next_check_ms: u64,
    /// Template checks still measuring for the current interval: run ids.
    pub pending_runs: Vec<u64>,
    /// Builtin check results already taken for the current interval.
    pub pending_results: Vec<CheckResult>,
    /// Template check runs.
    pub runs: Vec<AnalysisRun>,
}

/// Where the current interval's checks are.
#[derive(Debug)]
pub(super) enum Interval {
    /// The next checks are this far away.
    Waiting {
        /// Milliseconds until the next checks.
        next_in_ms: u64,
    },
    /// Template checks are still measuring.
    Measuring {
        /// Whether the state changed (the interval's checks just started, or one finished).
        changed: bool,
    },
    /// Every check passed.
    Passed,
    /// At least one check failed: what failed, with the numbers.
    Failed(String),
    /// No check failed but some could not judge (no data, provider errors).
    Undecided(String),
}

// === impl Checks ===

impl Checks {
    /// The first checks run one interval from now.
    pub fn start(now_ms: u64, interval: Duration) -> Checks {
        Checks {
            next_check_ms: now_ms.saturating_add(millis(interval)),
            ..Checks::default()
        }
    }

    /// Forgets the current interval's checks (the failure count stays).
    pub(super) fn clear(&mut self) {
        self.runs.clear();
        self.pending_runs.clear();
        self.pending_results.clear();
    }

    /// Runs the interval's checks of `version`'s `traffic` when due, and judges them once all
    /// have a result.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn evaluate(
        &mut self,
        ctx: Ctx<'_>,
        checks: &[Check],
        interval: Duration,
        version: &str,
        traffic: Traffic,
        now_ms: u64,
        next_run_id: &mut u64,
        finished: &mut Vec<AnalysisRun>,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) -> Interval {
        let mut changed = false;
        if self.pending_runs.is_empty() && self.pending_results.is_empty() {
            if now_ms < self.next_check_ms {
                return Interval::Waiting {
                    next_in_ms: self.next_check_ms - now_ms,
                };
            }
            // Start this interval's checks.
            changed = true;
            self.next_check_ms = now_ms.saturating_add(millis(interval));
            for check in checks {
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
                            traffic,
                        };
                        let outcome = builtin(BuiltinQuery {
                            provider: &provider,
                            version,
                        });
                        self.pending_results.push(judge_check(check, &outcome));
                    }
                    CheckKind::Template(analysis) => {
                        let id = *next_run_id;
                        *next_run_id += 1;
                        let run = AnalysisRun::new(
                            id,
                            RunKind::Check {
                                check: check.name.clone(),
                            },
                            analysis,
                            ctx.templates,
                            now_ms,
                        );
                        self.runs.push(run);
                        self.pending_runs.push(id);
                    }
                }
            }
            if !self.pending_runs.is_empty() {
                // Template checks are measured by the next measure pass.
                return Interval::Measuring { changed };
            }
        }
        // Collect finished template checks.
        let mut still_pending = Vec::new();
        for id in std::mem::take(&mut self.pending_runs) {
            let Some(pos) = self.runs.iter().position(|r| r.id == id) else {
                changed = true;
                continue;
            };
            let run = &self.runs[pos];
            if run.phase == RunPhase::Running {
                still_pending.push(id);
                continue;
            }
            changed = true;
            let run = self.runs.remove(pos);
            let RunKind::Check { check } = &run.kind else {
                continue;
            };
            let verdict = match run.phase {
                RunPhase::Successful => Verdict::Successful,
                RunPhase::Failed => Verdict::Failed,
                RunPhase::Inconclusive => Verdict::Inconclusive,
                _ => Verdict::Error,
            };
            self.pending_results.push(CheckResult {
                name: check.clone(),
                verdict,
                message: run_summary(&run),
            });
            finished.push(run);
        }
        self.pending_runs = still_pending;
        if !self.pending_runs.is_empty() {
            return Interval::Measuring { changed };
        }
        let results = std::mem::take(&mut self.pending_results);
        let describe = |verdicts: &[Verdict]| {
            results
                .iter()
                .filter(|r| verdicts.contains(&r.verdict))
                .map(|r| format!("{} {}", r.name, r.message))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let failed = describe(&[Verdict::Failed]);
        if !failed.is_empty() {
            return Interval::Failed(failed);
        }
        let undecided = describe(&[Verdict::Inconclusive, Verdict::Error]);
        if !undecided.is_empty() {
            return Interval::Undecided(undecided);
        }
        Interval::Passed
    }
}

impl Rollout {
    /// A failed interval (the `failed`-th of this revision): one `Halt` event with the numbers,
    /// then a rollback once `threshold` is reached, else a halted message (`halted`).
    pub(super) fn failed_interval(
        &mut self,
        failed: u32,
        threshold: u32,
        what: &str,
        halted: String,
        now_ms: u64,
    ) {
        let line = format!(
            "Halt {} advancement: {what} (failed checks {failed}/{threshold})",
            self.service
        );
        self.emit(now_ms, "Halt", line);
        if failed >= threshold {
            self.abort(
                now_ms,
                format!("failed checks threshold reached {threshold}: {what}"),
            );
        } else {
            self.set_message(halted);
        }
    }
}
