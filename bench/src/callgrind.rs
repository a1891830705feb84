//! `weir-bench callgrind`: a deterministic CPU figure for weir's variants. Each runs with one worker
//! under `valgrind --tool=callgrind`, is warmed up, has its counters zeroed (`callgrind_control -z`),
//! serves exactly N requests from h2load over keep-alive connections, and is dumped
//! (`callgrind_control -d`); the figure is the dump's total Ir (user-space instructions, every thread
//! of weir) divided by N. Unlike CPU time it does not depend on what else the machine runs.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::environment::{self, CallgrindTools, Machine, Tools};
use crate::measure::{Bench, Proxy};
use crate::procstat;
use crate::supervisor::{self, ShutdownGuard, Supervisor};
use crate::wrk::Load;

/// How long weir under valgrind gets to become ready (valgrind translates as it goes).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Counts user-space instructions per request of weir's variants under callgrind.
#[derive(Debug, clap::Args)]
pub struct CallgrindArgs {
    /// Requests counted per variant and run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,

    /// Requests sent before the counters are zeroed (`0` for none).
    #[arg(long, default_value_t = 2_000)]
    pub warmup_requests: u64,

    /// h2load connections (kept alive; one request in flight on each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// Runs; each measures every variant once, in order. Two runs show the count is repeatable.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,

    /// weir variants to measure, comma-separated (weir, weir-policies, weir-sticky, weir-ratelimit, weir-ingress, weir-ingress-ratelimit).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "weir,weir-policies,weir-sticky"
    )]
    pub only: Vec<Proxy>,

    /// CPU list (`taskset -c`) for weir under valgrind.
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,

    /// CPU list (`taskset -c`) for h2load and the two upstreams.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,

    /// Copy every dump to this folder as `<variant>.run<N>.callgrind` (for `callgrind_annotate`).
    #[arg(long, value_name = "DIR")]
    pub dumps: Option<PathBuf>,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// The weir binary [default: `weir` next to this executable].
    #[arg(long, env = "WEIR_BIN", value_name = "PATH")]
    pub weir: Option<PathBuf>,

    /// An extra argument for `weir run` (repeatable).
    #[arg(long = "weir-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub weir_args: Vec<String>,

    /// Keep the temp dir (configs, dumps and every process's output) and print its path.
    #[arg(long)]
    pub keep_temp: bool,
}

/// One variant counted in one run.
#[derive(Clone, Debug)]
pub struct Count {
    pub run: u32,
    pub proxy: Proxy,
    /// Total Ir of the dump: user-space instructions of every thread during the counted requests.
    pub instructions: u64,
    pub requests: u64,
    pub canary_percent: f64,
}

impl Count {
    pub fn per_request(&self) -> f64 {
        self.instructions as f64 / self.requests.max(1) as f64
    }
}

pub fn run(args: &CallgrindArgs) -> Result<()> {
    let mut proxies = args.only.clone();
    proxies.sort_unstable();
    proxies.dedup();
    if let Some(other) = proxies.iter().find(|p| !p.is_weir()) {
        bail!("callgrind measures weir's variants only (weir, weir-policies, weir-sticky, weir-ratelimit, weir-ingress, weir-ingress-ratelimit), not {other}");
    }
    if args.connections as u64 > args.requests {
        bail!(
            "--connections ({}) must not exceed --requests ({})",
            args.connections,
            args.requests
        );
    }
    let weir = crate::weir_binary(args.weir.as_ref())?;
    let tools = Tools::find(Some(weir), false, false, true)?;
    let cg = tools.callgrind.clone().context("callgrind tools")?;
    let clock_ticks = procstat::clock_ticks()?;

    let machine = Machine::collect();
    let valgrind_version = environment::first_line(&cg.valgrind, &["--version"])
        .unwrap_or_else(|| "unknown".to_string());
    let h2load_version = environment::first_line(&cg.h2load, &["--version"])
        .unwrap_or_else(|| "unknown".to_string());
    let revision = environment::git_revision();
    println!(
        "weir-bench callgrind: user-space instructions per request (Ir / N), 1 worker, {}/{} split\n",
        100 - crate::configs::CANARY_PERCENT,
        crate::configs::CANARY_PERCENT
    );
    for (label, value) in [
        ("date", machine.date.clone()),
        ("cpus", format!("{} × {}", machine.cpus, machine.cpu_model)),
        ("kernel", machine.kernel.clone()),
        ("weir", revision.clone()),
        ("valgrind", valgrind_version.clone()),
        ("h2load", h2load_version.clone()),
    ] {
        println!("  {label:<9}{value}");
    }
    println!(
        "  counted  {} requests per variant and run after {} warm-up requests; h2load --h1 -c {} -m 1; \
         weir on CPUs {}, h2load and upstreams on {}\n",
        args.requests, args.warmup_requests, args.connections, args.proxy_cpus, args.load_cpus
    );
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;

    if let Some(dir) = &args.dumps {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let sup = Supervisor::new(args.keep_temp)?;
    let _shutdown = ShutdownGuard(sup.clone());
    supervisor::stop_on_signals(sup.clone())?;
    let load = Load {
        wrk: tools.wrk.clone(),
        taskset: tools.taskset.clone(),
        cpus: args.load_cpus.clone(),
        threads: 1,
        connections: args.connections,
    };
    let bench = Bench::start(
        sup.clone(),
        tools,
        load,
        args.proxy_cpus.clone(),
        args.weir_args.clone(),
        clock_ticks,
        0,
    )?;

    let total = args.runs as usize * proxies.len();
    let mut counts = Vec::with_capacity(total);
    for run in 1..=args.runs {
        for &proxy in &proxies {
            eprint!("[{}/{total}] run {run}: {proxy} … ", counts.len() + 1);
            let started = Instant::now();
            let count = count(&bench, &cg, args, proxy, run)
                .inspect_err(|_| eprintln!("failed"))
                .with_context(|| format!("run {run}, {proxy}"))?;
            eprintln!(
                "{:.1} Ir/request ({:.0}s)",
                count.per_request(),
                started.elapsed().as_secs_f64()
            );
            counts.push(count);
        }
    }

    print!("{}", render(&counts, args.runs));
    if let Some(path) = &args.json {
        let value = json!({
            "benchmark": "callgrind",
            "environment": {
                "date": machine.date,
                "cpus": machine.cpus,
                "cpu_model": machine.cpu_model,
                "kernel": machine.kernel,
                "weir": revision,
                "valgrind": valgrind_version,
                "h2load": h2load_version,
            },
            "settings": {
                "requests": args.requests,
                "warmup_requests": args.warmup_requests,
                "connections": args.connections,
                "runs": args.runs,
                "proxy_cpus": args.proxy_cpus,
                "load_cpus": args.load_cpus,
            },
            "counts": counts.iter().map(|c| json!({
                "run": c.run,
                "proxy": c.proxy.id(),
                "instructions": c.instructions,
                "requests": c.requests,
                "instructions_per_request": c.per_request(),
                "canary_percent": c.canary_percent,
            })).collect::<Vec<Value>>(),
        });
        crate::write_json(path, &value)?;
    }
    Ok(())
}

/// Starts `proxy` under callgrind, warms it up, zeroes, sends the counted requests, dumps, stops it.
fn count(
    bench: &Bench,
    cg: &CallgrindTools,
    args: &CallgrindArgs,
    proxy: Proxy,
    run: u32,
) -> Result<Count> {
    let label = format!("run{run}-{}", proxy.id());
    let valgrind = cg.valgrind.clone();
    let running = bench.start_proxy_under(
        proxy,
        &label,
        |dir| {
            let mut out = OsString::from("--callgrind-out-file=");
            out.push(dir.join("callgrind.out"));
            vec![valgrind.into(), "--tool=callgrind".into(), out]
        },
        READY_TIMEOUT,
    )?;
    let h2load = |name: &str, requests: u64| -> Result<()> {
        h2load(
            &bench.sup,
            &bench.tools.taskset,
            &cg.h2load,
            &args.load_cpus,
            name,
            running.addr(),
            requests,
            args.connections,
            proxy.request_headers(),
        )
    };
    if args.warmup_requests > 0 {
        h2load(
            &format!("{label}-warmup"),
            args.warmup_requests.max(args.connections.into()),
        )?;
    }
    let upstream_before = bench.upstream_requests()?;
    let control = &cg.callgrind_control;
    let pid = running.pid();
    callgrind_control(&bench.sup, control, pid, &format!("{label}-zero"), "--zero")?;
    h2load(&label, args.requests)?;
    callgrind_control(&bench.sup, control, pid, &format!("{label}-dump"), "--dump")?;
    let upstream_after = bench.upstream_requests()?;
    running.check_alive()?;

    let dump = latest_dump(running.dir())?;
    let text = fs::read_to_string(&dump)
        .with_context(|| format!("cannot read the dump {}", dump.display()))?;
    let instructions = total_ir(&text)
        .with_context(|| format!("cannot read the total Ir of {}", dump.display()))?;
    if let Some(dir) = &args.dumps {
        let to = dir.join(format!("{}.run{run}.callgrind", proxy.id()));
        fs::copy(&dump, &to)
            .with_context(|| format!("cannot copy the dump to {}", to.display()))?;
    }
    drop(running);

    // Each stub_status read counts itself: subtract the "after" read.
    let delta = |after: u64, before: u64| after.saturating_sub(before).saturating_sub(1);
    let stable = delta(upstream_after.0, upstream_before.0);
    let canary = delta(upstream_after.1, upstream_before.1);
    Ok(Count {
        run,
        proxy,
        instructions,
        requests: args.requests,
        canary_percent: canary as f64 * 100.0 / (stable + canary).max(1) as f64,
    })
}

/// `callgrind_control ACTION PID`, waited for; it fails when the process is not found.
pub(crate) fn callgrind_control(
    sup: &Arc<Supervisor>,
    callgrind_control: &Path,
    pid: u32,
    name: &str,
    action: &str,
) -> Result<()> {
    let mut cmd = Command::new(callgrind_control);
    cmd.arg(action).arg(pid.to_string());
    let proc = sup.spawn(name, cmd)?;
    let limit = Duration::from_secs(60);
    let Some(status) = proc.wait_timeout(limit)? else {
        bail!(
            "callgrind_control {action} still running after {}s:\n{}",
            limit.as_secs(),
            proc.output_tail(10)
        );
    };
    let output = proc.output()?;
    if !status.success() || output.contains("Error") || !output.contains("OK") {
        bail!(
            "callgrind_control {action} {pid} failed ({status}):\n{}",
            proc.output_tail(10)
        );
    }
    Ok(())
}

/// `taskset -c CPUS h2load --h1 -n N -c C -m 1 [-H HEADER]… http://ADDR/`; every request must succeed.
#[allow(clippy::too_many_arguments)]
fn h2load(
    sup: &Arc<Supervisor>,
    taskset: &Path,
    h2load: &Path,
    cpus: &str,
    name: &str,
    target: SocketAddr,
    requests: u64,
    connections: u32,
    headers: &[&str],
) -> Result<()> {
    let mut cmd = Command::new(taskset);
    cmd.arg("-c")
        .arg(cpus)
        .arg(h2load)
        .args(["--h1", "-m", "1"])
        .arg(format!("-n{requests}"))
        .arg(format!("-c{connections}"));
    for header in headers {
        cmd.arg("-H").arg(header);
    }
    cmd.arg(format!("http://{target}/"));
    let proc = sup.spawn(name, cmd)?;
    let limit = Duration::from_secs(600);
    let Some(status) = proc.wait_timeout(limit)? else {
        bail!(
            "h2load ({name}) still running after {}s:\n{}",
            limit.as_secs(),
            proc.output_tail(20)
        );
    };
    let output = proc.output()?;
    if !status.success() {
        bail!(
            "h2load ({name}) failed with {status}:\n{}",
            proc.output_tail(20)
        );
    }
    let result = parse_h2load(&output)
        .with_context(|| format!("cannot parse the output of h2load ({name}):\n{output}"))?;
    if result.succeeded != requests || result.status_2xx != requests {
        bail!(
            "h2load ({name}) sent {requests} requests but {} succeeded with {} 2xx:\n{}",
            result.succeeded,
            result.status_2xx,
            proc.output_tail(20)
        );
    }
    Ok(())
}

/// What `h2load` reports about the requests.
#[derive(Debug, PartialEq)]
pub struct H2loadResult {
    pub done: u64,
    pub succeeded: u64,
    pub status_2xx: u64,
}

/// Parses h2load's `requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, …`
/// and `status codes: 20000 2xx, 0 3xx, 0 4xx, 0 5xx` lines.
pub fn parse_h2load(output: &str) -> Result<H2loadResult> {
    // "N word" pairs after the prefix, as a lookup by word.
    fn counts(rest: &str) -> Result<Vec<(&str, u64)>> {
        rest.split(',')
            .map(|part| {
                let mut words = part.split_whitespace();
                let n = words.next().context("empty count")?;
                let what = words.next().context("count without a name")?;
                Ok((what, n.parse().with_context(|| format!("bad count {n:?}"))?))
            })
            .collect()
    }
    let find = |prefix: &str, what: &str| -> Result<u64> {
        let line = output
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .with_context(|| format!("no {prefix:?} line"))?;
        counts(line)?
            .into_iter()
            .find(|(w, _)| *w == what)
            .map(|(_, n)| n)
            .with_context(|| format!("no {what:?} count in {prefix:?} line"))
    };
    Ok(H2loadResult {
        done: find("requests:", "done")?,
        succeeded: find("requests:", "succeeded")?,
        status_2xx: find("status codes:", "2xx")?,
    })
}

/// The newest dump callgrind wrote next to `callgrind.out` in `dir`: `callgrind.out.<n>` with the
/// highest `n` (each `callgrind_control --dump` writes the next part).
pub(crate) fn latest_dump(dir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(part) = name
            .to_str()
            .and_then(|n| n.strip_prefix("callgrind.out."))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| part > *b) {
            best = Some((part, entry.path()));
        }
    }
    best.map(|(_, path)| path)
        .with_context(|| format!("callgrind wrote no dump in {}", dir.display()))
}

/// The total Ir of a callgrind dump: the `events:` line names the columns, the `totals:` line (or
/// the older `summary:`) holds the sums.
pub(crate) fn total_ir(dump: &str) -> Result<u64> {
    let mut events = None;
    let mut totals = None;
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("events:") {
            events = Some(rest.split_whitespace().collect::<Vec<_>>());
        } else if let Some(rest) = line.strip_prefix("totals:") {
            totals = Some(rest);
        } else if let Some(rest) = line.strip_prefix("summary:") {
            totals = totals.or(Some(rest));
        }
    }
    let events = events.context("no events: line")?;
    let column = events
        .iter()
        .position(|e| *e == "Ir")
        .with_context(|| format!("no Ir among the events {events:?}"))?;
    let totals = totals.context("no totals: or summary: line")?;
    let value = totals
        .split_whitespace()
        .nth(column)
        .with_context(|| format!("no Ir column in {totals:?}"))?;
    value
        .parse()
        .with_context(|| format!("bad Ir total {value:?}"))
}

/// The per-variant table (one column per run) and each variant's ratio to plain weir.
pub fn render(counts: &[Count], runs: u32) -> String {
    let mut proxies: Vec<Proxy> = counts.iter().map(|c| c.proxy).collect();
    proxies.sort_unstable();
    proxies.dedup();
    let get = |proxy: Proxy, run: u32| counts.iter().find(|c| c.proxy == proxy && c.run == run);
    let mut out = String::from("\nIr/request (total Ir / requests)\n");
    out.push_str(&format!("  {:<24}", "variant"));
    for run in 1..=runs {
        out.push_str(&format!("{:>14}", format!("run {run}")));
    }
    out.push_str(&format!("{:>10}\n", "canary"));
    for &proxy in &proxies {
        out.push_str(&format!("  {:<24}", proxy.to_string()));
        let mut canary = None;
        for run in 1..=runs {
            let cell = get(proxy, run).map_or_else(
                || "-".to_string(),
                |c| {
                    canary = Some(c.canary_percent);
                    format!("{:.1}", c.per_request())
                },
            );
            out.push_str(&format!("{cell:>14}"));
        }
        let canary = canary.map_or_else(|| "-".to_string(), |c| format!("{c:.2}%"));
        out.push_str(&format!("{canary:>10}\n"));
    }
    let ratios: Vec<String> = proxies
        .iter()
        .filter(|p| **p != Proxy::Weir)
        .filter_map(|&proxy| {
            let per_run: Vec<f64> = (1..=runs)
                .filter_map(|run| {
                    Some(get(proxy, run)?.per_request() / get(Proxy::Weir, run)?.per_request())
                })
                .collect();
            if per_run.is_empty() {
                return None;
            }
            let cells: Vec<String> = per_run.iter().map(|r| format!("{r:.4}×")).collect();
            Some(format!(
                "  {:<31}{}\n",
                format!("{proxy} / weir"),
                cells.join("  ")
            ))
        })
        .collect();
    if !ratios.is_empty() {
        out.push_str("\nRatios to weir (per run)\n");
        for line in ratios {
            out.push_str(&line);
        }
    }
    let spread: Vec<String> = proxies
        .iter()
        .filter_map(|&proxy| {
            let values: Vec<f64> = (1..=runs)
                .filter_map(|run| Some(get(proxy, run)?.per_request()))
                .collect();
            let (min, max) = values
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            (values.len() > 1).then(|| format!("{proxy} {:.2}%", (max - min) / min * 100.0))
        })
        .collect();
    if !spread.is_empty() {
        out.push_str(&format!(
            "\nSpread between runs (max − min) / min: {}\n",
            spread.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_ir_of_a_dump() {
        let dump = "# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  /work/target/release/weir --log-level warn run
part: 1

desc: I1 cache: 
desc: Timerange: Basic block 123 - 456
desc: Trigger: Client Request: Dump

positions: line
events: Ir
summary: 654321000

fl= (1) ???
fn= (1) main
0 12
";
        assert_eq!(total_ir(dump).unwrap(), 654_321_000);
        let newer = "events: Ir Dr Dw\nfn=(1) f\n0 1 2 3\ntotals: 700 80 9\n";
        assert_eq!(total_ir(newer).unwrap(), 700);
        let other_column = "events: Dr Ir\ntotals: 5 6\nsummary: 1 2\n";
        assert_eq!(
            total_ir(other_column).unwrap(),
            6,
            "totals: wins over summary:"
        );
        assert!(total_ir("events: Dr\ntotals: 5\n").is_err());
        assert!(total_ir("events: Ir\n").is_err());
        assert!(total_ir("totals: 5\n").is_err());
    }

    #[test]
    fn parses_h2load_output() {
        let output = "starting benchmark...
spawning thread #0: 10 total client(s). 20000 total requests
Application protocol: http/1.1
progress: 10% done

finished in 12.34s, 1620.75 req/s, 190.12KB/s
requests: 20000 total, 20000 started, 20000 done, 19998 succeeded, 2 failed, 2 errored, 0 timeout
status codes: 19998 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 2.29MB (2402400) total, 1.70MB (1780000) headers (space savings 0.00%), 136.72KB (140000) data
";
        assert_eq!(
            parse_h2load(output).unwrap(),
            H2loadResult {
                done: 20_000,
                succeeded: 19_998,
                status_2xx: 19_998,
            }
        );
        assert!(parse_h2load("finished in 1s\n").is_err());
    }

    #[test]
    fn renders_counts_and_ratios() {
        let c = |run, proxy, instructions| Count {
            run,
            proxy,
            instructions,
            requests: 1000,
            canary_percent: 10.0,
        };
        let counts = [
            c(1, Proxy::Weir, 30_000_000),
            c(1, Proxy::WeirPolicies, 30_300_000),
            c(2, Proxy::Weir, 30_030_000),
            c(2, Proxy::WeirPolicies, 30_300_000),
        ];
        let text = render(&counts, 2);
        assert!(
            text.contains("  weir                           30000.0       30030.0    10.00%\n"),
            "{text}"
        );
        assert!(
            text.contains("  weir+policies / weir           1.0100×  1.0090×\n"),
            "{text}"
        );
        assert!(text.contains("weir 0.10%"), "{text}");
    }
}
