//! Upstream health inside a version (issue #7): passive outlier detection ejects a failing
//! upstream with back-off and lets it back, never the last one; what clients break never ejects;
//! active health checks take an upstream out and back; with every upstream out traffic fails
//! open; retries never cross to the other version; health state survives a table rebuild that
//! keeps the address.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_config::{Model, Weight};
use weir_control::health::Checker;
use weir_proxy::stats::{ClientErrorKind, UpstreamErrorKind};

use crate::client::{self, Http1};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;
use crate::Refused;

const HOST: &str = "shop.example.com";

/// An upstream whose behaviour changes during a test: answers `status` (`x-version`,
/// `x-upstream: ADDR`), `/healthz` with `health`, and can stop listening (connections refused)
/// and start again on the same address.
struct Flaky {
    addr: SocketAddr,
    version: &'static str,
    status: Arc<AtomicU16>,
    health: Arc<AtomicU16>,
    served: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Flaky {
    fn spawn(version: &'static str) -> Flaky {
        let mut flaky = Flaky {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            version,
            status: Arc::new(AtomicU16::new(200)),
            health: Arc::new(AtomicU16::new(200)),
            served: Arc::default(),
            probes: Arc::default(),
            task: None,
        };
        flaky.listen();
        flaky
    }

    /// (Re)binds the address (the same one after [`Flaky::refuse`]) and serves.
    fn listen(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.addr).expect("bind");
        let listener = socket.listen(128).expect("listen");
        self.addr = listener.local_addr().expect("an address");
        let (addr, version) = (self.addr.to_string(), self.version);
        let (status, health) = (self.status.clone(), self.health.clone());
        let (served, probes) = (self.served.clone(), self.probes.clone());
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set: aborting the task closes every one of them.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (addr, status, health) = (addr.clone(), status.clone(), health.clone());
                let (served, probes) = (served.clone(), probes.clone());
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (addr, status, health) = (addr.clone(), status.clone(), health.clone());
                    let (served, probes) = (served.clone(), probes.clone());
                    async move {
                        let code = if request.uri().path() == "/healthz" {
                            probes.fetch_add(1, Relaxed);
                            health.load(Relaxed)
                        } else {
                            // Reads the whole body before answering.
                            let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                            served.fetch_add(1, Relaxed);
                            status.load(Relaxed)
                        };
                        let response = Response::builder()
                            .status(code)
                            .header("x-version", version)
                            .header("x-upstream", addr.as_str())
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .expect("a response");
                        Ok::<_, Infallible>(response)
                    }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Stops listening and closes every connection: new connections are refused.
    async fn refuse(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Relaxed);
    }

    fn answer_probes(&self, status: u16) {
        self.health.store(status, Relaxed);
    }

    fn served(&self) -> usize {
        self.served.load(Relaxed)
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `shop` with stable v1 on `${a}` and `${b}`, canary v2 on `${c}` (weight 0 unless published),
/// and `extra` lines for the service.
fn model(a: SocketAddr, b: SocketAddr, c: SocketAddr, extra: &str) -> Model {
    let text = format!(
        "services:
  - name: shop
    match: {{ hosts: [shop.example.com] }}
    stable: {{ version: v1, upstreams: [\"${{a}}\", \"${{b}}\"] }}
    canary: {{ version: v2, upstreams: [\"${{c}}\"] }}
{extra}"
    );
    proxy::model(&text, &[("a", a), ("b", b), ("c", c)])
}

/// `n` sequential requests on one keep-alive connection (a new one when weir closes it); the
/// statuses and who served each.
async fn burst(proxy: &Proxy, n: usize) -> Vec<(u16, String)> {
    let mut out = Vec::with_capacity(n);
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..n {
        if client.is_closed() {
            client = Http1::connect(proxy.addr()).await;
        }
        let reply = client.fetch(client::get(HOST, "/")).await;
        let by = reply.header("x-upstream").unwrap_or("").to_string();
        out.push((reply.status.as_u16(), by));
    }
    out
}

fn metric(proxy: &Proxy, series: &str) -> f64 {
    let text = crate::metrics::encode(proxy.stats(), &proxy.routes());
    crate::metrics::sample(&text, series).unwrap_or_else(|| panic!("no sample {series}"))
}

fn healthy(proxy: &Proxy, version: &str, addr: SocketAddr) -> f64 {
    metric(
        proxy,
        &format!(
            "weir_upstream_healthy{{service=\"shop\",version=\"{version}\",upstream=\"{addr}\"}}"
        ),
    )
}

fn ejections(proxy: &Proxy, addr: SocketAddr) -> f64 {
    metric(
        proxy,
        &format!(
            "weir_upstream_ejections_total{{service=\"shop\",version=\"v1\",upstream=\"{addr}\"}}"
        ),
    )
}

#[tokio::test]
async fn a_refusing_upstream_is_ejected_and_let_back_after_the_back_off() {
    let (mut a, b, c) = (Flaky::spawn("v1"), Flaky::spawn("v1"), Server::spawn("v2"));
    let model = model(
        a.addr,
        b.addr,
        c.addr(),
        "    outlierDetection: { consecutiveFailures: 3, baseEjectionTime: 400ms }\n",
    );
    let proxy = Proxy::builder(model).workers(1).start();
    let v1 = proxy.version_stats("shop", "v1");
    assert_eq!(
        burst(&proxy, 10)
            .await
            .iter()
            .filter(|r| r.0 == 200)
            .count(),
        10
    );

    a.refuse().await;
    let started = Instant::now();
    // Refused connections are retried on b: clients see 200 while a collects its failures.
    let replies = burst(&proxy, 40).await;
    assert!(replies.iter().all(|r| r.0 == 200), "{replies:?}");
    let refused = v1.upstream_errors(UpstreamErrorKind::Connect);
    let broken = v1.upstream_errors(UpstreamErrorKind::Protocol);
    assert_eq!(refused + broken, 3, "ejected after exactly 3 failures");
    assert_eq!(ejections(&proxy, a.addr), 1.0);
    assert_eq!(healthy(&proxy, "v1", a.addr), 0.0);
    assert_eq!(healthy(&proxy, "v1", b.addr), 1.0);
    // While ejected a gets no attempt at all.
    let replies = burst(&proxy, 50).await;
    assert!(replies
        .iter()
        .all(|r| r.0 == 200 && r.1 == b.addr.to_string()));
    assert_eq!(v1.upstream_errors(UpstreamErrorKind::Connect), refused);
    assert_eq!(v1.upstream_errors(UpstreamErrorKind::Protocol), broken);

    // Healthy again; after the back-off it gets its share back.
    a.listen();
    let before = a.served();
    crate::assert_eventually!(timeout = Duration::from_secs(5), {
        let _ = burst(&proxy, 4).await;
        a.served() > before
    });
    let back_after = started.elapsed();
    assert!(back_after >= Duration::from_millis(400), "{back_after:?}");
    let replies = burst(&proxy, 20).await;
    let on_a = replies.iter().filter(|r| r.1 == a.addr.to_string()).count();
    assert!(replies.iter().all(|r| r.0 == 200));
    assert_eq!(on_a, 10, "round-robin again: {replies:?}");
    assert_eq!(healthy(&proxy, "v1", a.addr), 1.0);
    eprintln!(
        "FIGURE: refusing upstream ejected after {refused} refused connects (0 client errors: retried on its sibling), \
         0 attempts on it while ejected (50 requests), back in rotation {back_after:?} after it started refusing (base ejection 400ms), 10/20 on it again"
    );
    proxy.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn an_upstream_answering_5xx_is_ejected_and_the_version_recovers() {
    let (a, b, c) = (Flaky::spawn("v1"), Flaky::spawn("v1"), Server::spawn("v2"));
    let model = model(
        a.addr,
        b.addr,
        c.addr(),
        "    outlierDetection: { consecutiveFailures: 5, baseEjectionTime: 10s }\n",
    );
    let proxy = Proxy::builder(model).workers(2).start();
    let v1 = proxy.version_stats("shop", "v1");
    b.answer(503);
    let replies = burst(&proxy, 40).await;
    let failed = replies.iter().filter(|r| r.0 == 503).count();
    assert_eq!(failed, 5, "5 consecutive 503 eject b: {replies:?}");
    assert_eq!(ejections(&proxy, b.addr), 1.0);
    let before = v1.snapshot();
    let replies = burst(&proxy, 100).await;
    assert!(replies
        .iter()
        .all(|r| r.0 == 200 && r.1 == a.addr.to_string()));
    let after = v1.snapshot();
    let window = after.since(&before);
    assert_eq!(window.success_rate(), Some(1.0));
    eprintln!(
        "FIGURE: upstream answering 503 ejected after {failed} of 40 requests; the next 100 requests 100% 200 (success rate {:?} → 1.0)",
        before.success_rate()
    );
    proxy.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn the_last_upstream_of_a_version_is_never_ejected() {
    let (a, b) = (Flaky::spawn("v1"), Flaky::spawn("v1"));
    let canary = Refused::new();
    a.answer(500);
    b.answer(500);
    let model = model(
        a.addr,
        b.addr,
        canary.addr(),
        "    outlierDetection: { consecutiveFailures: 2, maxEjectionPercent: 100 }\n",
    );
    let proxy = Proxy::builder(model)
        .workers(1)
        .weight("shop", Weight::from_percent(50.0).expect("a weight"))
        .start();
    let replies = burst(&proxy, 200).await;
    let served_500 = replies.iter().filter(|r| r.0 == 500).count();
    let refused_502 = replies.iter().filter(|r| r.0 == 502).count();
    assert_eq!((served_500, refused_502), (100, 100));
    let out = [a.addr, b.addr]
        .iter()
        .filter(|addr| healthy(&proxy, "v1", **addr) == 0.0)
        .count();
    assert_eq!(out, 1, "one of two may go, never both");
    assert_eq!(ejections(&proxy, a.addr) + ejections(&proxy, b.addr), 1.0);
    // The canary's only upstream refuses 100 times and stays in.
    assert_eq!(healthy(&proxy, "v2", canary.addr()), 1.0);
    eprintln!(
        "FIGURE: 200 requests, every upstream failing: 1 of 2 stable upstreams ejected (never the last), the canary's single upstream never ejected after 100 refused connects"
    );
    proxy.shutdown().await;
}

/// Sends a head announcing `Content-Length: 1000` and 10 bytes, then stalls (or leaves).
async fn stall_body(proxy: SocketAddr, leave: bool) {
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .await
        .expect("write");
    if leave {
        // Give weir the head before leaving.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
        return;
    }
    let mut rest = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await;
    assert!(
        String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn client_failures_never_eject() {
    let (a, b, c) = (Flaky::spawn("v1"), Flaky::spawn("v1"), Server::spawn("v2"));
    let model = model(
        a.addr,
        b.addr,
        c.addr(),
        "    outlierDetection: { consecutiveFailures: 1 }\n    upstream: { requestBodyTimeout: 200ms, maxRequestBodySize: 5000 }\n",
    );
    let proxy = Proxy::builder(model).workers(2).start();
    let v1 = proxy.version_stats("shop", "v1");
    let started = Instant::now();
    let stalls: Vec<_> = (0..20)
        .map(|i| tokio::spawn(stall_body(proxy.addr(), i % 2 == 1)))
        .collect();
    for stall in stalls {
        stall.await.expect("a stalled client");
    }
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..10 {
        let request = client::request(
            http::Method::POST,
            HOST,
            "/",
            crate::TestBody::full(vec![b'x'; 10_000]),
        );
        assert_eq!(
            client.fetch(request).await.status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        if client.is_closed() {
            client = Http1::connect(proxy.addr()).await;
        }
    }
    crate::assert_eventually!(
        v1.client_errors(ClientErrorKind::BodyTimeout)
            + v1.client_errors(ClientErrorKind::Disconnect)
            >= 20
    );
    let clients = ClientErrorKind::ALL
        .iter()
        .map(|k| v1.client_errors(*k))
        .sum::<u64>();
    for addr in [a.addr, b.addr] {
        assert_eq!(ejections(&proxy, addr), 0.0);
        assert_eq!(healthy(&proxy, "v1", addr), 1.0);
    }
    let replies = burst(&proxy, 10).await;
    assert_eq!(
        replies.iter().filter(|r| r.1 == a.addr.to_string()).count(),
        5
    );
    eprintln!(
        "FIGURE: {clients} client-caused failures (10 stalled bodies → 408, 10 disconnects, 10 bodies over the limit → 413) with consecutiveFailures: 1: 0 ejections, both upstreams healthy ({:?})",
        started.elapsed()
    );
    proxy.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn an_active_check_takes_an_upstream_out_and_back() {
    let (a, b, c) = (Flaky::spawn("v1"), Flaky::spawn("v1"), Server::spawn("v2"));
    let model = model(
        a.addr,
        b.addr,
        c.addr(),
        "    outlierDetection: { enabled: false }
    healthCheck: { path: /healthz, interval: 100ms, timeout: 100ms, healthyThreshold: 2, unhealthyThreshold: 2 }
",
    );
    let proxy = Proxy::builder(model).workers(1).start();
    let mut checker = Checker::default();
    checker.reconcile(&proxy.routes().current());
    assert_eq!(checker.len(), 3, "one probe per upstream of each version");
    crate::assert_eventually!(a.probes.load(Relaxed) >= 1 && c.requests() >= 1);

    b.answer_probes(503);
    let down = Instant::now();
    crate::assert_eventually!(healthy(&proxy, "v1", b.addr) == 0.0);
    let down_after = down.elapsed();
    let served = b.served();
    let replies = burst(&proxy, 50).await;
    assert!(
        replies
            .iter()
            .all(|r| r.0 == 200 && r.1 == a.addr.to_string()),
        "{replies:?} a={} b={} healthy a={} b={} fail open {}",
        a.addr,
        b.addr,
        healthy(&proxy, "v1", a.addr),
        healthy(&proxy, "v1", b.addr),
        metric(
            &proxy,
            "weir_upstream_fail_open_total{service=\"shop\",version=\"v1\"}"
        ),
    );
    assert_eq!(b.served(), served, "no traffic to an unhealthy upstream");

    b.answer_probes(200);
    let up = Instant::now();
    crate::assert_eventually!(healthy(&proxy, "v1", b.addr) == 1.0);
    let up_after = up.elapsed();
    let replies = burst(&proxy, 20).await;
    assert_eq!(
        replies.iter().filter(|r| r.1 == b.addr.to_string()).count(),
        10
    );
    eprintln!(
        "FIGURE: active check (100ms interval, 2 failures / 2 passes): out {down_after:?} after /healthz turned 503, 0 of 50 requests to it, back {up_after:?} after it turned 200"
    );
    drop(checker);
    let probes = a.probes.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        a.probes.load(Relaxed) <= probes + 1,
        "probes stop with the checker"
    );
    proxy.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn every_upstream_unhealthy_fails_open() {
    let (a, b, c) = (Flaky::spawn("v1"), Flaky::spawn("v1"), Server::spawn("v2"));
    let model = model(
        a.addr,
        b.addr,
        c.addr(),
        "    healthCheck: { path: /healthz, interval: 50ms, timeout: 50ms, unhealthyThreshold: 1 }\n",
    );
    let proxy = Proxy::builder(model).workers(1).start();
    let mut checker = Checker::default();
    checker.reconcile(&proxy.routes().current());
    a.answer_probes(500);
    b.answer_probes(500);
    crate::assert_eventually!(
        healthy(&proxy, "v1", a.addr) == 0.0 && healthy(&proxy, "v1", b.addr) == 0.0
    );
    let replies = burst(&proxy, 20).await;
    assert!(replies.iter().all(|r| r.0 == 200));
    let on_a = replies.iter().filter(|r| r.1 == a.addr.to_string()).count();
    let fail_open = metric(
        &proxy,
        "weir_upstream_fail_open_total{service=\"shop\",version=\"v1\"}",
    );
    assert_eq!(fail_open, 20.0);
    eprintln!(
        "FIGURE: both upstreams failing their checks: 20/20 requests still served (fail open, {on_a} on a), weir_upstream_fail_open_total = {fail_open}"
    );
    drop(checker);
    proxy.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_retry_never_crosses_to_the_canary() {
    let (a, b) = (Refused::new(), Refused::new());
    let canary = Server::spawn("v2");
    let model = model(a.addr(), b.addr(), canary.addr(), "");
    let proxy = Proxy::builder(model)
        .workers(1)
        .weight("shop", Weight::from_percent(10.0).expect("a weight"))
        .start();
    let replies = burst(&proxy, 100).await;
    let to_canary = replies.iter().filter(|r| r.0 == 200).count();
    let failed = replies.iter().filter(|r| r.0 == 502).count();
    assert_eq!((to_canary, failed), (10, 90));
    assert_eq!(
        canary.requests(),
        10,
        "only the split's share reaches the canary"
    );
    let v1 = proxy.version_stats("shop", "v1").snapshot();
    assert_eq!((v1.requests, v1.errors_5xx), (90, 90));
    eprintln!(
        "FIGURE: stable with every upstream refusing, canary at 10%: 90/90 stable requests 502 (charged to v1), canary got exactly its 10 — no retry crossed versions"
    );
    proxy.shutdown().await;
    canary.shutdown().await;
}

#[tokio::test]
async fn health_state_survives_a_rebuild_that_keeps_the_address() {
    let (mut a, b, c, d) = (
        Flaky::spawn("v1"),
        Flaky::spawn("v1"),
        Server::spawn("v2"),
        Flaky::spawn("v1"),
    );
    let extra = "    outlierDetection: { consecutiveFailures: 2, baseEjectionTime: 1h, maxEjectionTime: 2h }
    healthCheck: { path: /healthz, interval: 10s, timeout: 2s }
";
    let first = model(a.addr, b.addr, c.addr(), extra);
    let proxy = Proxy::builder(first).workers(1).start();
    let mut checker = Checker::default();
    checker.reconcile(&proxy.routes().current());
    assert_eq!(checker.len(), 3);
    a.refuse().await;
    let _ = burst(&proxy, 10).await;
    assert_eq!(ejections(&proxy, a.addr), 1.0);

    // A reload that keeps a, drops b and adds d, with a new weight.
    let second = model(a.addr, d.addr, c.addr(), extra);
    let mut weights = BTreeMap::new();
    weights.insert(
        "shop".to_string(),
        Weight::from_percent(5.0).expect("a weight"),
    );
    proxy.publish(&second, &weights, &BTreeMap::new());
    checker.reconcile(&proxy.routes().current());
    assert_eq!(checker.len(), 3, "b's probe stopped, d's started");
    assert_eq!(healthy(&proxy, "v1", a.addr), 0.0, "still ejected");
    assert_eq!(ejections(&proxy, a.addr), 1.0);
    let b_probes = b.probes.load(Relaxed);
    crate::assert_eventually!(d.probes.load(Relaxed) >= 1);
    assert!(
        b.probes.load(Relaxed) <= b_probes + 1,
        "no probes of a removed upstream"
    );
    let replies = burst(&proxy, 40).await;
    assert!(replies.iter().all(|r| r.0 == 200));
    assert!(!replies.iter().any(|r| r.1 == a.addr.to_string()));
    eprintln!(
        "FIGURE: after a rebuild keeping the ejected address (1h back-off): still ejected, 0 of 40 requests to it; probes 3 → 3 (removed one stopped, new one started)"
    );
    drop(checker);
    proxy.shutdown().await;
    c.shutdown().await;
}

/// The whole of weir: the app runs the probes, a reload stops the probes of a removed upstream,
/// shutdown stops them all.
#[tokio::test]
async fn weir_probes_follow_reloads_and_stop_on_shutdown() {
    use crate::weir::{fill, Weir, HEADER};
    let (a, b) = (Flaky::spawn("v1"), Flaky::spawn("v1"));
    let template = |upstreams: &str| {
        format!(
            "{HEADER}services:
  - name: shop
    match: {{ hosts: [shop.example.com] }}
    stable: {{ version: v1, upstreams: [{upstreams}] }}
    healthCheck: {{ path: /healthz, interval: 100ms, timeout: 100ms, unhealthyThreshold: 2, healthyThreshold: 1 }}
"
        )
    };
    let vars = [("a", a.addr), ("b", b.addr)];
    let weir = Weir::start(&fill(&template("\"${a}\", \"${b}\""), &vars)).await;
    b.answer_probes(503);
    let series = format!(
        "weir_upstream_healthy{{service=\"shop\",version=\"v1\",upstream=\"{}\"}}",
        b.addr
    );
    let admin = weir.admin();
    crate::assert_eventually!(crate::admin::metric(admin, &series).await == Some(0.0));
    let mut client = Http1::connect(weir.addr()).await;
    for _ in 0..20 {
        let reply = client.get(HOST, "/").await;
        assert_eq!(
            reply.header("x-upstream"),
            Some(a.addr.to_string().as_str())
        );
    }
    let generation = weir.generation();
    weir.write_atomic(&fill(&template("\"${a}\""), &vars));
    weir.wait_generation_after(generation, Duration::from_secs(5))
        .await;
    // The reconcile follows the publish: b's probes stop, a's go on.
    let settled = |probes: &AtomicUsize| {
        let before = probes.load(Relaxed);
        async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            before
        }
    };
    crate::assert_eventually!({
        let before = settled(&b.probes).await;
        b.probes.load(Relaxed) == before
    });
    let a_before = a.probes.load(Relaxed);
    crate::assert_eventually!(a.probes.load(Relaxed) > a_before);
    weir.shutdown().await;
    let a_after = settled(&a.probes).await;
    assert!(
        a.probes.load(Relaxed) <= a_after + 1,
        "probes stop on shutdown"
    );
    eprintln!(
        "FIGURE: weir run: an upstream failing /healthz got 0 of 20 requests; after a reload removing it its probes stopped, and every probe stopped on shutdown"
    );
}

/// Probes that time out (a hanging upstream) mark it down and leave no connection behind; a
/// hanging upstream's requests (no head within `responseTimeout`, 504) eject it too.
#[tokio::test]
async fn hanging_upstreams_are_taken_out_and_probes_leak_nothing() {
    use crate::faulty::{self, Script};
    let hang = faulty::Upstream::spawn(Script::Hang);
    let (a, c) = (Flaky::spawn("v1"), Server::spawn("v2"));
    let mut model = model(
        a.addr,
        hang.addr(),
        c.addr(),
        "    healthCheck: { path: /healthz, interval: 100ms, timeout: 90ms, unhealthyThreshold: 3 }\n",
    );
    model.services[0].upstream.response_timeout = Duration::from_millis(100);
    let proxy = Proxy::builder(model).workers(1).start();
    let mut checker = Checker::default();
    checker.reconcile(&proxy.routes().current());
    let started = Instant::now();
    crate::assert_eventually!(healthy(&proxy, "v1", hang.addr()) == 0.0);
    let down_after = started.elapsed();
    let replies = burst(&proxy, 20).await;
    assert!(replies
        .iter()
        .all(|r| r.0 == 200 && r.1 == a.addr.to_string()));
    let probes = hang.accepted();
    drop(checker);
    // Every probe connection is closed: by its timeout, and the last one when the checker stops.
    crate::assert_eventually!(hang.open() == 0, "{} probe connections open", hang.open());
    proxy.shutdown().await;

    // Without a health check, outlier detection ejects it after 2 timeouts (504 each).
    let mut model = self::model(
        a.addr,
        hang.addr(),
        c.addr(),
        "    outlierDetection: { consecutiveFailures: 2 }\n",
    );
    model.services[0].upstream.response_timeout = Duration::from_millis(100);
    let proxy = Proxy::builder(model).workers(1).start();
    let replies = burst(&proxy, 20).await;
    let timed_out = replies.iter().filter(|r| r.0 == 504).count();
    assert_eq!(timed_out, 2);
    assert_eq!(replies.iter().filter(|r| r.0 == 200).count(), 18);
    assert_eq!(ejections(&proxy, hang.addr()), 1.0);
    crate::assert_eventually!(
        hang.open() == 0 && proxy.version_stats("shop", "v1").upstream_connections() <= 1,
        "{} connections open at the hanging upstream",
        hang.open()
    );
    eprintln!(
        "FIGURE: hanging upstream: out by its probes (90ms timeout ×3) in {down_after:?}, {probes} probe connections, 0 left open; \
         without probes ejected after {timed_out} × 504, then 18/18 requests 200; 0 connections leaked"
    );
    proxy.shutdown().await;
    hang.shutdown().await;
    c.shutdown().await;
}
