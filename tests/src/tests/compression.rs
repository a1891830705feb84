//! Response compression (`services[].compression`): negotiation from `Accept-Encoding`, every case
//! that is never compressed, and large streamed bodies that decode to the same bytes.

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Notify};

use crate::body::TestBody;
use crate::client::{self, Http1, Reply};
use crate::proxy::{self, Proxy};

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A text body of `len` bytes that compresses well.
fn text(len: usize) -> Vec<u8> {
    let line = b"{\"id\": 12345, \"name\": \"weir\", \"tags\": [\"edge\", \"canary\"]}\n";
    line.iter().copied().cycle().take(len).collect()
}

/// Pseudo-random bytes (hard to compress): a large body still streams through.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = super::Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// A test upstream answering by query: `type`, `len`, `ce` (Content-Encoding), `cc`
/// (Cache-Control), `status`, `etag`, `range`, `chunks` (stream `chunks` pieces of `len` without a
/// length), `noise` (random bytes), `hold` (stream `len` bytes, then wait for `release`).
struct Upstream {
    addr: SocketAddr,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query(request: &Request<Incoming>, key: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.replace("%2F", "/").replace("%20", " "))
    })
}

async fn answer(request: Request<Incoming>, release: Arc<Notify>) -> Response<UpBody> {
    let len: usize = query(&request, "len").map_or(4096, |v| v.parse().unwrap());
    let seed = query(&request, "noise").map(|v| v.parse::<u64>().unwrap());
    let data = match seed {
        Some(seed) => noise(len, seed),
        None => text(len),
    };
    let body: UpBody = if let Some(chunks) = query(&request, "chunks") {
        let chunks: usize = chunks.parse().unwrap();
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        let data = Bytes::from(data);
        tokio::spawn(async move {
            for _ in 0..chunks {
                if tx.send(data.clone()).await.is_err() {
                    return;
                }
            }
        });
        ChannelBody(rx).boxed()
    } else if query(&request, "hold").is_some() {
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from(data)).await;
            release.notified().await;
            let _ = tx.send(Bytes::from_static(b"the end\n")).await;
        });
        ChannelBody(rx).boxed()
    } else {
        http_body_util::Full::new(Bytes::from(data)).boxed()
    };
    let mut response = Response::new(body);
    let status = query(&request, "status").map_or(200, |s| s.parse().unwrap());
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let headers = response.headers_mut();
    let kind = query(&request, "type").unwrap_or_else(|| "application/json".into());
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(&kind).unwrap());
    if let Some(ce) = query(&request, "ce") {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_str(&ce).unwrap(),
        );
    }
    if let Some(cc) = query(&request, "cc") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(&cc).unwrap());
    }
    if query(&request, "etag").is_some() {
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1-abc\""));
    }
    if query(&request, "range").is_some() {
        let range = format!("bytes 0-{}/{}", len - 1, len * 2);
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&range).unwrap(),
        );
    }
    response
}

/// A body streamed from a channel, without a length.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|data| data.map(|data| Ok(Frame::data(data))))
    }
}

impl Upstream {
    fn spawn() -> Upstream {
        let listener = crate::bind_ephemeral();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let release = Arc::new(Notify::new());
        let shared = release.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let release = shared.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let release = release.clone();
                        async move { Ok::<_, Infallible>(answer(request, release).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            release,
            task,
        }
    }
}

/// A service `api` on `api.example.com` compressing with `compression` (YAML flow mapping).
fn start(upstream: &Upstream, compression: &str) -> Proxy {
    let yaml = format!(
        "services:\n  - name: api\n    match: {{hosts: [\"api.example.com\"]}}\n    \
         stable: {{version: v1, upstreams: [\"${{up}}\"]}}\n    compression: {compression}\n"
    );
    Proxy::start(proxy::model(&yaml, &[("up", upstream.addr)]))
}

async fn fetch(conn: &mut Http1, method: Method, path: &str, accept: Option<&str>) -> Reply {
    let mut request = client::request(method, "api.example.com", path, TestBody::empty());
    if let Some(accept) = accept {
        request.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
    }
    conn.fetch(request).await
}

/// The body decoded per its `Content-Encoding`.
fn decode(reply: &Reply) -> Vec<u8> {
    let body = &reply.body[..];
    let mut out = Vec::new();
    match reply.header("content-encoding") {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli");
        }
        Some("zstd") => out = zstd::stream::decode_all(body).expect("valid zstd"),
        Some(other) => panic!("unexpected content-encoding {other}"),
    }
    out
}

#[tokio::test]
async fn accept_encoding_negotiation_picks_the_coding_and_the_body_decodes_the_same() {
    let upstream = Upstream::spawn();
    let proxy = start(&upstream, "{}");
    let mut conn = Http1::connect(proxy.addr()).await;
    let expected = text(4096);
    let cases: [(Option<&str>, Option<&str>); 12] = [
        (None, None),
        (Some("gzip"), Some("gzip")),
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("br;q=1, zstd;q=0.5"), Some("br")),
        (Some("gzip;q=0.9, br;q=0.2"), Some("gzip")),
        (Some("*;q=0.5, zstd;q=0"), Some("br")),
        (Some("*"), Some("zstd")),
        (Some("identity"), None),
        (Some("gzip;q=0"), None),
        (Some("deflate"), None),
        (Some("x-gzip"), Some("gzip")),
        (Some("ZSTD;Q=0.001"), Some("zstd")),
    ];
    for (accept, coding) in cases {
        let reply = fetch(&mut conn, Method::GET, "/r?len=4096&etag=1", accept).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-encoding"), coding, "{accept:?}");
        assert_eq!(reply.header("vary"), Some("accept-encoding"), "{accept:?}");
        assert_eq!(decode(&reply), expected, "{accept:?}");
        if coding.is_some() {
            assert_eq!(reply.header("content-length"), None);
            assert_eq!(reply.header("etag"), Some("W/\"v1-abc\""));
            eprintln!(
                "{accept:?}: 4096 bytes sent as {} bytes of {}",
                reply.body.len(),
                coding.unwrap_or("identity")
            );
        } else {
            assert_eq!(reply.header("content-length"), Some("4096"));
            assert_eq!(reply.header("etag"), Some("\"v1-abc\""));
        }
    }
    drop(conn);
    // HTTP/2 clients get the same.
    let h2 = crate::client::Http2::connect(proxy.addr()).await;
    let mut request = client::get_url("http://api.example.com/r?len=4096");
    request
        .headers_mut()
        .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
    let reply = h2.fetch(request).await;
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.header("content-encoding"), Some("br"));
    assert_eq!(decode(&reply), expected);
    drop(h2);
    proxy.shutdown().await;

    // weir's own order and list: a coding not offered is never used.
    let proxy = start(&upstream, "{algorithms: [gzip, br]}");
    let mut conn = Http1::connect(proxy.addr()).await;
    let reply = fetch(&mut conn, Method::GET, "/r", Some("zstd, br, gzip")).await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    let reply = fetch(&mut conn, Method::GET, "/r", Some("zstd")).await;
    assert_eq!(reply.header("content-encoding"), None);
    assert_eq!(decode(&reply), text(4096));
    drop(conn);
    proxy.shutdown().await;
}

#[tokio::test]
async fn responses_that_must_not_be_compressed_pass_unchanged() {
    let upstream = Upstream::spawn();
    let proxy = start(&upstream, "{minSize: 1024}");
    let mut conn = Http1::connect(proxy.addr()).await;
    let all = Some("gzip, br, zstd");
    let cases = [
        ("already encoded", Method::GET, "/r?ce=gzip"),
        ("no-transform", Method::GET, "/r?cc=public,%20no-transform"),
        ("HEAD", Method::HEAD, "/r"),
        ("204", Method::GET, "/r?status=204&len=0"),
        ("304", Method::GET, "/r?status=304&len=0"),
        ("206 range", Method::GET, "/r?status=206&range=1"),
        ("range on 200", Method::GET, "/r?range=1"),
        ("below minSize", Method::GET, "/r?len=1023"),
        ("type not listed", Method::GET, "/r?type=image%2Fpng"),
        (
            "event stream by default",
            Method::GET,
            "/r?type=text%2Fevent-stream&chunks=2",
        ),
        ("no content type", Method::GET, "/r?type="),
    ];
    for (what, method, path) in cases {
        let reply = fetch(&mut conn, method.clone(), path, all).await;
        let coding = reply.header("content-encoding");
        assert!(
            coding.is_none() || coding == Some("gzip") && path.contains("ce=gzip"),
            "{what}: got content-encoding {coding:?}"
        );
        if method != Method::HEAD
            && reply.status != StatusCode::NO_CONTENT
            && reply.status != StatusCode::NOT_MODIFIED
        {
            assert!(!reply.body.is_empty(), "{what}");
            if !path.contains("ce=") {
                assert!(reply.body.starts_with(b"{\"id\""), "{what}: body changed");
            }
        }
        eprintln!("never compressed: {what} (status {})", reply.status);
    }
    // A listed wildcard type and a parameter are matched; an unknown length is compressed.
    drop(conn);
    proxy.shutdown().await;
    let proxy = start(&upstream, "{contentTypes: [\"text/*\"]}");
    let mut conn = Http1::connect(proxy.addr()).await;
    let reply = fetch(
        &mut conn,
        Method::GET,
        "/r?type=text%2Fplain;%20charset=utf-8",
        all,
    )
    .await;
    assert_eq!(reply.header("content-encoding"), Some("zstd"));
    let reply = fetch(
        &mut conn,
        Method::GET,
        "/r?len=10&chunks=3&type=text%2Fcsv",
        all,
    )
    .await;
    assert_eq!(reply.header("content-encoding"), Some("zstd"));
    assert_eq!(decode(&reply), text(10).repeat(3));
    let reply = fetch(&mut conn, Method::GET, "/r", all).await;
    assert_eq!(
        reply.header("content-encoding"),
        None,
        "application/json is not text/*"
    );
    drop(conn);
    proxy.shutdown().await;
}

#[tokio::test]
async fn large_streamed_bodies_decode_to_the_same_bytes_for_every_algorithm() {
    let upstream = Upstream::spawn();
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 32;
    for algorithm in ["gzip", "br", "zstd"] {
        let proxy = start(
            &upstream,
            &format!("{{algorithms: [{algorithm}], level: fast}}"),
        );
        let mut conn = Http1::connect(proxy.addr()).await;
        let began = tokio::time::Instant::now();
        let path = format!("/r?len={CHUNK}&chunks={CHUNKS}&noise=7");
        let reply = fetch(&mut conn, Method::GET, &path, Some(algorithm)).await;
        assert_eq!(reply.header("content-encoding"), Some(algorithm));
        let decoded = decode(&reply);
        assert_eq!(decoded.len(), CHUNK * CHUNKS);
        assert!(
            decoded == noise(CHUNK, 7).repeat(CHUNKS),
            "{algorithm}: bytes differ"
        );
        let path = format!("/r?len={CHUNK}&chunks={CHUNKS}");
        let reply = fetch(&mut conn, Method::GET, &path, Some(algorithm)).await;
        assert!(
            decode(&reply) == text(CHUNK).repeat(CHUNKS),
            "{algorithm}: text differs"
        );
        eprintln!(
            "{algorithm}: 2 MiB random + 2 MiB text streamed, decoded identical; text sent as {} bytes, {:?} (debug build)",
            reply.body.len(),
            began.elapsed()
        );
        drop(conn);
        proxy.shutdown().await;
    }
}

/// What a decoder makes of the start of a compressed stream (it stops where the input ends).
fn decode_prefix(algorithm: &str, bytes: &[u8]) -> Vec<u8> {
    let mut reader: Box<dyn Read + '_> = match algorithm {
        "gzip" => Box::new(flate2::read::GzDecoder::new(bytes)),
        "br" => Box::new(brotli::Decompressor::new(bytes, 4096)),
        _ => Box::new(zstd::stream::read::Decoder::new(bytes).unwrap()),
    };
    let mut out = Vec::new();
    let mut buf = [0; 8192];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Compressed output is streamed, not buffered: what the upstream has sent reaches the client
/// (decodable) while the upstream still holds the rest, so memory per response stays bounded.
#[tokio::test]
async fn compressed_streams_are_flushed_while_the_upstream_holds_the_rest() {
    let upstream = Upstream::spawn();
    let proxy = start(
        &upstream,
        "{contentTypes: [text/event-stream, application/json]}",
    );
    for algorithm in ["gzip", "br", "zstd"] {
        let mut conn = Http1::connect(proxy.addr()).await;
        let mut request = client::get(
            "api.example.com",
            "/r?len=300000&hold=1&type=text%2Fevent-stream",
        );
        request.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(algorithm).unwrap(),
        );
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.headers()["content-encoding"], algorithm);
        let mut body = response.into_body();
        let mut received = Vec::new();
        let mut decoded: Vec<u8> = Vec::new();
        // Everything the upstream sent so far arrives before it sends the rest.
        while decoded.len() < 300_000 {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{algorithm}: only {} bytes decoded from {} received while the upstream holds the body",
                        decoded.len(),
                        received.len()
                    )
                })
                .expect("a frame")
                .expect("no error");
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received.extend_from_slice(&data);
            decoded = decode_prefix(algorithm, &received);
        }
        assert_eq!(decoded, text(300_000));
        eprintln!(
            "{algorithm}: 300000 bytes held upstream reached the client as {} compressed bytes before the body ended",
            received.len()
        );
        upstream.release.notify_one();
        drop(body);
        drop(conn);
    }
    proxy.shutdown().await;
}
