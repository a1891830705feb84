//! The admin API: health, readiness and metrics, the bearer token on mutations, and the event
//! stream.

use std::time::Duration;

use weir_control::demo::backend::Backend;
use weir_control::engine::rollout::Phase;

use crate::admin::{self, Events};
use crate::client::Http1;
use crate::weir::{fill, Weir, HEADER};

const HOST: &str = "shop.example.com";

/// A manual split: `shop` sends 10% to v2 by the file's weight.
fn manual(v1: &Backend, v2: &Backend) -> String {
    let template = format!(
        r#"{HEADER}services:
  - name: shop
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"], weight: 10}}
"#
    );
    fill(&template, &[("v1", v1.addr()), ("v2", v2.addr())])
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let weir = Weir::start(&manual(&v1, &v2)).await;
    let admin = weir.admin();

    let healthz = admin::get(admin, "/healthz").await;
    assert_eq!((healthz.status.as_u16(), healthz.text()), (200, "ok\n"));
    let readyz = admin::get(admin, "/readyz").await;
    assert_eq!((readyz.status.as_u16(), readyz.text()), (200, "ready\n"));

    let mut client = Http1::connect(weir.addr()).await;
    for _ in 0..20 {
        assert_eq!(client.get(HOST, "/").await.status, 200);
    }
    let text = admin::metrics(admin).await;
    for needle in [
        r#"http_requests_total{service="shop",version="v1",status="200"} 18"#,
        r#"http_requests_total{service="shop",version="v2",status="200"} 2"#,
        r#"http_request_duration_seconds_bucket{"#,
        r#"weir_canary_weight{service="shop"} 10"#,
        r#"weir_config_reloads_total{result="success"} 0"#,
        r#"weir_config_reloads_total{result="failure"} 0"#,
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }

    // The rollout API lists the service; unknown names are 404; a service without a strategy
    // takes no commands (409).
    let list = admin::get(admin, "/api/v1/services").await;
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list[0]["name"], "shop", "{list}");
    assert_eq!(list[0]["canaryWeight"], 10.0, "{list}");
    assert_eq!(admin::get(admin, "/api/v1/services/nope").await.status, 404);
    let refused = admin::post(admin, "/api/v1/services/shop/promote", None).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    weir.shutdown().await;
}

/// With `admin.tokenFile`, a mutation needs `Authorization: Bearer TOKEN` (401 otherwise);
/// reads need nothing.
#[tokio::test]
async fn a_token_guards_every_mutation_and_no_read() {
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let template = r#"listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
  tokenFile: admin-token
services:
  - name: shop
    match: {hosts: ["*"]}
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"]}
    strategy:
      canary:
        steps:
          - setWeight: 10
          - pause: {duration: 1m}
"#;
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("admin-token"), "s3cret-token\n").expect("write the token");
    let path = dir.path().join("weir.yaml");
    std::fs::write(
        &path,
        fill(template, &[("v1", v1.addr()), ("v2", v2.addr())]),
    )
    .expect("write the config");
    let weir = Weir::start_at(dir, path, Default::default()).await;
    let admin = weir.admin();
    weir.wait_until("shop", Duration::from_secs(5), "weight 10", |s| {
        s.canary_weight == 10.0
    })
    .await;

    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/services",
        "/api/v1/services/shop",
        "/api/v1/services/shop/history",
    ] {
        assert_eq!(admin::get(admin, path).await.status, 200, "GET {path}");
    }
    let pause = "/api/v1/services/shop/pause";
    for token in [None, Some("wrong"), Some("s3cret-token-and-more"), Some("")] {
        let reply = admin::post(admin, pause, token).await;
        assert_eq!(reply.status, 401, "token {token:?}: {}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(
        weir.status("shop").phase,
        Phase::Progressing,
        "nothing happened"
    );
    let reply = admin::post(admin, pause, Some("s3cret-token")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(weir.status("shop").phase, Phase::Paused);
    weir.shutdown().await;
}

/// `GET /api/v1/events` delivers every transition of a rollout, one event each, the same ones the
/// driver broadcasts.
#[tokio::test]
async fn the_event_stream_delivers_one_event_per_transition() {
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let template = format!(
        r#"{HEADER}services:
  - name: shop
    match: {{hosts: ["*"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    strategy:
      canary:
        steps:
          - setWeight: 10
          - pause: {{duration: 300ms}}
          - setWeight: 50
          - pause: {{duration: 300ms}}
"#
    );
    let vars = [("v1", v1.addr()), ("v2", v2.addr())];
    let weir = Weir::start(&fill(&template, &vars)).await;
    let mut sse = Events::open(weir.admin()).await;
    let mut broadcast = weir.running().driver().subscribe();

    // A canary appears in the file: the rollout starts.
    let with_canary = template.replace(
        "    strategy:",
        "    canary: {version: v2, upstreams: [\"${v2}\"]}\n    strategy:",
    );
    weir.write_atomic(&fill(&with_canary, &vars));

    let mut streamed = Vec::new();
    loop {
        let event = sse
            .next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no Promoted event; got {streamed:?}"));
        assert_eq!(event.data["kind"], event.event.as_str(), "{event:?}");
        assert_eq!(event.data["service"], "shop");
        let done = event.event == "Promoted";
        streamed.push(event);
        if done {
            break;
        }
    }
    let kinds: Vec<(&str, f64)> = streamed
        .iter()
        .map(|e| {
            (
                e.event.as_str(),
                e.data["weight"].as_f64().expect("a weight"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("Started", 0.0),
            ("Advance", 10.0),
            ("Advance", 50.0),
            ("Promoted", 100.0)
        ]
    );
    for event in &streamed {
        let sent = broadcast.try_recv().expect("the driver broadcast it too");
        assert_eq!(
            serde_json::to_value(&sent).expect("an event as JSON"),
            event.data
        );
    }
    assert!(
        sse.next(Duration::from_millis(300)).await.is_none(),
        "nothing after the promotion"
    );
    weir.shutdown().await;
}
