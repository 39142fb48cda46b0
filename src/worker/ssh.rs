//! The user's SSH key pair, made once and shared by all their vnodes: it lives in
//! `FS_PREFIX/global/users/<user>/ssh/` (the user's own area of the shared filesystem), owned
//! by root of the user's vnodes, and is bound read-only at `/etc/docklet/ssh` in each vnode,
//! where the image's ssh and sshd configuration look for it (docs/image.md). So `ssh host-1`
//! works from any node, and the private key exists nowhere else.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ssh_key::private::Ed25519Keypair;
use ssh_key::{LineEnding, PrivateKey};

use crate::config::Config;

pub fn user_ssh_dir(config: &Config, user: &str) -> PathBuf {
    config.global_dir().join("users").join(user).join("ssh")
}

/// The user's key pair and `authorized_keys` are all there.
pub fn user_keys_exist(dir: &Path) -> bool {
    ["id_ed25519", "id_ed25519.pub", "authorized_keys"]
        .iter()
        .all(|name| dir.join(name).exists())
}

/// Makes the user's key pair and `authorized_keys` unless they exist. Several hosts may race
/// to make them: each writes its private key under a temporary name and links it into place;
/// the first link wins, and the public files are derived from the winner.
pub fn ensure_user_keys(dir: &Path, user: &str, owner: u32) -> io::Result<()> {
    let private = dir.join("id_ed25519");
    if user_keys_exist(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    chown(dir, owner)?;
    if !private.exists() {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        let mut key = key;
        key.set_comment(format!("docklet-{user}"));
        let text = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| io::Error::other(format!("encoding the SSH key: {e}")))?;
        let tag = format!("{}.{}", std::process::id(), rand::random::<u32>());
        place(dir, "id_ed25519", &tag, &text, 0o600, owner)?;
    }
    let key = PrivateKey::from_openssh(std::fs::read_to_string(&private)?)
        .map_err(|e| io::Error::other(format!("reading {}: {e}", private.display())))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| io::Error::other(format!("encoding the SSH key: {e}")))?;
    let public = format!("{public}\n");
    let tag = format!("{}.{}", std::process::id(), rand::random::<u32>());
    place(dir, "id_ed25519.pub", &tag, &public, 0o644, owner)?;
    place(dir, "authorized_keys", &tag, &public, 0o600, owner)
}

/// Writes `dir/name` unless it exists, never leaving a partial file under the final name.
fn place(dir: &Path, name: &str, tag: &str, text: &str, mode: u32, owner: u32) -> io::Result<()> {
    let target = dir.join(name);
    if target.exists() {
        return Ok(());
    }
    let tmp = dir.join(format!(".{name}.{tag}"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        chown(&tmp, owner)?;
        match std::fs::hard_link(&tmp, &target) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn chown(path: &Path, owner: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(owner), Some(owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_authorized() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("alice/ssh");
        let me = nix::unistd::getuid().as_raw();
        ensure_user_keys(&ssh, "alice", me).unwrap();
        let private = std::fs::read_to_string(ssh.join("id_ed25519")).unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let public = std::fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap();
        assert!(public.starts_with("ssh-ed25519 ") && public.ends_with(" docklet-alice\n"));
        assert_eq!(
            std::fs::read_to_string(ssh.join("authorized_keys")).unwrap(),
            public
        );
        let mode = |p: &str| std::fs::metadata(ssh.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("id_ed25519"), 0o600);
        assert_eq!(
            std::fs::metadata(&ssh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A second call keeps the key.
        ensure_user_keys(&ssh, "alice", me).unwrap();
        assert_eq!(
            std::fs::read_to_string(ssh.join("id_ed25519")).unwrap(),
            private
        );
        assert_eq!(
            std::fs::read_dir(&ssh).unwrap().count(),
            3,
            "no temporary files left"
        );
    }

    #[test]
    fn the_public_half_follows_the_private_key_that_won_a_race() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        // Another host linked its private key first.
        let theirs = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
        std::fs::write(
            dir.path().join("id_ed25519"),
            theirs.to_openssh(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        ensure_user_keys(dir.path(), "bob", me).unwrap();
        let public = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap();
        assert_eq!(public.trim(), theirs.public_key().to_openssh().unwrap());
    }
}
