//! `org.docklet.Master1` at `/org/docklet/Master1` on the system bus.

use std::sync::Arc;

use zbus::message::Header;

use super::Master;
use crate::dbus_api::{self, BusError, HostRow, InitResult};
use crate::model::vnode::{DesiredState, VNodeSpec};

pub struct MasterInterface {
    master: Arc<Master>,
}

#[zbus::interface(name = "org.docklet.Master1")]
impl MasterInterface {
    /// Hosts whose workers hold their registration lease.
    async fn list_hosts(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HostRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        Ok(self
            .master
            .list_hosts()
            .await?
            .into_iter()
            .map(HostRow::from)
            .collect())
    }

    /// Creates the cluster: internal credentials, the cluster record and the portal
    /// administrator. Refused on an initialized cluster unless `force`.
    async fn init(
        &self,
        force: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<InitResult, BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(caller_uid = uid, force, "init requested over D-Bus");
        self.master.init(force).await
    }

    /// Writes a vnode spec (JSON) for a host; its worker creates the vnode.
    #[zbus(name = "CreateVNode")]
    async fn create_vnode(
        &self,
        host: &str,
        spec: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let spec: VNodeSpec = serde_json::from_str(spec)
            .map_err(|e| BusError::InvalidArgument(format!("vnode spec: {e}")))?;
        tracing::info!(
            caller_uid = uid,
            vnode = %spec.id,
            host,
            "vnode {} created on {host} over D-Bus",
            spec.id
        );
        self.master.create_vnode(host, &spec).await
    }

    /// running, stopped or deleted.
    #[zbus(name = "SetVNodeState")]
    async fn set_vnode_state(
        &self,
        id: &str,
        state: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let state: DesiredState = state.parse().map_err(BusError::InvalidArgument)?;
        tracing::info!(
            caller_uid = uid,
            vnode = id,
            ?state,
            "vnode {id} set to {state:?} over D-Bus"
        );
        self.master.set_vnode_state(id, state).await
    }

    #[zbus(name = "UserNetwork")]
    async fn user_network(
        &self,
        user: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        let info = self.master.user_network(user).await?;
        Ok(serde_json::to_string_pretty(&info).expect("JSON"))
    }

    #[zbus(name = "SetVNodeQuota")]
    async fn set_vnode_quota(
        &self,
        user: &str,
        vnodes: u32,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(
            caller_uid = uid,
            user,
            vnodes,
            "vnode quota of {user} set to {vnodes} over D-Bus"
        );
        self.master.set_vnode_quota(user, vnodes).await
    }

    #[zbus(name = "ListVNodes")]
    async fn list_vnodes(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        let list = self.master.list_vnodes().await?;
        Ok(serde_json::to_string(&list).expect("vnode entries serialize"))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        crate::VERSION.to_owned()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn status(&self) -> String {
        self.master.status()
    }
}

/// Takes the bus name and serves the interface until the connection is dropped.
pub async fn serve(master: Arc<Master>) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::system()
        .name(dbus_api::MASTER_NAME)
        .serve_at(dbus_api::MASTER_PATH, MasterInterface { master })
        .build()
        .await
}
