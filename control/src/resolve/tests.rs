//! The resolver state: load-time resolution, overlays, refresh, failures.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use super::*;

/// A fake DNS: names map to answers (an absent name fails), and lookups are counted.
#[derive(Clone, Default)]
struct FakeDns {
    answers: Arc<Mutex<HashMap<String, io::Result<Vec<IpAddr>>>>>,
    lookups: Arc<AtomicUsize>,
}

impl FakeDns {
    fn set(&self, host: &str, ips: &[&str]) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.answers.lock().unwrap().insert(host.into(), Ok(ips));
    }

    fn fail(&self, host: &str) {
        let error = io::Error::other("SERVFAIL");
        self.answers.lock().unwrap().insert(host.into(), Err(error));
    }

    fn lookup(&self) -> Lookup {
        let fake = self.clone();
        Arc::new(move |host: &str| {
            fake.lookups.fetch_add(1, Ordering::SeqCst);
            match fake.answers.lock().unwrap().get(host) {
                Some(Ok(ips)) => Ok(ips.clone()),
                Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
            }
        })
    }
}

fn model(extra: &str) -> Model {
    let text = format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
{extra}
services:
  - name: api
    stable: {{ version: v1, upstreams: ["api.internal:8080", "127.0.0.1:9000"] }}
    canary: {{ version: v2, upstreams: ["canary.internal:8081"] }}
"#
    );
    weir_config::parse(&text, Path::new("/")).expect("a valid test config")
}

fn addrs(model: &Model, canary: bool) -> Vec<String> {
    let service = &model.services[0];
    let version = if canary {
        &service.canary.as_ref().unwrap().version
    } else {
        &service.stable
    };
    version
        .upstreams
        .iter()
        .flat_map(|u| u.addrs.iter().map(ToString::to_string))
        .collect()
}

#[test]
fn load_resolves_every_address_and_refuses_a_name_that_never_resolved() {
    let fake = FakeDns::default();
    fake.set("api.internal", &["10.0.0.2", "::1", "10.0.0.1"]);
    let dns = Dns::new(fake.lookup());
    let mut m = model("");
    let problems = dns.resolve_model(&mut m).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].at, "services[0].canary.upstreams[0]");
    assert!(
        problems[0]
            .problem
            .starts_with("cannot resolve \"canary.internal:8081\" (no such host)"),
        "{}",
        problems[0].problem
    );

    fake.set("canary.internal", &["10.0.1.1"]);
    let mut m = model("");
    dns.resolve_model(&mut m).unwrap();
    // IPv4 preferred (`family: auto`), sorted; the literal is kept as it is.
    assert_eq!(
        addrs(&m, false),
        ["10.0.0.1:8080", "10.0.0.2:8080", "127.0.0.1:9000"]
    );
    assert_eq!(addrs(&m, true), ["10.0.1.1:8081"]);
}

#[test]
fn a_known_name_is_not_looked_up_again_on_load() {
    let fake = FakeDns::default();
    fake.set("api.internal", &["10.0.0.1"]);
    fake.set("canary.internal", &["10.0.1.1"]);
    let dns = Dns::new(fake.lookup());
    let mut m = model("");
    dns.resolve_model(&mut m).unwrap();
    dns.track(&m);
    assert_eq!(fake.lookups.load(Ordering::SeqCst), 2);
    // The resolver now fails: a reload still loads, with the last good answers.
    fake.fail("api.internal");
    fake.fail("canary.internal");
    let mut reloaded = model("");
    dns.resolve_model(&mut reloaded).unwrap();
    assert_eq!(fake.lookups.load(Ordering::SeqCst), 2);
    assert_eq!(addrs(&reloaded, true), ["10.0.1.1:8081"]);
}

#[test]
fn family_and_cap_apply_per_config() {
    let fake = FakeDns::default();
    let many: Vec<String> = (1..=40).map(|i| format!("10.0.0.{i}")).collect();
    let mut answer: Vec<&str> = many.iter().map(String::as_str).collect();
    answer.push("fd00::1");
    fake.set("api.internal", &answer);
    fake.set("canary.internal", &["10.0.1.1"]);
    let dns = Dns::new(fake.lookup());
    let mut m = model("");
    dns.resolve_model(&mut m).unwrap();
    assert_eq!(addrs(&m, false).len(), 16 + 1, "16 addresses by default");
    let mut m = model("upstreamDns: { family: ipv6 }");
    let problems = dns.resolve_model(&mut m).unwrap_err();
    assert_eq!(problems[0].at, "services[0].canary.upstreams[0]");
    fake.set("canary.internal", &["10.0.1.1", "fd00::2"]);
    let mut m = model("upstreamDns: { family: ipv6, maxAddresses: 4 }");
    dns.resolve_model(&mut m).unwrap();
    assert_eq!(addrs(&m, false), ["[fd00::1]:8080", "127.0.0.1:9000"]);
    assert_eq!(addrs(&m, true), ["[fd00::2]:8081"]);
    let mut m = model("upstreamDns: { family: any, maxAddresses: 4 }");
    dns.resolve_model(&mut m).unwrap();
    assert_eq!(addrs(&m, false).len(), 4 + 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_publishes_changes_only_and_keeps_the_last_good_answer() {
    let fake = FakeDns::default();
    fake.set("api.internal", &["10.0.0.1"]);
    fake.set("canary.internal", &["10.0.1.1"]);
    let dns = Dns::new(fake.lookup());
    let mut m = model("upstreamDns: { refreshRate: 100ms }");
    dns.resolve_model(&mut m).unwrap();
    dns.track(&m);
    let mut changes = dns.changes();
    let refresh = tokio::spawn(dns.clone().refresh());

    // Nothing changes: rounds run, no change is announced.
    let before = fake.lookups.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(fake.lookups.load(Ordering::SeqCst) >= before + 4);
    assert!(!changes.has_changed().unwrap());

    // A new address set is announced and overlaid.
    fake.set("api.internal", &["10.0.0.9", "10.0.0.8"]);
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("the change is announced within a refresh")
        .unwrap();
    assert!(dns.overlay(&mut m));
    assert_eq!(
        addrs(&m, false),
        ["10.0.0.8:8080", "10.0.0.9:8080", "127.0.0.1:9000"]
    );
    assert!(!dns.overlay(&mut m), "a second overlay changes nothing");

    // Failures and empty answers keep the last good addresses, and are counted.
    fake.fail("api.internal");
    fake.set("canary.internal", &[]);
    changes.mark_unchanged();
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!changes.has_changed().unwrap());
    assert!(!dns.overlay(&mut m));
    assert_eq!(addrs(&m, true), ["10.0.1.1:8081"]);
    let mut registry = Registry::default();
    registry.register("weir_dns_resolution_failures", "", dns.failures());
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    let count = |host: &str| -> u64 {
        let prefix = format!("weir_dns_resolution_failures_total{{host=\"{host}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no series for {host}:\n{text}"))
    };
    assert!(count("api.internal") >= 2, "{text}");
    assert!(count("canary.internal") >= 2, "{text}");
    refresh.abort();
}

#[test]
fn track_forgets_names_no_longer_used() {
    let fake = FakeDns::default();
    fake.set("api.internal", &["10.0.0.1"]);
    fake.set("canary.internal", &["10.0.1.1"]);
    let dns = Dns::new(fake.lookup());
    let mut m = model("");
    dns.resolve_model(&mut m).unwrap();
    dns.track(&m);
    m.services[0].canary = None;
    dns.track(&m);
    let state = dns.state();
    assert_eq!(
        state.known.keys().collect::<Vec<_>>(),
        ["api.internal"],
        "the canary's name is forgotten"
    );
    assert_eq!(state.tracked.iter().collect::<Vec<_>>(), ["api.internal"]);
    drop(state);
    let mut registry = Registry::default();
    registry.register("weir_dns_resolution_failures", "", dns.failures());
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(!text.contains("canary.internal"), "{text}");
    assert!(text.contains("api.internal"), "{text}");
}

#[test]
fn many_new_names_are_looked_up_in_parallel() {
    let fake = FakeDns::default();
    let mut services = String::new();
    for i in 0..24 {
        fake.set(&format!("s{i}.internal"), &["10.0.0.1"]);
        services.push_str(&format!(
            "  - name: s{i}\n    match: {{ hosts: [\"s{i}.example\"] }}\n    stable: {{ version: v1, upstreams: [\"s{i}.internal:80\"] }}\n"
        ));
    }
    let text =
        format!("listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nservices:\n{services}");
    let mut m = weir_config::parse(&text, Path::new("/")).unwrap();
    let inner = fake.lookup();
    // A resolver that takes 100 ms per answer.
    let slow: Lookup = Arc::new(move |host: &str| {
        std::thread::sleep(Duration::from_millis(100));
        inner(host)
    });
    let dns = Dns::new(slow);
    let started = Instant::now();
    dns.resolve_model(&mut m).unwrap();
    let took = started.elapsed();
    assert!(
        m.services
            .iter()
            .all(|s| s.stable.upstreams[0].addrs.len() == 1),
        "every name resolved"
    );
    assert!(
        took < Duration::from_millis(1200),
        "24 lookups of 100 ms took {took:?}"
    );
    eprintln!("24 new host names at 100 ms per lookup resolved in {took:?} (sequential: 2.4 s)");
}

/// `localhost` (often both `127.0.0.1` and `::1`) is `127.0.0.1` by default, where local test
/// and demo backends listen.
#[test]
fn localhost_is_ipv4_by_default_with_the_system_resolver() {
    let text = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: s
    stable: { version: v1, upstreams: ["localhost:9001"] }
"#;
    let mut m = weir_config::parse(text, Path::new("/")).unwrap();
    Dns::new(system_lookup()).resolve_model(&mut m).unwrap();
    assert_eq!(addrs(&m, false), ["127.0.0.1:9001"]);
}
