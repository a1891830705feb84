//! `weir-bench reload`: memory and control-thread stalls across config reloads.
//!
//! Writes a config of `--services` services (one host each; every tenth has a canary rollout held
//! at 10% by an indefinite pause, so the driver has rollouts to tick) to the harness' temp dir,
//! starts the `weir` binary on it, then sends `--reloads` SIGHUPs one after the other, each once
//! the previous reload was applied (weir logs "config applied"). It reports weir's resident memory
//! (`VmRSS` from `/proc/PID/status`) after the first load and along the reloads, how long each
//! reload took from SIGHUP to "config applied", and the latency of `GET /healthz` on the admin
//! API, polled all along from another thread: the admin API runs on the control thread, so a
//! reload that blocks that thread shows up there. A second prober sends an operator command for
//! a service that does not exist (`POST /api/v1/services/weir-bench-probe/pause`, answered 404 by
//! the rollout driver itself): its latency is how long the driver's loop, which also runs the
//! rollout ticks, was unavailable. With `--state-dir` the config has a `stateDir` in the temp dir
//! (rollout state files are written, as in production). The temp dir is removed at the end.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

use crate::http;
use crate::supervisor::{self, ShutdownGuard, Supervisor};

/// Options of `weir-bench reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// Services in the config.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    services: u32,

    /// SIGHUP reloads, one after the other.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    reloads: u32,

    /// How long to wait for one reload (or the first load) before giving up, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,

    /// The weir binary [default: `weir` next to this executable].
    #[arg(long, env = "WEIR_BIN", value_name = "PATH")]
    weir: Option<PathBuf>,

    /// Keep the temp dir (config and weir's output) and print its path.
    #[arg(long)]
    keep_temp: bool,

    /// Give the config a `stateDir` (in the temp dir): rollout state is written to files.
    #[arg(long)]
    state_dir: bool,
}

/// Runs the reload benchmark.
pub fn run(args: &ReloadArgs) -> Result<()> {
    let weir = match &args.weir {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable to locate weir next to it")?
            .with_file_name("weir"),
    };
    if !weir.is_file() {
        bail!(
            "the weir binary {} does not exist: build it with `cargo build --release -p weir-control` \
             (bench/run does) or point --weir (or WEIR_BIN) at it",
            weir.display()
        );
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let sup = Supervisor::new(args.keep_temp)?;
    let _shutdown = ShutdownGuard(sup.clone());
    supervisor::stop_on_signals(sup.clone())?;

    let ports = http::free_ports(2)?;
    let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let config = sup.dir().join("weir.yaml");
    let state_dir = args.state_dir.then(|| sup.dir().join("state"));
    std::fs::write(
        &config,
        config_text(args.services, ports[0], ports[1], state_dir.as_deref()),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;

    let mut cmd = Command::new(&weir);
    cmd.args(["--log-level", "info", "run", "--workers", "1", "--config"])
        .arg(&config);
    let started = Instant::now();
    let proc = sup.spawn("weir", cmd)?;
    loop {
        if let Some(status) = proc.exited()? {
            bail!(
                "weir exited with {status} before it was ready:\n{}",
                proc.output_tail(20)
            );
        }
        if http::get(admin, "/readyz", Duration::from_secs(2)).is_ok_and(|r| r.status == 200) {
            break;
        }
        if started.elapsed() > timeout {
            bail!(
                "weir not ready after {timeout:?}:\n{}",
                proc.output_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_load = started.elapsed();
    // Let the first table's garbage (the YAML tree, the validation context) be given back.
    std::thread::sleep(Duration::from_secs(1));
    let rss_first = rss_kib(proc.pid())?;
    println!(
        "weir-bench reload: {} services, {} reloads; first load {:.2}s, RSS after it {} MiB",
        args.services,
        args.reloads,
        first_load.as_secs_f64(),
        rss_first / 1024
    );

    // The probers, every 20 ms on a fresh connection, latencies kept: the admin API itself, and
    // a command the rollout driver answers (404: no such service).
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let driver_latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let probe = |method: &'static str,
                 path: &'static str,
                 status: u16,
                 into: &Arc<Mutex<Vec<Duration>>>| {
        let stop = stop.clone();
        let into = into.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                let ok = http::request(admin, method, path, Duration::from_secs(30))
                    .is_ok_and(|r| r.status == status);
                let took = at.elapsed();
                if ok {
                    into.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(took);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let probers = [
        probe("GET", "/healthz", 200, &latencies),
        probe(
            "POST",
            "/api/v1/services/weir-bench-probe/pause",
            404,
            &driver_latencies,
        ),
    ];

    let applied_before = count_applied(&proc.output()?);
    let mut reload_times = Vec::with_capacity(args.reloads as usize);
    let mut rss_series = Vec::new();
    for n in 1..=args.reloads {
        let at = Instant::now();
        hangup(proc.pid())?;
        loop {
            if let Some(status) = proc.exited()? {
                bail!("weir exited with {status}:\n{}", proc.output_tail(20));
            }
            if count_applied(&proc.output()?) >= applied_before + n as usize {
                break;
            }
            if at.elapsed() > timeout {
                bail!(
                    "reload {n} not applied after {timeout:?}:\n{}",
                    proc.output_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        reload_times.push(at.elapsed());
        if n % 10 == 0 || n == args.reloads {
            let rss = rss_kib(proc.pid())?;
            rss_series.push((n, rss));
            eprintln!(
                "  reload {n:>4}: {:>7.3}s, RSS {} MiB",
                at.elapsed().as_secs_f64(),
                rss / 1024
            );
        }
    }
    // What the process settles at once the reloads stop.
    std::thread::sleep(Duration::from_secs(2));
    let rss_settled = rss_kib(proc.pid())?;
    stop.store(true, Ordering::Relaxed);
    for prober in probers {
        let _ = prober.join();
    }

    let mut times = reload_times.clone();
    times.sort_unstable();
    let mut admin = latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    admin.sort_unstable();
    let mut driver = driver_latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    driver.sort_unstable();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reload time (SIGHUP → applied): median {:.3}s, p90 {:.3}s, max {:.3}s",
        quantile(&times, 0.5),
        quantile(&times, 0.9),
        quantile(&times, 1.0)
    );
    let _ = writeln!(
        out,
        "admin GET /healthz during reloads ({} probes): median {:.1}ms, p99 {:.1}ms, max {:.1}ms",
        admin.len(),
        quantile(&admin, 0.5) * 1e3,
        quantile(&admin, 0.99) * 1e3,
        quantile(&admin, 1.0) * 1e3
    );
    let _ = writeln!(
        out,
        "driver loop (a command answered by the driver) during reloads ({} probes): median {:.1}ms, p99 {:.1}ms, max {:.1}ms",
        driver.len(),
        quantile(&driver, 0.5) * 1e3,
        quantile(&driver, 0.99) * 1e3,
        quantile(&driver, 1.0) * 1e3
    );
    let last = rss_series.last().map_or(rss_first, |&(_, rss)| rss);
    let _ = writeln!(
        out,
        "RSS: after first load {} MiB, after {} reloads {} MiB ({:+.1}%), settled {} MiB ({:+.1}%)",
        rss_first / 1024,
        args.reloads,
        last / 1024,
        percent(last, rss_first),
        rss_settled / 1024,
        percent(rss_settled, rss_first)
    );
    print!("{out}");
    if args.keep_temp {
        println!("kept {}", sup.dir().display());
    }
    Ok(())
}

/// The config: `services` services, one host each; every tenth with a rollout paused at 10%.
fn config_text(
    services: u32,
    listen: u16,
    admin: u16,
    state_dir: Option<&std::path::Path>,
) -> String {
    let mut text = String::new();
    if let Some(dir) = state_dir {
        let _ = writeln!(text, "stateDir: {}", dir.display());
    }
    let _ = write!(
        text,
        "listeners:\n  - name: public\n    address: 127.0.0.1:{listen}\nadmin:\n  address: 127.0.0.1:{admin}\nservices:\n"
    );
    for n in 0..services {
        let _ = write!(
            text,
            "  - name: s{n}\n    match: {{ hosts: [\"s{n}.example\"], pathPrefix: /api }}\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:{p1}\"] }}\n    canary: {{ version: v2, upstreams: [\"127.0.0.1:{p2}\"] }}\n",
            p1 = 10_000 + n % 5_000,
            p2 = 20_000 + n % 5_000,
        );
        if n % 10 == 0 {
            text.push_str("    strategy:\n      canary:\n        steps:\n          - setWeight: 10\n          - pause: {}\n");
        }
    }
    text
}

/// How many reloads weir reported applied in its log (the first load is not one).
fn count_applied(log: &str) -> usize {
    log.lines().filter(|l| l.contains("config applied")).count()
}

/// Sends SIGHUP to `pid` (the shell's `kill`, so no unsafe code).
fn hangup(pid: u32) -> Result<()> {
    let status = Command::new("sh")
        .args(["-c", "kill -s HUP \"$1\"", "sh"])
        .arg(pid.to_string())
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -s HUP {pid} failed: {status}");
    }
    Ok(())
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// The `q` quantile of sorted durations, in seconds (0 when empty).
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64()
}

fn percent(value: u64, base: u64) -> f64 {
    if base == 0 {
        return 0.0;
    }
    (value as f64 / base as f64 - 1.0) * 100.0
}
