//! Side effects, one module each: the real implementation, behind a small trait with a fake
//! where logic above it has tests: host facts, passwords, and the recording fakes of
//! systemd's units, the mount table, rtnetlink and nftables that the vnode reconciler's and
//! the networks' tests drive.
//! The kernel seams themselves (mounts, rtnetlink, nftables, systemd, tree copies) are tested
//! for real: root tests in throwaway namespaces, unit tests in temporary directories, and
//! the end-to-end suite.

pub mod beneath;
pub mod files;
pub mod firewall;
pub mod host;
pub mod mounts;
pub mod netlink;
pub mod pam;
pub mod reload;
pub mod streams;
pub mod systemd;
pub mod tree;
