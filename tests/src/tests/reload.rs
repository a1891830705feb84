//! Config reloads through the real file watcher: every rewrite takes effect without losing a
//! request, and a file that does not load changes nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;

use super::{assert_share, Rng};
use crate::admin;
use crate::client::{self, Http1};
use crate::upstream::Server;
use crate::weir::{Options, Weir, HEADER};

const HOST: &str = "shop.example.com";

/// Service `shop`: stable `v1` on `stable`, canary `v2` on `canary` at `weight` (text, as written
/// in the file), with a comment `tag` so that every rewrite differs.
fn shop(tag: &str, stable: &[SocketAddr], canary: SocketAddr, weight: &str) -> String {
    let stable: Vec<String> = stable.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "{HEADER}# {tag}\nservices:\n  - name: shop\n    match: {{hosts: [\"{HOST}\"]}}\n    stable: {{version: v1, upstreams: [{}]}}\n    canary: {{version: v2, upstreams: [\"{canary}\"], weight: {weight}}}\n",
        stable.join(", ")
    )
}

/// A weight in basis points as the file writes it (`12.34`).
fn weight_text(bp: u32) -> String {
    format!("{}.{:02}", bp / 100, bp % 100)
}

/// What one background client saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    failures: Vec<String>,
}

/// A keep-alive client sending `GET /` until `stop`, checking that every answer is a 200 from one
/// of `allowed` (the upstream labels of every config the test writes).
async fn keep_sending(addr: SocketAddr, allowed: Arc<Vec<String>>, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut connection = Http1::connect(addr).await;
    while !stop.load(Ordering::Relaxed) {
        let response = match connection.send(client::get(HOST, "/")).await {
            Ok(response) => response,
            Err(error) => {
                seen.failures.push(format!("request failed: {error}"));
                connection = Http1::connect(addr).await;
                continue;
            }
        };
        let status = response.status();
        let served_by = response
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if let Err(error) = response.into_body().collect().await {
            seen.failures.push(format!("body failed: {error}"));
            connection = Http1::connect(addr).await;
            continue;
        }
        if status != 200 || !allowed.contains(&served_by) {
            seen.failures.push(format!(
                "{status} from {served_by:?} (allowed: {allowed:?})"
            ));
        } else {
            seen.ok += 1;
        }
    }
    seen
}

/// 200 rewrites of weights and upstream sets — half atomic (temp file + rename), half in place,
/// plus a symlink swap and a forced reload — while four keep-alive clients send requests
/// non-stop: no request fails, every rewrite is one new route table with the file's weight, and
/// requests after it reach only the new upstreams. Ends with an exact split check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_rewrites_under_load_lose_no_request() {
    let stable: Vec<Server> = (0..3).map(|i| Server::spawn(&format!("s{i}"))).collect();
    let canary = Server::spawn("c");
    let addrs: Vec<SocketAddr> = stable.iter().map(Server::addr).collect();
    // Every subset of 1–2 of the 3 stable upstreams.
    let sets: Vec<Vec<usize>> = vec![
        vec![0],
        vec![1],
        vec![2],
        vec![0, 1],
        vec![1, 2],
        vec![0, 2],
    ];
    let set_addrs = |set: &[usize]| set.iter().map(|&i| addrs[i]).collect::<Vec<_>>();

    // The config path is a symlink to a.yaml, as config-management tools lay it out.
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("weir.yaml");
    std::fs::write(
        dir.path().join("a.yaml"),
        shop("a", &set_addrs(&sets[3]), canary.addr(), "10"),
    )
    .expect("write a.yaml");
    std::os::unix::fs::symlink("a.yaml", &path).expect("symlink weir.yaml -> a.yaml");
    // A long poll interval: only file events can trigger these reloads.
    let options = Options {
        poll_interval: Duration::from_secs(3600),
        workers: 1,
    };
    let weir = Weir::start_at(dir, path, options).await;
    let admin = weir.admin();

    let allowed: Arc<Vec<String>> =
        Arc::new(vec!["s0".into(), "s1".into(), "s2".into(), "c".into()]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(keep_sending(weir.addr(), allowed.clone(), stop.clone())))
        .collect();
    let mut probe = Http1::connect(weir.addr()).await;

    // Checks that the served table is generation `generation` with canary weight `bp`, and that
    // requests from now on reach only `set` (stable) or the canary.
    async fn check_applied(
        weir: &Weir,
        admin: SocketAddr,
        probe: &mut Http1,
        generation: u64,
        bp: u32,
        set: &[&str],
        what: &str,
    ) {
        let text = admin::metrics(admin).await;
        let served = crate::metrics::sample(&text, r#"weir_canary_weight{service="shop"}"#)
            .expect("weir_canary_weight");
        let table = crate::metrics::sample(&text, r#"weir_route_table_generation{table="routes"}"#)
            .expect("weir_route_table_generation");
        assert!(
            table >= generation as f64,
            "{what}: /metrics shows table {table}, the watch said {generation}"
        );
        let wanted = f64::from(bp) / 100.0;
        assert!(
            (served - wanted).abs() < 1e-9,
            "{what}: weir_canary_weight {served}, the file says {wanted}"
        );
        assert_eventually!(
            timeout = Duration::from_secs(2),
            (weir.status("shop").canary_weight - wanted).abs() < 1e-9,
            "{what}: the status never showed weight {wanted}"
        );
        for _ in 0..4 {
            let reply = probe.get(HOST, "/").await;
            assert_eq!(reply.status, 200, "{what}");
            let by = reply.served_by();
            assert!(
                by == "c" || set.contains(&by),
                "{what}: answered by {by:?}, the config has {set:?} and the canary"
            );
        }
    }

    // 1. The symlink swap: weir.yaml -> b.yaml, replaced atomically.
    let mut generation = weir.generation();
    check_applied(
        &weir,
        admin,
        &mut probe,
        generation,
        1000,
        &["s0", "s1"],
        "start",
    )
    .await;
    std::fs::write(
        weir.dir().join("b.yaml"),
        shop("b", &set_addrs(&sets[2]), canary.addr(), "25.5"),
    )
    .expect("write b.yaml");
    let link = weir.dir().join(".weir.yaml.link");
    std::os::unix::fs::symlink("b.yaml", &link).expect("symlink");
    std::fs::rename(&link, weir.config_path()).expect("swap the symlink");
    let next = weir
        .wait_generation_after(generation, Duration::from_secs(5))
        .await;
    assert_eq!(next, generation + 1, "one swap, one table");
    generation = next;
    check_applied(
        &weir,
        admin,
        &mut probe,
        generation,
        2550,
        &["s2"],
        "symlink swap",
    )
    .await;

    // 2. 200 rewrites, alternating atomic and in place.
    let mut rng = Rng::new(0x5eed_cafe);
    let mut set_idx = 2;
    let mut bp = 2550;
    for i in 0..200 {
        let previous = set_idx;
        while set_idx == previous {
            set_idx = rng.below(sets.len() as u64) as usize;
        }
        bp = rng.below(10_001) as u32;
        let set = &sets[set_idx];
        let text = shop(
            &format!("rewrite {i}"),
            &set_addrs(set),
            canary.addr(),
            &weight_text(bp),
        );
        let how = if i % 2 == 0 { "atomic" } else { "in place" };
        if i % 2 == 0 {
            weir.write_atomic(&text);
        } else {
            weir.write_in_place(&text);
        }
        let next = weir
            .wait_generation_after(generation, Duration::from_secs(5))
            .await;
        assert_eq!(
            next,
            generation + 1,
            "rewrite {i} ({how}): one rewrite, one table"
        );
        generation = next;
        let labels: Vec<String> = set.iter().map(|i| format!("s{i}")).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let what = format!("rewrite {i} ({how}, weight {})", weight_text(bp));
        check_applied(&weir, admin, &mut probe, generation, bp, &labels, &what).await;
    }

    // 3. SIGHUP's equivalent reloads an unchanged file.
    let successes = admin::metric(admin, r#"weir_config_reloads_total{result="success"}"#)
        .await
        .expect("the success counter");
    weir.running().reload();
    let next = weir
        .wait_generation_after(generation, Duration::from_secs(5))
        .await;
    assert_eq!(next, generation + 1, "a forced reload publishes once");
    assert_eq!(
        admin::metric(admin, r#"weir_config_reloads_total{result="success"}"#).await,
        Some(successes + 1.0)
    );

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let seen = client.await.expect("a client task");
        assert!(
            seen.failures.is_empty(),
            "{} failed requests, first: {:?}",
            seen.failures.len(),
            seen.failures.first()
        );
        total += seen.ok;
    }
    assert!(total > 200, "the clients kept sending ({total} requests)");

    // 4. The last split is exact.
    let labels: Vec<String> = sets[set_idx].iter().map(|i| format!("s{i}")).collect();
    let mut to_canary = 0;
    for _ in 0..1000 {
        let reply = probe.get(HOST, "/").await;
        assert_eq!(reply.status, 200);
        match reply.served_by() {
            "c" => to_canary += 1,
            by => assert!(labels.iter().any(|l| l == by), "answered by {by}"),
        }
    }
    assert_share(to_canary, 1000, f64::from(bp) / 100.0, "after 200 rewrites");
    let failures = admin::metric(admin, r#"weir_config_reloads_total{result="failure"}"#).await;
    eprintln!(
        "{total} requests during 201 rewrites; reload failures (half-written files seen): {failures:?}"
    );
    weir.shutdown().await;
}

/// The invalid files weir must reject, each with the problem line that names its field.
fn invalid_files(v1: SocketAddr, v2: SocketAddr) -> Vec<(&'static str, String, String)> {
    let service = |extra: &str, stable: &str| {
        format!(
            "  - name: shop\n    match: {{hosts: [\"{HOST}\"]}}\n{stable}    canary: {{version: v2, upstreams: [\"{v2}\"], weight: 30}}\n{extra}"
        )
    };
    let stable = format!("    stable: {{version: v1, upstreams: [\"{v1}\"]}}\n");
    let file = |services: String| format!("{HEADER}services:\n{services}");
    vec![
        (
            "bad YAML",
            format!("{HEADER}services: [\n  - name: {{\n"),
            "invalid YAML".into(),
        ),
        (
            "unknown field",
            file(service("    colour: blue\n", &stable)),
            "services[0].colour: unknown field \"colour\"".into(),
        ),
        (
            "weight 101",
            file(service("", &stable).replace("weight: 30", "weight: 101")),
            "services[0].canary.weight: must be between 0 and 100, got 101".into(),
        ),
        (
            "duplicate service names",
            file(format!(
                "{}  - name: shop\n    match: {{hosts: [\"other.example.com\"]}}\n{stable}",
                service("", &stable)
            )),
            "services[1].name: duplicate service name \"shop\"".into(),
        ),
        (
            "bad address",
            file(service(
                "",
                "    stable: {version: v1, upstreams: [\"localhost:99999\"]}\n",
            )),
            "services[0].stable.upstreams[0]: invalid upstream address".into(),
        ),
        (
            "bad duration",
            file(service("    upstream: {connectTimeout: 10 parsecs}\n", &stable)),
            "services[0].upstream.connectTimeout: invalid duration".into(),
        ),
        (
            "missing stable",
            file(service("", "")),
            "services[0].stable: missing required field".into(),
        ),
        (
            "same host and prefix",
            file(format!(
                "{}  - name: other\n    match: {{hosts: [\"{HOST}\"]}}\n{stable}",
                service("", &stable)
            )),
            format!("services[1].match: host \"{HOST}\" with pathPrefix \"/\" is already routed by service \"shop\""),
        ),
    ]
}

/// Every invalid file is counted as a failed reload and named by its field path, and the previous
/// config keeps serving with the same table; a valid file afterwards applies.
#[tokio::test]
async fn invalid_files_are_rejected_and_the_last_good_config_keeps_serving() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let good = shop("good", &[v1.addr()], v2.addr(), "30");
    let weir = Weir::start(&good).await;
    let admin = weir.admin();
    let generation = weir.generation();
    let mut client = Http1::connect(weir.addr()).await;
    let failures = r#"weir_config_reloads_total{result="failure"}"#;
    let successes = r#"weir_config_reloads_total{result="success"}"#;
    assert_eq!(admin::metric(admin, failures).await, Some(0.0));
    assert_eq!(admin::metric(admin, successes).await, Some(0.0));

    for (i, (what, text, problem)) in invalid_files(v1.addr(), v2.addr()).into_iter().enumerate() {
        // The problem is reported with its field path.
        let scratch = weir.dir().join(format!("bad-{i}.yaml"));
        std::fs::write(&scratch, &text).expect("write the bad file");
        let problems = match weir_control::reload::load(&scratch) {
            Ok(_) => panic!("{what}: the file loads:\n{text}"),
            Err(error) => error.problems(),
        };
        assert!(
            problems.iter().any(|p| p.starts_with(&problem)),
            "{what}: expected a problem starting with {problem:?}, got {problems:?}"
        );

        if i % 2 == 0 {
            weir.write_atomic(&text);
        } else {
            weir.write_in_place(&text);
        }
        let expected = (i + 1) as f64;
        assert_eventually!(
            admin::metric(admin, failures).await == Some(expected),
            "{what}: the failed reload was never counted"
        );
        assert_eq!(weir.generation(), generation, "{what}: no new table");
        assert_eq!(admin::metric(admin, successes).await, Some(0.0), "{what}");
        assert_eq!(weir.status("shop").canary_weight, 30.0, "{what}");
        let mut to_canary = 0;
        for _ in 0..100 {
            let reply = client.get(HOST, "/").await;
            assert_eq!(reply.status, 200, "{what}");
            to_canary += usize::from(reply.served_by() == "v2");
        }
        assert_share(to_canary, 100, 30.0, what);
    }

    // A valid file applies again.
    weir.write_atomic(&good.replace("weight: 30", "weight: 40"));
    let next = weir
        .wait_generation_after(generation, Duration::from_secs(5))
        .await;
    assert_eq!(next, generation + 1);
    assert_eq!(admin::metric(admin, successes).await, Some(1.0));
    assert_eq!(admin::metric(admin, failures).await, Some(8.0));
    let mut to_canary = 0;
    for _ in 0..100 {
        let reply = client.get(HOST, "/").await;
        assert_eq!(reply.status, 200);
        to_canary += usize::from(reply.served_by() == "v2");
    }
    assert_share(to_canary, 100, 40.0, "after the valid file");
    weir.shutdown().await;
}
