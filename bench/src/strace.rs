//! Counting a proxy's system calls with `strace -c -f` during a short separate wrk run.
//!
//! strace slows the traced process down by an order of magnitude, so only the counts per request mean
//! anything; they can come out a little low, because a slowed proxy finds more events per `epoll_wait`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::supervisor::{Proc, Supervisor};

/// A running `strace -c`, attached to every process of a proxy.
pub struct Tracer {
    proc: Proc,
    summary: PathBuf,
}

/// Attaches `strace -c -f` to `pids` (pinned to `cpus`) and waits until it reports every attach.
pub fn attach(
    sup: &Arc<Supervisor>,
    strace: &Path,
    taskset: &Path,
    cpus: &str,
    pids: &[u32],
    name: &str,
) -> Result<Tracer> {
    let summary = sup.dir().join(format!("{name}.summary"));
    let mut cmd = Command::new(taskset);
    cmd.arg("-c")
        .arg(cpus)
        .arg(strace)
        .args(["-c", "-f", "-o"])
        .arg(&summary);
    for pid in pids {
        cmd.arg("-p").arg(pid.to_string());
    }
    let proc = sup.spawn(name, cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = proc.exited()? {
            bail!(
                "strace exited with {status} before attaching (is ptrace allowed here?):\n{}",
                proc.output_tail(10)
            );
        }
        let attached = proc
            .output()?
            .lines()
            .filter(|l| l.contains(" attached"))
            .count();
        if attached >= pids.len() {
            return Ok(Tracer { proc, summary });
        }
        if Instant::now() >= deadline {
            bail!(
                "strace attached to {attached} of {} processes within 10s:\n{}",
                pids.len(),
                proc.output_tail(10)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Tracer {
    /// Detaches strace (SIGTERM makes it write its summary) and reads the counts.
    pub fn finish(self) -> Result<Counts> {
        let Tracer { proc, summary } = self;
        let name = proc.name().to_string();
        proc.stop();
        let text = std::fs::read_to_string(&summary)
            .with_context(|| format!("strace ({name}) wrote no summary"))?;
        parse(&text).with_context(|| format!("cannot parse the strace summary:\n{text}"))
    }
}

/// System call counts from `strace -c`.
#[derive(Clone, Debug, PartialEq)]
pub struct Counts {
    /// All calls.
    pub total: u64,
    /// `(syscall, calls)`, most frequent first.
    pub by_call: Vec<(String, u64)>,
}

impl Counts {
    /// Per-request figures for `requests` proxied requests: total and per syscall.
    pub fn to_json(&self, requests: u64) -> Value {
        let per = |n: u64| n as f64 / requests.max(1) as f64;
        json!({
            "requests": requests,
            "syscalls": self.total,
            "syscalls_per_request": per(self.total),
            "by_syscall": self.by_call.iter().map(|(name, calls)| json!({
                "syscall": name,
                "calls": calls,
                "per_request": per(*calls),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Parses the `strace -c` table: `% time  seconds  usecs/call  calls  [errors]  syscall` rows and a `total`.
pub fn parse(text: &str) -> Result<Counts> {
    let mut total = None;
    let mut by_call = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue; // header, separators, "strace: ..." notes
        }
        let calls: u64 = fields[3]
            .parse()
            .with_context(|| format!("bad call count in {line:?}"))?;
        let name = fields[fields.len() - 1];
        if name == "total" {
            total = Some(calls);
        } else {
            by_call.push((name.to_string(), calls));
        }
    }
    by_call.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Counts {
        total: total.context("no total row")?,
        by_call,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_summary() {
        let text = "% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.001869           9       200           writev
 30.00    0.000900           4       210        10 recvfrom
 10.00    0.000300           3       100           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.003069           6       510        10 total
";
        let counts = parse(text).unwrap();
        assert_eq!(counts.total, 510);
        assert_eq!(
            counts.by_call,
            vec![
                ("recvfrom".to_string(), 210),
                ("writev".to_string(), 200),
                ("epoll_wait".to_string(), 100)
            ]
        );
        assert!(parse("% time seconds\n").is_err());
    }
}
