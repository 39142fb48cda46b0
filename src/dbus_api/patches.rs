//! Changes to accounts and groups as `a{sv}`, as systemd's methods take them: a key is there
//! only for what changes. Callers build them typed (`SerializeDict`); the daemon reads the
//! dictionary strictly ([`DictReader`]), refusing an unknown key or a value of the wrong type
//! with [`BusError::InvalidArgument`] naming the key.

use zbus::{SerializeDict, Type};

use super::BusError;
use super::dict::{DictReader, VariantDict};
use super::records::NodeSizeRow;

/// `SetUser`'s patch: `group` (s), `status` (s: `applying`, `normal`, `locked`), `password`
/// (s, a local account's new password).
#[derive(Debug, Clone, PartialEq, Eq, Default, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct UserPatchDict {
    pub group: Option<String>,
    pub status: Option<String>,
    pub password: Option<String>,
}

impl UserPatchDict {
    const KEYS: [&str; 3] = ["group", "status", "password"];

    pub fn from_dict(dict: VariantDict) -> Result<UserPatchDict, BusError> {
        let mut reader = DictReader::new("", dict);
        let patch = UserPatchDict {
            group: reader.take("group")?,
            status: reader.take("status")?,
            password: reader.take("password")?,
        };
        reader.finish(&Self::KEYS)?;
        Ok(patch)
    }
}

/// The part of `SetGroup`'s patch under `quota`: any of `cpu_millis`, `memory_bytes`,
/// `disk_bytes`, `image_bytes`, `idle_secs` (t) and `vnodes`, `images`, `port_mappings` (u).
#[derive(Debug, Clone, PartialEq, Eq, Default, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct QuotaPatchDict {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub vnodes: Option<u32>,
    pub images: Option<u32>,
    pub image_bytes: Option<u64>,
    pub port_mappings: Option<u32>,
    pub idle_secs: Option<u64>,
}

impl QuotaPatchDict {
    const KEYS: [&str; 8] = [
        "cpu_millis",
        "memory_bytes",
        "disk_bytes",
        "vnodes",
        "images",
        "image_bytes",
        "port_mappings",
        "idle_secs",
    ];

    fn read(mut reader: DictReader) -> Result<QuotaPatchDict, BusError> {
        let patch = QuotaPatchDict {
            cpu_millis: reader.take("cpu_millis")?,
            memory_bytes: reader.take("memory_bytes")?,
            disk_bytes: reader.take("disk_bytes")?,
            vnodes: reader.take("vnodes")?,
            images: reader.take("images")?,
            image_bytes: reader.take("image_bytes")?,
            port_mappings: reader.take("port_mappings")?,
            idle_secs: reader.take("idle_secs")?,
        };
        reader.finish(&Self::KEYS)?;
        Ok(patch)
    }
}

/// `SetGroup`'s patch: `admin` (b), `quota` (a{sv}, see [`QuotaPatchDict`]), `defaults`
/// (`(utt)`: cpu_millis, memory_bytes, disk_bytes of a new node), `egress_allow` (as: the
/// whole list of rules, empty to remove them).
#[derive(Debug, Clone, PartialEq, Eq, Default, SerializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct GroupPatchDict {
    pub admin: Option<bool>,
    pub quota: Option<QuotaPatchDict>,
    pub defaults: Option<NodeSizeRow>,
    pub egress_allow: Option<Vec<String>>,
}

impl GroupPatchDict {
    const KEYS: [&str; 4] = ["admin", "quota", "defaults", "egress_allow"];

    pub fn from_dict(dict: VariantDict) -> Result<GroupPatchDict, BusError> {
        let mut reader = DictReader::new("", dict);
        let patch = GroupPatchDict {
            admin: reader.take("admin")?,
            quota: reader
                .take_dict("quota")?
                .map(QuotaPatchDict::read)
                .transpose()?,
            defaults: reader.take("defaults")?,
            egress_allow: reader.take("egress_allow")?,
        };
        reader.finish(&Self::KEYS)?;
        Ok(patch)
    }
}
