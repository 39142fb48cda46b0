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

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Config;
use crate::daemon::now_secs;
use crate::model::vnode::{
    self, Action, DesiredState, HostLimits, Phase, UnitState, VNodeSpec, VNodeStatus,
};
use crate::store::vnodes::StoredSpec;
use crate::store::{EtcdStore, StoreError};
use crate::sys::host::HostProbe;
use crate::sys::mounts;
use crate::sys::systemd::{Property, Systemd, SystemdError, exec_property};
use crate::worker::network::{Network, NetworkError};
use crate::worker::ssh;

/// How long systemd inside a vnode may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum VNodeError {
    #[error("{0}")]
    Spec(#[from] vnode::SpecError),
    #[error("{0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Systemd(#[from] SystemdError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Network(#[from] NetworkError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VNodeError {
    let context = context.into();
    move |source| VNodeError::Io { context, source }
}

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
}

impl VNodePaths {
    pub fn new(config: &Config, id: &str) -> VNodePaths {
        let dir = vnodes_dir(config).join(id);
        let run = Path::new(RUN_DIR).join("vnodes").join(id);
        VNodePaths {
            disk_image: dir.join("disk.img"),
            disk: run.join("disk"),
            upper: run.join("disk/upper"),
            work: run.join("disk/work"),
            etc: dir.join("etc"),
            state: dir.join("state.json"),
            dir,
            lower: run.join("lower"),
            layer: run.join("layer"),
            layer_source: run.join("layer-source"),
            rootfs: run.join("rootfs"),
            exit: run.join("exit"),
            netns: Path::new(RUN_DIR).join("netns").join(id),
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
fn export_local(paths: &VNodePaths, target: &Path) -> Result<u64, VNodeError> {
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
fn import_local(paths: &VNodePaths, source: &Path) -> Result<u64, VNodeError> {
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

fn remove_dir_if_present(dir: &Path) -> Result<(), VNodeError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// The user's persistent data, on the shared filesystem: `/root/nfs` in all their vnodes.
pub fn user_data_dir(config: &Config, user: &str) -> PathBuf {
    config.global_dir().join("users").join(user).join("data")
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

/// Per-vnode memory of the reconciler: what it last reported and how often it failed.
#[derive(Default)]
struct Memo {
    spec: Option<VNodeSpec>,
    status: Option<VNodeStatus>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Set while a task works on the vnode; another trigger only marks it dirty.
    busy: bool,
    dirty: bool,
    /// Wakes a task waiting for a boot when the spec changed meanwhile (a delete or stop
    /// must not wait for a slow boot to time out).
    wake: Arc<tokio::sync::Notify>,
}

pub struct Runtime {
    config: Config,
    host: String,
    systemd: Systemd,
    probe: Arc<dyn HostProbe>,
    network: Arc<Network>,
    memos: Mutex<HashMap<String, Memo>>,
    /// machined is there: register vnodes so `machinectl` and `journalctl -M` know them.
    register_machines: AtomicBool,
    /// Held by whatever changes or reads a vnode's files: its reconciler pass, an image save.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Runtime {
    pub fn new(
        config: Config,
        host: String,
        systemd: Systemd,
        probe: Arc<dyn HostProbe>,
        network: Arc<Network>,
    ) -> Self {
        let register = Path::new("/usr/lib/systemd/systemd-machined").exists()
            || Path::new("/lib/systemd/systemd-machined").exists();
        Runtime {
            config,
            host,
            systemd,
            probe,
            network,
            memos: Mutex::new(HashMap::new()),
            register_machines: AtomicBool::new(register),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The lock of one vnode's files (see [`Runtime::locks`]).
    pub fn vnode_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap();
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(id.to_owned()).or_default().clone()
    }

    pub fn systemd(&self) -> &Systemd {
        &self.systemd
    }

    /// The last spec seen of a vnode of this host.
    pub fn spec(&self, id: &str) -> Option<VNodeSpec> {
        self.memos
            .lock()
            .unwrap()
            .get(id)
            .and_then(|m| m.spec.clone())
    }

    /// Every vnode this worker knows: spec and last status, sorted by id.
    pub fn vnodes(&self) -> Vec<(VNodeSpec, Option<VNodeStatus>)> {
        let memos = self.memos.lock().unwrap();
        let mut list: Vec<_> = memos
            .values()
            .filter_map(|m| m.spec.clone().map(|s| (s, m.status.clone())))
            .collect();
        list.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        list
    }

    pub fn status(&self, id: &str) -> Option<VNodeStatus> {
        self.memos
            .lock()
            .unwrap()
            .get(id)
            .and_then(|m| m.status.clone())
    }

    /// The vnode's container PID 1 on this host, if it runs: the child systemd-nspawn (the
    /// unit's main process) started, held by a pidfd.
    pub async fn leader(&self, id: &str) -> Option<Leader> {
        let info = self
            .systemd
            .unit_info(&vnode::unit_name(id))
            .await
            .ok()
            .flatten()?;
        (info.state() == UnitState::Active)
            .then(|| Leader::of_nspawn(info.main_pid))
            .flatten()
    }

    /// Seeds memory from etcd after a (re)start, so boot times and restart counts survive.
    pub async fn load_statuses(&self, store: &EtcdStore, ids: &[String]) {
        for id in ids {
            if let Ok(Some(status)) = store.vnode_status(id).await
                && status.host == self.host
            {
                self.memos
                    .lock()
                    .unwrap()
                    .entry(id.clone())
                    .or_default()
                    .status = Some(status);
            }
        }
    }

    /// One pass over every spec of this host, and over local vnodes no spec mentions.
    pub async fn reconcile_all(self: &Arc<Self>, store: &EtcdStore, specs: Vec<StoredSpec>) {
        let mut wanted: Vec<String> = Vec::new();
        for stored in specs {
            wanted.push(stored.id.clone());
            self.schedule(store, stored);
        }
        // Units and directories without a spec: stop them, keep the data.
        let mut orphans: Vec<String> = Vec::new();
        if let Ok(units) = self.systemd.list_units("docklet-vnode-*.service").await {
            for (unit, _) in units {
                if let Some(id) = vnode::id_from_unit(&unit) {
                    orphans.push(id.to_owned());
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(vnodes_dir(&self.config)) {
            for entry in entries.flatten() {
                orphans.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        orphans.retain(|id| !wanted.contains(id));
        orphans.sort();
        orphans.dedup();
        for id in orphans {
            let runtime = self.clone();
            tokio::spawn(async move { runtime.park_orphan(&id).await });
        }
        self.memos
            .lock()
            .unwrap()
            .retain(|id, m| wanted.contains(id) || m.busy);
    }

    /// Runs the vnode's task on the spec just read, or marks it to run again (on a fresh read)
    /// when a task is already at work.
    fn schedule(self: &Arc<Self>, store: &EtcdStore, stored: StoredSpec) {
        let id = stored.id.clone();
        {
            let mut memos = self.memos.lock().unwrap();
            let memo = memos.entry(id.clone()).or_default();
            if memo.busy {
                memo.dirty = true;
                memo.wake.notify_one();
                return;
            }
            memo.busy = true;
        }
        let runtime = self.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let mut next = Some(stored);
            loop {
                let stored = match next.take() {
                    Some(stored) => Ok(Some(stored)),
                    None => store.host_vnode_spec(&runtime.host, &id).await,
                };
                let result = match stored {
                    Ok(Some(stored)) => runtime.reconcile_one(&store, stored).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = result {
                    warn!(vnode = %id, "reconcile: {e}");
                }
                let mut memos = runtime.memos.lock().unwrap();
                let Some(memo) = memos.get_mut(&id) else {
                    break;
                };
                if std::mem::take(&mut memo.dirty) {
                    continue;
                }
                memo.busy = false;
                break;
            }
        });
    }

    async fn reconcile_one(&self, store: &EtcdStore, stored: StoredSpec) -> Result<(), VNodeError> {
        let id = stored.id.as_str();
        let lock = self.vnode_lock(id);
        let _held = lock.lock().await;
        let spec = match stored.spec {
            Ok(spec) => spec,
            Err(e) => {
                return self
                    .report(
                        store,
                        id,
                        Phase::Failed,
                        Some(format!("unreadable spec: {e}")),
                    )
                    .await;
            }
        };
        if spec.id != id {
            let reason = format!("the spec under key {id} names id {}", spec.id);
            return self.report(store, id, Phase::Failed, Some(reason)).await;
        }
        self.memos
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default()
            .spec = Some(spec.clone());
        if let Err(e) = vnode::validate_spec(&spec) {
            if spec.state == DesiredState::Deleted {
                // Nothing was ever created for an invalid spec: forget it.
                store.remove_vnode(&self.host, &spec).await?;
                return Ok(());
            }
            return self
                .report(store, id, Phase::Failed, Some(format!("invalid spec: {e}")))
                .await;
        }
        let paths = VNodePaths::new(&self.config, id);
        if let Err(e) = self.take_handoff(&spec, &paths).await {
            return self
                .report(store, id, Phase::Failed, Some(e.to_string()))
                .await;
        }
        let unit = vnode::unit_name(id);
        let info = self.systemd.unit_info(&unit).await?;
        let unit_state = info.as_ref().map_or(UnitState::Absent, |i| i.state());
        let mounted = mounts::is_mount_point(&paths.rootfs);
        match vnode::next_action(spec.state, unit_state, mounted) {
            Action::Nothing => match spec.state {
                DesiredState::Running => {
                    let info = info.unwrap_or_default();
                    self.report_running(store, &spec, &info, None).await
                }
                _ => self.report(store, id, Phase::Stopped, None).await,
            },
            Action::Wait => {
                let phase = if unit_state == UnitState::Starting {
                    Phase::Creating
                } else {
                    Phase::Stopping
                };
                self.report(store, id, phase, None).await
            }
            Action::Start => self.start(store, &spec, &paths).await,
            Action::Stop => {
                self.report(store, id, Phase::Stopping, None).await?;
                self.stop_units(&spec).await?;
                self.release(&paths)?;
                self.report(store, id, Phase::Stopped, None).await
            }
            Action::Unmount => {
                self.release(&paths)?;
                self.report(store, id, Phase::Stopped, None).await
            }
            Action::Delete => {
                self.report(store, id, Phase::Stopping, Some("deleting".into()))
                    .await?;
                // Nothing of a deleted vnode is kept, so there is nothing to shut down
                // cleanly; a vnode still booting would also ignore the poweroff request
                // until its systemd is up, holding the delete for the whole stop timeout.
                if let Err(e) = self.systemd.kill(&unit).await {
                    warn!(vnode = %id, "killing the unit of a deleted vnode: {e}");
                }
                self.stop_units(&spec).await?;
                self.remove_local(&paths)?;
                if let Some(handoff) = &spec.handoff {
                    let dir = handoff_dir(&self.config, &handoff.token);
                    remove_dir_if_present(&dir.with_extension("part"))?;
                    remove_dir_if_present(&dir)?;
                }
                store.remove_vnode(&self.host, &spec).await?;
                self.memos.lock().unwrap().remove(id);
                info!(vnode = %id, "vnode deleted");
                Ok(())
            }
            Action::Export => {
                let Some(handoff) = spec.handoff.clone() else {
                    unreachable!("validate_spec: an exported vnode has a handoff");
                };
                self.report(
                    store,
                    id,
                    Phase::Stopping,
                    Some("moving to another host".into()),
                )
                .await?;
                self.stop_units(&spec).await?;
                self.release(&paths)?;
                let target = handoff_dir(&self.config, &handoff.token);
                let started = Instant::now();
                let bytes = tokio::task::spawn_blocking(move || export_local(&paths, &target))
                    .await
                    .map_err(|e| VNodeError::Refused(format!("handing over: {e}")))??;
                info!(vnode = %id, bytes, ms = started.elapsed().as_millis() as u64, "vnode handed over for a move");
                self.report(store, id, Phase::Exported, None).await
            }
        }
    }

    /// A vnode that moved here takes its files from the handoff before anything else. The
    /// handoff directory goes once they are here, so its absence with the vnode's directory
    /// present means taken (a vnode that never ran hands over an empty directory).
    async fn take_handoff(&self, spec: &VNodeSpec, paths: &VNodePaths) -> Result<(), VNodeError> {
        let Some(handoff) = &spec.handoff else {
            return Ok(());
        };
        if matches!(spec.state, DesiredState::Deleted | DesiredState::Exported) {
            return Ok(());
        }
        let source = handoff_dir(&self.config, &handoff.token);
        if !source.exists() {
            if paths.dir.exists() {
                return Ok(());
            }
            return Err(VNodeError::Refused(format!(
                "vnode {} moved here but its files are not in {} (was the handoff interrupted?)",
                spec.id,
                source.display()
            )));
        }
        let started = Instant::now();
        let (to, from) = (paths.clone(), source.clone());
        let bytes = tokio::task::spawn_blocking(move || import_local(&to, &from))
            .await
            .map_err(|e| VNodeError::Refused(format!("taking over: {e}")))??;
        info!(vnode = %spec.id, bytes, ms = started.elapsed().as_millis() as u64, "vnode taken over from {}", source.display());
        Ok(())
    }

    /// Desired running, unit absent: a first start, a start after a stop or a reboot, or a
    /// restart after a failure (with backoff).
    async fn start(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
    ) -> Result<(), VNodeError> {
        let id = spec.id.as_str();
        let previous = self.status(id);
        // The unit went away on its own: that is a failure, unless we never saw it up.
        if let Some(reason) = self.ended_unexpectedly(previous.as_ref(), paths) {
            let (failures, delay) = {
                let mut memos = self.memos.lock().unwrap();
                let memo = memos.entry(id.to_owned()).or_default();
                memo.failures += 1;
                let delay = Duration::from_secs(vnode::restart_delay_secs(memo.failures));
                memo.retry_at = Some(Instant::now() + delay);
                (memo.failures, delay)
            };
            warn!(vnode = %id, "vnode stopped unexpectedly ({reason}); restart {failures} in {}s", delay.as_secs());
            let _ = std::fs::remove_file(&paths.exit);
            self.report(
                store,
                id,
                Phase::Failed,
                Some(format!("{reason}; restarting in {}s", delay.as_secs())),
            )
            .await?;
        }
        let retry_at = self.memos.lock().unwrap().get(id).and_then(|m| m.retry_at);
        if let Some(at) = retry_at {
            let now = Instant::now();
            if at > now {
                tokio::time::sleep(at - now).await;
            }
        }
        self.report(store, id, Phase::Creating, None).await?;
        let started = Instant::now();
        match self.try_start(store, spec, paths).await {
            Ok((uid_base, image_version, net)) => {
                let boot_ms = started.elapsed().as_millis() as u64;
                let net_us = net.as_micros() as u64;
                info!(vnode = %id, boot_ms, net_us, "vnode running");
                {
                    let mut memos = self.memos.lock().unwrap();
                    let memo = memos.entry(id.to_owned()).or_default();
                    memo.retry_at = None;
                    if let Some(status) = memo.status.as_mut() {
                        status.boot_ms = Some(boot_ms);
                        status.net_us = Some(net_us);
                        status.booted_at = Some(now_secs());
                        status.uid_base = Some(uid_base);
                        status.image_version = Some(image_version);
                    }
                }
                let info = self
                    .systemd
                    .unit_info(&vnode::unit_name(id))
                    .await?
                    .unwrap_or_default();
                self.report_running(store, spec, &info, Some(boot_ms)).await
            }
            Err(e) => {
                let reason = e.to_string();
                warn!(vnode = %id, "cannot start vnode: {reason}");
                {
                    let mut memos = self.memos.lock().unwrap();
                    let memo = memos.entry(id.to_owned()).or_default();
                    memo.failures += 1;
                    memo.retry_at = Some(
                        Instant::now()
                            + Duration::from_secs(vnode::restart_delay_secs(memo.failures)),
                    );
                }
                self.report(store, id, Phase::Failed, Some(reason)).await
            }
        }
    }

    /// Why the unit is gone although we last reported it up, if it is.
    fn ended_unexpectedly(
        &self,
        previous: Option<&VNodeStatus>,
        paths: &VNodePaths,
    ) -> Option<String> {
        let exit = std::fs::read_to_string(&paths.exit).ok();
        let was_up = previous.is_some_and(|s| s.phase == Phase::Running);
        if !was_up && exit.is_none() {
            return None;
        }
        Some(match exit {
            Some(line) => describe_exit(&line),
            None => "the vnode's unit disappeared (host restart?)".to_owned(),
        })
    }

    /// Everything from a checked spec to systemd inside reporting ready. On failure, nothing
    /// this attempt created is left behind (the vnode's own layer of an earlier run stays).
    async fn try_start(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
    ) -> Result<(u32, String, Duration), VNodeError> {
        match store.vnode_host(&spec.id).await? {
            Some(host) if host == self.host => {}
            Some(other) => {
                return Err(VNodeError::Refused(format!(
                    "vnode id {} is registered on host {other}, not here: duplicate id",
                    spec.id
                )));
            }
            None => {
                return Err(VNodeError::Refused(format!(
                    "vnode id {} has no entry in the id index (written by hand?)",
                    spec.id
                )));
            }
        }
        let existing = LocalState::load(&paths.state);
        let capacity = self
            .probe
            .capacity(&self.config.local_dir())
            .map_err(io_err("measuring this host"))?;
        vnode::check_fits(
            spec,
            HostLimits {
                cpus: capacity.cpus,
                memory_bytes: capacity.memory_bytes,
                disk_free_bytes: if existing.is_some() {
                    u64::MAX
                } else {
                    capacity.disk_free_bytes
                },
            },
        )?;
        let image = super::images::start_image(&self.config, store, &spec.image).await?;
        let slot = store.uid_slot(&spec.user).await?;
        let uid_base = vnode::uid_base(slot);

        let created_now = existing.is_none();
        let state = match existing {
            Some(state) if state.uid_base == uid_base => state,
            Some(state) => {
                return Err(VNodeError::Refused(format!(
                    "the vnode's files belong to uid range {} but user {} now has {uid_base}",
                    state.uid_base, spec.user
                )));
            }
            None => self.create_local(spec, paths, uid_base)?,
        };
        let result = self
            .mount_and_boot(store, spec, paths, &state, &image)
            .await;
        let net = match result {
            Ok(net) => net,
            Err(e) => {
                let _ = self
                    .systemd
                    .stop(&vnode::unit_name(&spec.id), STOP_TIMEOUT)
                    .await;
                if let Err(cleanup) = self.release(paths) {
                    warn!(vnode = %spec.id, "cleanup after a failed start: {cleanup}");
                }
                if created_now && let Err(cleanup) = self.remove_local(paths) {
                    warn!(vnode = %spec.id, "cleanup after a failed start: {cleanup}");
                }
                return Err(e);
            }
        };
        Ok((uid_base, image.version, net))
    }

    /// Creates the vnode's directory, disk and layers; `state.json` last.
    fn create_local(
        &self,
        spec: &VNodeSpec,
        paths: &VNodePaths,
        uid_base: u32,
    ) -> Result<LocalState, VNodeError> {
        let result = (|| {
            create_dir(&paths.dir, 0o700)?;
            create_dir(&paths.etc, 0o755)?;
            mounts::make_disk_image(&paths.disk_image, spec.disk_bytes)
                .map_err(io_err("making the vnode's disk"))?;
            self.mount_disk(paths)?;
            create_dir(&paths.upper, 0o755)?;
            create_dir(&paths.work, 0o700)?;
            // The overlay's root is the upper directory: it must belong to root inside.
            let owner = Some(nix::unistd::Uid::from_raw(uid_base));
            let group = Some(nix::unistd::Gid::from_raw(uid_base));
            nix::unistd::chown(&paths.upper, owner, group)
                .map_err(|e| io_err(format!("chown {}", paths.upper.display()))(e.into()))?;
            let state = LocalState {
                user: spec.user.clone(),
                uid_base,
                machine_id: random_machine_id(),
                disk_bytes: spec.disk_bytes,
                created_at: now_secs(),
            };
            write_file(
                &paths.state,
                &serde_json::to_vec_pretty(&state).unwrap(),
                0o600,
            )?;
            Ok::<_, VNodeError>(state)
        })();
        if result.is_err() {
            let _ = mounts::unmount_all(&paths.disk);
            let _ = std::fs::remove_dir_all(&paths.dir);
        }
        result
    }

    pub(crate) fn mount_disk(&self, paths: &VNodePaths) -> Result<(), VNodeError> {
        if mounts::is_mount_point(&paths.disk) {
            return Ok(());
        }
        std::fs::create_dir_all(&paths.disk)
            .map_err(io_err(format!("creating {}", paths.disk.display())))?;
        mounts::mount_disk_image(&paths.disk_image, &paths.disk)
            .map_err(io_err("mounting the vnode's disk"))
    }

    async fn mount_and_boot(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
        state: &LocalState,
        image: &super::images::StartImage,
    ) -> Result<Duration, VNodeError> {
        self.mount_disk(paths)?;
        write_jupyter_config(
            spec,
            paths,
            state.uid_base,
            &jupyter_origin(&self.config, &self.host, &spec.user),
            &ensure_workspace_token(paths)?,
        )?;
        let data = user_data_dir(&self.config, &spec.user);
        if !data.exists() {
            if let Some(parent) = data.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io_err(format!("creating {}", parent.display())))?;
            }
            // Nodes of the user starting on other hosts make it at the same time. Two mkdirs
            // of one name at once on GlusterFS can leave the replicas disagreeing on what the
            // directory is (it then reads EIO), so each host makes one of its own name and
            // renames it into place; the loser's goes.
            let own = data.with_extension(format!("new.{}.{}", self.host, random_suffix()));
            std::fs::create_dir(&own).map_err(io_err(format!("creating {}", own.display())))?;
            let owner = Some(nix::unistd::Uid::from_raw(state.uid_base));
            let group = Some(nix::unistd::Gid::from_raw(state.uid_base));
            nix::unistd::chown(&own, owner, group)
                .map_err(|e| io_err(format!("chown {}", own.display()))(e.into()))?;
            if rename_no_replace(&own, &data).is_err() {
                let _ = std::fs::remove_dir(&own);
                if !data.is_dir() {
                    return Err(io_err(format!("creating {}", data.display()))(
                        io::Error::other("another host's directory did not appear"),
                    ));
                }
            }
        }
        for dir in [&paths.lower, &paths.layer, &paths.rootfs] {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let mut views = vec![(&image.system, &paths.lower)];
        if let Some(layer) = &image.layer {
            views.push((layer, &paths.layer));
            write_file(
                &paths.layer_source,
                layer.display().to_string().as_bytes(),
                0o600,
            )?;
        }
        for (source, view) in &views {
            if !mounts::is_mount_point(view) {
                let userns = mounts::userns_fd(state.uid_base, vnode::UID_RANGE_SIZE)
                    .map_err(io_err("user namespace for the image"))?;
                mounts::mount_idmapped(source, view, &userns)
                    .map_err(io_err("mounting the image"))?;
            }
        }
        if !mounts::is_mount_point(&paths.rootfs) {
            // Top first: the user image's layer over the system image.
            let lowers: Vec<&Path> = views.iter().rev().map(|(_, view)| view.as_path()).collect();
            mounts::mount_overlay(&lowers, &paths.upper, &paths.work, &paths.rootfs)
                .map_err(io_err("root filesystem"))?;
        }
        if !mounts::is_mount_point(&paths.netns) {
            mounts::create_netns(&paths.netns).map_err(io_err("network namespace"))?;
        }
        let net = self
            .network
            .attach(store, spec, &paths.netns, &paths.etc)
            .await?;
        let ssh_dir = ssh::user_ssh_dir(&self.config, &spec.user);
        ssh::ensure_user_keys(&ssh_dir, &spec.user, state.uid_base)
            .map_err(io_err("the user's SSH keys"))?;
        // sshd reads /etc/docklet/ssh/authorized_keys only below directories root owns.
        create_dir(&paths.etc.join("ssh"), 0o755)?;
        let owner = Some(nix::unistd::Uid::from_raw(state.uid_base));
        let group = Some(nix::unistd::Gid::from_raw(state.uid_base));
        nix::unistd::chown(&paths.etc, owner, group)
            .map_err(|e| io_err(format!("chown {}", paths.etc.display()))(e.into()))?;
        let _ = std::fs::remove_file(&paths.exit);
        let properties = self.unit_properties(spec, paths, state, &data);
        let unit = vnode::unit_name(&spec.id);
        self.systemd
            .ensure_slice(
                &vnode::vnode_slice(&spec.user, &spec.id),
                Self::slice_properties(spec),
                START_TIMEOUT,
            )
            .await?;
        // A failed unit of an earlier run would block the name.
        let _ = self.systemd.manager().reset_failed_unit(&unit).await;
        let wake = self
            .memos
            .lock()
            .unwrap()
            .entry(spec.id.clone())
            .or_default()
            .wake
            .clone();
        let boot = self
            .systemd
            .start_transient(&unit, properties, START_TIMEOUT);
        tokio::pin!(boot);
        let booted = loop {
            tokio::select! {
                result = &mut boot => break result,
                _ = wake.notified() => {
                    let still_wanted = matches!(
                        store.host_vnode_spec(&self.host, &spec.id).await,
                        Ok(Some(StoredSpec { spec: Ok(VNodeSpec { state: DesiredState::Running, .. }), .. }))
                    );
                    if !still_wanted {
                        return Err(VNodeError::Refused(
                            "boot interrupted: the desired state changed".into(),
                        ));
                    }
                }
            }
        };
        match booted {
            Ok(()) => Ok(net),
            Err(SystemdError::JobFailed { result, .. }) => {
                let exit = std::fs::read_to_string(&paths.exit)
                    .map(|l| describe_exit(&l))
                    .unwrap_or_else(|_| format!("start job {result}"));
                Err(VNodeError::Refused(format!(
                    "the vnode did not boot: {exit} (journalctl -u {unit} on {})",
                    self.host
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn unit_properties(
        &self,
        spec: &VNodeSpec,
        paths: &VNodePaths,
        state: &LocalState,
        data: &Path,
    ) -> Vec<Property> {
        use zbus::Variant;
        let register = if self.register_machines.load(Ordering::Relaxed) {
            "yes"
        } else {
            "no"
        };
        let nspawn: Vec<String> = vec![
            "/usr/bin/systemd-nspawn".into(),
            "--quiet".into(),
            "--boot".into(),
            "--keep-unit".into(),
            "--notify-ready=yes".into(),
            "--settings=no".into(),
            "--console=passive".into(),
            "--link-journal=no".into(),
            format!("--register={register}"),
            format!("--machine={}", spec.id),
            format!("--hostname={}", vnode::hostname(spec.index)),
            format!("--uuid={}", state.machine_id),
            format!("--directory={}", paths.rootfs.display()),
            format!(
                "--private-users={}:{}",
                state.uid_base,
                vnode::UID_RANGE_SIZE
            ),
            "--private-users-ownership=off".into(),
            format!("--bind={}:/root/nfs", data.display()),
            format!("--bind-ro={}:/etc/docklet", paths.etc.display()),
            format!(
                "--bind-ro={}:/etc/docklet/ssh",
                ssh::user_ssh_dir(&self.config, &spec.user).display()
            ),
        ];
        // systemd passes how the service ended; the worker reads it to explain failures.
        let record_exit: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "echo \"$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS\" > {}",
                paths.exit.display()
            ),
        ];
        vec![
            (
                "Description",
                Variant::new(format!(
                    "Docklet vnode {} (user {}, cluster {}, {})",
                    spec.id,
                    spec.user,
                    spec.cluster,
                    vnode::hostname(spec.index)
                )),
            ),
            (
                "Slice",
                Variant::new(vnode::vnode_slice(&spec.user, &spec.id)),
            ),
            ("Type", Variant::new("notify")),
            ("Delegate", Variant::new(true)),
            ("CollectMode", Variant::new("inactive-or-failed")),
            ("KillMode", Variant::new("mixed")),
            (
                "TimeoutStartUSec",
                Variant::new(START_TIMEOUT.as_micros() as u64),
            ),
            (
                "TimeoutStopUSec",
                Variant::new(STOP_TIMEOUT.as_micros() as u64),
            ),
            // systemd puts nspawn itself into the vnode's netns, and the container inherits it.
            // (nspawn 252's own --network-namespace-path cannot join a netns its user namespace
            // does not own: systemd issue #36363, fixed upstream only in 2026.)
            (
                "NetworkNamespacePath",
                Variant::new(paths.netns.display().to_string()),
            ),
            exec_property("ExecStart", &nspawn),
            exec_property("ExecStopPost", &record_exit),
        ]
    }

    /// The vnode's slice: its limits, over the vnode and every command run in it.
    fn slice_properties(spec: &VNodeSpec) -> Vec<Property> {
        use zbus::Variant;
        vec![
            (
                "Description",
                Variant::new(format!("Docklet vnode {} and its commands", spec.id)),
            ),
            (
                "CPUQuotaPerSecUSec",
                Variant::new(u64::from(spec.cpu_millis) * 1000),
            ),
            ("MemoryMax", Variant::new(spec.memory_bytes)),
            ("TasksMax", Variant::new(u64::from(spec.tasks))),
            // The controllers whose files the worker's metrics read (`memory.current`, ...).
            ("CPUAccounting", Variant::new(true)),
            ("MemoryAccounting", Variant::new(true)),
            ("TasksAccounting", Variant::new(true)),
        ]
    }

    /// Stops the vnode's unit (its systemd shuts down), then its slice: commands still
    /// running in it (terminals, exec) end with it.
    async fn stop_units(&self, spec: &VNodeSpec) -> Result<(), VNodeError> {
        self.systemd
            .stop(&vnode::unit_name(&spec.id), STOP_TIMEOUT)
            .await?;
        self.systemd
            .stop(&vnode::vnode_slice(&spec.user, &spec.id), STOP_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Unmounts the rootfs and the image view and removes the network namespace; keeps the
    /// vnode's own layer.
    fn release(&self, paths: &VNodePaths) -> Result<(), VNodeError> {
        mounts::unmount_all(&paths.rootfs).map_err(io_err("unmounting the rootfs"))?;
        mounts::unmount_all(&paths.lower).map_err(io_err("unmounting the image"))?;
        mounts::unmount_all(&paths.layer).map_err(io_err("unmounting the image's layer"))?;
        mounts::unmount_all(&paths.disk).map_err(io_err("unmounting the vnode's disk"))?;
        mounts::remove_netns(&paths.netns).map_err(io_err("removing the network namespace"))?;
        match std::fs::remove_dir_all(&paths.run) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", paths.run.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Everything local of a vnode, its layer included (not the user's data).
    fn remove_local(&self, paths: &VNodePaths) -> Result<(), VNodeError> {
        self.release(paths)?;
        match std::fs::remove_dir_all(&paths.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", paths.dir.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// A unit or directory no spec asks for: stop it and release its mounts, keep its files.
    async fn park_orphan(&self, id: &str) {
        if vnode::validate_id(id).is_err() {
            warn!(
                "ignoring {id:?} under {}: not a vnode id",
                vnodes_dir(&self.config).display()
            );
            return;
        }
        let paths = VNodePaths::new(&self.config, id);
        let unit = vnode::unit_name(id);
        let running = matches!(self.systemd.unit_info(&unit).await, Ok(Some(_)));
        if !running && !mounts::is_mount_point(&paths.rootfs) && !paths.run.exists() {
            return;
        }
        warn!(vnode = %id, "no spec in etcd for vnode {id}: stopping it; its files stay in {}", paths.dir.display());
        if let Err(e) = self.systemd.stop(&unit, STOP_TIMEOUT).await {
            warn!(vnode = %id, "stopping orphan: {e}");
        }
        if let Err(e) = self.release(&paths) {
            warn!(vnode = %id, "releasing orphan: {e}");
        }
    }

    async fn report_running(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        info: &crate::sys::systemd::UnitInfo,
        boot_ms: Option<u64>,
    ) -> Result<(), VNodeError> {
        let leader = Leader::of_nspawn(info.main_pid).map(|l| l.pid);
        let state = LocalState::load(&VNodePaths::new(&self.config, &spec.id).state);
        let changed = {
            let mut memos = self.memos.lock().unwrap();
            let memo = memos.entry(spec.id.clone()).or_default();
            let mut status = memo.status.clone().unwrap_or_default();
            let before = status.clone();
            status.id = spec.id.clone();
            status.host = self.host.clone();
            status.phase = Phase::Running;
            status.reason = None;
            status.unit = vnode::unit_name(&spec.id);
            status.leader_pid = leader;
            if boot_ms.is_some() {
                status.boot_ms = boot_ms;
            }
            if status.booted_at.is_none() && info.active_enter_usec > 0 {
                status.booted_at = Some(info.active_enter_usec / 1_000_000);
            }
            if let Some(state) = &state {
                status.uid_base = Some(state.uid_base);
            }
            status.restarts = memo.failures;
            let changed = status != before;
            if changed {
                status.updated_at = now_secs();
                memo.status = Some(status.clone());
            }
            changed.then_some(status)
        };
        if let Some(status) = changed {
            store.put_vnode_status(&status).await?;
        }
        Ok(())
    }

    /// Writes the status when phase or reason changed.
    async fn report(
        &self,
        store: &EtcdStore,
        id: &str,
        phase: Phase,
        reason: Option<String>,
    ) -> Result<(), VNodeError> {
        let changed = {
            let mut memos = self.memos.lock().unwrap();
            let memo = memos.entry(id.to_owned()).or_default();
            let mut status = memo.status.clone().unwrap_or_default();
            if memo.status.is_some() && status.phase == phase && status.reason == reason {
                None
            } else {
                status.id = id.to_owned();
                status.host = self.host.clone();
                status.phase = phase;
                status.reason = reason;
                status.unit = vnode::unit_name(id);
                if phase != Phase::Running {
                    status.leader_pid = None;
                }
                status.restarts = memo.failures;
                status.updated_at = now_secs();
                memo.status = Some(status.clone());
                Some(status)
            }
        };
        if let Some(status) = changed {
            if phase == Phase::Failed {
                warn!(vnode = %id, "vnode failed: {}", status.reason.as_deref().unwrap_or(""));
            }
            store.put_vnode_status(&status).await?;
        }
        Ok(())
    }
}

/// The directory of `image`'s current version and the version's name. `current` must be a
/// link to a version beside it, read without following it: a link planted elsewhere (`/`, a
/// user's tree) is refused, never booted.
pub fn resolve_image(config: &Config, image: &str) -> Result<(PathBuf, String), VNodeError> {
    vnode::validate_image_name(image)?;
    let image_dir = images_dir(config).join(image);
    let link = image_dir.join("current");
    let target = std::fs::read_link(&link).map_err(|e| {
        VNodeError::Refused(format!("unknown image {image:?}: {} ({e})", link.display()))
    })?;
    let version = target
        .to_str()
        .filter(|v| !v.is_empty() && !v.contains('/') && *v != "." && *v != "..")
        .ok_or_else(|| {
            VNodeError::Refused(format!(
                "image {image:?}: {} points at {}, not at a version beside it",
                link.display(),
                target.display()
            ))
        })?
        .to_owned();
    let dir = image_dir.join(&version);
    check_image_dir(image, &dir)?;
    Ok((dir, version))
}

/// Refuses a version directory of `image` that is not what an image is: the images
/// directory, the image's and the version's directories and the way down to systemd are real
/// directories (no links) that only root may change, and systemd is a regular file.
pub fn check_image_dir(image: &str, dir: &Path) -> Result<(), VNodeError> {
    use std::os::unix::fs::MetadataExt;
    let refuse =
        |why: String| VNodeError::Refused(format!("image {image:?} at {} {why}", dir.display()));
    let root_dirs = [dir.parent().and_then(Path::parent), dir.parent(), Some(dir)];
    for path in root_dirs.into_iter().flatten() {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| refuse(format!("cannot be read: {}: {e}", path.display())))?;
        if !meta.is_dir() {
            return Err(refuse(format!(
                "is not an image: {} is not a directory",
                path.display()
            )));
        }
        // Root's (the worker's own user where a test runs it unprivileged).
        let owner_ok = meta.uid() == 0 || meta.uid() == nix::unistd::geteuid().as_raw();
        if !owner_ok || meta.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "is not an image: {} may be changed by others than root (owner {}, mode {:o})",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    for step in ["usr", "usr/lib", "usr/lib/systemd"] {
        let path = dir.join(step);
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(refuse(format!(
                "is incomplete: no directory {}",
                path.display()
            )));
        }
    }
    let init = dir.join("usr/lib/systemd/systemd");
    if !std::fs::symlink_metadata(&init).is_ok_and(|m| m.is_file()) {
        return Err(refuse(format!("is incomplete: no {}", init.display())));
    }
    Ok(())
}

/// `SERVICE_RESULT EXIT_CODE EXIT_STATUS` as systemd gave them to ExecStopPost, for people.
pub fn describe_exit(line: &str) -> String {
    let mut parts = line.split_whitespace();
    let result = parts.next().unwrap_or("unknown");
    let code = parts.next().unwrap_or("");
    let status = parts.next().unwrap_or("");
    match (result, code) {
        ("success", _) => "systemd inside the vnode powered off".to_owned(),
        (_, "exited") => format!("systemd-nspawn exited with status {status} ({result})"),
        (_, "killed" | "dumped") => {
            format!("systemd-nspawn was killed by signal {status} ({result})")
        }
        (result, _) => format!("the unit ended with result {result}"),
    }
}

/// A vnode's PID 1, found where the vnode cannot put a process of its own: among the children
/// of systemd-nspawn, the unit's main process, it is the one that is its namespace's init. It
/// is held by a pidfd, so what is read about it by number (its namespaces under /proc) is
/// checked to still be its own afterwards: a PID the vnode's death let someone else take is
/// never entered.
pub struct Leader {
    pub pid: u32,
    pidfd: OwnedFd,
}

impl Leader {
    pub fn of_nspawn(nspawn: u32) -> Option<Leader> {
        if nspawn == 0 {
            return None;
        }
        let children =
            std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .find_map(|pid| {
                let leader = Leader {
                    pid,
                    pidfd: pidfd_open(pid).ok()?,
                };
                (is_namespace_init(pid) && parent_of(pid) == Some(nspawn) && leader.alive())
                    .then_some(leader)
            })
    }

    /// Whether the process is still the one the pidfd was opened on (a pidfd turns readable
    /// when its process exits).
    pub fn alive(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// One of its namespaces (`net`, `mnt`, ...), certainly its own: opened by number, then
    /// the pidfd checked.
    pub fn namespace(&self, kind: &str) -> std::io::Result<std::fs::File> {
        let file = std::fs::File::open(format!("/proc/{}/ns/{kind}", self.pid))?;
        if self.alive() {
            Ok(file)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the vnode stopped",
            ))
        }
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

fn parent_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

fn is_namespace_init(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() >= 2 && ids.last() == Some(&"1")
        })
}

fn random_machine_id() -> String {
    use rand::RngExt;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a node's workspace token is kept on its host: in its directory, root's alone.
fn workspace_token_file(paths: &VNodePaths) -> PathBuf {
    paths.dir.join("workspace-token")
}

/// The node's workspace token, made at its first start on this host: random (independent of
/// every other node's and of any site secret), kept so that Jupyter, which reads it from its
/// configuration, and the masters' workspace proxy, which asks the agent, agree across
/// restarts. A node moved to another host gets a new one there.
fn ensure_workspace_token(paths: &VNodePaths) -> Result<String, VNodeError> {
    let path = workspace_token_file(paths);
    match std::fs::read_to_string(&path) {
        Ok(token) if vnode::is_workspace_token(&token) => Ok(token),
        Ok(_) | Err(_) => {
            let token = vnode::new_workspace_token();
            write_file(&path, token.as_bytes(), 0o600)?;
            Ok(token)
        }
    }
}

impl Runtime {
    /// A running (or once started) node's workspace token, for the agent.
    pub fn workspace_token(&self, id: &str) -> Result<String, VNodeError> {
        let path = workspace_token_file(&VNodePaths::new(&self.config, id));
        match std::fs::read_to_string(&path) {
            Ok(token) if vnode::is_workspace_token(&token) => Ok(token),
            _ => Err(VNodeError::Refused(format!(
                "vnode {id} is not running (it has no workspace token yet)"
            ))),
        }
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

/// Creates a directory with exactly `mode`, whatever the daemon's umask (0027): the root of a
/// vnode's filesystem must be 0755 for its unprivileged users.
fn create_dir(path: &Path, mode: u32) -> Result<(), VNodeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(io_err(format!("creating {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), VNodeError> {
    replace_file(path, data, mode).map_err(io_err(format!("writing {}", path.display())))
}

/// Replaces `path` by rename, with exactly `mode` (not the worker's umask): readers (glibc
/// reading a vnode's /etc/hosts, say) never see half a file.
pub fn replace_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    replace_file_owned(path, data, mode, None)
}

/// [`replace_file`], the file owned by `owner` (user and group) when given. It has its mode
/// from its creation on (never the umask's, never readable by more while it is written), and
/// a link planted at its temporary name is not followed.
fn replace_file_owned(path: &Path, data: &[u8], mode: u32, owner: Option<u32>) -> io::Result<()> {
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

/// The workspace URL prefix of a vnode, as the workspace proxy forwards it.
pub fn workspace_base_url(spec: &VNodeSpec) -> String {
    crate::model::workspace::base_path(&spec.user, &spec.cluster, spec.index)
}

/// Jupyter's configuration inside the vnode (`/etc/docklet/jupyter_notebook_config.json`): it
/// listens on loopback behind the socket-activated proxy, under the workspace URL, and only
/// with the vnode's workspace token ([`vnode::workspace_token`]: the master's proxy derives
/// the same and adds it; people never see it).
fn write_jupyter_config(
    spec: &VNodeSpec,
    paths: &VNodePaths,
    jupyter_uid: u32,
    origin: &str,
    token: &str,
) -> Result<(), VNodeError> {
    let file = paths.etc.join("jupyter_notebook_config.json");
    let config = serde_json::json!({
        "NotebookApp": {
            "ip": "127.0.0.1",
            "port": 8889,
            // Never drift to another port: the socket proxy only knows 8889.
            "port_retries": 0,
            "allow_origin": origin,
            "quit_button": false,
            "base_url": workspace_base_url(spec),
            "token": token,
            "password": "",
            "allow_root": true,
            "open_browser": false,
            "notebook_dir": "/root",
            "allow_remote_access": true,
            "trust_xheaders": true,
        }
    });
    // It holds the token that opens the workspace: readable by Jupyter's user (root inside,
    // `jupyter_uid` here) alone, never by another account of the vnode, from its first byte.
    replace_file_owned(
        &file,
        serde_json::to_string_pretty(&config).unwrap().as_bytes(),
        0o600,
        Some(jupyter_uid),
    )
    .map_err(io_err(format!("writing {}", file.display())))
}

/// Renames `from` to `to` unless `to` exists (a rename over an empty directory would replace
/// one a vnode may already have bound). Where the filesystem lacks `RENAME_NOREPLACE`, it
/// checks first.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if done == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) && !to.exists() {
        return std::fs::rename(from, to);
    }
    Err(e)
}

/// The origin Jupyter names in its CORS answers: the user's workspace host (or, on a site
/// without `workspace_domain`, where workspaces are refused, the portal's).
fn jupyter_origin(config: &Config, host: &str, user: &str) -> String {
    config
        .workspace_origin(user, host)
        .unwrap_or_else(|| portal_origin(config, host))
}

/// `scheme://host:port` of the portal.
fn portal_origin(config: &Config, host: &str) -> String {
    let url = config.portal_url_or(host);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_explained() {
        assert_eq!(
            describe_exit("exit-code exited 1\n"),
            "systemd-nspawn exited with status 1 (exit-code)"
        );
        assert_eq!(
            describe_exit("signal killed KILL"),
            "systemd-nspawn was killed by signal KILL (signal)"
        );
        assert!(describe_exit("success exited 0").contains("powered off"));
    }

    #[test]
    fn the_portal_origin_drops_the_path() {
        let config = Config {
            portal_url: Some("https://portal.docklet.test:8000/".into()),
            ..Config::default()
        };
        assert_eq!(
            portal_origin(&config, "tb1"),
            "https://portal.docklet.test:8000"
        );
        assert_eq!(portal_origin(&Config::default(), "tb2"), "https://tb2:8000");
        let with_workspaces = Config {
            workspace_domain: Some("ws.docklet.test".into()),
            ..config
        };
        assert_eq!(
            jupyter_origin(&with_workspaces, "tb1", "alice"),
            "https://alice.ws.docklet.test:8000"
        );
    }

    #[test]
    fn paths_stay_under_their_roots() {
        let config = Config::default();
        let paths = VNodePaths::new(&config, "alice-c1-0");
        assert!(paths.disk_image.starts_with(config.local_dir()));
        assert!(paths.upper.starts_with(&paths.disk));
        assert!(paths.rootfs.starts_with(RUN_DIR));
        assert_eq!(paths.netns, Path::new("/run/docklet/netns/alice-c1-0"));
    }

    #[test]
    fn missing_images_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            fs_prefix: dir.path().to_owned(),
            ..Config::default()
        };
        let e = resolve_image(&config, "nope").unwrap_err().to_string();
        assert!(e.contains("unknown image \"nope\""), "{e}");
        let version = images_dir(&config).join("base/v1");
        std::fs::create_dir_all(&version).unwrap();
        std::os::unix::fs::symlink("v1", images_dir(&config).join("base/current")).unwrap();
        let e = resolve_image(&config, "base").unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        std::fs::create_dir_all(version.join("usr/lib/systemd")).unwrap();
        std::fs::write(version.join("usr/lib/systemd/systemd"), "").unwrap();
        let (dir, v) = resolve_image(&config, "base").unwrap();
        assert_eq!(v, "v1");
        // Links planted where the worker looks are refused, not followed.
        let current = images_dir(&config).join("base/current");
        for (target, why) in [
            ("/", "not at a version beside it"),
            ("../../..", "not at a version beside it"),
            ("v2", "is not a directory"),
        ] {
            std::fs::remove_file(&current).unwrap();
            std::os::unix::fs::symlink(target, &current).unwrap();
            let _ = std::os::unix::fs::symlink("/", images_dir(&config).join("base/v2"));
            let e = resolve_image(&config, "base").unwrap_err().to_string();
            assert!(e.contains(why), "{target}: {e}");
        }
        std::fs::remove_file(&current).unwrap();
        std::os::unix::fs::symlink("v1", &current).unwrap();
        std::fs::remove_file(version.join("usr/lib/systemd/systemd")).unwrap();
        std::os::unix::fs::symlink("/bin/sh", version.join("usr/lib/systemd/systemd")).unwrap();
        let e = resolve_image(&config, "base").unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::remove_file(version.join("usr/lib/systemd/systemd")).unwrap();
        std::fs::write(version.join("usr/lib/systemd/systemd"), "").unwrap();
        std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = resolve_image(&config, "base").unwrap_err().to_string();
        assert!(e.contains("may be changed by others than root"), "{e}");
        std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(dir.ends_with("base/v1"));
    }
}
