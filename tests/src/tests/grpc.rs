//! gRPC through weir to HTTP/2 (`protocol: h2c`) upstreams, with a real tonic server and client:
//! unary calls, bidirectional streaming in lock step (nothing buffered), trailers delivered,
//! `grpc-status` counted per version (server-side failures as errors, client-side codes not), and
//! a canary answering UNAVAILABLE to half its calls rolled back by the builtin analysis.
//!
//! The messages are hand-written prost structs and the service is routed by hand (what
//! `tonic-build` would generate), so the tests need no `protoc`.

// tonic's API is `Result<_, tonic::Status>` throughout.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::body::BoxBody;
use tonic::codec::{ProstCodec, Streaming};
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::server::{NamedService, StreamingService, UnaryService};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use weir_control::engine::rollout::Phase;

use crate::client::Http1;
use crate::metrics::{encode, sample};
use crate::proxy::{model, Proxy};
use crate::weir::{fill, Weir, HEADER};

mod tls;

/// A call: `text` is echoed; `code` is the gRPC status the server answers with (0: OK).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Call {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(int32, tag = "2")]
    pub code: i32,
}

/// A reply: the echoed text and the version that served it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

const UNARY: &str = "/weir.test.Echo/Unary";
const CHAT: &str = "/weir.test.Echo/Chat";

/// The echo service of one version.
#[derive(Clone)]
struct Echo {
    version: &'static str,
    /// When set, every second call answers UNAVAILABLE.
    flaky: Arc<AtomicBool>,
    /// When set, every call answers UNAVAILABLE.
    broken: Arc<AtomicBool>,
    /// Health probes (`GET /weir.test.Echo/health`) answered.
    probes: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Echo {
    fn answer(&self, call: Call) -> Result<Reply, Status> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if self.broken.load(Ordering::Relaxed) {
            return Err(Status::unavailable("broken upstream"));
        }
        if self.flaky.load(Ordering::Relaxed) && n % 2 == 1 {
            return Err(Status::unavailable("flaky canary"));
        }
        if call.code != 0 {
            let mut status = Status::new(Code::from_i32(call.code), "as asked");
            status
                .metadata_mut()
                .insert("x-trailer", "kept".parse().expect("a valid value"));
            return Err(status);
        }
        Ok(Reply {
            text: call.text,
            version: self.version.to_string(),
        })
    }
}

struct UnaryCall(Echo);

impl UnaryService<Call> for UnaryCall {
    type Response = Reply;
    type Future = BoxFuture<Response<Reply>, Status>;

    fn call(&mut self, request: Request<Call>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move { echo.answer(request.into_inner()).map(Response::new) })
    }
}

struct ChatCall(Echo);

type ReplyStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Reply, Status>> + Send>>;

impl StreamingService<Call> for ChatCall {
    type Response = Reply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;

    fn call(&mut self, request: Request<Streaming<Call>>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move {
            let mut calls = request.into_inner();
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                // One reply per call as it arrives; a call with a code ends the stream with it.
                while let Some(call) = calls.next().await {
                    let reply = call.and_then(|call| echo.answer(call));
                    let end = reply.is_err();
                    if tx.send(reply).await.is_err() || end {
                        break;
                    }
                }
            });
            Ok(Response::new(
                Box::pin(ReceiverStream::new(rx)) as ReplyStream
            ))
        })
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
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Reply, Call>::default());
            if request.uri().path() == "/weir.test.Echo/health" {
                echo.probes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(match request.uri().path() {
                UNARY => grpc.unary(UnaryCall(echo), request).await,
                CHAT => grpc.streaming(ChatCall(echo), request).await,
                // Anything else (an HTTP/1 client's plain GET): a plain answer naming the version.
                _ => http::Response::builder()
                    .header("x-served-by", echo.version)
                    .body(tonic::body::boxed(http_body_util::Full::new(
                        bytes::Bytes::from(format!("hello from {}", echo.version)),
                    )))
                    .expect("a valid response"),
            })
        })
    }
}

impl NamedService for Echo {
    const NAME: &'static str = "weir.test.Echo";
}

/// A tonic server for one version on `127.0.0.1:0`.
struct GrpcServer {
    addr: SocketAddr,
    echo: Echo,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl GrpcServer {
    async fn start(version: &'static str) -> GrpcServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let echo = Echo {
            version,
            flaky: Arc::default(),
            broken: Arc::default(),
            probes: Arc::default(),
            calls: Arc::default(),
        };
        let (stop, stopped) = oneshot::channel();
        let service = echo.clone();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("the gRPC server runs");
        });
        GrpcServer {
            addr,
            echo,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A tonic client of weir (h2c, prior knowledge).
async fn client(addr: SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("connect to weir");
    tonic::client::Grpc::new(channel)
}

async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    text: &str,
    code: Code,
) -> Result<Reply, Status> {
    client.ready().await.expect("the channel is ready");
    client
        .unary(
            Request::new(Call {
                text: text.to_string(),
                code: code as i32,
            }),
            PathAndQuery::from_static(UNARY),
            ProstCodec::default(),
        )
        .await
        .map(Response::into_inner)
}

const H2C_SHOP: &str = r#"
services:
  - name: shop
    stable: {version: v1, upstreams: ["${v1}"], protocol: h2c}
"#;

/// Unary calls and a bidirectional stream through weir to an h2c upstream; an HTTP/1 client to
/// the same upstream; trailers (status, message and metadata) reach the client; every outcome is
/// counted by its code, and only server-side failures are errors of the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_bidi_streaming_reach_an_h2c_upstream_and_outcomes_count_where_they_belong() {
    let v1 = GrpcServer::start("v1").await;
    let proxy = Proxy::start(model(H2C_SHOP, &[("v1", v1.addr)]));
    let mut grpc = client(proxy.addr()).await;

    let started = tokio::time::Instant::now();
    const N: usize = 200;
    for i in 0..N {
        let reply = unary(&mut grpc, &format!("call {i}"), Code::Ok)
            .await
            .expect("a unary call");
        assert_eq!(
            (reply.text.as_str(), reply.version.as_str()),
            (format!("call {i}").as_str(), "v1")
        );
    }
    let unary_took = started.elapsed();

    // Client-side codes (answered trailers-only, `grpc-status` in the head).
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::PermissionDenied,
    ] {
        let status = unary(&mut grpc, "bad", code).await.expect_err("an error");
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), "as asked");
        assert_eq!(
            status.metadata().get("x-trailer").map(|v| v.to_str().ok()),
            Some(Some("kept"))
        );
    }
    // A server-side failure.
    let status = unary(&mut grpc, "bad", Code::Internal)
        .await
        .expect_err("an error");
    assert_eq!(status.code(), Code::Internal);

    // Bidirectional streaming in lock step: each reply arrives before the next call is sent, so
    // nothing on the way buffers either direction.
    let (tx, rx) = mpsc::channel(1);
    grpc.ready().await.expect("ready");
    let started = tokio::time::Instant::now();
    let mut replies: Streaming<Reply> = grpc
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(CHAT),
            ProstCodec::default(),
        )
        .await
        .expect("the stream opens")
        .into_inner();
    const M: usize = 100;
    for i in 0..M {
        tx.send(Call {
            text: format!("message {i}"),
            code: 0,
        })
        .await
        .expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("the reply comes before the next call")
            .expect("a reply")
            .expect("not the end");
        assert_eq!(reply.text, format!("message {i}"));
    }
    let stream_took = started.elapsed();
    // The stream ends with an error in its trailers, metadata included.
    tx.send(Call {
        text: "end".into(),
        code: Code::NotFound as i32,
    })
    .await
    .expect("send");
    let end = replies
        .message()
        .await
        .expect_err("the stream ends with its status");
    assert_eq!(end.code(), Code::NotFound);
    assert_eq!(
        end.metadata().get("x-trailer").map(|v| v.to_str().ok()),
        Some(Some("kept"))
    );
    drop(tx);

    // A stream that ends well: `grpc-status: 0` in the trailers.
    let (tx, rx) = mpsc::channel(1);
    grpc.ready().await.expect("ready");
    let mut replies = grpc
        .streaming::<_, Call, Reply, _>(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(CHAT),
            ProstCodec::default(),
        )
        .await
        .expect("the stream opens")
        .into_inner();
    tx.send(Call {
        text: "one".into(),
        code: 0,
    })
    .await
    .expect("send");
    assert_eq!(
        replies.message().await.expect("a reply").expect("one").text,
        "one"
    );
    drop(tx);
    assert!(replies.message().await.expect("a clean end").is_none());
    assert!(
        replies.trailers().await.expect("trailers").is_some(),
        "trailers delivered"
    );

    // An HTTP/1 client to the same h2c upstream.
    let mut http1 = Http1::connect(proxy.addr()).await;
    let reply = http1.get("any.example.com", "/weir.test.Echo/hello").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from v1");

    let stats = proxy.version_stats("shop", "v1");
    let counts = stats.grpc_counts();
    let snapshot = stats.snapshot();
    // OK: N unary calls and the clean stream; 3, 5, 7 once each, 5 once more from the stream.
    assert_eq!(counts[0], N as u64 + 1, "{counts:?}");
    assert_eq!(
        (counts[3], counts[5], counts[7], counts[13]),
        (1, 2, 1, 1),
        "{counts:?}"
    );
    assert_eq!(
        snapshot.grpc_errors, 1,
        "only INTERNAL is the version's fault"
    );
    assert_eq!(snapshot.errors_5xx, 0);
    let text = encode(proxy.stats(), &proxy.routes());
    assert_eq!(
        sample(
            &text,
            r#"weir_grpc_responses_total{service="shop",version="v1",grpc_status="5"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"weir_grpc_responses_total{service="shop",version="v1",grpc_status="13"}"#
        ),
        Some(1.0)
    );
    eprintln!(
        "{N} unary calls through weir (h2c upstream) in {unary_took:?} ({:.0}/s, {} build, one \
         client in sequence); {M} bidi messages in lock step in {stream_took:?}; error rate {:?} \
         with {} client-side codes not counted",
        N as f64 / unary_took.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        snapshot.error_rate(),
        counts[3] + counts[5] + counts[7],
    );
    drop(grpc);
    proxy.shutdown().await;
    v1.stop().await;
}

/// A canary whose h2c upstream answers UNAVAILABLE to every second call (HTTP 200 each time) is
/// rolled back by a builtin error-rate analysis, like an HTTP canary answering 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_canary_answering_unavailable_to_half_its_calls_is_rolled_back() {
    let v1 = GrpcServer::start("v1").await;
    let v2 = GrpcServer::start("v2").await;
    v2.echo.flaky.store(true, Ordering::Relaxed);
    let yaml = fill(
        &format!(
            r#"{HEADER}services:
  - name: shop
    stable: {{version: v1, upstreams: ["${{v1}}"], protocol: h2c}}
    canary: {{version: v2, upstreams: ["${{v2}}"], protocol: h2c}}
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {{duration: 1m}}
        analysis:
          templates: [{{templateName: errors}}]
          startingStep: 0
analysisTemplates:
  - name: errors
    metrics:
      - name: error-rate
        interval: 500ms
        failureLimit: 0
        inconclusiveLimit: 100
        successCondition: result < 0.05
        provider: {{builtin: {{metric: error-rate, window: 5s, minRequests: 10}}}}
"#
        ),
        &[("v1", v1.addr), ("v2", v2.addr)],
    );
    let weir = Weir::start(&yaml).await;
    let addr = weir.addr();
    let traffic = tokio::spawn(async move {
        let mut grpc = client(addr).await;
        let mut unavailable = 0u64;
        loop {
            match unary(&mut grpc, "hi", Code::Ok).await {
                Ok(_) => {}
                Err(status) if status.code() == Code::Unavailable => unavailable += 1,
                Err(status) => panic!("unexpected {status:?}"),
            }
            if unavailable > 1_000_000 {
                break;
            }
        }
    });
    let started = tokio::time::Instant::now();
    let status = weir
        .wait_until("shop", Duration::from_secs(15), "rolled back", |s| {
            s.canary_weight == 0.0 && s.phase == Phase::Degraded
        })
        .await;
    let took = started.elapsed();
    traffic.abort();
    let _ = traffic.await;
    assert!(status.message.contains("error-rate"), "{}", status.message);
    assert_eq!(status.stable_version, "v1");
    eprintln!(
        "gRPC canary answering UNAVAILABLE to half its calls rolled back {took:?} after start: {}",
        status.message
    );
    weir.shutdown().await;
    v1.stop().await;
    v2.stop().await;
}

/// Outlier detection reads gRPC outcomes too: an upstream answering UNAVAILABLE (trailers-only)
/// to every call is ejected like one answering 503, while client-side codes never eject one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failing_every_grpc_call_is_ejected_but_client_side_codes_eject_nothing() {
    let a = GrpcServer::start("a").await;
    let b = GrpcServer::start("b").await;
    let yaml = r#"
services:
  - name: shop
    stable: {version: v1, upstreams: ["${a}", "${b}"], protocol: h2c}
    outlierDetection: { consecutiveFailures: 3, baseEjectionTime: 1m }
"#;
    let proxy = Proxy::builder(model(yaml, &[("a", a.addr), ("b", b.addr)]))
        .workers(1)
        .start();
    let mut grpc = client(proxy.addr()).await;
    // Client-side codes from both upstreams: 30 calls, 15 each, and neither is ejected.
    for _ in 0..30 {
        let status = unary(&mut grpc, "bad", Code::InvalidArgument)
            .await
            .expect_err("answered INVALID_ARGUMENT");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let calls = |s: &GrpcServer| s.echo.calls.load(Ordering::Relaxed);
    let (a0, b0) = (calls(&a), calls(&b));
    for _ in 0..10 {
        unary(&mut grpc, "ok", Code::Ok).await.expect("served");
    }
    assert_eq!(
        (calls(&a) - a0, calls(&b) - b0),
        (5, 5),
        "client-side codes ejected nothing"
    );

    // b fails every call: it is out after its third UNAVAILABLE in a row.
    b.echo.broken.store(true, Ordering::Relaxed);
    let mut unavailable = 0;
    for _ in 0..6 {
        if let Err(status) = unary(&mut grpc, "hi", Code::Ok).await {
            assert_eq!(status.code(), Code::Unavailable);
            unavailable += 1;
        }
    }
    assert_eq!(
        unavailable, 3,
        "b answered three calls before it was ejected"
    );
    let b_before = calls(&b);
    for i in 0..50 {
        let reply = unary(&mut grpc, "hi", Code::Ok)
            .await
            .unwrap_or_else(|e| panic!("call {i} after the ejection failed: {e:?}"));
        assert_eq!(reply.version, "a");
    }
    assert_eq!(calls(&b), b_before, "the ejected upstream got no call");
    let text = crate::metrics::encode(proxy.stats(), &proxy.routes());
    let series = |addr: SocketAddr| {
        format!(
            "weir_upstream_ejections_total{{service=\"shop\",version=\"v1\",upstream=\"{addr}\"}}"
        )
    };
    let ejections = (
        crate::metrics::sample(&text, &series(a.addr)),
        crate::metrics::sample(&text, &series(b.addr)),
    );
    assert_eq!(ejections, (Some(0.0), Some(1.0)));
    eprintln!(
        "figure: 30 INVALID_ARGUMENT answers ejected nothing; an upstream answering UNAVAILABLE to every call was ejected after 3 (weir_upstream_ejections_total a/b = {ejections:?}), then 50 of 50 calls were served by its sibling"
    );
    proxy.shutdown().await;
    a.stop().await;
    b.stop().await;
}

/// Active health checks speak HTTP/2 to an h2c version (a gRPC server answers no HTTP/1.1):
/// probes pass while the server is up, and an upstream that stops is taken out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_probe_an_h2c_version_over_http2() {
    let a = GrpcServer::start("a").await;
    let b = GrpcServer::start("b").await;
    let yaml = fill(
        &format!(
            r#"{HEADER}services:
  - name: shop
    stable: {{version: v1, upstreams: ["${{a}}", "${{b}}"], protocol: h2c}}
    healthCheck: {{ path: /weir.test.Echo/health, interval: 100ms, timeout: 100ms, unhealthyThreshold: 2, healthyThreshold: 1 }}
"#
        ),
        &[("a", a.addr), ("b", b.addr)],
    );
    let weir = Weir::start(&yaml).await;
    let admin = weir.admin();
    let healthy = |addr: SocketAddr| {
        format!("weir_upstream_healthy{{service=\"shop\",version=\"v1\",upstream=\"{addr}\"}}")
    };
    let probes = |s: &GrpcServer| s.echo.probes.load(Ordering::Relaxed);
    crate::assert_eventually!(probes(&a) >= 3 && probes(&b) >= 3);
    // Probes answered over HTTP/2 keep both in (a probe slowed past its timeout on a loaded
    // machine may flip one for an interval; it is back at the next pass).
    for server in [&a, &b] {
        crate::assert_eventually!(
            crate::admin::metric(admin, &healthy(server.addr)).await == Some(1.0)
        );
    }
    let (a_probes, b_probes) = (probes(&a), probes(&b));
    let b_addr = b.addr;
    let stopped = tokio::time::Instant::now();
    b.stop().await;
    crate::assert_eventually!(crate::admin::metric(admin, &healthy(b_addr)).await == Some(0.0));
    let out_after = stopped.elapsed();
    let mut grpc = client(weir.addr()).await;
    for _ in 0..20 {
        let reply = unary(&mut grpc, "hi", Code::Ok).await.expect("served by a");
        assert_eq!(reply.version, "a");
    }
    eprintln!(
        "figure: h2c upstreams probed over HTTP/2 ({a_probes} and {b_probes} probes answered, both healthy); the stopped one out {out_after:?} later, 20 of 20 calls served by the other"
    );
    weir.shutdown().await;
    a.stop().await;
}

/// Unary calls per second from 32 concurrent callers over 4 client connections, straight to the
/// tonic server and through weir (h2c upstream); weir dials one upstream connection per worker at
/// most, however many calls arrive at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unary_calls_share_one_upstream_connection_per_worker() {
    const CALLS: usize = 2_000;
    const CALLERS: usize = 32;
    const CHANNELS: usize = 4;
    let v1 = GrpcServer::start("v1").await;
    let workers = 2;
    let proxy = Proxy::builder(model(H2C_SHOP, &[("v1", v1.addr)]))
        .workers(workers)
        .start();

    async fn rate(addr: SocketAddr) -> f64 {
        let mut channels = Vec::new();
        for _ in 0..CHANNELS {
            channels.push(client(addr).await);
        }
        let started = tokio::time::Instant::now();
        let callers: Vec<_> = (0..CALLERS)
            .map(|i| {
                let mut grpc = channels[i % CHANNELS].clone();
                tokio::spawn(async move {
                    for n in 0..CALLS / CALLERS {
                        let reply = unary(&mut grpc, &format!("{i}/{n}"), Code::Ok)
                            .await
                            .expect("a call");
                        assert_eq!(reply.text, format!("{i}/{n}"));
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("a caller");
        }
        (CALLS / CALLERS * CALLERS) as f64 / started.elapsed().as_secs_f64()
    }

    let direct = rate(v1.addr).await;
    let through = rate(proxy.addr()).await;
    let stats = proxy.version_stats("shop", "v1");
    assert_eq!(stats.grpc_counts()[0], (CALLS / CALLERS * CALLERS) as u64);
    let connections = stats.upstream_connections();
    assert!(
        (1..=workers as u64).contains(&connections),
        "{connections} upstream connections for {workers} workers"
    );
    eprintln!(
        "{CALLERS} concurrent callers: {direct:.0} unary calls/s direct, {through:.0}/s through \
         weir ({:.0}%), {connections} upstream connection(s) for {workers} workers",
        through / direct * 100.0
    );
    proxy.shutdown().await;
    v1.stop().await;
}

/// A mirrored copy goes to an h2c canary over HTTP/2 (the mirror speaks the canary's protocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_copy_reaches_an_h2c_canary_over_http2() {
    use weir_config::{MirrorRoute, RequestMatch, StringMatch, Weight};
    use weir_proxy::routes::Policy;
    use weir_proxy::stats::TrafficKind;

    let v1 = crate::upstream::Server::spawn("v1");
    let v2 = GrpcServer::start("v2").await;
    let yaml = r#"
services:
  - name: shop
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"], protocol: h2c}
"#;
    let policy = Policy {
        weight: Weight::ZERO,
        mirror_routes: vec![MirrorRoute {
            name: "shadow".into(),
            percentage: Weight::from_percent(100.0).expect("a valid percentage"),
            any_of: vec![vec![RequestMatch::Method(StringMatch::Exact("GET".into()))]],
        }],
        ..Policy::default()
    };
    let proxy = Proxy::builder(model(yaml, &[("v1", v1.addr()), ("v2", v2.addr)]))
        .policy("shop", policy)
        .start();
    let mut http1 = Http1::connect(proxy.addr()).await;
    let reply = http1
        .get("shop.example.com", "/weir.test.Echo/mirror")
        .await;
    assert_eq!((reply.status.as_u16(), reply.served_by()), (200, "v1"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let counts = proxy
            .stats()
            .get_of(TrafficKind::Mirror, "shop", "v2")
            .map(|s| s.status_counts())
            .unwrap_or_default();
        if !counts.is_empty() || tokio::time::Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(counts, [(200, 1)], "the h2c canary answered the copy");
    eprintln!("mirrored copy to the h2c canary answered: {counts:?}");
    proxy.shutdown().await;
    v2.stop().await;
}
