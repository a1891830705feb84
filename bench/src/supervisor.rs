//! Every process the harness starts and the temp dir it writes to, with cleanup on success, error, panic
//! and signals.
//!
//! Each child runs in its own process group (so a terminal Ctrl-C reaches only the harness, which then stops
//! the children in order) with stdout and stderr going to `<name>.log` in the temp dir. Stopping sends
//! SIGTERM to the child's process group (an nginx master and its workers), waits up to five seconds, then
//! sends SIGKILL. A group is signalled only while its leader has not been reaped, so the id cannot have been
//! reused by an unrelated process.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

/// How long stopped processes get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Owner of the temp dir and of every started child process.
pub struct Supervisor {
    dir: PathBuf,
    keep_dir: bool,
    state: Mutex<State>,
}

struct State {
    /// Set by [`Supervisor::shutdown`]; no process is started afterwards.
    closed: bool,
    children: Vec<Tracked>,
}

struct Tracked {
    name: String,
    child: Child,
}

impl Supervisor {
    /// Creates a fresh temp dir (`$TMPDIR/weir-bench-*`). With `keep_dir` it survives the run, for debugging.
    pub fn new(keep_dir: bool) -> Result<Arc<Supervisor>> {
        let base = std::env::temp_dir();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut attempt = 0u32;
        let dir = loop {
            let candidate = base.join(format!(
                "weir-bench-{}-{:x}",
                std::process::id(),
                nanos.wrapping_add(attempt)
            ));
            match fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", candidate.display()))
                }
            }
        };
        // nginx started as root runs its workers as `nobody`; they must be able to reach the temp paths.
        set_mode(&dir, 0o755)?;
        Ok(Arc::new(Supervisor {
            dir,
            keep_dir,
            state: Mutex::new(State {
                closed: false,
                children: Vec::new(),
            }),
        }))
    }

    /// The temp dir; removed by [`Supervisor::shutdown`] unless kept.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `cmd` in its own process group with stdout and stderr appended to `<name>.log` in the temp dir.
    pub fn spawn(self: &Arc<Self>, name: &str, mut cmd: Command) -> Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot reopen {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let mut state = self.lock();
        if state.closed {
            bail!("not starting {name}: shutting down");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let pid = child.id();
        state.children.push(Tracked {
            name: name.to_string(),
            child,
        });
        Ok(Proc {
            sup: Arc::clone(self),
            pid,
            name: name.to_string(),
            log,
        })
    }

    /// Stops every remaining child and removes the temp dir (unless kept). Idempotent.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        let first = !state.closed;
        state.closed = true;
        let children = std::mem::take(&mut state.children);
        terminate(children);
        if first {
            if self.keep_dir {
                eprintln!(
                    "weir-bench: kept configs and logs in {}",
                    self.dir.display()
                );
            } else if let Err(e) = fs::remove_dir_all(&self.dir) {
                eprintln!("weir-bench: cannot remove {}: {e}", self.dir.display());
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (a list of children); keep going so cleanup runs.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn try_wait(&self, pid: u32) -> Result<Option<ExitStatus>> {
        let mut state = self.lock();
        let Some(tracked) = state.children.iter_mut().find(|t| t.child.id() == pid) else {
            bail!("process {pid} is no longer tracked");
        };
        tracked
            .child
            .try_wait()
            .with_context(|| format!("cannot check on {}", tracked.name))
    }

    fn stop(&self, pid: u32) {
        let mut state = self.lock();
        if let Some(at) = state.children.iter().position(|t| t.child.id() == pid) {
            let tracked = state.children.swap_remove(at);
            terminate(vec![tracked]);
        }
    }
}

/// Stops the harness's children when it receives SIGINT, SIGTERM or SIGHUP, then exits with 128 + 2.
pub fn stop_on_signals(sup: Arc<Supervisor>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot create the signal runtime")?;
    let (mut int, mut term, mut hup) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        )
    };
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let name = runtime.block_on(async {
                tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                }
            });
            eprintln!("\nweir-bench: {name}: stopping all started processes");
            sup.shutdown();
            std::process::exit(130);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Calls [`Supervisor::shutdown`] when dropped: at the end of `main`, on error and on panic.
pub struct ShutdownGuard(pub Arc<Supervisor>);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A started child process; stopped when dropped.
pub struct Proc {
    sup: Arc<Supervisor>,
    pid: u32,
    name: String,
    log: PathBuf,
}

impl Proc {
    /// The process id (for `taskset`-wrapped commands, the command's own id: `taskset` execs it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its exit status if it has exited.
    pub fn exited(&self) -> Result<Option<ExitStatus>> {
        self.sup.try_wait(self.pid)
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn output(&self) -> Result<String> {
        let bytes =
            fs::read(&self.log).with_context(|| format!("cannot read {}", self.log.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The last `lines` lines of its output, indented, for error messages.
    pub fn output_tail(&self, lines: usize) -> String {
        match self.output() {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                let tail = &all[all.len().saturating_sub(lines)..];
                if tail.is_empty() {
                    "    (no output)".to_string()
                } else {
                    tail.iter()
                        .map(|l| format!("    {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            }
            Err(e) => format!("    ({e:#})"),
        }
    }

    /// Stops it now (what dropping does).
    pub fn stop(self) {}
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sup.stop(self.pid);
    }
}

/// SIGTERM to each live child's process group, up to [`GRACE`] to exit, then SIGKILL; reaps all.
fn terminate(mut children: Vec<Tracked>) {
    let mut live: Vec<&mut Tracked> = Vec::new();
    for tracked in &mut children {
        if let Ok(None) = tracked.child.try_wait() {
            signal_group(tracked.child.id(), "TERM");
            live.push(tracked);
        }
    }
    let deadline = Instant::now() + GRACE;
    while !live.is_empty() && Instant::now() < deadline {
        live.retain_mut(|t| matches!(t.child.try_wait(), Ok(None)));
        std::thread::sleep(Duration::from_millis(20));
    }
    for tracked in live {
        if let Ok(None) = tracked.child.try_wait() {
            eprintln!(
                "weir-bench: {} did not stop within {}s of SIGTERM, killing it",
                tracked.name,
                GRACE.as_secs()
            );
            signal_group(tracked.child.id(), "KILL");
            if let Err(e) = tracked.child.wait() {
                eprintln!("weir-bench: cannot reap {}: {e}", tracked.name);
            }
        }
    }
}

/// Sends `signal` to the process group led by `pid` (the shell's `kill`, so no unsafe code and no procps).
fn signal_group(pid: u32, signal: &str) {
    let result = Command::new("sh")
        .args(["-c", "kill -s \"$1\" -- \"-$2\"", "sh", signal])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = result {
        eprintln!("weir-bench: cannot send SIG{signal} to process group {pid}: {e}");
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}
