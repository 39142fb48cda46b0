//! User images on a worker: saving a vnode's layer when the catalog asks this host to
//! (unpacking a saved layer before a vnode starts from it is [`super::vnode::image`]).
//!
//! Saving (`images/<owner>/<name>` pending `Saving` on this host): under the vnode's lock
//! (no start or stop meanwhile), with a running vnode's cgroup frozen so that what is read
//! is one moment of its disk, GNU tar reads the overlay's upper directory through an
//! idmapped view that shifts the vnode's uid range back to 0..65536 — the layer is then
//! owned like the system image and fits any user's range. Whiteouts (0:0 character devices),
//! opaque directories and file capabilities are kept. A vnode that itself started from a
//! user image gets that image's layer folded in first (in a staging copy), so an image is
//! always one layer on a system image. The tar goes to `<version>.tar.part` on the shared
//! filesystem, hashed and measured as it is written, renamed when complete, and only then
//! recorded as the image's `current` version.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::Config;
use crate::daemon::now_secs;
use crate::model::image::{self, ImageRecord, ImageRef, ImageVersion, Pending};
use crate::model::vnode::{self, UnitState, VNodeSpec};
use crate::store::etcd::Changes;
use crate::store::{EtcdStore, StoreError};
use crate::sys::mounts;
use crate::worker::paths::{LocalState, VNodePaths};
use crate::worker::vnode::image::{
    ensure_layer, first_lines, hex, image_files_dir, layer_dir, layer_file, remove_tree,
    resolve_image,
};
use crate::worker::vnode::{Runtime, VNodeError};

/// Carries out the saves the catalog asks of this host.
pub struct Saver {
    config: Config,
    host: String,
    runtime: Arc<Runtime>,
    /// `owner/name` of the saves under way here.
    running: Mutex<HashSet<String>>,
}

impl Saver {
    pub fn new(config: Config, host: String, runtime: Arc<Runtime>) -> Arc<Saver> {
        Arc::new(Saver {
            config,
            host,
            runtime,
            running: Mutex::new(HashSet::new()),
        })
    }

    /// Starts every save pending for this host and every confirmed delete that is not
    /// already under way, and forgets the unpacked layers of images that are gone.
    pub fn pass(self: &Arc<Self>, store: &EtcdStore, records: Vec<ImageRecord>) {
        self.prune_layers(&records);
        for record in records {
            let ours = match &record.pending {
                Some(Pending::Saving { host, .. }) => *host == self.host,
                Some(Pending::Deleting {
                    confirmed: true, ..
                }) => true,
                _ => false,
            };
            if !ours || !self.running.lock().unwrap().insert(record.reference()) {
                continue;
            }
            let saver = self.clone();
            let store = store.clone();
            tokio::spawn(async move {
                let reference = record.reference();
                if matches!(record.pending, Some(Pending::Saving { .. })) {
                    saver.save(&store, record).await;
                } else {
                    saver.remove(&store, &record).await;
                }
                saver.running.lock().unwrap().remove(&reference);
            });
        }
    }

    /// Removes a deleted image's files (every worker races for it; all of them are
    /// idempotent), then its record.
    async fn remove(&self, store: &EtcdStore, record: &ImageRecord) {
        let (owner, name) = (record.owner.as_str(), record.name.as_str());
        let dirs = [
            image_files_dir(&self.config, owner, name),
            layer_dir(&self.config, owner, name, "x")
                .parent()
                .expect("a version's parent")
                .to_owned(),
        ];
        let removed =
            tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|dir| remove_tree(dir)))
                .await;
        match removed {
            Ok(Ok(())) => match store.finish_image_delete(owner, name).await {
                Ok(()) => info!(image = %record.reference(), "image removed"),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => warn!(image = %record.reference(), "forgetting the image: {e}"),
            },
            Ok(Err(e)) => warn!(image = %record.reference(), "removing the image: {e}"),
            Err(e) => warn!(image = %record.reference(), "removing the image: {e}"),
        }
    }

    /// Unpacked layers of images no longer in the catalog: no vnode can use them (a delete
    /// waits until no cluster does).
    fn prune_layers(&self, records: &[ImageRecord]) {
        let root = self.config.local_dir().join("image-layers");
        let known: HashSet<(String, String)> = records
            .iter()
            .map(|r| (r.owner.clone(), r.name.clone()))
            .collect();
        for owner in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for image in std::fs::read_dir(owner.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let key = (
                    owner.file_name().to_string_lossy().into_owned(),
                    image.file_name().to_string_lossy().into_owned(),
                );
                if !known.contains(&key) {
                    match remove_tree(&image.path()) {
                        Ok(()) => {
                            info!(image = %format!("{}/{}", key.0, key.1), "unpacked layers removed")
                        }
                        Err(e) => warn!("{e}"),
                    }
                }
            }
        }
    }

    async fn save(&self, store: &EtcdStore, record: ImageRecord) {
        let Some(Pending::Saving {
            vnode: id,
            max_bytes,
            ..
        }) = record.pending.clone()
        else {
            return;
        };
        let (owner, name) = (record.owner.as_str(), record.name.as_str());
        let started = std::time::Instant::now();
        info!(image = %record.reference(), vnode = %id, "saving an image");
        let written = Arc::new(AtomicU64::new(0));
        let progress = {
            let (store, written) = (store.clone(), written.clone());
            let (owner, name, id) = (owner.to_owned(), name.to_owned(), id.clone());
            tokio::spawn(async move {
                let mut last = 0;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let now = written.load(Ordering::Relaxed);
                    if now != last {
                        last = now;
                        let _ = store.image_save_progress(&owner, &name, &id, now).await;
                    }
                }
            })
        };
        let result = self
            .write_layer(store, &record, &id, max_bytes, &written)
            .await;
        progress.abort();
        let outcome = match result {
            Ok(version) => {
                let file = layer_file(&self.config, owner, name, &version.version);
                match store.finish_image_save(owner, name, &id, &version).await {
                    Ok(replaced) => {
                        info!(
                            image = %record.reference(),
                            bytes = version.bytes,
                            ms = started.elapsed().as_millis() as u64,
                            "image saved"
                        );
                        if let Some(old) = replaced {
                            let old = layer_file(&self.config, owner, name, &old.version);
                            let _ = std::fs::remove_file(old);
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&file);
                        Err(e.to_string())
                    }
                }
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(reason) = outcome {
            warn!(image = %record.reference(), vnode = %id, "save failed: {reason}");
            if let Err(e) = store.fail_image_save(owner, name, &id, &reason).await {
                warn!(image = %record.reference(), "recording the failed save: {e}");
            }
        }
    }

    /// Writes the layer file of a new version of `record` from vnode `id`.
    async fn write_layer(
        &self,
        store: &EtcdStore,
        record: &ImageRecord,
        id: &str,
        max_bytes: u64,
        written: &Arc<AtomicU64>,
    ) -> Result<ImageVersion, VNodeError> {
        let refused = |m: String| VNodeError::Refused(m);
        let paths = self.runtime.paths(id);
        let Some(spec) = self.runtime.spec(id) else {
            return Err(refused(format!("vnode {id} is not on host {}", self.host)));
        };
        // No start, stop or move of the vnode while its disk is read.
        let lock = self.runtime.vnode_lock(id);
        let _held = lock.lock().await;
        let state = LocalState::load(&paths.state)
            .ok_or_else(|| refused(format!("vnode {id} has no files on host {}", self.host)))?;
        let (base, parent) = self.image_beneath(store, &spec, &paths).await?;
        let unit = self
            .runtime
            .units()
            .unit_info(&vnode::unit_name(id))
            .await?;
        // The vnode's slice: commands run in it (a terminal) are frozen too.
        let cgroup = unit
            .filter(|u| u.state() == UnitState::Active)
            .map(|u| vnode::vnode_cgroup(&u.control_group, &spec.user, id).to_owned());
        let mount_disk_here = !mounts::is_mount_point(&paths.disk);
        if mount_disk_here {
            self.runtime.mount_disk(&paths)?;
        }
        let version = image::new_version(now_secs(), rand::random());
        let file = layer_file(&self.config, &record.owner, &record.name, &version);
        let job = {
            let (config, paths, file, written) = (
                self.config.clone(),
                paths.clone(),
                file.clone(),
                written.clone(),
            );
            let (uid_base, id) = (state.uid_base, id.to_owned());
            tokio::task::spawn_blocking(move || {
                let layer = Layer {
                    paths: &paths,
                    id: &id,
                    uid_base,
                    cgroup: cgroup.as_deref(),
                    parent: parent
                        .as_ref()
                        .map(|(layer, system)| (layer.as_path(), system.as_path())),
                };
                pack_layer(&config, &layer, &file, max_bytes, &written)
            })
        };
        let packed = job.await;
        if mount_disk_here {
            let _ = mounts::unmount_all(&paths.disk);
        }
        let (bytes, sha256) = packed
            .map_err(|e| refused(format!("saving: {e}")))?
            .map_err(refused)?;
        Ok(ImageVersion {
            version,
            base,
            bytes,
            sha256,
            saved_at: now_secs(),
            saved_from: id.to_owned(),
        })
    }

    /// The image the vnode runs on: its system image's name, and for a user image the
    /// unpacked layer (folded into the new one) with the system image under it.
    async fn image_beneath(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
    ) -> Result<(String, Option<(PathBuf, PathBuf)>), VNodeError> {
        let refused = |m: String| VNodeError::Refused(m);
        Ok(match ImageRef::parse(&spec.image)? {
            ImageRef::System(name) => (name.to_owned(), None),
            ImageRef::User { owner, name } => {
                let current = store
                    .image(owner, name)
                    .await?
                    .and_then(|(record, _)| record.current)
                    .ok_or_else(|| {
                        refused(format!("the vnode's own image {} is gone", spec.image))
                    })?;
                // The layer the running rootfs has, if it runs; else the one it would start on.
                let running_layer = std::fs::read_to_string(&paths.layer_source)
                    .ok()
                    .map(|s| PathBuf::from(s.trim()))
                    .filter(|p| p.is_dir());
                let layer = match running_layer {
                    Some(layer) => layer,
                    None => {
                        let (config, owner, name, current) = (
                            self.config.clone(),
                            owner.to_owned(),
                            name.to_owned(),
                            current.clone(),
                        );
                        tokio::task::spawn_blocking(move || {
                            ensure_layer(&config, &owner, &name, &current)
                        })
                        .await
                        .map_err(|e| refused(format!("unpacking: {e}")))??
                    }
                };
                let (system, _) = resolve_image(&self.config, &current.base)?;
                (current.base, Some((layer, system)))
            }
        })
    }
}

/// A running vnode's cgroup, frozen until dropped.
struct Freezer {
    file: PathBuf,
}

impl Freezer {
    fn freeze(control_group: &str) -> Result<Freezer, String> {
        let dir = super::metrics::unified_root().join(control_group.trim_start_matches('/'));
        let file = dir.join("cgroup.freeze");
        std::fs::write(&file, "1").map_err(|e| {
            format!(
                "cannot freeze the vnode ({}) to read a consistent disk: {e}",
                file.display()
            )
        })?;
        let freezer = Freezer { file };
        // The write only starts freezing: wait until every process stopped.
        for _ in 0..200 {
            let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l == "frozen 1") {
                return Ok(freezer);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err("the vnode's processes did not freeze within 5 s; try again".into())
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.file, "0") {
            warn!("cannot thaw {}: {e}", self.file.display());
        }
    }
}

/// What a save reads.
struct Layer<'a> {
    paths: &'a VNodePaths,
    id: &'a str,
    uid_base: u32,
    /// The running vnode's cgroup, frozen while its layer is read.
    cgroup: Option<&'a str>,
    /// The unpacked layer of the user image the vnode started from, and its system image.
    parent: Option<(&'a Path, &'a Path)>,
}

/// Packs the vnode's layer (with its parent folded in) into `file`; returns its size and
/// SHA-256. Nothing is left at `file` or beside it on failure.
fn pack_layer(
    config: &Config,
    layer: &Layer,
    file: &Path,
    max_bytes: u64,
    written: &AtomicU64,
) -> Result<(u64, String), String> {
    let work = config.local_dir().join("image-work").join(layer.id);
    let view = work.join("upper");
    let staging = work.join("staging");
    let cleanup = || {
        let _ = mounts::unmount_all(&view);
        let _ = remove_tree(&work);
    };
    cleanup();
    let result = (|| {
        std::fs::create_dir_all(&view).map_err(|e| format!("creating {}: {e}", view.display()))?;
        let userns = mounts::userns_fd_mapping(layer.uid_base, 0, vnode::UID_RANGE_SIZE)
            .map_err(|e| format!("user namespace: {e}"))?;
        mounts::mount_idmapped(&layer.paths.upper, &view, &userns)
            .map_err(|e| format!("viewing the vnode's layer: {e}"))?;
        if let Some((parent, _)) = layer.parent {
            crate::sys::tree::copy_tree(parent, &staging)
                .map_err(|e| format!("copying the image's layer {}: {e}", parent.display()))?;
        }
        let _frozen = layer.cgroup.map(Freezer::freeze).transpose()?;
        let root = match layer.parent {
            None => view.clone(),
            Some((_, system)) => {
                fold(&view, &staging, system)?;
                staging.clone()
            }
        };
        let list = work.join("members");
        write_member_list(&root, &list)?;
        write_tar(&root, &list, file, max_bytes, written)
    })();
    cleanup();
    result
}

/// Applies `upper` to `staging` (a copy of the parent layer) as overlayfs would show it:
/// what `upper` deletes (whiteouts) or replaces (opaque directories, a file where a
/// directory was) is removed from the copy before `upper`'s entries are unpacked over it.
/// Whiteouts of the system image's files stay: they still hide them. Whiteouts of what only
/// the parent layer had go: overlayfs shows a whiteout as a file in a directory that no
/// lower layer shares.
fn fold(upper: &Path, staging: &Path, system: &Path) -> Result<(), String> {
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = upper.join(&relative);
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let relative = relative.join(entry.file_name());
            let meta = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            let target = staging.join(&relative);
            let existing = std::fs::symlink_metadata(&target).ok();
            let replaces = match &existing {
                None => false,
                Some(old) => {
                    is_whiteout(&meta)
                        || old.is_dir() != meta.is_dir()
                        || (meta.is_dir() && is_opaque(&entry.path()))
                }
            };
            if replaces {
                remove_tree(&target).map_err(|e| e.to_string())?;
            }
            if meta.is_dir() {
                stack.push(relative);
            }
        }
    }
    crate::sys::tree::copy_over(upper, staging, kept_in_layer)
        .map_err(|e| format!("folding the vnode's changes into its image's layer failed: {e}"))?;
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = staging.join(&relative);
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let relative = relative.join(entry.file_name());
            let meta = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            if meta.is_dir() {
                stack.push(relative);
            } else if is_whiteout(&meta)
                && std::fs::symlink_metadata(system.join(&relative)).is_err()
            {
                std::fs::remove_file(entry.path())
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Extended attributes a layer keeps: overlayfs's opaque marks, file capabilities and the
/// users' own; not overlayfs's bookkeeping of where a copied-up file came from.
const XATTRS: [&str; 3] = [
    "--xattrs-include=trusted.overlay.opaque",
    "--xattrs-include=security.capability",
    "--xattrs-include=user.*",
];

/// [`XATTRS`], for a copy.
fn kept_in_layer(name: &std::ffi::CStr) -> bool {
    let name = name.to_bytes();
    name == b"trusted.overlay.opaque"
        || name == b"security.capability"
        || name.starts_with(b"user.")
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut value = [0u8; 2];
    // SAFETY: a NUL-terminated path and a buffer of the length given.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

/// Every path under `root` that goes into the image (see
/// [`image::excluded_from_image`]), NUL-separated, directories before what they hold.
fn write_member_list(root: &Path, list: &Path) -> Result<(), String> {
    let mut out = io::BufWriter::new(
        std::fs::File::create(list).map_err(|e| format!("{}: {e}", list.display()))?,
    );
    out.write_all(b".\0").map_err(|e| e.to_string())?;
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let relative = relative.join(entry.file_name());
            let text = relative.to_string_lossy();
            if image::excluded_from_image(&text) {
                continue;
            }
            out.write_all(b"./").map_err(|e| e.to_string())?;
            out.write_all(relative.as_os_str().as_encoded_bytes())
                .map_err(|e| e.to_string())?;
            out.write_all(b"\0").map_err(|e| e.to_string())?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(relative);
            }
        }
    }
    out.flush().map_err(|e| e.to_string())
}

/// Runs tar over the listed members of `root` into `file` (through `.part`), hashing and
/// counting; stops past `max_bytes`.
fn write_tar(
    root: &Path,
    list: &Path,
    file: &Path,
    max_bytes: u64,
    written: &AtomicU64,
) -> Result<(u64, String), String> {
    let dir = file.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let part = file.with_extension("tar.part");
    let result = (|| {
        let mut out =
            std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
        let mut tar = Command::new("tar")
            .args([
                "--create",
                "--file=-",
                "--numeric-owner",
                "--xattrs",
                "--sparse",
            ])
            .args(XATTRS)
            .arg("--directory")
            .arg(root)
            .args(["--no-recursion", "--null", "--files-from"])
            .arg(list)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        let mut stdout = tar.stdout.take().expect("piped");
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = stdout.read(&mut buffer).map_err(|e| format!("tar: {e}"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max_bytes {
                let _ = tar.kill();
                let _ = tar.wait();
                return Err(format!(
                    "image size quota exceeded: the layer is over the {} left",
                    crate::model::host::human_bytes(max_bytes)
                ));
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n])
                .map_err(|e| format!("writing {}: {e}", part.display()))?;
            written.store(total, Ordering::Relaxed);
        }
        let output = tar.wait_with_output().map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!("tar failed: {}", first_lines(&output.stderr)));
        }
        out.sync_all()
            .map_err(|e| format!("writing {}: {e}", part.display()))?;
        std::fs::rename(&part, file).map_err(|e| format!("renaming {}: {e}", part.display()))?;
        Ok((total, hex(&hasher.finalize())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// The first lines of a tool's complaints: enough to say what went wrong.
pub async fn saver_loop(saver: Arc<Saver>, store: EtcdStore) -> Result<(), StoreError> {
    let (records, revision) = store.images_and_revision().await?;
    saver.pass(&store, records);
    let mut changes = Changes::new(store.watch_images(revision).await?, Duration::from_secs(30));
    loop {
        changes.next().await?;
        saver.pass(&store, store.all_images().await?);
    }
}
