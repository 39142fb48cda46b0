//! What a vnode starts from: a system image's current version (checked to be what an image
//! is, never followed out of the images directory), or a user image's saved layer, unpacked on
//! this host (checked against its SHA-256, without setuid bits or file capabilities) above its
//! system image.
//!
//! `FS_PREFIX/local/image-layers/<owner>/<name>/<version>/` holds the unpacked layer,
//! made from the tar (checked against its SHA-256) in a `.part` directory renamed when
//! complete, without the setuid and setgid bits and file capabilities of its files (on the
//! host's disk they would be root's).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use tracing::info;

use super::{VNodeError, io_err};
use crate::config::Config;
use crate::model::image::{self, ImageRef, ImageVersion};
use crate::model::vnode;
use crate::store::EtcdStore;
use crate::worker::paths::images_dir;

/// The directory of `image`'s current version and the version's name. `current` must be a
/// link to a version beside it, read without following it: a link planted elsewhere (`/`, a
/// user's tree) is refused, never booted.
pub fn resolve_image(config: &Config, image: &str) -> Result<(PathBuf, String), VNodeError> {
    vnode::validate_image_name(image)?;
    let image_dir = images_dir(config).join(image);
    let link = image_dir.join("current");
    let target = std::fs::read_link(&link).map_err(|e| {
        VNodeError::Refused(format!("unknown image {image:?}: {} ({e})", link.display()))
    })?;
    let version = target
        .to_str()
        .filter(|v| !v.is_empty() && !v.contains('/') && *v != "." && *v != "..")
        .ok_or_else(|| {
            VNodeError::Refused(format!(
                "image {image:?}: {} points at {}, not at a version beside it",
                link.display(),
                target.display()
            ))
        })?
        .to_owned();
    let dir = image_dir.join(&version);
    check_image_dir(image, &dir)?;
    Ok((dir, version))
}

/// Refuses a version directory of `image` that is not what an image is: the images
/// directory, the image's and the version's directories and the way down to systemd are real
/// directories (no links) that only root may change, and systemd is a regular file.
pub fn check_image_dir(image: &str, dir: &Path) -> Result<(), VNodeError> {
    use std::os::unix::fs::MetadataExt;
    let refuse =
        |why: String| VNodeError::Refused(format!("image {image:?} at {} {why}", dir.display()));
    let root_dirs = [dir.parent().and_then(Path::parent), dir.parent(), Some(dir)];
    for path in root_dirs.into_iter().flatten() {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| refuse(format!("cannot be read: {}: {e}", path.display())))?;
        if !meta.is_dir() {
            return Err(refuse(format!(
                "is not an image: {} is not a directory",
                path.display()
            )));
        }
        // Root's (the worker's own user where a test runs it unprivileged).
        let owner_ok = meta.uid() == 0 || meta.uid() == nix::unistd::geteuid().as_raw();
        if !owner_ok || meta.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "is not an image: {} may be changed by others than root (owner {}, mode {:o})",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    for step in ["usr", "usr/lib", "usr/lib/systemd"] {
        let path = dir.join(step);
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(refuse(format!(
                "is incomplete: no directory {}",
                path.display()
            )));
        }
    }
    let init = dir.join("usr/lib/systemd/systemd");
    if !std::fs::symlink_metadata(&init).is_ok_and(|m| m.is_file()) {
        return Err(refuse(format!("is incomplete: no {}", init.display())));
    }
    Ok(())
}

/// The tar file of one version of an image, on the shared filesystem.
pub fn layer_file(config: &Config, owner: &str, name: &str, version: &str) -> PathBuf {
    image_files_dir(config, owner, name).join(format!("{version}.tar"))
}

/// Every version of an image, on the shared filesystem.
pub fn image_files_dir(config: &Config, owner: &str, name: &str) -> PathBuf {
    config.global_dir().join("images").join(owner).join(name)
}

/// Where this host unpacks a version.
pub fn layer_dir(config: &Config, owner: &str, name: &str, version: &str) -> PathBuf {
    config
        .local_dir()
        .join("image-layers")
        .join(owner)
        .join(name)
        .join(version)
}

/// What a vnode's rootfs is made of.
#[derive(Debug, Clone)]
pub struct StartImage {
    /// The system image (`images/<name>/current` resolved).
    pub system: PathBuf,
    /// A user image's unpacked layer, above the system image.
    pub layer: Option<PathBuf>,
    /// For the vnode's status: `<system version>` or `<system version>+<owner>/<name>@<version>`.
    pub version: String,
}

/// Resolves a vnode's image: a system image by name, or a user image through the catalog
/// (its current version, unpacked here if it is not yet).
pub async fn start_image(
    config: &Config,
    store: &EtcdStore,
    image: &str,
) -> Result<StartImage, VNodeError> {
    match ImageRef::parse(image)? {
        ImageRef::System(name) => {
            let (system, version) = resolve_image(config, name)?;
            Ok(StartImage {
                system,
                layer: None,
                version,
            })
        }
        ImageRef::User { owner, name } => {
            let current = store
                .image(owner, name)
                .await?
                .and_then(|(record, _)| record.current)
                .ok_or_else(|| {
                    VNodeError::Refused(format!("image {image} has no saved layer (deleted?)"))
                })?;
            let (system, system_version) = resolve_image(config, &current.base)?;
            let (config, owner_s, name_s) = (config.clone(), owner.to_owned(), name.to_owned());
            let version = current.clone();
            let layer = tokio::task::spawn_blocking(move || {
                ensure_layer(&config, &owner_s, &name_s, &version)
            })
            .await
            .map_err(|e| VNodeError::Refused(format!("unpacking {image}: {e}")))??;
            Ok(StartImage {
                system,
                layer: Some(layer),
                version: format!("{system_version}+{image}@{}", current.version),
            })
        }
    }
}

/// The unpacked layer of `version`, unpacking it first if this host has not yet.
pub fn ensure_layer(
    config: &Config,
    owner: &str,
    name: &str,
    version: &ImageVersion,
) -> Result<PathBuf, VNodeError> {
    let refused = |m: String| VNodeError::Refused(m);
    if !image::valid_version(&version.version) {
        return Err(refused(format!(
            "image {owner}/{name}: invalid version {:?} in the catalog",
            version.version
        )));
    }
    let dir = layer_dir(config, owner, name, &version.version);
    if dir.is_dir() {
        return Ok(dir);
    }
    let file = layer_file(config, owner, name, &version.version);
    let part = dir.with_extension("part");
    remove_tree(&part)?;
    std::fs::create_dir_all(&part).map_err(io_err(format!("creating {}", part.display())))?;
    let unpacked = unpack(&file, &part, &version.sha256);
    if let Err(e) = unpacked {
        let _ = remove_tree(&part);
        return Err(refused(format!("image {owner}/{name}: {e}")));
    }
    std::fs::rename(&part, &dir).map_err(io_err(format!("renaming {}", part.display())))?;
    info!(image = %format!("{owner}/{name}"), version = %version.version, "layer unpacked");
    Ok(dir)
}

/// Unpacks `file` into `dir` with owners, modes, devices (whiteouts) and extended
/// attributes as stored, feeding tar through a hash: a file that does not match `sha256`
/// is refused (and what was unpacked is the caller's to remove).
fn unpack(file: &Path, dir: &Path, sha256: &str) -> Result<(), String> {
    let mut source = std::fs::File::open(file).map_err(|e| {
        format!(
            "its layer {} cannot be read ({e}): the image directory is damaged",
            file.display()
        )
    })?;
    let mut tar = tar_extract(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let mut stdin = tar.stdin.take().expect("piped");
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let copied: io::Result<()> = (|| {
        loop {
            let n = source.read(&mut buffer)?;
            if n == 0 {
                return Ok(());
            }
            hasher.update(&buffer[..n]);
            stdin.write_all(&buffer[..n])?;
        }
    })();
    drop(stdin);
    let output = tar
        .wait_with_output()
        .map_err(|e| format!("waiting for tar: {e}"))?;
    let digest = hex(&hasher.finalize());
    if digest != sha256 {
        return Err(format!(
            "its layer {} does not match the catalog (SHA-256 {digest}, expected {sha256}): \
             the image directory is damaged",
            file.display()
        ));
    }
    copied.map_err(|e| format!("reading {}: {e}", file.display()))?;
    if !output.status.success() {
        return Err(format!(
            "tar could not unpack {}: {}",
            file.display(),
            first_lines(&output.stderr)
        ));
    }
    drop_privileges_of_files(dir)
}

/// Clears the setuid and setgid bits and the file capabilities of every regular file under
/// `dir`, a user's layer just unpacked. The layer is stored owned by 0..65536 (shifted into a
/// user's range only when mounted), so on the host's disk a setuid file of it would be
/// root's, and a file capability would hold on the host: neither may survive there. What the
/// system image underneath holds keeps its bits.
fn drop_privileges_of_files(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = entry.path();
            // Not followed: a link in the layer is the layer's, not a way out of it.
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let mode = meta.mode();
            if mode & 0o6000 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o1777))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("{}: a NUL in the name", path.display()))?;
            // SAFETY: NUL-terminated strings.
            let removed =
                unsafe { libc::lremovexattr(name.as_ptr(), c"security.capability".as_ptr()) };
            if removed != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENODATA) {
                    return Err(format!("{}: {e}", path.display()));
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn tar_extract(dir: &Path) -> Command {
    let mut tar = Command::new("tar");
    tar.args(["--extract", "--file=-", "--numeric-owner", "--same-owner"])
        .args(["--same-permissions", "--xattrs", "--xattrs-include=*"])
        .arg("--directory")
        .arg(dir);
    tar
}

/// Extended attributes a layer keeps: overlayfs's opaque marks, file capabilities and the
/// users' own; not overlayfs's bookkeeping of where a copied-up file came from.
pub(crate) fn first_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().take(3).collect();
    lines.join("; ")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn remove_tree(path: &Path) -> Result<(), VNodeError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            std::fs::remove_file(path).map_err(io_err(format!("removing {}", path.display())))
        }
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_images_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            fs_prefix: dir.path().to_owned(),
            ..Config::default()
        };
        let e = resolve_image(&config, "nope").unwrap_err().to_string();
        assert!(e.contains("unknown image \"nope\""), "{e}");
        let version = images_dir(&config).join("base/v1");
        std::fs::create_dir_all(&version).unwrap();
        std::os::unix::fs::symlink("v1", images_dir(&config).join("base/current")).unwrap();
        let e = resolve_image(&config, "base").unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        std::fs::create_dir_all(version.join("usr/lib/systemd")).unwrap();
        std::fs::write(version.join("usr/lib/systemd/systemd"), "").unwrap();
        let (dir, v) = resolve_image(&config, "base").unwrap();
        assert_eq!(v, "v1");
        // Links planted where the worker looks are refused, not followed.
        let current = images_dir(&config).join("base/current");
        for (target, why) in [
            ("/", "not at a version beside it"),
            ("../../..", "not at a version beside it"),
            ("v2", "is not a directory"),
        ] {
            std::fs::remove_file(&current).unwrap();
            std::os::unix::fs::symlink(target, &current).unwrap();
            let _ = std::os::unix::fs::symlink("/", images_dir(&config).join("base/v2"));
            let e = resolve_image(&config, "base").unwrap_err().to_string();
            assert!(e.contains(why), "{target}: {e}");
        }
        std::fs::remove_file(&current).unwrap();
        std::os::unix::fs::symlink("v1", &current).unwrap();
        std::fs::remove_file(version.join("usr/lib/systemd/systemd")).unwrap();
        std::os::unix::fs::symlink("/bin/sh", version.join("usr/lib/systemd/systemd")).unwrap();
        let e = resolve_image(&config, "base").unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::remove_file(version.join("usr/lib/systemd/systemd")).unwrap();
        std::fs::write(version.join("usr/lib/systemd/systemd"), "").unwrap();
        std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = resolve_image(&config, "base").unwrap_err().to_string();
        assert!(e.contains("may be changed by others than root"), "{e}");
        std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(dir.ends_with("base/v1"));
    }
}
