//! The batch controller, which only the leading master runs: in passes, woken by any change
//! to jobs, vnodes' statuses or hosts (and once a second for due retries and time limits),
//! it moves every started instance on ([`jobs::advance`]: tell a gang to go, record a start,
//! end an attempt and remove its nodes, retry), ends jobs ([`jobs::outcome`]), then asks the
//! scheduler ([`schedule::decide`]) which queued instances start where and creates their
//! nodes, each start one transaction with the instance's record. Everything is read from
//! etcd at each pass and written with compare-and-swap: a master killed at any point leaves
//! nothing the next leader cannot pick up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Master;
use super::actions::{ApiError, host_load};
use crate::model::admission;
use crate::model::jobs::schedule::{self, Candidate, Holding};
use crate::model::jobs::{
    self, Instance, Instances, Job, NodeSeen, PlacedNode, QueueEntry, QueueOrder, State, TaskSpec,
    Transition,
};
use crate::model::placement::HostLoad;
use crate::model::quota::Group;
use crate::model::vcluster;
use crate::model::vnode::{DesiredState, TaskRun, VNodeSpec};
use crate::store::clusters::NodeWrite;
use crate::store::jobs::StoredJob;
use crate::store::{EtcdStore, StoreError};

mod cleanup;

use cleanup::{charge, prune, release, sweep};

/// A pass at least this often, for retries that fall due and time limits.
const TICK: Duration = Duration::from_secs(1);
/// How often leftover batch nodes (of instances no longer running them) are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Ended jobs are kept this long (with their instances' records), then forgotten; their
/// output stays in the users' `~/nfs`.
pub const KEEP_ENDED_SECS: u64 = 30 * 24 * 3600;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs passes for as long as it is not aborted (the leadership ends).
pub async fn run(master: Arc<Master>, store: EtcdStore) {
    let mut controller = BatchController::default();
    loop {
        let mut streams = match store.watch_jobs().await {
            Ok(streams) => streams,
            Err(e) => {
                warn!("batch controller: cannot watch etcd: {e}");
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        loop {
            if let Err(e) = controller.pass(&master, &store).await {
                warn!("batch pass: {e}");
            }
            let changed =
                futures_util::future::select_all(streams.iter_mut().map(|s| Box::pin(s.message())));
            tokio::select! {
                (message, _, _) = changed => match message {
                    Ok(Some(_)) => {}
                    _ => break,
                },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

#[derive(Default)]
struct BatchController {
    last_order: QueueOrder,
    last_sweep: Option<Instant>,
    last_prune: Option<Instant>,
    /// Why a start failed at the last pass, by instance: logged when new only.
    failing: HashMap<String, String>,
}

/// A job as one pass sees it.
struct Seen {
    stored: StoredJob,
    /// Records with their revisions.
    records: HashMap<(String, u32), (Instance, i64)>,
}

impl Seen {
    fn instances(&self) -> Instances {
        self.records
            .iter()
            .map(|(k, (i, _))| (k.clone(), i.clone()))
            .collect()
    }
}

impl BatchController {
    async fn pass(&mut self, master: &Master, store: &EtcdStore) -> Result<(), ApiError> {
        if self.last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            self.last_prune = Some(Instant::now());
            prune(store).await?;
        }
        let sweep_due = self.last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
        let active = store.active_jobs().await?;
        if active.is_empty() {
            if !self.last_order.entries.is_empty() {
                self.last_order = QueueOrder::default();
                store.put_queue_order(&self.last_order).await?;
            }
            if sweep_due {
                self.last_sweep = Some(Instant::now());
                sweep(store, &[]).await?;
            }
            return Ok(());
        }
        let mut seen = Vec::new();
        for stored in active {
            let records = store
                .job_instances(stored.job.id)
                .await?
                .into_iter()
                .map(|(i, rev)| ((i.task.clone(), i.index), (i, rev)))
                .collect();
            seen.push(Seen { stored, records });
        }
        let now = crate::master::now_secs();
        let mut charges = Vec::new();
        self.advance_all(store, &mut seen, now, &mut charges)
            .await?;
        self.end_jobs(store, &mut seen, now).await?;
        self.schedule(master, store, &seen, now).await?;
        if !charges.is_empty() {
            charge(store, &charges, now).await?;
        }
        if sweep_due {
            self.last_sweep = Some(Instant::now());
            sweep(store, &seen).await?;
        }
        Ok(())
    }

    /// Moves every started instance on by what its nodes report.
    async fn advance_all(
        &mut self,
        store: &EtcdStore,
        seen: &mut [Seen],
        now: u64,
        charges: &mut Vec<(String, String, f64)>,
    ) -> Result<(), ApiError> {
        let ids: Vec<String> = seen
            .iter()
            .flat_map(|s| s.records.values())
            .filter(|(i, _)| i.state.is_active())
            .flat_map(|(i, _)| i.nodes.iter().map(|n| n.id.clone()))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let found = store.vnodes_seen(&ids).await?;
        let up: HashSet<String> = store.host_names().await?.into_iter().collect();
        let nodes: HashMap<String, NodeSeen> = ids
            .into_iter()
            .zip(found)
            .map(|(id, found)| {
                let seen = match found {
                    Some(f) => NodeSeen {
                        exists: f.spec.state != DesiredState::Deleted,
                        host_up: up.contains(&f.host),
                        phase: f.status.as_ref().map(|s| s.phase),
                        reason: f.status.as_ref().and_then(|s| s.reason.clone()),
                        task: f.status.and_then(|s| s.task),
                    },
                    None => NodeSeen::default(),
                };
                (id, seen)
            })
            .collect();
        for s in seen.iter_mut() {
            let job = s.stored.job.clone();
            for (instance, revision) in s.records.values_mut() {
                let Some(task) = job.spec.task(&instance.task) else {
                    continue;
                };
                let views: Vec<NodeSeen> = instance
                    .nodes
                    .iter()
                    .map(|n| {
                        let mut v = nodes.get(&n.id).cloned().unwrap_or_default();
                        if nodes
                            .get(&n.id)
                            .is_some_and(|v| !v.exists && v.phase.is_none())
                        {
                            // Never seen at all: its host's registration decides.
                            v.host_up = up.contains(&n.host);
                        }
                        v
                    })
                    .collect();
                let Some(step) = jobs::advance(&job, task, instance, &views, now) else {
                    continue;
                };
                apply(store, &job, task, instance, revision, step, now, charges).await?;
            }
        }
        Ok(())
    }

    /// Ends jobs that have nothing left to run.
    async fn end_jobs(
        &self,
        store: &EtcdStore,
        seen: &mut Vec<Seen>,
        now: u64,
    ) -> Result<(), ApiError> {
        let mut remaining = Vec::new();
        for s in seen.drain(..) {
            let Some(end) = jobs::outcome(&s.stored.job, &s.instances(), now) else {
                remaining.push(s);
                continue;
            };
            let mut job = s.stored.job.clone();
            if store.account(&job.user).await?.is_none() {
                // Its owner was deleted: a later account of that name must not see it.
                if store.forget_active_job(job.id, s.stored.revision).await? {
                    info!(
                        user = %job.user,
                        job = job.id,
                        "job {} of deleted user {} ended and was forgotten",
                        job.id,
                        job.user
                    );
                }
                continue;
            }
            let line = match &end.reason {
                Some(reason) => format!("{}: {reason}", end.state.as_str()),
                None => end.state.as_str().to_owned(),
            };
            job.ended = Some(end);
            if store.end_job(&job, s.stored.revision).await? {
                info!(
                    user = %job.user,
                    job = job.id,
                    action = "job.end",
                    "job {} ({}) of {} ended: {line}",
                    job.id,
                    job.spec.name,
                    job.user
                );
            }
        }
        *seen = remaining;
        Ok(())
    }

    /// Starts what the scheduler chooses, and records where the rest stand.
    async fn schedule(
        &mut self,
        master: &Master,
        store: &EtcdStore,
        seen: &[Seen],
        now: u64,
    ) -> Result<(), ApiError> {
        let mut wanted: Vec<(usize, usize, u32)> = Vec::new(); // (job, task position, index)
        for (j, s) in seen.iter().enumerate() {
            for p in jobs::queue_of(&s.stored.job, &s.instances(), now) {
                if p.ready {
                    wanted.push((j, p.task, p.index));
                }
            }
        }
        let mut order = QueueOrder {
            at: now,
            entries: BTreeMap::new(),
        };
        if !wanted.is_empty() {
            let site = Site::read(master, store, seen, now).await?;
            let mut candidates = Vec::new();
            let mut unusable: Vec<(usize, String)> = Vec::new();
            for (n, (j, t, index)) in wanted.iter().enumerate() {
                let job = &seen[*j].stored.job;
                let task = &job.spec.tasks[*t];
                let image = match site.images.get(&(job.user.clone(), task.image.clone())) {
                    Some(Ok((system, _))) => system.clone(),
                    Some(Err(why)) => {
                        unusable.push((n, why.clone()));
                        continue;
                    }
                    None => continue,
                };
                candidates.push(Candidate {
                    id: n,
                    user: job.user.clone(),
                    group: job.group.clone(),
                    priority: task.priority,
                    job: job.id,
                    order: (*t as u32, *index),
                    nodes: task.nodes,
                    node: task.node,
                    image,
                    timeout_secs: task.timeout_secs,
                });
            }
            let input = schedule::Input {
                now,
                candidates,
                holding: site.holding.clone(),
                hosts: site.loads.clone(),
                host_images: site.host_images.clone(),
                overcommit: master.config.overcommit,
                quotas: site.quotas.clone(),
                group_usage: site.group_usage.clone(),
                user_usage: site.user_usage.clone(),
            };
            let decision = schedule::decide(&input);
            for start in &decision.starts {
                let (j, t, index) = wanted[start.id];
                let s = &seen[j];
                let result =
                    start_instance(master, store, &site, s, t, index, &start.hosts, now).await;
                let key = jobs::queue_key(s.stored.job.id, &s.stored.job.spec.tasks[t].name, index);
                match result {
                    Ok(()) => {
                        self.failing.remove(&key);
                    }
                    Err(e) => {
                        let why = e.to_string();
                        if self.failing.get(&key) != Some(&why) {
                            warn!(
                                user = %s.stored.job.user,
                                job = s.stored.job.id,
                                "job {}: cannot start {key}: {why}",
                                s.stored.job.id
                            );
                        }
                        self.failing.insert(key.clone(), why.clone());
                        order.entries.insert(
                            key,
                            QueueEntry {
                                position: 0,
                                reason: format!("could not start: {why}"),
                                eta: None,
                            },
                        );
                    }
                }
            }
            for queued in decision.queued.iter().take(jobs::QUEUE_ORDER_KEPT) {
                let (j, t, index) = wanted[queued.id];
                let job = &seen[j].stored.job;
                order.entries.insert(
                    jobs::queue_key(job.id, &job.spec.tasks[t].name, index),
                    QueueEntry {
                        position: queued.position,
                        reason: queued.blocked.describe(),
                        eta: queued.eta,
                    },
                );
            }
            for (n, why) in unusable {
                let (j, t, index) = wanted[n];
                let job = &seen[j].stored.job;
                order.entries.insert(
                    jobs::queue_key(job.id, &job.spec.tasks[t].name, index),
                    QueueEntry {
                        position: 0,
                        reason: why,
                        eta: None,
                    },
                );
            }
        }
        if order.entries != self.last_order.entries {
            store.put_queue_order(&order).await?;
            self.last_order = order;
        }
        Ok(())
    }
}

/// Applies one transition to an instance (its record first, then its nodes).
#[allow(clippy::too_many_arguments)]
async fn apply(
    store: &EtcdStore,
    job: &Job,
    task: &TaskSpec,
    instance: &mut Instance,
    revision: &mut i64,
    step: Transition,
    now: u64,
    charges: &mut Vec<(String, String, f64)>,
) -> Result<(), ApiError> {
    let name = instance_name(task, instance.index);
    match step {
        Transition::Go => {
            for node in &instance.nodes {
                let result = store
                    .update_vnode_spec(&node.id, |spec| match &mut spec.task {
                        Some(run) if !run.start => {
                            run.start = true;
                            Ok(true)
                        }
                        _ => Ok(false),
                    })
                    .await;
                match result {
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            debug!(job = job.id, "job {}: {name}'s nodes are up: go", job.id);
        }
        Transition::Started { at } => {
            let mut next = instance.clone();
            next.state = State::Running;
            next.started_at = Some(at);
            if store.put_instance(job.id, &next, *revision).await? {
                info!(
                    user = %job.user,
                    job = job.id,
                    action = "task.running",
                    "job {}: {name} running on {}",
                    job.id,
                    hosts_of(&next)
                );
                *instance = next;
                *revision = -1; // changed: written again only after a fresh read
            }
        }
        Transition::End {
            state,
            exit_code,
            reason,
            retry_at,
            usage,
        } => {
            let mut next = instance.clone();
            jobs::end_attempt(&mut next, state, exit_code, reason.clone(), retry_at, now);
            next.usage = usage;
            if !store.put_instance(job.id, &next, *revision).await? {
                return Ok(());
            }
            let secs = now.saturating_sub(instance.started_at.unwrap_or(instance.created_at));
            let cpu = f64::from(task.node.cpu_millis) / 1000.0 * f64::from(task.nodes);
            charges.push((job.group.clone(), job.user.clone(), cpu * secs as f64));
            info!(
                user = %job.user,
                job = job.id,
                action = "task.end",
                "job {}: {name} {}: {reason}",
                job.id,
                state.as_str()
            );
            release(store, &next).await?;
            *instance = next;
            *revision = -1;
        }
    }
    Ok(())
}

fn instance_name(task: &TaskSpec, index: u32) -> String {
    match task.array {
        Some(_) => format!("task {}[{index}]", task.name),
        None => format!("task {}", task.name),
    }
}

fn hosts_of(instance: &Instance) -> String {
    let mut hosts: Vec<&str> = instance.nodes.iter().map(|n| n.host.as_str()).collect();
    hosts.dedup();
    hosts.join(", ")
}

/// A task's image for one user: the system image under it and the guard of a user's image,
/// or why it cannot be used.
type Usable = Result<(String, Option<(String, i64)>), String>;

/// The site as the scheduler needs it for one pass.
struct Site {
    loads: Vec<HostLoad>,
    host_images: Vec<Vec<String>>,
    holding: Vec<Holding>,
    quotas: HashMap<String, (crate::model::quota::Quota, crate::model::quota::Usage)>,
    groups: HashMap<String, Group>,
    group_usage: HashMap<String, f64>,
    user_usage: HashMap<String, f64>,
    /// By (user, image).
    images: HashMap<(String, String), Usable>,
}

impl Site {
    async fn read(
        master: &Master,
        store: &EtcdStore,
        seen: &[Seen],
        now: u64,
    ) -> Result<Site, ApiError> {
        let snapshot = store.placement_snapshot().await?;
        let loads: Vec<HostLoad> = snapshot
            .hosts
            .iter()
            .map(|h| host_load(h, &snapshot.allocations, &snapshot.drained, &HashMap::new()))
            .collect();
        let host_images = snapshot.hosts.iter().map(|h| h.images.clone()).collect();
        let (share, _) = store.fair_share().await?;
        let usages = store.batch_usages().await?;
        let mut group_usage: HashMap<String, f64> = HashMap::new();
        let mut user_usage: HashMap<String, f64> = HashMap::new();
        let mut holding = Vec::new();
        let mut groups = HashMap::new();
        let mut quotas = HashMap::new();
        let mut images = HashMap::new();
        for s in seen {
            let job = &s.stored.job;
            if !groups.contains_key(&job.group)
                && let Some(group) = store.group(&job.group).await?
            {
                groups.insert(job.group.clone(), group);
            }
            if let Some(group) = groups.get(&job.group) {
                quotas.insert(
                    job.user.clone(),
                    (
                        group.batch.as_quota(),
                        usages.get(&job.user).copied().unwrap_or_default(),
                    ),
                );
            }
            group_usage
                .entry(job.group.clone())
                .or_insert_with(|| share.group(&job.group, now));
            user_usage
                .entry(job.user.clone())
                .or_insert_with(|| share.user(&job.user, now));
            for task in &job.spec.tasks {
                let key = (job.user.clone(), task.image.clone());
                if let std::collections::hash_map::Entry::Vacant(entry) = images.entry(key) {
                    let resolved = master
                        .image_to_start(store, &task.image, &job.user, true)
                        .await
                        .map_err(|e| e.to_string());
                    entry.insert(resolved);
                }
            }
            for (instance, _) in s.records.values().filter(|(i, _)| i.state.is_active()) {
                let Some(task) = job.spec.task(&instance.task) else {
                    continue;
                };
                let since = instance.started_at.unwrap_or(instance.created_at);
                let ends_at = task.timeout_secs.map(|limit| {
                    since
                        + limit
                        + if instance.started_at.is_none() {
                            jobs::BOOT_TIMEOUT_SECS
                        } else {
                            0
                        }
                });
                // What runs counts toward fair share as it runs, not only when it ends.
                let running = f64::from(task.node.cpu_millis) / 1000.0
                    * f64::from(task.nodes)
                    * now.saturating_sub(since) as f64;
                *group_usage.entry(job.group.clone()).or_default() += running;
                *user_usage.entry(job.user.clone()).or_default() += running;
                holding.push(Holding {
                    user: job.user.clone(),
                    hosts: instance.nodes.iter().map(|n| n.host.clone()).collect(),
                    node: task.node,
                    ends_at,
                });
            }
        }
        Ok(Site {
            loads,
            host_images,
            holding,
            quotas,
            groups,
            group_usage,
            user_usage,
            images,
        })
    }
}

/// Creates the nodes of one instance's next attempt on the chosen hosts, with its record,
/// in one transaction.
#[allow(clippy::too_many_arguments)]
async fn start_instance(
    master: &Master,
    store: &EtcdStore,
    site: &Site,
    seen: &Seen,
    position: usize,
    index: u32,
    hosts: &[String],
    now: u64,
) -> Result<(), ApiError> {
    let job = &seen.stored.job;
    let task = &job.spec.tasks[position];
    let previous = seen.records.get(&(task.name.clone(), index));
    let attempt = previous.map_or(0, |(i, _)| i.attempt + 1);
    let cluster = jobs::instance_cluster(job.id, position, index, attempt);
    let Some(Ok((_, image_guard))) = site.images.get(&(job.user.clone(), task.image.clone()))
    else {
        return Err(ApiError::Conflict(format!(
            "image {} is unusable",
            task.image
        )));
    };
    let group = site
        .groups
        .get(&job.group)
        .ok_or_else(|| ApiError::Conflict(format!("group {} no longer exists", job.group)))?;
    let specs: Vec<VNodeSpec> = (0..task.nodes)
        .map(|node| node_spec(job, task, &cluster, index, node, attempt))
        .collect();
    let placed: Vec<PlacedNode> = specs
        .iter()
        .zip(hosts)
        .map(|(s, h)| PlacedNode {
            id: s.id.clone(),
            host: h.clone(),
        })
        .collect();
    let (record, revision) = match previous {
        Some((prev, rev)) => {
            let mut next = prev.clone();
            jobs::next_attempt(&mut next, cluster.clone(), placed, now);
            (next, *rev)
        }
        None => (
            Instance::first_attempt(&task.name, index, cluster.clone(), placed, now),
            0,
        ),
    };
    let chosen: Vec<HostLoad> = hosts
        .iter()
        .map(|h| {
            site.loads
                .iter()
                .find(|l| &l.name == h)
                .cloned()
                .ok_or_else(|| ApiError::Conflict(format!("host {h} went away")))
        })
        .collect::<Result<_, _>>()?;
    let quota = group.batch.as_quota();
    let write = NodeWrite {
        request: admission::Request {
            user: &job.user,
            quota: Some(&quota),
            specs,
            hosts: admission::Hosts::Chosen {
                hosts: chosen,
                overcommit: master.config.overcommit,
            },
        },
        cluster: None,
        operation: None,
        idempotency_key: None,
        image: image_guard.clone(),
        batch: true,
        record: Some((
            store.keys().job_instance(job.id, &task.name, index),
            crate::store::encode(&record),
            revision,
        )),
    };
    store.write_nodes(&write, &master.address_plan()).await?;
    info!(
        user = %job.user,
        job = job.id,
        action = "task.start",
        "job {}: {} starting on {} (attempt {})",
        job.id,
        instance_name(task, index),
        hosts.join(", "),
        attempt + 1
    );
    Ok(())
}

/// Node `node` of an instance: a vnode of the task's size and image that runs the command
/// (node 0, or all with `run_on: all`) once the whole gang is up; a single node may start it
/// as soon as it is.
fn node_spec(
    job: &Job,
    task: &TaskSpec,
    cluster: &str,
    index: u32,
    node: u32,
    attempt: u32,
) -> VNodeSpec {
    let (out, err) = task.output_paths(index);
    let inside = |path: &str| match path {
        "" => "/root/nfs".to_owned(),
        p => format!("/root/nfs/{p}"),
    };
    let mut env = task.env.clone();
    for (key, value) in [
        ("DOCKLET_JOB_ID", job.id.to_string()),
        ("DOCKLET_JOB_NAME", job.spec.name.clone()),
        ("DOCKLET_TASK", task.name.clone()),
        ("DOCKLET_TASK_INDEX", index.to_string()),
        ("DOCKLET_ATTEMPT", attempt.to_string()),
        ("DOCKLET_NODE_INDEX", node.to_string()),
        ("DOCKLET_NODES", task.nodes.to_string()),
        ("DOCKLET_HOSTFILE", "/etc/docklet/hostfile".to_owned()),
    ] {
        env.insert(key.to_owned(), value);
    }
    VNodeSpec {
        id: vcluster::node_id(&job.user, cluster, node),
        user: job.user.clone(),
        cluster: cluster.to_owned(),
        index: node,
        image: task.image.clone(),
        cpu_millis: task.node.cpu_millis,
        memory_bytes: task.node.memory_bytes,
        disk_bytes: task.node.disk_bytes,
        tasks: vcluster::NODE_TASKS,
        state: DesiredState::Running,
        address: None,
        handoff: None,
        task: Some(TaskRun {
            argv: task.program.argv(&task.name),
            env,
            workdir: inside(&task.workdir),
            stdout: inside(&out),
            stderr: inside(&err),
            nodes: task.nodes,
            runs_command: task.run_on == jobs::RunOn::All || node == 0,
            timeout_secs: task.timeout_secs,
            start: task.nodes == 1,
        }),
    }
}
