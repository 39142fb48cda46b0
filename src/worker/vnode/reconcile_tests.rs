//! The reconciler played against recording fakes of systemd ([`RecordingUnits`]), the mount
//! table ([`RecordingMounts`]) and the network, over an etcd in this process: a start, an
//! adoption after a worker restart, a failed boot, a delete and a move between hosts. The
//! vnodes' files are real (in a temporary directory) and are given to the user's uid range,
//! which takes root: these run with the root tests (`tools/test`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Runtime;
use super::runtime::HostSeams;
use crate::config::Config;
use crate::model::host::Capacity;
use crate::model::vnode::{self, DesiredState, Handoff, Phase, VNodeSpec, VNodeStatus};
use crate::store::EtcdStore;
use crate::store::memory_etcd::{MemoryEtcd, TestSite};
use crate::store::network::AddressPlan;
use crate::sys::host::FakeHost;
use crate::sys::mounts::RecordingMounts;
use crate::sys::systemd::{RecordingUnits, Units};
use crate::worker::network::{AttachInputs, AttachVnode, NetworkError};
use crate::worker::paths::VNodePaths;

const GIB: u64 = 1 << 30;

/// The network's part of a start, remembered: which vnodes were wired, in which namespace.
#[derive(Default)]
struct RecordingNetwork {
    attached: Mutex<Vec<(String, PathBuf)>>,
}

#[async_trait::async_trait]
impl AttachVnode for RecordingNetwork {
    async fn attach_vnode(
        &self,
        inputs: &AttachInputs,
        spec: &VNodeSpec,
        netns: &Path,
        etc_dir: &Path,
    ) -> Result<Duration, NetworkError> {
        assert!(netns.exists(), "the namespace comes before the network");
        let address = spec.address.map(|a| a.to_string()).unwrap_or_default();
        assert!(
            inputs
                .user_net
                .as_ref()
                .is_some_and(|n| n.contains(spec.address.unwrap())),
            "the start's plan read the user's network: {inputs:?}"
        );
        assert_eq!(inputs.claims.get(&address), Some(&spec.id), "{inputs:?}");
        std::fs::write(etc_dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let mut attached = self.attached.lock().unwrap();
        attached.push((spec.id.clone(), netns.to_owned()));
        Ok(Duration::from_micros(50))
    }
}

/// One worker's host: its runtime and the fakes it drives.
struct Host {
    name: &'static str,
    runtime: Runtime,
    units: Arc<RecordingUnits>,
    mounts: Arc<RecordingMounts>,
    network: Arc<RecordingNetwork>,
    config: Config,
    run_dir: PathBuf,
}

impl Host {
    /// A host whose local state is under `prefix` (with the site's `global` linked in).
    fn new(name: &'static str, prefix: &Path, global: &Path) -> Host {
        std::fs::create_dir_all(prefix).unwrap();
        if !prefix.join("global").exists() {
            std::os::unix::fs::symlink(global, prefix.join("global")).unwrap();
        }
        let config = Config {
            fs_prefix: prefix.to_owned(),
            ..Config::default()
        };
        install_base_image(&config);
        let units = Arc::new(RecordingUnits::default());
        let mounts = Arc::new(RecordingMounts::default());
        Host::with_fakes(name, config, units, mounts)
    }

    /// A runtime over fakes that outlive it: systemd and the kernel keep their state while
    /// a worker restarts.
    fn with_fakes(
        name: &'static str,
        config: Config,
        units: Arc<RecordingUnits>,
        mounts: Arc<RecordingMounts>,
    ) -> Host {
        let network = Arc::new(RecordingNetwork::default());
        let run_dir = config.fs_prefix.join("run");
        let runtime = Runtime::new(
            config.clone(),
            name.to_owned(),
            HostSeams {
                units: units.clone(),
                mounts: mounts.clone(),
                network: network.clone(),
                probe: Arc::new(FakeHost {
                    capacity: Capacity {
                        cpus: 8,
                        memory_bytes: 16 * GIB,
                        disk_free_bytes: 100 * GIB,
                    },
                    addresses: vec![],
                }),
                run_dir: run_dir.clone(),
            },
        );
        Host {
            name,
            runtime,
            units,
            mounts,
            network,
            config,
            run_dir,
        }
    }

    fn paths(&self, id: &str) -> VNodePaths {
        self.runtime.paths(id)
    }

    /// One pass of the reconciler over the vnode's spec as etcd has it for this host.
    async fn reconcile(&self, store: &EtcdStore, id: &str) {
        let stored = store
            .host_vnode_spec(self.name, id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no spec of {id} for {}", self.name));
        self.runtime.reconcile_one(store, stored).await.unwrap();
    }

    fn unit_calls(&self, id: &str) -> Vec<String> {
        self.units.calls_for(&vnode::unit_name(id))
    }
}

/// A system image `base` as `docklet-admin` installs one: `current` links to a version
/// holding systemd.
fn install_base_image(config: &Config) {
    let images = crate::worker::paths::images_dir(config);
    let version = images.join("base/v1");
    std::fs::create_dir_all(version.join("usr/lib/systemd")).unwrap();
    std::fs::write(version.join("usr/lib/systemd/systemd"), "").unwrap();
    let _ = std::os::unix::fs::symlink("v1", images.join("base/current"));
}

/// The in-process etcd, and the directory of the site's files.
async fn site() -> (MemoryEtcd, EtcdStore, tempfile::TempDir) {
    let site = TestSite::new().await;
    std::fs::create_dir_all(site.dir.path().join("global")).unwrap();
    (site.etcd, site.store, site.dir)
}

/// What the master writes for a new node of alice's cluster `c1` on `host`.
async fn create(store: &EtcdStore, host: &str, id: &str) -> VNodeSpec {
    let spec = VNodeSpec {
        id: id.into(),
        user: "alice".into(),
        cluster: "c1".into(),
        index: 0,
        image: "base".into(),
        cpu_millis: 1000,
        memory_bytes: GIB,
        disk_bytes: 4 * GIB,
        tasks: 512,
        state: DesiredState::Running,
        address: None,
        handoff: None,
        task: None,
    };
    let config = Config::default();
    let plan = AddressPlan {
        cluster_net: config.cluster_net,
        vni_base: config.vni_base,
    };
    store.create_vnode(host, &spec, &plan).await.unwrap()
}

async fn status(store: &EtcdStore, id: &str) -> VNodeStatus {
    store.vnode_status(id).await.unwrap().expect("a status")
}

#[tokio::test]
#[ignore = "needs root: a vnode's files are given to its uid range; run with the root tests (tools/test)"]
async fn a_start_makes_the_disk_mounts_the_image_wires_the_network_and_boots() {
    let (_etcd, store, site_dir) = site().await;
    let host = Host::new(
        "h1",
        &site_dir.path().join("h1"),
        &site_dir.path().join("global"),
    );
    create(&store, "h1", "alice-c1-0").await;
    host.reconcile(&store, "alice-c1-0").await;

    let seen = status(&store, "alice-c1-0").await;
    assert_eq!(seen.phase, Phase::Running, "{seen:?}");
    assert_eq!(seen.host, "h1");
    assert!(
        seen.boot_ms.is_some() && seen.uid_base.is_some(),
        "{seen:?}"
    );
    assert_eq!(host.unit_calls("alice-c1-0"), ["reset-failed", "start"]);
    let started = host.units.properties.lock().unwrap()[&vnode::unit_name("alice-c1-0")].clone();
    let exec = started
        .iter()
        .find(|p| p.starts_with("ExecStart="))
        .unwrap();
    let paths = host.paths("alice-c1-0");
    assert!(
        exec.contains("systemd-nspawn") && exec.contains(&*paths.rootfs.to_string_lossy()),
        "{exec}"
    );
    let slice = vnode::vnode_slice("alice", "alice-c1-0");
    assert_eq!(host.units.calls_for(&slice), ["slice"]);
    // The disk, the image (idmapped), the overlay and the network namespace, in that order.
    assert_eq!(
        host.mounts.mounted_under(&host.run_dir),
        [
            paths.disk.clone(),
            paths.lower.clone(),
            paths.netns.clone(),
            paths.rootfs.clone()
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    let calls = host.mounts.calls.lock().unwrap().clone();
    let order: Vec<&str> = calls.iter().map(|c| c.split(' ').next().unwrap()).collect();
    assert_eq!(
        order,
        ["mkfs", "mount", "mount", "mount", "netns"],
        "{calls:?}"
    );
    assert_eq!(host.network.attached.lock().unwrap().len(), 1);
    assert!(paths.state.exists() && paths.etc.join("hosts").exists());
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&paths.upper).unwrap().uid();
    assert_eq!(
        Some(owner),
        seen.uid_base,
        "root inside owns the overlay's top"
    );

    // Nothing changed: another pass touches nothing.
    host.reconcile(&store, "alice-c1-0").await;
    assert_eq!(host.unit_calls("alice-c1-0"), ["reset-failed", "start"]);
    assert_eq!(host.mounts.calls.lock().unwrap().len(), calls.len());
}

#[tokio::test]
#[ignore = "needs root: a vnode's files are given to its uid range; run with the root tests (tools/test)"]
async fn a_restarted_worker_adopts_running_vnodes_without_restarting_them() {
    let (_etcd, store, site_dir) = site().await;
    let first = Host::new(
        "h1",
        &site_dir.path().join("h1"),
        &site_dir.path().join("global"),
    );
    create(&store, "h1", "alice-c1-0").await;
    first.reconcile(&store, "alice-c1-0").await;
    let booted = status(&store, "alice-c1-0").await;
    let mount_calls = first.mounts.calls.lock().unwrap().len();

    // The worker restarts; systemd and the kernel keep the unit and the mounts.
    let again = Host::with_fakes(
        "h1",
        first.config.clone(),
        first.units.clone(),
        first.mounts.clone(),
    );
    drop(first);
    again
        .runtime
        .load_statuses(&store, &["alice-c1-0".to_owned()])
        .await;
    again.reconcile(&store, "alice-c1-0").await;
    assert_eq!(again.unit_calls("alice-c1-0"), ["reset-failed", "start"]);
    assert_eq!(again.mounts.calls.lock().unwrap().len(), mount_calls);
    assert!(again.network.attached.lock().unwrap().is_empty());
    let adopted = status(&store, "alice-c1-0").await;
    assert_eq!(adopted.phase, Phase::Running);
    assert_eq!(adopted.boot_ms, booted.boot_ms, "the boot time survives");
    assert_eq!(adopted.restarts, 0);
}

#[tokio::test]
#[ignore = "needs root: a vnode's files are given to its uid range; run with the root tests (tools/test)"]
async fn a_failed_boot_leaves_no_unit_mount_or_file_behind() {
    let (_etcd, store, site_dir) = site().await;
    let host = Host::new(
        "h1",
        &site_dir.path().join("h1"),
        &site_dir.path().join("global"),
    );
    *host.units.fail_starts.lock().unwrap() = Some("failed".into());
    create(&store, "h1", "alice-c1-0").await;
    host.reconcile(&store, "alice-c1-0").await;

    let seen = status(&store, "alice-c1-0").await;
    assert_eq!(seen.phase, Phase::Failed);
    let reason = seen.reason.unwrap_or_default();
    assert!(
        reason.contains("did not boot")
            && reason.contains("journalctl -u docklet-vnode-alice-c1-0"),
        "{reason}"
    );
    assert_eq!(
        host.unit_calls("alice-c1-0"),
        ["reset-failed", "start", "stop"]
    );
    assert!(host.mounts.mounted_under(&host.run_dir).is_empty());
    let paths = host.paths("alice-c1-0");
    assert!(
        !paths.dir.exists(),
        "a first start that failed keeps no files"
    );
    assert!(!paths.run.exists() && !paths.netns.exists());
}

#[tokio::test]
#[ignore = "needs root: a vnode's files are given to its uid range; run with the root tests (tools/test)"]
async fn a_delete_removes_the_unit_the_mounts_the_files_and_the_spec() {
    let (_etcd, store, site_dir) = site().await;
    let host = Host::new(
        "h1",
        &site_dir.path().join("h1"),
        &site_dir.path().join("global"),
    );
    create(&store, "h1", "alice-c1-0").await;
    host.reconcile(&store, "alice-c1-0").await;
    store
        .set_vnode_state("alice-c1-0", DesiredState::Deleted)
        .await
        .unwrap();
    host.reconcile(&store, "alice-c1-0").await;

    assert_eq!(
        host.unit_calls("alice-c1-0"),
        ["reset-failed", "start", "kill", "stop"]
    );
    assert!(host.mounts.mounted_under(&host.run_dir).is_empty());
    assert!(!host.paths("alice-c1-0").dir.exists());
    assert!(
        store
            .host_vnode_spec("h1", "alice-c1-0")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.vnode_host("alice-c1-0").await.unwrap().is_none());
}

#[tokio::test]
#[ignore = "needs root: a vnode's files are given to its uid range; run with the root tests (tools/test)"]
async fn a_move_hands_the_disk_over_and_the_new_host_boots_it() {
    let (_etcd, store, site_dir) = site().await;
    let global = site_dir.path().join("global");
    let from = Host::new("h1", &site_dir.path().join("h1"), &global);
    let to = Host::new("h2", &site_dir.path().join("h2"), &global);
    create(&store, "h1", "alice-c1-0").await;
    from.reconcile(&store, "alice-c1-0").await;
    // What the user wrote on the node's own disk.
    let written = b"the vnode's layer".to_vec();
    std::fs::write(from.paths("alice-c1-0").disk_image, &written).unwrap();

    // A drain: the old host exports the vnode...
    let handoff = Handoff {
        token: "t".repeat(Handoff::TOKEN_LEN),
        from: "h1".into(),
        resume: DesiredState::Running,
    };
    store
        .update_vnode_spec("alice-c1-0", |spec| {
            spec.state = DesiredState::Exported;
            spec.handoff = Some(handoff.clone());
            Ok(true)
        })
        .await
        .unwrap();
    from.reconcile(&store, "alice-c1-0").await;
    assert_eq!(status(&store, "alice-c1-0").await.phase, Phase::Exported);
    assert!(
        from.units
            .unit_info(&vnode::unit_name("alice-c1-0"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(from.mounts.mounted_under(&from.run_dir).is_empty());

    // ...the spec moves, and the new host takes the files before its first start.
    store
        .move_vnode("alice-c1-0", "h2", None, |spec| {
            spec.state = DesiredState::Running;
            Ok(())
        })
        .await
        .unwrap();
    to.reconcile(&store, "alice-c1-0").await;
    let seen = status(&store, "alice-c1-0").await;
    assert_eq!(
        (seen.phase, seen.host.as_str()),
        (Phase::Running, "h2"),
        "{seen:?}"
    );
    let arrived = to.paths("alice-c1-0");
    assert_eq!(std::fs::read(&arrived.disk_image).unwrap(), written);
    assert!(arrived.state.exists());
    assert!(
        !crate::worker::vnode::handoff::handoff_dir(&to.config, &handoff.token).exists(),
        "the handoff directory goes once taken"
    );
    assert_eq!(to.unit_calls("alice-c1-0"), ["reset-failed", "start"]);
    let made_disk = to
        .mounts
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.starts_with("mkfs"));
    assert!(!made_disk, "the moved disk is used, not a new one");
}
