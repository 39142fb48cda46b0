//! Side effects, one module each: the real implementation, behind a small trait with a fake
//! where logic above it has unit tests (host facts). The kernel seams (mounts, rtnetlink,
//! nftables, systemd) are tested for real: root tests in throwaway namespaces and the
//! end-to-end suite.

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
