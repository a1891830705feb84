//! Upstream health inside a version: passive outlier detection and the state active health checks
//! flip.
//!
//! Each upstream address of each (service, version) has one [`UpstreamHealth`], shared by every
//! route table that still holds that address (the table build reuses the `Arc` of an address that
//! is still configured), so an ejection or a failed probe survives reloads and weight changes.
//! Everything is atomics: the request path takes no lock and allocates nothing.
//!
//! - **Passive** ([`Outlier`], `services[].outlierDetection`): `consecutiveFailures` failures in a
//!   row (connect refused or timed out, broken before the head, no head in time, status ≥ 500)
//!   eject the upstream for `base × 2^(ejections in a row − 1)`, capped at `max`. At most
//!   `maxEjectionPercent` of a version's upstreams (at least one, when it has two or more) are
//!   out at once, and the last available one is never ejected. After the back-off the upstream
//!   gets traffic again; a success resets its failure count, and a whole `base` of service after
//!   coming back resets the back-off.
//! - **Active** (`services[].healthCheck`): the control plane probes and calls
//!   [`UpstreamHealth::set_probe_healthy`]; no table is rebuilt per probe.
//! - **Fail open**: when no upstream of a version is available, requests still go to them (like
//!   Envoy's panic threshold), counted in [`ArmHealth`] and logged once per episode.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use weir_config::OutlierDetection;

/// The outlier-detection settings of a version with two or more upstreams, compiled for the
/// request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// First ejection, in milliseconds.
    pub base_ms: u64,
    /// Longest ejection, in milliseconds.
    pub max_ms: u64,
    /// Share of a version's upstreams that may be out at once.
    pub max_ejection_percent: u8,
}

impl Outlier {
    /// The settings, or `None` when detection is off.
    pub fn compile(config: &OutlierDetection) -> Option<Outlier> {
        config.enabled.then(|| Outlier {
            consecutive_failures: config.consecutive_failures.max(1),
            base_ms: millis(config.base_ejection_time).max(1),
            max_ms: millis(config.max_ejection_time).max(1),
            max_ejection_percent: config.max_ejection_percent.min(100),
        })
    }

    /// The length of ejection number `n` in a row (1 for the first): `base × 2^(n−1)`, capped.
    pub fn ejection_ms(&self, n: u32) -> u64 {
        let shift = n.saturating_sub(1).min(63);
        self.base_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_ms.max(self.base_ms))
    }

    /// How many of `n` upstreams may be ejected at once: `maxEjectionPercent` of them rounded
    /// down, at least one when there are two or more, never all.
    pub fn max_ejected(&self, n: usize) -> usize {
        if n < 2 {
            return 0;
        }
        (n * usize::from(self.max_ejection_percent) / 100).clamp(1, n - 1)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The health of one upstream address of one (service, version).
#[derive(Debug)]
pub struct UpstreamHealth {
    service: Arc<str>,
    version: Arc<str>,
    addr: SocketAddr,
    /// Origin of the millisecond clock below.
    epoch: Instant,
    /// Failures in a row.
    failures: AtomicU32,
    /// Ejections in a row (the back-off exponent).
    ejections_in_row: AtomicU32,
    /// End of the last ejection, in ms since `epoch`; 0 when not ejected since the back-off last
    /// reset (the request path then reads no clock).
    ejected_until: AtomicU64,
    /// The active health check's verdict (true without a health check).
    probe_healthy: AtomicBool,
    /// Ejections so far (`weir_upstream_ejections_total`).
    ejections_total: AtomicU64,
}

/// A clock read at most once per decision, and only when some upstream has been ejected.
#[derive(Debug, Default)]
pub(crate) struct LazyNow(Option<Instant>);

impl LazyNow {
    /// A clock that reads `now`.
    pub(crate) fn at(now: Instant) -> LazyNow {
        LazyNow(Some(now))
    }

    fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

impl UpstreamHealth {
    /// A healthy, never-ejected upstream.
    pub fn new(service: Arc<str>, version: Arc<str>, addr: SocketAddr) -> UpstreamHealth {
        UpstreamHealth {
            service,
            version,
            addr,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            ejections_in_row: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            probe_healthy: AtomicBool::new(true),
            ejections_total: AtomicU64::new(0),
        }
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The version label.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The upstream address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn ms(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.epoch))
    }

    /// Whether it is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected(&mut LazyNow::at(now))
    }

    fn ejected(&self, now: &mut LazyNow) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && self.ms(now.get()) < until
    }

    /// The active health check's verdict (true without a health check).
    pub fn probe_healthy(&self) -> bool {
        self.probe_healthy.load(Relaxed)
    }

    /// Sets the active health check's verdict; returns whether it changed.
    pub fn set_probe_healthy(&self, healthy: bool) -> bool {
        self.probe_healthy.swap(healthy, Relaxed) != healthy
    }

    /// Whether it may get traffic at `now`: not ejected and not failed by its health check.
    pub fn is_available(&self, now: Instant) -> bool {
        self.available(&mut LazyNow::at(now))
    }

    #[inline]
    pub(crate) fn available(&self, now: &mut LazyNow) -> bool {
        self.probe_healthy.load(Relaxed) && !self.ejected(now)
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u64 {
        self.ejections_total.load(Relaxed)
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Relaxed)
    }

    /// Forgets any ejection and failure (outlier detection turned off).
    pub(crate) fn clear_ejection(&self) {
        self.failures.store(0, Relaxed);
        self.ejections_in_row.store(0, Relaxed);
        self.ejected_until.store(0, Relaxed);
    }

    /// Records an exchange that succeeded: the failure count restarts, and once the upstream has
    /// served for a whole base ejection time since its last ejection ended, the back-off too.
    #[inline]
    pub(crate) fn record_success(&self, outlier: &Outlier, now: &mut LazyNow) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        let until = self.ejected_until.load(Relaxed);
        if until != 0 && self.ms(now.get()) >= until.saturating_add(outlier.base_ms) {
            self.ejections_in_row.store(0, Relaxed);
            // Only if no other worker ejected it again meanwhile.
            let _ = self
                .ejected_until
                .compare_exchange(until, 0, Relaxed, Relaxed);
        }
    }

    /// Records a failed exchange; ejects the upstream when that makes `consecutiveFailures` in a
    /// row and `siblings` (every upstream of the version, this one included) can spare it.
    /// Returns the ejection's length when it ejected.
    pub(crate) fn record_failure(
        &self,
        outlier: &Outlier,
        siblings: &[super::UpstreamRoute],
        now: &mut LazyNow,
    ) -> Option<Duration> {
        let failures = self.failures.fetch_add(1, Relaxed).saturating_add(1);
        if failures < outlier.consecutive_failures {
            return None;
        }
        let now_ms = self.ms(now.get());
        let until = self.ejected_until.load(Relaxed);
        if until != 0 && now_ms < until {
            return None; // already out (a request that started before the ejection)
        }
        // The cap: never the last available upstream, never more than maxEjectionPercent.
        let unavailable = siblings
            .iter()
            .filter(|u| !std::ptr::eq(&*u.health, self) && !u.health.available(now))
            .count();
        let n = siblings.len();
        if unavailable >= outlier.max_ejected(n) || unavailable + 1 >= n {
            return None; // stays in; the count stays high so the next failure tries again
        }
        let in_row = self.ejections_in_row.load(Relaxed).saturating_add(1);
        let length = outlier.ejection_ms(in_row);
        let new_until = now_ms.saturating_add(length).max(1);
        if self
            .ejected_until
            .compare_exchange(until, new_until, Relaxed, Relaxed)
            .is_err()
        {
            return None; // another worker ejected it first
        }
        self.ejections_in_row.store(in_row, Relaxed);
        self.failures.store(0, Relaxed);
        self.ejections_total.fetch_add(1, Relaxed);
        let length = Duration::from_millis(length);
        tracing::warn!(
            service = &*self.service,
            version = &*self.version,
            upstream = %self.addr,
            failures,
            ejection = ?length,
            "upstream ejected after consecutive failures"
        );
        Some(length)
    }
}

/// Health bookkeeping of one (service, version), shared across tables like [`UpstreamHealth`].
#[derive(Debug, Default)]
pub struct ArmHealth {
    /// Requests sent while no upstream of the version was available.
    fail_open: AtomicU64,
    /// Inside a fail-open episode (logged once per episode).
    failing_open: AtomicBool,
}

impl ArmHealth {
    /// Requests sent while no upstream of the version was available
    /// (`weir_upstream_fail_open_total`).
    pub fn fail_open_count(&self) -> u64 {
        self.fail_open.load(Relaxed)
    }

    #[cold]
    pub(crate) fn failed_open(&self, service: &str, version: &str) {
        self.fail_open.fetch_add(1, Relaxed);
        if !self.failing_open.swap(true, Relaxed) {
            tracing::warn!(
                service,
                version,
                "every upstream of the version is ejected or unhealthy: sending to them anyway (fail open)"
            );
        }
    }

    #[inline]
    pub(crate) fn recovered(&self, service: &str, version: &str) {
        if self.failing_open.load(Relaxed) && self.failing_open.swap(false, Relaxed) {
            tracing::info!(
                service,
                version,
                "the version has an available upstream again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::UpstreamRoute;

    fn outlier() -> Outlier {
        Outlier::compile(&OutlierDetection {
            enabled: true,
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        })
        .unwrap()
    }

    fn version(n: u16) -> Vec<UpstreamRoute> {
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 9000 + i));
                UpstreamRoute {
                    addr,
                    name: Arc::from(addr.to_string()),
                    health: Arc::new(UpstreamHealth::new("s".into(), "v1".into(), addr)),
                    tls: None,
                }
            })
            .collect()
    }

    fn fail(ups: &[UpstreamRoute], i: usize, times: u32, now: Instant) -> Option<Duration> {
        let o = outlier();
        let mut ejected = None;
        for _ in 0..times {
            ejected = ejected.or(ups[i].health.record_failure(&o, ups, &mut LazyNow::at(now)));
        }
        ejected
    }

    #[test]
    fn back_off_doubles_and_caps() {
        let o = outlier();
        let got: Vec<u64> = (1..=8).map(|n| o.ejection_ms(n) / 1000).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(o.ejection_ms(u32::MAX), 300_000);
        assert_eq!(o.ejection_ms(0), 10_000);
        let weird = Outlier::compile(&OutlierDetection {
            base_ejection_time: Duration::MAX,
            max_ejection_time: Duration::from_millis(1),
            ..OutlierDetection::default()
        })
        .unwrap();
        assert_eq!(weird.ejection_ms(40), u64::MAX);
        assert!(Outlier::compile(&OutlierDetection {
            enabled: false,
            ..OutlierDetection::default()
        })
        .is_none());
    }

    #[test]
    fn caps_never_eject_the_last() {
        let mut o = outlier();
        assert_eq!(o.max_ejected(0), 0);
        assert_eq!(o.max_ejected(1), 0);
        assert_eq!(o.max_ejected(2), 1);
        assert_eq!(o.max_ejected(3), 1);
        assert_eq!(o.max_ejected(10), 5);
        o.max_ejection_percent = 100;
        assert_eq!(o.max_ejected(2), 1);
        assert_eq!(o.max_ejected(10), 9);
        o.max_ejection_percent = 0;
        assert_eq!(o.max_ejected(10), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_back_off_and_return() {
        let ups = version(2);
        let t0 = Instant::now();
        // Two failures do nothing; a success resets the count.
        assert_eq!(fail(&ups, 0, 2, t0), None);
        ups[0]
            .health
            .record_success(&outlier(), &mut LazyNow::at(t0));
        assert_eq!(fail(&ups, 0, 2, t0), None);
        assert!(ups[0].health.is_available(t0));
        // The third in a row ejects for the base time.
        assert_eq!(fail(&ups, 0, 1, t0), Some(Duration::from_secs(10)));
        assert!(!ups[0].health.is_available(t0 + Duration::from_secs(9)));
        assert_eq!(ups[0].health.ejections(), 1);
        // The other one is now the last available: never ejected.
        assert_eq!(fail(&ups, 1, 50, t0), None);
        assert!(ups[1].health.is_available(t0));
        // Back after the back-off; failing again doubles it.
        let t1 = t0 + Duration::from_secs(10);
        assert!(ups[0].health.is_available(t1));
        ups[1]
            .health
            .record_success(&outlier(), &mut LazyNow::at(t1));
        assert_eq!(fail(&ups, 0, 3, t1), Some(Duration::from_secs(20)));
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(fail(&ups, 0, 3, t2), Some(Duration::from_secs(40)));
        // A success right after coming back keeps the exponent; a whole base time of service
        // after it resets it.
        let t3 = t2 + Duration::from_secs(40);
        ups[0]
            .health
            .record_success(&outlier(), &mut LazyNow::at(t3));
        assert_eq!(fail(&ups, 0, 3, t3), Some(Duration::from_secs(80)));
        let t4 = t3 + Duration::from_secs(80 + 10);
        ups[0]
            .health
            .record_success(&outlier(), &mut LazyNow::at(t4));
        assert_eq!(fail(&ups, 0, 3, t4), Some(Duration::from_secs(10)));
        assert_eq!(ups[0].health.ejections(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_percentage_is_out_and_probes_count() {
        let ups = version(4);
        let t0 = Instant::now();
        // 50% of 4: two may be out.
        assert!(fail(&ups, 0, 3, t0).is_some());
        assert!(fail(&ups, 1, 3, t0).is_some());
        assert_eq!(fail(&ups, 2, 3, t0), None);
        assert!(ups[2].health.is_available(t0));
        // An upstream failed by its probe counts as out: with one of two ejected, the other may
        // not go even if the percentage allows it.
        let ups = version(2);
        ups[1].health.set_probe_healthy(false);
        assert_eq!(fail(&ups, 0, 10, t0), None);
        assert!(ups[0].health.is_available(t0));
        assert!(!ups[1].health.is_available(t0));
        assert!(ups[1].health.set_probe_healthy(true));
        assert!(!ups[1].health.set_probe_healthy(true));
        // The count stayed high: the next failure ejects now that it can.
        assert!(fail(&ups, 0, 1, t0).is_some());
    }

    fn table(yaml_upstreams: &str, previous: &crate::RouteTable) -> crate::RouteTable {
        let yaml = format!(
            "listeners: [{{ name: public, address: \"127.0.0.1:8080\" }}]
services:
  - name: s
    stable: {{ version: v1, upstreams: [{yaml_upstreams}] }}
    canary: {{ version: v2, upstreams: [\"127.0.0.1:9100\"] }}
    outlierDetection: {{ consecutiveFailures: 2 }}
"
        );
        let model = weir_config::parse(&yaml, std::path::Path::new("/")).expect("valid");
        crate::RouteTable::build(
            &model,
            &std::collections::BTreeMap::new(),
            &std::collections::BTreeMap::new(),
            &crate::Stats::new(),
            previous,
        )
        .expect("builds")
    }

    #[tokio::test(start_paused = true)]
    async fn selection_skips_the_ejected_and_state_survives_rebuilds() {
        let t1 = table(
            "\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\"",
            &crate::RouteTable::empty(),
        );
        let arm = t1.services()[0].stable();
        for _ in 0..2 {
            arm.record_outcome(1, true);
        }
        assert!(!arm.upstreams()[1].health().is_available(Instant::now()));
        let picks: Vec<usize> = (0..6).map(|_| arm.next_index()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        // A retry after 0 skips the ejected 1 and goes to 2, then there is nothing left.
        let mut attempt = 0;
        assert_eq!(arm.retry_index(0, &mut attempt), Some(2));
        assert_eq!(arm.retry_index(0, &mut attempt), None);
        // The canary (one upstream) is never ejected and pays nothing.
        let canary = t1.services()[0].canary().unwrap();
        assert!(canary.outlier.is_none());
        for _ in 0..10 {
            canary.record_outcome(0, true);
        }
        assert_eq!(canary.upstreams()[0].health().consecutive_failures(), 0);
        // A rebuild that keeps 9002 keeps its state (the same Arc); a new address starts fresh.
        let t2 = table("\"127.0.0.1:9002\", \"127.0.0.1:9004\"", &t1);
        let kept = &t2.services()[0].stable().upstreams()[0];
        assert!(Arc::ptr_eq(kept.health(), arm.upstreams()[1].health()));
        assert!(!kept.health().is_available(Instant::now()));
        assert_eq!(kept.health().ejections(), 1);
        assert!(t2.services()[0].stable().upstreams()[1]
            .health()
            .is_available(Instant::now()));
        assert!(Arc::ptr_eq(
            t2.services()[0].stable().health(),
            arm.health()
        ));
        // Every upstream out (probes failing): fail open, counted.
        let arm2 = t2.services()[0].stable();
        arm2.upstreams()[1].health().set_probe_healthy(false);
        let before = arm2.health().fail_open_count();
        let _ = arm2.next_index();
        assert_eq!(arm2.health().fail_open_count(), before + 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever the settings and the sequence of outcomes, a version always keeps an
        /// available upstream, never has more than its cap out, and every ejection lasts between
        /// the base and the cap.
        #[test]
        fn ejection_invariants(
            n in 1u16..8,
            consecutive in 1u32..4,
            base_ms in 1u64..1_000,
            max_ms in 1u64..100_000,
            percent in 0u8..=100,
            outcomes in proptest::collection::vec((0usize..8, proptest::bool::ANY, 0u64..500), 0..200),
        ) {
            let config = OutlierDetection {
                enabled: true,
                consecutive_failures: consecutive,
                base_ejection_time: Duration::from_millis(base_ms),
                max_ejection_time: Duration::from_millis(max_ms),
                max_ejection_percent: percent,
            };
            let o = Outlier::compile(&config).unwrap();
            let ups = version(n);
            let t0 = Instant::now();
            let mut elapsed = 0;
            for (i, failed, step) in outcomes {
                elapsed += step;
                let now = t0 + Duration::from_millis(elapsed);
                let up = &ups[i % ups.len()];
                if failed {
                    if let Some(length) = up.health.record_failure(&o, &ups, &mut LazyNow::at(now)) {
                        let ms = u64::try_from(length.as_millis()).unwrap();
                        proptest::prop_assert!(ms >= base_ms.min(max_ms.max(base_ms)));
                        proptest::prop_assert!(ms <= max_ms.max(base_ms));
                    }
                } else {
                    up.health.record_success(&o, &mut LazyNow::at(now));
                }
                let out = ups.iter().filter(|u| !u.health.is_available(now)).count();
                proptest::prop_assert!(out <= o.max_ejected(ups.len()));
                proptest::prop_assert!(out < ups.len());
            }
        }
    }
}
