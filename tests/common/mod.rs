//! Driving the testbed from end-to-end tests: commands inside its hosts, HTTP from outside.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const PORTAL: &str = "http://10.213.0.11:8000";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Result of a command run inside a testbed host.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a shell command inside a testbed host.
pub fn sh(host: &str, script: &str) -> Run {
    let output = Command::new(repo().join("tools/testbed"))
        .args(["exec", host, "bash", "-c", script])
        .output()
        .expect("run tools/testbed exec");
    Run::from(output)
}

/// Runs a shell command that must succeed, returning its stdout.
pub fn ok(host: &str, script: &str) -> String {
    let run = sh(host, script);
    assert_eq!(run.code, 0, "`{script}` on {host} failed: {run}");
    run.stdout
}

/// Polls `check` every 200 ms until it returns true or `limit` passes; returns the time it took.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// `systemctl show -p PROP --value UNIT` inside a host.
pub fn unit_property(host: &str, unit: &str, property: &str) -> String {
    ok(
        host,
        &format!("systemctl show -p {property} --value {unit}"),
    )
    .trim()
    .to_owned()
}

/// Names of the hosts `docklet-admin hosts --json` lists, asked on `host`.
pub fn registered_hosts(host: &str) -> Vec<String> {
    let out = ok(host, "docklet-admin hosts --json");
    let hosts: serde_json::Value = serde_json::from_str(&out).expect("hosts JSON");
    hosts
        .as_array()
        .expect("array")
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect()
}

/// An HTTP GET from this machine (outside the testbed), returning (status, body).
pub fn http_get(url: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-m", "20", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
