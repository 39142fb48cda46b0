//! What the daemons and hosts are doing: `status`, `hosts`, `drain`.

use anyhow::Result;
use docklet::dbus_api::{HostRow, Master1Proxy, Worker1Proxy};
use std::collections::BTreeMap;

use crate::bus::*;
use crate::tables::{HostLoadSummary, hosts_table, render_table};
use docklet::master::actions::HostView;
use docklet::model::host::HostRecord;
use serde_json::json;

/// `(version, status)` of one daemon, or why it could not be asked.
pub(crate) async fn daemon_state(
    version: zbus::Result<String>,
    status: zbus::Result<String>,
    what: &str,
) -> Result<(String, String), Failure> {
    let to_failure = |e: zbus::Error| {
        let (code, message) = zbus_failure(e, what);
        Failure { code, message }
    };
    Ok((version.map_err(to_failure)?, status.map_err(to_failure)?))
}

pub(crate) async fn status(json: bool) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = Master1Proxy::new(&conn)
        .await
        .map_err(|e| failure(e.into(), "master"))?;
    let worker = Worker1Proxy::new(&conn)
        .await
        .map_err(|e| failure(e.into(), "worker"))?;
    let master_state = daemon_state(master.version().await, master.status().await, "master").await;
    let worker_state = daemon_state(worker.version().await, worker.status().await, "worker").await;
    // Permission problems are reported as such, not as "not running".
    for state in [&master_state, &worker_state] {
        if let Err(f) = state
            && f.code == 4
        {
            return Err(Failure {
                code: 4,
                message: f.message.clone(),
            });
        }
    }
    let host = worker
        .host()
        .await
        .unwrap_or_else(|_| docklet::daemon::host_name());
    if json {
        let describe = |s: &Result<(String, String), Failure>| match s {
            Ok((version, status)) => json!({"running": true, "version": version, "status": status}),
            Err(f) => json!({"running": false, "error": f.message}),
        };
        let out = json!({
            "host": host,
            "master": describe(&master_state),
            "worker": describe(&worker_state),
        });
        println!("{out:#}");
    } else {
        let row = |name: &str, s: &Result<(String, String), Failure>| match s {
            Ok((version, status)) => vec![
                name.into(),
                "running".into(),
                version.clone(),
                status.clone(),
            ],
            Err(f) => vec![
                name.into(),
                "not running".into(),
                "-".into(),
                f.message.clone(),
            ],
        };
        print!(
            "{}",
            render_table(
                &["DAEMON", "STATE", "VERSION", "STATUS"],
                &[row("master", &master_state), row("worker", &worker_state)]
            )
        );
    }
    match (master_state, worker_state) {
        (Err(f), Err(_)) => Err(Failure {
            code: 3,
            message: format!(
                "neither master nor worker answers on host {host}: {}",
                f.message
            ),
        }),
        _ => Ok(()),
    }
}

pub(crate) async fn hosts(json: bool) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = Master1Proxy::new(&conn)
        .await
        .map_err(|e| failure(e.into(), "master"))?;
    let mut rows: Vec<HostRow> = master
        .list_hosts()
        .await
        .map_err(|e| failure(e, "master"))?;
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let records: Vec<HostRecord> = rows.into_iter().map(HostRecord::from).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&records).expect("JSON"));
    } else {
        // Vnodes and drain state need an initialized cluster; without them the table says `-`.
        let loads: BTreeMap<String, HostLoadSummary> = match master.host_loads().await {
            Ok(rows) => rows
                .into_iter()
                .map(HostView::from)
                .map(|h| {
                    (
                        h.name,
                        HostLoadSummary {
                            vnodes: h.allocated.vnodes,
                            draining: h.draining,
                        },
                    )
                })
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        print!(
            "{}",
            hosts_table(&records, &loads, docklet::master::now_secs())
        );
    }
    Ok(())
}

/// Shows a drain's progress until its host is empty.
pub(crate) async fn wait_drained(master: &Master1Proxy<'_>, host: &str) -> Result<(), Failure> {
    let mut last = String::new();
    loop {
        let rows = master
            .host_loads()
            .await
            .map_err(|e| failure(e, "master"))?;
        let hosts: Vec<HostView> = all_from_wire(rows)?;
        let Some(view) = hosts.into_iter().find(|h| h.name == host) else {
            return Err(Failure {
                code: 1,
                message: format!(
                    "{host} is down: its vnodes wait for it to come back (or recover them on another host)"
                ),
            });
        };
        let left = view.allocated.vnodes;
        if !view.draining {
            println!("{host}: the drain was called off with {left} vnode(s) left.");
            return Ok(());
        }
        let note = view.drain_note.unwrap_or_default();
        // Empty of allocations is not enough: the last vnodes may still be starting where
        // they went.
        if left == 0 && note == docklet::model::drain::EMPTY_NOTE {
            println!("{host}: empty, every vnode moved and up elsewhere.");
            return Ok(());
        }
        if note != last {
            println!("{host}: {note}");
            last = note;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `docklet-admin drain`: a host takes no new vnodes (or takes them again); waits until its
/// vnodes have moved unless told not to.
pub(crate) async fn drain(host: &str, off: bool, no_wait: bool) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    master
        .drain(host, !off)
        .await
        .map_err(|e| failure(e, "master"))?;
    if off {
        println!("{host} takes new vnodes again.");
        Ok(())
    } else if no_wait {
        println!(
            "{host} takes no new vnodes; the leading master moves its vnodes elsewhere (see `docklet-admin hosts`)."
        );
        Ok(())
    } else {
        println!(
            "{host} takes no new vnodes; moving its vnodes elsewhere (Ctrl-C stops waiting, not the drain)."
        );
        wait_drained(&master, host).await
    }
}

/// `wait [master|worker]...`: until this host's master has etcd and its worker is registered
/// (`systemctl start` returns once they serve), printing each new status line, for at most
/// `timeout`.
pub(crate) async fn wait(daemons: &[crate::cli::Daemon], timeout: &str) -> Result<(), Failure> {
    use crate::cli::Daemon;
    use zbus::proxy::CacheProperties;
    let seconds = crate::site::parse_seconds(timeout).ok_or_else(|| {
        usage(format!(
            "--timeout {timeout:?}: give seconds, or a number with s, m, h or d (like 2m)"
        ))
    })?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let conn = connect().await?;
    let all = [Daemon::Master, Daemon::Worker];
    for daemon in if daemons.is_empty() {
        &all[..]
    } else {
        daemons
    } {
        let name = daemon.name();
        let mut shown = String::new();
        loop {
            // Properties are read afresh each time: these two do not signal their changes.
            let (connected, status) = match daemon {
                Daemon::Master => {
                    let proxy = Master1Proxy::builder(&conn)
                        .cache_properties(CacheProperties::No)
                        .build()
                        .await
                        .map_err(|e| failure(e.into(), name))?;
                    (proxy.connected().await, proxy.status().await)
                }
                Daemon::Worker => {
                    let proxy = Worker1Proxy::builder(&conn)
                        .cache_properties(CacheProperties::No)
                        .build()
                        .await
                        .map_err(|e| failure(e.into(), name))?;
                    (proxy.connected().await, proxy.status().await)
                }
            };
            let to_failure = |e: zbus::Error| {
                let (code, message) = zbus_failure(e, name);
                Failure { code, message }
            };
            let (connected, status) = (connected.map_err(to_failure)?, status.map_err(to_failure)?);
            if status != shown {
                eprintln!("{name}: {status}");
                shown = status;
            }
            if connected {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Failure {
                    code: 6,
                    message: format!("the {name} is not connected after {timeout}: {shown}"),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
