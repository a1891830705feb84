//! Per-request rules of a service, compiled when the table is built: header/cookie routes,
//! blue-green preview, sticky versions (session affinity) and mirror routes.
//!
//! Everything a request is compared with (header names, anchored regexes, cookie names) is
//! compiled here, so evaluating a rule that does not match allocates nothing. Values are compared
//! as bytes (header values need not be UTF-8); the `regex` crate matches in linear time, and hyper
//! bounds what there is to scan (HTTP/1: 100 headers in about 400 KB; HTTP/2: a 16 KB header list).
//!
//! A compiled regex keeps its match scratch space in a pool, whose first user thread owns a slot
//! without synchronisation while every other thread goes through a `try_lock`ed stack. So each
//! regex is kept as `REGEX_COPIES` clones (one compiled program, one pool each) and a worker
//! uses the clone of its own slot (`set_worker_slot`): with up to that many workers no regex
//! evaluation on the request path takes a lock. Threads without a slot (tests, more workers)
//! share clones and stay correct, at the cost of the `try_lock`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use weir_config::{AffinityKey, HeaderRoute, MirrorRoute, RequestMatch, StringMatch, Weight};

use super::split::{Pick, Split};

/// The largest compiled regex accepted (the validator's limit too): a pattern is compiled once per
/// table, but a table is built on every publish.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Basis points in 100%: affinity buckets are `0..FULL`.
pub const BUCKETS: u16 = 10_000;

/// The parts of a request head the rules look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The URI path (no query).
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The name of the listener the connection came in on.
    pub listener: &'a str,
    /// Whether that listener terminates TLS.
    pub tls: bool,
    /// The request reached the service through one of its blue-green preview hosts.
    pub preview_host: bool,
}

/// Why a rule could not be compiled. Validation rejects these configs; a table built from an
/// unvalidated model reports them instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A regex does not compile.
    #[error("invalid regex {pattern:?}: {message}")]
    Regex {
        /// The pattern as written.
        pattern: String,
        /// Why.
        message: String,
    },
    /// A header name is not a valid HTTP header name.
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    /// An affinity cookie name is not an RFC 6265 token (it could not be set).
    #[error("invalid cookie name {0:?}")]
    CookieName(String),
}

/// A compiled string condition, compared with raw bytes (header values need not be UTF-8).
#[derive(Debug)]
pub(crate) enum Matcher {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// Compiled as `^(?:RE)$`: the whole value must match. [`REGEX_COPIES`] clones of one
    /// compiled regex, one per worker slot.
    Regex(Box<[regex::bytes::Regex]>),
}

/// Clones kept of each regex: one per worker slot (see the module docs).
pub(crate) const REGEX_COPIES: usize = 16;

thread_local! {
    /// The worker slot of this thread (0 unless [`set_worker_slot`] was called).
    static WORKER_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Gives the calling thread its worker slot (the worker's index), so that its regex evaluations
/// use their own clone.
pub(crate) fn set_worker_slot(slot: usize) {
    WORKER_SLOT.with(|s| s.set(slot % REGEX_COPIES));
}

/// One compiled condition.
#[derive(Debug)]
pub(crate) enum Cond {
    Header { name: HeaderName, value: Matcher },
    Cookie { name: Box<[u8]>, value: Matcher },
    Method(Matcher),
    Path(Matcher),
}

/// OR of AND-ed conditions.
#[derive(Debug, Default)]
pub(crate) struct AnyOf(Box<[Box<[Cond]>]>);

/// A header/cookie route.
#[derive(Debug)]
pub(crate) struct HeaderRule {
    pub(crate) any_of: AnyOf,
}

/// A mirror route: `split` over the matching requests decides which get a copy.
#[derive(Debug)]
pub(crate) struct MirrorRule {
    pub(crate) name: Box<str>,
    pub(crate) any_of: AnyOf,
    pub(crate) split: Split,
}

/// The blue-green preview of a service.
///
/// The preview headers and hosts are a way in, not access control: any client that can reach a
/// listener of the service can send them. To keep the new version private before promotion, use
/// the preview `listener` on an address only testers reach.
#[derive(Debug)]
pub(crate) struct PreviewRule {
    /// The preview is up: preview requests reach the canary (otherwise stable).
    pub(crate) active: bool,
    pub(crate) listener: Option<Box<str>>,
    /// All must match; empty means no header form.
    pub(crate) headers: Box<[Cond]>,
}

/// Sticky versions: each client has a bucket in `0..10 000` and is on the canary iff its bucket is
/// below the canary weight in basis points, so a rising weight only moves clients from stable to
/// canary, weight 0 puts everyone on stable and 100% everyone on the canary.
///
/// The cookie form gives a client without a valid cookie a random bucket and sets it on that
/// response only: `Set-Cookie: NAME=BUCKET; Path=/; Max-Age=SECS; HttpOnly; SameSite=Lax`, plus
/// `; Secure` on TLS listeners. A valid cookie is 1–4 ASCII digits below 10 000 (optionally in
/// double quotes; leading zeros allowed); anything else (negative, too long, not digits, empty) is
/// treated as no cookie and replaced. With several cookies of that name the first one counts.
/// Requests decided before the sticky rule (a header route, the blue-green preview) or served by
/// a service without a canary arm get no cookie: they did not use a bucket, and the client gets
/// one on its first request that does. Max-Age is not refreshed: a bucket lasts `maxAge` from
/// when it was given. The cookie is host-only with `Path=/`, so services of one host that name
/// the same cookie share a client's bucket (and so move it together); give them different names
/// to assign them independently. A bucket outlives a rollout: the clients with the lowest buckets
/// are the first on every canary until their cookie expires. The header form hashes the header's value (FNV-1a 64 mod 10 000);
/// a request without the header goes to the weighted split.
#[derive(Debug)]
pub(crate) enum Affinity {
    /// A random bucket kept in this cookie.
    Cookie {
        name: Box<str>,
        /// `Path=/; Max-Age=N; HttpOnly; SameSite=Lax` (`; Secure` added on TLS listeners).
        attributes: Box<str>,
    },
    /// A stable hash of this header's value.
    Header(HeaderName),
}

/// Which rule decided a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// A header or cookie route.
    HeaderRoute,
    /// The blue-green preview (its host, listener or headers).
    Preview,
    /// The client's affinity bucket.
    Sticky,
    /// The exact weighted split.
    Split,
}

// === impl Matcher ===

impl Matcher {
    pub(crate) fn compile(m: &StringMatch) -> Result<Matcher, RuleError> {
        Ok(match m {
            StringMatch::Exact(s) => Matcher::Exact(s.as_bytes().into()),
            StringMatch::Prefix(s) => Matcher::Prefix(s.as_bytes().into()),
            StringMatch::Regex(re) => {
                let error = |e: regex::Error| RuleError::Regex {
                    pattern: re.clone(),
                    message: e.to_string(),
                };
                let build = |p: &str| {
                    regex::bytes::RegexBuilder::new(p)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                };
                // The pattern must stand on its own: `a)|(b` would otherwise escape the anchors
                // as `^(?:a)|(b)$` and match any value starting with `a`.
                build(re).map_err(error)?;
                let anchored = build(&format!("^(?:{re})$")).map_err(error)?;
                Matcher::Regex((0..REGEX_COPIES).map(|_| anchored.clone()).collect())
            }
        })
    }

    #[inline]
    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        match self {
            Matcher::Exact(s) => value == &**s,
            Matcher::Prefix(s) => value.starts_with(s),
            Matcher::Regex(copies) => {
                let slot = WORKER_SLOT.with(std::cell::Cell::get);
                copies
                    .get(slot)
                    .or_else(|| copies.first())
                    .is_some_and(|re| re.is_match(value))
            }
        }
    }
}

// === impl Cond ===

impl Cond {
    pub(crate) fn compile(m: &RequestMatch) -> Result<Cond, RuleError> {
        Ok(match m {
            RequestMatch::Header { name, value } => Cond::Header {
                name: header_name(name)?,
                value: Matcher::compile(value)?,
            },
            RequestMatch::Cookie { name, value } => Cond::Cookie {
                name: name.as_bytes().into(),
                value: Matcher::compile(value)?,
            },
            RequestMatch::Method(value) => Cond::Method(Matcher::compile(value)?),
            RequestMatch::Path(value) => Cond::Path(Matcher::compile(value)?),
        })
    }

    #[inline]
    pub(crate) fn matches(&self, head: &RequestHead<'_>) -> bool {
        match self {
            Cond::Header { name, value } => head
                .headers
                .get_all(name)
                .iter()
                .any(|v| value.matches(v.as_bytes())),
            Cond::Cookie { name, value } => {
                cookie(head.headers, name).is_some_and(|v| value.matches(v))
            }
            Cond::Method(value) => value.matches(head.method.as_str().as_bytes()),
            Cond::Path(value) => value.matches(head.path.as_bytes()),
        }
    }
}

fn header_name(name: &str) -> Result<HeaderName, RuleError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| RuleError::HeaderName(name.to_string()))
}

/// The value of cookie `name` in the request's `Cookie` header lines (`a=1; b=2`; HTTP/2 may send
/// one line per cookie). The first occurrence wins. No allocation.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
    for line in headers.get_all(header::COOKIE) {
        for pair in line.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if trim(&pair[..eq]) == name {
                let value = trim(&pair[eq + 1..]);
                // RFC 6265 allows the value in double quotes.
                let value = match value {
                    [b'"', inner @ .., b'"'] => inner,
                    other => other,
                };
                return Some(value);
            }
        }
    }
    None
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

// === impl AnyOf ===

impl AnyOf {
    pub(crate) fn compile(any_of: &[Vec<RequestMatch>]) -> Result<AnyOf, RuleError> {
        let entries = any_of
            .iter()
            .map(|all| all.iter().map(Cond::compile).collect::<Result<Box<_>, _>>())
            .collect::<Result<Box<_>, _>>()?;
        Ok(AnyOf(entries))
    }

    /// Some entry has all its conditions true. An empty list matches nothing.
    #[inline]
    pub(crate) fn matches(&self, head: &RequestHead<'_>) -> bool {
        self.0
            .iter()
            .any(|all| !all.is_empty() && all.iter().all(|c| c.matches(head)))
    }
}

// === impl HeaderRule ===

impl HeaderRule {
    pub(crate) fn compile(route: &HeaderRoute) -> Result<HeaderRule, RuleError> {
        Ok(HeaderRule {
            any_of: AnyOf::compile(&route.any_of)?,
        })
    }
}

// === impl MirrorRule ===

impl MirrorRule {
    /// `sequence` is the route's own split sequence, carried across tables by (service, route name).
    pub(crate) fn compile(
        route: &MirrorRoute,
        sequence: Arc<AtomicU64>,
    ) -> Result<MirrorRule, RuleError> {
        Ok(MirrorRule {
            name: route.name.as_str().into(),
            any_of: AnyOf::compile(&route.any_of)?,
            split: Split::new(route.percentage, true, sequence),
        })
    }

    /// The percentage's sequence, if it has one (0% and 100% keep none).
    pub(crate) fn sequence(&self) -> Option<&Arc<AtomicU64>> {
        match &self.split {
            Split::Weighted { sequence, .. } => Some(sequence),
            _ => None,
        }
    }

    /// Whether this matching request gets a copy (advances the route's sequence).
    #[inline]
    pub(crate) fn take(&self) -> bool {
        self.split.pick() == Pick::Canary
    }
}

// === impl PreviewRule ===

impl PreviewRule {
    /// The request is a preview request: on the preview listener, through a preview host, or
    /// carrying every preview header.
    #[inline]
    pub(crate) fn matches(&self, head: &RequestHead<'_>) -> bool {
        head.preview_host
            || self.listener.as_deref() == Some(head.listener)
            || (!self.headers.is_empty() && self.headers.iter().all(|c| c.matches(head)))
    }
}

// === impl Affinity ===

impl Affinity {
    pub(crate) fn compile(key: &AffinityKey, max_age: Duration) -> Result<Affinity, RuleError> {
        Ok(match key {
            AffinityKey::Cookie(name) if !is_token(name) => {
                return Err(RuleError::CookieName(name.clone()))
            }
            AffinityKey::Cookie(name) => Affinity::Cookie {
                name: name.as_str().into(),
                attributes: format!(
                    "Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                    max_age.as_secs()
                )
                .into(),
            },
            AffinityKey::Header(name) => Affinity::Header(header_name(name)?),
        })
    }

    /// The client's bucket, and whether it is new (then the cookie must be set).
    ///
    /// A client that edits its cookie can pick any bucket, which means choosing its own version at
    /// the current weight (bucket 0 gets the canary whenever it has any weight, 9999 stays on
    /// stable until the canary has 100%); it cannot reach anything else, change what other
    /// clients get, or move the split. Invalid values are treated as no cookie.
    #[inline]
    pub(crate) fn bucket(&self, headers: &HeaderMap) -> Option<(u16, bool)> {
        match self {
            Affinity::Cookie { name, .. } => {
                match cookie(headers, name.as_bytes()).and_then(parse_bucket) {
                    Some(bucket) => Some((bucket, false)),
                    None => Some((rand::random_range(0..BUCKETS), true)),
                }
            }
            Affinity::Header(name) => headers
                .get(name)
                .map(|v| ((fnv1a64(v.as_bytes()) % u64::from(BUCKETS)) as u16, false)),
        }
    }

    /// The `Set-Cookie` value giving a new client its bucket (one allocation: the string becomes
    /// the header value's buffer). Always valid: the name is a token, checked in
    /// [`Affinity::compile`].
    pub(crate) fn set_cookie(&self, bucket: u16, tls: bool) -> Option<HeaderValue> {
        let Affinity::Cookie { name, attributes } = self else {
            return None;
        };
        let secure = if tls { "; Secure" } else { "" };
        let value = format!("{name}={bucket}; {attributes}{secure}");
        HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
    }
}

/// An RFC 9110 token (`tchar`s), which is also what RFC 6265 allows as a cookie name.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A bucket written by weir: decimal, `0..10 000`.
fn parse_bucket(value: &[u8]) -> Option<u16> {
    if value.is_empty() || value.len() > 4 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (n < BUCKETS).then_some(n)
}

/// FNV-1a, 64-bit: the same value in every process and every version of weir, so a header value
/// keeps its bucket across restarts and upgrades.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether a client in `bucket` is on the canary at `weight`: buckets below the weight in basis
/// points are. Raising the weight only moves buckets from stable to canary.
#[inline]
pub fn sticky_canary(bucket: u16, weight: Weight) -> bool {
    bucket < weight.basis_points()
}
