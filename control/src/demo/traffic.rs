//! A paced traffic generator: `GET /` at an even rate over keep-alive HTTP/1.1 connections,
//! counting the answers by the version that served them (the `x-version` header) and by status.
//!
//! `concurrency` workers each own one connection and send one request per `concurrency / rate`
//! seconds, their schedules interleaved, so the aggregate is evenly spaced. A worker whose answer
//! comes late skips the ticks it missed rather than bursting to catch up: a slow backend lowers
//! the rate, as it would for real users waiting on it.
//!
//! ```text
//! let traffic = Traffic::spawn(proxy_addr, "demo.local", 200, 8);
//! ...
//! let last_second = traffic.snapshot().since(&earlier);
//! let total = traffic.stop().await;
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::demo::backend::VERSION_HEADER;

/// The version key for answers without an `x-version` header (e.g. weir's own `502`).
pub const NO_VERSION: &str = "-";

/// How long one request (connecting included) may take before it counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A running generator. Dropping it stops the workers (without waiting).
pub struct Traffic {
    counts: Arc<Mutex<TrafficSnapshot>>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

/// What a generator has seen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficSnapshot {
    /// Requests started.
    pub sent: u64,
    /// Requests that got no answer: connection refused or reset, timeout.
    pub failures: u64,
    /// Answers by the version that served them ([`NO_VERSION`] without the header).
    pub versions: BTreeMap<String, VersionCounts>,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
}

/// The answers from one version.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VersionCounts {
    /// Answers.
    pub responses: u64,
    /// `5xx` answers.
    pub server_errors: u64,
    /// When the first answer came.
    pub first_at: Option<Instant>,
    /// When the latest answer came.
    pub last_at: Option<Instant>,
    /// When the first `5xx` answer came.
    pub first_error_at: Option<Instant>,
}

// === impl Traffic ===

impl Traffic {
    /// Starts sending `GET /` with `Host: host` to `target`, `rate_per_sec` requests a second in
    /// all, over `concurrency` connections (at least one). A rate of 0 sends nothing. Must be
    /// called within a tokio runtime.
    pub fn spawn(target: SocketAddr, host: &str, rate_per_sec: u32, concurrency: usize) -> Traffic {
        let counts = Arc::new(Mutex::new(TrafficSnapshot::default()));
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::new();
        if rate_per_sec > 0 {
            let concurrency = concurrency.max(1);
            let workers_u32 = u32::try_from(concurrency).unwrap_or(u32::MAX);
            // Each worker's period; worker i starts i/concurrency of it after worker 0.
            let period = Duration::from_secs(1) * workers_u32 / rate_per_sec;
            let period = period.max(Duration::from_micros(1));
            let start = Instant::now();
            for i in 0..workers_u32 {
                let worker = Worker {
                    target,
                    host: host.to_string(),
                    counts: counts.clone(),
                    connection: None,
                };
                let first = start + period * i / workers_u32;
                workers.push(tokio::spawn(worker.run(first, period, stopped.clone())));
            }
        }
        Traffic {
            counts,
            stop,
            workers,
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> TrafficSnapshot {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops every worker (a request in flight is abandoned) and returns the final counts.
    pub async fn stop(mut self) -> TrafficSnapshot {
        let _ = self.stop.send(true);
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.await;
        }
        self.snapshot()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

// === impl TrafficSnapshot ===

impl TrafficSnapshot {
    /// Answers received, from every version.
    pub fn responses(&self) -> u64 {
        self.versions.values().map(|v| v.responses).sum()
    }

    /// Answers from `version`.
    pub fn responses_from(&self, version: &str) -> u64 {
        self.versions.get(version).map_or(0, |v| v.responses)
    }

    /// `5xx` answers, from every version.
    pub fn server_errors(&self) -> u64 {
        self.versions.values().map(|v| v.server_errors).sum()
    }

    /// The counts between `earlier` (a snapshot of the same generator) and this one; the
    /// timestamps are this snapshot's.
    pub fn since(&self, earlier: &TrafficSnapshot) -> TrafficSnapshot {
        let versions = self
            .versions
            .iter()
            .map(|(version, now)| {
                let before = earlier.versions.get(version).copied().unwrap_or_default();
                let delta = VersionCounts {
                    responses: now.responses.saturating_sub(before.responses),
                    server_errors: now.server_errors.saturating_sub(before.server_errors),
                    ..*now
                };
                (version.clone(), delta)
            })
            .collect();
        let statuses = self
            .statuses
            .iter()
            .map(|(status, n)| {
                let before = earlier.statuses.get(status).copied().unwrap_or(0);
                (*status, n.saturating_sub(before))
            })
            .collect();
        TrafficSnapshot {
            sent: self.sent.saturating_sub(earlier.sent),
            failures: self.failures.saturating_sub(earlier.failures),
            versions,
            statuses,
        }
    }

    fn record(&mut self, status: StatusCode, version: &str, at: Instant) {
        *self.statuses.entry(status.as_u16()).or_default() += 1;
        let counts = self.versions.entry(version.to_string()).or_default();
        counts.responses += 1;
        counts.first_at.get_or_insert(at);
        counts.last_at = Some(at);
        if status.is_server_error() {
            counts.server_errors += 1;
            counts.first_error_at.get_or_insert(at);
        }
    }
}

/// One connection's worth of the load.
struct Worker {
    target: SocketAddr,
    host: String,
    counts: Arc<Mutex<TrafficSnapshot>>,
    connection: Option<Connection>,
}

/// A keep-alive connection; dropping it closes it.
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Build(#[from] http::Error),
}

impl Worker {
    async fn run(mut self, first: Instant, period: Duration, mut stopped: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval_at(first, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                _ = ticks.tick() => {}
            }
            self.lock().sent += 1;
            let answer = tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                answer = tokio::time::timeout(REQUEST_TIMEOUT, self.request()) => answer,
            };
            match answer {
                Ok(Ok((status, version))) => self.lock().record(status, &version, Instant::now()),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "traffic: request failed");
                    self.connection = None;
                    self.lock().failures += 1;
                }
                Err(_elapsed) => {
                    tracing::debug!("traffic: request timed out");
                    self.connection = None;
                    self.lock().failures += 1;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrafficSnapshot> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one request on the kept-alive connection (opening one if needed) and reads the
    /// whole answer, so the connection can be reused.
    async fn request(&mut self) -> Result<(StatusCode, String), RequestError> {
        let request = Request::get("/")
            .header(HOST, self.host.as_str())
            .header(USER_AGENT, "weir-traffic")
            .body(Empty::new())?;
        let connection = match self.connection.take() {
            Some(open) if !open.sender.is_closed() => open,
            _ => {
                let stream = TcpStream::connect(self.target).await?;
                let _ = stream.set_nodelay(true);
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                let driver = tokio::spawn(async move {
                    let _ = connection.await;
                });
                Connection { sender, driver }
            }
        };
        let connection = self.connection.insert(connection);
        connection.sender.ready().await?;
        let response = connection.sender.send_request(request).await?;
        let status = response.status();
        let version = response
            .headers()
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(NO_VERSION)
            .to_string();
        response.into_body().collect().await?;
        Ok((status, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::backend::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paces_evenly_and_counts_by_version() {
        let backend = Backend::bind("v7").expect("bind");
        backend.set_error_rate(0.25);
        let traffic = Traffic::spawn(backend.addr(), "example.test", 100, 4);
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        let total = traffic.stop().await;
        // 100/s for 1.05s: 105 ticks, fewer if the machine is busy (missed ticks are skipped),
        // never a burst above that.
        assert!(
            (50..=106).contains(&total.sent),
            "sent {} in ~1s at 100/s",
            total.sent
        );
        let v7 = total.versions.get("v7").copied().unwrap_or_default();
        assert_eq!(total.failures, 0);
        // Stopping may cut up to one in-flight request per connection that the backend already
        // answered: the client's counts trail the backend's by at most the concurrency.
        let served = backend.stats();
        assert!(
            (served.requests - v7.responses) <= 4 && v7.responses <= served.requests,
            "client saw {}, backend answered {}",
            v7.responses,
            served.requests
        );
        assert!(
            v7.server_errors.abs_diff(v7.responses / 4) <= 4,
            "about every fourth answer is a 500: {} of {}",
            v7.server_errors,
            v7.responses
        );
        assert!(v7.first_error_at.is_some());
        assert_eq!(
            total.statuses.get(&500).copied().unwrap_or(0),
            v7.server_errors
        );
        backend.shutdown().await;
    }

    #[tokio::test]
    async fn since_subtracts_and_failures_count() {
        // Nothing listens on this port once the listener is dropped.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let traffic = Traffic::spawn(addr, "example.test", 50, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let earlier = traffic.snapshot();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let later = traffic.stop().await;
        assert!(earlier.failures > 0, "refused connections are failures");
        assert_eq!(later.responses(), 0);
        let delta = later.since(&earlier);
        assert_eq!(delta.failures, later.failures - earlier.failures);
        assert_eq!(delta.sent, later.sent - earlier.sent);
    }
}
