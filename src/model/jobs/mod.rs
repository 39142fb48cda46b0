//! Batch jobs: a DAG of tasks, each run as one or more instances (an array) on vnodes of
//! their own that exist only while it runs. What is kept in etcd (`jobs/<id>`, one record per
//! started instance under `job-tasks/<id>/`), the states, and the decisions the leading
//! master's job controller makes on them — what an instance does next ([`advance`]), which
//! instances may be queued ([`queue_of`]), when a job is over ([`outcome`]) — all pure.
//! Which queued instance starts where is [`schedule`]'s.

pub mod schedule;
pub mod spec;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::vnode::{Phase, TaskStatus};
pub use spec::{JobRequest, JobSpec, RunOn, TaskSpec};

/// States of jobs, tasks and instances alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Ready to start, waiting for room, quota or its turn.
    Queued,
    /// Waiting for the tasks it depends on.
    Waiting,
    /// Held by an administrator: nothing of it starts until released.
    Held,
    /// Its nodes are booting.
    Starting,
    Running,
    /// Failed, and starts again after a backoff.
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::Failed | State::Cancelled | State::TimedOut
        )
    }

    /// Holds nodes.
    pub fn is_active(self) -> bool {
        matches!(self, State::Starting | State::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Waiting => "waiting",
            State::Held => "held",
            State::Starting => "starting",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::TimedOut => "timed_out",
        }
    }
}

/// Stored at `jobs/<id>`: written at submit; cancel and hold change it; the controller
/// writes `ended` once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub user: String,
    /// The user's group at submit: whose batch quota and fair share it counts against.
    pub group: String,
    pub spec: JobSpec,
    pub submitted_at: u64,
    #[serde(default)]
    pub held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<Cancel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<JobEnd>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cancel {
    pub at: u64,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEnd {
    pub at: u64,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One node of an instance: its vnode and host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacedNode {
    pub id: String,
    pub host: String,
}

/// An earlier attempt of an instance, kept for the job's page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub state: State,
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    pub ended_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub reason: String,
}

/// Stored at `job-tasks/<id>/<task>/<index>` once the instance first starts; only the
/// leading master writes it. Instances never started have no record: they are queued or
/// waiting, as [`queue_of`] derives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub task: String,
    pub index: u32,
    /// 0 for the first run, then one more per retry.
    pub attempt: u32,
    pub state: State,
    /// The vnodes' cluster of this attempt (see [`instance_cluster`]).
    pub cluster: String,
    pub nodes: Vec<PlacedNode>,
    /// When this attempt's nodes were asked for.
    pub created_at: u64,
    /// When its command started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A retrying instance starts again at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// What the last ended attempt's command used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TaskUsage>,
}

impl Instance {
    /// The record of an instance's first attempt, its nodes just asked for.
    pub fn first_attempt(
        task: &str,
        index: u32,
        cluster: String,
        nodes: Vec<PlacedNode>,
        now: u64,
    ) -> Instance {
        Instance {
            task: task.to_owned(),
            index,
            attempt: 0,
            state: State::Starting,
            cluster,
            nodes,
            created_at: now,
            started_at: None,
            ended_at: None,
            exit_code: None,
            reason: None,
            retry_at: None,
            attempts: Vec::new(),
            usage: None,
        }
    }
}

/// The cluster name of an attempt's vnodes: `<job>-<task position>-<index>-<attempt>`, a
/// batch cluster (see [`crate::model::vnode::is_batch_cluster`]).
pub fn instance_cluster(job: u64, task_position: usize, index: u32, attempt: u32) -> String {
    format!("{job}-{task_position}-{index}-{attempt}")
}

/// How long an instance's nodes may take to boot before the attempt counts as failed.
pub const BOOT_TIMEOUT_SECS: u64 = 300;
/// How long past its time limit the controller waits for the worker to report the kill
/// before ending the instance itself.
const TIMEOUT_GRACE_SECS: u64 = 30;

/// What the controller sees of one node of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSeen {
    /// Its spec is still there.
    pub exists: bool,
    /// Its host is registered (its worker's lease is alive).
    pub host_up: bool,
    pub phase: Option<Phase>,
    pub reason: Option<String>,
    pub task: Option<TaskStatus>,
}

/// What an active instance does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Every node is up: tell the nodes to run the command.
    Go,
    /// Its command ran on every node that runs it (each node's own report holds the time).
    Started { at: u64 },
    /// This attempt is over: the nodes go; the instance becomes `state` (`Retrying` with
    /// `retry_at`, or final).
    End {
        state: State,
        exit_code: Option<i32>,
        reason: String,
        retry_at: Option<u64>,
        /// What its command used, where its nodes said.
        usage: Option<TaskUsage>,
    },
}

/// What an attempt's command used on its nodes: CPU time summed, memory the most any one
/// node used at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskUsage {
    pub cpu_usec: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
}

/// The usage the nodes reported with their ends, if any did.
pub fn usage_of(nodes: &[NodeSeen]) -> Option<TaskUsage> {
    let exits: Vec<_> = nodes
        .iter()
        .filter_map(|n| n.task.as_ref()?.exit.as_ref())
        .filter(|e| e.cpu_usec.is_some())
        .collect();
    if exits.is_empty() {
        return None;
    }
    Some(TaskUsage {
        cpu_usec: exits.iter().filter_map(|e| e.cpu_usec).sum(),
        memory_peak_bytes: exits.iter().filter_map(|e| e.memory_peak_bytes).max(),
    })
}

/// The instance's next step, from its nodes as seen now.
pub fn advance(
    job: &Job,
    task: &TaskSpec,
    instance: &Instance,
    nodes: &[NodeSeen],
    now: u64,
) -> Option<Transition> {
    let mut step = next_step(job, task, instance, nodes, now)?;
    if let Transition::End { usage, .. } = &mut step {
        *usage = usage_of(nodes);
    }
    Some(step)
}

fn next_step(
    job: &Job,
    task: &TaskSpec,
    instance: &Instance,
    nodes: &[NodeSeen],
    now: u64,
) -> Option<Transition> {
    if !instance.state.is_active() {
        return None;
    }
    if let Some(cancel) = &job.cancel {
        return Some(Transition::End {
            state: State::Cancelled,
            exit_code: None,
            reason: format!("cancelled by {}", cancel.by),
            retry_at: None,
            usage: None,
        });
    }
    let failed = |reason: String, exit_code: Option<i32>| {
        Some(failure(task, instance, reason, exit_code, now))
    };
    for (i, node) in nodes.iter().enumerate() {
        let host = instance.nodes.get(i).map_or("?", |n| n.host.as_str());
        if !node.host_up {
            return failed(format!("host {host} was lost"), None);
        }
        if !node.exists {
            return failed(format!("node task-{i} vanished"), None);
        }
    }
    let runners: Vec<(usize, &NodeSeen)> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| task.run_on == RunOn::All || *i == 0)
        .collect();
    if instance.state == State::Starting {
        if let Some((i, node)) = nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.phase == Some(Phase::Failed))
        {
            let why = node.reason.as_deref().unwrap_or("no reason given");
            return failed(format!("node task-{i} failed to boot: {why}"), None);
        }
        if runners.iter().all(|(_, n)| n.task.is_some()) {
            let at = runners
                .iter()
                .filter_map(|(_, n)| n.task.as_ref().map(|t| t.started_at))
                .min()
                .unwrap_or(now);
            return Some(Transition::Started { at });
        }
        if nodes.iter().all(|n| n.phase == Some(Phase::Running)) {
            return Some(Transition::Go);
        }
        if now.saturating_sub(instance.created_at) > BOOT_TIMEOUT_SECS {
            return failed(
                format!("its nodes did not boot within {BOOT_TIMEOUT_SECS} s"),
                None,
            );
        }
        return None;
    }
    // Running: done when every node that runs the command has reported its end.
    let mut exits = Vec::new();
    for (i, node) in &runners {
        match node.task.as_ref().and_then(|t| t.exit.as_ref()) {
            Some(exit) => exits.push((*i, exit)),
            None if node.phase != Some(Phase::Running) => {
                let why = node.reason.as_deref().unwrap_or("it stopped");
                return failed(format!("node task-{i} stopped while running: {why}"), None);
            }
            None => {}
        }
    }
    if exits.len() < runners.len() {
        let started = instance.started_at.unwrap_or(instance.created_at);
        if let Some(limit) = task.timeout_secs
            && now > started + limit + TIMEOUT_GRACE_SECS
        {
            return Some(timed_out(limit, None));
        }
        return None;
    }
    if let Some((_, exit)) = exits.iter().find(|(_, e)| e.timed_out()) {
        return Some(timed_out(task.timeout_secs.unwrap_or(0), Some(exit.code)));
    }
    match exits.iter().find(|(_, e)| e.code != 0) {
        Some((i, exit)) => {
            let on = if task.run_on == RunOn::All {
                format!(" on task-{i}")
            } else {
                String::new()
            };
            let how = if exit.result == "no-workdir" {
                "its working directory could not be made (a link in the way?)".to_owned()
            } else if exit.code > 128 && exit.result == "signal" {
                format!("killed by signal {}", exit.code - 128)
            } else if exit.code < 0 {
                "lost".to_owned()
            } else {
                format!("exit code {}", exit.code)
            };
            failed(format!("the command failed{on}: {how}"), Some(exit.code))
        }
        None => Some(Transition::End {
            state: State::Succeeded,
            exit_code: Some(0),
            reason: "exit code 0".into(),
            retry_at: None,
            usage: None,
        }),
    }
}

fn timed_out(limit: u64, exit_code: Option<i32>) -> Transition {
    Transition::End {
        state: State::TimedOut,
        exit_code,
        reason: format!("killed after its time limit of {limit} s"),
        retry_at: None,
        usage: None,
    }
}

/// A failed attempt: retried after the backoff (doubling) while retries are left.
fn failure(
    task: &TaskSpec,
    instance: &Instance,
    reason: String,
    exit_code: Option<i32>,
    now: u64,
) -> Transition {
    if instance.attempt < task.retries {
        let backoff = task
            .retry_backoff_secs
            .saturating_mul(1 << instance.attempt.min(20))
            .min(spec::MAX_BACKOFF_SECS);
        Transition::End {
            state: State::Retrying,
            exit_code,
            reason: format!(
                "{reason}; retry {} of {} in {backoff} s",
                instance.attempt + 1,
                task.retries
            ),
            retry_at: Some(now + backoff),
            usage: None,
        }
    } else {
        let tries = match task.retries {
            0 => String::new(),
            n => format!(" (after {n} retries)"),
        };
        Transition::End {
            state: State::Failed,
            exit_code,
            reason: format!("{reason}{tries}"),
            retry_at: None,
            usage: None,
        }
    }
}

/// Applies an [`Transition::End`] to the record: the attempt goes to history when retried.
pub fn end_attempt(
    instance: &mut Instance,
    state: State,
    exit_code: Option<i32>,
    reason: String,
    retry_at: Option<u64>,
    now: u64,
) {
    instance.state = state;
    instance.ended_at = Some(now);
    instance.exit_code = exit_code;
    instance.reason = Some(reason);
    instance.retry_at = retry_at;
}

/// Starts a new attempt on the record of a retrying instance, keeping the last one.
pub fn next_attempt(instance: &mut Instance, cluster: String, nodes: Vec<PlacedNode>, now: u64) {
    instance.attempts.push(Attempt {
        state: State::Failed,
        hosts: instance.nodes.iter().map(|n| n.host.clone()).collect(),
        started_at: instance.started_at,
        ended_at: instance.ended_at.unwrap_or(now),
        exit_code: instance.exit_code,
        reason: instance.reason.clone().unwrap_or_default(),
    });
    instance.attempt += 1;
    instance.state = State::Starting;
    instance.cluster = cluster;
    instance.nodes = nodes;
    instance.created_at = now;
    instance.started_at = None;
    instance.ended_at = None;
    instance.exit_code = None;
    instance.reason = None;
    instance.retry_at = None;
    instance.usage = None;
}

/// Where queued instances stand and why they wait, as the leading master's last pass
/// ordered them. Stored at `batch/queue`; keyed by [`queue_key`]. Only the first
/// [`QUEUE_ORDER_KEPT`] are kept: beyond that, a position says little.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueOrder {
    pub at: u64,
    pub entries: BTreeMap<String, QueueEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub position: usize,
    pub reason: String,
    /// When it is expected to start, where time limits tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
}

pub const QUEUE_ORDER_KEPT: usize = 2000;

pub fn queue_key(job: u64, task: &str, index: u32) -> String {
    format!("{job}/{task}/{index}")
}

/// A job's state while it has not ended: held, running (something runs), starting,
/// queued (something may start), retrying, or waiting.
pub fn live_state(job: &Job, instances: &Instances, pending: &[Pending]) -> State {
    if let Some(end) = &job.ended {
        return end.state;
    }
    if job.held {
        return State::Held;
    }
    let active = |s: State| instances.values().any(|i| i.state == s);
    if active(State::Running) {
        State::Running
    } else if active(State::Starting) {
        State::Starting
    } else if pending.iter().any(|p| p.state == State::Queued) {
        State::Queued
    } else if pending.iter().any(|p| p.state == State::Retrying) {
        State::Retrying
    } else if job.cancel.is_some() {
        State::Cancelled
    } else {
        State::Waiting
    }
}

/// The instances of a job by task and index (those with a record).
pub type Instances = HashMap<(String, u32), Instance>;

/// How far each task got: all its instances succeeded, one can no longer succeed, or
/// neither yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskProgress {
    Done,
    Broken,
    Open,
}

fn task_progress(task: &TaskSpec, instances: &Instances) -> TaskProgress {
    let mut done = true;
    for index in task.indices() {
        match instances.get(&(task.name.clone(), index)).map(|i| i.state) {
            Some(State::Succeeded) => {}
            Some(s) if s.is_final() => return TaskProgress::Broken,
            _ => done = false,
        }
    }
    if done {
        TaskProgress::Done
    } else {
        TaskProgress::Open
    }
}

/// An instance without a running attempt: why it is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub task: usize,
    pub index: u32,
    pub state: State,
    /// Set for `Waiting`, `Held` and for what the array limit holds back.
    pub reason: Option<String>,
    /// May start now (its retry, if any, is due): a candidate for the scheduler.
    pub ready: bool,
}

/// Every instance of the job that is not active, with its state: `waiting` for
/// dependencies, `held`, `queued` (ready, or held back by its array's limit), `retrying`
/// (ready once due), or `cancelled` when a task it depends on failed. Final instances are
/// left out.
pub fn queue_of(job: &Job, instances: &Instances, now: u64) -> Vec<Pending> {
    let progress: BTreeMap<&str, TaskProgress> = job
        .spec
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), task_progress(t, instances)))
        .collect();
    let mut out = Vec::new();
    for (position, task) in job.spec.tasks.iter().enumerate() {
        let broken = blocked_by(job, &task.name, &progress);
        let waiting_on: Vec<&str> = task
            .depends_on
            .iter()
            .filter(|d| progress[d.as_str()] != TaskProgress::Done)
            .map(String::as_str)
            .collect();
        let active = task
            .indices()
            .filter(|i| {
                instances
                    .get(&(task.name.clone(), *i))
                    .is_some_and(|r| r.state.is_active())
            })
            .count() as u32;
        let mut room = task
            .array
            .and_then(|a| a.limit)
            .map_or(u32::MAX, |limit| limit.saturating_sub(active));
        for index in task.indices() {
            let record = instances.get(&(task.name.clone(), index));
            let retry_due = match record {
                None => true,
                Some(r) if r.state == State::Retrying => r.retry_at.is_none_or(|at| at <= now),
                Some(_) => continue,
            };
            let state_if_waiting = record.map_or(State::Queued, |r| r.state);
            let (state, reason, ready) = if let Some(failed) = &broken {
                (
                    State::Cancelled,
                    Some(format!("not run: task {failed} did not succeed")),
                    false,
                )
            } else if job.cancel.is_some() {
                (
                    State::Cancelled,
                    Some("the job was cancelled".into()),
                    false,
                )
            } else if !waiting_on.is_empty() {
                (
                    State::Waiting,
                    Some(format!("waiting for {}", waiting_on.join(", "))),
                    false,
                )
            } else if job.held {
                (State::Held, Some("held by an administrator".into()), false)
            } else if !retry_due {
                (state_if_waiting, None, false)
            } else if room == 0 {
                let limit = task.array.and_then(|a| a.limit).unwrap_or(0);
                (
                    state_if_waiting,
                    Some(format!("array limit: {limit} at once")),
                    false,
                )
            } else {
                room -= 1;
                (state_if_waiting, None, true)
            };
            out.push(Pending {
                task: position,
                index,
                state,
                reason,
                ready,
            });
        }
    }
    out
}

/// The first task `task` depends on (directly or not) that can no longer succeed.
fn blocked_by(job: &Job, task: &str, progress: &BTreeMap<&str, TaskProgress>) -> Option<String> {
    let mut stack: Vec<&str> = vec![task];
    let mut seen = std::collections::HashSet::new();
    while let Some(name) = stack.pop() {
        let Some(spec) = job.spec.task(name) else {
            continue;
        };
        for dep in &spec.depends_on {
            if progress.get(dep.as_str()) == Some(&TaskProgress::Broken) {
                return Some(dep.clone());
            }
            if seen.insert(dep.as_str()) {
                stack.push(dep);
            }
        }
    }
    None
}

/// The job's end once nothing of it runs and nothing more can start: cancelled, failed (the
/// first instance that failed, and why), timed out, or succeeded.
pub fn outcome(job: &Job, instances: &Instances, now: u64) -> Option<JobEnd> {
    if instances.values().any(|i| i.state.is_active()) {
        return None;
    }
    let pending = queue_of(job, instances, now);
    let can_run = pending
        .iter()
        .any(|p| !p.state.is_final() && job.cancel.is_none());
    if can_run {
        return None;
    }
    let first_bad = |state: State| {
        let mut bad: Vec<&Instance> = instances.values().filter(|i| i.state == state).collect();
        bad.sort_by_key(|i| (i.ended_at, i.task.clone(), i.index));
        bad.first().map(|i| {
            let name = match job.spec.task(&i.task).and_then(|t| t.array) {
                Some(_) => format!("{}[{}]", i.task, i.index),
                None => i.task.clone(),
            };
            format!("task {name}: {}", i.reason.as_deref().unwrap_or(""))
        })
    };
    let (state, reason) = if let Some(cancel) = &job.cancel {
        (
            State::Cancelled,
            Some(format!("cancelled by {}", cancel.by)),
        )
    } else if let Some(reason) = first_bad(State::Failed) {
        (State::Failed, Some(reason))
    } else if let Some(reason) = first_bad(State::TimedOut) {
        (State::TimedOut, Some(reason))
    } else {
        (State::Succeeded, None)
    };
    Some(JobEnd {
        at: now,
        state,
        reason,
    })
}

#[cfg(test)]
mod tests;
