//! Header values that are unique to one request stay out of HTTP/2 header compression (HPACK).
//!
//! An HPACK encoder adds every literal it sends to its dynamic table (4 KiB by default), so that
//! the next message can refer to it by index. A value that never repeats, such as the
//! `X-Request-Id` weir gives every request, is pure churn there: each one evicts the oldest
//! entries (the `x-forwarded-*` headers, `content-type`, `user-agent`, ...), which then go out as
//! literals again, are Huffman-coded and inserted again, on weir's side and decoded and inserted
//! on the peer's. Through an HTTP/2 upstream with a gRPC client that doubled the size of the
//! request heads weir sent and made HPACK encoding the largest single cost of a call. A value
//! marked sensitive is sent as a "never indexed" literal (RFC 7541 §6.2.3): one literal, no table
//! change, and the rest of the table keeps working. HTTP/1 ignores the mark.

use http::header::{HeaderMap, HeaderValue};

use crate::routes::rewrite::X_REQUEST_ID;

/// The request id `id` (already in `headers` as `X-Request-Id`), marked never to be indexed,
/// both where it goes upstream and in the copy returned for the response.
pub(super) fn never_indexed(headers: &mut HeaderMap, mut id: HeaderValue) -> HeaderValue {
    id.set_sensitive(true);
    if let Some(sent) = headers.get_mut(&X_REQUEST_ID) {
        sent.set_sensitive(true);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_id_goes_out_never_indexed_both_ways() {
        let mut headers = HeaderMap::new();
        let id = HeaderValue::from_static("0123456789abcdef");
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        let returned = never_indexed(&mut headers, id);
        assert!(returned.is_sensitive());
        assert!(headers[&X_REQUEST_ID].is_sensitive());
        assert_eq!(headers[&X_REQUEST_ID], "0123456789abcdef");
        // The response's copy keeps the mark.
        assert!(returned.clone().is_sensitive());
    }
}
