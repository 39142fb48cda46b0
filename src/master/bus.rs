//! `org.docklet.Master1` at `/org/docklet/Master1` on the system bus.

use std::sync::Arc;

use zbus::message::Header;

use super::Master;
use super::actions::images::{ImagePatch, SaveImageRequest};
use super::actions::system_images::SystemImageUpdateRequest;
use super::actions::{ApiError, Caller, GroupPatch, NewUser, UserPatch};
use crate::dbus_api::{self, BusError, HostRow, InitResult};
use crate::model::account::AuthMethod;
use crate::model::quota::Group;
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
            .registered_hosts(&Caller::local_admin())
            .await
            .map_err(BusError::from)?
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

    /// A one-time join token for a new (or re-keyed) host, valid `seconds`.
    async fn add_host(
        &self,
        host: &str,
        seconds: u64,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(
            caller_uid = uid,
            host = host,
            "join token for {host} requested over D-Bus"
        );
        self.master.add_host(host, seconds).await
    }

    /// Revokes a host's certificates (and any pending join token).
    async fn remove_host(
        &self,
        host: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(
            caller_uid = uid,
            host = host,
            "removal of host {host} requested over D-Bus"
        );
        self.master.remove_host(host).await
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
        dbus_api::authorize(conn, &header).await?;
        let spec: VNodeSpec = serde_json::from_str(spec)
            .map_err(|e| BusError::InvalidArgument(format!("vnode spec: {e}")))?;
        self.master
            .create_vnode(&Caller::local_admin(), host, &spec)
            .await
            .map_err(BusError::from)
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
        dbus_api::authorize(conn, &header).await?;
        let state: DesiredState = state.parse().map_err(BusError::InvalidArgument)?;
        self.master
            .set_vnode_state(&Caller::local_admin(), id, state)
            .await
            .map_err(BusError::from)
    }

    #[zbus(name = "UserNetwork")]
    async fn user_network(
        &self,
        user: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        json(self.master.user_network(&Caller::local_admin(), user).await)
    }

    #[zbus(name = "SetVNodeQuota")]
    async fn set_vnode_quota(
        &self,
        user: &str,
        vnodes: u32,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        dbus_api::authorize(conn, &header).await?;
        self.master
            .set_vnode_quota(&Caller::local_admin(), user, vnodes)
            .await
            .map_err(BusError::from)
    }

    #[zbus(name = "ListVNodes")]
    async fn list_vnodes(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        json(self.master.list_vnodes(&Caller::local_admin()).await)
    }

    /// Every account with its group, quota and usage (JSON).
    async fn users(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        json(self.master.list_users(&Caller::local_admin()).await)
    }

    /// Creates an account: `auth` is `local` (with a password) or `pam` (password empty);
    /// an empty `group` means the default group.
    async fn create_user(
        &self,
        name: &str,
        group: &str,
        auth: &str,
        password: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let auth = match auth {
            "local" => AuthMethod::Local,
            "pam" => AuthMethod::Pam,
            other => {
                return Err(BusError::InvalidArgument(format!(
                    "auth {other:?}: expected local or pam"
                )));
            }
        };
        let new = NewUser {
            name: name.to_owned(),
            password: (!password.is_empty()).then(|| password.to_owned()),
            group: (!group.is_empty()).then(|| group.to_owned()),
            auth: Some(auth),
        };
        tracing::info!(caller_uid = uid, user = name, "user created over D-Bus");
        json(self.master.create_user(&Caller::local_admin(), &new).await)
    }

    /// Changes an account: `patch` is JSON with any of `group`, `status`, `password`.
    async fn set_user(
        &self,
        name: &str,
        patch: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let patch: UserPatch = parse(patch)?;
        tracing::info!(caller_uid = uid, user = name, "user changed over D-Bus");
        json(
            self.master
                .update_user(&Caller::local_admin(), name, &patch, "D-Bus")
                .await,
        )
    }

    async fn delete_user(
        &self,
        name: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(caller_uid = uid, user = name, "user deleted over D-Bus");
        self.master
            .delete_user(&Caller::local_admin(), name)
            .await
            .map_err(BusError::from)
    }

    /// Every group with its quota and node defaults (JSON).
    async fn groups(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        json(self.master.list_groups(&Caller::local_admin()).await)
    }

    /// Creates a group from its JSON record.
    async fn create_group(
        &self,
        group: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        let group: Group = parse(group)?;
        json(
            self.master
                .create_group(&Caller::local_admin(), &group)
                .await,
        )
    }

    /// Changes a group: `patch` is JSON with any of `admin`, `quota` (any of its fields),
    /// `defaults` and `egress_allow` (the whole list).
    async fn set_group(
        &self,
        name: &str,
        patch: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let patch: GroupPatch = parse(patch)?;
        tracing::info!(caller_uid = uid, group = name, "group changed over D-Bus");
        json(
            self.master
                .update_group(&Caller::local_admin(), name, &patch)
                .await,
        )
    }

    async fn delete_group(
        &self,
        name: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        dbus_api::authorize(conn, &header).await?;
        self.master
            .delete_group(&Caller::local_admin(), name)
            .await
            .map_err(BusError::from)
    }

    async fn set_default_group(
        &self,
        name: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        dbus_api::authorize(conn, &header).await?;
        self.master
            .set_default_group(&Caller::local_admin(), name)
            .await
            .map_err(BusError::from)
    }

    /// The group new users join.
    async fn default_group(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        self.master
            .default_group(&Caller::local_admin())
            .await
            .map_err(BusError::from)
    }

    /// Hosts with capacity, allocations, images and drain state (JSON).
    async fn host_loads(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        json(self.master.hosts(&Caller::local_admin()).await)
    }

    /// Stops (or, with `drain` false, resumes) placing new vnodes on a host.
    async fn drain(
        &self,
        host: &str,
        drain: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(caller_uid = uid, host, drain, "drain changed over D-Bus");
        self.master
            .drain(&Caller::local_admin(), host, drain)
            .await
            .map_err(BusError::from)
    }

    /// A user's clusters with their nodes (JSON).
    async fn clusters(
        &self,
        user: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        json(
            self.master
                .list_clusters(&Caller::local_admin(), Some(user))
                .await,
        )
    }

    /// Port mappings as JSON, the records of `GET /api/v1/ports`: `user`'s, or everyone's
    /// when `user` is empty.
    async fn ports(
        &self,
        user: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        let caller = Caller::local_admin();
        if user.is_empty() {
            json(self.master.all_ports(&caller, None).await)
        } else {
            json(self.master.list_ports(&caller, Some(user), None).await)
        }
    }

    /// Every user's images as JSON, the records of `GET /api/v1/images?all=true`.
    async fn images(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        json(self.master.list_images(&Caller::local_admin(), true).await)
    }

    /// Saves node `node` of `user`'s cluster as `user`'s image `name` (replacing one with
    /// `force`); returns the image (JSON), being saved.
    #[allow(clippy::too_many_arguments)]
    async fn save_image(
        &self,
        user: &str,
        cluster: &str,
        node: u32,
        name: &str,
        description: &str,
        force: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(
            caller_uid = uid,
            user,
            cluster,
            node,
            name,
            "image save over D-Bus"
        );
        let request = SaveImageRequest {
            cluster: cluster.to_owned(),
            node,
            name: name.to_owned(),
            description: description.to_owned(),
            force,
        };
        json(
            self.master
                .save_image(&Caller::local_admin(), Some(user), &request)
                .await,
        )
    }

    /// Shares (`public`) or unshares `owner`'s image `name`; returns it (JSON).
    async fn set_image_public(
        &self,
        owner: &str,
        name: &str,
        public: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        let patch = ImagePatch {
            public: Some(public),
            description: None,
        };
        json(
            self.master
                .update_image(&Caller::local_admin(), owner, name, &patch)
                .await,
        )
    }

    /// Deletes `owner`'s image `name` (refused while a cluster uses it).
    async fn delete_image(
        &self,
        owner: &str,
        name: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(caller_uid = uid, owner, name, "image delete over D-Bus");
        self.master
            .delete_image(&Caller::local_admin(), owner, name)
            .await
            .map_err(BusError::from)
    }

    /// Every system image as JSON, the records of `GET /api/v1/system-images`.
    async fn system_images(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        dbus_api::authorize(conn, &header).await?;
        json(self.master.list_system_images(&Caller::local_admin()).await)
    }

    /// Makes the next version of system image `name` on every host from image `from`;
    /// returns the system image (JSON), being updated.
    async fn update_system_image(
        &self,
        name: &str,
        from: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(
            caller_uid = uid,
            name,
            from,
            "system image update over D-Bus"
        );
        let request = SystemImageUpdateRequest {
            from: from.to_owned(),
        };
        json(
            self.master
                .update_system_image(&Caller::local_admin(), name, &request)
                .await,
        )
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

fn json<T: serde::Serialize>(result: Result<T, ApiError>) -> Result<String, BusError> {
    result
        .map(|value| serde_json::to_string_pretty(&value).expect("records serialize"))
        .map_err(BusError::from)
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, BusError> {
    serde_json::from_str(text).map_err(|e| BusError::InvalidArgument(format!("JSON: {e}")))
}
