//! The webhooks in the state machine: gates hold, persist and pass; failures count.

use std::path::Path;

use serde_json::json;
use weir_config::{BuiltinMetric, Model};

use super::super::{BuiltinQuery, Ctx, Effects, Outcome, PauseReason, Phase, Rollout};
use super::{HookAnswer, HookCall};
use crate::engine::analysis::Measured;

fn model(strategy: &str) -> Model {
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
services:
  - name: checkout
    stable: {{ version: v1, upstreams: ["127.0.0.1:9001"] }}
    canary: {{ version: v2, upstreams: ["127.0.0.1:9002"] }}
    strategy:
      canary:
{strategy}
"#
    );
    weir_config::parse(&yaml, Path::new("/")).expect("test config is valid")
}

const FLAGGER: &str = "        analysis:
          interval: 10s
          threshold: 2
          stepWeight: 25
          maxWeight: 50
          metrics: [{ name: request-success-rate, thresholdRange: { min: 99 } }]
";

fn ctx(model: &Model) -> Ctx<'_> {
    Ctx {
        service: &model.services[0],
        templates: &model.analysis_templates,
    }
}

fn healthy(query: BuiltinQuery<'_>) -> Outcome {
    let value = match query.provider.metric {
        BuiltinMetric::SuccessRate => 1.0,
        _ => 0.01,
    };
    Outcome::Value(Measured {
        value: json!(value),
        requests: Some(1000),
        window: Some(std::time::Duration::from_secs(30)),
        failed: None,
    })
}

fn start(model: &Model) -> Rollout {
    let mut rollout = Rollout::new(&model.services[0]);
    let _ = rollout.reconcile(ctx(model), 0);
    rollout
}

fn tick(rollout: &mut Rollout, model: &Model, now_ms: u64) -> Effects {
    rollout.tick(ctx(model), now_ms, &mut healthy)
}

fn call<'a>(effects: &'a Effects, name: &str) -> Option<&'a HookCall> {
    effects.hooks.iter().find(|c| c.hook.name == name)
}

fn answer(rollout: &mut Rollout, model: &Model, call: &HookCall, ok: bool, now_ms: u64) -> Effects {
    let answer = HookAnswer {
        ok,
        message: if ok {
            "answered 200".into()
        } else {
            "answered 403: not yet".into()
        },
    };
    rollout.record_hook(ctx(model), &call.hook.name, call.epoch, &answer, now_ms)
}

#[test]
fn confirm_rollout_holds_all_traffic_survives_a_restart_and_opens_on_2xx() {
    let model = model(&format!(
        "{FLAGGER}        webhooks:\n          - {{ name: approve, type: confirm-rollout, url: \"http://127.0.0.1:1/\", interval: 5s }}\n"
    ));
    let mut rollout = start(&model);
    assert_eq!(
        rollout.weight().basis_points(),
        0,
        "no traffic before the gate"
    );
    let effects = tick(&mut rollout, &model, 100);
    let asked = call(&effects, "approve")
        .expect("the gate is asked at once")
        .clone();
    assert_eq!(asked.payload.kind, "confirm-rollout");
    assert_eq!(
        (rollout.phase, rollout.pause.clone()),
        (Phase::Paused, Some(PauseReason::Gate))
    );
    assert!(
        rollout.message.contains("confirm-rollout gate `approve`"),
        "{}",
        rollout.message
    );
    assert!(
        tick(&mut rollout, &model, 200).hooks.is_empty(),
        "one call in flight"
    );
    let _ = answer(&mut rollout, &model, &asked, false, 300);
    assert!(
        rollout
            .message
            .contains("last answer: answered 403: not yet"),
        "{}",
        rollout.message
    );
    assert!(
        tick(&mut rollout, &model, 5_000).hooks.is_empty(),
        "asked again one interval later"
    );
    // A restart: the persisted state waits on the same gate, asks it again, never widens.
    let saved = serde_json::to_string(&rollout).expect("serializes");
    let mut rollout: Rollout = serde_json::from_str(&saved).expect("deserializes");
    let _ = rollout.reconcile(ctx(&model), 5_200);
    assert_eq!(
        rollout.waiting_gate().map(|g| g.hook.as_str()),
        Some("approve")
    );
    assert_eq!(rollout.weight().basis_points(), 0);
    let effects = tick(&mut rollout, &model, 5_400);
    let asked = call(&effects, "approve")
        .expect("asked again after the restart")
        .clone();
    let effects = answer(&mut rollout, &model, &asked, true, 5_500);
    assert!(effects.events.iter().any(|e| e.kind == "Resumed"));
    assert_eq!(rollout.phase, Phase::Progressing);
    let _ = tick(&mut rollout, &model, 5_600);
    assert_eq!(
        rollout.weight().basis_points(),
        2_500,
        "traffic starts once confirmed"
    );
    eprintln!("confirm-rollout: held at 0% through a 403 and a restart, 25% after the 2xx");
}

#[test]
fn pre_rollout_failures_abort_before_any_traffic() {
    let model = model(&format!(
        "{FLAGGER}        webhooks:\n          - {{ name: smoke, type: pre-rollout, url: \"http://127.0.0.1:1/\", interval: 1s }}\n"
    ));
    let mut rollout = start(&model);
    let mut now = 0;
    for attempt in 1..=2 {
        now += 2_000;
        let effects = tick(&mut rollout, &model, now);
        let asked = call(&effects, "smoke").expect("asked").clone();
        assert_eq!(rollout.weight().basis_points(), 0);
        assert_eq!(
            rollout.phase,
            Phase::Progressing,
            "pre-rollout is not an operator wait"
        );
        let effects = answer(&mut rollout, &model, &asked, false, now + 10);
        if attempt == 2 {
            let (event, aborted) = effects.ended.expect("the revision ended");
            assert!(aborted);
            assert!(
                event.message.contains("pre-rollout webhook smoke"),
                "{}",
                event.message
            );
        }
    }
    assert_eq!(rollout.phase, Phase::Degraded, "threshold 2 reached");
    assert_eq!(rollout.weight().basis_points(), 0);
}

#[test]
fn traffic_increase_and_promotion_gates_hold_and_operator_promote_passes() {
    let model = model(
        "        steps: [{ setWeight: 10 }, { setWeight: 50 }]
        webhooks:
          - { name: more, type: confirm-traffic-increase, url: \"http://127.0.0.1:1/\" }
          - { name: ship, type: confirm-promotion, url: \"http://127.0.0.1:1/\" }
",
    );
    let mut rollout = start(&model);
    let effects = tick(&mut rollout, &model, 100);
    assert_eq!(
        rollout.waiting_gate().map(|g| g.kind.as_str()),
        Some("confirm-traffic-increase")
    );
    assert_eq!(
        rollout.weight().basis_points(),
        0,
        "even the first increase waits"
    );
    let asked = call(&effects, "more").expect("asked").clone();
    let _ = answer(&mut rollout, &model, &asked, true, 200);
    let effects = tick(&mut rollout, &model, 300);
    assert_eq!(rollout.weight().basis_points(), 1_000);
    assert!(call(&effects, "more").is_some(), "asked again before 50%");
    assert_eq!(rollout.waiting_gate().map(|g| g.step), Some(1));
    // `promote` by an operator passes the gate, not the step.
    let _ = rollout
        .command(
            ctx(&model),
            super::super::Command::Promote { full: false },
            400,
        )
        .expect("promote passes the gate");
    let effects = tick(&mut rollout, &model, 500);
    assert_eq!(rollout.weight().basis_points(), 5_000);
    assert_eq!(
        rollout.waiting_gate().map(|g| g.kind.as_str()),
        Some("confirm-promotion")
    );
    assert!(!rollout.promoted);
    let asked = call(&effects, "ship")
        .expect("asked when the gate is reached")
        .clone();
    // Far past progressDeadline: a gate wait never aborts.
    let _ = tick(&mut rollout, &model, 3_600_000);
    assert_eq!(rollout.phase, Phase::Paused);
    let effects = answer(&mut rollout, &model, &asked, true, 3_600_300);
    assert!(effects.events.iter().any(|e| e.kind == "Resumed"));
    let effects = tick(&mut rollout, &model, 3_600_400);
    assert!(rollout.promoted, "{}", rollout.message);
    assert!(matches!(effects.ended, Some((_, false))));
}

#[test]
fn rollback_hook_aborts_and_rollout_hook_failures_fail_checks() {
    let model = model(&format!(
        "{FLAGGER}        webhooks:
          - {{ name: check, type: rollout, url: \"http://127.0.0.1:1/\" }}
          - {{ name: undo, type: rollback, url: \"http://127.0.0.1:1/\" }}
"
    ));
    let mut rollout = start(&model);
    let effects = tick(&mut rollout, &model, 100);
    assert_eq!(
        rollout.weight().basis_points(),
        2_500,
        "no pre-traffic hooks: traffic at once"
    );
    let check = call(&effects, "check").expect("rollout hook asked").clone();
    let undo = call(&effects, "undo").expect("rollback hook asked").clone();
    let effects = answer(&mut rollout, &model, &check, false, 200);
    assert!(effects
        .events
        .iter()
        .any(|e| e.kind == "Halt" && e.message.contains("failed checks 1/2")));
    assert_eq!(rollout.phase, Phase::Progressing);
    let _ = answer(&mut rollout, &model, &undo, false, 300);
    assert_eq!(
        rollout.phase,
        Phase::Progressing,
        "a non-2xx rollback answer changes nothing"
    );
    let effects = tick(&mut rollout, &model, 10_400);
    let undo = call(&effects, "undo")
        .expect("asked every interval")
        .clone();
    let effects = answer(&mut rollout, &model, &undo, true, 10_500);
    assert_eq!(rollout.phase, Phase::Degraded);
    let (event, aborted) = effects.ended.expect("ended");
    assert!(
        aborted && event.message.contains("rollback webhook `undo`"),
        "{}",
        event.message
    );
}

#[test]
fn steps_abort_on_a_rollout_hook_failure_and_stale_answers_are_dropped() {
    let model = model(
        "        steps: [{ setWeight: 10 }, { pause: {} }]
        webhooks: [{ name: check, type: rollout, url: \"http://127.0.0.1:1/\" }]
",
    );
    let mut rollout = start(&model);
    let effects = tick(&mut rollout, &model, 100);
    let check = call(&effects, "check").expect("asked").clone();
    let mut stale = check.clone();
    stale.epoch += 7;
    let _ = answer(&mut rollout, &model, &stale, false, 150);
    assert_eq!(rollout.phase, Phase::Paused, "a stale answer is dropped");
    // Paused at `pause: {}` (an operator wait): rollout hooks are not asked, so resume first.
    let _ = rollout.command(
        ctx(&model),
        super::super::Command::Promote { full: false },
        160,
    );
    rollout.phase = Phase::Progressing;
    let _ = answer(&mut rollout, &model, &check, false, 200);
    assert_eq!(rollout.phase, Phase::Degraded);
}

#[test]
fn load_test_targets_follow_the_analysis() {
    let model = model(&format!(
        "{FLAGGER}        webhooks:
          - {{ name: gate, type: confirm-rollout, url: \"http://127.0.0.1:1/\" }}
          - {{ name: load, loadTest: {{ rate: 5 }} }}
"
    ));
    let mut rollout = start(&model);
    assert!(!rollout.analysis_running(), "not before traffic");
    let effects = tick(&mut rollout, &model, 100);
    assert!(!rollout.analysis_running(), "not while a gate holds");
    let asked = call(&effects, "gate").expect("asked").clone();
    let _ = answer(&mut rollout, &model, &asked, true, 200);
    let _ = tick(&mut rollout, &model, 300);
    assert!(rollout.analysis_running(), "runs with the analysis");
    let _ = rollout.command(ctx(&model), super::super::Command::Pause, 400);
    assert!(
        !rollout.analysis_running(),
        "stops while an operator holds the rollout"
    );
    let _ = rollout.command(ctx(&model), super::super::Command::Resume, 500);
    assert!(rollout.analysis_running());
    let _ = rollout.command(ctx(&model), super::super::Command::Abort, 600);
    assert!(!rollout.analysis_running(), "stops on abort");
}

#[test]
fn a_state_file_from_before_webhooks_loads() {
    let model = model(FLAGGER);
    let rollout = start(&model);
    let mut value = serde_json::to_value(&rollout).expect("serializes");
    value.as_object_mut().expect("an object").remove("hooks");
    let restored: Rollout = serde_json::from_value(value).expect("loads without hooks");
    assert!(!restored.hooks.before_traffic);
}

#[test]
fn a_failing_rollout_hook_holds_flagger_advancement_until_it_passes() {
    let model = model(&format!(
        "{FLAGGER}        webhooks:\n          - {{ name: check, type: rollout, url: \"http://127.0.0.1:1/\" }}\n"
    ));
    let mut rollout = start(&model);
    let effects = tick(&mut rollout, &model, 100);
    let check = call(&effects, "check").expect("asked").clone();
    let _ = answer(&mut rollout, &model, &check, false, 200);
    let _ = tick(&mut rollout, &model, 10_050);
    assert_eq!(
        rollout.weight().basis_points(),
        2_500,
        "{}",
        rollout.message
    );
    assert!(
        rollout.message.contains("rollout webhook check failing"),
        "{}",
        rollout.message
    );
    let effects = tick(&mut rollout, &model, 10_250);
    let check = call(&effects, "check").expect("asked again").clone();
    let _ = answer(&mut rollout, &model, &check, true, 10_300);
    let _ = tick(&mut rollout, &model, 20_100);
    assert_eq!(
        rollout.weight().basis_points(),
        5_000,
        "{}",
        rollout.message
    );
    assert_eq!(
        rollout.strategy.failed_checks(),
        1,
        "the failure counted once"
    );
}

#[test]
fn blue_green_preview_waits_for_confirm_rollout_and_the_switch_for_confirm_promotion() {
    let yaml = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: checkout
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      blueGreen:
        preview: { hosts: [preview.example.com] }
        webhooks:
          - { name: start, type: confirm-rollout, url: "http://127.0.0.1:1/" }
          - { name: switch, type: confirm-promotion, url: "http://127.0.0.1:1/" }
"#;
    let model = weir_config::parse(yaml, Path::new("/")).expect("valid");
    let mut rollout = start(&model);
    assert!(
        !rollout.policy().preview,
        "no preview before confirm-rollout"
    );
    let effects = tick(&mut rollout, &model, 100);
    let asked = call(&effects, "start").expect("asked").clone();
    assert!(!rollout.policy().preview);
    let _ = answer(&mut rollout, &model, &asked, true, 200);
    let effects = tick(&mut rollout, &model, 300);
    assert!(rollout.policy().preview, "the preview is up once confirmed");
    assert_eq!(rollout.weight().basis_points(), 0, "{}", rollout.message);
    assert_eq!(
        rollout.waiting_gate().map(|g| g.kind.as_str()),
        Some("confirm-promotion")
    );
    let asked = call(&effects, "switch")
        .expect("asked before the switch")
        .clone();
    let _ = answer(&mut rollout, &model, &asked, true, 400);
    let _ = tick(&mut rollout, &model, 500);
    assert_eq!(
        rollout.weight().basis_points(),
        10_000,
        "switched once confirmed"
    );
}
