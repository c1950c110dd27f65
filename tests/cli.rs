//! The command line: `check` and `demo`, run as a user runs them.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn check(yaml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mediagate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run mediagate check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_effective_configuration_with_secrets_hidden() {
    let yaml = "credentials:\n  username: ${KEY_SID}\n  password: ${KEY_SECRET}\naccess:\n  tokens:\n    - token: chat-server-token\n";
    let (ok, stdout, stderr) = check(
        yaml,
        &[
            ("KEY_SID", "SK0123456789abcdef0123456789abcdef"),
            ("KEY_SECRET", "very-secret"),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("username: SK0123456789abcdef0123456789abcdef"),
        "{stdout}"
    );
    assert!(
        stdout.contains("max_size: 150MiB"),
        "defaults are shown:\n{stdout}"
    );
    assert!(stdout.contains("***"));
    for secret in ["very-secret", "chat-server-token"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed"
        );
    }
}

#[test]
fn check_refuses_a_typo_and_names_the_key() {
    let (ok, _, stderr) = check(
        "credentials: {username: u, password: p}\nserver:\n  listn: 127.0.0.1:1\n",
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("server.listn: unknown field `listn`"),
        "{stderr}"
    );
}

#[test]
fn check_names_a_bad_value_and_a_missing_variable() {
    let (ok, _, stderr) = check(
        "credentials: {username: u, password: p}\nquotas:\n  bytes_per_hour: lots\n",
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains(r#"quotas.bytes_per_hour: expected a size like "10GiB", got "lots""#),
        "{stderr}"
    );
    let (ok, _, stderr) = check(
        "credentials:\n  username: u\n  password: ${NOT_SET_ANYWHERE}\n",
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("credentials.password: environment variable NOT_SET_ANYWHERE is not set"),
        "{stderr}"
    );
}

#[test]
fn the_reference_configuration_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mediagate.yaml");
    let output = Command::new(binary())
        .args(["check", "--config", path])
        .env("TWILIO_API_KEY_SID", "SK0123456789abcdef0123456789abcdef")
        .env("TWILIO_API_SECRET", "reference-secret")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The demo's process, ended by its PID when the test ends however it ends (a failed assertion
/// unwinds through it); its origin and proxy exit with it (their standard input is its).
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_prints_curl_commands_that_work_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let port = || format!("127.0.0.1:{}", free_port());
    let spawned = Command::new(binary())
        .arg("demo")
        .args([
            "--listen",
            &port(),
            "--metrics-listen",
            &port(),
            "--origin-listen",
            &port(),
        ])
        .arg("--data")
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start the demo");
    let mut demo = Demo(spawned);
    let mut commands = Vec::new();
    let mut output = String::new();
    for line in BufReader::new(demo.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        output.push_str(&line);
        output.push('\n');
        if let Some(command) = line.trim().strip_prefix("curl ") {
            commands.push(format!("curl {command}"));
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert_eq!(commands.len(), 3, "{output}");
    let mut answers = Vec::new();
    for command in &commands {
        let run = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(dir.path())
            .output()
            .expect("run curl");
        assert!(
            run.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        answers.push(String::from_utf8_lossy(&run.stdout).into_owned());
    }
    let uploaded: serde_json::Value = serde_json::from_str(&answers[0]).expect("upload answer");
    assert!(
        uploaded["sid"]
            .as_str()
            .is_some_and(|s| s.starts_with("ME")),
        "{}",
        answers[0]
    );
    let metadata: serde_json::Value = serde_json::from_str(&answers[1]).expect("metadata answer");
    assert_eq!(metadata["content_type"], "image/png");
    let copy = std::fs::read(dir.path().join("copy.png")).expect("content was saved");
    assert_eq!(
        copy,
        std::fs::read(dir.path().join("data/sample.png")).unwrap()
    );

    signal(&demo.0, nix::sys::signal::Signal::SIGINT);
    let status = wait_exit(&mut demo.0, Duration::from_secs(20)).expect("the demo stops on Ctrl-C");
    assert!(status.success(), "{status}");
}
