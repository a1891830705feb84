//! `services[].rateLimit`: token buckets per client key, shared by every worker thread.

/// `services[].rateLimit`: at most `requestsPerSecond` requests per second per key on average,
/// with bursts of up to `burst` requests at once. A request over the limit is answered
/// `429 Too Many Requests` with `Retry-After` before any version is picked: it is counted in
/// `weir_rate_limited_total{service}` and never against a version.
///
/// The buckets are shared by every worker thread (one limit per key for the whole process, not
/// per worker), and survive reloads and weight changes while this block is unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// `requestsPerSecond` (required, between 0.001 and 1,000,000): the sustained rate per key.
    pub requests_per_second: f64,
    /// `burst` (default: `requestsPerSecond` rounded up, at least 1; at most 1,000,000): how many
    /// requests a key that was idle may send at once.
    pub burst: u32,
    /// `key` (default `clientIp`): what a bucket belongs to.
    pub key: RateLimitKey,
    /// `maxKeys` (default [`RateLimit::DEFAULT_MAX_KEYS`], 100,000; between 1 and 10,000,000):
    /// the most keys whose buckets are remembered. Past it the least recently seen keys are
    /// forgotten (a forgotten key starts again with a full bucket), so memory stays bounded
    /// (about 40 bytes per key) whatever clients send.
    pub max_keys: usize,
}

impl RateLimit {
    /// Default of [`RateLimit::max_keys`].
    pub const DEFAULT_MAX_KEYS: usize = 100_000;
    /// The highest accepted `maxKeys`.
    pub const MAX_MAX_KEYS: usize = 10_000_000;
    /// The lowest accepted `requestsPerSecond`.
    pub const MIN_RATE: f64 = 0.001;
    /// The highest accepted `requestsPerSecond` and `burst`.
    pub const MAX_RATE: f64 = 1_000_000.0;

    /// The default burst for `requests_per_second`: one second's worth, at least 1.
    pub fn default_burst(requests_per_second: f64) -> u32 {
        requests_per_second.ceil().clamp(1.0, Self::MAX_RATE) as u32
    }
}

/// `services[].rateLimit.key`: whose requests share a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateLimitKey {
    /// `clientIp`: the peer's address, or, when the peer is one of the listener's
    /// `trustedProxies`, the rightmost address of `X-Forwarded-For` that is not a trusted proxy.
    ClientIp,
    /// `{header: NAME}` (lower-cased): the header's first value. A request without the header is
    /// limited by its client IP instead (a separate bucket from any header value), so leaving the
    /// header out never escapes the limit.
    Header(String),
    /// `global`: one bucket for all of the service's requests.
    Global,
}
