//! The exec provider: a command run on weir's host, judged on its exit status.
//!
//! No shell is involved: the command and each arg (after variable substitution) are passed as
//! argv. The child gets a null stdin, weir's environment plus the provider's `env`, and its own
//! process group, so a timeout kills whatever it started too (after a normal exit, a background
//! process that let go of stdout and stderr is left alone: its group id may be reused once the
//! command is reaped). stdout and stderr are drained concurrently, each keeping only its last
//! [`TAIL`] bytes.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};
use weir_config::ExecProvider;

use crate::engine::analysis::{show_duration, substitute, Measured, Outcome, Vars};

/// The most of each output stream kept (its end).
pub(super) const TAIL: usize = 64 * 1024;

/// The longest value kept from the last line, in bytes.
const LINE_LIMIT: usize = 4096;

/// Runs the command within the provider's timeout.
///
/// Exit 0 is a value; any other exit status (or death by a signal) is a value marked
/// [`Measured::failed`], so the measurement fails whatever the conditions say. The value is the last
/// non-empty line of stdout (a JSON number when it parses as a finite one, else a string; `""`
/// without output). A command that cannot be started, or runs past the timeout (it is then killed
/// with its process group), is an error.
pub async fn exec(p: &ExecProvider, vars: &Vars) -> Outcome {
    let command = substitute(&p.command, vars);
    if !command.starts_with('/') && command.contains('/') {
        return Outcome::Error(format!(
            "exec `{command}`: a relative path; write an absolute path or a bare name looked up on PATH"
        ));
    }
    let mut cmd = tokio::process::Command::new(&command);
    // systemd's notify socket is weir's alone: a command must not be able to say READY,
    // STOPPING or MAINPID for weir (the unit has `NotifyAccess=all` for upgrades).
    cmd.env_remove("NOTIFY_SOCKET")
        .args(p.args.iter().map(|arg| substitute(arg, vars)))
        .envs(p.env.iter().map(|(k, v)| (k, substitute(v, vars))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(error) => {
            return Outcome::Error(format!("exec `{command}` cannot be started: {error}"))
        }
    };
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let (out, err, status) = tokio::join!(tail(stdout), tail(stderr), child.wait());
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(p.timeout, run).await {
        Ok(done) => done,
        Err(_) => {
            // Not reaped yet, so the group id cannot have been reused.
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            return Outcome::Error(format!(
                "exec `{command}` timed out after {}; killed",
                show_duration(p.timeout)
            ));
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(error) => return Outcome::Error(format!("exec `{command}`: waiting for it: {error}")),
    };
    let line = last_line(&out);
    let value = match (line.parse::<i64>(), line.parse::<f64>()) {
        (Ok(n), _) => n.into(),
        (_, Ok(x)) if x.is_finite() => serde_json::Number::from_f64(x)
            .map_or_else(|| line.clone().into(), serde_json::Value::Number),
        _ => serde_json::Value::String(line.clone()),
    };
    let mut measured = Measured::value(value);
    if !status.success() {
        let said = if line.is_empty() {
            last_line(&err)
        } else {
            line
        };
        let said = if said.is_empty() {
            "(no output)".to_string()
        } else {
            said
        };
        measured.failed = Some(format!("exec `{command}` {}: {said}", exited(status)));
    }
    Outcome::Value(measured)
}

/// "exited with status 1", "was killed by signal 9".
fn exited(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// Reads a stream to its end, keeping its last [`TAIL`] bytes.
async fn tail(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut stream) = stream else {
        return Vec::new();
    };
    let mut kept = Vec::with_capacity(8 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * TAIL {
                    kept.drain(..kept.len() - TAIL);
                }
            }
        }
    }
    if kept.len() > TAIL {
        kept.drain(..kept.len() - TAIL);
    }
    kept
}

/// The last non-empty line, trimmed and cut to [`LINE_LIMIT`] bytes.
pub(super) fn last_line(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or("");
    let mut cut = line.len().min(LINE_LIMIT);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    line[..cut].to_string()
}

#[cfg(test)]
mod tests;
