//! The vnode's PID 1 on this host, held by a pidfd for exec and terminals.

use std::os::fd::{AsFd, OwnedFd};

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

/// The namespaces nsenter enters, by `/proc/<pid>/ns/` name and nsenter option, in nsenter's
/// own order.
const NAMESPACES: [(&str, &str); 7] = [
    ("user", "--user"),
    ("cgroup", "--cgroup"),
    ("ipc", "--ipc"),
    ("uts", "--uts"),
    ("net", "--net"),
    ("pid", "--pid"),
    ("mnt", "--mount"),
];

impl Leader {
    /// Its namespaces as open files with their nsenter option, the ones the host's init
    /// shares left out (as `nsenter --all` does): opened by number, then checked by the
    /// pidfd.
    pub fn nsenter_namespaces(&self) -> std::io::Result<Vec<(&'static str, std::fs::File)>> {
        use std::os::unix::fs::MetadataExt;
        let mut open = Vec::new();
        for (kind, option) in NAMESPACES {
            let file = self.namespace(kind)?;
            let theirs = file.metadata()?;
            let host = std::fs::metadata(format!("/proc/1/ns/{kind}"))?;
            if (theirs.dev(), theirs.ino()) != (host.dev(), host.ino()) {
                open.push((option, file));
            }
        }
        if !self.alive() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the vnode stopped",
            ));
        }
        Ok(open)
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
