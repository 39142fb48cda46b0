//! The vnode reconciler: watches this host's specs in etcd and makes the host match them.
//!
//! A vnode on disk (`FS_PREFIX/local/vnodes/<id>/`): `disk.img` (a sparse file of the spec's
//! disk size holding an ext4: the disk limit), `etc/` (bound read-only at `/etc/docklet`
//! inside: the Jupyter configuration) and `state.json`, written last, so its presence means
//! "created completely". At run time (`/run/docklet/vnodes/<id>/`): `disk` (the ext4, with the
//! overlay's `upper/` and `work/`), `lower` (the image, idmapped to the user's uid range),
//! `rootfs` (the overlay), `exit` (how the unit last ended); and the network namespace
//! `/run/docklet/netns/<id>`. A transient unit `docklet-vnode-<id>.service` runs
//! `systemd-nspawn --boot` on the rootfs.
//!
//! Every decision comes from [`next_action`]; one task per vnode at a time, so a slow boot never
//! holds up the others.
//!
//! The pieces: [`runtime`] (the reconciler's state and the decision loop), [`boot`] (from a
//! checked spec to a booted unit, and back), [`unit`] (what systemd is told to run),
//! [`image`] (what a vnode starts from), [`handoff`] (moving between hosts), [`leader`]
//! (the vnode's PID 1, for exec and terminals), [`jupyter`] (the workspace's
//! configuration) and [`task`] (a batch task's command).

use std::io;
use std::path::Path;

use crate::store::StoreError;
use crate::sys::systemd::SystemdError;
use crate::worker::network::NetworkError;

mod boot;
pub mod handoff;
pub mod image;
mod jupyter;
pub mod leader;
#[cfg(test)]
mod reconcile_tests;
pub mod runtime;
pub mod task;
pub mod unit;

pub use leader::Leader;
pub use runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum VNodeError {
    #[error("{0}")]
    Spec(#[from] crate::model::names::SpecError),
    #[error("{0}")]
    Refused(String),
    /// No vnode of that id on this host.
    #[error("no vnode {0} on this host")]
    NoSuchVnode(String),
    /// The vnode exists here but does not run (`detail` says more, or is empty).
    #[error("vnode {id} is not running{detail}")]
    NotRunning { id: String, detail: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Systemd(#[from] SystemdError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Network(#[from] NetworkError),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VNodeError {
    let context = context.into();
    move |source| VNodeError::Io { context, source }
}

fn remove_dir_if_present(dir: &Path) -> Result<(), VNodeError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Creates a directory with exactly `mode`, whatever the daemon's umask (0027): the root of a
/// vnode's filesystem must be 0755 for its unprivileged users.
fn create_dir(path: &Path, mode: u32) -> Result<(), VNodeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(io_err(format!("creating {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), VNodeError> {
    crate::worker::paths::replace_file(path, data, mode)
        .map_err(io_err(format!("writing {}", path.display())))
}
