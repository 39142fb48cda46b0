//! Copies of directory trees as `cp -a` makes them, in-process: owners, modes, times, links
//! (symbolic and hard), device nodes (overlayfs's whiteouts) and extended attributes as they
//! are, nothing followed. Image saves copy a parent layer and fold a vnode's changes over it;
//! system image updates copy a merged view.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat};

/// Which extended attributes a copy takes, by name.
pub type XattrFilter = fn(&CStr) -> bool;

/// Every extended attribute.
pub fn all_xattrs(_: &CStr) -> bool {
    true
}

/// Copies `from` (a directory) as the new directory `to`, with every extended attribute.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists already", to.display()),
        ));
    }
    copy_over(from, to, all_xattrs)
}

/// Copies `from`'s entries over the directory `to` as unpacking an archive of `from` there
/// would: directories merge, anything else replaces what is there. Extended attributes are
/// those `keep` takes.
pub fn copy_over(from: &Path, to: &Path, keep: XattrFilter) -> io::Result<()> {
    let mut copy = Copy {
        keep,
        linked: HashMap::new(),
    };
    copy.entry(from, to)
}

struct Copy {
    keep: XattrFilter,
    /// Files with several links, by (device, inode), with where their first copy went.
    linked: HashMap<(u64, u64), PathBuf>,
}

impl Copy {
    fn entry(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", from.display()));
        let meta = fs::symlink_metadata(from).map_err(context)?;
        let kind = meta.file_type();
        let existing = fs::symlink_metadata(to).ok();
        if let Some(old) = &existing
            && !(kind.is_dir() && old.is_dir())
        {
            remove(to, old)?;
        }
        let to_context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", to.display()));
        if kind.is_dir() {
            if existing.as_ref().is_none_or(|old| !old.is_dir()) {
                fs::create_dir(to).map_err(to_context)?;
            }
            for child in fs::read_dir(from).map_err(context)? {
                let name = child.map_err(context)?.file_name();
                self.entry(&from.join(&name), &to.join(&name))?;
            }
        } else if kind.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.linked.get(&key) {
                    return fs::hard_link(first, to).map_err(to_context);
                }
                self.linked.insert(key, to.to_owned());
            }
            fs::copy(from, to).map_err(to_context)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(from).map_err(context)?;
            std::os::unix::fs::symlink(target, to).map_err(to_context)?;
        } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
            let node = if kind.is_char_device() {
                SFlag::S_IFCHR
            } else if kind.is_block_device() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            let mode = Mode::from_bits_truncate(meta.mode());
            mknod(to, node, mode, meta.rdev()).map_err(|e| to_context(e.into()))?;
        } else {
            // A socket means nothing without its process.
            return Ok(());
        }
        self.metadata(from, to, &meta).map_err(to_context)
    }

    /// Owner, then mode (a change of owner clears setuid bits), extended attributes, times.
    fn metadata(&self, from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
        let symlink = meta.file_type().is_symlink();
        fchownat(
            AT_FDCWD,
            to,
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if !symlink {
            fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
        for name in xattr_names(from)? {
            if !(self.keep)(&name) {
                continue;
            }
            let value = get_xattr(from, &name)?;
            if let Err(e) = set_xattr(to, &name, &value) {
                // Links take no user attributes; a filesystem may take none at all.
                let unsupported = matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP));
                if !(symlink && unsupported) {
                    return Err(e);
                }
            }
        }
        let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
        let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
        utimensat(
            AT_FDCWD,
            to,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )?;
        Ok(())
    }
}

fn remove(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}

/// The names of `path`'s extended attributes (the link's own, not its target's).
fn xattr_names(path: &Path) -> io::Result<Vec<CString>> {
    let c = c_path(path)?;
    loop {
        // SAFETY: a NUL-terminated path; a null buffer asks for the size.
        let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut buffer = vec![0u8; size as usize];
        // SAFETY: the buffer is as long as we say.
        let got = unsafe { libc::llistxattr(c.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // it grew meanwhile
            }
            return Err(e);
        }
        buffer.truncate(got as usize);
        return Ok(buffer
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty())
            .filter_map(|name| CString::new(name).ok())
            .collect());
    }
}

fn get_xattr(path: &Path, name: &CStr) -> io::Result<Vec<u8>> {
    let c = c_path(path)?;
    loop {
        // SAFETY: NUL-terminated strings; a null buffer asks for the size.
        let size = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut value = vec![0u8; size as usize];
        // SAFETY: the buffer is as long as we say.
        let got = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        value.truncate(got as usize);
        return Ok(value);
    }
}

fn set_xattr(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let set = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_xattrs_work(dir: &Path) -> bool {
        let probe = dir.join("probe");
        fs::write(&probe, "").unwrap();
        let ok = set_xattr(&probe, c"user.docklet", b"1").is_ok();
        fs::remove_file(probe).unwrap();
        ok
    }

    #[test]
    fn a_copy_keeps_modes_times_links_and_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        fs::create_dir_all(from.join("etc/sub")).unwrap();
        fs::write(from.join("etc/motd"), "hello").unwrap();
        fs::set_permissions(from.join("etc/motd"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(from.join("etc/motd"), from.join("etc/sub/motd.link")).unwrap();
        std::os::unix::fs::symlink("../motd", from.join("etc/sub/up")).unwrap();
        fs::set_permissions(from.join("etc/sub"), fs::Permissions::from_mode(0o711)).unwrap();
        let xattrs = user_xattrs_work(dir.path());
        if xattrs {
            set_xattr(&from.join("etc/motd"), c"user.note", b"kept").unwrap();
        }
        let when = TimeSpec::new(1_000_000_000, 0);
        utimensat(
            AT_FDCWD,
            &from.join("etc/motd"),
            &when,
            &when,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();

        let to = dir.path().join("to");
        copy_tree(&from, &to).unwrap();
        let motd = fs::symlink_metadata(to.join("etc/motd")).unwrap();
        assert_eq!(fs::read_to_string(to.join("etc/motd")).unwrap(), "hello");
        assert_eq!(motd.mode() & 0o7777, 0o640);
        assert_eq!(motd.mtime(), 1_000_000_000);
        assert_eq!(motd.nlink(), 2, "the hard link stays one file");
        let link = fs::symlink_metadata(to.join("etc/sub/motd.link")).unwrap();
        assert_eq!(link.ino(), motd.ino());
        assert_eq!(
            fs::read_link(to.join("etc/sub/up")).unwrap(),
            Path::new("../motd")
        );
        let sub = fs::symlink_metadata(to.join("etc/sub")).unwrap();
        assert_eq!(sub.mode() & 0o7777, 0o711);
        if xattrs {
            assert_eq!(
                get_xattr(&to.join("etc/motd"), c"user.note").unwrap(),
                b"kept"
            );
        } else {
            eprintln!(
                "SKIPPED the attribute check: {} takes no user.* attributes",
                dir.path().display()
            );
        }
        assert!(
            copy_tree(&from, &to).is_err(),
            "an existing target is refused"
        );
    }

    #[test]
    fn a_copy_over_merges_directories_and_replaces_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, staging) = (dir.path().join("upper"), dir.path().join("staging"));
        fs::create_dir_all(staging.join("keep")).unwrap();
        fs::write(staging.join("keep/old"), "old").unwrap();
        fs::create_dir_all(staging.join("was-dir/inside")).unwrap();
        fs::write(staging.join("file"), "before").unwrap();
        fs::create_dir_all(upper.join("keep")).unwrap();
        fs::write(upper.join("keep/new"), "new").unwrap();
        fs::write(upper.join("was-dir"), "now a file").unwrap();
        fs::write(upper.join("file"), "after").unwrap();
        let xattrs = user_xattrs_work(dir.path());
        if xattrs {
            set_xattr(&upper.join("file"), c"user.skip", b"x").unwrap();
            set_xattr(&upper.join("file"), c"user.keep", b"y").unwrap();
        }
        copy_over(&upper, &staging, |name| name != c"user.skip").unwrap();
        assert_eq!(fs::read_to_string(staging.join("keep/old")).unwrap(), "old");
        assert_eq!(fs::read_to_string(staging.join("keep/new")).unwrap(), "new");
        assert_eq!(
            fs::read_to_string(staging.join("was-dir")).unwrap(),
            "now a file"
        );
        assert_eq!(fs::read_to_string(staging.join("file")).unwrap(), "after");
        if xattrs {
            assert!(get_xattr(&staging.join("file"), c"user.skip").is_err());
            assert_eq!(
                get_xattr(&staging.join("file"), c"user.keep").unwrap(),
                b"y"
            );
        }
    }

    #[test]
    fn a_link_in_the_target_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, staging, outside) = (
            dir.path().join("upper"),
            dir.path().join("staging"),
            dir.path().join("outside"),
        );
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/planted"), "tenant's").unwrap();
        fs::create_dir_all(&staging).unwrap();
        fs::create_dir_all(&outside).unwrap();
        // A layer below pointed `etc` somewhere else on the host.
        std::os::unix::fs::symlink(&outside, staging.join("etc")).unwrap();
        copy_over(&upper, &staging, all_xattrs).unwrap();
        assert!(fs::symlink_metadata(staging.join("etc")).unwrap().is_dir());
        assert!(staging.join("etc/planted").exists());
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written through the link"
        );
    }
}
