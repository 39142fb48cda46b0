//! What this host and its vnodes use, sampled every `metrics_interval` seconds and served as
//! Prometheus text on the agent's `/metrics` (with the agent token, like the rest of the
//! agent).
//!
//! Per vnode: CPU time, memory and processes from its unit's cgroup in the cgroup v2
//! hierarchy, the disk its own layer takes (statvfs of its ext4, or a walk of its
//! upper directory with `storage = "file"`), the network counters of its veth (read on the
//! host's end, so received and sent swap), and its uptime. Per host: CPU from `/proc/stat`,
//! memory from `/proc/meminfo`, the disk under `fs_prefix`, load, and the vnode count.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::debug;

use super::paths::VNodePaths;
use super::vnode::Runtime;
use crate::config::{Config, Storage};
use crate::model::metrics::{
    HostSample, NetCounters, NodeSample, VnodeReading, VnodeSample, WorkerSamples,
};
use crate::model::network::veth_name;
use crate::model::vnode::{self, Phase, VNodeSpec};
use crate::sys::mounts;

/// The last samples, and the readings the next ones are compared with.
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    vnodes: Vec<(VNodeSpec, VnodeSample)>,
    host: Option<HostSample>,
    readings: HashMap<String, VnodeReading>,
    /// `/proc/stat`'s busy and total jiffies at the last sampling.
    host_cpu: Option<(u64, u64)>,
}

impl Metrics {
    /// Samples every `config.metrics_interval` seconds, forever.
    pub async fn run(self: Arc<Self>, config: Config, runtime: Arc<Runtime>) {
        let mut every = tokio::time::interval(Duration::from_secs(config.metrics_interval));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.sample(&config, &runtime).await;
        }
    }

    async fn sample(&self, config: &Config, runtime: &Runtime) {
        let now_ms = now_ms();
        let mut readings = Vec::new();
        for (spec, status) in runtime.vnodes() {
            if status.as_ref().map(|s| s.phase) != Some(Phase::Running) {
                continue;
            }
            let info = match runtime.units().unit_info(&vnode::unit_name(&spec.id)).await {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(e) => {
                    debug!(vnode = %spec.id, "no accounting: {e}");
                    continue;
                }
            };
            let paths = VNodePaths::new(config, &spec.id);
            // The vnode's slice: the commands run in it count too.
            let cgroup = vnode::vnode_cgroup(&info.control_group, &spec.user, &spec.id);
            let usage = cgroup_usage(&unified_root().join(cgroup.trim_start_matches('/')));
            let reading = VnodeReading {
                at_ms: now_ms,
                cpu_usec: usage.cpu_usec,
                memory_bytes: usage.memory_bytes,
                disk_bytes: disk_used(config.storage, &paths),
                net: veth_counters(&veth_name(&spec.id)),
                processes: usage.processes,
                uptime_secs: now_ms.saturating_sub(info.active_enter_usec / 1000) / 1000,
            };
            readings.push((spec, reading));
        }
        let (mut host, cpu) = host_figures(config, now_ms, readings.len() as u32);
        let mut state = self.state.lock().unwrap();
        let vnodes = readings
            .iter()
            .map(|(spec, now)| {
                let sample = VnodeSample::new(state.readings.get(&spec.id), now);
                (spec.clone(), sample)
            })
            .collect();
        state.readings = readings
            .into_iter()
            .map(|(spec, reading)| (spec.id, reading))
            .collect();
        state.vnodes = vnodes;
        host.cpu_percent = match (state.host_cpu, cpu) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => Some(
                busy1.saturating_sub(busy0) as f64 / (total1 - total0) as f64
                    * 100.0
                    * host.cpus as f64,
            ),
            _ => None,
        };
        state.host_cpu = cpu;
        state.host = Some(host);
    }

    /// The last sampling, as the agent serves it (`host` names this host).
    pub fn samples(&self, host: &str, interval_secs: u64) -> WorkerSamples {
        let state = self.state.lock().unwrap();
        WorkerSamples {
            host: host.to_owned(),
            interval_secs,
            host_sample: state.host.clone(),
            vnodes: state
                .vnodes
                .iter()
                .map(|(spec, sample)| NodeSample {
                    id: spec.id.clone(),
                    user: spec.user.clone(),
                    cluster: spec.cluster.clone(),
                    index: spec.index,
                    sample: *sample,
                })
                .collect(),
        }
    }
}

/// Where the cgroup v2 hierarchy is: `/sys/fs/cgroup` itself, or `unified` below it on a
/// host in systemd's hybrid mode.
pub(crate) fn unified_root() -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    match nix::sys::statfs::statfs(root) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => root.into(),
        _ => root.join("unified"),
    }
}

/// What a cgroup (with everything below it) uses.
#[derive(Debug, Default, PartialEq, Eq)]
struct CgroupUsage {
    cpu_usec: u64,
    memory_bytes: u64,
    processes: u32,
}

/// `cpu.stat` (there whether or not the cpu controller is on), `memory.current` and the
/// processes listed below the cgroup. Without the memory controller (a testbed host, whose
/// systemd may not manage controllers) memory is the sum of its processes' resident pages.
fn cgroup_usage(dir: &Path) -> CgroupUsage {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let cpu_usec = read("cpu.stat")
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let mut pids = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(cgroup) = pending.pop() {
        if let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&cgroup) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
    }
    let memory_bytes = read("memory.current")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| pids.iter().map(|pid| resident_bytes(*pid)).sum());
    CgroupUsage {
        cpu_usec,
        memory_bytes,
        processes: pids.len() as u32,
    }
}

/// A process's resident memory (`/proc/<pid>/statm`, in pages).
fn resident_bytes(pid: u32) -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Bytes of the vnode's own layer.
fn disk_used(storage: Storage, paths: &VNodePaths) -> u64 {
    if storage == Storage::Disk || mounts::is_mount_point(&paths.disk) {
        return filesystem_use(&paths.disk)
            .map(|(_, used)| used)
            .unwrap_or(0);
    }
    directory_bytes(&paths.upper)
}

/// (size, used) of the filesystem holding `path`.
fn filesystem_use(path: &Path) -> Option<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let block = stat.fragment_size();
    let total = stat.blocks() * block;
    Some((total, total.saturating_sub(stat.blocks_free() * block)))
}

/// Allocated bytes under `dir`, on its own filesystem, links not followed.
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != top.dev() {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// The vnode's view of its veth's counters: the host's end receives what the vnode sends.
fn veth_counters(veth: &str) -> NetCounters {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/{name}"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    NetCounters {
        rx_bytes: read("tx_bytes"),
        tx_bytes: read("rx_bytes"),
        rx_packets: read("tx_packets"),
        tx_packets: read("rx_packets"),
        rx_errors: read("tx_errors"),
        tx_errors: read("rx_errors"),
        rx_dropped: read("tx_dropped"),
        tx_dropped: read("rx_dropped"),
    }
}

/// The host's figures, and `/proc/stat`'s (busy, total) jiffies for the CPU percent.
fn host_figures(config: &Config, now_ms: u64, vnodes: u32) -> (HostSample, Option<(u64, u64)>) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (disk_total_bytes, disk_used_bytes) = filesystem_use(&config.fs_prefix).unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut averages = load.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    let sample = HostSample {
        at: now_ms / 1000,
        cpu_percent: None,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_total_bytes: meminfo_bytes(&meminfo, "MemTotal"),
        memory_available_bytes: meminfo_bytes(&meminfo, "MemAvailable"),
        disk_total_bytes,
        disk_used_bytes,
        load: [
            averages.next().unwrap_or(0.0),
            averages.next().unwrap_or(0.0),
            averages.next().unwrap_or(0.0),
        ],
        vnodes,
    };
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    (sample, cpu_jiffies(&stat))
}

/// A `/proc/meminfo` line's value in bytes (it is written in kB).
fn meminfo_bytes(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// (busy, total) jiffies of `/proc/stat`'s first line; idle and iowait are not busy.
fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_documented() {
        let meminfo = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:   8192000 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), 16_384_000 * 1024);
        assert_eq!(meminfo_bytes(meminfo, "MemAvailable"), 8_192_000 * 1024);
        assert_eq!(meminfo_bytes(meminfo, "Missing"), 0);
        // user nice system idle iowait irq softirq steal (guest columns are in user already)
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(cpu_jiffies(stat), Some((160, 980)));
        assert_eq!(cpu_jiffies("intr 1 2"), None);
    }

    #[test]
    fn a_cgroup_counts_cpu_memory_and_the_processes_below_it() {
        let dir = std::env::temp_dir().join(format!("docklet-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("payload/user.slice")).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 2500000\nuser_usec 1\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        std::fs::write(dir.join("payload/cgroup.procs"), "10\n11\n").unwrap();
        std::fs::write(dir.join("payload/user.slice/cgroup.procs"), "12\n").unwrap();
        std::fs::write(dir.join("memory.current"), "1048576\n").unwrap();
        let with_controller = cgroup_usage(&dir);
        // Without the memory controller: the processes' resident pages (this test's own).
        std::fs::remove_file(dir.join("memory.current")).unwrap();
        let me = std::process::id().to_string();
        std::fs::write(dir.join("payload/cgroup.procs"), format!("{me}\n")).unwrap();
        let without = cgroup_usage(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            with_controller,
            CgroupUsage {
                cpu_usec: 2_500_000,
                memory_bytes: 1_048_576,
                processes: 3
            }
        );
        assert_eq!((without.cpu_usec, without.processes), (2_500_000, 2));
        assert!(without.memory_bytes > 1_000_000, "{without:?}");
    }

    #[test]
    fn a_directory_counts_its_own_filesystem_only() {
        let dir = std::env::temp_dir().join(format!("docklet-metrics-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/file"), vec![1u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.join("link")).unwrap();
        let bytes = directory_bytes(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            (64 * 1024..1024 * 1024).contains(&bytes),
            "64 KiB of file and two directories, the link not followed: {bytes}"
        );
    }
}
