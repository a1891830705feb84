//! Flagger A/B testing (`analysis.iterations` with `match`, optionally `mirror`): from the start
//! of a revision the requests matching the strategy's conditions go to the canary (a header
//! route), and/or copies of a share of every request (a mirror route); no weighted traffic ever
//! does. Every interval the checks run; `iterations` passing intervals promote, `threshold`
//! failed ones roll back. An interval whose checks could not judge (no data, provider errors)
//! neither counts nor fails: the test halts at that iteration and says so in its message and a
//! `Halt` event. As for the Flagger progression, `progressDeadline` applies to each iteration
//! (`deadline.rs`): the next passing iteration is due one `interval` after the last one, and a
//! test whose intervals keep halting (e.g. no matching traffic) aborts `progressDeadline` after
//! that; an operator's `pause` stops that clock. `retry` after an
//! abort starts from iteration 0 with the routes in force again. The routes follow the config:
//! an edited `match` or `mirror` replaces them mid-test, keeping the iterations passed.

use serde::{Deserialize, Serialize};
use weir_config::{HeaderRoute, Iterations, MirrorRoute, Traffic, WebhookKind, Weight};

use super::checks::{Checks, Interval};
use super::deadline::checks_due_ms;
use super::routes::Routes;
use super::run::millis;
use super::{BuiltinQuery, Ctx, Outcome, PauseReason, Rollout, StrategyState};

/// The header route an A/B test's `match` becomes.
pub const AB_HEADER_ROUTE: &str = "ab-test";
/// The mirror route an A/B test's `mirror` becomes.
pub const AB_MIRROR_ROUTE: &str = "ab-mirror";

/// The state of a Flagger A/B test.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IterationsState {
    /// Passing intervals so far.
    pub passed: u32,
    /// When the test (or the current iteration, after a pause) started (ms since the Unix epoch).
    pub started_ms: u64,
    /// The interval checks.
    pub checks: Checks,
    /// The routes to the canary while the test runs.
    #[serde(default)]
    pub routes: Routes,
    /// When the current iteration began (the last passing one ended), moved by operator pauses:
    /// the next passing iteration is due one interval later (`progressDeadline`). Absent in files
    /// written before it existed: the deadline's clock starts when the file is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration_started_ms: Option<u64>,
}

// === impl IterationsState ===

impl IterationsState {
    /// The start of a test: the first checks one interval later. The strategy's routes are put
    /// in force by `Rollout::sync_ab_routes` (at once, or at the next tick when the same
    /// operation narrowed canary traffic).
    pub fn start(iterations: &Iterations, now_ms: u64) -> IterationsState {
        IterationsState {
            passed: 0,
            started_ms: now_ms,
            checks: Checks::start(now_ms, iterations.interval),
            routes: Routes::default(),
            iteration_started_ms: Some(now_ms),
        }
    }
}

/// The routes an A/B test keeps in force: its `match` as header route [`AB_HEADER_ROUTE`] and
/// its `mirror` as mirror route [`AB_MIRROR_ROUTE`] on every request; one without conditions
/// (no `match`, no `mirror`) removes the route.
fn ab_routes(iterations: &Iterations) -> (HeaderRoute, MirrorRoute) {
    let header = HeaderRoute {
        name: AB_HEADER_ROUTE.into(),
        any_of: iterations.any_of.clone(),
    };
    let mirror = MirrorRoute {
        name: AB_MIRROR_ROUTE.into(),
        percentage: iterations.mirror.unwrap_or(Weight::ZERO),
        // One entry without conditions: every request matches.
        any_of: if iterations.mirror.is_some() {
            vec![Vec::new()]
        } else {
            Vec::new()
        },
    };
    (header, mirror)
}

/// Which traffic an A/B test's builtin checks measure: the mirrored copies when the test only
/// mirrors (the canary then serves no client), else what clients got.
pub fn checked_traffic(iterations: &Iterations) -> Traffic {
    if iterations.any_of.is_empty() && iterations.mirror.is_some() {
        Traffic::Mirror
    } else {
        Traffic::Primary
    }
}

// === impl Rollout (iterations) ===

impl Rollout {
    /// Brings the A/B test's routes in line with the config (its `match` and `mirror`: the
    /// config is the desired state, also mid-test), one event per route added, replaced or
    /// removed. A change that would make the current operation both narrow and widen canary
    /// traffic waits for the next tick (see [`Rollout::mixes`]).
    pub(super) fn sync_ab_routes(&mut self, iterations: &Iterations, now_ms: u64) {
        // After an unreadable state file nothing reaches the canary until an operator decides.
        if !self.in_rollout()
            || self.pause == Some(PauseReason::StateUnreadable)
            || self.before_traffic()
        {
            return;
        }
        let (header, mirror) = ab_routes(iterations);
        let at = "A/B test";
        let StrategyState::Iterations(state) = &self.strategy else {
            return;
        };
        let change = state.routes.clone().set_header(&header).widens();
        if change.is_some() && !self.mixes(change) {
            self.snapshot_routes();
            if let StrategyState::Iterations(state) = &mut self.strategy {
                let change = state.routes.set_header(&header);
                self.header_route_set(&header, change, at, now_ms);
            }
        }
        let StrategyState::Iterations(state) = &self.strategy else {
            return;
        };
        let change = state.routes.clone().set_mirror(&mirror).widens();
        if change.is_some() && !self.mixes(change) {
            self.snapshot_routes();
            if let StrategyState::Iterations(state) = &mut self.strategy {
                let change = state.routes.set_mirror(&mirror);
                self.mirror_route_set(&mirror, change, at, now_ms);
            }
        }
    }

    /// Runs the interval's checks when due, then counts an iteration, halts or rolls back.
    pub(super) fn evaluate_iterations(
        &mut self,
        ctx: Ctx<'_>,
        iterations: &Iterations,
        now_ms: u64,
        builtin: &mut dyn FnMut(BuiltinQuery<'_>) -> Outcome,
    ) {
        let canary = self.canary_version.clone().unwrap_or_default();
        let StrategyState::Iterations(state) = &mut self.strategy else {
            return;
        };
        let outcome = state.checks.evaluate(
            ctx,
            &iterations.checks,
            iterations.interval,
            &canary,
            checked_traffic(iterations),
            now_ms,
            &mut self.next_run_id,
            &mut self.finished_runs,
            builtin,
        );
        let passed = state.passed;
        let n = iterations.iterations;
        match outcome {
            Interval::Waiting { next_in_ms } => {
                self.set_message(format!(
                    "A/B testing: {passed}/{n} iterations passed; next check in {}s",
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
                let halted = format!("A/B testing halted at {passed}/{n} iterations: {what}");
                self.failed_interval(failed, iterations.threshold, &what, halted, now_ms);
            }
            Interval::Undecided(what) => {
                let line = format!(
                    "Halt {} advancement: {what} (not counted as a failure)",
                    self.service
                );
                self.set_message(format!(
                    "A/B testing halted at {passed}/{n} iterations: {what}"
                ));
                self.emit(now_ms, "Halt", line);
            }
            Interval::Passed if self.failing_hooks(ctx).is_some() => {
                let failing = self.failing_hooks(ctx).unwrap_or_default();
                self.set_message(format!(
                    "A/B testing halted at {passed}/{n} iterations: rollout webhook {failing} failing"
                ));
            }
            Interval::Passed => {
                let StrategyState::Iterations(state) = &mut self.strategy else {
                    return;
                };
                state.passed += 1;
                state.iteration_started_ms = Some(now_ms);
                let passed = state.passed;
                let line = format!("Advance {} iteration {passed}/{n}", self.service);
                self.set_message(format!("A/B testing: {passed}/{n} iterations passed"));
                self.emit(now_ms, "Advance", line);
                if passed >= n {
                    if self.gate(ctx, WebhookKind::ConfirmPromotion, now_ms) {
                        // Flagger: the last iteration is run again until the gate opens.
                        if let StrategyState::Iterations(state) = &mut self.strategy {
                            state.passed = n.saturating_sub(1);
                        }
                        return;
                    }
                    self.promote(now_ms);
                }
            }
        }
        self.iterations_deadline(ctx, iterations, now_ms);
    }

    /// The deadline (`deadline.rs`): the next passing iteration is due at the first check after
    /// the last one passed (and its template checks' schedule).
    fn iterations_deadline(&mut self, ctx: Ctx<'_>, iterations: &Iterations, now_ms: u64) {
        let StrategyState::Iterations(state) = &mut self.strategy else {
            return;
        };
        let clock_ms = match state.iteration_started_ms {
            Some(clock_ms) => clock_ms,
            None => {
                // A state file from before the field: the clock starts now.
                state.iteration_started_ms = Some(now_ms);
                self.touch();
                now_ms
            }
        };
        let Some(strategy) = ctx.service.strategy.as_ref() else {
            return;
        };
        let StrategyState::Iterations(state) = &self.strategy else {
            return;
        };
        let due_ms = checks_due_ms(&state.checks, ctx, clock_ms, iterations.interval);
        let iteration = state.passed + 1;
        let n = iterations.iterations;
        self.enforce_deadline(
            strategy,
            Some(due_ms),
            || format!("A/B test iteration {iteration}/{n}"),
            now_ms,
        );
    }

    /// `promote` (not `--full`): counts the current iteration as passed; promotes after the
    /// last. Returns whether the canary was promoted.
    pub(super) fn skip_iteration(&mut self, iterations: &Iterations, now_ms: u64) -> bool {
        let StrategyState::Iterations(state) = &mut self.strategy else {
            return false;
        };
        state.checks.clear();
        state.passed += 1;
        state.iteration_started_ms = Some(now_ms);
        state.checks.next_check_ms = now_ms.saturating_add(millis(iterations.interval));
        let done = state.passed >= iterations.iterations;
        self.touch();
        if done {
            self.promote(now_ms);
            true
        } else {
            false
        }
    }
}
