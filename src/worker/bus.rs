//! `org.docklet.Worker1` at `/org/docklet/Worker1` on the system bus: this host's vnodes, and
//! commands inside them, relayed to the caller (`docklet-admin exec`). The methods' doc
//! comments go into the introspection XML, `dbus/org.docklet.Worker1.xml` (checked by a unit
//! test, `introspection`).

use std::sync::Arc;

use zbus::message::Header;

use super::Worker;
use super::exec::{self, ExecRequest};
use super::relay;
use super::vnode::{Runtime, VNodeError};
use crate::dbus_api::{self, BusError, VNodeEntryRow, VNodeRow};

#[cfg(test)]
mod introspection;

pub struct WorkerInterface {
    worker: Arc<Worker>,
}

impl WorkerInterface {
    fn runtime(&self) -> Result<&Arc<Runtime>, BusError> {
        self.worker
            .runtime
            .get()
            .ok_or_else(|| BusError::Failed("the worker is still connecting to systemd".into()))
    }
}

fn bus_error(e: VNodeError) -> BusError {
    match e {
        VNodeError::Spec(e) => BusError::InvalidArgument(e.to_string()),
        VNodeError::Refused(m) => BusError::Failed(m),
        VNodeError::NoSuchVnode(_) => BusError::NotFound(e.to_string()),
        other => BusError::Failed(other.to_string()),
    }
}

/// Errors are named org.docklet.Error.{AccessDenied,NotFound,InvalidArgument,Failed}.
#[zbus::interface(name = "org.docklet.Worker1")]
impl WorkerInterface {
    /// Vnodes on this host: (id, user, cluster, state, unit); state is the phase last
    /// reported: pending, creating, running, stopping, stopped, failed or exported.
    #[zbus(name = "ListVNodes")]
    #[zbus(out_args("vnodes"))]
    async fn list_vnodes(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<VNodeRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        let Some(runtime) = self.worker.runtime.get() else {
            return Ok(Vec::new());
        };
        Ok(runtime
            .vnodes()
            .into_iter()
            .map(|(spec, status)| VNodeRow {
                state: status
                    .map(|s| s.phase.as_str().to_owned())
                    .unwrap_or_else(|| "pending".into()),
                unit: crate::model::vnode::unit_name(&spec.id),
                id: spec.id,
                user: spec.user,
                cluster: spec.cluster,
            })
            .collect())
    }

    /// Spec and status of one vnode of this host: (host, spec, status), the a{sv}s of the
    /// master's ListVNodes (status empty until the vnode's first report).
    #[zbus(name = "VNodeStatus")]
    #[zbus(out_args("vnode"))]
    async fn vnode_status(
        &self,
        id: &str,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(VNodeEntryRow,), BusError> {
        dbus_api::authorize(conn, &header).await?;
        let runtime = self.runtime()?;
        let spec = runtime
            .spec(id)
            .ok_or_else(|| BusError::NotFound(format!("no vnode {id} on this host")))?;
        let status = runtime.status(id);
        Ok((VNodeEntryRow::new(self.worker.host.clone(), spec, status),))
    }

    /// Runs argv inside a running vnode as `user` (root or a user of the vnode) with
    /// TERM=term, relaying the three passed descriptors as its stdin, stdout and stderr (on
    /// a pty of the worker's when stdin is a terminal): no descriptor of the caller enters
    /// the vnode. Returns the exit status, 128 + the signal number when killed.
    #[allow(clippy::too_many_arguments)]
    #[zbus(out_args("status"))]
    async fn exec(
        &self,
        id: &str,
        user: &str,
        argv: Vec<String>,
        term: &str,
        stdin: zbus::OwnedFd,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<i32, BusError> {
        let uid = dbus_api::authorize(conn, &header).await?;
        let runtime = self.runtime()?.clone();
        tracing::info!(
            caller_uid = uid,
            vnode = id,
            user,
            "exec over D-Bus: {argv:?}"
        );
        let caller = relay::CallerStreams {
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
        };
        let (streams, relay) = relay::start(caller)
            .map_err(|e| BusError::Failed(format!("cannot relay the caller's streams: {e}")))?;
        let request = ExecRequest {
            id: id.to_owned(),
            user: user.to_owned(),
            argv,
            tty: streams.tty,
            term: if term.is_empty() {
                "dumb".into()
            } else {
                term.to_owned()
            },
        };
        let session = exec::run(
            &runtime,
            runtime.units(),
            &request,
            streams.stdin,
            streams.stdout,
            streams.stderr,
        );
        tokio::pin!(session);
        let status = loop {
            tokio::select! {
                status = &mut session => break status,
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => relay.follow_size(),
            }
        };
        relay.finish().await;
        status.map_err(bus_error)
    }

    /// The worker's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        crate::VERSION.to_owned()
    }

    /// What the worker is doing, as systemd's status line.
    #[zbus(property(emits_changed_signal = "false"))]
    fn status(&self) -> String {
        self.worker.status()
    }

    /// Whether this host is registered in the cluster (what `docklet-admin wait` waits for).
    #[zbus(property(emits_changed_signal = "false"))]
    fn connected(&self) -> bool {
        self.worker.registered()
    }

    /// This host's name.
    #[zbus(property(emits_changed_signal = "const"))]
    fn host(&self) -> String {
        self.worker.host.clone()
    }
}

pub async fn serve(worker: Arc<Worker>) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::system()
        .name(dbus_api::WORKER_NAME)
        .serve_at(dbus_api::WORKER_PATH, WorkerInterface { worker })
        .build()
        .await
}
