//! `org.docklet.Master1` at `/org/docklet/Master1` on the system bus: a thin adapter that
//! checks the caller, calls the [`Master`]'s action as `Caller::local_admin()` and returns
//! the D-Bus records of [`crate::dbus_api`] ([`views`] converts). The methods' doc comments
//! are the interface's documentation: zbus writes them into the introspection XML, which is
//! `dbus/org.docklet.Master1.xml` ([`introspection`] checks it).

use std::sync::Arc;

use zbus::message::Header;

use super::Master;
use super::actions::images::{ImagePatch, SaveImageRequest};
use super::actions::system_images::SystemImageUpdateRequest;
use super::actions::{ApiError, Caller, GroupPatch, NewUser, UserPatch};
use crate::dbus_api::{
    self, BusError, ClusterRow, GroupPatchDict, GroupRow, HostLoadRow, HostRow, ImageRow,
    InitResult, JobRow, NetworkRow, PortRow, SystemImageRow, UserPatchDict, UserRow, VNodeEntryRow,
    VariantDict,
};
use crate::model::account::AuthMethod;
use crate::model::quota::Group;
use crate::model::vnode::{DesiredState, VNodeSpec};

#[cfg(test)]
pub(crate) mod introspection;
mod views;

pub struct MasterInterface {
    master: Arc<Master>,
}

/// Errors are named org.docklet.Error.{AccessDenied,NotInitialized,AlreadyInitialized,
/// EtcdUnavailable,NotFound,Conflict,InvalidArgument,Exhausted,Failed}. D-Bus has no optional
/// values: an absent field is an empty string (or 0, said where), or a key missing from an
/// a{sv}.
#[zbus::interface(name = "org.docklet.Master1")]
impl MasterInterface {
    /// Hosts whose workers hold their registration lease: (name, addresses, cpus,
    /// memory_bytes, disk_free_bytes, version, registered_at).
    #[zbus(out_args("hosts"))]
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
    /// administrator. Refused (AlreadyInitialized) on an initialized cluster unless `force`.
    /// Returns (portal_url, admin_user, password_file).
    #[zbus(out_args("result"))]
    async fn init(
        &self,
        force: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(InitResult,), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(caller_uid = uid, force, "init requested over D-Bus");
        Ok((self.master.init(force).await?,))
    }

    /// A one-time join token for a new (or re-keyed) host, valid `seconds` (at most 7 days);
    /// the host exchanges it with `docklet-admin join`.
    #[zbus(out_args("token"))]
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

    /// Revokes a host's certificates and any pending join token: agents refuse them.
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

    /// Writes a vnode spec for a host; that host's worker creates it. `spec` is a JSON
    /// document: id, user, cluster, index, image, cpu_millis, memory_bytes, disk_bytes,
    /// tasks, state = running|stopped; Docklet assigns the address. Conflict when the id
    /// exists anywhere in the cluster; Exhausted when the user's network has no address left.
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
            vnode = spec.id,
            host,
            "vnode {} on {host} requested over D-Bus",
            spec.id
        );
        self.master
            .create_vnode(&Caller::local_admin(), host, &spec)
            .await
            .map_err(BusError::from)
    }

    /// Desired state of a vnode: running, stopped or deleted.
    #[zbus(name = "SetVNodeState")]
    async fn set_vnode_state(
        &self,
        id: &str,
        state: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let wanted: DesiredState = state.parse().map_err(BusError::InvalidArgument)?;
        tracing::info!(
            caller_uid = uid,
            vnode = id,
            "vnode {id} set {state} over D-Bus"
        );
        self.master
            .set_vnode_state(&Caller::local_admin(), id, wanted)
            .await
            .map_err(BusError::from)
    }

    /// A user's network: (user, vni, blocks, gateway, capacity, quota, addresses), where
    /// addresses maps an address to its vnode's id and gateway is empty while there is no
    /// block. NotFound before the user's first vnode.
    #[zbus(name = "UserNetwork")]
    #[zbus(out_args("network"))]
    async fn user_network(
        &self,
        user: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(NetworkRow,), BusError> {
        dbus_api::authorize(conn, &header).await?;
        row(self.master.user_network(&Caller::local_admin(), user).await)
    }

    /// How many vnodes a user may have; their network's address blocks grow to hold as
    /// many. Exhausted when the address pool cannot.
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
        self.master
            .set_vnode_quota(&Caller::local_admin(), user, vnodes)
            .await
            .map_err(BusError::from)
    }

    /// Every vnode of the cluster: (host, spec, status). spec is an a{sv} with id, user,
    /// cluster, image, state (s), index, cpu_millis, tasks (u), memory_bytes, disk_bytes (t),
    /// and address (s) and handoff ((sss) token, from, resume) when set. status is an a{sv},
    /// empty until the worker first reports: id, host, phase, unit (s), restarts (u),
    /// updated_at (t), and when known reason, image_version (s), leader_pid, uid_base (u),
    /// booted_at, boot_ms, net_us (t).
    #[zbus(name = "ListVNodes")]
    #[zbus(out_args("vnodes"))]
    async fn list_vnodes(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<VNodeEntryRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        rows(self.master.list_vnodes(&Caller::local_admin()).await)
    }

    /// Every account with its group's quota and its usage: (user, group, admin, status,
    /// auth, quota, usage, defaults); status is applying, normal or locked, auth local or
    /// pam; quota is (cpu_millis, memory_bytes, disk_bytes, vnodes, images, image_bytes,
    /// port_mappings, idle_secs), usage (cpu_millis, memory_bytes, disk_bytes, vnodes,
    /// port_mappings, images, image_bytes), defaults (cpu_millis, memory_bytes, disk_bytes).
    #[zbus(out_args("users"))]
    async fn users(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<UserRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        rows(self.master.list_users(&Caller::local_admin()).await)
    }

    /// Creates an account: `auth` is `local` (with a password) or `pam` (password empty);
    /// an empty `group` means the default group. Returns the account as Users lists it.
    #[zbus(out_args("user"))]
    async fn create_user(
        &self,
        name: &str,
        group: &str,
        auth: &str,
        password: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(UserRow,), BusError> {
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
        row(self.master.create_user(&Caller::local_admin(), &new).await)
    }

    /// Changes an account: `patch` has any of the keys group, status (applying, normal,
    /// locked) and password, all s; an unknown key or a value of another type is refused
    /// (InvalidArgument, naming the key). Returns the account as Users lists it.
    #[zbus(out_args("user"))]
    async fn set_user(
        &self,
        name: &str,
        patch: VariantDict,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(UserRow,), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let patch = UserPatch::try_from(UserPatchDict::from_dict(patch)?)?;
        tracing::info!(caller_uid = uid, user = name, "user changed over D-Bus");
        row(self
            .master
            .update_user(&Caller::local_admin(), name, &patch, "D-Bus")
            .await)
    }

    /// Deletes an account.
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

    /// Every group: (name, admin, quota, defaults, egress_allow); quota and defaults as in
    /// Users; egress_allow lists the destinations its members' vnodes may reach besides the
    /// site's (10.0.0.0/8, 192.168.1.5/32:443).
    #[zbus(out_args("groups"))]
    async fn groups(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<GroupRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        rows(self.master.list_groups(&Caller::local_admin()).await)
    }

    /// Creates a group from its record, as Groups lists them; returns it.
    #[zbus(out_args("group"))]
    async fn create_group(
        &self,
        group: GroupRow,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(GroupRow,), BusError> {
        dbus_api::authorize(conn, &header).await?;
        let group = Group::try_from(group)?;
        row(self
            .master
            .create_group(&Caller::local_admin(), &group)
            .await)
    }

    /// Changes a group: `patch` has any of the keys admin (b), quota (a{sv} with any of
    /// cpu_millis, memory_bytes, disk_bytes, image_bytes, idle_secs as t and vnodes, images,
    /// port_mappings as u), defaults ((utt) cpu_millis, memory_bytes, disk_bytes) and
    /// egress_allow (as, the whole list). An unknown key or a value of another type is
    /// refused (InvalidArgument, naming the key). Returns the group.
    #[zbus(out_args("group"))]
    async fn set_group(
        &self,
        name: &str,
        patch: VariantDict,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(GroupRow,), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let patch = GroupPatch::try_from(GroupPatchDict::from_dict(patch)?)?;
        tracing::info!(caller_uid = uid, group = name, "group changed over D-Bus");
        row(self
            .master
            .update_group(&Caller::local_admin(), name, &patch)
            .await)
    }

    /// Deletes a group; refused while it has members or is the default.
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

    /// Makes `name` the group new users join.
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
    #[zbus(out_args("group"))]
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

    /// Hosts with capacity, allocations, images and drain state: (name, addresses, cpus,
    /// memory_bytes, disk_free_bytes, allocated, draining, drain_note, images, version);
    /// allocated is a usage as in Users, drain_note is empty unless the host is draining.
    #[zbus(out_args("hosts"))]
    async fn host_loads(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HostLoadRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        rows(self.master.hosts(&Caller::local_admin()).await)
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

    /// A user's clusters with their nodes: (name, user, image, state, node_size,
    /// created_at, nodes, idle_stopped_at, idle_secs); a node is (index, id, hostname, state,
    /// address, host, image, cpu_millis, memory_bytes, disk_bytes, reason), address and
    /// reason empty when there is none; idle_stopped_at is 0 unless the cluster was stopped
    /// for being idle idle_secs.
    #[zbus(out_args("clusters"))]
    async fn clusters(
        &self,
        user: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<ClusterRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        rows(
            self.master
                .list_clusters(&Caller::local_admin(), Some(user))
                .await,
        )
    }

    /// Port mappings, the records of GET /api/v1/ports, of `user`, or of everyone when
    /// `user` is empty: (user, cluster, node, port, public_port, created_at, vnode, address,
    /// forwarding); address is where to connect, forwarding whether the masters forward it
    /// now.
    #[zbus(out_args("ports"))]
    async fn ports(
        &self,
        user: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<PortRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        let caller = Caller::local_admin();
        if user.is_empty() {
            rows(self.master.all_ports(&caller, None).await)
        } else {
            rows(self.master.list_ports(&caller, Some(user), None).await)
        }
    }

    /// Batch jobs, every user's when `user` is empty: those not ended, and with `ended` also
    /// the ended ones: (id, user, name, state, reason, submitted_at, ended_at, counts,
    /// position); ended_at and position are 0 when not ended or not queued.
    #[zbus(out_args("jobs"))]
    async fn jobs(
        &self,
        user: &str,
        ended: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<JobRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        let filter = crate::master::actions::jobs::JobFilter {
            user: (!user.is_empty()).then(|| user.to_owned()),
            all: user.is_empty(),
            state: None,
            active: (!ended).then_some(true),
        };
        rows(self.master.list_jobs(&Caller::local_admin(), &filter).await)
    }

    /// Cancels a job: nothing more of it starts, its running instances stop. Returns it.
    #[zbus(out_args("job"))]
    async fn cancel_job(
        &self,
        id: u64,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(JobRow,), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(caller_uid = uid, job = id, "job cancelled over D-Bus");
        row(self.master.cancel_job(&Caller::local_admin(), id).await)
    }

    /// Holds a job (nothing more of it starts) or, with `hold` false, releases it.
    #[zbus(out_args("job"))]
    async fn hold_job(
        &self,
        id: u64,
        hold: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(JobRow,), BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        tracing::info!(
            caller_uid = uid,
            job = id,
            hold,
            "job hold changed over D-Bus"
        );
        row(self.master.hold_job(&Caller::local_admin(), id, hold).await)
    }

    /// Every user's images, the records of GET /api/v1/images?all=true: (reference, owner,
    /// name, description, public, created_at, state, bytes, optional). optional is an a{sv}
    /// with current ((sststs) version, base, bytes, sha256, saved_at, saved_from) once a
    /// save completed, pending ((ssstttstb) kind = saving|deleting, vnode, host,
    /// requested_at, max_bytes, written_bytes, description, since, confirmed) while one is
    /// under way, last_error (s) after a failed save.
    #[zbus(out_args("images"))]
    async fn images(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<ImageRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        rows(self.master.list_images(&Caller::local_admin(), true).await)
    }

    /// Saves node `node` of `user`'s cluster as `user`'s image `name` (replacing one of that
    /// name with `force`); returns the image as Images lists it, being saved.
    #[allow(clippy::too_many_arguments)]
    #[zbus(out_args("image"))]
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
    ) -> Result<(ImageRow,), BusError> {
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
        row(self
            .master
            .save_image(&Caller::local_admin(), Some(user), &request)
            .await)
    }

    /// Shares (`public` true) or unshares `owner`'s image `name`; returns it as Images lists
    /// it.
    #[zbus(out_args("image"))]
    async fn set_image_public(
        &self,
        owner: &str,
        name: &str,
        public: bool,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(ImageRow,), BusError> {
        dbus_api::authorize(conn, &header).await?;
        let patch = ImagePatch {
            public: Some(public),
            description: None,
        };
        row(self
            .master
            .update_image(&Caller::local_admin(), owner, name, &patch)
            .await)
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

    /// Every system image, the records of GET /api/v1/system-images: (name, state, settled,
    /// hosts, optional). A host is (host, current, optional) whose optional a{sv} has build
    /// ((sssstst) host, version, state = building|ready|failed, step, since, error,
    /// updated_at) when the host works on the latest update; the image's optional a{sv} has
    /// update ((sss(sststs)st) name, version, from, layer, requested_by, requested_at) once
    /// one was asked for. settled: every host is done with the latest update (or one failed).
    #[zbus(out_args("system_images"))]
    async fn system_images(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<SystemImageRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        rows(self.master.list_system_images(&Caller::local_admin()).await)
    }

    /// Makes the next version of system image `name` on every host from saved image `from`
    /// (owner/name); returns the system image as SystemImages lists it, being updated.
    #[zbus(out_args("system_image"))]
    async fn update_system_image(
        &self,
        name: &str,
        from: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(SystemImageRow,), BusError> {
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
        row(self
            .master
            .update_system_image(&Caller::local_admin(), name, &request)
            .await)
    }

    /// The master's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        crate::VERSION.to_owned()
    }

    /// What the master is doing, as systemd's status line.
    #[zbus(property(emits_changed_signal = "false"))]
    fn status(&self) -> String {
        self.master.status()
    }

    /// Whether the master has its etcd connection (what `docklet-admin wait` waits for: the
    /// master is READY to systemd as soon as it serves, connected or not).
    #[zbus(property(emits_changed_signal = "false"))]
    fn connected(&self) -> bool {
        self.master.connected()
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

/// One action's answer as its D-Bus record, one out argument of the record's struct type (a
/// struct returned bare would be sent as as many arguments as it has fields, unlike what
/// zbus introspects, and unlike the lists' elements).
fn row<V, R: From<V>>(result: Result<V, ApiError>) -> Result<(R,), BusError> {
    Ok((R::from(result?),))
}

/// A listing's answer as D-Bus records.
fn rows<V, R: From<V>>(result: Result<Vec<V>, ApiError>) -> Result<Vec<R>, BusError> {
    Ok(result?.into_iter().map(R::from).collect())
}
