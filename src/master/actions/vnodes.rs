//! Administrators' vnode primitives (`docklet-admin vnode ...` over D-Bus): vnodes written by
//! hand on a chosen host, their desired state, users' networks and vnode quotas, and the list
//! of every vnode. The vcluster API builds on the same store calls.

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{ApiError, Caller};
use crate::master::Master;
use crate::model::host::HostRecord;
use crate::model::vnode::{self, DesiredState, VNodeSpec, VNodeStatus};

/// One vnode as `ListVNodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VNodeEntry {
    pub host: String,
    pub spec: VNodeSpec,
    pub status: Option<VNodeStatus>,
}

/// A user's network as `UserNetwork` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserNetworkView {
    pub user: String,
    pub vni: u32,
    pub blocks: Vec<ipnet::Ipv4Net>,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub capacity: u32,
    /// Vnodes the user may have at once.
    pub quota: u32,
    /// Address → vnode id.
    pub addresses: std::collections::BTreeMap<String, String>,
}

fn invalid(message: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(message.to_string())
}

impl Master {
    /// Hosts whose workers hold their registration lease.
    pub async fn registered_hosts(&self, caller: &Caller) -> Result<Vec<HostRecord>, ApiError> {
        caller.require_admin()?;
        Ok(self.store().await?.list_hosts().await?)
    }

    /// Writes a new vnode spec for `host`: its worker creates the vnode.
    pub async fn create_vnode(
        &self,
        caller: &Caller,
        host: &str,
        spec: &VNodeSpec,
    ) -> Result<(), ApiError> {
        caller.require_admin()?;
        vnode::validate_spec(spec).map_err(invalid)?;
        if spec.state == DesiredState::Deleted {
            return Err(invalid("a new vnode's state is running or stopped"));
        }
        if spec.address.is_some() {
            return Err(invalid(
                "a vnode's address is assigned by Docklet; leave `address` out",
            ));
        }
        let store = self.store().await?;
        if !store.list_hosts().await?.iter().any(|h| h.name == host) {
            return Err(ApiError::NotFound(format!(
                "no host {host} is up (see `docklet-admin hosts`)"
            )));
        }
        let created = store.create_vnode(host, spec, &self.address_plan()).await?;
        info!(
            vnode = %spec.id,
            user = %spec.user,
            cluster = %spec.cluster,
            host,
            by = caller.name(),
            action = "vnode.create",
            "{} created vnode {} on {host} by hand (address {})",
            caller.name(),
            spec.id,
            created.address.map_or("none".to_owned(), |a| a.to_string())
        );
        Ok(())
    }

    /// running, stopped or deleted (exported is a drain's).
    pub async fn set_vnode_state(
        &self,
        caller: &Caller,
        id: &str,
        state: DesiredState,
    ) -> Result<(), ApiError> {
        caller.require_admin()?;
        if state == DesiredState::Exported {
            return Err(invalid(
                "exported is set by a drain (`docklet-admin drain HOST`), not by hand",
            ));
        }
        self.store().await?.set_vnode_state(id, state).await?;
        info!(
            vnode = id,
            by = caller.name(),
            action = "vnode.set-state",
            "{} set vnode {id} to {}",
            caller.name(),
            format!("{state:?}").to_lowercase()
        );
        Ok(())
    }

    pub async fn user_network(
        &self,
        caller: &Caller,
        user: &str,
    ) -> Result<UserNetworkView, ApiError> {
        caller.require_admin()?;
        vnode::validate_user_name(user).map_err(invalid)?;
        let (net, quota, addresses) = self.store().await?.user_network(user).await?;
        let net = net.ok_or_else(|| {
            ApiError::NotFound(format!(
                "user {user} has no network yet (no vnode was created)"
            ))
        })?;
        Ok(UserNetworkView {
            user: user.to_owned(),
            vni: net.vni,
            gateway: net.gateway(),
            capacity: net.capacity(),
            blocks: net.blocks,
            quota,
            addresses,
        })
    }

    pub async fn set_vnode_quota(
        &self,
        caller: &Caller,
        user: &str,
        vnodes: u32,
    ) -> Result<(), ApiError> {
        caller.require_admin()?;
        vnode::validate_user_name(user).map_err(invalid)?;
        self.store().await?.set_vnode_quota(user, vnodes).await?;
        info!(
            user,
            by = caller.name(),
            action = "user.vnode-quota",
            "{} set the vnode quota of {user} to {vnodes}",
            caller.name()
        );
        Ok(())
    }

    /// Every vnode: host, spec and last status.
    pub async fn list_vnodes(&self, caller: &Caller) -> Result<Vec<VNodeEntry>, ApiError> {
        caller.require_admin()?;
        let store = self.store().await?;
        let specs = store.all_vnode_specs().await?;
        let mut statuses = store.all_vnode_statuses().await?;
        Ok(specs
            .into_iter()
            .map(|(host, spec)| {
                let status = statuses
                    .iter()
                    .position(|s| s.id == spec.id)
                    .map(|i| statuses.swap_remove(i));
                VNodeEntry { host, spec, status }
            })
            .collect())
    }
}
