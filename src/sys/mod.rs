//! Side effects behind small traits, each with the real implementation and a fake for unit
//! tests of the logic that uses it.

pub mod host;
pub mod mounts;
pub mod systemd;
pub mod firewall;
pub mod netlink;
