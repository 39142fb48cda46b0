//! Files written whole: a reader sees the old contents or the new, never a part of either.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::unistd::Gid;

/// Writes `contents` to `path` with `mode` (and `group`): a temporary file beside it, synced,
/// then renamed over it.
pub fn write_whole(path: &Path, contents: &[u8], mode: u32, group: Option<Gid>) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    if let Some(gid) = group {
        nix::unistd::fchown(&file, None, Some(gid))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_the_file_whole_with_the_mode_asked_for() {
        let dir = std::env::temp_dir().join(format!("docklet-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret.pem");
        std::fs::write(&path, "old").unwrap();
        write_whole(&path, b"new", 0o640, None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert!(!path.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
