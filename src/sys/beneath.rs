//! Opening files in trees that others can write (the shared filesystem's handoffs, which any
//! host's root writes; vnodes' directories), without following a link anywhere on the way:
//! `openat2(2)` from the tree's root with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so neither
//! the file nor any directory above it inside the tree can send the root worker elsewhere.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// How to open: read, or write (created and truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    CreateTruncate,
}

/// Opens `path`, which must lie under `root`, resolving it from `root` without following a
/// symbolic link in any component below `root` (and without `..` leaving it). `root` itself
/// is trusted (a directory of root's own).
pub fn open_under(root: &Path, path: &Path, access: Access) -> io::Result<File> {
    let relative = path.strip_prefix(root).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not under {}", path.display(), root.display()),
        )
    })?;
    let dir = File::open(root)?;
    let flags = OFlag::O_CLOEXEC
        | match access {
            // Non-blocking: a FIFO planted in the tree must not hold the reader forever.
            Access::Read => OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            Access::CreateTruncate => OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
        };
    // openat2 takes a mode only with O_CREAT (EINVAL otherwise).
    let mode = match access {
        Access::Read => Mode::empty(),
        Access::CreateTruncate => Mode::from_bits_truncate(0o600),
    };
    let how = OpenHow::new().flags(flags).mode(mode).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    let fd = openat2(&dir, relative, how).map_err(|errno| {
        let e = io::Error::from(errno);
        if errno == nix::errno::Errno::ELOOP || errno == nix::errno::Errno::EXDEV {
            io::Error::new(
                e.kind(),
                format!(
                    "{} passes through a link or leaves {}: refused",
                    path.display(),
                    root.display()
                ),
            )
        } else {
            e
        }
    })?;
    Ok(File::from(fd))
}

/// Makes `relative` a directory under `root` (the missing components owned by `owner`,
/// mode 0755), never following a link and never racing another host doing the same on a
/// shared filesystem: each missing component is made under a name of its own (`tag` and a
/// random suffix), then renamed into place only if the name is still free; a loser removes
/// its own and goes on through the winner's. Where the filesystem lacks `RENAME_NOREPLACE`,
/// the component is made in place and then given to `owner` (a plain rename could replace a
/// directory another host made meanwhile): on the shared filesystem, callers make sure only
/// one host makes a given path ([`crate::store::claims`]). Every step is relative
/// to the directory opened at the step before, so a link planted meanwhile leads nowhere.
pub fn make_dirs_under(
    root: &Path,
    relative: &str,
    owner: (u32, u32),
    tag: &str,
) -> io::Result<()> {
    use nix::fcntl::{AtFlags, RenameFlags, renameat2};
    use nix::sys::stat::mkdirat;
    use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            )
    };
    let mut dir: std::os::fd::OwnedFd = File::open(root)?.into();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{relative:?} has . or .."),
            ));
        }
        match openat2(&dir, part, how()) {
            Ok(next) => {
                dir = next;
                continue;
            }
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let own = format!(".{part}.new.{tag}.{:08x}", rand::random::<u32>());
        mkdirat(&dir, own.as_str(), Mode::from_bits_truncate(0o755))?;
        fchownat(
            &dir,
            own.as_str(),
            Some(Uid::from_raw(owner.0)),
            Some(Gid::from_raw(owner.1)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        let renamed = match renameat2(
            &dir,
            own.as_str(),
            &dir,
            part,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(e @ (nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY)) => Err(e),
            // A filesystem without RENAME_NOREPLACE (GlusterFS through FUSE): a plain rename
            // would replace a directory another host just made (and strand whoever is in
            // it), so the name is made directly; it is root's until the chown just after.
            Err(_) => {
                let _ = unlinkat(&dir, own.as_str(), UnlinkatFlags::RemoveDir);
                match mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => fchownat(
                        &dir,
                        part,
                        Some(Uid::from_raw(owner.0)),
                        Some(Gid::from_raw(owner.1)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    ),
                    Err(e) => Err(e),
                }
            }
        };
        if renamed.is_err() {
            let _ = unlinkat(&dir, own.as_str(), UnlinkatFlags::RemoveDir);
        }
        dir = openat2(&dir, part, how())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_made_beneath_and_links_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        make_dirs_under(root.path(), "jobs/7/out", me, "h1").unwrap();
        assert!(root.path().join("jobs/7/out").is_dir());
        // Again: nothing to do, nothing left over.
        make_dirs_under(root.path(), "jobs/7/out", me, "h2").unwrap();
        let names: Vec<_> = std::fs::read_dir(root.path().join("jobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["7"]);
        std::os::unix::fs::symlink(outside.path(), root.path().join("jobs/link")).unwrap();
        assert!(make_dirs_under(root.path(), "jobs/link/x", me, "h1").is_err());
        assert!(!outside.path().join("x").exists());
        assert!(make_dirs_under(root.path(), "jobs/../x", me, "h1").is_err());
    }

    #[test]
    fn links_on_the_way_are_refused_and_plain_paths_open() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside").unwrap();
        std::fs::create_dir(root.path().join("real")).unwrap();
        std::fs::write(root.path().join("real/file"), "inside").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dirlink")).unwrap();
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("innerlink"))
            .unwrap();

        let read = |p: &str| {
            open_under(root.path(), &root.path().join(p), Access::Read).map(|mut f| {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut f, &mut s).unwrap();
                s
            })
        };
        assert_eq!(read("real/file").unwrap(), "inside");
        // A directory link out of the tree, or even one that stays inside: refused.
        let e = read("dirlink/secret").unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(read("innerlink/file").is_err());
        assert!(read("real/../../secret").is_err());
        // Writing through a directory link creates nothing outside.
        assert!(
            open_under(
                root.path(),
                &root.path().join("dirlink/new"),
                Access::CreateTruncate
            )
            .is_err()
        );
        assert!(!outside.path().join("new").exists());
        // A path given outside the root is an error, not a surprise.
        assert!(open_under(root.path(), outside.path(), Access::Read).is_err());
    }
}
