//! End-to-end: what users and administrators see of the metrics on the testbed. A node's
//! figures and history through the REST API; the master's Prometheus text with the user,
//! cluster and vnode labels; the usage ledger as CSV; an idle cluster stopped after its
//! group's idle time with a notice in its record and the event stream, a busy one left
//! running; and the history surviving a master restart. Administrators' endpoints refuse
//! users.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::rest::*;
use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[track_caller]
fn run_in(token: &str, cluster: &str, script: &str) -> String {
    let r = post(
        &format!("/clusters/{cluster}/nodes/0/exec"),
        token,
        &json!({ "argv": ["sh", "-c", script] }),
    );
    assert_eq!((r.status, &r.json["exit_code"]), (200, &json!(0)), "{r}");
    r.json["stdout"].as_str().unwrap_or_default().to_owned()
}

/// Polls `path` until `wanted` holds (failing after `limit` with the last answer).
#[track_caller]
fn poll(path: &str, token: &str, limit: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let r = get(path, token);
        if r.status == 200 && wanted(&r.json) {
            eprintln!("{path}: after {:?}", start.elapsed());
            return r.json;
        }
        assert!(start.elapsed() < limit, "{path}: not within {limit:?}: {r}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// GET with the body as text (CSV, Prometheus text).
fn get_text(path: &str, token: &str) -> (u16, String, String) {
    let output = curl()
        .args([
            "-s",
            "-m",
            "30",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code}",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{PORTAL}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        body.to_owned(),
        String::from_utf8_lossy(&output.stderr).to_lowercase(),
    )
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn figures_history_usage_and_idle_stops_as_users_and_administrators_see_them() {
    let (user, group) = ("mtra", "mtrg");
    let _cleanup = Cleanup(&["mtra"], "mtrg");
    let token = fresh_user(user);
    // Idle after 40 s: the workers sample every 10 s. Whole cores for the busy node.
    group_for(
        group,
        json!({"idle_secs": 40}),
        json!({"cpu_millis": 1000}),
        &[user],
    );
    for name in ["busy", "lazy"] {
        succeeds(
            &token,
            &post("/clusters", &token, &json!({"name": name, "size": 1})),
        );
    }
    // The busy node computes (as a service of its own systemd) and writes.
    run_in(
        &token,
        "busy",
        "systemd-run --unit=burn sh -c 'while :; do :; done' >/dev/null 2>&1 && \
         head -c 20M /dev/urandom > /root/blob",
    );

    // The event stream, from now on.
    let mut events = curl()
        .args(["-s", "-N", "-m", "240"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{PORTAL}/api/v1/events"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");

    // A node's figures and history.
    let metrics = poll(
        "/clusters/busy/metrics",
        &token,
        Duration::from_secs(60),
        |m| {
            m["nodes"][0]["latest"]["cpu_percent"]
                .as_f64()
                .is_some_and(|p| p > 50.0)
        },
    );
    let node = &metrics["nodes"][0];
    assert_eq!(node["id"], "mtra-busy-0", "{metrics}");
    let latest = &node["latest"];
    assert!(latest["memory_bytes"].as_u64().unwrap() > MIB, "{latest}");
    assert!(
        latest["disk_bytes"].as_u64().unwrap() >= 20 * MIB,
        "{latest}"
    );
    assert!(latest["processes"].as_u64().unwrap() > 3, "{latest}");
    assert!(latest["uptime_secs"].as_u64().unwrap() > 0, "{latest}");
    assert!(latest["net"]["rx_packets"].is_u64(), "{latest}");
    assert_eq!(node["step"], 10, "{metrics}");
    assert!(!node["points"].as_array().unwrap().is_empty(), "{metrics}");
    get("/clusters/busy/metrics?since=99999999", &token).assert_error(400, "bad_request");
    get("/clusters/nope/metrics", &token).assert_error(404, "not_found");
    get("/clusters/busy/metrics?user=root", &token).assert_error(403, "forbidden");

    // Hosts' figures and the master's Prometheus text: administrators only.
    let host = get("/clusters/busy", &token).json["nodes"][0]["host"]
        .as_str()
        .unwrap()
        .to_owned();
    let h = poll(
        &format!("/hosts/{host}/metrics"),
        root(),
        Duration::from_secs(30),
        |h| h["latest"]["vnodes"].as_u64().is_some_and(|n| n >= 1),
    );
    assert!(
        h["latest"]["memory_total_bytes"].as_u64().unwrap() > GIB,
        "{h}"
    );
    get(&format!("/hosts/{host}/metrics"), &token).assert_error(403, "forbidden");
    let (status, text, _) = get_text("/metrics", root());
    assert_eq!(status, 200, "{text}");
    let labels = format!(
        "{{user=\"mtra\",cluster=\"busy\",node=\"0\",vnode=\"mtra-busy-0\",host=\"{host}\"}}"
    );
    assert!(
        text.contains(&format!("docklet_vnode_cpu_seconds_total{labels}")),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE docklet_vnode_memory_bytes gauge")
            .count(),
        1,
        "each family declared once"
    );
    assert_eq!(get_text("/metrics", &token).0, 403);

    // The idle cluster stops after 40 s idle, with a notice; the busy one runs on.
    let lazy = poll("/clusters/lazy", &token, Duration::from_secs(120), |c| {
        c["idle_stop"].is_object()
    });
    assert!(
        lazy["idle_stop"]["idle_secs"].as_u64().unwrap() >= 40,
        "{lazy}"
    );
    poll("/clusters/lazy", &token, Duration::from_secs(60), |c| {
        c["state"] == "stopped"
    });
    assert_eq!(get("/clusters/busy", &token).json["state"], "running");
    // The stream carried it.
    std::thread::sleep(Duration::from_secs(1));
    let _ = events.kill();
    let mut stream = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stream)
        .unwrap();
    let _ = events.wait();
    assert!(
        stream
            .lines()
            .any(|l| l.starts_with("data:") && l.contains("\"lazy\"") && l.contains("idle_stop")),
        "{stream}"
    );
    // Started again, the notice goes.
    let r = post("/clusters/lazy/start", &token, &json!({}));
    succeeds(&token, &r);
    assert!(
        get("/clusters/lazy", &token)
            .json
            .get("idle_stop")
            .is_none()
    );

    // The usage ledger: the user's vnode hours today, as CSV; administrators only.
    let today = ok("tb1", "date -u +%F").trim().to_owned();
    let (status, csv, headers) =
        get_text(&format!("/api/v1/usage?from={today}&to={today}"), root());
    assert_eq!(status, 200, "{csv}");
    assert!(headers.contains("content-type: text/csv"), "{headers}");
    assert!(
        csv.starts_with("user,date,vnode_hours,cpu_hours,memory_gib_hours\n"),
        "{csv}"
    );
    let line = csv
        .lines()
        .find(|l| l.starts_with(&format!("mtra,{today},")))
        .unwrap_or_else(|| panic!("no line for mtra: {csv}"));
    let hours: Vec<f64> = line
        .split(',')
        .skip(2)
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(hours[0] > 0.0 && hours[1] > 0.0 && hours[2] > 0.0, "{line}");
    assert_eq!(
        get_text(&format!("/api/v1/usage?from={today}&to={today}"), &token).0,
        403
    );
    get(&format!("/usage?from={today}&to=2026-02-30"), root()).assert_error(422, "invalid_date");

    // The history survives a restart of the master.
    let before = get("/clusters/busy/metrics", &token).json["nodes"][0]["points"]
        .as_array()
        .unwrap()
        .len();
    ok(
        "tb1",
        "systemctl restart docklet-master && docklet-admin wait master",
    );
    let after = poll(
        "/clusters/busy/metrics",
        &token,
        Duration::from_secs(60),
        |m| m["nodes"][0]["points"].is_array(),
    );
    let kept = after["nodes"][0]["points"].as_array().unwrap().len();
    assert!(
        kept >= before,
        "{before} points before, {kept} after: {after}"
    );
    run_in(&token, "busy", "systemctl stop burn");
}
