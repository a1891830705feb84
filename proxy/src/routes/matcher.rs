//! Host and path matching, compiled once per table.
//!
//! The most specific host pattern wins (exact, then the longest `*.suffix`, then `*`); within it the
//! longest matching `pathPrefix`. Like an Envoy virtual host, a host that matched does not fall back to
//! a less specific pattern when none of its prefixes match the path.

use std::collections::HashMap;

use weir_config::HostPattern;

/// Longest host name we look up (RFC 1035 limit is 253).
const MAX_HOST: usize = 255;

/// Path prefixes of one host pattern, longest first.
#[derive(Debug, Default)]
struct PathRoutes {
    /// `(prefix, service index, reached through a blue-green preview host)`.
    prefixes: Vec<(Box<str>, usize, bool)>,
}

/// The compiled host index.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: HashMap<Box<str>, PathRoutes>,
    /// `(".example.com", routes)`, longest suffix first.
    suffixes: Vec<(Box<str>, PathRoutes)>,
    any: Option<PathRoutes>,
}

// === impl HostIndex ===

impl HostIndex {
    /// Adds `service` for `pattern` and `prefix`.
    pub(crate) fn insert(&mut self, pattern: &HostPattern, prefix: &str, service: usize) {
        self.insert_target(pattern, prefix, service, false);
    }

    /// Adds `service` for `pattern` and `prefix`; `preview` marks a blue-green preview host.
    pub(crate) fn insert_target(
        &mut self,
        pattern: &HostPattern,
        prefix: &str,
        service: usize,
        preview: bool,
    ) {
        let routes = match pattern {
            HostPattern::Exact(host) => self.exact.entry(host.as_str().into()).or_default(),
            HostPattern::Suffix(suffix) => {
                match self.suffixes.iter().position(|(s, _)| **s == **suffix) {
                    Some(idx) => &mut self.suffixes[idx].1,
                    None => {
                        self.suffixes
                            .push((suffix.as_str().into(), PathRoutes::default()));
                        let last = self.suffixes.len() - 1;
                        &mut self.suffixes[last].1
                    }
                }
            }
            HostPattern::Any => self.any.get_or_insert_with(PathRoutes::default),
        };
        routes.prefixes.push((prefix.into(), service, preview));
    }

    /// Orders suffixes and prefixes longest first; call once after the last insert.
    pub(crate) fn finish(&mut self) {
        self.suffixes
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let all = self
            .exact
            .values_mut()
            .chain(self.suffixes.iter_mut().map(|(_, r)| r))
            .chain(self.any.iter_mut());
        for routes in all {
            routes
                .prefixes
                .sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        }
    }

    /// The service index for a host (port already stripped, any case) and path.
    #[cfg(test)]
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        self.lookup_target(host, path).map(|(service, _)| service)
    }

    /// The service index for a host (port already stripped, any case) and path, and whether the
    /// host is one of the service's preview hosts.
    #[inline]
    pub(crate) fn lookup_target(&self, host: &str, path: &str) -> Option<(usize, bool)> {
        let mut buf = [0u8; MAX_HOST];
        let host = lowercase(host, &mut buf);
        if let Some(host) = host {
            if let Some(routes) = self.exact.get(host) {
                return routes.lookup(path);
            }
            for (suffix, routes) in &self.suffixes {
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    return routes.lookup(path);
                }
            }
        }
        self.any.as_ref().and_then(|routes| routes.lookup(path))
    }
}

impl PathRoutes {
    #[inline]
    fn lookup(&self, path: &str) -> Option<(usize, bool)> {
        self.prefixes
            .iter()
            .find(|(prefix, _, _)| path.starts_with(&**prefix))
            .map(|(_, service, preview)| (*service, *preview))
    }
}

/// Lower-cases an ASCII host into `buf` without allocating; `None` for hosts too long or not ASCII
/// (those can only match `*`).
#[inline]
fn lowercase<'a>(host: &str, buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let bytes = host.as_bytes();
    if bytes.len() > MAX_HOST || !host.is_ascii() {
        return None;
    }
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// Splits the port off a Host header value (`example.com:8080`, `[::1]:8080`).
#[inline]
pub(crate) fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets out of the match key.
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rfind(':') {
        Some(idx) if authority[idx + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..idx],
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str, usize)]) -> HostIndex {
        let mut index = HostIndex::default();
        for (pattern, prefix, service) in entries {
            let pattern = match *pattern {
                "*" => HostPattern::Any,
                p if p.starts_with("*.") => HostPattern::Suffix(p[1..].to_string()),
                p => HostPattern::Exact(p.to_string()),
            };
            index.insert(&pattern, prefix, *service);
        }
        index.finish();
        index
    }

    #[test]
    fn most_specific_host_then_longest_prefix() {
        let index = index(&[
            ("*", "/", 0),
            ("*.example.com", "/", 1),
            ("*.shop.example.com", "/", 2),
            ("shop.example.com", "/", 3),
            ("shop.example.com", "/api", 4),
            ("api.example.com", "/v1", 5),
        ]);
        let cases = [
            ("shop.example.com", "/", Some(3)),
            ("SHOP.Example.COM", "/api/cart", Some(4)),
            ("eu.shop.example.com", "/", Some(2)),
            ("a.b.shop.example.com", "/x", Some(2)),
            ("www.example.com", "/", Some(1)),
            ("example.com", "/", Some(0)),
            ("other.org", "/x", Some(0)),
            // An exact host that matched keeps its own prefixes: no fallback to `*`.
            ("api.example.com", "/v2", None),
            ("api.example.com", "/v1/users", Some(5)),
        ];
        for (host, path, expect) in cases {
            assert_eq!(index.lookup(host, path), expect, "{host}{path}");
        }
    }

    #[test]
    fn nothing_matches_without_a_catch_all() {
        let index = index(&[("shop.example.com", "/", 0)]);
        assert_eq!(index.lookup("other.example.com", "/"), None);
        assert_eq!(index.lookup(&"x".repeat(300), "/"), None);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
    }
}
