//! Misbehaving upstreams, written byte by byte on raw TCP: they hang, reset mid-body, drip their
//! head, answer garbage or enormous heads, or answer before reading the request body. Each counts
//! the connections it has open (a connection stays counted until the peer closes it), so a test
//! can check that weir leaks none.
//!
//! ```text
//! let hang = faulty::Upstream::spawn(faulty::Script::Hang);
//! // ... requests through weir ...
//! assert_eventually!(hang.open() == 0);
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// What a [`Upstream`] does with each connection, after reading a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// Never answers.
    Hang,
    /// Answers `200` announcing `Content-Length: 65536`, sends 1000 bytes, then resets (RST).
    ResetMidBody,
    /// Writes a valid `200` head one byte per this interval.
    DripHead(Duration),
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Answers a head of about 512 KiB of headers.
    HugeHeaders,
    /// Answers `401` with an empty body at once, without reading the request body, keeping the
    /// connection open; then reads and discards whatever comes, never answering again.
    EarlyAnswer,
}

/// A running misbehaving upstream on `127.0.0.1:0`; dropping it aborts everything.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl Upstream {
    /// Binds and starts serving `script` on the current runtime.
    pub fn spawn(script: Script) -> Upstream {
        let std_listener = crate::bind_ephemeral();
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let listener = TcpListener::from_std(std_listener).expect("register listener");
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let (open_c, accepted_c) = (open.clone(), accepted.clone());
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted_c.fetch_add(1, Ordering::SeqCst);
                open_c.fetch_add(1, Ordering::SeqCst);
                let open = open_c.clone();
                connections.spawn(async move {
                    serve(stream, script).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
                // Reap finished connections so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        Upstream {
            addr,
            open,
            accepted,
            tasks,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now (accepted and not yet closed by the peer).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops everything and waits.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Reads up to the end of a request head; false when the peer closed first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut seen = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    return true;
                }
            }
        }
    }
}

/// Reads and discards until the peer closes.
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

async fn serve(mut stream: TcpStream, script: Script) {
    if !read_head(&mut stream).await {
        return;
    }
    match script {
        Script::Hang => {}
        Script::ResetMidBody => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'x'; 1000]).await;
            let _ = stream.flush().await;
            let _ = stream.set_zero_linger();
            return;
        }
        Script::DripHead(every) => {
            for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        }
        Script::Garbage => {
            let _ = stream
                .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 not http at all\r\n\r\n")
                .await;
        }
        Script::HugeHeaders => {
            let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n".to_vec();
            for i in 0..512 {
                head.extend_from_slice(format!("x-filler-{i}: ").as_bytes());
                head.extend_from_slice(&[b'a'; 1000]);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            // weir may close before reading it all.
            let _ = stream.write_all(&head).await;
        }
        Script::EarlyAnswer => {
            let _ = stream
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    }
    drain(&mut stream).await;
}
