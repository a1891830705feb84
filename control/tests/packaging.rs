//! Packaging: the systemd unit (`deploy/systemd/weir.service`) passes `systemd-analyze verify`
//! against this build's binary and keeps the directives the package relies on; the Debian
//! maintainer scripts (`deploy/deb/maintainer-scripts/`) create the weir user and `/var/lib/weir`
//! in a scratch root and delete the state on purge only; and `weir run` speaks systemd's
//! `Type=notify` protocol: `READY=1` once it serves, and after `SIGUSR2` the new process sends
//! `MAINPID=` (itself) before the old one exits, so systemd follows the upgrade.
//!
//! A test whose tool is missing (`systemd-analyze`, `systemd-sysusers`, `systemd-tmpfiles`) says
//! so on standard error and passes. The `.deb` itself is built and checked by `deploy/deb/build`
//! and `deploy/deb/check` (a release build: `.ci/run` runs them after the tests).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("control/ is in the workspace")
        .to_path_buf()
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("deploy/systemd/weir.service")).expect("the unit")
}

/// Whether `tool` runs here; says why the test is skipped when it does not.
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED {test}: `{tool}` is not installed (apt-get install systemd)");
    }
    found
}

/// The `[Service]` section: every value of each key, in order.
fn service_section(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = String::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[Service]" {
            let (key, value) = line.split_once('=').expect("key=value");
            keys.entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    keys
}

#[test]
fn the_unit_passes_systemd_analyze_verify_with_this_binary() {
    let test = "the_unit_passes_systemd_analyze_verify_with_this_binary";
    if !have("systemd-analyze", test) {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary folder");
    let unit = dir.path().join("weir.service");
    std::fs::write(&unit, unit_text().replace("/usr/bin/weir", WEIR)).expect("write the unit");
    let started = Instant::now();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let warnings = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "verify failed: {warnings}");
    // An unknown or misspelt directive is only a warning (exit 0): none is allowed.
    assert!(warnings.trim().is_empty(), "verify warns: {warnings}");

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once("Overall exposure level for weir.service:")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    eprintln!(
        "weir.service: systemd-analyze verify clean, security exposure {exposure} (0 = locked down, 10 = unprotected), in {:.0?}",
        started.elapsed()
    );
    assert!(
        exposure <= 2.5,
        "the sandbox got weaker: exposure {exposure}\n{report}"
    );
}

#[test]
fn the_unit_keeps_the_directives_the_package_relies_on() {
    let keys = service_section(&unit_text());
    let one = |key: &str| -> &str {
        let values = keys.get(key).unwrap_or_else(|| panic!("{key}= is missing"));
        assert_eq!(values.len(), 1, "{key}= is set {} times", values.len());
        &values[0]
    };
    // Readiness and upgrades (see the notify test below).
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("NotifyAccess"),
        "all",
        "the upgraded process sends MAINPID="
    );
    assert_eq!(
        keys["ExecReload"].last().map(String::as_str),
        Some("/bin/kill -USR2 $MAINPID")
    );
    assert!(keys["ExecReload"][0].starts_with("/usr/bin/weir validate "));
    // The binary the package installs (control/Cargo.toml: usr/bin/).
    let manifest =
        std::fs::read_to_string(repo().join("control/Cargo.toml")).expect("control/Cargo.toml");
    assert!(manifest.contains(r#"["target/release/weir", "usr/bin/", "755"]"#));
    assert!(one("ExecStart").starts_with("/usr/bin/weir run --config "));
    // The user and state folder the maintainer scripts make.
    assert_eq!(one("User"), "weir");
    assert_eq!(one("Group"), "weir");
    assert_eq!(one("StateDirectory"), "weir");
    assert_eq!(one("StateDirectoryMode"), "0700");
    // Sandboxing.
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert_eq!(one(key), value, "{key}=");
    }
    let files: u64 = one("LimitNOFILE")
        .parse()
        .expect("LimitNOFILE= is a number");
    assert!(files >= 65536, "LimitNOFILE={files}");
    let settings = keys.values().map(Vec::len).sum::<usize>();
    eprintln!(
        "weir.service: notify, reload, binary path, user, state folder and 10 sandbox settings as the package expects ({settings} [Service] settings in all)"
    );
}

#[test]
fn the_packaged_config_validates() {
    let config = repo().join("deploy/deb/weir.yaml");
    let output = Command::new(WEIR)
        .arg("validate")
        .arg(&config)
        .output()
        .expect("weir validate");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("/etc/weir/weir.yaml as packaged (deploy/deb/weir.yaml): weir validate ok");
}

/// Writes a stub for `name` in `bin` that logs its arguments to `calls`.
fn stub(bin: &Path, calls: &Path, name: &str) {
    let path = bin.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho \"{name} $*\" >>'{}'\n", calls.display()),
    )
    .expect("write a stub");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn maintainer_scripts_make_the_user_and_state_folder_and_purge_deletes_the_state() {
    let test = "maintainer_scripts_make_the_user_and_state_folder_and_purge_deletes_the_state";
    if !have("systemd-sysusers", test) || !have("systemd-tmpfiles", test) {
        return;
    }
    let started = Instant::now();
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let root = scratch.path().join("root");
    let bin = scratch.path().join("bin");
    let calls = scratch.path().join("calls");
    for dir in ["etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    std::fs::create_dir_all(&bin).expect("mkdir");
    let deb = repo().join("deploy/deb");
    std::fs::copy(
        deb.join("sysusers.conf"),
        root.join("usr/lib/sysusers.d/weir.conf"),
    )
    .expect("copy sysusers.conf");
    std::fs::copy(
        deb.join("tmpfiles.conf"),
        root.join("usr/lib/tmpfiles.d/weir.conf"),
    )
    .expect("copy tmpfiles.conf");
    // The systemd helpers would act on this machine: stubs log what the scripts ask of them.
    for name in [
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "systemctl",
        "adduser",
    ] {
        stub(&bin, &calls, name);
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = |name: &str, args: &[&str]| {
        let output = Command::new("sh")
            .arg(deb.join("maintainer-scripts").join(name))
            .args(args)
            .env("PATH", &path)
            .env("DPKG_ROOT", &root)
            .output()
            .expect("run the script");
        assert!(
            output.status.success(),
            "{name} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };

    // A first install.
    script("postinst", &["configure"]);
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("etc/passwd");
    let user = passwd
        .lines()
        .find(|line| line.starts_with("weir:"))
        .unwrap_or_else(|| panic!("no weir user: {passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/weir", "{user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "a system user: {user}");
    let group = std::fs::read_to_string(root.join("etc/group")).expect("etc/group");
    assert!(
        group.lines().any(|line| line.starts_with("weir:")),
        "{group}"
    );
    let state = std::fs::metadata(root.join("var/lib/weir")).expect("/var/lib/weir");
    assert!(state.is_dir());
    assert_eq!(state.mode() & 0o7777, 0o700);
    assert_eq!(state.uid(), uid);
    let logged = std::fs::read_to_string(&calls).expect("calls");
    assert!(
        logged
            .lines()
            .any(|line| line == "deb-systemd-helper enable weir.service"),
        "{logged}"
    );

    // An upgrade: the user and folder are kept (state inside stays), nothing is made twice.
    std::fs::write(root.join("var/lib/weir/state.json"), "{}").expect("a state file");
    script("prerm", &["upgrade", "0.2.0"]);
    script("postinst", &["configure", "0.1.0"]);
    let again = std::fs::read_to_string(root.join("etc/passwd")).expect("etc/passwd");
    let users = again
        .lines()
        .filter(|line| line.starts_with("weir:"))
        .count();
    assert_eq!(users, 1, "{again}");
    // Remove keeps the user data; purge deletes it.
    script("prerm", &["remove"]);
    script("postrm", &["remove"]);
    assert!(root.join("var/lib/weir/state.json").exists());
    script("postrm", &["purge"]);
    assert!(!root.join("var/lib/weir").exists());
    eprintln!(
        "maintainer scripts in a scratch root: weir user uid {uid}, /var/lib/weir 0700 owned by it, unit enabled; upgrade kept the state, remove kept it, purge deleted it ({:.0?})",
        started.elapsed()
    );
}

/// A child process killed (SIGKILL) and reaped on drop.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A process this test did not start (the upgraded weir), killed on drop.
struct Orphan(u32);

impl Drop for Orphan {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::KILL);
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `GET path` over HTTP/1.1: the status.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {answer:?}")))
}

/// The parent of `pid`, from `/proc/PID/stat`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn receive(socket: &UnixDatagram, log: &Path) -> String {
    let mut buffer = [0u8; 4096];
    match socket.recv(&mut buffer) {
        Ok(n) => String::from_utf8_lossy(&buffer[..n]).to_string(),
        Err(error) => panic!(
            "no notification: {error}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

#[test]
fn ready_is_sent_once_weir_serves_and_mainpid_follows_an_upgrade() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("weir.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - name: public\n    address: {public}\nadmin:\n  address: {admin}\nstateDir: {}\nservices:\n  - name: app\n    match: {{hosts: [\"*\"]}}\n    stable: {{version: v1, upstreams: [\"127.0.0.1:9\"]}}\n",
            dir.path().join("state").display()
        ),
    )
    .expect("write the config");
    let notify = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a timeout");
    let log = dir.path().join("weir.log");
    let output = std::fs::File::create(&log).expect("the log");
    let started = Instant::now();
    let child = Command::new(WEIR)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--workers", "1", "--drain-timeout", "1s"])
        .env("NOTIFY_SOCKET", &notify)
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("a log handle"))
        .stderr(output)
        .spawn()
        .expect("start weir run");
    let old = child.id();
    let mut first = Guard(Some(child));

    // The first word weir says is READY=1, and by then it serves: both sockets accept and the
    // admin API answers.
    assert_eq!(receive(&socket, &log), "READY=1");
    let ready = started.elapsed();
    assert_eq!(get(admin, "/api/v1/services").expect("the admin API"), 200);
    let status = get(public, "/").expect("the listener answers");
    assert!(status >= 500, "the upstream is down: {status}");

    // SIGUSR2: the new process names itself main process, then the old one exits.
    let signalled = Instant::now();
    signal(old, rustix::process::Signal::USR2);
    let message = receive(&socket, &log);
    let took_over = signalled.elapsed();
    let lines: Vec<&str> = message.lines().collect();
    let new: u32 = lines
        .first()
        .and_then(|line| line.strip_prefix("MAINPID="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("not MAINPID=: {message:?}"));
    let _new_guard = Orphan(new);
    assert_eq!(lines.get(1), Some(&"READY=1"), "{message:?}");
    assert_ne!(new, old);
    assert_eq!(
        parent(new),
        Some(old),
        "MAINPID names the process the old weir started"
    );
    let child = first.0.as_mut().expect("the first weir");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the old weir did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    let exited = signalled.elapsed();
    assert!(status.success(), "the old weir exits cleanly: {status}");
    first.0 = None;
    // The old weir said nothing more (a STOPPING=1 would make systemd stop the service).
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0u8; 256];
    match socket.recv(&mut buffer) {
        Err(error) if error.kind() == ErrorKind::WouldBlock => {}
        other => panic!(
            "unexpected notification: {:?}",
            other.map(|n| String::from_utf8_lossy(&buffer[..n]).to_string())
        ),
    }
    assert_eq!(get(admin, "/api/v1/services").expect("the new weir"), 200);
    eprintln!(
        "notify: READY=1 {ready:.0?} after start (sockets bound, admin API answering); SIGUSR2 → MAINPID={new} (child of {old}) + READY=1 in {took_over:.0?}; old weir exited {exited:.0?} after the signal, nothing else sent"
    );
}
