//! The response body with weir's own layers on top of the upstream's: compression (its encoder
//! fed frame by frame) and the access log's byte count, whose line is written when the body ends
//! or is dropped. A response with neither is never wrapped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::access::Pending;
use super::compress::Encoder;
use crate::body::ProxyBody;

/// Compressed output is handed on once this much has collected, even while more input is ready.
const EMIT_AT: usize = 16 * 1024;
/// Frames compressed in one poll before yielding (a highly compressible stream may produce no
/// output for a long time).
const FRAMES_PER_POLL: usize = 64;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Layered {
    inner: ProxyBody,
    compress: Option<Compressing>,
    log: Option<Box<Pending>>,
}

#[derive(Debug)]
struct Compressing {
    /// `None` once the stream is finished.
    encoder: Option<Encoder>,
    /// Input written since the last flush.
    dirty: bool,
    /// The upstream's trailers, sent after the last compressed bytes.
    trailers: Option<HeaderMap>,
}

impl Layered {
    pub(crate) fn new(
        inner: ProxyBody,
        encoder: Option<Encoder>,
        mut log: Option<Box<Pending>>,
    ) -> Self {
        if let Some(log) = &mut log {
            log.complete = encoder.is_none() && inner.is_end_stream();
        }
        Layered {
            inner,
            compress: encoder.map(|encoder| Compressing {
                encoder: Some(encoder),
                dirty: false,
                trailers: None,
            }),
            log,
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = match &mut self.compress {
            Some(compress) => compress.poll(&mut self.inner, cx),
            None => Pin::new(&mut self.inner).poll_frame(cx),
        };
        if let Some(log) = &mut self.log {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        log.bytes += data.len() as u64;
                    }
                    // hyper may stop polling a body that says it has ended.
                    let ended = match &self.compress {
                        Some(c) => c.encoder.is_none() && c.trailers.is_none(),
                        None => self.inner.is_end_stream(),
                    };
                    if ended {
                        log.complete = true;
                        log.write();
                    }
                }
                Poll::Ready(None) => {
                    log.complete = true;
                    log.write();
                }
                Poll::Ready(Some(Err(_))) => log.write(),
                Poll::Pending => {}
            }
        }
        polled
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        match &self.compress {
            Some(c) => c.encoder.is_none() && c.trailers.is_none(),
            None => self.inner.is_end_stream(),
        }
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match &self.compress {
            Some(_) => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

impl Compressing {
    fn poll(
        &mut self,
        inner: &mut ProxyBody,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(encoder) = &mut self.encoder else {
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        };
        for _ in 0..FRAMES_PER_POLL {
            match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(error) = encoder.write(&data) {
                            return self.broken(&error);
                        }
                        self.dirty = true;
                        if encoder.buffered() >= EMIT_AT {
                            return Poll::Ready(Some(Ok(Frame::data(encoder.take()))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                        return self.finish();
                    }
                },
                Poll::Ready(None) => return self.finish(),
                Poll::Ready(Some(Err(error))) => {
                    self.encoder = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending => {
                    // Nothing more ready: what was written goes out now, so a streamed response
                    // (events, long polls) reaches the client as the upstream sends it.
                    if std::mem::take(&mut self.dirty) {
                        if let Err(error) = encoder.flush() {
                            return self.broken(&error);
                        }
                    }
                    if encoder.buffered() > 0 {
                        return Poll::Ready(Some(Ok(Frame::data(encoder.take()))));
                    }
                    return Poll::Pending;
                }
            }
        }
        if encoder.buffered() > 0 {
            return Poll::Ready(Some(Ok(Frame::data(encoder.take()))));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Ends the compressed stream: its last bytes now, the trailers (if any) next.
    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(encoder) = self.encoder.take() else {
            return Poll::Ready(None);
        };
        match encoder.finish() {
            Ok(last) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(last))))),
            Err(error) => self.broken(&error),
        }
    }

    /// An encoder failed (writing to memory: only if the encoder itself broke). The body ends
    /// without the format's end marker, so the client's decoder sees a truncated stream rather
    /// than a complete one.
    fn broken(
        &mut self,
        error: &std::io::Error,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        tracing::warn!(%error, "response compression failed; the body is cut short");
        self.encoder = None;
        self.trailers = None;
        Poll::Ready(None)
    }
}

impl Body for Layered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Layered::poll_frame(self.get_mut(), cx)
    }

    fn is_end_stream(&self) -> bool {
        Layered::is_end_stream(self)
    }

    fn size_hint(&self) -> SizeHint {
        Layered::size_hint(self)
    }
}
