//! Pure domain logic: records kept in etcd and the rules about them. No IO here; this is
//! where most unit tests live.

pub mod account;
pub mod admission;
pub mod cluster;
pub mod drain;
pub mod egress;
pub mod host;
pub mod image;
pub mod jobs;
pub mod metrics;
pub mod names;
pub mod network;
pub mod placement;
pub mod ports;
pub mod quota;
pub mod system_image;
pub mod vcluster;
pub mod vnode;
pub mod workspace;
