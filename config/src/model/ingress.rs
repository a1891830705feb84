//! The front door's everyday duties (issue #8): listener redirects (`listeners[].redirect`), path
//! and host rewrites (`services[].rewrite`) and header rules (`services[].headers`).

/// `listeners[].redirect`: every request on the listener is answered with a redirect to the same
/// path and query, with the scheme, host and/or port replaced. At least one of them differs from
/// the listener's own, so a redirect never points back at itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `scheme` (`http` or `https`); default: the listener's own (`https` with TLS).
    pub scheme: Option<RedirectScheme>,
    /// `host`: the host to send clients to; default: the request's host.
    pub host: Option<String>,
    /// `port`; default: the request's port when the scheme is unchanged, else the new scheme's
    /// default port (left out of `Location`). A scheme's default port is never written.
    pub port: Option<u16>,
    /// `code` (default 308): 301, 302, 307 or 308.
    pub code: u16,
}

impl Redirect {
    /// Default of [`Redirect::code`]: permanent, and the method and body are kept.
    pub const DEFAULT_CODE: u16 = 308;
}

/// The scheme of a redirect target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectScheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl RedirectScheme {
    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectScheme::Http => "http",
            RedirectScheme::Https => "https",
        }
    }

    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            RedirectScheme::Http => 80,
            RedirectScheme::Https => 443,
        }
    }
}

/// `services[].rewrite`: what the upstream is sent instead of what the client asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// `pathPrefix`: replaces the matched `match.pathPrefix` (`/api/v1/x` → `/v1/x` with match
    /// `/api/` and rewrite `/`). The query string and percent-encoding are kept as sent; a slash
    /// is never doubled at the seam. Default: the path is not rewritten.
    pub path_prefix: Option<String>,
    /// `host`: the upstream request's `Host` (`X-Forwarded-Host` keeps the client's). Default:
    /// the client's host.
    pub host: Option<String>,
}

/// `services[].headers`: header rules for the upstream request and the client's response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// `request`: applied to the request sent upstream (after weir's forwarded headers).
    pub request: HeaderOps,
    /// `response`: applied to the response sent to the client (weir's own error answers included).
    pub response: HeaderOps,
}

impl HeaderRules {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// Operations on one message's headers, applied in this order: `remove`, `set`, `add`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// `set`: replaces every value of the header (lower-cased name, template value).
    pub set: Vec<(String, HeaderTemplate)>,
    /// `add`: appends a value, keeping the ones present.
    pub add: Vec<(String, HeaderTemplate)>,
    /// `remove`: header names (lower-cased) removed.
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// No operation.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A header value with placeholders: `{{version}}` (the version that served the request),
/// `{{service}}` and `{{request.id}}` (the request's `X-Request-Id`). Literal parts are visible
/// ASCII, spaces and tabs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTemplate(pub Vec<TemplatePart>);

/// One piece of a [`HeaderTemplate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text copied as is.
    Literal(String),
    /// `{{version}}`.
    Version,
    /// `{{service}}`.
    Service,
    /// `{{request.id}}`.
    RequestId,
}
