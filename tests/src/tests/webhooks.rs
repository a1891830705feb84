//! Flagger's webhooks against local stand-in servers (127.0.0.1:0) that record every call and
//! answer what the test says (a status, or never): gates hold until they answer 2xx, a
//! pre-rollout failure aborts before any canary request, a rollback hook's 2xx rolls back,
//! event hooks see every event in order, post-rollout hooks are told the outcome, a hanging
//! hook on one service never delays another, and a restart waits on the same gate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;
use weir_control::engine::rollout::Phase;

use crate::client::Http1;
use crate::upstream::Server;
use crate::weir::{Weir, HEADER};

/// A webhook receiver: records each call's JSON body and answers `status` (0: never answers).
struct Hook {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    calls: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    async fn start(status: u16) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a hook server");
        let addr = listener.local_addr().expect("local addr");
        let status = Arc::new(AtomicU16::new(status));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (st, cs) = (status.clone(), calls.clone());
        let task = tokio::spawn(async move {
            // Connections end with the accept loop (aborting it drops the set).
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, cs) = (st.clone(), cs.clone());
                connections.spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (st, cs) = (st.clone(), cs.clone());
                            async move {
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                cs.lock().expect("calls").push(json);
                                let status = st.load(Ordering::SeqCst);
                                if status == 0 {
                                    std::future::pending::<()>().await;
                                }
                                let response = hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"not yet")))
                                    .expect("a response");
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hook {
            addr,
            status,
            calls,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn calls(&self) -> Vec<Value> {
        self.calls.lock().expect("calls").clone()
    }

    /// Waits until a recorded call satisfies `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "hook never got {what}; calls: {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn service(name: &str, v1: &Server, v2: &Server, strategy: &str, hooks: &str) -> String {
    format!(
        r#"  - name: {name}
    match: {{hosts: ["{name}.example.com"]}}
    stable: {{version: v1, upstreams: ["{}"]}}
    canary: {{version: v2, upstreams: ["{}"]}}
    strategy:
      canary:
{strategy}        webhooks:
{hooks}"#,
        v1.addr(),
        v2.addr()
    )
}

fn message_has(needle: &'static str) -> impl Fn(&weir_control::api::v1::ServiceStatus) -> bool {
    move |s| s.message.contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_hold_until_2xx_and_event_and_post_rollout_hooks_are_told() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let start = Hook::start(403).await;
    let more = Hook::start(403).await;
    let approve = Hook::start(503).await;
    let told = Hook::start(200).await;
    let events = Hook::start(200).await;
    let hooks = format!(
        "          - {{name: start, type: confirm-rollout, url: \"{}\", interval: 200ms}}
          - {{name: more, type: confirm-traffic-increase, url: \"{}\", interval: 200ms}}
          - {{name: approve, type: confirm-promotion, url: \"{}\", interval: 200ms, metadata: {{env: prod}}}}
          - {{name: told, type: post-rollout, url: \"{}\"}}
          - {{name: events, type: event, url: \"{}\"}}
",
        start.url(),
        more.url(),
        approve.url(),
        told.url(),
        events.url()
    );
    let steps = "        steps: [{setWeight: 20}, {setWeight: 50}]\n";
    let yaml = format!(
        "{HEADER}services:\n{}",
        service("shop", &v1, &v2, steps, &hooks)
    );
    let began = Instant::now();
    let weir = Weir::start(&yaml).await;
    let wait = Duration::from_secs(15);

    let held = weir
        .wait_until(
            "shop",
            wait,
            "the confirm-rollout gate",
            message_has("confirm-rollout gate `start`"),
        )
        .await;
    assert_eq!((held.phase, held.canary_weight), (Phase::Paused, 0.0));
    start.wait_for("a second ask", |c| c.len() >= 2).await;
    let waiting = weir
        .wait_until(
            "shop",
            wait,
            "the last answer",
            message_has("last answer: answered 403: not yet"),
        )
        .await;
    assert_eq!(waiting.canary_weight, 0.0, "{}", waiting.message);
    start.answer(200);
    let held = weir
        .wait_until(
            "shop",
            wait,
            "the traffic-increase gate",
            message_has("confirm-traffic-increase gate `more`"),
        )
        .await;
    assert_eq!(held.canary_weight, 0.0, "even 0% → 20% waits");
    more.answer(200);
    let held = weir
        .wait_until(
            "shop",
            wait,
            "the promotion gate",
            message_has("confirm-promotion gate `approve`"),
        )
        .await;
    assert_eq!((held.phase, held.canary_weight), (Phase::Paused, 50.0));
    let asked = approve.wait_for("two asks", |c| c.len() >= 2).await;
    let body = &asked[0];
    assert_eq!(body["type"], "confirm-promotion");
    assert_eq!(body["service"], "shop");
    assert_eq!(body["webhook"], "approve");
    assert_eq!(body["canaryVersion"], "v2");
    assert_eq!(body["metadata"]["env"], "prod");
    let held_at = Instant::now();
    approve.answer(200);
    let done = weir
        .wait_until("shop", wait, "promotion", |s| s.phase == Phase::Healthy)
        .await;
    assert_eq!(done.stable_version, "v2", "{}", done.message);
    let opened_in = held_at.elapsed();

    let post = told.wait_for("the outcome", |c| !c.is_empty()).await;
    assert_eq!(post[0]["outcome"], "Promoted");
    assert_eq!(post[0]["type"], "post-rollout");
    // The event hook saw every event of the rollout, in order.
    let shown: Vec<String> = weir
        .status("shop")
        .details
        .expect("details")
        .events
        .iter()
        .map(|e| e.kind.clone())
        .collect();
    let received = events
        .wait_for("every event", |c| c.len() >= shown.len())
        .await;
    let received: Vec<String> = received
        .iter()
        .map(|c| c["event"]["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(received, shown);
    eprintln!(
        "3 gates held the rollout ({} confirm-rollout asks, {} confirm-promotion asks), promoted {:?} after the last 2xx, {} events delivered in order; whole test {:?}",
        start.calls().len(),
        approve.calls().len(),
        opened_in,
        received.len(),
        began.elapsed()
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_rollout_failure_aborts_with_no_canary_request_and_rollback_hook_rolls_back() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let (u1, u2) = (Server::spawn("v1"), Server::spawn("v2"));
    let smoke = Hook::start(500).await;
    let told = Hook::start(200).await;
    let undo = Hook::start(500).await;
    let flagger = "        analysis:
          interval: 300ms
          threshold: 2
          stepWeight: 50
          maxWeight: 50
          metrics: [{name: request-success-rate, thresholdRange: {min: 99}}]
";
    let smoke_hooks = format!(
        "          - {{name: smoke, type: pre-rollout, url: \"{}\"}}\n          - {{name: told, type: post-rollout, url: \"{}\"}}\n",
        smoke.url(),
        told.url()
    );
    let undo_hooks = format!(
        "          - {{name: undo, type: rollback, url: \"{}\", interval: 200ms}}\n",
        undo.url()
    );
    let yaml = format!(
        "{HEADER}services:\n{}{}",
        service("smoke", &v1, &v2, flagger, &smoke_hooks),
        service(
            "undo",
            &u1,
            &u2,
            "        steps: [{setWeight: 10}, {pause: {}}]\n",
            &undo_hooks
        )
    );
    let weir = Weir::start(&yaml).await;
    let wait = Duration::from_secs(15);
    // Clients keep coming while the pre-rollout hook fails.
    let mut client = Http1::connect(weir.addr()).await;
    let mut sent = 0;
    while weir.status("smoke").phase == Phase::Progressing {
        let reply = client.get("smoke.example.com", "/").await;
        assert_eq!(reply.served_by(), "v1");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let aborted = weir
        .wait_until("smoke", wait, "the abort", |s| s.phase == Phase::Degraded)
        .await;
    assert!(
        aborted
            .message
            .contains("pre-rollout webhook smoke answered 500"),
        "{}",
        aborted.message
    );
    assert_eq!(
        v2.requests(),
        0,
        "no canary request before the pre-rollout check passed"
    );
    assert_eq!(smoke.calls().len(), 2, "threshold 2");
    let post = told.wait_for("the outcome", |c| !c.is_empty()).await;
    assert_eq!(post[0]["outcome"], "Aborted");
    assert_eq!(post[0]["revert"]["abortedVersion"], "v2");
    assert_eq!(post[0]["revert"]["stableVersion"], "v1");
    assert!(
        post[0]["revert"]["configFile"]
            .as_str()
            .is_some_and(|f| f.ends_with("weir.yaml")),
        "{}",
        post[0]
    );

    // The rollback hook: asked while the rollout waits at `pause: {}`; its 2xx rolls back.
    weir.wait_until("undo", wait, "the pause", |s| s.phase == Phase::Paused)
        .await;
    undo.wait_for("two asks", |c| c.len() >= 2).await;
    assert_eq!(
        weir.status("undo").phase,
        Phase::Paused,
        "a 500 does not roll back"
    );
    undo.answer(200);
    let rolled = weir
        .wait_until("undo", wait, "the rollback", |s| s.phase == Phase::Degraded)
        .await;
    assert!(
        rolled
            .message
            .contains("rollback webhook `undo` answered 200"),
        "{}",
        rolled.message
    );
    assert_eq!(rolled.canary_weight, 0.0);
    eprintln!(
        "pre-rollout: aborted after {} failed calls with 0 of {sent} client requests on the canary; rollback hook: rolled back after {} asks",
        smoke.calls().len(),
        undo.calls().len()
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_never_delays_another_service() {
    let (a1, a2) = (Server::spawn("v1"), Server::spawn("v2"));
    let (b1, b2) = (Server::spawn("v1"), Server::spawn("v2"));
    let hang = Hook::start(0).await;
    let fine = Hook::start(200).await;
    let hang_hooks = format!(
        "          - {{name: stuck, type: confirm-promotion, url: \"{}\", timeout: 1s, interval: 200ms}}\n",
        hang.url()
    );
    let fine_hooks = format!(
        "          - {{name: check, type: rollout, url: \"{}\", interval: 200ms}}\n",
        fine.url()
    );
    let steps = "        steps: [{setWeight: 50}, {pause: {duration: 1s}}]\n";
    let yaml = format!(
        "{HEADER}services:\n{}{}",
        service("a", &a1, &a2, steps, &hang_hooks),
        service("b", &b1, &b2, steps, &fine_hooks)
    );
    let began = Instant::now();
    let weir = Weir::start(&yaml).await;
    let done = weir
        .wait_until("b", Duration::from_secs(5), "b's promotion", |s| {
            s.phase == Phase::Healthy
        })
        .await;
    let b_took = began.elapsed();
    assert_eq!(done.stable_version, "v2");
    assert!(b_took < Duration::from_secs(4), "b took {b_took:?}");
    let a = weir
        .wait_until(
            "a",
            Duration::from_secs(10),
            "a's timed-out gate",
            message_has("no response within 1s"),
        )
        .await;
    assert_eq!(a.phase, Phase::Paused, "{}", a.message);
    assert!(
        fine.calls().len() >= 2,
        "b's rollout hook was asked every interval"
    );
    let timeouts = crate::admin::metric(
        weir.admin(),
        r#"weir_webhook_calls_total{service="a",webhook="stuck",result="timeout"}"#,
    )
    .await;
    assert!(timeouts.is_some_and(|n| n >= 1.0), "{timeouts:?}");
    let successes = crate::admin::metric(
        weir.admin(),
        r#"weir_webhook_calls_total{service="b",webhook="check",result="success"}"#,
    )
    .await;
    assert!(successes.is_some_and(|n| n >= 2.0), "{successes:?}");
    eprintln!(
        "b promoted in {b_took:?} while a's gate hung ({} calls, each timing out after 1s)",
        hang.calls().len()
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_waits_on_the_same_gate() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let gate = Hook::start(403).await;
    let state = tempfile::tempdir().expect("a state folder");
    let hooks = format!(
        "          - {{name: approve, type: confirm-promotion, url: \"{}\", interval: 200ms}}\n",
        gate.url()
    );
    let yaml = format!(
        "{HEADER}stateDir: {}\nservices:\n{}",
        state.path().display(),
        service(
            "shop",
            &v1,
            &v2,
            "        steps: [{setWeight: 30}]\n",
            &hooks
        )
    );
    let wait = Duration::from_secs(15);
    let weir = Weir::start(&yaml).await;
    weir.wait_until(
        "shop",
        wait,
        "the gate",
        message_has("confirm-promotion gate `approve`"),
    )
    .await;
    gate.wait_for("an ask", |c| !c.is_empty()).await;
    weir.shutdown().await;
    let before = gate.calls().len();

    let weir = Weir::start(&yaml).await;
    let resumed = weir.status("shop");
    assert_eq!(resumed.phase, Phase::Paused, "{}", resumed.message);
    assert!(
        resumed.message.contains("confirm-promotion gate `approve`"),
        "{}",
        resumed.message
    );
    assert_eq!(resumed.canary_weight, 30.0, "never widened, never skipped");
    gate.wait_for("an ask after the restart", |c| c.len() > before)
        .await;
    gate.answer(200);
    let done = weir
        .wait_until("shop", wait, "promotion", |s| s.phase == Phase::Healthy)
        .await;
    assert_eq!(done.stable_version, "v2");
    eprintln!(
        "restart: resumed waiting on `approve` at 30% ({} asks before, {} in all), promoted after its 2xx",
        before,
        gate.calls().len()
    );
    weir.shutdown().await;
}

/// `python3 deploy/examples/hooks/revert-on-abort.py` on a free port, killed when dropped.
struct Reverter(std::process::Child, SocketAddr);

impl Reverter {
    fn start(repo: &std::path::Path) -> Reverter {
        use std::io::BufRead;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples/hooks/revert-on-abort.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .args(["--repo", &repo.display().to_string(), "--port", "0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the example hook");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the hook says where it listens");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Reverter(child, addr)
    }
}

impl Drop for Reverter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git(repo: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_post_rollout_hook_reverts_the_commit_of_an_aborted_canary() {
    let (v1, bad) = (Server::spawn("v1"), Server::spawn("bad"));
    let smoke = Hook::start(500).await;
    let repo = tempfile::tempdir().expect("a repository");
    let path = repo.path().join("weir.yaml");
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["config", "user.name", "weir test"]);
    git(repo.path(), &["config", "user.email", "weir@example.com"]);
    let reverter = Reverter::start(repo.path());
    let hooks = format!(
        "          - {{name: smoke, type: pre-rollout, url: \"{}\"}}\n          - {{name: revert, type: post-rollout, url: \"http://{}/\"}}\n",
        smoke.url(),
        reverter.1
    );
    let with_canary = format!(
        "{HEADER}services:\n{}",
        service(
            "shop",
            &v1,
            &bad,
            "        steps: [{setWeight: 10}]\n",
            &hooks
        )
    )
    .replace("version: v2", "version: bad");
    let stable_only = with_canary.replace(
        &format!(
            "    canary: {{version: bad, upstreams: [\"{}\"]}}\n",
            bad.addr()
        ),
        "",
    );
    assert_ne!(stable_only, with_canary);
    std::fs::write(&path, &stable_only).expect("write");
    git(repo.path(), &["add", "weir.yaml"]);
    git(repo.path(), &["commit", "-q", "-m", "checkout v1"]);
    std::fs::write(&path, &with_canary).expect("write");
    git(repo.path(), &["commit", "-q", "-am", "release bad"]);

    let began = Instant::now();
    let weir = Weir::start_at(repo, path, crate::weir::Options::default()).await;
    weir.wait_until("shop", Duration::from_secs(15), "the abort", |s| {
        s.phase == Phase::Degraded
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = git(weir.dir(), &["log", "--format=%s"]);
        if log.contains("Revert \"release bad\"") {
            break log;
        }
        assert!(Instant::now() < deadline, "never reverted; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(weir.config_path()).expect("read");
    assert!(!text.contains("version: bad"), "{text}");
    eprintln!(
        "revert-on-abort.py: `{}` committed {:?} after weir started; the config names no canary again",
        log.lines().next().unwrap_or(""),
        began.elapsed()
    );
    // weir sees the reverted file: no canary, v1 serves.
    weir.wait_until(
        "shop",
        Duration::from_secs(15),
        "the reverted config",
        |s| s.canary_version.is_none(),
    )
    .await;
    weir.shutdown().await;
    drop(reverter);
}
