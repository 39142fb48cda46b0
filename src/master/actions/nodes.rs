//! One node of a cluster: running a command in it, reaching it through its worker's agent,
//! and recreating it elsewhere when its host is lost.

use super::*;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::master::Master;
use crate::master::agent_client::NodeEndpoint;
use crate::model::placement::{self, HostLoad};
use crate::model::quota::NodeSize;
use crate::model::vcluster::{self, OperationKind};
use crate::model::vnode::{DesiredState, VNodeSpec};
use crate::store::clusters::PlacementSnapshot;
use crate::store::{EtcdStore, StoreError};

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub stdin: String,
    /// The user inside the vnode (default root).
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Master {
    /// Recreates a lost node (its host's lease expired) on another host, with its index,
    /// address and the user's shared data; what it had on the lost host's disk stays there.
    pub async fn recover_node(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        caller.require_normal()?;
        let store = self.store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, name).await?;
        let missing = || ApiError::NotFound(format!("cluster {name} has no node {index}"));
        if !cluster.nodes.contains(&index) {
            return Err(missing());
        }
        let id = vcluster::node_id(&owner, name, index);
        let (lost_host, spec, _) = store.vnode_spec(&id).await?.ok_or_else(missing)?;
        let hosts = store.list_hosts().await?;
        if hosts.iter().any(|h| h.name == lost_host) {
            return Err(ApiError::Conflict(format!(
                "node {index} is not lost: its host {lost_host} is up"
            )));
        }
        let to = self
            .relocate(&store, &node_ids(&cluster), &spec, |spec| {
                // Its disk stayed with the lost host: it starts afresh, address kept.
                spec.state = DesiredState::Running;
                spec.handoff = None;
                Ok(())
            })
            .await?;
        self.record_operation(
            &store,
            caller.name(),
            OperationKind::Recover,
            &owner,
            name,
            vec![id],
            &format!("node {index} from lost host {lost_host} to {to}"),
        )
        .await
    }

    /// Moves a node to the host placement picks among those up, not draining, with its
    /// image and room for it (away from its `siblings`, as at create); `arrive` says
    /// what its spec becomes there. Returns the new host.
    pub(crate) async fn relocate(
        &self,
        store: &EtcdStore,
        siblings: &[String],
        spec: &VNodeSpec,
        arrive: impl Fn(&mut VNodeSpec) -> Result<(), StoreError>,
    ) -> Result<String, ApiError> {
        let target = self.choose_host(store, siblings, spec).await?;
        let to = target.name.clone();
        let room = Some((&target, self.config.overcommit));
        store.move_vnode(&spec.id, &to, room, arrive).await?;
        Ok(to)
    }

    /// Where [`Self::relocate`] would put a node now, without moving it.
    pub(crate) async fn choose_host(
        &self,
        store: &EtcdStore,
        siblings: &[String],
        spec: &VNodeSpec,
    ) -> Result<HostLoad, ApiError> {
        let PlacementSnapshot {
            hosts,
            drained,
            allocations,
        } = self.placement.snapshot(store).await?;
        let mut existing: HashMap<String, u32> = HashMap::new();
        for other in siblings {
            if *other != spec.id
                && let Some(host) = store.vnode_host(other).await?
            {
                *existing.entry(host).or_default() += 1;
            }
        }
        let (system_image, _) = self
            .image_to_start(store, &spec.image, &spec.user, false)
            .await?;
        let loads: Vec<HostLoad> = hosts
            .iter()
            .filter(|h| h.images.contains(&system_image))
            .map(|h| host_load(h, &allocations, &drained, &existing))
            .collect();
        let size = NodeSize {
            cpu_millis: spec.cpu_millis,
            memory_bytes: spec.memory_bytes,
            disk_bytes: spec.disk_bytes,
        };
        let chosen = placement::place(&loads, &[size], self.config.overcommit)
            .map_err(|e| ApiError::NoCapacity(e.to_string()))?;
        Ok(loads[chosen[0]].clone())
    }

    /// Runs a command in a node through its worker's agent.
    pub async fn exec(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
        request: &ExecRequest,
    ) -> Result<ExecResult, ApiError> {
        let owner = caller.owner(user)?;
        caller.require_normal()?;
        if request.argv.is_empty() || request.argv[0].is_empty() {
            return Err(ApiError::invalid(
                "invalid_command",
                "argv",
                "argv lists the command and its arguments: at least the command",
            ));
        }
        let endpoint = self.node_endpoint(&owner, name, index).await?;
        let body = serde_json::json!({
            "argv": request.argv,
            "stdin": request.stdin,
            "user": request.user.clone().unwrap_or_else(|| "root".into()),
        });
        let path = format!("/agent/v1/vnodes/{}/exec", endpoint.vnode_id);
        let host = &endpoint.host;
        let (status, text) =
            crate::master::agent_client::post_json(host, &endpoint.agent, &path, &body)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        match status {
            200 => serde_json::from_str(&text)
                .map_err(|e| ApiError::Internal(format!("agent answer: {e}"))),
            409 | 404 => Err(ApiError::Conflict(format!("node {index}: {}", text.trim()))),
            400 | 422 => Err(ApiError::BadRequest(text.trim().to_owned())),
            other => Err(ApiError::Internal(format!(
                "agent on {host} answered {other}: {}",
                text.trim()
            ))),
        }
    }

    /// The endpoint of one of the caller's own nodes, for its terminals and workspace: those
    /// are the owner's alone, so `user` (an administrator's `?user=`) naming anyone else is
    /// refused (403) whatever the caller's role; a cluster or node of the caller's that does
    /// not exist is 404.
    pub async fn own_node_endpoint(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
    ) -> Result<NodeEndpoint, ApiError> {
        if user.is_some_and(|user| user != caller.name()) {
            return Err(ApiError::Forbidden(
                "only the owner of a cluster may open its terminals and workspaces".into(),
            ));
        }
        caller.require_normal()?;
        self.node_endpoint(caller.name(), name, index).await
    }

    /// Where node `index` of `owner`'s cluster is reached: its host's agent and token. 404
    /// for a cluster or node that does not exist, 409 when its host is down. It authorizes
    /// nothing: the caller decided that `owner`'s node may be reached.
    pub async fn node_endpoint(
        &self,
        owner: &str,
        cluster: &str,
        index: u32,
    ) -> Result<NodeEndpoint, ApiError> {
        let store = self.store().await?;
        let (record, _) = self.find_cluster(&store, owner, cluster).await?;
        let missing = || ApiError::NotFound(format!("cluster {cluster} has no node {index}"));
        if !record.nodes.contains(&index) {
            return Err(missing());
        }
        let id = vcluster::node_id(owner, cluster, index);
        let (host, _, _) = store.vnode_spec(&id).await?.ok_or_else(missing)?;
        let host_record = store
            .list_hosts()
            .await?
            .into_iter()
            .find(|h| h.name == host)
            .ok_or_else(|| ApiError::Conflict(format!("node {index}'s host {host} is down")))?;
        let address = host_record
            .addresses
            .first()
            .and_then(|a| a.split('/').next())
            .ok_or_else(|| ApiError::Internal(format!("host {host} has no address")))?
            .to_owned();
        let port = self.config.agent_port;
        Ok(NodeEndpoint {
            agent: match address.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
                Err(_) => format!("{address}:{port}"),
            },
            host,
            vnode_id: id,
        })
    }
}
