//! `X-Request-Id`: kept from a trusted peer when it is sane, generated otherwise, sent upstream
//! and returned to the client.
//!
//! A generated id is 32 lower-case hex digits: a random 64-bit prefix drawn once per worker
//! thread, then that thread's request counter. Unique across threads and restarts (the prefix)
//! without a shared counter or an RNG call per request: one small allocation (the value's bytes).

use std::cell::Cell;

use http::header::{HeaderMap, HeaderValue};

use crate::routes::rewrite::X_REQUEST_ID;

/// The longest id kept from a trusted peer (longer ones are replaced).
pub(crate) const MAX_LEN: usize = 128;

thread_local! {
    /// This thread's random prefix and the next counter value.
    static NEXT: Cell<(u64, u64)> = Cell::new((rand::random::<u64>(), 0));
}

/// The request's id, and `headers` carrying exactly it: the peer's one `X-Request-Id` when the
/// peer is trusted and the value is 1..=[`MAX_LEN`] visible ASCII characters, a new one otherwise.
pub(crate) fn assign(headers: &mut HeaderMap, trusted: bool) -> HeaderValue {
    if trusted {
        let mut values = headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(value), None) = (values.next(), values.next()) {
            if sane(value.as_bytes()) {
                return value.clone();
            }
        }
    }
    let id = generate();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// 1..=[`MAX_LEN`] bytes of visible ASCII.
fn sane(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len()) && value.iter().all(u8::is_ascii_graphic)
}

/// A new id for this thread.
pub(crate) fn generate() -> HeaderValue {
    let (prefix, n) = NEXT.with(|next| {
        let (prefix, n) = next.get();
        next.set((prefix, n.wrapping_add(1)));
        (prefix, n)
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, word) in [prefix, n].into_iter().enumerate() {
        for j in 0..16 {
            out[i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&out))
        .expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_hex_and_only_sane_trusted_ones_are_kept() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));

        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(assign(&mut headers.clone(), true), "abc-123");
        let replaced = assign(&mut headers, false);
        assert_ne!(replaced, "abc-123");
        assert_eq!(headers[&X_REQUEST_ID], replaced);

        for bad in ["has space", "", &"x".repeat(MAX_LEN + 1)] {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            assert_ne!(assign(&mut headers, true), bad);
        }
        let mut headers = HeaderMap::new();
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("one"));
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("two"));
        let id = assign(&mut headers, true);
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().count(), 1);
        assert_eq!(id.len(), 32);
    }
}
