//! The tables the listings print.

use std::collections::BTreeMap;

use anyhow::Result;
use docklet::dbus_api::BusError;
use docklet::master::actions::Me;
use docklet::master::actions::images::ImageView;
use docklet::master::actions::jobs::JobSummary;
use docklet::master::actions::ports::PortView;
use docklet::master::actions::system_images::SystemImageView;
use docklet::model::account::AuthMethod;
use docklet::model::host::{HostRecord, human_bytes};
use docklet::model::quota::{Group, human_cores};
use serde::Serialize;

use crate::bus::*;

/// Renders rows as a left-aligned table with a header line, columns two spaces apart.
pub(crate) fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
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

/// Durations for people: 45s, 12m, 3h, 2d.
pub(crate) fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// What the scheduler knows of a host beyond its record: vnodes placed there and whether it
/// is draining.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HostLoadSummary {
    pub(crate) vnodes: u32,
    pub(crate) draining: bool,
}

/// The `docklet-admin hosts` table. `loads` may lack hosts (or be empty when the master
/// cannot tell): those show `-`.
pub(crate) fn hosts_table(
    hosts: &[HostRecord],
    loads: &BTreeMap<String, HostLoadSummary>,
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

pub(crate) fn system_images_table(images: &[SystemImageView]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let hosts: Vec<String> = i
                .hosts
                .iter()
                .map(|h| format!("{}={}", h.host, h.current))
                .collect();
            vec![
                i.name.clone(),
                i.state.clone(),
                i.update
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |u| u.from.clone()),
                hosts.join(" "),
            ]
        })
        .collect();
    render_table(
        &["SYSTEM IMAGE", "STATE", "LAST UPDATE FROM", "HOSTS"],
        &rows,
    )
}

/// Prints the master's records as JSON (the views' own, as the REST API shows them) or as a
/// table.
pub(crate) fn print_listing<R, T>(
    reply: Result<Vec<R>, BusError>,
    json: bool,
    table: fn(&[T]) -> String,
) -> Result<(), Failure>
where
    T: Serialize + TryFrom<R>,
    T::Error: std::fmt::Display,
{
    let records: Vec<T> = all_from_wire(reply.map_err(|e| failure(e, "master"))?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records).expect("JSON"));
    } else {
        print!("{}", table(&records));
    }
    Ok(())
}

pub(crate) fn images_table(images: &[ImageView]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.reference.clone(),
                i.state.clone(),
                human_bytes(i.bytes),
                i.record
                    .current
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |v| v.base.clone()),
                if i.record.public { "public" } else { "private" }.into(),
                i.record.description.lines().next().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    render_table(
        &["IMAGE", "STATE", "SIZE", "BASE", "SHARING", "DESCRIPTION"],
        &rows,
    )
}

pub(crate) fn ports_table(ports: &[PortView]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.mapping.public_port.to_string(),
                p.mapping.user.clone(),
                p.mapping.cluster.clone(),
                p.mapping.node.to_string(),
                p.mapping.port.to_string(),
                if p.forwarding { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    render_table(
        &["PUBLIC", "USER", "CLUSTER", "NODE", "PORT", "FORWARDING"],
        &rows,
    )
}

pub(crate) fn jobs_table(jobs: &[JobSummary]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let count = |state: &str| j.counts.get(state).copied().unwrap_or(0);
            let done =
                count("succeeded") + count("failed") + count("timed_out") + count("cancelled");
            let total: u32 = j.counts.values().sum();
            vec![
                j.id.to_string(),
                j.user.clone(),
                j.name.clone(),
                j.state.as_str().to_owned(),
                format!(
                    "{} running, {} queued, {done}/{total} done",
                    count("running") + count("starting"),
                    count("queued")
                ),
                j.position.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                j.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "USER",
            "NAME",
            "STATE",
            "INSTANCES",
            "POSITION",
            "REASON",
        ],
        &rows,
    )
}

pub(crate) fn users_table(users: &[Me]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            let (used, limit) = (&u.usage, &u.quota);
            vec![
                u.user.clone(),
                u.group.clone(),
                u.status.as_str().to_owned(),
                match u.auth {
                    AuthMethod::Local => "local",
                    AuthMethod::Pam => "pam",
                }
                .to_owned(),
                format!("{}/{}", used.vnodes, limit.vnodes),
                format!(
                    "{}/{}",
                    human_cores(used.cpu_millis),
                    human_cores(limit.cpu_millis)
                ),
                format!(
                    "{}/{}",
                    human_bytes(used.memory_bytes),
                    human_bytes(limit.memory_bytes)
                ),
                format!(
                    "{}/{}",
                    human_bytes(used.disk_bytes),
                    human_bytes(limit.disk_bytes)
                ),
            ]
        })
        .collect();
    render_table(
        &[
            "USER", "GROUP", "STATUS", "AUTH", "VNODES", "CPU", "MEMORY", "DISK",
        ],
        &rows,
    )
}

/// `default` (the group new users join) is marked with a star.
pub(crate) fn groups_table(groups: &[Group], default: &str) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let q = &g.quota;
            vec![
                if g.name == default {
                    format!("{}*", g.name)
                } else {
                    g.name.clone()
                },
                if g.admin { "yes" } else { "no" }.into(),
                human_cores(q.cpu_millis),
                human_bytes(q.memory_bytes),
                human_bytes(q.disk_bytes),
                q.vnodes.to_string(),
                format!("{} ({})", q.images, human_bytes(q.image_bytes)),
                q.port_mappings.to_string(),
                match q.idle_secs {
                    0 => "never".into(),
                    s => format!("{}h", s / 3600),
                },
                if g.egress_allow.is_empty() {
                    "-".into()
                } else {
                    g.egress_allow
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
            ]
        })
        .collect();
    render_table(
        &[
            "GROUP", "ADMIN", "CPU", "MEMORY", "DISK", "VNODES", "IMAGES", "PORTS", "IDLE",
            "EGRESS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use docklet::model::account::AccountStatus;
    use docklet::model::host::Capacity;
    use docklet::model::ports::PortMapping;
    use docklet::model::quota::{DEFAULT_GROUP, Usage, default_groups};

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
    fn durations_read_well() {
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600), "3h");
        assert_eq!(human_duration(5 * 86400), "5d");
    }

    #[test]
    fn hosts_table_aligns_columns() {
        let loads = BTreeMap::from([(
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
    fn groups_table_marks_the_default_and_lists_egress() {
        let mut groups = default_groups();
        groups[0].egress_allow = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.1.5:443".parse().unwrap(),
        ];
        let table = groups_table(&groups, DEFAULT_GROUP);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("GROUP        ADMIN  CPU"), "{table}");
        assert!(
            lines[1].starts_with(
                "root         yes    4 cores  8.0G    40.0G  8       10 (20.0G)  8      24h"
            ),
            "{table}"
        );
        assert!(
            lines[1].ends_with("10.0.0.0/8,192.168.1.5/32:443"),
            "{table}"
        );
        assert!(lines[4].starts_with("foundation*  no "), "{table}");
        assert!(lines[4].ends_with("24h   -"), "{table}");
    }

    #[test]
    fn users_and_ports_tables_read_the_typed_views() {
        let group = default_groups().remove(0);
        let me = Me {
            user: "alice".into(),
            group: "root".into(),
            admin: true,
            status: AccountStatus::Normal,
            auth: AuthMethod::Pam,
            quota: group.quota,
            usage: Usage {
                vnodes: 2,
                cpu_millis: 1500,
                memory_bytes: 1024 * 1024 * 1024,
                ..Usage::default()
            },
            defaults: group.defaults,
        };
        let table = users_table(&[me]);
        assert_eq!(
            table.lines().nth(1),
            Some("alice  root   normal  pam   2/8     1.5 cores/4 cores  1.0G/8.0G  0B/40.0G"),
            "{table}"
        );
        let port = PortView {
            mapping: PortMapping {
                user: "alice".into(),
                cluster: "web".into(),
                node: 1,
                port: 80,
                public_port: 20001,
                created_at: 0,
            },
            vnode: "alice-web-1".into(),
            address: "example.org:20001".into(),
            forwarding: true,
        };
        let table = ports_table(&[port]);
        assert_eq!(
            table.lines().nth(1),
            Some("20001   alice  web      1     80    yes"),
            "{table}"
        );
    }
}
