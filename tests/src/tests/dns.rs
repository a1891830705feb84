//! Upstream host names re-resolved on a timer (`upstreamDns.refreshRate`), through a fake resolver
//! injected into `weir_control::app::start_with_lookup`: a changed answer is served without a
//! reload and without a failed request, a failed answer keeps the last good addresses, a name with
//! two addresses spreads requests over both, nothing is published while nothing changes, a name
//! that never resolved is refused, and a reload racing a DNS change loses neither.
//!
//! One host name and one port must stand for two backends: they listen on the same port of
//! `127.0.0.1` and `127.0.0.2` (all of 127/8 is the loopback interface on Linux).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::admin;
use crate::client::{self, Http1};
use crate::upstream::Server;
use crate::weir::{Weir, HEADER};

const HOST: &str = "api.example.com";
const NAME: &str = "backend.test";

/// Each name's answer: its addresses, or the error the resolver gives.
type Answers = HashMap<String, Result<Vec<IpAddr>, String>>;

/// A resolver whose answers the test sets; a name without an answer fails. Counts lookups.
#[derive(Clone, Default)]
struct FakeDns {
    answers: Arc<Mutex<Answers>>,
    lookups: Arc<AtomicUsize>,
    /// How long each lookup takes (a slow or hung resolver).
    delay: Arc<Mutex<Duration>>,
}

impl FakeDns {
    fn set(&self, host: &str, ips: &[IpAddr]) {
        self.answers
            .lock()
            .expect("fake DNS lock")
            .insert(host.into(), Ok(ips.to_vec()));
    }

    fn fail(&self, host: &str) {
        self.answers
            .lock()
            .expect("fake DNS lock")
            .insert(host.into(), Err("SERVFAIL".into()));
    }

    fn set_delay(&self, delay: Duration) {
        *self.delay.lock().expect("fake DNS lock") = delay;
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    fn lookup(&self) -> weir_control::resolve::Lookup {
        let fake = self.clone();
        Arc::new(move |host: &str| {
            fake.lookups.fetch_add(1, Ordering::SeqCst);
            let delay = *fake.delay.lock().expect("fake DNS lock");
            // The resolver's own latency, on the blocking thread weir runs it on.
            std::thread::sleep(delay);
            match fake.answers.lock().expect("fake DNS lock").get(host) {
                Some(Ok(ips)) => Ok(ips.clone()),
                Some(Err(e)) => Err(io::Error::other(e.clone())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
            }
        })
    }
}

/// Two backends on the same port: `a` on 127.0.0.1, `b` on 127.0.0.2.
fn pair() -> (Server, Server) {
    for _ in 0..20 {
        let a = Server::spawn("a");
        let at = SocketAddr::new([127, 0, 0, 2].into(), a.addr().port());
        if let Some(b) = Server::builder("b").spawn_at(at) {
            return (a, b);
        }
    }
    panic!("cannot bind two backends on one port of 127.0.0.1 and 127.0.0.2");
}

fn ip(server: &Server) -> IpAddr {
    server.addr().ip()
}

/// Service `api`: stable `v1` on `NAME:port` (plus `canary` lines), refreshed every 100 ms.
/// The `canary:` line of [`config`]: `canary` at `weight` percent.
fn canary_line(canary: &Server, weight: u32) -> String {
    format!(
        "    canary: {{version: v2, upstreams: [\"{}\"], weight: {weight}}}\n",
        canary.addr()
    )
}

/// Starts `weir run` on `text` with `dns` as its resolver.
async fn start(text: &str, dns: &FakeDns) -> Weir {
    Weir::try_start_with_lookup(text, dns.lookup())
        .await
        .unwrap_or_else(|error| panic!("weir does not start: {error}"))
}

fn config(port: u16, canary: &str, tag: &str) -> String {
    format!(
        "{HEADER}# {tag}\nupstreamDns: {{refreshRate: 100ms}}\nservices:\n  - name: api\n    match: {{hosts: [\"{HOST}\"]}}\n    stable: {{version: v1, upstreams: [\"{NAME}:{port}\"]}}\n{canary}"
    )
}

/// What the background clients saw.
#[derive(Debug, Default)]
struct Seen {
    by: HashMap<String, u64>,
    failures: Vec<String>,
}

/// Keep-alive clients sending `GET /` until `stop`, every answer checked to be a 200.
fn clients(
    addr: SocketAddr,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut connection = Http1::connect(addr).await;
                while !stop.load(Ordering::Relaxed) {
                    match connection.send(client::get(HOST, "/")).await {
                        Ok(response) => {
                            let reply = client::Reply::read(response).await;
                            if reply.status == 200 {
                                *seen.by.entry(reply.served_by().to_string()).or_default() += 1;
                            } else {
                                seen.failures
                                    .push(format!("{} {}", reply.status, reply.text()));
                            }
                        }
                        Err(error) => {
                            seen.failures.push(format!("request failed: {error}"));
                            connection = Http1::connect(addr).await;
                        }
                    }
                }
                seen
            })
        })
        .collect()
}

async fn join(clients: Vec<tokio::task::JoinHandle<Seen>>) -> Seen {
    let mut total = Seen::default();
    for client in clients {
        let seen = client.await.expect("a client task");
        for (by, n) in seen.by {
            *total.by.entry(by).or_default() += n;
        }
        total.failures.extend(seen.failures);
    }
    total
}

/// Waits until `done` holds, checking every 10 ms; panics with `what` after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "after {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Under steady traffic: rounds that change nothing publish nothing; a new address is served
/// within about a refresh period, with one new table, no reload and no failed request; a failing
/// resolver keeps the last good address (counted per host) and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_address_is_served_without_a_reload_or_a_failed_request() {
    let (a, b) = pair();
    let dns = FakeDns::default();
    dns.set(NAME, &[ip(&a)]);
    let weir = Weir::try_start_with_lookup(&config(a.addr().port(), "", "start"), dns.lookup())
        .await
        .unwrap_or_else(|error| panic!("weir does not start: {error}"));
    let start = weir.generation();
    let stop = Arc::new(AtomicBool::new(false));
    let running = clients(weir.addr(), 2, &stop);
    wait_for("a serves", Duration::from_secs(5), || a.requests() >= 20).await;

    // Five rounds with the same answer: no table.
    let lookups = dns.lookups();
    wait_for("five refresh rounds", Duration::from_secs(5), || {
        dns.lookups() >= lookups + 5
    })
    .await;
    assert_eq!(weir.generation(), start, "no table while nothing changed");

    // The name moves to b.
    let changed = Instant::now();
    dns.set(NAME, &[ip(&b)]);
    let generation = weir
        .wait_generation_after(start, Duration::from_secs(5))
        .await;
    let published = changed.elapsed();
    assert_eq!(generation, start + 1, "one table for one change");
    wait_for("b serves", Duration::from_secs(5), || b.requests() > 0).await;
    let picked_up = changed.elapsed();
    let a_after = a.requests();
    wait_for("b keeps serving", Duration::from_secs(5), || {
        b.requests() >= 50
    })
    .await;
    assert!(
        a.requests() <= a_after + 2,
        "after the switch only requests already routed may reach a ({} then {})",
        a_after,
        a.requests()
    );

    // The resolver fails: b keeps serving, every failure is counted, no table.
    dns.fail(NAME);
    let series = format!("weir_dns_resolution_failures_total{{host=\"{NAME}\"}}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let failures = admin::metric(weir.admin(), &series).await.unwrap_or(0.0);
        if failures >= 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{series} is {failures}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_before = b.requests();
    wait_for("b serves while DNS fails", Duration::from_secs(5), || {
        b.requests() >= b_before + 20
    })
    .await;
    assert_eq!(weir.generation(), start + 1, "a failure publishes nothing");

    stop.store(true, Ordering::Relaxed);
    let seen = join(running).await;
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        seen.failures
    );
    let reloads = admin::metric(
        weir.admin(),
        "weir_config_reloads_total{result=\"success\"}",
    )
    .await;
    assert_eq!(reloads, Some(0.0), "no reload took part");
    eprintln!(
        "DNS change a → b at refreshRate 100ms: table published after {published:?}, first request at b after {picked_up:?}; {} requests ({} a, {} b), 0 failed; resolver failures kept b serving; 0 tables while nothing changed",
        seen.by.values().sum::<u64>(),
        seen.by.get("a").copied().unwrap_or(0),
        seen.by.get("b").copied().unwrap_or(0),
    );
    weir.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A name with two addresses is two endpoints of its version: requests alternate between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_two_addresses_spreads_requests_over_both() {
    let (a, b) = pair();
    let dns = FakeDns::default();
    dns.set(NAME, &[ip(&b), ip(&a), ip(&a)]);
    let weir = Weir::try_start_with_lookup(&config(a.addr().port(), "", "two"), dns.lookup())
        .await
        .unwrap_or_else(|error| panic!("weir does not start: {error}"));
    let mut client = Http1::connect(weir.addr()).await;
    let mut by: HashMap<String, usize> = HashMap::new();
    for _ in 0..100 {
        let reply = client.get(HOST, "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *by.entry(reply.served_by().to_string()).or_default() += 1;
    }
    let (on_a, on_b) = (
        by.get("a").copied().unwrap_or(0),
        by.get("b").copied().unwrap_or(0),
    );
    assert_eq!(on_a + on_b, 100);
    assert!(
        on_a.abs_diff(50) <= 1,
        "round-robin over two addresses: {by:?}"
    );
    eprintln!(
        "one host name, two addresses: 100 requests → {on_a} on 127.0.0.1, {on_b} on 127.0.0.2"
    );
    weir.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A name that never resolved refuses the start (with its field path) and a reload that adds
/// one is rejected while the last good config keeps serving; once it resolves, a forced reload
/// (SIGHUP) takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_resolved_is_refused() {
    let (a, b) = pair();
    let dns = FakeDns::default();
    let port = a.addr().port();
    let refused = Weir::try_start_with_lookup(&config(port, "", "unresolved"), dns.lookup()).await;
    let Err(error) = refused else {
        panic!("weir started with a name that does not resolve");
    };
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "services[0].stable.upstreams[0]: cannot resolve \"{NAME}:{port}\" (no such host)"
        )),
        "{message}"
    );

    dns.set(NAME, &[ip(&a)]);
    let weir = Weir::try_start_with_lookup(&config(port, "", "resolved"), dns.lookup())
        .await
        .unwrap_or_else(|error| panic!("weir does not start: {error}"));
    let start = weir.generation();
    let canary =
        format!("    canary: {{version: v2, upstreams: [\"canary.test:{port}\"], weight: 100}}\n");
    weir.write_atomic(&config(port, &canary, "canary"));
    let failure = "weir_config_reloads_total{result=\"failure\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin::metric(weir.admin(), failure).await != Some(1.0) {
        assert!(Instant::now() < deadline, "the reload was never rejected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        weir.generation(),
        start,
        "the rejected config is not served"
    );
    let mut client = Http1::connect(weir.addr()).await;
    assert_eq!(client.get(HOST, "/").await.served_by(), "a");

    dns.set("canary.test", &[ip(&b)]);
    weir.running().reload();
    weir.wait_generation_after(start, Duration::from_secs(5))
        .await;
    let mut client = Http1::connect(weir.addr()).await;
    assert_eq!(
        client.get(HOST, "/").await.served_by(),
        "b",
        "the canary at 100%"
    );
    eprintln!("a host name that never resolved: start refused (exit 64 in weir run), reload rejected with the last good config serving, accepted once it resolves");
    weir.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A config rewrite and a DNS change at the same moment, three times over: the table ends with
/// both (the file's weight and the new address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_racing_a_dns_change_loses_neither() {
    let (a, b) = pair();
    let canary = Server::spawn("c");
    let dns = FakeDns::default();
    dns.set(NAME, &[ip(&a)]);
    let port = a.addr().port();
    let with_weight = |weight: u32| canary_line(&canary, weight);
    let weir = start(&config(port, &with_weight(0), "0"), &dns).await;
    let mut settled = Vec::new();
    for (round, (server, weight)) in [(&b, 50), (&a, 25), (&b, 10)].into_iter().enumerate() {
        let started = Instant::now();
        dns.set(NAME, &[ip(server)]);
        weir.write_atomic(&config(
            port,
            &with_weight(weight),
            &format!("round {round}"),
        ));
        // Settled: the file's weight is served, and stable answers come from the new address.
        let deadline = started + Duration::from_secs(5);
        let mut client = Http1::connect(weir.addr()).await;
        loop {
            let weight_now = admin::service(weir.admin(), "api").await["canaryWeight"].clone();
            let reply = client.get(HOST, "/").await;
            assert_eq!(reply.status, 200);
            if weight_now.as_f64() == Some(f64::from(weight))
                && reply.served_by() == server.version()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: weight {weight_now}, stable served by {}",
                reply.served_by()
            );
        }
        settled.push(started.elapsed());
        // 100 requests: stable only on the new address, the canary at the file's weight.
        let mut by: HashMap<String, usize> = HashMap::new();
        for _ in 0..100 {
            *by.entry(client.get(HOST, "/").await.served_by().to_string())
                .or_default() += 1;
        }
        let stale = if server.version() == "a" { "b" } else { "a" };
        assert_eq!(by.get(stale), None, "round {round}: {by:?}");
        let on_canary = by.get("c").copied().unwrap_or(0);
        assert!(
            on_canary.abs_diff(weight as usize) <= 1,
            "round {round}: {by:?}"
        );
    }
    eprintln!(
        "reload racing a DNS change, 3 rounds: both applied each time, settled in {settled:?}"
    );
    weir.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    canary.shutdown().await;
}

/// A resolver that takes 2 s per answer stalls nothing on the control thread: while refresh
/// lookups hang, the admin API answers at once, a config reload (whose names are known) is
/// applied, and traffic is served; the slow answer is applied when it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_resolver_stalls_neither_the_admin_api_nor_reloads() {
    let (a, b) = pair();
    let canary = Server::spawn("c");
    let dns = FakeDns::default();
    dns.set(NAME, &[ip(&a)]);
    let port = a.addr().port();
    let with_weight = |weight: u32| canary_line(&canary, weight);
    let weir = start(&config(port, &with_weight(0), "0"), &dns).await;
    let start = weir.generation();
    dns.set_delay(Duration::from_secs(2));
    dns.set(NAME, &[ip(&b)]);
    let lookups = dns.lookups();
    wait_for("a slow lookup starts", Duration::from_secs(5), || {
        dns.lookups() > lookups
    })
    .await;
    let hung = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut client = Http1::connect(weir.addr()).await;
    for _ in 0..20 {
        let asked = Instant::now();
        let status = admin::get(weir.admin(), "/api/v1/services").await.status;
        slowest = slowest.max(asked.elapsed());
        assert_eq!(status, 200);
        assert_eq!(client.get(HOST, "/").await.served_by(), "a");
    }
    weir.write_atomic(&config(port, &with_weight(100), "100"));
    weir.wait_generation_after(start, Duration::from_secs(1))
        .await;
    let reloaded = hung.elapsed();
    assert!(
        reloaded < Duration::from_millis(1500),
        "the reload waited for the resolver: {reloaded:?}"
    );
    assert_eq!(client.get(HOST, "/").await.served_by(), "c");
    assert!(
        slowest < Duration::from_millis(500),
        "an admin request took {slowest:?} while DNS hung"
    );
    // The slow answer lands: weight 0 again shows the stable's new address.
    weir.write_atomic(&config(port, &with_weight(0), "back"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(HOST, "/").await.served_by() != "b" {
        assert!(
            Instant::now() < deadline,
            "the slow answer was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "resolver hung 2 s per lookup: slowest of 20 admin requests {slowest:?}, a reload applied {reloaded:?} into the hang, the slow answer served after {:?}",
        hung.elapsed()
    );
    dns.set_delay(Duration::ZERO);
    weir.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    canary.shutdown().await;
}
