//! The blue-green state machine as a pure function of config, measurements, commands and time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use weir_config::{Model, StrategyKind, Weight};

use super::*;
use crate::engine::analysis::{Measured, Outcome};
use crate::engine::rollout::{BuiltinQuery, Command, Effects};
use crate::engine::state::Store;

/// Pre-promotion: one builtin measurement; post-promotion: two, 5s apart.
const BLUE_GREEN: &str = r#"
listeners:
  - { name: public, address: "127.0.0.1:0" }
  - { name: preview, address: "127.0.0.1:0" }
services:
  - name: orders
    match: { hosts: ["orders.example.com"] }
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      blueGreen:
        preview:
          hosts: ["preview.orders.example.com"]
          listener: preview
          headers: [{ headerName: x-preview, headerValue: { exact: "1" } }]
        autoPromotionEnabled: false
        prePromotionAnalysis: { templates: [{ templateName: smoke }] }
        postPromotionAnalysis: { templates: [{ templateName: success-rate }] }
        scaleDownDelay: 30s
        progressDeadline: 1m
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke
        successCondition: result >= 0.99
        provider: { builtin: { metric: success-rate, window: 30s } }
  - name: success-rate
    metrics:
      - name: success-rate
        interval: 5s
        count: 2
        successCondition: result >= 0.99
        provider: { builtin: { metric: success-rate, window: 30s } }
  - name: slow
    metrics:
      - name: slow
        interval: 5s
        count: 100
        successCondition: result >= 0.99
        provider: { builtin: { metric: success-rate, window: 30s } }
"#;

fn model(yaml: &str) -> Model {
    weir_config::parse(yaml, Path::new("/")).expect("test config is valid")
}

/// The test config with `from` replaced by `to` (must occur).
fn edit(yaml: &str, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "{from:?} is in the config");
    yaml.replace(from, to)
}

struct Sim {
    model: Model,
    rollout: Rollout,
    now_ms: u64,
    /// What the builtin success rate measures.
    success_rate: f64,
    log: Vec<String>,
    kinds: Vec<String>,
    /// Every weight served, in basis points, after each operation.
    served: Vec<u16>,
    /// Effects of every operation that changed the policy.
    policy_changes: Vec<(u16, bool, bool)>,
}

impl Sim {
    fn new(yaml: &str) -> Sim {
        let model = model(yaml);
        let rollout = Rollout::new(&model.services[0]);
        let mut sim = Sim {
            model,
            rollout,
            now_ms: 1_000_000,
            success_rate: 1.0,
            log: Vec::new(),
            kinds: Vec::new(),
            served: Vec::new(),
            policy_changes: Vec::new(),
        };
        let ctx = Ctx {
            service: &sim.model.services[0],
            templates: &sim.model.analysis_templates,
        };
        let effects = sim.rollout.reconcile(ctx, sim.now_ms);
        sim.absorb(effects);
        sim
    }

    fn absorb(&mut self, effects: Effects) {
        let taken = self.rollout.take_events();
        for event in taken.into_iter().chain(effects.events) {
            self.log.push(event.message);
            self.kinds.push(event.kind);
        }
        let weight = self.rollout.weight().basis_points();
        self.served.push(weight);
        if effects.policy_changed {
            self.policy_changes
                .push((weight, self.rollout.policy().preview, effects.widened));
        }
    }

    /// Advances time in 100 ms ticks, as the driver does.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now_ms + duration.as_millis() as u64;
        while self.now_ms < end {
            self.now_ms += 100;
            self.tick();
        }
    }

    fn tick(&mut self) {
        let rate = self.success_rate;
        let model = &self.model;
        let ctx = Ctx {
            service: &model.services[0],
            templates: &model.analysis_templates,
        };
        let effects = self
            .rollout
            .tick(ctx, self.now_ms, &mut |q| answer(q, rate));
        assert!(
            effects.due.is_empty(),
            "builtin metrics only in these tests"
        );
        self.absorb(effects);
    }

    fn command(&mut self, command: Command) -> Result<(), String> {
        let model = &self.model;
        let ctx = Ctx {
            service: &model.services[0],
            templates: &model.analysis_templates,
        };
        let result = self.rollout.command(ctx, command, self.now_ms);
        match result {
            Ok(effects) => {
                self.absorb(effects);
                // The driver ticks at once after a command.
                self.tick();
                Ok(())
            }
            Err(message) => Err(message),
        }
    }

    fn bg(&self) -> &BlueGreenState {
        match &self.rollout.strategy {
            StrategyState::BlueGreen(state) => state,
            other => panic!("blue-green state expected, got {other:?}"),
        }
    }

    fn phase(&self) -> BlueGreenPhase {
        self.bg().phase
    }

    fn weight(&self) -> f64 {
        self.rollout.weight().percent()
    }

    fn preview(&self) -> bool {
        self.rollout.policy().preview
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.iter().any(|line| line.contains(needle))
    }

    fn kind_logged(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }

    /// Saves the rollout to a state folder and loads it back, as a restart does.
    fn restart(&mut self) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path())).unwrap();
        store.save(&self.rollout).unwrap();
        let mut restored = store.load("orders").unwrap().expect("saved");
        assert_eq!(restored.strategy, self.rollout.strategy, "state round trip");
        let model = &self.model;
        let ctx = Ctx {
            service: &model.services[0],
            templates: &model.analysis_templates,
        };
        let effects = restored.reconcile(ctx, self.now_ms);
        assert_eq!(
            restored.policy(),
            self.rollout.policy(),
            "a restart serves what was served"
        );
        self.rollout = restored;
        self.absorb(effects);
    }

    /// Runs until the preview waits for promotion (pre-promotion analysis passed).
    fn run_to_awaiting(&mut self) {
        self.run_for(Duration::from_millis(300));
        assert_eq!(self.phase(), BlueGreenPhase::AwaitingPromotion);
        assert_eq!(self.rollout.phase, Phase::Paused);
    }

    /// Runs to the switch (promoting by hand).
    fn run_to_switched(&mut self) {
        self.run_to_awaiting();
        self.command(Command::Promote { full: false }).unwrap();
        assert_eq!(self.phase(), BlueGreenPhase::Switched);
        assert_eq!(self.weight(), 100.0);
    }

    /// Runs to the promotion (post-promotion analysis passes after 5s).
    fn run_to_scaling_down(&mut self) {
        self.run_to_switched();
        self.run_for(Duration::from_secs(6));
        assert_eq!(self.phase(), BlueGreenPhase::ScalingDown);
        assert_eq!(self.rollout.phase, Phase::Healthy);
    }
}

fn answer(query: BuiltinQuery<'_>, rate: f64) -> Outcome {
    assert_eq!(query.version, "v2", "analysis judges the new version");
    Outcome::Value(Measured {
        value: json!(rate),
        requests: Some(1000),
        window: Some(Duration::from_secs(30)),
        failed: None,
    })
}

#[test]
fn a_new_version_brings_the_preview_up_with_production_on_stable() {
    let sim = Sim::new(BLUE_GREEN);
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    assert_eq!(sim.phase(), BlueGreenPhase::Preview);
    assert_eq!(sim.weight(), 0.0);
    assert!(sim.preview(), "the preview reaches the new version");
    assert_eq!(
        sim.policy_changes,
        vec![(0, true, true)],
        "the preview coming up widens canary traffic: saved after publishing"
    );
    assert!(sim.logged("New revision 1"));
}

#[test]
fn manual_promotion_switches_once_then_post_analysis_promotes_and_blue_is_kept() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_for(Duration::from_millis(100));
    assert!(sim.logged("pre-promotion analysis started against the preview"));
    assert!(sim.logged("Pre-promotion analysis passed orders"));
    assert_eq!(sim.phase(), BlueGreenPhase::AwaitingPromotion);
    assert_eq!(sim.rollout.phase, Phase::Paused);
    assert_eq!(sim.rollout.pause, Some(PauseReason::Step));
    assert!(sim.rollout.message.contains("waiting for promote"));
    // Waiting for an operator: nothing moves, however long, and the deadline does not count.
    sim.run_for(Duration::from_secs(120));
    assert_eq!(sim.phase(), BlueGreenPhase::AwaitingPromotion);
    assert_eq!(sim.rollout.phase, Phase::Paused);
    assert!(sim.served.iter().all(|&w| w == 0), "nothing switched");

    let before = sim.policy_changes.len();
    sim.command(Command::Promote { full: false }).unwrap();
    assert_eq!(sim.phase(), BlueGreenPhase::Switched);
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    assert_eq!(sim.weight(), 100.0);
    assert_eq!(
        &sim.policy_changes[before..],
        &[(10_000, true, true)],
        "the switch is one policy change, 0 → 100%"
    );
    assert!(sim.logged("Switched orders: v2 (green) serves 100%, v1 (blue) stays routable"));
    assert!(sim.logged("post-promotion analysis started"));

    sim.run_for(Duration::from_secs(4));
    assert_eq!(
        sim.phase(),
        BlueGreenPhase::Switched,
        "one of two measurements"
    );
    sim.run_for(Duration::from_secs(2));
    assert!(sim.logged("Post-promotion analysis passed orders"));
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert!(sim.rollout.promoted);
    assert_eq!(sim.rollout.stable_version, "v2");
    assert_eq!(sim.weight(), 100.0);
    assert!(!sim.preview(), "the preview ends with the rollout");
    assert_eq!(sim.phase(), BlueGreenPhase::ScalingDown);
    assert!(sim.logged("blue v1 kept for 30s for an instant undo"));
    assert!(sim.rollout.active(), "ticks go on to release blue");

    // Promoted 5s after the switch; blue is released 30s later.
    sim.run_for(Duration::from_secs(28));
    assert_eq!(sim.phase(), BlueGreenPhase::ScalingDown);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.phase(), BlueGreenPhase::Done);
    assert!(sim.kind_logged("ScaledDown"));
    assert!(!sim.rollout.active());
    assert_eq!(sim.weight(), 100.0);
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Promoted
    );
}

#[test]
fn auto_promotion_switches_after_the_seconds_counted_from_the_preview() {
    let yaml = edit(
        BLUE_GREEN,
        "autoPromotionEnabled: false",
        "autoPromotionSeconds: 20",
    );
    let mut sim = Sim::new(&yaml);
    sim.run_for(Duration::from_secs(19));
    assert_eq!(sim.phase(), BlueGreenPhase::AwaitingPromotion);
    assert_eq!(
        sim.rollout.phase,
        Phase::Progressing,
        "a timed wait, not a pause"
    );
    assert!(sim
        .rollout
        .message
        .contains("switching automatically in 1s"));
    assert_eq!(sim.weight(), 0.0);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.phase(), BlueGreenPhase::Switched);
    assert_eq!(sim.weight(), 100.0);
    assert!(sim.logged("auto-promotion 20s after the preview came up"));
}

#[test]
fn auto_promotion_waits_for_pre_promotion_analysis_to_pass() {
    // The pre-promotion analysis needs three measurements 5s apart (10s); the timer says 5s.
    let yaml = edit(
        BLUE_GREEN,
        "autoPromotionEnabled: false",
        "autoPromotionSeconds: 5",
    );
    let yaml = edit(
        &yaml,
        "      - name: smoke\n",
        "      - name: smoke\n        interval: 5s\n        count: 3\n",
    );
    let mut sim = Sim::new(&yaml);
    // Measured at 0.1s, 5.1s and 10.1s.
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.phase(), BlueGreenPhase::PrePromotion);
    assert_eq!(sim.weight(), 0.0);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.phase(),
        BlueGreenPhase::Switched,
        "switched as soon as it passed"
    );
}

#[test]
fn immediate_auto_promotion_switches_once_pre_promotion_passed() {
    let yaml = edit(BLUE_GREEN, "autoPromotionEnabled: false", "");
    let yaml = edit(
        &yaml,
        "        postPromotionAnalysis: { templates: [{ templateName: success-rate }] }\n",
        "",
    );
    let mut sim = Sim::new(&yaml);
    sim.run_for(Duration::from_millis(100));
    // Pre-promotion passed, switched and promoted (no post-promotion analysis) in one tick.
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert!(sim.rollout.promoted);
    assert_eq!(sim.phase(), BlueGreenPhase::ScalingDown);
    let order: Vec<&str> = sim
        .kinds
        .iter()
        .map(String::as_str)
        .filter(|k| ["AnalysisPassed", "Switched", "Promoted", "ScaleDownDelay"].contains(k))
        .collect();
    assert_eq!(
        order,
        ["AnalysisPassed", "Switched", "Promoted", "ScaleDownDelay"]
    );
}

#[test]
fn without_pre_promotion_analysis_auto_promotion_switches_at_once() {
    let yaml = edit(BLUE_GREEN, "autoPromotionEnabled: false", "");
    let yaml = edit(
        &yaml,
        "        prePromotionAnalysis: { templates: [{ templateName: smoke }] }\n",
        "",
    );
    let mut sim = Sim::new(&yaml);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.phase(), BlueGreenPhase::Switched);
    assert_eq!(sim.weight(), 100.0);
}

#[test]
fn a_failing_pre_promotion_analysis_aborts_with_nothing_switched() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.success_rate = 0.42;
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert_eq!(sim.weight(), 0.0);
    assert!(!sim.preview(), "the preview is off");
    assert!(sim.served.iter().all(|&w| w == 0), "nothing ever switched");
    assert!(!sim.kind_logged("Switched") && !sim.kind_logged("SwitchedBack"));
    let abort = sim
        .log
        .iter()
        .find(|l| l.starts_with("Rolling back orders"))
        .unwrap();
    assert!(
        abort.contains("pre-promotion analysis failed")
            && abort.contains("smoke")
            && abort.contains("0.42"),
        "the event names the metric and value: {abort}"
    );
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Aborted
    );
}

#[test]
fn a_failing_post_promotion_analysis_switches_back_at_once() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_switched();
    sim.success_rate = 0.5;
    let before = sim.policy_changes.len();
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert_eq!(sim.weight(), 0.0);
    assert_eq!(sim.rollout.stable_version, "v1");
    assert!(!sim.preview());
    assert_eq!(
        &sim.policy_changes[before..],
        &[(0, false, false)],
        "one change back, saved before it is published"
    );
    assert!(sim.logged("Switching orders back: v1 (blue) serves 100% again"));
    assert!(sim.logged("post-promotion analysis failed"));
}

#[test]
fn undo_inside_scale_down_delay_switches_back_instantly() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_scaling_down();
    sim.run_for(Duration::from_secs(10));
    sim.command(Command::Undo).unwrap();
    assert_eq!(sim.weight(), 0.0);
    assert_eq!(sim.rollout.stable_version, "v1");
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Undone
    );
    assert_eq!(sim.phase(), BlueGreenPhase::Done, "nothing left to release");
    assert!(!sim.rollout.active());
    assert!(!sim.kind_logged("ScaledDown"));
}

#[test]
fn undo_during_post_promotion_analysis_switches_back_as_undone() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_switched();
    sim.command(Command::Undo).unwrap();
    assert_eq!(sim.weight(), 0.0);
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert!(sim.logged("Switching orders back"));
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Undone
    );
}

#[test]
fn undo_after_scale_down_delay_is_refused_with_what_to_do() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_scaling_down();
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.phase(), BlueGreenPhase::Done);
    let refused = sim.command(Command::Undo).unwrap_err();
    assert!(
        refused.contains("blue v1 was released")
            && refused.contains("remove the canary v2 from the config to serve v1"),
        "{refused}"
    );
    assert_eq!(sim.weight(), 100.0);
    assert!(sim.rollout.promoted);
}

#[test]
fn abort_before_the_switch_turns_the_preview_off() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_awaiting();
    sim.command(Command::Abort).unwrap();
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert_eq!(sim.weight(), 0.0);
    assert!(!sim.preview());
    assert!(!sim.kind_logged("SwitchedBack"), "nothing was switched");
    assert!(sim.served.iter().all(|&w| w == 0));
}

#[test]
fn abort_after_the_switch_switches_back() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_switched();
    sim.command(Command::Abort).unwrap();
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert_eq!(sim.weight(), 0.0);
    assert!(sim.kind_logged("SwitchedBack"));
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Aborted
    );
}

#[test]
fn retry_after_an_abort_starts_again_at_the_preview() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_switched();
    sim.command(Command::Abort).unwrap();
    let start = sim.now_ms;
    sim.command(Command::Retry).unwrap();
    assert_eq!(
        sim.rollout.phase,
        Phase::Paused,
        "pre-promotion passed again at once"
    );
    assert_eq!(sim.phase(), BlueGreenPhase::AwaitingPromotion);
    assert_eq!(sim.weight(), 0.0);
    assert!(sim.preview());
    assert_eq!(sim.bg().preview_up_ms, start);
    assert_eq!(sim.bg().switched_at_ms, None);
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Progressing
    );
}

#[test]
fn promote_full_skips_the_analysis_and_switches() {
    let yaml = edit(BLUE_GREEN, "templateName: smoke", "templateName: slow");
    let mut sim = Sim::new(&yaml);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.phase(), BlueGreenPhase::PrePromotion);
    sim.command(Command::Promote { full: true }).unwrap();
    assert!(sim.rollout.promoted);
    assert_eq!(sim.weight(), 100.0);
    assert_eq!(sim.phase(), BlueGreenPhase::ScalingDown);
    assert_eq!(sim.bg().blue_version.as_deref(), Some("v1"));
    assert!(sim.logged("blue v1 kept for 30s"));
}

#[test]
fn promote_skips_the_current_phase() {
    let yaml = edit(BLUE_GREEN, "templateName: smoke", "templateName: slow");
    let mut sim = Sim::new(&yaml);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.phase(), BlueGreenPhase::PrePromotion);
    sim.command(Command::Promote { full: false }).unwrap();
    assert!(sim.logged("pre-promotion analysis skipped by operator"));
    assert_eq!(sim.phase(), BlueGreenPhase::AwaitingPromotion);
    assert_eq!(sim.weight(), 0.0, "still waiting for promote to switch");
    sim.command(Command::Promote { full: false }).unwrap();
    assert_eq!(sim.phase(), BlueGreenPhase::Switched);
    sim.command(Command::Promote { full: false }).unwrap();
    assert!(sim.logged("post-promotion analysis skipped by operator"));
    assert_eq!(sim.phase(), BlueGreenPhase::ScalingDown);
    assert!(sim.rollout.promoted);
}

#[test]
fn an_analysis_phase_on_its_schedule_longer_than_the_progress_deadline_goes_on() {
    // 100 measurements 5s apart: the schedule is the plan, not a stall (a stuck analysis
    // aborts: `deadline/tests.rs`).
    let yaml = edit(
        BLUE_GREEN,
        "templateName: success-rate",
        "templateName: slow",
    );
    let mut sim = Sim::new(&yaml);
    sim.run_to_switched();
    sim.run_for(Duration::from_secs(120));
    assert_eq!(sim.phase(), BlueGreenPhase::Switched);
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    assert_eq!(sim.weight(), 100.0);
}

#[test]
fn an_operator_pause_does_not_count_toward_the_auto_promotion_timer() {
    let yaml = edit(
        BLUE_GREEN,
        "autoPromotionEnabled: false",
        "autoPromotionSeconds: 20",
    );
    let mut sim = Sim::new(&yaml);
    sim.run_for(Duration::from_secs(10));
    sim.command(Command::Pause).unwrap();
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.weight(), 0.0);
    sim.command(Command::Resume).unwrap();
    sim.run_for(Duration::from_secs(9));
    assert_eq!(sim.phase(), BlueGreenPhase::AwaitingPromotion);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.phase(), BlueGreenPhase::Switched);
}

#[test]
fn state_survives_a_restart_in_every_phase() {
    // Preview and pre-promotion analysis.
    let yaml = edit(BLUE_GREEN, "templateName: smoke", "templateName: slow");
    let mut sim = Sim::new(&yaml);
    sim.restart();
    assert_eq!(sim.phase(), BlueGreenPhase::Preview);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.phase(), BlueGreenPhase::PrePromotion);
    sim.restart();
    assert_eq!(sim.phase(), BlueGreenPhase::PrePromotion);
    assert!(sim.bg().run.is_some(), "the run resumes");
    assert!(sim.preview());

    // Awaiting promotion.
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_awaiting();
    sim.restart();
    assert_eq!(sim.phase(), BlueGreenPhase::AwaitingPromotion);
    assert_eq!(sim.rollout.phase, Phase::Paused);
    sim.command(Command::Promote { full: false }).unwrap();
    assert_eq!(sim.weight(), 100.0);

    // Between the switch and the end of post-promotion analysis: same phase, 100% served.
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_switched();
    sim.run_for(Duration::from_secs(2));
    sim.restart();
    assert_eq!(sim.phase(), BlueGreenPhase::Switched);
    assert_eq!(sim.weight(), 100.0);
    assert_eq!(sim.bg().blue_version.as_deref(), Some("v1"));
    sim.run_for(Duration::from_secs(4));
    assert_eq!(
        sim.phase(),
        BlueGreenPhase::ScalingDown,
        "post-promotion analysis finished"
    );

    // Scale-down delay: blue is still released on time, and undo still works inside it.
    sim.restart();
    assert_eq!(sim.phase(), BlueGreenPhase::ScalingDown);
    assert!(sim.rollout.active());
    let mut undone = Sim {
        model: sim.model.clone(),
        rollout: sim.rollout.clone(),
        now_ms: sim.now_ms,
        success_rate: 1.0,
        log: Vec::new(),
        kinds: Vec::new(),
        served: Vec::new(),
        policy_changes: Vec::new(),
    };
    undone.command(Command::Undo).unwrap();
    assert_eq!(undone.weight(), 0.0);
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.phase(), BlueGreenPhase::Done);

    // Done: undo stays refused after a restart.
    sim.restart();
    assert_eq!(sim.phase(), BlueGreenPhase::Done);
    assert!(sim.command(Command::Undo).is_err());
}

#[test]
fn the_phases_are_the_steps() {
    let model = model(BLUE_GREEN);
    assert_eq!(Rollout::step_count(&model.services[0]), PHASES);
    let bg = model.services[0]
        .strategy
        .as_ref()
        .unwrap()
        .blue_green()
        .unwrap();
    let phases = describe_phases(bg);
    assert_eq!(phases.len(), PHASES);
    assert_eq!(
        phases[0],
        "preview up (hosts preview.orders.example.com; listener preview; header x-preview: exact \"1\")"
    );
    assert_eq!(phases[2], "await promotion (weir promote)");
    assert_eq!(phases[4], "scaleDownDelay 30s");
}

#[test]
fn preview_url_names_the_listener_or_a_preview_host() {
    let model = model(BLUE_GREEN);
    let service = &model.services[0];
    let bound: BTreeMap<String, SocketAddr> = [
        ("public".to_string(), "127.0.0.1:8080".parse().unwrap()),
        ("preview".to_string(), "127.0.0.1:8081".parse().unwrap()),
    ]
    .into();
    assert_eq!(
        preview_url(service, &model.listeners, &bound).as_deref(),
        Some("http://127.0.0.1:8081"),
        "the listener form, with the bound port"
    );

    let hosts_only = weir_config::parse(
        &edit(BLUE_GREEN, "          listener: preview\n", ""),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(
        preview_url(&hosts_only.services[0], &hosts_only.listeners, &bound).as_deref(),
        Some("http://preview.orders.example.com:8080"),
        "the first exact host on the first plain listener"
    );

    assert_eq!(
        preview_host(service).as_deref(),
        Some("preview.orders.example.com"),
        "a preview host reaches the preview on any listener"
    );
    let listener_only = weir_config::parse(
        &edit(
            BLUE_GREEN,
            "          hosts: [\"preview.orders.example.com\"]\n",
            "",
        ),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(
        preview_host(&listener_only.services[0]).as_deref(),
        Some("orders.example.com"),
        "on the preview listener a request must still match the service"
    );

    let headers_only = weir_config::parse(
        &edit(
            &edit(BLUE_GREEN, "          listener: preview\n", ""),
            "          hosts: [\"preview.orders.example.com\"]\n",
            "",
        ),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(
        preview_url(&headers_only.services[0], &headers_only.listeners, &bound),
        None
    );

    let mut listeners = model.listeners.clone();
    listeners[1].address = "0.0.0.0:9443".parse().unwrap();
    listeners[1].tls = Some(weir_config::Tls {
        certificates: Vec::new(),
        acme: None,
    });
    assert_eq!(
        preview_url(service, &listeners, &BTreeMap::new()).as_deref(),
        Some("https://127.0.0.1:9443"),
        "TLS listener, unspecified address reached on loopback"
    );

    let mut args: BTreeMap<String, String> = [
        ("url".to_string(), "{{preview.url}}/healthz".to_string()),
        ("other".to_string(), "x".to_string()),
        ("host".to_string(), "{{preview.host}}".to_string()),
    ]
    .into();
    fill_preview_url(
        &mut args,
        "http://127.0.0.1:8081",
        Some("orders.example.com"),
    );
    assert_eq!(args["url"], "http://127.0.0.1:8081/healthz");
    assert_eq!(args["other"], "x");
    assert_eq!(args["host"], "orders.example.com");
}

#[test]
fn weight_is_never_above_zero_before_the_switch() {
    let _ = Weight::ZERO;
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_awaiting();
    assert!(sim.served.iter().all(|&w| w == 0));
    assert_eq!(
        sim.rollout.step_index(),
        BlueGreenPhase::AwaitingPromotion.index()
    );
}

// --- review: config edits and operator commands around the switch ---------------------------

const CANARY: &str = r#"    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
"#;

impl Sim {
    /// Reloads the config (the desired state) as `yaml`.
    fn reconfigure(&mut self, yaml: &str) {
        self.model = model(yaml);
        let model = &self.model;
        let ctx = Ctx {
            service: &model.services[0],
            templates: &model.analysis_templates,
        };
        let effects = self.rollout.reconcile(ctx, self.now_ms);
        self.absorb(effects);
    }
}

#[test]
fn a_new_version_during_post_promotion_analysis_switches_back_then_previews_it() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_switched();
    sim.reconfigure(&edit(BLUE_GREEN, "version: v2", "version: v3"));
    assert_eq!(sim.weight(), 0.0, "production back on blue");
    assert!(sim.preview(), "the preview now reaches v3");
    assert_eq!(sim.phase(), BlueGreenPhase::Preview);
    assert_eq!(sim.rollout.revision, 2);
    assert_eq!(sim.rollout.stable_version, "v1");
    assert_eq!(
        sim.policy_changes.last(),
        Some(&(0, true, false)),
        "narrowed: saved before publishing"
    );
    assert!(
        sim.logged("Switching orders back: v1 (blue) serves 100% again, v2 (green) gets nothing"),
        "{:?}",
        sim.log
    );
}

#[test]
fn removing_the_new_version_after_the_switch_switches_back_and_ends_the_preview() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_switched();
    sim.reconfigure(&edit(BLUE_GREEN, CANARY, ""));
    assert_eq!(sim.weight(), 0.0);
    assert!(!sim.preview());
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert!(sim.kind_logged("SwitchedBack"), "{:?}", sim.log);
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.weight(), 0.0);
}

#[test]
fn a_new_version_during_scale_down_delay_previews_it_against_the_configs_stable() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_scaling_down();
    assert_eq!(sim.rollout.stable_version, "v2");
    sim.reconfigure(&edit(BLUE_GREEN, "version: v2", "version: v3"));
    assert_eq!(
        sim.rollout.stable_version, "v1",
        "v2's arm now serves v3, so the config's stable (v1) serves production"
    );
    assert_eq!(sim.weight(), 0.0);
    assert!(sim.preview());
    assert_eq!(sim.phase(), BlueGreenPhase::Preview);
    assert_eq!(sim.rollout.history.last().unwrap().from_version, "v1");
}

#[test]
fn abort_during_scale_down_delay_points_to_undo() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_scaling_down();
    let error = sim.command(Command::Abort).unwrap_err();
    assert!(error.contains("run undo"), "{error}");
    assert_eq!(sim.weight(), 100.0);
    sim.command(Command::Undo).unwrap();
    assert_eq!(sim.weight(), 0.0);
}

#[test]
fn turning_auto_promotion_on_while_waiting_for_promote_switches() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_awaiting();
    sim.reconfigure(&edit(
        BLUE_GREEN,
        "autoPromotionEnabled: false",
        "autoPromotionEnabled: true",
    ));
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    assert!(
        sim.logged("autoPromotionEnabled is now true"),
        "{:?}",
        sim.log
    );
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.phase(), BlueGreenPhase::Switched);
    assert_eq!(sim.weight(), 100.0);
}

#[test]
fn undo_after_scale_down_delay_says_how_once_the_config_moved_on() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_scaling_down();
    sim.run_for(Duration::from_secs(30));
    // The config catches up: v2 stable, a new canary v3 (its preview is not measured here).
    let moved = edit(
        &edit(BLUE_GREEN, "version: v2", "version: v3"),
        "version: v1",
        "version: v2",
    );
    sim.reconfigure(&moved);
    assert_eq!(sim.rollout.stable_version, "v2");
    assert_eq!(sim.weight(), 0.0, "the preview of v3 only");
    // Undo now aborts the v3 rollout (v2 keeps serving); nothing goes back to v1.
    sim.command(Command::Abort).unwrap();
    let refused = sim.command(Command::Undo).unwrap_err();
    assert!(refused.contains("no previous stable revision"), "{refused}");
}

#[test]
fn switching_back_names_the_stable_the_config_names_now() {
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_to_switched();
    sim.reconfigure(&edit(BLUE_GREEN, "version: v1", "version: v0"));
    assert_eq!(sim.weight(), 100.0, "still switched");
    sim.success_rate = 0.5;
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.weight(), 0.0);
    assert!(
        sim.logged("Switching orders back: v0 (blue) serves 100% again"),
        "{:?}",
        sim.log
    );
}

#[test]
fn the_longest_accepted_delays_never_overflow() {
    let longest = Duration::from_millis(u64::MAX);
    let yaml = edit(
        BLUE_GREEN,
        "autoPromotionEnabled: false",
        "autoPromotionEnabled: true",
    );
    let mut sim = Sim::new(&yaml);
    if let Some(StrategyKind::BlueGreen(bg)) =
        sim.model.services[0].strategy.as_mut().map(|s| &mut s.kind)
    {
        bg.auto_promotion_after = Some(longest);
        bg.scale_down_delay = longest;
    }
    sim.model.services[0]
        .strategy
        .as_mut()
        .unwrap()
        .progress_deadline = longest;
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.phase(), BlueGreenPhase::AwaitingPromotion);
    assert!(sim.rollout.message.contains("switching automatically in"));
    let status = crate::api::v1::build(
        &sim.model,
        &BTreeMap::from([("orders".to_string(), sim.rollout.clone())]),
        &weir_proxy::RouteTable::empty(),
        sim.now_ms,
    );
    let details = status.services[0].details.as_ref().unwrap();
    let bg = details.blue_green.as_ref().unwrap();
    assert_eq!(bg.auto_promotion_at_ms, Some(u64::MAX));
    sim.command(Command::Promote { full: true }).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.phase(), BlueGreenPhase::ScalingDown);
}
