//! What systemd is told to run for a vnode: the transient unit around `systemd-nspawn --boot`
//! and the slice that holds its limits; and how an ended unit is explained.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Runtime;
use crate::model::vnode::{self, VNodeSpec};
use crate::sys::systemd::{Property, exec_property};
use crate::worker::paths::{LocalState, VNodePaths};
use crate::worker::ssh;

/// How long systemd inside a vnode may take to report ready.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(60);

impl Runtime {
    /// `systemd-nspawn --boot` of the vnode's root filesystem in the user's uid range, with
    /// the user's data, the Jupyter configuration and the SSH keys bound in.
    fn nspawn_command(
        &self,
        spec: &VNodeSpec,
        paths: &VNodePaths,
        state: &LocalState,
        data: &Path,
    ) -> Vec<String> {
        let register = if self.register_machines.load(Ordering::Relaxed) {
            "yes"
        } else {
            "no"
        };
        vec![
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
            format!(
                "--hostname={}",
                vnode::node_hostname(&spec.cluster, spec.index)
            ),
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
        ]
    }

    pub(super) fn unit_properties(
        &self,
        spec: &VNodeSpec,
        paths: &VNodePaths,
        state: &LocalState,
        data: &Path,
    ) -> Vec<Property> {
        use zbus::Variant;
        let nspawn = self.nspawn_command(spec, paths, state, data);
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
                    vnode::node_hostname(&spec.cluster, spec.index)
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
    pub(super) fn slice_properties(spec: &VNodeSpec) -> Vec<Property> {
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
}
