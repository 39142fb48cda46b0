//! Vnodes as the cluster sees them: the desired spec the master writes (keyed by host), the
//! status the worker writes back, the rules a spec must follow, the names derived from it
//! (unit, slice, machine, hostname), the per-user uid ranges, and the reconcile decision.

use serde::{Deserialize, Serialize};

use crate::model::names::{SpecError, check_name, invalid};
use crate::model::quota::{MIN_CPU_MILLIS, MIN_DISK, MIN_MEMORY};

/// What the master wants a vnode to be. Stored at `vnodes/<host>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VNodeSpec {
    /// Unique in the cluster; also the machine name. See [`validate_spec`].
    pub id: String,
    pub user: String,
    /// The vcluster this node belongs to.
    pub cluster: String,
    /// The node's number in its vcluster: its hostname is `host-<index>`.
    pub index: u32,
    /// A system image under `FS_PREFIX/local/images` (`base`) or a user's image (`alice/web`).
    pub image: String,
    /// CPU in thousandths of a core (1000 = one core).
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub tasks: u32,
    pub state: DesiredState,
    /// The vnode's address on its user's network, assigned by the master at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// A move between hosts in progress: see [`Handoff`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
    /// A batch task's node: what it runs once the master says go (see [`TaskRun`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRun>,
}

/// The command a batch task's node runs, as root inside it, once every node of its instance
/// is up (`start`, set by the master then). Paths are inside the vnode; the worker starts it
/// as a unit of its own (surviving a worker restart) and reports its end in
/// [`VNodeStatus::task`]. The master removes the node afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRun {
    pub argv: Vec<String>,
    /// The task's variables and Docklet's own (`DOCKLET_TASK_INDEX`, `DOCKLET_HOSTFILE`...).
    pub env: std::collections::BTreeMap<String, String>,
    pub workdir: String,
    pub stdout: String,
    pub stderr: String,
    /// Nodes of the instance: `/etc/docklet/hostfile` lists `task-0` to `task-<nodes-1>`.
    pub nodes: u32,
    /// This node runs the command (node 0, or every node for `run_on: all`).
    pub runs_command: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Every node of the instance is up: run the command.
    #[serde(default)]
    pub start: bool,
}

/// What became of a batch task's command on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskStatus {
    /// Unix seconds.
    pub started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<TaskExit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskExit {
    pub ended_at: u64,
    /// The exit status, or 128 + the signal that killed it; -1 when it was lost.
    pub code: i32,
    /// systemd's result: `success`, `exit-code`, `signal`, `timeout`, ... or `lost` when the
    /// command vanished without a word (its host rebooted).
    pub result: String,
    /// What its unit used: CPU time, and the most memory at once (where the kernel tells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
}

impl TaskExit {
    pub fn timed_out(&self) -> bool {
        self.result == "timeout"
    }

    /// From `SERVICE_RESULT EXIT_CODE EXIT_STATUS [CPU_USEC [MEMORY_PEAK]]`, as the unit's
    /// ExecStopPost wrote it.
    pub fn parse(line: &str, ended_at: u64) -> TaskExit {
        let mut parts = line.split_whitespace();
        let result = parts.next().unwrap_or("lost").to_owned();
        let how = parts.next().unwrap_or("");
        let status = parts.next().unwrap_or("");
        let cpu_usec = parts.next().and_then(|n| n.parse().ok());
        let memory_peak_bytes = parts.next().and_then(|n| n.parse().ok());
        let code = match how {
            "exited" => status.parse().unwrap_or(-1),
            "killed" | "dumped" => 128 + signal_number(status),
            _ => -1,
        };
        TaskExit {
            ended_at,
            code,
            result,
            cpu_usec,
            memory_peak_bytes,
        }
    }
}

fn signal_number(name: &str) -> i32 {
    name.parse().unwrap_or(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ABRT" => 6,
        "KILL" => 9,
        "SEGV" => 11,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => 0,
    })
}

/// A vnode moving to another host (a drain): the old host's worker stops it and hands its
/// disk over through the shared filesystem (`FS_PREFIX/global/handoff/<token>/`), the new
/// host's worker takes the disk from there before its first start. The token is fresh per
/// move, so a handoff never meets the files of another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub token: String,
    /// The host it leaves.
    pub from: String,
    /// What the vnode becomes once moved: running or stopped, as it was (or as its owner
    /// asked meanwhile).
    pub resume: DesiredState,
}

impl Handoff {
    pub const TOKEN_LEN: usize = 24;
}

/// Sets the state its owner (or an administrator) wants; a vnode in the middle of a move
/// keeps moving and takes the state when it arrives. Returns whether anything changed.
pub fn want_state(spec: &mut VNodeSpec, state: DesiredState) -> bool {
    match (&mut spec.handoff, spec.state) {
        (_, DesiredState::Deleted) => false,
        (Some(handoff), DesiredState::Exported) if state != DesiredState::Deleted => {
            let changed = handoff.resume != state;
            handoff.resume = state;
            changed
        }
        _ => {
            let changed = spec.state != state;
            spec.state = state;
            changed
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Stopped,
    /// Removed by the worker once everything local is gone (the spec key goes with it).
    Deleted,
    /// Stopped, with its disk handed over for a move ([`VNodeSpec::handoff`] says where);
    /// set by the master's drain, never by users.
    Exported,
}

impl std::str::FromStr for DesiredState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(DesiredState::Running),
            "stopped" => Ok(DesiredState::Stopped),
            "deleted" => Ok(DesiredState::Deleted),
            "exported" => Ok(DesiredState::Exported),
            other => Err(format!(
                "unknown state {other:?} (expected running, stopped, deleted or exported)"
            )),
        }
    }
}

/// What the worker reports. Stored at `vnode-status/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VNodeStatus {
    pub id: String,
    pub host: String,
    pub phase: Phase,
    /// Why the vnode is `failed` (or why it was restarted last), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_pid: Option<u32>,
    /// Unix seconds when the vnode last reached `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_at: Option<u64>,
    /// Milliseconds from starting the unit to systemd inside reporting ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<u64>,
    /// Microseconds the worker spent wiring the vnode into its network at its last start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_us: Option<u64>,
    /// First host uid of the vnode's user namespace (root inside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_base: Option<u32>,
    /// The image version the running rootfs was assembled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// Restarts after failures since the worker started watching this vnode.
    #[serde(default)]
    pub restarts: u32,
    /// A batch task's command on this node, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskStatus>,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Pending,
    Creating,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// Stopped, its disk handed over and nothing left on this host: ready to move.
    Exported,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Creating => "creating",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
            Phase::Exported => "exported",
        }
    }
}

pub fn validate_user_name(user: &str) -> Result<(), SpecError> {
    if user.is_empty() || user.len() > 32 {
        return Err(invalid("user", user, "must be 1 to 32 characters"));
    }
    let mut bytes = user.bytes();
    let first = bytes.next().unwrap_or(b'-');
    if !(first.is_ascii_lowercase() || first == b'_')
        || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            "user",
            user,
            "must start with a-z or '_' and contain only a-z, 0-9, '_' and '-'",
        ));
    }
    Ok(())
}

pub fn validate_id(id: &str) -> Result<(), SpecError> {
    check_name("id", id, 48)
}

/// A system image (`base`) or a user's image (`alice/web`): see [`crate::model::image`].
pub fn validate_image_name(image: &str) -> Result<(), SpecError> {
    crate::model::image::ImageRef::parse(image).map(|_| ())
}

pub const MIN_TASKS: u32 = 32;
pub const MAX_TASKS: u32 = 1 << 22;

/// The rules every spec follows, whatever the host.
pub fn validate_spec(spec: &VNodeSpec) -> Result<(), SpecError> {
    validate_id(&spec.id)?;
    validate_user_name(&spec.user)?;
    check_name("cluster", &spec.cluster, 32)?;
    validate_image_name(&spec.image)?;
    if spec.cpu_millis < MIN_CPU_MILLIS {
        return Err(SpecError::OutOfRange {
            field: "cpu_millis",
            value: spec.cpu_millis.into(),
            reason: format!("at least {MIN_CPU_MILLIS} (a hundredth of a core)"),
        });
    }
    if spec.memory_bytes < MIN_MEMORY {
        return Err(SpecError::OutOfRange {
            field: "memory_bytes",
            value: spec.memory_bytes,
            reason: format!("at least {MIN_MEMORY}"),
        });
    }
    if spec.disk_bytes < MIN_DISK {
        return Err(SpecError::OutOfRange {
            field: "disk_bytes",
            value: spec.disk_bytes,
            reason: format!("at least {MIN_DISK}"),
        });
    }
    if !(MIN_TASKS..=MAX_TASKS).contains(&spec.tasks) {
        return Err(SpecError::OutOfRange {
            field: "tasks",
            value: spec.tasks.into(),
            reason: format!("between {MIN_TASKS} and {MAX_TASKS}"),
        });
    }
    match (&spec.handoff, spec.state) {
        (None, DesiredState::Exported) => {
            return Err(invalid(
                "handoff",
                "",
                "an exported vnode needs a handoff token",
            ));
        }
        (Some(handoff), _) => {
            let token = &handoff.token;
            if token.len() != Handoff::TOKEN_LEN
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(invalid(
                    "handoff.token",
                    token,
                    format!("{} lowercase letters and digits", Handoff::TOKEN_LEN),
                ));
            }
            if !matches!(
                handoff.resume,
                DesiredState::Running | DesiredState::Stopped
            ) {
                return Err(invalid(
                    "handoff.resume",
                    &format!("{:?}", handoff.resume),
                    "running or stopped",
                ));
            }
        }
        (None, _) => {}
    }
    Ok(())
}

/// What one host can give a single vnode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_free_bytes: u64,
}

/// A spec that can never run on this host is refused rather than started and killed.
pub fn check_fits(spec: &VNodeSpec, host: HostLimits) -> Result<(), SpecError> {
    if u64::from(spec.cpu_millis) > u64::from(host.cpus) * 1000 {
        return Err(SpecError::OutOfRange {
            field: "cpu_millis",
            value: spec.cpu_millis.into(),
            reason: format!("this host has {} cpus", host.cpus),
        });
    }
    if spec.memory_bytes > host.memory_bytes {
        return Err(SpecError::OutOfRange {
            field: "memory_bytes",
            value: spec.memory_bytes,
            reason: format!("this host has {} bytes of memory", host.memory_bytes),
        });
    }
    if spec.disk_bytes > host.disk_free_bytes {
        return Err(SpecError::OutOfRange {
            field: "disk_bytes",
            value: spec.disk_bytes,
            reason: format!("this host has {} bytes free", host.disk_free_bytes),
        });
    }
    Ok(())
}

/// systemd's unit-name escaping for one name segment: keeps `[A-Za-z0-9:_.]`, writes every
/// other byte (and a leading dot) as `\xNN`. A dash would otherwise start a new slice level.
pub fn escape_unit_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

pub fn unit_name(id: &str) -> String {
    format!("docklet-vnode-{id}.service")
}

/// The vnode id behind a unit name, if it is one of ours.
pub fn id_from_unit(unit: &str) -> Option<&str> {
    unit.strip_prefix("docklet-vnode-")?
        .strip_suffix(".service")
}

/// A vnode's own slice: the vnode's unit and every command run in it (exec, web terminals)
/// sit here, so its limits and its figures cover them all. Its name puts it in its user's
/// slice `docklet-u-<user>.slice` (in `docklet-u.slice`, in `docklet.slice`), so a user's
/// total can be capped per host.
pub fn vnode_slice(user: &str, id: &str) -> String {
    format!(
        "docklet-u-{}-{}.slice",
        escape_unit_segment(user),
        escape_unit_segment(id)
    )
}

/// The cgroup that holds everything of a vnode, from its unit's: the vnode's slice (the
/// unit's parent), or the unit's own for a vnode started before vnodes had slices.
pub fn vnode_cgroup<'a>(unit_cgroup: &'a str, user: &str, id: &str) -> &'a str {
    let slice = vnode_slice(user, id);
    match unit_cgroup.rsplit_once('/') {
        Some((parent, _)) if parent.ends_with(&format!("/{slice}")) => parent,
        _ => unit_cgroup,
    }
}

/// A new token for a vnode's Jupyter server: 32 random hex digits, its own (made by the
/// worker that starts it, see `worker::vnode`).
pub fn new_workspace_token() -> String {
    let bytes: [u8; 16] = rand::random();
    data_encoding::HEXLOWER.encode(&bytes)
}

/// Whether `text` is a token [`new_workspace_token`] makes.
pub fn is_workspace_token(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The hostname of node `index` of `cluster`: `task-N` in a batch task's instance,
/// `host-N` in a user's cluster.
pub fn node_hostname(cluster: &str, index: u32) -> String {
    if is_batch_cluster(cluster) {
        format!("task-{index}")
    } else {
        hostname(index)
    }
}

/// The vnodes of a batch task's instance form a cluster of their own, named
/// `<job>-<task position>-<index>-<attempt>`: it starts with a digit, which users' cluster
/// names never do, so the two never meet.
pub fn is_batch_cluster(cluster: &str) -> bool {
    cluster.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

pub fn hostname(index: u32) -> String {
    format!("host-{index}")
}

/// First uid of the container range systemd reserves (0x80000).
pub const UID_RANGE_START: u32 = 524_288;
/// Each user gets 65536 uids: a full 16-bit range, as nspawn expects.
pub const UID_RANGE_SIZE: u32 = 65_536;
/// Ranges end below 0x70000000, where systemd's container range ends.
pub const UID_SLOTS: u32 = (0x7000_0000 - UID_RANGE_START) / UID_RANGE_SIZE;

/// The first host uid of range `slot`.
pub fn uid_base(slot: u32) -> u32 {
    assert!(slot < UID_SLOTS, "uid slot {slot} out of range");
    UID_RANGE_START + slot * UID_RANGE_SIZE
}

/// The lowest slot not in `taken`, if any is left.
pub fn free_uid_slot(taken: &[u32]) -> Option<u32> {
    let mut taken = taken.to_vec();
    taken.sort_unstable();
    let mut candidate = 0;
    for slot in taken {
        if slot == candidate {
            candidate += 1;
        } else if slot > candidate {
            break;
        }
    }
    (candidate < UID_SLOTS).then_some(candidate)
}

/// What the unit of a vnode is doing, as the worker sees it on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    /// No such unit loaded (never started, stopped and collected, or the host rebooted).
    Absent,
    Starting,
    Active,
    Stopping,
}

/// The one next step for a vnode on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Prepare the rootfs if needed, then start the unit.
    Start,
    /// Stop the unit; keep the rootfs and its changes.
    Stop,
    /// Release mounts, keep the rootfs layers (after a stop).
    Unmount,
    /// Stop if needed, remove every local trace, then the spec and status keys.
    Delete,
    /// Stop if needed, hand the disk over for a move, remove every local trace.
    Export,
    /// Wait for systemd to finish what it is doing.
    Wait,
}

/// The reconcile decision: desired state against the unit's state and whether the rootfs is
/// currently mounted. A failed unit is `Absent` (collected), so desired `running` restarts it.
pub fn next_action(desired: DesiredState, unit: UnitState, mounted: bool) -> Action {
    match (desired, unit) {
        (DesiredState::Deleted, _) => Action::Delete,
        (_, UnitState::Starting | UnitState::Stopping) => Action::Wait,
        (DesiredState::Exported, _) => Action::Export,
        (DesiredState::Running, UnitState::Active) => Action::Nothing,
        (DesiredState::Running, UnitState::Absent) => Action::Start,
        (DesiredState::Stopped, UnitState::Active) => Action::Stop,
        (DesiredState::Stopped, UnitState::Absent) if mounted => Action::Unmount,
        (DesiredState::Stopped, UnitState::Absent) => Action::Nothing,
    }
}

/// Delay before restarting a vnode that failed `failures` times in a row: 1 s, doubling up to 64 s.
pub fn restart_delay_secs(failures: u32) -> u64 {
    1u64 << failures.saturating_sub(1).min(6).min(63)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn spec() -> VNodeSpec {
        VNodeSpec {
            id: "alice-c1-0".into(),
            user: "alice".into(),
            cluster: "c1".into(),
            index: 0,
            image: "base".into(),
            cpu_millis: 1000,
            memory_bytes: 512 << 20,
            disk_bytes: 1 << 30,
            tasks: 512,
            state: DesiredState::Running,
            address: None,
            handoff: None,
            task: None,
        }
    }

    #[test]
    fn a_reasonable_spec_is_valid() {
        assert_eq!(validate_spec(&spec()), Ok(()));
    }

    #[test]
    fn names_that_could_escape_a_path_or_a_unit_are_refused() {
        for bad in ["", "../x", "a/b", "A", "a b", "-a", "a-", "a.b", "a\nb"] {
            let mut s = spec();
            s.id = bad.into();
            assert!(validate_spec(&s).is_err(), "id {bad:?} accepted");
            let mut s = spec();
            s.image = bad.into();
            if bad != "a/b" {
                assert!(validate_spec(&s).is_err(), "image {bad:?} accepted");
            }
        }
        // A user's image is `owner/name`, each part a name; nothing else with a slash.
        for bad in ["a/../b", "a/b/c", "/b", "a/"] {
            let mut s = spec();
            s.image = bad.into();
            assert!(validate_spec(&s).is_err(), "image {bad:?} accepted");
        }
        let mut s = spec();
        s.id = "x".repeat(49);
        assert!(validate_spec(&s).is_err());
        for bad in ["", "1abc", "Al", "a.b", "a/b", &"a".repeat(33)] {
            assert!(validate_user_name(bad).is_err(), "user {bad:?} accepted");
        }
        assert!(validate_user_name("_svc-1").is_ok());
    }

    #[test]
    fn limits_below_the_minimum_are_refused_with_the_field_named() {
        let mut s = spec();
        s.memory_bytes = 1 << 20;
        let e = validate_spec(&s).unwrap_err().to_string();
        assert!(e.contains("memory_bytes"), "{e}");
        let mut s = spec();
        s.tasks = 1;
        assert!(validate_spec(&s).unwrap_err().to_string().contains("tasks"));
        let mut s = spec();
        s.cpu_millis = 0;
        assert!(validate_spec(&s).is_err());
        let mut s = spec();
        s.disk_bytes = 0;
        assert!(validate_spec(&s).is_err());
    }

    #[test]
    fn a_spec_larger_than_the_host_does_not_fit() {
        let host = HostLimits {
            cpus: 2,
            memory_bytes: 4 << 30,
            disk_free_bytes: 10 << 30,
        };
        assert_eq!(check_fits(&spec(), host), Ok(()));
        let mut s = spec();
        s.cpu_millis = 2001;
        let e = check_fits(&s, host).unwrap_err().to_string();
        assert!(e.contains("2 cpus"), "{e}");
        let mut s = spec();
        s.memory_bytes = 5 << 30;
        assert!(check_fits(&s, host).is_err());
        let mut s = spec();
        s.disk_bytes = 11 << 30;
        assert!(check_fits(&s, host).is_err());
    }

    #[test]
    fn unit_and_slice_names() {
        assert_eq!(unit_name("alice-c1-0"), "docklet-vnode-alice-c1-0.service");
        assert_eq!(
            id_from_unit("docklet-vnode-alice-c1-0.service"),
            Some("alice-c1-0")
        );
        assert_eq!(id_from_unit("docklet-worker.service"), None);
        assert_eq!(vnode_slice("bob-x", "b"), "docklet-u-bob\\x2dx-b.slice");
        let slice = vnode_slice("alice", "alice-c1-0");
        assert_eq!(slice, "docklet-u-alice-alice\\x2dc1\\x2d0.slice");
        let unit = format!(
            "/docklet.slice/docklet-u.slice/docklet-u-alice.slice/{slice}/docklet-vnode-alice-c1-0.service"
        );
        assert_eq!(
            vnode_cgroup(&unit, "alice", "alice-c1-0"),
            format!("/docklet.slice/docklet-u.slice/docklet-u-alice.slice/{slice}")
        );
        let old =
            "/docklet.slice/docklet-u.slice/docklet-u-alice.slice/docklet-vnode-alice-c1-0.service";
        assert_eq!(vnode_cgroup(old, "alice", "alice-c1-0"), old);
        assert_eq!(hostname(3), "host-3");
    }

    #[test]
    fn uid_ranges_are_disjoint_and_inside_the_container_range() {
        assert_eq!(uid_base(0), 524_288);
        assert_eq!(uid_base(1) - uid_base(0), 65_536);
        let last = uid_base(UID_SLOTS - 1);
        assert!(u64::from(last) + 65_536 <= 0x7000_0000);
        assert_eq!(free_uid_slot(&[]), Some(0));
        assert_eq!(free_uid_slot(&[0, 1, 3]), Some(2));
        assert_eq!(free_uid_slot(&[1, 0, 2]), Some(3));
        assert_eq!(free_uid_slot(&[5]), Some(0));
        let all: Vec<u32> = (0..UID_SLOTS).collect();
        assert_eq!(free_uid_slot(&all), None);
    }

    #[test]
    fn reconcile_decisions() {
        use Action::*;
        use DesiredState::*;
        use UnitState::*;
        assert_eq!(next_action(Running, Absent, false), Start);
        assert_eq!(next_action(Running, Absent, true), Start);
        assert_eq!(next_action(Running, Active, true), Nothing);
        assert_eq!(next_action(Running, Starting, true), Wait);
        assert_eq!(next_action(Stopped, Active, true), Stop);
        assert_eq!(next_action(Stopped, Stopping, true), Wait);
        assert_eq!(next_action(Stopped, Absent, true), Unmount);
        assert_eq!(next_action(Stopped, Absent, false), Action::Nothing);
        assert_eq!(next_action(Deleted, Active, true), Delete);
        assert_eq!(next_action(Deleted, Absent, false), Delete);
        assert_eq!(next_action(Exported, Active, true), Export);
        assert_eq!(next_action(Exported, Absent, false), Export);
        assert_eq!(next_action(Exported, Starting, true), Wait);
    }

    fn moving() -> VNodeSpec {
        VNodeSpec {
            state: DesiredState::Exported,
            handoff: Some(Handoff {
                token: "a".repeat(Handoff::TOKEN_LEN),
                from: "tb2".into(),
                resume: DesiredState::Running,
            }),
            ..spec()
        }
    }

    #[test]
    fn a_move_needs_a_well_formed_handoff() {
        assert_eq!(validate_spec(&moving()), Ok(()));
        let mut no_token = moving();
        no_token.handoff = None;
        assert!(validate_spec(&no_token).is_err());
        for token in ["short", &"A".repeat(24), &"../".repeat(8)] {
            let mut bad = moving();
            bad.handoff.as_mut().unwrap().token = token.to_owned();
            assert!(validate_spec(&bad).is_err(), "{token}");
        }
        let mut resume_deleted = moving();
        resume_deleted.handoff.as_mut().unwrap().resume = DesiredState::Deleted;
        assert!(validate_spec(&resume_deleted).is_err());
    }

    #[test]
    fn a_moving_vnode_takes_its_owners_state_when_it_arrives() {
        let mut spec = moving();
        assert!(want_state(&mut spec, DesiredState::Stopped));
        assert_eq!(spec.state, DesiredState::Exported);
        assert_eq!(spec.handoff.as_ref().unwrap().resume, DesiredState::Stopped);
        assert!(!want_state(&mut spec, DesiredState::Stopped));
        // A delete does not wait for the move.
        assert!(want_state(&mut spec, DesiredState::Deleted));
        assert_eq!(spec.state, DesiredState::Deleted);
        // Nothing brings a deleted vnode back.
        assert!(!want_state(&mut spec, DesiredState::Running));
        assert_eq!(spec.state, DesiredState::Deleted);
        let mut plain = super::tests::spec();
        assert!(want_state(&mut plain, DesiredState::Stopped));
        assert_eq!(plain.state, DesiredState::Stopped);
    }

    #[test]
    fn restart_backoff_doubles_up_to_a_minute() {
        assert_eq!(restart_delay_secs(1), 1);
        assert_eq!(restart_delay_secs(2), 2);
        assert_eq!(restart_delay_secs(4), 8);
        assert_eq!(restart_delay_secs(7), 64);
        assert_eq!(restart_delay_secs(100), 64);
    }

    #[test]
    fn desired_state_parses_and_specs_round_trip() {
        assert_eq!("stopped".parse::<DesiredState>(), Ok(DesiredState::Stopped));
        assert!("paused".parse::<DesiredState>().is_err());
        let json = serde_json::to_string(&spec()).unwrap();
        assert!(json.contains("\"state\":\"running\""), "{json}");
        assert_eq!(serde_json::from_str::<VNodeSpec>(&json).unwrap(), spec());
        assert!(serde_json::from_str::<VNodeSpec>(r#"{"id":"x"}"#).is_err());
    }

    #[test]
    fn workspace_tokens_are_random_and_recognised() {
        let token = new_workspace_token();
        assert!(is_workspace_token(&token), "{token}");
        assert_ne!(token, new_workspace_token());
        for bad in ["", "abc", &token.to_uppercase(), &format!("{token}\n")] {
            assert!(!is_workspace_token(bad), "{bad:?}");
        }
    }
}
