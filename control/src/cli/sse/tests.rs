use std::convert::Infallible;
use tokio::time::Instant;

use tokio::io::AsyncWriteExt;

use super::*;

/// Decodes `chunks` with `limit`: the events, then `Err(message)` if the stream ended with one.
async fn decode_chunks(chunks: Vec<Vec<u8>>, limit: usize) -> (Vec<Sse>, Option<String>) {
    let chunks = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|chunk| Ok::<_, Infallible>(Bytes::from(chunk))),
    );
    let mut events = std::pin::pin!(decode(chunks, limit));
    let mut decoded = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => decoded.push(event),
            Err(e) => return (decoded, Some(format!("{e:?}"))),
        }
    }
    (decoded, None)
}

fn data(events: &[Sse]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e.data.as_deref().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn events_split_across_chunks_are_reassembled() {
    let (events, error) = decode_chunks(
        vec![
            b": weir events\n\n".to_vec(),
            b"event: Advance\ndata: {\"a\"".to_vec(),
            b":1}\n\nevent: Paused\r\ndata: x\r\n\r\n: keep-alive\n\n".to_vec(),
        ],
        MAX_EVENT_BYTES,
    )
    .await;
    assert_eq!(error, None);
    assert_eq!(data(&events), ["{\"a\":1}", "x"]);
    assert_eq!(events[1].event.as_deref(), Some("Paused"));
}

#[tokio::test]
async fn data_lines_are_joined() {
    let (events, _) = decode_chunks(vec![b"data: one\ndata:two\n\n".to_vec()], 64).await;
    assert_eq!(data(&events), ["one\ntwo"]);
}

/// Every split of a stream with LF, CR and CRLF line ends, multi-line data, comments and
/// multi-byte characters into two chunks, and into single bytes, decodes alike: a chunk boundary
/// inside a line, inside a UTF-8 character, or between the CR and LF of a CRLF changes nothing.
#[tokio::test]
async fn chunk_boundaries_split_lines_characters_and_crlf() {
    let stream = "retry: 2500\r\n\r\n: keep-alive\r\n\r\nevent: Advance\r\ndata: {\"service\":\"caf\u{e9}\",\r\ndata: \"note\":\"\u{1f680} \u{4e2d}\"}\r\n\r\n\
                  data: cr\rdata: only\r\rdata: lf\n\n";
    let bytes = stream.as_bytes();
    let expected = [
        "",
        "{\"service\":\"caf\u{e9}\",\n\"note\":\"\u{1f680} \u{4e2d}\"}",
        "cr\nonly",
        "lf",
    ];
    let (whole, error) = decode_chunks(vec![bytes.to_vec()], MAX_EVENT_BYTES).await;
    assert_eq!(error, None);
    assert_eq!(data(&whole), expected);
    assert_eq!(whole[0].retry, Some(2500));
    assert!(
        !whole.iter().any(|e| e.data.is_none() && e.retry.is_none()),
        "comments are no events"
    );
    let mut splits = 0;
    for at in 1..bytes.len() {
        let (events, error) = decode_chunks(
            vec![bytes[..at].to_vec(), bytes[at..].to_vec()],
            MAX_EVENT_BYTES,
        )
        .await;
        assert_eq!((events, error), (whole.clone(), None), "split at byte {at}");
        splits += 1;
    }
    let single = bytes.iter().map(|&b| vec![b]).collect();
    assert_eq!(decode_chunks(single, MAX_EVENT_BYTES).await, (whole, None));
    eprintln!(
        "SSE: {splits} two-chunk splits and 1-byte chunks of a {}-byte stream decode identically",
        bytes.len()
    );
}

#[tokio::test]
async fn the_bound_is_per_event() {
    // 2,000 events of ~100 bytes pass a 256-byte bound, whatever the line ends and chunking.
    let mut stream = Vec::new();
    for n in 0..2_000 {
        let end: &[u8] = [b"\n".as_slice(), b"\r", b"\r\n"][n % 3];
        stream.extend_from_slice(b"event: Advance");
        stream.extend_from_slice(end);
        stream.extend_from_slice(
            format!("data: {{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(50)).as_bytes(),
        );
        stream.extend_from_slice(end);
        stream.extend_from_slice(end);
    }
    for width in [1, 7, 100, 4096] {
        let chunks = stream.chunks(width).map(<[u8]>::to_vec).collect();
        let (events, error) = decode_chunks(chunks, 256).await;
        assert_eq!((events.len(), error), (2_000, None), "chunks of {width}");
    }
    // One event over the bound ends the stream with an error.
    let big = format!("data: {}\n\n", "x".repeat(300));
    let (events, error) =
        decode_chunks(vec![b"data: ok\n\n".to_vec(), big.into_bytes()], 256).await;
    assert_eq!(data(&events), ["ok"]);
    assert!(error.is_some_and(|e| e.contains("TooLong")));
}

#[tokio::test]
async fn endless_lines_and_comments_are_cut_at_the_bound() {
    for line in [
        b"data: xxxxxxxx".as_slice(),
        b"xxxxxxxxxxxxxxxx",
        b": comment\n",
        b"data: x\n",
    ] {
        let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        let endless = futures_util::stream::repeat(Bytes::copy_from_slice(&line.repeat(256))).map(
            move |chunk| {
                counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                Ok::<_, Infallible>(chunk)
            },
        );
        let mut events = std::pin::pin!(decode(endless, 64 * 1024));
        let error = loop {
            match events.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("an endless stream ended"),
            }
        };
        let pulled = pulled.load(std::sync::atomic::Ordering::Relaxed);
        assert!(format!("{error:?}").contains("TooLong"), "{error:?}");
        assert!(
            pulled <= 64 * 1024 + line.len() * 256,
            "{pulled} bytes read"
        );
        assert!(
            events.next().await.is_none(),
            "the decoder ends after its error"
        );
    }
}

/// A server on the admin port that answers `/api/v1/events` with one endless line: the CLI's
/// subscription stops reading at the bound instead of buffering what it is sent.
#[tokio::test]
async fn a_hostile_server_cannot_make_the_cli_buffer_without_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut head).await;
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: ")
            .await;
        let filler = vec![b'x'; 64 * 1024];
        while socket.write_all(&filler).await.is_ok() {}
    });
    let api = Api::new(&addr.to_string(), None, None).unwrap();
    let started = Instant::now();
    let events = subscribe(&api).await.unwrap();
    let mut events = std::pin::pin!(events);
    let error = events.next().await.unwrap().unwrap_err();
    assert!(is_too_long(&error), "{error:?}");
    let took = started.elapsed();

    server.abort();
    eprintln!(
        "SSE: an endless event from a hostile server dropped after {took:?} (bound {} KiB)",
        MAX_EVENT_BYTES / 1024
    );
}

#[test]
fn retry_is_kept_within_bounds() {
    assert_eq!(reconnect_delay(2500), Duration::from_millis(2500));
    assert_eq!(reconnect_delay(0), RECONNECT_MIN);
    assert_eq!(reconnect_delay(u64::MAX), RECONNECT_MAX);
}

#[test]
fn events_about_other_services_are_ignored() {
    let about = |service: &str| {
        let event = Event {
            at_ms: 0,
            service: service.into(),
            revision: 1,
            kind: "Advance".into(),
            message: String::new(),
            weight: 10.0,
            phase: weir_control::engine::rollout::Phase::Progressing,
            stable_version: "v1".into(),
            canary_version: Some("v2".into()),
            step: 0,
        };
        Sse::default().data(serde_json::to_string(&event).unwrap())
    };
    assert!(relevant(&about("checkout"), Some("checkout")));
    assert!(relevant(&about("search"), None));
    assert!(!relevant(&about("search"), Some("checkout")));
    assert!(relevant(&Sse::default().data("not json"), Some("checkout")));
}
