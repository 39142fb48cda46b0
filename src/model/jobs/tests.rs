use super::*;
use crate::model::quota::NodeSize;
use crate::model::vnode::TaskExit;
use serde_json::json;
use spec::{ArraySpec, SpecRefusal, parse_array, parse_duration, resolve_workdir};

fn job(tasks: serde_json::Value) -> Job {
    let request: JobRequest = serde_json::from_value(json!({"name": "j", "tasks": tasks})).unwrap();
    let defaults = NodeSize {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        disk_bytes: 1 << 30,
    };
    Job {
        id: 5,
        user: "alice".into(),
        group: "foundation".into(),
        spec: request.resolve(5, &defaults, "base").unwrap(),
        submitted_at: 100,
        held: false,
        cancel: None,
        ended: None,
    }
}

fn instance(task: &str, index: u32, state: State, nodes: usize) -> Instance {
    let nodes = (0..nodes)
        .map(|i| PlacedNode {
            id: format!("alice-5-0-{index}-0-{i}"),
            host: "tb1".into(),
        })
        .collect();
    Instance {
        state,
        ..Instance::first_attempt(task, index, instance_cluster(5, 0, index, 0), nodes, 100)
    }
}

fn node(phase: Phase) -> NodeSeen {
    NodeSeen {
        exists: true,
        host_up: true,
        phase: Some(phase),
        reason: None,
        task: None,
    }
}

fn exited(code: i32, result: &str) -> NodeSeen {
    NodeSeen {
        task: Some(TaskStatus {
            started_at: 110,
            exit: Some(TaskExit {
                ended_at: 120,
                code,
                result: result.into(),
                cpu_usec: None,
                memory_peak_bytes: None,
            }),
        }),
        ..node(Phase::Running)
    }
}

#[test]
fn a_gang_goes_once_every_node_is_up() {
    let j = job(json!([{"name": "mpi", "command": ["true"], "nodes": 3}]));
    let t = &j.spec.tasks[0];
    let i = instance("mpi", 0, State::Starting, 3);
    let up = [
        node(Phase::Running),
        node(Phase::Creating),
        node(Phase::Running),
    ];
    assert_eq!(advance(&j, t, &i, &up, 110), None);
    let up = [
        node(Phase::Running),
        node(Phase::Running),
        node(Phase::Running),
    ];
    assert_eq!(advance(&j, t, &i, &up, 110), Some(Transition::Go));
    let mut started = up.clone();
    started[0].task = Some(TaskStatus {
        started_at: 111,
        exit: None,
    });
    assert_eq!(
        advance(&j, t, &i, &started, 112),
        Some(Transition::Started { at: 111 })
    );
    assert!(matches!(
        advance(&j, t, &i, &up, 100 + BOOT_TIMEOUT_SECS + 1),
        None | Some(Transition::Go)
    ));
}

#[test]
fn failures_retry_with_backoff_then_fail() {
    let j = job(json!([{"name": "a", "command": ["false"], "retries": 2, "retry_backoff": 10}]));
    let t = &j.spec.tasks[0];
    let mut i = instance("a", 0, State::Running, 1);
    let Some(Transition::End {
        state,
        retry_at,
        reason,
        exit_code,
        usage,
    }) = advance(&j, t, &i, &[exited(3, "exit-code")], 200)
    else {
        panic!("ends");
    };
    assert_eq!(
        (state, retry_at, exit_code),
        (State::Retrying, Some(210), Some(3))
    );
    assert!(reason.contains("exit code 3"), "{reason}");
    // What the command used comes with its end (here: nothing said).
    assert_eq!(usage, None);
    i.attempt = 1;
    let Some(Transition::End { retry_at, .. }) = advance(&j, t, &i, &[exited(3, "exit-code")], 200)
    else {
        panic!("ends");
    };
    assert_eq!(retry_at, Some(220));
    i.attempt = 2;
    let Some(Transition::End { state, reason, .. }) =
        advance(&j, t, &i, &[exited(3, "exit-code")], 200)
    else {
        panic!("ends");
    };
    assert_eq!(state, State::Failed);
    assert!(reason.contains("after 2 retries"), "{reason}");
}

#[test]
fn success_timeout_lost_host_and_cancel() {
    let j = job(json!([{"name": "a", "command": ["x"], "timeout": 5, "retries": 1}]));
    let t = &j.spec.tasks[0];
    let i = instance("a", 0, State::Running, 1);
    assert!(matches!(
        advance(&j, t, &i, &[exited(0, "success")], 200),
        Some(Transition::End {
            state: State::Succeeded,
            ..
        })
    ));
    // A timeout is final, whatever the retries.
    assert!(matches!(
        advance(&j, t, &i, &[exited(137, "timeout")], 200),
        Some(Transition::End {
            state: State::TimedOut,
            ..
        })
    ));
    let mut lost = node(Phase::Running);
    lost.host_up = false;
    let Some(Transition::End { state, reason, .. }) = advance(&j, t, &i, &[lost], 200) else {
        panic!("ends");
    };
    assert_eq!(state, State::Retrying);
    assert!(reason.contains("host tb1 was lost"), "{reason}");
    let mut cancelled = j.clone();
    cancelled.cancel = Some(Cancel {
        at: 150,
        by: "alice".into(),
    });
    assert!(matches!(
        advance(&cancelled, t, &i, &[node(Phase::Running)], 200),
        Some(Transition::End {
            state: State::Cancelled,
            ..
        })
    ));
}

#[test]
fn run_on_all_waits_for_every_node() {
    let j = job(json!([{"name": "a", "command": ["x"], "nodes": 2, "run_on": "all"}]));
    let t = &j.spec.tasks[0];
    let i = instance("a", 0, State::Running, 2);
    let mut one = node(Phase::Running);
    one.task = Some(TaskStatus {
        started_at: 110,
        exit: None,
    });
    assert_eq!(advance(&j, t, &i, &[exited(0, "success"), one], 200), None);
    let Some(Transition::End { state, reason, .. }) = advance(
        &j,
        t,
        &i,
        &[exited(0, "success"), exited(2, "exit-code")],
        200,
    ) else {
        panic!("ends");
    };
    assert_eq!(state, State::Failed);
    assert!(reason.contains("on task-1"), "{reason}");
}

fn records(list: Vec<Instance>) -> Instances {
    list.into_iter()
        .map(|i| ((i.task.clone(), i.index), i))
        .collect()
}

#[test]
fn dependencies_arrays_and_broken_chains() {
    let j = job(json!([
        {"name": "prep", "command": ["x"]},
        {"name": "work", "command": ["x"], "depends_on": ["prep"], "array": "0-9%4"},
        {"name": "sum", "command": ["x"], "depends_on": ["work"]},
    ]));
    let q = queue_of(&j, &Instances::new(), 100);
    assert_eq!(q.len(), 12);
    assert!(q[0].ready && q[0].state == State::Queued);
    assert!(q[1..].iter().all(|p| p.state == State::Waiting && !p.ready));
    // prep done, 2 of work running: 2 more may start.
    let mut done = records(vec![
        instance("prep", 0, State::Succeeded, 1),
        instance("work", 0, State::Running, 1),
        instance("work", 1, State::Starting, 1),
    ]);
    let q = queue_of(&j, &done, 100);
    let ready: Vec<u32> = q.iter().filter(|p| p.ready).map(|p| p.index).collect();
    assert_eq!(ready, [2, 3]);
    assert!(
        q.iter()
            .any(|p| p.reason.as_deref() == Some("array limit: 4 at once"))
    );
    assert_eq!(outcome(&j, &done, 100), None);
    // work[0] failed for good: sum never runs; the job fails once nothing runs.
    done.insert(("work".into(), 0), {
        let mut i = instance("work", 0, State::Failed, 1);
        i.reason = Some("the command failed: exit code 1".into());
        i
    });
    done.remove(&("work".into(), 1));
    let q = queue_of(&j, &done, 100);
    let sum = q.iter().find(|p| p.task == 2).unwrap();
    assert_eq!(sum.state, State::Cancelled);
    assert_eq!(outcome(&j, &done, 100), None, "work[1..9] can still run");
    for index in 1..10 {
        done.insert(
            ("work".into(), index),
            instance("work", index, State::Succeeded, 1),
        );
    }
    let end = outcome(&j, &done, 300).unwrap();
    assert_eq!(end.state, State::Failed);
    assert_eq!(
        end.reason.as_deref(),
        Some("task work[0]: the command failed: exit code 1")
    );
}

#[test]
fn retries_wait_for_their_time_and_cancel_ends_the_job() {
    let j = job(json!([{"name": "a", "command": ["x"], "retries": 3}]));
    let mut r = instance("a", 0, State::Retrying, 1);
    r.retry_at = Some(200);
    let done = records(vec![r]);
    assert!(!queue_of(&j, &done, 150)[0].ready);
    assert!(queue_of(&j, &done, 200)[0].ready);
    assert_eq!(queue_of(&j, &done, 200)[0].state, State::Retrying);
    let mut cancelled = j.clone();
    cancelled.cancel = Some(Cancel {
        at: 1,
        by: "root".into(),
    });
    assert_eq!(
        outcome(&cancelled, &done, 300).map(|e| e.state),
        Some(State::Cancelled)
    );
    let held = Job { held: true, ..j };
    assert_eq!(queue_of(&held, &Instances::new(), 0)[0].state, State::Held);
    assert_eq!(outcome(&held, &Instances::new(), 0), None);
}

// ---- the spec and its checks (spec.rs) ----

const SPEC_GIB: u64 = 1 << 30;

fn spec_defaults() -> NodeSize {
    NodeSize {
        cpu_millis: 1000,
        memory_bytes: SPEC_GIB,
        disk_bytes: 4 * SPEC_GIB,
    }
}

fn resolve_spec(body: serde_json::Value) -> Result<JobSpec, SpecRefusal> {
    let request: JobRequest = serde_json::from_value(body).expect("parses");
    request.resolve(7, &spec_defaults(), "base")
}

#[test]
fn a_dag_resolves_with_defaults() {
    let spec = resolve_spec(json!({"name": "etl", "tasks": [
        {"name": "prep", "command": ["echo", "hi"]},
        {"name": "train", "depends_on": ["prep"], "script": "echo $DOCKLET_TASK_INDEX",
         "array": "0-19%4", "nodes": 3, "env": {"A": "1"}, "timeout": "10m", "retries": 2},
    ]}))
    .unwrap();
    let prep = &spec.tasks[0];
    assert_eq!(prep.workdir, "jobs/7");
    assert_eq!(prep.image, "base");
    assert_eq!(
        (prep.nodes, prep.run_on, prep.instances()),
        (1, RunOn::First, 1)
    );
    assert_eq!(prep.output_paths(0).0, "jobs/7/prep.out");
    let train = &spec.tasks[1];
    assert_eq!(
        train.array,
        Some(ArraySpec {
            first: 0,
            last: 19,
            limit: Some(4)
        })
    );
    assert_eq!(train.timeout_secs, Some(600));
    assert_eq!(train.output_paths(3).1, "jobs/7/train.3.err");
    assert_eq!(train.program.argv("train")[..2], ["/bin/bash", "-c"]);
    assert_eq!(train.instance_size().vnodes, 3);
}

fn refusal(body: serde_json::Value) -> (String, &'static str) {
    let r = resolve_spec(body).expect_err("refused");
    (r.field, r.code)
}

#[test]
fn bad_specs_name_their_field() {
    let cmd = json!(["true"]);
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd, "depends_on": ["b"]},
            {"name": "b", "command": cmd, "depends_on": ["c"]},
            {"name": "c", "command": cmd, "depends_on": ["a"]}]})),
        ("tasks[0].depends_on".into(), "dependency_cycle")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd, "depends_on": ["nope"]}]})),
        ("tasks[0].depends_on".into(), "invalid_dependency")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [{"name": "a", "command": "echo hi"}]})),
        ("tasks[0].command".into(), "invalid_command")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [{"name": "a", "command": cmd, "nodes": 0}]})),
        ("tasks[0].nodes".into(), "invalid_size")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd, "memory_bytes": 1}]})),
        ("tasks[0].memory_bytes".into(), "invalid_size")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd, "workdir": "../etc"}]})),
        ("tasks[0].workdir".into(), "invalid_workdir")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd, "env": {"DOCKLET_X": "1"}}]})),
        ("tasks[0].env.DOCKLET_X".into(), "invalid_env")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd}, {"name": "a", "command": cmd}]})),
        ("tasks[1].name".into(), "invalid_name")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd, "array": "5-2"}]})),
        ("tasks[0].array".into(), "invalid_array")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd, "run_on": "some"}]})),
        ("tasks[0].run_on".into(), "invalid_run_on")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": [
            {"name": "a", "command": cmd, "timeout": "5 years"}]})),
        ("tasks[0].timeout".into(), "invalid_duration")
    );
    assert_eq!(
        refusal(json!({"name": "", "tasks": [{"name": "a", "command": cmd}]})),
        ("name".into(), "invalid_name")
    );
    assert_eq!(
        refusal(json!({"name": "j", "tasks": []})),
        ("tasks".into(), "invalid_tasks")
    );
}

#[test]
fn arrays_durations_and_workdirs_parse() {
    assert_eq!(parse_array("10").unwrap().len(), 10);
    assert_eq!(parse_array("0-99%4").unwrap().limit, Some(4));
    assert!(parse_array("0-10000").is_err());
    assert!(parse_array("0-9%0").is_err());
    assert!(parse_array("x").is_err());
    assert_eq!(parse_duration(&json!(90)).unwrap(), 90);
    assert_eq!(parse_duration(&json!("2h")).unwrap(), 7200);
    assert!(parse_duration(&json!(-1)).is_err());
    assert!(parse_duration(&json!("3w")).is_err());
    assert_eq!(resolve_workdir("~/nfs/a/b/").unwrap(), "a/b");
    assert_eq!(resolve_workdir("/root/nfs/a").unwrap(), "a");
    assert_eq!(resolve_workdir("a//b").unwrap(), "a/b");
    assert!(resolve_workdir("/etc").is_err());
    assert!(resolve_workdir("~/x").is_err());
    assert!(resolve_workdir("a/../../b").is_err());
}

#[test]
fn usage_sums_cpu_over_the_nodes_and_keeps_the_largest_memory_peak() {
    let j = job(json!([{"name": "a", "command": ["x"], "nodes": 2, "run_on": "all"}]));
    let t = &j.spec.tasks[0];
    let i = instance("a", 0, State::Running, 2);
    let with = |cpu: Option<u64>, mem: Option<u64>| {
        let mut n = exited(0, "success");
        let exit = n.task.as_mut().unwrap().exit.as_mut().unwrap();
        (exit.cpu_usec, exit.memory_peak_bytes) = (cpu, mem);
        n
    };
    let nodes = [
        with(Some(1_500_000), Some(40 << 20)),
        with(Some(500_000), Some(90 << 20)),
    ];
    let Some(Transition::End { state, usage, .. }) = advance(&j, t, &i, &nodes, 200) else {
        panic!("ends");
    };
    assert_eq!(state, State::Succeeded);
    assert_eq!(
        usage,
        Some(TaskUsage {
            cpu_usec: 2_000_000,
            memory_peak_bytes: Some(90 << 20)
        })
    );
    // An older worker says nothing of usage: none is made up.
    assert_eq!(usage_of(&[with(None, None)]), None);
}
