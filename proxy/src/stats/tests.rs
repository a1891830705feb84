//! Counters, snapshots, quantiles and windows.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn records_statuses_errors_and_latency_buckets() {
    let stats = Stats::new();
    let v1 = stats.handle("checkout", "v1");
    v1.record(200, ms(1));
    v1.record(200, ms(4));
    v1.record(503, ms(40));
    v1.record(502, ms(20_000));
    let snapshot = v1.snapshot();
    assert_eq!(snapshot.requests, 4);
    assert_eq!(snapshot.errors_5xx, 2);
    assert_eq!(snapshot.buckets[0], 1, "1 ms lands in le=0.001");
    assert_eq!(snapshot.buckets[N_BUCKETS - 1], 1, "20 s lands in +Inf");
    assert_eq!(v1.status_counts(), vec![(200, 2), (502, 1), (503, 1)]);
    assert_eq!(snapshot.success_rate(), Some(0.5));
    assert!(
        Arc::ptr_eq(&v1, &stats.handle("checkout", "v1")),
        "one handle per version"
    );
}

#[test]
fn quantiles_interpolate_within_the_bucket_like_prometheus() {
    let stats = Stats::new();
    let v1 = stats.handle("s", "v1");
    for _ in 0..99 {
        v1.record(200, ms(8)); // (0.0075, 0.01]
    }
    v1.record(200, ms(400)); // (0.3, 0.5]
    let snapshot = v1.snapshot();
    let p50 = snapshot.latency_quantile(0.5).unwrap();
    assert!((0.0075..=0.01).contains(&p50), "{p50}");
    let p99 = snapshot.latency_quantile(0.99).unwrap();
    assert!((0.0075..=0.01).contains(&p99), "{p99}");
    let max = snapshot.latency_quantile(1.0).unwrap();
    assert!((0.3..=0.5).contains(&max), "{max}");
    assert_eq!(Snapshot::default().latency_quantile(0.99), None);
}

#[test]
fn window_answers_for_the_last_seconds_only() {
    let stats = Stats::new();
    let v2 = stats.handle("s", "v2");
    let mut window = Window::new(stats.clone(), Duration::from_secs(60));
    let t0 = Instant::now();
    for _ in 0..100 {
        v2.record(500, ms(1));
    }
    window.sample(t0);
    for second in 1..=10 {
        for _ in 0..10 {
            v2.record(200, ms(1));
        }
        window.sample(t0 + Duration::from_secs(second));
    }
    let now = t0 + Duration::from_secs(10);
    let (last5, covered) = window.over("s", "v2", Duration::from_secs(5), now);
    assert_eq!(covered, Duration::from_secs(5));
    assert_eq!(last5.requests, 50);
    assert_eq!(last5.errors_5xx, 0, "the old errors are outside the window");
    let (all, _) = window.over("s", "v2", Duration::from_secs(30), now);
    assert_eq!(
        all.requests, 100,
        "the oldest sample bounds a longer window"
    );
}

#[test]
fn a_version_younger_than_the_window_counts_from_its_birth() {
    let stats = Stats::new();
    let mut window = Window::new(stats.clone(), Duration::from_secs(60));
    let t0 = Instant::now();
    for second in 0..10 {
        window.sample(t0 + Duration::from_secs(second));
    }
    let v3 = stats.handle("s", "v3");
    v3.record(200, ms(1));
    window.sample(t0 + Duration::from_secs(10));
    v3.record(500, ms(1));
    let now = t0 + Duration::from_secs(12);
    let (seen, covered) = window.over("s", "v3", Duration::from_secs(30), now);
    assert_eq!(seen.requests, 2, "every request it served");
    assert_eq!(
        covered,
        Duration::from_secs(2),
        "only its own life, not the whole window"
    );
    assert_eq!(
        window
            .over("s", "nope", Duration::from_secs(30), now)
            .0
            .requests,
        0
    );
}

#[test]
fn mirror_traffic_has_its_own_handles_and_windows() {
    let stats = Stats::new();
    let primary = stats.handle("shop", "v2");
    let mirror = stats.mirror_handle("shop", "v2");
    assert!(!Arc::ptr_eq(&primary, &mirror));
    let mut window = Window::new(stats.clone(), Duration::from_secs(60));
    let t0 = Instant::now();
    window.sample(t0);
    for _ in 0..7 {
        mirror.record(500, ms(3));
    }
    primary.record(200, ms(1));
    let now = t0 + Duration::from_secs(10);
    let (m, covered) = window.over_traffic(TrafficKind::Mirror, "shop", "v2", ms(30_000), now);
    assert_eq!((m.requests, m.errors_5xx), (7, 7));
    assert_eq!(covered, Duration::from_secs(10));
    let (p, _) = window.over("shop", "v2", ms(30_000), now);
    assert_eq!((p.requests, p.errors_5xx), (1, 0));
    assert_eq!(
        stats.all().len(),
        1,
        "mirror handles are not primary versions"
    );

    let drops = stats.mirror_drops("shop");
    drops.record(MirrorDropReason::QueueFull);
    assert_eq!(
        stats
            .mirror_drops("shop")
            .count(MirrorDropReason::QueueFull),
        1
    );
    stats.retain(|_, _| false);
    assert!(stats.get_of(TrafficKind::Mirror, "shop", "v2").is_none());
    assert!(stats.all_mirror_drops().is_empty());
}

#[test]
fn the_window_stores_changes_only_and_forgets_removed_versions() {
    let stats = Stats::new();
    let services = 100;
    let handles: Vec<_> = (0..services)
        .map(|n| stats.handle(&format!("s{n}"), "v1"))
        .collect();
    let busy = stats.handle("busy", "v1");
    let mut window = Window::new(stats.clone(), Duration::from_secs(60));
    let t0 = Instant::now();
    let started = Instant::now();
    for second in 0..150u64 {
        // `busy` serves one request a second; s0 one request at second 20 only.
        busy.record(200, ms(1));
        if second == 20 {
            handles[0].record(500, ms(1));
        }
        window.sample(t0 + Duration::from_secs(second));
    }
    let stored: usize = window.series.values().map(|s| s.changes.len()).sum();
    eprintln!(
        "window: {} idle versions + 1 busy over 150 samples (60 s retention) keep {stored} snapshots ({:.0} ms of sampling)",
        services,
        started.elapsed().as_secs_f64() * 1e3
    );
    // One per idle version, the busy one's last 61 seconds (plus its baseline).
    assert!(stored <= services + 63, "{stored} snapshots kept");
    assert_eq!(window.times.len(), 62);
    let now = t0 + Duration::from_secs(149);
    let (busy_last, covered) = window.over("busy", "v1", Duration::from_secs(10), now);
    assert_eq!((busy_last.requests, covered), (10, Duration::from_secs(10)));
    let (longest, covered) = window.over("busy", "v1", Duration::from_secs(150), now);
    assert_eq!(covered, Duration::from_secs(61), "bounded by the retention");
    assert_eq!(longest.requests, 61);
    let (s0, _) = window.over("s0", "v1", Duration::from_secs(30), now);
    assert_eq!(s0.requests, 0, "its one request is older than the window");
    let (s0_all, _) = window.over("s0", "v1", Duration::from_secs(150), now);
    assert_eq!(s0_all.requests, 0, "and older than the retention");

    drop(handles);
    stats.retain(|service, _| service == "busy");
    window.sample(t0 + Duration::from_secs(150));
    assert_eq!(window.series.len(), 1, "removed versions are forgotten");
}
