use std::time::Duration;

use tokio::time::Instant;

use serde_json::json;

use super::*;
use crate::engine::analysis::{judge, Verdict};

fn sh(script: &str, timeout: Duration) -> ExecProvider {
    ExecProvider {
        command: "/bin/sh".to_string(),
        args: vec!["-c".to_string(), script.to_string()],
        timeout,
        env: Vec::new(),
    }
}

fn value(outcome: &Outcome) -> &Measured {
    match outcome {
        Outcome::Value(measured) => measured,
        other => panic!("expected a value, got {other:?}"),
    }
}

#[tokio::test]
async fn exit_zero_with_a_number_is_a_success() {
    let p = sh("echo starting; echo 0.995; echo", Duration::from_secs(10));
    let outcome = exec(&p, &Vars::default()).await;
    let measured = value(&outcome);
    assert_eq!(measured.value, json!(0.995));
    assert_eq!(measured.failed, None);
    assert_eq!(judge(None, None, &outcome).0, Verdict::Successful);
}

#[tokio::test]
async fn exit_zero_with_text_is_a_string() {
    let p = sh("echo all good", Duration::from_secs(10));
    let outcome = exec(&p, &Vars::default()).await;
    assert_eq!(value(&outcome).value, json!("all good"));
}

#[tokio::test]
async fn non_zero_exit_is_a_failure_naming_the_last_line() {
    let p = sh(
        "echo checking; echo 'GET /health: 503'; exit 3",
        Duration::from_secs(10),
    );
    let outcome = exec(&p, &Vars::default()).await;
    let (verdict, message) = judge(None, None, &outcome);
    eprintln!("exit 3: {verdict}: {message}");
    assert_eq!(verdict, Verdict::Failed);
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(message.contains("GET /health: 503"), "{message}");
    // A condition that would hold does not rescue a non-zero exit.
    let p = sh("echo 1; exit 1", Duration::from_secs(10));
    let outcome = exec(&p, &Vars::default()).await;
    let success = crate::engine::analysis::condition::Condition::compile("result == 1").unwrap();
    assert_eq!(judge(Some(&success), None, &outcome).0, Verdict::Failed);
}

#[tokio::test]
async fn failure_without_stdout_names_stderr() {
    let p = sh(
        "echo 'connection refused' >&2; exit 1",
        Duration::from_secs(10),
    );
    let (_, message) = judge(None, None, &exec(&p, &Vars::default()).await);
    assert!(message.contains("connection refused"), "{message}");
}

#[tokio::test]
async fn a_timeout_kills_the_command_and_its_group() {
    // The child's own child holds stdout open: it must be killed too.
    let p = sh("sleep 30 & sleep 30", Duration::from_millis(300));
    let started = Instant::now();
    let outcome = exec(&p, &Vars::default()).await;
    let took = started.elapsed();
    eprintln!("timeout 300ms: answered after {took:?}: {outcome:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    match outcome {
        Outcome::Error(message) => assert!(message.contains("timed out after"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_command_is_an_error() {
    let p = ExecProvider {
        command: "/nonexistent/weir-smoke".to_string(),
        args: Vec::new(),
        timeout: Duration::from_secs(5),
        env: Vec::new(),
    };
    match exec(&p, &Vars::default()).await {
        Outcome::Error(message) => {
            eprintln!("missing: {message}");
            assert!(message.contains("cannot be started"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let p = ExecProvider {
        command: "weir-no-such-command-on-path".to_string(),
        ..p
    };
    assert!(matches!(
        exec(&p, &Vars::default()).await,
        Outcome::Error(_)
    ));
}

#[tokio::test]
async fn a_non_executable_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smoke");
    std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
    let p = ExecProvider {
        command: path.display().to_string(),
        args: Vec::new(),
        timeout: Duration::from_secs(5),
        env: Vec::new(),
    };
    match exec(&p, &Vars::default()).await {
        Outcome::Error(message) => assert!(message.contains("cannot be started"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_script_with_args_env_and_variables() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smoke");
    std::fs::write(&path, "#!/bin/sh\necho \"$1 $2 $3 $SMOKE_MODE\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = ExecProvider {
        command: path.display().to_string(),
        args: vec![
            "{{service}}".to_string(),
            "{{canary.version}}".to_string(),
            "--region={{args.region}}".to_string(),
        ],
        timeout: Duration::from_secs(5),
        env: vec![(
            "SMOKE_MODE".to_string(),
            "quick-{{stable.version}}".to_string(),
        )],
    };
    let vars = Vars {
        args: [("region".to_string(), "eu".to_string())].into(),
        service: "shop".to_string(),
        stable_version: "v1".to_string(),
        canary_version: "v2".to_string(),
    };
    let outcome = exec(&p, &vars).await;
    assert_eq!(value(&outcome).value, json!("shop v2 --region=eu quick-v1"));
}

#[tokio::test]
async fn args_are_never_given_to_a_shell() {
    let p = ExecProvider {
        command: "/bin/echo".to_string(),
        args: vec!["$(id) ; `true` | x".to_string()],
        timeout: Duration::from_secs(5),
        env: Vec::new(),
    };
    let outcome = exec(&p, &Vars::default()).await;
    assert_eq!(value(&outcome).value, json!("$(id) ; `true` | x"));
}

#[tokio::test]
async fn huge_output_is_bounded() {
    // ~20 MB of output, then a last line.
    let p = sh(
        "head -c 20000000 /dev/zero | tr '\\0' 'x'; echo; echo 42",
        Duration::from_secs(30),
    );
    let started = Instant::now();
    let outcome = exec(&p, &Vars::default()).await;
    eprintln!(
        "20 MB of output: {:?} in {:?}",
        value(&outcome).value,
        started.elapsed()
    );
    assert_eq!(value(&outcome).value, json!(42));
    // One 20 MB line without a newline: the value is cut, the memory bounded.
    let p = sh(
        "head -c 20000000 /dev/zero | tr '\\0' 'y'",
        Duration::from_secs(30),
    );
    let outcome = exec(&p, &Vars::default()).await;
    let text = value(&outcome).value.as_str().unwrap().len();
    assert_eq!(text, 4096);
}

#[tokio::test]
async fn tail_keeps_the_end() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let kept = tail(Some(&data[..])).await;
    assert_eq!(kept.len(), TAIL);
    assert_eq!(&kept[..], &data[data.len() - TAIL..]);
    assert_eq!(last_line(b"a\nb\n\n  \n"), "b");
    assert_eq!(last_line(b""), "");
}
