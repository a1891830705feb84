//! The built-in load test (`webhooks[].loadTest` on a `type: rollout` hook, issue #9): what
//! flagger-loadtester does, without another service. While a rollout's analysis runs, the engine
//! publishes the services whose canary it wants loaded (a `watch` of [`LoadTarget`]s); the
//! [`LoadTester`] keeps one generator task per target and sends its traffic through weir's own data
//! plane, pinned to the canary version ([`weir_proxy::Pinned`]), so it is counted under that
//! version like any client's request and the analysis can judge a canary nobody else calls.
//!
//! - **Pace:** `rate` requests per second, evenly spaced (a tokio interval that skips missed
//!   ticks: a late generator never bursts to catch up).
//! - **Bound:** at most `rate × timeout` requests of a target in flight (at least 1, at most
//!   [`MAX_IN_FLIGHT_PER_TARGET`]); a tick that finds them all taken sends nothing and counts a
//!   `skipped`, so a slow canary never piles up tasks.
//! - **Each request:** `method path` with the target's `headers`, `User-Agent:
//!   weir-loadtest/<version>` unless the headers name one, an `X-Request-Id` made by the data
//!   plane, and the target's `timeout` (see [`weir_proxy::Pinned`] for what it bounds).
//! - **Changes:** a target that appears starts a generator, one that disappears stops it, one
//!   whose load changed takes the new rate, path and headers at once. Requests already sent finish
//!   (each within its `timeout`) and are counted either way.
//! - **Counted:** `weir_loadtest_requests_total{service,result}`, `result` one of `ok` (answered
//!   below 500), `error` (5xx other than 504, or the answer broke), `timeout` (504, or not complete
//!   within `timeout`), `skipped` (not sent: the canary is not in the route table, or the in-flight
//!   bound was reached). Starts, stops and changes are logged (target `weir::loadtest`).

use std::collections::{HashMap, HashSet};
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http::uri::PathAndQuery;
use http::Method;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Semaphore};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;
use weir_config::{LoadTarget, LoadTest};
use weir_proxy::{Pinned, PinnedOutcome, PinnedRequest, Routes};

/// The most requests of one target in flight at once, whatever `rate × timeout` is.
pub const MAX_IN_FLIGHT_PER_TARGET: usize = 1024;

/// The `User-Agent` of load-test requests (unless their headers name one).
pub const USER_AGENT_VALUE: &str = concat!("weir-loadtest/", env!("CARGO_PKG_VERSION"));

/// How one load-test request ended (the `result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadResult {
    /// Answered with a status below 500.
    Ok,
    /// Answered 5xx (other than 504), or the answer broke off.
    Error,
    /// Answered 504, or not complete within the load test's `timeout`.
    Timeout,
    /// Not sent: the version is not in the route table, or the in-flight bound was reached.
    Skipped,
}

impl LoadResult {
    /// Every result, in label order.
    pub const ALL: [LoadResult; 4] = [
        LoadResult::Ok,
        LoadResult::Error,
        LoadResult::Timeout,
        LoadResult::Skipped,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadResult::Ok => "ok",
            LoadResult::Error => "error",
            LoadResult::Timeout => "timeout",
            LoadResult::Skipped => "skipped",
        }
    }

    /// The result of a pinned request's outcome.
    pub fn of(outcome: PinnedOutcome) -> LoadResult {
        match outcome {
            PinnedOutcome::Answered(status) if status == http::StatusCode::GATEWAY_TIMEOUT => {
                LoadResult::Timeout
            }
            PinnedOutcome::Answered(status) if status.is_server_error() => LoadResult::Error,
            PinnedOutcome::Answered(_) => LoadResult::Ok,
            PinnedOutcome::TimedOut => LoadResult::Timeout,
            PinnedOutcome::Failed => LoadResult::Error,
            PinnedOutcome::Skipped => LoadResult::Skipped,
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// `weir_loadtest_requests_total{service,result}`. Label values are bounded: service names come
/// from the config, results from [`LoadResult`].
#[derive(Clone, Debug, Default)]
pub struct LoadTestMetrics {
    requests: Family<Labels, Counter>,
}

impl LoadTestMetrics {
    /// Registers the series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weir_loadtest_requests",
            "Requests of the built-in load test by service and result (ok, error, timeout, skipped)",
            self.requests.clone(),
        );
    }

    /// The count of `service`'s requests that ended with `result`.
    pub fn count(&self, service: &str, result: LoadResult) -> u64 {
        self.counter(service, result).get()
    }

    fn counter(&self, service: &str, result: LoadResult) -> Counter {
        self.requests
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("result", result.as_str().to_string()),
            ])
            .clone()
    }

    /// One service's four counters (resolved once per generator, not per request).
    fn counters(&self, service: &str) -> Counters {
        Counters(LoadResult::ALL.map(|result| self.counter(service, result)))
    }
}

/// One service's counters, indexed like [`LoadResult::ALL`].
#[derive(Clone, Debug)]
struct Counters([Counter; 4]);

impl Counters {
    fn count(&self, result: LoadResult) {
        // `ALL` lists the variants in declaration order.
        self.0[result as usize].inc();
    }
}

/// The running load tester; stops every generator when dropped (requests already sent finish
/// within their timeout).
#[derive(Debug)]
pub struct LoadTester {
    task: Option<JoinHandle<()>>,
}

impl LoadTester {
    /// Starts the data plane's pinned-request thread on `routes` and the task that follows
    /// `targets`, counting in `metrics`. Must be called inside a tokio runtime. It stops by
    /// itself when `targets`' sender is dropped.
    pub fn spawn(
        routes: &Routes,
        targets: watch::Receiver<Vec<LoadTarget>>,
        metrics: LoadTestMetrics,
    ) -> io::Result<LoadTester> {
        let pinned = Pinned::spawn(routes)?;
        Ok(LoadTester {
            task: Some(tokio::spawn(follow(pinned, targets, metrics))),
        })
    }

    /// The task, for whoever stops it (aborting it stops everything).
    pub fn into_task(mut self) -> JoinHandle<()> {
        self.task
            .take()
            .expect("the task is only taken here, and this consumes the tester")
    }

    /// Stops every generator and waits for the task to end.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for LoadTester {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A running generator.
struct Running {
    load: watch::Sender<LoadTest>,
    abort: AbortHandle,
}

/// Follows the wanted set: one generator per (service, version).
async fn follow(
    pinned: Pinned,
    mut targets: watch::Receiver<Vec<LoadTarget>>,
    metrics: LoadTestMetrics,
) {
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    // Dropped (aborting every generator) when this task ends or is aborted.
    let mut tasks = JoinSet::new();
    loop {
        let wanted = targets.borrow_and_update().clone();
        let mut seen = HashSet::new();
        for target in wanted {
            let key = (target.service.clone(), target.version.clone());
            if !seen.insert(key.clone()) {
                continue;
            }
            match running.get(&key) {
                Some(generator) => {
                    if *generator.load.borrow() != target.load {
                        log_load("load test changed", &target);
                        generator.load.send_replace(target.load);
                    }
                }
                None => {
                    log_load("load test started", &target);
                    let (load, load_rx) = watch::channel(target.load.clone());
                    let abort = tasks.spawn(generate(
                        pinned.clone(),
                        target.service.clone(),
                        target.version.clone(),
                        load_rx,
                        metrics.counters(&target.service),
                    ));
                    running.insert(key, Running { load, abort });
                }
            }
        }
        running.retain(|(service, version), generator| {
            let keep = seen.contains(&(service.clone(), version.clone()));
            if !keep {
                generator.abort.abort();
                tracing::info!(target: "weir::loadtest", %service, %version, "load test stopped");
            }
            keep
        });
        tokio::select! {
            changed = targets.changed() => {
                if changed.is_err() {
                    for ((service, version), _) in running.drain() {
                        tracing::info!(target: "weir::loadtest", %service, %version, "load test stopped");
                    }
                    return;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

fn log_load(what: &str, target: &LoadTarget) {
    tracing::info!(
        target: "weir::loadtest",
        service = %target.service,
        version = %target.version,
        rate = target.load.rate,
        method = %target.load.method,
        path = %target.load.path,
        timeout = ?target.load.timeout,
        "{what}"
    );
}

/// Headers a load test never sends as written: the message's framing and hop-by-hop headers.
const FRAMING: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// What a generator sends, compiled from a [`LoadTest`] when it starts or changes.
#[derive(Debug)]
struct Plan {
    request: PinnedRequest,
    period: Duration,
    cap: usize,
}

impl Plan {
    fn new(service: &str, version: &str, load: &LoadTest) -> Result<Plan, String> {
        let rate = load.rate.min(LoadTest::MAX_RATE);
        if rate == 0 {
            return Err("rate is 0".into());
        }
        let method = Method::from_str(&load.method)
            .map_err(|_| format!("invalid method {:?}", load.method))?;
        let path = PathAndQuery::from_str(&load.path)
            .ok()
            .filter(|p| p.as_str().starts_with('/'))
            .ok_or_else(|| format!("invalid path {:?}", load.path))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &load.headers {
            let name =
                HeaderName::from_str(name).map_err(|_| format!("invalid header {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value of header {name}"))?;
            if FRAMING.contains(&name.as_str()) {
                // The request has no body and one hop: these would only break its framing.
                tracing::warn!(target: "weir::loadtest", %service, header = %name, "load test header ignored");
                continue;
            }
            headers.append(name, value);
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        }
        // `rate × timeout` covers every request of a canary that takes the whole timeout.
        let cap = (f64::from(rate) * load.timeout.as_secs_f64()).ceil();
        let cap = if cap.is_finite() {
            cap as usize
        } else {
            usize::MAX
        };
        Ok(Plan {
            request: PinnedRequest {
                service: service.to_string(),
                version: version.to_string(),
                method,
                path,
                headers,
                timeout: load.timeout,
            },
            period: Duration::from_nanos(1_000_000_000 / u64::from(rate)),
            cap: cap.clamp(1, MAX_IN_FLIGHT_PER_TARGET),
        })
    }
}

/// One target's generator: paced requests, a bounded number in flight; a changed load takes
/// effect at once. Aborting it stops the sending; requests already sent finish.
async fn generate(
    pinned: Pinned,
    service: String,
    version: String,
    mut load: watch::Receiver<LoadTest>,
    counters: Counters,
) {
    let mut started = false;
    loop {
        let current = load.borrow_and_update().clone();
        let plan = match Plan::new(&service, &version, &current) {
            Ok(plan) => plan,
            Err(why) => {
                // Refused by the config's validation before it gets here; never a panic.
                tracing::warn!(target: "weir::loadtest", %service, %version, %why, "load test not run");
                if load.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let slots = Arc::new(Semaphore::new(plan.cap));
        // The first request at once; after a change, one period after it (no extra request).
        let first = if started {
            tokio::time::Instant::now() + plan.period
        } else {
            tokio::time::Instant::now()
        };
        started = true;
        let mut tick = tokio::time::interval_at(first, plan.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                changed = load.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = tick.tick() => {}
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                counters.count(LoadResult::Skipped);
                continue;
            };
            let (pinned, request, counters) =
                (pinned.clone(), plan.request.clone(), counters.clone());
            // Not tied to the generator: a request sent finishes (within its timeout) and is
            // counted even when the load stops or changes meanwhile.
            tokio::spawn(async move {
                let outcome = pinned.send(request).await;
                counters.count(LoadResult::of(outcome));
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rate: u32, timeout: Duration) -> LoadTest {
        LoadTest {
            rate,
            path: "/health?x=1".into(),
            method: "GET".into(),
            headers: vec![("x-test".into(), "1".into())],
            timeout,
        }
    }

    #[test]
    fn a_plan_paces_and_bounds_by_rate_and_timeout() {
        let plan = Plan::new("shop", "v2", &load(20, Duration::from_secs(2))).expect("a plan");
        assert_eq!(plan.period, Duration::from_millis(50));
        assert_eq!(plan.cap, 40);
        assert_eq!(plan.request.path.as_str(), "/health?x=1");
        assert_eq!(plan.request.headers[USER_AGENT], USER_AGENT_VALUE);
        assert_eq!(plan.request.headers["x-test"], "1");
        let huge = Plan::new("shop", "v2", &load(1000, Duration::MAX)).expect("a plan");
        assert_eq!(huge.cap, MAX_IN_FLIGHT_PER_TARGET);
        let tiny = Plan::new("shop", "v2", &load(1, Duration::from_millis(1))).expect("a plan");
        assert_eq!(tiny.cap, 1);
        assert!(Plan::new("shop", "v2", &load(0, Duration::from_secs(1))).is_err());
    }

    #[test]
    fn headers_may_name_their_own_user_agent_and_bad_ones_are_refused() {
        let mut with_agent = load(5, Duration::from_secs(1));
        with_agent.headers = vec![("User-Agent".into(), "mine".into())];
        let plan = Plan::new("shop", "v2", &with_agent).expect("a plan");
        assert_eq!(plan.request.headers[USER_AGENT], "mine");
        let mut bad = load(5, Duration::from_secs(1));
        bad.headers = vec![("bad name".into(), "x".into())];
        assert!(Plan::new("shop", "v2", &bad).is_err());
        let mut framing = load(5, Duration::from_secs(1));
        framing.headers = vec![
            ("Content-Length".into(), "5".into()),
            ("connection".into(), "close".into()),
            ("x-kept".into(), "1".into()),
        ];
        let plan = Plan::new("shop", "v2", &framing).expect("a plan");
        let names: Vec<_> = plan.request.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "user-agent"]);
        let mut bad = load(5, Duration::from_secs(1));
        bad.path = "health".into();
        assert!(Plan::new("shop", "v2", &bad).is_err());
    }

    #[test]
    fn outcomes_map_to_a_fixed_set_of_results() {
        use http::StatusCode;
        let of = |o| LoadResult::of(o).as_str();
        assert_eq!(of(PinnedOutcome::Answered(StatusCode::OK)), "ok");
        assert_eq!(of(PinnedOutcome::Answered(StatusCode::NOT_FOUND)), "ok");
        assert_eq!(
            of(PinnedOutcome::Answered(StatusCode::BAD_GATEWAY)),
            "error"
        );
        assert_eq!(
            of(PinnedOutcome::Answered(StatusCode::GATEWAY_TIMEOUT)),
            "timeout"
        );
        assert_eq!(of(PinnedOutcome::TimedOut), "timeout");
        assert_eq!(of(PinnedOutcome::Failed), "error");
        assert_eq!(of(PinnedOutcome::Skipped), "skipped");
    }
}
