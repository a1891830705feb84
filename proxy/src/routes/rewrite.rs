//! Listener redirects, path and host rewrites and header rules (issue #8), compiled when the
//! table is built: header names and values are built once, and a value whose placeholders are
//! all known at build time (`{{version}}`, `{{service}}`) is a ready [`HeaderValue`] per arm, so
//! a rule without `{{request.id}}` allocates nothing per request.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use weir_config::{HeaderOps, HeaderTemplate, Redirect, RedirectScheme, Service, TemplatePart};

/// `X-Request-Id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A service's compiled `rewrite` and `headers` (`None` on the route when it has neither).
#[derive(Debug)]
pub(crate) struct Ingress {
    /// `rewrite.pathPrefix`.
    path: Option<PathRewrite>,
    /// `rewrite.host`, for the upstream's `Host`.
    host: Option<HeaderValue>,
    /// `headers.request`, for the stable arm and the canary arm.
    request: [Ops; 2],
    /// `headers.response`, likewise.
    response: [Ops; 2],
}

/// Replaces the matched prefix of a path.
#[derive(Debug)]
struct PathRewrite {
    /// `match.pathPrefix`.
    matched: Box<str>,
    /// `rewrite.pathPrefix`.
    replacement: Box<str>,
    /// What a path equal to `matched`, without a query, becomes (`replacement`), built once.
    whole: Option<PathAndQuery>,
    /// `replacement` without its trailing slashes, then with one: what goes before the rest of
    /// a longer path.
    base: Box<[u8]>,
    base_slash: Box<[u8]>,
    /// Whether the rest always follows a slash (`matched` ends with one, or `base` is empty).
    slash_always: bool,
}

/// Compiled [`HeaderOps`] for one arm.
#[derive(Debug, Default)]
struct Ops {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, Value)]>,
    add: Box<[(HeaderName, Value)]>,
    /// None of the three has an entry.
    empty: bool,
    /// A value has `{{request.id}}`.
    needs_id: bool,
}

/// A rule's value for one arm.
#[derive(Debug)]
enum Value {
    /// Known when the table is built.
    Ready(HeaderValue),
    /// Has `{{request.id}}`: pieces of text with the id between them.
    WithId(Box<[Option<Bytes>]>),
}

impl Ingress {
    /// Compiles a service's `rewrite` and `headers`; `None` when it has neither.
    pub(crate) fn compile(service: &Service) -> Option<Box<Ingress>> {
        if service.rewrite.is_none() && service.headers.is_empty() {
            return None;
        }
        let rewrite = service.rewrite.as_ref();
        let canary = service
            .canary
            .as_ref()
            .map_or(service.stable.version.as_str(), |c| {
                c.version.version.as_str()
            });
        let arms = [service.stable.version.as_str(), canary];
        let ops = |ops: &HeaderOps| arms.map(|version| Ops::compile(ops, version, &service.name));
        Some(Box::new(Ingress {
            path: rewrite
                .and_then(|r| r.path_prefix.as_deref())
                .map(|replacement| {
                    PathRewrite::new(service.matcher.path_prefix.as_str(), replacement)
                }),
            host: rewrite
                .and_then(|r| r.host.as_deref())
                .and_then(|h| HeaderValue::from_str(h).ok()),
            request: ops(&service.headers.request),
            response: ops(&service.headers.response),
        }))
    }

    /// Rewrites an upstream request (origin-form, forwarded headers already set) served by the
    /// canary arm or not; `{{request.id}}` is its `X-Request-Id`.
    pub(crate) fn on_request<B>(&self, request: &mut Request<B>, canary: bool) {
        if let Some(path) = &self.path {
            if let Some(rewritten) = request.uri().path_and_query().and_then(|pq| path.apply(pq)) {
                *request.uri_mut() = Uri::from(rewritten);
            }
        }
        if let Some(host) = &self.host {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        let ops = &self.request[usize::from(canary)];
        if !ops.empty {
            let id = if ops.needs_id {
                request.headers().get(&X_REQUEST_ID).cloned()
            } else {
                None
            };
            ops.apply(request.headers_mut(), id.as_ref());
        }
    }

    /// Applies the response rules of the arm that served the request.
    pub(crate) fn on_response<B>(
        &self,
        response: &mut Response<B>,
        canary: bool,
        id: &HeaderValue,
    ) {
        let ops = &self.response[usize::from(canary)];
        if !ops.empty {
            ops.apply(response.headers_mut(), Some(id));
        }
    }
}

impl PathRewrite {
    fn new(matched: &str, replacement: &str) -> PathRewrite {
        let base = replacement.trim_end_matches('/');
        let mut rule = PathRewrite {
            matched: matched.into(),
            replacement: replacement.into(),
            whole: None,
            base: base.as_bytes().into(),
            base_slash: format!("{base}/").into_bytes().into(),
            slash_always: matched.ends_with('/') || base.is_empty(),
        };
        rule.whole = PathAndQuery::try_from(matched)
            .ok()
            .and_then(|pq| rule.rewrite(&pq));
        rule
    }

    /// The path with its matched prefix replaced, the query kept; `None` when the path does not
    /// start with the prefix (it always does for a routed request).
    ///
    /// The seam never doubles or loses a slash: the text after the prefix is joined to the
    /// replacement as if the prefix ended at a `/`, so `/api/` → `/` and `/api` → `/` both turn
    /// `/api/v1/x` into `/v1/x`; a path equal to the prefix becomes the replacement as written.
    ///
    /// The new target is two copies, the replacement (with its seam) and the original target's
    /// rest of the path and query in one piece; [`PathRewrite::rewrite`] is the same rule spelt
    /// out piece by piece (and the tests hold the two to the same answers).
    fn apply(&self, pq: &PathAndQuery) -> Option<PathAndQuery> {
        let full = pq.as_str();
        let path = pq.path();
        // The path is the start of the whole target, except when `http` spells an empty path
        // `/` (a target starting with `?`): that goes the long way.
        if !std::ptr::eq(full.as_ptr(), path.as_ptr()) {
            return self.rewrite(pq);
        }
        let rest = path.strip_prefix(&*self.matched)?;
        let (head, skip): (&[u8], usize) = if rest.is_empty() {
            match &self.whole {
                // The path is the prefix itself, without a query: the answer is known.
                Some(whole) if path.len() == full.len() => return Some(whole.clone()),
                _ => (self.replacement.as_bytes(), path.len()),
            }
        } else {
            let slash = rest.starts_with('/');
            let head = if slash || self.slash_always {
                &self.base_slash
            } else {
                &self.base
            };
            (head, path.len() - rest.len() + usize::from(slash))
        };
        let tail = full.as_bytes().get(skip..)?;
        // Exactly the new length: a full vector becomes `Bytes` without a second allocation.
        let mut out = Vec::with_capacity(head.len() + tail.len());
        out.extend_from_slice(head);
        out.extend_from_slice(tail);
        PathAndQuery::from_maybe_shared(Bytes::from(out)).ok()
    }

    fn rewrite(&self, pq: &PathAndQuery) -> Option<PathAndQuery> {
        let rest = pq.path().strip_prefix(&*self.matched)?;
        // The new path as (up to) three pieces: the replacement, a slash, the rest.
        let (base, slash, rest) = if rest.is_empty() {
            (&*self.replacement, "", "")
        } else {
            let base = self.replacement.trim_end_matches('/');
            // `/apix` under `/api` rewritten to `/` still needs its slash: a path starts with one.
            let slash = self.matched.ends_with('/') || rest.starts_with('/') || base.is_empty();
            (
                base,
                if slash { "/" } else { "" },
                rest.strip_prefix('/').unwrap_or(rest),
            )
        };
        let query = pq.query();
        let len = base.len() + slash.len() + rest.len() + query.map_or(0, |q| q.len() + 1);
        // Exactly `len` bytes: a full vector becomes `Bytes` without a second allocation.
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(base.as_bytes());
        out.extend_from_slice(slash.as_bytes());
        out.extend_from_slice(rest.as_bytes());
        if let Some(query) = query {
            out.push(b'?');
            out.extend_from_slice(query.as_bytes());
        }
        PathAndQuery::from_maybe_shared(Bytes::from(out)).ok()
    }
}

impl Ops {
    fn compile(ops: &HeaderOps, version: &str, service: &str) -> Ops {
        let pairs = |pairs: &[(String, HeaderTemplate)]| -> Box<[(HeaderName, Value)]> {
            pairs
                .iter()
                .filter_map(|(name, template)| {
                    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                    Some((name, Value::compile(template, version, service)?))
                })
                .collect()
        };
        let remove: Box<[HeaderName]> = ops
            .remove
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        let set = pairs(&ops.set);
        let add = pairs(&ops.add);
        Ops {
            empty: remove.is_empty() && set.is_empty() && add.is_empty(),
            needs_id: set
                .iter()
                .chain(add.iter())
                .any(|(_, v)| matches!(v, Value::WithId(_))),
            remove,
            set,
            add,
        }
    }

    /// `remove`, then `set`, then `add`. A value that needs the id is left out when there is none.
    fn apply(&self, headers: &mut HeaderMap, id: Option<&HeaderValue>) {
        for name in &*self.remove {
            headers.remove(name);
        }
        for (name, value) in &*self.set {
            if let Some(value) = value.render(id) {
                // By reference: the name is cloned only when it is not there yet.
                headers.insert(name, value);
            }
        }
        for (name, value) in &*self.add {
            if let Some(value) = value.render(id) {
                headers.append(name, value);
            }
        }
    }
}

impl Value {
    /// `None` when the filled-in value is not a valid header value (validation refuses that).
    fn compile(template: &HeaderTemplate, version: &str, service: &str) -> Option<Value> {
        let mut pieces: Vec<Option<Bytes>> = Vec::new();
        let mut text = String::new();
        for part in &template.0 {
            match part {
                TemplatePart::Literal(literal) => text.push_str(literal),
                TemplatePart::Version => text.push_str(version),
                TemplatePart::Service => text.push_str(service),
                TemplatePart::RequestId => {
                    pieces.push(Some(Bytes::from(std::mem::take(&mut text))));
                    pieces.push(None);
                }
            }
        }
        if pieces.is_empty() {
            return HeaderValue::from_str(&text).ok().map(Value::Ready);
        }
        pieces.push(Some(Bytes::from(text)));
        // Checked once here: a request id is visible ASCII, so every rendering is valid too.
        let sample: Vec<u8> = pieces
            .iter()
            .flat_map(|p| p.as_deref().unwrap_or(b"id").iter().copied())
            .collect();
        HeaderValue::from_bytes(&sample).ok()?;
        Some(Value::WithId(pieces.into()))
    }

    #[inline]
    fn render(&self, id: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Value::Ready(value) => Some(value.clone()),
            Value::WithId(pieces) => Value::with_id(pieces, id?),
        }
    }

    /// A value with `{{request.id}}`: the pieces with `id` between them (out of line: the
    /// ready values are the common case).
    #[inline(never)]
    fn with_id(pieces: &[Option<Bytes>], id: &HeaderValue) -> Option<HeaderValue> {
        let len = pieces
            .iter()
            .map(|p| p.as_ref().map_or(id.len(), Bytes::len))
            .sum();
        let mut out = BytesMut::with_capacity(len);
        for piece in pieces {
            out.put_slice(piece.as_deref().unwrap_or(id.as_bytes()));
        }
        HeaderValue::from_maybe_shared(out.freeze()).ok()
    }
}

/// A listener's compiled `redirect`.
#[derive(Debug)]
pub(crate) struct RedirectTo {
    /// The target scheme.
    scheme: RedirectScheme,
    /// Whether it is the listener's own.
    same_scheme: bool,
    host: Option<Box<str>>,
    port: Option<u16>,
    code: StatusCode,
}

impl RedirectTo {
    pub(crate) fn compile(redirect: &Redirect, tls: bool) -> RedirectTo {
        let own = if tls {
            RedirectScheme::Https
        } else {
            RedirectScheme::Http
        };
        let scheme = redirect.scheme.unwrap_or(own);
        RedirectTo {
            scheme,
            same_scheme: scheme == own,
            host: redirect.host.as_deref().map(Into::into),
            port: redirect.port,
            code: StatusCode::from_u16(redirect.code).unwrap_or(StatusCode::PERMANENT_REDIRECT),
        }
    }

    /// The redirect answering `request`, or `None` when the request names no usable host (and
    /// the redirect sets none): the caller answers 400.
    pub(crate) fn location<B>(&self, request: &Request<B>) -> Option<(StatusCode, HeaderValue)> {
        // The host (and port) the client asked for: the target's authority, else `Host`.
        let asked: Option<Authority> = match request.uri().authority() {
            Some(authority) => Some(authority.clone()),
            None => request
                .headers()
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok()),
        }
        .filter(|a| !a.as_str().contains('@') && !a.host().is_empty());
        let host = match (&self.host, &asked) {
            (Some(host), _) => &**host,
            (None, Some(asked)) => asked.host(),
            (None, None) => return None,
        };
        let port = self.port.or(if self.same_scheme {
            asked.as_ref().and_then(Authority::port_u16)
        } else {
            None
        });
        let path = request
            .uri()
            .path_and_query()
            .map(PathAndQuery::as_str)
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        let mut out = BytesMut::with_capacity(16 + host.len() + path.len());
        out.put_slice(self.scheme.as_str().as_bytes());
        out.put_slice(b"://");
        out.put_slice(host.to_ascii_lowercase().as_bytes());
        if let Some(port) = port.filter(|p| *p != self.scheme.default_port()) {
            out.put_u8(b':');
            out.put_slice(port.to_string().as_bytes());
        }
        out.put_slice(path.as_bytes());
        let location = HeaderValue::from_maybe_shared(out.freeze()).ok()?;
        Some((self.code, location))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(matched: &str, replacement: &str, path: &str) -> String {
        let rule = PathRewrite::new(matched, replacement);
        let pq = PathAndQuery::try_from(path).unwrap();
        let rewritten = rule.apply(&pq).unwrap().as_str().to_string();
        // The two-copy rewrite (and its shortcut for a path equal to the prefix) agrees with
        // the rule spelt out piece by piece.
        assert_eq!(rule.rewrite(&pq).unwrap().as_str(), rewritten);
        rewritten
    }

    #[test]
    fn the_two_copy_rewrite_agrees_with_the_rule_everywhere() {
        let prefixes = ["/", "/api", "/api/", "/a/b/"];
        let replacements = ["/", "/v2", "/v2/", "/x/y", "//"];
        let paths = [
            "",
            "/",
            "?q",
            "/?",
            "/?q=1",
            "/api",
            "/api/",
            "/api?",
            "/api/?x",
            "/apix",
            "/api//x",
            "/api/v1/items?page=2&a=%2F",
            "/a/b/",
            "/a/b/c?d",
            "/a/bc",
            "//",
            "/%2e/x",
        ];
        let mut checked = 0;
        for matched in prefixes {
            for replacement in replacements {
                let rule = PathRewrite::new(matched, replacement);
                for path in paths {
                    let Ok(pq) = PathAndQuery::try_from(path) else {
                        continue;
                    };
                    checked += 1;
                    assert_eq!(
                        rule.apply(&pq).map(|p| p.as_str().to_string()),
                        rule.rewrite(&pq).map(|p| p.as_str().to_string()),
                        "{matched} → {replacement} on {path:?}"
                    );
                }
            }
        }
        eprintln!("two-copy rewrite = piece-by-piece rule on {checked} (prefix, replacement, target) combinations");
    }

    #[test]
    fn prefixes_are_replaced_without_doubling_or_losing_a_slash() {
        let cases = [
            ("/api/", "/", "/api/v1/x", "/v1/x"),
            ("/api", "/", "/api/v1/x", "/v1/x"),
            ("/api/", "/", "/api/", "/"),
            ("/api", "/", "/api", "/"),
            ("/api/", "/v2", "/api/x", "/v2/x"),
            ("/api/", "/v2/", "/api/x", "/v2/x"),
            ("/api", "/v2/", "/api/x", "/v2/x"),
            ("/api", "/v2/", "/api", "/v2/"),
            ("/api/", "/v2", "/api/", "/v2"),
            ("/", "/v1", "/x", "/v1/x"),
            ("/", "/v1/", "/", "/v1/"),
            ("/", "/v1", "/", "/v1"),
            ("/", "/", "/x/y", "/x/y"),
            ("/api/", "/", "/api/a?b=c&d=%2F", "/a?b=c&d=%2F"),
            ("/api/", "/v2", "/api/%2e%2E/x?q", "/v2/%2e%2E/x?q"),
            ("/api/", "/", "/api//x", "/x"),
            ("/api", "/v2", "/apix", "/v2x"),
            ("/api", "/", "/apix", "/x"),
            ("/api/", "/", "/api/?q=1", "/?q=1"),
            ("/api/", "/", "/api/x?", "/x?"),
            ("/api/", "/v2", "/api/?", "/v2?"),
            ("/api", "/v2", "/api?x=/y", "/v2?x=/y"),
            ("/api", "/v2/", "/api/x/?a=b?c", "/v2/x/?a=b?c"),
            ("/", "/v1", "/?a=b", "/v1?a=b"),
            ("/", "/", "/", "/"),
            ("/", "/", "/?", "/?"),
            ("/", "/v1/", "//x", "/v1/x"),
            ("/a/b/", "/c", "/a/b/d/e?f", "/c/d/e?f"),
        ];
        for (matched, replacement, path, want) in cases {
            assert_eq!(
                rewrite(matched, replacement, path),
                want,
                "{matched} → {replacement} on {path}"
            );
        }
    }
}
