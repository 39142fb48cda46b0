//! `docklet-admin`: local administration of Docklet, over D-Bus only (the system bus policy
//! and the daemons admit root and group `docklet-admin`).
//!
//! Exit codes: 0 success; 1 the daemon reported a failure; 2 usage error; 3 the daemon is not
//! running or the bus is unreachable; 4 permission denied; 5 the cluster is already
//! initialized; 6 etcd is unreachable.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use docklet::dbus_api::{BusError, HostRow, Master1Proxy, Worker1Proxy};
use docklet::model::host::{HostRecord, hosts_table, render_table};
use serde_json::json;

#[derive(Parser)]
#[command(
    version,
    about = "Administer Docklet on this host (root or group docklet-admin)",
    after_help = "Exit codes: 0 ok, 1 failure reported by the daemon, 2 usage, 3 daemon not running, \
                  4 permission denied, 5 already initialized, 6 etcd unreachable."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the state of the master and worker on this host.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the hosts whose workers are registered in the cluster.
    Hosts {
        #[arg(long)]
        json: bool,
    },
    /// Create the cluster: internal credentials and the portal administrator `root`.
    Init {
        /// Wipe an existing cluster's state and start over.
        #[arg(long)]
        force: bool,
    },
}

/// A failure with the exit code documented above.
struct Failure {
    code: u8,
    message: String,
}

fn failure(e: BusError, what: &str) -> Failure {
    let (code, message) = match e {
        BusError::AccessDenied(m) => (4, format!("permission denied: {m}")),
        BusError::AlreadyInitialized(m) => (5, m),
        BusError::EtcdUnavailable(m) => (6, m),
        BusError::NotInitialized(m) | BusError::Failed(m) => (1, m),
        BusError::ZBus(e) => zbus_failure(e, what),
    };
    Failure { code, message }
}

fn zbus_failure(e: zbus::Error, what: &str) -> (u8, String) {
    use zbus::DBusError;
    // The bus's own refusals arrive either as a raw method error or as a decoded fdo error.
    let (name, detail) = match &e {
        zbus::Error::MethodError(name, detail, _) => {
            (name.to_string(), detail.clone().unwrap_or_default())
        }
        zbus::Error::FDO(fdo) => (
            fdo.name().to_string(),
            fdo.description().unwrap_or_default().to_owned(),
        ),
        zbus::Error::InputOutput(_) | zbus::Error::Address(_) => {
            return (3, format!("cannot reach the system bus: {e}"));
        }
        _ => return (1, e.to_string()),
    };
    match name.as_str() {
        "org.freedesktop.DBus.Error.AccessDenied" => (
            4,
            format!("permission denied: be root or in group docklet-admin ({detail})"),
        ),
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner"
        | "org.freedesktop.DBus.Error.Spawn.ChildExited"
        | "org.freedesktop.DBus.Error.Spawn.Failed" => (
            3,
            format!("the {what} is not running on this host ({detail})"),
        ),
        _ => (1, format!("{name}: {detail}")),
    }
}

async fn connect() -> Result<zbus::Connection, Failure> {
    zbus::Connection::system().await.map_err(|e| Failure {
        code: 3,
        message: format!("cannot reach the system bus: {e}"),
    })
}

/// `(version, status)` of one daemon, or why it could not be asked.
async fn daemon_state(
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

async fn status(json: bool) -> Result<(), Failure> {
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

async fn hosts(json: bool) -> Result<(), Failure> {
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
        print!("{}", hosts_table(&records, docklet::master::now_secs()));
    }
    Ok(())
}

async fn init(force: bool) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = Master1Proxy::new(&conn)
        .await
        .map_err(|e| failure(e.into(), "master"))?;
    let result = master.init(force).await.map_err(|e| failure(e, "master"))?;
    println!("Cluster initialized.");
    println!("Portal:          {}", result.portal_url);
    println!("Administrator:   {}", result.admin_user);
    println!(
        "Password file:   {} (readable by root only)",
        result.password_file
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.command {
            Command::Status { json } => status(json).await,
            Command::Hosts { json } => hosts(json).await,
            Command::Init { force } => init(force).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("docklet-admin: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
