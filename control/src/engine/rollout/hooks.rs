//! Flagger's webhooks in the rollout state machine (pure: the calls are returned in
//! [`Effects::hooks`](super::Effects) and their answers come back through
//! [`Rollout::record_hook`]).
//!
//! - `confirm-rollout`, `confirm-traffic-increase`, `confirm-promotion` are **gates**: where the
//!   rollout reaches one (before a revision moves any traffic, before a weight increase, before
//!   promotion) it pauses ([`PauseReason::Gate`], an operator wait: `progressDeadline` never
//!   counts it) with a message naming the gate, and asks it every `interval` until it answers
//!   2xx. Which gate is waited on is persisted ([`HookState::gate`]), so a restart asks the same
//!   gate again and never skips it. An operator's `promote` (or `resume`) passes it.
//! - `pre-rollout`: after the `confirm-rollout` gates and before any traffic; every failure counts
//!   toward the failure limit (`threshold` of a Flagger analysis; with steps, the first failure
//!   aborts, Argo's default `failureLimit: 0`), and the hook is asked again every interval.
//! - `rollout`: asked every interval while traffic flows; a failure is a failed check (same limits).
//! - `rollback`: asked every interval while the rollout is in progress or waits; 2xx aborts.
//! - `post-rollout` and `event` are told, never asked: the driver sends them
//!   ([`Effects::ended`](super::Effects), and every event).
//!
//! At most one call per hook is in flight; an answer for an older revision or an older start of
//! the hooks ([`HookState::epoch`]) is dropped.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use weir_config::{StrategyKind, Webhook, WebhookKind};

use super::run::millis;
use super::{humantime, Ctx, Event, PauseReason, Phase, Rollout, StrategyState};

/// The webhook state of a revision, persisted with the rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState {
    /// Bumped whenever the hooks start over (a new revision, retry): older answers are dropped.
    #[serde(default)]
    pub epoch: u64,
    /// No traffic has moved yet: `confirm-rollout` gates and `pre-rollout` hooks come first.
    #[serde(default)]
    pub before_traffic: bool,
    /// `pre-rollout` hooks that answered 2xx in this revision.
    #[serde(default)]
    pub pre_passed: BTreeSet<String>,
    /// The gate the rollout waits on (with [`PauseReason::Gate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateWait>,
    /// The last gate passed, and where: the strategy goes on past that point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<Confirmed>,
    /// When each hook is asked next (ms since the Unix epoch), by name.
    #[serde(default)]
    pub next_at_ms: BTreeMap<String, u64>,
    /// `rollout` hooks whose last answer was not 2xx: a Flagger interval does not advance
    /// while one fails (each failure was already counted once).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub failing: BTreeSet<String>,
    /// Hooks with a call in flight (not persisted: asked again after a restart).
    #[serde(skip)]
    pub in_flight: BTreeSet<String>,
}

/// A gate being waited on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateWait {
    /// `confirm-rollout`, `confirm-traffic-increase` or `confirm-promotion`.
    pub kind: String,
    /// The hook asked now (gates of one kind are asked in config order; all must pass).
    pub hook: String,
    /// Where the strategy stands ([`super::StrategyState::step_index`]).
    pub step: usize,
    /// When the wait began.
    pub since_ms: u64,
    /// Hooks of this kind that already answered 2xx.
    #[serde(default)]
    pub passed: Vec<String>,
    /// The last answer of the hook asked now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<String>,
}

/// A gate passed at a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Confirmed {
    /// The gate's kind.
    pub kind: String,
    /// The step it was passed at.
    pub step: usize,
}

/// A call the driver must make, then answer with [`Rollout::record_hook`] (unless it is a
/// `post-rollout` call, which is only told).
#[derive(Clone, Debug)]
pub struct HookCall {
    /// The hook.
    pub hook: Webhook,
    /// [`HookState::epoch`] when it was asked.
    pub epoch: u64,
    /// The JSON body.
    pub payload: Payload,
}

/// A hook's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookAnswer {
    /// It answered 2xx.
    pub ok: bool,
    /// `answered 200`, `answered 403: not yet`, `no answer within 5s`, `cannot connect: …`.
    pub message: String,
}

/// The JSON body of every webhook call (documented in docs/delivery-pipelines.md, "Webhooks").
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// The service (Flagger's canary name, so Flagger receivers such as its load tester work).
    pub name: String,
    /// The service.
    pub service: String,
    /// The hook's name.
    pub webhook: String,
    /// The hook's type (`confirm-promotion`, …).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The rollout's phase (`Progressing`, `Paused`, `Healthy`, `Degraded`).
    pub phase: Phase,
    /// The version serving as stable.
    pub stable_version: String,
    /// The canary version.
    pub canary_version: Option<String>,
    /// The revision.
    pub revision: u64,
    /// Where the rollout is in its plan, counted from 0.
    pub step: usize,
    /// The canary weight in percent.
    pub weight: f64,
    /// The hook's `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// The event (`event` hooks) or the event that ended the rollout (`post-rollout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<PayloadEvent>,
    /// How the rollout ended (`post-rollout`): `Promoted` or `Aborted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// What a pipeline needs to write an abort back to its source of truth (`post-rollout` after
    /// an abort, `rollback`, and `event` hooks for an abort).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert: Option<Revert>,
}

/// An event in a [`Payload`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadEvent {
    /// `Promoted`, `Rollback`, `Paused`, …
    pub kind: String,
    /// The log line, with the numbers.
    pub message: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// What to revert: the config file that names the canary, the version aborted and the stable
/// version that serves instead.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Revert {
    /// The config file weir runs (filled in by the driver).
    pub config_file: Option<String>,
    /// The canary version that was (or is to be) rolled back.
    pub aborted_version: Option<String>,
    /// The version serving everything instead.
    pub stable_version: String,
    /// The revision rolled back.
    pub revision: u64,
}

// === impl HookState ===

impl HookState {
    /// The hooks of a revision that starts now: traffic waits when there are `confirm-rollout`
    /// or `pre-rollout` hooks.
    fn start(previous_epoch: u64, hooks: &[Webhook]) -> HookState {
        HookState {
            epoch: previous_epoch + 1,
            before_traffic: hooks.iter().any(|h| {
                h.url().is_some()
                    && matches!(
                        h.kind,
                        WebhookKind::ConfirmRollout | WebhookKind::PreRollout
                    )
            }),
            ..HookState::default()
        }
    }
}

// === impl Payload ===

impl Payload {
    /// The body for `hook` about `event`.
    pub fn for_event(hook: &Webhook, event: &Event) -> Payload {
        let aborted = event.kind == "Rollback" && event.phase == Phase::Degraded;
        Payload {
            name: event.service.clone(),
            service: event.service.clone(),
            webhook: hook.name.clone(),
            kind: hook.kind.as_str(),
            phase: event.phase,
            stable_version: event.stable_version.clone(),
            canary_version: event.canary_version.clone(),
            revision: event.revision,
            step: event.step,
            weight: event.weight,
            metadata: hook.metadata.clone(),
            event: Some(PayloadEvent {
                kind: event.kind.clone(),
                message: event.message.clone(),
                at_ms: event.at_ms,
            }),
            outcome: None,
            revert: aborted.then(|| Revert {
                config_file: None,
                aborted_version: event.canary_version.clone(),
                stable_version: event.stable_version.clone(),
                revision: event.revision,
            }),
        }
    }

    /// The body for a `post-rollout` hook after the event `ended` (a promotion or an abort).
    pub fn post_rollout(hook: &Webhook, ended: &Event, aborted: bool) -> Payload {
        let mut payload = Payload::for_event(hook, ended);
        payload.outcome = Some(if aborted { "Aborted" } else { "Promoted" }.into());
        if !aborted {
            payload.revert = None;
        }
        payload
    }
}

/// The service's webhooks.
fn webhooks<'a>(ctx: Ctx<'a>) -> &'a [Webhook] {
    ctx.service
        .strategy
        .as_ref()
        .map_or(&[], |s| s.webhooks.as_slice())
}

/// The hooks of `kind` that call a URL, in config order.
fn of_kind(ctx: Ctx<'_>, kind: WebhookKind) -> impl Iterator<Item = &Webhook> {
    webhooks(ctx)
        .iter()
        .filter(move |h| h.kind == kind && h.url().is_some())
}

// === impl Rollout (hooks) ===

impl Rollout {
    /// The hooks start over with the strategy (a new revision, retry, a restart of the plan):
    /// with `confirm-rollout` or `pre-rollout` hooks, nothing reaches the canary until they pass.
    pub(super) fn start_hooks(&mut self, ctx: Ctx<'_>) {
        self.hooks = HookState::start(self.hooks.epoch, webhooks(ctx));
        if self.hooks.before_traffic {
            self.strategy.reset_weight();
            // Blue-green: not even the preview reaches the new version yet.
            if let StrategyState::BlueGreen(state) = &mut self.strategy {
                state.phase = super::BlueGreenPhase::Done;
            }
        }
    }

    /// Whether the strategy is held before any traffic moves.
    pub(super) fn before_traffic(&self) -> bool {
        self.hooks.before_traffic
    }

    /// Asks the hooks that are due (rollback hooks, the gate waited on, pre-rollout and rollout
    /// hooks) and lets traffic start once the pre-traffic hooks passed. Returns whether the
    /// strategy is held (before traffic).
    pub(super) fn tick_hooks(&mut self, ctx: Ctx<'_>, now_ms: u64) -> bool {
        let hooks = webhooks(ctx);
        if hooks.is_empty() {
            if self.hooks.before_traffic || self.pause == Some(PauseReason::Gate) {
                // The config dropped every hook: nothing to wait for.
                self.open_gate_now(ctx, now_ms, "the gate was removed from the config");
                self.start_traffic(ctx, now_ms);
            }
            return false;
        }
        for hook in of_kind(ctx, WebhookKind::Rollback) {
            self.ask_if_due(hook, now_ms);
        }
        if self.pause == Some(PauseReason::Gate) {
            self.ask_gate(ctx, now_ms);
            return self.hooks.before_traffic;
        }
        if self.phase != Phase::Progressing {
            return self.hooks.before_traffic;
        }
        if self.hooks.before_traffic {
            if self.gate(ctx, WebhookKind::ConfirmRollout, now_ms) {
                return true;
            }
            let waiting: Vec<Webhook> = of_kind(ctx, WebhookKind::PreRollout)
                .filter(|h| !self.hooks.pre_passed.contains(&h.name))
                .cloned()
                .collect();
            if !waiting.is_empty() {
                for hook in &waiting {
                    self.ask_if_due(hook, now_ms);
                }
                return true;
            }
            self.start_traffic(ctx, now_ms);
        }
        let rollout: Vec<Webhook> = of_kind(ctx, WebhookKind::Rollout).cloned().collect();
        for hook in &rollout {
            self.ask_if_due(hook, now_ms);
        }
        false
    }

    /// Whether the rollout must wait at gate `kind` (entering the wait when it is not passed yet
    /// at this step). Called by the strategies where traffic would widen or the canary be
    /// promoted.
    pub(super) fn gate(&mut self, ctx: Ctx<'_>, kind: WebhookKind, now_ms: u64) -> bool {
        let Some(first) = of_kind(ctx, kind).next() else {
            return false;
        };
        let step = self.strategy.step_index();
        let confirmed = self
            .hooks
            .confirmed
            .as_ref()
            .is_some_and(|c| c.kind == kind.as_str() && c.step == step);
        if confirmed {
            return false;
        }
        let name = first.name.clone();
        // A new wait asks at once, however recently these hooks answered at another gate.
        let names: Vec<String> = of_kind(ctx, kind).map(|h| h.name.clone()).collect();
        for hook in names {
            self.hooks.next_at_ms.remove(&hook);
        }
        self.phase = Phase::Paused;
        self.pause = Some(PauseReason::Gate);
        self.paused_at_ms = Some(now_ms);
        self.hooks.gate = Some(GateWait {
            kind: kind.as_str().to_string(),
            hook: name.clone(),
            step,
            since_ms: now_ms,
            passed: Vec::new(),
            last_answer: None,
        });
        self.message = self.gate_message();
        let line = format!(
            "Paused {}: waiting for {} gate `{name}` at canary weight {}",
            self.service,
            kind.as_str(),
            self.weight()
        );
        self.emit(now_ms, "Paused", line);
        self.ask_gate(ctx, now_ms);
        true
    }

    /// `waiting for confirm-promotion gate `approve` (last answer: answered 403: not yet)`.
    fn gate_message(&self) -> String {
        let Some(gate) = &self.hooks.gate else {
            return self.message.clone();
        };
        let last = match &gate.last_answer {
            Some(answer) => format!(" (last answer: {answer})"),
            None => String::new(),
        };
        format!(
            "waiting for {} gate `{}` at canary weight {}{last}; promote passes it",
            gate.kind,
            gate.hook,
            self.weight()
        )
    }

    fn ask_gate(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        let Some(gate) = &self.hooks.gate else {
            // Paused at a gate that is not recorded (cannot happen through the engine): go on.
            self.open_gate_now(ctx, now_ms, "no gate recorded");
            return;
        };
        let hook = webhooks(ctx)
            .iter()
            .find(|h| h.name == gate.hook && h.kind.as_str() == gate.kind && h.url().is_some())
            .cloned();
        match hook {
            Some(hook) => self.ask_if_due(&hook, now_ms),
            None => self.gate_passed(ctx, now_ms, "was removed from the config"),
        }
    }

    fn ask_if_due(&mut self, hook: &Webhook, now_ms: u64) {
        if self.hooks.in_flight.contains(&hook.name) {
            return;
        }
        if self
            .hooks
            .next_at_ms
            .get(&hook.name)
            .is_some_and(|at| now_ms < *at)
        {
            return;
        }
        self.hooks.in_flight.insert(hook.name.clone());
        let mut payload = Payload::for_event(hook, &self.event(now_ms, "", String::new()));
        payload.event = None;
        payload.revert = (hook.kind == WebhookKind::Rollback).then(|| Revert {
            config_file: None,
            aborted_version: self.canary_version.clone(),
            stable_version: self.stable_version.clone(),
            revision: self.revision,
        });
        self.hook_calls.push(HookCall {
            hook: hook.clone(),
            epoch: self.hooks.epoch,
            payload,
        });
    }

    /// Records a hook's answer (see the module's documentation for what each kind does).
    pub fn record_hook(
        &mut self,
        ctx: Ctx<'_>,
        name: &str,
        epoch: u64,
        answer: &HookAnswer,
        now_ms: u64,
    ) -> super::Effects {
        let before = self.begin();
        if epoch == self.hooks.epoch {
            self.record_hook_inner(ctx, name, answer, now_ms);
        }
        self.finish(before, Vec::new())
    }

    fn record_hook_inner(&mut self, ctx: Ctx<'_>, name: &str, answer: &HookAnswer, now_ms: u64) {
        self.hooks.in_flight.remove(name);
        let Some(hook) = webhooks(ctx).iter().find(|h| h.name == name).cloned() else {
            return;
        };
        let next = now_ms.saturating_add(millis(hook.interval));
        self.hooks.next_at_ms.insert(name.to_string(), next);
        self.touch();
        if !self.in_rollout() {
            return;
        }
        let service = self.service.clone();
        match hook.kind {
            kind if kind.is_gate() => {
                let waiting = self.pause == Some(PauseReason::Gate)
                    && self
                        .hooks
                        .gate
                        .as_ref()
                        .is_some_and(|g| g.hook == name && g.kind == kind.as_str());
                if !waiting {
                    return;
                }
                if answer.ok {
                    let why = format!("answered 2xx ({})", answer.message);
                    self.gate_passed(ctx, now_ms, &why);
                } else {
                    if let Some(gate) = self.hooks.gate.as_mut() {
                        gate.last_answer = Some(answer.message.clone());
                    }
                    let message = self.gate_message();
                    self.set_message(message);
                }
            }
            WebhookKind::PreRollout => {
                if !self.hooks.before_traffic || self.phase != Phase::Progressing {
                    return;
                }
                if answer.ok {
                    self.hooks.pre_passed.insert(name.to_string());
                    let line = format!(
                        "Pre-rollout check {name} passed {service}: {}",
                        answer.message
                    );
                    self.emit(now_ms, "WebhookPassed", line);
                } else {
                    self.hook_failed(ctx, &hook, &answer.message, now_ms);
                }
            }
            WebhookKind::Rollout => {
                if answer.ok {
                    self.hooks.failing.remove(name);
                    return;
                }
                if self.hooks.before_traffic || self.phase != Phase::Progressing {
                    return;
                }
                self.hooks.failing.insert(name.to_string());
                self.hook_failed(ctx, &hook, &answer.message, now_ms);
            }
            WebhookKind::Rollback if answer.ok => {
                let reason = format!("rollback webhook `{name}` {}", answer.message);
                self.abort(now_ms, reason);
            }
            _ => {}
        }
    }

    /// A `pre-rollout` or `rollout` hook failed: a failed check toward `threshold` (Flagger
    /// forms), or an abort (steps: `failureLimit: 0`).
    fn hook_failed(&mut self, ctx: Ctx<'_>, hook: &Webhook, message: &str, now_ms: u64) {
        let what = format!("{} webhook {} {message}", hook.kind.as_str(), hook.name);
        let threshold = match ctx.service.strategy.as_ref().map(|s| &s.kind) {
            Some(StrategyKind::Progression(p)) => Some(p.threshold),
            Some(StrategyKind::Iterations(i)) => Some(i.threshold),
            _ => None,
        };
        let counted = match &mut self.strategy {
            StrategyState::Progression(p) => {
                p.checks.failed_checks += 1;
                Some(p.checks.failed_checks)
            }
            StrategyState::Iterations(i) => {
                i.checks.failed_checks += 1;
                Some(i.checks.failed_checks)
            }
            _ => None,
        };
        match (counted, threshold) {
            (Some(failed), Some(threshold)) => {
                let halted = format!("halted at weight {}: {what}", self.weight());
                self.failed_interval(failed, threshold, &what, halted, now_ms);
            }
            _ => self.abort(now_ms, what),
        }
    }

    /// The hook waited on passed: the next hook of the same kind is asked, or the rollout goes on
    /// past the gate (its wait does not count toward the step's time).
    fn gate_passed(&mut self, ctx: Ctx<'_>, now_ms: u64, why: &str) {
        let Some(gate) = self.hooks.gate.as_mut() else {
            return;
        };
        let passed = std::mem::take(&mut gate.hook);
        gate.passed.push(passed.clone());
        gate.last_answer = None;
        let kind = gate.kind.clone();
        let next = webhooks(ctx)
            .iter()
            .find(|h| {
                h.kind.as_str() == kind && h.url().is_some() && !gate.passed.contains(&h.name)
            })
            .map(|h| h.name.clone());
        if let Some(next) = next {
            gate.hook = next;
            let message = self.gate_message();
            self.set_message(message);
            let line = format!("{kind} gate `{passed}` of {} {why}", self.service);
            self.emit(now_ms, "WebhookPassed", line);
            return;
        }
        self.open_gate_now(ctx, now_ms, &format!("`{passed}` {why}"));
    }

    /// Ends the gate wait: the rollout goes on past this gate (also when an operator passes it).
    fn open_gate_now(&mut self, _ctx: Ctx<'_>, now_ms: u64, why: &str) {
        let gate = self.hooks.gate.take();
        if self.pause != Some(PauseReason::Gate) {
            return;
        }
        let (kind, step, since) = match &gate {
            Some(g) => (g.kind.clone(), g.step, g.since_ms),
            None => (String::new(), self.strategy.step_index(), now_ms),
        };
        self.hooks.confirmed = Some(Confirmed {
            kind: kind.clone(),
            step,
        });
        if let Some(paused_at) = self.paused_at_ms.take() {
            self.strategy.shift_start(now_ms.saturating_sub(paused_at));
        }
        self.phase = Phase::Progressing;
        self.pause = None;
        let waited = humantime(std::time::Duration::from_millis(
            now_ms.saturating_sub(since) / 1000 * 1000,
        ));
        self.set_message(format!(
            "{kind} gate passed at canary weight {}",
            self.weight()
        ));
        let line = format!("Resumed {}: {kind} gate {why} after {waited}", self.service);
        self.emit(now_ms, "Resumed", line);
    }

    /// An operator's `promote` (or `resume`) at a gate: passes it (and the other hooks of its
    /// kind); before traffic, also skips the `pre-rollout` hooks. Returns whether it applied.
    pub(super) fn pass_gate_by_operator(&mut self, ctx: Ctx<'_>, now_ms: u64) -> bool {
        if self.pause == Some(PauseReason::Gate) {
            self.open_gate_now(ctx, now_ms, "passed by operator");
            return true;
        }
        if self.phase == Phase::Progressing && self.hooks.before_traffic {
            let line = format!(
                "{}: pre-rollout webhooks skipped by operator; traffic may start",
                self.service
            );
            self.emit(now_ms, "Promoted step", line);
            self.start_traffic(ctx, now_ms);
            return true;
        }
        false
    }

    /// The pre-traffic hooks passed: the strategy starts at its first step now.
    fn start_traffic(&mut self, ctx: Ctx<'_>, now_ms: u64) {
        if !self.hooks.before_traffic {
            return;
        }
        self.hooks.before_traffic = false;
        self.strategy = StrategyState::start(ctx.service.strategy.as_ref(), now_ms);
        self.touch();
        if let Some(iterations) = ctx.service.strategy.as_ref().and_then(|s| s.iterations()) {
            self.sync_ab_routes(iterations, now_ms);
        }
    }

    /// The `rollout` hooks failing now, for a Flagger interval that would advance: `None` when
    /// none fails (or none is still in the config).
    pub(super) fn failing_hooks(&self, ctx: Ctx<'_>) -> Option<String> {
        let failing: Vec<&str> = of_kind(ctx, WebhookKind::Rollout)
            .filter(|h| self.hooks.failing.contains(&h.name))
            .map(|h| h.name.as_str())
            .collect();
        (!failing.is_empty()).then(|| failing.join(", "))
    }

    /// Whether the canary's analysis runs now with traffic flowing (the built-in load test runs
    /// meanwhile): progressing past the pre-traffic hooks, and for steps while an analysis
    /// (inline or background) runs.
    pub fn analysis_running(&self) -> bool {
        if !self.in_rollout() || self.phase != Phase::Progressing || self.hooks.before_traffic {
            return false;
        }
        match &self.strategy {
            StrategyState::Steps(s) => s.inline_run.is_some() || s.background_run.is_some(),
            StrategyState::Progression(_) | StrategyState::Iterations(_) => true,
            StrategyState::BlueGreen(b) => b.run.is_some(),
        }
    }

    /// The gate the rollout waits on, if any: `(kind, hook name, last answer)`.
    pub fn waiting_gate(&self) -> Option<&GateWait> {
        (self.pause == Some(PauseReason::Gate))
            .then_some(self.hooks.gate.as_ref())
            .flatten()
    }
}

#[cfg(test)]
mod tests;
