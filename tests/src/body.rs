//! [`TestBody`]: a body made of known chunks, used by the test clients for requests and by the test
//! upstreams for responses, plus helpers to make and check large deterministic payloads.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// A body of chunks sent one frame each.
///
/// [`TestBody::full`] announces its length (`Content-Length`); [`TestBody::chunked`] does not, so
/// HTTP/1.1 sends it with `Transfer-Encoding: chunked`.
#[derive(Debug, Default)]
pub struct TestBody {
    chunks: VecDeque<Bytes>,
    exact_len: Option<u64>,
    /// Sent again and again after `chunks`, forever (see [`TestBody::endless`]).
    repeat: Option<Bytes>,
}

impl TestBody {
    /// No body.
    pub fn empty() -> TestBody {
        TestBody {
            chunks: VecDeque::new(),
            exact_len: Some(0),
            repeat: None,
        }
    }

    /// One chunk of known length.
    pub fn full(bytes: impl Into<Bytes>) -> TestBody {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        TestBody {
            chunks: if bytes.is_empty() {
                VecDeque::new()
            } else {
                VecDeque::from([bytes])
            },
            exact_len: Some(len),
            repeat: None,
        }
    }

    /// Several chunks of unannounced total length.
    pub fn chunked(chunks: impl IntoIterator<Item = Bytes>) -> TestBody {
        TestBody {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            exact_len: None,
            repeat: None,
        }
    }

    /// `chunk` sent again and again, never ending (a stream that only stops when the peer goes).
    pub fn endless(chunk: Bytes) -> TestBody {
        TestBody {
            chunks: VecDeque::new(),
            exact_len: None,
            repeat: (!chunk.is_empty()).then_some(chunk),
        }
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(
            this.chunks
                .pop_front()
                .or_else(|| this.repeat.clone())
                .map(|c| Ok(Frame::data(c))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.repeat.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_len {
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}

/// `len` deterministic, non-repeating-looking bytes (a simple LCG), so that a reordered, duplicated
/// or truncated chunk shows up in a comparison.
pub fn pattern(len: usize) -> Bytes {
    let mut state: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Splits `bytes` into chunks of `size` (the last may be shorter); slices share the buffer.
pub fn split(bytes: &Bytes, size: usize) -> Vec<Bytes> {
    (0..bytes.len())
        .step_by(size.max(1))
        .map(|start| bytes.slice(start..(start + size).min(bytes.len())))
        .collect()
}

/// FNV-1a 64 of `bytes`, printed by upstreams that digest request bodies.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
