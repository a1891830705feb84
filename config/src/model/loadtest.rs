//! `loadTest` on a `type: rollout` webhook: traffic weir itself sends to the canary while its
//! analysis runs (what flagger-loadtester does, without another service) (issue #9).

use std::time::Duration;

/// `webhooks[].loadTest`: weir sends `rate` requests per second of `method path` with
/// `headers` to the canary version, through its own data plane (counted under the canary's
/// version like any other request), for as long as the rollout's analysis runs.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadTest {
    /// `rate` (required, 1 to [`LoadTest::MAX_RATE`]): requests per second.
    pub rate: u32,
    /// `path` (default `/`): path and query of each request; must start with `/`.
    pub path: String,
    /// `method` (default `GET`).
    pub method: String,
    /// `headers` (default none): added to each request.
    pub headers: Vec<(String, String)>,
    /// `timeout` (default [`LoadTest::DEFAULT_TIMEOUT`]): a request unanswered by then is
    /// abandoned (and counted by the load tester as a timeout).
    pub timeout: Duration,
}

impl LoadTest {
    /// The highest `rate` accepted: a load test judges a low-traffic canary, it is not a benchmark.
    pub const MAX_RATE: u32 = 1000;
    /// `timeout` when not written: 10s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// What the rollout engine wants load-tested now: one service's canary and its load.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadTarget {
    /// The service (its routes and listeners carry the requests).
    pub service: String,
    /// The canary version the requests are pinned to.
    pub version: String,
    /// The load.
    pub load: LoadTest,
}
