//! The figures of `weir-bench rollback`: per repetition and per rollout, their summary against the
//! targets (first 5xx → canary weight 0 under 2 s; no healthy canary rolled back), the printed
//! tables and the JSON document.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};
use weir_control::demo::traffic::TrafficSnapshot;
use weir_control::engine::rollout::Phase;

use crate::environment::Machine;
use crate::report::{median, table};
use crate::rollout::{
    BAD_ERROR_RATE, BASELINE_ERROR_RATE, CANARY_PERCENT, DETECTION_PLAN, DETECTION_TARGET,
    HEALTHY_PLAN, INTERVAL, WINDOW,
};

/// How the run was set up.
#[derive(Clone, Debug)]
pub struct Settings {
    pub rate: u32,
    pub connections: u32,
    pub repeats: u32,
    pub rollouts: u32,
    /// The `analysisTemplates` block of the config.
    pub template: String,
}

/// One scenario's results.
#[derive(Clone, Debug)]
pub struct Scenario<T> {
    pub results: Vec<T>,
    /// What the traffic generator saw over the whole scenario.
    pub traffic: TrafficSnapshot,
    /// From the traffic's start to the last result.
    pub took: Duration,
}

/// One repetition of the detection scenario.
#[derive(Clone, Debug)]
pub struct Detection {
    /// The canary version.
    pub version: String,
    /// The phase once the canary weight was 0 (Degraded).
    pub phase: Phase,
    /// The canary's share of the answers during the warmup, in %.
    pub canary_share: f64,
    /// When the errors started, after the measurement before.
    pub injected_after: Duration,
    /// From the errors' start to the first 5xx a client saw.
    pub first_error_after: Duration,
    /// From the first 5xx a client saw to the failing measurement (driver clock), in ms.
    pub to_measurement_ms: Option<i64>,
    /// From the first 5xx a client saw to canary weight 0 in the driver's status: the figure.
    pub total: Duration,
    /// 5xx answers from the canary that clients saw.
    pub canary_errors: u64,
    /// The failing measurement (`0.0123 >= 0.01 over 10s (1034 requests)`).
    pub measured: String,
    /// Measurements the run took.
    pub measurements: u32,
    /// The `Rollback` event's message.
    pub rollback_event: String,
}

/// How a healthy rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Promoted: the canary serves 100% as stable.
    Promoted,
    /// Rolled back: a false positive.
    RolledBack,
    /// Neither within the deadline, or paused on an inconclusive analysis.
    Stuck,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolled back",
            Outcome::Stuck => "neither promoted nor rolled back",
        })
    }
}

/// One rollout of the false-positive scenario.
#[derive(Clone, Debug)]
pub struct HealthyRollout {
    pub version: String,
    pub outcome: Outcome,
    /// From the config rewrite to the end.
    pub took: Duration,
    /// Measurements taken, and how many were inconclusive.
    pub measurements: u32,
    pub inconclusive: u32,
    /// The measured error rates (the run's latest measurements).
    pub values: Vec<f64>,
    /// The status message at the end.
    pub message: String,
}

/// Min, median, p90 (nearest rank) and max.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    min: f64,
    median: f64,
    p90: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = (sorted.len() * 9).div_ceil(10).max(1);
        Some(Spread {
            min: *sorted.first()?,
            median: median(sorted.clone())?,
            p90: *sorted.get(rank - 1)?,
            max: *sorted.last()?,
        })
    }

    fn to_json(self) -> Value {
        json!({ "min": self.min, "median": self.median, "p90": self.p90, "max": self.max })
    }
}

/// Everything a run produced.
pub struct Report<'a> {
    pub machine: &'a Machine,
    pub revision: &'a str,
    pub settings: &'a Settings,
    pub detection: &'a Option<Scenario<Detection>>,
    pub healthy: &'a Option<Scenario<HealthyRollout>>,
    pub took: Duration,
}

impl Report<'_> {
    /// What is measured and where, printed before the run.
    pub fn header(machine: &Machine, revision: &str, settings: &Settings) -> String {
        let mut out = String::from("weir rollout benchmark (weir-bench rollback)\n\n");
        let rows = vec![
            vec!["date".to_string(), machine.date.clone()],
            vec![
                "cpus".to_string(),
                format!("{} × {}", machine.cpus, machine.cpu_model),
            ],
            vec!["kernel".to_string(), machine.kernel.clone()],
            vec![
                "weir".to_string(),
                format!("{revision} (in-process: control loop on its own thread, 1 data-plane worker)"),
            ],
            vec![
                "traffic".to_string(),
                format!(
                    "{} requests/s (GET /) over {} keep-alive connections, paced",
                    settings.rate, settings.connections
                ),
            ],
            vec![
                "analysis".to_string(),
                format!(
                    "background from the first step, builtin error-rate of the canary every {}s over {}s:",
                    INTERVAL.as_secs(),
                    WINDOW.as_secs()
                ),
            ],
        ];
        out.push_str(&table(&[], "ll", &rows));
        for line in settings.template.lines() {
            let _ = writeln!(out, "      {line}");
        }
        out.push('\n');
        out
    }

    /// The results.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(detection) = self.detection {
            out.push_str(&render_detection(detection));
        }
        if let Some(healthy) = self.healthy {
            out.push_str(&render_healthy(healthy));
        }
        out.push_str("\nSummary\n");
        let mut rows = Vec::new();
        if let Some(detection) = self.detection {
            let (result, pass) = match detection_spread(detection) {
                Some(s) => (
                    format!(
                        "median {:.2}s, p90 {:.2}s, max {:.2}s",
                        s.median, s.p90, s.max
                    ),
                    detection_passes(s),
                ),
                None => ("no figure".to_string(), false),
            };
            rows.push(vec![
                "first 5xx → canary weight 0".to_string(),
                result,
                format!("< {} s", DETECTION_TARGET.as_secs()),
                pass_fail(pass),
            ]);
        }
        if let Some(healthy) = self.healthy {
            let c = Counts::of(&healthy.results);
            rows.push(vec![
                "healthy rollouts rolled back".to_string(),
                format!(
                    "{} of {} ({} promoted, {} neither)",
                    c.rolled_back,
                    healthy.results.len(),
                    c.promoted,
                    c.stuck
                ),
                "0".to_string(),
                pass_fail(c.passes()),
            ]);
        }
        out.push_str(&table(&["figure", "result", "target", ""], "llll", &rows));
        let _ = writeln!(out, "\nThe whole run took {:.0}s.", self.took.as_secs_f64());
        out
    }

    pub fn to_json(&self) -> Value {
        let detection = self.detection.as_ref().map(|d| {
            let spread = detection_spread(d);
            json!({
                "plan": DETECTION_PLAN,
                "canary_weight_percent": CANARY_PERCENT,
                "error_rate": BAD_ERROR_RATE,
                "target_secs": DETECTION_TARGET.as_secs_f64(),
                "first_5xx_to_weight_0_secs": spread.map(Spread::to_json),
                "pass": spread.is_some_and(detection_passes),
                "took_secs": d.took.as_secs_f64(),
                "traffic": traffic_json(&d.traffic, d.took),
                "repetitions": d.results.iter().map(|r| json!({
                    "version": r.version,
                    "phase": format!("{:?}", r.phase),
                    "canary_share_percent": r.canary_share,
                    "errors_started_after_measurement_secs": r.injected_after.as_secs_f64(),
                    "first_5xx_after_errors_started_secs": r.first_error_after.as_secs_f64(),
                    "first_5xx_to_failing_measurement_secs": r.to_measurement_ms.map(|ms| ms as f64 / 1000.0),
                    "first_5xx_to_weight_0_secs": r.total.as_secs_f64(),
                    "canary_5xx_served": r.canary_errors,
                    "failing_measurement": r.measured,
                    "measurements": r.measurements,
                    "rollback_event": r.rollback_event,
                })).collect::<Vec<_>>(),
            })
        });
        let healthy = self.healthy.as_ref().map(|h| {
            let c = Counts::of(&h.results);
            json!({
                "plan": HEALTHY_PLAN,
                "baseline_error_rate": BASELINE_ERROR_RATE,
                "promoted": c.promoted,
                "rolled_back": c.rolled_back,
                "neither": c.stuck,
                "pass": c.passes(),
                "took_secs": h.took.as_secs_f64(),
                "traffic": traffic_json(&h.traffic, h.took),
                "rollouts": h.results.iter().map(|r| json!({
                    "version": r.version,
                    "outcome": r.outcome.to_string(),
                    "took_secs": r.took.as_secs_f64(),
                    "measurements": r.measurements,
                    "inconclusive": r.inconclusive,
                    "error_rates": r.values,
                    "message": r.message,
                })).collect::<Vec<_>>(),
            })
        });
        json!({
            "benchmark": "rollback",
            "environment": {
                "date": self.machine.date,
                "cpus": self.machine.cpus,
                "cpu_model": self.machine.cpu_model,
                "kernel": self.machine.kernel,
                "weir": self.revision,
            },
            "settings": {
                "rate_per_sec": self.settings.rate,
                "connections": self.settings.connections,
                "repeats": self.settings.repeats,
                "rollouts": self.settings.rollouts,
                "analysis_interval_secs": INTERVAL.as_secs_f64(),
                "analysis_window_secs": WINDOW.as_secs_f64(),
                "analysis_template": self.settings.template,
            },
            "detection": detection,
            "healthy": healthy,
            "took_secs": self.took.as_secs_f64(),
        })
    }
}

fn render_detection(d: &Scenario<Detection>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Detection: first 5xx from the canary → canary weight 0 ({} repetitions)",
        d.results.len()
    );
    let _ = writeln!(
        out,
        "  each a new rollout: {DETECTION_PLAN}; after a warmup the canary answers {:.0}% 5xx,\n  starting at an evenly spread point of the measurement interval",
        BAD_ERROR_RATE * 100.0
    );
    let rows: Vec<Vec<String>> = d
        .results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                (i + 1).to_string(),
                r.version.clone(),
                format!("{:.1}%", r.canary_share),
                secs(r.injected_after),
                r.to_measurement_ms.map_or_else(
                    || "-".to_string(),
                    |ms| format!("{:.3}s", ms as f64 / 1000.0),
                ),
                secs(r.total),
                r.canary_errors.to_string(),
                r.measured.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "rep",
            "canary",
            "share",
            "errors start",
            "→ failing measurement",
            "→ weight 0",
            "5xx served",
            "failing measurement",
        ],
        "rlrrrrrl",
        &rows,
    ));
    let _ = writeln!(
        out,
        "  (errors start: after the measurement before; → failing measurement and → weight 0: from the\n  first 5xx a client saw; 5xx served: canary 5xx answers clients saw)"
    );
    match detection_spread(d) {
        Some(s) => {
            let _ = writeln!(
                out,
                "\n  first 5xx → canary weight 0: min {:.3}s  median {:.3}s  p90 {:.3}s  max {:.3}s\n  (analysis interval {}s, window {}s); target < {} s for every repetition: {}",
                s.min,
                s.median,
                s.p90,
                s.max,
                INTERVAL.as_secs(),
                WINDOW.as_secs(),
                DETECTION_TARGET.as_secs(),
                pass_fail(detection_passes(s))
            );
        }
        None => out.push_str("\n  no repetition finished\n"),
    }
    if let Some(first) = d.results.first() {
        let _ = writeln!(out, "  rollback event (rep 1): {}", first.rollback_event);
    }
    out.push_str(&traffic_line(&d.traffic, d.took));
    out
}

fn render_healthy(h: &Scenario<HealthyRollout>) -> String {
    let mut out = String::new();
    let c = Counts::of(&h.results);
    let _ = writeln!(
        out,
        "\nFalse positives: {} healthy rollouts in a row ({HEALTHY_PLAN})",
        h.results.len()
    );
    let _ = writeln!(
        out,
        "  stable and canary both answer {:.1}% 5xx (every {:.0}th request); each rollout promotes the\n  previous canary to stable in the config",
        BASELINE_ERROR_RATE * 100.0,
        1.0 / BASELINE_ERROR_RATE
    );
    let per_rollout = median(h.results.iter().map(|r| r.took.as_secs_f64()).collect());
    let _ = writeln!(
        out,
        "  promoted {}, rolled back {}, neither {}; {:.1}s in all{}",
        c.promoted,
        c.rolled_back,
        c.stuck,
        h.took.as_secs_f64(),
        per_rollout.map_or_else(String::new, |m| format!(" (median {m:.2}s per rollout)"))
    );
    let measurements: u32 = h.results.iter().map(|r| r.measurements).sum();
    let inconclusive: u32 = h.results.iter().map(|r| r.inconclusive).sum();
    let values: Vec<f64> = h.results.iter().flat_map(|r| r.values.clone()).collect();
    let nonzero = values.iter().filter(|v| **v > 0.0).count();
    let highest = values.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "  analysis: {measurements} measurements, {inconclusive} inconclusive (a rollout's first measurement comes\n  before its canary has traffic); {nonzero} of the {} values kept had a 5xx in the window, the highest\n  {highest:.4} (successCondition result < 0.01)",
        values.len()
    );
    let _ = writeln!(
        out,
        "  target 0 rollbacks in {}: {}",
        h.results.len(),
        pass_fail(c.passes())
    );
    for r in h.results.iter().filter(|r| r.outcome != Outcome::Promoted) {
        let _ = writeln!(out, "  {} {}: {}", r.version, r.outcome, r.message);
    }
    out.push_str(&traffic_line(&h.traffic, h.took));
    out
}

/// Healthy rollouts by outcome.
struct Counts {
    promoted: usize,
    rolled_back: usize,
    stuck: usize,
}

impl Counts {
    fn of(results: &[HealthyRollout]) -> Counts {
        let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
        Counts {
            promoted: count(Outcome::Promoted),
            rolled_back: count(Outcome::RolledBack),
            stuck: count(Outcome::Stuck),
        }
    }

    fn passes(&self) -> bool {
        self.rolled_back == 0 && self.stuck == 0 && self.promoted > 0
    }
}

fn detection_spread(d: &Scenario<Detection>) -> Option<Spread> {
    let totals: Vec<f64> = d.results.iter().map(|r| r.total.as_secs_f64()).collect();
    Spread::of(&totals)
}

fn detection_passes(s: Spread) -> bool {
    s.max < DETECTION_TARGET.as_secs_f64()
}

fn pass_fail(pass: bool) -> String {
    if pass { "PASS" } else { "FAIL" }.to_string()
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn traffic_line(t: &TrafficSnapshot, took: Duration) -> String {
    let secs = took.as_secs_f64().max(f64::EPSILON);
    format!(
        "  traffic: {} answers in {:.1}s ({:.0}/s), {} 5xx, {} requests without an answer\n",
        t.responses(),
        took.as_secs_f64(),
        t.responses() as f64 / secs,
        t.server_errors(),
        t.failures
    )
}

fn traffic_json(t: &TrafficSnapshot, took: Duration) -> Value {
    json!({
        "sent": t.sent,
        "answers": t.responses(),
        "server_errors": t.server_errors(),
        "without_answer": t.failures,
        "answers_per_sec": t.responses() as f64 / took.as_secs_f64().max(f64::EPSILON),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        assert_eq!(Spread::of(&[]), None);
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(
            Spread::of(&values),
            Some(Spread {
                min: 1.0,
                median: 5.5,
                p90: 9.0,
                max: 10.0
            })
        );
        let one = Spread::of(&[0.7]).expect("one value");
        assert_eq!((one.median, one.p90), (0.7, 0.7));
    }

    #[test]
    fn counts_outcomes() {
        let rollout = |outcome| HealthyRollout {
            version: "v2".into(),
            outcome,
            took: Duration::from_secs(4),
            measurements: 5,
            inconclusive: 1,
            values: vec![0.0, 0.002],
            message: String::new(),
        };
        let all = vec![rollout(Outcome::Promoted), rollout(Outcome::Promoted)];
        assert!(Counts::of(&all).passes());
        let one_bad = vec![rollout(Outcome::Promoted), rollout(Outcome::RolledBack)];
        assert!(!Counts::of(&one_bad).passes());
        assert!(!Counts::of(&[rollout(Outcome::Stuck)]).passes());
    }
}
