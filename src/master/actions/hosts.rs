//! The hosts as administrators see them, and draining one.

use super::*;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::master::Master;
use crate::model::quota::Usage;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostView {
    pub name: String,
    pub addresses: Vec<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_free_bytes: u64,
    pub allocated: Usage,
    pub draining: bool,
    /// What the drain of this host is doing (moving its vnodes elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_note: Option<String>,
    pub images: Vec<String>,
    pub version: String,
}

impl Master {
    pub async fn hosts(&self, caller: &Caller) -> Result<Vec<HostView>, ApiError> {
        caller.require_admin()?;
        let store = self.store().await?;
        let allocations = store.allocations().await?;
        let mut notes = store.drain_notes().await?;
        Ok(store
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| HostView {
                allocated: allocations.get(&h.name).copied().unwrap_or_default(),
                draining: notes.contains_key(&h.name),
                drain_note: notes.remove(&h.name),
                name: h.name,
                addresses: h.addresses,
                cpus: h.capacity.cpus,
                memory_bytes: h.capacity.memory_bytes,
                disk_free_bytes: h.capacity.disk_free_bytes,
                images: h.images,
                version: h.version,
            })
            .collect())
    }

    /// Marks a host as taking no new vnodes (or takes the mark away).
    pub async fn drain(&self, caller: &Caller, host: &str, drain: bool) -> Result<(), ApiError> {
        caller.require_admin()?;
        if crate::model::host::validate_host_name(host).is_err() {
            return Err(ApiError::NotFound(format!("no host {host:?}")));
        }
        let store = self.store().await?;
        let known = store.list_hosts().await?.iter().any(|h| h.name == host)
            || store.allocations().await?.contains_key(host);
        if !known {
            return Err(ApiError::NotFound(format!("no host {host}")));
        }
        store.set_drain(host, drain).await?;
        let done = if drain {
            "started draining"
        } else {
            "stopped draining"
        };
        info!(
            host,
            drain,
            by = caller.name(),
            action = if drain { "host.drain" } else { "host.undrain" },
            "{} {done} host {host}",
            caller.name()
        );
        Ok(())
    }
}
