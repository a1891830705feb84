//! weir-bench: measures weir, nginx and HAProxy in the same run under identical conditions.
//!
//! Two nginx upstreams (stable and canary) and wrk share the load CPU; each proxy, with one worker and the
//! same 90/10 split, runs alone on the proxy CPU. Rounds interleave the proxies (weir, nginx, HAProxy, weir,
//! …); every proxy is freshly started, warmed up, then measured: wrk's requests/s and latency percentiles,
//! the proxy's CPU time per request from `/proc/PID/stat`, and the canary share from the upstreams'
//! `stub_status` counters. The report gives every round, the medians, and weir's ratios to the others.
//! Normally started through `bench/run`, which installs the tools and builds weir first.
//!
//! `weir-bench rollback` is the rollout benchmark instead (see `rollout.rs`): weir in-process, how
//! fast its builtin analysis rolls back a canary that starts failing, and whether it leaves healthy
//! canaries alone. `weir-bench proxy` is the same as no subcommand.

mod callgrind;
mod configs;
mod environment;
mod grpc;
mod http;
mod measure;
mod procstat;
mod reload;
mod report;
mod rollout;
mod rollout_report;
mod strace;
mod supervisor;
mod wrk;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::environment::{Environment, Tools};
use crate::measure::{Bench, Proxy};
use crate::report::{Report, Settings};
use crate::supervisor::{ShutdownGuard, Supervisor};
use crate::wrk::Load;

/// weir's benchmarks. Without a subcommand: weir against nginx and HAProxy (same split, one worker
/// each, the same CPU pinning), as `weir-bench proxy`.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    proxy: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// weir against nginx and HAProxy (the default): CPU per request, requests/s, latency.
    Proxy(Args),
    /// Rollouts: time from a failing canary's first 5xx to canary weight 0, and false rollbacks
    /// of healthy canaries (weir in-process, no external tools).
    Rollback(rollout::RollbackArgs),
    /// Deterministic CPU: user-space instructions per request of weir, weir with unmatched
    /// policies and weir with a sticky cookie, under valgrind's callgrind (exactly N requests).
    Callgrind(callgrind::CallgrindArgs),
    /// Config reloads: weir's resident memory and reload time over repeated SIGHUPs of a large
    /// config, and the admin API's latency meanwhile.
    Reload(reload::ReloadArgs),
    /// gRPC unary calls per second: h2load straight to a tonic server and through weir (h2c),
    /// rounds alternating; optionally weir's instructions per call under callgrind.
    Grpc(grpc::GrpcArgs),
    /// The gRPC benchmark's server (started by `weir-bench grpc`).
    #[command(hide = true)]
    GrpcServer(grpc::ServerArgs),
}

/// Benchmarks weir against nginx and HAProxy: same split, one worker each, the same CPU pinning.
#[derive(Debug, clap::Args)]
struct Args {
    /// Length of each measured run: whole seconds, as `10s`, `1m` or `10`.
    #[arg(long, default_value = "10s", value_parser = parse_positive_secs)]
    duration: u64,

    /// Warmup before each measured run, on the freshly started proxy (`0` for none).
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    warmup: u64,

    /// Rounds; each runs every selected proxy once, in the order weir, nginx, HAProxy.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,

    /// wrk connections (kept alive for the whole run).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,

    /// wrk threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,

    /// Proxies to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "weir,weir-policies,nginx,haproxy"
    )]
    only: Vec<Proxy>,

    /// CPU list (`taskset -c`) for the proxy under test.
    #[arg(long, default_value = "0")]
    proxy_cpus: String,

    /// CPU list (`taskset -c`) for wrk and the two upstreams.
    #[arg(long, default_value = "1")]
    load_cpus: String,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also count each proxy's system calls per request with `strace -c -f`, in a separate traced run.
    #[arg(long)]
    syscalls: bool,

    /// Length of the traced run of --syscalls.
    #[arg(long, default_value = "3s", value_parser = parse_positive_secs)]
    syscalls_duration: u64,

    /// The weir binary [default: `weir` next to this executable].
    #[arg(long, env = "WEIR_BIN", value_name = "PATH")]
    weir: Option<PathBuf>,

    /// An extra argument for `weir run` (repeatable), e.g. --weir-arg=--log-level --weir-arg=warn.
    #[arg(long = "weir-arg", value_name = "ARG", allow_hyphen_values = true)]
    weir_args: Vec<String>,

    /// Keep the temp dir (configs and every process's output) and print its path.
    #[arg(long)]
    keep_temp: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.proxy),
        Some(Command::Proxy(args)) => run(args),
        Some(Command::Rollback(args)) => rollout::run(&args),
        Some(Command::Callgrind(args)) => callgrind::run(&args),
        Some(Command::Reload(args)) => reload::run(&args),
        Some(Command::Grpc(args)) => grpc::run(&args),
        Some(Command::GrpcServer(args)) => grpc::serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let mut proxies = args.only.clone();
    proxies.sort_unstable();
    proxies.dedup();
    if args.threads > args.connections {
        bail!(
            "--threads ({}) must not exceed --connections ({})",
            args.threads,
            args.connections
        );
    }

    let weir = if proxies.iter().any(|p| p.is_weir()) {
        Some(weir_binary(args.weir.as_ref())?)
    } else {
        None
    };
    let tools = Tools::find(
        weir,
        proxies.contains(&Proxy::Haproxy),
        args.syscalls,
        false,
    )?;
    let clock_ticks = procstat::clock_ticks()?;
    let environment = Environment::collect(&tools, clock_ticks);
    let settings = Settings {
        proxies: proxies.clone(),
        rounds: args.rounds,
        duration_secs: args.duration,
        warmup_secs: args.warmup,
        threads: args.threads,
        connections: args.connections,
        proxy_cpus: args.proxy_cpus.clone(),
        load_cpus: args.load_cpus.clone(),
        syscalls_secs: args.syscalls.then_some(args.syscalls_duration),
    };
    print!("{}", Report::header(&environment, &settings));
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;

    let sup = Supervisor::new(args.keep_temp)?;
    let _shutdown = ShutdownGuard(sup.clone());
    supervisor::stop_on_signals(sup.clone())?;

    let load = Load {
        wrk: tools.wrk.clone(),
        taskset: tools.taskset.clone(),
        cpus: args.load_cpus.clone(),
        threads: args.threads,
        connections: args.connections,
    };
    let bench = Bench::start(
        sup.clone(),
        tools,
        load,
        args.proxy_cpus.clone(),
        args.weir_args.clone(),
        clock_ticks,
        args.warmup,
    )?;

    let total = args.rounds as usize * proxies.len();
    let mut measurements = Vec::with_capacity(total);
    for round in 1..=args.rounds {
        for &proxy in &proxies {
            eprint!(
                "[{}/{total}] round {round}: {proxy} … ",
                measurements.len() + 1
            );
            let m = bench
                .measure(proxy, round, args.duration)
                .inspect_err(|_| eprintln!("failed"))
                .with_context(|| format!("round {round}, {proxy}"))?;
            eprintln!(
                "{:.0} requests/s, {:.2}µs CPU/request",
                m.wrk.requests_per_sec,
                m.cpu_us_per_request()
            );
            measurements.push(m);
        }
    }

    let mut syscalls = Vec::new();
    if args.syscalls {
        for &proxy in &proxies {
            eprint!("[syscalls] {proxy} under strace … ");
            let run = bench
                .count_syscalls(proxy, args.syscalls_duration)
                .inspect_err(|_| eprintln!("failed"))
                .with_context(|| format!("counting {proxy}'s system calls"))?;
            eprintln!(
                "{:.2} syscalls/request",
                run.counts.total as f64 / run.requests.max(1) as f64
            );
            syscalls.push(run);
        }
    }

    let report = Report {
        environment: &environment,
        settings: &settings,
        rounds: &measurements,
        syscalls: &syscalls,
    };
    print!("{}", report.render());
    if let Some(path) = &args.json {
        write_json(path, &report.to_json())?;
    }
    Ok(())
}

/// The weir binary: `path` if given, else `weir` next to this executable.
pub(crate) fn weir_binary(path: Option<&PathBuf>) -> Result<PathBuf> {
    match path {
        Some(path) => Ok(path.clone()),
        None => Ok(std::env::current_exe()
            .context("cannot find this executable to locate weir next to it")?
            .with_file_name("weir")),
    }
}

/// Whole seconds from `10s`, `2m`, `1h` or a bare number.
fn parse_secs(text: &str) -> Result<u64, String> {
    let (number, scale) = match text.as_bytes().last() {
        Some(b's') => (&text[..text.len() - 1], 1),
        Some(b'm') => (&text[..text.len() - 1], 60),
        Some(b'h') => (&text[..text.len() - 1], 3600),
        _ => (text, 1),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("expected whole seconds like 10s, 2m or 10, got {text:?}"))
}

fn parse_positive_secs(text: &str) -> Result<u64, String> {
    match parse_secs(text)? {
        0 => Err("must be at least 1s".to_string()),
        n => Ok(n),
    }
}

/// Writes the results as pretty JSON to `path`.
pub(crate) fn write_json(path: &std::path::Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot serialise the results")?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("\nJSON written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_secs("10s"), Ok(10));
        assert_eq!(parse_secs("2m"), Ok(120));
        assert_eq!(parse_secs("7"), Ok(7));
        assert_eq!(parse_secs("0"), Ok(0));
        assert!(parse_secs("1.5s").is_err());
        assert!(parse_secs("500ms").is_err());
        assert!(parse_positive_secs("0s").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["weir-bench", "--only", "haproxy,nginx", "--duration", "3s"])
                .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.proxy.only, vec![Proxy::Haproxy, Proxy::Nginx]);
        assert_eq!(cli.proxy.duration, 3);

        let cli = Cli::try_parse_from(["weir-bench", "proxy", "--rounds", "2"]).unwrap();
        match cli.command {
            Some(Command::Proxy(args)) => assert_eq!(args.rounds, 2),
            other => panic!("{other:?}"),
        }

        let cli = Cli::try_parse_from(["weir-bench", "rollback"]).unwrap();
        match cli.command {
            Some(Command::Rollback(args)) => {
                assert_eq!((args.rate, args.repeats, args.rollouts), (1000, 10, 50));
                assert!(args.json.is_none());
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "weir-bench",
            "rollback",
            "--rate",
            "500",
            "--repeats",
            "3",
            "--rollouts",
            "0",
            "--json",
            "r.json",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Rollback(args)) => {
                assert_eq!((args.rate, args.repeats, args.rollouts), (500, 3, 0));
                assert_eq!(args.json, Some(PathBuf::from("r.json")));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["weir-bench", "--rounds", "2", "rollback"]).is_err(),
            "proxy options do not mix with a subcommand"
        );
        assert!(Cli::try_parse_from(["weir-bench", "rollback", "--rate", "0"]).is_err());

        let cli = Cli::try_parse_from(["weir-bench", "callgrind"]).unwrap();
        match cli.command {
            Some(Command::Callgrind(args)) => {
                assert_eq!(
                    (args.requests, args.connections, args.runs),
                    (20_000, 10, 2)
                );
                assert_eq!(
                    args.only,
                    vec![Proxy::Weir, Proxy::WeirPolicies, Proxy::WeirSticky]
                );
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "weir-bench",
            "callgrind",
            "--requests",
            "500",
            "--only",
            "weir,weir-policies",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Callgrind(args)) => {
                assert_eq!(args.requests, 500);
                assert_eq!(args.only, vec![Proxy::Weir, Proxy::WeirPolicies]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["weir-bench", "callgrind", "--requests", "0"]).is_err());
        let cli = Cli::try_parse_from([
            "weir-bench",
            "callgrind",
            "--only",
            "weir,weir-ingress-ratelimit",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Callgrind(args)) => {
                assert_eq!(args.only, vec![Proxy::Weir, Proxy::WeirIngressRatelimit]);
            }
            other => panic!("{other:?}"),
        }

        let cli = Cli::try_parse_from(["weir-bench", "grpc"]).unwrap();
        match cli.command {
            Some(Command::Grpc(args)) => {
                assert_eq!(
                    (args.calls, args.warmup_calls, args.rounds, args.callgrind),
                    (100_000, 10_000, 3, 0)
                );
                assert_eq!((args.connections, args.streams), (10, 10));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["weir-bench", "grpc", "--streams", "0"]).is_err());
        assert!(Cli::try_parse_from(["weir-bench", "grpc", "--calls", "0"]).is_err());
        let cli = Cli::try_parse_from(["weir-bench", "grpc-server", "--port", "50051"]).unwrap();
        assert!(matches!(cli.command, Some(Command::GrpcServer(a)) if a.port == 50051));
    }
}
