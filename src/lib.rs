//! Docklet: private virtual clusters for every user of a shared set of Linux hosts.
//!
//! `docklet-master` and `docklet-worker` are systemd services that share this library;
//! `docklet-admin` talks to them over D-Bus. How the parts fit: docs/architecture.md.

pub mod config;
pub mod daemon;
pub mod dbus_api;
pub mod master;
pub mod model;
pub mod pki;
pub mod store;
pub mod sys;
pub mod worker;

/// The version of this build, as reported by every daemon and in host records.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
