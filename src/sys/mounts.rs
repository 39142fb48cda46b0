//! Kernel plumbing for a vnode's root filesystem and network namespace: the idmapped view of
//! the image (so root in the vnode owns it without copying or chowning a byte), the overlay on
//! top, the sized disk that holds the overlay's writable layer, and persistent network
//! namespaces.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
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
    userns_fd_mapping(0, base, count)
}

/// A user namespace mapping ids `inside..inside+count` to `outside..outside+count`.
/// `userns_fd_mapping(base, 0, n)` undoes [`userns_fd`]: through it, a vnode's files (owned
/// by `base + k` on the host) read as owned by `k`, as in an image.
pub fn userns_fd_mapping(inside: u32, outside: u32, count: u32) -> io::Result<OwnedFd> {
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
        let map = format!("{inside} {outside} {count}\n");
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
/// An overlay at `target`: `lowers` top first (a user image's layer, then its system image).
pub fn mount_overlay(lowers: &[&Path], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let options = format!(
        "{},upperdir={},workdir={}",
        lowerdir(lowers),
        upper.display(),
        work.display()
    );
    overlay(&options, MsFlags::empty(), target)
}

/// A read-only overlay of `lowers` (top first) at `target`: the layers as one tree, with
/// whiteouts and opaque directories applied.
pub fn mount_layers_readonly(lowers: &[&Path], target: &Path) -> io::Result<()> {
    overlay(&lowerdir(lowers), MsFlags::MS_RDONLY, target)
}

fn lowerdir(lowers: &[&Path]) -> String {
    let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", lowers.join(":"))
}

fn overlay(options: &str, flags: MsFlags, target: &Path) -> io::Result<()> {
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options),
    )
    .map_err(|e| io::Error::other(format!("mounting the overlay at {}: {e}", target.display())))
}

/// Is something mounted exactly at `path`? One `statx` (the kernel's mount-root attribute),
/// so that checking every vnode's mounts costs the same however many mounts the host has;
/// `/proc/self/mountinfo` only where the kernel does not report the attribute.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(c_path) = cstr(path) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed statx buffer the call fills.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let done = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    match done {
        0 if stx.stx_attributes_mask & mount_root != 0 => stx.stx_attributes & mount_root != 0,
        0 => is_listed_mount_point(path),
        _ => false,
    }
}

/// [`is_mount_point`] by reading `/proc/self/mountinfo`.
fn is_listed_mount_point(path: &Path) -> bool {
    let wanted = path.to_string_lossy();
    mountinfo_column(4).is_ok_and(|points| points.iter().any(|mp| *mp == wanted))
}

/// The directories mounted somewhere in this mount namespace (each mount's root within its
/// filesystem): what a bind or idmapped mount of a directory keeps in use.
pub fn mounted_roots() -> io::Result<Vec<PathBuf>> {
    Ok(mountinfo_column(3)?
        .into_iter()
        .map(PathBuf::from)
        .collect())
}

/// Field `index` of every line of `/proc/self/mountinfo`, unescaped (3: the mount's root
/// within its filesystem, 4: the mount point).
fn mountinfo_column(index: usize) -> io::Result<Vec<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(index))
        .map(unescape_mountinfo)
        .collect())
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

/// Makes the vnode's disk: a sparse file of `bytes` with an ext4 in it. The size is the limit
/// (a sized filesystem, which works on every kernel, unlike project quotas); unused space
/// costs nothing on the host.
pub fn make_disk_image(path: &Path, bytes: u64) -> io::Result<()> {
    let file = File::options().write(true).create_new(true).open(path)?;
    file.set_len(bytes)?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "docklet-vnode"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(path)
        .stdin(Stdio::null())
        .output();
    let result = match output {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(io::Error::other(format!(
            "mkfs.ext4 {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot run mkfs.ext4 (package e2fsprogs): {e}"),
        )),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LOOP_MAJOR: u64 = 7;

/// Mounts the ext4 in `image` at `target` through a loop device that goes away with the
/// unmount (autoclear).
pub fn mount_disk_image(image: &Path, target: &Path) -> io::Result<()> {
    let backing = File::options().read(true).write(true).open(image)?;
    let control = File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/loop-control: {e}")))?;
    // Another process may take the free device between asking and configuring: try again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = check(
            unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) }.into(),
            "LOOP_CTL_GET_FREE",
        )? as u64;
        let device = std::path::PathBuf::from(format!("/dev/loop{number}"));
        if !device.exists() {
            // A host whose /dev is not devtmpfs (a container, like the testbed's hosts).
            nix::sys::stat::mknod(
                &device,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o660),
                nix::sys::stat::makedev(LOOP_MAJOR, number),
            )
            .map_err(|e| io::Error::other(format!("mknod {}: {e}", device.display())))?;
        }
        let loop_dev = File::options().read(true).write(true).open(&device)?;
        let mut config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            // SAFETY: all-zero is a valid loop_info64.
            info: unsafe { std::mem::zeroed() },
            reserved: [0; 8],
        };
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads one loop_config.
        let ret = unsafe { libc::ioctl(loop_dev.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("LOOP_CONFIGURE {}: {e}", device.display()),
            ));
        }
        // Mount while our descriptor still holds the device, or autoclear frees it at once.
        // The vnode's root writes what it likes here: nothing of it may be setuid or a device
        // on the host's side (inside, files are run through the overlay, which keeps them).
        let mounted = nix::mount::mount(
            Some(device.as_path()),
            target,
            Some("ext4"),
            MsFlags::MS_NOATIME | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        );
        drop(loop_dev);
        return mounted.map_err(|e| {
            io::Error::other(format!(
                "mounting {} ({}) at {}: {e}",
                image.display(),
                device.display(),
                target.display()
            ))
        });
    }
    Err(io::Error::other("no free loop device after 16 tries"))
}

/// Bytes used on the filesystem mounted at `path`.
pub fn used_bytes(path: &Path) -> io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok((stat.blocks() - stat.blocks_free()) * stat.fragment_size())
}

/// Creates a network namespace that outlives every process, bound at `path`, with loopback up
/// and unprivileged low ports and ping allowed.
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
        // The namespace belongs to the host's user namespace, not the vnode's, so root inside
        // the vnode has no network privileges in it (no address or MAC changes: no spoofing).
        // It still has to bind sshd's port 22 and ping: allow both to everyone in here.
        for (key, value) in [
            ("net/ipv4/ip_unprivileged_port_start", "0"),
            ("net/ipv4/ping_group_range", "0 2147483647"),
            // Users' networks are IPv4 only: no IPv6 (nor its link-local chatter) in here.
            ("net/ipv6/conf/all/disable_ipv6", "1"),
            ("net/ipv6/conf/default/disable_ipv6", "1"),
        ] {
            std::fs::write(format!("/proc/sys/{key}"), value)
                .map_err(|e| io::Error::other(format!("sysctl {key} in the netns: {e}")))?;
        }
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

/// Copies a sparse file (a vnode's disk image) so that the copy is sparse too: only the
/// source's data extents are read (SEEK_DATA/SEEK_HOLE, the whole file where the filesystem
/// cannot tell), and blocks of zeros in them become holes. A 4 GiB disk with 50 MiB written
/// costs 50 MiB of reading and writing, on the shared filesystem too.
///
/// Each end is opened from its tree's root (`from_root`, `to_root`) without following a link
/// anywhere below it ([`super::beneath`]): a handoff on the shared filesystem, written by
/// another host, must not make this one read or write anything outside it.
pub fn copy_sparse(from_root: &Path, from: &Path, to_root: &Path, to: &Path) -> io::Result<u64> {
    use super::beneath::{Access, open_under};
    use std::io::{Read, Seek, SeekFrom, Write};
    const BLOCK: usize = 64 * 1024;
    let mut source = open_under(from_root, from, Access::Read)?;
    let meta = source.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            from.display()
        )));
    }
    let len = meta.len();
    let mut target = open_under(to_root, to, Access::CreateTruncate)?;
    let fd = source.as_raw_fd();
    let mut copied = 0u64;
    let mut buf = vec![0u8; BLOCK];
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd, offset, libc::SEEK_DATA) };
        let (start, end) = if data < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => break, // only a hole from here on
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => (offset, len as i64),
                _ => return Err(io::Error::last_os_error()),
            }
        } else {
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            (data, if hole < 0 { len as i64 } else { hole })
        };
        source.seek(SeekFrom::Start(start as u64))?;
        let mut at = start;
        while at < end {
            let want = BLOCK.min((end - at) as usize);
            source.read_exact(&mut buf[..want])?;
            if buf[..want].iter().any(|b| *b != 0) {
                target.seek(SeekFrom::Start(at as u64))?;
                target.write_all(&buf[..want])?;
                copied += want as u64;
            }
            at += want as i64;
        }
        offset = end;
    }
    target.set_len(len)?;
    target.sync_all()?;
    Ok(copied)
}

/// What the vnode reconciler asks of the kernel's mount table: the seam between it and the
/// host, with [`HostMounts`] for real and [`RecordingMounts`] for tests.
pub trait Mounts: Send + Sync {
    fn is_mount_point(&self, path: &Path) -> bool;
    /// `source` at `target`, its ids shifted into `count` ids from `uid_base` (see
    /// [`mount_idmapped`]).
    fn mount_shifted(
        &self,
        source: &Path,
        target: &Path,
        uid_base: u32,
        count: u32,
    ) -> io::Result<()>;
    fn mount_overlay(
        &self,
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()>;
    fn make_disk_image(&self, path: &Path, bytes: u64) -> io::Result<()>;
    fn mount_disk_image(&self, image: &Path, target: &Path) -> io::Result<()>;
    fn create_netns(&self, path: &Path) -> io::Result<()>;
    fn remove_netns(&self, path: &Path) -> io::Result<()>;
    /// Unmounts everything at or below `path` (nothing mounted: nothing to do).
    fn unmount_all(&self, path: &Path) -> io::Result<()>;
}

/// This host's kernel.
pub struct HostMounts;

impl Mounts for HostMounts {
    fn is_mount_point(&self, path: &Path) -> bool {
        is_mount_point(path)
    }
    fn mount_shifted(
        &self,
        source: &Path,
        target: &Path,
        uid_base: u32,
        count: u32,
    ) -> io::Result<()> {
        mount_idmapped(source, target, &userns_fd(uid_base, count)?)
    }
    fn mount_overlay(
        &self,
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        mount_overlay(lowers, upper, work, target)
    }
    fn make_disk_image(&self, path: &Path, bytes: u64) -> io::Result<()> {
        make_disk_image(path, bytes)
    }
    fn mount_disk_image(&self, image: &Path, target: &Path) -> io::Result<()> {
        mount_disk_image(image, target)
    }
    fn create_netns(&self, path: &Path) -> io::Result<()> {
        create_netns(path)
    }
    fn remove_netns(&self, path: &Path) -> io::Result<()> {
        remove_netns(path)
    }
    fn unmount_all(&self, path: &Path) -> io::Result<()> {
        unmount_all(path)
    }
}

/// Mounts for tests: a mount table in memory, and every call in order (`mount PATH`,
/// `umount PATH`, `mkfs PATH`, `netns PATH`, `rm-netns PATH`). A disk image and a network
/// namespace are empty files, as the real ones start.
#[derive(Default)]
pub struct RecordingMounts {
    pub mounted: std::sync::Mutex<std::collections::BTreeSet<PathBuf>>,
    pub calls: std::sync::Mutex<Vec<String>>,
}

impl RecordingMounts {
    fn record(&self, call: &str, path: &Path) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{call} {}", path.display()));
    }

    fn mount(&self, target: &Path) -> io::Result<()> {
        self.record("mount", target);
        if !target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("mount point {} does not exist", target.display()),
            ));
        }
        self.mounted.lock().unwrap().insert(target.to_owned());
        Ok(())
    }

    /// Mount points below `root`, for checking that nothing is left.
    pub fn mounted_under(&self, root: &Path) -> Vec<PathBuf> {
        let mounted = self.mounted.lock().unwrap();
        mounted
            .iter()
            .filter(|p| p.starts_with(root))
            .cloned()
            .collect()
    }
}

impl Mounts for RecordingMounts {
    fn is_mount_point(&self, path: &Path) -> bool {
        self.mounted.lock().unwrap().contains(path)
    }
    fn mount_shifted(&self, _: &Path, target: &Path, _: u32, _: u32) -> io::Result<()> {
        self.mount(target)
    }
    fn mount_overlay(&self, _: &[&Path], _: &Path, _: &Path, target: &Path) -> io::Result<()> {
        self.mount(target)
    }
    fn make_disk_image(&self, path: &Path, _: u64) -> io::Result<()> {
        self.record("mkfs", path);
        File::create(path).map(drop)
    }
    fn mount_disk_image(&self, _: &Path, target: &Path) -> io::Result<()> {
        self.mount(target)
    }
    fn create_netns(&self, path: &Path) -> io::Result<()> {
        self.record("netns", path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        File::create(path)?;
        self.mounted.lock().unwrap().insert(path.to_owned());
        Ok(())
    }
    fn remove_netns(&self, path: &Path) -> io::Result<()> {
        self.record("rm-netns", path);
        self.mounted.lock().unwrap().remove(path);
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    fn unmount_all(&self, path: &Path) -> io::Result<()> {
        let mut mounted = self.mounted.lock().unwrap();
        let below: Vec<PathBuf> = mounted
            .iter()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in below {
            mounted.remove(&p);
            self.calls
                .lock()
                .unwrap()
                .push(format!("umount {}", p.display()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_follow_no_link_at_either_end() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, b"data").unwrap();
        let root = dir.path();
        assert!(copy_sparse(root, &link, root, &root.join("copy")).is_err());
        assert!(!root.join("copy").exists());
        assert!(copy_sparse(root, &real, root, &link).is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        // A directory link on the way out of the tree: refused as well.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.join("dirlink")).unwrap();
        assert!(copy_sparse(root, &real, root, &root.join("dirlink/copy")).is_err());
        assert!(!elsewhere.path().join("copy").exists());
    }

    #[test]
    fn sparse_copies_keep_their_holes_and_their_bytes() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("disk.img");
        let to = dir.path().join("copy.img");
        let mut f = File::create(&from).unwrap();
        f.set_len(256 << 20).unwrap();
        f.write_all(b"superblock").unwrap();
        f.seek(SeekFrom::Start(100 << 20)).unwrap();
        f.write_all(&[7u8; 200_000]).unwrap();
        // Written zeros: data to the filesystem, a hole in the copy.
        f.seek(SeekFrom::Start(200 << 20)).unwrap();
        f.write_all(&vec![0u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let copied = copy_sparse(dir.path(), &from, dir.path(), &to).unwrap();
        assert!(copied < 1 << 20, "copied {copied} bytes");
        assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
        let blocks = std::fs::metadata(&to).unwrap().blocks();
        assert!(blocks * 512 < 2 << 20, "{blocks} blocks allocated");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }

    #[test]
    fn kernel_structs_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        assert_eq!(std::mem::size_of::<MountAttr>(), 32);
    }
}
