//! The vnode keys on etcd: specs keyed by host, their status, the id index and the per-user
//! uid ranges. Every write that must not race (unique ids, uid ranges, state changes) is a
//! compare-and-swap transaction.

use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp, WatchStream};

use super::etcd::classify;
use super::{EtcdStore, StoreError, decode, encode};
use crate::model::quota::Usage;
use crate::model::vnode::{self, DesiredState, VNodeSpec, VNodeStatus};

/// A spec as read from etcd: unreadable ones are kept (with the error) so the worker can
/// report them instead of ignoring them.
pub struct StoredSpec {
    pub id: String,
    pub spec: Result<VNodeSpec, StoreError>,
}

/// One vnode as [`EtcdStore::vnodes_seen`] finds it.
pub struct VNodeSeen {
    pub host: String,
    pub spec: VNodeSpec,
    pub status: Option<VNodeStatus>,
}

/// Gets per transaction: etcd's default limit is 128 operations.
const GETS_PER_TXN: usize = 100;

impl EtcdStore {
    /// The hosts whose worker holds its lease, by name only (one keys-only read).
    pub async fn host_names(&self) -> Result<Vec<String>, StoreError> {
        self.keys_under(&self.keys.hosts()).await
    }

    /// Specs and statuses of `ids`, in two round trips per fifty vnodes rather than three
    /// per vnode; a vnode that does not exist (or moved between the two reads) is `None`.
    pub async fn vnodes_seen(&self, ids: &[String]) -> Result<Vec<Option<VNodeSeen>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GETS_PER_TXN / 2) {
            let first = self
                .gets(
                    chunk
                        .iter()
                        .flat_map(|id| [self.keys.vnode_host(id), self.keys.vnode_status(id)]),
                )
                .await?;
            let mut hosts = Vec::new();
            let mut statuses = Vec::new();
            for (id, pair) in chunk.iter().zip(first.chunks(2)) {
                let host = pair[0]
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                let status = match &pair[1] {
                    Some(v) => Some(decode::<VNodeStatus>(&self.keys.vnode_status(id), v)?),
                    None => None,
                };
                hosts.push(host);
                statuses.push(status);
            }
            let spec_keys: Vec<String> = chunk
                .iter()
                .zip(&hosts)
                .filter_map(|(id, host)| host.as_ref().map(|h| self.keys.vnode(h, id)))
                .collect();
            let mut specs = self.gets(spec_keys.iter().cloned()).await?.into_iter();
            let mut spec_keys = spec_keys.iter();
            for (host, status) in hosts.into_iter().zip(statuses) {
                let Some(host) = host else {
                    out.push(None);
                    continue;
                };
                let key = spec_keys.next().expect("one key per host");
                let seen = match specs.next().flatten() {
                    Some(value) => Some(VNodeSeen {
                        host,
                        spec: decode(key, &value)?,
                        status,
                    }),
                    None => None,
                };
                out.push(seen);
            }
        }
        Ok(out)
    }

    /// The values of `keys` read at one revision, in one transaction.
    async fn gets(
        &self,
        keys: impl Iterator<Item = String>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let ops: Vec<TxnOp> = keys.map(|k| TxnOp::get(k, None)).collect();
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let response = self
            .client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(classify)?;
        Ok(response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => {
                    get.kvs().first().map(|kv| kv.value().to_vec())
                }
                _ => None,
            })
            .collect())
    }

    /// The host a vnode id lives on.
    pub async fn vnode_host(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.get_text(&self.keys.vnode_host(id)).await
    }

    /// Changes a vnode's desired state; the worker of its host acts on it.
    pub async fn set_vnode_state(&self, id: &str, state: DesiredState) -> Result<(), StoreError> {
        self.update_vnode_spec(id, |spec| {
            if spec.state == DesiredState::Deleted && state != DesiredState::Deleted {
                return Err(StoreError::Conflict(format!("vnode {id} is being deleted")));
            }
            Ok(vnode::want_state(spec, state))
        })
        .await
        .map(|_| ())
    }

    /// Changes a vnode's spec where it lives, against concurrent writers: `change` edits it
    /// and says whether there is anything to write. Returns the spec as it is now.
    pub async fn update_vnode_spec(
        &self,
        id: &str,
        change: impl Fn(&mut VNodeSpec) -> Result<bool, StoreError>,
    ) -> Result<VNodeSpec, StoreError> {
        let host = self
            .vnode_host(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no vnode with id {id}")))?;
        let key = self.keys.vnode(&host, id);
        let mut kv = self.client.kv_client();
        loop {
            let response = kv.get(key.clone(), None).await.map_err(classify)?;
            let Some(item) = response.kvs().first() else {
                return Err(StoreError::NotFound(format!("no vnode with id {id}")));
            };
            let mut spec: VNodeSpec = decode(&key, item.value())?;
            if !change(&mut spec)? {
                return Ok(spec);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    item.mod_revision(),
                )])
                .and_then([TxnOp::put(key.clone(), encode(&spec), None)]);
            if kv.txn(txn).await.map_err(classify)?.succeeded() {
                return Ok(spec);
            }
        }
    }

    /// The specs under `vnodes/<host>/` and the revision they were read at.
    pub async fn host_vnode_specs(&self, host: &str) -> Result<(Vec<StoredSpec>, i64), StoreError> {
        let prefix = self.keys.host_vnodes(host);
        let response = self.get_prefix(&prefix).await?;
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        let specs = response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                StoredSpec {
                    id: key[prefix.len()..].to_owned(),
                    spec: decode(&key, kv.value()),
                }
            })
            .collect();
        Ok((specs, revision))
    }

    /// One spec of `host`, `None` when its key is gone.
    pub async fn host_vnode_spec(
        &self,
        host: &str,
        id: &str,
    ) -> Result<Option<StoredSpec>, StoreError> {
        let key = self.keys.vnode(host, id);
        let response = self
            .client
            .kv_client()
            .get(key.clone(), None)
            .await
            .map_err(classify)?;
        Ok(response.kvs().first().map(|kv| StoredSpec {
            id: id.to_owned(),
            spec: decode(&key, kv.value()),
        }))
    }

    /// Every spec in the cluster, with the host it is on.
    pub async fn all_vnode_specs(&self) -> Result<Vec<(String, VNodeSpec)>, StoreError> {
        let prefix = self.keys.vnodes();
        let response = self.get_prefix(&prefix).await?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let host = key[prefix.len()..]
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                decode(&key, kv.value()).map(|spec| (host, spec))
            })
            .collect()
    }

    /// Watches `vnodes/<host>/` from `after_revision + 1`: every event means "read again".
    pub async fn watch_host_vnodes(
        &self,
        host: &str,
        after_revision: i64,
    ) -> Result<WatchStream, StoreError> {
        self.watch_prefix_after(self.keys.host_vnodes(host), after_revision)
            .await
    }

    pub async fn put_vnode_status(&self, status: &VNodeStatus) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(
                self.keys.vnode_status(&status.id),
                encode(status),
                None::<PutOptions>,
            )
            .await
            .map(|_| ())
            .map_err(classify)
    }

    pub async fn vnode_status(&self, id: &str) -> Result<Option<VNodeStatus>, StoreError> {
        self.get_json(&self.keys.vnode_status(id)).await
    }

    pub async fn all_vnode_statuses(&self) -> Result<Vec<VNodeStatus>, StoreError> {
        self.list_json(&self.keys.vnode_statuses()).await
    }

    /// Forgets a deleted vnode: spec, status, id index, its address claim (if it still
    /// holds it) and its port mappings go in one transaction, which also releases what it
    /// held of its user's usage (mappings included) and its host's allocation. Only the transaction that sees the spec still there
    /// releases anything, so a repeated call releases nothing twice.
    pub async fn remove_vnode(&self, host: &str, spec: &VNodeSpec) -> Result<(), StoreError> {
        let id = spec.id.as_str();
        let held = crate::model::admission::spec_usage(spec);
        let spec_key = self.keys.vnode(host, id);
        for _ in 0..64 {
            let batch = vnode::is_batch_cluster(&spec.cluster);
            let usage_key = self.keys.usage_of(&spec.user, batch);
            let alloc_key = self.keys.allocation(host);
            let (usage, usage_revision) = self
                .get_json_rev::<Usage>(&usage_key)
                .await?
                .unwrap_or_default();
            let (allocated, alloc_revision) = self
                .get_json_rev::<Usage>(&alloc_key)
                .await?
                .unwrap_or_default();
            // Read after the usage: a mapping made since changed the usage, and the
            // transaction below then fails and reads again.
            let (mapping_keys, mapped) = self.mappings_of_vnode(&spec.user, id).await?;
            let mut ops = vec![
                TxnOp::delete(spec_key.clone(), None::<DeleteOptions>),
                TxnOp::delete(self.keys.vnode_status(id), None::<DeleteOptions>),
                TxnOp::delete(self.keys.vnode_host(id), None::<DeleteOptions>),
                TxnOp::put(
                    usage_key.clone(),
                    encode(&usage.minus(&held).minus(&mapped)),
                    None,
                ),
                TxnOp::put(alloc_key.clone(), encode(&allocated.minus(&held)), None),
            ];
            ops.extend(
                mapping_keys
                    .into_iter()
                    .map(|key| TxnOp::delete(key, None::<DeleteOptions>)),
            );
            if let Some(address) = spec.address {
                let claim = self.address_key(&spec.user, address);
                ops.push(TxnOp::txn(
                    Txn::new()
                        .when([Compare::value(claim.clone(), CompareOp::Equal, id)])
                        .and_then([TxnOp::delete(claim, None::<DeleteOptions>)]),
                ));
            }
            let txn = Txn::new()
                .when([
                    Compare::create_revision(spec_key.clone(), CompareOp::Greater, 0),
                    Compare::mod_revision(usage_key, CompareOp::Equal, usage_revision),
                    Compare::mod_revision(alloc_key, CompareOp::Equal, alloc_revision),
                ])
                .and_then(ops);
            if self.txn_ok(txn).await? {
                return Ok(());
            }
            if self.get_json_rev::<VNodeSpec>(&spec_key).await?.is_none() {
                // Forgotten already (by an earlier call whose answer we lost).
                let _ = self
                    .client
                    .kv_client()
                    .delete(self.keys.vnode_status(id), None)
                    .await;
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "could not forget vnode {id}: too many concurrent changes"
        )))
    }

    /// The user's uid range slot, allocated on first use. Two workers allocating for different
    /// users at once never get the same slot: both keys are created only if neither exists.
    pub async fn uid_slot(&self, user: &str) -> Result<u32, StoreError> {
        let mut kv = self.client.kv_client();
        let range_key = self.keys.uid_range(user);
        loop {
            let response = kv.get(range_key.clone(), None).await.map_err(classify)?;
            if let Some(item) = response.kvs().first() {
                return decode(&range_key, item.value());
            }
            let taken: Vec<u32> = self
                .keys_under(&self.keys.uid_slots())
                .await?
                .iter()
                .filter_map(|k| k.parse().ok())
                .collect();
            let slot = vnode::free_uid_slot(&taken).ok_or_else(|| {
                StoreError::Exhausted(format!(
                    "no uid range left for user {user}: all {} ranges are taken",
                    vnode::UID_SLOTS
                ))
            })?;
            let slot_key = self.keys.uid_slot(slot);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(range_key.clone(), CompareOp::Equal, 0),
                    Compare::create_revision(slot_key.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(range_key.clone(), encode(&slot), None),
                    TxnOp::put(slot_key, user, None),
                ]);
            if kv.txn(txn).await.map_err(classify)?.succeeded() {
                tracing::info!(
                    user,
                    slot,
                    "uid range from {} allocated to {user}",
                    vnode::uid_base(slot)
                );
                return Ok(slot);
            }
        }
    }
}
