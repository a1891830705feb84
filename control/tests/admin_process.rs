//! The admin API's guards seen from the real binary: `weir run` refuses a non-loopback admin
//! address without a token (exit 64, naming the fix), and the CLI talks to an admin API served
//! over TLS (`admin.tls`) with `--admin https://… --ca-file`.
//!
//! Every spawned process is killed on drop. The TLS test picks a free port by binding
//! `127.0.0.1:0` and closing it (another process could take it in that window; the test then
//! says weir did not start).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::time::Instant;
use weir_control::demo::backend::Backend;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A child process killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `weir ARGS` to its end (10 s at most).
async fn weir(args: &[&str]) -> Output {
    let child = Command::new(WEIR)
        .args(args)
        .env_remove("WEIR_ADMIN")
        .env_remove("WEIR_TOKEN_FILE")
        .env_remove("WEIR_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("weir ends within 10 s")
    .expect("join")
    .expect("weir's output")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn config(dir: &Path, v1: &Backend, v2: &Backend, admin: &str) -> std::path::PathBuf {
    let text = format!(
        r#"listeners:
  - name: public
    address: 127.0.0.1:0
admin:
{admin}services:
  - name: shop
    match: {{hosts: ["*"]}}
    stable: {{version: v1, upstreams: ["{v1}"]}}
    canary: {{version: v2, upstreams: ["{v2}"]}}
    strategy:
      canary:
        steps:
          - setWeight: 10
          - pause: {{}}
          - setWeight: 20
          - pause: {{}}
"#,
        v1 = v1.addr(),
        v2 = v2.addr(),
    );
    let path = dir.join("weir.yaml");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// `weir run` with a non-loopback admin address and no token file exits 64 before binding
/// anything, and says how to fix it; `weir validate` says the same.
#[tokio::test]
async fn a_non_loopback_admin_without_a_token_exits_64() {
    let v1 = Backend::bind("v1").expect("bind v1");
    let v2 = Backend::bind("v2").expect("bind v2");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = config(dir.path(), &v1, &v2, "  address: \"0.0.0.0:0\"\n");
    let path = path.to_str().expect("a UTF-8 path");
    let run = weir(&["run", "--config", path]).await;
    let said = text(&run);
    assert_eq!(run.status.code(), Some(64), "{said}");
    assert!(
        said.contains("admin.tokenFile") && said.contains("not a loopback address"),
        "{said}"
    );
    let validate = weir(&["validate", path]).await;
    assert_eq!(validate.status.code(), Some(64), "{}", text(&validate));
    eprintln!(
        "figure: weir run with admin 0.0.0.0 and no tokenFile: exit {:?}: {}",
        run.status.code(),
        said.lines()
            .find(|l| l.contains("admin.tokenFile"))
            .unwrap_or_default()
            .trim()
    );
}

/// The CLI reaches an admin API served over TLS with `--ca-file`; without it (the system's roots
/// do not know the test CA) or over plain http it fails with exit 1; the watch mode (which
/// follows the event stream) works over https too.
#[tokio::test]
async fn the_cli_talks_to_an_https_admin_with_a_ca_file() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    // A CA and a leaf for localhost.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "weir admin test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.path().join("admin.crt"), leaf.pem()).expect("write");
    std::fs::write(dir.path().join("admin.key"), leaf_key.serialize_pem()).expect("write");
    std::fs::write(dir.path().join("token"), "tls-token\n").expect("write");

    let v1 = Backend::bind("v1").expect("bind v1");
    let v2 = Backend::bind("v2").expect("bind v2");
    let port = free_port();
    let path = config(
        dir.path(),
        &v1,
        &v2,
        &format!(
            "  address: 127.0.0.1:{port}\n  tokenFile: token\n  tls: {{certFile: admin.crt, keyFile: admin.key}}\n"
        ),
    );
    let log = std::fs::File::create(dir.path().join("weir.log")).expect("log");
    let _weir = Guard(
        Command::new(WEIR)
            .args(["run", "--workers", "1", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start weir run"),
    );
    let url = format!("https://localhost:{port}");
    let ca_file = dir.path().join("ca.pem");
    let ca_file = ca_file.to_str().expect("UTF-8");
    let token = dir.path().join("token");
    let token = token.to_str().expect("UTF-8");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    loop {
        let get = weir(&["get", "shop", "--admin", &url, "--ca-file", ca_file]).await;
        if get.status.success() && text(&get).contains("Paused") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "weir get over https never worked: {}\nweir's log:\n{}",
            text(&get),
            std::fs::read_to_string(dir.path().join("weir.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = started.elapsed();

    // A mutation with the token over https.
    let resume = weir(&[
        "resume",
        "shop",
        "--admin",
        &url,
        "--ca-file",
        ca_file,
        "--token-file",
        token,
    ])
    .await;
    assert!(resume.status.success(), "{}", text(&resume));
    // Without the token: refused (401), exit 1.
    let refused = weir(&["pause", "shop", "--admin", &url, "--ca-file", ca_file]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("--token-file"),
        "{}",
        text(&refused)
    );
    // Without --ca-file the certificate is not trusted; plain http to the TLS port fails.
    let untrusted = weir(&["get", "--admin", &url]).await;
    assert_eq!(untrusted.status.code(), Some(1), "{}", text(&untrusted));
    assert!(
        text(&untrusted).contains("--ca-file") || text(&untrusted).contains("root certificates"),
        "{}",
        text(&untrusted)
    );
    eprintln!("figure: without --ca-file: {}", text(&untrusted).trim());
    let plain = weir(&["get", "--admin", &format!("http://localhost:{port}")]).await;
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain));

    // `get --watch` (the event stream) over https: the first frame comes, and it keeps running.
    let out = dir.path().join("watch.out");
    let file = std::fs::File::create(&out).expect("create");
    let watch = Guard(
        Command::new(WEIR)
            .args([
                "get",
                "shop",
                "--watch",
                "--admin",
                &url,
                "--ca-file",
                ca_file,
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("handle"))
            .stderr(file)
            .spawn()
            .expect("start weir get --watch"),
    );
    let resume = weir(&[
        "resume",
        "shop",
        "--admin",
        &url,
        "--ca-file",
        ca_file,
        "--token-file",
        token,
    ])
    .await;
    let _ = resume;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = std::fs::read_to_string(&out).unwrap_or_default();
        if seen.contains("shop") {
            break;
        }
        assert!(Instant::now() < deadline, "no frame from --watch: {seen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(watch);
    eprintln!(
        "figure: CLI over https with --ca-file: get/resume work (ready after {ready:?}); without --ca-file or over http: exit 1"
    );
}
