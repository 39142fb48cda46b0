//! User images: a vnode's own layer (its overlay's upper directory) saved under a name, so
//! that new vnodes start from it. An image is one flat layer on top of a system image (the
//! base the saved vnode ran on); saving a vnode that itself came from an image folds that
//! image's layer in, so layers never chain.
//!
//! Images are named `<owner>/<name>` wherever a cluster names its image; a bare name is a
//! system image installed on the hosts (`base`). The catalog record lives in etcd at
//! `images/<owner>/<name>` ([`ImageRecord`]); the layer itself is a tar file under
//! `FS_PREFIX/global/images/<owner>/<name>/<version>.tar`, so every host can start vnodes
//! from it. A save or replacement writes a new version and switches `current` to it only
//! when the file is complete and checked, so no one ever sees a partial image.

use serde::{Deserialize, Serialize};

use crate::model::account;
use crate::model::names::{SpecError, check_name};

/// How long a description may be.
pub const MAX_DESCRIPTION: usize = 500;

/// What an image reference in a cluster or vnode names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRef<'a> {
    /// An image installed on the hosts (`base`).
    System(&'a str),
    /// A user's saved image.
    User { owner: &'a str, name: &'a str },
}

impl<'a> ImageRef<'a> {
    /// `base` or `alice/web`, each part checked: nothing else reaches a path or a command.
    pub fn parse(image: &'a str) -> Result<ImageRef<'a>, SpecError> {
        match image.split_once('/') {
            None => {
                check_name("image", image, 64)?;
                Ok(ImageRef::System(image))
            }
            Some((owner, name)) => {
                account::validate_account_name(owner).map_err(|e| SpecError::Invalid {
                    field: "image",
                    value: image.to_owned(),
                    reason: format!("the owner part: {e}"),
                })?;
                validate_image_name(name).map_err(|e| SpecError::Invalid {
                    field: "image",
                    value: image.to_owned(),
                    reason: format!("the name part: {e}"),
                })?;
                Ok(ImageRef::User { owner, name })
            }
        }
    }
}

/// The name a user gives an image: like a cluster's, a-z, 0-9 and inner '-'.
pub fn validate_image_name(name: &str) -> Result<(), SpecError> {
    check_name("name", name, 48)
}

pub fn validate_description(description: &str) -> Result<(), SpecError> {
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(SpecError::Invalid {
            field: "description",
            value: description.chars().take(40).collect::<String>() + "…",
            reason: format!("at most {MAX_DESCRIPTION} characters"),
        });
    }
    if description.chars().any(|c| c.is_control() && c != '\n') {
        return Err(SpecError::Invalid {
            field: "description",
            value: description.escape_debug().to_string(),
            reason: "no control characters other than newlines".into(),
        });
    }
    Ok(())
}

/// One saved, complete layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageVersion {
    /// Names the layer's file: `<saved_at>-<random>`.
    pub version: String,
    /// The system image the layer goes on top of.
    pub base: String,
    /// Size of the layer's tar file.
    pub bytes: u64,
    /// SHA-256 of the tar file, checked by every host that unpacks it.
    pub sha256: String,
    pub saved_at: u64,
    /// The vnode it was saved from.
    pub saved_from: String,
}

/// What is being done to an image right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pending {
    /// The worker of `host` is writing a new version from `vnode`.
    Saving {
        vnode: String,
        host: String,
        requested_at: u64,
        /// The most the layer may take: what the owner's image size quota has left.
        max_bytes: u64,
        /// Written so far (progress), updated by the worker.
        #[serde(default)]
        written_bytes: u64,
        /// The description the new version brings.
        description: String,
    },
    /// The image is being deleted: no new cluster may use it meanwhile. Once the master
    /// found no cluster using it (`confirmed`), a worker removes its files and the record.
    Deleting {
        since: u64,
        #[serde(default)]
        confirmed: bool,
    },
}

/// Stored at `images/<owner>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageRecord {
    pub owner: String,
    pub name: String,
    pub description: String,
    /// Everyone may start clusters from it (its owner alone may change or delete it).
    pub public: bool,
    pub created_at: u64,
    /// The layer new vnodes start from; `None` until a first save completes.
    pub current: Option<ImageVersion>,
    pub pending: Option<Pending>,
    /// Why the last save failed; cleared by the next successful one.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Why an image cannot be used to start a node now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// Another user's image that is not shared.
    #[error("image {0} is private")]
    Private(String),
    #[error("image {0} is being deleted")]
    Deleting(String),
    #[error("image {0} is still being saved")]
    Saving(String),
    #[error("image {0} has no saved layer: {1}")]
    SaveFailed(String, String),
    #[error("image {0} has no saved layer")]
    NoLayer(String),
}

impl ImageRecord {
    /// `owner/name`, as clusters name it.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// What the record weighs in its owner's image size quota.
    pub fn bytes(&self) -> u64 {
        self.current.as_ref().map_or(0, |v| v.bytes)
    }

    /// May `user` see it (in lists, by name)?
    pub fn visible_to(&self, user: &str, admin: bool) -> bool {
        admin || self.owner == user || (self.public && self.current.is_some())
    }

    /// Why `user` may not start a new vnode from it, if they may not.
    pub fn refuse_use(&self, user: &str) -> Option<Unusable> {
        let reference = self.reference();
        if self.owner != user && !self.public {
            return Some(Unusable::Private(reference));
        }
        if matches!(self.pending, Some(Pending::Deleting { .. })) {
            return Some(Unusable::Deleting(reference));
        }
        if self.current.is_none() {
            return Some(match (&self.pending, &self.last_error) {
                (Some(Pending::Saving { .. }), _) => Unusable::Saving(reference),
                (_, Some(e)) => Unusable::SaveFailed(reference, e.clone()),
                _ => Unusable::NoLayer(reference),
            });
        }
        None
    }

    /// For people: `ready`, `saving (12.0M written)`, `deleting`, `failed: …`, or `ready;
    /// the last save failed: …` (a replacement failed; the earlier layer stays).
    pub fn state(&self) -> String {
        match (&self.pending, &self.current, &self.last_error) {
            (Some(Pending::Saving { written_bytes, .. }), _, _) => format!(
                "saving ({} written)",
                crate::model::host::human_bytes(*written_bytes)
            ),
            (Some(Pending::Deleting { .. }), _, _) => "deleting".into(),
            (None, None, Some(e)) => format!("failed: {e}"),
            (None, None, None) => "empty".into(),
            (None, Some(_), Some(e)) => format!("ready; the last save failed: {e}"),
            (None, Some(_), None) => "ready".into(),
        }
    }
}

/// A new version's name: sortable by time, unique by a random part.
pub fn new_version(now: u64, random: u32) -> String {
    format!("{now}-{random:08x}")
}

/// Is `version` a name [`new_version`] could have made (it becomes a file name)?
pub fn valid_version(version: &str) -> bool {
    match version.split_once('-') {
        Some((time, random)) => {
            !time.is_empty()
                && time.bytes().all(|b| b.is_ascii_digit())
                && random.len() == 8
                && random.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Paths inside a vnode that are never saved into an image, relative to its root: the mount
/// points of what the worker binds in (`/root/nfs` is the user's shared data), the identity
/// every vnode gets afresh (machine id, SSH host keys) and scratch space.
pub fn excluded_from_image(relative: &str) -> bool {
    const EXACT: [&str; 4] = ["root/nfs", "etc/docklet", "etc/machine-id", "tmp"];
    const BELOW: [&str; 5] = ["root/nfs/", "etc/docklet/", "tmp/", "var/tmp/", "run/"];
    let path = relative.trim_start_matches("./").trim_start_matches('/');
    EXACT.contains(&path)
        || BELOW.iter().any(|prefix| path.starts_with(prefix))
        || path
            .strip_prefix("etc/ssh/ssh_host_")
            .is_some_and(|rest| !rest.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ImageRecord {
        ImageRecord {
            owner: "alice".into(),
            name: "web".into(),
            description: String::new(),
            public: false,
            created_at: 1,
            current: Some(ImageVersion {
                version: new_version(5, 0xabc),
                base: "base".into(),
                bytes: 10,
                sha256: "00".into(),
                saved_at: 5,
                saved_from: "alice-c-0".into(),
            }),
            pending: None,
            last_error: None,
        }
    }

    #[test]
    fn references_are_system_names_or_owner_and_name() {
        assert_eq!(ImageRef::parse("base").unwrap(), ImageRef::System("base"));
        assert_eq!(
            ImageRef::parse("alice/web-2").unwrap(),
            ImageRef::User {
                owner: "alice",
                name: "web-2"
            }
        );
        for bad in [
            "",
            "../etc",
            "alice/../x",
            "alice/",
            "/web",
            "alice/web/x",
            "Alice/web",
            "alice/we b",
            "alice/$(reboot)",
            "alice/-x",
            "a;b",
            "alice/web\n",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn descriptions_are_bounded_text() {
        assert!(validate_description("Python 3 with numpy\nand pandas").is_ok());
        assert!(validate_description(&"x".repeat(MAX_DESCRIPTION + 1)).is_err());
        assert!(validate_description("bell\x07").is_err());
    }

    #[test]
    fn who_sees_and_uses_an_image() {
        let mut image = record();
        assert!(image.visible_to("alice", false));
        assert!(!image.visible_to("bob", false));
        assert!(image.visible_to("bob", true));
        assert!(image.refuse_use("alice").is_none());
        assert_eq!(
            image.refuse_use("bob"),
            Some(Unusable::Private("alice/web".into()))
        );
        image.public = true;
        assert!(image.visible_to("bob", false));
        assert!(image.refuse_use("bob").is_none());
        image.pending = Some(Pending::Deleting {
            since: 9,
            confirmed: false,
        });
        assert!(matches!(
            image.refuse_use("alice"),
            Some(Unusable::Deleting(_))
        ));
        assert_eq!(image.state(), "deleting");
    }

    #[test]
    fn an_image_never_saved_cannot_be_used_and_says_why() {
        let mut image = record();
        image.current = None;
        image.public = true;
        assert!(!image.visible_to("bob", false), "nothing to see yet");
        image.pending = Some(Pending::Saving {
            vnode: "alice-c-0".into(),
            host: "tb1".into(),
            requested_at: 1,
            max_bytes: 100,
            written_bytes: 3 << 20,
            description: String::new(),
        });
        let saving = image.refuse_use("alice").unwrap();
        assert!(matches!(saving, Unusable::Saving(_)));
        assert!(saving.to_string().contains("being saved"), "{saving}");
        assert_eq!(image.state(), "saving (3.0M written)");
        image.pending = None;
        image.last_error = Some("image size quota exceeded".into());
        assert!(
            image
                .refuse_use("alice")
                .unwrap()
                .to_string()
                .contains("quota exceeded")
        );
        assert!(image.state().starts_with("failed: "));
        image.current = record().current;
        assert!(
            image
                .state()
                .starts_with("ready; the last save failed: image size")
        );
    }

    #[test]
    fn versions_are_checked_before_they_name_a_file() {
        let v = new_version(1_700_000_000, 0xdead_beef);
        assert_eq!(v, "1700000000-deadbeef");
        assert!(valid_version(&v));
        for bad in [
            "",
            "1-",
            "-deadbeef",
            "1-../../x",
            "1/2-deadbeef",
            "x-deadbeef",
        ] {
            assert!(!valid_version(bad), "{bad:?}");
        }
    }

    #[test]
    fn identity_and_bound_directories_are_not_saved() {
        for skipped in [
            "root/nfs",
            "./root/nfs/big.csv",
            "etc/machine-id",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/docklet/jupyter.py",
            "tmp/x",
            "var/tmp/y",
        ] {
            assert!(excluded_from_image(skipped), "{skipped}");
        }
        for kept in [
            "root/notebook.ipynb",
            "etc/ssh/sshd_config",
            "etc/hostname",
            "usr/bin/tmp",
            "root/nfsx",
        ] {
            assert!(!excluded_from_image(kept), "{kept}");
        }
    }
}
