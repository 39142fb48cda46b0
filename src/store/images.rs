//! The image catalog on etcd: `images/<owner>/<name>` holds an [`ImageRecord`], and the
//! owner's `usage/<user>` counts their images and the size of their layers. Every change of a
//! record is one transaction with the owner's usage, guarded by both revisions, so two saves
//! never both pass the quota and a save, a delete and a new cluster never interleave: a
//! cluster's create or scale-out compares the record's revision too
//! ([`NodeWrite::image`](super::clusters::NodeWrite)).

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp, WatchStream};

use super::{EtcdStore, StoreError, encode};
use crate::model::image::{ImageRecord, ImageVersion, Pending};
use crate::model::quota::{self, Quota, Usage};

const ATTEMPTS: usize = 64;

/// A save as the master asks it.
pub struct SaveRequest<'a> {
    pub owner: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub vnode: &'a str,
    pub host: &'a str,
    /// Replace an existing image of that name.
    pub force: bool,
    pub quota: &'a Quota,
    pub now: u64,
}

/// What a change makes of a record and its owner's usage.
struct Outcome<T> {
    /// `None` deletes the record.
    record: Option<ImageRecord>,
    usage: Usage,
    answer: T,
}

impl EtcdStore {
    /// The record and its revision.
    pub async fn image(
        &self,
        owner: &str,
        name: &str,
    ) -> Result<Option<(ImageRecord, i64)>, StoreError> {
        self.get_json_rev(&self.keys.image(owner, name)).await
    }

    /// Every record, sorted by owner and name.
    pub async fn all_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.list_json(&self.keys.images()).await
    }

    /// Every record and the revision they were read at, to watch from.
    pub async fn images_and_revision(&self) -> Result<(Vec<ImageRecord>, i64), StoreError> {
        self.list_json_rev(&self.keys.images()).await
    }

    /// Watches `images/` from `after_revision + 1`: every event means "read again".
    pub async fn watch_images(&self, after_revision: i64) -> Result<WatchStream, StoreError> {
        self.watch_prefix_after(self.keys.images(), after_revision)
            .await
    }

    /// Reads the record and its owner's usage, lets `change` decide, and writes what it
    /// decided in one transaction guarded by both revisions; retried on contention.
    async fn change_image<T>(
        &self,
        owner: &str,
        name: &str,
        change: impl Fn(Option<ImageRecord>, Usage) -> Result<Outcome<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let key = self.keys.image(owner, name);
        let usage_key = self.keys.usage(owner);
        for _ in 0..ATTEMPTS {
            let (record, record_revision) = match self.get_json_rev::<ImageRecord>(&key).await? {
                Some((record, revision)) => (Some(record), revision),
                None => (None, 0),
            };
            let (usage, usage_revision) = self
                .get_json_rev::<Usage>(&usage_key)
                .await?
                .unwrap_or_default();
            let outcome = change(record, usage)?;
            let write = match &outcome.record {
                Some(record) => TxnOp::put(key.clone(), encode(record), None),
                None => TxnOp::delete(key.clone(), None::<DeleteOptions>),
            };
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(key.clone(), CompareOp::Equal, record_revision),
                    Compare::mod_revision(usage_key.clone(), CompareOp::Equal, usage_revision),
                ])
                .and_then([
                    write,
                    TxnOp::put(usage_key.clone(), encode(&outcome.usage), None),
                ]);
            if self.txn_ok(txn).await? {
                return Ok(outcome.answer);
            }
        }
        Err(StoreError::Unavailable(
            "too many concurrent changes: try again".into(),
        ))
    }

    /// Records a save for the worker of `host` to carry out: a new record (one more image in
    /// the quota), or with `force` the existing one marked as being replaced. The layer's
    /// size is only known at the end; the record carries what the quota has left.
    pub async fn begin_image_save(
        &self,
        save: &SaveRequest<'_>,
    ) -> Result<ImageRecord, StoreError> {
        let reference = format!("{}/{}", save.owner, save.name);
        self.change_image(save.owner, save.name, |existing, usage| {
            let (mut record, usage) = match existing {
                None => {
                    let one = Usage {
                        images: 1,
                        ..Usage::default()
                    };
                    let usage = quota::admit(save.quota, &usage, &one)
                        .map_err(|e| StoreError::QuotaExceeded(e.to_string()))?;
                    let record = ImageRecord {
                        owner: save.owner.to_owned(),
                        name: save.name.to_owned(),
                        description: save.description.to_owned(),
                        public: false,
                        created_at: save.now,
                        current: None,
                        pending: None,
                        last_error: None,
                    };
                    (record, usage)
                }
                Some(record) => {
                    check_replaceable(&record, save, &reference)?;
                    (record, usage)
                }
            };
            // The new layer may take what is left, plus what the layer it replaces frees.
            let left = save
                .quota
                .image_bytes
                .saturating_sub(usage.image_bytes)
                .saturating_add(record.bytes());
            if left == 0 {
                return Err(StoreError::QuotaExceeded(format!(
                    "image size quota exceeded: your images take {} of {}",
                    crate::model::host::human_bytes(usage.image_bytes),
                    crate::model::host::human_bytes(save.quota.image_bytes)
                )));
            }
            record.pending = Some(Pending::Saving {
                vnode: save.vnode.to_owned(),
                host: save.host.to_owned(),
                requested_at: save.now,
                max_bytes: left,
                written_bytes: 0,
                description: save.description.to_owned(),
            });
            Ok(Outcome {
                record: Some(record.clone()),
                usage,
                answer: record,
            })
        })
        .await
    }

    /// The worker's progress on a save (a write of the record alone, if it is still that
    /// save's).
    pub async fn image_save_progress(
        &self,
        owner: &str,
        name: &str,
        vnode_id: &str,
        written: u64,
    ) -> Result<(), StoreError> {
        let key = self.keys.image(owner, name);
        if let Some((mut record, revision)) = self.get_json_rev::<ImageRecord>(&key).await?
            && let Some(Pending::Saving {
                vnode,
                written_bytes,
                ..
            }) = record.pending.as_mut()
            && vnode == vnode_id
        {
            *written_bytes = written;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key, encode(&record), None)]);
            self.txn_ok(txn).await?;
        }
        Ok(())
    }

    /// Ends a save with its new layer: it becomes `current`, and the owner's usage grows by
    /// its size (less the layer it replaces). Returns the replaced version, whose file the
    /// caller deletes. Refused (and the caller deletes the new file) if the save is no longer
    /// pending or the layers no longer fit the quota it was given.
    pub async fn finish_image_save(
        &self,
        owner: &str,
        name: &str,
        vnode_id: &str,
        version: &ImageVersion,
    ) -> Result<Option<ImageVersion>, StoreError> {
        self.change_image(owner, name, |record, usage| {
            let Some(mut record) = record else {
                return Err(StoreError::NotFound(format!(
                    "image {owner}/{name} is gone"
                )));
            };
            let description = match &record.pending {
                Some(Pending::Saving {
                    vnode,
                    max_bytes,
                    description,
                    ..
                }) if vnode == vnode_id => {
                    if version.bytes > *max_bytes {
                        return Err(StoreError::QuotaExceeded(format!(
                            "image size quota exceeded: the layer takes {}, {} was left",
                            crate::model::host::human_bytes(version.bytes),
                            crate::model::host::human_bytes(*max_bytes)
                        )));
                    }
                    description.clone()
                }
                _ => {
                    return Err(StoreError::Conflict(format!(
                        "image {owner}/{name} is no longer being saved from {vnode_id}"
                    )));
                }
            };
            let replaced = record.current.replace(version.clone());
            let freed = replaced.as_ref().map_or(0, |v| v.bytes);
            let usage = Usage {
                image_bytes: usage.image_bytes.saturating_sub(freed) + version.bytes,
                ..usage
            };
            record.pending = None;
            record.last_error = None;
            record.description = description;
            Ok(Outcome {
                record: Some(record),
                usage,
                answer: replaced,
            })
        })
        .await
    }

    /// Ends a save that failed: the record keeps its layer (if it had one) and says why.
    pub async fn fail_image_save(
        &self,
        owner: &str,
        name: &str,
        vnode_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.change_image(owner, name, |record, usage| match record {
            Some(mut record)
                if matches!(&record.pending, Some(Pending::Saving { vnode, .. }) if vnode == vnode_id) =>
            {
                record.pending = None;
                record.last_error = Some(reason.to_owned());
                Ok(Outcome {
                    record: Some(record),
                    usage,
                    answer: (),
                })
            }
            _ => Err(StoreError::Conflict(format!(
                "image {owner}/{name} is no longer being saved from {vnode_id}"
            ))),
        })
        .await
    }

    /// Shares or unshares an image of `owner`'s, or changes its description.
    pub async fn update_image(
        &self,
        owner: &str,
        name: &str,
        public: Option<bool>,
        description: Option<&str>,
    ) -> Result<ImageRecord, StoreError> {
        self.change_image(owner, name, |record, usage| {
            let mut record = record.ok_or_else(|| no_image(name))?;
            if let Some(public) = public {
                record.public = public;
            }
            if let Some(description) = description {
                record.description = description.to_owned();
            }
            Ok(Outcome {
                record: Some(record.clone()),
                usage,
                answer: record,
            })
        })
        .await
    }

    /// First step of a delete: marks the record so that no new cluster can start using it.
    /// A delete interrupted earlier (the record is already marked) goes on.
    pub async fn begin_image_delete(
        &self,
        owner: &str,
        name: &str,
        now: u64,
        host_alive: impl Fn(&str) -> bool,
    ) -> Result<ImageRecord, StoreError> {
        self.change_image(owner, name, |record, usage| {
            let mut record = record.ok_or_else(|| no_image(name))?;
            match &record.pending {
                Some(Pending::Saving { vnode, host, .. }) if host_alive(host) => {
                    return Err(StoreError::Conflict(format!(
                        "image {owner}/{name} is being saved (from {vnode}) right now: delete \
                         it once that ends"
                    )));
                }
                Some(Pending::Deleting { .. }) => {}
                _ => {
                    record.pending = Some(Pending::Deleting {
                        since: now,
                        confirmed: false,
                    })
                }
            }
            Ok(Outcome {
                record: Some(record.clone()),
                usage,
                answer: record,
            })
        })
        .await
    }

    /// Takes back a delete the image's users stopped (unless it was confirmed: files may be
    /// gone already).
    pub async fn cancel_image_delete(&self, owner: &str, name: &str) -> Result<(), StoreError> {
        self.change_image(owner, name, |record, usage| {
            let mut record = record.ok_or_else(|| no_image(name))?;
            if matches!(
                record.pending,
                Some(Pending::Deleting {
                    confirmed: false,
                    ..
                })
            ) {
                record.pending = None;
            }
            Ok(Outcome {
                record: Some(record),
                usage,
                answer: (),
            })
        })
        .await
    }

    /// Second step of a delete: no cluster uses the image; the workers may remove it.
    pub async fn confirm_image_delete(&self, owner: &str, name: &str) -> Result<(), StoreError> {
        self.change_image(owner, name, |record, usage| {
            let mut record = record.ok_or_else(|| no_image(name))?;
            if let Some(Pending::Deleting { confirmed, .. }) = record.pending.as_mut() {
                *confirmed = true;
            }
            Ok(Outcome {
                record: Some(record),
                usage,
                answer: (),
            })
        })
        .await
    }

    /// Last step of a delete, by a worker once the files are gone: forgets the record and
    /// releases it.
    pub async fn finish_image_delete(&self, owner: &str, name: &str) -> Result<(), StoreError> {
        self.change_image(owner, name, |record, usage| {
            let record = record.ok_or_else(|| no_image(name))?;
            let held = Usage {
                images: 1,
                image_bytes: record.bytes(),
                ..Usage::default()
            };
            Ok(Outcome {
                record: None,
                usage: usage.minus(&held),
                answer: (),
            })
        })
        .await
    }
}

fn no_image(name: &str) -> StoreError {
    StoreError::NotFound(format!("there is no image named {name}"))
}

/// A save may go over an image that no save or delete is at and, with `force`, over one
/// holding a layer.
fn check_replaceable(
    record: &ImageRecord,
    save: &SaveRequest<'_>,
    reference: &str,
) -> Result<(), StoreError> {
    match &record.pending {
        Some(Pending::Saving { vnode, .. }) => {
            return Err(StoreError::Conflict(format!(
                "image {reference} is being saved (from {vnode}) right now: \
                 wait until that ends"
            )));
        }
        Some(Pending::Deleting { .. }) => {
            return Err(StoreError::Conflict(format!(
                "image {reference} is being deleted"
            )));
        }
        None => {}
    }
    // A record whose first save failed holds no layer: saving again is no
    // replacement.
    if record.current.is_some() && !save.force {
        return Err(StoreError::Conflict(format!(
            "you already have an image named {}: choose another name, or \
             replace it (force)",
            save.name
        )));
    }
    Ok(())
}
