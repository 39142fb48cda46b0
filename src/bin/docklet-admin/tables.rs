//! The tables the listings print.

use anyhow::Result;
use docklet::dbus_api::BusError;

use crate::bus::*;
use docklet::model::host::{human_bytes, render_table};
use docklet::model::quota::human_cores;

pub(crate) fn system_images_table(images: &[serde_json::Value]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let hosts: Vec<String> = i["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    format!(
                        "{}={}",
                        h["host"].as_str().unwrap_or(""),
                        h["current"].as_str().unwrap_or("")
                    )
                })
                .collect();
            vec![
                i["name"].as_str().unwrap_or("").to_owned(),
                i["state"].as_str().unwrap_or("").to_owned(),
                i["update"]["from"].as_str().unwrap_or("-").to_owned(),
                hosts.join(" "),
            ]
        })
        .collect();
    render_table(
        &["SYSTEM IMAGE", "STATE", "LAST UPDATE FROM", "HOSTS"],
        &rows,
    )
}

/// Prints the master's records (a JSON list) as JSON or as a table.
pub(crate) fn print_listing(
    reply: Result<String, BusError>,
    json: bool,
    table: fn(&[serde_json::Value]) -> String,
) -> Result<(), Failure> {
    let records: Vec<serde_json::Value> = parse_reply(reply.map_err(|e| failure(e, "master"))?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records).expect("JSON"));
    } else {
        print!("{}", table(&records));
    }
    Ok(())
}

pub(crate) fn images_table(images: &[serde_json::Value]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let text = |key: &str| i[key].as_str().unwrap_or("").to_owned();
            vec![
                text("reference"),
                text("state"),
                human_bytes(i["bytes"].as_u64().unwrap_or(0)),
                i["current"]["base"].as_str().unwrap_or("-").to_owned(),
                if i["public"] == true {
                    "public"
                } else {
                    "private"
                }
                .into(),
                text("description").lines().next().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    render_table(
        &["IMAGE", "STATE", "SIZE", "BASE", "SHARING", "DESCRIPTION"],
        &rows,
    )
}

pub(crate) fn ports_table(ports: &[serde_json::Value]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            let text = |key: &str| match &p[key] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                text("public_port"),
                text("user"),
                text("cluster"),
                text("node"),
                text("port"),
                if p["forwarding"] == true {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    render_table(
        &["PUBLIC", "USER", "CLUSTER", "NODE", "PORT", "FORWARDING"],
        &rows,
    )
}

pub(crate) fn users_table(users: &[serde_json::Value]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            let used = |key: &str| u["usage"][key].as_u64().unwrap_or(0);
            let limit = |key: &str| u["quota"][key].as_u64().unwrap_or(0);
            vec![
                u["user"].as_str().unwrap_or("?").to_owned(),
                u["group"].as_str().unwrap_or("?").to_owned(),
                u["status"].as_str().unwrap_or("?").to_owned(),
                u["auth"].as_str().unwrap_or("?").to_owned(),
                format!("{}/{}", used("vnodes"), limit("vnodes")),
                format!(
                    "{}/{}",
                    human_cores(used("cpu_millis")),
                    human_cores(limit("cpu_millis"))
                ),
                format!(
                    "{}/{}",
                    human_bytes(used("memory_bytes")),
                    human_bytes(limit("memory_bytes"))
                ),
                format!(
                    "{}/{}",
                    human_bytes(used("disk_bytes")),
                    human_bytes(limit("disk_bytes"))
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
pub(crate) fn groups_table(groups: &[serde_json::Value], default: &str) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let q = |key: &str| g["quota"][key].as_u64().unwrap_or(0);
            let name = g["name"].as_str().unwrap_or("?");
            vec![
                if name == default {
                    format!("{name}*")
                } else {
                    name.to_owned()
                },
                if g["admin"] == true { "yes" } else { "no" }.into(),
                human_cores(q("cpu_millis")),
                human_bytes(q("memory_bytes")),
                human_bytes(q("disk_bytes")),
                q("vnodes").to_string(),
                format!("{} ({})", q("images"), human_bytes(q("image_bytes"))),
                q("port_mappings").to_string(),
                match q("idle_secs") {
                    0 => "never".into(),
                    s => format!("{}h", s / 3600),
                },
                match g["egress_allow"].as_array() {
                    Some(rules) if !rules.is_empty() => rules
                        .iter()
                        .filter_map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => "-".into(),
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
