//! The reconciler's state (what it last saw and reported of each vnode, one lock per vnode)
//! and its decision loop: every pass asks [`vnode::next_action`] what to do.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{Instrument, info, warn};

use super::handoff::{export_local, handoff_dir};
use super::unit::STOP_TIMEOUT;
use super::{Leader, VNodeError, remove_dir_if_present};
use crate::config::Config;
use crate::daemon::now_secs;
use crate::model::vnode::{self, Action, DesiredState, Phase, UnitState, VNodeSpec, VNodeStatus};
use crate::store::EtcdStore;
use crate::store::vnodes::StoredSpec;
use crate::sys::host::HostProbe;
use crate::sys::mounts::Mounts;
use crate::sys::systemd::Units;
use crate::worker::network::AttachVnode;
use crate::worker::paths::{LocalState, VNodePaths, vnodes_dir};

/// Per-vnode memory of the reconciler: what it last reported and how often it failed.
#[derive(Default)]
pub(super) struct Memo {
    pub(super) spec: Option<VNodeSpec>,
    pub(super) status: Option<VNodeStatus>,
    pub(super) failures: u32,
    pub(super) retry_at: Option<Instant>,
    /// Set while a task works on the vnode; another trigger only marks it dirty.
    pub(super) busy: bool,
    pub(super) dirty: bool,
    /// Wakes a task waiting for a boot when the spec changed meanwhile (a delete or stop
    /// must not wait for a slow boot to time out).
    pub(super) wake: Arc<tokio::sync::Notify>,
}

/// The host as the reconciler touches it, each side effect behind its seam: the real ones in
/// the worker, recording fakes in the reconciler's tests.
pub struct HostSeams {
    pub units: Arc<dyn Units>,
    pub mounts: Arc<dyn Mounts>,
    pub network: Arc<dyn AttachVnode>,
    pub probe: Arc<dyn HostProbe>,
    /// Where the vnodes' run-time pieces go ([`crate::worker::paths::RUN_DIR`]).
    pub run_dir: std::path::PathBuf,
}

pub struct Runtime {
    pub(super) config: Config,
    pub(super) host: String,
    pub(super) units: Arc<dyn Units>,
    pub(super) mounts: Arc<dyn Mounts>,
    pub(super) network: Arc<dyn AttachVnode>,
    pub(super) probe: Arc<dyn HostProbe>,
    run_dir: std::path::PathBuf,
    pub(super) memos: Mutex<HashMap<String, Memo>>,
    /// machined is there: register vnodes so `machinectl` and `journalctl -M` know them.
    pub(super) register_machines: AtomicBool,
    /// Held by whatever changes or reads a vnode's files: its reconciler pass, an image save.
    pub(super) locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Runtime {
    pub fn new(config: Config, host: String, seams: HostSeams) -> Self {
        let register = Path::new("/usr/lib/systemd/systemd-machined").exists()
            || Path::new("/lib/systemd/systemd-machined").exists();
        Runtime {
            config,
            host,
            units: seams.units,
            mounts: seams.mounts,
            network: seams.network,
            probe: seams.probe,
            run_dir: seams.run_dir,
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

    pub fn units(&self) -> &dyn Units {
        self.units.as_ref()
    }

    /// Where the vnode's pieces are on this host.
    pub fn paths(&self, id: &str) -> VNodePaths {
        VNodePaths::under(&self.config, &self.run_dir, id)
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
            .units
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
        if let Ok(units) = self.units.list_units("docklet-vnode-*.service").await {
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
    pub(super) fn schedule(self: &Arc<Self>, store: &EtcdStore, stored: StoredSpec) {
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

    pub(super) async fn reconcile_one(
        &self,
        store: &EtcdStore,
        stored: StoredSpec,
    ) -> Result<(), VNodeError> {
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
        // Everything logged from here on carries the vnode, its user and its cluster.
        let span = tracing::info_span!(
            "vnode",
            vnode = %spec.id,
            user = %spec.user,
            cluster = %spec.cluster
        );
        self.reconcile_spec(store, spec).instrument(span).await
    }

    async fn reconcile_spec(&self, store: &EtcdStore, spec: VNodeSpec) -> Result<(), VNodeError> {
        let id = spec.id.as_str();
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
        let paths = self.paths(id);
        if let Err(e) = self.take_handoff(&spec, &paths).await {
            return self
                .report(store, id, Phase::Failed, Some(e.to_string()))
                .await;
        }
        let unit = vnode::unit_name(id);
        let info = self.units.unit_info(&unit).await?;
        let unit_state = info.as_ref().map_or(UnitState::Absent, |i| i.state());
        let mounted = self.mounts.is_mount_point(&paths.rootfs);
        match vnode::next_action(spec.state, unit_state, mounted) {
            Action::Nothing => match spec.state {
                DesiredState::Running => {
                    let info = info.unwrap_or_default();
                    self.report_running(store, &spec, &info, None).await?;
                    self.reconcile_task(store, &spec).await
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
            Action::Start => {
                self.start(store, &spec, &paths).await?;
                if self.status(id).is_some_and(|s| s.phase == Phase::Running) {
                    self.reconcile_task(store, &spec).await?;
                }
                Ok(())
            }
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
            Action::Delete => self.delete(store, &spec, &paths).await,
            Action::Export => self.export(store, &spec, paths).await,
        }
    }

    /// Nothing of a deleted vnode is kept: unit, mounts, files, a handoff of it, its spec.
    async fn delete(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
    ) -> Result<(), VNodeError> {
        let id = spec.id.as_str();
        self.report(store, id, Phase::Stopping, Some("deleting".into()))
            .await?;
        // Nothing of a deleted vnode is kept, so there is nothing to shut down cleanly; a
        // vnode still booting would also ignore the poweroff request until its systemd is
        // up, holding the delete for the whole stop timeout.
        if let Err(e) = self.units.kill(&vnode::unit_name(id)).await {
            warn!("killing the unit of a deleted vnode: {e}");
        }
        self.stop_units(spec).await?;
        self.remove_local(paths)?;
        if let Some(handoff) = &spec.handoff {
            let dir = handoff_dir(&self.config, &handoff.token);
            remove_dir_if_present(&dir.with_extension("part"))?;
            remove_dir_if_present(&dir)?;
        }
        store.remove_vnode(&self.host, spec).await?;
        self.memos.lock().unwrap().remove(id);
        info!(action = "vnode.delete", "vnode {id} deleted");
        Ok(())
    }

    /// A drain moves the vnode: stop it, release it, and copy its files into the handoff
    /// directory the new host takes them from.
    async fn export(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: VNodePaths,
    ) -> Result<(), VNodeError> {
        let id = spec.id.as_str();
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
        self.stop_units(spec).await?;
        self.release(&paths)?;
        let target = handoff_dir(&self.config, &handoff.token);
        let started = Instant::now();
        let bytes = tokio::task::spawn_blocking(move || export_local(&paths, &target))
            .await
            .map_err(|e| VNodeError::Refused(format!("handing over: {e}")))??;
        let ms = started.elapsed().as_millis() as u64;
        info!(
            bytes,
            ms,
            action = "vnode.export",
            "vnode {id} handed over for a move: {bytes} bytes in {ms} ms"
        );
        self.report(store, id, Phase::Exported, None).await
    }

    /// A unit or directory no spec asks for: stop it and release its mounts, keep its files.
    pub(super) async fn park_orphan(&self, id: &str) {
        if vnode::validate_id(id).is_err() {
            warn!(
                "ignoring {id:?} under {}: not a vnode id",
                vnodes_dir(&self.config).display()
            );
            return;
        }
        let paths = self.paths(id);
        let unit = vnode::unit_name(id);
        let running = matches!(self.units.unit_info(&unit).await, Ok(Some(_)));
        if !running && !self.mounts.is_mount_point(&paths.rootfs) && !paths.run.exists() {
            return;
        }
        warn!(vnode = %id, "no spec in etcd for vnode {id}: stopping it; its files stay in {}", paths.dir.display());
        if let Err(e) = self.units.stop(&unit, STOP_TIMEOUT).await {
            warn!(vnode = %id, "stopping orphan: {e}");
        }
        if let Err(e) = self.release(&paths) {
            warn!(vnode = %id, "releasing orphan: {e}");
        }
    }

    pub(super) async fn report_running(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        info: &crate::sys::systemd::UnitInfo,
        boot_ms: Option<u64>,
    ) -> Result<(), VNodeError> {
        let leader = Leader::of_nspawn(info.main_pid).map(|l| l.pid);
        let state = LocalState::load(&self.paths(&spec.id).state);
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
    pub(super) async fn report(
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
