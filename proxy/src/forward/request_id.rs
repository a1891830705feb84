//! `X-Request-Id`: kept from a trusted peer when it is sane, generated otherwise, sent upstream
//! and returned to the client.
//!
//! A generated id is 32 lower-case hex digits: a random 64-bit prefix drawn once per worker
//! thread, then that thread's request counter. Unique across threads and restarts (the prefix)
//! without a shared counter or an RNG call per request: one small allocation (the value's bytes
//! and their reference count together), the prefix's digits written once per thread.

use std::cell::Cell;

use http::header::{HeaderMap, HeaderValue};

use crate::routes::rewrite::X_REQUEST_ID;

/// The longest id kept from a trusted peer (longer ones are replaced).
pub(crate) const MAX_LEN: usize = 128;

thread_local! {
    /// This thread's random prefix (in hex digits) and the next counter value.
    static NEXT: Cell<([u8; 16], u64)> = Cell::new((hex(rand::random::<u64>()), 0));
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
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&prefix);
    out[16..].copy_from_slice(&hex(n));
    // `from_owner`: the array and its reference count in one allocation, so the clones that
    // go upstream, into the response and into the access log allocate nothing more.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .expect("hex digits are a valid header value")
}

/// `n` as 16 lower-case hex digits, most significant first, eight at a time: each nibble is
/// spread into a byte of its own, then turned into its digit without a branch or a table.
fn hex(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hex8((n >> 32) as u32));
    out[8..].copy_from_slice(&hex8(n as u32));
    out
}

fn hex8(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    // 0x_abcd_efgh → 0x0a0b_0c0d_0e0f_0g0h.
    let x = ((x & 0xffff_0000) << 16) | (x & 0xffff);
    let x = ((x & 0x0000_ff00_0000_ff00) << 8) | (x & 0x0000_00ff_0000_00ff);
    let x = ((x & 0x00f0_00f0_00f0_00f0) << 4) | (x & 0x000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10..=15 (adding 6 carries into bit 4 only for those).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    // '0' + nibble, and 'a' − '0' − 10 = 39 more for a letter; no byte overflows.
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_match_the_formatter() {
        let mut x = 0x0123_4567_89ab_cdefu64;
        for n in [
            0,
            1,
            9,
            10,
            15,
            16,
            0xa0,
            u64::MAX,
            u64::MAX - 1,
            0x8000_0000_0000_0000,
        ]
        .into_iter()
        .chain((0..10_000).map(|_| {
            // xorshift: a spread of values, every nibble in every position.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })) {
            assert_eq!(hex(n), *format!("{n:016x}").as_bytes(), "{n:#x}");
        }
        eprintln!("10,010 values hex-encoded eight digits at a time, all equal to `{{:016x}}`");
    }

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
