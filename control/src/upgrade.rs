//! Zero-downtime restart and binary upgrade: the running weir starts a new process (the binary on
//! disk at the path it was started from, with the same arguments) and hands it its listening
//! sockets over a Unix socket (`SCM_RIGHTS`); the new process serves from the same sockets (the
//! same accept queues: no connection is refused or reset in between), says when it is ready, and
//! the old one drains and exits.
//!
//! Why fd passing rather than `SO_REUSEPORT` overlap: with two reuse-port sockets each has its own
//! accept queue, and connections queued on the old one when it closes are reset; a passed socket
//! is the same socket, so nothing queued is lost, and it also works for ports chosen by the kernel
//! (`:0`) and for addresses the new process could no longer bind (privileged ports after
//! dropping capabilities).
//!
//! The protocol, on a Unix socket in a fresh private (0700) folder whose path the new process gets
//! in [`ENV_SOCKET`]:
//! 1. the new process connects (the old one checks the peer is the process it started);
//! 2. the old one freezes its driver (no rollout decision or state write from here on; refused
//!    while a state save is pending, so the new process never restores an older state than was
//!    served), then sends one message: a JSON list of socket names and the sockets themselves;
//! 3. the new process starts with those sockets (a listener whose name and address still match
//!    takes its socket; others are bound), restores rollout state from `stateDir` and writes
//!    `ready\n`;
//! 4. the old one stops accepting, drains and exits. If anything fails or times out, the new
//!    process is killed and the old one resumes its rollouts and keeps serving.
//!
//! Without `stateDir` the state folder is `$STATE_DIRECTORY` or the one next to the config file
//! (`crate::state_dir`), so rollout state always carries over to the new process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::app::Running;

/// The environment variable that tells a new process where to fetch its sockets.
pub const ENV_SOCKET: &str = "WEIR_UPGRADE_SOCKET";
/// The most sockets one hand-over carries (listeners + admin).
const MAX_SOCKETS: usize = 1024;
/// The longest list of names accepted.
const MAX_NAMES_BYTES: usize = 256 * 1024;
/// How long the new process waits for its sockets once connected.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// The name under which the admin listener's socket is handed over (listeners are `listener:NAME`,
/// so no listener name can collide with it).
pub const ADMIN: &str = "admin";

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The new process did not behave.
    #[error("{0}")]
    Protocol(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> UpgradeError {
    move |source| UpgradeError::Io { what, source }
}

/// The name a client listener's socket is handed over under.
pub fn listener_key(name: &str) -> String {
    format!("listener:{name}")
}

/// Sockets received from the previous weir process, and the line back to it.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: BTreeMap<String, TcpListener>,
    stream: Option<UnixStream>,
}

// === impl Inherited ===

impl Inherited {
    /// The sockets handed over by the process that started this one ([`ENV_SOCKET`] set), or
    /// none. Blocking: call before starting the runtime.
    pub fn from_env() -> Result<Inherited, UpgradeError> {
        let Some(path) = std::env::var_os(ENV_SOCKET) else {
            return Ok(Inherited::default());
        };
        let stream = UnixStream::connect(PathBuf::from(path))
            .map_err(io("connecting to the running weir"))?;
        stream
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(io("setting a timeout"))?;
        let mut names = vec![0u8; MAX_NAMES_BYTES];
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut names)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| UpgradeError::Io {
            what: "receiving the sockets",
            source: e.into(),
        })?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        if received.flags.contains(rustix::net::ReturnFlags::CTRUNC)
            || received.flags.contains(rustix::net::ReturnFlags::TRUNC)
        {
            return Err(UpgradeError::Protocol(
                "the hand-over message was truncated".into(),
            ));
        }
        let names: Vec<String> = serde_json::from_slice(&names[..received.bytes])
            .map_err(|e| UpgradeError::Protocol(format!("bad hand-over message: {e}")))?;
        if names.len() != fds.len() {
            return Err(UpgradeError::Protocol(format!(
                "{} names for {} sockets",
                names.len(),
                fds.len()
            )));
        }
        let sockets = names
            .into_iter()
            .zip(fds)
            .map(|(name, fd)| (name, TcpListener::from(fd)))
            .collect();
        Ok(Inherited {
            sockets,
            stream: Some(stream),
        })
    }

    /// Whether this process was started by a running weir to take over from it.
    pub fn is_handover(&self) -> bool {
        self.stream.is_some()
    }

    /// The inherited socket named `key` if it is bound to `address` (any port when the config
    /// asks for port 0); `None` when there is none or the address changed (bind a new one then).
    pub fn take(&mut self, key: &str, address: SocketAddr) -> Option<TcpListener> {
        let socket = self.sockets.remove(key)?;
        let bound = socket.local_addr().ok()?;
        let matches =
            bound.ip() == address.ip() && (address.port() == 0 || bound.port() == address.port());
        if matches {
            Some(socket)
        } else {
            tracing::info!(socket = key, %bound, configured = %address, "inherited socket no longer configured: closing it");
            None
        }
    }

    /// Tells the previous process this one serves (it then drains and exits). Sockets not taken
    /// are closed.
    pub fn ready(&mut self) -> Result<(), UpgradeError> {
        self.sockets.clear();
        if let Some(mut stream) = self.stream.take() {
            stream
                .write_all(b"ready\n")
                .map_err(io("telling the previous weir"))?;
        }
        Ok(())
    }
}

/// How a hand-over runs.
#[derive(Clone, Debug)]
pub struct Upgrade {
    /// The binary to start (the path this process was started from: a replaced binary there is
    /// the new version).
    pub exe: PathBuf,
    /// Its arguments (this process's own).
    pub args: Vec<OsString>,
    /// How long the new process may take to connect and become ready (default 60 s): it is
    /// killed after that and this process keeps serving.
    pub timeout: Duration,
}

/// Starts the new process, hands it the sockets and waits until it is ready. `Ok` means the new
/// process serves and this one must drain and exit; on `Err`, nothing changed (the new process
/// is gone and rollouts resume here).
pub async fn hand_over(running: &Running, upgrade: &Upgrade) -> Result<u32, UpgradeError> {
    let dir = tempfile::Builder::new()
        .prefix("weir-upgrade-")
        .tempdir()
        .map_err(io("creating the hand-over folder"))?;
    let path = dir.path().join("handover.sock");
    let listener =
        tokio::net::UnixListener::bind(&path).map_err(io("binding the hand-over socket"))?;
    let mut child = Command::new(&upgrade.exe)
        .args(&upgrade.args)
        .env(ENV_SOCKET, &path)
        .spawn()
        .map_err(io("starting the new weir"))?;
    let pid = child.id();
    tracing::info!(pid, exe = %upgrade.exe.display(), "upgrade: started a new weir process");
    let mut frozen = false;
    let result = exchange(running, upgrade, &listener, &mut child, &mut frozen).await;
    match result {
        Ok(()) => Ok(pid),
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            if frozen {
                let _ = running.driver().freeze(false).await;
            }
            Err(error)
        }
    }
}

async fn exchange(
    running: &Running,
    upgrade: &Upgrade,
    listener: &tokio::net::UnixListener,
    child: &mut Child,
    frozen: &mut bool,
) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + upgrade.timeout;
    let (mut stream, _) = until_ready(deadline, child, listener.accept())
        .await?
        .map_err(io("accepting the new weir"))?;
    let peer = stream.peer_cred().map_err(io("checking the new weir"))?;
    if peer.pid() != i32::try_from(child.id()).ok() {
        return Err(UpgradeError::Protocol(format!(
            "the hand-over socket was reached by process {:?}, not the new weir ({})",
            peer.pid(),
            child.id()
        )));
    }
    running
        .driver()
        .freeze(true)
        .await
        .map_err(|e| UpgradeError::Protocol(format!("cannot hand over now: {e}")))?;
    *frozen = true;
    let sockets = running.handover_sockets();
    let names: Vec<&str> = sockets.iter().map(|(name, _)| name.as_str()).collect();
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, socket)| socket.as_fd()).collect();
    if fds.len() > MAX_SOCKETS {
        return Err(UpgradeError::Protocol(format!(
            "{} sockets: at most {MAX_SOCKETS} can be handed over",
            fds.len()
        )));
    }
    let names = serde_json::to_vec(&names)
        .map_err(|e| UpgradeError::Protocol(format!("cannot encode the socket names: {e}")))?;
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(UpgradeError::Protocol("cannot attach the sockets".into()));
    }
    // One small message on an empty socket buffer: it does not block.
    stream.writable().await.map_err(io("sending the sockets"))?;
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(&names)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| UpgradeError::Io {
        what: "sending the sockets",
        source: e.into(),
    })?;
    if sent != names.len() {
        return Err(UpgradeError::Protocol(
            "the hand-over message was cut short".into(),
        ));
    }
    let mut line = [0u8; 6];
    until_ready(deadline, child, stream.read_exact(&mut line))
        .await?
        .map_err(|_| {
            UpgradeError::Protocol("the new weir exited before it was ready (see its log)".into())
        })?;
    if &line != b"ready\n" {
        return Err(UpgradeError::Protocol(format!(
            "unexpected answer {line:?}"
        )));
    }
    tracing::info!(
        pid = child.id(),
        "upgrade: the new weir is ready; draining this one"
    );
    Ok(())
}

/// Runs `work` until the deadline, failing early if the child exits.
async fn until_ready<T>(
    deadline: Instant,
    child: &mut Child,
    work: impl std::future::Future<Output = T>,
) -> Result<T, UpgradeError> {
    let mut work = std::pin::pin!(work);
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            value = &mut work => return Ok(value),
            _ = poll.tick() => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(UpgradeError::Protocol(format!("the new weir exited with {status} before it was ready (see its log)")));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(UpgradeError::Protocol("the new weir was not ready in time".into()));
            }
        }
    }
}

/// Sends a state line to systemd (`READY=1`, `MAINPID=…`) when run under `Type=notify`
/// (`NOTIFY_SOCKET` set); does nothing otherwise.
pub fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let datagram = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = socket.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            datagram.send_to_addr(state.as_bytes(), &address)?;
        } else {
            datagram.send_to(state.as_bytes(), Path::new(&socket))?;
        }
        Ok(())
    })();
    if let Err(error) = sent {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
