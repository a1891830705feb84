//! The rollout state machine as a pure function of config, measurements, commands and time.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use weir_config::{
    AnyOf, BuiltinMetric, CanarySteps, HeaderRoute, Iterations, MirrorRoute, Model, RequestMatch,
    Step, StrategyKind, StringMatch, Weight,
};
use weir_proxy::routes::Policy;

use super::*;
use crate::engine::analysis::Measured;

const STEPS: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: checkout
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      canary:
        steps:
          - setWeight: 10
          - pause: { duration: 10s }
          - analysis: { templates: [{ templateName: success-rate }] }
          - setWeight: 50
          - pause: {}
          - setWeight: 100
        analysis:
          templates: [{ templateName: latency }]
          startingStep: 1
analysisTemplates:
  - name: success-rate
    metrics:
      - name: success-rate
        interval: 5s
        count: 3
        failureLimit: 1
        successCondition: result >= 0.99
        provider: { builtin: { metric: success-rate, window: 30s, minRequests: 50 } }
  - name: latency
    metrics:
      - name: p99
        interval: 5s
        failureLimit: 2
        successCondition: result <= 0.5
        provider: { builtin: { metric: latency-p99, window: 30s } }
"#;

const FLAGGER: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: search
    stable: { version: "2024.1", upstreams: ["127.0.0.1:9011"] }
    canary: { version: "2024.2", upstreams: ["127.0.0.1:9012"] }
    strategy:
      canary:
        analysis:
          interval: 30s
          threshold: 2
          stepWeight: 10
          maxWeight: 30
          metrics:
            - name: request-success-rate
              thresholdRange: { min: 99 }
            - name: request-duration
              thresholdRange: { max: 500 }
"#;

fn model(yaml: &str) -> Model {
    weir_config::parse(yaml, Path::new("/")).expect("test config is valid")
}

fn with_canary(yaml: &str, canary: Option<&str>) -> Model {
    let text = match canary {
        Some(version) => yaml.replace("version: v2", &format!("version: {version}")),
        None => yaml.replace(
            r#"    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }"#,
            "",
        ),
    };
    model(&text)
}

/// A fake world: what the builtin provider answers, per metric.
#[derive(Clone, Copy)]
struct World {
    success_rate: Option<f64>,
    p99: Option<f64>,
    requests: u64,
}

impl World {
    fn healthy() -> World {
        World {
            success_rate: Some(1.0),
            p99: Some(0.05),
            requests: 1000,
        }
    }

    fn answer(&self, query: BuiltinQuery<'_>) -> Outcome {
        let value = match query.provider.metric {
            BuiltinMetric::SuccessRate => self.success_rate,
            BuiltinMetric::LatencyQuantile(_) => self.p99,
            _ => None,
        };
        match value {
            Some(_) if self.requests < query.provider.min_requests => Outcome::NoData(format!(
                "{} requests in 30s, fewer than minRequests {}",
                self.requests, query.provider.min_requests
            )),
            Some(value) => Outcome::Value(Measured {
                value: json!(value),
                requests: Some(self.requests),
                window: Some(Duration::from_secs(30)),
                failed: None,
            }),
            None => Outcome::NoData("no data".into()),
        }
    }
}

struct Sim {
    model: Model,
    rollout: Rollout,
    now_ms: u64,
    world: World,
    log: Vec<String>,
}

impl Sim {
    fn new(model: Model) -> Sim {
        let mut rollout = Rollout::new(&model.services[0]);
        let now_ms = 1_000_000;
        let ctx = Ctx {
            service: &model.services[0],
            templates: &model.analysis_templates,
        };
        let effects = rollout.reconcile(ctx, now_ms);
        let mut sim = Sim {
            model,
            rollout,
            now_ms,
            world: World::healthy(),
            log: effects.events.into_iter().map(|e| e.message).collect(),
        };
        sim.drain();
        sim
    }

    fn drain(&mut self) {
        self.log
            .extend(self.rollout.take_events().into_iter().map(|e| e.message));
    }

    /// Advances time in 100 ms ticks, as the driver does.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now_ms + duration.as_millis() as u64;
        while self.now_ms < end {
            self.now_ms += 100;
            let world = self.world;
            let ctx = Ctx {
                service: &self.model.services[0],
                templates: &self.model.analysis_templates,
            };
            let effects = self
                .rollout
                .tick(ctx, self.now_ms, &mut |q| world.answer(q));
            assert!(
                effects.due.is_empty(),
                "builtin metrics only in these tests"
            );
            self.log
                .extend(effects.events.into_iter().map(|e| e.message));
            self.drain();
        }
    }

    fn command(&mut self, command: Command) -> Result<(), String> {
        let ctx = Ctx {
            service: &self.model.services[0],
            templates: &self.model.analysis_templates,
        };
        let result = self.rollout.command(ctx, command, self.now_ms);
        self.drain();
        let effects = result?;
        self.log
            .extend(effects.events.into_iter().map(|e| e.message));
        Ok(())
    }

    fn reconfigure(&mut self, model: Model) {
        self.model = model;
        let ctx = Ctx {
            service: &self.model.services[0],
            templates: &self.model.analysis_templates,
        };
        let effects = self.rollout.reconcile(ctx, self.now_ms);
        self.log
            .extend(effects.events.into_iter().map(|e| e.message));
        self.drain();
    }

    fn weight(&self) -> f64 {
        self.rollout.weight().percent()
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.iter().any(|line| line.contains(needle))
    }
}

fn background_run(rollout: &Rollout) -> Option<&AnalysisRun> {
    match &rollout.strategy {
        StrategyState::Steps(steps) => steps.background_run.as_ref(),
        _ => None,
    }
}

#[test]
fn healthy_canary_walks_every_step_and_is_promoted() {
    let mut sim = Sim::new(model(STEPS));
    assert_eq!(sim.rollout.revision, 1);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.weight(), 10.0);
    assert!(
        sim.logged("Advance checkout canary weight 10 (step 1/6)"),
        "{:?}",
        sim.log
    );
    sim.run_for(Duration::from_secs(9));
    assert_eq!(sim.rollout.step_index(), 1, "still pausing");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.rollout.step_index(), 2, "analysis step");
    // count 3 at interval 5s: the third measurement is taken 10s after the first.
    sim.run_for(Duration::from_secs(11));
    assert_eq!(sim.weight(), 50.0);
    assert_eq!(
        sim.rollout.phase,
        Phase::Paused,
        "pause: {{}} waits for promote"
    );
    assert_eq!(sim.rollout.pause, Some(PauseReason::Step));
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.weight(), 50.0, "an indefinite pause never times out");
    sim.command(Command::Promote { full: false }).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert!(sim.rollout.promoted);
    assert_eq!(sim.weight(), 100.0);
    assert_eq!(sim.rollout.stable_version, "v2");
    assert!(
        sim.logged("Promotion completed: checkout v2 is stable"),
        "{:?}",
        sim.log
    );
    assert!(
        sim.rollout.message.contains("still names v1"),
        "{}",
        sim.rollout.message
    );
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Promoted
    );
}

#[test]
fn failing_analysis_aborts_with_the_numbers() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(11));
    assert_eq!(sim.rollout.step_index(), 2);
    sim.world.success_rate = Some(0.6917);
    sim.world.requests = 1184;
    // The first measurement (at the start of the step) passed; failureLimit 1: the second failure
    // aborts, 10 s later.
    sim.run_for(Duration::from_secs(6));
    assert_eq!(
        sim.rollout.phase,
        Phase::Progressing,
        "one failure is tolerated"
    );
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert_eq!(sim.weight(), 0.0);
    assert!(
        sim.logged("Halt checkout advancement: success-rate"),
        "{:?}",
        sim.log
    );
    let rollback = sim
        .log
        .iter()
        .find(|l| l.starts_with("Rolling back checkout"))
        .expect("a rollback line");
    for needle in [
        "success-rate failed 2 time(s) (failureLimit 1)",
        "0.6917",
        "0.99",
        "30s",
        "1184 requests",
    ] {
        assert!(rollback.contains(needle), "{rollback:?} lacks {needle:?}");
    }
    // Aborted versions are never retried by themselves.
    sim.world = World::healthy();
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert_eq!(sim.weight(), 0.0);
}

#[test]
fn background_analysis_aborts_at_any_step() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(1));
    assert!(background_run(&sim.rollout).is_some() || sim.rollout.step_index() >= 1);
    sim.world.p99 = Some(2.0);
    // failureLimit 2: the third failed measurement (at 5 s, 10 s, 15 s) aborts.
    sim.run_for(Duration::from_secs(10));
    assert_eq!(
        sim.rollout.phase,
        Phase::Progressing,
        "two failures are tolerated"
    );
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.rollout.phase, Phase::Degraded, "{:?}", sim.log);
    assert!(
        sim.logged("p99 failed 3 time(s) (failureLimit 2)"),
        "{:?}",
        sim.log
    );
}

#[test]
fn background_analysis_aborts_during_an_indefinite_pause() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(22));
    assert_eq!(
        (sim.rollout.phase, sim.rollout.pause.clone(), sim.weight()),
        (Phase::Paused, Some(PauseReason::Step), 50.0),
        "{:?}",
        sim.log
    );
    sim.world.p99 = Some(2.0);
    // failureLimit 2: the third failed measurement aborts, pause or not.
    sim.run_for(Duration::from_secs(16));
    assert_eq!(sim.rollout.phase, Phase::Degraded, "{:?}", sim.log);
    assert_eq!(sim.weight(), 0.0);
    assert!(
        sim.logged("p99 failed 3 time(s) (failureLimit 2)"),
        "{:?}",
        sim.log
    );
}

#[test]
fn too_little_traffic_is_inconclusive_and_pauses_never_fails() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(11));
    sim.world.requests = 12;
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sim.rollout.phase, Phase::Paused, "{:?}", sim.log);
    assert_eq!(sim.rollout.pause, Some(PauseReason::Inconclusive));
    assert!(
        sim.rollout.message.contains("fewer than minRequests"),
        "{}",
        sim.rollout.message
    );
    let weight = sim.weight();
    assert!(weight > 0.0, "paused keeps its weight");
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.rollout.phase, Phase::Paused);
    sim.world = World::healthy();
    sim.command(Command::Resume).unwrap();
    sim.run_for(Duration::from_secs(11));
    assert_eq!(
        sim.weight(),
        50.0,
        "resumed analysis passes and the rollout advances"
    );
}

#[test]
fn removing_the_canary_mid_rollout_rolls_back_at_once() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.weight(), 10.0);
    sim.reconfigure(with_canary(STEPS, None));
    assert_eq!(sim.weight(), 0.0);
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert!(
        sim.logged("canary v2 removed from the config"),
        "{:?}",
        sim.log
    );
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::RolledBack
    );
}

#[test]
fn a_new_canary_version_restarts_from_step_one() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(12));
    assert_eq!(sim.rollout.step_index(), 2);
    sim.reconfigure(with_canary(STEPS, Some("v3")));
    assert_eq!(sim.rollout.revision, 2);
    assert_eq!(sim.rollout.step_index(), 0);
    assert_eq!(sim.rollout.canary_version.as_deref(), Some("v3"));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.weight(), 10.0);
    assert_eq!(sim.rollout.history[0].outcome, RevisionOutcome::Superseded);
}

#[test]
fn promote_full_skips_everything() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(1));
    sim.command(Command::Promote { full: true }).unwrap();
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert_eq!(sim.weight(), 100.0);
}

#[test]
fn abort_then_retry_then_undo() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(1));
    sim.command(Command::Abort).unwrap();
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert_eq!(sim.weight(), 0.0);
    assert!(
        sim.command(Command::Abort).is_err(),
        "nothing left to abort"
    );
    sim.command(Command::Retry).unwrap();
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    assert_eq!(sim.rollout.revision, 1, "retry keeps the revision");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.weight(), 10.0);
    sim.command(Command::Promote { full: true }).unwrap();
    assert_eq!(sim.weight(), 100.0);
    sim.command(Command::Undo).unwrap();
    assert_eq!(sim.weight(), 0.0);
    assert_eq!(sim.rollout.stable_version, "v1");
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Undone
    );
    sim.run_for(Duration::from_secs(30));
    assert_eq!(
        sim.weight(),
        0.0,
        "an undone version is not rolled out again by itself"
    );
}

#[test]
fn operator_pause_holds_the_clock() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(5));
    sim.command(Command::Pause).unwrap();
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.rollout.step_index(), 1, "paused time does not count");
    sim.command(Command::Resume).unwrap();
    sim.run_for(Duration::from_secs(4));
    assert_eq!(sim.rollout.step_index(), 1);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.rollout.step_index(), 2);
}

#[test]
fn a_timed_pause_past_the_progress_deadline_does_not_abort() {
    // More deadline cases in `deadline/tests.rs`.
    let text = STEPS.replace("        analysis:\n          templates: [{ templateName: latency }]", "        progressDeadline: 5s\n        analysis:\n          templates: [{ templateName: latency }]");
    let mut sim = Sim::new(model(&text));
    sim.run_for(Duration::from_secs(11));
    assert_eq!(sim.rollout.phase, Phase::Progressing, "{:?}", sim.log);
    assert_eq!(sim.rollout.step_index(), 2, "the 10s pause ended");
}

#[test]
fn flagger_progression_advances_then_promotes() {
    let mut sim = Sim::new(model(FLAGGER));
    assert_eq!(sim.weight(), 10.0);
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.weight(), 20.0);
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.weight(), 30.0);
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert!(sim.rollout.promoted);
    assert!(
        sim.logged("Advance search canary weight 20 (step 2/3)"),
        "{:?}",
        sim.log
    );
}

#[test]
fn flagger_counts_failed_checks_to_the_threshold_and_ignores_no_data() {
    let mut sim = Sim::new(model(FLAGGER));
    sim.world.requests = 3;
    sim.run_for(Duration::from_secs(95));
    assert_eq!(
        sim.rollout.phase,
        Phase::Progressing,
        "no data halts, never fails"
    );
    assert_eq!(sim.rollout.strategy.failed_checks(), 0);
    assert_eq!(sim.weight(), 10.0);
    sim.world = World {
        success_rate: Some(0.6917),
        ..World::healthy()
    };
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.rollout.strategy.failed_checks(), 1);
    assert!(
        sim.logged("request-success-rate 69.17% < 99%"),
        "{:?}",
        sim.log
    );
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.rollout.phase, Phase::Degraded);
    assert!(
        sim.logged("failed checks threshold reached 2"),
        "{:?}",
        sim.log
    );
}

#[test]
fn persisted_state_resumes_the_same_step_and_weight() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(3));
    let saved = serde_json::to_string(&sim.rollout).unwrap();
    let mut restored: Rollout = serde_json::from_str(&saved).unwrap();
    let ctx = Ctx {
        service: &sim.model.services[0],
        templates: &sim.model.analysis_templates,
    };
    let _ = restored.reconcile(ctx, sim.now_ms + 50);
    assert_eq!(restored.revision, sim.rollout.revision);
    assert_eq!(restored.step_index(), sim.rollout.step_index());
    assert_eq!(restored.weight(), Weight::from_percent(10.0).unwrap());
    assert_eq!(restored.phase, Phase::Progressing);
}

#[test]
fn unreadable_state_serves_stable_and_waits() {
    let model = model(STEPS);
    let rollout = Rollout::unreadable(&model.services[0], "expected value at line 1", 0);
    assert_eq!(rollout.weight(), Weight::ZERO);
    assert_eq!(rollout.phase, Phase::Paused);
    assert!(rollout.message.contains("state file unreadable"));
}

#[test]
fn background_analysis_starting_at_a_pause_still_watches() {
    let text = STEPS
        .replace(
            "          - setWeight: 10\n          - pause: { duration: 10s }\n",
            "          - setWeight: 10\n          - pause: {}\n",
        )
        .replace("startingStep: 1", "startingStep: 0");
    let mut sim = Sim::new(model(&text));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.rollout.phase, Phase::Paused);
    assert!(background_run(&sim.rollout).is_some(), "{:?}", sim.log);
    sim.world.p99 = Some(2.0);
    sim.run_for(Duration::from_secs(16));
    assert_eq!(sim.rollout.phase, Phase::Degraded, "{:?}", sim.log);
}

#[test]
fn flagger_checks_can_name_an_analysis_template() {
    let text = FLAGGER.replace(
        "            - name: request-duration\n              thresholdRange: { max: 500 }\n",
        "            - name: custom\n              templateRef: { name: errors }\n",
    ) + r#"
analysisTemplates:
  - name: errors
    metrics:
      - name: success
        successCondition: result >= 0.99
        provider: { builtin: { metric: success-rate, window: 30s } }
"#;
    let mut sim = Sim::new(model(&text));
    sim.run_for(Duration::from_secs(31));
    assert_eq!(
        sim.weight(),
        20.0,
        "the template check passed: {:?}",
        sim.log
    );
    sim.world.success_rate = Some(0.9);
    sim.run_for(Duration::from_secs(61));
    assert_eq!(sim.rollout.phase, Phase::Degraded, "{:?}", sim.log);
    assert!(sim.logged("custom"), "{:?}", sim.log);
}

// --- header and mirror routes -------------------------------------------------------------------

fn header_route(name: &str, any_of: AnyOf) -> Step {
    Step::SetHeaderRoute(HeaderRoute {
        name: name.into(),
        any_of,
    })
}

fn mirror_route(name: &str, percent: f64, any_of: AnyOf) -> Step {
    Step::SetMirrorRoute(MirrorRoute {
        name: name.into(),
        percentage: Weight::from_percent(percent).unwrap(),
        any_of,
    })
}

fn beta() -> AnyOf {
    vec![vec![RequestMatch::Header {
        name: "x-beta".into(),
        value: StringMatch::Exact("yes".into()),
    }]]
}

fn get_api() -> AnyOf {
    vec![vec![
        RequestMatch::Method(StringMatch::Exact("GET".into())),
        RequestMatch::Path(StringMatch::Prefix("/api".into())),
    ]]
}

/// The STEPS service with its plan replaced by `steps` (the config crate parses the route steps
/// separately; the engine only sees the model).
fn with_steps(steps: Vec<Step>) -> Model {
    let mut model = model(STEPS);
    let strategy = model.services[0].strategy.as_mut().unwrap();
    strategy.kind = StrategyKind::Steps(CanarySteps {
        steps,
        background: None,
    });
    model
}

/// Routes set, replaced and removed by steps: 1 header, 2 mirror, 3 weight, 4 pause 10s,
/// 5 replace header, 6 remove header, 7 remove mirror, 8 pause until promoted, 9 weight 50.
fn routes_plan() -> Model {
    let beta_or_cookie = vec![
        beta()[0].clone(),
        vec![RequestMatch::Cookie {
            name: "beta".into(),
            value: StringMatch::Regex("yes|on".into()),
        }],
    ];
    with_steps(vec![
        header_route("beta", beta()),
        mirror_route("shadow", 50.0, get_api()),
        Step::SetWeight(Weight::from_percent(10.0).unwrap()),
        Step::Pause(Some(Duration::from_secs(10))),
        header_route("beta", beta_or_cookie),
        header_route("beta", Vec::new()),
        mirror_route("shadow", 50.0, Vec::new()),
        Step::Pause(None),
        Step::SetWeight(Weight::from_percent(50.0).unwrap()),
    ])
}

#[test]
fn header_and_mirror_routes_are_set_replaced_and_removed_by_steps() {
    let mut sim = Sim::new(routes_plan());
    sim.run_for(Duration::from_millis(100));
    let policy = sim.rollout.policy();
    assert_eq!(policy.weight.percent(), 10.0);
    assert_eq!(
        policy.header_routes,
        vec![HeaderRoute {
            name: "beta".into(),
            any_of: beta()
        }]
    );
    assert_eq!(policy.mirror_routes.len(), 1);
    assert_eq!(policy.mirror_routes[0].name, "shadow");
    assert_eq!(policy.mirror_routes[0].percentage.percent(), 50.0);
    assert_eq!(policy.mirror_routes[0].any_of, get_api());
    assert!(
        sim.logged(r#"Set header route beta on checkout: requests matching header x-beta: exact "yes" go to the canary (step 1/9)"#),
        "{:?}",
        sim.log
    );
    assert!(
        sim.logged(r#"Set mirror route shadow on checkout: 50% of requests matching method: exact "GET" and path: prefix "/api" are copied to the canary (step 2/9)"#),
        "{:?}",
        sim.log
    );
    sim.run_for(Duration::from_secs(11));
    assert_eq!(sim.rollout.phase, Phase::Paused, "{:?}", sim.log);
    assert!(
        sim.logged(r#"Replaced header route beta on checkout: requests matching header x-beta: exact "yes" or cookie beta: regex "yes|on" go to the canary (step 5/9)"#),
        "{:?}",
        sim.log
    );
    assert!(sim.logged("Removed header route beta from checkout (step 6/9)"));
    assert!(sim.logged("Removed mirror route shadow from checkout (step 7/9)"));
    let policy = sim.rollout.policy();
    assert!(policy.header_routes.is_empty() && policy.mirror_routes.is_empty());
    assert_eq!(
        policy.weight.percent(),
        10.0,
        "removing routes keeps the weight"
    );
}

#[test]
fn routes_end_with_promotion_abort_rollback_and_supersede() {
    let plan = || {
        with_steps(vec![
            header_route("beta", beta()),
            mirror_route("shadow", 100.0, get_api()),
            Step::Pause(None),
        ])
    };
    let in_force = |sim: &Sim| {
        let policy = sim.rollout.policy();
        (policy.header_routes.len(), policy.mirror_routes.len())
    };

    let mut sim = Sim::new(plan());
    sim.run_for(Duration::from_millis(100));
    assert_eq!(in_force(&sim), (1, 1));
    assert_eq!(sim.weight(), 0.0, "routes alone send no weighted traffic");
    sim.command(Command::Promote { full: false }).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert_eq!(in_force(&sim), (0, 0), "gone after promotion");
    assert_eq!(sim.rollout.policy(), Policy::from(Weight::FULL));
    assert!(sim.rollout.strategy.routes().unwrap().is_empty());

    let mut sim = Sim::new(plan());
    sim.run_for(Duration::from_millis(100));
    sim.command(Command::Abort).unwrap();
    assert_eq!(
        sim.rollout.policy(),
        Policy::from(Weight::ZERO),
        "gone after abort"
    );
    sim.command(Command::Retry).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(in_force(&sim), (1, 1), "retry sets them again");

    let mut sim = Sim::new(plan());
    sim.run_for(Duration::from_millis(100));
    let mut removed = plan();
    removed.services[0].canary = None;
    sim.reconfigure(removed);
    assert_eq!(
        sim.rollout.policy(),
        Policy::from(Weight::ZERO),
        "gone after rollback"
    );

    let mut sim = Sim::new(plan());
    sim.run_for(Duration::from_millis(100));
    let mut next = plan();
    next.services[0].canary.as_mut().unwrap().version.version = "v3".into();
    sim.reconfigure(next);
    assert_eq!(
        in_force(&sim),
        (0, 0),
        "a new revision starts without the old routes"
    );
    sim.run_for(Duration::from_millis(100));
    assert_eq!(in_force(&sim), (1, 1), "and sets its own");
}

/// Over whole rollouts, tick by tick: effects report a policy change exactly when the policy
/// changed, a state change exactly when the persisted state changed, and call a change widening
/// exactly when it adds canary traffic.
#[test]
fn effects_report_exactly_what_changed() {
    for model in [
        routes_plan(),
        model(STEPS),
        model(FLAGGER),
        ab_test(beta(), Some(10.0)),
    ] {
        let mut sim = Sim::new(model);
        let mut changes = 0;
        let mut publishes = 0;
        for tick in 0..1000 {
            if tick == 250 && sim.rollout.phase == Phase::Paused {
                let _ = sim.command(Command::Promote { full: false });
            }
            let before_policy = sim.rollout.policy();
            let before_state = serde_json::to_value(&sim.rollout).unwrap();
            sim.now_ms += 100;
            let world = sim.world;
            let ctx = Ctx {
                service: &sim.model.services[0],
                templates: &sim.model.analysis_templates,
            };
            let effects = sim.rollout.tick(ctx, sim.now_ms, &mut |q| world.answer(q));
            let after_policy = sim.rollout.policy();
            let after_state = serde_json::to_value(&sim.rollout).unwrap();
            assert_eq!(
                effects.policy_changed,
                before_policy != after_policy,
                "tick {tick}: {before_policy:?} -> {after_policy:?}"
            );
            assert_eq!(
                effects.changed,
                before_state != after_state,
                "tick {tick}: {:?}",
                effects.events
            );
            if effects.policy_changed {
                let wider = after_policy.weight > before_policy.weight
                    || after_policy
                        .header_routes
                        .iter()
                        .any(|r| !before_policy.header_routes.contains(r))
                    || after_policy
                        .mirror_routes
                        .iter()
                        .any(|r| !before_policy.mirror_routes.contains(r));
                assert_eq!(effects.widened, wider, "tick {tick}: {after_policy:?}");
                publishes += 1;
            }
            changes += usize::from(effects.changed);
        }
        assert!(publishes >= 1, "{publishes}");
        assert!(
            changes < 200,
            "a quiet tick changes nothing: {changes} of 400 did"
        );
    }
}

#[test]
fn quiet_ticks_change_nothing() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(22));
    assert_eq!(sim.rollout.pause, Some(PauseReason::Step), "{:?}", sim.log);
    sim.world.p99 = Some(0.01);
    // Background analysis measures every 5 s; the ticks between measure nothing.
    let mut quiet = 0;
    for _ in 0..40 {
        sim.now_ms += 100;
        let world = sim.world;
        let ctx = Ctx {
            service: &sim.model.services[0],
            templates: &sim.model.analysis_templates,
        };
        let effects = sim.rollout.tick(ctx, sim.now_ms, &mut |q| world.answer(q));
        assert!(!effects.policy_changed);
        quiet += usize::from(!effects.changed && effects.events.is_empty());
    }
    assert!(quiet >= 38, "{quiet} of 40 ticks were quiet");
}

// --- Flagger A/B testing (iterations) -------------------------------------------------------

/// The FLAGGER service as an A/B test: `iterations: 3`, `threshold: 2`, every 30 s, requests
/// with `x-beta: yes` to the canary (and/or mirroring).
fn ab_test(any_of: AnyOf, mirror: Option<f64>) -> Model {
    let mut model = model(FLAGGER);
    let strategy = model.services[0].strategy.as_mut().unwrap();
    let StrategyKind::Progression(progression) = &strategy.kind else {
        unreachable!("FLAGGER is a progression")
    };
    strategy.kind = StrategyKind::Iterations(Iterations {
        interval: progression.interval,
        threshold: progression.threshold,
        iterations: 3,
        any_of,
        mirror: mirror.map(|p| Weight::from_percent(p).unwrap()),
        checks: progression.checks.clone(),
    });
    model
}

impl Sim {
    /// Ticks for `duration`, asserting after every tick.
    fn run_checking(&mut self, duration: Duration, check: impl Fn(&Sim)) {
        let end = self.now_ms + duration.as_millis() as u64;
        while self.now_ms < end {
            self.run_for(Duration::from_millis(100));
            check(self);
        }
    }
}

#[test]
fn ab_test_routes_matching_requests_then_promotes_after_n_passing_checks() {
    let mut sim = Sim::new(ab_test(beta(), None));
    let policy = sim.rollout.policy();
    assert_eq!(policy.weight, Weight::ZERO);
    assert_eq!(
        policy.header_routes,
        vec![HeaderRoute {
            name: AB_HEADER_ROUTE.into(),
            any_of: beta()
        }]
    );
    assert!(policy.mirror_routes.is_empty());
    assert!(
        sim.logged(r#"Set header route ab-test on search: requests matching header x-beta: exact "yes" go to the canary"#),
        "{:?}",
        sim.log
    );
    let never_weighted = |sim: &Sim| {
        if sim.rollout.phase == Phase::Progressing {
            let policy = sim.rollout.policy();
            assert_eq!(policy.weight, Weight::ZERO, "no weighted traffic, ever");
            assert_eq!(policy.header_routes.len(), 1);
        }
    };
    sim.run_checking(Duration::from_secs(30), never_weighted);
    assert!(sim.logged("Advance search iteration 1/3"), "{:?}", sim.log);
    assert_eq!(sim.rollout.step_index(), 1);
    sim.run_checking(Duration::from_secs(30), never_weighted);
    assert!(sim.logged("Advance search iteration 2/3"), "{:?}", sim.log);
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    sim.run_checking(Duration::from_secs(30), never_weighted);
    assert!(sim.logged("Advance search iteration 3/3"), "{:?}", sim.log);
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert!(sim.rollout.promoted);
    assert_eq!(
        sim.rollout.policy(),
        Policy::from(Weight::FULL),
        "routes gone"
    );
}

#[test]
fn ab_test_rolls_back_when_failed_checks_reach_the_threshold() {
    let mut sim = Sim::new(ab_test(beta(), None));
    sim.world.success_rate = Some(0.6917);
    sim.run_for(Duration::from_secs(30));
    assert_eq!(
        sim.rollout.phase,
        Phase::Progressing,
        "one failure is tolerated"
    );
    assert_eq!(sim.rollout.strategy.failed_checks(), 1);
    assert!(
        sim.logged("request-success-rate 69.17% < 99%"),
        "{:?}",
        sim.log
    );
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.rollout.phase, Phase::Degraded, "{:?}", sim.log);
    assert_eq!(sim.rollout.policy(), Policy::from(Weight::ZERO));
    assert!(
        sim.logged("failed checks threshold reached 2"),
        "{:?}",
        sim.log
    );
    assert_eq!(
        sim.rollout.history.last().unwrap().outcome,
        RevisionOutcome::Aborted
    );
}

#[test]
fn ab_test_without_data_halts_and_never_fails() {
    let mut sim = Sim::new(ab_test(beta(), None));
    sim.world.requests = 3;
    sim.run_for(Duration::from_secs(95));
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    assert_eq!(sim.rollout.step_index(), 0, "no iteration counted");
    assert_eq!(sim.rollout.strategy.failed_checks(), 0);
    assert_eq!(sim.rollout.policy().header_routes.len(), 1);
}

#[test]
fn ab_test_that_only_mirrors_judges_the_mirrored_traffic() {
    let mut sim = Sim::new(ab_test(Vec::new(), Some(50.0)));
    let policy = sim.rollout.policy();
    assert_eq!(policy.weight, Weight::ZERO);
    assert!(policy.header_routes.is_empty());
    assert_eq!(
        policy.mirror_routes,
        vec![MirrorRoute {
            name: AB_MIRROR_ROUTE.into(),
            percentage: Weight::from_percent(50.0).unwrap(),
            any_of: vec![Vec::new()],
        }],
        "one entry without conditions: every request"
    );
    assert!(
        sim.logged("50% of requests matching every request are copied to the canary"),
        "{:?}",
        sim.log
    );
    let traffic = std::cell::RefCell::new(Vec::new());
    for _ in 0..301 {
        sim.now_ms += 100;
        let world = sim.world;
        let ctx = Ctx {
            service: &sim.model.services[0],
            templates: &sim.model.analysis_templates,
        };
        let _ = sim.rollout.tick(ctx, sim.now_ms, &mut |q| {
            traffic.borrow_mut().push(q.provider.traffic);
            world.answer(q)
        });
    }
    let traffic = traffic.into_inner();
    assert!(!traffic.is_empty());
    assert!(traffic.iter().all(|t| *t == weir_config::Traffic::Mirror));

    // With a match as well, the checks judge what the matching clients got.
    let mut sim = Sim::new(ab_test(beta(), Some(100.0)));
    assert_eq!(sim.rollout.policy().header_routes.len(), 1);
    assert_eq!(sim.rollout.policy().mirror_routes.len(), 1);
    let ctx = Ctx {
        service: &sim.model.services[0],
        templates: &sim.model.analysis_templates,
    };
    let mut seen = Vec::new();
    let world = sim.world;
    let _ = sim.rollout.tick(ctx, sim.now_ms + 30_000, &mut |q| {
        seen.push(q.provider.traffic);
        world.answer(q)
    });
    assert!(
        seen.iter().all(|t| *t == weir_config::Traffic::Primary),
        "{seen:?}"
    );
    assert!(!seen.is_empty());
}

#[test]
fn ab_test_state_survives_a_restart_and_promote_counts_an_iteration() {
    let mut sim = Sim::new(ab_test(beta(), None));
    sim.run_for(Duration::from_secs(31));
    let saved = serde_json::to_string(&sim.rollout).unwrap();
    let mut restored: Rollout = serde_json::from_str(&saved).unwrap();
    let ctx = Ctx {
        service: &sim.model.services[0],
        templates: &sim.model.analysis_templates,
    };
    let _ = restored.reconcile(ctx, sim.now_ms);
    assert_eq!(restored.strategy, sim.rollout.strategy);
    assert_eq!(restored.policy(), sim.rollout.policy());
    assert_eq!(restored.step_index(), 1);
    sim.command(Command::Promote { full: false }).unwrap();
    assert_eq!(sim.rollout.step_index(), 2);
    sim.command(Command::Promote { full: false }).unwrap();
    assert_eq!(sim.rollout.phase, Phase::Healthy);
    assert_eq!(sim.rollout.policy(), Policy::from(Weight::FULL));
}

#[test]
fn background_analysis_watches_header_routed_traffic_at_weight_zero() {
    let mut model = with_steps(vec![header_route("beta", beta()), Step::Pause(None)]);
    let background = fixtures::background_of(STEPS);
    if let Some(strategy) = model.services[0].strategy.as_mut() {
        if let StrategyKind::Steps(plan) = &mut strategy.kind {
            plan.background = Some(background);
        }
    }
    let mut sim = Sim::new(model);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.weight(), 0.0);
    assert!(background_run(&sim.rollout).is_some(), "{:?}", sim.log);
    sim.world.p99 = Some(2.0);
    sim.run_for(Duration::from_secs(16));
    assert_eq!(sim.rollout.phase, Phase::Degraded, "{:?}", sim.log);
    assert!(sim.rollout.policy().header_routes.is_empty());
}

mod fixtures {
    use weir_config::{BackgroundAnalysis, StrategyKind};

    /// The background analysis of a config with a step plan, starting at step 0.
    pub fn background_of(yaml: &str) -> BackgroundAnalysis {
        let model = super::model(yaml);
        let strategy = model.services[0].strategy.clone().unwrap();
        let StrategyKind::Steps(plan) = strategy.kind else {
            unreachable!("a step plan")
        };
        BackgroundAnalysis {
            starting_step: 0,
            ..plan.background.unwrap()
        }
    }
}

// --- review: config edits, crash-safe operations, operator commands -------------------------

impl Sim {
    /// One 100 ms tick, returning its effects (and logging its events).
    fn tick_effects(&mut self) -> (Effects, Policy) {
        self.now_ms += 100;
        let world = self.world;
        let ctx = Ctx {
            service: &self.model.services[0],
            templates: &self.model.analysis_templates,
        };
        let effects = self
            .rollout
            .tick(ctx, self.now_ms, &mut |q| world.answer(q));
        self.log
            .extend(effects.events.iter().map(|e| e.message.clone()));
        self.drain();
        (effects, self.rollout.policy())
    }

    fn reconcile_effects(&mut self, model: Model) -> Effects {
        self.model = model;
        let ctx = Ctx {
            service: &self.model.services[0],
            templates: &self.model.analysis_templates,
        };
        let effects = self.rollout.reconcile(ctx, self.now_ms);
        self.log
            .extend(effects.events.iter().map(|e| e.message.clone()));
        self.drain();
        effects
    }
}

#[test]
fn edited_steps_start_over_rather_than_promote_or_keep_a_removed_route() {
    let mut sim = Sim::new(routes_plan());
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.rollout.step_index(),
        3,
        "pausing 10s with beta and shadow"
    );
    assert_eq!(sim.rollout.policy().header_routes.len(), 1);
    // The same plan again: nothing moves.
    sim.reconfigure(routes_plan());
    assert_eq!(sim.rollout.step_index(), 3);
    // A shorter plan without the route steps: step 4 is past its end.
    let effects = sim.reconcile_effects(with_steps(vec![
        Step::SetWeight(Weight::from_percent(5.0).unwrap()),
        Step::Pause(None),
    ]));
    assert!(
        !sim.rollout.promoted,
        "an edited plan never promotes at once"
    );
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    assert_eq!(sim.rollout.step_index(), 0);
    assert_eq!(sim.rollout.policy(), Policy::from(Weight::ZERO));
    assert!(
        effects.policy_changed && !effects.widened,
        "narrowed: saved first"
    );
    assert!(
        sim.logged("checkout: the steps changed at step 4 (canary weight 10); the rollout of revision 1 starts over from step 1 of 2"),
        "{:?}",
        sim.log
    );
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.weight(), 5.0);
    assert_eq!(sim.rollout.pause, Some(PauseReason::Step));
    assert_eq!(sim.rollout.revision, 1, "the same revision");
}

#[test]
fn an_operator_pause_survives_edited_steps() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_millis(100));
    sim.command(Command::Pause).unwrap();
    sim.reconfigure(with_steps(vec![Step::SetWeight(
        Weight::from_percent(5.0).unwrap(),
    )]));
    assert_eq!(sim.rollout.pause, Some(PauseReason::Operator));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.weight(), 0.0, "held by the operator at step 1");
    sim.command(Command::Resume).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert!(sim.rollout.promoted);
}

#[test]
fn no_operation_both_narrows_and_widens_canary_traffic() {
    let plan = with_steps(vec![
        Step::SetWeight(Weight::from_percent(50.0).unwrap()),
        Step::Pause(Some(Duration::from_secs(1))),
        Step::SetWeight(Weight::ZERO),
        header_route("beta", beta()),
        Step::Pause(Some(Duration::from_secs(1))),
        header_route("beta", Vec::new()),
        Step::SetWeight(Weight::from_percent(20.0).unwrap()),
        Step::Pause(None),
    ]);
    let mut sim = Sim::new(plan);
    let mut served = sim.rollout.policy();
    for _ in 0..40 {
        let (effects, policy) = sim.tick_effects();
        let narrowed = policy.weight < served.weight
            || served
                .header_routes
                .iter()
                .any(|r| !policy.header_routes.contains(r));
        let widened = policy.weight > served.weight
            || policy
                .header_routes
                .iter()
                .any(|r| !served.header_routes.contains(r));
        assert!(
            !(narrowed && widened),
            "one tick narrowed and widened: {served:?} -> {policy:?}"
        );
        assert_eq!(effects.policy_changed, policy != served);
        assert_eq!(effects.widened, widened, "{served:?} -> {policy:?}");
        served = policy;
    }
    assert_eq!(sim.rollout.pause, Some(PauseReason::Step), "{:?}", sim.log);
    assert_eq!(sim.weight(), 20.0);
    assert!(sim.rollout.policy().header_routes.is_empty());
}

#[test]
fn ab_test_routes_follow_the_configs_match_and_mirror() {
    let mut sim = Sim::new(ab_test(beta(), None));
    sim.run_for(Duration::from_secs(31));
    assert_eq!(sim.rollout.step_index(), 1, "one iteration passed");
    let cookie = vec![vec![RequestMatch::Cookie {
        name: "beta".into(),
        value: StringMatch::Exact("yes".into()),
    }]];
    sim.reconfigure(ab_test(cookie.clone(), Some(50.0)));
    let policy = sim.rollout.policy();
    assert_eq!(policy.header_routes[0].any_of, cookie);
    assert_eq!(policy.mirror_routes.len(), 1);
    assert_eq!(policy.mirror_routes[0].percentage.percent(), 50.0);
    assert_eq!(sim.rollout.step_index(), 1, "iterations passed are kept");
    assert!(
        sim.logged(r#"Replaced header route ab-test on search: requests matching cookie beta: exact "yes" go to the canary (A/B test)"#),
        "{:?}",
        sim.log
    );
    sim.reconfigure(ab_test(cookie, None));
    assert!(sim.rollout.policy().mirror_routes.is_empty());
    assert!(
        sim.logged("Removed mirror route ab-mirror from search (A/B test)"),
        "{:?}",
        sim.log
    );
}

#[test]
fn switching_from_weighted_steps_to_an_ab_test_narrows_first_then_routes() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.weight(), 10.0);
    let mut ab = ab_test(beta(), None);
    ab.services[0].name = "checkout".into();
    ab.services[0].stable = sim.model.services[0].stable.clone();
    ab.services[0].canary = sim.model.services[0].canary.clone();
    let effects = sim.reconcile_effects(ab);
    assert_eq!(sim.rollout.policy(), Policy::from(Weight::ZERO));
    assert!(
        effects.policy_changed && !effects.widened,
        "saved before publishing"
    );
    let (effects, policy) = sim.tick_effects();
    assert_eq!(policy.header_routes.len(), 1, "the A/B route comes next");
    assert!(
        effects.policy_changed && effects.widened,
        "saved after publishing"
    );
}

#[test]
fn edited_flagger_weights_never_raise_the_weight_nor_promote_at_once() {
    let mut sim = Sim::new(model(FLAGGER));
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.weight(), 20.0);
    sim.reconfigure(model(&FLAGGER.replace("maxWeight: 30", "maxWeight: 10")));
    assert_eq!(sim.weight(), 10.0, "the highest weight not above 20");
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    assert!(
        sim.logged("search: the weights changed (was step 2 at canary weight 20); now step 1/1 at canary weight 10"),
        "{:?}",
        sim.log
    );
    sim.reconfigure(model(&FLAGGER.replace("stepWeight: 10", "stepWeight: 15")));
    assert_eq!(sim.weight(), 10.0, "never above the weight served");
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.weight(), 30.0, "then on along the new weights");
}

#[test]
fn a_new_canary_after_a_promotion_starts_from_the_configs_stable() {
    let mut sim = Sim::new(model(STEPS));
    sim.command(Command::Promote { full: true }).unwrap();
    assert_eq!(sim.rollout.stable_version, "v2");
    sim.reconfigure(with_canary(STEPS, Some("v3")));
    assert_eq!(
        sim.rollout.stable_version, "v1",
        "v2's arm now serves v3: the config's stable serves"
    );
    assert_eq!(sim.rollout.history.last().unwrap().from_version, "v1");
    assert!(sim.logged("(stable v1)"), "{:?}", sim.log);
}

/// A format-1 file (weir 0.1) in `phase` (and `pause`) resumes under today's engine: the same
/// weight, then the same plan.
fn format_1(text: &str, phase: &str, pause: Option<&str>) -> Rollout {
    let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
    value["rollout"]["phase"] = json!(phase);
    value["rollout"]["pause"] = json!(pause);
    if pause.is_some() {
        value["rollout"]["pausedAtMs"] = json!(1_015_000);
    }
    if phase == "Degraded" {
        value["rollout"]["weightBp"] = json!(0);
    }
    crate::engine::state::parse(value.to_string().as_bytes()).unwrap()
}

fn resume(model: Model, rollout: Rollout, now_ms: u64) -> Sim {
    let mut sim = Sim::new(model);
    sim.rollout = rollout;
    sim.now_ms = now_ms;
    let before = sim.rollout.policy();
    let effects = sim.reconcile_effects(sim.model.clone());
    assert!(!effects.policy_changed, "a restart serves what was served");
    assert_eq!(sim.rollout.policy(), before);
    sim
}

#[test]
fn format_1_steps_files_resume_in_every_phase() {
    const V1: &str = include_str!("../state/format1-steps.json");
    // At the analysis step: it finishes (3 measurements 5 s apart), then 50% and pause.
    let mut sim = resume(model(STEPS), format_1(V1, "Progressing", None), 1_015_000);
    assert_eq!(sim.weight(), 10.0);
    sim.run_for(Duration::from_secs(15));
    assert_eq!(sim.weight(), 50.0, "{:?}", sim.log);
    assert_eq!(sim.rollout.pause, Some(PauseReason::Step));
    // Held by an operator: still held, resume goes on.
    let mut sim = resume(
        model(STEPS),
        format_1(V1, "Paused", Some("operator")),
        1_020_000,
    );
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.rollout.phase, Phase::Paused);
    assert_eq!(sim.weight(), 10.0);
    sim.command(Command::Resume).unwrap();
    sim.run_for(Duration::from_secs(15));
    assert_eq!(sim.weight(), 50.0, "{:?}", sim.log);
    // Aborted: stays at stable; retry starts over.
    let mut sim = resume(model(STEPS), format_1(V1, "Degraded", None), 1_020_000);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.weight(), 0.0);
    sim.command(Command::Retry).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.weight(), 10.0);
}

#[test]
fn format_1_progression_files_resume_in_every_phase() {
    const V1: &str = include_str!("../state/format1-progression.json");
    let mut sim = resume(model(FLAGGER), format_1(V1, "Progressing", None), 1_030_000);
    assert_eq!(sim.weight(), 10.0);
    assert_eq!(sim.rollout.strategy.failed_checks(), 1);
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.weight(), 20.0, "the check due at 1 060 000 ran");
    let mut sim = resume(
        model(FLAGGER),
        format_1(V1, "Paused", Some("operator")),
        1_030_000,
    );
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.weight(), 10.0, "held");
    sim.command(Command::Resume).unwrap();
    // The check due during the hold runs at once, over the window that includes it.
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.weight(), 20.0);
    let mut sim = resume(model(FLAGGER), format_1(V1, "Degraded", None), 1_030_000);
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.weight(), 0.0);
}

#[test]
fn the_event_that_ends_a_rollout_names_the_routes_it_removes() {
    let mut sim = Sim::new(routes_plan());
    sim.run_for(Duration::from_millis(100));
    sim.command(Command::Abort).unwrap();
    assert!(
        sim.logged("Rolling back checkout: aborted by operator (header route beta, mirror route shadow removed)"),
        "{:?}",
        sim.log
    );
    let mut sim = Sim::new(ab_test(beta(), None));
    sim.command(Command::Promote { full: true }).unwrap();
    assert!(
        sim.logged("Promotion completed: search 2024.2 is stable (header route ab-test removed)"),
        "{:?}",
        sim.log
    );
}

#[test]
fn ab_test_retry_puts_the_routes_back_and_counts_from_zero() {
    let mut sim = Sim::new(ab_test(beta(), None));
    sim.run_for(Duration::from_secs(31));
    assert_eq!(sim.rollout.step_index(), 1);
    sim.command(Command::Abort).unwrap();
    assert!(sim.rollout.policy().header_routes.is_empty());
    sim.command(Command::Retry).unwrap();
    assert_eq!(sim.rollout.step_index(), 0);
    assert_eq!(sim.rollout.policy().header_routes[0].name, AB_HEADER_ROUTE);
    assert_eq!(sim.weight(), 0.0);
    sim.run_for(Duration::from_secs(91));
    assert!(sim.rollout.promoted, "{:?}", sim.log);
    assert!(sim.rollout.policy().header_routes.is_empty());
}

#[test]
fn the_longest_accepted_durations_never_overflow() {
    // Durations are accepted up to what fits in u64 milliseconds; added to a time they saturate.
    let longest = Duration::from_millis(u64::MAX);
    let mut plan = with_steps(vec![
        Step::SetWeight(Weight::from_percent(10.0).unwrap()),
        Step::Pause(Some(longest)),
    ]);
    plan.services[0]
        .strategy
        .as_mut()
        .unwrap()
        .progress_deadline = longest;
    let mut sim = Sim::new(plan);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.weight(), 10.0);
    assert_eq!(sim.rollout.phase, Phase::Progressing);
    let mut model = model(FLAGGER);
    if let StrategyKind::Progression(p) = &mut model.services[0].strategy.as_mut().unwrap().kind {
        p.interval = longest;
    }
    let mut sim = Sim::new(model);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.weight(), 10.0);
}

#[test]
fn promoting_past_an_analysis_step_terminates_its_run() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_secs(11));
    assert_eq!(sim.rollout.step_index(), 2, "analysis step");
    sim.command(Command::Promote { full: false }).unwrap();
    let skipped = sim
        .rollout
        .finished_runs
        .iter()
        .find(|r| matches!(r.kind, run::RunKind::Inline { step: 2 }))
        .expect("the skipped run is kept");
    assert_eq!(skipped.phase, RunPhase::Terminated);
}

#[test]
fn a_format_1_unreadable_pause_keeps_waiting_whatever_the_strategy_guess() {
    // weir 0.1 saved a progression waiting after an unreadable file with no checks scheduled,
    // which reads as Argo steps; the config's progression must not start by itself.
    const V1: &str = include_str!("../state/format1-progression.json");
    let mut value: serde_json::Value = serde_json::from_str(V1).unwrap();
    value["rollout"]["phase"] = json!("Paused");
    value["rollout"]["pause"] = json!("stateUnreadable");
    value["rollout"]["weightBp"] = json!(0);
    value["rollout"]["stepIndex"] = json!(0);
    value["rollout"]["progress"]["nextCheckMs"] = json!(0);
    value["rollout"]["progress"]["failedChecks"] = json!(0);
    let rollout = crate::engine::state::parse(value.to_string().as_bytes()).unwrap();
    assert!(matches!(rollout.strategy, StrategyState::Steps(_)));
    let mut sim = resume(model(FLAGGER), rollout, 1_030_000);
    assert!(matches!(
        sim.rollout.strategy,
        StrategyState::Progression(_)
    ));
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.weight(), 0.0, "still waiting for an operator");
    assert_eq!(sim.rollout.pause, Some(PauseReason::StateUnreadable));
    sim.command(Command::Resume).unwrap();
    assert_eq!(sim.weight(), 10.0, "the operator restarts it");
}

#[test]
fn an_operator_pause_survives_a_strategy_change() {
    let mut sim = Sim::new(model(STEPS));
    sim.run_for(Duration::from_millis(100));
    sim.command(Command::Pause).unwrap();
    let mut ab = ab_test(beta(), None);
    ab.services[0].name = "checkout".into();
    ab.services[0].stable = sim.model.services[0].stable.clone();
    ab.services[0].canary = sim.model.services[0].canary.clone();
    sim.reconfigure(ab);
    assert_eq!(sim.rollout.pause, Some(PauseReason::Operator));
    assert_eq!(sim.weight(), 0.0);
}

#[test]
fn an_unreadable_state_file_routes_nothing_to_the_canary_until_an_operator_decides() {
    for model in [ab_test(beta(), Some(50.0)), model(FLAGGER), model(STEPS)] {
        let mut sim = Sim::new(model.clone());
        sim.rollout = Rollout::unreadable(&model.services[0], "bad json", sim.now_ms);
        sim.drain();
        sim.log.clear();
        sim.run_for(Duration::from_secs(2));
        sim.reconfigure(model.clone());
        sim.run_for(Duration::from_secs(2));
        assert_eq!(
            sim.rollout.policy(),
            Policy::from(Weight::ZERO),
            "{}",
            model.services[0].name
        );
        assert!(sim.log.is_empty(), "nothing decided: {:?}", sim.log);
        sim.command(Command::Resume).unwrap();
        sim.run_for(Duration::from_millis(100));
        assert_ne!(sim.rollout.policy(), Policy::from(Weight::ZERO));
    }
}

#[test]
fn abort_after_a_promotion_points_to_undo() {
    let mut sim = Sim::new(model(STEPS));
    sim.command(Command::Promote { full: true }).unwrap();
    let error = sim.command(Command::Abort).unwrap_err();
    assert!(
        error.contains("v2 is already promoted, nothing to abort; run undo to return to v1"),
        "{error}"
    );
    for command in [
        Command::Promote { full: false },
        Command::Pause,
        Command::Resume,
        Command::Retry,
    ] {
        let error = sim.command(command).unwrap_err();
        assert!(error.starts_with("checkout"), "{command:?}: {error}");
    }
    assert_eq!(sim.weight(), 100.0);
}

#[test]
fn a_promoted_canary_stays_stable_when_the_configs_stable_arm_changes() {
    let mut sim = Sim::new(model(STEPS));
    sim.command(Command::Promote { full: true }).unwrap();
    sim.reconfigure(model(&STEPS.replace("version: v1", "version: v0")));
    assert_eq!(sim.weight(), 100.0, "v2's arm still serves everything");
    assert_eq!(sim.rollout.stable_version, "v2");
    assert!(
        sim.rollout.message.contains("still names v0"),
        "{}",
        sim.rollout.message
    );
    sim.command(Command::Undo).unwrap();
    assert_eq!(sim.rollout.stable_version, "v0");
    assert_eq!(sim.weight(), 0.0);
}

#[test]
fn conditions_take_the_templates_arguments() {
    // `successCondition: result >= {{args.threshold}}`, as Argo allows: the threshold comes from
    // the step's arguments, so one template serves stricter and looser services.
    let text = |threshold: &str| {
        STEPS
            .replace(
                "          - analysis: { templates: [{ templateName: success-rate }] }",
                &format!(
                    "          - analysis: {{ templates: [{{ templateName: success-rate }}], args: [{{ name: threshold, value: \"{threshold}\" }}] }}"
                ),
            )
            .replace(
                "  - name: success-rate\n    metrics:",
                "  - name: success-rate\n    args: [{ name: threshold }]\n    metrics:",
            )
            .replace(
                "        successCondition: result >= 0.99\n        provider: { builtin: { metric: success-rate",
                "        successCondition: result >= {{args.threshold}}\n        provider: { builtin: { metric: success-rate",
            )
    };
    for (threshold, passes) in [("0.9", true), ("0.99", false)] {
        let mut sim = Sim::new(model(&text(threshold)));
        sim.world.success_rate = Some(0.95);
        sim.run_for(Duration::from_secs(40));
        if passes {
            assert_eq!(sim.weight(), 50.0, "0.95 >= {threshold}: {:?}", sim.log);
        } else {
            assert_eq!(sim.rollout.phase, Phase::Degraded, "{:?}", sim.log);
            assert!(
                sim.rollout.message.contains("0.95 < 0.99"),
                "{}",
                sim.rollout.message
            );
        }
    }
}
