//! End-to-end: batch jobs on the testbed, as users submit and follow them through the API.
//! A three-task DAG runs in order and leaves its output in `~/nfs`; an array with `%4` never
//! runs more than four at once; a three-node gang reaches every node of its hostfile by ssh;
//! a failing task retries, then fails the job, its dependants never run; a time limit kills
//! its task; a cancel stops a running job and removes its nodes; a second user's task starts
//! before the first user's backlog drains; bad specs and quotas are refused with their field;
//! `kill -9` of the master and of a worker mid-job loses nothing; a lost host's task reruns
//! elsewhere; and nobody else can see, cancel or read a job.

mod common;

use std::time::{Duration, Instant};

use common::rest::*;
use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A group for batch users: small nodes by default, a batch quota of `batch` over
/// 8 cores / 8 GiB / 64 GiB / 8 nodes / 10 jobs.
fn batch_group(group: &str, batch: Value, users: &[&str]) {
    let _ = api("DELETE", &format!("/groups/{group}"), root(), None);
    let mut quota = json!({"cpu_millis": 8000, "memory_bytes": 8 * GIB,
        "disk_bytes": 64 * GIB, "vnodes": 8, "jobs": 10});
    for (k, v) in batch.as_object().expect("fields") {
        quota[k] = v.clone();
    }
    let r = post(
        "/groups",
        root(),
        &json!({"name": group, "admin": false,
            "quota": {"cpu_millis": 4000, "memory_bytes": 8 * GIB, "disk_bytes": 40 * GIB,
                "vnodes": 4, "images": 1, "port_mappings": 1, "idle_secs": 0},
            "defaults": {"cpu_millis": 200, "memory_bytes": 256 * MIB, "disk_bytes": 512 * MIB},
            "batch": quota}),
    );
    assert_eq!(r.status, 201, "{r}");
    for user in users {
        let r = api(
            "PATCH",
            &format!("/users/{user}"),
            root(),
            Some(&json!({ "group": group })),
        );
        assert_eq!(r.status, 200, "{r}");
    }
}

/// A fresh PAM user `user` alone in a group of the same name with a batch quota of `batch`
/// (see [`batch_group`]): its session token, and what removes both however the test ends.
fn batch_user(user: &'static str, batch: Value) -> (String, Cleanup) {
    let token = fresh_user(user);
    let cleanup = Cleanup(Box::leak(Box::new([user])), user);
    batch_group(user, batch, &[user]);
    (token, cleanup)
}

/// Submits a job; returns its id.
#[track_caller]
fn submit(token: &str, job: Value) -> u64 {
    let r = post("/jobs", token, &job);
    assert_eq!(r.status, 201, "{r}");
    r.json["id"].as_u64().expect("job id")
}

fn show(token: &str, id: u64) -> Value {
    let r = get(&format!("/jobs/{id}"), token);
    assert_eq!(r.status, 200, "{r}");
    r.json
}

/// Waits until the job's state is one of `states`; returns the job.
#[track_caller]
fn wait_job(token: &str, id: u64, states: &[&str], limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let job = show(token, id);
        if states.contains(&job["state"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(
            start.elapsed() < limit,
            "job {id} not {states:?} after {limit:?}: {job:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn instance<'a>(job: &'a Value, task: &str, index: u64) -> &'a Value {
    job["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == task)
        .and_then(|t| {
            t["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["index"] == index)
        })
        .unwrap_or_else(|| panic!("no instance {task}[{index}] in {job:#}"))
}

fn log(token: &str, id: u64, task: &str, index: u64, stream: &str) -> String {
    let r = get(
        &format!("/jobs/{id}/tasks/{task}/{index}/log?stream={stream}"),
        token,
    );
    assert_eq!(r.status, 200, "{r}");
    r.text
}

/// No vnode of `user`'s batch jobs is left anywhere: no spec in etcd, nothing on any host.
#[track_caller]
fn no_batch_nodes_left(user: &str, limit: Duration) {
    wait_for(&format!("{user}'s batch nodes to go"), limit, || {
        !ok("tb1", "docklet-admin vnodes --all --json").contains(&format!("\"{user}-"))
    });
    for host in ["tb1", "tb2", "tb3"] {
        let units = ok(
            host,
            &format!("systemctl list-units --all --plain --no-legend 'docklet-*{user}-*' | wc -l"),
        );
        assert_eq!(units.trim(), "0", "units of {user} left on {host}");
        let dirs = ok(
            host,
            &format!("ls /var/lib/docklet/local/vnodes | grep -c '^{user}-' || true"),
        );
        assert_eq!(
            dirs.trim(),
            "0",
            "vnode directories of {user} left on {host}"
        );
    }
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_dag_runs_in_order_and_its_output_lands_in_nfs() {
    let user = "jobdag";
    let (token, _cleanup) = batch_user(user, json!({}));
    let started = Instant::now();
    let id = submit(
        &token,
        json!({"name": "etl", "tasks": [
            {"name": "report", "depends_on": ["train"],
             "script": "cat steps; echo report >> steps; echo \"on $(hostname)\""},
            {"name": "prep", "command": ["/bin/sh", "-c", "echo prep > steps; echo $DOCKLET_TASK; echo oops >&2"]},
            {"name": "train", "depends_on": ["prep"], "script": "echo train >> steps; cat steps"},
        ]}),
    );
    let queued = show(&token, id);
    assert!(
        ["queued", "starting", "running"].contains(&queued["state"].as_str().unwrap()),
        "{queued:#}"
    );
    assert_eq!(
        instance(&queued, "train", 0)["state"],
        "waiting",
        "{queued:#}"
    );
    let job = wait_job(
        &token,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(180),
    );
    assert_eq!(job["state"], "succeeded", "{job:#}");
    println!("3-task DAG done in {:?}", started.elapsed());
    // In order: each started after the one it depends on ended.
    let at = |task: &str, field: &str| instance(&job, task, 0)[field].as_u64().unwrap();
    assert!(
        at("train", "started_at") >= at("prep", "ended_at"),
        "{job:#}"
    );
    assert!(
        at("report", "started_at") >= at("train", "ended_at"),
        "{job:#}"
    );
    assert_eq!(log(&token, id, "prep", 0, "out"), "prep\n");
    assert_eq!(log(&token, id, "prep", 0, "err"), "oops\n");
    assert_eq!(log(&token, id, "train", 0, "out"), "prep\ntrain\n");
    let report = log(&token, id, "report", 0, "out");
    assert_eq!(report, "prep\ntrain\non task-0\n");
    assert_eq!(
        instance(&job, "report", 0)["stdout"],
        format!("~/nfs/jobs/{id}/report.out")
    );
    // The files are in the user's ~/nfs, on the shared filesystem of every host (whose
    // client may serve what it cached for a second or two).
    let path = format!("/var/lib/docklet/global/users/{user}/data/jobs/{id}/steps");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut files = ok("tb2", &format!("cat {path}"));
    while files != "prep\ntrain\nreport\n" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        files = ok("tb2", &format!("cat {path}"));
    }
    assert_eq!(files, "prep\ntrain\nreport\n");
    no_batch_nodes_left(user, Duration::from_secs(60));
}

/// `(index, start, end)` of each instance, as the instances printed them.
fn intervals(token: &str, id: u64, task: &str, count: u64) -> Vec<(u64, f64, f64)> {
    (0..count)
        .map(|i| {
            let out = log(token, id, task, i, "out");
            let mut words = out.split_whitespace();
            let index = words
                .next()
                .and_then(|w| w.parse().ok())
                .unwrap_or(u64::MAX);
            let start: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
            let end: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
            assert_eq!(index, i, "instance {i} printed {out:?}");
            (index, start, end)
        })
        .collect()
}

/// The most intervals that overlap at one moment.
fn most_at_once(intervals: &[(u64, f64, f64)]) -> usize {
    let mut events: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|(_, s, e)| [(*s, 1), (*e, -1)])
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn an_array_with_a_limit_never_runs_more_at_once() {
    let user = "jobarr";
    let (token, _cleanup) = batch_user(user, json!({"vnodes": 8}));
    let started = Instant::now();
    let id = submit(
        &token,
        json!({"name": "sweep", "tasks": [{"name": "p", "array": "0-19%4",
            "cpu_millis": 100, "memory_bytes": 128 * MIB, "disk_bytes": 256 * MIB,
            "script": "s=$(date +%s.%N); sleep 2; echo $DOCKLET_TASK_INDEX $s $(date +%s.%N)"}]}),
    );
    // Never more than 4 instances hold nodes at once, as the API shows them.
    let mut most_active = 0;
    let job = loop {
        let job = show(&token, id);
        let active = job["tasks"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| ["starting", "running"].contains(&i["state"].as_str().unwrap()))
            .count();
        most_active = most_active.max(active);
        assert!(active <= 4, "{active} instances active at once: {job:#}");
        if job["state"] == "succeeded" || job["state"] == "failed" {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "{job:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let runs = intervals(&token, id, "p", 20);
    let at_once = most_at_once(&runs);
    println!(
        "20 instances, %4: done in {:?}; at most {at_once} ran at once (API: {most_active} active)",
        started.elapsed()
    );
    assert!(at_once <= 4, "{at_once} commands ran at once: {runs:?}");
    assert!(at_once >= 2, "the array ran one at a time: {runs:?}");
    no_batch_nodes_left(user, Duration::from_secs(60));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_gang_starts_together_and_reaches_every_node_of_its_hostfile_by_ssh() {
    let user = "jobgang";
    let (token, _cleanup) = batch_user(user, json!({}));
    let id = submit(
        &token,
        json!({"name": "mpi", "tasks": [
            {"name": "first", "nodes": 3, "run_on": "first", "script":
                "cat $DOCKLET_HOSTFILE; for h in $(cat $DOCKLET_HOSTFILE); do ssh -o BatchMode=yes -o ConnectTimeout=10 $h 'echo $(hostname) up'; done"},
            {"name": "all", "nodes": 2, "run_on": "all", "script":
                "echo $DOCKLET_NODE_INDEX of $DOCKLET_NODES on $(hostname) > all.$DOCKLET_NODE_INDEX"},
        ]}),
    );
    let job = wait_job(
        &token,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(180),
    );
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(
        log(&token, id, "first", 0, "out"),
        "task-0\ntask-1\ntask-2\ntask-0 up\ntask-1 up\ntask-2 up\n"
    );
    let hosts = instance(&job, "first", 0)["hosts"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(hosts, 3, "{job:#}");
    let dir = format!("/var/lib/docklet/global/users/{user}/data/jobs/{id}");
    assert_eq!(
        ok("tb1", &format!("cat {dir}/all.0 {dir}/all.1")),
        "0 of 2 on task-0\n1 of 2 on task-1\n"
    );
    no_batch_nodes_left(user, Duration::from_secs(60));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_failing_task_retries_then_fails_the_job_and_its_dependants_never_run() {
    let user = "jobfail";
    let (token, _cleanup) = batch_user(user, json!({}));
    let id = submit(
        &token,
        json!({"name": "flaky", "tasks": [
            {"name": "a", "script": "echo try $DOCKLET_ATTEMPT; exit 3", "retries": 1, "retry_backoff": 1},
            {"name": "b", "depends_on": ["a"], "command": ["true"]},
        ]}),
    );
    let job = wait_job(
        &token,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(180),
    );
    assert_eq!(job["state"], "failed", "{job:#}");
    let reason = job["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("task a")
            && reason.contains("exit code 3")
            && reason.contains("after 1 retries"),
        "{reason}"
    );
    let a = instance(&job, "a", 0);
    assert_eq!(
        (a["attempt"].as_u64(), a["exit_code"].as_i64()),
        (Some(1), Some(3)),
        "{job:#}"
    );
    assert_eq!(a["attempts"].as_array().map(Vec::len), Some(1), "{job:#}");
    assert_eq!(log(&token, id, "a", 0, "out"), "try 0\ntry 1\n");
    let b = instance(&job, "b", 0);
    assert_eq!(b["state"], "cancelled", "{job:#}");
    assert_eq!(
        b["hosts"].as_array().map(Vec::len),
        Some(0),
        "b never ran: {job:#}"
    );
    no_batch_nodes_left(user, Duration::from_secs(60));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_time_limit_kills_its_task() {
    let user = "jobtime";
    let (token, _cleanup) = batch_user(user, json!({}));
    let id = submit(
        &token,
        json!({"name": "slow", "tasks": [
            {"name": "s", "script": "echo begin; sleep 120; echo never", "timeout": "3s", "retries": 2}]}),
    );
    let job = wait_job(
        &token,
        id,
        &["succeeded", "failed", "timed_out"],
        Duration::from_secs(120),
    );
    assert_eq!(job["state"], "timed_out", "{job:#}");
    let s = instance(&job, "s", 0);
    let ran = s["ended_at"].as_u64().unwrap() - s["started_at"].as_u64().unwrap();
    assert!((3..=6).contains(&ran), "ran {ran} s: {job:#}");
    assert_eq!(s["attempt"], 0, "a timeout is not retried: {job:#}");
    assert_eq!(log(&token, id, "s", 0, "out"), "begin\n");
    no_batch_nodes_left(user, Duration::from_secs(60));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn cancel_stops_a_running_job_within_seconds_and_removes_its_nodes() {
    let user = "jobcancel";
    let (token, _cleanup) = batch_user(user, json!({}));
    let id = submit(
        &token,
        json!({"name": "long", "tasks": [
            {"name": "w", "nodes": 2, "script": "echo working; sleep 600"},
            {"name": "after", "depends_on": ["w"], "command": ["true"]}]}),
    );
    wait_job(&token, id, &["running"], Duration::from_secs(120));
    // Its output can be followed live while it runs.
    let followed = std::thread::spawn({
        let token = token.clone();
        move || {
            let mut cmd = curl();
            cmd.args([
                "-s",
                "-N",
                "-m",
                "60",
                "-H",
                &format!("Authorization: Bearer {token}"),
            ])
            .arg(format!(
                "{PORTAL}/api/v1/jobs/{id}/tasks/w/0/log?follow=true"
            ));
            let out = cmd.output().expect("curl");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    });
    wait_for("the output", Duration::from_secs(30), || {
        log(&token, id, "w", 0, "out") == "working\n"
    });
    let cancelled = Instant::now();
    let r = post(&format!("/jobs/{id}/cancel"), &token, &json!({}));
    assert_eq!(r.status, 200, "{r}");
    let job = wait_job(&token, id, &["cancelled"], Duration::from_secs(5));
    let took = cancelled.elapsed();
    println!("cancel → job cancelled in {took:?}");
    assert_eq!(instance(&job, "w", 0)["state"], "cancelled", "{job:#}");
    assert_eq!(instance(&job, "after", 0)["state"], "cancelled", "{job:#}");
    // The followed output ends once the instance has.
    assert_eq!(followed.join().unwrap(), "working\n");
    no_batch_nodes_left(user, Duration::from_secs(30));
    println!("cancel → no nodes left in {:?}", cancelled.elapsed());
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_second_users_task_starts_before_the_first_users_backlog_drains() {
    let (a, b) = ("jobfaira", "jobfairb");
    let token_a = fresh_user(a);
    let token_b = fresh_user(b);
    let _cleanup = Cleanup(&["jobfaira", "jobfairb"], "jobfair");
    // Nodes so large that each host holds one: the site, not the quota, is the limit.
    let hosts = get("/hosts", root());
    let memory = hosts
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["memory_bytes"].as_u64().unwrap_or(0))
        .min()
        .expect("hosts");
    assert!(memory > GIB, "{hosts}");
    let big = memory / 2 + 64 * MIB;
    batch_group(
        "jobfair",
        json!({"memory_bytes": 64 * memory, "vnodes": 100, "jobs": 10}),
        &[a, b],
    );
    let backlog = submit(
        &token_a,
        json!({"name": "backlog", "tasks": [{"name": "t", "array": "0-99", "memory_bytes": big,
            "cpu_millis": 100, "disk_bytes": 256 * MIB, "script": "sleep 2"}]}),
    );
    wait_job(&token_a, backlog, &["running"], Duration::from_secs(120));
    let one = submit(
        &token_b,
        json!({"name": "one", "tasks": [{"name": "t", "memory_bytes": big, "cpu_millis": 100,
            "disk_bytes": 256 * MIB, "command": ["true"]}]}),
    );
    let queued = show(&token_b, one);
    println!("b's task queued: {:#}", instance(&queued, "t", 0));
    let job = wait_job(
        &token_b,
        one,
        &["succeeded", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let first = show(&token_a, backlog);
    let left = first["counts"]["queued"].as_u64().unwrap_or(0);
    println!("when b's task was done, a still had {left} of 100 queued");
    assert!(left > 50, "a's backlog drained first: {first:#}");
    let r = post(&format!("/jobs/{backlog}/cancel"), &token_a, &json!({}));
    assert_eq!(r.status, 200, "{r}");
    wait_job(&token_a, backlog, &["cancelled"], Duration::from_secs(30));
    no_batch_nodes_left(a, Duration::from_secs(60));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn bad_specs_and_quotas_are_refused_with_their_field_and_nothing_is_queued() {
    let user = "jobbad";
    let (token, _cleanup) = batch_user(
        user,
        json!({"cpu_millis": 1000, "memory_bytes": 1u64 << 60, "jobs": 1}),
    );
    let cmd = json!(["true"]);
    let refusals: [(Value, &str, &str); 7] = [
        (
            json!([{"name": "a", "command": cmd, "depends_on": ["b"]},
                   {"name": "b", "command": cmd, "depends_on": ["a"]}]),
            "dependency_cycle",
            "tasks[0].depends_on",
        ),
        (
            json!([{"name": "a", "command": cmd, "depends_on": ["nope"]}]),
            "invalid_dependency",
            "tasks[0].depends_on",
        ),
        (
            json!([{"name": "a", "command": cmd, "image": "nobody/nothing"}]),
            "unusable_image",
            "tasks[0].image",
        ),
        (
            json!([{"name": "a", "command": "echo hi"}]),
            "invalid_command",
            "tasks[0].command",
        ),
        (
            json!([{"name": "a", "command": cmd, "nodes": 2, "cpu_millis": 600}]),
            "quota_exceeded",
            "tasks[0].cpu_millis",
        ),
        (
            json!([{"name": "a", "command": cmd, "memory_bytes": 1u64 << 50, "cpu_millis": 10}]),
            "no_capacity",
            "tasks[0].nodes",
        ),
        (
            json!([{"name": "ok", "command": cmd}, {"name": "b", "command": cmd, "array": "0-100000"}]),
            "invalid_array",
            "tasks[1].array",
        ),
    ];
    for (tasks, code, field) in refusals {
        let r = post("/jobs", &token, &json!({"name": "bad", "tasks": tasks}));
        r.assert_error(422, code);
        assert_eq!(r.json["error"]["field"], field, "{r}");
    }
    let r = get("/jobs", &token);
    assert_eq!(r.json, json!([]), "nothing was queued: {r}");
    // The jobs quota: one at a time.
    let id = submit(
        &token,
        json!({"name": "long", "tasks": [{"name": "s", "script": "sleep 600"}]}),
    );
    let r = post(
        "/jobs",
        &token,
        &json!({"name": "more", "tasks": [{"name": "s", "command": cmd}]}),
    );
    r.assert_error(422, "quota_exceeded");
    let r = post(&format!("/jobs/{id}/cancel"), &token, &json!({}));
    assert_eq!(r.status, 200, "{r}");
    wait_job(&token, id, &["cancelled"], Duration::from_secs(30));
    submit(
        &token,
        json!({"name": "now", "tasks": [{"name": "s", "command": cmd}]}),
    );
}

/// The host a running instance's node 0 is on.
fn host_of(job: &Value, task: &str) -> String {
    instance(job, task, 0)["hosts"][0]
        .as_str()
        .expect("placed")
        .to_owned()
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn kill_9_of_the_master_and_a_worker_mid_job_loses_nothing() {
    let user = "jobkill";
    let (token, _cleanup) = batch_user(user, json!({}));
    let id = submit(
        &token,
        json!({"name": "steady", "tasks": [
            {"name": "a", "script": "echo start; sleep 12; echo done"},
            {"name": "b", "depends_on": ["a"], "array": "0-3", "command": ["true"]}]}),
    );
    let job = wait_job(&token, id, &["running"], Duration::from_secs(120));
    let host = host_of(&job, "a");
    ok("tb1", "systemctl kill -s KILL docklet-master");
    ok(&host, "systemctl kill -s KILL docklet-worker");
    ok("tb1", "sleep 3; docklet-admin wait master --timeout 60s");
    ok(&host, "docklet-admin wait worker --timeout 60s");
    let job = wait_job(
        &token,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(180),
    );
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let a = instance(&job, "a", 0);
    assert_eq!(
        a["attempt"], 0,
        "the running task was adopted, not rerun: {job:#}"
    );
    assert_eq!(log(&token, id, "a", 0, "out"), "start\ndone\n");
    no_batch_nodes_left(user, Duration::from_secs(60));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_lost_hosts_task_reruns_elsewhere() {
    let user = "joblost";
    let (token, _cleanup) = batch_user(user, json!({}));
    let id = submit(
        &token,
        json!({"name": "survivor", "tasks": [
            {"name": "a", "retries": 1, "retry_backoff": 1,
             "script": "echo on $(cat /proc/sys/kernel/hostname) attempt $DOCKLET_ATTEMPT; sleep 20"}]}),
    );
    let job = wait_job(&token, id, &["running"], Duration::from_secs(120));
    let lost = host_of(&job, "a");
    // The host's worker dies and stays away: its lease ends, the host is lost.
    ok(
        &lost,
        "systemctl kill -s KILL docklet-worker; systemctl stop docklet-worker",
    );
    struct Back(String);
    impl Drop for Back {
        fn drop(&mut self) {
            let _ = sh(&self.0, "systemctl start docklet-worker");
        }
    }
    let back = Back(lost.clone());
    let job = wait_job(
        &token,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(180),
    );
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let a = instance(&job, "a", 0);
    assert_eq!(a["attempt"], 1, "{job:#}");
    assert_ne!(a["hosts"][0], lost.as_str(), "{job:#}");
    let first = &a["attempts"][0];
    assert!(
        first["reason"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("host {lost} was lost")),
        "{job:#}"
    );
    drop(back);
    ok(&lost, "docklet-admin wait worker --timeout 60s");
    no_batch_nodes_left(user, Duration::from_secs(60));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn another_user_cannot_see_cancel_or_read_a_job() {
    let (a, b) = ("jobowner", "jobother");
    let token_a = fresh_user(a);
    let token_b = fresh_user(b);
    let _cleanup = Cleanup(&["jobowner", "jobother"], "jobpriv");
    batch_group("jobpriv", json!({}), &[a, b]);
    let id = submit(
        &token_a,
        json!({"name": "private", "tasks": [{"name": "s", "script": "echo secret; sleep 600"}]}),
    );
    wait_job(&token_a, id, &["running"], Duration::from_secs(120));
    for (method, path) in [
        ("GET", format!("/jobs/{id}")),
        ("POST", format!("/jobs/{id}/cancel")),
        ("GET", format!("/jobs/{id}/tasks/s/0/log")),
        ("GET", format!("/jobs/{id}/tasks/s/0/log?follow=true")),
        ("POST", format!("/jobs/{id}/hold")),
    ] {
        let r = api(method, &path, &token_b, Some(&json!({})));
        let code = if path.ends_with("/hold") { 403 } else { 404 };
        assert_eq!(r.status, code, "{method} {path}: {r}");
    }
    assert_eq!(get("/jobs", &token_b).json, json!([]));
    let r = get(&format!("/jobs?user={a}"), &token_b);
    assert_eq!(r.status, 403, "{r}");
    // Still running, and visible to administrators.
    assert_eq!(show(&token_a, id)["state"], "running");
    let all = get("/jobs?all=true", root());
    let mine: Vec<&Value> = all
        .json
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["id"] == id)
        .collect();
    assert_eq!(mine.len(), 1, "{all}");
    let r = post(&format!("/jobs/{id}/cancel"), root(), &json!({}));
    assert_eq!(r.status, 200, "{r}");
    wait_job(&token_a, id, &["cancelled"], Duration::from_secs(30));
    // The owner, hostile, swaps the output for a link to a host secret and a FIFO (from a
    // node of theirs they could; here from a host, as root, which is the same files):
    // reading them through the API gives neither the secret nor a hung request.
    let dir = format!("/var/lib/docklet/global/users/{a}/data/jobs/{id}");
    ok(
        "tb2",
        &format!("ln -sfn /etc/shadow {dir}/s.out && rm -f {dir}/s.err && mkfifo {dir}/s.err"),
    );
    for stream in ["out", "err"] {
        // Another host's GlusterFS client may see the swap a moment later (until then the
        // old file is gone: empty output).
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let started = std::time::Instant::now();
            let r = get(
                &format!("/jobs/{id}/tasks/s/0/log?stream={stream}"),
                &token_a,
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{stream}: hung"
            );
            assert!(!r.to_string().contains("root:"), "{stream}: {r}");
            if r.status == 403 {
                break;
            }
            assert!(
                r.status == 200 && std::time::Instant::now() < deadline,
                "{stream}: {r}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn administrators_list_hold_release_and_cancel_jobs_with_docklet_admin() {
    let user = "jobadmin";
    let (token, _cleanup) = batch_user(user, json!({}));
    // The batch quota is the group's to change, apart from its interactive quota.
    let r = api(
        "PATCH",
        "/groups/jobadmin",
        root(),
        Some(
            &json!({"batch": {"cpu_millis": 4000, "memory_bytes": 4 * GIB,
            "disk_bytes": 16 * GIB, "vnodes": 3, "jobs": 5}}),
        ),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["batch"]["vnodes"], 3, "{r}");
    assert_eq!(r.json["quota"]["vnodes"], 4, "{r}");
    let id = submit(
        &token,
        json!({"name": "held", "tasks": [
            {"name": "a", "script": "sleep 3"},
            {"name": "b", "depends_on": ["a"], "command": ["true"]}]}),
    );
    wait_job(&token, id, &["running"], Duration::from_secs(120));
    let listed = ok("tb1", "docklet-admin jobs --json");
    let jobs: Value = serde_json::from_str(&listed).expect("JSON");
    let mine = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .unwrap_or_else(|| panic!("job {id} not listed: {listed}"));
    assert_eq!(
        (mine["user"].as_str(), mine["state"].as_str()),
        (Some(user), Some("running"))
    );
    let table = ok("tb1", "docklet-admin jobs");
    assert!(table.contains("held") && table.contains(user), "{table}");
    // Held: a ends, b does not start.
    let held = ok("tb1", &format!("docklet-admin job hold {id}"));
    assert!(held.contains(&format!("Job {id} held.")), "{held}");
    std::thread::sleep(Duration::from_secs(6));
    let job = show(&token, id);
    assert_eq!(instance(&job, "a", 0)["state"], "succeeded", "{job:#}");
    assert_eq!(instance(&job, "b", 0)["state"], "held", "{job:#}");
    assert_eq!(job["state"], "held", "{job:#}");
    // Users may not hold or release.
    post(&format!("/jobs/{id}/release"), &token, &json!({})).assert_error(403, "forbidden");
    ok("tb1", &format!("docklet-admin job release {id}"));
    let job = wait_job(
        &token,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let ended = ok("tb1", "docklet-admin jobs --ended --json");
    assert!(ended.contains(&format!("\"id\": {id}")), "{ended}");
    // And cancel.
    let long = submit(
        &token,
        json!({"name": "long", "tasks": [{"name": "s", "script": "sleep 600"}]}),
    );
    wait_job(&token, long, &["running"], Duration::from_secs(120));
    ok("tb1", &format!("docklet-admin job cancel {long}"));
    let job = wait_job(&token, long, &["cancelled"], Duration::from_secs(5));
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or("")
            .contains("cancelled by root"),
        "{job:#}"
    );
    let missing = sh("tb1", "docklet-admin job cancel 999999");
    assert_ne!(missing.code, 0, "an unknown job is an error");
    no_batch_nodes_left(user, Duration::from_secs(60));
}
