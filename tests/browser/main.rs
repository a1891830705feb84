//! The operator dashboard in a real browser: Debian's headless `chromium` driven over WebDriver
//! (`chromedriver`, package `chromium-driver`) with `fantoccini`, against weir started in-process.
//!
//! Without `chromium` and `chromedriver` on the `PATH` every test prints
//! `skipped: chromium not found (apt-get install chromium chromium-driver)` and passes, so
//! `cargo test --workspace` on a machine without a browser says plainly what it did not run
//! (`.ci/run` installs both). Each test saves a PNG screenshot under
//! `target/browser-screenshots/` and prints its path.
//!
//! One browser runs at a time (a process-wide lock): Chromium is heavy on a small machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use fantoccini::{Client, ClientBuilder, Locator};
use weir_control::demo::backend::Backend;
use weir_control::engine::rollout::Phase;
use weir_tests::client::{self, Http1};
use weir_tests::weir::{fill, Weir};

const HOST: &str = "shop.example.com";
/// How long the page may take to show a change.
const PAGE: Duration = Duration::from_secs(15);

static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `chromedriver` child process and a WebDriver session on headless Chromium.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    _one: tokio::sync::MutexGuard<'static, ()>,
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` (after saying so) when either
    /// is not installed.
    async fn start(test: &str) -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (
            find("chromium").or_else(|| find("chromium-browser")),
            find("chromedriver"),
        ) else {
            // Straight to stderr, past the test harness's capture, so a plain `cargo test`
            // says what it did not run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "browser test {test}: skipped: chromium not found (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        let one = ONE_BROWSER.lock().await;
        // A port the OS picked, free again for chromedriver to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver does not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session on chromium");
        Some(Browser {
            client,
            driver,
            _one: one,
        })
    }

    /// Waits until the first element matching `css` has text satisfying `done`; returns it.
    async fn wait_text(&self, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PAGE;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if done(&text) {
                        return text;
                    }
                    last = text;
                }
            }
            if Instant::now() >= deadline {
                let page = self
                    .client
                    .execute("return document.body.outerHTML", vec![])
                    .await
                    .unwrap_or_default();
                panic!("after {PAGE:?} the page never showed {what} ({css}); last text: {last:?}; page: {page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css` matches at least `n` elements.
    async fn wait_count(&self, css: &str, n: usize, what: &str) {
        let deadline = Instant::now() + PAGE;
        loop {
            let found = self
                .client
                .find_all(Locator::Css(css))
                .await
                .map_or(0, |v| v.len());
            if found >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {PAGE:?} the page never showed {what} ({css}: {found} of {n})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `script` (a JavaScript expression) is true in the page.
    async fn wait_js(&self, script: &str, what: &str) {
        let deadline = Instant::now() + PAGE;
        let script = format!("return Boolean({script})");
        loop {
            let value = self.client.execute(&script, vec![]).await;
            if matches!(value, Ok(serde_json::Value::Bool(true))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {PAGE:?} the page never showed {what}: {value:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(PAGE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Saves a PNG of the page under `target/browser-screenshots/` and prints its path.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("browser-screenshots");
        std::fs::create_dir_all(&dir).expect("the screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        let path = path.canonicalize().unwrap_or(path);
        eprintln!("{name}: screenshot {}", path.display());
        path
    }

    async fn close(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}

fn backends() -> (Backend, Backend) {
    (
        Backend::bind("v1").expect("bind v1"),
        Backend::bind("v2").expect("bind v2"),
    )
}

/// Service `shop` (v1 → v2) paused at 20% on a `pause: {}` step, then 50%, then 100%; `admin`
/// is the admin block's extra lines, `address` its address.
fn config(v1: &Backend, v2: &Backend, address: &str, admin: &str) -> String {
    let template = format!(
        r#"listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: {address}
{admin}services:
  - name: shop
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"]}}
    strategy:
      canary:
        steps:
          - setWeight: 20
          - pause: {{}}
          - setWeight: 50
          - pause: {{}}
"#
    );
    fill(&template, &[("v1", v1.addr()), ("v2", v2.addr())])
}

/// Paced requests to `shop` until dropped, so the charts and the observed share have data.
struct Traffic {
    stop: Arc<AtomicBool>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            let mut connection = Http1::connect(addr).await;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                connection.fetch(client::get(HOST, "/")).await;
            }
        });
        Traffic { stop }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn paused_shop(weir: &Weir, step: usize) {
    weir.wait_until("shop", Duration::from_secs(10), "the pause", |s| {
        s.phase == Phase::Paused && s.step_index == step
    })
    .await;
}

fn url(weir: &Weir, fragment: &str) -> String {
    format!("http://{}/{fragment}", weir.admin())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_lists_services_and_the_service_page_shows_steps_and_charts() {
    let Some(browser) = Browser::start("overview").await else {
        return;
    };
    let started = Instant::now();
    let (v1, v2) = backends();
    let weir = Weir::start(&config(&v1, &v2, "127.0.0.1:0", "")).await;
    paused_shop(&weir, 1).await;
    let traffic = Traffic::start(weir.addr());

    browser.client.goto(&url(&weir, "")).await.expect("open /");
    let row = browser
        .wait_text("tr[data-service=shop]", "the shop row", |t| {
            t.contains("Paused")
                && t.contains("v2")
                && t.contains("observed")
                && !t.contains("no traffic")
        })
        .await;
    assert!(row.contains("set 20.0%"), "{row}");
    assert!(
        row.contains("steps") && row.contains("step 2/4"),
        "strategy and step: {row}"
    );
    browser.screenshot("overview").await;

    browser.click("tr[data-service=shop] a").await;
    browser
        .wait_text("#step", "step 2 of 4", |t| t.contains("2/4"))
        .await;
    browser
        .wait_text("#steps li.current", "the current step", |t| {
            t.contains("until promoted")
        })
        .await;
    // Both versions drawn in every chart once a sample with traffic has been taken.
    browser
        .wait_count("#charts svg polyline", 8, "a line per version per chart")
        .await;
    // Lines of a few points each (one per sampling interval).
    browser
        .wait_js(
            "[...document.querySelectorAll('#charts polyline')].every(l => l.points.length >= 4)",
            "lines of 4 points",
        )
        .await;
    browser.screenshot("service").await;
    drop(traffic);
    eprintln!(
        "overview and service page (steps, 4 charts × 2 versions) shown in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    browser.close().await;
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_moves_the_rollout_on_live_and_abort_asks_first() {
    let Some(browser) = Browser::start("actions").await else {
        return;
    };
    let (v1, v2) = backends();
    let weir = Weir::start(&config(&v1, &v2, "127.0.0.1:0", "")).await;
    paused_shop(&weir, 1).await;
    browser
        .client
        .goto(&url(&weir, "#/services/shop"))
        .await
        .expect("open the service page");
    browser
        .wait_text("#step", "step 2/4", |t| t.contains("2/4"))
        .await;
    browser.wait_text("#live", "live", |t| t == "live").await;

    let clicked = Instant::now();
    browser.click("button[data-action=promote]").await;
    browser
        .wait_text("#step", "step 4/4 after promote", |t| t.contains("4/4"))
        .await;
    let shown = clicked.elapsed();
    assert_eq!(weir.status("shop").step_index, 3);
    assert!(browser
        .wait_text("#result", "the answer", |t| t.contains("200"))
        .await
        .contains("Promote shop"));

    // Abort asks first: cancel changes nothing.
    browser.click("button[data-action=abort]").await;
    browser
        .wait_text("#confirm-text", "the confirmation", |t| t.contains("Abort"))
        .await;
    browser.screenshot("abort-confirmation").await;
    browser.click("#confirm-cancel").await;
    browser
        .wait_text("#result", "cancelled", |t| t.contains("cancelled"))
        .await;
    assert_eq!(weir.status("shop").phase, Phase::Paused);
    browser.click("button[data-action=abort]").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_text("#phase", "Degraded", |t| t == "Degraded")
        .await;
    assert_eq!(weir.status("shop").phase, Phase::Degraded);
    browser.screenshot("degraded").await;
    eprintln!(
        "promote shown without reload {:.0} ms after the click; abort confirmed → Degraded",
        shown.as_secs_f64() * 1000.0
    );
    browser.close().await;
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_an_action_is_refused_without_it_and_succeeds_with_it() {
    let Some(browser) = Browser::start("token").await else {
        return;
    };
    let (v1, v2) = backends();
    let dir = tempfile::tempdir().expect("a folder for the token");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write the token");
    let admin = format!("  tokenFile: {}\n", token_file.display());
    let weir = Weir::start(&config(&v1, &v2, "127.0.0.1:0", &admin)).await;
    paused_shop(&weir, 1).await;
    browser
        .client
        .goto(&url(&weir, "#/services/shop"))
        .await
        .expect("open the service page");
    browser
        .wait_text("#step", "step 2/4", |t| t.contains("2/4"))
        .await;

    // Without a token: refused, and the page asks for one; cancelling leaves it refused.
    browser.click("button[data-action=promote]").await;
    browser
        .wait_text("#result", "the refusal", |t| t.contains("401"))
        .await;
    browser.screenshot("token-prompt").await;
    browser.click("#token-cancel").await;
    assert_eq!(weir.status("shop").step_index, 1);

    // A wrong token is refused too.
    browser.click("button[data-action=promote]").await;
    let input = browser
        .client
        .wait()
        .at_most(PAGE)
        .for_element(Locator::Css("#token-input"))
        .await
        .expect("the token field");
    input.send_keys("wrong").await.expect("type");
    browser.click("#token-ok").await;
    browser
        .wait_text("#result", "the second refusal", |t| t.contains("401"))
        .await;
    assert_eq!(weir.status("shop").step_index, 1);

    // The right token, through the header's token button, then the action succeeds.
    browser.click("#token-button").await;
    let input = browser
        .client
        .find(Locator::Css("#token-input"))
        .await
        .expect("the token field");
    input.clear().await.expect("clear");
    input.send_keys("s3cret-token").await.expect("type");
    browser.click("#token-ok").await;
    browser.click("button[data-action=promote]").await;
    browser
        .wait_text("#step", "step 4/4 with the token", |t| t.contains("4/4"))
        .await;
    browser
        .wait_text("#result", "the answer", |t| t.contains("200"))
        .await;
    // Kept for the tab only.
    let stored = browser
        .client
        .execute(
            "return [sessionStorage.getItem('weir.token'), localStorage.length]",
            vec![],
        )
        .await
        .expect("read storage");
    assert_eq!(stored, serde_json::json!(["s3cret-token", 0]));
    browser.screenshot("token-accepted").await;
    eprintln!("token: refused without (401), refused wrong (401), accepted right (200)");
    browser.close().await;
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_it_is_disconnected_and_recovers_when_weir_restarts() {
    let Some(browser) = Browser::start("restart").await else {
        return;
    };
    let (v1, v2) = backends();
    let weir = Weir::start(&config(&v1, &v2, "127.0.0.1:0", "")).await;
    paused_shop(&weir, 1).await;
    let admin = weir.admin();
    browser
        .client
        .goto(&url(&weir, "#/services/shop"))
        .await
        .expect("open the service page");
    browser.wait_text("#live", "live", |t| t == "live").await;
    weir.shutdown().await;
    let down = Instant::now();
    browser
        .wait_text("#live", "disconnected", |t| t.contains("disconnected"))
        .await;
    let noticed = down.elapsed();
    browser.screenshot("disconnected").await;

    // weir again on the same admin address (and a state folder of its own: the rollout starts over).
    let weir = Weir::start(&config(&v1, &v2, &admin.to_string(), "")).await;
    let back = Instant::now();
    paused_shop(&weir, 1).await;
    browser
        .wait_text("#live", "live again", |t| t == "live")
        .await;
    browser
        .wait_text("#step", "the step", |t| t.contains("2/4"))
        .await;
    let recovered = back.elapsed();
    browser.click("button[data-action=promote]").await;
    browser
        .wait_text("#step", "step 4/4 after the restart", |t| t.contains("4/4"))
        .await;
    browser.screenshot("reconnected").await;
    eprintln!(
        "restart: disconnection shown {:.1}s after weir stopped; page live again {:.1}s after it came back",
        noticed.as_secs_f64(),
        recovered.as_secs_f64()
    );
    browser.close().await;
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_pause_counts_down_and_measurements_show_against_their_threshold() {
    let Some(browser) = Browser::start("analysis").await else {
        return;
    };
    let started = Instant::now();
    let (v1, v2) = backends();
    let template = format!(
        r#"listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
services:
  - name: shop
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"]}}
    strategy:
      canary:
        steps:
          - setWeight: 30
          - pause: {{duration: 3s}}
          - analysis: {{templates: [{{templateName: success-rate}}]}}
          - pause: {{}}
analysisTemplates:
  - name: success-rate
    metrics:
      - name: success-rate
        interval: 500ms
        count: 3
        successCondition: result >= 0.95
        provider: {{builtin: {{metric: success-rate, window: 2s, minRequests: 5}}}}
"#
    );
    let yaml = fill(&template, &[("v1", v1.addr()), ("v2", v2.addr())]);
    let weir = Weir::start(&yaml).await;
    let traffic = Traffic::start(weir.addr());
    browser
        .client
        .goto(&url(&weir, "#/services/shop"))
        .await
        .expect("open the service page");
    let countdown = browser
        .wait_text("#steps li.current", "the pause's countdown", |t| {
            t.contains("pause 3s") && t.contains("s left")
        })
        .await;
    browser.screenshot("countdown").await;
    paused_shop(&weir, 3).await;
    browser
        .wait_text("#step", "the last pause", |t| t.contains("4/4"))
        .await;
    browser
        .wait_count(
            ".run [data-metric=success-rate] + .chart circle[data-verdict=successful]",
            3,
            "three measurements",
        )
        .await;
    browser
        .wait_count(".run line.threshold", 1, "the threshold line")
        .await;
    let metric = browser
        .wait_text(".run [data-metric=success-rate]", "the metric", |t| {
            t.contains("3 ok") && t.contains("success when result >= 0.95")
        })
        .await;
    browser.screenshot("analysis").await;
    drop(traffic);
    eprintln!(
        "analysis: countdown {countdown:?}; {metric:?} with its threshold drawn, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    browser.close().await;
    weir.shutdown().await;
}
