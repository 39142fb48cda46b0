//! Kernel plumbing for a vnode's root filesystem and network namespace: the idmapped view of
//! the image (so root in the vnode owns it without copying or chowning a byte), the overlay on
//! top, XFS/ext4 project quotas for the disk size, and persistent network namespaces.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags};

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(ret)
    }
}

/// A user namespace mapping ids 0..65536 to `base..base+65536`, as a file descriptor. The
/// kernel wants a namespace, not numbers, for an idmapped mount: a short-lived child creates
/// it, we write its maps and keep a reference.
pub fn userns_fd(base: u32, count: u32) -> io::Result<OwnedFd> {
    let mut command = Command::new("/bin/sleep");
    command
        .arg("30")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create a user namespace: {e}")))?;
    let pid = child.id();
    let result = (|| {
        let map = format!("0 {base} {count}\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        Ok(OwnedFd::from(File::open(format!("/proc/{pid}/ns/user"))?))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Mounts `source` read-only at `target` with its owners shifted by the user namespace
/// `userns` (0 → base): the image, owned by host root, appears owned by the vnode's root.
pub fn mount_idmapped(source: &Path, target: &Path, userns: &OwnedFd) -> io::Result<()> {
    let source_c = cstr(source)?;
    let target_c = cstr(target)?;
    // SAFETY: plain syscalls with valid, NUL-terminated paths and a correctly sized struct.
    unsafe {
        let tree = check(
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                source_c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            ),
            &format!("open_tree {}", source.display()),
        )?;
        let tree = OwnedFd::from_raw_fd(tree as i32);
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        let empty = c"";
        check(
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ),
            &format!(
                "idmapping {} (the filesystem must support idmapped mounts)",
                source.display()
            ),
        )?;
        check(
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                target_c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ),
            &format!("move_mount to {}", target.display()),
        )?;
    }
    Ok(())
}

/// Mounts an overlay of `lower` (read-only) and `upper` (the vnode's changes) at `target`.
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mounting the overlay at {}: {e}", target.display())))
}

/// Is something mounted exactly at `path`?
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == wanted)
    })
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Unmounts every mount stacked at `path`; detaches lazily what is still busy.
pub fn unmount_all(path: &Path) -> io::Result<()> {
    for _ in 0..16 {
        if !is_mount_point(path) {
            return Ok(());
        }
        match nix::mount::umount2(path, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => {
                tracing::warn!("{} is busy; detaching it lazily", path.display());
                nix::mount::umount2(path, MntFlags::MNT_DETACH)
                    .map_err(|e| io::Error::other(format!("unmounting {}: {e}", path.display())))?;
            }
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(io::Error::other(format!(
                    "unmounting {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Err(io::Error::other(format!(
        "{} still mounted after 16 unmounts",
        path.display()
    )))
}

#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

/// Puts a directory (and, by inheritance, everything created below it) in project `id`.
pub fn set_project(dir: &Path, id: u32) -> io::Result<()> {
    let file = File::open(dir)?;
    let mut attr = FsXattr::default();
    // SAFETY: the ioctls read and write exactly one fsxattr.
    unsafe {
        check(
            libc::ioctl(file.as_raw_fd(), FS_IOC_FSGETXATTR, &mut attr).into(),
            &format!("reading the project of {}", dir.display()),
        )?;
        attr.projid = id;
        attr.xflags |= FS_XFLAG_PROJINHERIT;
        check(
            libc::ioctl(file.as_raw_fd(), FS_IOC_FSSETXATTR, &attr).into(),
            &format!("setting project {id} on {}", dir.display()),
        )?;
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct IfDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

const Q_GETQUOTA: u32 = 0x80_0007;
const Q_SETQUOTA: u32 = 0x80_0008;
const PRJQUOTA: u32 = 2;
const QIF_BLIMITS: u32 = 1;

fn qcmd(cmd: u32, kind: u32) -> u32 {
    (cmd << 8) | (kind & 0xff)
}

/// Limits project `id` on the filesystem holding `any_path` to `bytes` (0 removes the limit).
/// Fails with a message naming the fix when the filesystem has no project quotas.
pub fn set_project_limit(any_path: &Path, id: u32, bytes: u64) -> io::Result<()> {
    let file = File::open(any_path)?;
    let blocks = bytes.div_ceil(1024);
    let quota = IfDqblk {
        bhardlimit: blocks,
        bsoftlimit: blocks,
        valid: QIF_BLIMITS,
        ..Default::default()
    };
    // SAFETY: quotactl_fd reads one if_dqblk.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            file.as_raw_fd(),
            qcmd(Q_SETQUOTA, PRJQUOTA),
            id,
            &quota as *const IfDqblk,
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot limit disk use under {} ({e}): vnode disk sizes are enforced with \
                 project quotas; put this directory on XFS or ext4 mounted with prjquota",
                any_path.display()
            ),
        ));
    }
    Ok(())
}

/// Bytes used by project `id` on the filesystem holding `any_path`.
pub fn project_usage(any_path: &Path, id: u32) -> io::Result<u64> {
    let file = File::open(any_path)?;
    let mut quota = IfDqblk::default();
    // SAFETY: quotactl_fd writes one if_dqblk.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            file.as_raw_fd(),
            qcmd(Q_GETQUOTA, PRJQUOTA),
            id,
            &mut quota as *mut IfDqblk,
        )
    };
    check(ret, "reading project quota")?;
    Ok(quota.curspace)
}

/// Creates a network namespace that outlives every process, bound at `path`, with loopback up.
pub fn create_netns(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::create(path)?;
    let target = path.to_owned();
    // unshare(CLONE_NEWNET) changes only the calling thread: do it on a thread of its own.
    std::thread::spawn(move || -> io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("unshare(CLONE_NEWNET): {e}")))?;
        loopback_up()?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("binding the netns at {}: {e}", target.display())))
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
    .inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: an ifreq for "lo" read and written by SIOCGIFFLAGS/SIOCSIFFLAGS.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(sock.into(), "socket")?;
        let sock = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        check(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req).into(),
            "SIOCGIFFLAGS lo",
        )?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req).into(),
            "SIOCSIFFLAGS lo",
        )?;
    }
    Ok(())
}

/// Removes a namespace made by [`create_netns`]; gone already is fine.
pub fn remove_netns(path: &Path) -> io::Result<()> {
    unmount_all(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }

    #[test]
    fn quota_commands_are_encoded_like_the_kernel_headers() {
        // QCMD(Q_SETQUOTA, PRJQUOTA) from <sys/quota.h>
        assert_eq!(qcmd(Q_SETQUOTA, PRJQUOTA), 0x8000_0802);
        assert_eq!(std::mem::size_of::<IfDqblk>(), 72);
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<MountAttr>(), 32);
    }
}
