//! Analysis runs: the bookkeeping of measurements against a metric's limits, Argo Rollouts'
//! semantics. Pure: time comes in as milliseconds since the Unix epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_config::{AnalysisRef, AnalysisTemplate, Metric};

use crate::engine::analysis::Verdict;

/// Measurements kept per metric (older ones are counted, not stored).
const KEPT_MEASUREMENTS: usize = 30;

/// Where a run comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum RunKind {
    /// An `analysis` step; the rollout waits for its verdict.
    Inline {
        /// The step index.
        step: usize,
    },
    /// Strategy-level analysis running from `startingStep` to the end.
    Background,
    /// A Flagger-style check that names a template, measured once per interval.
    Check {
        /// The check's name.
        check: String,
    },
}

/// The state of a run or of one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunPhase {
    /// Still measuring.
    Running,
    /// Every metric completed within its limits.
    Successful,
    /// A metric exceeded `failureLimit`.
    Failed,
    /// A metric exceeded `inconclusiveLimit`.
    Inconclusive,
    /// A metric exceeded `consecutiveErrorLimit`.
    Error,
    /// Stopped before it decided, because the rollout ended (promoted, aborted, rolled back).
    Terminated,
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// When it was taken (ms since the Unix epoch).
    pub at_ms: u64,
    /// The measured value, if any.
    pub value: Option<serde_json::Value>,
    /// The verdict.
    pub verdict: Verdict,
    /// The explanation (`0.6917 < 0.99 over 30s (1184 requests)`, `prometheus unreachable: …`).
    pub message: String,
}

/// One metric of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricRun {
    /// The template the metric comes from.
    pub template: String,
    /// The metric's name.
    pub name: String,
    /// The latest measurements, oldest first.
    pub measurements: Vec<Measurement>,
    /// Measurements taken.
    pub count: u32,
    /// Successful measurements.
    pub successful: u32,
    /// Failed measurements.
    pub failed: u32,
    /// Inconclusive measurements.
    pub inconclusive: u32,
    /// Error measurements.
    pub errors: u32,
    /// Error measurements in a row.
    pub consecutive_errors: u32,
    /// When the next measurement is due (ms since the Unix epoch).
    pub next_at_ms: u64,
    /// The metric's state.
    pub phase: RunPhase,
    /// Measure and report, never decide.
    pub dry_run: bool,
    /// A measurement has been requested and not yet recorded (not persisted: re-requested on restart).
    #[serde(skip)]
    pub in_flight: bool,
}

/// One analysis run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    /// Unique within the rollout.
    pub id: u64,
    /// Where it comes from.
    pub kind: RunKind,
    /// Argument values.
    pub args: BTreeMap<String, String>,
    /// The metrics.
    pub metrics: Vec<MetricRun>,
    /// The run's state.
    pub phase: RunPhase,
    /// Why it ended, when it did.
    pub message: String,
    /// When it started.
    pub started_at_ms: u64,
}

// === impl AnalysisRun ===

impl AnalysisRun {
    /// A new run of `analysis`'s templates.
    pub fn new(
        id: u64,
        kind: RunKind,
        analysis: &AnalysisRef,
        templates: &[AnalysisTemplate],
        now_ms: u64,
    ) -> AnalysisRun {
        let mut metrics = Vec::new();
        let mut args = BTreeMap::new();
        for name in &analysis.templates {
            let Some(template) = templates.iter().find(|t| &t.name == name) else {
                continue;
            };
            for (arg, default) in &template.args {
                if let Some(value) = analysis.args.get(arg).or(default.as_ref()) {
                    args.insert(arg.clone(), value.clone());
                }
            }
            for metric in &template.metrics {
                metrics.push(MetricRun {
                    template: template.name.clone(),
                    name: metric.name.clone(),
                    measurements: Vec::new(),
                    count: 0,
                    successful: 0,
                    failed: 0,
                    inconclusive: 0,
                    errors: 0,
                    consecutive_errors: 0,
                    next_at_ms: now_ms.saturating_add(first_delay(&kind, metric)),
                    phase: RunPhase::Running,
                    dry_run: metric.dry_run,
                    in_flight: false,
                });
            }
        }
        let mut run = AnalysisRun {
            id,
            kind,
            args,
            metrics,
            phase: RunPhase::Running,
            message: String::new(),
            started_at_ms: now_ms,
        };
        run.update_phase();
        run
    }

    /// The metrics due for a measurement now, by index, marked in flight.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<usize> {
        if self.phase != RunPhase::Running {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (idx, metric) in self.metrics.iter_mut().enumerate() {
            if metric.phase == RunPhase::Running && !metric.in_flight && metric.next_at_ms <= now_ms
            {
                metric.in_flight = true;
                due.push(idx);
            }
        }
        due
    }

    /// Records a measurement of metric `idx` and updates the run's phase.
    pub fn record(&mut self, idx: usize, spec: &Metric, measurement: Measurement) {
        // Argo: an inline analysis without `count` measures once; background analysis runs until
        // the rollout ends; a Flagger check is one measurement per interval.
        let limit = match self.kind {
            RunKind::Check { .. } => Some(1),
            RunKind::Inline { .. } => Some(spec.count.unwrap_or(1)),
            RunKind::Background => spec.count,
        };
        let Some(metric) = self.metrics.get_mut(idx) else {
            return;
        };
        metric.in_flight = false;
        if metric.phase != RunPhase::Running {
            return;
        }
        metric.count += 1;
        match measurement.verdict {
            Verdict::Successful => {
                metric.successful += 1;
                metric.consecutive_errors = 0;
            }
            Verdict::Failed => {
                metric.failed += 1;
                metric.consecutive_errors = 0;
            }
            Verdict::Inconclusive => {
                metric.inconclusive += 1;
                metric.consecutive_errors = 0;
            }
            Verdict::Error => {
                metric.errors += 1;
                metric.consecutive_errors += 1;
            }
        }
        // Keep to the schedule (a measurement taken a tick late does not push the next one back),
        // unless the schedule is already behind (a restart, a long pause).
        let interval = millis(spec.interval);
        let on_schedule = metric.next_at_ms.saturating_add(interval);
        metric.next_at_ms = if on_schedule > measurement.at_ms {
            on_schedule
        } else {
            measurement.at_ms.saturating_add(interval)
        };
        metric.measurements.push(measurement);
        if metric.measurements.len() > KEPT_MEASUREMENTS {
            metric.measurements.remove(0);
        }
        metric.phase = if metric.failed > spec.failure_limit {
            RunPhase::Failed
        } else if metric.consecutive_errors > spec.consecutive_error_limit {
            RunPhase::Error
        } else if metric.inconclusive > spec.inconclusive_limit {
            RunPhase::Inconclusive
        } else if limit.is_some_and(|limit| metric.count - metric.errors >= limit) {
            // Argo: error measurements do not count toward `count`.
            RunPhase::Successful
        } else {
            RunPhase::Running
        };
        self.update_phase();
    }

    /// Stops a run that has not decided yet; finished runs keep their verdict.
    pub fn terminate(&mut self, reason: &str) {
        if self.phase != RunPhase::Running {
            return;
        }
        for metric in &mut self.metrics {
            if metric.phase == RunPhase::Running {
                metric.phase = RunPhase::Terminated;
                metric.in_flight = false;
            }
        }
        self.phase = RunPhase::Terminated;
        self.message = reason.to_string();
    }

    /// Gives a metric back for re-measurement (its measurement was lost, e.g. across a restart).
    pub fn release(&mut self, idx: usize) {
        if let Some(metric) = self.metrics.get_mut(idx) {
            metric.in_flight = false;
        }
    }

    fn update_phase(&mut self) {
        let deciding = self.metrics.iter().filter(|m| !m.dry_run);
        let mut phase = RunPhase::Successful;
        for metric in deciding {
            phase = match (phase, metric.phase) {
                (_, RunPhase::Failed) | (RunPhase::Failed, _) => RunPhase::Failed,
                (_, RunPhase::Error) | (RunPhase::Error, _) => RunPhase::Error,
                (_, RunPhase::Inconclusive) | (RunPhase::Inconclusive, _) => RunPhase::Inconclusive,
                (_, RunPhase::Running) | (RunPhase::Running, _) => RunPhase::Running,
                (RunPhase::Successful, RunPhase::Successful) => RunPhase::Successful,
                (_, RunPhase::Terminated) | (RunPhase::Terminated, _) => RunPhase::Terminated,
            };
        }
        // Dry-run metrics still run to their count, but a run made only of them succeeds at once
        // unless they are still measuring.
        if phase == RunPhase::Successful
            && self
                .metrics
                .iter()
                .any(|m| m.dry_run && m.phase == RunPhase::Running)
            && self.metrics.iter().all(|m| m.dry_run)
        {
            phase = RunPhase::Running;
        }
        self.phase = phase;
    }

    /// The metric that decided a finished run, with its latest measurement.
    pub fn deciding_metric(&self) -> Option<&MetricRun> {
        self.metrics
            .iter()
            .filter(|m| !m.dry_run)
            .find(|m| m.phase == self.phase)
    }
}

/// When a metric is first measured. Background analysis starts the moment the canary gets traffic,
/// so without an `initialDelay` its first measurement waits one interval: measured at once, its
/// window would hold no canary request and the rollout would pause as inconclusive for nothing.
pub(super) fn first_delay(kind: &RunKind, metric: &Metric) -> u64 {
    match kind {
        RunKind::Background if metric.initial_delay.is_zero() => millis(metric.interval),
        _ => millis(metric.initial_delay),
    }
}

/// A duration in whole milliseconds.
pub fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_config::{BuiltinMetric, BuiltinProvider, Provider};

    use super::*;

    fn metric(failure_limit: u32, count: Option<u32>) -> Metric {
        Metric {
            name: "m".into(),
            interval: Duration::from_secs(5),
            count,
            initial_delay: Duration::ZERO,
            success_condition: Some("result >= 0.99".into()),
            failure_condition: None,
            failure_limit,
            inconclusive_limit: 0,
            consecutive_error_limit: 2,
            dry_run: false,
            provider: Provider::Builtin(BuiltinProvider {
                metric: BuiltinMetric::SuccessRate,
                window: Duration::from_secs(30),
                arm: weir_config::Arm::Canary,
                min_requests: 20,
                traffic: weir_config::Traffic::Primary,
            }),
        }
    }

    fn run_of(metric: &Metric, kind: RunKind) -> AnalysisRun {
        let template = AnalysisTemplate {
            name: "t".into(),
            args: BTreeMap::new(),
            metrics: vec![metric.clone()],
        };
        let analysis = AnalysisRef {
            templates: vec!["t".into()],
            args: BTreeMap::new(),
        };
        AnalysisRun::new(1, kind, &analysis, &[template], 0)
    }

    fn measure(run: &mut AnalysisRun, spec: &Metric, at_ms: u64, verdict: Verdict) {
        let due = run.take_due(at_ms);
        assert_eq!(due, vec![0], "a measurement is due at {at_ms}");
        run.record(
            0,
            spec,
            Measurement {
                at_ms,
                value: None,
                verdict,
                message: String::new(),
            },
        );
    }

    #[test]
    fn background_runs_first_measure_one_interval_in() {
        let spec = metric(0, None);
        let mut run = run_of(&spec, RunKind::Background);
        assert!(run.take_due(4_999).is_empty());
        assert_eq!(run.take_due(5_000), vec![0]);
        let mut inline = run_of(&spec, RunKind::Inline { step: 0 });
        assert_eq!(
            inline.take_due(0),
            vec![0],
            "inline analysis measures at once"
        );
    }

    #[test]
    fn failures_beyond_the_limit_fail_the_run() {
        let spec = metric(1, Some(3));
        let mut run = run_of(&spec, RunKind::Background);
        measure(&mut run, &spec, 5000, Verdict::Failed);
        assert_eq!(
            run.phase,
            RunPhase::Running,
            "one failure is within failureLimit 1"
        );
        assert!(
            run.take_due(9_999).is_empty(),
            "next measurement waits for the interval"
        );
        measure(&mut run, &spec, 10000, Verdict::Failed);
        assert_eq!(run.phase, RunPhase::Failed);
    }

    #[test]
    fn errors_count_toward_the_error_limit_only() {
        let spec = metric(0, Some(2));
        let mut run = run_of(&spec, RunKind::Background);
        measure(&mut run, &spec, 5000, Verdict::Error);
        measure(&mut run, &spec, 10000, Verdict::Error);
        assert_eq!(
            run.phase,
            RunPhase::Running,
            "two errors are within consecutiveErrorLimit 2"
        );
        measure(&mut run, &spec, 15000, Verdict::Successful);
        measure(&mut run, &spec, 20000, Verdict::Error);
        measure(&mut run, &spec, 25000, Verdict::Error);
        assert_eq!(run.phase, RunPhase::Running);
        measure(&mut run, &spec, 30000, Verdict::Error);
        assert_eq!(run.phase, RunPhase::Error);
    }

    #[test]
    fn count_successes_complete_the_run_and_inconclusive_stops_it() {
        let spec = metric(0, Some(2));
        let mut run = run_of(&spec, RunKind::Background);
        measure(&mut run, &spec, 5000, Verdict::Successful);
        measure(&mut run, &spec, 10000, Verdict::Successful);
        assert_eq!(run.phase, RunPhase::Successful);

        let mut run = run_of(&spec, RunKind::Background);
        measure(&mut run, &spec, 5000, Verdict::Inconclusive);
        assert_eq!(run.phase, RunPhase::Inconclusive);
    }

    #[test]
    fn inline_runs_measure_once_without_count() {
        let spec = metric(0, None);
        let mut run = run_of(&spec, RunKind::Inline { step: 2 });
        measure(&mut run, &spec, 0, Verdict::Successful);
        assert_eq!(run.phase, RunPhase::Successful);
    }

    #[test]
    fn dry_run_metrics_never_decide() {
        let mut spec = metric(0, Some(1));
        spec.dry_run = true;
        let mut run = run_of(&spec, RunKind::Inline { step: 0 });
        measure(&mut run, &spec, 0, Verdict::Failed);
        assert_eq!(run.phase, RunPhase::Successful);
    }
}
