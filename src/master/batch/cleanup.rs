//! What the batch controller does besides deciding: remove an attempt's nodes, charge ended
//! attempts to fair share, forget old jobs and sweep up batch nodes nobody runs.

use tracing::{info, warn};

use super::{KEEP_ENDED_SECS, Seen};
use crate::master::actions::ApiError;
use crate::model::jobs::Instance;
use crate::model::vnode::{self, DesiredState};
use crate::store::{EtcdStore, StoreError};

/// Removes an attempt's nodes.
pub(super) async fn release(store: &EtcdStore, instance: &Instance) -> Result<(), ApiError> {
    for node in &instance.nodes {
        match store.set_vnode_state(&node.id, DesiredState::Deleted).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Adds ended attempts' cpu-seconds to the fair-share record.
pub(super) async fn charge(
    store: &EtcdStore,
    charges: &[(String, String, f64)],
    now: u64,
) -> Result<(), ApiError> {
    for _ in 0..16 {
        let (mut share, revision) = store.fair_share().await?;
        for (group, user, secs) in charges {
            share.charge(group, user, *secs, now);
        }
        if store.put_fair_share(&share, revision).await? {
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "the fair-share record changes too often".into(),
    ))
}

/// Forgets jobs that ended more than [`KEEP_ENDED_SECS`] ago.
pub(super) async fn prune(store: &EtcdStore) -> Result<(), ApiError> {
    let now = crate::master::now_secs();
    for stored in store.all_jobs().await? {
        if let Some(end) = &stored.job.ended
            && stored.done
            && now.saturating_sub(end.at) > KEEP_ENDED_SECS
        {
            store.forget_job(stored.job.id).await?;
            info!(
                user = %stored.job.user,
                job = stored.job.id,
                "job {} ended {} days ago: forgotten",
                stored.job.id,
                KEEP_ENDED_SECS / 86400
            );
        }
    }
    Ok(())
}

/// Deletes batch nodes no running attempt owns: those of ended jobs and of ended or retried
/// attempts (left by a master that died between recording an end and removing the nodes).
/// Nodes of an attempt newer than the records read (started in this pass) are spared.
pub(super) async fn sweep(store: &EtcdStore, seen: &[Seen]) -> Result<(), ApiError> {
    for (_, spec) in store.all_vnode_specs().await? {
        if !vnode::is_batch_cluster(&spec.cluster) || spec.state == DesiredState::Deleted {
            continue;
        }
        let parts: Vec<u64> = spec
            .cluster
            .split('-')
            .filter_map(|p| p.parse().ok())
            .collect();
        let [job, position, index, attempt] = parts[..] else {
            continue;
        };
        let over = match seen.iter().find(|s| s.stored.job.id == job) {
            None => true,
            Some(s) => {
                let task = s.stored.job.spec.tasks.get(position as usize);
                let record = task.and_then(|t| s.records.get(&(t.name.clone(), index as u32)));
                match record {
                    None => false,
                    Some((i, _)) => {
                        let attempt = attempt as u32;
                        attempt < i.attempt || (attempt == i.attempt && !i.state.is_active())
                    }
                }
            }
        };
        if !over {
            continue;
        }
        warn!(
            user = %spec.user,
            vnode = %spec.id,
            "batch node {} has no running task: removing it",
            spec.id
        );
        match store.set_vnode_state(&spec.id, DesiredState::Deleted).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
