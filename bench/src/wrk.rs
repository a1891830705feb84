//! Running wrk pinned to the load CPUs and parsing its `--latency` report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::supervisor::Supervisor;

/// How wrk is run: the same for every proxy.
#[derive(Clone, Debug)]
pub struct Load {
    pub wrk: PathBuf,
    pub taskset: PathBuf,
    /// `taskset -c` CPU list for wrk (and the upstreams).
    pub cpus: String,
    pub threads: u32,
    pub connections: u32,
}

/// What one wrk run reports.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkResult {
    /// Completed requests ("N requests in").
    pub requests: u64,
    /// "Requests/sec".
    pub requests_per_sec: f64,
    /// Median latency in µs.
    pub p50_us: f64,
    /// 99th percentile latency in µs.
    pub p99_us: f64,
    /// connect + read + write + timeout socket errors.
    pub socket_errors: u64,
    /// Responses with a status other than 2xx or 3xx.
    pub non_2xx_3xx: u64,
}

impl WrkResult {
    /// Socket errors plus non-2xx/3xx responses.
    pub fn errors(&self) -> u64 {
        self.socket_errors + self.non_2xx_3xx
    }
}

impl Load {
    /// `taskset -c CPUS wrk -tT -cC -dNs --latency [-H HEADER]… http://ADDR/`, waited for and parsed.
    pub fn run(
        &self,
        sup: &Arc<Supervisor>,
        name: &str,
        target: SocketAddr,
        seconds: u64,
        headers: &[&str],
    ) -> Result<WrkResult> {
        let mut cmd = Command::new(&self.taskset);
        cmd.arg("-c")
            .arg(&self.cpus)
            .arg(&self.wrk)
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{seconds}s"))
            .arg("--latency");
        for header in headers {
            cmd.arg("-H").arg(header);
        }
        cmd.arg(format!("http://{target}/"));
        let proc = sup.spawn(name, cmd)?;
        let limit = Duration::from_secs(seconds + 30);
        let Some(status) = proc.wait_timeout(limit)? else {
            bail!(
                "wrk ({name}) still running after {}s:\n{}",
                limit.as_secs(),
                proc.output_tail(20)
            );
        };
        let output = proc.output()?;
        if !status.success() {
            bail!(
                "wrk ({name}) failed with {status}:\n{}",
                proc.output_tail(20)
            );
        }
        parse(&output)
            .with_context(|| format!("cannot parse the output of wrk ({name}):\n{output}"))
    }
}

/// Parses the report of `wrk --latency`.
pub fn parse(output: &str) -> Result<WrkResult> {
    let mut requests = None;
    let mut requests_per_sec = None;
    let mut p50_us = None;
    let mut p99_us = None;
    let mut socket_errors = 0;
    let mut non_2xx_3xx = 0;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => p50_us = Some(micros(value)?),
            ["99%", value] => p99_us = Some(micros(value)?),
            [count, "requests", "in", ..] => {
                requests = Some(
                    count
                        .parse::<u64>()
                        .with_context(|| format!("in {line:?}"))?,
                );
            }
            ["Requests/sec:", value] => {
                requests_per_sec = Some(
                    value
                        .parse::<f64>()
                        .with_context(|| format!("in {line:?}"))?,
                );
            }
            _ => {}
        }
        if let Some(counts) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in counts.split(',') {
                let n = part.split_whitespace().nth(1).unwrap_or_default();
                socket_errors += n.parse::<u64>().with_context(|| format!("in {line:?}"))?;
            }
        }
        if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx_3xx = count
                .trim()
                .parse()
                .with_context(|| format!("in {line:?}"))?;
        }
    }
    Ok(WrkResult {
        requests: requests.context("no \"N requests in\" line")?,
        requests_per_sec: requests_per_sec.context("no \"Requests/sec:\" line")?,
        p50_us: p50_us.context("no 50% latency line (was --latency given?)")?,
        p99_us: p99_us.context("no 99% latency line (was --latency given?)")?,
        socket_errors,
        non_2xx_3xx,
    })
}

/// wrk's time format (`412.00us`, `1.23ms`, `2.00s`, `1.50m`) in µs.
fn micros(value: &str) -> Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in latency {value:?}"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad latency {value:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in latency {value:?}"),
    };
    Ok(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 3s test @ http://127.0.0.1:41235/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.07ms  227.11us   4.92ms   83.28%
    Req/Sec    46.54k     2.10k   49.74k    73.33%
  Latency Distribution
     50%  812.00us
     75%    1.14ms
     90%    1.30ms
     99%    1.90ms
  139027 requests in 3.00s, 22.67MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  46292.98
Transfer/sec:      7.55MB
";

    #[test]
    fn parses_a_latency_report() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.requests, 139_027);
        assert!((r.requests_per_sec - 46_292.98).abs() < 1e-6);
        assert!((r.p50_us - 812.0).abs() < 1e-9);
        assert!((r.p99_us - 1900.0).abs() < 1e-9);
        assert_eq!((r.socket_errors, r.non_2xx_3xx, r.errors()), (3, 4, 7));
    }

    #[test]
    fn rejects_a_report_without_latency() {
        let without: String = REPORT
            .lines()
            .filter(|l| !l.trim_start().starts_with("99%"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(parse(&without).is_err());
    }

    #[test]
    fn converts_units() {
        assert_eq!(micros("2.00s").unwrap(), 2e6);
        assert_eq!(micros("1.50m").unwrap(), 90e6);
        assert!(micros("3.0").is_err());
    }
}
