//! Where the worker keeps things on the host: a vnode's pieces ([`VNodePaths`]), the system
//! images, the users' data, what it keeps about a created vnode ([`LocalState`]), and files
//! replaced whole there.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where one vnode's pieces live.
#[derive(Debug, Clone)]
pub struct VNodePaths {
    pub dir: PathBuf,
    pub disk_image: PathBuf,
    pub disk: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub etc: PathBuf,
    pub state: PathBuf,
    pub run: PathBuf,
    pub lower: PathBuf,
    /// A user image's layer (idmapped like `lower`), above it; `layer_source` names the
    /// unpacked layer mounted there.
    pub layer: PathBuf,
    pub layer_source: PathBuf,
    pub rootfs: PathBuf,
    pub exit: PathBuf,
    pub netns: PathBuf,
    /// A batch task's command was started (its content: when); how it ended (written by
    /// its unit's ExecStopPost).
    pub task_started: PathBuf,
    pub task_exit: PathBuf,
}

impl VNodePaths {
    pub fn new(config: &Config, id: &str) -> VNodePaths {
        VNodePaths::under(config, Path::new(RUN_DIR), id)
    }

    /// With the run-time pieces under `run_dir` instead of [`RUN_DIR`] (the reconciler's
    /// tests).
    pub fn under(config: &Config, run_dir: &Path, id: &str) -> VNodePaths {
        let dir = vnodes_dir(config).join(id);
        let run = run_dir.join("vnodes").join(id);
        VNodePaths {
            disk_image: dir.join("disk.img"),
            disk: run.join("disk"),
            upper: run.join("disk/upper"),
            work: run.join("disk/work"),
            etc: dir.join("etc"),
            state: dir.join("state.json"),
            task_started: dir.join("task-started"),
            task_exit: dir.join("task-exit"),
            dir,
            lower: run.join("lower"),
            layer: run.join("layer"),
            layer_source: run.join("layer-source"),
            rootfs: run.join("rootfs"),
            exit: run.join("exit"),
            netns: run_dir.join("netns").join(id),
            run,
        }
    }
}

pub const RUN_DIR: &str = "/run/docklet";

pub fn vnodes_dir(config: &Config) -> PathBuf {
    config.local_dir().join("vnodes")
}

pub fn images_dir(config: &Config) -> PathBuf {
    config.local_dir().join("images")
}

/// The images that have a `current` version here, by name, with that version (the name of
/// the directory `current` points at; `current` itself where it is a directory of its own).
pub fn installed_images(config: &Config) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(images_dir(config))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let current = entry.path().join("current");
            current.exists().then_some(())?;
            let version = std::fs::read_link(&current)
                .ok()
                .and_then(|target| Some(target.file_name()?.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "current".into());
            Some((entry.file_name().into_string().ok()?, version))
        })
        .collect()
}

/// The user's persistent data, on the shared filesystem: `/root/nfs` in all their vnodes.
pub fn user_data_dir(config: &Config, user: &str) -> PathBuf {
    config.user_data_dir(user)
}

/// What the worker keeps about a created vnode (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalState {
    pub user: String,
    pub uid_base: u32,
    /// The vnode's machine id (32 hex digits), stable across restarts.
    pub machine_id: String,
    pub disk_bytes: u64,
    pub created_at: u64,
}

impl LocalState {
    /// Reads `state.json`; a link there is not followed (nothing is read).
    pub fn load(path: &Path) -> Option<LocalState> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut text = Vec::new();
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .ok()?
            .read_to_end(&mut text)
            .ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Eight random lower-case letters and digits, for unit names.
pub fn random_suffix() -> String {
    use rand::RngExt;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Replaces `path` by rename, with exactly `mode` (not the worker's umask): readers (glibc
/// reading a vnode's /etc/hosts, say) never see half a file.
pub fn replace_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    replace_file_owned(path, data, mode, None)
}

/// [`replace_file`], the file owned by `owner` (user and group) when given. It has its mode
/// from its creation on (never the umask's, never readable by more while it is written), and
/// a link planted at its temporary name is not followed.
pub(crate) fn replace_file_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<u32>,
) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // A temporary name of this call's own: two writers of one file at once (a vnode's
    // start and a network pass) each rename a complete file, and the last one wins.
    let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), random_suffix()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(data)?;
            if let Some(id) = owner {
                nix::unistd::fchown(
                    &file,
                    Some(nix::unistd::Uid::from_raw(id)),
                    Some(nix::unistd::Gid::from_raw(id)),
                )?;
            }
            file.set_permissions(std::fs::Permissions::from_mode(mode))
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_their_roots() {
        let config = Config::default();
        let paths = VNodePaths::new(&config, "alice-c1-0");
        assert!(paths.disk_image.starts_with(config.local_dir()));
        assert!(paths.upper.starts_with(&paths.disk));
        assert!(paths.rootfs.starts_with(RUN_DIR));
        assert_eq!(paths.netns, Path::new("/run/docklet/netns/alice-c1-0"));
    }
}
