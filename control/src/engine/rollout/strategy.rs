//! The state of a service's strategy: one type per strategy, one variant each.
//!
//! Adding a strategy: a module with its state type and its `impl Rollout` (evaluation, operator
//! promotion), a variant here, and an arm in each method below (the compiler lists them), plus
//! its dispatch in `Rollout::evaluate` and `Rollout::command_inner`.

use serde::{Deserialize, Serialize};
use weir_config::{Strategy, StrategyKind};
use weir_proxy::routes::Policy;

use super::blue_green::BlueGreenState;
use super::iterations::IterationsState;
use super::progression::ProgressionState;
use super::routes::Routes;
use super::run::AnalysisRun;
use super::steps::StepsState;

/// One state type per strategy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum StrategyState {
    /// Argo canary steps (`strategy.canary.steps`).
    Steps(StepsState),
    /// Flagger progression (`stepWeight`/`maxWeight`).
    Progression(ProgressionState),
    /// Flagger A/B testing (`iterations` with `match` and/or `mirror`).
    Iterations(IterationsState),
    /// Argo blue-green (`strategy.blueGreen`).
    BlueGreen(BlueGreenState),
}

// === impl StrategyState ===

impl StrategyState {
    /// The state of `strategy` before any revision started: nothing routed to the canary.
    pub fn initial(strategy: Option<&Strategy>) -> StrategyState {
        match strategy.map(|s| &s.kind) {
            Some(StrategyKind::Progression(_)) => {
                StrategyState::Progression(ProgressionState::default())
            }
            Some(StrategyKind::Iterations(_)) => {
                StrategyState::Iterations(IterationsState::default())
            }
            Some(StrategyKind::BlueGreen(_)) => StrategyState::BlueGreen(BlueGreenState::default()),
            _ => StrategyState::Steps(StepsState::default()),
        }
    }

    /// The state of `strategy` at the first step of a revision.
    pub fn start(strategy: Option<&Strategy>, now_ms: u64) -> StrategyState {
        match strategy.map(|s| &s.kind) {
            Some(StrategyKind::Progression(progression)) => {
                StrategyState::Progression(ProgressionState::start(progression, now_ms))
            }
            Some(StrategyKind::Iterations(iterations)) => {
                StrategyState::Iterations(IterationsState::start(iterations, now_ms))
            }
            Some(StrategyKind::BlueGreen(_)) => {
                StrategyState::BlueGreen(BlueGreenState::start(now_ms))
            }
            Some(StrategyKind::Steps(plan)) => {
                StrategyState::Steps(StepsState::start(Some(plan), now_ms))
            }
            None => StrategyState::Steps(StepsState::start(None, now_ms)),
        }
    }

    /// Whether this state belongs to `strategy`.
    pub fn fits(&self, strategy: Option<&Strategy>) -> bool {
        matches!(
            (self, strategy.map(|s| &s.kind)),
            (
                StrategyState::Progression(_),
                Some(StrategyKind::Progression(_))
            ) | (
                StrategyState::Iterations(_),
                Some(StrategyKind::Iterations(_))
            ) | (
                StrategyState::BlueGreen(_),
                Some(StrategyKind::BlueGreen(_))
            ) | (StrategyState::Steps(_), None | Some(StrategyKind::Steps(_)))
        )
    }

    /// The canary weight while progressing or paused, in basis points.
    pub fn weight_bp(&self) -> u16 {
        match self {
            StrategyState::Steps(s) => s.weight_bp,
            StrategyState::Progression(p) => p.weight_bp,
            // Requests reach the canary through its routes only.
            StrategyState::Iterations(_) => 0,
            StrategyState::BlueGreen(b) => b.weight_bp,
        }
    }

    /// Sends no weighted traffic to the canary (abort, undo, removal).
    pub fn reset_weight(&mut self) {
        match self {
            StrategyState::Steps(s) => s.weight_bp = 0,
            StrategyState::Progression(p) => p.weight_bp = 0,
            StrategyState::Iterations(_) => {}
            StrategyState::BlueGreen(b) => b.weight_bp = 0,
        }
    }

    /// The current step (Argo steps) or weight (Flagger), counted from 0; for A/B testing the
    /// iterations passed; for blue-green the phase's index.
    pub fn step_index(&self) -> usize {
        match self {
            StrategyState::Steps(s) => s.step_index,
            StrategyState::Progression(p) => p.step_index,
            StrategyState::Iterations(i) => i.passed as usize,
            StrategyState::BlueGreen(b) => b.phase.index(),
        }
    }

    /// Failed interval checks so far in this revision (0 for strategies without checks).
    pub fn failed_checks(&self) -> u32 {
        match self {
            StrategyState::Steps(_) | StrategyState::BlueGreen(_) => 0,
            StrategyState::Progression(p) => p.checks.failed_checks,
            StrategyState::Iterations(i) => i.checks.failed_checks,
        }
    }

    /// What moves when the strategy advances: a tick repeats while it does.
    pub(super) fn cursor(&self) -> (usize, u16) {
        (self.step_index(), self.weight_bp())
    }

    /// Adds the rules in force (header and mirror routes, preview) to `policy`.
    pub(super) fn add_routes(&self, policy: &mut Policy) {
        if let Some(routes) = self.routes() {
            routes.add_to(policy);
        }
        if let StrategyState::BlueGreen(b) = self {
            policy.preview = b.preview_up();
        }
    }

    /// The header and mirror routes the strategy keeps, if it has any.
    pub fn routes(&self) -> Option<&Routes> {
        match self {
            StrategyState::Steps(s) => Some(&s.routes),
            StrategyState::Progression(_) | StrategyState::BlueGreen(_) => None,
            StrategyState::Iterations(i) => Some(&i.routes),
        }
    }

    /// Removes every route (the rollout ended); returns whether there was any.
    pub(super) fn end_routes(&mut self) -> bool {
        match self {
            StrategyState::Steps(s) => s.routes.clear(),
            StrategyState::Progression(_) | StrategyState::BlueGreen(_) => false,
            StrategyState::Iterations(i) => i.routes.clear(),
        }
    }

    /// The runs measuring now.
    pub fn runs(&self) -> Vec<&AnalysisRun> {
        match self {
            StrategyState::Steps(s) => s.inline_run.iter().chain(&s.background_run).collect(),
            StrategyState::Progression(p) => p.checks.runs.iter().collect(),
            StrategyState::Iterations(i) => i.checks.runs.iter().collect(),
            StrategyState::BlueGreen(b) => b.run.iter().collect(),
        }
    }

    /// The runs measuring now, to measure and record.
    pub(super) fn runs_mut(&mut self) -> Vec<&mut AnalysisRun> {
        match self {
            StrategyState::Steps(s) => s
                .inline_run
                .iter_mut()
                .chain(s.background_run.iter_mut())
                .collect(),
            StrategyState::Progression(p) => p.checks.runs.iter_mut().collect(),
            StrategyState::Iterations(i) => i.checks.runs.iter_mut().collect(),
            StrategyState::BlueGreen(b) => b.run.iter_mut().collect(),
        }
    }

    /// Ends the strategy's runs: returns those to keep as finished (to be terminated), and
    /// forgets interval checks in progress.
    pub(super) fn end_runs(&mut self) -> Vec<AnalysisRun> {
        match self {
            StrategyState::Steps(s) => s
                .inline_run
                .take()
                .into_iter()
                .chain(s.background_run.take())
                .collect(),
            StrategyState::Progression(p) => {
                p.checks.clear();
                Vec::new()
            }
            StrategyState::Iterations(i) => {
                i.checks.clear();
                Vec::new()
            }
            StrategyState::BlueGreen(b) => b.run.take().into_iter().collect(),
        }
    }

    /// Forgets every run so that the next tick measures from scratch (resume after an
    /// inconclusive analysis).
    pub(super) fn drop_runs(&mut self) {
        match self {
            StrategyState::Steps(s) => {
                s.inline_run = None;
                s.background_run = None;
            }
            StrategyState::Progression(p) => p.checks.clear(),
            StrategyState::Iterations(i) => i.checks.clear(),
            StrategyState::BlueGreen(b) => b.run = None,
        }
    }

    /// Moves the current step's start later by `by_ms` (time spent in an operator pause).
    pub(super) fn shift_start(&mut self, by_ms: u64) {
        match self {
            StrategyState::Steps(s) => s.step_started_ms += by_ms,
            StrategyState::Progression(p) => p.step_started_ms += by_ms,
            StrategyState::Iterations(i) => {
                i.started_ms += by_ms;
                if let Some(clock) = &mut i.iteration_started_ms {
                    *clock = clock.saturating_add(by_ms);
                }
            }
            StrategyState::BlueGreen(b) => b.shift_start(by_ms),
        }
    }
}
