//! Vclusters on etcd. A create or scale-out writes, in one transaction, the cluster record,
//! every new vnode's spec, id index and address claim, the user's usage and the chosen
//! hosts' allocations, as [`admission::plan`] decided them from a snapshot, guarded by the
//! revisions of that snapshot: two requests never both pass a quota or a host's capacity,
//! and a crash leaves either all of it or none.
//! Usage and allocations are released in the transaction that forgets a deleted vnode
//! (`remove_vnode`).

use std::collections::{BTreeMap, HashSet};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::etcd::classify;
use super::network::AddressPlan;
use super::{EtcdStore, StoreError, decode, encode};
use crate::model::admission::{self, Plan, Refusal, Snapshot};
use crate::model::host::HostRecord;
use crate::model::placement::{HostLoad, Overcommit};
use crate::model::quota::Usage;
use crate::model::vcluster::{Operation, VCluster};
use crate::model::vnode::{self, DesiredState, VNodeSpec};

/// How often contention (other creates changing usage, allocations or addresses) is
/// retried before giving up.
const ATTEMPTS: usize = 64;

/// See [`EtcdStore::placement_snapshot`].
#[derive(Debug, Default)]
pub struct PlacementSnapshot {
    pub hosts: Vec<HostRecord>,
    pub drained: HashSet<String>,
    pub allocations: BTreeMap<String, Usage>,
}

/// What one create or scale-out writes: the new vnodes as [`admission::Request`] asks for
/// them, with what is written beside them and the guards they need.
pub struct NodeWrite<'a> {
    pub request: admission::Request<'a>,
    /// The cluster record to write, and the revision it must still have (`None`: it must
    /// not exist yet).
    pub cluster: Option<(&'a VCluster, Option<i64>)>,
    pub operation: Option<&'a Operation>,
    /// `idempotency/<user>/<key>` → operation id, written with the operation.
    pub idempotency_key: Option<&'a str>,
    /// A user image the vnodes start from: `images/<owner>/<name>` must still have the
    /// revision it was checked at (not being deleted meanwhile).
    pub image: Option<(String, i64)>,
    /// Batch task nodes: they count in `batch-usage/<user>`, not `usage/<user>`.
    pub batch: bool,
    /// A record written with them: key, JSON, and the revision it must still have (0: it
    /// must not exist).
    pub record: Option<(String, String, i64)>,
}

/// An admission snapshot as read, with the revision of each key the plan depends on.
struct Revisions {
    usage: i64,
    net: i64,
    /// Host → revision of its allocation (0: none yet).
    allocations: BTreeMap<String, i64>,
}

impl From<Refusal> for StoreError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            Refusal::Quota(_) => StoreError::QuotaExceeded(message),
            Refusal::NoRoom(_) | Refusal::HostFull(_) => StoreError::NoCapacity(message),
            Refusal::Addresses(_) => StoreError::Exhausted(message),
        }
    }
}

impl EtcdStore {
    /// Writes a new vnode spec on `host` with a fresh address of its user's network, the id
    /// index and the address claim in one transaction (the administrator's primitive: no
    /// group quota, no placement). Refuses an id that exists anywhere.
    pub async fn create_vnode(
        &self,
        host: &str,
        spec: &VNodeSpec,
        plan: &AddressPlan,
    ) -> Result<VNodeSpec, StoreError> {
        let write = NodeWrite {
            request: admission::Request {
                user: &spec.user,
                quota: None,
                specs: vec![spec.clone()],
                hosts: admission::Hosts::On(host.to_owned()),
            },
            cluster: None,
            operation: None,
            idempotency_key: None,
            image: None,
            batch: false,
            record: None,
        };
        let mut created = self.write_nodes(&write, plan).await?;
        Ok(created.remove(0).1)
    }

    /// Writes new vnodes (and their cluster record) as described: admitted, placed and
    /// addressed by [`admission::plan`] over a snapshot read at one revision, written in one
    /// transaction guarded by it. Returns each vnode's host and spec (with its address).
    pub async fn write_nodes(
        &self,
        write: &NodeWrite<'_>,
        plan: &AddressPlan,
    ) -> Result<Vec<(String, VNodeSpec)>, StoreError> {
        let user = write.request.user;
        let vnode_quota = self.vnode_quota(user).await?;
        let lease = match write.operation {
            Some(_) => Some(self.operation_lease().await?),
            None => None,
        };
        for _ in 0..ATTEMPTS {
            self.refuse_hard_conflicts(write).await?;
            // Grown (a write of its own) before the snapshot, which then reads it as is.
            self.user_net_for(user, vnode_quota, plan).await?;
            let (snapshot, revisions) = self
                .admission_snapshot(user, vnode_quota, write.batch)
                .await?;
            let planned = admission::plan(&write.request, &snapshot, |n| rand::random_range(0..n))?;
            let txn = self.node_write_txn(write, &planned, &revisions, lease);
            if self.txn_ok(txn).await? {
                return Ok(planned.nodes);
            }
        }
        Err(StoreError::Unavailable(
            "too many concurrent changes: try again".into(),
        ))
    }

    /// What [`admission::plan`] needs, read in one round trip at one revision: the user's
    /// usage, network and assigned addresses, and every host's allocation.
    async fn admission_snapshot(
        &self,
        user: &str,
        vnode_quota: u32,
        batch: bool,
    ) -> Result<(Snapshot, Revisions), StoreError> {
        let (usage_key, net_key) = (
            self.keys.usage_of(user, batch),
            self.keys.network_user(user),
        );
        let (addresses, allocations) = (self.keys.network_addrs(user), self.keys.allocations());
        let txn = Txn::new().and_then([
            TxnOp::get(usage_key.clone(), None),
            TxnOp::get(net_key.clone(), None),
            TxnOp::get(
                addresses.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
            TxnOp::get(allocations.clone(), Some(GetOptions::new().with_prefix())),
        ]);
        let response = self.client.kv_client().txn(txn).await.map_err(classify)?;
        let mut ranges = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().to_vec(),
            _ => Vec::new(),
        });
        let mut next = || ranges.next().unwrap_or_default();
        let (usage, usage_revision) = match next().first() {
            Some(kv) => (decode(&usage_key, kv.value())?, kv.mod_revision()),
            None => (Usage::default(), 0),
        };
        let Some((net, net_revision)) = next()
            .first()
            .map(|kv| Ok::<_, StoreError>((decode(&net_key, kv.value())?, kv.mod_revision())))
            .transpose()?
        else {
            return Err(StoreError::Conflict(format!(
                "the network of {user} was removed meanwhile: try again"
            )));
        };
        let taken = next()
            .iter()
            .filter_map(|kv| {
                String::from_utf8_lossy(&kv.key()[addresses.len()..])
                    .parse()
                    .ok()
            })
            .collect();
        let mut snapshot = Snapshot {
            usage,
            net,
            vnode_quota,
            taken,
            allocations: BTreeMap::new(),
        };
        let mut revisions = Revisions {
            usage: usage_revision,
            net: net_revision,
            allocations: BTreeMap::new(),
        };
        for kv in next() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let host = key[allocations.len()..].to_owned();
            snapshot
                .allocations
                .insert(host.clone(), decode(&key, kv.value())?);
            revisions.allocations.insert(host, kv.mod_revision());
        }
        Ok((snapshot, revisions))
    }

    /// The transaction of [`write_nodes`](Self::write_nodes): the plan and what goes with it,
    /// guarded by the revisions the plan was made from (usage, network, the allocations of
    /// the hosts it fills, cluster record, image) and by ids, addresses and the idempotency
    /// key being free.
    fn node_write_txn(
        &self,
        write: &NodeWrite<'_>,
        planned: &Plan,
        revisions: &Revisions,
        lease: Option<i64>,
    ) -> Txn {
        let user = write.request.user;
        let usage_key = self.keys.usage_of(user, write.batch);
        let mut when = vec![
            Compare::mod_revision(
                self.keys.network_user(user),
                CompareOp::Equal,
                revisions.net,
            ),
            Compare::mod_revision(usage_key.clone(), CompareOp::Equal, revisions.usage),
        ];
        let mut then = vec![TxnOp::put(usage_key, encode(&planned.usage), None)];
        for (host, allocated) in &planned.allocations {
            let key = self.keys.allocation(host);
            let revision = revisions.allocations.get(host).copied().unwrap_or(0);
            when.push(Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            ));
            then.push(TxnOp::put(key, encode(allocated), None));
        }
        for (host, spec) in &planned.nodes {
            let index = self.keys.vnode_host(&spec.id);
            let claim = self.address_key(user, spec.address.expect("planned with one"));
            when.push(Compare::create_revision(index.clone(), CompareOp::Equal, 0));
            when.push(Compare::create_revision(claim.clone(), CompareOp::Equal, 0));
            then.push(TxnOp::put(index, host.as_str(), None));
            then.push(TxnOp::put(
                self.keys.vnode(host, &spec.id),
                encode(spec),
                None,
            ));
            then.push(TxnOp::put(claim, spec.id.as_str(), None));
        }
        if let Some((cluster, revision)) = write.cluster {
            let key = self.keys.cluster_record(user, &cluster.name);
            when.push(match revision {
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Some(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, r),
            });
            then.push(TxnOp::put(key, encode(cluster), None));
        }
        if let Some((key, revision)) = &write.image {
            when.push(Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                *revision,
            ));
        }
        if let Some((key, value, revision)) = &write.record {
            when.push(match revision {
                0 => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                r => Compare::mod_revision(key.clone(), CompareOp::Equal, *r),
            });
            then.push(TxnOp::put(key.clone(), value.clone(), None));
        }
        if let (Some(op), Some(lease)) = (write.operation, lease) {
            let options = || Some(PutOptions::new().with_lease(lease));
            then.push(TxnOp::put(
                self.keys.operation(&op.id),
                encode(op),
                options(),
            ));
            if let Some(key) = write.idempotency_key {
                let key = self.keys.idempotency(user, key);
                when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                then.push(TxnOp::put(key, op.id.as_str(), options()));
            }
        }
        Txn::new().when(when).and_then(then)
    }

    /// Conflicts no retry can resolve: the cluster record changed or exists, a vnode id or
    /// the idempotency key is taken.
    async fn refuse_hard_conflicts(&self, write: &NodeWrite<'_>) -> Result<(), StoreError> {
        let user = write.request.user;
        if let Some((cluster, revision)) = write.cluster {
            let key = self.keys.cluster_record(user, &cluster.name);
            let current = self.get_json_rev::<VCluster>(&key).await?;
            match (revision, current) {
                (None, Some(_)) => {
                    return Err(StoreError::Conflict(format!(
                        "you already have a cluster named {}",
                        cluster.name
                    )));
                }
                (Some(_), None) => {
                    return Err(StoreError::NotFound(format!(
                        "no cluster named {}",
                        cluster.name
                    )));
                }
                (Some(expected), Some((_, actual))) if expected != actual => {
                    return Err(StoreError::Conflict(format!(
                        "cluster {} changed meanwhile: try again",
                        cluster.name
                    )));
                }
                _ => {}
            }
        }
        for spec in &write.request.specs {
            if self.vnode_host(&spec.id).await?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "a vnode with id {} already exists (a cluster of that name may still be \
                     being deleted: try again shortly)",
                    spec.id
                )));
            }
        }
        if let Some(key) = write.idempotency_key
            && let Some(id) = self.idempotent_operation(user, key).await?
        {
            return Err(StoreError::IdempotencyKeyUsed { operation: id });
        }
        Ok(())
    }

    async fn operation_lease(&self) -> Result<i64, StoreError> {
        Ok(self
            .client
            .lease_client()
            .grant(crate::model::vcluster::OPERATION_TTL_SECS, None)
            .await
            .map_err(classify)?
            .id())
    }

    pub async fn put_operation(&self, op: &Operation) -> Result<(), StoreError> {
        let lease = self.operation_lease().await?;
        self.client
            .kv_client()
            .put(
                self.keys.operation(&op.id),
                encode(op),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map(|_| ())
            .map_err(classify)
    }

    pub async fn operation(&self, id: &str) -> Result<Option<Operation>, StoreError> {
        self.get_json(&self.keys.operation(id)).await
    }

    /// The operation an idempotency key was used for.
    pub async fn idempotent_operation(
        &self,
        user: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        self.get_text(&self.keys.idempotency(user, key)).await
    }

    pub async fn cluster(
        &self,
        user: &str,
        name: &str,
    ) -> Result<Option<(VCluster, i64)>, StoreError> {
        self.get_json_rev(&self.keys.cluster_record(user, name))
            .await
    }

    pub async fn clusters_of(&self, user: &str) -> Result<Vec<VCluster>, StoreError> {
        self.list_json(&self.keys.user_clusters(user)).await
    }

    pub async fn all_clusters(&self) -> Result<Vec<VCluster>, StoreError> {
        self.list_json(&self.keys.clusters()).await
    }

    /// A vnode's spec (wherever it lives) with its host and revision.
    pub async fn vnode_spec(
        &self,
        id: &str,
    ) -> Result<Option<(String, VNodeSpec, i64)>, StoreError> {
        let Some(host) = self.vnode_host(id).await? else {
            return Ok(None);
        };
        Ok(self
            .get_json_rev::<VNodeSpec>(&self.keys.vnode(&host, id))
            .await?
            .map(|(spec, revision)| (host, spec, revision)))
    }

    /// Changes the cluster record (`change` returns the new record, or `None` to delete it)
    /// and the desired state of some of its vnodes in one transaction. `states` maps vnode
    /// ids to their new state; vnodes already being deleted are left alone.
    pub async fn change_cluster(
        &self,
        user: &str,
        name: &str,
        change: impl Fn(
            &VCluster,
        ) -> Result<(Option<VCluster>, Vec<(String, DesiredState)>), StoreError>,
    ) -> Result<Vec<String>, StoreError> {
        let key = self.keys.cluster_record(user, name);
        for _ in 0..ATTEMPTS {
            let (cluster, revision) = self
                .cluster(user, name)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no cluster named {name}")))?;
            let (record, states) = change(&cluster)?;
            let mut when = vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )];
            let mut then = vec![match &record {
                Some(record) => TxnOp::put(key.clone(), encode(record), None),
                None => TxnOp::delete(key.clone(), None::<DeleteOptions>),
            }];
            let mut changed = Vec::new();
            for (id, state) in &states {
                let Some((host, mut spec, spec_revision)) = self.vnode_spec(id).await? else {
                    continue;
                };
                if !vnode::want_state(&mut spec, *state) {
                    continue;
                }
                let spec_key = self.keys.vnode(&host, id);
                when.push(Compare::mod_revision(
                    spec_key.clone(),
                    CompareOp::Equal,
                    spec_revision,
                ));
                then.push(TxnOp::put(spec_key, encode(&spec), None));
                changed.push(id.clone());
            }
            if self.txn_ok(Txn::new().when(when).and_then(then)).await? {
                return Ok(changed);
            }
        }
        Err(StoreError::Unavailable(
            "too many concurrent changes: try again".into(),
        ))
    }

    /// Moves a vnode's spec to another host, keeping its id, index and address: the way
    /// back for a node whose host was lost, and the last step of a drain's move. Spec, id
    /// index, status and both hosts' allocations change in one transaction; `arrive` says
    /// what the spec becomes (and may refuse). `room` is the target's capacity and the
    /// overcommit its allocation must stay within (`None`: unchecked). A lost host's worker,
    /// if it ever returns, finds no spec for its copy and parks it (stopped, files kept).
    pub async fn move_vnode(
        &self,
        id: &str,
        to: &str,
        room: Option<(&HostLoad, Overcommit)>,
        arrive: impl Fn(&mut VNodeSpec) -> Result<(), StoreError>,
    ) -> Result<VNodeSpec, StoreError> {
        for _ in 0..ATTEMPTS {
            let (from, mut spec, spec_revision) = self
                .vnode_spec(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no vnode {id}")))?;
            if from == to {
                return Ok(spec);
            }
            if spec.state == DesiredState::Deleted {
                return Err(StoreError::Conflict(format!("vnode {id} is being deleted")));
            }
            let held = admission::spec_usage(&spec);
            let (from_alloc, from_revision) = self
                .get_json_rev::<Usage>(&self.keys.allocation(&from))
                .await?
                .unwrap_or_default();
            let (to_alloc, to_revision) = self
                .get_json_rev::<Usage>(&self.keys.allocation(to))
                .await?
                .unwrap_or_default();
            let to_alloc = to_alloc.plus(&held);
            if let Some((target, overcommit)) = room {
                admission::room_for(target, to_alloc, overcommit)?;
            }
            arrive(&mut spec)?;
            let old_key = self.keys.vnode(&from, id);
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(old_key.clone(), CompareOp::Equal, spec_revision),
                    Compare::mod_revision(
                        self.keys.allocation(&from),
                        CompareOp::Equal,
                        from_revision,
                    ),
                    Compare::mod_revision(self.keys.allocation(to), CompareOp::Equal, to_revision),
                ])
                .and_then([
                    TxnOp::delete(old_key, None::<DeleteOptions>),
                    TxnOp::put(self.keys.vnode(to, id), encode(&spec), None),
                    TxnOp::put(self.keys.vnode_host(id), to, None),
                    TxnOp::delete(self.keys.vnode_status(id), None::<DeleteOptions>),
                    TxnOp::put(
                        self.keys.allocation(&from),
                        encode(&from_alloc.minus(&held)),
                        None,
                    ),
                    TxnOp::put(self.keys.allocation(to), encode(&to_alloc), None),
                ]);
            if self.txn_ok(txn).await? {
                tracing::info!(vnode = id, from, to, "vnode moved");
                return Ok(spec);
            }
        }
        Err(StoreError::Unavailable(
            "too many concurrent changes: try again".into(),
        ))
    }

    /// What placement looks at, read at one revision in one round trip: the hosts up, the
    /// draining ones and every host's allocation.
    pub async fn placement_snapshot(&self) -> Result<PlacementSnapshot, StoreError> {
        let prefixed = || Some(GetOptions::new().with_prefix());
        let (hosts, drains, allocations) = (
            self.keys.hosts(),
            self.keys.drains(),
            self.keys.allocations(),
        );
        let txn = Txn::new().and_then([
            TxnOp::get(hosts.clone(), prefixed()),
            TxnOp::get(
                drains.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
            TxnOp::get(allocations.clone(), prefixed()),
        ]);
        let response = self.client.kv_client().txn(txn).await.map_err(classify)?;
        let mut ranges = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().to_vec(),
            _ => Vec::new(),
        });
        let mut next = || ranges.next().unwrap_or_default();
        let key_of = |kv: &etcd_client::KeyValue| String::from_utf8_lossy(kv.key()).into_owned();
        let mut snapshot = PlacementSnapshot::default();
        for kv in next() {
            snapshot
                .hosts
                .push(super::decode(&key_of(&kv), kv.value())?);
        }
        for kv in next() {
            snapshot
                .drained
                .insert(key_of(&kv)[drains.len()..].to_owned());
        }
        for kv in next() {
            let key = key_of(&kv);
            let usage = super::decode(&key, kv.value())?;
            snapshot
                .allocations
                .insert(key[allocations.len()..].to_owned(), usage);
        }
        Ok(snapshot)
    }

    /// Hosts that take no new vnodes.
    pub async fn drained_hosts(&self) -> Result<Vec<String>, StoreError> {
        self.keys_under(&self.keys.drains()).await
    }

    /// What the drain of each draining host is doing, in the leading master's words.
    pub async fn drain_notes(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.get_text_map(&self.keys.drains()).await
    }

    /// Updates the note of a host still draining (an undrain meanwhile wins).
    pub async fn set_drain_note(&self, host: &str, note: &str) -> Result<(), StoreError> {
        let key = self.keys.drain(host);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::put(key, note, None)]);
        self.txn_ok(txn).await.map(|_| ())
    }

    pub async fn set_drain(&self, host: &str, drain: bool) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        if drain {
            kv.put(
                self.keys.drain(host),
                "waiting for the leading master",
                None,
            )
            .await
            .map_err(classify)?;
        } else {
            kv.delete(self.keys.drain(host), None)
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    /// Every host's allocation (hosts without vnodes have none).
    pub async fn allocations(&self) -> Result<BTreeMap<String, Usage>, StoreError> {
        let prefix = self.keys.allocations();
        let response = self.get_prefix(&prefix).await?;
        let mut out = BTreeMap::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            out.insert(
                key[prefix.len()..].to_owned(),
                super::decode(&key, kv.value())?,
            );
        }
        Ok(out)
    }
}
