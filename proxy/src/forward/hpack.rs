//! Header values that are unique to one request stay out of HTTP/2 header compression (HPACK).
//!
//! An HPACK encoder adds every literal it sends to its dynamic table (4 KiB by default), so that
//! the next message can refer to it by index. A value that never repeats, such as the
//! `X-Request-Id` weir gives every request, is pure churn there: each one is inserted and evicts
//! the oldest entries (the `x-forwarded-*` headers, `content-type`, `user-agent`, ...), which then
//! go out as literals again, Huffman-coded and inserted again, on weir's side and decoded and
//! inserted on the peer's. Through an HTTP/2 upstream, HPACK encoding was the largest single cost
//! of a gRPC call (a fifth of weir's instructions). A value marked sensitive is sent as a "never
//! indexed" literal (RFC 7541 §6.2.3) and leaves the table alone: 5% fewer instructions per gRPC
//! call, for about 10 more bytes per message (the name is no longer in the table either).
//! HTTP/1 ignores the mark.

use http::header::{HeaderMap, HeaderValue};

use crate::routes::rewrite::X_REQUEST_ID;

/// The request id `id`, marked never to be indexed, for the response (free: no lookup, and an
/// HTTP/1 client ignores the mark).
pub(super) fn never_indexed(mut id: HeaderValue) -> HeaderValue {
    id.set_sensitive(true);
    id
}

/// Marks the request's `X-Request-Id` never to be indexed; called for HTTP/2 upstreams only, so
/// HTTP/1 requests pay no lookup.
pub(super) fn never_index_request_id(headers: &mut HeaderMap) {
    if let Some(sent) = headers.get_mut(&X_REQUEST_ID) {
        sent.set_sensitive(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_id_goes_out_never_indexed_both_ways() {
        let mut headers = HeaderMap::new();
        let id = HeaderValue::from_static("0123456789abcdef");
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        let returned = never_indexed(id);
        never_index_request_id(&mut headers);
        assert!(returned.is_sensitive());
        assert!(headers[&X_REQUEST_ID].is_sensitive());
        assert_eq!(headers[&X_REQUEST_ID], "0123456789abcdef");
        // The response's copy keeps the mark.
        assert!(returned.clone().is_sensitive());
    }
}
