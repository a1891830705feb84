//! The upstream fault suite: a canary that refuses, resets mid-body, hangs, drips its head, answers
//! garbage or enormous heads, next to a healthy stable. Each fault gets its status, is charged to
//! the canary (status and `weir_upstream_errors_total` kind), leaves the stable untouched, and
//! leaks no connection: the canary's upstream sees every connection closed and weir's own gauge of
//! open upstream connections returns to zero; and leaks no task (`ConnectionStats::tasks`).

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use weir_config::Weight;
use weir_proxy::stats::UpstreamErrorKind;

use super::shop;
use crate::client::{self, Http1};
use crate::faulty::{self, Script};
use crate::proxy::Proxy;
use crate::upstream::Server;
use crate::Refused;

const HOST: &str = "shop.example.com";
/// Requests per fault; with a 50% split, half reach the canary.
const N: usize = 10;

enum Canary {
    Refused(Refused),
    Faulty(faulty::Upstream),
}

impl Canary {
    fn addr(&self) -> SocketAddr {
        match self {
            Canary::Refused(r) => r.addr(),
            Canary::Faulty(f) => f.addr(),
        }
    }

    fn open(&self) -> usize {
        match self {
            Canary::Refused(_) => 0,
            Canary::Faulty(f) => f.open(),
        }
    }
}

/// Runs [`N`] requests through a 50% split to `canary`; checks statuses, who is charged, and leaks.
async fn run(
    name: &str,
    canary: Canary,
    status: StatusCode,
    kind: UpstreamErrorKind,
    body_ok: bool,
) -> String {
    let v1 = Server::spawn("v1");
    let v2_stand_in = Server::spawn("v2");
    let mut model = shop(&v1, &v2_stand_in);
    model.services[0]
        .canary
        .as_mut()
        .expect("a canary")
        .version
        .upstreams[0]
        .addrs = vec![canary.addr()];
    model.services[0].upstream.response_timeout = Duration::from_millis(400);
    let proxy = Proxy::builder(model)
        .workers(1)
        .weight("shop", Weight::from_percent(50.0).expect("a weight"))
        .start();

    let started = Instant::now();
    let (mut stable_ok, mut canary_failed) = (0, 0);
    for _ in 0..N {
        // A fresh client each time: a failed exchange may close the client's connection too.
        let mut client = Http1::connect(proxy.addr()).await;
        let response = client.send(client::get(HOST, "/")).await.expect("a head");
        let got = response.status();
        if response
            .headers()
            .get("x-version")
            .is_some_and(|v| v == "v1")
        {
            assert_eq!(got, 200, "{name}: stable");
            stable_ok += 1;
        } else {
            assert_eq!(got, status, "{name}: canary status");
            if !body_ok {
                // The body breaks: the client must see it broken, not truncated-but-complete.
                let body = http_body_util::BodyExt::collect(response.into_body()).await;
                assert!(
                    body.is_err(),
                    "{name}: a broken body is not delivered as complete"
                );
            }
            canary_failed += 1;
        }
    }
    let took = started.elapsed();
    assert_eq!(
        (stable_ok, canary_failed),
        (N / 2, N / 2),
        "{name}: 50% split"
    );

    let stable = proxy.version_stats("shop", "v1");
    let bad = proxy.version_stats("shop", "v2");
    let s = stable.snapshot();
    assert_eq!(
        (s.requests, s.errors_5xx),
        ((N / 2) as u64, 0),
        "{name}: stable"
    );
    for k in UpstreamErrorKind::ALL {
        assert_eq!(stable.upstream_errors(k), 0, "{name}: stable {k:?}");
    }
    let c = bad.snapshot();
    assert_eq!(c.requests, (N / 2) as u64, "{name}: canary requests");
    if status.is_server_error() {
        assert_eq!(c.errors_5xx, (N / 2) as u64, "{name}: canary 5xx");
    }
    assert!(
        bad.upstream_errors(kind) >= (N / 2) as u64,
        "{name}: {kind:?} counted {} times",
        bad.upstream_errors(kind)
    );

    // No leaks: every connection to the canary is closed at both ends.
    crate::assert_eventually!(
        timeout = Duration::from_secs(5),
        canary.open() == 0 && bad.upstream_connections() == 0,
        "{name}: {} connections open at the canary, {} in weir's gauge",
        canary.open(),
        bad.upstream_connections()
    );
    let pooled = stable.upstream_connections();
    assert!(pooled <= 1, "{name}: {pooled} connections to the stable");
    // No task left behind either: once the clients are gone, the only task weir still runs for
    // this traffic is the pooled stable connection's.
    crate::assert_eventually!(
        timeout = Duration::from_secs(5),
        proxy.connections().tasks() as u64 == stable.upstream_connections(),
        "{name}: {} tasks alive, {} pooled connections",
        proxy.connections().tasks(),
        stable.upstream_connections()
    );
    let tasks = proxy.connections().tasks();
    let figure = format!(
        "{name}: {}×{} charged to v2 ({kind:?}), stable {}×200, 0 leaked connections (weir gauge v2=0, v1={pooled}), 0 leaked tasks ({tasks} alive = the pooled connection's), {took:?}",
        N / 2,
        status.as_u16(),
        N / 2
    );
    proxy.shutdown().await;
    v1.shutdown().await;
    v2_stand_in.shutdown().await;
    if let Canary::Faulty(f) = canary {
        f.shutdown().await;
    }
    figure
}

#[tokio::test]
async fn refused() {
    let figure = run(
        "refused",
        Canary::Refused(Refused::new()),
        StatusCode::BAD_GATEWAY,
        UpstreamErrorKind::Connect,
        true,
    )
    .await;
    eprintln!("{figure}");
}

#[tokio::test]
async fn reset_mid_body() {
    let figure = run(
        "reset mid-body",
        Canary::Faulty(faulty::Upstream::spawn(Script::ResetMidBody)),
        StatusCode::OK,
        UpstreamErrorKind::Body,
        false,
    )
    .await;
    eprintln!("{figure}");
}

#[tokio::test]
async fn hangs() {
    let figure = run(
        "hangs",
        Canary::Faulty(faulty::Upstream::spawn(Script::Hang)),
        StatusCode::GATEWAY_TIMEOUT,
        UpstreamErrorKind::Timeout,
        true,
    )
    .await;
    eprintln!("{figure}");
}

#[tokio::test]
async fn drips_its_head() {
    let figure = run(
        "drips",
        Canary::Faulty(faulty::Upstream::spawn(Script::DripHead(
            Duration::from_millis(50),
        ))),
        StatusCode::GATEWAY_TIMEOUT,
        UpstreamErrorKind::Timeout,
        true,
    )
    .await;
    eprintln!("{figure}");
}

#[tokio::test]
async fn garbage() {
    let figure = run(
        "garbage",
        Canary::Faulty(faulty::Upstream::spawn(Script::Garbage)),
        StatusCode::BAD_GATEWAY,
        UpstreamErrorKind::Protocol,
        true,
    )
    .await;
    eprintln!("{figure}");
}

#[tokio::test]
async fn huge_headers() {
    let figure = run(
        "huge headers",
        Canary::Faulty(faulty::Upstream::spawn(Script::HugeHeaders)),
        StatusCode::BAD_GATEWAY,
        UpstreamErrorKind::Protocol,
        true,
    )
    .await;
    eprintln!("{figure}");
}
