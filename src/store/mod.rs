//! The etcd schema and every read and write of it: [`EtcdStore`]. Unit tests run it over an
//! etcd inside the test process (`memory_etcd`), with etcd's own transaction, watch and
//! lease semantics.
//!
//! Keys, all under `/<cluster_name>/`:
//! - `cluster`: [`ClusterInfo`](crate::model::cluster::ClusterInfo), written once by `init`;
//! - `hosts/<name>`: [`HostRecord`](crate::model::host::HostRecord), bound to the worker's lease;
//! - `users/<name>`: [`Account`](crate::model::account::Account);
//! - `vnodes/<host>/<id>`: [`VNodeSpec`](crate::model::vnode::VNodeSpec), the desired state
//!   the master writes and the worker of `<host>` watches;
//! - `vnode-hosts/<id>`: the host a vnode id lives on (keeps ids unique in the cluster);
//! - `vnode-status/<id>`: [`VNodeStatus`](crate::model::vnode::VNodeStatus), written by the worker;
//! - `uid-ranges/<user>` and `uid-slots/<slot>`: the user's uid range for its vnodes, both
//!   written in one transaction so no two users share a range;
//! - `network/users/<user>` ([`UserNet`](crate::model::network::UserNet)), `network/blocks/<cidr>`
//!   (owner), `network/addrs/<user>/<address>` (vnode id), `network/vteps/<host>` (the host's
//!   VXLAN endpoint), `network/members/<user>` (the account's group, for the egress
//!   allowances workers apply) and `quotas/<user>` (a user's own vnode quota, over the group's): see
//!   [`network`];
//! - `groups/<name>` ([`Group`](crate::model::quota::Group)), `settings/default-group`,
//!   `tokens/<sha256>` ([`TokenRecord`](crate::model::account::TokenRecord)): see [`accounts`];
//! - `clusters/<user>/<name>` ([`VCluster`](crate::model::vcluster::VCluster)), `usage/<user>`
//!   and `allocations/<host>` ([`Usage`](crate::model::quota::Usage): what a user's vnodes
//!   and a host's vnodes hold, changed in the transactions that create and forget vnodes),
//!   `operations/<id>` and `idempotency/<user>/<key>` (leased), `drain/<host>` (the drain's
//!   progress note): see [`clusters`];
//! - `ports/<public_port>` ([`PortMapping`](crate::model::ports::PortMapping)): a vnode port
//!   published on the masters' public address, counted in the owner's `usage/<user>`: see
//!   [`ports`];
//! - `images/<owner>/<name>` ([`ImageRecord`](crate::model::image::ImageRecord)): the image
//!   catalog, counted in the owner's `usage/<user>`: see [`images`];
//! - `job-seq`, `jobs/<id>`, `jobs-done/<id>`, `job-tasks/<id>/<task>/<index>`,
//!   `batch/fair-share` and `batch-usage/<user>`: batch jobs, see [`jobs`];
//! - `dir-claims/<user>/<path>` (leased): which host makes a new directory of the user's on
//!   the shared filesystem, see [`claims`];
//! - `leader`: the name of the master that runs the controllers, bound to its lease: see
//!   [`leader`].

pub mod accounts;
pub mod auth;
pub mod claims;
pub mod clusters;
pub mod etcd;
pub mod identities;
pub mod images;
pub mod jobs;
pub mod leader;
#[cfg(test)]
pub mod memory_etcd;
pub mod network;
pub mod placement_view;
pub mod ports;
pub mod system_images;
pub mod vnodes;

pub use etcd::EtcdStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd is unreachable: {0}")]
    Unavailable(String),
    #[error("etcd refused our credentials: {0}")]
    Unauthenticated(String),
    #[error("the cluster is already initialized (use --force to wipe it and start over)")]
    AlreadyInitialized,
    #[error("etcd key {key} holds unreadable data: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("etcd request failed: {0}")]
    Failed(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    QuotaExceeded(String),
    /// No host can take what was asked.
    #[error("{0}")]
    NoCapacity(String),
    /// A create's idempotency key names an earlier operation of the user.
    #[error("idempotency key already used by operation {operation}")]
    IdempotencyKeyUsed { operation: String },
}

/// Key names, in one place.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` ends with a slash, e.g. `/docklet/`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn cluster(&self) -> String {
        format!("{}cluster", self.prefix)
    }
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }
    pub fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.prefix)
    }
    pub fn user(&self, name: &str) -> String {
        format!("{}users/{name}", self.prefix)
    }
    /// All vnode specs of one host (with the trailing slash).
    pub fn host_vnodes(&self, host: &str) -> String {
        format!("{}vnodes/{host}/", self.prefix)
    }
    pub fn vnodes(&self) -> String {
        format!("{}vnodes/", self.prefix)
    }
    pub fn vnode(&self, host: &str, id: &str) -> String {
        format!("{}vnodes/{host}/{id}", self.prefix)
    }
    /// Where each vnode is (`vnode-hosts/<id>` → host).
    pub fn vnode_hosts(&self) -> String {
        format!("{}vnode-hosts/", self.prefix)
    }
    pub fn vnode_host(&self, id: &str) -> String {
        format!("{}vnode-hosts/{id}", self.prefix)
    }
    pub fn vnode_statuses(&self) -> String {
        format!("{}vnode-status/", self.prefix)
    }
    pub fn vnode_status(&self, id: &str) -> String {
        format!("{}vnode-status/{id}", self.prefix)
    }
    pub fn uid_range(&self, user: &str) -> String {
        format!("{}uid-ranges/{user}", self.prefix)
    }
    pub fn uid_slots(&self) -> String {
        format!("{}uid-slots/", self.prefix)
    }
    pub fn uid_slot(&self, slot: u32) -> String {
        format!("{}uid-slots/{slot}", self.prefix)
    }
    pub fn network_user(&self, user: &str) -> String {
        format!("{}network/users/{user}", self.prefix)
    }
    pub fn network_users(&self) -> String {
        format!("{}network/users/", self.prefix)
    }
    pub fn network_blocks(&self) -> String {
        format!("{}network/blocks/", self.prefix)
    }
    /// Address claims of one user (with the trailing slash).
    pub fn network_addrs(&self, user: &str) -> String {
        format!("{}network/addrs/{user}/", self.prefix)
    }
    pub fn network_member(&self, user: &str) -> String {
        format!("{}network/members/{user}", self.prefix)
    }
    pub fn network_members(&self) -> String {
        format!("{}network/members/", self.prefix)
    }
    pub fn network_vteps(&self) -> String {
        format!("{}network/vteps/", self.prefix)
    }
    pub fn quota_key(&self, user: &str) -> String {
        format!("{}quotas/{user}", self.prefix)
    }
    pub fn users(&self) -> String {
        format!("{}users/", self.prefix)
    }
    pub fn groups(&self) -> String {
        format!("{}groups/", self.prefix)
    }
    pub fn group(&self, name: &str) -> String {
        format!("{}groups/{name}", self.prefix)
    }
    pub fn default_group(&self) -> String {
        format!("{}settings/default-group", self.prefix)
    }
    pub fn tokens(&self) -> String {
        format!("{}tokens/", self.prefix)
    }
    pub fn token(&self, digest: &str) -> String {
        format!("{}tokens/{digest}", self.prefix)
    }
    pub fn workspace_grant(&self, digest: &str) -> String {
        format!("{}workspace_grants/{digest}", self.prefix)
    }
    pub fn usage(&self, user: &str) -> String {
        format!("{}usage/{user}", self.prefix)
    }
    pub fn allocations(&self) -> String {
        format!("{}allocations/", self.prefix)
    }
    pub fn allocation(&self, host: &str) -> String {
        format!("{}allocations/{host}", self.prefix)
    }
    /// Clusters of one user (with the trailing slash).
    pub fn user_clusters(&self, user: &str) -> String {
        format!("{}clusters/{user}/", self.prefix)
    }
    pub fn clusters(&self) -> String {
        format!("{}clusters/", self.prefix)
    }
    pub fn cluster_record(&self, user: &str, name: &str) -> String {
        format!("{}clusters/{user}/{name}", self.prefix)
    }
    pub fn operation(&self, id: &str) -> String {
        format!("{}operations/{id}", self.prefix)
    }
    pub fn idempotency(&self, user: &str, key: &str) -> String {
        format!("{}idempotency/{user}/{key}", self.prefix)
    }
    pub fn drains(&self) -> String {
        format!("{}drain/", self.prefix)
    }
    pub fn drain(&self, host: &str) -> String {
        format!("{}drain/{host}", self.prefix)
    }
    pub fn ports(&self) -> String {
        format!("{}ports/", self.prefix)
    }
    pub fn port(&self, public_port: u16) -> String {
        format!("{}ports/{public_port}", self.prefix)
    }
    pub fn images(&self) -> String {
        format!("{}images/", self.prefix)
    }
    pub fn image(&self, owner: &str, name: &str) -> String {
        format!("{}images/{owner}/{name}", self.prefix)
    }
    pub fn system_images(&self) -> String {
        format!("{}system-images/", self.prefix)
    }
    pub fn system_image(&self, name: &str) -> String {
        format!("{}system-images/{name}", self.prefix)
    }
    pub fn system_image_builds(&self, name: &str) -> String {
        format!("{}system-image-builds/{name}/", self.prefix)
    }
    pub fn system_image_build(&self, name: &str, host: &str) -> String {
        format!("{}system-image-builds/{name}/{host}", self.prefix)
    }
    pub fn identities(&self) -> String {
        format!("{}identities/", self.prefix)
    }
    pub fn identity(&self, host: &str) -> String {
        format!("{}identities/{host}", self.prefix)
    }
    pub fn join_ticket(&self, host: &str) -> String {
        format!("{}join-tickets/{host}", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }
    pub fn job_seq(&self) -> String {
        format!("{}job-seq", self.prefix)
    }
    pub fn jobs(&self) -> String {
        format!("{}jobs/", self.prefix)
    }
    pub fn job(&self, id: u64) -> String {
        format!("{}jobs/{id:010}", self.prefix)
    }
    pub fn jobs_done(&self) -> String {
        format!("{}jobs-done/", self.prefix)
    }
    pub fn job_done(&self, id: u64) -> String {
        format!("{}jobs-done/{id:010}", self.prefix)
    }
    pub fn job_instances(&self, id: u64) -> String {
        format!("{}job-tasks/{id:010}/", self.prefix)
    }
    pub fn job_instance(&self, id: u64, task: &str, index: u32) -> String {
        format!("{}job-tasks/{id:010}/{task}/{index:05}", self.prefix)
    }
    pub fn fair_share(&self) -> String {
        format!("{}batch/fair-share", self.prefix)
    }
    pub fn queue_order(&self) -> String {
        format!("{}batch/queue", self.prefix)
    }
    pub fn dir_claim(&self, user: &str, path: &str) -> String {
        format!("{}dir-claims/{user}/{path}", self.prefix)
    }
    pub fn batch_usages(&self) -> String {
        format!("{}batch-usage/", self.prefix)
    }
    pub fn batch_usage(&self, user: &str) -> String {
        format!("{}batch-usage/{user}", self.prefix)
    }
    /// Where a vnode's holdings count: its user's batch usage for a batch task's node, its
    /// user's usage otherwise.
    pub fn usage_of(&self, user: &str, batch: bool) -> String {
        if batch {
            self.batch_usage(user)
        } else {
            self.usage(user)
        }
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize to JSON")
}
