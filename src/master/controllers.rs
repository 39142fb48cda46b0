//! What only the leading master does. Every master campaigns for the `leader` key
//! ([`crate::store::leader`]) under a lease it keeps alive; the one holding it runs the
//! controllers in passes: the drain, which moves the vnodes of a draining host elsewhere,
//! disk and address with them ([`crate::model::drain`]), and the batch controller
//! ([`super::batch`]), which runs jobs.
//!
//! A pass only reads etcd and writes with compare-and-swap transactions, so a leader that
//! lost its lease without noticing yet cannot undo what the next one does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::Master;
use super::actions::{ApiError, node_ids, random_id};
use crate::model::drain::{self, DrainStep};
use crate::model::vnode::{DesiredState, Handoff, VNodeSpec};
use crate::store::{EtcdStore, StoreError};

/// The leader's lease: a killed leader is replaced within this time.
pub const LEADER_TTL_SECS: i64 = 10;
const KEEPALIVE_EVERY: Duration = Duration::from_secs(3);
/// How often a standby master tries to take the lead, and the leader runs a pass.
const TICK: Duration = Duration::from_secs(1);
/// Moves in flight at once, cluster-wide: each copies a disk through the shared filesystem.
const MOVES_AT_ONCE: usize = 4;

/// Campaigns for the leadership, and runs the controllers while holding it, forever.
pub async fn lead(master: Arc<Master>) {
    loop {
        let Some(store) = master.connected_store(Duration::from_secs(3600)).await else {
            continue;
        };
        let lost = hold(&master, &store).await;
        if master.leading.swap(false, Ordering::SeqCst) {
            warn!("no longer leading: {lost}");
        }
        *master.leader_lease.lock().unwrap() = None;
        tokio::time::sleep(TICK).await;
    }
}

/// One candidacy: a lease, kept alive in its own task, and the leadership tried every tick
/// until it is taken; then passes. Returns why the lease was lost.
async fn hold(master: &Arc<Master>, store: &EtcdStore) -> StoreError {
    let lease = match store.grant_lease(LEADER_TTL_SECS).await {
        Ok(lease) => lease,
        Err(e) => return e,
    };
    *master.leader_lease.lock().unwrap() = Some((store.clone(), lease));
    let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel();
    let keeper = {
        let store = store.clone();
        tokio::spawn(async move {
            let _ = lost_tx.send(keep_alive(&store, lease).await);
        })
    };
    let _stop_keeper = AbortOnDrop(keeper);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain = DrainController::default();
    // Started once leading and initialized; aborted when the leadership ends.
    let mut batch: Option<AbortOnDrop> = None;
    loop {
        tokio::select! {
            lost = &mut lost_rx => {
                return lost.unwrap_or_else(|_| StoreError::Failed("lease keeper ended".into()));
            }
            _ = tick.tick() => {}
        }
        if !master.leading.load(Ordering::SeqCst) {
            match store.try_lead(&master.host, lease).await {
                Ok(true) => {
                    master.leading.store(true, Ordering::SeqCst);
                    info!(lease, "leading: this master runs the controllers");
                }
                Ok(false) => continue,
                Err(e) => return e,
            }
        }
        if !master.is_initialized(store).await {
            continue;
        }
        if batch.is_none() {
            if let Err(e) = store.refresh_workers_role().await {
                warn!("cannot bring the workers' etcd role up to date: {e}");
            }
            let master = master.clone();
            batch = Some(AbortOnDrop(tokio::spawn(super::batch::run(
                master,
                store.clone(),
            ))));
        }
        if let Err(e) = drain.pass(master, store).await {
            warn!("drain pass: {e}");
        }
    }
}

async fn keep_alive(store: &EtcdStore, lease: i64) -> StoreError {
    let (mut keeper, mut responses) = match store.keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) => return e,
    };
    let patience = Duration::from_secs(LEADER_TTL_SECS as u64);
    loop {
        if let Err(e) = EtcdStore::renew(&mut keeper, &mut responses, patience).await {
            return e;
        }
        tokio::time::sleep(KEEPALIVE_EVERY).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Moves vnodes off draining hosts, a few at a time.
#[derive(Default)]
struct DrainController {
    /// The last pass saw nothing to do: until a host drains, passes read one key range.
    idle: bool,
    /// Why each vnode could not move at the last pass: a reason is logged when it is new,
    /// not at every pass (once a second) while it lasts.
    failing: HashMap<String, String>,
}

impl DrainController {
    async fn pass(&mut self, master: &Master, store: &EtcdStore) -> Result<(), ApiError> {
        let notes = store.drain_notes().await?;
        if notes.is_empty() && self.idle {
            return Ok(());
        }
        let draining: HashSet<String> = notes.keys().cloned().collect();
        let up: HashSet<String> = store
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| h.name)
            .collect();
        // Batch tasks' nodes are not moved: they end with their command.
        let specs: Vec<(String, VNodeSpec)> = store
            .all_vnode_specs()
            .await?
            .into_iter()
            .filter(|(_, s)| !crate::model::vnode::is_batch_cluster(&s.cluster))
            .collect();
        let statuses: HashMap<String, _> = store
            .all_vnode_statuses()
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let plan = drain::plan(&draining, &up, &specs, &statuses, MOVES_AT_ONCE);
        self.idle = draining.is_empty()
            && plan.steps.is_empty()
            && specs.iter().all(|(_, s)| s.handoff.is_none());
        let mut trouble: HashMap<String, String> = HashMap::new();
        let mut failing = HashMap::new();
        for step in plan.steps {
            let (id, result) = run_step(master, store, step).await;
            if let Err(e) = result {
                let reason = e.to_string();
                if self.failing.get(&id) != Some(&reason) {
                    warn!(vnode = %id, action = "drain.move-failed", "drain: cannot move vnode {id}: {reason}");
                }
                if let Some((host, _)) = specs.iter().find(|(_, s)| s.id == id) {
                    trouble.insert(host.clone(), format!("cannot move {id}: {reason}"));
                }
                failing.insert(id, reason);
            }
        }
        self.failing = failing;
        for (host, note) in plan.notes {
            let note = match trouble.remove(&host) {
                Some(problem) => format!("{note}; {problem}"),
                None => note,
            };
            if notes.get(&host) != Some(&note) {
                store.set_drain_note(&host, &note).await?;
            }
        }
        Ok(())
    }
}

/// One step of a drain's plan, for the vnode it names.
async fn run_step(
    master: &Master,
    store: &EtcdStore,
    step: DrainStep,
) -> (String, Result<(), ApiError>) {
    match step {
        DrainStep::Export(id) => {
            let r = export(master, store, &id).await;
            (id, r)
        }
        DrainStep::Place(id) => {
            let r = place(master, store, &id).await;
            (id, r)
        }
        DrainStep::Return(id) => {
            let r = store
                .update_vnode_spec(&id, |spec| {
                    let resume = spec.handoff.as_ref().map(|h| h.resume);
                    match (spec.state, resume) {
                        (DesiredState::Exported, Some(resume)) => {
                            spec.state = resume;
                            Ok(true)
                        }
                        _ => Ok(false),
                    }
                })
                .await
                .map(|_| info!(vnode = %id, action = "drain.return", "drain called off: vnode {id} stays"))
                .map_err(ApiError::from);
            (id, r)
        }
        DrainStep::Finish(id) => {
            let r = store
                .update_vnode_spec(&id, |spec| {
                    let done =
                        spec.state != DesiredState::Exported && spec.handoff.take().is_some();
                    Ok(done)
                })
                .await
                .map(|_| info!(vnode = %id, action = "drain.done", "vnode {id} moved and up"))
                .map_err(ApiError::from);
            (id, r)
        }
    }
}

/// Asks the worker to stop the vnode and hand its disk over, if some host can take it: a
/// vnode with nowhere to go keeps running where it is.
async fn export(master: &Master, store: &EtcdStore, id: &str) -> Result<(), ApiError> {
    let Some((from, spec, _)) = store.vnode_spec(id).await? else {
        return Ok(());
    };
    master
        .choose_host(store, &siblings(store, &spec).await?, &spec)
        .await?;
    let token = random_id(Handoff::TOKEN_LEN);
    store
        .update_vnode_spec(id, |spec| match spec.state {
            DesiredState::Running | DesiredState::Stopped => {
                spec.handoff = Some(Handoff {
                    token: token.clone(),
                    from: from.clone(),
                    resume: spec.state,
                });
                spec.state = DesiredState::Exported;
                Ok(true)
            }
            _ => Ok(false),
        })
        .await?;
    info!(vnode = %id, user = %spec.user, cluster = %spec.cluster, action = "drain.export", "drain: moving vnode {id} off {from}");
    Ok(())
}

/// Recreates a handed-over vnode where placement says, in the state it had.
async fn place(master: &Master, store: &EtcdStore, id: &str) -> Result<(), ApiError> {
    let Some((from, spec, _)) = store.vnode_spec(id).await? else {
        return Ok(());
    };
    let to = master
        .relocate(store, &siblings(store, &spec).await?, &spec, |spec| match (
            spec.state,
            spec.handoff.as_ref(),
        ) {
            (DesiredState::Exported, Some(handoff)) => {
                spec.state = handoff.resume;
                Ok(())
            }
            _ => Err(StoreError::Conflict(format!(
                "vnode {} changed during its move",
                spec.id
            ))),
        })
        .await?;
    info!(vnode = %id, user = %spec.user, cluster = %spec.cluster, from, to, action = "drain.place", "drain: vnode {id} recreated on {to} (from {from})");
    Ok(())
}

/// The other nodes of a vnode's cluster, which placement spreads it from. Vnodes an
/// administrator made by hand belong to no cluster record: nothing to spread.
async fn siblings(store: &EtcdStore, spec: &VNodeSpec) -> Result<Vec<String>, ApiError> {
    Ok(match store.cluster(&spec.user, &spec.cluster).await? {
        Some((cluster, _)) => node_ids(&cluster),
        None => Vec::new(),
    })
}
