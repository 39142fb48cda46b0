//! Users' images and the system images as D-Bus values: a struct of the fields every record
//! has, and an `a{sv}` of the parts that may be absent (a key is missing when there is none).

use serde::{Deserialize, Serialize};
use zbus::{DeserializeDict, SerializeDict, Type};

use super::BusError;
use crate::model::image::{ImageRecord, ImageVersion, Pending};
use crate::model::system_image::{BuildState, HostVersion, SystemImageBuild, SystemImageUpdate};

/// One saved layer: `(version, base, bytes, sha256, saved_at, saved_from)`, `(sststs)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageVersionRow {
    pub version: String,
    pub base: String,
    pub bytes: u64,
    pub sha256: String,
    pub saved_at: u64,
    pub saved_from: String,
}

impl From<ImageVersion> for ImageVersionRow {
    fn from(v: ImageVersion) -> Self {
        ImageVersionRow {
            version: v.version,
            base: v.base,
            bytes: v.bytes,
            sha256: v.sha256,
            saved_at: v.saved_at,
            saved_from: v.saved_from,
        }
    }
}

impl From<ImageVersionRow> for ImageVersion {
    fn from(v: ImageVersionRow) -> Self {
        ImageVersion {
            version: v.version,
            base: v.base,
            bytes: v.bytes,
            sha256: v.sha256,
            saved_at: v.saved_at,
            saved_from: v.saved_from,
        }
    }
}

/// What is being done to an image: `(kind, vnode, host, requested_at, max_bytes,
/// written_bytes, description, since, confirmed)`, `(ssstttstb)`. `kind` `saving` uses the
/// fields up to `description`, `deleting` uses `since` and `confirmed`; the others are empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Type)]
pub struct PendingRow {
    pub kind: String,
    pub vnode: String,
    pub host: String,
    pub requested_at: u64,
    pub max_bytes: u64,
    pub written_bytes: u64,
    pub description: String,
    pub since: u64,
    pub confirmed: bool,
}

impl From<Pending> for PendingRow {
    fn from(p: Pending) -> Self {
        match p {
            Pending::Saving {
                vnode,
                host,
                requested_at,
                max_bytes,
                written_bytes,
                description,
            } => PendingRow {
                kind: "saving".into(),
                vnode,
                host,
                requested_at,
                max_bytes,
                written_bytes,
                description,
                ..PendingRow::default()
            },
            Pending::Deleting { since, confirmed } => PendingRow {
                kind: "deleting".into(),
                since,
                confirmed,
                ..PendingRow::default()
            },
        }
    }
}

impl TryFrom<PendingRow> for Pending {
    type Error = BusError;
    fn try_from(p: PendingRow) -> Result<Self, BusError> {
        match p.kind.as_str() {
            "saving" => Ok(Pending::Saving {
                vnode: p.vnode,
                host: p.host,
                requested_at: p.requested_at,
                max_bytes: p.max_bytes,
                written_bytes: p.written_bytes,
                description: p.description,
            }),
            "deleting" => Ok(Pending::Deleting {
                since: p.since,
                confirmed: p.confirmed,
            }),
            other => Err(BusError::InvalidArgument(format!(
                "pending.kind {other:?}: expected saving or deleting"
            ))),
        }
    }
}

/// The parts of an image that may be absent, as `a{sv}`: `current` (`(sststs)`, the layer new
/// vnodes start from), `pending` (`(ssstttstb)`), `last_error` (s).
#[derive(Debug, Clone, PartialEq, Eq, Default, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct ImageOptional {
    pub current: Option<ImageVersionRow>,
    pub pending: Option<PendingRow>,
    pub last_error: Option<String>,
}

/// A user's image: `(reference, owner, name, description, public, created_at, state, bytes,
/// optional)`, `(ssssbtsta{sv})`; `reference` is `owner/name`, `state` reads `ready`,
/// `saving (… written)`, `deleting` or `failed: …`, `bytes` is the saved layer's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageRow {
    pub reference: String,
    pub owner: String,
    pub name: String,
    pub description: String,
    pub public: bool,
    pub created_at: u64,
    pub state: String,
    pub bytes: u64,
    pub optional: ImageOptional,
}

impl From<ImageRecord> for ImageRow {
    fn from(record: ImageRecord) -> Self {
        ImageRow {
            reference: record.reference(),
            state: record.state(),
            bytes: record.bytes(),
            owner: record.owner,
            name: record.name,
            description: record.description,
            public: record.public,
            created_at: record.created_at,
            optional: ImageOptional {
                current: record.current.map(Into::into),
                pending: record.pending.map(Into::into),
                last_error: record.last_error,
            },
        }
    }
}

impl TryFrom<ImageRow> for ImageRecord {
    type Error = BusError;
    fn try_from(row: ImageRow) -> Result<Self, BusError> {
        Ok(ImageRecord {
            owner: row.owner,
            name: row.name,
            description: row.description,
            public: row.public,
            created_at: row.created_at,
            current: row.optional.current.map(Into::into),
            pending: row.optional.pending.map(TryInto::try_into).transpose()?,
            last_error: row.optional.last_error,
        })
    }
}

/// The latest update of a system image: `(name, version, from, layer, requested_by,
/// requested_at)`, `(sss(sststs)st)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SystemImageUpdateRow {
    pub name: String,
    pub version: String,
    pub from: String,
    pub layer: ImageVersionRow,
    pub requested_by: String,
    pub requested_at: u64,
}

impl From<SystemImageUpdate> for SystemImageUpdateRow {
    fn from(u: SystemImageUpdate) -> Self {
        SystemImageUpdateRow {
            name: u.name,
            version: u.version,
            from: u.from,
            layer: u.layer.into(),
            requested_by: u.requested_by,
            requested_at: u.requested_at,
        }
    }
}

impl From<SystemImageUpdateRow> for SystemImageUpdate {
    fn from(u: SystemImageUpdateRow) -> Self {
        SystemImageUpdate {
            name: u.name,
            version: u.version,
            from: u.from,
            layer: u.layer.into(),
            requested_by: u.requested_by,
            requested_at: u.requested_at,
        }
    }
}

/// One host's work on an update: `(host, version, state, step, since, error, updated_at)`,
/// `(sssstst)`; `state` is `building` (with `step` and `since`), `ready`, or `failed` (with
/// `error`); the fields a state does not use are empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct BuildRow {
    pub host: String,
    pub version: String,
    pub state: String,
    pub step: String,
    pub since: u64,
    pub error: String,
    pub updated_at: u64,
}

impl From<SystemImageBuild> for BuildRow {
    fn from(b: SystemImageBuild) -> Self {
        let (state, step, since, error) = match b.state {
            BuildState::Building { step, since } => ("building", step, since, String::new()),
            BuildState::Ready => ("ready", String::new(), 0, String::new()),
            BuildState::Failed { error } => ("failed", String::new(), 0, error),
        };
        BuildRow {
            host: b.host,
            version: b.version,
            state: state.into(),
            step,
            since,
            error,
            updated_at: b.updated_at,
        }
    }
}

impl TryFrom<BuildRow> for SystemImageBuild {
    type Error = BusError;
    fn try_from(b: BuildRow) -> Result<Self, BusError> {
        let state = match b.state.as_str() {
            "building" => BuildState::Building {
                step: b.step,
                since: b.since,
            },
            "ready" => BuildState::Ready,
            "failed" => BuildState::Failed { error: b.error },
            other => {
                return Err(BusError::InvalidArgument(format!(
                    "build state {other:?}: expected building, ready or failed"
                )));
            }
        };
        Ok(SystemImageBuild {
            host: b.host,
            version: b.version,
            state,
            updated_at: b.updated_at,
        })
    }
}

/// A host's work on the latest update, as `a{sv}`: `build` (`(sssstst)`) when it has any.
#[derive(Debug, Clone, PartialEq, Eq, Default, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct HostVersionOptional {
    pub build: Option<BuildRow>,
}

/// One host of a system image: `(host, current, optional)`, `(ssa{sv})`; `current` is the
/// version the host last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct HostVersionRow {
    pub host: String,
    pub current: String,
    pub optional: HostVersionOptional,
}

impl From<HostVersion> for HostVersionRow {
    fn from(h: HostVersion) -> Self {
        HostVersionRow {
            host: h.host,
            current: h.current,
            optional: HostVersionOptional {
                build: h.build.map(Into::into),
            },
        }
    }
}

impl TryFrom<HostVersionRow> for HostVersion {
    type Error = BusError;
    fn try_from(h: HostVersionRow) -> Result<Self, BusError> {
        Ok(HostVersion {
            host: h.host,
            current: h.current,
            build: h.optional.build.map(TryInto::try_into).transpose()?,
        })
    }
}

/// The latest update of a system image, as `a{sv}`: `update` (`(sss(sststs)st)`) once one
/// was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct SystemImageOptional {
    pub update: Option<SystemImageUpdateRow>,
}

/// A system image: `(name, state, settled, hosts, optional)`, `(ssba(ssa{sv})a{sv})`;
/// `state` reads `3 hosts on V` or `updating to V …`, `settled` is true once every host is
/// done with the latest update (or one failed it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SystemImageRow {
    pub name: String,
    pub state: String,
    pub settled: bool,
    pub hosts: Vec<HostVersionRow>,
    pub optional: SystemImageOptional,
}
