//! Medians, ratios, the printed tables and the JSON document of a run.

use serde_json::{json, Map, Value};

use crate::configs::CANARY_PERCENT;
use crate::environment::Environment;
use crate::measure::{Measurement, Proxy, SyscallRun};

/// How the run was set up (printed and stored with the results).
#[derive(Clone, Debug)]
pub struct Settings {
    pub proxies: Vec<Proxy>,
    pub rounds: u32,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    pub threads: u32,
    pub connections: u32,
    pub proxy_cpus: String,
    pub load_cpus: String,
    pub syscalls_secs: Option<u64>,
}

impl Settings {
    fn to_json(&self) -> Value {
        json!({
            "proxies": self.proxies.iter().map(|p| p.id()).collect::<Vec<_>>(),
            "rounds": self.rounds,
            "duration_secs": self.duration_secs,
            "warmup_secs": self.warmup_secs,
            "wrk_threads": self.threads,
            "wrk_connections": self.connections,
            "proxy_cpus": self.proxy_cpus,
            "load_cpus": self.load_cpus,
            "canary_weight_percent": CANARY_PERCENT,
            "syscalls_secs": self.syscalls_secs,
        })
    }
}

/// The median of each figure over one proxy's rounds.
#[derive(Clone, Debug)]
struct Summary {
    proxy: Proxy,
    requests_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_request: f64,
    cpu_percent: f64,
    canary_percent: f64,
    errors: u64,
}

impl Summary {
    fn of(proxy: Proxy, rounds: &[Measurement]) -> Option<Summary> {
        let mine: Vec<&Measurement> = rounds.iter().filter(|m| m.proxy == proxy).collect();
        let med = |f: fn(&Measurement) -> f64| median(mine.iter().map(|m| f(m)).collect());
        Some(Summary {
            proxy,
            requests_per_sec: med(|m| m.wrk.requests_per_sec)?,
            p50_us: med(|m| m.wrk.p50_us)?,
            p99_us: med(|m| m.wrk.p99_us)?,
            cpu_us_per_request: med(Measurement::cpu_us_per_request)?,
            cpu_percent: med(Measurement::cpu_percent)?,
            canary_percent: med(Measurement::canary_percent)?,
            errors: mine.iter().map(|m| m.wrk.errors()).sum(),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "requests_per_sec": self.requests_per_sec,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "cpu_us_per_request": self.cpu_us_per_request,
            "cpu_percent": self.cpu_percent,
            "canary_percent": self.canary_percent,
            "errors": self.errors,
        })
    }
}

/// weir against another proxy: ratios of the medians, and of each round's pair.
#[derive(Clone, Debug)]
struct Ratio {
    subject: Proxy,
    other: Proxy,
    cpu_per_request: f64,
    requests_per_sec: f64,
    /// `(round, cpu_per_request, requests_per_sec)`.
    per_round: Vec<(u32, f64, f64)>,
}

/// A finished run: environment, settings, measurements and optional syscall counts.
pub struct Report<'a> {
    pub environment: &'a Environment,
    pub settings: &'a Settings,
    pub rounds: &'a [Measurement],
    pub syscalls: &'a [SyscallRun],
}

impl Report<'_> {
    fn summaries(&self) -> Vec<Summary> {
        self.settings
            .proxies
            .iter()
            .filter_map(|p| Summary::of(*p, self.rounds))
            .collect()
    }

    fn ratios(&self, summaries: &[Summary]) -> Vec<Ratio> {
        let find = |p: Proxy| summaries.iter().find(|s| s.proxy == p);
        [
            (Proxy::Weir, Proxy::Haproxy),
            (Proxy::Weir, Proxy::Nginx),
            (Proxy::WeirPolicies, Proxy::Weir),
            (Proxy::WeirSticky, Proxy::Weir),
            (Proxy::WeirRatelimit, Proxy::Weir),
            (Proxy::WeirIngress, Proxy::Weir),
            (Proxy::WeirIngressRatelimit, Proxy::Weir),
        ]
        .into_iter()
        .filter_map(|(subject, other)| {
            let mine = find(subject)?;
            let theirs = find(other)?;
            let per_round = (1..=self.settings.rounds)
                .filter_map(|round| {
                    let get = |p: Proxy| {
                        self.rounds
                            .iter()
                            .find(|m| m.round == round && m.proxy == p)
                    };
                    let (w, o) = (get(subject)?, get(other)?);
                    Some((
                        round,
                        w.cpu_us_per_request() / o.cpu_us_per_request(),
                        w.wrk.requests_per_sec / o.wrk.requests_per_sec,
                    ))
                })
                .collect();
            Some(Ratio {
                subject,
                other,
                cpu_per_request: mine.cpu_us_per_request / theirs.cpu_us_per_request,
                requests_per_sec: mine.requests_per_sec / theirs.requests_per_sec,
                per_round,
            })
        })
        .collect()
    }

    /// The header printed before the run starts: environment and setup.
    pub fn header(environment: &Environment, settings: &Settings) -> String {
        let mut out = String::new();
        let names: Vec<String> = settings.proxies.iter().map(|p| p.to_string()).collect();
        out.push_str(&format!(
            "weir-bench: {} with the same {}/{CANARY_PERCENT} split, 1 worker each, keep-alive to clients and upstreams\n\n",
            names.join(" vs "),
            100 - CANARY_PERCENT
        ));
        out.push_str("Environment\n");
        let rows: Vec<Vec<String>> = environment
            .rows()
            .into_iter()
            .map(|(label, value)| vec![label.to_string(), value])
            .collect();
        out.push_str(&table(&[], "ll", &rows));
        out.push_str("\nSetup\n");
        out.push_str(&format!(
            "  proxy pinned to CPU {} (taskset -c {}); wrk ({} thread{} × {} connections) and the two nginx upstreams \
             (1 worker each) pinned to CPU {}\n",
            settings.proxy_cpus,
            settings.proxy_cpus,
            settings.threads,
            if settings.threads == 1 { "" } else { "s" },
            settings.connections,
            settings.load_cpus
        ));
        out.push_str(&format!(
            "  {} round{} of {}; in each, every proxy freshly started, {}s warmup, {}s measured\n",
            settings.rounds,
            if settings.rounds == 1 { "" } else { "s" },
            names.join(" → "),
            settings.warmup_secs,
            settings.duration_secs
        ));
        out
    }

    /// The result tables, ratios and notes.
    pub fn render(&self) -> String {
        let summaries = self.summaries();
        let mut out = String::new();

        out.push_str("\nPer round\n");
        let rows: Vec<Vec<String>> = self
            .rounds
            .iter()
            .map(|m| {
                vec![
                    m.round.to_string(),
                    m.proxy.to_string(),
                    thousands(m.wrk.requests_per_sec),
                    latency(m.wrk.p50_us),
                    latency(m.wrk.p99_us),
                    format!("{:.2}µs", m.cpu_us_per_request()),
                    format!("{:.0}%", m.cpu_percent()),
                    format!("{:.2}%", m.canary_percent()),
                    m.wrk.errors().to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "round",
                "proxy",
                "requests/s",
                "p50",
                "p99",
                "CPU/request",
                "proxy CPU",
                "canary",
                "errors",
            ],
            "llrrrrrrr",
            &rows,
        ));

        out.push_str(&format!(
            "\nMedian of {} round{}\n",
            self.settings.rounds,
            if self.settings.rounds == 1 { "" } else { "s" }
        ));
        let rows: Vec<Vec<String>> = summaries
            .iter()
            .map(|s| {
                vec![
                    s.proxy.to_string(),
                    thousands(s.requests_per_sec),
                    latency(s.p50_us),
                    latency(s.p99_us),
                    format!("{:.2}µs", s.cpu_us_per_request),
                    format!("{:.0}%", s.cpu_percent),
                    format!("{:.2}%", s.canary_percent),
                    s.errors.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "proxy",
                "requests/s",
                "p50",
                "p99",
                "CPU/request",
                "proxy CPU",
                "canary",
                "errors",
            ],
            "lrrrrrrr",
            &rows,
        ));

        let ratios = self.ratios(&summaries);
        if ratios.is_empty() {
            out.push_str("\nRatios: need weir and at least one of nginx, HAProxy in the run\n");
        } else {
            out.push_str("\nRatios (medians of this run; per round in brackets)\n");
            let rows: Vec<Vec<String>> = ratios
                .iter()
                .map(|r| {
                    let rounds = |pick: fn(&(u32, f64, f64)) -> f64| {
                        let each: Vec<String> = r
                            .per_round
                            .iter()
                            .map(|x| format!("{:.2}", pick(x)))
                            .collect();
                        format!("[{}]", each.join(" "))
                    };
                    vec![
                        format!("{} / {}", r.subject, r.other),
                        format!("{:.2}×", r.cpu_per_request),
                        rounds(|x| x.1),
                        format!("{:.2}×", r.requests_per_sec),
                        rounds(|x| x.2),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["", "CPU/request", "", "requests/s", ""],
                "lrlrl",
                &rows,
            ));
            out.push_str("  CPU/request below 1× and requests/s above 1× favour weir.\n");
        }

        if !self.syscalls.is_empty() {
            out.push_str(&format!(
                "\nSystem calls per request (strace -c -f, separate {}s run; strace slows the proxy, so only counts)\n",
                self.settings.syscalls_secs.unwrap_or_default()
            ));
            let rows: Vec<Vec<String>> = self
                .syscalls
                .iter()
                .map(|s| {
                    let per = |n: u64| n as f64 / s.requests.max(1) as f64;
                    let top: Vec<String> = s
                        .counts
                        .by_call
                        .iter()
                        .take(5)
                        .map(|(name, calls)| format!("{name} {:.2}", per(*calls)))
                        .collect();
                    vec![
                        s.proxy.to_string(),
                        thousands(s.requests as f64),
                        format!("{:.2}", per(s.counts.total)),
                        top.join(", "),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "proxy",
                    "requests",
                    "syscalls/request",
                    "most frequent (per request)",
                ],
                "lrrl",
                &rows,
            ));
        }

        let notes = self.notes(&summaries);
        if !notes.is_empty() {
            out.push('\n');
            for note in notes {
                out.push_str(&format!("note: {note}\n"));
            }
        }
        out
    }

    /// Warnings about results that should not be trusted as they are.
    fn notes(&self, summaries: &[Summary]) -> Vec<String> {
        let mut notes = Vec::new();
        for s in summaries {
            if s.errors > 0 {
                notes.push(format!(
                    "{} had {} failed requests (socket errors or non-2xx/3xx); see the per-round rows",
                    s.proxy, s.errors
                ));
            }
            if s.cpu_percent < 90.0 {
                notes.push(format!(
                    "{} used only {:.0}% of its CPU: it was not saturated (the load side or other processes \
                     held it back), so requests/s understates it; CPU/request still compares",
                    s.proxy, s.cpu_percent
                ));
            }
            let expected = s.proxy.expected_canary_percent();
            if (s.canary_percent - f64::from(expected)).abs() > 1.0 {
                notes.push(format!(
                    "{} sent {:.2}% to the canary, not {expected}%",
                    s.proxy, s.canary_percent
                ));
            }
        }
        notes
    }

    /// The whole run as JSON.
    pub fn to_json(&self) -> Value {
        let summaries = self.summaries();
        let rounds: Vec<Value> = self
            .rounds
            .iter()
            .map(|m| {
                json!({
                    "round": m.round,
                    "proxy": m.proxy.id(),
                    "requests": m.wrk.requests,
                    "requests_per_sec": m.wrk.requests_per_sec,
                    "p50_us": m.wrk.p50_us,
                    "p99_us": m.wrk.p99_us,
                    "socket_errors": m.wrk.socket_errors,
                    "non_2xx_3xx": m.wrk.non_2xx_3xx,
                    "cpu_ticks": m.cpu_ticks,
                    "clock_ticks_per_sec": m.clock_ticks,
                    "wall_secs": m.wall.as_secs_f64(),
                    "cpu_us_per_request": m.cpu_us_per_request(),
                    "cpu_percent": m.cpu_percent(),
                    "stable_requests": m.stable_requests,
                    "canary_requests": m.canary_requests,
                    "canary_percent": m.canary_percent(),
                })
            })
            .collect();
        let median: Map<String, Value> = summaries
            .iter()
            .map(|s| (s.proxy.id().to_string(), s.to_json()))
            .collect();
        let ratios: Map<String, Value> = self
            .ratios(&summaries)
            .iter()
            .map(|r| {
                let per_round: Vec<Value> = r
                    .per_round
                    .iter()
                    .map(|(round, cpu, rps)| {
                        json!({"round": round, "cpu_per_request": cpu, "requests_per_sec": rps})
                    })
                    .collect();
                (
                    format!("weir/{}", r.other.id()),
                    json!({
                        "cpu_per_request": r.cpu_per_request,
                        "requests_per_sec": r.requests_per_sec,
                        "per_round": per_round,
                    }),
                )
            })
            .collect();
        let syscalls: Map<String, Value> = self
            .syscalls
            .iter()
            .map(|s| (s.proxy.id().to_string(), s.counts.to_json(s.requests)))
            .collect();
        json!({
            "environment": self.environment.to_json(),
            "settings": self.settings.to_json(),
            "rounds": rounds,
            "median": median,
            "ratios": ratios,
            "syscalls": syscalls,
        })
    }
}

/// The median; the mean of the middle two for an even count. `None` when empty.
pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// `41234.5` → `41,235`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// µs as `812µs`, `1.23ms` or `1.50s`.
fn latency(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.0}µs")
    } else if us < 1e6 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// Aligned columns with a two-space indent; `align` has one letter per column, `l` (left) or `r` (right).
pub(crate) fn table(headers: &[&str], align: &str, rows: &[Vec<String>]) -> String {
    let all: Vec<Vec<&str>> = (!headers.is_empty())
        .then(|| headers.to_vec())
        .into_iter()
        .chain(rows.iter().map(|r| r.iter().map(String::as_str).collect()))
        .collect();
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in &all {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            line.push_str("  ");
            if align.as_bytes().get(i) == Some(&b'r') {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(41_234.6), "41,235");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(latency(812.0), "812µs");
        assert_eq!(latency(1_234.0), "1.23ms");
        assert_eq!(latency(1_500_000.0), "1.50s");
    }

    #[test]
    fn aligns_columns() {
        let rows = vec![
            vec!["weir".to_string(), "1.5µs".to_string()],
            vec!["HAProxy".to_string(), "12.25µs".to_string()],
        ];
        assert_eq!(
            table(&["proxy", "CPU"], "lr", &rows),
            "  proxy        CPU\n  weir       1.5µs\n  HAProxy  12.25µs\n"
        );
    }
}
