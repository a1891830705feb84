//! The operator dashboard at `/` on the admin listener: one HTML page, one stylesheet and one
//! small hand-written script, compiled into the binary (no CDN, no Node step). The page reads
//! only the public API (`/api/v1`), follows `/api/v1/events` (SSE) and posts the same actions as
//! the CLI.
//!
//! Every asset is answered with a strict Content-Security-Policy (`default-src 'self'`, no
//! inline script or style, no framing), `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY` and `Cache-Control: no-cache` (the files are small, and a revalidation
//! against the `ETag` — the binary's content hash — costs a 304 after an upgrade swaps them).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");
const ICON: &str = include_str!("dashboard/icon.svg");

/// The Content-Security-Policy of every dashboard asset.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset at `path` (`/`, `/dashboard/app.js`, …), or `None` if it is not one of the
/// dashboard's. `request_headers` is read for `If-None-Match`.
pub fn asset(path: &str, request_headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        "" | "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/dashboard/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard/app.css" => (STYLE, "text/css; charset=utf-8"),
        "/favicon.ico" | "/dashboard/icon.svg" => (ICON, "image/svg+xml"),
        _ => return None,
    };
    let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    let fresh = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Full::new(Bytes::from_static(body.as_bytes())))
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    protect(headers);
    Some(response)
}

/// The headers that keep another site from framing, sniffing or injecting into the page.
pub fn protect(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// FNV-1a, 64 bits: the assets' `ETag` (they are fixed at build time, so it is a content hash).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_carry_their_protections_and_revalidate() {
        let page = asset("/", &HeaderMap::new()).unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let h = page.headers();
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'self'"));
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, h[header::ETAG].clone());
        let cached = asset("/dashboard/app.js", &HeaderMap::new()).unwrap();
        assert_ne!(cached.headers()[header::ETAG], h[header::ETAG]);
        assert_eq!(
            asset("/", &again).unwrap().status(),
            StatusCode::NOT_MODIFIED
        );
        assert!(asset("/dashboard/../secret", &HeaderMap::new()).is_none());
        // No inline script or style: the CSP would block it.
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
    }
}
