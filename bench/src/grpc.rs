//! `weir-bench grpc`: gRPC unary calls per second, h2load straight to a tonic server and through
//! weir (an h2c listener, `protocol: h2c` to the server), in the same run, rounds alternating.
//!
//! The server is this binary's hidden `grpc-server` subcommand: a tonic server (hand-written prost
//! messages, no protoc) on a current-thread runtime, pinned to the load CPUs with h2load. The load
//! is h2load sending the same length-prefixed message as a `POST` with `content-type:
//! application/grpc` and `te: trailers` over HTTP/2 with prior knowledge. Every measured run must
//! show all its calls answered: h2load's `succeeded` and `2xx` equal to the calls sent, the
//! server's own count of calls it answered with `grpc-status: 0` up by exactly as many, and, through
//! weir, weir's `weir_grpc_responses_total{grpc_status="0"}` up by exactly as many and no other
//! code counted (so the trailers crossed weir). Before each measurement a tonic client's call
//! checks the reply and its status end to end.
//!
//! With `--callgrind N` weir also runs once under valgrind's callgrind and the report gives its
//! user-space instructions per gRPC call (N calls after the warm-up), as `weir-bench callgrind`
//! does for HTTP/1 requests.

// tonic's API is `Result<_, tonic::Status>` throughout.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use tokio::time::Instant;
use tonic::body::BoxBody;
use tonic::codec::ProstCodec;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::environment::{self, Machine};
use crate::procstat;
use crate::supervisor::{self, Proc, ShutdownGuard, Supervisor};

/// The unary method h2load calls.
pub const UNARY: &str = "/weir.bench.Echo/Unary";
/// How many unary calls the server answered (not counted itself).
const COUNT: &str = "/weir.bench.Echo/Count";

/// How long the server and weir get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long weir under valgrind gets to become ready (valgrind translates as it goes).
const CALLGRIND_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// The text of every call: h2load's message and the tonic checks.
const TEXT: &str = "weir-bench";

/// Measures gRPC unary calls per second through weir against a direct connection.
#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    /// Calls measured per run (each way, each round).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub calls: u64,

    /// Calls sent before each measured run, on the same target (`0` for none).
    #[arg(long, default_value_t = 10_000)]
    pub warmup_calls: u64,

    /// Rounds; each measures direct, then through weir (started fresh).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// h2load connections (`-c`), kept open for the whole run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// Concurrent calls per connection (h2load `-m`, HTTP/2 streams).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub streams: u32,

    /// CPU list (`taskset -c`) for weir.
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,

    /// CPU list (`taskset -c`) for h2load and the gRPC server, the same direct and through weir.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,

    /// Also count weir's instructions per call under callgrind over this many calls (`0`: no).
    #[arg(long, default_value_t = 0, value_name = "CALLS")]
    pub callgrind: u64,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// The weir binary [default: `weir` next to this executable].
    #[arg(long, env = "WEIR_BIN", value_name = "PATH")]
    pub weir: Option<PathBuf>,

    /// An extra argument for `weir run` (repeatable).
    #[arg(long = "weir-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub weir_args: Vec<String>,

    /// Keep the temp dir (configs and every process's output) and print its path.
    #[arg(long)]
    pub keep_temp: bool,
}

/// The benchmark's gRPC server (started by `weir-bench grpc`).
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Port on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
}

// ---------------------------------------------------------------------------------------------
// Messages and the server

/// A call: `text` is echoed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Call {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// A reply: the echoed text.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// The answer of [`COUNT`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counted {
    #[prost(uint64, tag = "1")]
    pub calls: u64,
}

/// The echo service; `calls` counts the unary calls answered OK.
#[derive(Clone, Default)]
struct Echo {
    calls: Arc<AtomicU64>,
}

struct UnaryCall(Echo);

impl UnaryService<Call> for UnaryCall {
    type Response = Reply;
    type Future = BoxFuture<Response<Reply>, Status>;

    fn call(&mut self, request: Request<Call>) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
        let text = request.into_inner().text;
        Box::pin(async move { Ok(Response::new(Reply { text })) })
    }
}

struct CountCall(Echo);

impl UnaryService<Call> for CountCall {
    type Response = Counted;
    type Future = BoxFuture<Response<Counted>, Status>;

    fn call(&mut self, _: Request<Call>) -> Self::Future {
        let calls = self.0.calls.load(Ordering::Relaxed);
        Box::pin(async move { Ok(Response::new(Counted { calls })) })
    }
}

impl Service<http::Request<BoxBody>> for Echo {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                UNARY => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Reply, Call>::default());
                    grpc.unary(UnaryCall(echo), request).await
                }
                COUNT => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Counted, Call>::default());
                    grpc.unary(CountCall(echo), request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

impl NamedService for Echo {
    const NAME: &'static str = "weir.bench.Echo";
}

/// `weir-bench grpc-server --port P`: serves [`Echo`] on 127.0.0.1:P until killed.
pub fn serve(args: &ServerArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the server's runtime")?;
    let addr = local(args.port);
    runtime.block_on(async {
        tonic::transport::Server::builder()
            .add_service(Echo::default())
            .serve(addr)
            .await
            .with_context(|| format!("the gRPC server on {addr} failed"))
    })
}

// ---------------------------------------------------------------------------------------------
// The harness's own gRPC client (checks only; the load is h2load)

/// A tonic client for the checks, on a current-thread runtime of its own.
struct Checker {
    runtime: tokio::runtime::Runtime,
}

impl Checker {
    fn new() -> Result<Checker> {
        Ok(Checker {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build the checker's runtime")?,
        })
    }

    /// One call of `path` on a fresh connection to `addr`, within `timeout`.
    fn call<M>(&self, addr: SocketAddr, path: &'static str, timeout: Duration) -> Result<M>
    where
        M: prost::Message + Default + Send + 'static,
    {
        self.runtime.block_on(async {
            let call = async {
                let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                    .context("a valid URI")?
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {addr}"))?;
                let mut client = tonic::client::Grpc::new(channel);
                client
                    .ready()
                    .await
                    .with_context(|| format!("the connection to {addr} is not ready"))?;
                let reply = client
                    .unary(
                        Request::new(Call {
                            text: TEXT.to_string(),
                        }),
                        http::uri::PathAndQuery::from_static(path),
                        ProstCodec::<Call, M>::default(),
                    )
                    .await
                    .with_context(|| format!("{path} on {addr} failed"))?;
                anyhow::Ok(reply.into_inner())
            };
            tokio::time::timeout(timeout, call)
                .await
                .with_context(|| format!("{path} on {addr}: no answer within {timeout:?}"))?
        })
    }

    /// The server's count of unary calls answered.
    fn count(&self, server: SocketAddr) -> Result<u64> {
        Ok(self
            .call::<Counted>(server, COUNT, Duration::from_secs(5))?
            .calls)
    }

    /// A unary call through `addr` must come back with the text it sent (and `grpc-status: 0`).
    fn check_unary(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let reply = self.call::<Reply>(addr, UNARY, timeout)?;
        if reply.text != TEXT {
            bail!(
                "{UNARY} through {addr} answered {:?}, not {TEXT:?}",
                reply.text
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark

/// How the calls reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Direct,
    Weir,
}

impl Via {
    fn id(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Weir => "weir",
        }
    }
}

/// One measured run.
#[derive(Clone, Debug)]
pub struct Run {
    pub round: u32,
    pub via: Via,
    pub calls: u64,
    /// h2load's `finished in` time.
    pub secs: f64,
    /// h2load's req/s.
    pub calls_per_sec: f64,
    /// h2load's mean time per call, µs.
    pub mean_us: f64,
    /// The server's CPU time over the run, in clock ticks.
    pub server_ticks: u64,
    /// weir's CPU time over the run, in clock ticks (through weir only).
    pub weir_ticks: Option<u64>,
    /// Wall time of the h2load run as seen by the harness.
    pub wall: Duration,
    pub clock_ticks: u64,
}

impl Run {
    fn us_per_call(&self, ticks: u64) -> f64 {
        ticks as f64 * 1e6 / self.clock_ticks as f64 / self.calls.max(1) as f64
    }

    fn cpu_percent(&self, ticks: u64) -> f64 {
        ticks as f64 / self.clock_ticks as f64 / self.wall.as_secs_f64().max(1e-9) * 100.0
    }
}

/// The programs this benchmark runs.
struct Tools {
    taskset: PathBuf,
    h2load: PathBuf,
    weir: PathBuf,
    valgrind: Option<(PathBuf, PathBuf)>,
}

fn find(program: &str, package: &str) -> Result<PathBuf> {
    environment::find_program(program).with_context(|| {
        format!(
            "{program} not found in PATH or /usr/sbin: install the Debian package {package} \
             (bench/run does this with apt-get)"
        )
    })
}

struct Bench<'a> {
    sup: Arc<Supervisor>,
    tools: Tools,
    args: &'a GrpcArgs,
    checker: Checker,
    server: SocketAddr,
    server_proc: Proc,
    message: PathBuf,
    clock_ticks: u64,
}

/// A started weir.
struct WeirProc {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

pub fn run(args: &GrpcArgs) -> Result<()> {
    let weir = crate::weir_binary(args.weir.as_ref())?;
    if !weir.is_file() {
        bail!(
            "the weir binary {} does not exist: build it with `cargo build --release -p weir-control` \
             (bench/run does) or point --weir (or WEIR_BIN) at it",
            weir.display()
        );
    }
    let tools = Tools {
        taskset: find("taskset", "util-linux")?,
        h2load: find("h2load", "nghttp2-client")?,
        weir,
        valgrind: if args.callgrind > 0 {
            Some((
                find("valgrind", "valgrind")?,
                find("callgrind_control", "valgrind")?,
            ))
        } else {
            None
        },
    };
    let clock_ticks = procstat::clock_ticks()?;
    let machine = Machine::collect();
    let revision = environment::git_revision();
    let h2load_version = environment::first_line(&tools.h2load, &["--version"])
        .unwrap_or_else(|| "unknown".to_string());
    println!("weir-bench grpc: gRPC unary calls per second, direct and through weir (h2c)\n");
    for (label, value) in [
        ("date", machine.date.clone()),
        ("cpus", format!("{} × {}", machine.cpus, machine.cpu_model)),
        ("kernel", machine.kernel.clone()),
        ("weir", revision.clone()),
        ("h2load", h2load_version.clone()),
    ] {
        println!("  {label:<9}{value}");
    }
    println!(
        "  load     {} calls per run after {} warm-up calls, {} rounds; h2load -c {} -m {} \
         (HTTP/2 prior knowledge, POST {UNARY});\n           weir (1 worker) on CPUs {}, h2load \
         and the tonic server on {}\n",
        args.calls,
        args.warmup_calls,
        args.rounds,
        args.connections,
        args.streams,
        args.proxy_cpus,
        args.load_cpus
    );
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;

    let sup = Supervisor::new(args.keep_temp)?;
    let _shutdown = ShutdownGuard(sup.clone());
    supervisor::stop_on_signals(sup.clone())?;
    let checker = Checker::new()?;

    // The message h2load sends: the gRPC frame (uncompressed flag, big-endian length) of a Call.
    let message = sup.dir().join("call.bin");
    fs::write(&message, grpc_frame(TEXT))
        .with_context(|| format!("cannot write {}", message.display()))?;

    let port = crate::http::free_ports(1)?[0];
    let server = local(port);
    let mut cmd = Command::new(&tools.taskset);
    cmd.arg("-c")
        .arg(&args.load_cpus)
        .arg(std::env::current_exe().context("cannot find this executable")?)
        .arg("grpc-server")
        .arg("--port")
        .arg(port.to_string());
    let server_proc = sup.spawn("grpc-server", cmd)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while checker.check_unary(server, Duration::from_secs(2)).is_err() {
        if let Some(status) = server_proc.exited()? {
            bail!(
                "the gRPC server exited with {status}:\n{}",
                server_proc.output_tail(20)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the gRPC server did not answer on {server} within {}s:\n{}",
                READY_TIMEOUT.as_secs(),
                server_proc.output_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let bench = Bench {
        sup: sup.clone(),
        tools,
        args,
        checker,
        server,
        server_proc,
        message,
        clock_ticks,
    };

    let total = args.rounds as usize * 2;
    let mut runs = Vec::with_capacity(total);
    for round in 1..=args.rounds {
        for via in [Via::Direct, Via::Weir] {
            eprint!(
                "[{}/{total}] round {round}: {} … ",
                runs.len() + 1,
                via.id()
            );
            let run = bench
                .measure(round, via)
                .inspect_err(|_| eprintln!("failed"))
                .with_context(|| format!("round {round}, {}", via.id()))?;
            eprintln!(
                "{:.0} calls/s, mean {:.0}µs{}",
                run.calls_per_sec,
                run.mean_us,
                run.weir_ticks
                    .map(|t| format!(", weir {:.2}µs CPU/call", run.us_per_call(t)))
                    .unwrap_or_default()
            );
            runs.push(run);
        }
    }

    let instructions = if args.callgrind > 0 {
        eprint!("[callgrind] weir, {} calls … ", args.callgrind);
        let started = Instant::now();
        let ir = bench
            .callgrind()
            .inspect_err(|_| eprintln!("failed"))
            .context("counting weir's instructions per call")?;
        eprintln!(
            "{:.1} Ir/call ({:.0}s)",
            ir as f64 / args.callgrind as f64,
            started.elapsed().as_secs_f64()
        );
        Some(ir)
    } else {
        None
    };

    print!(
        "{}",
        render(&runs, args.rounds, instructions, args.callgrind)
    );
    if let Some(path) = &args.json {
        let value = json!({
            "benchmark": "grpc",
            "environment": {
                "date": machine.date,
                "cpus": machine.cpus,
                "cpu_model": machine.cpu_model,
                "kernel": machine.kernel,
                "weir": revision,
                "h2load": h2load_version,
            },
            "settings": {
                "calls": args.calls,
                "warmup_calls": args.warmup_calls,
                "rounds": args.rounds,
                "connections": args.connections,
                "streams": args.streams,
                "proxy_cpus": args.proxy_cpus,
                "load_cpus": args.load_cpus,
                "callgrind_calls": args.callgrind,
            },
            "runs": runs.iter().map(|r| json!({
                "round": r.round,
                "path": r.via.id(),
                "calls": r.calls,
                "secs": r.secs,
                "calls_per_sec": r.calls_per_sec,
                "mean_us": r.mean_us,
                "server_cpu_us_per_call": r.us_per_call(r.server_ticks),
                "weir_cpu_us_per_call": r.weir_ticks.map(|t| r.us_per_call(t)),
                "weir_cpu_percent": r.weir_ticks.map(|t| r.cpu_percent(t)),
            })).collect::<Vec<Value>>(),
            "callgrind": instructions.map(|ir| json!({
                "calls": args.callgrind,
                "instructions": ir,
                "instructions_per_call": ir as f64 / args.callgrind as f64,
            })),
        });
        crate::write_json(path, &value)?;
    }
    Ok(())
}

impl Bench<'_> {
    /// Warms up, then measures `args.calls` calls to the server, directly or through a fresh weir.
    fn measure(&self, round: u32, via: Via) -> Result<Run> {
        let label = format!("round{round}-{}", via.id());
        let weir = match via {
            Via::Direct => None,
            Via::Weir => Some(self.start_weir(&label, Vec::new(), READY_TIMEOUT)?),
        };
        let target = weir.as_ref().map_or(self.server, |w| w.addr);
        if self.args.warmup_calls > 0 {
            self.h2load(
                &format!("{label}-warmup"),
                target,
                self.args.warmup_calls.max(u64::from(self.args.connections)),
            )?;
        }

        let server_pids = procstat::tree(self.server_proc.pid())?;
        let weir_pids = match &weir {
            Some(w) => Some(procstat::tree(w.proc.pid())?),
            None => None,
        };
        let grpc_before = match &weir {
            Some(w) => Some(grpc_statuses(w.admin)?),
            None => None,
        };
        let count_before = self.checker.count(self.server)?;
        let server_before = procstat::cpu_ticks(&server_pids)?;
        let weir_before = match &weir_pids {
            Some(pids) => Some(procstat::cpu_ticks(pids)?),
            None => None,
        };
        let started = Instant::now();
        let h2load = self.h2load(&label, target, self.args.calls)?;
        let wall = started.elapsed();
        let server_after = procstat::cpu_ticks(&server_pids)
            .context("the gRPC server lost a process during the run")?;
        let weir_ticks = match (&weir_pids, weir_before) {
            (Some(pids), Some(before)) => Some(
                procstat::cpu_ticks(pids)
                    .context("weir lost a process during the run")?
                    .saturating_sub(before),
            ),
            _ => None,
        };
        let count_after = self.checker.count(self.server)?;
        let answered = count_after.saturating_sub(count_before);
        if answered != self.args.calls {
            bail!(
                "h2load sent {} calls but the server answered {answered}",
                self.args.calls
            );
        }
        if let (Some(w), Some(before)) = (&weir, grpc_before) {
            w.check_alive()?;
            check_grpc_ok(&before, &grpc_statuses(w.admin)?, self.args.calls)?;
        }
        Ok(Run {
            round,
            via,
            calls: self.args.calls,
            secs: h2load.secs,
            calls_per_sec: h2load.per_sec,
            mean_us: h2load.mean_us,
            server_ticks: server_after.saturating_sub(server_before),
            weir_ticks,
            wall,
            clock_ticks: self.clock_ticks,
        })
    }

    /// weir under callgrind: warm up, zero, `args.callgrind` calls, dump; the dump's total Ir.
    fn callgrind(&self) -> Result<u64> {
        let (valgrind, control) = self.tools.valgrind.clone().context("valgrind not found")?;
        let label = "callgrind-weir";
        let dir = self.sup.dir().join(label);
        let mut out = OsString::from("--callgrind-out-file=");
        out.push(dir.join("callgrind.out"));
        let weir = self.start_weir(
            label,
            vec![valgrind.into(), "--tool=callgrind".into(), out],
            CALLGRIND_READY_TIMEOUT,
        )?;
        let warmup = self
            .args
            .warmup_calls
            .min(2_000)
            .max(u64::from(self.args.connections));
        self.h2load(&format!("{label}-warmup"), weir.addr, warmup)?;
        crate::callgrind::callgrind_control(
            &self.sup,
            &control,
            weir.proc.pid(),
            &format!("{label}-zero"),
            "--zero",
        )?;
        let before = grpc_statuses(weir.admin)?;
        self.h2load(label, weir.addr, self.args.callgrind)?;
        crate::callgrind::callgrind_control(
            &self.sup,
            &control,
            weir.proc.pid(),
            &format!("{label}-dump"),
            "--dump",
        )?;
        weir.check_alive()?;
        // The metrics request itself runs on the admin thread after the dump: not counted.
        check_grpc_ok(&before, &grpc_statuses(weir.admin)?, self.args.callgrind)?;
        let dump = crate::callgrind::latest_dump(&weir.dir)?;
        let text = fs::read_to_string(&dump)
            .with_context(|| format!("cannot read the dump {}", dump.display()))?;
        crate::callgrind::total_ir(&text)
            .with_context(|| format!("cannot read the total Ir of {}", dump.display()))
    }

    /// Writes weir's config (an h2c-capable plain listener, one service with the server as its
    /// `h2c` stable), starts it pinned to the proxy CPUs behind `wrapper`, and waits until a tonic
    /// call through it is answered.
    fn start_weir(
        &self,
        label: &str,
        wrapper: Vec<OsString>,
        ready_timeout: Duration,
    ) -> Result<WeirProc> {
        let dir = self.sup.dir().join(label);
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ports = crate::http::free_ports(2)?;
        let (listen, admin) = (ports[0], ports[1]);
        let config = dir.join("weir.yaml");
        fs::write(&config, weir_config(listen, admin, self.server.port()))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let mut cmd = Command::new(&self.tools.taskset);
        cmd.arg("-c")
            .arg(&self.args.proxy_cpus)
            .args(wrapper)
            .arg(&self.tools.weir)
            .args(["--log-level", "warn", "run", "--config"])
            .arg(&config)
            .args(["--workers", "1", "--drain-timeout", "2s"])
            .args(&self.args.weir_args);
        let weir = WeirProc {
            proc: self.sup.spawn(label, cmd)?,
            addr: local(listen),
            admin: local(admin),
            dir,
        };
        let deadline = Instant::now() + ready_timeout;
        loop {
            weir.check_alive()?;
            let ready = crate::http::get(weir.admin, "/readyz", Duration::from_secs(1))
                .is_ok_and(|r| r.status == 200);
            if ready && crate::http::accepts(weir.addr) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "weir not ready (GET http://{}/readyz → 200) after {}s; its output:\n{}",
                    weir.admin,
                    ready_timeout.as_secs(),
                    weir.proc.output_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Under valgrind the first call may take seconds.
        let call_timeout = (ready_timeout / 10).max(Duration::from_secs(2));
        self.checker
            .check_unary(weir.addr, call_timeout)
            .with_context(|| {
                format!(
                    "weir is up but a gRPC call through it failed; its output:\n{}",
                    weir.proc.output_tail(20)
                )
            })?;
        Ok(weir)
    }

    /// `taskset -c LOAD h2load -c C -m M -n N -d MESSAGE -H content-type… -H te… http://TARGET/UNARY`;
    /// every call must succeed with a 2xx.
    fn h2load(&self, name: &str, target: SocketAddr, calls: u64) -> Result<H2load> {
        let mut cmd = Command::new(&self.tools.taskset);
        cmd.arg("-c")
            .arg(&self.args.load_cpus)
            .arg(&self.tools.h2load)
            .arg(format!("-n{calls}"))
            .arg(format!("-c{}", self.args.connections))
            .arg(format!("-m{}", self.args.streams))
            .arg("-d")
            .arg(&self.message)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg(format!("http://{target}{UNARY}"));
        let proc = self.sup.spawn(name, cmd)?;
        let limit = Duration::from_secs(900);
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
        let counts = crate::callgrind::parse_h2load(&output)
            .with_context(|| format!("cannot parse the output of h2load ({name}):\n{output}"))?;
        if counts.succeeded != calls || counts.status_2xx != calls {
            bail!(
                "h2load ({name}) sent {calls} calls but {} succeeded with {} 2xx:\n{}",
                counts.succeeded,
                counts.status_2xx,
                proc.output_tail(20)
            );
        }
        if !output.contains("Application protocol: h2c") {
            bail!(
                "h2load ({name}) did not speak h2c:\n{}",
                proc.output_tail(20)
            );
        }
        parse_h2load_times(&output)
            .with_context(|| format!("cannot parse the output of h2load ({name}):\n{output}"))
    }
}

impl WeirProc {
    fn check_alive(&self) -> Result<()> {
        if let Some(status) = self.proc.exited()? {
            bail!(
                "weir exited with {status}; its output:\n{}",
                self.proc.output_tail(20)
            );
        }
        Ok(())
    }
}

/// weir for the gRPC benchmark: a plain listener (HTTP/1.1 and h2c with prior knowledge), no
/// access log, one service whose only version is the tonic server over h2c.
pub fn weir_config(listen: u16, admin: u16, server: u16) -> String {
    format!(
        r#"listeners:
  - name: grpc
    address: 127.0.0.1:{listen}
admin:
  address: 127.0.0.1:{admin}
services:
  - name: grpc
    match:
      hosts: ["*"]
    stable:
      version: v1
      upstreams: ["127.0.0.1:{server}"]
      protocol: h2c
"#
    )
}

/// The body h2load sends: one gRPC message frame (flag 0: uncompressed, 4-byte big-endian length)
/// holding a [`Call`] with `text`.
pub fn grpc_frame(text: &str) -> Vec<u8> {
    let message = prost::Message::encode_to_vec(&Call {
        text: text.to_string(),
    });
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// weir's `weir_grpc_responses_total` for service `grpc`, by `grpc_status`.
fn grpc_statuses(admin: SocketAddr) -> Result<Vec<(String, u64)>> {
    let response = crate::http::get(admin, "/metrics", Duration::from_secs(10))?;
    if response.status != 200 {
        bail!("GET http://{admin}/metrics returned {}", response.status);
    }
    Ok(parse_grpc_statuses(&response.body))
}

fn parse_grpc_statuses(metrics: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("weir_grpc_responses_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if !labels.contains("service=\"grpc\"") {
            continue;
        }
        let Some(status) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_status=\""))
            .and_then(|s| s.strip_suffix('"'))
        else {
            continue;
        };
        // Counters may be written as floats ("12.0") or integers.
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        match out.iter_mut().find(|(s, _)| s == status) {
            Some((_, n)) => *n += value as u64,
            None => out.push((status.to_string(), value as u64)),
        }
    }
    out
}

/// Between `before` and `after`, exactly `calls` responses with `grpc_status="0"` and no other code.
fn check_grpc_ok(before: &[(String, u64)], after: &[(String, u64)], calls: u64) -> Result<()> {
    let get = |list: &[(String, u64)], status: &str| {
        list.iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n)
    };
    for (status, n) in after {
        let delta = n.saturating_sub(get(before, status));
        let expected = if status == "0" { calls } else { 0 };
        if delta != expected {
            bail!(
                "weir counted {delta} gRPC responses with grpc_status {status} during the run, \
                 expected {expected} (weir_grpc_responses_total{{service=\"grpc\"}})"
            );
        }
    }
    if get(after, "0").saturating_sub(get(before, "0")) != calls {
        bail!("weir counted no gRPC response with grpc_status 0 during the run, expected {calls}");
    }
    Ok(())
}

/// h2load's duration, rate and mean time per request.
#[derive(Debug, PartialEq)]
struct H2load {
    secs: f64,
    per_sec: f64,
    mean_us: f64,
}

/// `finished in 2.05s, 48765.23 req/s, 2.51MB/s` and
/// `time for request:      187us     11.34ms      1.85ms       925us    71.26%` (min, max, mean, …).
fn parse_h2load_times(output: &str) -> Result<H2load> {
    let finished = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in "))
        .context("no \"finished in\" line")?;
    let mut parts = finished.split(',').map(str::trim);
    let secs = parts
        .next()
        .and_then(duration_us)
        .context("no duration after \"finished in\"")?
        / 1e6;
    let per_sec = parts
        .next()
        .and_then(|p| p.strip_suffix(" req/s"))
        .and_then(|p| p.parse::<f64>().ok())
        .context("no req/s after \"finished in\"")?;
    let mean_us = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("time for request:"))
        .and_then(|rest| rest.split_whitespace().nth(2))
        .and_then(duration_us)
        .context("no mean in the \"time for request\" line")?;
    Ok(H2load {
        secs,
        per_sec,
        mean_us,
    })
}

/// `187us`, `11.34ms`, `2.05s` in µs.
fn duration_us(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Every run, the medians, and weir's ratio to direct per round.
fn render(runs: &[Run], rounds: u32, instructions: Option<u64>, callgrind_calls: u64) -> String {
    let mut out = String::from("\nRuns\n");
    out.push_str(&format!(
        "  {:<7}{:<8}{:>12}{:>12}{:>16}{:>16}{:>10}\n",
        "round", "path", "calls/s", "mean", "server CPU/call", "weir CPU/call", "weir CPU"
    ));
    for r in runs {
        let (weir_cpu, weir_percent) = r.weir_ticks.map_or_else(
            || ("-".to_string(), "-".to_string()),
            |t| {
                (
                    format!("{:.2}µs", r.us_per_call(t)),
                    format!("{:.0}%", r.cpu_percent(t)),
                )
            },
        );
        out.push_str(&format!(
            "  {:<7}{:<8}{:>12.0}{:>12}{:>16}{:>16}{:>10}\n",
            r.round,
            r.via.id(),
            r.calls_per_sec,
            format!("{:.0}µs", r.mean_us),
            format!("{:.2}µs", r.us_per_call(r.server_ticks)),
            weir_cpu,
            weir_percent
        ));
    }
    let of = |via: Via| runs.iter().filter(move |r| r.via == via);
    let direct = median(of(Via::Direct).map(|r| r.calls_per_sec).collect());
    let weir = median(of(Via::Weir).map(|r| r.calls_per_sec).collect());
    let weir_cpu = median(
        of(Via::Weir)
            .filter_map(|r| r.weir_ticks.map(|t| r.us_per_call(t)))
            .collect(),
    );
    out.push_str(&format!(
        "\nMedians of {rounds} rounds\n  direct      {direct:>10.0} calls/s\n  \
         through weir{weir:>10.0} calls/s   weir {weir_cpu:.2}µs CPU/call\n"
    ));
    let per_round: Vec<String> = (1..=rounds)
        .filter_map(|round| {
            let get = |via: Via| runs.iter().find(|r| r.round == round && r.via == via);
            Some(format!(
                "{:.2}",
                get(Via::Weir)?.calls_per_sec / get(Via::Direct)?.calls_per_sec
            ))
        })
        .collect();
    out.push_str(&format!(
        "\nRatio through weir / direct, calls/s: {:.2}×  [{}]\n",
        weir / direct,
        per_round.join(" ")
    ));
    if let Some(ir) = instructions {
        out.push_str(&format!(
            "\nInstructions (callgrind): {:.1} Ir per gRPC call through weir ({callgrind_calls} calls)\n",
            ir as f64 / callgrind_calls.max(1) as f64
        ));
    }
    out
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn frames_a_call_as_grpc() {
        let frame = grpc_frame("hi");
        // Field 1, wire type 2 (0x0a), length 2, "hi".
        assert_eq!(frame, vec![0, 0, 0, 0, 4, 0x0a, 2, b'h', b'i']);
    }

    #[test]
    fn parses_h2load_times() {
        let output = "finished in 2.05s, 48765.23 req/s, 2.51MB/s
requests: 100000 total, 100000 started, 100000 done, 100000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 100000 2xx, 0 3xx, 0 4xx, 0 5xx
                     min         max         mean         sd        +/- sd
time for request:      187us     11.34ms      1.85ms       925us    71.26%
";
        assert_eq!(
            parse_h2load_times(output).unwrap(),
            H2load {
                secs: 2.05,
                per_sec: 48765.23,
                mean_us: 1850.0,
            }
        );
        assert!(parse_h2load_times("finished in 1s\n").is_err());
        assert_eq!(duration_us("925us"), Some(925.0));
    }

    #[test]
    fn reads_grpc_statuses_and_checks_them() {
        let metrics = "# TYPE weir_grpc_responses counter
weir_grpc_responses_total{service=\"grpc\",version=\"v1\",grpc_status=\"0\"} 120
weir_grpc_responses_total{service=\"grpc\",version=\"v1\",grpc_status=\"14\"} 2
weir_grpc_responses_total{service=\"other\",version=\"v1\",grpc_status=\"0\"} 7
";
        let after = parse_grpc_statuses(metrics);
        assert_eq!(after, vec![("0".to_string(), 120), ("14".to_string(), 2)]);
        let before = vec![("0".to_string(), 20), ("14".to_string(), 2)];
        assert!(check_grpc_ok(&before, &after, 100).is_ok());
        assert!(check_grpc_ok(&before, &after, 99).is_err());
        assert!(check_grpc_ok(&[("0".to_string(), 20)], &after, 100).is_err());
        assert!(check_grpc_ok(&[], &[], 1).is_err());
    }

    #[test]
    fn the_weir_config_is_valid() {
        let model = weir_config::parse(&weir_config(8080, 3100, 50051), Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.services.len(), 1);
    }
}
