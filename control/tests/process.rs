//! The real `weir` binary as a process: `weir run` killed with SIGKILL and restarted resumes its
//! rollouts from `stateDir`; a corrupted state file starts paused on stable; `weir validate` and
//! `weir status` exit codes.
//!
//! Every spawned process is owned by a guard that kills it on drop, so a failing assertion leaks
//! nothing. Ports: weir must be restarted on the same ports, so the test picks free ones by binding
//! `127.0.0.1:0` and closing the socket before writing the port into the config; another process
//! could take the port in that short window (weir would then fail to start and the test says so).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_control::demo::backend::Backend;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A free port on 127.0.0.1 (see the module comment for the race).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A child process killed (SIGKILL) and reaped on drop.
struct Guard {
    child: Option<Child>,
    what: String,
}

impl Guard {
    fn spawn(command: &mut Command, what: &str) -> Guard {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Guard {
            child: Some(child),
            what: what.to_string(),
        }
    }

    /// SIGKILL, then wait until the process is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status if the process has ended.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for the process to end on its own within `timeout` (killing it otherwise).
    async fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test's folder, ports and config for `weir run`.
struct Setup {
    dir: tempfile::TempDir,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("a temporary folder"),
            public: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("weir.yaml")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weir.log")
    }

    /// Writes service `shop` (stable v1, canary v2) with these steps (YAML list items indented by
    /// 10 spaces).
    fn write_config(&self, v1: &Backend, v2: &Backend, steps: &str) {
        self.write_config_with(v1, v2, &format!("      canary:\n        steps:\n{steps}"));
    }

    /// Writes service `shop` (stable v1, canary v2) with this strategy (the YAML under
    /// `strategy:`, indented by 6 spaces; it may end with top-level blocks such as
    /// `analysisTemplates:`).
    fn write_config_with(&self, v1: &Backend, v2: &Backend, strategy: &str) {
        let text = format!(
            r#"listeners:
  - name: public
    address: {public}
admin:
  address: {admin}
stateDir: {state}
services:
  - name: shop
    match: {{hosts: ["*"]}}
    stable: {{version: v1, upstreams: ["{v1}"]}}
    canary: {{version: v2, upstreams: ["{v2}"]}}
    strategy:
{strategy}
"#,
            public = self.public,
            admin = self.admin,
            state = self.state_dir().display(),
            v1 = v1.addr(),
            v2 = v2.addr(),
        );
        std::fs::write(self.config_path(), text).expect("write the config");
    }

    /// Removes `stateDir` from the config written: weir then keeps its state next to the file.
    fn drop_state_dir(&self) {
        let text = std::fs::read_to_string(self.config_path()).expect("read the config");
        let text: String = text
            .lines()
            .filter(|line| !line.starts_with("stateDir:"))
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(self.config_path(), text).expect("write the config");
    }

    /// Replaces `from` (which must occur) in the config file, in place.
    fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.config_path()).expect("read the config");
        assert!(text.contains(from), "{from:?} in {text}");
        std::fs::write(self.config_path(), text.replace(from, to)).expect("write the config");
    }

    /// `GET /api/v1/config`.
    async fn config_report(&self) -> Value {
        let (status, body) = http(self.admin, "GET", "/api/v1/config")
            .await
            .expect("the admin API answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `weir run` and waits until `/readyz` answers 200.
    async fn start(&self) -> Guard {
        self.start_with_state_directory(None).await
    }

    /// [`Setup::start`] with `$STATE_DIRECTORY` set as systemd's `StateDirectory=` would (unset
    /// when `None`).
    async fn start_with_state_directory(&self, state_directory: Option<&Path>) -> Guard {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the log");
        let mut command = Command::new(WEIR);
        command
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .args(["--workers", "1", "--drain-timeout", "1s"])
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log);
        if let Some(dir) = state_directory {
            command.env("STATE_DIRECTORY", dir);
        }
        let mut weir = Guard::spawn(&mut command, "weir run");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http(self.admin, "GET", "/readyz").await {
                return weir;
            }
            if let Some(status) = weir.exited() {
                panic!(
                    "weir exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "weir not ready after 20 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /api/v1/services/shop`.
    async fn shop(&self) -> Value {
        let (status, body) = http(self.admin, "GET", "/api/v1/services/shop")
            .await
            .expect("the admin API answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Polls `shop` until `done` holds; panics with the last answer after `timeout`.
    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let shop = self.shop().await;
            if done(&shop) {
                return shop;
            }
            assert!(
                Instant::now() < deadline,
                "after {timeout:?}, shop never got to {what}: {}",
                summary(&shop)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `n` requests through weir; how many v2 answered (each must be a 200 from v1 or v2).
    async fn count_canary(&self, n: usize) -> usize {
        let mut canary = 0;
        for _ in 0..n {
            let (status, version) = proxied(self.public).await;
            assert_eq!(status, 200);
            match version.as_str() {
                "v2" => canary += 1,
                "v1" => {}
                other => panic!("answered by {other:?}"),
            }
        }
        canary
    }

    /// Runs `weir ARGS... --admin URL` to its end (10 s at most).
    async fn cli(&self, args: &[&str]) -> (ExitStatus, String) {
        let out = self.dir.path().join("cli.out");
        let file = File::create(&out).expect("create the output file");
        let child = Guard::spawn(
            Command::new(WEIR)
                .args(args)
                .arg("--admin")
                .arg(format!("http://{}", self.admin))
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("a handle"))
                .stderr(file),
            &format!("weir {}", args.join(" ")),
        );
        let status = child.wait(Duration::from_secs(10)).await;
        (status, std::fs::read_to_string(&out).unwrap_or_default())
    }
}

fn summary(shop: &Value) -> String {
    format!(
        "phase {}, revision {}, step {}, weight {}: {}",
        shop["phase"], shop["revision"], shop["stepIndex"], shop["canaryWeight"], shop["message"]
    )
}

/// One HTTP/1.1 request with `Connection: close`; the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let (status, _, body) = exchange(addr, &addr.to_string(), method, path).await?;
    Ok((status, body))
}

/// `GET /` through the proxy: the status and the `x-version` that answered.
async fn proxied(addr: SocketAddr) -> (u16, String) {
    let (status, head, _) = exchange(addr, "shop.example.com", "GET", "/")
        .await
        .expect("weir answers");
    let version = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-version")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, version)
}

async fn exchange(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, head.to_string(), body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Whether this weir has the `status` subcommand.
fn has_status_command() -> bool {
    let output = Command::new(WEIR)
        .arg("--help")
        .output()
        .expect("weir --help");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.trim_start().starts_with("status "))
}

fn backends() -> (Backend, Backend) {
    (
        Backend::bind("v1").expect("bind v1"),
        Backend::bind("v2").expect("bind v2"),
    )
}

/// SIGKILL mid-pause and at an indefinite pause: each restart resumes the same revision, step and
/// weight from `stateDir`, and the rollout goes on to its promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_resume_the_same_step_and_weight() {
    let (v1, v2) = backends();
    let setup = Setup::new();
    setup.write_config(
        &v1,
        &v2,
        "          - setWeight: 10
          - pause: {duration: 4s}
          - setWeight: 30
          - pause: {}
          - setWeight: 60
          - pause: {duration: 500ms}",
    );
    let status_cli = has_status_command();

    // 1. Killed while pausing 4 s at weight 10.
    let mut weir = setup.start().await;
    let before = setup
        .wait_for("the timed pause", Duration::from_secs(5), |s| {
            s["stepIndex"] == 1 && s["canaryWeight"] == 10.0
        })
        .await;
    let revision = before["revision"].clone();
    assert_eq!(revision, 1);
    weir.kill();
    let state_file = setup.state_dir().join("services/shop.json");
    assert!(state_file.is_file(), "the state is on disk");

    let mut weir = setup.start().await;
    let after = setup.shop().await;
    assert_eq!(after["revision"], revision, "{}", summary(&after));
    assert_eq!(after["stepIndex"], 1, "{}", summary(&after));
    assert_eq!(after["phase"], "Progressing", "{}", summary(&after));
    let weight = after["canaryWeight"].as_f64().expect("a weight");
    assert!(
        weight <= 10.0,
        "no more canary traffic than before: {weight}"
    );
    let canary = setup.count_canary(50).await;
    assert!(canary.abs_diff(5) <= 1, "{canary} of 50 at 10%");

    // 2. The rollout continues to the indefinite pause; killed there.
    let paused = setup
        .wait_for("the indefinite pause", Duration::from_secs(10), |s| {
            s["phase"] == "Paused"
        })
        .await;
    assert_eq!(
        (&paused["stepIndex"], &paused["canaryWeight"]),
        (&Value::from(3), &Value::from(30.0)),
        "{}",
        summary(&paused)
    );
    if status_cli {
        let (code, out) = setup.cli(&["status", "shop", "--timeout", "1s"]).await;
        assert_eq!(code.code(), Some(2), "weir status while paused:\n{out}");
    }
    weir.kill();

    let _weir = setup.start().await;
    let after = setup.shop().await;
    assert_eq!(after["revision"], revision);
    assert_eq!(after["phase"], "Paused", "{}", summary(&after));
    assert_eq!(after["stepIndex"], 3, "{}", summary(&after));
    assert_eq!(after["canaryWeight"], 30.0, "{}", summary(&after));
    assert_eq!(after["pauseReason"], "Step", "{}", summary(&after));
    let canary = setup.count_canary(100).await;
    assert!(canary.abs_diff(30) <= 1, "{canary} of 100 at 30%");

    // 3. Promote: it goes on from the same step and is promoted.
    let (status, body) = http(setup.admin, "POST", "/api/v1/services/shop/promote")
        .await
        .expect("promote");
    assert_eq!(status, 200, "{body}");
    let done = setup
        .wait_for("promotion", Duration::from_secs(10), |s| {
            s["phase"] != "Paused" && s["phase"] != "Progressing"
        })
        .await;
    assert_eq!(done["phase"], "Healthy", "{}", summary(&done));
    assert_eq!(done["canaryWeight"], 100.0);
    assert_eq!(done["revision"], revision);
    let history = done["history"].as_array().expect("a history");
    assert_eq!(
        history.len(),
        1,
        "one revision across three runs: {history:?}"
    );
    assert_eq!(history[0]["outcome"], "Promoted");
    assert_eq!(setup.count_canary(20).await, 20);
    if status_cli {
        let (code, out) = setup.cli(&["status", "shop", "--timeout", "1s"]).await;
        assert_eq!(code.code(), Some(0), "weir status after promotion:\n{out}");
        assert!(out.contains("Healthy"), "{out}");
    } else {
        eprintln!("weir has no `status` subcommand: its exit codes were not checked");
    }
}

/// A state file that cannot be read: weir starts anyway, serves stable at 100% and waits for an
/// operator, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_state_file_starts_paused_on_stable() {
    let (v1, v2) = backends();
    let setup = Setup::new();
    setup.write_config(
        &v1,
        &v2,
        "          - setWeight: 50
          - pause: {}",
    );
    let services = setup.state_dir().join("services");
    std::fs::create_dir_all(&services).expect("create the state folder");
    std::fs::write(
        services.join("shop.json"),
        "{ this is not rollout state\n\0\u{1}",
    )
    .expect("write garbage");

    let _weir = setup.start().await;
    let shop = setup.shop().await;
    assert_eq!(shop["phase"], "Paused", "{}", summary(&shop));
    assert_eq!(shop["canaryWeight"], 0.0, "{}", summary(&shop));
    assert_eq!(shop["pauseReason"], "StateUnreadable", "{}", summary(&shop));
    let message = shop["message"].as_str().expect("a message");
    assert!(message.contains("state file unreadable"), "{message}");
    assert!(message.contains("shop.json"), "{message}");
    assert_eq!(setup.count_canary(50).await, 0, "stable serves everything");
    assert!(
        services.join("shop.json.corrupt").is_file(),
        "the unreadable file is kept aside"
    );
    if has_status_command() {
        let (code, out) = setup.cli(&["status", "shop", "--timeout", "1s"]).await;
        assert_eq!(code.code(), Some(2), "weir status while paused:\n{out}");
    }
}

fn validate(files: &[&Path]) -> Output {
    Command::new(WEIR)
        .arg("validate")
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("run weir validate")
}

/// `weir validate` names each problem by its field path and exits 64; valid files exit 0.
#[test]
fn validate_prints_the_field_path_and_exits_64() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let header = "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nservices:\n";
    let service = "  - name: shop\n    match: {hosts: [\"shop.example.com\"]}\n    stable: {version: v1, upstreams: [\"127.0.0.1:9001\"]}\n    canary: {version: v2, upstreams: [\"127.0.0.1:9002\"], weight: 10}\n";
    let valid = format!("{header}{service}");
    let cases = [
        (
            valid.replace("weight: 10", "weight: 101"),
            "services[0].canary.weight: must be between 0 and 100, got 101",
        ),
        (
            format!("{valid}    colour: blue\n"),
            "services[0].colour: unknown field \"colour\"",
        ),
        (
            valid.replace("127.0.0.1:9001", "localhost:99999"),
            "services[0].stable.upstreams[0]: invalid upstream address \"localhost:99999\"",
        ),
        (
            format!("{valid}    upstream: {{connectTimeout: 10 parsecs}}\n"),
            "services[0].upstream.connectTimeout: invalid duration \"10 parsecs\"",
        ),
        (
            format!(
                "{valid}{}",
                service.replace("shop.example.com", "api.example.com")
            ),
            "services[1].name: duplicate service name \"shop\"",
        ),
        (
            format!("{header}  - name: shop\n"),
            "services[0].stable: missing required field",
        ),
        (
            format!("{valid}{}", service.replace("name: shop", "name: other")),
            "services[1].match: host \"shop.example.com\" with pathPrefix \"/\" is already routed by service \"shop\"",
        ),
        (format!("{header}services: [\n"), "invalid YAML"),
    ];
    for (i, (text, problem)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&path, text).expect("write");
        let output = validate(&[&path]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{problem}: {stderr}");
        assert!(
            stderr.lines().any(|line| line.starts_with(problem)),
            "expected a line starting with {problem:?} in:\n{stderr}"
        );
    }

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, &valid).expect("write");
    let output = validate(&[&good]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("good.yaml: ok"));

    // One bad file among good ones fails the whole run.
    let bad = dir.path().join("bad-0.yaml");
    assert_eq!(validate(&[&good, &bad]).status.code(), Some(64));

    // The shipped examples are valid.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("deploy/examples")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let output = validate(&refs);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Blue-green: SIGKILL between the switch and the end of post-promotion analysis. The restart
/// resumes in the same phase — green still serves everything, the analysis goes on — and the
/// rollout ends Healthy with one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_a_blue_green_switch_resumes_post_promotion_analysis() {
    let (v1, v2) = backends();
    let setup = Setup::new();
    let strategy = format!(
        r#"      blueGreen:
        preview: {{hosts: ["preview.example.com"]}}
        postPromotionAnalysis: {{templates: [{{templateName: green-answers}}]}}
        scaleDownDelay: 1s
analysisTemplates:
  - name: green-answers
    metrics:
      - name: green-answers
        interval: 400ms
        count: 12
        successCondition: result == 200
        provider: {{web: {{url: "http://{v2}/"}}}}"#,
        v2 = v2.addr()
    );
    setup.write_config_with(&v1, &v2, &strategy);

    let mut weir = setup.start().await;
    let switched = setup
        .wait_for("the switch", Duration::from_secs(10), |s| {
            s["canaryWeight"] == 100.0 && s["phase"] == "Progressing"
        })
        .await;
    let revision = switched["revision"].clone();
    assert_eq!(
        setup.count_canary(10).await,
        10,
        "green serves after the switch"
    );
    weir.kill();

    let _weir = setup.start().await;
    let after = setup.shop().await;
    assert_eq!(after["revision"], revision, "{}", summary(&after));
    assert_eq!(after["phase"], "Progressing", "{}", summary(&after));
    assert_eq!(after["canaryWeight"], 100.0, "{}", summary(&after));
    assert_eq!(
        setup.count_canary(10).await,
        10,
        "still switched after the restart"
    );

    let done = setup
        .wait_for(
            "the end of post-promotion analysis",
            Duration::from_secs(15),
            |s| s["phase"] != "Progressing",
        )
        .await;
    assert_eq!(done["phase"], "Healthy", "{}", summary(&done));
    assert_eq!(done["stableVersion"], "v2");
    let history = done["history"].as_array().expect("a history");
    assert_eq!(
        history.len(),
        1,
        "one revision across two runs: {history:?}"
    );
    assert_eq!(history[0]["outcome"], "Promoted");
}

/// The pid of the newest weir that took over (from the old one's log line), after `n` of them.
fn takeover_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|line| line.contains("the new weir serves"))
        .filter_map(|line| {
            let at = line.find("pid=")? + 4;
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Kills (SIGKILL) the weir processes started by upgrades when the test ends, however it ends.
struct Descendants(std::sync::Mutex<Vec<u32>>);

impl Drop for Descendants {
    fn drop(&mut self) {
        for pid in self.0.lock().map(|p| p.clone()).unwrap_or_default() {
            if alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Requests sent by the load task, by outcome.
#[derive(Default)]
struct Load {
    sent: std::sync::atomic::AtomicU64,
    ok: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// One client loop: `GET /` through weir until `stop`, over keep-alive connections (hyper's
/// pooled client, which like every HTTP client sends a request again when a pooled connection
/// turns out to be closed before the request was written) or a new connection per request.
async fn client_loop(
    addr: SocketAddr,
    keep_alive: bool,
    load: std::sync::Arc<Load>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::Ordering::Relaxed;
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    if !keep_alive {
        builder.pool_max_idle_per_host(0);
    }
    let client = builder.build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
    while !*stop.borrow() {
        let mut request = http::Request::get(uri.clone()).header("host", "shop.example.com");
        if !keep_alive {
            request = request.header("connection", "close");
        }
        let request = request.body(Empty::new()).expect("request");
        load.sent.fetch_add(1, Relaxed);
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            if status != 200 {
                return Err(format!("status {status}: {:?}", body.to_bytes()));
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()));
        match answer {
            Ok(()) => load.ok.fetch_add(1, Relaxed),
            Err(error) => {
                if let Ok(mut errors) = load.errors.lock() {
                    errors.push(format!("keep-alive {keep_alive}: {error}"));
                }
                load.failed.fetch_add(1, Relaxed)
            }
        };
    }
}

/// `kill -USR2` 20 times in a row under constant load (new and keep-alive connections): each
/// time a new weir takes the listening sockets over and the old one drains and exits; not one
/// request fails, and the rollout state carries over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_binary_upgrades_under_load_lose_no_request() {
    use std::sync::atomic::Ordering::Relaxed;
    const UPGRADES: usize = 20;
    let (v1, v2) = backends();
    let setup = Setup::new();
    setup.write_config(&v1, &v2, "          - setWeight: 20\n          - pause: {}");
    let mut first = setup.start().await;
    setup
        .wait_for("20%", Duration::from_secs(5), |s| s["canaryWeight"] == 20.0)
        .await;
    let descendants = Descendants(std::sync::Mutex::new(Vec::new()));

    let load = std::sync::Arc::new(Load::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for keep_alive in [true, true, false, false] {
        clients.push(tokio::spawn(client_loop(
            setup.public,
            keep_alive,
            load.clone(),
            stopped.clone(),
        )));
    }
    // Traffic flows before the first upgrade.
    let deadline = Instant::now() + Duration::from_secs(5);
    while load.ok.load(Relaxed) < 50 {
        assert!(Instant::now() < deadline, "no traffic through weir");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let mut pid = first.child.as_ref().expect("weir runs").id();
    let mut times = Vec::new();
    for upgrade in 1..=UPGRADES {
        let began = Instant::now();
        signal(pid, "USR2");
        let deadline = Instant::now() + Duration::from_secs(20);
        let next = loop {
            let pids = takeover_pids(&setup.log());
            if pids.len() >= upgrade {
                break pids[upgrade - 1];
            }
            assert!(
                Instant::now() < deadline,
                "upgrade {upgrade}: no new weir after 20 s:\n{}",
                setup.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Ok(mut pids) = descendants.0.lock() {
            pids.push(next);
        }
        times.push(began.elapsed());
        // The old one drains and exits.
        let deadline = Instant::now() + Duration::from_secs(10);
        let gone = |first: &mut Guard| {
            if upgrade == 1 {
                first.exited().is_some()
            } else {
                !alive(pid)
            }
        };
        while !gone(&mut first) {
            assert!(
                Instant::now() < deadline,
                "upgrade {upgrade}: the old weir {pid} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pid = next;
    }
    let elapsed = started.elapsed();
    // A moment of traffic on the last one, then stop.
    let served = load.ok.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while load.ok.load(Relaxed) < served + 50 {
        assert!(Instant::now() < deadline, "the last weir does not serve");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    for client in clients {
        client.await.expect("client loop");
    }
    assert!(
        first.exited().is_some_and(|s| s.success()),
        "the first weir exits cleanly"
    );

    let (sent, ok, failed) = (
        load.sent.load(Relaxed),
        load.ok.load(Relaxed),
        load.failed.load(Relaxed),
    );
    let mean = times.iter().sum::<Duration>() / UPGRADES as u32;
    let slowest = times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{UPGRADES} upgrades under load in {elapsed:.1?}: {sent} requests sent, {ok} ok, {failed} failed; signal → new weir serving: mean {mean:.0?}, slowest {slowest:.0?}"
    );
    let errors = load.errors.lock().map(|e| e.clone()).unwrap_or_default();
    assert_eq!(failed, 0, "failed requests: {errors:#?}");
    assert_eq!(sent, ok);
    // The rollout state carried over every hand-over.
    let shop = setup.shop().await;
    assert_eq!(shop["canaryWeight"], 20.0, "{}", summary(&shop));
    assert_eq!(shop["phase"], "Paused", "{}", summary(&shop));
    assert!(alive(pid), "the last weir serves");
    drop(descendants);
}

/// An upgrade whose new process cannot start (here: the config became invalid) changes nothing:
/// the old weir keeps serving and its rollouts go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_keeps_the_old_weir_serving() {
    let (v1, v2) = backends();
    let setup = Setup::new();
    setup.write_config(&v1, &v2, "          - setWeight: 20\n          - pause: {}\n          - setWeight: 50\n          - pause: {}");
    let mut weir = setup.start().await;
    setup
        .wait_for("20%", Duration::from_secs(5), |s| s["canaryWeight"] == 20.0)
        .await;
    std::fs::write(setup.config_path(), "listeners: not a list\n").expect("write");
    let began = Instant::now();
    signal(weir.child.as_ref().expect("weir runs").id(), "USR2");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !setup.log().contains("upgrade failed") {
        assert!(
            Instant::now() < deadline,
            "no failed upgrade:\n{}",
            setup.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(weir.exited().is_none(), "the old weir still runs");
    assert_eq!(proxied(setup.public).await.0, 200);
    let (status, body) = http(setup.admin, "POST", "/api/v1/services/shop/promote")
        .await
        .expect("promote");
    assert_eq!(status, 200, "rollouts go on after a failed upgrade: {body}");
    setup
        .wait_for("50%", Duration::from_secs(5), |s| s["canaryWeight"] == 50.0)
        .await;
    eprintln!(
        "failed upgrade (new weir exited 64 on an invalid config): old weir kept serving, rollout resumed ({:.0?})",
        began.elapsed()
    );
}

/// A state file written by a newer weir is refused with a clear message and left untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_from_a_newer_weir_is_refused_and_kept() {
    let (v1, v2) = backends();
    let setup = Setup::new();
    setup.write_config(&v1, &v2, "          - setWeight: 20\n          - pause: {}");
    let services = setup.state_dir().join("services");
    std::fs::create_dir_all(&services).expect("state dir");
    let newer = r#"{"format": 99, "rollout": {"service": "shop", "somethingNew": true}}"#;
    std::fs::write(services.join("shop.json"), newer).expect("write");
    let log = File::create(setup.log_path()).expect("log");
    let weir = Guard::spawn(
        Command::new(WEIR)
            .args(["run", "--config"])
            .arg(setup.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log),
        "weir run",
    );
    let status = weir.wait(Duration::from_secs(20)).await;
    assert!(!status.success(), "weir must not start:\n{}", setup.log());
    let log = setup.log();
    assert!(
        log.contains("written by a newer weir (state format 99"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(services.join("shop.json")).expect("kept"),
        newer,
        "the file is untouched"
    );
    eprintln!("state format 99: weir refused to start ({status}), file kept");
}

/// `weir validate` works offline: a host name that does not resolve is a warning at its field
/// path (weir run would refuse it until it resolves), not an invalid file.
#[test]
fn validate_reports_an_unresolvable_host_name_as_a_warning() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("names.yaml");
    // `.invalid` never resolves (RFC 6761).
    std::fs::write(
        &path,
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nservices:\n  - name: shop\n    stable: {version: v1, upstreams: [\"127.0.0.1:9001\", \"backend.weir-test.invalid:9002\"]}\n",
    )
    .expect("write");
    let started = Instant::now();
    let output = validate(&[&path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("names.yaml: ok"));
    assert!(
        stderr.lines().any(|l| l.starts_with(
            "warning: services[0].stable.upstreams[1]: cannot resolve \"backend.weir-test.invalid:9002\""
        )),
        "{stderr}"
    );
    eprintln!(
        "weir validate with an unresolvable host name: exit 0, 1 warning, in {:?}",
        started.elapsed()
    );
}

/// `weir run --access-log --access-log-format json`: the real binary writes one JSON object per
/// request on stdout (its own logs stay on stderr), each naming the version that answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_goes_to_stdout_as_json_lines_naming_the_version() {
    let (v1, v2) = backends();
    let setup = Setup::new();
    setup.write_config(
        &v1,
        &v2,
        "          - setWeight: 50
          - pause: {}",
    );
    let access = setup.dir.path().join("access.log");
    let stdout = File::create(&access).expect("create the access log file");
    let stderr = File::create(setup.log_path()).expect("create the log file");
    let mut weir = Guard::spawn(
        Command::new(WEIR)
            .arg("run")
            .arg("--config")
            .arg(setup.config_path())
            .args(["--workers", "1", "--drain-timeout", "1s"])
            .args(["--access-log", "--access-log-format", "json"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr),
        "weir run --access-log",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(http(setup.admin, "GET", "/readyz").await, Ok((200, _))) {
        assert!(weir.exited().is_none(), "weir exited:\n{}", setup.log());
        assert!(
            Instant::now() < deadline,
            "weir not ready:\n{}",
            setup.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setup
        .wait_for("weight 50", Duration::from_secs(10), |s| {
            s["canaryWeight"] == 50.0
        })
        .await;
    let mut served = Vec::new();
    for _ in 0..20 {
        let (status, version) = proxied(setup.public).await;
        assert_eq!(status, 200);
        served.push(version);
    }
    let lines = loop {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= served.len() {
            break lines;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "only {} access lines:\n{text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), served.len(), "{lines:?}");
    for (line, version) in lines.iter().zip(&served) {
        let json: Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(json["version"], version.as_str(), "{line}");
        assert_eq!(json["service"], "shop");
        assert_eq!(json["status"], 200);
    }
    assert!(
        !setup.log().contains("\"bytes_sent\""),
        "no access line on stderr"
    );
    let canary = served.iter().filter(|v| *v == "v2").count();
    assert_eq!(canary, 10);
    eprintln!("weir run --access-log: 20 JSON lines on stdout, {canary} naming v2, the rest v1");
    weir.kill();
}

/// Without `stateDir`, state goes next to the config file (`weir.state/`, 0700): an aborted
/// canary stays aborted across SIGKILL and gets no request; a promoted one is not rolled out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_dir_a_restart_keeps_an_abort_and_a_promotion() {
    use std::os::unix::fs::PermissionsExt as _;

    let clock = Instant::now();
    let (v1, v2) = backends();
    let setup = Setup::new();
    setup.write_config(
        &v1,
        &v2,
        "          - setWeight: 50
          - pause: {}",
    );
    setup.drop_state_dir();
    let mut weir = setup.start().await;
    let folder = setup.dir.path().join("weir.state");
    let report = setup.config_report().await;
    assert_eq!(report["stateDir"], folder.display().to_string(), "{report}");
    assert_eq!(
        report["stateDirOrigin"], "next to the config file",
        "{report}"
    );
    let mode = std::fs::metadata(&folder)
        .expect("the state folder")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    assert!(
        setup
            .log()
            .contains(&format!("rollout state is kept in {}", folder.display())),
        "the folder is logged:\n{}",
        setup.log()
    );
    setup
        .wait_for("Paused at 50%", Duration::from_secs(10), |s| {
            s["phase"] == "Paused" && s["canaryWeight"] == 50.0
        })
        .await;
    let (code, out) = setup.cli(&["abort", "shop"]).await;
    assert!(code.success(), "weir abort: {out}");
    setup
        .wait_for("Degraded", Duration::from_secs(10), |s| {
            s["phase"] == "Degraded"
        })
        .await;

    weir.kill();
    let mut weir = setup.start().await;
    let shop = setup.shop().await;
    assert_eq!(shop["phase"], "Degraded", "{}", summary(&shop));
    assert_eq!(shop["revision"], 1, "{}", summary(&shop));
    let canary = setup.count_canary(100).await;
    assert_eq!(
        canary, 0,
        "the aborted canary gets nothing after the restart"
    );

    // Promoted, killed, restarted: still promoted, same revision, nothing started again.
    let (code, out) = setup.cli(&["retry", "shop"]).await;
    assert!(code.success(), "weir retry: {out}");
    setup
        .wait_for("Paused at 50%", Duration::from_secs(10), |s| {
            s["phase"] == "Paused" && s["canaryWeight"] == 50.0
        })
        .await;
    let (code, out) = setup.cli(&["promote", "shop", "--full"]).await;
    assert!(code.success(), "weir promote --full: {out}");
    setup
        .wait_for("promoted", Duration::from_secs(10), |s| {
            s["phase"] == "Healthy" && s["canaryWeight"] == 100.0
        })
        .await;
    weir.kill();
    let _weir = setup.start().await;
    let shop = setup.shop().await;
    assert_eq!(shop["phase"], "Healthy", "{}", summary(&shop));
    assert_eq!(shop["canaryWeight"], 100.0, "{}", summary(&shop));
    assert_eq!(shop["revision"], 1, "{}", summary(&shop));
    assert_eq!(
        setup.count_canary(50).await,
        50,
        "the promoted version serves everything"
    );
    let events = shop["events"].as_array().expect("events");
    let started = events.iter().filter(|e| e["kind"] == "Started").count();
    assert_eq!(started, 1, "no rollout started again: {events:?}");
    eprintln!(
        "no stateDir: aborted canary got {canary}/100 requests after SIGKILL + restart; promoted stayed promoted (revision 1, 50/50 on v2); {:.1}s",
        clock.elapsed().as_secs_f64()
    );
}

/// `weir status` run right after the config file changed reports the new content's outcome,
/// never the old one's; a refused file makes it exit 1 with the problems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_right_after_an_edit_reports_the_new_config() {
    let (v1, v2) = backends();
    let v3 = Backend::bind("v3").expect("bind v3");
    let setup = Setup::new();
    setup.write_config(
        &v1,
        &v2,
        "          - setWeight: 50
          - pause: {}",
    );
    let _weir = setup.start().await;
    setup
        .wait_for("Paused at 50%", Duration::from_secs(10), |s| {
            s["phase"] == "Paused"
        })
        .await;
    let (code, out) = setup.cli(&["abort", "shop"]).await;
    assert!(code.success(), "weir abort: {out}");
    setup
        .wait_for("Degraded", Duration::from_secs(10), |s| {
            s["phase"] == "Degraded"
        })
        .await;
    let before = setup.config_report().await;
    assert_eq!(before["generation"], 1, "{before}");

    // The old state is Degraded (exit 1); the new file rolls v3 out in ~1 s (exit 0).
    setup.edit_config(
        &format!("version: v2, upstreams: [\"{}\"]", v2.addr()),
        &format!("version: v3, upstreams: [\"{}\"]", v3.addr()),
    );
    setup.edit_config("          - pause: {}", "          - pause: {duration: 1s}");
    let start = Instant::now();
    let (code, out) = setup.cli(&["status", "shop", "--timeout", "8s"]).await;
    let took = start.elapsed();
    assert_eq!(code.code(), Some(0), "weir status after the edit:\n{out}");
    assert!(out.contains("Healthy") && out.contains("v3"), "{out}");
    assert!(
        !out.contains("Degraded"),
        "the old state was reported:\n{out}"
    );
    let after = setup.config_report().await;
    assert_eq!(after["generation"], 2, "{after}");
    let shop = setup.shop().await;
    assert_eq!(shop["observedGeneration"], 2, "{}", summary(&shop));

    // A content weir has not applied (another file): the rollout's state is not reported.
    let other = setup.dir.path().join("other.yaml");
    let text = std::fs::read_to_string(setup.config_path()).expect("read the config");
    std::fs::write(&other, format!("{text}# not applied\n")).expect("write");
    let other = other.display().to_string();
    let (code, out) = setup
        .cli(&["status", "shop", "--timeout", "1s", "--config", &other])
        .await;
    assert_eq!(
        code.code(),
        Some(2),
        "weir status on a content not applied:\n{out}"
    );
    assert!(out.contains("has not applied"), "{out}");
    assert!(!out.contains("Healthy"), "{out}");

    // A file weir refuses: exit 1 naming the problem, with --config given.
    setup.edit_config("setWeight: 50", "setWeight: 500");
    let path = setup.config_path().display().to_string();
    let (code, out) = setup
        .cli(&["status", "shop", "--timeout", "8s", "--config", &path])
        .await;
    assert_eq!(
        code.code(),
        Some(1),
        "weir status on a refused file:\n{out}"
    );
    assert!(out.contains("weir refused"), "{out}");
    assert!(out.contains("setWeight"), "the problem is printed:\n{out}");
    eprintln!(
        "weir status right after an edit: waited for config generation 2 and reported v3 Healthy in {:.1}s (old state: Degraded); refused file: exit 1",
        took.as_secs_f64()
    );
}

/// Under systemd (`StateDirectory=` sets `$STATE_DIRECTORY`, possibly a `:`-separated list) and
/// without `stateDir`, state goes to the first folder listed, and survives a SIGKILL there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_dir_systemd_state_directory_is_used() {
    let (v1, v2) = backends();
    let setup = Setup::new();
    setup.write_config(
        &v1,
        &v2,
        "          - setWeight: 30
          - pause: {}",
    );
    setup.drop_state_dir();
    let first = setup.dir.path().join("systemd-state");
    let list = std::ffi::OsString::from(format!(
        "{}:{}",
        first.display(),
        setup.dir.path().join("second").display()
    ));
    let mut weir = setup
        .start_with_state_directory(Some(Path::new(&list)))
        .await;
    let report = setup.config_report().await;
    assert_eq!(report["stateDir"], first.display().to_string(), "{report}");
    assert_eq!(report["stateDirOrigin"], "$STATE_DIRECTORY", "{report}");
    setup
        .wait_for("Paused at 30%", Duration::from_secs(10), |s| {
            s["phase"] == "Paused" && s["canaryWeight"] == 30.0
        })
        .await;
    assert!(first.join("services").join("shop.json").is_file());
    assert!(!setup.dir.path().join("weir.state").exists());
    weir.kill();
    let _weir = setup
        .start_with_state_directory(Some(Path::new(&list)))
        .await;
    let shop = setup.shop().await;
    assert_eq!(
        (shop["phase"].as_str(), shop["canaryWeight"].as_f64()),
        (Some("Paused"), Some(30.0)),
        "{}",
        summary(&shop)
    );
    eprintln!(
        "$STATE_DIRECTORY (2 paths): state in the first; resumed Paused at 30% after SIGKILL"
    );
}

/// `weir validate` refuses a CEL syntax error, a function the evaluator does not provide and a
/// bad `jsonPath`, each with its field path, in one run (issue #9: at load, not at run time).
#[test]
fn validate_reports_bad_conditions_and_json_paths_with_their_paths() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("weir.yaml");
    std::fs::write(
        &path,
        r#"listeners: [{ name: public, address: "127.0.0.1:8080" }]
services: [{ name: s, stable: { version: v1, upstreams: ["127.0.0.1:9001"] } }]
analysisTemplates:
  - name: t
    metrics:
      - name: syntax
        successCondition: 'result >= 0.99 &&'
        provider: { builtin: { metric: success-rate } }
      - name: function
        successCondition: 'avg(result) >= 0.99'
        provider: { builtin: { metric: success-rate } }
      - name: web
        successCondition: result == "ok"
        provider: { web: { url: "http://127.0.0.1:9/x", jsonPath: "$.data[" } }
"#,
    )
    .expect("write the config");
    let out = validate(&[&path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
    for needle in [
        "analysisTemplates[0].metrics[0].successCondition: ",
        "analysisTemplates[0].metrics[1].successCondition: ",
        "unknown function `avg`",
        "analysisTemplates[0].metrics[2].provider.web.jsonPath: ",
    ] {
        assert!(
            stdout.contains(needle) || stderr.contains(needle),
            "{needle} in:\n{stdout}{stderr}"
        );
    }
    eprintln!("weir validate, exit 64:\n{stderr}{stdout}");
}
