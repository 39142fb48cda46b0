//! The local administration interface on the D-Bus system bus, shared by the daemons (which
//! serve it) and `docklet-admin` (which calls it): names, wire types, errors, client proxies
//! and the caller check every method runs.
//!
//! The bus policy (`dbus/org.docklet.conf`) already refuses callers that are neither root nor
//! in group `docklet-admin`; the daemons check again, so a loosened policy opens nothing.
//!
//! Methods return typed D-Bus values (structs, arrays of them, `a{sv}`), never JSON in a
//! string: `busctl` prints them readably. The one JSON document is the vnode spec
//! `CreateVNode` takes. `dbus/*.xml` is what zbus introspects from the interfaces, checked by
//! a unit test (`master::bus::introspection`).

pub mod dict;
pub mod images;
pub mod patches;
pub mod records;
#[cfg(test)]
pub(crate) mod xml_check;

use serde::{Deserialize, Serialize};
use zbus::Type;
use zbus::message::Header;

use crate::model::host::{Capacity, HostRecord};

pub use dict::VariantDict;
pub use images::{ImageRow, SystemImageRow};
pub use patches::{GroupPatchDict, QuotaPatchDict, UserPatchDict};
pub use records::{
    ClusterRow, GroupRow, HostLoadRow, JobRow, NetworkRow, PortRow, UserRow, VNodeEntryRow,
};

pub const MASTER_NAME: &str = "org.docklet.Master1";
pub const MASTER_PATH: &str = "/org/docklet/Master1";
pub const WORKER_NAME: &str = "org.docklet.Worker1";
pub const WORKER_PATH: &str = "/org/docklet/Worker1";
/// Members of this group may administer Docklet locally.
pub const ADMIN_GROUP: &str = "docklet-admin";

/// Errors as callers see them: the D-Bus error name is `org.docklet.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.docklet.Error")]
pub enum BusError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The caller is neither root nor in group `docklet-admin`.
    AccessDenied(String),
    /// `init` has not run yet.
    NotInitialized(String),
    /// `init` without `--force` on a cluster that exists.
    AlreadyInitialized(String),
    /// etcd cannot be reached (or refuses our credentials) right now.
    EtcdUnavailable(String),
    /// No such vnode, host or user.
    NotFound(String),
    /// The request clashes with what exists (a duplicate id, a vnode being deleted).
    Conflict(String),
    /// The request itself is wrong: a bad name, a size out of range.
    InvalidArgument(String),
    /// A pool or quota has nothing left: addresses, uid ranges.
    Exhausted(String),
    Failed(String),
}

/// One row of `ListHosts`: `(name, addresses, cpus, memory_bytes, disk_free_bytes, version,
/// registered_at)`, D-Bus signature `(sasuttst)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct HostRow {
    pub name: String,
    pub addresses: Vec<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_free_bytes: u64,
    pub version: String,
    pub registered_at: u64,
}

impl From<HostRecord> for HostRow {
    fn from(h: HostRecord) -> Self {
        HostRow {
            name: h.name,
            addresses: h.addresses,
            cpus: h.capacity.cpus,
            memory_bytes: h.capacity.memory_bytes,
            disk_free_bytes: h.capacity.disk_free_bytes,
            version: h.version,
            registered_at: h.registered_at,
        }
    }
}

impl From<HostRow> for HostRecord {
    fn from(r: HostRow) -> Self {
        HostRecord {
            name: r.name,
            addresses: r.addresses,
            capacity: Capacity {
                cpus: r.cpus,
                memory_bytes: r.memory_bytes,
                disk_free_bytes: r.disk_free_bytes,
            },
            version: r.version,
            registered_at: r.registered_at,
            // Not carried over D-Bus: `docklet-admin hosts` does not show them.
            images: Vec::new(),
            image_versions: Default::default(),
        }
    }
}

/// One row of the worker's `ListVNodes`: `(id, user, cluster, state, unit)`; `state` is the
/// phase the worker last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct VNodeRow {
    pub id: String,
    pub user: String,
    pub cluster: String,
    pub state: String,
    pub unit: String,
}

/// What `Init` returns: where the portal is and where the administrator's password was put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct InitResult {
    pub portal_url: String,
    pub admin_user: String,
    pub password_file: String,
}

/// The client side of `org.docklet.Master1`; the methods' contract is documented on the
/// server's interface (`master::bus`) and in `dbus/org.docklet.Master1.xml`.
#[zbus::proxy(
    interface = "org.docklet.Master1",
    default_service = "org.docklet.Master1",
    default_path = "/org/docklet/Master1"
)]
pub trait Master1 {
    fn list_hosts(&self) -> Result<Vec<HostRow>, BusError>;
    fn init(&self, force: bool) -> Result<(InitResult,), BusError>;
    fn add_host(&self, host: &str, seconds: u64) -> Result<String, BusError>;
    fn remove_host(&self, host: &str) -> Result<(), BusError>;
    /// `spec` is a [`VNodeSpec`](crate::model::vnode::VNodeSpec) as JSON.
    #[zbus(name = "CreateVNode")]
    fn create_vnode(&self, host: &str, spec: &str) -> Result<(), BusError>;
    #[zbus(name = "SetVNodeState")]
    fn set_vnode_state(&self, id: &str, state: &str) -> Result<(), BusError>;
    #[zbus(name = "ListVNodes")]
    fn list_vnodes(&self) -> Result<Vec<VNodeEntryRow>, BusError>;
    #[zbus(name = "UserNetwork")]
    fn user_network(&self, user: &str) -> Result<(NetworkRow,), BusError>;
    #[zbus(name = "SetVNodeQuota")]
    fn set_vnode_quota(&self, user: &str, vnodes: u32) -> Result<(), BusError>;
    fn users(&self) -> Result<Vec<UserRow>, BusError>;
    fn create_user(
        &self,
        name: &str,
        group: &str,
        auth: &str,
        password: &str,
    ) -> Result<(UserRow,), BusError>;
    fn set_user(&self, name: &str, patch: &UserPatchDict) -> Result<(UserRow,), BusError>;
    fn delete_user(&self, name: &str) -> Result<(), BusError>;
    fn groups(&self) -> Result<Vec<GroupRow>, BusError>;
    fn create_group(&self, group: &GroupRow) -> Result<(GroupRow,), BusError>;
    fn set_group(&self, name: &str, patch: &GroupPatchDict) -> Result<(GroupRow,), BusError>;
    fn delete_group(&self, name: &str) -> Result<(), BusError>;
    fn set_default_group(&self, name: &str) -> Result<(), BusError>;
    fn default_group(&self) -> Result<String, BusError>;
    fn host_loads(&self) -> Result<Vec<HostLoadRow>, BusError>;
    fn drain(&self, host: &str, drain: bool) -> Result<(), BusError>;
    fn clusters(&self, user: &str) -> Result<Vec<ClusterRow>, BusError>;
    fn ports(&self, user: &str) -> Result<Vec<PortRow>, BusError>;
    fn jobs(&self, user: &str, ended: bool) -> Result<Vec<JobRow>, BusError>;
    fn cancel_job(&self, id: u64) -> Result<(JobRow,), BusError>;
    fn hold_job(&self, id: u64, hold: bool) -> Result<(JobRow,), BusError>;
    fn images(&self) -> Result<Vec<ImageRow>, BusError>;
    #[allow(clippy::too_many_arguments)]
    fn save_image(
        &self,
        user: &str,
        cluster: &str,
        node: u32,
        name: &str,
        description: &str,
        force: bool,
    ) -> Result<(ImageRow,), BusError>;
    fn set_image_public(
        &self,
        owner: &str,
        name: &str,
        public: bool,
    ) -> Result<(ImageRow,), BusError>;
    fn delete_image(&self, owner: &str, name: &str) -> Result<(), BusError>;
    fn system_images(&self) -> Result<Vec<SystemImageRow>, BusError>;
    fn update_system_image(&self, name: &str, from: &str) -> Result<(SystemImageRow,), BusError>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn connected(&self) -> zbus::Result<bool>;
}

/// The client side of `org.docklet.Worker1` (contract: `worker::bus`,
/// `dbus/org.docklet.Worker1.xml`).
#[zbus::proxy(
    interface = "org.docklet.Worker1",
    default_service = "org.docklet.Worker1",
    default_path = "/org/docklet/Worker1"
)]
pub trait Worker1 {
    #[zbus(name = "ListVNodes")]
    fn list_vnodes(&self) -> Result<Vec<VNodeRow>, BusError>;
    #[zbus(name = "VNodeStatus")]
    fn vnode_status(&self, id: &str) -> Result<(VNodeEntryRow,), BusError>;
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        id: &str,
        user: &str,
        argv: &[&str],
        term: &str,
        stdin: zbus::Fd<'_>,
        stdout: zbus::Fd<'_>,
        stderr: zbus::Fd<'_>,
    ) -> Result<i32, BusError>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn connected(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn host(&self) -> zbus::Result<String>;
}

/// May a caller with this uid and these group ids administer Docklet?
pub fn is_admin(uid: u32, group_ids: &[u32], admin_gid: Option<u32>) -> bool {
    uid == 0 || admin_gid.is_some_and(|gid| group_ids.contains(&gid))
}

/// The groups of a local user, primary group included.
fn groups_of(uid: u32) -> Vec<u32> {
    use nix::unistd::{Uid, User, getgrouplist};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name.as_str()) else {
        return Vec::new();
    };
    match getgrouplist(&name, user.gid) {
        Ok(groups) => groups.into_iter().map(|g| g.as_raw()).collect(),
        Err(_) => vec![user.gid.as_raw()],
    }
}

/// Checks the sender of a method call; returns its uid when it may administer Docklet.
pub async fn authorize(conn: &zbus::Connection, header: &Header<'_>) -> Result<u32, BusError> {
    let sender = header
        .sender()
        .ok_or_else(|| BusError::AccessDenied("the call has no sender".into()))?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let uid = dbus
        .get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| BusError::AccessDenied(format!("cannot identify the caller: {e}")))?;
    let admin_gid = nix::unistd::Group::from_name(ADMIN_GROUP)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let groups = if uid == 0 { Vec::new() } else { groups_of(uid) };
    if is_admin(uid, &groups, admin_gid) {
        Ok(uid)
    } else {
        tracing::warn!(caller_uid = uid, "refused D-Bus call from uid {uid}");
        Err(BusError::AccessDenied(format!(
            "uid {uid} is neither root nor in group {ADMIN_GROUP}"
        )))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod host_tests {
    use super::*;

    #[test]
    fn root_and_admin_group_members_are_admins() {
        assert!(is_admin(0, &[], None));
        assert!(is_admin(1000, &[100, 990], Some(990)));
        assert!(!is_admin(1000, &[100], Some(990)));
        assert!(!is_admin(1000, &[100], None));
    }

    #[test]
    fn host_rows_convert_both_ways() {
        let record = HostRecord {
            name: "tb2".into(),
            addresses: vec!["10.213.0.12/24".into()],
            capacity: Capacity {
                cpus: 2,
                memory_bytes: 1 << 30,
                disk_free_bytes: 1 << 33,
            },
            version: "0.1.0".into(),
            registered_at: 42,
            images: vec![],
            image_versions: Default::default(),
        };
        let row = HostRow::from(record.clone());
        assert_eq!(HostRecord::from(row), record);
        assert_eq!(HostRow::SIGNATURE.to_string(), "(sasuttst)");
    }
}
