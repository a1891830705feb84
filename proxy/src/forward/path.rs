//! Dot segments in the request path, resolved before routing so that the router and the upstream
//! agree on which path was asked for.
//!
//! Without this, `/public/../admin/x` matches a `pathPrefix: /public/` service (and its rate limit,
//! header rules and rewrite), while an upstream that resolves dot segments serves `/admin/x`; with
//! a `rewrite: {pathPrefix: /}` it would even get `/../admin/x`. As nginx does, weir resolves `.`
//! and `..` segments (RFC 3986 §5.2.4), spelt literally or percent-encoded (`%2e`), routes on the
//! result and forwards it; a path that climbs above the root is refused with 400. Everything else
//! is left byte for byte as the client sent it: no slash merging, no decoding of other escapes
//! (`%2F` stays an escaped slash, as RFC 3986 says it is not a separator), and the query is never
//! touched.
//!
//! The common path, one without a dot segment, costs one scan for `.` and `%` and allocates
//! nothing.

use http::uri::{PathAndQuery, Uri};

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClimbsAboveRoot;

/// The path with its dot segments resolved, or `None` when it has none (use it as it is).
pub(crate) fn resolve(path: &str) -> Result<Option<String>, ClimbsAboveRoot> {
    let bytes = path.as_bytes();
    // Only origin-form paths have segments (`*` and the empty path have none).
    if !bytes.starts_with(b"/") || memchr::memchr2(b'.', b'%', bytes).is_none() {
        return Ok(None);
    }
    if !path.split('/').any(|segment| dots(segment).is_some()) {
        return Ok(None);
    }
    // Segments after the leading `/`; the output keeps the input's spelling of every other one.
    let mut out: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    // Whether the path ends in a directory (`/a/..` → `/`, `/a/.` → `/a/`).
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match dots(segment) {
            Some(Dots::One) => trailing_slash = last,
            Some(Dots::Two) => {
                if out.pop().is_none() {
                    return Err(ClimbsAboveRoot);
                }
                trailing_slash = last;
            }
            None => {
                out.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut resolved = String::with_capacity(path.len());
    for segment in &out {
        resolved.push('/');
        resolved.push_str(segment);
    }
    if trailing_slash || resolved.is_empty() {
        resolved.push('/');
    }
    Ok(Some(resolved))
}

/// `uri` with its path replaced by `path` (the query and, for absolute-form targets, the scheme
/// and authority kept).
pub(crate) fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")).ok()?,
        None => PathAndQuery::try_from(path).ok()?,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

enum Dots {
    One,
    Two,
}

/// Whether `segment` is `.` or `..`, each dot spelt `.` or `%2e` (any case).
fn dots(segment: &str) -> Option<Dots> {
    let mut count = 0;
    let mut rest = segment.as_bytes();
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return None,
        };
        count += 1;
    }
    match count {
        1 => Some(Dots::One),
        2 => Some(Dots::Two),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(path: &str) -> String {
        match resolve(path) {
            Ok(Some(p)) => p,
            Ok(None) => path.to_string(),
            Err(ClimbsAboveRoot) => "400".to_string(),
        }
    }

    #[test]
    fn dot_segments_are_resolved_and_nothing_else_changes() {
        let cases = [
            ("/", "/"),
            ("/static/app.js", "/static/app.js"),
            ("/a/.b/..c/...", "/a/.b/..c/..."),
            ("/a%20b/%2Fx", "/a%20b/%2Fx"),
            ("//double//slash", "//double//slash"),
            ("/public/../admin/x", "/admin/x"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E./admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/%2e/b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/a/b/../../c", "/c"),
            ("/a//../b", "/a/b"),
            ("/..", "400"),
            ("/../x", "400"),
            ("/a/../../x", "400"),
            ("/%2e%2e/etc/passwd", "400"),
            ("*", "*"),
        ];
        for (input, expected) in cases {
            assert_eq!(resolved(input), expected, "{input}");
        }
    }

    #[test]
    fn the_query_and_authority_are_kept() {
        let uri: Uri = "https://shop.example.com/a/../b?x=/../y".parse().unwrap();
        let path = resolve(uri.path()).unwrap().unwrap();
        assert_eq!(
            with_path(&uri, &path).unwrap().to_string(),
            "https://shop.example.com/b?x=/../y"
        );
        let uri: Uri = "/a/./b".parse().unwrap();
        assert_eq!(with_path(&uri, "/a/b").unwrap().to_string(), "/a/b");
    }
}
