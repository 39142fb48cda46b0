//! `dbus/org.docklet.Worker1.xml` is what the worker serves: zbus's introspection of
//! [`WorkerInterface`] (see [`crate::dbus_api::xml_check`]).

use std::sync::Arc;

use super::WorkerInterface;
use crate::config::Config;
use crate::daemon::Notifier;
use crate::dbus_api::xml_check;
use crate::model::host::Capacity;
use crate::sys::host::FakeHost;
use crate::worker::Worker;

/// No double hyphen may appear in an XML comment: the command is in `xml_check`.
const HEADER: &str =
    "<!-- org.docklet.Worker1 at /org/docklet/Worker1 on the system bus. Errors are named
     org.docklet.Error.{AccessDenied,NotFound,InvalidArgument,Failed}.
     Generated from the interface (src/worker/bus.rs); to regenerate, see
     src/dbus_api/xml_check.rs. -->
";

#[test]
fn the_installed_worker_xml_is_what_the_worker_serves() {
    // Introspection reads no state: a worker that never starts will do.
    let probe = FakeHost {
        capacity: Capacity {
            cpus: 1,
            memory_bytes: 1 << 30,
            disk_free_bytes: 1 << 30,
        },
        addresses: vec![],
    };
    let worker = Worker::new(
        Config::default(),
        "test".into(),
        Notifier::from_env(),
        Arc::new(probe),
    );
    let interface = WorkerInterface {
        worker: Arc::new(worker),
    };
    xml_check::check(
        "org.docklet.Worker1",
        &xml_check::document(&interface, HEADER),
    );
}
