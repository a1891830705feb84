//! `listeners[].tls.acme`: certificates obtained and renewed automatically (ACME, RFC 8555).

use std::path::PathBuf;
use std::time::Duration;

/// `listeners[].tls.acme`: weir obtains the listener's certificate from an ACME CA (Let's
/// Encrypt, ZeroSSL, a private CA, pebble in tests) on first start, renews it before it expires
/// and installs each new one without dropping a connection. Account key and certificates live in
/// `<stateDir>/acme/<listener>/` (files 0600), so a restart with a valid stored certificate does
/// not order a new one. Without `stateDir`, the state folder is `$STATE_DIRECTORY` or the one
/// next to the config file (see the control plane's `state_dir`).
///
/// With `certificates` on the same listener, the ACME certificate comes first: it is served for
/// its domains and to clients that send no SNI; the files serve the other names they cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// `directory` (required): the CA's directory URL, `https://` (plain `http://` is refused:
    /// the account key's requests would travel in clear).
    pub directory: String,
    /// `email` (optional): the account's contact, sent as `mailto:`; the CA's expiry notices go
    /// there.
    pub email: Option<String>,
    /// `domains` (default: every exact host of the services' `match.hosts`, lower-cased and
    /// deduplicated, in file order; wildcard hosts are left out because neither challenge can
    /// prove them). Never empty; at most [`Acme::MAX_DOMAINS`] names; no wildcards, no IP
    /// addresses.
    pub domains: Vec<String>,
    /// `challenge` (default `tls-alpn-01`): how the CA checks that weir serves the domains.
    pub challenge: AcmeChallenge,
    /// `caFile` (optional, absolute): PEM certificates trusted for the directory's own HTTPS
    /// (a private or test CA); default: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// `renewBefore` (default [`Acme::DEFAULT_RENEW_BEFORE`], 30 days; `d` is accepted as a unit
    /// here): a certificate is renewed this long before its `notAfter`, but never before a third
    /// of its lifetime has passed nor sooner than [`Acme::MIN_RENEW_GAP`] after it was issued,
    /// so a value longer than the CA's certificate lifetime does not order in a loop.
    pub renew_before: Duration,
    /// `retry`: the back-off after a failed order (the current certificate keeps serving).
    pub retry: AcmeRetry,
}

impl Acme {
    /// Default of [`Acme::renew_before`]: 30 days.
    pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
    /// The least time between an issuance and the next order for the same listener.
    pub const MIN_RENEW_GAP: Duration = Duration::from_secs(5);
    /// The most names in one certificate (Let's Encrypt's limit).
    pub const MAX_DOMAINS: usize = 100;
}

/// `listeners[].tls.acme.challenge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// `tls-alpn-01` (RFC 8737): the CA connects to port 443 of each domain offering ALPN
    /// `acme-tls/1`; weir answers with a challenge certificate on this listener.
    TlsAlpn01,
    /// `http-01`: the CA fetches `http://<domain>/.well-known/acme-challenge/<token>` on port 80;
    /// weir answers it on every plain listener, before the listener's `redirect`.
    Http01,
}

impl AcmeChallenge {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// `listeners[].tls.acme.retry`: exponential back-off after a failed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcmeRetry {
    /// `initial` (default [`AcmeRetry::DEFAULT_INITIAL`], 1 minute; at least 100ms): the wait
    /// after the first failure; it doubles with each further failure.
    pub initial: Duration,
    /// `max` (default [`AcmeRetry::DEFAULT_MAX`], 1 hour; at least `initial`): the longest wait,
    /// so a CA that is down is asked at most once per `max` and CA rate limits are respected.
    pub max: Duration,
}

impl AcmeRetry {
    /// Default of [`AcmeRetry::initial`].
    pub const DEFAULT_INITIAL: Duration = Duration::from_secs(60);
    /// Default of [`AcmeRetry::max`].
    pub const DEFAULT_MAX: Duration = Duration::from_secs(3600);
    /// The lowest accepted `initial`.
    pub const MIN_INITIAL: Duration = Duration::from_millis(100);

    /// The wait after `failures` consecutive failures (at least 1): `initial · 2^(failures-1)`,
    /// capped at `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

impl Default for AcmeRetry {
    fn default() -> AcmeRetry {
        AcmeRetry {
            initial: AcmeRetry::DEFAULT_INITIAL,
            max: AcmeRetry::DEFAULT_MAX,
        }
    }
}
