//! `org.docklet.Worker1` at `/org/docklet/Worker1` on the system bus.

use std::sync::Arc;

use zbus::message::Header;

use super::Worker;
use crate::dbus_api::{self, BusError, VNodeRow};

pub struct WorkerInterface {
    worker: Arc<Worker>,
}

#[zbus::interface(name = "org.docklet.Worker1")]
impl WorkerInterface {
    /// The vnodes this worker runs (none until vnodes arrive).
    #[zbus(name = "ListVNodes")]
    async fn list_vnodes(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<VNodeRow>, BusError> {
        dbus_api::authorize(conn, &header).await?;
        Ok(Vec::new())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        crate::VERSION.to_owned()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn status(&self) -> String {
        self.worker.status()
    }

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
