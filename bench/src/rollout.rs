//! `weir-bench rollback`: how fast weir's builtin analysis rolls back a canary that starts failing,
//! and whether it leaves healthy canaries alone.
//!
//! Everything runs in this process: weir itself (`weir_control::app::start` on a config file in a
//! temp dir, its control loop on a current-thread runtime of its own thread as under `weir run`,
//! one data-plane worker thread), and, on a second runtime, the demo backends
//! (`weir_control::demo::backend`) and the paced traffic generator (`weir_control::demo::traffic`).
//!
//! 1. **Detection.** Stable `v1` and a canary at 10% (`setWeight: 10`, then `pause: {}`), with
//!    background analysis from the first step ([`analysis_template`]). Once the canary has served
//!    its share for a few seconds and passed a few measurements, it starts answering every second
//!    request with a 500. Measured: from the first 5xx from the canary that a client saw to the
//!    moment the driver's status shows canary weight 0. Each repetition is a fresh rollout of a new
//!    canary version (config rewrite + reload), and the error starts at an evenly spread point of
//!    the measurement interval, so the repetitions cover the best and the worst phase.
//! 2. **False positives.** Healthy rollouts in a row (`setWeight: 10` → `pause: 2s` →
//!    `setWeight: 50` → `pause: 2s` → promoted), stable and canary both answering 0.2% 5xx, with
//!    the same analysis. Each one starts by rewriting the config: the promoted canary becomes the
//!    stable and a new version the canary. Counted: promoted, rolled back, neither.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use weir_control::api::v1::{ServiceStatus, Status};
use weir_control::app::{self, RunOptions, Running};
use weir_control::demo::backend::Backend;
use weir_control::demo::traffic::{Traffic, TrafficSnapshot};
use weir_control::engine::analysis::Verdict;
use weir_control::engine::driver::Handle;
use weir_control::engine::rollout::run::{AnalysisRun, MetricRun, RunKind};
use weir_control::engine::rollout::Phase;

use crate::environment::{git_revision, Machine};
use crate::rollout_report::{Detection, HealthyRollout, Outcome, Report, Scenario, Settings};

/// The service under test.
const SERVICE: &str = "checkout";
/// The `Host` the traffic sends (the service matches any).
const HOST: &str = "checkout.local";
/// The analysis template's name.
const TEMPLATE: &str = "errors";

/// The builtin metric's measurement interval.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// The builtin metric's sliding window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// The canary weight of the detection scenario (and of the healthy rollouts' first step), in %.
pub const CANARY_PERCENT: f64 = 10.0;
/// The fraction of requests the failing canary answers with a 500.
pub const BAD_ERROR_RATE: f64 = 0.5;
/// The fraction of requests stable and the healthy canaries answer with a 500.
pub const BASELINE_ERROR_RATE: f64 = 0.002;
/// The target: first 5xx → canary weight 0.
pub const DETECTION_TARGET: Duration = Duration::from_secs(2);

/// The detection scenario's steps (the YAML under `canary:`).
const DETECTION_STEPS: &str = "          - setWeight: 10\n          - pause: {}\n";
/// The healthy rollouts' steps.
const HEALTHY_STEPS: &str = "          - setWeight: 10\n          - pause: {duration: 2s}\n          - setWeight: 50\n          - pause: {duration: 2s}\n";
/// The healthy rollouts' steps, in words.
pub const HEALTHY_PLAN: &str = "setWeight 10 → pause 2s → setWeight 50 → pause 2s → promoted";
/// The detection scenario's steps, in words.
pub const DETECTION_PLAN: &str = "setWeight 10 → pause {} (until promoted)";

/// How long the canary serves its 10% before the errors start, at least.
const WARMUP: Duration = Duration::from_secs(3);
/// Successful measurements the canary must pass before the errors start, at least.
const WARMUP_MEASUREMENTS: u32 = 3;

/// Deadlines: weir started, a new revision at its first weight, the warmup, the rollback after
/// the errors started, one healthy rollout from the config rewrite to its end, shutting down.
const START_DEADLINE: Duration = Duration::from_secs(15);
const REVISION_DEADLINE: Duration = Duration::from_secs(15);
const WARMUP_DEADLINE: Duration = Duration::from_secs(30);
const ROLLBACK_DEADLINE: Duration = Duration::from_secs(15);
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(30);
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// Healthy rollouts in a row that may end neither promoted nor rolled back before the scenario
/// gives up (weir is stuck, not judging).
const MAX_STUCK_IN_A_ROW: u32 = 3;

/// Measures rollback detection and false positives of weir's builtin canary analysis, in-process.
#[derive(Debug, Clone, clap::Args)]
pub struct RollbackArgs {
    /// Requests per second through weir, in both scenarios.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,

    /// Repetitions of the detection scenario (each a fresh rollout of a failing canary); 0 skips it.
    #[arg(long, default_value_t = 10)]
    pub repeats: u32,

    /// Healthy rollouts in a row for the false-positive count; 0 skips them.
    #[arg(long, default_value_t = 50)]
    pub rollouts: u32,

    /// Keep-alive connections the traffic generator spreads the rate over.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs the rollout benchmark and prints its report.
pub fn run(args: &RollbackArgs) -> Result<()> {
    if args.repeats == 0 && args.rollouts == 0 {
        bail!("--repeats 0 and --rollouts 0 leave nothing to measure");
    }
    let settings = Settings {
        rate: args.rate,
        connections: args.connections,
        repeats: args.repeats,
        rollouts: args.rollouts,
        template: analysis_template(),
    };
    let machine = Machine::collect();
    let revision = git_revision();
    print!("{}", Report::header(&machine, &revision, &settings));
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;

    // The backends and the load; weir's control loop gets a runtime of its own (see `Weir`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-bench-load")
        .enable_all()
        .build()
        .context("cannot start the load runtime")?;
    let started = Instant::now();
    let result = runtime.block_on(async {
        tokio::select! {
            result = scenarios(args) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    // Everything was stopped already (or dropped on an error); never wait long for a straggler.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let (detection, healthy) = result?;

    let report = Report {
        machine: &machine,
        revision: &revision,
        settings: &settings,
        detection: &detection,
        healthy: &healthy,
        took: started.elapsed(),
    };
    print!("{}", report.render());
    if let Some(path) = &args.json {
        crate::write_json(path, &report.to_json())?;
    }
    Ok(())
}

/// Both scenarios, each on a weir of its own.
async fn scenarios(
    args: &RollbackArgs,
) -> Result<(
    Option<Scenario<Detection>>,
    Option<Scenario<HealthyRollout>>,
)> {
    let detection = if args.repeats > 0 {
        Some(detection(args).await.context("detection scenario")?)
    } else {
        None
    };
    let healthy = if args.rollouts > 0 {
        Some(healthy(args).await.context("false-positive scenario")?)
    } else {
        None
    };
    Ok((detection, healthy))
}

// === the detection scenario ===

async fn detection(args: &RollbackArgs) -> Result<Scenario<Detection>> {
    let stable = bind("v1")?;
    let mut rig = Rig::start(args, &config(&stable, None, DETECTION_STEPS)).await?;
    let mut results = Vec::new();
    let mut previous: Option<Backend> = None;
    for i in 1..=args.repeats {
        let version = format!("v{}", i + 1);
        eprint!("[detection {i}/{}] {version} … ", args.repeats);
        let canary = bind(&version)?;
        // Repetition i of n starts the errors (i − ½)/n of an interval after a measurement.
        let offset = INTERVAL.mul_f64((f64::from(i) - 0.5) / f64::from(args.repeats));
        let result = detect(&mut rig, &stable, &canary, i, offset)
            .await
            .inspect_err(|_| eprintln!("failed"))
            .with_context(|| format!("repetition {i} (canary {version})"))?;
        eprintln!(
            "{:.3}s from its first 5xx to canary weight 0",
            result.total.as_secs_f64()
        );
        results.push(result);
        // The config no longer names the previous canary: nothing routes to it any more.
        if let Some(old) = previous.replace(canary) {
            old.shutdown().await;
        }
    }
    Ok(rig.finish(results).await)
}

/// One repetition: rolls `canary` out as revision `revision`, warms it up, makes it fail
/// `offset` after a measurement and times the rollback.
async fn detect(
    rig: &mut Rig,
    stable: &Backend,
    canary: &Backend,
    revision: u32,
    offset: Duration,
) -> Result<Detection> {
    let Rig {
        weir,
        traffic,
        statuses,
        clock,
        ..
    } = rig;
    let revision = u64::from(revision);
    let version = canary.version().to_string();
    weir.write_config(&config(stable, Some(canary), DETECTION_STEPS))?;
    let ((), at_weight) = wait_for(
        statuses,
        REVISION_DEADLINE,
        &format!("revision {revision} ({version}) paused at weight 10"),
        |s| {
            if !at_revision(s, revision)? {
                return Ok(None);
            }
            Ok((s.phase == Phase::Paused && s.canary_weight == CANARY_PERCENT).then_some(()))
        },
    )
    .await?
    .ok_or_else(|| timed_out(weir, REVISION_DEADLINE, "the new revision"))?;
    let warm_from = traffic.snapshot();

    // Warm: 10% for WARMUP and WARMUP_MEASUREMENTS successful measurements, none failed.
    let (count, _) = wait_for(statuses, WARMUP_DEADLINE, "the warmup", |s| {
        if !at_revision(s, revision)? {
            return Ok(None);
        }
        let Some(metric) = running_background_metric(s) else {
            bail!("no running background analysis at weight 10: {}", s.message);
        };
        if metric.failed > 0 {
            bail!("the healthy canary failed a measurement: {}", s.message);
        }
        let warm = metric.successful >= WARMUP_MEASUREMENTS && at_weight.elapsed() >= WARMUP;
        Ok(warm.then_some(metric.count))
    })
    .await?
    .ok_or_else(|| timed_out(weir, WARMUP_DEADLINE, "the warmup"))?;
    // Then the next measurement, and `offset` after it the errors start.
    let (measured_ms, _) = wait_for(statuses, WARMUP_DEADLINE, "the next measurement", |s| {
        if !at_revision(s, revision)? {
            return Ok(None);
        }
        let metric = running_background_metric(s)
            .ok_or_else(|| anyhow!("the background analysis stopped: {}", s.message))?;
        if metric.failed > 0 {
            bail!("the healthy canary failed a measurement: {}", s.message);
        }
        Ok((metric.count > count)
            .then(|| metric.measurements.last().map(|m| m.at_ms))
            .flatten())
    })
    .await?
    .ok_or_else(|| timed_out(weir, WARMUP_DEADLINE, "the next measurement"))?;
    let measured_ms = signed(measured_ms);
    let wait = measured_ms.saturating_add(millis(offset)) - clock.now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
    }
    let warm = traffic.snapshot().since(&warm_from);
    let canary_share = share(&warm, &version);
    statuses.borrow_and_update();
    canary.set_error_rate(BAD_ERROR_RATE);
    let injected_at = Instant::now();
    let injected_after =
        Duration::from_millis((clock.now_ms() - measured_ms).max(0).unsigned_abs());

    let (status, weight_zero_at) = wait_for(statuses, ROLLBACK_DEADLINE, "canary weight 0", |s| {
        if !at_revision(s, revision)? {
            return Ok(None);
        }
        if s.phase == Phase::Healthy {
            bail!("the failing canary was promoted: {}", s.message);
        }
        Ok((s.canary_weight == 0.0).then(|| s.clone()))
    })
    .await?
    .ok_or_else(|| timed_out(weir, ROLLBACK_DEADLINE, "the rollback"))?;

    let seen = traffic.snapshot();
    let counts = seen.versions.get(&version).copied().unwrap_or_default();
    let first_error_at = counts
        .first_error_at
        .ok_or_else(|| anyhow!("rolled back before any client saw a 5xx from {version}"))?;
    let total = weight_zero_at.saturating_duration_since(first_error_at);
    let details = status.details.as_ref();
    let run = details.and_then(|d| {
        d.analysis_runs
            .iter()
            .find(|r| r.kind == RunKind::Background)
    });
    let metric = run.and_then(|r| r.metrics.first());
    let failing = metric.and_then(|m| {
        m.measurements
            .iter()
            .rev()
            .find(|m| m.verdict == Verdict::Failed)
    });
    let rollback_event = details
        .and_then(|d| {
            d.events
                .iter()
                .rev()
                .find(|e| e.kind == "Rollback" && e.revision == revision)
        })
        .map(|e| e.message.clone())
        .unwrap_or_default();
    let first_error_ms = clock.ms(first_error_at);
    let to_measurement = failing.map(|m| signed(m.at_ms) - first_error_ms);
    Ok(Detection {
        version,
        phase: status.phase,
        canary_share,
        injected_after,
        first_error_after: first_error_at.saturating_duration_since(injected_at),
        to_measurement_ms: to_measurement,
        total,
        canary_errors: counts.server_errors,
        measured: failing.map(|m| m.message.clone()).unwrap_or_default(),
        measurements: metric.map_or(0, |m| m.count),
        rollback_event,
    })
}

// === the false-positive scenario ===

async fn healthy(args: &RollbackArgs) -> Result<Scenario<HealthyRollout>> {
    let mut stable = bind("v1")?;
    stable.set_error_rate(BASELINE_ERROR_RATE);
    let mut rig = Rig::start(args, &config(&stable, None, HEALTHY_STEPS)).await?;
    let mut results = Vec::new();
    let mut stuck_in_a_row = 0;
    // A stuck canary keeps its weight until the next rollout's config replaces it.
    let mut lingering: Option<Backend> = None;
    for i in 1..=args.rollouts {
        let version = format!("v{}", i + 1);
        eprint!("[healthy {i}/{}] {version} … ", args.rollouts);
        let canary = bind(&version)?;
        canary.set_error_rate(BASELINE_ERROR_RATE);
        let result = roll_out(&mut rig, &stable, &canary, u64::from(i))
            .await
            .inspect_err(|_| eprintln!("failed"))
            .with_context(|| format!("rollout {i} (canary {version})"))?;
        eprintln!("{} in {:.1}s", result.outcome, result.took.as_secs_f64());
        if let Some(old) = lingering.take() {
            old.shutdown().await;
        }
        let outcome = result.outcome;
        results.push(result);
        match outcome {
            Outcome::Promoted => {
                // The promoted canary is the next rollout's stable; the old stable is unused.
                std::mem::replace(&mut stable, canary).shutdown().await;
                stuck_in_a_row = 0;
            }
            Outcome::RolledBack => {
                canary.shutdown().await;
                stuck_in_a_row = 0;
            }
            Outcome::Stuck => {
                lingering = Some(canary);
                stuck_in_a_row += 1;
                if stuck_in_a_row >= MAX_STUCK_IN_A_ROW {
                    bail!("{stuck_in_a_row} rollouts in a row ended neither promoted nor rolled back: weir's rollouts are stuck");
                }
            }
        }
    }
    Ok(rig.finish(results).await)
}

/// One healthy rollout of `canary` over `stable` as revision `revision`, to its end.
async fn roll_out(
    rig: &mut Rig,
    stable: &Backend,
    canary: &Backend,
    revision: u64,
) -> Result<HealthyRollout> {
    let Rig { weir, statuses, .. } = rig;
    let version = canary.version().to_string();
    let started = Instant::now();
    weir.write_config(&config(stable, Some(canary), HEALTHY_STEPS))?;
    let ended = wait_for(statuses, ROLLOUT_DEADLINE, "the end of the rollout", |s| {
        if !at_revision(s, revision)? {
            return Ok(None);
        }
        let outcome = match s.phase {
            Phase::Healthy if s.stable_version == version && s.canary_weight == 100.0 => {
                Outcome::Promoted
            }
            Phase::Degraded if s.canary_weight == 0.0 => Outcome::RolledBack,
            // An inconclusive analysis pauses the rollout until an operator decides.
            Phase::Paused => Outcome::Stuck,
            _ => return Ok(None),
        };
        Ok(Some((outcome, s.clone())))
    })
    .await?;
    let took = started.elapsed();
    let (outcome, status) = match ended {
        Some(((outcome, status), _)) => (outcome, status),
        None => {
            let status = weir
                .driver()
                .status()
                .service(SERVICE)
                .cloned()
                .ok_or_else(|| anyhow!("no status for {SERVICE}"))?;
            (Outcome::Stuck, status)
        }
    };
    let metric = status
        .details
        .as_ref()
        .and_then(|d| {
            d.analysis_runs
                .iter()
                .find(|r| r.kind == RunKind::Background)
        })
        .and_then(|r| r.metrics.first());
    let values: Vec<f64> = metric
        .map(|m| {
            m.measurements
                .iter()
                .filter_map(|m| m.value.as_ref().and_then(serde_json::Value::as_f64))
                .collect()
        })
        .unwrap_or_default();
    Ok(HealthyRollout {
        version,
        outcome,
        took,
        measurements: metric.map_or(0, |m| m.count),
        inconclusive: metric.map_or(0, |m| m.inconclusive),
        values,
        message: status.message,
    })
}

// === weir in-process ===

/// One scenario's weir, the traffic through it, and what the harness watches.
struct Rig {
    weir: Weir,
    traffic: Traffic,
    statuses: watch::Receiver<Arc<Status>>,
    clock: WallClock,
    started: Instant,
}

impl Rig {
    /// Starts weir on `yaml` and the traffic through it.
    async fn start(args: &RollbackArgs, yaml: &str) -> Result<Rig> {
        let weir = Weir::start(yaml).await?;
        let traffic = Traffic::spawn(weir.addr, HOST, args.rate, args.connections as usize);
        let statuses = weir.driver().watch_status();
        Ok(Rig {
            weir,
            traffic,
            statuses,
            clock: WallClock::new(),
            started: Instant::now(),
        })
    }

    /// Stops the traffic, then weir.
    async fn finish<T>(self, results: Vec<T>) -> Scenario<T> {
        let last = self.traffic.snapshot();
        let traffic = tokio::time::timeout(Duration::from_secs(5), self.traffic.stop())
            .await
            .unwrap_or(last);
        let took = self.started.elapsed();
        self.weir.shutdown().await;
        Scenario {
            results,
            traffic,
            took,
        }
    }
}

/// weir on a config file in a temp dir, its control loop on a current-thread runtime in a thread of
/// its own (as `weir run` has it), its data plane on one worker thread. Dropped without
/// [`Weir::shutdown`] (an error, Ctrl-C), it stops too: the data plane with `running`, the control
/// loop with `control`, and the temp dir goes.
struct Weir {
    running: Running,
    control: ControlThread,
    addr: SocketAddr,
    path: PathBuf,
    dir: tempfile::TempDir,
}

/// The thread weir's control loop runs on, until told to stop or dropped.
struct ControlThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Weir {
    async fn start(yaml: &str) -> Result<Weir> {
        let dir = tempfile::Builder::new()
            .prefix("weir-bench-rollout-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let path = dir.path().join("weir.yaml");
        write_atomically(&path, &yaml.replace(STATE_DIR, &state_dir(dir.path())))?;
        let options = RunOptions {
            config_path: path.clone(),
            workers: 1,
            drain_timeout: Duration::from_secs(2),
            access_log: false,
            access_log_format: Default::default(),
            // Every rewrite is followed by a forced reload; the poll only backs that up.
            poll_interval: Duration::from_secs(30),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start weir's control runtime")?;
        let (started_tx, started_rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("weir-control".to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = started_tx.send(app::start(options).await);
                    // Until stopped, or until the `ControlThread` is dropped.
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("cannot start weir's control thread")?;
        let control = ControlThread {
            stop: Some(stop),
            thread: Some(thread),
        };
        let running = tokio::time::timeout(START_DEADLINE, started_rx)
            .await
            .map_err(|_| anyhow!("weir did not start within {START_DEADLINE:?}"))?
            .map_err(|_| anyhow!("weir's control thread ended while starting"))?
            .context("cannot start weir")?;
        let addr = running
            .listener_addrs()
            .first()
            .map(|(_, addr)| *addr)
            .ok_or_else(|| anyhow!("weir started without a listener"))?;
        Ok(Weir {
            running,
            control,
            addr,
            path,
            dir,
        })
    }

    fn driver(&self) -> &Handle {
        self.running.driver()
    }

    /// Replaces the config file (atomically, as editors do) and reloads it.
    fn write_config(&self, yaml: &str) -> Result<()> {
        write_atomically(
            &self.path,
            &yaml.replace(STATE_DIR, &state_dir(self.dir.path())),
        )?;
        self.running.reload();
        Ok(())
    }

    /// Drains and stops weir, then its control thread; every step bounded.
    async fn shutdown(self) {
        let Weir {
            running,
            mut control,
            dir,
            ..
        } = self;
        if tokio::time::timeout(SHUTDOWN_DEADLINE, running.shutdown())
            .await
            .is_err()
        {
            eprintln!("warning: weir did not shut down within {SHUTDOWN_DEADLINE:?}");
        }
        control.stop();
        if let Some(thread) = control.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(SHUTDOWN_DEADLINE, joined)
                .await
                .is_err()
            {
                eprintln!(
                    "warning: weir's control thread did not end within {SHUTDOWN_DEADLINE:?}"
                );
            }
        }
        if let Err(error) = dir.close() {
            eprintln!("warning: cannot remove weir's temp dir: {error}");
        }
    }
}

impl ControlThread {
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stands for the state folder's path in a config until [`Weir`] writes it.
const STATE_DIR: &str = "${stateDir}";

fn state_dir(dir: &Path) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::Value::String(dir.join("state").display().to_string()).to_string()
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let temp = path.with_extension("yaml.tmp");
    std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The config: `stable`, optionally `canary`, the canary strategy with `steps` (YAML list items
/// indented by 10 spaces) and background analysis from the first step.
fn config(stable: &Backend, canary: Option<&Backend>, steps: &str) -> String {
    let canary = canary
        .map(|c| {
            format!(
                "    canary:\n      version: {}\n      upstreams: [\"{}\"]\n",
                c.version(),
                c.addr()
            )
        })
        .unwrap_or_default();
    format!(
        r#"listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
stateDir: {STATE_DIR}
services:
  - name: {SERVICE}
    match:
      hosts: ["*"]
    stable:
      version: {stable_version}
      upstreams: ["{stable_addr}"]
{canary}    strategy:
      canary:
        steps:
{steps}        analysis:
          templates:
            - templateName: {TEMPLATE}
          startingStep: 0
{template}"#,
        stable_version = stable.version(),
        stable_addr = stable.addr(),
        template = analysis_template(),
    )
}

/// The analysis both scenarios use, as it appears in the config.
///
/// `inconclusiveLimit: 3`: a rollout's first measurement is taken the moment it starts, before the
/// canary has served anything, and is inconclusive (no data); with the default limit 0 that alone
/// would pause every rollout.
pub fn analysis_template() -> String {
    format!(
        r#"analysisTemplates:
  - name: {TEMPLATE}
    metrics:
      - name: error-rate
        interval: {interval}s
        failureLimit: 0
        inconclusiveLimit: 3
        successCondition: result < 0.01
        provider:
          builtin:
            metric: error-rate
            window: {window}s
            minRequests: 20
"#,
        interval = INTERVAL.as_secs(),
        window = WINDOW.as_secs(),
    )
}

// === helpers ===

fn bind(version: &str) -> Result<Backend> {
    Backend::bind(version).with_context(|| format!("cannot start backend {version}"))
}

/// Waits until `check` answers `Some` for the service's status (checked now and after every
/// change), at most `within`: `None` when that ran out. `check` failing ends the wait with its
/// error. Also returns when the answer came.
async fn wait_for<T>(
    statuses: &mut watch::Receiver<Arc<Status>>,
    within: Duration,
    what: &str,
    mut check: impl FnMut(&ServiceStatus) -> Result<Option<T>>,
) -> Result<Option<(T, Instant)>> {
    let deadline = Instant::now() + within;
    loop {
        let status = statuses.borrow_and_update().clone();
        let now = Instant::now();
        if let Some(service) = status.service(SERVICE) {
            if let Some(answer) = check(service)? {
                return Ok(Some((answer, now)));
            }
        }
        match tokio::time::timeout_at(deadline, statuses.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("weir's driver stopped while waiting for {what}"),
            Err(_) => return Ok(None),
        }
    }
}

/// An error for a wait that ran out, with the service's last status.
fn timed_out(weir: &Weir, within: Duration, what: &str) -> anyhow::Error {
    let status = weir.driver().status();
    match status.service(SERVICE) {
        Some(s) => anyhow!(
            "no {what} within {within:?}: revision {}, phase {:?}, canary weight {}%: {}",
            s.revision,
            s.phase,
            s.canary_weight,
            s.message
        ),
        None => anyhow!("no {what} within {within:?}: no status for {SERVICE}"),
    }
}

/// Whether the status is at `revision` (not yet: the rewritten config is not applied yet); fails
/// when weir moved past it.
fn at_revision(status: &ServiceStatus, revision: u64) -> Result<bool> {
    if status.revision > revision {
        bail!(
            "weir is at revision {} while {revision} was expected",
            status.revision
        );
    }
    Ok(status.revision == revision)
}

/// The running background analysis's metric, if this revision has one running.
fn running_background_metric(status: &ServiceStatus) -> Option<&MetricRun> {
    let runs: &[AnalysisRun] = &status.details.as_ref()?.analysis_runs;
    runs.iter()
        .find(|r| {
            r.kind == RunKind::Background
                && r.phase == weir_control::engine::rollout::run::RunPhase::Running
        })
        .and_then(|r| r.metrics.first())
}

/// `version`'s share of the answers in `snapshot`, in %.
fn share(snapshot: &TrafficSnapshot, version: &str) -> f64 {
    let all = snapshot.responses();
    if all == 0 {
        return 0.0;
    }
    snapshot.responses_from(version) as f64 * 100.0 / all as f64
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn signed(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Wall-clock milliseconds for tokio instants, the way weir's driver stamps its measurements (Unix
/// time at a base instant plus the tokio time since), so the two can be compared to the ms.
struct WallClock {
    base_ms: i64,
    base: Instant,
}

impl WallClock {
    fn new() -> WallClock {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        WallClock {
            base_ms,
            base: Instant::now(),
        }
    }

    fn ms(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.base) {
            Some(after) => self.base_ms.saturating_add(millis(after)),
            None => self
                .base_ms
                .saturating_sub(millis(self.base.saturating_duration_since(at))),
        }
    }

    fn now_ms(&self) -> i64 {
        self.ms(Instant::now())
    }
}
