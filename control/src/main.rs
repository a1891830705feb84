//! The `weir` binary: the daemon (`weir run`) and the operator commands in one.

/// mimalloc: per-thread free lists suit the thread-per-core data plane; it cut malloc/free from
/// about a tenth of the proxy's CPU to a few percent in profiles (see bench/README.md). It gives
/// freed memory back to the OS `MIMALLOC_PURGE_DELAY` ms after it is freed (1000 by default; the
/// systemd unit sets 0, which keeps RSS flat across reloads at no measured request-path cost).
/// Options are environment variables read at process start: setting them from code would take
/// `unsafe` FFI, which the workspace forbids.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_control::app::{self, RunOptions, StartError};
use weir_control::telemetry::{self, LogFormat};
use weir_control::upgrade::{self, Inherited, Upgrade};

mod cli;

/// EX_USAGE: the configuration is invalid.
const EXIT_INVALID_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "A traffic-splitting edge proxy for progressive delivery"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (RUST_LOG overrides it), e.g. `info` or `weir=debug,info`.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(flatten)]
    admin: cli::AdminArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve until SIGTERM or SIGINT; SIGHUP reloads the config; SIGUSR2 upgrades: starts the
    /// binary at this one's path again (same arguments), hands it the listening sockets, and
    /// drains and exits once it is ready (or keeps serving if it fails).
    Run {
        /// The config file (watched: changes apply on save).
        #[arg(long, short)]
        config: PathBuf,
        /// Data-plane worker threads (default: the number of cores).
        #[arg(long)]
        workers: Option<usize>,
        /// How long in-flight requests may take to finish on shutdown.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        drain_timeout: Duration,
        /// Log one line per request to stdout, written by its own thread (see
        /// `--access-log-format`).
        #[arg(long)]
        access_log: bool,
        /// The access log's format: `combined` (Apache's, weir's fields appended) or `json`
        /// (one object per line).
        #[arg(long, value_enum, default_value = "combined")]
        access_log_format: AccessFormat,
        /// On SIGUSR2, how long the new process may take to become ready before it is killed
        /// and this one keeps serving.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        upgrade_timeout: Duration,
    },
    /// Check config files: exit 0 when all are valid, 64 otherwise, with every problem on its own line.
    Validate {
        /// Config files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Watch a canary promoted and a failing one rolled back, all on this machine (no setup).
    ///
    /// Starts three local backends, weir and traffic; v2 is rolled out over v1 step by step with
    /// analysis and promoted, then v3, which fails every other request, is rolled back on its own.
    /// Exits 1 if that story does not happen.
    Demo {
        /// Keep everything running afterwards, to try the CLI against it, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Print a weir config made from Argo Rollouts and Flagger manifests (notes on standard error).
    Import(cli::import::ImportArgs),
    #[command(flatten)]
    Operator(cli::CliCommand),
}

/// `--access-log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AccessFormat {
    /// Apache combined, then `key="value"` fields.
    Combined,
    /// One JSON object per line.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    weir_config::parse_duration(text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story: weir's info lines would only repeat it.
    let log_level = match cli.command {
        Command::Demo { .. } if cli.log_level == "info" => "warn",
        _ => cli.log_level.as_str(),
    };
    telemetry::init(cli.log_format, log_level);
    let result = match cli.command {
        Command::Run {
            config,
            workers,
            drain_timeout,
            access_log,
            access_log_format,
            upgrade_timeout,
        } => {
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            run(
                RunOptions {
                    config_path: config,
                    workers,
                    drain_timeout,
                    access_log,
                    access_log_format: match access_log_format {
                        AccessFormat::Combined => weir_proxy::AccessLogFormat::Combined,
                        AccessFormat::Json => weir_proxy::AccessLogFormat::Json,
                    },
                    poll_interval: Duration::from_secs(5),
                },
                upgrade_timeout,
            )
        }
        Command::Validate { files } => return validate(&files),
        Command::Demo { keep } => cli::demo::run(keep),
        Command::Import(args) => cli::import::run(args),
        Command::Operator(command) => cli::run(command, &cli.admin),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: RunOptions, upgrade_timeout: Duration) -> anyhow::Result<ExitCode> {
    // Taken now: a binary replaced at this path later is what an upgrade starts.
    let upgrade = Upgrade {
        exe: std::env::current_exe().context("finding this binary's path")?,
        args: std::env::args_os().skip(1).collect(),
        timeout: upgrade_timeout,
    };
    // Sockets from the weir that started this one (SIGUSR2), if any.
    let mut inherited = Inherited::from_env().context("taking over from the running weir")?;
    // The control plane is light: one thread. The data plane runs its own worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    runtime.block_on(async {
        // Installed before serving, so that an early signal is not lost (or fatal: SIGUSR2's
        // default action ends the process).
        let mut signals = Signals::install()?;
        let running = match app::start_with(options, &mut inherited).await {
            Ok(running) => running,
            Err(error @ StartError::InvalidConfig { .. }) => {
                eprintln!("error: {error}");
                return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
            }
            Err(error) => return Err(error).context("starting weir"),
        };
        if inherited.is_handover() {
            // systemd learns the new main process before the old one can exit.
            upgrade::notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
            inherited
                .ready()
                .context("telling the previous weir this one is ready")?;
            tracing::info!(
                pid = std::process::id(),
                "took over the listening sockets from the previous weir"
            );
        } else {
            upgrade::notify_systemd("READY=1");
        }
        loop {
            match signals.next(&running).await {
                Stop::Terminate => break,
                Stop::Upgrade => match upgrade::hand_over(&running, &upgrade).await {
                    Ok(pid) => {
                        tracing::info!(pid, "upgrade: the new weir serves; draining this one");
                        break;
                    }
                    Err(error) => {
                        tracing::error!(%error, "upgrade failed: this weir keeps serving");
                    }
                },
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Why [`Signals::next`] returned.
enum Stop {
    /// SIGTERM or SIGINT.
    Terminate,
    /// SIGUSR2.
    Upgrade,
}

struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    upgrade: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            upgrade: signal(SignalKind::user_defined2())
                .context("installing the SIGUSR2 handler")?,
        })
    }

    /// Returns on SIGTERM, SIGINT or SIGUSR2; SIGHUP triggers a reload.
    async fn next(&mut self, running: &app::Running) -> Stop {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return Stop::Terminate,
                _ = self.interrupt.recv() => return Stop::Terminate,
                _ = self.upgrade.recv() => {
                    tracing::info!("SIGUSR2: upgrading (starting a new weir and handing it the sockets)");
                    return Stop::Upgrade;
                }
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    running.reload();
                }
            }
        }
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut all_valid = true;
    for file in files {
        match weir_control::reload::load(file) {
            Ok(mut loaded) => {
                println!("{}: ok", file.display());
                // Host names are resolved where weir runs; here an unresolvable one is only
                // reported, so validation works offline.
                let dns = weir_control::resolve::Dns::new(weir_control::resolve::system_lookup());
                if let Err(problems) = dns.resolve_model(&mut loaded.model) {
                    for problem in problems {
                        eprintln!("warning: {problem}");
                    }
                }
            }
            Err(error) => {
                all_valid = false;
                let problems = error.problems();
                eprintln!("{}: {} problem(s)", file.display(), problems.len());
                for problem in problems {
                    eprintln!("{problem}");
                }
            }
        }
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID_CONFIG)
    }
}
