//! Moving a vnode between hosts: its files wait on the shared filesystem (`global/handoff`)
//! between the host that exports them and the one that takes them.

use std::io;
use std::path::{Path, PathBuf};

use super::{VNodeError, create_dir, io_err, remove_dir_if_present};
use crate::config::Config;

use crate::sys::mounts;
use crate::worker::paths::VNodePaths;

/// Where a moving vnode's disk waits between its two hosts, on the shared filesystem
/// ([`vnode::Handoff`]); `<token>.part` while it is being written.
pub fn handoff_dir(config: &Config, token: &str) -> PathBuf {
    handoffs_root(config).join(token)
}

/// The directory of all handoffs, `global/handoff`, made when missing. Any host's root can
/// write the shared filesystem: a link there is refused, and files below it are opened from
/// it without following links ([`mounts::copy_sparse`]).
fn handoffs_root(config: &Config) -> PathBuf {
    config.global_dir().join("handoff")
}

fn check_handoffs_root(root: &Path) -> Result<(), VNodeError> {
    if let Err(e) = std::fs::create_dir(root)
        && e.kind() != io::ErrorKind::AlreadyExists
    {
        return Err(io_err(format!("creating {}", root.display()))(e));
    }
    match std::fs::symlink_metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(VNodeError::Refused(format!(
            "{} is not a directory (a link?): handoffs refused",
            root.display()
        ))),
        Err(e) => Err(io_err(format!("reading {}", root.display()))(e)),
    }
}

/// The files that make a vnode what it is on any host: its disk (the writable layer) and
/// `state.json` (uid range, machine id). `etc/` is written again at every start.
const TRAVELLING_FILES: [&str; 2] = ["disk.img", "state.json"];

/// Hands a stopped vnode's files over to `target` and removes them here. Idempotent: a
/// handoff already complete is not made again, a half-written one is made again.
pub(super) fn export_local(paths: &VNodePaths, target: &Path) -> Result<u64, VNodeError> {
    let root = target
        .parent()
        .expect("a handoff is in the handoffs' directory");
    check_handoffs_root(root)?;
    let mut bytes = 0;
    if std::fs::symlink_metadata(target).is_err() {
        let part = target.with_extension("part");
        remove_dir_if_present(&part)?;
        create_dir(&part, 0o700)?;
        for name in TRAVELLING_FILES {
            let from = paths.dir.join(name);
            if from.exists() {
                bytes += mounts::copy_sparse(&paths.dir, &from, root, &part.join(name)).map_err(
                    io_err(format!("copying {} to {}", from.display(), part.display())),
                )?;
            }
        }
        std::fs::rename(&part, target).map_err(io_err(format!(
            "renaming {} to {}",
            part.display(),
            target.display()
        )))?;
    }
    remove_dir_if_present(&paths.dir)?;
    Ok(bytes)
}

/// Takes a moved vnode's files from `source` (`state.json` last: it marks them complete)
/// and removes the handoff.
pub(super) fn import_local(paths: &VNodePaths, source: &Path) -> Result<u64, VNodeError> {
    // The handoff is on the shared filesystem: a link there is refused, never followed.
    let root = source
        .parent()
        .expect("a handoff is in the handoffs' directory");
    check_handoffs_root(root)?;
    match std::fs::symlink_metadata(source) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(VNodeError::Refused(format!(
                "the handoff {} is not a directory (a link?): refused",
                source.display()
            )));
        }
        Err(e) => return Err(io_err(format!("reading {}", source.display()))(e)),
    }
    create_dir(&paths.dir, 0o700)?;
    create_dir(&paths.etc, 0o755)?;
    let mut bytes = 0;
    for name in TRAVELLING_FILES {
        let from = source.join(name);
        if std::fs::symlink_metadata(&from).is_ok() {
            let to = paths.dir.join(format!("{name}.part"));
            bytes += mounts::copy_sparse(root, &from, &paths.dir, &to).map_err(io_err(format!(
                "copying {} to {}",
                from.display(),
                to.display()
            )))?;
            std::fs::rename(&to, paths.dir.join(name))
                .map_err(io_err(format!("renaming {}", to.display())))?;
        }
    }
    remove_dir_if_present(source)?;
    Ok(bytes)
}
