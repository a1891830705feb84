//! The dashboard's server side over real sockets (the page itself is tested in a browser by
//! `tests/browser/main.rs`): `/` and its assets with their protections, a foreign `Host`
//! refused, the per-version series and the observed shares, and their refusals.

use std::time::Duration;

use tokio::time::Instant;

use weir_control::demo::backend::Backend;

use crate::admin;
use crate::client::{self, Http1};
use crate::weir::{fill, Weir, HEADER};

const HOST: &str = "shop.example.com";

fn config(v1: &Backend, v2: &Backend) -> String {
    let template = format!(
        r#"{HEADER}services:
  - name: shop
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"], weight: 25}}
"#
    );
    fill(&template, &[("v1", v1.addr()), ("v2", v2.addr())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_protected_and_the_series_and_shares_follow_traffic() {
    let started = Instant::now();
    let v1 = Backend::bind("v1").expect("bind v1");
    let v2 = Backend::bind("v2").expect("bind v2");
    let weir = Weir::start(&config(&v1, &v2)).await;
    let admin_addr = weir.admin();

    // The page and its assets, with their protections.
    let page = admin::get(admin_addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/dashboard/app.js"), "{}", page.text());
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let asset = admin::get(admin_addr, path).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset.header("content-type").unwrap_or("").starts_with(kind),
            "{path}"
        );
        assert_eq!(asset.header("x-content-type-options"), Some("nosniff"));
    }
    assert_eq!(
        admin::get(admin_addr, "/dashboard/nothing.js").await.status,
        404
    );
    // Another site's name in Host (DNS rebinding) gets no page.
    let mut connection = Http1::connect(admin_addr).await;
    let foreign = connection.fetch(client::get("evil.example.com", "/")).await;
    assert_eq!(foreign.status, 421);

    // Traffic at 25%: the series and the observed share follow it.
    let mut connection = Http1::connect(weir.addr()).await;
    for _ in 0..400 {
        connection.fetch(client::get(HOST, "/")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let shares = loop {
        let traffic = admin::get(admin_addr, "/api/v1/traffic?window=10s").await;
        assert_eq!(traffic.status, 200);
        let json = traffic.json();
        let total: u64 = json["services"]["shop"]
            .as_array()
            .map(|a| a.iter().map(|s| s["requests"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if total >= 400 {
            break json;
        }
        assert!(Instant::now() < deadline, "no shares after 10 s: {json}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let canary = shares["services"]["shop"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["version"] == "v2"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(canary["requests"], 100, "{shares}");
    assert_eq!(canary["percent"], 25.0, "{shares}");

    let series = admin::get(admin_addr, "/api/v1/services/shop/series?window=15m").await;
    assert_eq!(series.status, 200);
    let json = series.json();
    assert_eq!(json["windowSeconds"], 900);
    let requests = |version: &str| -> u64 {
        json["versions"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["version"] == version))
            .and_then(|v| v["points"].as_array())
            .map(|p| p.iter().map(|p| p["requests"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
    };
    assert_eq!((requests("v1"), requests("v2")), (300, 100), "{json}");
    let point = json["versions"][0]["points"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["requests"].as_u64() > Some(0)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(point["successRate"], 1.0, "{point}");
    assert!(point["p99"].as_f64().is_some() && point["rate"].as_f64() > Some(0.0));

    // Refusals: an unknown service, a window that is not a duration; a longer one is capped.
    let unknown = admin::get(admin_addr, "/api/v1/services/nope/series").await;
    assert_eq!(unknown.status, 404);
    let bad = admin::get(admin_addr, "/api/v1/services/shop/series?window=soon").await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let capped = admin::get(admin_addr, "/api/v1/services/shop/series?window=48h").await;
    assert_eq!(capped.json()["windowSeconds"], 900);
    assert_eq!(
        admin::get(admin_addr, "/api/v1/traffic?window=-1")
            .await
            .status,
        400
    );
    eprintln!(
        "dashboard API: 400 requests at 25% → observed v2 share {}% in the series and /api/v1/traffic, {:.1}s",
        canary["percent"],
        started.elapsed().as_secs_f64()
    );
    weir.shutdown().await;
}
