//! Batch jobs: submit (checked whole against the site: images, capacity, the group's batch
//! quota), list, show (every task and instance, with queue positions and reasons), cancel,
//! hold and release (administrators), and the instances' output. Only a job's owner and
//! administrators see it; to anyone else it does not exist (404).

use super::*;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::master::{Master, now_secs};
use crate::model::jobs::spec::SpecRefusal;
use crate::model::jobs::{
    self, Attempt, Cancel, Instance, Instances, Job, JobRequest, JobSpec, QueueOrder, State,
};
use crate::model::placement::{self, HostLoad};
use crate::model::quota;
use crate::model::vcluster::InputError;
use crate::store::EtcdStore;
use crate::store::jobs::StoredJob;

/// A job in lists.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: u64,
    pub name: String,
    pub user: String,
    pub group: String,
    pub state: State,
    /// Why it ended as it did, or what it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub submitted_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    pub held: bool,
    /// Instances in each state (`queued`, `running`, `succeeded`, ...).
    pub counts: std::collections::BTreeMap<String, u32>,
    /// The best queue position of its queued instances (1 = next to start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// When its next instance is expected to start (Unix seconds), where the time limits of
    /// what runs tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
}

/// One instance of a task.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub index: u32,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its place in the queue (1 = next), while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// When it is expected to start (Unix seconds), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<u64>,
    pub attempt: u32,
    /// The host of each node, node 0 first.
    pub hosts: Vec<String>,
    /// The vnode of each node (of the current or last attempt).
    pub nodes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Its output files, as paths in the user's nodes (`~/nfs/...`).
    pub stdout: String,
    pub stderr: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// What its last ended attempt used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<jobs::TaskUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    pub name: String,
    pub depends_on: Vec<String>,
    pub state: State,
    pub instances: Vec<InstanceView>,
}

/// A job with its spec and every instance.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub spec: JobSpec,
    pub tasks: Vec<TaskView>,
}

/// `GET /api/v1/jobs` filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// Administrators: this user's jobs.
    pub user: Option<String>,
    /// Administrators: every user's jobs.
    #[serde(default)]
    pub all: bool,
    /// Only jobs in this state (`queued`, `running`, `succeeded`, ...).
    pub state: Option<State>,
    /// Only jobs not ended (`true`) or ended (`false`).
    pub active: Option<bool>,
}

fn refused(r: SpecRefusal) -> ApiError {
    ApiError::Input(InputError::from(r))
}

fn field_error(code: &'static str, field: String, message: String) -> ApiError {
    ApiError::Input(InputError {
        code,
        field: field.into(),
        message,
    })
}

impl Master {
    pub async fn submit_job(
        &self,
        caller: &Caller,
        request: &JobRequest,
    ) -> Result<JobView, ApiError> {
        let user = caller.name().to_owned();
        let store = self.store().await?;
        // Checked before an id is taken: a refused request leaves nothing behind.
        let (group, _) = self.checked_job(&store, caller, request).await?;
        let active = store
            .active_jobs()
            .await?
            .iter()
            .filter(|j| j.job.user == user)
            .count();
        if active >= group.batch.jobs as usize {
            return Err(ApiError::QuotaExceeded(format!(
                "jobs quota exceeded: {active} of your jobs are queued or running, limit {}",
                group.batch.jobs
            )));
        }
        let id = store.next_job_id().await?;
        let spec = request
            .resolve(id, &group.defaults, &self.config.default_image)
            .map_err(refused)?;
        let job = Job {
            id,
            user: user.clone(),
            group: group.name.clone(),
            spec,
            submitted_at: now_secs(),
            held: false,
            cancel: None,
            ended: None,
        };
        store.put_new_job(&job).await?;
        let instances: u32 = job.spec.tasks.iter().map(|t| t.instances()).sum();
        info!(
            user = %user,
            job = id,
            action = "job.submit",
            "job {id} ({}) submitted by {user}: {} task(s), {instances} instance(s)",
            job.spec.name,
            job.spec.tasks.len()
        );
        self.job_view(
            &store,
            StoredJob {
                job,
                revision: 0,
                done: false,
            },
            &QueueOrder::default(),
        )
        .await
    }

    /// Whether `request` would be accepted now, as submitting it would find (the portal's
    /// "Check"): the job it makes, with id 0. Nothing is queued.
    pub async fn check_job(
        &self,
        caller: &Caller,
        request: &JobRequest,
    ) -> Result<JobSpec, ApiError> {
        let store = self.store().await?;
        Ok(self.checked_job(&store, caller, request).await?.1)
    }

    async fn checked_job(
        &self,
        store: &EtcdStore,
        caller: &Caller,
        request: &JobRequest,
    ) -> Result<(crate::model::quota::Group, JobSpec), ApiError> {
        caller.require_normal()?;
        let group = self.group_of(store, &caller.account).await?;
        let spec = request
            .resolve(0, &group.defaults, &self.config.default_image)
            .map_err(refused)?;
        self.check_job_against_site(store, caller.name(), &group, &spec)
            .await?;
        Ok((group, spec))
    }

    /// What needs the site: each image usable by the user, each instance within the
    /// group's batch quota and placeable on the hosts (were they empty).
    async fn check_job_against_site(
        &self,
        store: &EtcdStore,
        user: &str,
        group: &crate::model::quota::Group,
        spec: &JobSpec,
    ) -> Result<(), ApiError> {
        let snapshot = self.placement.snapshot(store).await?;
        let limit = group.batch.as_quota();
        for (i, task) in spec.tasks.iter().enumerate() {
            let at = |name: &str| format!("tasks[{i}].{name}");
            let system_image = match self.image_to_start(store, &task.image, user, true).await {
                Ok((system, _)) => system,
                Err(ApiError::Input(e)) => {
                    return Err(field_error(e.code, at("image"), e.message));
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = quota::admit(&limit, &Default::default(), &task.instance_size()) {
                let field = match e.resource() {
                    "cpu" => "cpu_millis",
                    "memory" => "memory_bytes",
                    "disk" => "disk_bytes",
                    _ => "nodes",
                };
                return Err(field_error(
                    "quota_exceeded",
                    at(field),
                    format!(
                        "one instance of task {} exceeds your group's batch quota: {e}",
                        task.name
                    ),
                ));
            }
            let empty: Vec<HostLoad> = snapshot
                .hosts
                .iter()
                .filter(|h| h.images.contains(&system_image))
                .map(|h| HostLoad {
                    allocated: Default::default(),
                    ..host_load(h, &Default::default(), &snapshot.drained, &HashMap::new())
                })
                .collect();
            if empty.is_empty() {
                return Err(field_error(
                    "unusable_image",
                    at("image"),
                    format!("no host has the image {}", task.image),
                ));
            }
            let sizes = vec![task.node; task.nodes as usize];
            if let Err(e) = placement::place(&empty, &sizes, self.config.overcommit) {
                return Err(field_error(
                    "no_capacity",
                    at("nodes"),
                    format!(
                        "the hosts could never hold task {}'s {} node(s) at once: {e}",
                        task.name, task.nodes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The job `id` as `caller` may see it: their own, or any for administrators.
    async fn visible_job(
        &self,
        store: &EtcdStore,
        caller: &Caller,
        id: u64,
    ) -> Result<StoredJob, ApiError> {
        match store.job(id).await? {
            Some(stored) if caller.admin || stored.job.user == caller.name() => Ok(stored),
            _ => Err(ApiError::NotFound(format!("no job {id}"))),
        }
    }

    pub async fn list_jobs(
        &self,
        caller: &Caller,
        filter: &JobFilter,
    ) -> Result<Vec<JobSummary>, ApiError> {
        let owner = match (&filter.user, filter.all) {
            (_, true) => {
                caller.require_admin()?;
                None
            }
            (user, false) => Some(caller.owner(user.as_deref())?),
        };
        let store = self.store().await?;
        let order = store.queue_order().await?;
        let mut out = Vec::new();
        for stored in store.all_jobs().await? {
            if owner.as_ref().is_some_and(|o| *o != stored.job.user) {
                continue;
            }
            if filter.active.is_some_and(|a| a == stored.done) {
                continue;
            }
            let view = self.job_view(&store, stored, &order).await?;
            if filter.state.is_some_and(|s| s != view.summary.state) {
                continue;
            }
            out.push(view.summary);
        }
        Ok(out)
    }

    pub async fn show_job(&self, caller: &Caller, id: u64) -> Result<JobView, ApiError> {
        let store = self.store().await?;
        let stored = self.visible_job(&store, caller, id).await?;
        let order = store.queue_order().await?;
        self.job_view(&store, stored, &order).await
    }

    pub async fn cancel_job(&self, caller: &Caller, id: u64) -> Result<JobView, ApiError> {
        let store = self.store().await?;
        let stored = self.visible_job(&store, caller, id).await?;
        if !stored.done {
            let by = caller.name().to_owned();
            let result = store
                .update_job(id, |job| {
                    if job.cancel.is_some() {
                        return Ok(false);
                    }
                    job.cancel = Some(Cancel {
                        at: now_secs(),
                        by: by.clone(),
                    });
                    Ok(true)
                })
                .await;
            match result {
                Ok(_) | Err(crate::store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            info!(
                user = %stored.job.user,
                job = id,
                action = "job.cancel",
                by = caller.name(),
                "job {id} cancelled by {}",
                caller.name()
            );
        }
        self.show_job(caller, id).await
    }

    /// Holds a job (nothing more of it starts) or releases it. Administrators only.
    pub async fn hold_job(
        &self,
        caller: &Caller,
        id: u64,
        hold: bool,
    ) -> Result<JobView, ApiError> {
        caller.require_admin()?;
        let store = self.store().await?;
        let stored = self.visible_job(&store, caller, id).await?;
        if stored.done {
            return Err(ApiError::Conflict(format!("job {id} has ended")));
        }
        store
            .update_job(id, |job| {
                let changed = job.held != hold;
                job.held = hold;
                Ok(changed)
            })
            .await?;
        let verb = if hold { "held" } else { "released" };
        info!(
            user = %stored.job.user,
            job = id,
            action = if hold { "job.hold" } else { "job.release" },
            "job {id} {verb} by {}",
            caller.name()
        );
        self.show_job(caller, id).await
    }

    pub(crate) async fn job_view(
        &self,
        store: &EtcdStore,
        stored: StoredJob,
        order: &QueueOrder,
    ) -> Result<JobView, ApiError> {
        let job = stored.job;
        let instances: Instances = if stored.revision == 0 {
            Instances::new()
        } else {
            store
                .job_instances(job.id)
                .await?
                .into_iter()
                .map(|(i, _)| ((i.task.clone(), i.index), i))
                .collect()
        };
        let now = now_secs();
        let pending = if job.ended.is_some() {
            Vec::new()
        } else {
            jobs::queue_of(&job, &instances, now)
        };
        let state = jobs::live_state(&job, &instances, &pending);
        let mut counts = std::collections::BTreeMap::new();
        let mut position: Option<usize> = None;
        let mut eta: Option<u64> = None;
        let mut tasks = Vec::new();
        for (t, task) in job.spec.tasks.iter().enumerate() {
            let mut views = Vec::new();
            for index in task.indices() {
                let (out, err) = task.output_paths(index);
                let (out, err) = (format!("~/nfs/{out}"), format!("~/nfs/{err}"));
                let view = match instances.get(&(task.name.clone(), index)) {
                    Some(i) if i.state != State::Retrying || job.ended.is_some() => {
                        instance_view(i, out, err)
                    }
                    record => {
                        let p = pending.iter().find(|p| p.task == t && p.index == index);
                        let entry = order
                            .entries
                            .get(&jobs::queue_key(job.id, &task.name, index));
                        let queued_at = entry.map(|e| e.position);
                        let mut view = match record {
                            Some(i) => instance_view(i, out, err),
                            None => InstanceView {
                                index,
                                state: State::Queued,
                                reason: None,
                                position: None,
                                eta: None,
                                attempt: 0,
                                hosts: Vec::new(),
                                nodes: Vec::new(),
                                created_at: None,
                                started_at: None,
                                ended_at: None,
                                exit_code: None,
                                stdout: out,
                                stderr: err,
                                attempts: Vec::new(),
                                usage: None,
                            },
                        };
                        match p {
                            Some(p) => {
                                view.state = p.state;
                                view.reason = p
                                    .reason
                                    .clone()
                                    .or_else(|| entry.map(|e| e.reason.clone()))
                                    .or(view.reason);
                                if p.ready {
                                    view.position = queued_at;
                                    view.eta = entry.and_then(|e| e.eta);
                                }
                            }
                            None if job.ended.is_some() && record.is_none() => {
                                view.state = State::Cancelled;
                                view.reason = Some("not run".into());
                            }
                            None => {}
                        }
                        view
                    }
                };
                if let Some(p) = view.position {
                    position = Some(position.map_or(p, |q: usize| q.min(p)));
                }
                if let Some(at) = view.eta {
                    eta = Some(eta.map_or(at, |e: u64| e.min(at)));
                }
                *counts.entry(view.state.as_str().to_owned()).or_insert(0) += 1;
                views.push(view);
            }
            let task_state = aggregate(views.iter().map(|v| v.state));
            tasks.push(TaskView {
                name: task.name.clone(),
                depends_on: task.depends_on.clone(),
                state: task_state,
                instances: views,
            });
        }
        let reason = match &job.ended {
            Some(end) => end.reason.clone(),
            None => None,
        };
        Ok(JobView {
            summary: JobSummary {
                id: job.id,
                name: job.spec.name.clone(),
                user: job.user.clone(),
                group: job.group.clone(),
                state,
                reason,
                submitted_at: job.submitted_at,
                ended_at: job.ended.as_ref().map(|e| e.at),
                held: job.held,
                counts,
                position,
                eta,
            },
            spec: job.spec,
            tasks,
        })
    }
}

/// A group or a user in the fair-share table: batch usage (cpu-seconds, halving every
/// week) as the scheduler weighs it, its part of everyone's, and its instances now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FairShareRow {
    pub name: String,
    /// A user's group (of their latest job); empty for groups.
    pub group: String,
    pub cpu_seconds: f64,
    pub percent: f64,
    pub running: u32,
    pub queued: u32,
}

impl Master {
    /// The fair-share table, groups then users, most used first, with what `jobs` (every
    /// job, as the caller listed them) run and queue. Administrators only.
    pub async fn fair_share_table(
        &self,
        caller: &Caller,
        jobs: &[JobSummary],
    ) -> Result<(Vec<FairShareRow>, Vec<FairShareRow>), ApiError> {
        caller.require_admin()?;
        let store = self.store().await?;
        let (share, _) = store.fair_share().await?;
        let now = now_secs();
        let mut groups: std::collections::BTreeMap<String, FairShareRow> = Default::default();
        let mut users: std::collections::BTreeMap<String, FairShareRow> = Default::default();
        for name in share.groups.keys() {
            groups.entry(name.clone()).or_default().cpu_seconds = share.group(name, now);
        }
        for name in share.users.keys() {
            users.entry(name.clone()).or_default().cpu_seconds = share.user(name, now);
        }
        for job in jobs.iter().filter(|j| j.ended_at.is_none()) {
            let count = |state: &str| job.counts.get(state).copied().unwrap_or(0);
            let running = count("running") + count("starting");
            let queued = count("queued");
            for (row, group) in [
                (groups.entry(job.group.clone()).or_default(), ""),
                (
                    users.entry(job.user.clone()).or_default(),
                    job.group.as_str(),
                ),
            ] {
                row.running += running;
                row.queued += queued;
                if row.group.is_empty() {
                    row.group = group.to_owned();
                }
            }
        }
        let finish = |rows: std::collections::BTreeMap<String, FairShareRow>| {
            let total: f64 = rows.values().map(|r| r.cpu_seconds).sum();
            let mut rows: Vec<FairShareRow> = rows
                .into_iter()
                .map(|(name, mut row)| {
                    row.name = name;
                    row.percent = if total > 0.0 {
                        row.cpu_seconds / total * 100.0
                    } else {
                        0.0
                    };
                    row
                })
                .collect();
            rows.sort_by(|a, b| {
                b.cpu_seconds
                    .total_cmp(&a.cpu_seconds)
                    .then(a.name.cmp(&b.name))
            });
            rows
        };
        Ok((finish(groups), finish(users)))
    }
}

/// Which output of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Out,
    Err,
}

/// Where an instance's output is: a file of its user's `~/nfs`.
#[derive(Debug, Clone)]
pub struct OutputFile {
    pub user: String,
    /// Relative to `~/nfs`.
    pub path: String,
}

impl Master {
    /// The file of an instance's stdout or stderr, for its owner and administrators.
    pub async fn job_output(
        &self,
        caller: &Caller,
        id: u64,
        task: &str,
        index: u32,
        stream: OutputStream,
    ) -> Result<OutputFile, ApiError> {
        let store = self.store().await?;
        let stored = self.visible_job(&store, caller, id).await?;
        let Some(spec) = stored.job.spec.task(task) else {
            return Err(ApiError::NotFound(format!("job {id} has no task {task:?}")));
        };
        if !spec.indices().contains(&index) {
            return Err(ApiError::NotFound(format!(
                "task {task} has no instance {index}"
            )));
        }
        let (out, err) = spec.output_paths(index);
        let path = match stream {
            OutputStream::Out => out,
            OutputStream::Err => err,
        };
        Ok(OutputFile {
            user: stored.job.user,
            path,
        })
    }

    /// Up to `limit` bytes of a file in a user's `~/nfs` from `offset` (`None`: no such file
    /// yet). Users' directories are not the master's to read: a worker reads it (this
    /// host's, else any), beneath the directory, without following links.
    pub async fn read_user_file(
        &self,
        file: &OutputFile,
        offset: u64,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let store = self.store().await?;
        let mut hosts = store.list_hosts().await?;
        hosts.sort_by_key(|h| h.name != self.host);
        let host = hosts
            .first()
            .ok_or_else(|| ApiError::Unavailable("no host is up to read the output".into()))?;
        let address = host
            .addresses
            .first()
            .and_then(|a| a.split('/').next())
            .unwrap_or_default();
        let agent = match address.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, self.config.agent_port).to_string(),
            Err(_) => format!("{address}:{}", self.config.agent_port),
        };
        let mut query = url_query(&[("path", &file.path)]);
        query.push_str(&format!("&offset={offset}&limit={limit}"));
        let path = format!("/agent/v1/users/{}/data?{query}", file.user);
        let limit_time = std::time::Duration::from_secs(30);
        match crate::master::agent_client::get_bytes(&host.name, &agent, &path, limit_time).await? {
            (200, bytes) => Ok(Some(bytes.to_vec())),
            (404, _) => Ok(None),
            (403, text) => Err(ApiError::Forbidden(format!(
                "cannot read the output: {}",
                String::from_utf8_lossy(&text)
            ))),
            (status, text) => Err(ApiError::Internal(format!(
                "reading the output through {}: HTTP {status} {}",
                host.name,
                String::from_utf8_lossy(&text)
            ))),
        }
    }

    /// Whether an instance can still write output: not ended, and its job not ended.
    pub async fn job_instance_open(
        &self,
        id: u64,
        task: &str,
        index: u32,
    ) -> Result<bool, ApiError> {
        let store = self.store().await?;
        let Some(stored) = store.job(id).await? else {
            return Ok(false);
        };
        if stored.done {
            return Ok(false);
        }
        let record = store
            .job_instances(id)
            .await?
            .into_iter()
            .find(|(i, _)| i.task == task && i.index == index);
        Ok(record.is_none_or(|(i, _)| !i.state.is_final()))
    }
}

/// `key=value&...`, percent-encoded.
fn url_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let value: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={value}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn instance_view(i: &Instance, stdout: String, stderr: String) -> InstanceView {
    InstanceView {
        index: i.index,
        state: i.state,
        reason: i.reason.clone(),
        position: None,
        eta: None,
        attempt: i.attempt,
        hosts: i.nodes.iter().map(|n| n.host.clone()).collect(),
        nodes: i.nodes.iter().map(|n| n.id.clone()).collect(),
        created_at: Some(i.created_at),
        started_at: i.started_at,
        ended_at: i.ended_at,
        exit_code: i.exit_code,
        stdout,
        stderr,
        attempts: i.attempts.clone(),
        usage: i.usage,
    }
}

/// A task's state from its instances': the most telling one.
fn aggregate(states: impl Iterator<Item = State>) -> State {
    let states: Vec<State> = states.collect();
    for s in [
        State::Running,
        State::Starting,
        State::Retrying,
        State::Queued,
        State::Held,
        State::Waiting,
        State::Failed,
        State::TimedOut,
        State::Cancelled,
    ] {
        if states.contains(&s) {
            return s;
        }
    }
    State::Succeeded
}
