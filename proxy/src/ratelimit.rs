//! `services[].rateLimit`: GCRA token buckets per client key, shared by every worker thread.
//!
//! Each key's bucket is one number, its *theoretical arrival time* (TAT, the generic cell rate
//! algorithm of ATM networks, equivalent to a token bucket): a request at `now` is allowed iff
//! `max(TAT, now) − now ≤ (burst − 1) · T`, with `T = 1 / requestsPerSecond`, and then moves TAT
//! to `max(TAT, now) + T`. A refused request leaves the bucket as it was and is told to retry
//! after `max(TAT, now) − now − (burst − 1) · T`.
//!
//! **Shared, not per worker:** `requestsPerSecond: 100` means 100 per second for the whole
//! process, whichever worker a client's connections land on (a per-worker bucket would allow
//! `workers × rate` to a client with several connections, and a client with one connection would
//! see the full rate while the documented one is divided). The cost of sharing is small: `key:
//! global` is one `AtomicU64` updated by compare-and-swap; keyed limits are split into up to 64
//! shards, each a `Mutex` over two small hash maps held for one lookup and one store, so two
//! workers rarely meet on one shard.
//!
//! **Bounded memory:** keys are hashed to 64 bits, so a key costs the same 16 bytes whatever its
//! length and nothing is allocated per request. Both hashes are keyed with secrets drawn from the
//! operating system's random source (`rand`) for each limiter, so no client can choose keys that
//! collide with another client's bucket or pile up in one slot of a shard's map: a client address
//! (128 bits, of which a client controls at most its own address or prefix) goes through
//! foldhash's quality variant, a few multiplications; a header value (any bytes the client likes,
//! of any length) through SipHash-1-3, the standard library's HashDoS-resistant keyed hash. Each
//! shard keeps two generations of keys: the current one (looked up first) and the previous one.
//! A key found in the previous generation moves to the current one; when the current one is
//! full it becomes the previous one and the old previous generation is forgotten. A key seen
//! within the last `maxKeys / 2` new keys of its shard is therefore always remembered, the least
//! recently seen ones go first, and a shard never holds more than its share of `maxKeys`. A
//! forgotten key starts again with a full bucket.
//!
//! **Carried across tables:** the limiter of a service whose `rateLimit` is unchanged is reused
//! by the next route table (a reload or a weight change keeps every bucket); its
//! `weir_rate_limited_total` counter is carried over even when the block changes.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;
use weir_config::{RateLimit, RateLimitKey};

use crate::body::ProxyBody;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The most shards a keyed limiter is split into.
const MAX_SHARDS: usize = 64;
/// Keys per shard below which a limiter uses fewer shards (so small `maxKeys` stay exact).
const KEYS_PER_SHARD: usize = 1024;

/// One service's rate limiter.
pub struct RateLimiter {
    config: RateLimit,
    /// `T`: nanoseconds between two requests at the sustained rate (at least 1).
    interval: u64,
    /// `(burst − 1) · T`: how far ahead of now a key's TAT may be.
    tolerance: u64,
    /// Time 0 of the TATs.
    epoch: Instant,
    /// Keys the hash of client addresses (`foldhash`, quality variant).
    ip_seed: u64,
    ip_shared: foldhash::SharedSeed,
    /// Keys the hash of header values (SipHash-1-3).
    bytes_hasher: RandomState,
    buckets: Buckets,
    /// Requests refused (`weir_rate_limited_total`), carried across config changes.
    limited: Arc<AtomicU64>,
}

enum Buckets {
    Global(AtomicU64),
    Keyed(Box<[Mutex<Shard>]>),
}

/// Why a request is refused: the client may retry after this many nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Nanoseconds until the request would be allowed.
    pub retry_after_nanos: u64,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_nanos.div_ceil(1_000_000_000).max(1)
    }

    /// The `429 Too Many Requests` answer.
    pub(crate) fn to_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(Bytes::from_static(
            b"rate limit exceeded\n",
        )));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.retry_after_secs()),
        );
        response
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .field("limited", &self.limited.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with empty buckets.
    pub fn new(config: &RateLimit) -> RateLimiter {
        RateLimiter::with_counter(config, Arc::default())
    }

    fn with_counter(config: &RateLimit, limited: Arc<AtomicU64>) -> RateLimiter {
        // Validation bounds the rate to 0.001..=1e6 and burst to 1..=1e6: T ≤ 1e12 ns and
        // (burst − 1) · T ≤ 1e18 < u64::MAX; the clamps and saturation only keep any value safe.
        let rate = if config.requests_per_second.is_finite() {
            config
                .requests_per_second
                .clamp(RateLimit::MIN_RATE, RateLimit::MAX_RATE)
        } else {
            RateLimit::MIN_RATE
        };
        let interval = ((1e9 / rate) as u64).max(1);
        let tolerance = interval.saturating_mul(u64::from(config.burst.max(1) - 1));
        let buckets = match config.key {
            RateLimitKey::Global => Buckets::Global(AtomicU64::new(0)),
            _ => {
                let max_keys = config.max_keys.max(1);
                let shards = (max_keys / KEYS_PER_SHARD)
                    .max(1)
                    .next_power_of_two()
                    .min(MAX_SHARDS);
                Buckets::Keyed(
                    (0..shards)
                        .map(|i| {
                            // Shares of max_keys that add up to it exactly.
                            let cap = max_keys / shards + usize::from(i < max_keys % shards);
                            Mutex::new(Shard::new(cap))
                        })
                        .collect(),
                )
            }
        };
        RateLimiter {
            config: config.clone(),
            interval,
            tolerance,
            epoch: Instant::now(),
            ip_seed: rand::random(),
            ip_shared: foldhash::SharedSeed::from_u64(rand::random()),
            bytes_hasher: RandomState::new(),
            buckets,
            limited,
        }
    }

    /// The limiter for a table being built: `previous` (the service's limiter in the table being
    /// replaced) when its config is `config`, so its buckets carry over; a new one otherwise,
    /// keeping the previous refusal count.
    pub(crate) fn carry(
        config: Option<&RateLimit>,
        previous: Option<&Arc<RateLimiter>>,
    ) -> Option<Arc<RateLimiter>> {
        let config = config?;
        Some(match previous {
            Some(previous) if previous.config == *config => Arc::clone(previous),
            Some(previous) => Arc::new(RateLimiter::with_counter(
                config,
                Arc::clone(&previous.limited),
            )),
            None => Arc::new(RateLimiter::new(config)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Requests refused so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// How many keys are remembered (0 for `key: global`).
    pub fn keys(&self) -> usize {
        match &self.buckets {
            Buckets::Global(_) => 0,
            Buckets::Keyed(shards) => shards
                .iter()
                .map(|s| {
                    s.lock()
                        .map(|s| s.len())
                        .unwrap_or_else(|p| p.get_ref().len())
                })
                .sum(),
        }
    }

    /// Checks (and takes) one request of the client whose request head is `headers`, coming from
    /// `peer`; `trusted(ip)` tells whether `ip` is a trusted proxy of the listener (called only
    /// when the peer is one).
    pub(crate) fn check_request(
        &self,
        now: Instant,
        peer: IpAddr,
        peer_trusted: bool,
        trusted: impl Fn(IpAddr) -> bool,
        headers: &HeaderMap,
    ) -> Result<(), Limited> {
        // The peer itself unless it is a trusted proxy (without a call in the usual case).
        let client = || {
            if peer_trusted {
                client_ip(peer, peer_trusted, &trusted, headers)
            } else {
                peer
            }
        };
        let key = match &self.config.key {
            RateLimitKey::Global => return self.check(now, Key::Global),
            RateLimitKey::ClientIp => Key::Ip(client()),
            RateLimitKey::Header(name) => match headers.get(name.as_str()) {
                Some(value) => Key::Bytes(value.as_bytes()),
                None => Key::Ip(client()),
            },
        };
        self.check(now, key)
    }

    /// Checks (and takes) one request for `key` at `now`.
    pub fn check(&self, now: Instant, key: Key<'_>) -> Result<(), Limited> {
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let result = match &self.buckets {
            Buckets::Global(tat) => self.take_atomic(tat, now),
            Buckets::Keyed(shards) => {
                let hash = self.hash(key);
                // The high half picks the shard; the maps use all of it.
                let shard = &shards[((hash >> 32) as usize) & (shards.len() - 1)];
                let mut shard = shard
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let tat = shard.slot(hash);
                gcra(tat, now, self.interval, self.tolerance)
            }
        };
        if result.is_err() {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn take_atomic(&self, tat: &AtomicU64, now: u64) -> Result<(), Limited> {
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let mut next = current;
            gcra(&mut next, now, self.interval, self.tolerance)?;
            match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    fn hash(&self, key: Key<'_>) -> u64 {
        match key {
            Key::Global => 0,
            Key::Ip(ip) => {
                // An IPv4 address and its IPv4-mapped IPv6 form are one client.
                let bits = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                }
                .to_bits();
                let mut hasher =
                    foldhash::quality::FoldHasher::with_seed(self.ip_seed, &self.ip_shared);
                hasher.write_u128(bits);
                hasher.finish()
            }
            // Tagged, so a header value never shares a bucket with an address by construction
            // of the input (the two hashes are independent as well).
            Key::Bytes(bytes) => self.bytes_hasher.hash_one((1u8, bytes)),
        }
    }
}

/// What a bucket belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// The service's one bucket (`key: global`).
    Global,
    /// A client address.
    Ip(IpAddr),
    /// A header value.
    Bytes(&'a [u8]),
}

/// One GCRA step on `tat`: allowed (and `tat` moved) or refused (`tat` untouched).
fn gcra(tat: &mut u64, now: u64, interval: u64, tolerance: u64) -> Result<(), Limited> {
    let start = (*tat).max(now);
    let ahead = start - now;
    if ahead > tolerance {
        return Err(Limited {
            retry_after_nanos: ahead - tolerance,
        });
    }
    *tat = start.saturating_add(interval);
    Ok(())
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` address that is not a trusted proxy (the leftmost one when all are; the
/// last trusted one when an element does not parse).
fn client_ip(
    peer: IpAddr,
    peer_trusted: bool,
    trusted: &impl Fn(IpAddr) -> bool,
    headers: &HeaderMap,
) -> IpAddr {
    if !peer_trusted {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for element in value.rsplit(',') {
            let element = element.trim();
            let element = element
                .strip_prefix('[')
                .and_then(|e| e.split_once(']').map(|(ip, _)| ip))
                .unwrap_or(element);
            let Ok(ip) = element.parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// The hash maps' hasher: keys are already random 64-bit hashes.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, u64, BuildHasherDefault<KeyHasher>>;

/// One shard's keys, in two generations (see the module docs).
struct Shard {
    current: Map,
    previous: Map,
    /// Most keys in one generation.
    generation: usize,
    /// Whether the previous generation is kept (not with a share of one key).
    keep_previous: bool,
}

impl Shard {
    fn new(cap: usize) -> Shard {
        let cap = cap.max(1);
        Shard {
            current: Map::default(),
            previous: Map::default(),
            generation: (cap / 2).max(1),
            keep_previous: cap >= 2,
        }
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// The TAT of `key`, remembered from now on.
    fn slot(&mut self, key: u64) -> &mut u64 {
        if self.current.len() < self.generation {
            // Room in the current generation (the usual case): one lookup, whether the key is
            // there or not.
            return match self.current.entry(key) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => entry.insert(self.previous.remove(&key).unwrap_or(0)),
            };
        }
        if self.current.contains_key(&key) {
            return self.current.entry(key).or_insert(0);
        }
        let tat = self.previous.remove(&key).unwrap_or(0);
        if self.current.len() >= self.generation {
            // The current generation becomes the previous one; the old previous one is
            // forgotten (cleared, keeping its allocation for the next generation).
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            if !self.keep_previous {
                self.previous.clear();
            }
        }
        self.current.entry(key).or_insert(tat)
    }
}

/// `weir_rate_limited_total{service}` for every rate-limited service of `table`.
pub(crate) fn encode(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    table: &crate::RouteTable,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    let mut limited = encoder.encode_descriptor(
        "weir_rate_limited",
        "Requests refused with 429 by a service's rate limit (never counted against a version), by service",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for service in table.services() {
        if let Some(limiter) = &service.rate_limit {
            let labels = [("service", service.name())];
            prometheus_client::metrics::counter::ConstCounter::new(limiter.limited())
                .encode(limited.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
