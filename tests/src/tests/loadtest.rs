//! The built-in load test (issue #9): requests of weir's own pinned to a version
//! (`weir_proxy::Pinned`) reach only that version's upstreams and are counted under it; no client
//! request can pin; a version not in the table is skipped; the `LoadTester` paces a watched set
//! of targets, follows rate changes and stops.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use weir_config::{LoadTarget, LoadTest, Weight};
use weir_control::loadtest::{LoadResult, LoadTestMetrics, LoadTester, USER_AGENT_VALUE};
use weir_proxy::{Pinned, PinnedOutcome, PinnedRequest};

use super::{shop, SHOP};
use crate::client::{self, Http1};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;
use crate::TestBody;

fn pinned_get(service: &str, version: &str, path: &str) -> PinnedRequest {
    PinnedRequest {
        service: service.into(),
        version: version.into(),
        method: Method::GET,
        path: path.parse().expect("a path"),
        headers: HeaderMap::new(),
        timeout: Duration::from_secs(5),
    }
}

/// An upstream that records every request head it answers (200, `x-version: v2`).
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<http::request::Parts>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn spawn() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("an address");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (parts, _) = request.into_parts();
                        recorded
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(parts);
                        async {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("x-version", "v2")
                                    .body(TestBody::full("v2"))
                                    .expect("a response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder { addr, heads, task }
    }

    fn heads(&self) -> Vec<http::request::Parts> {
        self.heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_pinned_request_reaches_only_its_version_and_counts_under_it() {
    let v1 = Server::spawn("v1");
    let v2 = Recorder::spawn().await;
    let model = proxy::model(
        &SHOP.replace(
            r#"hosts: ["shop.example.com"]"#,
            r#"hosts: ["*.example.com", "shop.example.com", "www.example.com"]"#,
        ),
        &[("v1", v1.addr()), ("v2", v2.addr)],
    );
    // Weight 0: every client request goes to stable.
    let proxy = Proxy::builder(model).weight("shop", Weight::ZERO).start();
    let pinned = Pinned::spawn(&proxy.routes()).expect("the pinned thread");
    const N: usize = 20;
    let started = Instant::now();
    for _ in 0..N {
        let mut request = pinned_get("shop", "v2", "/health?probe=1");
        request
            .headers
            .insert("user-agent", HeaderValue::from_static(USER_AGENT_VALUE));
        request
            .headers
            .insert("x-request-id", HeaderValue::from_static("forged"));
        let outcome = pinned.send(request).await;
        assert_eq!(outcome, PinnedOutcome::Answered(StatusCode::OK));
    }
    let elapsed = started.elapsed();
    let heads = v2.heads();
    assert_eq!(heads.len(), N);
    assert_eq!(v1.requests(), 0, "nothing reaches stable");
    let head = &heads[0];
    assert_eq!(head.uri, "/health?probe=1");
    assert_eq!(
        head.headers["host"], "shop.example.com",
        "the first exact host"
    );
    assert_eq!(head.headers["user-agent"], USER_AGENT_VALUE);
    assert_eq!(head.headers["x-forwarded-for"], "127.0.0.1");
    let id = head.headers["x-request-id"].to_str().expect("ascii");
    assert!(
        id != "forged" && !id.is_empty(),
        "the data plane's id: {id}"
    );
    let ids: std::collections::HashSet<_> = heads
        .iter()
        .map(|h| h.headers["x-request-id"].clone())
        .collect();
    assert_eq!(ids.len(), N, "one id per request");
    let snapshot = proxy.version_stats("shop", "v2").snapshot();
    assert_eq!(snapshot.requests, N as u64);
    assert_eq!(proxy.version_stats("shop", "v1").snapshot().requests, 0);
    let text = crate::metrics::encode(proxy.stats(), &proxy.routes());
    assert_eq!(
        crate::metrics::sample(
            &text,
            r#"http_requests_total{service="shop",version="v2",status="200"}"#
        ),
        Some(N as f64),
        "{text}"
    );
    eprintln!(
        "{N} pinned requests in {elapsed:?} ({:.0} µs each): all under shop/v2, none at stable",
        elapsed.as_secs_f64() * 1e6 / N as f64
    );
    drop(pinned);
    proxy.shutdown().await;
    v1.shutdown().await;
}

#[tokio::test]
async fn no_client_request_can_pin_a_version() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", Weight::ZERO)
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    let pins: [(&str, &str); 8] = [
        ("user-agent", USER_AGENT_VALUE),
        ("x-weir-version", "v2"),
        ("x-weir-pin", "v2"),
        ("x-weir-pinned", "shop/v2"),
        ("x-weir-loadtest", "v2"),
        ("x-version", "v2"),
        ("x-canary", "always"),
        ("forwarded", "for=127.0.0.1"),
    ];
    let mut sent = 0;
    for (name, value) in pins {
        for path in ["/", "/health", "/weir/pinned/v2"] {
            let mut request = client::get("shop.example.com", path);
            request
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
            request
                .headers_mut()
                .insert("x-forwarded-for", HeaderValue::from_static("127.0.0.1"));
            let reply = client.fetch(request).await;
            assert_eq!(
                (reply.status, reply.served_by()),
                (StatusCode::OK, "v1"),
                "{name}: {value} on {path}"
            );
            sent += 1;
        }
    }
    // The pinned path's listener name is no listener's; no host leads to it either.
    let reply = client.get("weir pinned", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(v2.requests(), 0);
    assert_eq!(v1.requests(), sent);
    eprintln!("{sent} client requests dressed as pinned ones: all at stable (weight 0)");
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn a_version_not_in_the_table_is_skipped_and_a_slow_one_is_charged_a_504() {
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2")
        .delay(Duration::from_millis(1500))
        .spawn();
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", Weight::ZERO)
        .start();
    let pinned = Pinned::spawn(&proxy.routes()).expect("the pinned thread");
    for (service, version) in [("shop", "v3"), ("cart", "v2")] {
        let outcome = pinned.send(pinned_get(service, version, "/")).await;
        assert_eq!(outcome, PinnedOutcome::Skipped, "{service}/{version}");
    }
    let outcome = pinned.send(pinned_get("shop", "v2", "/a/../../etc")).await;
    assert_eq!(outcome, PinnedOutcome::Skipped, "a path above the root");
    // The load test's timeout (300 ms) is below the service's responseTimeout (30 s): the
    // version did not answer in time, a 504 charged to it.
    let mut slow = pinned_get("shop", "v2", "/");
    slow.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = pinned.send(slow).await;
    let waited = started.elapsed();
    assert_eq!(
        outcome,
        PinnedOutcome::Answered(StatusCode::GATEWAY_TIMEOUT)
    );
    assert_eq!(LoadResult::of(outcome), LoadResult::Timeout);
    assert!(waited < Duration::from_millis(1200), "{waited:?}");
    let snapshot = proxy.version_stats("shop", "v2").snapshot();
    assert_eq!(snapshot.requests, 1, "{snapshot:?}");
    // The canary goes away: its requests are no longer sent.
    let without_canary = proxy::model(
        "services:\n  - name: shop\n    match: {hosts: [\"shop.example.com\"]}\n    stable: {version: v1, upstreams: [\"${v1}\"]}\n",
        &[("v1", v1.addr())],
    );
    proxy.publish(&without_canary, &BTreeMap::new(), &BTreeMap::new());
    let outcome = pinned.send(pinned_get("shop", "v2", "/")).await;
    assert_eq!(outcome, PinnedOutcome::Skipped);
    assert_eq!(v2.requests(), 1, "only the timed-out one reached v2");
    assert_eq!(v1.requests(), 0);
    eprintln!(
        "missing service/version skipped; a canary slower than timeout 300ms answered 504 after {waited:?}"
    );
    drop(pinned);
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

fn target(rate: u32) -> LoadTarget {
    LoadTarget {
        service: "shop".into(),
        version: "v2".into(),
        load: LoadTest {
            rate,
            path: "/health".into(),
            method: "GET".into(),
            headers: vec![("x-load".into(), "1".into())],
            timeout: Duration::from_secs(2),
        },
    }
}

/// Waits until `server` has answered `more` requests beyond `from`; the achieved rate, measured
/// from the first of them.
async fn measure(server: &Server, more: usize) -> (f64, Duration) {
    let first = server.requests() + 1;
    crate::assert_eventually!(
        timeout = Duration::from_secs(10),
        server.requests() >= first
    );
    let started = Instant::now();
    let from = server.requests();
    crate::assert_eventually!(
        timeout = Duration::from_secs(10),
        server.requests() >= from + more
    );
    let elapsed = started.elapsed();
    let counted = server.requests() - from;
    (counted as f64 / elapsed.as_secs_f64(), elapsed)
}

#[tokio::test]
async fn the_load_tester_paces_the_canary_follows_changes_and_stops() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", Weight::ZERO)
        .start();
    let metrics = LoadTestMetrics::default();
    let (targets, targets_rx) = watch::channel(Vec::new());
    let tester =
        LoadTester::spawn(&proxy.routes(), targets_rx, metrics.clone()).expect("the load tester");

    // Rate 20: 30 requests take about 1.5 s.
    targets.send_replace(vec![target(20)]);
    let (rate20, took20) = measure(&v2, 30).await;
    assert!(
        (15.0..=25.0).contains(&rate20),
        "asked 20/s, got {rate20:.1}/s over {took20:?}"
    );
    assert_eq!(v1.requests(), 0, "only the canary is loaded");

    // Rate 50: 50 requests take about 1 s.
    targets.send_replace(vec![target(50)]);
    // The first requests may still be at the old pace: measure from the next one on.
    let _ = measure(&v2, 2).await;
    let (rate50, took50) = measure(&v2, 50).await;
    assert!(
        (40.0..=60.0).contains(&rate50),
        "asked 50/s, got {rate50:.1}/s over {took50:?}"
    );

    // A version not in the table: skipped, nothing sent.
    let mut missing = target(20);
    missing.version = "v9".into();
    targets.send_replace(vec![missing]);
    crate::assert_eventually!(metrics.count("shop", LoadResult::Skipped) >= 3);

    // Stop: once the count settles, nothing more arrives.
    targets.send_replace(Vec::new());
    let ok = metrics.count("shop", LoadResult::Ok);
    crate::assert_eventually!(
        v2.requests() as u64 == ok,
        "every request answered and counted ({} at v2, {ok} ok)",
        v2.requests()
    );
    let settled = v2.requests();
    // Absence can only be watched for: ten periods of the last rate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(v2.requests(), settled, "no request after the stop");
    assert_eq!(metrics.count("shop", LoadResult::Error), 0);
    assert_eq!(metrics.count("shop", LoadResult::Timeout), 0);
    assert_eq!(
        proxy.version_stats("shop", "v2").snapshot().requests,
        settled as u64,
        "every load-test request counted under the canary"
    );
    assert_eq!(v1.requests(), 0);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert_eq!(
        crate::metrics::sample(
            &text,
            r#"weir_loadtest_requests_total{service="shop",result="ok"}"#
        ),
        Some(settled as f64),
        "{text}"
    );
    eprintln!(
        "load tester: asked 20/s → {rate20:.1}/s over {took20:?}; asked 50/s → {rate50:.1}/s over {took50:?}; \
         {settled} requests at the canary, 0 at stable, none after the stop"
    );
    tester.stop().await;
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn a_slow_canary_gets_timeouts_at_the_asked_pace_without_piling_up() {
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2").delay(Duration::from_secs(3)).spawn();
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", Weight::ZERO)
        .start();
    let metrics = LoadTestMetrics::default();
    let (targets, targets_rx) = watch::channel(Vec::new());
    let tester =
        LoadTester::spawn(&proxy.routes(), targets_rx, metrics.clone()).expect("the load tester");
    // 40/s with a 250 ms timeout: at most 10 in flight; every request times out (504).
    let mut slow = target(40);
    slow.load.timeout = Duration::from_millis(250);
    targets.send_replace(vec![slow]);
    let ended = || {
        LoadResult::ALL
            .iter()
            .map(|r| metrics.count("shop", *r))
            .sum::<u64>()
    };
    crate::assert_eventually!(ended() >= 1);
    let started = Instant::now();
    let from = ended();
    crate::assert_eventually!(timeout = Duration::from_secs(10), ended() >= from + 40);
    let elapsed = started.elapsed();
    let pace = (ended() - from) as f64 / elapsed.as_secs_f64();
    targets.send_replace(Vec::new());
    let timeouts = metrics.count("shop", LoadResult::Timeout);
    let skipped = metrics.count("shop", LoadResult::Skipped);
    assert_eq!(metrics.count("shop", LoadResult::Ok), 0);
    assert_eq!(metrics.count("shop", LoadResult::Error), 0);
    assert!(timeouts >= 30, "{timeouts} timeouts, {skipped} skipped");
    assert!(
        (30.0..=50.0).contains(&pace),
        "asked 40/s, {pace:.1}/s ended (timeouts and skips) over {elapsed:?}"
    );
    let v2_stats = proxy.version_stats("shop", "v2").snapshot();
    assert!(
        v2_stats.requests >= timeouts,
        "the 504s are the canary's: {v2_stats:?}"
    );
    eprintln!(
        "slow canary (3 s) at 40/s, timeout 250ms: {pace:.1}/s ended over {elapsed:?}, \
         {timeouts} timeouts, {skipped} skipped at the in-flight bound of 10, 0 ok"
    );
    tester.stop().await;
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

/// A service nobody calls, judged on weir's own load test: `quiet` with a `loadTest` hook and a
/// builtin success-rate check. `canary_errors` is the canary's error rate; `load` adds the hook.
fn quiet_service(stable: SocketAddr, canary: SocketAddr, load: bool) -> String {
    let hooks = if load {
        "        webhooks:\n          - {name: load, type: rollout, loadTest: {rate: 50, path: /health, headers: {x-load: \"1\"}}}\n"
    } else {
        ""
    };
    format!(
        "{}services:
  - name: quiet
    match: {{hosts: [quiet.example.com]}}
    stable: {{version: v1, upstreams: [\"{stable}\"]}}
    canary: {{version: v2, upstreams: [\"{canary}\"]}}
    strategy:
      canary:
        analysis:
          interval: 400ms
          threshold: 2
          stepWeight: 25
          maxWeight: 50
          metrics:
            - {{name: request-success-rate, thresholdRange: {{min: 95}}, interval: 2s}}
{hooks}",
        crate::weir::HEADER
    )
}

/// The issue's test: a canary with no outside traffic is judged on weir's own load test and
/// promoted; a failing one is rolled back on the same traffic (so the load is what judges it);
/// without the load test the same rollout cannot advance (no data is never a pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_no_outside_traffic_is_judged_on_the_load_test() {
    use weir_control::demo::backend::Backend;
    use weir_control::engine::rollout::Phase;
    let wait = Duration::from_secs(30);

    // Healthy canary, load test on: promoted, and only the canary saw requests.
    let (stable, canary) = (
        Backend::bind("v1").expect("bind"),
        Backend::bind("v2").expect("bind"),
    );
    let started = Instant::now();
    let weir = crate::weir::Weir::start(&quiet_service(stable.addr(), canary.addr(), true)).await;
    let done = weir
        .wait_until("quiet", wait, "the rollout to end", |s| {
            !matches!(s.phase, Phase::Progressing)
        })
        .await;
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    assert_eq!(done.stable_version, "v2", "{}", done.message);
    let took = started.elapsed();
    let (at_canary, at_stable) = (canary.stats().requests, stable.stats().requests);
    assert!(at_canary >= 20, "the load test fed the checks: {at_canary}");
    assert_eq!(at_stable, 0, "the load test never goes to stable");
    let ok = crate::admin::metric(
        weir.admin(),
        "weir_loadtest_requests_total{service=\"quiet\",result=\"ok\"}",
    )
    .await;
    assert!(ok.is_some_and(|ok| ok >= 20.0), "{ok:?}");
    // Promoted: nothing keeps sending.
    let after = canary.stats().requests;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        canary.stats().requests <= after + 1,
        "the load test stopped with the rollout"
    );
    eprintln!(
        "quiet canary judged on the load test: promoted in {took:?}, {at_canary} load-test requests at the canary, {at_stable} at stable"
    );
    weir.shutdown().await;

    // Failing canary, load test on: rolled back on the load test's own requests.
    let (stable, canary) = (
        Backend::bind("v1").expect("bind"),
        Backend::bind("v2").expect("bind"),
    );
    canary.set_error_rate(0.5);
    let started = Instant::now();
    let weir = crate::weir::Weir::start(&quiet_service(stable.addr(), canary.addr(), true)).await;
    let done = weir
        .wait_until("quiet", wait, "the rollback", |s| {
            !matches!(s.phase, Phase::Progressing)
        })
        .await;
    assert_eq!(done.phase, Phase::Degraded, "{}", done.message);
    assert!(
        done.message.contains("request-success-rate"),
        "{}",
        done.message
    );
    eprintln!(
        "quiet canary failing half its load-test requests: rolled back in {:?}: {}",
        started.elapsed(),
        done.message
    );
    weir.shutdown().await;

    // No load test: the same quiet rollout has no data and cannot advance.
    let (stable, canary) = (
        Backend::bind("v1").expect("bind"),
        Backend::bind("v2").expect("bind"),
    );
    let weir = crate::weir::Weir::start(&quiet_service(stable.addr(), canary.addr(), false)).await;
    weir.wait_until("quiet", wait, "the rollout to start", |s| {
        s.phase == Phase::Progressing && s.canary_weight > 0.0
    })
    .await;
    // Five analysis intervals with no data.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = weir.status("quiet");
    assert_eq!(status.phase, Phase::Progressing, "{}", status.message);
    assert_eq!(
        status.canary_weight, 25.0,
        "no data never advances: {}",
        status.message
    );
    assert_eq!(canary.stats().requests, 0);
    eprintln!(
        "same rollout without the load test: still at {}% after 2s: {}",
        status.canary_weight, status.message
    );
    weir.shutdown().await;
}
