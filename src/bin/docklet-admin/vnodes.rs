//! Vnodes as the administrator's primitive: list, create, start, stop, delete, and `exec`.

use anyhow::Result;
use docklet::master::actions::{UserNetworkView, VNodeEntry};

use crate::accounts::*;
use crate::bus::*;
use crate::cli::*;
use crate::tables::render_table;
use docklet::model::vnode::{DesiredState, VNodeSpec};

pub(crate) async fn cluster_vnodes(conn: &zbus::Connection) -> Result<Vec<VNodeEntry>, Failure> {
    let rows = master_proxy(conn)
        .await?
        .list_vnodes()
        .await
        .map_err(|e| failure(e, "master"))?;
    all_from_wire(rows)
}

pub(crate) async fn vnodes(all: bool, json: bool) -> Result<(), Failure> {
    let conn = connect().await?;
    let rows: Vec<Vec<String>> = if all {
        let list = cluster_vnodes(&conn).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&list).expect("JSON"));
            return Ok(());
        }
        list.into_iter()
            .map(|e| {
                let (phase, reason) = e.status.map_or(("pending".into(), String::new()), |s| {
                    (s.phase.as_str().to_owned(), s.reason.unwrap_or_default())
                });
                vec![
                    e.spec.id,
                    e.host,
                    e.spec.user,
                    e.spec.cluster,
                    e.spec.address.map_or_else(|| "-".into(), |a| a.to_string()),
                    format!("{:?}", e.spec.state).to_lowercase(),
                    phase,
                    reason,
                ]
            })
            .collect()
    } else {
        let list = worker_proxy(&conn)
            .await?
            .list_vnodes()
            .await
            .map_err(|e| failure(e, "worker"))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&list).expect("JSON"));
            return Ok(());
        }
        list.into_iter()
            .map(|r| vec![r.id, r.user, r.cluster, r.state, r.unit])
            .collect()
    };
    let header: &[&str] = if all {
        &[
            "ID", "HOST", "USER", "CLUSTER", "ADDRESS", "DESIRED", "STATE", "REASON",
        ]
    } else {
        &["ID", "USER", "CLUSTER", "STATE", "UNIT"]
    };
    print!("{}", render_table(header, &rows));
    Ok(())
}

pub(crate) async fn vnode(action: VnodeAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let set = |id: String, state: &'static str| {
        let master = &master;
        async move {
            master
                .set_vnode_state(&id, state)
                .await
                .map_err(|e| failure(e, "master"))
        }
    };
    match action {
        VnodeAction::Create {
            id,
            host,
            user,
            cluster,
            index,
            image,
            cpu,
            memory,
            disk,
            tasks,
            stopped,
        } => {
            let spec = VNodeSpec {
                id,
                user,
                cluster,
                index,
                image,
                cpu_millis: parse_cpu(&cpu).map_err(usage)?,
                memory_bytes: parse_size(&memory).map_err(usage)?,
                disk_bytes: parse_size(&disk).map_err(usage)?,
                tasks,
                state: if stopped {
                    DesiredState::Stopped
                } else {
                    DesiredState::Running
                },
                address: None,
                handoff: None,
                task: None,
            };
            master
                .create_vnode(&host, &serde_json::to_string(&spec).expect("JSON"))
                .await
                .map_err(|e| failure(e, "master"))
        }
        VnodeAction::Start { id } => set(id, "running").await,
        VnodeAction::Stop { id } => set(id, "stopped").await,
        VnodeAction::Delete { id } => set(id, "deleted").await,
        VnodeAction::Show { id } => {
            let entry = cluster_vnodes(&conn)
                .await?
                .into_iter()
                .find(|e| e.spec.id == id)
                .ok_or_else(|| Failure {
                    code: 7,
                    message: format!("no vnode with id {id}"),
                })?;
            println!("{}", serde_json::to_string_pretty(&entry).expect("JSON"));
            Ok(())
        }
    }
}

/// Runs the command with this process's own stdin, stdout and stderr; returns its status.
pub(crate) async fn exec(user: String, id: String, command: Vec<String>) -> Result<u8, Failure> {
    use std::os::fd::AsFd;
    let conn = connect().await?;
    let worker = worker_proxy(&conn).await?;
    let term = std::env::var("TERM").unwrap_or_default();
    let argv: Vec<&str> = command.iter().map(String::as_str).collect();
    // The worker relays our terminal to a pty of its own, where the session's line
    // discipline runs: ours passes every key through untouched until the command ends.
    let _raw = RawTerminal::enter();
    let status = worker
        .exec(
            &id,
            &user,
            &argv,
            &term,
            std::io::stdin().as_fd().into(),
            std::io::stdout().as_fd().into(),
            std::io::stderr().as_fd().into(),
        )
        .await
        .map_err(|e| failure(e, "worker"))?;
    Ok(u8::try_from(status).unwrap_or(255))
}

/// Standard input in raw mode while it lives, when it is a terminal; restored on drop.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawTerminal(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        match tcsetattr(&stdin, SetArg::TCSANOW, &raw) {
            Ok(()) => RawTerminal(Some(saved)),
            Err(_) => RawTerminal(None),
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSADRAIN,
                saved,
            );
        }
    }
}

/// `docklet-admin network USER`: the user's network as the master records it (JSON).
pub(crate) async fn network(user: &str) -> Result<(), Failure> {
    let conn = connect().await?;
    let row = master_proxy(&conn)
        .await?
        .user_network(user)
        .await
        .map_err(|e| failure(e, "master"))?;
    let network: UserNetworkView = from_single(row)?;
    println!("{}", serde_json::to_string_pretty(&network).expect("JSON"));
    Ok(())
}
