//! [`Pebble`]: Let's Encrypt's ACME test server (Debian's `pebble` package), with
//! `pebble-challtestsrv` as its DNS server answering every name with 127.0.0.1, so domains like
//! `shop.weir.test` validate against weir on this machine.
//!
//! Challenges are really validated (never `PEBBLE_VA_ALWAYS_VALID`); validation sleeps are off
//! (`PEBBLE_VA_NOSLEEP=1`), no nonce is rejected (`PEBBLE_WFE_NONCEREJECT=0`) and authorizations
//! are never reused (`PEBBLE_AUTHZREUSE=0`, so a renewal is validated again). Every port is
//! picked free (bind `127.0.0.1:0`, read, close): pebble's HTTPS directory and management API,
//! the DNS server, and the ports pebble validates on (`httpPort`, `tlsPort`), which the test's
//! weir listeners then bind. Both processes are killed when the [`Pebble`] is dropped.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use tempfile::TempDir;

use crate::certs::TestCa;
use crate::client::{tls_config, tls_connect, Http1};

/// Whether the `pebble` and `pebble-challtestsrv` binaries are installed.
pub fn installed() -> bool {
    which("pebble").is_some() && which("pebble-challtestsrv").is_some()
}

/// The path of `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Prints the skip message and returns true when pebble is not installed.
pub fn skip() -> bool {
    if installed() {
        return false;
    }
    eprintln!(
        "SKIPPED: pebble not installed (apt-get install pebble; .ci/run installs it) — ACME tests did not run"
    );
    true
}

/// A free TCP port on 127.0.0.1 (bound, read, closed).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A port free for both TCP and UDP on 127.0.0.1 (for the DNS server).
fn free_dns_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// How pebble runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `certificateValidityPeriod` in seconds (pebble's default: 5 years).
    pub validity_secs: Option<u64>,
    /// Names pebble refuses to issue for (`domainBlocklist`).
    pub blocklist: Vec<String>,
}

/// A running pebble and its DNS server.
pub struct Pebble {
    dir: TempDir,
    children: Vec<Child>,
    /// `https://127.0.0.1:PORT/dir`.
    pub directory: String,
    /// The CA of pebble's own HTTPS (weir's `caFile`).
    pub ca_file: PathBuf,
    /// Pebble's management API (roots, intermediates).
    pub management: SocketAddr,
    /// The port pebble connects to for http-01 (weir's plain listener binds it).
    pub http_port: u16,
    /// The port pebble connects to for tls-alpn-01 (weir's TLS listener binds it).
    pub tls_port: u16,
    https_ca: CertificateDer<'static>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pebble {
    /// Starts pebble-challtestsrv and pebble; returns once both answer.
    pub async fn start(options: Options) -> Pebble {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let ca = TestCa::new();
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        let (cert, key) = leaf.write(dir.path(), "pebble");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write the CA");

        let dns_port = free_dns_port();
        let challtest_management = free_port();
        let listen = free_port();
        let management = free_port();
        let http_port = free_port();
        let tls_port = free_port();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if !options.blocklist.is_empty() {
            config["pebble"]["domainBlocklist"] = options.blocklist.clone().into();
        }
        if let Some(validity) = options.validity_secs {
            config["pebble"]["certificateValidityPeriod"] = validity.into();
        }
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble's config");

        let logs = dir.path().to_path_buf();
        let log = |name: &str| std::fs::File::create(logs.join(name)).expect("a log file");
        let mut children = Vec::new();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{challtest_management}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .stdin(Stdio::null())
            .spawn();
        let mut pebble = Pebble {
            dir,
            children: Vec::new(),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_file,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            http_port,
            tls_port,
            https_ca: ca.der(),
        };
        match dns {
            Ok(child) => children.push(child),
            Err(error) => panic!("cannot start pebble-challtestsrv: {error}"),
        }
        pebble.children = children;
        let server = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            .arg("-strict=false")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start pebble: {error}"));
        pebble.children.push(server);
        for port in [challtest_management, listen, management] {
            pebble.wait_port(port).await;
        }
        pebble
    }

    async fn wait_port(&mut self, port: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            for child in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("a pebble process exited ({status}):\n{}", self.logs());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("port {port} never opened:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The processes' output so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in [
            "pebble.log",
            "pebble.err",
            "challtestsrv.log",
            "challtestsrv.err",
        ] {
            let content = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = content.lines().rev().take(30).collect();
            text.push_str(&format!("--- {name}\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// The root that signs pebble's certificates (regenerated on each start), from the
    /// management API's `/roots/0`.
    pub async fn root(&self) -> CertificateDer<'static> {
        let config = tls_config(
            std::slice::from_ref(&self.https_ca),
            &[b"http/1.1"],
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        );
        let stream = tls_connect(self.management, config, "127.0.0.1").await;
        let mut client = Http1::handshake(stream).await;
        let reply = client.get(&self.management.to_string(), "/roots/0").await;
        assert_eq!(reply.status, 200, "GET /roots/0: {}", reply.text());
        rustls_pki_types_pem(reply.text())
    }

    /// A TLS client config trusting only pebble's issuing root (so only a certificate pebble
    /// issued passes), offering `http/1.1`.
    pub async fn client_config(&self) -> Arc<ClientConfig> {
        let root = self.root().await;
        tls_config(
            &[root],
            &[b"http/1.1"],
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }

    /// Pebble's folder (its config and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn rustls_pki_types_pem(text: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(text.as_bytes()).expect("a PEM certificate from pebble")
}
