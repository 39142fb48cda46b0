//! System image updates on a worker (see [`crate::model::system_image`]): when the latest
//! update of a system image installed here is newer than its `current` version, the worker
//! makes that version — the current one with the user image's layer applied, read through a
//! read-only overlay of the two so that overlayfs itself applies whiteouts and opaque
//! directories — in `<version>.part`, renames it, and moves `current` to it. It reports each
//! step at `system-image-builds/<name>/<host>`.
//!
//! Versions no vnode here runs on any more, other than `current`, are removed (the promise
//! `tools/build-image` makes too); so are `.part` leftovers of an interrupted build, which
//! the next pass starts again. A failed build is not retried until the worker restarts or a
//! newer update comes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::daemon::now_secs;
use crate::model::image::ImageRef;
use crate::model::system_image::{self, BuildState, SystemImageBuild, SystemImageUpdate};
use crate::store::etcd::Changes;
use crate::store::{EtcdStore, StoreError};
use crate::sys::mounts;
use crate::worker::paths;
use crate::worker::vnode::image::{check_image_dir, resolve_image};
use crate::worker::vnode::image::{ensure_layer, remove_tree};

/// Carries out the system image updates on this host.
pub struct Builder {
    config: Config,
    host: String,
    /// Names of the system images a task works on (builds, removes versions of) now.
    running: Mutex<HashSet<String>>,
    /// `(name, version)` of the builds that failed here, not retried.
    failed: Mutex<HashSet<(String, String)>>,
}

impl Builder {
    pub fn new(config: Config, host: String) -> Arc<Builder> {
        Arc::new(Builder {
            config,
            host,
            running: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashSet::new()),
        })
    }

    /// For each system image here, one task at a time: the build this host owes, if any, then
    /// the removal of the versions nothing uses (never during a build of the same image).
    fn pass(self: &Arc<Self>, store: &EtcdStore, updates: Vec<SystemImageUpdate>) {
        for (name, current) in paths::installed_images(&self.config) {
            if !self.running.lock().unwrap().insert(name.clone()) {
                continue;
            }
            let update = updates
                .iter()
                .find(|u| {
                    u.name == name
                        && system_image::needs_build(&current, u)
                        && !self
                            .failed
                            .lock()
                            .unwrap()
                            .contains(&(u.name.clone(), u.version.clone()))
                })
                .cloned();
            let (builder, store) = (self.clone(), store.clone());
            tokio::spawn(async move {
                if let Some(update) = &update {
                    builder.build(&store, update).await;
                }
                let dir = paths::images_dir(&builder.config).join(&name);
                let prune_name = name.clone();
                let pruned =
                    tokio::task::spawn_blocking(move || prune_versions(&dir, &prune_name)).await;
                if let Err(e) = pruned {
                    warn!(image = %name, "removing unused versions: {e}");
                }
                builder.running.lock().unwrap().remove(&name);
            });
        }
    }

    async fn build(&self, store: &EtcdStore, update: &SystemImageUpdate) {
        let since = now_secs();
        let started = std::time::Instant::now();
        let report = |state: BuildState| {
            let build = SystemImageBuild {
                host: self.host.clone(),
                version: update.version.clone(),
                state,
                updated_at: now_secs(),
            };
            async move {
                if let Err(e) = store.put_system_image_build(&update.name, &build).await {
                    warn!(image = %update.name, "reporting the build: {e}");
                }
            }
        };
        let step = |step: String| BuildState::Building { step, since };
        info!(image = %update.name, version = %update.version, from = %update.from, "building a system image version");
        report(step(format!("unpacking the layer of {}", update.from))).await;
        let layer = {
            let (config, update) = (self.config.clone(), update.clone());
            tokio::task::spawn_blocking(move || unpack_layer(&config, &update)).await
        };
        let made = match layer {
            Ok(Ok(layer)) => {
                report(step("copying".into())).await;
                let (config, update) = (self.config.clone(), update.clone());
                tokio::task::spawn_blocking(move || make_version(&config, &update, &layer))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        };
        match made {
            Ok(()) => {
                info!(image = %update.name, version = %update.version, ms = started.elapsed().as_millis() as u64, "system image version ready");
                report(BuildState::Ready).await;
            }
            Err(error) => {
                warn!(image = %update.name, version = %update.version, "system image update failed: {error}");
                self.failed
                    .lock()
                    .unwrap()
                    .insert((update.name.clone(), update.version.clone()));
                report(BuildState::Failed { error }).await;
            }
        }
    }
}

/// The user image's layer, unpacked here (checked against its SHA-256).
fn unpack_layer(config: &Config, update: &SystemImageUpdate) -> Result<PathBuf, String> {
    let Ok(ImageRef::User { owner, name }) = ImageRef::parse(&update.from) else {
        return Err(format!("{:?} is not a user image", update.from));
    };
    ensure_layer(config, owner, name, &update.layer).map_err(|e| e.to_string())
}

/// Makes `images/<name>/<version>` from the current version and `layer`, then points
/// `current` at it. Nothing but a `.part` directory (removed here, or by the next pass) is
/// left on failure.
fn make_version(config: &Config, update: &SystemImageUpdate, layer: &Path) -> Result<(), String> {
    let Ok(ImageRef::System(name)) = ImageRef::parse(&update.name) else {
        return Err(format!("{:?} is not a system image name", update.name));
    };
    if !system_image::valid_version(&update.version) {
        return Err(format!("invalid version {:?}", update.version));
    }
    let (system, _) = resolve_image(config, name).map_err(|e| e.to_string())?;
    let dir = paths::images_dir(config).join(name);
    let target = dir.join(&update.version);
    let part = dir.join(format!("{}.part", update.version));
    let merged = config
        .local_dir()
        .join("image-work")
        .join(format!("system-{name}"));
    let cleanup = || {
        let _ = mounts::unmount_all(&merged);
        let _ = std::fs::remove_dir(&merged);
    };
    cleanup();
    let result = (|| {
        remove_tree(&part).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&merged).map_err(|e| format!("{}: {e}", merged.display()))?;
        mounts::mount_layers_readonly(&[layer, &system], &merged).map_err(|e| e.to_string())?;
        crate::sys::tree::copy_tree(&merged, &part)
            .map_err(|e| format!("copying {}: {e}", merged.display()))?;
        sync_filesystem(&part)?;
        std::fs::rename(&part, &target).map_err(|e| format!("{}: {e}", part.display()))?;
        check_image_dir(name, &target).map_err(|e| e.to_string())?;
        let link = dir.join("current.new");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&update.version, &link)
            .and_then(|()| std::fs::rename(&link, dir.join("current")))
            .map_err(|e| format!("moving {}/current: {e}", dir.display()))
    })();
    cleanup();
    if result.is_err() {
        let _ = remove_tree(&part);
    }
    result
}

/// Flushes the filesystem holding `path`: `current` never points at a version whose files
/// are still only in memory.
fn sync_filesystem(path: &Path) -> Result<(), String> {
    let dir = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    nix::unistd::syncfs(&dir).map_err(|e| format!("syncing {}: {e}", path.display()))
}

/// Removes the versions of system image `name` (named as [`system_image::version_at`] names
/// them) that are neither `current` nor in use, and `.part` leftovers. In use: the kernel
/// shows the version mounted (a vnode's idmapped lower layer is a mount of it), which holds
/// from the worker's first moment, before it has read its vnodes' statuses.
fn prune_versions(dir: &Path, name: &str) {
    let roots = match mounts::mounted_roots() {
        Ok(roots) => roots,
        Err(e) => return warn!("cannot read the mounts, no version removed: {e}"),
    };
    let in_use = |version: &str| {
        roots
            .iter()
            .any(|root| root.ends_with(Path::new(name).join(version)))
    };
    let current = std::fs::read_link(dir.join("current"))
        .ok()
        .and_then(|target| Some(target.file_name()?.to_string_lossy().into_owned()));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let version = file_name.strip_suffix(".part").unwrap_or(&file_name);
        let unused = file_name.ends_with(".part")
            || (Some(version) != current.as_deref() && !in_use(version));
        if system_image::valid_version(version) && unused {
            match remove_tree(&entry.path()) {
                Ok(()) => {
                    info!(path = %entry.path().display(), "unused system image version removed")
                }
                Err(e) => warn!("{e}"),
            }
        }
    }
}

/// Follows the updates: a pass at start, after every change, and every half minute.
pub async fn builder_loop(builder: Arc<Builder>, store: EtcdStore) -> Result<(), StoreError> {
    let (updates, revision) = store.system_image_updates_and_revision().await?;
    builder.pass(&store, updates);
    let mut changes = Changes::new(
        store.watch_system_images(revision).await?,
        Duration::from_secs(30),
    );
    loop {
        changes.next().await?;
        builder.pass(&store, store.system_image_updates().await?);
    }
}
