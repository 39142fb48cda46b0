//! Virtual clusters: create (placed, admitted and written in one transaction), list, show,
//! start and stop, scale, delete, and the operations that track them.

use super::*;
use crate::model::image::Unusable;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::master::waits::Follow;
use crate::master::{Master, now_secs};
use crate::model::admission;
use crate::model::host::HostRecord;
use crate::model::image::ImageRef;
use crate::model::placement::HostLoad;
use crate::model::quota::{NodeSize, Quota, Usage};
use crate::model::vcluster::{
    self, ClusterState, CreateClusterRequest, NodeSeen, NodeState, Operation, OperationKind,
    Progress, VCluster,
};
use crate::model::vnode::{self, DesiredState, VNodeSpec};
use crate::store::clusters::{NodeWrite, PlacementSnapshot};
use crate::store::vnodes::VNodeSeen;
use crate::store::{EtcdStore, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub index: u32,
    pub id: String,
    pub hostname: String,
    pub state: NodeState,
    #[schema(value_type = Option<String>, format = "ipv4")]
    pub address: Option<std::net::Ipv4Addr>,
    pub host: String,
    pub image: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    pub name: String,
    pub user: String,
    pub image: String,
    pub state: ClusterState,
    pub node_size: NodeSize,
    pub created_at: u64,
    pub nodes: Vec<NodeView>,
    /// Set when the cluster was stopped for being idle too long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop: Option<vcluster::IdleStop>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationView {
    #[serde(flatten)]
    pub operation: Operation,
    #[serde(flatten)]
    pub progress: Progress,
}

/// A create's answer: the operation, and whether it is an earlier one found by its
/// idempotency key.
pub struct Created {
    pub operation: OperationView,
    pub replayed: bool,
}

impl Master {
    // ---- clusters ----

    pub async fn create_cluster(
        &self,
        caller: &Caller,
        request: &CreateClusterRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Created, ApiError> {
        caller.require_normal()?;
        let user = caller.name().to_owned();
        if let Some(key) = idempotency_key {
            check_idempotency_key(key)?;
        }
        let store = self.store().await?;
        if let Some(key) = idempotency_key
            && let Some(view) = self.replay(&store, &user, key).await?
        {
            return Ok(Created {
                operation: view,
                replayed: true,
            });
        }
        let group = self.group_of(&store, &caller.account).await?;
        let create = request.resolve(&group.defaults, &self.config.default_image)?;
        let now = now_secs();
        let cluster = VCluster {
            name: create.name.clone(),
            user: user.clone(),
            image: create.image.clone(),
            node_size: create.node,
            nodes: (0..create.size).collect(),
            next_index: create.size,
            created_at: now,
            idle_stop: None,
        };
        let operation = Operation {
            id: random_id(16),
            kind: OperationKind::Create,
            user: user.clone(),
            cluster: cluster.name.clone(),
            nodes: cluster
                .nodes
                .iter()
                .map(|i| vcluster::node_id(&user, &cluster.name, *i))
                .collect(),
            created_at: now,
        };
        let sizes = vec![create.node; create.size as usize];
        let result = self
            .place_and_write(
                &store,
                &cluster,
                None,
                &sizes,
                &HashMap::new(),
                &group.quota,
                &operation,
                idempotency_key,
            )
            .await;
        let hosts = match result {
            Ok(hosts) => hosts,
            Err(used @ ApiError::IdempotencyKeyUsed { .. }) => {
                let key = idempotency_key.expect("only with a key");
                if let Some(view) = self.replay(&store, &user, key).await? {
                    return Ok(Created {
                        operation: view,
                        replayed: true,
                    });
                }
                return Err(used);
            }
            Err(e) => return Err(e),
        };
        log_operation(caller.name(), &operation, &vcluster::placed_on(&hosts));
        Ok(Created {
            operation: self.operation_view(&store, operation).await?,
            replayed: false,
        })
    }

    pub(super) async fn replay(
        &self,
        store: &EtcdStore,
        user: &str,
        key: &str,
    ) -> Result<Option<OperationView>, ApiError> {
        let Some(id) = store.idempotent_operation(user, key).await? else {
            return Ok(None);
        };
        match store.operation(&id).await? {
            Some(op) => Ok(Some(self.operation_view(store, op).await?)),
            None => Ok(None),
        }
    }

    /// Writes `sizes` new nodes of `cluster` (whose new record already lists their indices,
    /// the last `sizes.len()` of `nodes`) in one transaction, placed among the hosts with
    /// the cluster's image. `existing` counts the cluster's nodes per host, for spreading.
    /// Returns the host of each new node.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn place_and_write(
        &self,
        store: &EtcdStore,
        cluster: &VCluster,
        revision: Option<i64>,
        sizes: &[NodeSize],
        existing: &HashMap<String, u32>,
        quota: &Quota,
        operation: &Operation,
        idempotency_key: Option<&str>,
    ) -> Result<Vec<String>, ApiError> {
        let (system_image, image_guard) = self
            .image_to_start(store, &cluster.image, &cluster.user, revision.is_none())
            .await?;
        // Capacities, drains and images from the followed copy; allocations are read again
        // in the write's own snapshot.
        let PlacementSnapshot { hosts, drained, .. } = self.placement.snapshot(store).await?;
        let image_hosts = hosts_with_image(&hosts, &system_image)?;
        let no_allocations = BTreeMap::new();
        let first_new = cluster.nodes.len() - sizes.len();
        let write = NodeWrite {
            request: admission::Request {
                user: &cluster.user,
                quota: Some(quota),
                specs: sizes
                    .iter()
                    .zip(&cluster.nodes[first_new..])
                    .map(|(size, index)| node_spec(cluster, *index, size))
                    .collect(),
                hosts: admission::Hosts::Placed {
                    hosts: image_hosts
                        .iter()
                        .map(|h| host_load(h, &no_allocations, &drained, existing))
                        .collect(),
                    overcommit: self.config.overcommit,
                },
            },
            cluster: Some((cluster, revision)),
            operation: Some(operation),
            idempotency_key,
            image: image_guard,
            batch: false,
            record: None,
        };
        let written = store.write_nodes(&write, &self.address_plan()).await?;
        Ok(written.into_iter().map(|(host, _)| host).collect())
    }

    /// The system image under the vnodes of a cluster that starts from `image`, and for a
    /// user's image the revision of its record that the write must still find. A new
    /// cluster may use the user's own images and public ones; an existing cluster keeps
    /// growing from its image even if it was unshared since.
    pub(crate) async fn image_to_start(
        &self,
        store: &EtcdStore,
        image: &str,
        user: &str,
        new_cluster: bool,
    ) -> Result<(String, Option<(String, i64)>), ApiError> {
        let refuse = |message: String| ApiError::invalid("unusable_image", "image", message);
        match ImageRef::parse(image).map_err(|e| refuse(e.to_string()))? {
            ImageRef::System(name) => Ok((name.to_owned(), None)),
            ImageRef::User { owner, name } => {
                let Some((record, revision)) = store.image(owner, name).await? else {
                    return Err(refuse(format!("there is no image {image}")));
                };
                let reason = record.refuse_use(user);
                match reason {
                    // A private image stays usable for the nodes a cluster already has.
                    Some(reason) if new_cluster || !matches!(reason, Unusable::Private(_)) => {
                        Err(refuse(reason.to_string()))
                    }
                    _ => {
                        let base = record.current.map(|v| v.base).unwrap_or_default();
                        Ok((base, Some((store.keys().image(owner, name), revision))))
                    }
                }
            }
        }
    }

    pub async fn list_clusters(
        &self,
        caller: &Caller,
        user: Option<&str>,
    ) -> Result<Vec<ClusterView>, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.store().await?;
        let hosts_up = hosts_up(&store).await?;
        let mut views = Vec::new();
        for cluster in store.clusters_of(&owner).await? {
            views.push(self.cluster_view(&store, cluster, &hosts_up).await?);
        }
        Ok(views)
    }

    pub async fn show_cluster(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
    ) -> Result<ClusterView, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.store().await?;
        let cluster = self.find_cluster(&store, &owner, name).await?.0;
        let hosts_up = hosts_up(&store).await?;
        self.cluster_view(&store, cluster, &hosts_up).await
    }

    pub(crate) async fn find_cluster(
        &self,
        store: &EtcdStore,
        owner: &str,
        name: &str,
    ) -> Result<(VCluster, i64), ApiError> {
        // A malformed name cannot name anything: the same 404 as an absent cluster.
        if vcluster::validate_cluster_name(name).is_err() {
            return Err(ApiError::NotFound(format!("no cluster named {name:?}")));
        }
        store
            .cluster(owner, name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no cluster named {name}")))
    }

    pub(super) async fn cluster_view(
        &self,
        store: &EtcdStore,
        cluster: VCluster,
        hosts_up: &HashSet<String>,
    ) -> Result<ClusterView, ApiError> {
        let mut nodes = Vec::new();
        let ids = node_ids(&cluster);
        let found = store.vnodes_seen(&ids).await?;
        for ((index, id), found) in cluster.nodes.iter().zip(ids).zip(found) {
            let Some(VNodeSeen { host, spec, status }) = found else {
                continue;
            };
            let seen = NodeSeen {
                exists: true,
                phase: status.as_ref().map(|s| s.phase),
                reason: status.as_ref().and_then(|s| s.reason.clone()),
                host_up: hosts_up.contains(&host),
            };
            nodes.push(NodeView {
                index: *index,
                id: id.clone(),
                hostname: vnode::hostname(*index),
                state: vcluster::node_state(&seen, spec.state),
                address: spec.address,
                host,
                image: spec.image.clone(),
                cpu_millis: spec.cpu_millis,
                memory_bytes: spec.memory_bytes,
                disk_bytes: spec.disk_bytes,
                reason: seen.reason,
            });
        }
        let states: Vec<NodeState> = nodes.iter().map(|n| n.state).collect();
        Ok(ClusterView {
            state: vcluster::cluster_state(&states),
            name: cluster.name,
            user: cluster.user,
            image: cluster.image,
            node_size: cluster.node_size,
            created_at: cluster.created_at,
            nodes,
            idle_stop: cluster.idle_stop,
        })
    }

    /// Start or stop every node of a cluster.
    pub async fn set_cluster_state(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        running: bool,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        if running {
            caller.require_normal()?;
        }
        let store = self.store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, name).await?;
        let state = if running {
            DesiredState::Running
        } else {
            DesiredState::Stopped
        };
        let ids: Vec<String> = node_ids(&cluster);
        store
            .change_cluster(&owner, name, |c| {
                let mut c = c.clone();
                if running {
                    c.idle_stop = None;
                }
                let states = node_ids(&c).into_iter().map(|id| (id, state)).collect();
                Ok((Some(c), states))
            })
            .await?;
        let kind = if running {
            OperationKind::Start
        } else {
            OperationKind::Stop
        };
        let detail = vcluster::nodes_count(ids.len());
        self.record_operation(&store, caller.name(), kind, &owner, name, ids, &detail)
            .await
    }

    /// Records an operation `by` someone (a user's name, or `docklet` for the master's own
    /// controllers) on the nodes of one cluster, and logs it; `detail` ends the journal line.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_operation(
        &self,
        store: &EtcdStore,
        by: &str,
        kind: OperationKind,
        owner: &str,
        cluster: &str,
        nodes: Vec<String>,
        detail: &str,
    ) -> Result<OperationView, ApiError> {
        let operation = Operation {
            id: random_id(16),
            kind,
            user: owner.to_owned(),
            cluster: cluster.to_owned(),
            nodes,
            created_at: now_secs(),
        };
        store.put_operation(&operation).await?;
        log_operation(by, &operation, detail);
        self.operation_view(store, operation).await
    }

    pub async fn scale_out(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        caller.require_normal()?;
        let store = self.store().await?;
        let (mut cluster, revision) = self.find_cluster(&store, &owner, name).await?;
        let account = store
            .account(&owner)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no user {owner}")))?;
        let group = self.group_of(&store, &account).await?;
        let mut existing: HashMap<String, u32> = HashMap::new();
        for id in node_ids(&cluster) {
            if let Some(host) = store.vnode_host(&id).await? {
                *existing.entry(host).or_default() += 1;
            }
        }
        let index = cluster.next_index;
        cluster.nodes.push(index);
        cluster.next_index += 1;
        let operation = Operation {
            id: random_id(16),
            kind: OperationKind::ScaleOut,
            user: owner.clone(),
            cluster: name.to_owned(),
            nodes: vec![vcluster::node_id(&owner, name, index)],
            created_at: now_secs(),
        };
        let size = cluster.node_size;
        let hosts = self
            .place_and_write(
                &store,
                &cluster,
                Some(revision),
                &[size],
                &existing,
                &group.quota,
                &operation,
                None,
            )
            .await?;
        let detail = format!("node {index} on {}", hosts.join(", "));
        log_operation(caller.name(), &operation, &detail);
        self.operation_view(&store, operation).await
    }

    pub async fn scale_in(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.store().await?;
        self.find_cluster(&store, &owner, name).await?;
        let id = vcluster::node_id(&owner, name, index);
        store
            .change_cluster(&owner, name, |c| {
                if !c.nodes.contains(&index) {
                    return Err(StoreError::NotFound(format!(
                        "cluster {name} has no node {index}"
                    )));
                }
                if c.nodes.len() == 1 {
                    return Err(StoreError::Conflict(format!(
                        "node {index} is the last node of cluster {name}: delete the cluster instead"
                    )));
                }
                let mut c = c.clone();
                c.nodes.retain(|i| *i != index);
                Ok((Some(c), vec![(id.clone(), DesiredState::Deleted)]))
            })
            .await?;
        self.record_operation(
            &store,
            caller.name(),
            OperationKind::ScaleIn,
            &owner,
            name,
            vec![id],
            &format!("node {index} removed"),
        )
        .await
    }

    pub async fn delete_cluster(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        force: bool,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, name).await?;
        if !force {
            for id in node_ids(&cluster) {
                let phase = store.vnode_status(&id).await?.map(|s| s.phase);
                let stopped = matches!(
                    phase,
                    Some(vnode::Phase::Stopped) | Some(vnode::Phase::Failed)
                );
                if !stopped {
                    return Err(ApiError::Conflict(format!(
                        "cluster {name} is not stopped ({id} is {}): stop it first, or delete with force",
                        phase.map_or("pending", |p| p.as_str())
                    )));
                }
            }
        }
        store
            .change_cluster(&owner, name, |c| {
                Ok((
                    None,
                    node_ids(c)
                        .into_iter()
                        .map(|id| (id, DesiredState::Deleted))
                        .collect(),
                ))
            })
            .await?;
        let ids = node_ids(&cluster);
        let detail = vcluster::nodes_count(ids.len());
        self.record_operation(
            &store,
            caller.name(),
            OperationKind::Delete,
            &owner,
            name,
            ids,
            &detail,
        )
        .await
    }

    /// An operation's progress, waiting up to `wait` for it to end.
    pub async fn operation(
        &self,
        caller: &Caller,
        id: &str,
        wait: Duration,
    ) -> Result<OperationView, ApiError> {
        let store = self.store().await?;
        let missing = || ApiError::NotFound(format!("no operation {id}"));
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(missing());
        }
        let operation = store.operation(id).await?.ok_or_else(missing)?;
        if operation.user != caller.name() && !caller.admin {
            return Err(missing());
        }
        // Its progress changes with its nodes' statuses and hosts and with the hosts up.
        let keys = store.keys();
        let (statuses, placed, hosts) = (keys.vnode_statuses(), keys.vnode_hosts(), keys.hosts());
        let relevant = |key: &str| {
            key.starts_with(&hosts)
                || [&statuses, &placed].iter().any(|prefix| {
                    key.strip_prefix(prefix.as_str())
                        .is_some_and(|id| operation.nodes.iter().any(|n| n == id))
                })
        };
        let deadline = tokio::time::Instant::now() + wait;
        let prefixes = [statuses.as_str(), placed.as_str(), hosts.as_str()];
        let mut follow = Follow::start(&store, &prefixes, deadline).await;
        loop {
            let view = self.operation_view(&store, operation.clone()).await?;
            let done = view.progress.state != vcluster::OperationState::Running;
            if done || !follow.changed(relevant).await {
                return Ok(view);
            }
        }
    }

    pub(super) async fn operation_view(
        &self,
        store: &EtcdStore,
        operation: Operation,
    ) -> Result<OperationView, ApiError> {
        let hosts_up = hosts_up(store).await?;
        let seen: Vec<NodeSeen> = store
            .vnodes_seen(&operation.nodes)
            .await?
            .into_iter()
            .map(|found| match found {
                Some(VNodeSeen { host, status, .. }) => NodeSeen {
                    exists: true,
                    phase: status.as_ref().map(|s| s.phase),
                    reason: status.and_then(|s| s.reason),
                    host_up: hosts_up.contains(&host),
                },
                None => NodeSeen {
                    exists: false,
                    phase: None,
                    reason: None,
                    host_up: true,
                },
            })
            .collect();
        let progress = vcluster::progress(&operation, &seen, now_secs());
        Ok(OperationView {
            operation,
            progress,
        })
    }
}

pub(crate) fn node_ids(cluster: &VCluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|i| vcluster::node_id(&cluster.user, &cluster.name, *i))
        .collect()
}

pub(super) fn node_spec(cluster: &VCluster, index: u32, size: &NodeSize) -> VNodeSpec {
    VNodeSpec {
        id: vcluster::node_id(&cluster.user, &cluster.name, index),
        user: cluster.user.clone(),
        cluster: cluster.name.clone(),
        index,
        image: cluster.image.clone(),
        cpu_millis: size.cpu_millis,
        memory_bytes: size.memory_bytes,
        disk_bytes: size.disk_bytes,
        tasks: vcluster::NODE_TASKS,
        state: DesiredState::Running,
        address: None,
        handoff: None,
        task: None,
    }
}

/// What the scheduler sees of one host.
pub fn host_load(
    host: &HostRecord,
    allocations: &BTreeMap<String, Usage>,
    drained: &HashSet<String>,
    existing: &HashMap<String, u32>,
) -> HostLoad {
    let allocated = allocations.get(&host.name).copied().unwrap_or_default();
    HostLoad {
        name: host.name.clone(),
        cpu_millis: u64::from(host.capacity.cpus) * 1000,
        memory_bytes: host.capacity.memory_bytes,
        // What is free now plus what the vnodes here were promised: sparse disks use
        // little until written, and counting them twice would refuse too early.
        disk_bytes: host.capacity.disk_free_bytes + allocated.disk_bytes,
        allocated,
        draining: drained.contains(&host.name),
        cluster_nodes: existing.get(&host.name).copied().unwrap_or(0),
    }
}

pub(super) async fn hosts_up(store: &EtcdStore) -> Result<HashSet<String>, ApiError> {
    Ok(store.host_names().await?.into_iter().collect())
}

/// The journal line of an operation, with its fields: `DOCKLET_USER` (the owner),
/// `DOCKLET_CLUSTER`, `DOCKLET_OPERATION`, `DOCKLET_ACTION` and `DOCKLET_BY`.
pub(crate) fn log_operation(by: &str, operation: &Operation, detail: &str) {
    info!(
        user = %operation.user,
        cluster = %operation.cluster,
        operation = %operation.id,
        action = operation.kind.action(),
        by,
        "{}",
        vcluster::operation_line(by, operation.kind, &operation.user, &operation.cluster, detail)
    );
}

/// The registered hosts that have system image `image`, or why none will do.
fn hosts_with_image<'a>(
    hosts: &'a [HostRecord],
    image: &str,
) -> Result<Vec<&'a HostRecord>, ApiError> {
    let with: Vec<&HostRecord> = hosts
        .iter()
        .filter(|h| h.images.iter().any(|i| i == image))
        .collect();
    if !with.is_empty() {
        return Ok(with);
    }
    let mut known: Vec<&str> = hosts
        .iter()
        .flat_map(|h| &h.images)
        .map(String::as_str)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    known.sort_unstable();
    Err(ApiError::invalid(
        "unknown_image",
        "image",
        format!("no host has image {image}; images: {}", known.join(", ")),
    ))
}

/// An `Idempotency-Key` is 1 to 128 characters of A-Z, a-z, 0-9, '-', '_' and '.'.
fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    let fine = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "Idempotency-Key: 1 to 128 characters of A-Z, a-z, 0-9, '-', '_' and '.'".into(),
        ))
    }
}
