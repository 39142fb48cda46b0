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

/// Renders rows as a left-aligned table with a header line, columns two spaces apart.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The `docklet-admin hosts` table.
/// What the scheduler knows of a host beyond its record: vnodes placed there and whether it
/// is draining.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLoadSummary {
    pub vnodes: u32,
    pub draining: bool,
}

/// `loads` may lack hosts (or be empty when the master cannot tell): those show `-`.
pub fn hosts_table(
    hosts: &[HostRecord],
    loads: &std::collections::BTreeMap<String, HostLoadSummary>,
    now: u64,
) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let load = loads.get(&h.name);
            vec![
                h.name.clone(),
                if h.addresses.is_empty() {
                    "-".into()
                } else {
                    h.addresses.join(",")
                },
                h.capacity.cpus.to_string(),
                human_bytes(h.capacity.memory_bytes),
                human_bytes(h.capacity.disk_free_bytes),
                h.version.clone(),
                human_duration(now.saturating_sub(h.registered_at)),
                load.map_or_else(|| "-".into(), |l| l.vnodes.to_string()),
                match load {
                    Some(l) if l.draining => "draining".into(),
                    Some(_) => "no".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    render_table(
        &[
            "HOST",
            "ADDRESSES",
            "CPUS",
            "MEMORY",
            "DISK FREE",
            "VERSION",
            "UP",
            "VNODES",
            "DRAIN",
        ],
        &rows,
    )
}

/// Durations for people: 45s, 12m, 3h, 2d.
pub fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
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
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(24 * 1024 * 1024 * 1024), "24.0G");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600), "3h");
        assert_eq!(human_duration(5 * 86400), "5d");
    }

    #[test]
    fn hosts_table_aligns_columns() {
        let loads = std::collections::BTreeMap::from([(
            "tb1".to_owned(),
            HostLoadSummary {
                vnodes: 3,
                draining: true,
            },
        )]);
        let table = hosts_table(&[host("tb1"), host("tb-long-name")], &loads, 1_090);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("HOST          ADDRESSES"), "{table}");
        assert!(
            lines[1].starts_with("tb1           10.213.0.11/24  2     24.0G   80.5G"),
            "{table}"
        );
        assert!(lines[1].ends_with("90s  3       draining"), "{table}");
        assert!(lines[2].ends_with("90s  -       -"), "{table}");
    }

    #[test]
    fn record_is_json_round_trippable() {
        let record = host("tb1");
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<HostRecord>(&json).unwrap(), record);
    }
}
