//! Side effects behind small traits, each with the real implementation and a fake for unit
//! tests of the logic that uses it.

pub mod firewall;
pub mod host;
pub mod mounts;
pub mod netlink;
pub mod systemd;
