//! A physical host as the cluster sees it: what its worker registers in etcd under a lease.

use serde::{Deserialize, Serialize};

/// What a worker measured on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Free space under `fs_prefix/local`, where vnodes keep their layers.
    pub disk_free_bytes: u64,
}

/// Stored at `<prefix>hosts/<name>`, bound to the worker's lease: it vanishes when the worker
/// stops keeping the lease alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// Addresses of the configured network device, as `ADDR/PREFIX`.
    pub addresses: Vec<String>,
    pub capacity: Capacity,
    /// Docklet version of the worker.
    pub version: String,
    /// Images installed on the host (names under `fs_prefix/local/images` with a `current`
    /// version), so the master places vnodes only where their image is.
    #[serde(default)]
    pub images: Vec<String>,
    /// The version each of those images' `current` points at.
    #[serde(default)]
    pub image_versions: std::collections::BTreeMap<String, String>,
    /// Unix seconds when this worker registered.
    pub registered_at: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostNameError {
    #[error("host name is empty")]
    Empty,
    #[error("host name {0:?} is longer than 63 characters")]
    TooLong(String),
    #[error("host name {0:?} may only contain a-z, A-Z, 0-9, '-' and '.'")]
    BadCharacter(String),
}

/// Host names become etcd key segments and journald field values: keep them plain.
pub fn validate_host_name(name: &str) -> Result<(), HostNameError> {
    if name.is_empty() {
        return Err(HostNameError::Empty);
    }
    if name.len() > 63 {
        return Err(HostNameError::TooLong(name.into()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(HostNameError::BadCharacter(name.into()));
    }
    Ok(())
}

/// Sizes for people: 1.5G, 512M.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostRecord {
        HostRecord {
            name: name.into(),
            addresses: vec!["10.213.0.11/24".into()],
            capacity: Capacity {
                cpus: 2,
                memory_bytes: 24 * 1024 * 1024 * 1024,
                disk_free_bytes: 80 * 1024 * 1024 * 1024 + 1024 * 1024 * 512,
            },
            version: "0.1.0".into(),
            registered_at: 1_000,
            images: vec![],
            image_versions: Default::default(),
        }
    }

    #[test]
    fn host_names_are_checked() {
        assert_eq!(validate_host_name("tb1"), Ok(()));
        assert_eq!(validate_host_name("node-2.lab"), Ok(()));
        assert_eq!(validate_host_name(""), Err(HostNameError::Empty));
        assert!(matches!(
            validate_host_name("a/b"),
            Err(HostNameError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_host_name(&"x".repeat(64)),
            Err(HostNameError::TooLong(_))
        ));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(24 * 1024 * 1024 * 1024), "24.0G");
    }

    #[test]
    fn record_is_json_round_trippable() {
        let record = host("tb1");
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<HostRecord>(&json).unwrap(), record);
    }
}
