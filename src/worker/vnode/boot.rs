//! From a checked spec to a booted unit, and back: the vnode's files and disk, its mounts
//! (the image idmapped to the user's range, the overlay), its network namespace, the unit;
//! and stopping, releasing and removing them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::handoff::{handoff_dir, import_local};
use super::image::StartImage;
use super::jupyter::{ensure_workspace_token, jupyter_origin, write_jupyter_config};
use super::runtime::Runtime;
use super::unit::{START_TIMEOUT, STOP_TIMEOUT, describe_exit};
use super::{VNodeError, create_dir, io_err, write_file};
use crate::daemon::now_secs;
use crate::model::vnode::{self, DesiredState, HostLimits, Phase, VNodeSpec, VNodeStatus};
use crate::store::EtcdStore;
use crate::store::vnodes::StoredSpec;
use crate::sys::systemd::SystemdError;
use crate::worker::network::AttachInputs;
use crate::worker::paths::user_data_dir;
use crate::worker::paths::{LocalState, VNodePaths};
use crate::worker::ssh;

/// How long a node waits for the user's directories another host claimed to make.
const USER_TREE_WAIT: Duration = Duration::from_secs(30);

impl Runtime {
    /// Desired running, unit absent: a first start, a start after a stop or a reboot, or a
    /// restart after a failure (with backoff).
    pub(super) async fn start(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
    ) -> Result<(), VNodeError> {
        let id = spec.id.as_str();
        self.note_unexpected_end(store, id, paths).await?;
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
                info!(
                    boot_ms,
                    net_us,
                    action = "vnode.start",
                    "vnode {id} running: started in {boot_ms} ms"
                );
                self.remember_boot(id, boot_ms, net_us, uid_base, image_version);
                let info = self
                    .units
                    .unit_info(&vnode::unit_name(id))
                    .await?
                    .unwrap_or_default();
                self.report_running(store, spec, &info, Some(boot_ms)).await
            }
            Err(e) => {
                let reason = e.to_string();
                warn!(
                    action = "vnode.start-failed",
                    "cannot start vnode {id}: {reason}"
                );
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

    /// The unit went away on its own: that is a failure (counted, with a backoff before the
    /// restart), unless we never saw it up.
    async fn note_unexpected_end(
        &self,
        store: &EtcdStore,
        id: &str,
        paths: &VNodePaths,
    ) -> Result<(), VNodeError> {
        let previous = self.status(id);
        if let Some(reason) = self.ended_unexpectedly(previous.as_ref(), paths) {
            let (failures, delay) = {
                let mut memos = self.memos.lock().unwrap();
                let memo = memos.entry(id.to_owned()).or_default();
                memo.failures += 1;
                let delay = Duration::from_secs(vnode::restart_delay_secs(memo.failures));
                memo.retry_at = Some(Instant::now() + delay);
                (memo.failures, delay)
            };
            warn!(
                action = "vnode.restart",
                "vnode {id} stopped unexpectedly ({reason}); restart {failures} in {} s",
                delay.as_secs()
            );
            let _ = std::fs::remove_file(&paths.exit);
            self.report(
                store,
                id,
                Phase::Failed,
                Some(format!("{reason}; restarting in {}s", delay.as_secs())),
            )
            .await?;
        }
        Ok(())
    }

    /// What the reports of a vnode that just booted carry.
    fn remember_boot(
        &self,
        id: &str,
        boot_ms: u64,
        net_us: u64,
        uid_base: u32,
        image_version: String,
    ) {
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

    /// Why the unit is gone although we last reported it up, if it is.
    pub(super) fn ended_unexpectedly(
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

    /// What a start needs from etcd and the host, read before anything on the host changes:
    /// the id is this host's, the vnode fits, its image, the user's uid range and network.
    async fn plan_start(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
    ) -> Result<StartPlan, VNodeError> {
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
        let image = super::image::start_image(&self.config, store, &spec.image).await?;
        let uid_base = vnode::uid_base(store.uid_slot(&spec.user).await?);
        if let Some(state) = &existing
            && state.uid_base != uid_base
        {
            return Err(VNodeError::Refused(format!(
                "the vnode's files belong to uid range {} but user {} now has {uid_base}",
                state.uid_base, spec.user
            )));
        }
        let network = AttachInputs::read(store, &spec.user).await?;
        Ok(StartPlan {
            uid_base,
            image,
            existing,
            network,
        })
    }

    /// Everything from a checked spec to systemd inside reporting ready. On failure, nothing
    /// this attempt created is left behind (the vnode's own layer of an earlier run stays).
    pub(super) async fn try_start(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
    ) -> Result<(u32, String, Duration), VNodeError> {
        let plan = self.plan_start(store, spec, paths).await?;
        let created_now = plan.existing.is_none();
        let state = match plan.existing.clone() {
            Some(state) => state,
            None => self.create_local(spec, paths, plan.uid_base)?,
        };
        let result = self.mount_and_boot(store, spec, paths, &state, &plan).await;
        let net = match result {
            Ok(net) => net,
            Err(e) => {
                let _ = self
                    .units
                    .stop(&vnode::unit_name(&spec.id), STOP_TIMEOUT)
                    .await;
                if let Err(cleanup) = self.release(paths) {
                    warn!(
                        "cleanup after a failed start of vnode {}: {cleanup}",
                        spec.id
                    );
                }
                if created_now && let Err(cleanup) = self.remove_local(paths) {
                    warn!(
                        "cleanup after a failed start of vnode {}: {cleanup}",
                        spec.id
                    );
                }
                return Err(e);
            }
        };
        Ok((plan.uid_base, plan.image.version, net))
    }

    /// Creates the vnode's directory, disk and layers; `state.json` last.
    pub(super) fn create_local(
        &self,
        spec: &VNodeSpec,
        paths: &VNodePaths,
        uid_base: u32,
    ) -> Result<LocalState, VNodeError> {
        let result = (|| {
            create_dir(&paths.dir, 0o700)?;
            create_dir(&paths.etc, 0o755)?;
            self.mounts
                .make_disk_image(&paths.disk_image, spec.disk_bytes)
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
            let _ = self.mounts.unmount_all(&paths.disk);
            let _ = std::fs::remove_dir_all(&paths.dir);
        }
        result
    }

    pub(crate) fn mount_disk(&self, paths: &VNodePaths) -> Result<(), VNodeError> {
        if self.mounts.is_mount_point(&paths.disk) {
            return Ok(());
        }
        std::fs::create_dir_all(&paths.disk)
            .map_err(io_err(format!("creating {}", paths.disk.display())))?;
        self.mounts
            .mount_disk_image(&paths.disk_image, &paths.disk)
            .map_err(io_err("mounting the vnode's disk"))
    }

    /// From the vnode's files to its unit booted: disk, root filesystem, network, keys, the
    /// unit. Returns how long the network took.
    async fn mount_and_boot(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
        state: &LocalState,
        plan: &StartPlan,
    ) -> Result<Duration, VNodeError> {
        self.mount_disk(paths)?;
        write_jupyter_config(
            spec,
            paths,
            state.uid_base,
            &jupyter_origin(&self.config, &self.host, &spec.user),
            &ensure_workspace_token(paths)?,
        )?;
        let data = self
            .ensure_user_tree(store, &spec.user, state.uid_base)
            .await?;
        self.mount_root(paths, state, &plan.image)?;
        let net = self
            .network
            .attach_vnode(&plan.network, spec, &paths.netns, &paths.etc)
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
        self.boot_unit(store, spec, paths, properties).await?;
        Ok(net)
    }

    /// The user's persistent data directory and SSH keys on the shared filesystem, made at
    /// their first node's start (the data directory given to their uid range). Their first
    /// nodes start on several hosts at once: the host that claims the user's tree in etcd
    /// makes it, the others wait for it (see [`crate::store::claims`]).
    async fn ensure_user_tree(
        &self,
        store: &EtcdStore,
        user: &str,
        uid_base: u32,
    ) -> Result<PathBuf, VNodeError> {
        let data = user_data_dir(&self.config, user);
        let ssh_dir = ssh::user_ssh_dir(&self.config, user);
        let ready = || data.is_dir() && ssh::user_keys_exist(&ssh_dir);
        if ready() {
            return Ok(data);
        }
        if store.claim_dir(user, "", &self.host).await? {
            if let Some(parent) = data.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io_err(format!("creating {}", parent.display())))?;
            }
            // Only a directory made here is given away: an existing one is the user's already.
            match std::fs::create_dir(&data) {
                Ok(()) => {
                    let owner = Some(nix::unistd::Uid::from_raw(uid_base));
                    let group = Some(nix::unistd::Gid::from_raw(uid_base));
                    nix::unistd::chown(&data, owner, group)
                        .map_err(|e| io_err(format!("chown {}", data.display()))(e.into()))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(format!("creating {}", data.display()))(e)),
            }
            ssh::ensure_user_keys(&ssh_dir, user, uid_base)
                .map_err(io_err("the user's SSH keys"))?;
            return Ok(data);
        }
        let deadline = Instant::now() + USER_TREE_WAIT;
        while !ready() {
            if Instant::now() > deadline {
                return Err(io_err(format!("waiting for {}", data.display()))(
                    io::Error::other(format!(
                        "another host claimed it but it did not appear within {} s",
                        USER_TREE_WAIT.as_secs()
                    )),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(data)
    }

    /// The root filesystem: the image (and a user image's layer) idmapped to the user's
    /// range, the overlay on top, and the network namespace. What is mounted already stays.
    fn mount_root(
        &self,
        paths: &VNodePaths,
        state: &LocalState,
        image: &StartImage,
    ) -> Result<(), VNodeError> {
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
            if !self.mounts.is_mount_point(view) {
                self.mounts
                    .mount_shifted(source, view, state.uid_base, vnode::UID_RANGE_SIZE)
                    .map_err(io_err("mounting the image"))?;
            }
        }
        if !self.mounts.is_mount_point(&paths.rootfs) {
            // Top first: the user image's layer over the system image.
            let lowers: Vec<&Path> = views.iter().rev().map(|(_, view)| view.as_path()).collect();
            self.mounts
                .mount_overlay(&lowers, &paths.upper, &paths.work, &paths.rootfs)
                .map_err(io_err("root filesystem"))?;
        }
        if !self.mounts.is_mount_point(&paths.netns) {
            self.mounts
                .create_netns(&paths.netns)
                .map_err(io_err("network namespace"))?;
        }
        Ok(())
    }

    /// Starts the vnode's slice and unit and waits for systemd inside to report ready; gives
    /// up early when the spec stops asking for it to run.
    async fn boot_unit(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        paths: &VNodePaths,
        properties: Vec<crate::sys::systemd::Property>,
    ) -> Result<(), VNodeError> {
        let unit = vnode::unit_name(&spec.id);
        self.units
            .ensure_slice(
                &vnode::vnode_slice(&spec.user, &spec.id),
                Self::slice_properties(spec),
                START_TIMEOUT,
            )
            .await?;
        // A failed unit of an earlier run would block the name.
        self.units.reset_failed(&unit).await;
        let wake = self
            .memos
            .lock()
            .unwrap()
            .entry(spec.id.clone())
            .or_default()
            .wake
            .clone();
        let boot = self.units.start_transient(&unit, properties, START_TIMEOUT);
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
            Ok(()) => Ok(()),
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

    /// Stops the vnode's unit (its systemd shuts down), then its slice: commands still
    /// running in it (terminals, exec) end with it.
    pub(super) async fn stop_units(&self, spec: &VNodeSpec) -> Result<(), VNodeError> {
        self.units
            .stop(&vnode::unit_name(&spec.id), STOP_TIMEOUT)
            .await?;
        self.units
            .stop(&vnode::vnode_slice(&spec.user, &spec.id), STOP_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Unmounts the rootfs and the image view and removes the network namespace; keeps the
    /// vnode's own layer.
    pub(super) fn release(&self, paths: &VNodePaths) -> Result<(), VNodeError> {
        self.mounts
            .unmount_all(&paths.rootfs)
            .map_err(io_err("unmounting the rootfs"))?;
        self.mounts
            .unmount_all(&paths.lower)
            .map_err(io_err("unmounting the image"))?;
        self.mounts
            .unmount_all(&paths.layer)
            .map_err(io_err("unmounting the image's layer"))?;
        self.mounts
            .unmount_all(&paths.disk)
            .map_err(io_err("unmounting the vnode's disk"))?;
        self.mounts
            .remove_netns(&paths.netns)
            .map_err(io_err("removing the network namespace"))?;
        match std::fs::remove_dir_all(&paths.run) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", paths.run.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Everything local of a vnode, its layer included (not the user's data).
    pub(super) fn remove_local(&self, paths: &VNodePaths) -> Result<(), VNodeError> {
        self.release(paths)?;
        match std::fs::remove_dir_all(&paths.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", paths.dir.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// See [`Runtime::plan_start`].
struct StartPlan {
    uid_base: u32,
    image: StartImage,
    /// The vnode's files from an earlier run, if any.
    existing: Option<LocalState>,
    network: AttachInputs,
}

fn random_machine_id() -> String {
    use rand::RngExt;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    /// A vnode that moved here takes its files from the handoff before anything else. The
    /// handoff directory goes once they are here, so its absence with the vnode's directory
    /// present means taken (a vnode that never ran hands over an empty directory).
    pub(super) async fn take_handoff(
        &self,
        spec: &VNodeSpec,
        paths: &VNodePaths,
    ) -> Result<(), VNodeError> {
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
        let ms = started.elapsed().as_millis() as u64;
        info!(
            bytes,
            ms,
            action = "vnode.import",
            "vnode {} taken over from {}: {bytes} bytes in {ms} ms",
            spec.id,
            source.display()
        );
        Ok(())
    }
}
