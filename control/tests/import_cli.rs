//! `weir import` as a process: stdout pipes into a file that `weir validate` accepts, notes go to
//! standard error, `-` reads standard input, and bad input exits 1 with a message.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/import")
        .join(name)
}

fn weir(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(WEIR)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(bytes) = stdin {
            // A closed pipe (weir refused early) is not this test's failure.
            let _ = input.write_all(bytes);
        }
    }
    child.wait_with_output().expect("weir ends")
}

#[test]
fn import_pipes_into_a_file_that_validates() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = fixture("argo-canary.yaml");
    let out = weir(
        &[
            "import",
            file.to_str().expect("utf-8 path"),
            "--upstream",
            "user-service=127.0.0.1:9001",
            "--canary-upstream",
            "user-service=127.0.0.1:9002",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(
        notes.contains("note: Rollout/user-service: spec.replicas: dropped"),
        "{notes}"
    );
    let config = dir.path().join("weir.yaml");
    std::fs::write(&config, &out.stdout).expect("write the config");
    let validated = weir(&["validate", config.to_str().expect("utf-8 path")], None);
    assert!(
        validated.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&validated.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    // The same from standard input.
    let text = std::fs::read(&file).expect("read the fixture");
    let piped = weir(
        &["import", "-", "--upstream", "user-service=127.0.0.1:9001"],
        Some(&text),
    );
    assert!(piped.status.success());
    assert!(String::from_utf8_lossy(&piped.stdout).contains("name: user-service"));
    eprintln!(
        "weir import | weir validate: ok ({} bytes of config, {} notes)",
        out.stdout.len(),
        notes.lines().count()
    );
}

#[test]
fn bad_input_exits_1_with_a_message() {
    let out = weir(&["import", "-"], Some(b"kind: [unclosed"));
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("-: document 1: not valid YAML"),
        "{message}"
    );
    assert!(out.stdout.is_empty());

    // 10 MB on standard input: refused after reading one byte past the limit.
    let big = vec![b'#'; 10 * 1024 * 1024];
    let out = weir(&["import", "-"], Some(&big));
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("larger than"), "{message}");

    let out = weir(&["import", "/nonexistent/rollout.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/rollout.yaml"));

    let out = weir(&["import", "-", "--upstream", "no-equals-sign"], Some(b""));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SERVICE=HOST:PORT"));
}
