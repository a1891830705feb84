//! The operator commands of the `weir` binary: `get`, `promote`, `abort`, `retry`, `pause`,
//! `resume`, `undo`, `history` and `status`, all clients of weir's admin API (`--admin`).
//!
//! - [`client`]: the HTTP client (hyper-util's legacy client), errors that say what to do.
//! - [`render`]: pure text rendering (tables, the detail view, result and progress lines).
//! - [`sse`]: following `/api/v1/events` for `get --watch`.
//!
//! Exit codes: 0 on success; 1 when weir refuses (401/404/409), cannot be reached, or (for
//! `status`) the rollout ends Degraded; 2 when `status --timeout` passes first.

mod client;
pub(crate) mod demo;
pub(crate) mod import;
mod render;
mod sse;
mod sync;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use weir_control::api::v1::ServiceStatus;
use weir_control::engine::rollout::Phase;

use self::client::{Api, ApiError};
use self::render::Action;

/// Exit code of `status` when the timeout passes before the rollout ends.
const EXIT_TIMEOUT: u8 = 2;
/// How often `status` polls.
const STATUS_POLL: Duration = Duration::from_millis(500);
/// How often `get --watch` redraws without events.
const WATCH_REFRESH: Duration = Duration::from_secs(1);
/// How long `status` tolerates an unreachable admin API (weir restarting) before giving up.
const STATUS_UNREACHABLE_GRACE: Duration = Duration::from_secs(15);
/// The terminal width when `COLUMNS` does not say.
const DEFAULT_WIDTH: usize = 120;

/// The operator commands' global flags: where weir's admin API is, and the token for mutations.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// weir's admin API (`admin.address` in the config): `http://HOST:PORT`, or
    /// `https://HOST:PORT` with `admin.tls`.
    #[arg(
        long,
        global = true,
        env = "WEIR_ADMIN",
        value_name = "URL",
        default_value = "http://127.0.0.1:3100"
    )]
    pub admin: String,
    /// A file holding the admin bearer token (`admin.tokenFile`), needed by mutating commands.
    #[arg(long, global = true, env = "WEIR_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for an `https://` admin API (default: the
    /// system's roots).
    #[arg(long, global = true, env = "WEIR_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The operator commands.
#[derive(clap::Subcommand, Debug)]
pub enum CliCommand {
    /// Show every service as a table, or one service in detail (steps, analysis, events).
    Get {
        /// One service, in detail.
        service: Option<String>,
        /// Redraw on every change until Ctrl-C.
        #[arg(long, short)]
        watch: bool,
    },
    /// Leave a pause or skip the current step; `--full` skips every remaining step and analysis.
    Promote {
        /// The service.
        service: String,
        /// Skip every remaining step and analysis: the canary becomes stable now.
        #[arg(long)]
        full: bool,
    },
    /// Send all traffic back to stable now.
    Abort {
        /// The service.
        service: String,
    },
    /// Start an aborted rollout again from the first step.
    Retry {
        /// The service.
        service: String,
    },
    /// Hold the current step.
    Pause {
        /// The service.
        service: String,
    },
    /// Continue after `pause` or an inconclusive analysis.
    Resume {
        /// The service.
        service: String,
    },
    /// Go back to the previous stable version immediately.
    Undo {
        /// The service.
        service: String,
    },
    /// List a service's revisions.
    History {
        /// The service.
        service: String,
    },
    /// Wait for the rollout to end: exit 0 when Healthy, 1 when Degraded (or the config file
    /// was refused), 2 on timeout (a CI gate). First waits until weir has applied the config
    /// file as it is now, so a status from before an edit is never taken for the outcome.
    Status {
        /// The service.
        service: String,
        /// How long to wait (`500ms`, `10s`, `2m`).
        #[arg(long, default_value = "10m", value_parser = weir_config::parse_duration)]
        timeout: Duration,
        /// The config file weir runs on: `status` waits until weir reports its current content
        /// (SHA-256) applied, or exits 1 with the problems if weir refused it. Default: the
        /// file weir reports (`GET /api/v1/config`) when the admin API is on this machine's
        /// loopback and the file is readable here.
        #[arg(long, short, value_name = "FILE", env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Runs one operator command against the admin API at `args.admin`, with the bearer token in
/// `args.token_file` if given, trusting `args.ca_file` for https. Errors (weir unreachable, a
/// refused command) are for the caller to print; they mean exit 1.
pub fn run(command: CliCommand, args: &AdminArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let api = Api::new(
            &args.admin,
            args.token_file.as_deref(),
            args.ca_file.as_deref(),
        )?;
        match command {
            CliCommand::Get {
                service,
                watch: false,
            } => get(&api, service.as_deref()).await,
            CliCommand::Get {
                service,
                watch: true,
            } => watch(&api, service).await,
            CliCommand::Promote { service, full } => {
                act(&api, &service, Action::Promote { full }).await
            }
            CliCommand::Abort { service } => act(&api, &service, Action::Abort).await,
            CliCommand::Retry { service } => act(&api, &service, Action::Retry).await,
            CliCommand::Pause { service } => act(&api, &service, Action::Pause).await,
            CliCommand::Resume { service } => act(&api, &service, Action::Resume).await,
            CliCommand::Undo { service } => act(&api, &service, Action::Undo).await,
            CliCommand::History { service } => history(&api, &service).await,
            CliCommand::Status {
                service,
                timeout,
                config,
            } => status(&api, &service, timeout, config).await,
        }
    })
}

/// The terminal width: `COLUMNS` when set, else 120.
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|columns| columns.trim().parse().ok())
        .filter(|&columns: &usize| columns >= 40)
        .unwrap_or(DEFAULT_WIDTH)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes to stdout, flushing (progress lines must reach CI logs as they happen).
fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// One frame of `get`: the table, or one service's detail view.
async fn frame(api: &Api, service: Option<&str>) -> Result<String, ApiError> {
    match service {
        None => Ok(render::render_table(&api.services().await?, width())),
        Some(name) => Ok(render::render_detail(&api.service(name).await?)),
    }
}

async fn get(api: &Api, service: Option<&str>) -> anyhow::Result<ExitCode> {
    out(&frame(api, service).await?)?;
    Ok(ExitCode::SUCCESS)
}

/// `get --watch`: redraws on every event and every second; on a terminal in place (ANSI), else
/// each changed frame after a blank line. Stops on Ctrl-C.
async fn watch(api: &Api, service: Option<String>) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    // The first frame must work: a wrong --admin is an error, not an endless retry.
    let mut previous = frame(api, service.as_deref()).await?;
    let changed = Arc::new(Notify::new());
    let follower = tokio::spawn(sse::follow(api.clone(), service.clone(), changed.clone()));
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut refresh = tokio::time::interval(WATCH_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let title = match &service {
        Some(name) => format!("weir get {name} --watch"),
        None => "weir get --watch".into(),
    };
    if terminal {
        out("\x1b[2J")?;
        draw(&title, api.base(), &previous)?;
    } else {
        out(&previous)?;
    }
    refresh.tick().await;
    let result = loop {
        tokio::select! {
            _ = &mut ctrl_c => break Ok(ExitCode::SUCCESS),
            _ = refresh.tick() => {}
            () = changed.notified() => {}
        }
        let text = match frame(api, service.as_deref()).await {
            Ok(text) => text,
            Err(error) => format!("{error}\n(retrying every second)\n"),
        };
        let drawn = if terminal {
            draw(&title, api.base(), &text)
        } else if text != previous {
            out(&format!("\n{text}"))
        } else {
            Ok(())
        };
        if let Err(error) = drawn {
            break Err(error);
        }
        previous = text;
    };
    follower.abort();
    if terminal {
        let _ = out("\n");
    }
    result
}

/// Redraws the screen in place: home, each line cleared to its end, the rest of the screen
/// cleared. Lines are cut to the width so a redraw never scrolls sideways into the next line.
fn draw(title: &str, base: &str, frame: &str) -> anyhow::Result<()> {
    let width = width();
    let header = format!(
        "{title}  ({base}, {} UTC, Ctrl-C to stop)",
        render::clock(now_ms())
    );
    let mut screen = String::from("\x1b[H");
    for line in std::iter::once(header.as_str())
        .chain(std::iter::once(""))
        .chain(frame.lines())
    {
        screen.push_str(&render::truncate(line, width));
        screen.push_str("\x1b[K\n");
    }
    screen.push_str("\x1b[J");
    out(&screen)
}

/// `promote`, `abort`, …: POST, then one line saying what happened.
async fn act(api: &Api, name: &str, action: Action) -> anyhow::Result<ExitCode> {
    // The status just before, for the wording ("promoted step 5"); the POST decides.
    let before = api.service(name).await.ok();
    let full = matches!(action, Action::Promote { full: true });
    let after = api.command(name, action.verb(), full).await?;
    out(&format!(
        "{}\n",
        render::action_result(action, before.as_ref(), &after)
    ))?;
    Ok(ExitCode::SUCCESS)
}

async fn history(api: &Api, name: &str) -> anyhow::Result<ExitCode> {
    let history = api.history(name).await?;
    out(&render::render_history(
        &history.name,
        &history.revisions,
        width(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `status`: polls until the rollout ends. Prints a line whenever the phase, step, weight or
/// message changes, the pause reason once per pause, and a final line with the outcome.
async fn status(
    api: &Api,
    name: &str,
    timeout: Duration,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    // A status from before the config file's current content is stale: wait for it first.
    let generation = match sync::applied(api, config, deadline).await? {
        sync::Synced::Generation(generation) => generation,
        sync::Synced::Unknown => 0,
        sync::Synced::Refused(lines) => {
            out(&lines)?;
            return Ok(ExitCode::FAILURE);
        }
        sync::Synced::TimedOut(line) => {
            out(&line)?;
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
    };
    let mut poll = tokio::time::interval(STATUS_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<ServiceStatus> = None;
    let mut printed_key = None;
    let mut printed_pause = None;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = poll.tick() => {}
            () = tokio::time::sleep_until(deadline) => {
                let line = match &last {
                    Some(status) => format!(
                        "{}: timed out after {}: still {:?}, step {}, weight {} — {}",
                        status.name,
                        render::duration(timeout),
                        status.phase,
                        render::step_label(status),
                        render::percent(status.canary_weight),
                        status.message
                    ),
                    None => format!("{name}: timed out after {}", render::duration(timeout)),
                };
                out(&format!("{line}\n"))?;
                return Ok(ExitCode::from(EXIT_TIMEOUT));
            }
        }
        let status = match api.service(name).await {
            Ok(status) => {
                if unreachable_since.take().is_some() {
                    eprintln!("{name}: weir's admin API answers again");
                }
                status
            }
            // Tolerate weir restarting mid-rollout (its state persists), for a while.
            Err(error @ ApiError::Unreachable { .. }) if last.is_some() => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    eprintln!("{name}: {error} (retrying)");
                    Instant::now()
                });
                if since.elapsed() >= STATUS_UNREACHABLE_GRACE {
                    return Err(error.into());
                }
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if status.observed_generation < generation {
            // Not yet rebuilt for the config just applied.
            continue;
        }
        match status.phase {
            Phase::Healthy => {
                out(&format!("{}: Healthy — {}\n", status.name, status.message))?;
                return Ok(ExitCode::SUCCESS);
            }
            Phase::Degraded => {
                out(&format!("{}: Degraded — {}\n", status.name, status.message))?;
                return Ok(ExitCode::FAILURE);
            }
            Phase::Progressing | Phase::Paused => {}
        }
        let key = render::progress_key(&status);
        if printed_key.as_ref() != Some(&key) {
            out(&format!("{}\n", render::progress_line(&status, now_ms())))?;
            printed_key = Some(key);
        }
        let pause = status
            .details
            .as_ref()
            .and_then(|d| d.pause_reason.clone())
            .filter(|_| status.phase == Phase::Paused)
            .map(|reason| (status.revision, status.step_index, reason));
        if let Some(pause) = &pause {
            if printed_pause.as_ref() != Some(pause) {
                out(&format!(
                    "{}: paused — {}; still waiting (timeout {})\n",
                    status.name,
                    render::pause_reason(&pause.2),
                    render::duration(timeout)
                ))?;
            }
        }
        printed_pause = pause;
        last = Some(status);
    }
}
