//! Starting the upstreams and the proxies, and measuring one proxy for one round.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

use crate::configs::{self, Split, STATUS_PATH};
use crate::environment::Tools;
use crate::http;
use crate::procstat;
use crate::strace::{self, Counts};
use crate::supervisor::{Proc, Supervisor};
use crate::wrk::{Load, WrkResult};

/// How long a started process gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A proxy under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Proxy {
    Weir,
    /// weir with a header route and session affinity configured that no request matches: what the
    /// traffic-policy rules cost on the path of a plain split.
    WeirPolicies,
    /// weir with cookie-form session affinity, every request carrying a valid affinity cookie: the
    /// sticky rule decides every request (all go to stable, see [`configs::STICKY_COOKIE`]).
    WeirSticky,
    /// weir with a per-client-IP rate limit that never triggers: what the limiter costs per request.
    WeirRatelimit,
    /// weir with the ingress rules of issue #8 on every request: a path rewrite and two header
    /// rules (one on the request, one on the response naming the version), no rule deciding.
    WeirIngress,
    /// weir with everything of issue #8's "CPU per request" benchmark at once: the rewrite and the
    /// two header rules of [`Proxy::WeirIngress`] plus the never-triggering rate limit of
    /// [`Proxy::WeirRatelimit`], to compare with the plain split in the same run.
    WeirIngressRatelimit,
    Nginx,
    Haproxy,
}

impl Proxy {
    /// Lower-case id, used in file names, `--only` and the JSON.
    pub fn id(self) -> &'static str {
        match self {
            Proxy::Weir => "weir",
            Proxy::WeirPolicies => "weir-policies",
            Proxy::WeirSticky => "weir-sticky",
            Proxy::WeirRatelimit => "weir-ratelimit",
            Proxy::WeirIngress => "weir-ingress",
            Proxy::WeirIngressRatelimit => "weir-ingress-ratelimit",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
        }
    }

    /// Whether this is one of weir's variants (which need the weir binary).
    pub fn is_weir(self) -> bool {
        matches!(
            self,
            Proxy::Weir
                | Proxy::WeirPolicies
                | Proxy::WeirSticky
                | Proxy::WeirRatelimit
                | Proxy::WeirIngress
                | Proxy::WeirIngressRatelimit
        )
    }

    /// The canary's expected share of the requests, in percent: the split's, except where the sticky
    /// cookie sends everything to stable.
    pub fn expected_canary_percent(self) -> u32 {
        match self {
            Proxy::WeirSticky => 0,
            _ => configs::CANARY_PERCENT,
        }
    }

    /// Headers the load generators send with every request to this proxy.
    pub fn request_headers(self) -> &'static [&'static str] {
        match self {
            Proxy::WeirSticky => &[configs::STICKY_COOKIE],
            _ => &[],
        }
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proxy::Weir => "weir",
            Proxy::WeirPolicies => "weir+policies",
            Proxy::WeirSticky => "weir+sticky",
            Proxy::WeirRatelimit => "weir+ratelimit",
            Proxy::WeirIngress => "weir+ingress",
            Proxy::WeirIngressRatelimit => "weir+ingress+ratelimit",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "HAProxy",
        })
    }
}

/// One proxy measured in one round.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub round: u32,
    pub proxy: Proxy,
    pub wrk: WrkResult,
    /// utime + stime of the proxy's processes during the wrk run, in clock ticks.
    pub cpu_ticks: u64,
    pub clock_ticks: u64,
    /// Wall time of the wrk run as seen by the harness.
    pub wall: Duration,
    /// Requests the stable and the canary upstream received during the wrk run.
    pub stable_requests: u64,
    pub canary_requests: u64,
}

impl Measurement {
    /// Proxy CPU time per completed request, in µs.
    pub fn cpu_us_per_request(&self) -> f64 {
        self.cpu_ticks as f64 * 1e6 / self.clock_ticks as f64 / self.wrk.requests.max(1) as f64
    }

    /// Proxy CPU time over wall time, in percent of one CPU.
    pub fn cpu_percent(&self) -> f64 {
        let secs = self.wall.as_secs_f64().max(1e-9);
        self.cpu_ticks as f64 / self.clock_ticks as f64 / secs * 100.0
    }

    /// The canary upstream's share of the requests the upstreams received, in percent.
    pub fn canary_percent(&self) -> f64 {
        let all = self.stable_requests + self.canary_requests;
        self.canary_requests as f64 * 100.0 / all.max(1) as f64
    }
}

/// A proxy's system calls per request, from a separate traced run.
#[derive(Clone, Debug)]
pub struct SyscallRun {
    pub proxy: Proxy,
    pub requests: u64,
    pub counts: Counts,
}

/// Everything a measurement needs; the upstreams run for the whole benchmark.
pub struct Bench {
    pub sup: Arc<Supervisor>,
    pub tools: Tools,
    pub load: Load,
    pub proxy_cpus: String,
    pub weir_args: Vec<String>,
    pub clock_ticks: u64,
    pub warmup_secs: u64,
    upstreams: Upstreams,
}

impl Bench {
    /// Starts the two upstreams and checks they answer.
    pub fn start(
        sup: Arc<Supervisor>,
        tools: Tools,
        load: Load,
        proxy_cpus: String,
        weir_args: Vec<String>,
        clock_ticks: u64,
        warmup_secs: u64,
    ) -> Result<Bench> {
        let upstreams = Upstreams::start(&sup, &tools, &load)?;
        Ok(Bench {
            sup,
            tools,
            load,
            proxy_cpus,
            weir_args,
            clock_ticks,
            warmup_secs,
            upstreams,
        })
    }

    /// Starts `proxy`, warms it up, measures one wrk run of `seconds`, stops it.
    pub fn measure(&self, proxy: Proxy, round: u32, seconds: u64) -> Result<Measurement> {
        let label = format!("round{round}-{}", proxy.id());
        let running = self.start_proxy(proxy, &label)?;
        self.warm_up(&running, &label)?;

        let pids = procstat::tree(running.proc.pid())?;
        let upstream_before = self.upstreams.requests()?;
        let ticks_before = procstat::cpu_ticks(&pids)?;
        let started = Instant::now();
        let wrk = self.load.run(
            &self.sup,
            &label,
            running.addr,
            seconds,
            proxy.request_headers(),
        )?;
        let wall = started.elapsed();
        check_answers(proxy, &label, &wrk)?;
        let ticks_after = procstat::cpu_ticks(&pids)
            .with_context(|| format!("{proxy} lost a process during the run"))?;
        let upstream_after = self.upstreams.requests()?;
        running.check_alive()?;
        drop(running);

        // Each stub_status read counts itself: subtract the "after" read.
        let delta = |after: u64, before: u64| after.saturating_sub(before).saturating_sub(1);
        Ok(Measurement {
            round,
            proxy,
            wrk,
            cpu_ticks: ticks_after.saturating_sub(ticks_before),
            clock_ticks: self.clock_ticks,
            wall,
            stable_requests: delta(upstream_after.0, upstream_before.0),
            canary_requests: delta(upstream_after.1, upstream_before.1),
        })
    }

    /// Starts `proxy`, warms it up, and counts its system calls with strace during a wrk run of `seconds`.
    pub fn count_syscalls(&self, proxy: Proxy, seconds: u64) -> Result<SyscallRun> {
        let strace = self
            .tools
            .strace
            .as_deref()
            .context("strace not found: install the Debian package strace")?;
        let label = format!("syscalls-{}", proxy.id());
        let running = self.start_proxy(proxy, &label)?;
        self.warm_up(&running, &label)?;
        let pids = procstat::tree(running.proc.pid())?;
        let tracer = strace::attach(
            &self.sup,
            strace,
            &self.tools.taskset,
            &self.load.cpus,
            &pids,
            &format!("{label}-strace"),
        )?;
        let wrk = self.load.run(
            &self.sup,
            &label,
            running.addr,
            seconds,
            proxy.request_headers(),
        )?;
        let counts = tracer.finish()?;
        running.check_alive()?;
        Ok(SyscallRun {
            proxy,
            requests: wrk.requests,
            counts,
        })
    }

    fn warm_up(&self, running: &Running, label: &str) -> Result<()> {
        if self.warmup_secs > 0 {
            let name = format!("{label}-warmup");
            let wrk = self.load.run(
                &self.sup,
                &name,
                running.addr,
                self.warmup_secs,
                running.proxy.request_headers(),
            )?;
            check_answers(running.proxy, &name, &wrk)?;
        }
        Ok(())
    }

    /// Writes the config for `proxy` into a fresh folder, starts it pinned to the proxy CPUs, waits until ready.
    fn start_proxy(&self, proxy: Proxy, label: &str) -> Result<Running> {
        self.start_proxy_under(proxy, label, |_| Vec::new(), READY_TIMEOUT)
    }

    /// [`Bench::start_proxy`] with the proxy's command prefixed by `wrapper(dir)` (e.g. valgrind; `dir` is
    /// the proxy's fresh folder) after `taskset`, and `ready_timeout` to become ready.
    pub fn start_proxy_under(
        &self,
        proxy: Proxy,
        label: &str,
        wrapper: impl FnOnce(&Path) -> Vec<OsString>,
        ready_timeout: Duration,
    ) -> Result<Running> {
        let dir = self.sup.dir().join(label);
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ports = http::free_ports(2)?;
        let (listen, admin) = (ports[0], ports[1]);
        let split = self.upstreams.split;

        let mut cmd = Command::new(&self.tools.taskset);
        cmd.arg("-c").arg(&self.proxy_cpus).args(wrapper(&dir));
        let mut admin_addr = None;
        match proxy {
            Proxy::Weir
            | Proxy::WeirPolicies
            | Proxy::WeirSticky
            | Proxy::WeirRatelimit
            | Proxy::WeirIngress
            | Proxy::WeirIngressRatelimit => {
                let weir = self.tools.weir.as_deref().context(
                    "weir binary not known: build it with `cargo build --release -p weir-control` or pass --weir",
                )?;
                let yaml = match proxy {
                    Proxy::WeirPolicies => configs::weir_policies(listen, admin, split),
                    Proxy::WeirSticky => configs::weir_sticky(listen, admin, split),
                    Proxy::WeirRatelimit => configs::weir_ratelimit(listen, admin, split),
                    Proxy::WeirIngress => configs::weir_ingress(listen, admin, split),
                    Proxy::WeirIngressRatelimit => {
                        configs::weir_ingress_ratelimit(listen, admin, split)
                    }
                    _ => configs::weir(listen, admin, split),
                };
                let config = write(&dir, "weir.yaml", &yaml)?;
                // No access log (weir's default), warnings only, a short drain so stopping is quick.
                cmd.arg(weir)
                    .args(["--log-level", "warn", "run", "--config"])
                    .arg(&config)
                    .args(["--workers", "1", "--drain-timeout", "2s"])
                    .args(&self.weir_args);
                admin_addr = Some(local(admin));
            }
            Proxy::Nginx => {
                let config = write(
                    &dir,
                    "nginx.conf",
                    &configs::nginx_proxy(&dir, listen, split),
                )?;
                cmd.arg(&self.tools.nginx)
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&config);
            }
            Proxy::Haproxy => {
                let haproxy = self
                    .tools
                    .haproxy
                    .as_deref()
                    .context("haproxy not found: install the Debian package haproxy")?;
                let config = write(&dir, "haproxy.cfg", &configs::haproxy(listen, split))?;
                cmd.arg(haproxy).arg("-db").arg("-f").arg(&config);
            }
        }
        let proc = self.sup.spawn(label, cmd)?;
        let running = Running {
            proxy,
            proc,
            addr: local(listen),
            dir,
        };
        running.wait_ready(admin_addr, ready_timeout)?;
        Ok(running)
    }

    /// The request counters of the stable and canary upstreams (each read counts itself).
    pub fn upstream_requests(&self) -> Result<(u64, u64)> {
        self.upstreams.requests()
    }
}

/// A started proxy; stopped when dropped.
pub struct Running {
    proxy: Proxy,
    proc: Proc,
    addr: SocketAddr,
    /// Its folder in the temp dir (config, and whatever a wrapper writes there).
    dir: PathBuf,
}

impl Running {
    /// The id of the proxy's process (with a wrapper such as valgrind: the wrapper's, which runs it).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its folder in the temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the listener accepts connections (and weir's `/readyz` says 200), then checks that
    /// `GET /` is answered by one of the upstreams.
    fn wait_ready(&self, admin: Option<SocketAddr>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let admin_ready = match admin {
                Some(admin) => http::get(admin, "/readyz", Duration::from_secs(1))
                    .is_ok_and(|r| r.status == 200),
                None => true,
            };
            if admin_ready && http::accepts(self.addr) {
                break;
            }
            if Instant::now() >= deadline {
                let what = match admin {
                    Some(admin) => format!(
                        "accepting on {} with GET http://{admin}/readyz → 200",
                        self.addr
                    ),
                    None => format!("accepting on {}", self.addr),
                };
                bail!(
                    "{} not {what} after {}s; its output:\n{}",
                    self.proxy,
                    timeout.as_secs(),
                    self.proc.output_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A proxy under valgrind (long `timeout`) may take seconds over its first request.
        let get_timeout = (timeout / 10).max(Duration::from_secs(2));
        let response = http::get(self.addr, "/", get_timeout)
            .with_context(|| format!("{} is up but GET / through it failed", self.proxy))?;
        if response.status != 200 || !matches!(response.body.as_str(), "stable\n" | "canary\n") {
            bail!(
                "GET / through {} returned {} {:?}, not 200 \"stable\" or \"canary\"; its output:\n{}",
                self.proxy,
                response.status,
                response.body,
                self.proc.output_tail(20)
            );
        }
        Ok(())
    }

    /// An error with the end of its output if it has exited.
    pub fn check_alive(&self) -> Result<()> {
        if let Some(status) = self.proc.exited()? {
            bail!(
                "{} exited with {status}; its output:\n{}",
                self.proxy,
                self.proc.output_tail(20)
            );
        }
        Ok(())
    }
}

/// The stable and canary nginx upstreams, pinned to the load CPUs.
struct Upstreams {
    split: Split,
    stable: Proc,
    canary: Proc,
}

impl Upstreams {
    fn start(sup: &Arc<Supervisor>, tools: &Tools, load: &Load) -> Result<Upstreams> {
        let ports = http::free_ports(2)?;
        let split = Split {
            stable: ports[0],
            canary: ports[1],
        };
        let start = |version: &str, port: u16| -> Result<Proc> {
            let name = format!("upstream-{version}");
            let dir = sup.dir().join(&name);
            fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let config = write(
                &dir,
                "nginx.conf",
                &configs::upstream_nginx(&dir, version, port),
            )?;
            let mut cmd = Command::new(&tools.taskset);
            cmd.arg("-c")
                .arg(&load.cpus)
                .arg(&tools.nginx)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&config);
            sup.spawn(&name, cmd)
        };
        let upstreams = Upstreams {
            split,
            stable: start("stable", split.stable)?,
            canary: start("canary", split.canary)?,
        };
        for (proc, port, version) in [
            (&upstreams.stable, split.stable, "stable"),
            (&upstreams.canary, split.canary, "canary"),
        ] {
            wait_upstream(proc, local(port), version)?;
        }
        Ok(upstreams)
    }

    /// The request counters of the stable and canary upstreams (each read counts itself).
    fn requests(&self) -> Result<(u64, u64)> {
        Ok((
            stub_status_requests(local(self.split.stable))?,
            stub_status_requests(local(self.split.canary))?,
        ))
    }
}

fn wait_upstream(proc: &Proc, addr: SocketAddr, version: &str) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = proc.exited()? {
            bail!(
                "the {version} upstream (nginx) exited with {status}:\n{}",
                proc.output_tail(20)
            );
        }
        if let Ok(response) = http::get(addr, "/", Duration::from_secs(1)) {
            if response.status == 200 && response.body == format!("{version}\n") {
                stub_status_requests(addr)?;
                return Ok(());
            }
            bail!(
                "the {version} upstream answered {} {:?}",
                response.status,
                response.body
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the {version} upstream (nginx) did not answer on {addr} within {}s:\n{}",
                READY_TIMEOUT.as_secs(),
                proc.output_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `requests` counter of nginx's `stub_status`:
/// "Active connections: 1 \nserver accepts handled requests\n 1 1 1 \nReading: 0 Writing: 1 Waiting: 0 \n".
fn stub_status_requests(addr: SocketAddr) -> Result<u64> {
    let response = http::get(addr, STATUS_PATH, Duration::from_secs(2))?;
    if response.status != 200 {
        bail!(
            "GET http://{addr}{STATUS_PATH} returned {}",
            response.status
        );
    }
    parse_stub_status(&response.body)
        .with_context(|| format!("unexpected stub_status from {addr}: {:?}", response.body))
}

fn parse_stub_status(body: &str) -> Result<u64> {
    let mut lines = body.lines();
    lines
        .find(|l| l.trim() == "server accepts handled requests")
        .context("no \"server accepts handled requests\" line")?;
    let counters = lines.next().context("no counter line")?;
    let requests = counters
        .split_whitespace()
        .nth(2)
        .context("no requests counter")?;
    requests
        .parse()
        .with_context(|| format!("bad requests counter {requests:?}"))
}

/// Fails the run when wrk saw an answer other than 2xx or 3xx (wrk does not tell them apart; the
/// upstreams only answer 200 and redirects are configured nowhere): a proxy that refuses requests
/// (a rate limit's 429, a 502) is measuring something else than the benchmark's job.
fn check_answers(proxy: Proxy, name: &str, wrk: &WrkResult) -> Result<()> {
    if wrk.non_2xx_3xx > 0 {
        bail!(
            "{proxy} answered {} of {} requests with a status other than 2xx/3xx in the wrk run {name}: \
             the run is invalid (a rate limit that triggered? see --keep-temp for its output)",
            wrk.non_2xx_3xx,
            wrk.requests
        );
    }
    Ok(())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stub_status() {
        let body = "Active connections: 1 \nserver accepts handled requests\n 7 7 1234 \nReading: 0 Writing: 1 Waiting: 0 \n";
        assert_eq!(parse_stub_status(body).unwrap(), 1234);
        assert!(parse_stub_status("Active connections: 1\n").is_err());
    }

    #[test]
    fn a_run_with_refused_requests_fails() {
        let mut wrk = WrkResult {
            requests: 1000,
            requests_per_sec: 100.0,
            p50_us: 1.0,
            p99_us: 2.0,
            socket_errors: 3,
            non_2xx_3xx: 0,
        };
        assert!(check_answers(Proxy::WeirIngressRatelimit, "r1", &wrk).is_ok());
        wrk.non_2xx_3xx = 1;
        let error = check_answers(Proxy::WeirIngressRatelimit, "r1", &wrk).unwrap_err();
        assert!(error.to_string().contains("1 of 1000"), "{error}");
    }

    #[test]
    fn derives_per_request_figures() {
        let m = Measurement {
            round: 1,
            proxy: Proxy::Nginx,
            wrk: WrkResult {
                requests: 100_000,
                requests_per_sec: 10_000.0,
                p50_us: 1.0,
                p99_us: 2.0,
                socket_errors: 0,
                non_2xx_3xx: 0,
            },
            cpu_ticks: 950,
            clock_ticks: 100,
            wall: Duration::from_secs(10),
            stable_requests: 90_000,
            canary_requests: 10_000,
        };
        assert!((m.cpu_us_per_request() - 95.0).abs() < 1e-9);
        assert!((m.cpu_percent() - 95.0).abs() < 1e-9);
        assert!((m.canary_percent() - 10.0).abs() < 1e-9);
    }
}
