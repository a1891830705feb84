//! The validated configuration: plain Rust types with no serde, built by `validate` from the file.
//!
//! Everything here has already been checked: addresses parse, weights are in range, names are unique,
//! relative paths are resolved against the config file's folder. Consumers never re-validate.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod acme;
mod compression;
mod datadog;
mod dns;
mod edge;
mod exec;
mod health;
mod ingress;
mod loadtest;
mod notify;
mod protocol;
mod ratelimit;
mod webhook;

pub use acme::{Acme, AcmeChallenge, AcmeRetry};
pub use compression::{Compression, CompressionAlgorithm, CompressionLevel};
pub use datadog::{DatadogAggregator, DatadogApiVersion, DatadogProvider};
pub use dns::{AddressFamily, Upstream, UpstreamDns, UpstreamHost};
pub use edge::{
    default_upgrades, GlobalLimits, ListenerLimits, ListenerTimeouts, MemoryLimit, UpgradeProtocol,
    MIN_HEADER_BYTES,
};
pub use exec::ExecProvider;
pub use health::{HealthCheck, OutlierDetection};
pub use ingress::{
    HeaderOps, HeaderRules, HeaderTemplate, Redirect, RedirectScheme, Rewrite, TemplatePart,
};
pub use loadtest::{LoadTarget, LoadTest};
pub use notify::{Notifier, NotifierKind, NotifierTarget, NotifyOn};
pub use protocol::{UpstreamProtocol, UpstreamTls};
pub use ratelimit::{RateLimit, RateLimitKey};
pub use webhook::{Webhook, WebhookKind, WebhookTarget};

/// A whole validated config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Where clients connect. At least one.
    pub listeners: Vec<Listener>,
    /// The admin listener (metrics, health, the rollout API).
    pub admin: Admin,
    /// Where the control loop persists rollout state (`stateDir`), resolved against the file's folder.
    /// `None` in the file: the control plane uses `$STATE_DIRECTORY` or `<config stem>.state/`
    /// next to the config file (state is always persisted).
    pub state_dir: Option<PathBuf>,
    /// Services in file order; names are unique.
    pub services: Vec<Service>,
    /// Analysis templates by name (`analysisTemplates`), in file order; names are unique.
    pub analysis_templates: Vec<AnalysisTemplate>,
    /// Bounds across every listener (`limits`).
    pub limits: GlobalLimits,
    /// How upstream host names are resolved and refreshed (`upstreamDns`).
    pub upstream_dns: UpstreamDns,
    /// Where rollout messages are posted (`notifications`, default none); names are unique.
    pub notifications: Vec<Notifier>,
}

/// One client-facing listener.
#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    /// Unique listener name.
    pub name: String,
    /// Socket address to bind.
    pub address: SocketAddr,
    /// TLS settings; `None` means plain HTTP (HTTP/1.1 and h2c with prior knowledge).
    pub tls: Option<Tls>,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are trusted and appended to
    /// (`trustedProxies`, default none): from any other peer those headers are replaced, so a
    /// client cannot forge its address.
    pub trusted_proxies: TrustedProxies,
    /// Connection timeouts (`timeouts`).
    pub timeouts: ListenerTimeouts,
    /// Connection and protocol limits (`limits`).
    pub limits: ListenerLimits,
    /// `redirect`: every request on this listener is answered with a redirect (default: none).
    pub redirect: Option<Redirect>,
}

/// `listeners[].trustedProxies`: CIDR blocks (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Whether `ip` is inside one of the blocks (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// No peer is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// TLS settings of a listener.
#[derive(Clone, Debug, PartialEq)]
pub struct Tls {
    /// Certificates picked by SNI; the first one is the default. Empty only when `acme` is set.
    pub certificates: Vec<CertificateFiles>,
    /// `acme`: a certificate obtained and renewed automatically (default: none).
    pub acme: Option<Acme>,
}

/// A certificate chain and its private key, both PEM files (absolute paths).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The admin listener.
#[derive(Clone, Debug, PartialEq)]
pub struct Admin {
    /// Socket address of the admin API; defaults to `127.0.0.1:3100`.
    pub address: SocketAddr,
    /// File holding the bearer token required for mutating admin calls (absolute path). Required
    /// when `address` is not a loopback address. Re-read when the file changes (rotation needs no
    /// restart).
    pub token_file: Option<PathBuf>,
    /// `admin.allowedHosts`: extra `Host` values the admin API answers besides its own address
    /// (`IP:PORT`, `localhost:PORT`), lower-case; `name` matches any port, `name:port` only that
    /// one. Any other `Host` is refused with 421 (this stops DNS rebinding). Default: none.
    pub allowed_hosts: Vec<String>,
    /// `admin.tls`: serve the admin API over TLS (HTTP/1.1) with this certificate. Default: plain
    /// HTTP.
    pub tls: Option<CertificateFiles>,
    /// `admin.maxConnections`: concurrent admin connections; more are answered 503 and closed.
    /// Default [`Admin::DEFAULT_MAX_CONNECTIONS`] (64). At least 1.
    pub max_connections: usize,
    /// `admin.maxEventSubscribers`: concurrent `GET /api/v1/events` streams; more get 503.
    /// Default [`Admin::DEFAULT_MAX_EVENT_SUBSCRIBERS`] (16). At least 1.
    pub max_event_subscribers: usize,
    /// `admin.headerReadTimeout`: time to send a request head, and how long an idle keep-alive
    /// connection (or an unfinished TLS handshake) is kept; then the connection is closed.
    /// Default [`Admin::DEFAULT_HEADER_READ_TIMEOUT`] (10 s).
    pub header_read_timeout: Duration,
}

impl Admin {
    /// Default of [`Admin::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
    /// Default of [`Admin::max_event_subscribers`].
    pub const DEFAULT_MAX_EVENT_SUBSCRIBERS: usize = 16;
    /// Default of [`Admin::header_read_timeout`].
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

    /// The admin block used when the file has none: `127.0.0.1:3100`, no token, defaults.
    pub fn with_address(address: SocketAddr) -> Admin {
        Admin {
            address,
            token_file: None,
            allowed_hosts: Vec::new(),
            tls: None,
            max_connections: Admin::DEFAULT_MAX_CONNECTIONS,
            max_event_subscribers: Admin::DEFAULT_MAX_EVENT_SUBSCRIBERS,
            header_read_timeout: Admin::DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// One routed service with a stable version and an optional canary.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Unique service name; used as the `service` metric label.
    pub name: String,
    /// Which requests this service receives.
    pub matcher: Match,
    /// The stable version; always present.
    pub stable: Version,
    /// The canary version, if any.
    pub canary: Option<Canary>,
    /// Upstream connection settings for both versions.
    pub upstream: UpstreamOptions,
    /// The rollout strategy; when present the control loop owns the canary weight.
    pub strategy: Option<Strategy>,
    /// Sticky versions (`sessionAffinity`): a client keeps the version it was given.
    pub session_affinity: Option<SessionAffinity>,
    /// Protocols clients may switch to with `Upgrade` (`upgrades`, default `[websocket]`); any
    /// other upgrade request is forwarded as a plain request without its upgrade headers.
    pub upgrades: Vec<UpgradeProtocol>,
    /// Passive outlier detection inside each version (`outlierDetection`, on by default).
    pub outlier_detection: OutlierDetection,
    /// Active health checks of every upstream (`healthCheck`, off by default).
    pub health_check: Option<HealthCheck>,
    /// Response compression (`compression`, off by default).
    pub compression: Option<Compression>,
    /// Token-bucket rate limit per client key (`rateLimit`, off by default).
    pub rate_limit: Option<RateLimit>,
    /// `rewrite`: the path prefix and/or host the upstream is sent (default: none).
    pub rewrite: Option<Rewrite>,
    /// `headers`: header rules for the upstream request and the response (default: none).
    pub headers: HeaderRules,
    /// `notifications`: names of the notifiers told about this service's rollout (default:
    /// none); each names an entry of [`Model::notifications`].
    pub notifications: Vec<String>,
}

/// `services[].sessionAffinity` (Flagger): each client gets a bucket 0..10 000 and goes to the
/// canary iff its bucket is below the canary weight in basis points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionAffinity {
    /// Where the bucket comes from.
    pub key: AffinityKey,
    /// Lifetime of the cookie (`maxAge`, default 24h); ignored for the header form.
    pub max_age: Duration,
}

/// Where a client's affinity bucket comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AffinityKey {
    /// `cookieName`: a random bucket set in this cookie on first sight.
    Cookie(String),
    /// `header`: a hash of this (lower-cased) header's value.
    Header(String),
}

/// How a request attribute is compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    /// Equal, byte for byte.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the whole value (anchored); compiles with the `regex` crate (checked by validation).
    Regex(String),
}

/// One condition on a request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestMatch {
    /// A header (lower-cased name); any of its values may match.
    Header {
        /// Header name, lower-cased.
        name: String,
        /// The value condition.
        value: StringMatch,
    },
    /// A cookie from the `Cookie` header(s), by exact name.
    Cookie {
        /// Cookie name.
        name: String,
        /// The value condition.
        value: StringMatch,
    },
    /// The request method.
    Method(StringMatch),
    /// The request path (without the query).
    Path(StringMatch),
}

/// A set of request conditions in disjunctive normal form: a request matches when every condition
/// of at least one entry holds. Argo's `match` lists are one entry (AND); Flagger's `match` lists
/// are one entry each (OR).
pub type AnyOf = Vec<Vec<RequestMatch>>;

/// `setHeaderRoute` (Argo): requests matching `any_of` go to the canary whatever the weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRoute {
    /// The route's name; a later step with the same name and no match removes it.
    pub name: String,
    /// The conditions; empty means "remove the route named `name`".
    pub any_of: AnyOf,
}

/// `setMirrorRoute` (Argo): a copy of `percentage` of the matching requests goes to the canary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorRoute {
    /// The route's name; a later step with the same name and no match removes it.
    pub name: String,
    /// Share of the matching requests copied (exact, like the split); default 100%.
    pub percentage: Weight,
    /// The conditions; empty means "remove the route named `name`".
    pub any_of: AnyOf,
}

/// Request matching for a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    /// Host patterns; never empty.
    pub hosts: Vec<HostPattern>,
    /// Path prefix, always starting with `/`; `/` by default.
    pub path_prefix: String,
}

/// A host pattern, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `shop.example.com`: exactly this host.
    Exact(String),
    /// `*.shop.example.com`: any host ending in `.shop.example.com` (stored as `.shop.example.com`).
    Suffix(String),
    /// `*`: any host.
    Any,
}

impl HostPattern {
    /// Parses a host pattern as written in `match.hosts`: `*`, `*.suffix` or an exact host name. The result is
    /// lower-cased. Ports, empty strings, invalid characters and `*` anywhere else are rejected.
    pub fn parse(written: &str) -> Result<HostPattern, String> {
        if written.is_empty() {
            return Err("host pattern must not be empty".to_string());
        }
        let lower = written.to_ascii_lowercase();
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            check_host_name(suffix)?;
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
        check_host_name(&lower)?;
        Ok(HostPattern::Exact(lower))
    }

    /// Whether `host` (a request's host name without port) matches, ignoring ASCII case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(exact) => host.eq_ignore_ascii_case(exact),
            HostPattern::Suffix(suffix) => {
                let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// Checks a lower-cased host name (no wildcard, no port).
fn check_host_name(name: &str) -> Result<(), String> {
    if name.contains('*') {
        return Err("\"*\" is only allowed alone or as a leading \"*.\"".to_string());
    }
    if name.contains(':') {
        return Err("host patterns must not include a port".to_string());
    }
    if name.len() > 253 {
        return Err("host name longer than 253 characters".to_string());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in host name".to_string());
        }
        if label.len() > 63 {
            return Err(format!("label \"{label}\" longer than 63 characters"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(format!("invalid character {bad:?} in host name"));
        }
    }
    Ok(())
}

impl fmt::Display for HostPattern {
    /// The pattern as written in the file (`*`, `*.shop.example.com`, `shop.example.com`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// One deployed version of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// Version label (`v1`, `2024.1`); used as the `version` metric label.
    pub version: String,
    /// Upstream addresses; never empty.
    pub upstreams: Vec<Upstream>,
    /// How weir speaks to them (`protocol`; default `http1`).
    pub protocol: UpstreamProtocol,
    /// How their certificates are verified (`tls`): `Some` exactly when `protocol` is `h2`.
    pub tls: Option<UpstreamTls>,
}

/// A canary version with its optional fixed weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Canary {
    /// Version label and upstreams.
    pub version: Version,
    /// The file-configured weight (`canary.weight`); `None` means 0 unless a strategy drives it.
    pub weight: Option<Weight>,
}

/// Upstream connection settings (`services[].upstream`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamOptions {
    /// TCP connect timeout (`connectTimeout`, default 2s).
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to receiving the response head (`responseTimeout`, default 30s).
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept (`idleTimeout`, default 60s).
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream and worker (`maxIdlePerUpstream`, default 64; 0 keeps
    /// none: every exchange gets a new connection).
    pub max_idle_per_upstream: usize,
    /// Largest request body accepted, in bytes (`maxRequestBodySize`, default none). A larger
    /// declared `Content-Length` is answered 413 before anything reaches the upstream; a streamed
    /// body that grows past it is cut (413 if no response started). Counted as a client error.
    pub max_request_body_size: Option<u64>,
    /// Longest wait for the next piece of a request body from the client (`requestBodyTimeout`,
    /// default 60s, like nginx's `client_body_timeout`). When it passes the request gets 408 and is
    /// counted as a client error, never against the version.
    pub request_body_timeout: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_upstream: 64,
            max_request_body_size: None,
            request_body_timeout: Duration::from_secs(60),
        }
    }
}

/// A traffic weight in hundredths of a percent: `Weight(1000)` is 10%, `Weight(25)` is 0.25%.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u16);

impl Weight {
    /// 0%.
    pub const ZERO: Weight = Weight(0);
    /// 100%.
    pub const FULL: Weight = Weight(10_000);

    /// A weight from hundredths of a percent; `None` above 10 000.
    pub fn from_basis_points(bp: u16) -> Option<Weight> {
        (bp <= 10_000).then_some(Weight(bp))
    }

    /// A weight from a percentage with at most two decimals; `None` when out of range or finer.
    pub fn from_percent(percent: f64) -> Option<Weight> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return None;
        }
        let bp = (percent * 100.0).round();
        if (bp - percent * 100.0).abs() > 1e-6 {
            return None;
        }
        Some(Weight(bp as u16))
    }

    /// Hundredths of a percent, 0..=10 000.
    pub fn basis_points(self) -> u16 {
        self.0
    }

    /// The weight as a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{whole}")
        } else if frac % 10 == 0 {
            write!(f, "{whole}.{}", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rollout strategy (`services[].strategy.canary`) and analysis templates.
// ---------------------------------------------------------------------------------------------

/// A service's rollout strategy.
#[derive(Clone, Debug, PartialEq)]
pub struct Strategy {
    /// Which strategy, with its own settings.
    pub kind: StrategyKind,
    /// How long a step may stall past its own schedule before the rollout aborts
    /// (`progressDeadline`, default 10m): timed pauses and waits for an operator never count
    /// (see `control/src/engine/rollout/deadline.rs`).
    pub progress_deadline: Duration,
    /// `webhooks` (default none): Flagger's gates, checks and notifications (`webhook.rs`).
    pub webhooks: Vec<Webhook>,
}

/// The four strategies, each with its own settings.
#[derive(Clone, Debug, PartialEq)]
pub enum StrategyKind {
    /// `strategy.canary.steps` (Argo): an explicit step plan with optional background analysis.
    Steps(CanarySteps),
    /// `strategy.canary.analysis.stepWeight` (Flagger): raise the weight every interval while the
    /// checks pass.
    Progression(Progression),
    /// `strategy.canary.analysis.iterations` (Flagger A/B testing, with `match`): matching requests
    /// (and/or mirrored copies) go to the canary for N passing checks, then it is promoted.
    Iterations(Iterations),
    /// `strategy.blueGreen` (Argo): a preview, analysis, one switch, and the old version kept
    /// routable for an instant way back.
    BlueGreen(BlueGreen),
}

/// Argo-style canary steps.
#[derive(Clone, Debug, PartialEq)]
pub struct CanarySteps {
    /// The steps; never empty.
    pub steps: Vec<Step>,
    /// Strategy-level background analysis (`analysis.templates` + `startingStep`).
    pub background: Option<BackgroundAnalysis>,
}

impl Strategy {
    /// The Argo steps (empty for the other strategies).
    pub fn steps(&self) -> &[Step] {
        match &self.kind {
            StrategyKind::Steps(s) => &s.steps,
            _ => &[],
        }
    }

    /// The background analysis of a step plan.
    pub fn background(&self) -> Option<&BackgroundAnalysis> {
        match &self.kind {
            StrategyKind::Steps(s) => s.background.as_ref(),
            _ => None,
        }
    }

    /// The Flagger progression.
    pub fn progression(&self) -> Option<&Progression> {
        match &self.kind {
            StrategyKind::Progression(p) => Some(p),
            _ => None,
        }
    }

    /// The Flagger iterations (A/B).
    pub fn iterations(&self) -> Option<&Iterations> {
        match &self.kind {
            StrategyKind::Iterations(i) => Some(i),
            _ => None,
        }
    }

    /// The blue-green settings.
    pub fn blue_green(&self) -> Option<&BlueGreen> {
        match &self.kind {
            StrategyKind::BlueGreen(b) => Some(b),
            _ => None,
        }
    }

    /// `steps`, `progression`, `iterations` or `blueGreen`.
    pub fn name(&self) -> &'static str {
        match &self.kind {
            StrategyKind::Steps(_) => "steps",
            StrategyKind::Progression(_) => "progression",
            StrategyKind::Iterations(_) => "iterations",
            StrategyKind::BlueGreen(_) => "blueGreen",
        }
    }
}

/// Flagger A/B testing (`iterations` with `match`) or Flagger blue/green (`iterations` alone,
/// usually with `mirror`).
#[derive(Clone, Debug, PartialEq)]
pub struct Iterations {
    /// How often checks run.
    pub interval: Duration,
    /// Failed checks that roll back.
    pub threshold: u32,
    /// Passing checks needed before promotion (`iterations`, at least 1).
    pub iterations: u32,
    /// Requests that go to the canary while checks run (`match`); may be empty with `mirror`.
    pub any_of: AnyOf,
    /// `mirror: true` (+ `mirrorWeight`, default 100): copies of this share of all requests go to
    /// the canary while checks run.
    pub mirror: Option<Weight>,
    /// Checks run every interval.
    pub checks: Vec<Check>,
}

/// `strategy.blueGreen` (Argo).
#[derive(Clone, Debug, PartialEq)]
pub struct BlueGreen {
    /// How the new version is reached before it is active.
    pub preview: Preview,
    /// Promote without an operator once the preview is up and pre-promotion analysis passed
    /// (`autoPromotionEnabled`, default true).
    pub auto_promotion_enabled: bool,
    /// Promote this long after the preview is up (`autoPromotionSeconds`); `None` promotes as soon
    /// as pre-promotion analysis passed.
    pub auto_promotion_after: Option<Duration>,
    /// Run before the switch; a failure aborts with nothing switched.
    pub pre_promotion_analysis: Option<AnalysisRef>,
    /// Run after the switch; a failure switches back at once.
    pub post_promotion_analysis: Option<AnalysisRef>,
    /// How long the old version stays routable after the switch (`scaleDownDelay`, or
    /// `scaleDownDelaySeconds`; default 30s as in Argo).
    pub scale_down_delay: Duration,
}

/// How a blue-green preview is reached: any one of these sends a request to the new version.
#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    /// Extra hosts routed to this service; their requests go to the preview.
    pub hosts: Vec<HostPattern>,
    /// Every request on this listener (by name) that matches the service goes to the preview.
    pub listener: Option<String>,
    /// Requests with all these headers go to the preview (empty: no header form).
    pub headers: Vec<RequestMatch>,
}

/// One Argo-style step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `setWeight: N`.
    SetWeight(Weight),
    /// `pause: {duration}`; `None` (`pause: {}`) holds until promoted.
    Pause(Option<Duration>),
    /// `analysis: {templates, args}`: run inline; the rollout waits for the verdict.
    Analysis(AnalysisRef),
    /// `setHeaderRoute`: add (or, without `match`, remove) a header route to the canary.
    SetHeaderRoute(HeaderRoute),
    /// `setMirrorRoute`: add (or, without `match`, remove) a mirror route to the canary.
    SetMirrorRoute(MirrorRoute),
}

/// A reference to one or more templates with arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisRef {
    /// Template names (`templates[].templateName`); each exists in `Model::analysis_templates`.
    pub templates: Vec<String>,
    /// Argument values (`args[].name/value`) substituted as `{{args.NAME}}`.
    pub args: BTreeMap<String, String>,
}

/// Strategy-level background analysis.
#[derive(Clone, Debug, PartialEq)]
pub struct BackgroundAnalysis {
    /// The templates to run.
    pub analysis: AnalysisRef,
    /// Index of the step from which it runs (`startingStep`, default 0).
    pub starting_step: usize,
}

/// Flagger-style progression: every `interval` run the checks, then advance or count a failure.
#[derive(Clone, Debug, PartialEq)]
pub struct Progression {
    /// How often checks run.
    pub interval: Duration,
    /// Failed checks that roll back.
    pub threshold: u32,
    /// The weights to walk through, ascending, ending at `max_weight` (from `stepWeight`+`maxWeight` or `stepWeights`).
    pub step_weights: Vec<Weight>,
    /// The highest canary weight before promotion.
    pub max_weight: Weight,
    /// Checks run every interval.
    pub checks: Vec<Check>,
}

/// One Flagger-style check.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The check's name as written.
    pub name: String,
    /// What it measures.
    pub kind: CheckKind,
    /// Lower bound the value must reach (`thresholdRange.min`).
    pub min: Option<f64>,
    /// Upper bound the value must not exceed (`thresholdRange.max`).
    pub max: Option<f64>,
    /// Window the builtin checks measure over (`interval` of the check, default: the progression interval, at least 10s).
    pub window: Duration,
}

/// What a Flagger-style check measures.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckKind {
    /// `request-success-rate`: percent of non-5xx responses.
    RequestSuccessRate,
    /// `request-duration`: p99 latency in milliseconds.
    RequestDuration,
    /// A named analysis template (`templateRef.name`), judged by its own conditions.
    Template(AnalysisRef),
}

/// `analysisTemplates[]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisTemplate {
    /// Unique template name.
    pub name: String,
    /// Declared arguments with optional defaults.
    pub args: BTreeMap<String, Option<String>>,
    /// Metrics measured by the template; never empty.
    pub metrics: Vec<Metric>,
}

/// One metric of an analysis template (Argo semantics).
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Metric name, unique within the template.
    pub name: String,
    /// Time between measurements (`interval`, default 10s).
    pub interval: Duration,
    /// Number of measurements; `None` = 1 inline, unlimited in background analysis.
    pub count: Option<u32>,
    /// Delay before the first measurement (`initialDelay`).
    pub initial_delay: Duration,
    /// Expression over `result` that must hold for success.
    pub success_condition: Option<String>,
    /// Expression over `result` that, when true, is a failure.
    pub failure_condition: Option<String>,
    /// Failed measurements tolerated (`failureLimit`, default 0).
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated (`inconclusiveLimit`, default 0).
    pub inconclusive_limit: u32,
    /// Consecutive provider errors tolerated (`consecutiveErrorLimit`, default 4).
    pub consecutive_error_limit: u32,
    /// Measure and report, never decide.
    pub dry_run: bool,
    /// Where the value comes from.
    pub provider: Provider,
}

/// Where a metric's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Provider {
    /// weir's own per-version stats.
    Builtin(BuiltinProvider),
    /// A Prometheus instant query.
    Prometheus(PrometheusProvider),
    /// An HTTP request.
    Web(WebProvider),
    /// A command run on weir's host.
    Exec(ExecProvider),
    /// A Datadog metrics query.
    Datadog(DatadogProvider),
}

/// `provider.builtin`.
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltinProvider {
    /// What to compute.
    pub metric: BuiltinMetric,
    /// The sliding window (`window`, default 30s).
    pub window: Duration,
    /// Which version to measure (default canary).
    pub arm: Arm,
    /// Fewer requests than this in the window is inconclusive (`minRequests`, default 20).
    pub min_requests: u64,
    /// Which traffic to measure (`traffic`, default primary).
    pub traffic: Traffic,
}

/// Which of a version's traffic a builtin metric measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Traffic {
    /// Requests clients sent (`primary`): the responses they got.
    #[default]
    Primary,
    /// Mirrored copies (`mirror`): the shadow exchanges, whose responses are discarded.
    Mirror,
}

/// A builtin metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinMetric {
    /// Fraction of non-5xx responses, 0..=1.
    SuccessRate,
    /// Fraction of 5xx responses, 0..=1.
    ErrorRate,
    /// Requests per second.
    RequestRate,
    /// Latency quantile in seconds (0.5, 0.9, 0.95, 0.99).
    LatencyQuantile(LatencyQuantile),
}

/// A supported latency quantile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyQuantile {
    /// p50
    P50,
    /// p90
    P90,
    /// p95
    P95,
    /// p99
    P99,
}

impl LatencyQuantile {
    /// The quantile as a fraction.
    pub fn fraction(self) -> f64 {
        match self {
            LatencyQuantile::P50 => 0.5,
            LatencyQuantile::P90 => 0.9,
            LatencyQuantile::P95 => 0.95,
            LatencyQuantile::P99 => 0.99,
        }
    }
}

/// Which version of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arm {
    /// The stable version.
    Stable,
    /// The canary version.
    Canary,
}

impl Arm {
    /// `"stable"` or `"canary"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
        }
    }
}

/// `provider.prometheus`.
#[derive(Clone, Debug, PartialEq)]
pub struct PrometheusProvider {
    /// Base URL of the Prometheus server (`http://127.0.0.1:9090`).
    pub address: String,
    /// PromQL; may contain `{{args.NAME}}`.
    pub query: String,
    /// Request timeout (`timeout`, default 10s).
    pub timeout: Duration,
    /// Extra request headers (`headers: [{key, value}]`); values may contain placeholders.
    pub headers: Vec<(String, String)>,
    /// `Authorization: Bearer` with the token in this file (`bearerTokenFile`, absolute), read at
    /// every query so a rotated token needs no reload.
    pub bearer_token_file: Option<PathBuf>,
    /// HTTP basic authentication (`basicAuth: {username, passwordFile}`), the password read at
    /// every query.
    pub basic_auth: Option<BasicAuth>,
    /// Accept any certificate from an `https` address (`insecureSkipVerify`, default false).
    pub insecure_skip_verify: bool,
}

/// `basicAuth` of a Prometheus provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The file holding the password (absolute path).
    pub password_file: PathBuf,
}

/// `provider.web`.
#[derive(Clone, Debug, PartialEq)]
pub struct WebProvider {
    /// URL; may contain `{{args.NAME}}`.
    pub url: String,
    /// HTTP method (default GET).
    pub method: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Request body, if any.
    pub body: Option<String>,
    /// Timeout (`timeoutSeconds`, default 10).
    pub timeout: Duration,
    /// JSONPath (RFC 9535) into the response body (`$.status`, or Argo's `{$.status}`); without it
    /// the result is the status code.
    pub json_path: Option<String>,
}
