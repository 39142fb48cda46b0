//! `dbus/org.docklet.Master1.xml` is what the master serves: zbus's introspection of
//! [`MasterInterface`] (see [`crate::dbus_api::xml_check`]).

use std::sync::Arc;

use super::MasterInterface;
use crate::config::Config;
use crate::daemon::Notifier;
use crate::dbus_api::xml_check;
use crate::master::Master;

/// No double hyphen may appear in an XML comment: the command is in `xml_check`.
const HEADER: &str =
    "<!-- org.docklet.Master1 at /org/docklet/Master1 on the system bus. Errors are named
     org.docklet.Error.{AccessDenied,NotInitialized,AlreadyInitialized,EtcdUnavailable,NotFound,
     Conflict,InvalidArgument,Exhausted,Failed}. D-Bus has no optional values: an absent field
     is an empty string (or 0, said where), or a key missing from an a{sv}.
     Generated from the interface (src/master/bus/mod.rs); to regenerate, see
     src/dbus_api/xml_check.rs. -->
";

/// The served XML; introspection reads no state, so a master that never connects will do.
pub(crate) fn served() -> String {
    let master = Master::new(Config::default(), "test".into(), Notifier::from_env());
    let interface = MasterInterface {
        master: Arc::new(master),
    };
    xml_check::document(&interface, HEADER)
}

#[test]
fn the_installed_master_xml_is_what_the_master_serves() {
    xml_check::check("org.docklet.Master1", &served());
}
