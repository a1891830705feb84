//! Rate limits (issue #8): `services[].rateLimit` answers 429 with `Retry-After` to a key over
//! its rate while other keys are served; the burst and the sustained rate are what the config
//! says, for the whole process (buckets are shared by the workers); the number of remembered keys
//! stays under `maxKeys`; buckets survive table swaps; refusals are counted in
//! `weir_rate_limited_total` and never against a version, so they cannot roll a canary back.

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use tokio::time::Instant;
use weir_config::Weight;
use weir_control::demo::backend::Backend;
use weir_control::demo::traffic::Traffic;
use weir_control::engine::rollout::Phase;
use weir_proxy::ratelimit::Key;

use crate::client::{self, Http1, Http2, Reply};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;
use crate::weir::{fill, Weir, HEADER};
use crate::{admin, metrics};

const HOST: &str = "shop.example.com";

/// Service `shop` (stable `v1`, canary `v2` at weight 0) with `rateLimit: {limit}`, on a
/// listener that trusts 127.0.0.1 as a proxy when `trusted`.
fn model(v1: &Server, v2: &Server, limit: &str, trusted: bool) -> weir_config::Model {
    let trust = if trusted {
        "    trustedProxies: [127.0.0.1/32]\n"
    } else {
        ""
    };
    let template = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n{trust}services:
  - name: shop
    match: {{hosts: [\"{HOST}\"]}}
    stable: {{version: v1, upstreams: [\"${{v1}}\"]}}
    canary: {{version: v2, upstreams: [\"${{v2}}\"]}}
    rateLimit: {limit}
"
    );
    proxy::model(&template, &[("v1", v1.addr()), ("v2", v2.addr())])
}

/// `GET /` with these extra headers.
fn get(headers: &[(&'static str, &str)]) -> http::Request<crate::body::TestBody> {
    let mut request = client::get(HOST, "/");
    for (name, value) in headers {
        request
            .headers_mut()
            .append(*name, HeaderValue::from_str(value).expect("a header value"));
    }
    request
}

fn from(ip: &str) -> [(&'static str, &str); 1] {
    [("x-forwarded-for", ip)]
}

#[track_caller]
fn assert_limited(reply: &Reply, retry_after: &str) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text()
    );
    assert_eq!(reply.header("retry-after"), Some(retry_after));
}

/// The proxy's `weir_rate_limited_total{service="shop"}`.
fn limited_total(proxy: &Proxy) -> f64 {
    let text = metrics::encode(proxy.stats(), &proxy.routes());
    metrics::sample(&text, "weir_rate_limited_total{service=\"shop\"}").unwrap_or(0.0)
}

/// Requests `shop`'s versions answered, and whether any was a 429.
fn version_requests(proxy: &Proxy) -> (u64, bool) {
    let mut total = 0;
    let mut any_429 = false;
    for version in ["v1", "v2"] {
        for (status, count) in proxy.version_stats("shop", version).status_counts() {
            total += count;
            any_429 |= status == 429;
        }
    }
    (total, any_429)
}

/// A client over its rate gets 429 with `Retry-After` (whole seconds, rounded up) while another
/// client is served; the burst is honoured exactly; the client is the forwarded address only
/// from a trusted proxy; refusals are counted in `weir_rate_limited_total` and never reach a
/// version or an upstream.
#[tokio::test]
async fn a_client_over_its_rate_gets_429_and_others_are_served() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let proxy = Proxy::start(model(&v1, &v2, "{requestsPerSecond: 0.5, burst: 3}", true));
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..3 {
        let reply = client.fetch(get(&from("203.0.113.1"))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // The next token is 2 s away.
    assert_limited(&client.fetch(get(&from("203.0.113.1"))).await, "2");
    // A proxy chain: the rightmost address that is not a trusted proxy is the client.
    assert_limited(
        &client
            .fetch(get(&from("198.51.100.7, 203.0.113.1, 127.0.0.1")))
            .await,
        "2",
    );
    for _ in 0..3 {
        let reply = client.fetch(get(&from("203.0.113.2"))).await;
        assert_eq!(reply.status, 200, "another client is served");
    }
    assert_limited(&client.fetch(get(&from("203.0.113.2"))).await, "2");
    assert_eq!(limited_total(&proxy), 3.0);
    let (served, any_429) = version_requests(&proxy);
    assert_eq!((served, any_429), (6, false));
    assert_eq!(v1.requests(), 6, "refusals never reach an upstream");
    proxy.shutdown().await;

    // From a peer that is not a trusted proxy, X-Forwarded-For is the client's to invent: the
    // peer's address is the key.
    let proxy = Proxy::start(model(&v1, &v2, "{requestsPerSecond: 0.5, burst: 3}", false));
    let mut client = Http1::connect(proxy.addr()).await;
    for n in 0..3 {
        let reply = client.fetch(get(&from(&format!("203.0.113.{n}")))).await;
        assert_eq!(reply.status, 200);
    }
    assert_limited(&client.fetch(get(&from("203.0.113.99"))).await, "2");
    proxy.shutdown().await;
    eprintln!(
        "burst 3 served, the 4th refused with 429 Retry-After: 2 (0.5 rps); another client served"
    );
    v1.shutdown().await;
    v2.shutdown().await;
}

/// `key: {header: x-api-key}`: each key has its bucket; a request without the header is limited
/// by its client address, in a bucket of its own.
#[tokio::test]
async fn header_keys_and_requests_without_the_header() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let proxy = Proxy::start(model(
        &v1,
        &v2,
        "{requestsPerSecond: 1, burst: 2, key: {header: x-api-key}}",
        false,
    ));
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..2 {
        assert_eq!(
            client.fetch(get(&[("x-api-key", "alpha")])).await.status,
            200
        );
    }
    assert_limited(&client.fetch(get(&[("x-api-key", "alpha")])).await, "1");
    for _ in 0..2 {
        assert_eq!(
            client.fetch(get(&[("x-api-key", "beta")])).await.status,
            200
        );
    }
    assert_limited(&client.fetch(get(&[("x-api-key", "beta")])).await, "1");
    // Without the header: the client's address has its own bucket, limited like any key.
    for _ in 0..2 {
        assert_eq!(client.fetch(get(&[])).await.status, 200);
    }
    assert_limited(&client.fetch(get(&[])).await, "1");
    assert_eq!(
        client.fetch(get(&[("x-api-key", "gamma")])).await.status,
        200
    );
    assert_eq!(limited_total(&proxy), 3.0);
    eprintln!("header keys: alpha, beta and no header each got burst 2 then 429; gamma unaffected");
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

/// 20 rps with burst 5 for the whole process (two workers, four connections offering as fast as
/// they can for 2 s): the number served is 5 + 20 × the time measured, within the requests one
/// round trip can shift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sustained_rate_is_the_configured_one_across_workers() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let proxy = Proxy::builder(model(
        &v1,
        &v2,
        "{requestsPerSecond: 20, burst: 5, key: global}",
        false,
    ))
    .workers(2)
    .start();
    let addr = proxy.addr();
    let start = Instant::now();
    let run_for = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut client = Http1::connect(addr).await;
            let (mut ok, mut limited) = (0u64, 0u64);
            while start.elapsed() < run_for {
                let reply = client.fetch(get(&[])).await;
                match reply.status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => limited += 1,
                    other => panic!("unexpected {other}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for task in tasks {
        let (o, l) = task.await.expect("a client task");
        ok += o;
        limited += l;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Every request was offered between `start` and `start + elapsed`: at most 5 + 20·elapsed
    // could be served; the clients never stopped offering, so at least all but the tokens that
    // refilled during the last round trip were (one, allowed for by the −2).
    let most = 5.0 + 20.0 * elapsed;
    let least = 5.0 + 20.0 * run_for.as_secs_f64() - 2.0;
    assert!(
        (ok as f64) <= most + 1e-9 && (ok as f64) >= least,
        "{ok} served in {elapsed:.3}s, expected {least:.1}..={most:.1}"
    );
    assert!(limited > 0);
    assert_eq!(limited_total(&proxy), limited as f64);
    assert_eq!(version_requests(&proxy).0, ok);
    eprintln!(
        "20 rps burst 5 over 2 workers: {ok} served, {limited} refused in {elapsed:.3}s (bounds {least:.1}..={most:.1})"
    );
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

/// `maxKeys: 1000` with 5,000 distinct keys over HTTP/2: at most 1000 are remembered; a key in
/// steady use stays limited all along, an early key is forgotten (a full bucket again). Then
/// 200,000 more keys straight into the service's limiter: still at most 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_keys_stays_bounded() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let proxy = Proxy::start(model(
        &v1,
        &v2,
        "{requestsPerSecond: 0.001, burst: 1, key: {header: x-api-key}, maxKeys: 1000}",
        false,
    ));
    let client = Http2::connect(proxy.addr()).await;
    let url = format!("http://{HOST}/");
    let fetch = |key: String| {
        let mut request = client::get_url(&url);
        request.headers_mut().insert(
            "x-api-key",
            HeaderValue::from_str(&key).expect("a header value"),
        );
        client::fetch_h2(client.sender(), request)
    };
    assert_eq!(fetch("steady".into()).await.status, 200);
    assert_eq!(fetch("early".into()).await.status, 200);
    assert_eq!(fetch("early".into()).await.status, 429);
    let started = Instant::now();
    let keys = 5_000;
    let mut sent = 0;
    while sent < keys {
        let batch: Vec<_> = (sent..(sent + 200).min(keys))
            .map(|n| tokio::spawn(fetch(format!("key-{n}"))))
            .collect();
        for task in batch {
            assert_eq!(task.await.expect("a request").status, 200, "a new key");
        }
        sent += 200;
        assert_eq!(
            fetch("steady".into()).await.status,
            429,
            "steady stays limited"
        );
    }
    let table = proxy.routes().current();
    let limiter = table
        .service("shop")
        .and_then(|s| s.rate_limiter())
        .expect("a limiter");
    let remembered = limiter.keys();
    assert!(remembered <= 1000, "{remembered} keys remembered");
    assert_eq!(
        fetch("early".into()).await.status,
        200,
        "an early key was forgotten"
    );
    eprintln!(
        "{keys} distinct keys in {:?}: {remembered} remembered (maxKeys 1000); the steady key stayed limited",
        started.elapsed()
    );
    let started = Instant::now();
    let mut most = 0;
    for n in 0..200_000u32 {
        let _ = limiter.check(Instant::now(), Key::Bytes(&n.to_le_bytes()));
        if n % 10_000 == 0 {
            most = most.max(limiter.keys());
        }
    }
    let after = limiter.keys();
    assert!(
        most <= 1000 && after <= 1000,
        "{most} / {after} keys remembered"
    );
    eprintln!(
        "200000 more keys into the limiter in {:?}: at most {most} remembered",
        started.elapsed()
    );
    drop(table);
    drop(client);
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

/// A weight change and a reload that changes the service but not its `rateLimit` keep the
/// buckets; a changed `rateLimit` starts over (and keeps counting refusals).
#[tokio::test]
async fn buckets_survive_table_swaps_while_the_limit_is_unchanged() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let limit = "{requestsPerSecond: 0.01, burst: 2}";
    let proxy = Proxy::start(model(&v1, &v2, limit, false));
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..2 {
        assert_eq!(client.fetch(get(&[])).await.status, 200);
    }
    assert_eq!(client.fetch(get(&[])).await.status, 429);

    proxy.set_weight("shop", Weight::from_percent(50.0).expect("a weight"));
    assert_eq!(
        client.fetch(get(&[])).await.status,
        429,
        "after a weight change"
    );

    // A reload that changes the service (its upgrades) but not its rateLimit.
    let mut changed = model(&v1, &v2, limit, false);
    changed.services[0].upgrades.clear();
    let before = proxy.routes().current();
    proxy.publish(&changed, &Default::default(), &Default::default());
    assert_eq!(
        proxy.routes().current().shared_routes(&before),
        0,
        "rebuilt"
    );
    assert_eq!(client.fetch(get(&[])).await.status, 429, "after a reload");

    let relaxed = model(&v1, &v2, "{requestsPerSecond: 0.01, burst: 3}", false);
    proxy.publish(&relaxed, &Default::default(), &Default::default());
    assert_eq!(
        client.fetch(get(&[])).await.status,
        200,
        "a new limit starts over"
    );
    assert_eq!(limited_total(&proxy), 3.0, "the counter carries over");
    eprintln!("buckets kept across a weight change and a reload; a changed rateLimit starts over");
    drop(before);
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

const ERRORS: &str = r#"analysisTemplates:
  - name: errors
    metrics:
      - name: error-rate
        interval: 250ms
        failureLimit: 0
        inconclusiveLimit: 100
        successCondition: result < 0.05
        provider: {builtin: {metric: error-rate, window: 5s, minRequests: 10}}
"#;

/// A canary at 50% judged on its error rate every 250 ms while most requests are refused by the
/// rate limit: the 429s are in `weir_rate_limited_total`, not in the versions' series, and the
/// rollout never rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_never_count_against_a_version_nor_roll_a_canary_back() {
    let v1 = Backend::bind("v1").expect("bind v1");
    let v2 = Backend::bind("v2").expect("bind v2");
    let yaml = fill(
        &format!(
            r#"{HEADER}services:
  - name: shop
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"]}}
    rateLimit: {{requestsPerSecond: 40, burst: 10, key: global}}
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {{duration: 1m}}
        analysis:
          templates: [{{templateName: errors}}]
          startingStep: 0
{ERRORS}"#
        ),
        &[("v1", v1.addr()), ("v2", v2.addr())],
    );
    let weir = Weir::start(&yaml).await;
    let traffic = Traffic::spawn(weir.addr(), HOST, 200, 4);
    let judged = weir
        .wait_until(
            "shop",
            Duration::from_secs(15),
            "six good measurements",
            |s| {
                s.phase == Phase::Degraded
                    || s.details.as_ref().is_some_and(|d| {
                        d.analysis_runs
                            .iter()
                            .any(|r| r.metrics.iter().any(|m| m.successful >= 6))
                    })
            },
        )
        .await;
    let served = traffic.stop().await;
    assert_ne!(judged.phase, Phase::Degraded, "{}", judged.message);
    assert_eq!(judged.canary_weight, 50.0);
    let refused = served.statuses.get(&429).copied().unwrap_or(0);
    assert!(refused > 0, "{:?}", served.statuses);
    let text = admin::metrics(weir.admin()).await;
    let counted = metrics::sample(&text, "weir_rate_limited_total{service=\"shop\"}");
    assert!(
        counted.is_some_and(|n| n >= refused as f64),
        "{counted:?} < {refused}"
    );
    for version in ["v1", "v2"] {
        let series =
            format!("http_requests_total{{service=\"shop\",version=\"{version}\",status=\"429\"}}");
        assert_eq!(metrics::sample(&text, &series), None, "{series}");
    }
    eprintln!(
        "{refused} of {} requests refused with 429 during the analysis; the canary stayed at 50% ({:?})",
        served.responses(),
        judged.phase
    );
    weir.shutdown().await;
}
