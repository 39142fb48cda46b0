//! Batch jobs on etcd: `job-seq` (the last job id given), `jobs/<id>` (jobs not ended yet),
//! `jobs-done/<id>` (ended ones, moved there in one transaction by the leading master),
//! `job-tasks/<id>/<task>/<index>` (each started instance), `batch/fair-share` (groups' and
//! users' decayed usage) and `batch-usage/<user>` (what a user's running instances hold,
//! changed in the transactions that create and forget their vnodes, as `usage/<user>` is
//! for clusters). Ids are zero-padded in keys so that keys sort as numbers.

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use super::etcd::classify;
use super::{EtcdStore, StoreError, decode, encode};
use crate::model::jobs::schedule::FairShare;
use crate::model::jobs::{Instance, Job, QueueOrder};

/// A job as read, with the revision of its key and whether it has ended.
#[derive(Debug, Clone)]
pub struct StoredJob {
    pub job: Job,
    pub revision: i64,
    pub done: bool,
}

impl EtcdStore {
    /// A new job id: one more than the last, taken with compare-and-swap.
    pub async fn next_job_id(&self) -> Result<u64, StoreError> {
        let key = self.keys.job_seq();
        for _ in 0..64 {
            let current = self.get_json_rev::<u64>(&key).await?;
            let (next, guard) = match current {
                Some((last, revision)) => (
                    last + 1,
                    Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                ),
                None => (
                    1,
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                ),
            };
            let txn =
                Txn::new()
                    .when([guard])
                    .and_then([TxnOp::put(key.clone(), encode(&next), None)]);
            if self.txn_ok(txn).await? {
                return Ok(next);
            }
        }
        Err(StoreError::Unavailable(
            "too many concurrent submissions: try again".into(),
        ))
    }

    /// Writes a new job (its id must be fresh).
    pub async fn put_new_job(&self, job: &Job) -> Result<(), StoreError> {
        let key = self.keys.job(job.id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, encode(job), None)]);
        if self.txn_ok(txn).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("job {} exists", job.id)))
        }
    }

    /// Jobs not ended yet, in id order, with their revisions.
    pub async fn active_jobs(&self) -> Result<Vec<StoredJob>, StoreError> {
        self.jobs_under(&self.keys.jobs(), false).await
    }

    /// Every job, running or ended, in id order.
    pub async fn all_jobs(&self) -> Result<Vec<StoredJob>, StoreError> {
        let mut jobs = self.jobs_under(&self.keys.jobs_done(), true).await?;
        jobs.extend(self.jobs_under(&self.keys.jobs(), false).await?);
        jobs.sort_by_key(|j| j.job.id);
        Ok(jobs)
    }

    async fn jobs_under(&self, prefix: &str, done: bool) -> Result<Vec<StoredJob>, StoreError> {
        let response = self.get_prefix(prefix).await?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                Ok(StoredJob {
                    job: decode(&key, kv.value())?,
                    revision: kv.mod_revision(),
                    done,
                })
            })
            .collect()
    }

    /// One job, running or ended.
    pub async fn job(&self, id: u64) -> Result<Option<StoredJob>, StoreError> {
        for (key, done) in [(self.keys.job(id), false), (self.keys.job_done(id), true)] {
            if let Some((job, revision)) = self.get_json_rev::<Job>(&key).await? {
                return Ok(Some(StoredJob {
                    job,
                    revision,
                    done,
                }));
            }
        }
        Ok(None)
    }

    /// Changes a job not ended yet, against concurrent writers: `change` edits it and says
    /// whether there is anything to write. `NotFound` once it ended.
    pub async fn update_job(
        &self,
        id: u64,
        change: impl Fn(&mut Job) -> Result<bool, StoreError>,
    ) -> Result<Job, StoreError> {
        let key = self.keys.job(id);
        for _ in 0..64 {
            let Some((mut job, revision)) = self.get_json_rev::<Job>(&key).await? else {
                return Err(StoreError::NotFound(format!("job {id} has ended")));
            };
            if !change(&mut job)? {
                return Ok(job);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.clone(), encode(&job), None)]);
            if self.txn_ok(txn).await? {
                return Ok(job);
            }
        }
        Err(StoreError::Unavailable(format!(
            "job {id} changes too often: try again"
        )))
    }

    /// Moves an ended job to `jobs-done/`, if it still has the revision it was read at.
    pub async fn end_job(&self, job: &Job, revision: i64) -> Result<bool, StoreError> {
        let key = self.keys.job(job.id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([
                TxnOp::delete(key, None::<DeleteOptions>),
                TxnOp::put(self.keys.job_done(job.id), encode(job), None),
            ]);
        self.txn_ok(txn).await
    }

    /// Forgets a job not ended yet and its instances' records, if it still has the revision
    /// it was read at (its owner's account is gone: nobody may see it again).
    pub async fn forget_active_job(&self, id: u64, revision: i64) -> Result<bool, StoreError> {
        let key = self.keys.job(id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([
                TxnOp::delete(key, None::<DeleteOptions>),
                TxnOp::delete(
                    self.keys.job_instances(id),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            ]);
        self.txn_ok(txn).await
    }

    /// Forgets an ended job and its instances' records.
    pub async fn forget_job(&self, id: u64) -> Result<(), StoreError> {
        let txn = Txn::new().and_then([
            TxnOp::delete(self.keys.job_done(id), None::<DeleteOptions>),
            TxnOp::delete(
                self.keys.job_instances(id),
                Some(DeleteOptions::new().with_prefix()),
            ),
        ]);
        self.client.kv_client().txn(txn).await.map_err(classify)?;
        Ok(())
    }

    /// The started instances of a job, with their revisions.
    pub async fn job_instances(&self, id: u64) -> Result<Vec<(Instance, i64)>, StoreError> {
        let response = self.get_prefix(&self.keys.job_instances(id)).await?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                Ok((decode(&key, kv.value())?, kv.mod_revision()))
            })
            .collect()
    }

    /// Writes an instance's record if it still has `revision` (0: must not exist yet).
    pub async fn put_instance(
        &self,
        job: u64,
        instance: &Instance,
        revision: i64,
    ) -> Result<bool, StoreError> {
        let key = self.keys.job_instance(job, &instance.task, instance.index);
        let guard = if revision == 0 {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
        };
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(key, encode(instance), None)]);
        self.txn_ok(txn).await
    }

    pub async fn fair_share(&self) -> Result<(FairShare, i64), StoreError> {
        Ok(self
            .get_json_rev(&self.keys.fair_share())
            .await?
            .unwrap_or_default())
    }

    /// Writes the fair-share record if it still has `revision` (0: absent).
    pub async fn put_fair_share(
        &self,
        share: &FairShare,
        revision: i64,
    ) -> Result<bool, StoreError> {
        let key = self.keys.fair_share();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, encode(share), None)]);
        self.txn_ok(txn).await
    }

    /// The queue as the leading master last ordered it.
    pub async fn queue_order(&self) -> Result<QueueOrder, StoreError> {
        Ok(self
            .get_json(&self.keys.queue_order())
            .await?
            .unwrap_or_default())
    }

    pub async fn put_queue_order(&self, order: &QueueOrder) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(self.keys.queue_order(), encode(order), None)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// What each user's running instances hold.
    pub async fn batch_usages(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::model::quota::Usage>, StoreError> {
        let prefix = self.keys.batch_usages();
        let response = self.get_prefix(&prefix).await?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                Ok((key[prefix.len()..].to_owned(), decode(&key, kv.value())?))
            })
            .collect()
    }

    /// Watches jobs, instances and vnodes' statuses: every event means "look again".
    pub async fn watch_jobs(&self) -> Result<Vec<etcd_client::WatchStream>, StoreError> {
        let mut streams = Vec::new();
        for prefix in [
            self.keys.jobs(),
            self.keys.vnode_statuses(),
            self.keys.hosts(),
        ] {
            let stream = self
                .client
                .watch_client()
                .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
                .await
                .map_err(classify)?;
            streams.push(stream);
        }
        Ok(streams)
    }
}
