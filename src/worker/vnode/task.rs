//! A batch task's command on its node. Once the master says go ([`TaskRun::start`]), the
//! worker runs it as a transient unit of its own, `docklet-task-<id>.service`, in the vnode's
//! slice (its limits): `nsenter` into the vnode's namespaces, `setpriv` to its root, then a
//! small shell that exports the task's variables, enters its working directory under
//! `/root/nfs` and runs the command with stdout and stderr appended to the task's files. Those
//! files are opened inside the vnode by its own (unprivileged) root, never by the host's.
//!
//! The unit survives a worker restart; its ExecStopPost writes how it ended to the vnode's
//! `task-exit` (root's, on the host), and `task-started` marks that it was started, so a
//! command runs once per node whatever restarts: a marker without a unit or an end means the
//! command was lost (its host rebooted), which is reported as such. The worker reports
//! start and end in the vnode's status; [`Runtime::watch_tasks`] notices ends.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;
use zbus::Variant;

use super::{Runtime, VNodeError};
use crate::daemon::now_secs;
use crate::model::vnode::{self, TaskExit, TaskRun, TaskStatus, UnitState, VNodeSpec};
use crate::store::EtcdStore;
use crate::store::vnodes::StoredSpec;
use crate::sys::systemd::{Property, exec_property};
use crate::worker::paths::{VNodePaths, replace_file};

/// How often running tasks' end files are looked for.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// How long a node waits for a working directory another host claimed to make.
const WORKDIR_WAIT: Duration = Duration::from_secs(10);

/// The unit that runs a node's task command.
pub fn task_unit(id: &str) -> String {
    format!("docklet-task-{id}.service")
}

/// What runs inside the vnode after nsenter and setpriv: the variables, the working
/// directory, the output files, then the command itself (all passed as arguments, never as
/// shell text). The directory and files are tried for up to 10 s: other hosts make the same
/// directory at the same moment on the shared filesystem, whose clients can briefly
/// disagree about it; exit code 125 says they never became usable.
pub fn inner_argv(task: &TaskRun) -> Vec<String> {
    const SCRIPT: &str = r#"d=$1 o=$2 e=$3 n=$4; shift 4
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
i=0
until mkdir -p -- "$d" 2>/dev/null && cd -- "$d" 2>/dev/null && : >>"$o" 2>/dev/null && : >>"$e" 2>/dev/null; do
  i=$((i + 1))
  if [ "$i" -ge 40 ]; then mkdir -p -- "$d" && cd -- "$d" && : >>"$o" && : >>"$e" || exit 125; break; fi
  sleep 0.25
done
exec "$@" >>"$o" 2>>"$e" </dev/null"#;
    let mut argv: Vec<String> = vec![
        "/bin/sh".into(),
        "-c".into(),
        SCRIPT.into(),
        "docklet-task".into(),
        task.workdir.clone(),
        task.stdout.clone(),
        task.stderr.clone(),
        task.env.len().to_string(),
    ];
    argv.extend(task.env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend(task.argv.iter().cloned());
    argv
}

/// `/etc/docklet/hostfile`: the instance's nodes, one per line.
pub fn hostfile(nodes: u32) -> String {
    (0..nodes).map(|i| format!("task-{i}\n")).collect()
}

impl Runtime {
    /// The task part of a running vnode's reconcile: writes its hostfile, starts its command
    /// once, and reports what became of it.
    pub(super) async fn reconcile_task(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
    ) -> Result<(), VNodeError> {
        let Some(task) = &spec.task else {
            return Ok(());
        };
        let paths = self.paths(&spec.id);
        let hostfile_path = paths.etc.join("hostfile");
        let wanted = hostfile(task.nodes);
        if std::fs::read_to_string(&hostfile_path).ok().as_deref() != Some(wanted.as_str()) {
            replace_file(&hostfile_path, wanted.as_bytes(), 0o644)
                .map_err(|e| VNodeError::Refused(format!("writing the hostfile: {e}")))?;
        }
        if !task.runs_command || !task.start {
            return Ok(());
        }
        let status = match self.task_state(&paths, &spec.id).await? {
            Some(status) => status,
            None => {
                if let Err(e) = self.make_workdir(store, spec, task, &paths).await {
                    // The command's own `mkdir -p` tries again; its failure ends the attempt.
                    tracing::warn!(vnode = %spec.id, "{e}");
                }
                self.start_task(spec, task, &paths).await?
            }
        };
        self.report_task(store, &spec.id, status).await
    }

    /// The task's working directory in the user's `~/nfs`, made here (beneath it, for the
    /// vnode's root) rather than by the command's `mkdir -p`: several nodes and instances
    /// need it at once, from several hosts, on the shared filesystem, so the host that
    /// claims it makes it and the others wait for it (see [`crate::store::claims`]).
    async fn make_workdir(
        &self,
        store: &EtcdStore,
        spec: &VNodeSpec,
        task: &TaskRun,
        paths: &VNodePaths,
    ) -> Result<(), VNodeError> {
        use crate::sys::beneath::{Access, make_dirs_under, open_under};
        let Some(relative) = task.workdir.strip_prefix("/root/nfs") else {
            return Ok(());
        };
        let Some(state) = crate::worker::paths::LocalState::load(&paths.state) else {
            return Ok(());
        };
        let data = crate::worker::paths::user_data_dir(&self.config, &spec.user);
        let target = data.join(relative.trim_start_matches('/'));
        let exists = || {
            open_under(&data, &target, Access::Read)
                .and_then(|f| f.metadata())
                .is_ok_and(|m| m.is_dir())
        };
        if exists() {
            return Ok(());
        }
        let failed = |e: String| {
            VNodeError::Refused(format!(
                "making the working directory {}: {e}",
                task.workdir
            ))
        };
        let claim = format!("data{relative}");
        if store.claim_dir(&spec.user, &claim, &self.host).await? {
            let owner = (state.uid_base, state.uid_base);
            return make_dirs_under(&data, relative, owner, &self.host)
                .map_err(|e| failed(e.to_string()));
        }
        let deadline = std::time::Instant::now() + WORKDIR_WAIT;
        while !exists() {
            if std::time::Instant::now() > deadline {
                return Err(failed(format!(
                    "another host claimed it but it did not appear within {} s",
                    WORKDIR_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// What became of the command, `None` if it was never started.
    async fn task_state(
        &self,
        paths: &VNodePaths,
        id: &str,
    ) -> Result<Option<TaskStatus>, VNodeError> {
        let Ok(started) = std::fs::read_to_string(&paths.task_started) else {
            return Ok(None);
        };
        let started_at = started.trim().parse().unwrap_or(0);
        let ended = |at: u64| {
            std::fs::read_to_string(&paths.task_exit)
                .ok()
                .map(|line| TaskExit::parse(&line, at))
        };
        let mtime = |p: &std::path::Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or_else(now_secs, |d| d.as_secs())
        };
        let mut exit = ended(mtime(&paths.task_exit));
        if exit.is_none() {
            let unit = self.units.unit_info(&task_unit(id)).await?;
            if unit.is_none_or(|u| u.state() == UnitState::Absent) {
                // Ended between the two reads, or lost.
                exit = ended(mtime(&paths.task_exit)).or_else(|| {
                    Some(TaskExit {
                        ended_at: now_secs(),
                        code: -1,
                        result: "lost".into(),
                        cpu_usec: None,
                        memory_peak_bytes: None,
                    })
                });
            }
        }
        Ok(Some(TaskStatus { started_at, exit }))
    }

    async fn start_task(
        &self,
        spec: &VNodeSpec,
        task: &TaskRun,
        paths: &VNodePaths,
    ) -> Result<TaskStatus, VNodeError> {
        let id = spec.id.as_str();
        let not_running = || VNodeError::NotRunning {
            id: id.to_owned(),
            detail: String::new(),
        };
        let leader = self.leader(id).await.ok_or_else(not_running)?;
        let namespaces = leader.nsenter_namespaces().map_err(|_| not_running())?;
        let worker = std::process::id();
        let mut argv: Vec<String> = vec!["/usr/bin/nsenter".into()];
        argv.extend(namespaces.iter().map(|(option, file)| {
            use std::os::fd::AsRawFd;
            format!("{option}=/proc/{worker}/fd/{}", file.as_raw_fd())
        }));
        argv.extend(
            [
                "--",
                "setpriv",
                "--reuid=root",
                "--regid=root",
                "--init-groups",
                "--reset-env",
                "--",
            ]
            .map(String::from),
        );
        argv.extend(inner_argv(task));
        let now = now_secs();
        let _ = std::fs::remove_file(&paths.task_exit);
        replace_file(&paths.task_started, now.to_string().as_bytes(), 0o600)
            .map_err(|e| VNodeError::Refused(format!("marking the task started: {e}")))?;
        // ExecStopPost runs in the unit's own cgroup, which still holds what the command
        // used: its CPU time and (cgroup v2's memory controller, kernels from 5.19) its
        // memory peak; on a hybrid hierarchy the v2 tree is `unified`. No `${...}` here:
        // systemd would substitute it from the unit's environment before sh sees it.
        let record_exit: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "p=$(sed -n 's/^0:://p' /proc/self/cgroup); \
                 for root in /sys/fs/cgroup /sys/fs/cgroup/unified; do \
                 [ -f \"$root$p/cpu.stat\" ] && break; done; \
                 cpu=$(sed -n 's/^usage_usec //p' \"$root$p/cpu.stat\" 2>/dev/null); \
                 mem=$(cat \"$root$p/memory.peak\" 2>/dev/null); \
                 echo \"$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS $cpu $mem\" > {}",
                paths.task_exit.display()
            ),
        ];
        let mut properties: Vec<Property> = vec![
            (
                "Description",
                Variant::new(format!("Docklet batch task on vnode {id}")),
            ),
            ("Slice", Variant::new(vnode::vnode_slice(&spec.user, id))),
            ("Type", Variant::new("exec")),
            ("CollectMode", Variant::new("inactive-or-failed")),
            exec_property("ExecStart", &argv),
            exec_property("ExecStopPost", &record_exit),
        ];
        if let Some(secs) = task.timeout_secs {
            properties.push(("RuntimeMaxUSec", Variant::new(secs * 1_000_000)));
        }
        self.units
            .start_transient(&task_unit(id), properties, Duration::from_secs(30))
            .await?;
        // nsenter opens the namespaces through this process's descriptors as it starts: keep
        // them a moment, off the reconcile's path.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(namespaces);
        });
        info!(
            action = "task.start",
            "vnode {id}: batch task command started"
        );
        Ok(TaskStatus {
            started_at: now,
            exit: None,
        })
    }

    /// Writes the task's part of the status when it changed.
    async fn report_task(
        &self,
        store: &EtcdStore,
        id: &str,
        task: TaskStatus,
    ) -> Result<(), VNodeError> {
        let changed = {
            let mut memos = self.memos.lock().unwrap();
            let memo = memos.entry(id.to_owned()).or_default();
            match memo.status.as_mut() {
                Some(status) if status.task.as_ref() != Some(&task) => {
                    if let Some(exit) = &task.exit {
                        info!(
                            action = "task.end",
                            code = exit.code,
                            "vnode {id}: batch task command ended: {} (code {})",
                            exit.result,
                            exit.code
                        );
                    }
                    status.task = Some(task);
                    status.updated_at = now_secs();
                    Some(status.clone())
                }
                _ => None,
            }
        };
        if let Some(status) = changed {
            store.put_vnode_status(&status).await?;
        }
        Ok(())
    }

    /// Runs [`Runtime::watch_tasks`] until the returned guard is dropped.
    pub fn spawn_task_watch(self: &Arc<Self>, store: &EtcdStore) -> TaskWatch {
        TaskWatch(tokio::spawn(self.clone().watch_tasks(store.clone())))
    }

    /// Forever: looks for the end files of running task commands and reconciles their
    /// vnodes when one appears (an end reported within [`WATCH_EVERY`]).
    pub async fn watch_tasks(self: Arc<Self>, store: EtcdStore) {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let running: Vec<VNodeSpec> = {
                let memos = self.memos.lock().unwrap();
                memos
                    .values()
                    .filter(|m| {
                        m.status
                            .as_ref()
                            .and_then(|s| s.task.as_ref())
                            .is_some_and(|t| t.exit.is_none())
                    })
                    .filter_map(|m| m.spec.clone())
                    .collect()
            };
            for spec in running {
                if self.paths(&spec.id).task_exit.exists() {
                    let stored = StoredSpec {
                        id: spec.id.clone(),
                        spec: Ok(spec),
                    };
                    self.schedule(&store, stored);
                }
            }
        }
    }
}

/// Stops the task watch when dropped (the store it reads through was replaced).
pub struct TaskWatch(tokio::task::JoinHandle<()>);

impl Drop for TaskWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_and_variables_are_arguments_never_shell_text() {
        let task = TaskRun {
            argv: vec!["echo".into(), "$(id)".into()],
            env: [("A".to_owned(), "x y; rm -rf /".to_owned())].into(),
            workdir: "/root/nfs/jobs/1".into(),
            stdout: "/root/nfs/jobs/1/a.out".into(),
            stderr: "/root/nfs/jobs/1/a.err".into(),
            nodes: 2,
            runs_command: true,
            timeout_secs: None,
            start: true,
        };
        let argv = inner_argv(&task);
        assert_eq!(argv[..2], ["/bin/sh", "-c"]);
        assert_eq!(
            argv[4..],
            [
                "/root/nfs/jobs/1",
                "/root/nfs/jobs/1/a.out",
                "/root/nfs/jobs/1/a.err",
                "1",
                "A=x y; rm -rf /",
                "echo",
                "$(id)"
            ]
        );
        assert_eq!(hostfile(2), "task-0\ntask-1\n");
        assert_eq!(
            task_unit("alice-3-0-0-0-1"),
            "docklet-task-alice-3-0-0-0-1.service"
        );
    }

    #[test]
    fn ends_are_read_from_what_systemd_passed() {
        let e = TaskExit::parse("exit-code exited 3\n", 9);
        assert_eq!((e.code, e.result.as_str()), (3, "exit-code"));
        let e = TaskExit::parse("timeout killed TERM", 9);
        assert!(e.timed_out());
        assert_eq!(e.code, 143);
        let e = TaskExit::parse("success exited 0", 9);
        assert_eq!(e.code, 0);
        assert_eq!((e.cpu_usec, e.memory_peak_bytes), (None, None));
        let e = TaskExit::parse("success exited 0 1500000 73728\n", 9);
        assert_eq!(
            (e.cpu_usec, e.memory_peak_bytes),
            (Some(1_500_000), Some(73_728))
        );
        let e = TaskExit::parse("success exited 0 1500000 -", 9);
        assert_eq!((e.cpu_usec, e.memory_peak_bytes), (Some(1_500_000), None));
    }
}
