//! Port mappings as typed actions: list, map and unmap a vnode's TCP port on the masters'
//! public address. Like every action they take the authenticated [`Caller`] and authorize
//! here: users see and touch only their own mappings, administrators anyone's through
//! `?user=`. The forwarding itself is [`super::forwarder`]'s.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ApiError, Caller};
use crate::master::{Master, now_secs};
use crate::model::ports::{self, PortMapping};
use crate::model::vnode::Phase;
use crate::store::ports::NewMapping;

/// `POST /clusters/{name}/nodes/{index}/ports`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapPortRequest {
    /// The TCP port inside the node.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u64,
    /// A public port of the configured range; absent: any free one.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub public_port: Option<u64>,
}

/// A mapping as users see it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PortView {
    #[serde(flatten)]
    pub mapping: PortMapping,
    /// The vnode's id.
    pub vnode: String,
    /// Where to connect: `<public host>:<public_port>`.
    pub address: String,
    /// Whether the masters forward the port now (they do while the node runs).
    pub forwarding: bool,
}

impl Master {
    fn port_view(&self, mapping: PortMapping, phase: Option<Phase>, host: &str) -> PortView {
        PortView {
            vnode: mapping.vnode_id(),
            address: ports::public_address(host, mapping.public_port),
            forwarding: phase == Some(Phase::Running)
                && self.config.port_range.contains(mapping.public_port),
            mapping,
        }
    }

    /// The host users reach public ports at (see [`ports::public_host`]).
    fn public_host(&self, reached: Option<IpAddr>) -> String {
        let reached = self.config.ports_address.or(reached);
        ports::public_host(self.config.ports_host.as_deref(), reached, &self.host)
    }

    /// The caller's mappings (administrators: `user`'s), by public port.
    pub async fn list_ports(
        &self,
        caller: &Caller,
        user: Option<&str>,
        reached: Option<IpAddr>,
    ) -> Result<Vec<PortView>, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.store().await?;
        let mappings = store.port_mappings_of(&owner).await?;
        self.port_views(&store, mappings, reached).await
    }

    /// Every user's mappings (administrators), by public port.
    pub async fn all_ports(
        &self,
        caller: &Caller,
        reached: Option<IpAddr>,
    ) -> Result<Vec<PortView>, ApiError> {
        caller.require_admin()?;
        let store = self.store().await?;
        self.port_views(&store, store.port_mappings().await?, reached)
            .await
    }

    async fn port_views(
        &self,
        store: &crate::store::EtcdStore,
        mappings: std::collections::BTreeMap<u16, PortMapping>,
        reached: Option<IpAddr>,
    ) -> Result<Vec<PortView>, ApiError> {
        let host = self.public_host(reached);
        let mut views = Vec::new();
        for mapping in mappings.into_values() {
            let phase = store
                .vnode_status(&mapping.vnode_id())
                .await?
                .map(|s| s.phase);
            views.push(self.port_view(mapping, phase, &host));
        }
        Ok(views)
    }

    /// Maps a TCP port of node `index` of cluster `name` to a public port, within the
    /// owner's group's quota.
    pub async fn map_port(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
        request: &MapPortRequest,
        reached: Option<IpAddr>,
    ) -> Result<PortView, ApiError> {
        let owner = caller.owner(user)?;
        caller.require_normal()?;
        let port = ports::validate_vnode_port(request.port)?;
        let range = self.config.port_range;
        let public_port = request
            .public_port
            .map(|p| ports::validate_public_port(p, &range))
            .transpose()?;
        let store = self.store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, name).await?;
        if !cluster.nodes.contains(&index) {
            return Err(ApiError::NotFound(format!(
                "cluster {name} has no node {index}"
            )));
        }
        let account = store
            .account(&owner)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no user {owner}")))?;
        let group = self.group_of(&store, &account).await?;
        let mapping = store
            .create_port_mapping(&NewMapping {
                user: &owner,
                cluster: name,
                node: index,
                port,
                public_port,
                range: &range,
                quota: &group.quota,
                now: now_secs(),
            })
            .await?;
        tracing::info!(
            user = owner,
            cluster = name,
            vnode = %mapping.vnode_id(),
            public_port = mapping.public_port,
            by = caller.name(),
            action = "port.map",
            "{} mapped port {port} of node {index} of cluster {name} to public port {}",
            caller.name(),
            mapping.public_port
        );
        let phase = store
            .vnode_status(&mapping.vnode_id())
            .await?
            .map(|s| s.phase);
        Ok(self.port_view(mapping, phase, &self.public_host(reached)))
    }

    /// Deletes the caller's (administrators: `user`'s) mapping on `public_port`; every
    /// master closes the port.
    pub async fn unmap_port(
        &self,
        caller: &Caller,
        user: Option<&str>,
        public_port: u16,
    ) -> Result<(), ApiError> {
        let owner = caller.owner(user)?;
        let store = self.store().await?;
        store.delete_port_mapping(&owner, public_port).await?;
        tracing::info!(
            user = owner,
            public_port,
            by = caller.name(),
            action = "port.unmap",
            "{} unmapped public port {public_port} of {owner}",
            caller.name()
        );
        Ok(())
    }
}
