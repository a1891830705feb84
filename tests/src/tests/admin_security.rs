//! Who gets into the admin API: only requests naming it in `Host` (DNS rebinding), no mutation a
//! browser marks as cross-origin (token or not), a token file rotated without a restart, TLS, and
//! the limits on connections, event streams and silent connections.

use std::net::SocketAddr;
use std::time::Duration;

use http::{header, HeaderValue, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_control::demo::backend::Backend;
use weir_control::engine::rollout::Phase;

use crate::admin::{self, Events};
use crate::body::TestBody;
use crate::certs::TestCa;
use crate::client::{self, Http1, Reply};
use crate::weir::{fill, Weir};

const PAUSE: &str = "/api/v1/services/shop/pause";
const RESUME: &str = "/api/v1/services/shop/resume";

/// What a case is, its extra headers, its body.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'static str);

/// `shop` rolling out v2 and waiting at an indefinite pause after 10%, with `admin` as the admin
/// block's extra lines (indented by two spaces).
fn rollout(v1: &Backend, v2: &Backend, admin: &str) -> String {
    let template = format!(
        r#"listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
{admin}services:
  - name: shop
    match: {{hosts: ["*"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"]}}
    strategy:
      canary:
        steps:
          - setWeight: 10
          - pause: {{}}
          - setWeight: 20
          - pause: {{}}
          - setWeight: 30
          - pause: {{}}
"#
    );
    fill(&template, &[("v1", v1.addr()), ("v2", v2.addr())])
}

async fn start(admin: &str) -> (Weir, Backend, Backend) {
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let weir = Weir::start(&rollout(&v1, &v2, admin)).await;
    weir.wait_until("shop", Duration::from_secs(5), "the pause at 10%", |s| {
        s.phase == Phase::Paused && s.canary_weight == 10.0
    })
    .await;
    (weir, v1, v2)
}

/// One request on a new connection, with `host` in `Host` and these extra headers.
async fn send(
    addr: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Reply {
    let body = if body.is_empty() {
        TestBody::empty()
    } else {
        TestBody::full(body)
    };
    let mut request = client::request(method, host, path, body);
    for (name, value) in headers {
        request.headers_mut().append(
            header::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    Http1::connect(addr).await.fetch(request).await
}

/// A raw HTTP/1.1 exchange (`Connection: close`); the status code.
async fn raw(addr: SocketAddr, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 5 s")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// With no token configured, a POST a web page could send — any `Origin` but the admin's own, a
/// `Sec-Fetch-Site` of `cross-site` or `same-site`, a `no-cors` text/plain form — is refused with
/// 403 and changes nothing; the CLI's request (neither header) and a same-origin one work.
#[tokio::test]
async fn cross_origin_mutations_are_refused_without_a_token() {
    let (weir, _v1, _v2) = start("").await;
    let admin = weir.admin();
    let own = admin.to_string();
    let own_origin = format!("http://{own}");
    let cases: Vec<Case<'_>> = vec![
        ("another site", vec![("origin", "http://evil.example")], ""),
        (
            "no-cors form (text/plain)",
            vec![
                ("origin", "https://evil.example"),
                ("content-type", "text/plain;charset=UTF-8"),
            ],
            "x",
        ),
        (
            "urlencoded form",
            vec![
                ("origin", "http://evil.example:8080"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "a=b",
        ),
        ("opaque origin", vec![("origin", "null")], ""),
        (
            "same host, other port",
            vec![("origin", "http://127.0.0.1:1")],
            "",
        ),
        (
            "same host, other scheme",
            vec![("origin", "https://127.0.0.1")],
            "",
        ),
        (
            "Sec-Fetch-Site cross-site",
            vec![("sec-fetch-site", "cross-site")],
            "",
        ),
        (
            "Sec-Fetch-Site same-site",
            vec![("sec-fetch-site", "same-site"), ("origin", &own_origin)],
            "",
        ),
        (
            "own Origin but cross-site fetch metadata",
            vec![("origin", &own_origin), ("sec-fetch-site", "cross-site")],
            "",
        ),
    ];
    let started = Instant::now();
    for (what, headers, body) in &cases {
        for path in [
            RESUME,
            "/api/v1/services/shop/promote?full=true",
            "/api/v1/services/shop/abort",
        ] {
            let reply = send(admin, Method::POST, &own, path, headers, body).await;
            assert_eq!(reply.status, 403, "{what} POST {path}: {}", reply.text());
        }
        // Any other unsafe method too.
        let reply = send(admin, Method::PUT, &own, RESUME, headers, body).await;
        assert_eq!(reply.status, 403, "{what} PUT");
    }
    let status = weir.status("shop");
    assert_eq!(
        (status.phase, status.canary_weight),
        (Phase::Paused, 10.0),
        "nothing changed"
    );
    eprintln!(
        "figure: {} cross-origin POSTs (9 kinds x 3 verbs) refused with 403 and none took effect, no token set ({:?})",
        cases.len() * 3,
        started.elapsed()
    );

    // Reads from a page are not mutations (and the browser keeps their answers from the page).
    let reply = send(
        admin,
        Method::GET,
        &own,
        "/api/v1/services",
        &[("origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    // The CLI sends neither header; a same-origin page (Sec-Fetch-Site: same-origin, or its own
    // Origin, `localhost` included) may act.
    let port = admin.port();
    let allowed: [(String, Vec<(&str, String)>); 3] = [
        (own.clone(), vec![]),
        (
            own.clone(),
            vec![
                ("origin", own_origin.clone()),
                ("sec-fetch-site", "same-origin".into()),
            ],
        ),
        (
            format!("localhost:{port}"),
            vec![("origin", format!("http://LOCALHOST:{port}"))],
        ),
    ];
    for (i, (host, headers)) in allowed.iter().enumerate() {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = send(admin, Method::POST, host, RESUME, &headers, "").await;
        assert_eq!(reply.status, 200, "{host} {headers:?}: {}", reply.text());
        if i < 2 {
            let weight = 20.0 + 10.0 * i as f64;
            weir.wait_until("shop", Duration::from_secs(5), "the next pause", |s| {
                s.phase == Phase::Paused && s.canary_weight == weight
            })
            .await;
        }
    }
    weir.shutdown().await;
}

/// A `Host` that is not the admin API (a rebinding attacker's name) is refused with 421 on every
/// route, reads included; its own `IP:PORT`, `localhost:PORT` and `admin.allowedHosts` names
/// work; a missing or repeated `Host` is 400, and an absolute-form URI must name it too.
#[tokio::test]
async fn a_wrong_host_is_refused_reads_included() {
    let (weir, _v1, _v2) =
        start("  allowedHosts: [\"weir-admin.internal\", \"ops.example:9000\"]\n").await;
    let admin = weir.admin();
    let port = admin.port();
    let paths = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/services",
        "/api/v1/services/shop",
        "/api/v1/services/shop/history",
        "/api/v1/events",
        "/nope",
    ];
    let wrong = [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.2:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1).max(1)),
        "127.0.0.1".to_string(),
        format!("localhost.evil.example:{port}"),
        format!("[::1]:{port}"),
        "ops.example:9001".to_string(),
        format!("weir-admin.internal.evil:{port}"),
    ];
    let mut refused = 0;
    for host in &wrong {
        for path in paths {
            let reply = send(admin, Method::GET, host, path, &[], "").await;
            assert_eq!(reply.status, 421, "GET {path} with Host {host}");
            refused += 1;
        }
        let reply = send(admin, Method::POST, host, PAUSE, &[], "").await;
        assert_eq!(reply.status, 421, "POST with Host {host}");
        refused += 1;
    }
    assert_eq!(weir.status("shop").phase, Phase::Paused);
    eprintln!(
        "figure: {refused} requests with {} wrong Host values refused with 421 (GET and POST)",
        wrong.len()
    );

    for host in [
        admin.to_string(),
        format!("LOCALHOST:{port}"),
        format!("localhost:{port}"),
        format!("weir-admin.internal:{port}"),
        "weir-admin.internal".to_string(),
        "ops.example:9000".to_string(),
    ] {
        let reply = send(admin, Method::GET, &host, "/api/v1/services", &[], "").await;
        assert_eq!(reply.status, 200, "Host {host}");
    }

    assert_eq!(
        raw(
            admin,
            &format!(
                "GET /healthz HTTP/1.1\r\nHost: {admin}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
            )
        )
        .await,
        400,
        "a repeated Host"
    );
    assert_eq!(
        raw(admin, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await,
        400,
        "no Host"
    );
    assert_eq!(
        raw(admin, "GET /healthz HTTP/1.0\r\n\r\n").await,
        400,
        "HTTP/1.0 without Host"
    );
    assert_eq!(
        raw(
            admin,
            &format!(
                "GET http://evil.example/healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
            )
        )
        .await,
        421,
        "an absolute-form URI naming another host"
    );
    assert_eq!(
        raw(
            admin,
            &format!(
                "GET http://{admin}/healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
            )
        )
        .await,
        200,
        "an absolute-form URI naming the admin API"
    );
    weir.shutdown().await;
}

/// A non-loopback admin address without `tokenFile` is refused at start (the error names the
/// fix); with a token file it starts.
#[tokio::test]
async fn a_non_loopback_admin_without_a_token_does_not_start() {
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    for address in ["0.0.0.0:0", "[::]:0", "192.0.2.10:3100"] {
        let yaml = rollout(&v1, &v2, "").replace(
            "admin:\n  address: 127.0.0.1:0\n",
            &format!("admin:\n  address: \"{address}\"\n"),
        );
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("weir.yaml");
        std::fs::write(&path, &yaml).expect("write the config");
        let started = weir_control::app::start(weir_control::app::RunOptions {
            config_path: path,
            workers: 1,
            drain_timeout: Duration::from_secs(1),
            access_log: false,
            access_log_format: Default::default(),
            poll_interval: Duration::from_secs(60),
        })
        .await;
        let error = match started {
            Ok(running) => {
                running.shutdown().await;
                panic!("weir started with admin {address} and no token");
            }
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("admin.tokenFile") && error.contains("not a loopback address"),
            "{error}"
        );
        eprintln!(
            "figure: admin {address} without a token: start refused: {}",
            error.lines().last().unwrap_or_default()
        );
    }
    // With a token it starts (on a port of its own).
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("token"), "t0ken\n").expect("write the token");
    let yaml = rollout(&v1, &v2, "  tokenFile: token\n").replace(
        "admin:\n  address: 127.0.0.1:0\n",
        "admin:\n  address: \"0.0.0.0:0\"\n",
    );
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    let weir = Weir::start_at(dir, path, Default::default()).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], weir.admin().port()));
    let reply = send(admin, Method::GET, &admin.to_string(), "/healthz", &[], "").await;
    assert_eq!(reply.status, 200);
    weir.shutdown().await;
}

/// The token file is rotated without a restart: rewritten in place (same length, same second)
/// or replaced by a rename, the next request needs the new token and the old one is refused.
#[tokio::test]
async fn the_token_file_rotates_without_a_restart() {
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "token-aaaa\n").expect("write the token");
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, rollout(&v1, &v2, "  tokenFile: token\n")).expect("write the config");
    let weir = Weir::start_at(dir, path, Default::default()).await;
    let admin = weir.admin();
    weir.wait_until("shop", Duration::from_secs(5), "the pause", |s| {
        s.phase == Phase::Paused
    })
    .await;

    let ok = |status: u16| status == 200 || status == 409;
    assert!(ok(admin::post(admin, PAUSE, Some("token-aaaa"))
        .await
        .status
        .as_u16()));
    // Many requests with the same file: served from the cache, still right.
    for _ in 0..20 {
        assert_eq!(
            admin::post(admin, PAUSE, Some("token-bbbb")).await.status,
            401
        );
    }
    let mut rotations = 0;
    let started = Instant::now();
    let tokens = ["token-bbbb", "token-cccc", "token-dddd", "token-eeee"];
    let mut old = "token-aaaa";
    for (i, new) in tokens.iter().enumerate() {
        if i % 2 == 0 {
            // In place, same length: only the content (and the time stamp, maybe not) changes.
            std::fs::write(weir.dir().join("token"), format!("{new}\n")).expect("rewrite");
        } else {
            let tmp = weir.dir().join("token.new");
            std::fs::write(&tmp, format!("{new}\n")).expect("write");
            std::fs::rename(&tmp, weir.dir().join("token")).expect("rename");
        }
        let reply = admin::post(admin, PAUSE, Some(new)).await;
        assert!(
            ok(reply.status.as_u16()),
            "new token {new}: {}",
            reply.text()
        );
        let reply = admin::post(admin, PAUSE, Some(old)).await;
        assert_eq!(reply.status, 401, "old token {old} after the rotation");
        old = new;
        rotations += 1;
    }
    eprintln!(
        "figure: {rotations} token rotations (in place and by rename) each took effect on the very next request ({:?} in all)",
        started.elapsed()
    );
    // An unreadable token file refuses mutations (503), reads still work.
    std::fs::remove_file(weir.dir().join("token")).expect("remove the token");
    assert_eq!(
        admin::post(admin, PAUSE, Some(old)).await.status,
        503,
        "no token file"
    );
    assert_eq!(admin::get(admin, "/api/v1/services").await.status, 200);
    weir.shutdown().await;
}

/// `admin.tls`: the admin API speaks HTTPS with the configured certificate; plain HTTP to it gets
/// no answer; Host and Origin checks use the https origin.
#[tokio::test]
async fn the_admin_api_serves_tls() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost", "weir-admin.internal"]);
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let dir = tempfile::tempdir().expect("a temporary folder");
    leaf.write(dir.path(), "admin");
    let path = dir.path().join("weir.yaml");
    std::fs::write(
        &path,
        rollout(
            &v1,
            &v2,
            "  tls: {certFile: admin.crt, keyFile: admin.key}\n  allowedHosts: [weir-admin.internal]\n",
        ),
    )
    .expect("write the config");
    let weir = Weir::start_at(dir, path, Default::default()).await;
    let admin = weir.admin();
    let config = client::tls_config(&[ca.der()], &[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let tls = client::tls_connect(admin, config.clone(), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut https = Http1::handshake(tls).await;
    let host = format!("localhost:{}", admin.port());
    let reply = https.get(&host, "/api/v1/services/shop").await;
    assert_eq!(reply.status, 200);
    let origin = format!("https://{host}");
    let request = |path: &str, origin: &str| {
        let mut request = client::request(Method::POST, &host, path, TestBody::empty());
        request.headers_mut().insert(
            header::ORIGIN,
            HeaderValue::from_str(origin).expect("origin"),
        );
        request
    };
    assert_eq!(
        https
            .fetch(request(RESUME, &format!("http://{host}")))
            .await
            .status,
        403,
        "the http origin is another origin"
    );
    assert_eq!(https.fetch(request(RESUME, &origin)).await.status, 200);
    let tls = client::tls_connect(admin, config, "weir-admin.internal").await;
    let mut https = Http1::handshake(tls).await;
    assert_eq!(
        https.get("weir-admin.internal", "/healthz").await.status,
        200
    );
    assert_eq!(https.get("evil.example", "/healthz").await.status, 421);

    // Plain HTTP gets no HTTP answer.
    let mut stream = TcpStream::connect(admin).await.expect("connect");
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
        "plain HTTP answered: {answer:?}"
    );
    eprintln!("figure: admin over TLS: https GET/POST served, plain HTTP refused, http origin refused on https");
    weir.shutdown().await;
}

/// `admin.maxEventSubscribers`: streams beyond it get 503 at once; closing one frees its place.
#[tokio::test]
async fn event_subscribers_are_limited() {
    let (weir, _v1, _v2) = start("  maxEventSubscribers: 3\n").await;
    let admin = weir.admin();
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(Events::open(admin).await);
    }
    let started = Instant::now();
    let mut refused = 0;
    for _ in 0..10 {
        let reply = admin::get(admin, "/api/v1/events").await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert_eq!(reply.header("retry-after"), Some("5"));
        refused += 1;
    }
    let refusing = started.elapsed();
    // The API itself still answers.
    assert_eq!(admin::get(admin, "/api/v1/services").await.status, 200);
    // The open streams still deliver events.
    assert_eq!(
        admin::command(admin, "shop", "resume").await["name"],
        "shop"
    );
    for stream in &mut streams {
        assert!(stream.next(Duration::from_secs(5)).await.is_some());
    }
    // Closing one stream frees its place (the server notices the closed connection).
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut client = Http1::connect(admin).await;
        let response = client
            .send(client::get(&admin.to_string(), "/api/v1/events"))
            .await
            .expect("an answer");
        if response.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "figure: with maxEventSubscribers 3, {refused} more streams refused with 503 in {refusing:?}; a closed stream's place is reused"
    );
    weir.shutdown().await;
}

/// `admin.maxConnections`: connections beyond it are answered 503 and closed, not queued; when
/// one closes, a new one is served. `admin.headerReadTimeout` closes silent connections.
#[tokio::test]
async fn admin_connections_are_limited_and_silent_ones_closed() {
    let (weir, _v1, _v2) = start("  maxConnections: 4\n  headerReadTimeout: 1s\n").await;
    let admin = weir.admin();
    // Four connections that send nothing hold every place.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(admin).await.expect("connect"));
    }
    // Let the server accept them before the next ones arrive.
    let mut excess = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while excess < 10 {
        let code = raw(
            admin,
            &format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        if code == 503 {
            excess += 1;
        } else {
            assert_eq!(code, 200);
            assert!(Instant::now() < deadline, "the limit never applied");
        }
    }
    // The silent ones are closed by the header-read timeout; then the API answers again.
    let started = Instant::now();
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("the silent connection is closed within 5 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let closed_after = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let code = raw(
            admin,
            &format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the places were never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "figure: maxConnections 4: {excess} excess connections answered 503; 4 silent connections closed by headerReadTimeout 1s after {closed_after:?}; then served again"
    );
    weir.shutdown().await;
}
