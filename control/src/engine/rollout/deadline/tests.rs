//! `progressDeadline` across the strategies: a timed wait of the plan never counts, waiting on
//! an operator never aborts, a step that stalls past its schedule does.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use weir_config::Model;

use super::super::{BuiltinQuery, Command, Ctx, Due, Phase, Rollout};
use crate::engine::analysis::{Measured, Outcome};

/// A steps plan whose analysis step measures with an external (web) provider, so a test decides
/// when (and whether) its measurements come back.
const STEPS: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: checkout
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      canary:
        progressDeadline: 5s
        steps:
          - setWeight: 10
          - pause: { duration: 30s }
          - analysis: { templates: [{ templateName: smoke }] }
          - setWeight: 50
          - pause: {}
          - setWeight: 100
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke
        interval: 5s
        count: 4
        consecutiveErrorLimit: 1000
        successCondition: result == 200
        provider: { web: { url: "http://127.0.0.1:9/healthz" } }
"#;

/// A Flagger progression judged by the builtin checks (answered by the test's world).
const FLAGGER: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: search
    stable: { version: v1, upstreams: ["127.0.0.1:9011"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9012"] }
    strategy:
      canary:
        progressDeadline: 30s
        analysis:
          interval: 10s
          threshold: 2
          stepWeight: 10
          maxWeight: 30
          metrics:
            - name: request-success-rate
              thresholdRange: { min: 99 }
"#;

const AB_TEST: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: search
    stable: { version: v1, upstreams: ["127.0.0.1:9011"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9012"] }
    strategy:
      canary:
        progressDeadline: 30s
        analysis:
          interval: 10s
          threshold: 2
          iterations: 3
          match:
            - headers: { x-beta: { exact: "yes" } }
          metrics:
            - name: request-success-rate
              thresholdRange: { min: 99 }
"#;

const BLUE_GREEN: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: orders
    match: { hosts: ["orders.example.com"] }
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      blueGreen:
        preview: { hosts: ["preview.orders.example.com"] }
        autoPromotionEnabled: true
        autoPromotionSeconds: 120
        postPromotionAnalysis: { templates: [{ templateName: smoke }] }
        progressDeadline: 5s
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke
        interval: 5s
        count: 4
        consecutiveErrorLimit: 1000
        successCondition: result == 200
        provider: { web: { url: "http://127.0.0.1:9/healthz" } }
"#;

fn value(value: serde_json::Value) -> Outcome {
    Outcome::Value(Measured {
        value,
        requests: Some(1000),
        window: Some(Duration::from_secs(30)),
        failed: None,
    })
}

struct Sim {
    model: Model,
    rollout: Rollout,
    now_ms: u64,
    /// What the builtin provider answers.
    builtin: Outcome,
    /// What external measurements answer; `None`: they never come back (a stuck provider).
    external: Option<Outcome>,
    log: Vec<String>,
}

impl Sim {
    fn new(yaml: &str) -> Sim {
        let model = weir_config::parse(yaml, Path::new("/")).expect("test config is valid");
        let mut rollout = Rollout::new(&model.services[0]);
        let now_ms = 1_000_000;
        let ctx = Ctx {
            service: &model.services[0],
            templates: &model.analysis_templates,
        };
        let effects = rollout.reconcile(ctx, now_ms);
        let log = effects.events.into_iter().map(|e| e.message).collect();
        Sim {
            model,
            rollout,
            now_ms,
            builtin: value(json!(1.0)),
            external: Some(value(json!(200))),
            log,
        }
    }

    /// Advances time in 100 ms ticks, as the driver does; external measurements are answered
    /// at once (or never).
    fn run_for(&mut self, duration: Duration) {
        let end = self.now_ms + duration.as_millis() as u64;
        while self.now_ms < end {
            self.now_ms += 100;
            let ctx = Ctx {
                service: &self.model.services[0],
                templates: &self.model.analysis_templates,
            };
            let builtin = self.builtin.clone();
            let effects = self
                .rollout
                .tick(ctx, self.now_ms, &mut |_: BuiltinQuery<'_>| builtin.clone());
            self.log
                .extend(effects.events.into_iter().map(|e| e.message));
            let due: Vec<Due> = effects.due;
            if let Some(outcome) = self.external.clone() {
                for due in due {
                    let effects =
                        self.rollout
                            .record(ctx, due.run_id, due.metric_idx, &outcome, self.now_ms);
                    self.log
                        .extend(effects.events.into_iter().map(|e| e.message));
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        let ctx = Ctx {
            service: &self.model.services[0],
            templates: &self.model.analysis_templates,
        };
        let effects = self
            .rollout
            .command(ctx, command, self.now_ms)
            .expect("command applies");
        self.log
            .extend(effects.events.into_iter().map(|e| e.message));
    }

    fn weight(&self) -> f64 {
        self.rollout.weight().percent()
    }

    fn step(&self) -> usize {
        self.rollout.step_index()
    }

    fn aborted_with(&self, needle: &str) -> bool {
        self.rollout.phase == Phase::Degraded && self.log.iter().any(|l| l.contains(needle))
    }

    /// Runs until the rollout aborts (at most `limit`): how long it took.
    fn until_aborted(&mut self, limit: Duration) -> Duration {
        let start = self.now_ms;
        while self.rollout.phase != Phase::Degraded {
            assert!(
                self.now_ms - start <= limit.as_millis() as u64,
                "never aborted: {:?}",
                self.log
            );
            self.run_for(Duration::from_millis(100));
        }
        Duration::from_millis(self.now_ms - start)
    }
}

#[test]
fn a_timed_pause_longer_than_the_deadline_does_not_count() {
    let mut sim = Sim::new(STEPS);
    sim.run_for(Duration::from_secs(29));
    assert_eq!(
        (sim.rollout.phase, sim.step(), sim.weight()),
        (Phase::Progressing, 1, 10.0)
    );
    sim.run_for(Duration::from_millis(1100));
    assert_eq!(sim.step(), 2, "the 30s pause ended: {:?}", sim.log);
    eprintln!("a 30s pause under a 5s progressDeadline: not aborted, step 3 reached after 30s");
}

#[test]
fn an_analysis_step_on_its_schedule_does_not_count() {
    // count 4, interval 5s: 15s of scheduled measurements, three times the deadline.
    let mut sim = Sim::new(STEPS);
    sim.run_for(Duration::from_millis(30_100));
    assert_eq!(sim.step(), 2);
    sim.run_for(Duration::from_millis(15_100));
    assert_eq!(sim.step(), 4, "analysis passed: {:?}", sim.log);
    assert_eq!(sim.rollout.phase, Phase::Paused);
    eprintln!("a 15s analysis step under a 5s progressDeadline: passed, not aborted");
}

#[test]
fn a_stuck_analysis_step_aborts_the_deadline_after_its_schedule() {
    let mut sim = Sim::new(STEPS);
    sim.external = Some(Outcome::Error("connection refused".into()));
    sim.run_for(Duration::from_millis(30_100));
    assert_eq!(sim.step(), 2);
    // Due 15s after it started, plus the 5s deadline.
    sim.run_for(Duration::from_millis(19_900));
    assert_eq!(sim.rollout.phase, Phase::Progressing, "{:?}", sim.log);
    let took = sim.until_aborted(Duration::from_secs(1));
    assert!(
        sim.aborted_with("step 3/6 (analysis) did not finish within progressDeadline 5s"),
        "{:?}",
        sim.log
    );
    assert_eq!(sim.weight(), 0.0);
    eprintln!(
        "analysis step erroring for 15s+5s: aborted {:?} after the deadline",
        took
    );
}

#[test]
fn a_provider_that_never_answers_aborts_the_step() {
    let mut sim = Sim::new(STEPS);
    sim.external = None;
    sim.run_for(Duration::from_millis(30_100));
    assert_eq!(sim.step(), 2);
    let took = sim.until_aborted(Duration::from_secs(30));
    assert!(
        took >= Duration::from_secs(20) && took <= Duration::from_millis(20_200),
        "{took:?}"
    );
    assert!(sim.aborted_with("progressDeadline 5s"), "{:?}", sim.log);
}

#[test]
fn waiting_on_an_operator_never_aborts() {
    // `pause: {}` for an hour.
    let mut sim = Sim::new(STEPS);
    sim.run_for(Duration::from_secs(46));
    assert_eq!(
        (sim.rollout.phase, sim.step()),
        (Phase::Paused, 4),
        "{:?}",
        sim.log
    );
    assert!(sim.rollout.waits_for_operator());
    sim.run_for(Duration::from_secs(3600));
    assert_eq!(sim.rollout.phase, Phase::Paused);
    sim.command(Command::Promote { full: false });
    sim.run_for(Duration::from_millis(200));
    assert!(sim.rollout.promoted, "{:?}", sim.log);

    // `weir pause` during a stuck analysis: an hour, then the clock resumes where it stopped.
    let mut sim = Sim::new(STEPS);
    sim.external = None;
    sim.run_for(Duration::from_secs(40));
    sim.command(Command::Pause);
    assert!(sim.rollout.waits_for_operator());
    sim.run_for(Duration::from_secs(3600));
    assert_eq!(sim.rollout.phase, Phase::Paused);
    sim.command(Command::Resume);
    // 10s of the 20s were spent before the pause.
    sim.run_for(Duration::from_millis(9_800));
    assert_eq!(sim.rollout.phase, Phase::Progressing, "{:?}", sim.log);
    sim.until_aborted(Duration::from_secs(1));

    // An inconclusive analysis for an hour.
    let text = STEPS.replace("consecutiveErrorLimit: 1000", "inconclusiveLimit: 0");
    let mut sim = Sim::new(&text);
    sim.external = Some(Outcome::NoData("empty vector".into()));
    sim.run_for(Duration::from_secs(31));
    assert_eq!(sim.rollout.phase, Phase::Paused, "{:?}", sim.log);
    assert!(sim.rollout.waits_for_operator());
    sim.run_for(Duration::from_secs(3600));
    assert_eq!(sim.rollout.phase, Phase::Paused, "{:?}", sim.log);
    eprintln!("pause: {{}}, weir pause and an inconclusive pause held 1h each under a 5s progressDeadline: none aborted");
}

#[test]
fn a_flagger_progression_that_keeps_halting_aborts() {
    let mut sim = Sim::new(FLAGGER);
    sim.builtin = Outcome::NoData("3 requests in 30s, fewer than 20".into());
    // The first check is due 10s after the weight was set; 30s later the rollout aborts.
    sim.run_for(Duration::from_millis(39_900));
    assert_eq!(
        (sim.rollout.phase, sim.weight()),
        (Phase::Progressing, 10.0),
        "{:?}",
        sim.log
    );
    sim.until_aborted(Duration::from_millis(200));
    assert!(
        sim.aborted_with("step 1/3 (canary weight 10) did not finish within progressDeadline 30s"),
        "{:?}",
        sim.log
    );
    eprintln!("Flagger progression halting on no data: aborted 10s+30s after its weight was set");
}

#[test]
fn a_flagger_interval_longer_than_the_deadline_still_promotes() {
    let text = FLAGGER.replace("interval: 10s", "interval: 1m");
    let mut sim = Sim::new(&text);
    sim.run_for(Duration::from_secs(181));
    assert!(sim.rollout.promoted, "{:?}", sim.log);
    // Each weight gets its own clock: two halting intervals after an advance still pass.
    let mut sim = Sim::new(FLAGGER);
    sim.run_for(Duration::from_millis(10_100));
    assert_eq!(sim.weight(), 20.0);
    sim.builtin = Outcome::NoData("no data".into());
    sim.run_for(Duration::from_secs(20));
    sim.builtin = value(json!(1.0));
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.weight(), 30.0, "{:?}", sim.log);
}

#[test]
fn an_operator_pause_stops_the_flagger_clock() {
    let mut sim = Sim::new(FLAGGER);
    sim.builtin = Outcome::NoData("no data".into());
    sim.run_for(Duration::from_secs(20));
    sim.command(Command::Pause);
    sim.run_for(Duration::from_secs(600));
    sim.command(Command::Resume);
    sim.run_for(Duration::from_millis(19_800));
    assert_eq!(sim.rollout.phase, Phase::Progressing, "{:?}", sim.log);
    sim.until_aborted(Duration::from_millis(400));
}

#[test]
fn an_ab_test_that_keeps_halting_aborts() {
    let mut sim = Sim::new(AB_TEST);
    sim.run_for(Duration::from_millis(10_100));
    assert_eq!(sim.step(), 1, "one iteration passed: {:?}", sim.log);
    sim.builtin = Outcome::NoData("no matching requests".into());
    // The next iteration is due 10s after the last one passed; 30s later the test aborts.
    sim.run_for(Duration::from_millis(39_700));
    assert_eq!(sim.rollout.phase, Phase::Progressing, "{:?}", sim.log);
    sim.until_aborted(Duration::from_millis(400));
    assert!(
        sim.aborted_with("A/B test iteration 2/3 did not finish within progressDeadline 30s"),
        "{:?}",
        sim.log
    );
    assert!(sim.rollout.policy().header_routes.is_empty());
    eprintln!("A/B test halting after 1 iteration: aborted 10s+30s after it passed");
}

#[test]
fn blue_green_waits_never_count_and_a_stuck_analysis_aborts() {
    // autoPromotionSeconds 120 under a 5s deadline, then post-promotion analysis on schedule.
    let mut sim = Sim::new(BLUE_GREEN);
    sim.run_for(Duration::from_secs(119));
    assert_eq!(
        (sim.rollout.phase, sim.weight()),
        (Phase::Progressing, 0.0),
        "{:?}",
        sim.log
    );
    sim.run_for(Duration::from_millis(1100));
    assert_eq!(sim.weight(), 100.0, "switched: {:?}", sim.log);
    sim.run_for(Duration::from_secs(16));
    assert!(sim.rollout.promoted, "{:?}", sim.log);

    let mut sim = Sim::new(BLUE_GREEN);
    sim.external = None;
    sim.run_for(Duration::from_millis(120_100));
    assert_eq!(sim.weight(), 100.0);
    sim.run_for(Duration::from_millis(19_800));
    assert_eq!(sim.rollout.phase, Phase::Progressing, "{:?}", sim.log);
    sim.until_aborted(Duration::from_millis(400));
    assert!(
        sim.aborted_with("post-promotion analysis did not finish within progressDeadline 5s"),
        "{:?}",
        sim.log
    );
    assert_eq!(sim.weight(), 0.0, "switched back");
    eprintln!("blue-green: 120s auto-promotion wait not counted; stuck post-promotion analysis switched back 15s+5s after it started");
}
