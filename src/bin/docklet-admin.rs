//! `docklet-admin`: local administration of Docklet, over D-Bus only (the system bus policy
//! and the daemons admit root and group `docklet-admin`).
//!
//! Exit codes: 0 success; 1 the daemon reported a failure; 2 usage error or invalid argument;
//! 3 the daemon is not running or the bus is unreachable; 4 permission denied; 5 the cluster
//! is already initialized; 6 etcd is unreachable; 7 no such vnode or host; 8 conflict (e.g. a
//! duplicate id). `exec` exits with the command's own status once the command ran.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use docklet::dbus_api::{BusError, HostRow, Master1Proxy, Worker1Proxy};
use docklet::master::VNodeEntry;
use std::collections::BTreeMap;

use docklet::model::host::{HostLoadSummary, HostRecord, hosts_table, human_bytes, render_table};
use docklet::model::quota::human_cores;
use docklet::model::vnode::{DesiredState, VNodeSpec};
use docklet::sys::systemd::SystemdManagerProxy;
use serde_json::json;

#[derive(Parser)]
#[command(
    version,
    about = "Administer Docklet on this host (root or group docklet-admin)",
    after_help = "Exit codes: 0 ok, 1 failure reported by the daemon, 2 usage or invalid argument, \
                  3 daemon not running, 4 permission denied, 5 already initialized, 6 etcd unreachable, \
                  7 not found, 8 conflict. `exec` exits with the command's status."
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
    /// Create the cluster: the site CA and this host's identities, etcd's users (certificate
    /// users when etcd speaks TLS, else a password on the shared filesystem) and the portal
    /// administrator `root`.
    Init {
        /// Wipe an existing cluster's state and start over.
        #[arg(long)]
        force: bool,
    },
    /// Make a one-time join token for a host (`host add`), or revoke a host's identity
    /// (`host remove`).
    Host {
        #[command(subcommand)]
        action: HostAction,
    },
    /// On the CA host: make etcd's server certificate, signed by the site CA (made when
    /// missing), in /etc/docklet/pki/etcd/, and print the etcd settings that turn on TLS and
    /// client certificates. Daemons then log in to etcd with their own certificates.
    EtcdCertificate {
        /// An address etcd's clients dial (repeat for several).
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<std::net::IpAddr>,
        /// A DNS name etcd's clients dial (repeat for several).
        #[arg(long = "name", value_name = "DNS")]
        names: Vec<String>,
    },
    /// On a new host: exchange a join token (from `docklet-admin host add` on the CA host)
    /// for this host's master and worker certificates, written to /etc/docklet/pki.
    Join {
        /// The token `host add` printed (dkj1.…).
        token: String,
    },
    /// List vnodes: this host's (from its worker), or with --all the whole cluster's.
    Vnodes {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Create, start, stop, delete or show one vnode (desired state in etcd; the host's worker
    /// acts on it).
    Vnode {
        #[command(subcommand)]
        action: VnodeAction,
    },
    /// Show a user's network: VNI, address blocks, gateway, quota and addresses (JSON).
    Network { user: String },
    /// Show a group's quota, or change it with any of the options; with --user, set one
    /// user's own vnode count over the group's (their network's blocks grow to match).
    Quota {
        /// The group (not with --user).
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        group: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Total cores, e.g. 4 or 0.5.
        #[arg(long)]
        cpu: Option<String>,
        /// Total memory: bytes, or with a K, M, G or T suffix.
        #[arg(long)]
        memory: Option<String>,
        #[arg(long)]
        disk: Option<String>,
        #[arg(long)]
        vnodes: Option<u32>,
        #[arg(long)]
        images: Option<u32>,
        /// Total size of saved images: bytes, or with a K, M, G or T suffix.
        #[arg(long)]
        image_size: Option<String>,
        #[arg(long)]
        port_mappings: Option<u32>,
        /// Seconds a cluster may stay idle before it is stopped (0: never).
        #[arg(long)]
        idle: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List port mappings (every user's, or one user's) and whether they forward now.
    Ports {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List accounts with their group, status and usage against the group's quota.
    Users {
        #[arg(long)]
        json: bool,
    },
    /// Add, change or delete an account.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// List every user's images with their state, size and sharing.
    Images {
        #[arg(long)]
        json: bool,
    },
    /// Save a node as an image, share, unshare or delete an image.
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// List the system images with every host's version and the latest update.
    SystemImages {
        #[arg(long)]
        json: bool,
    },
    /// Update a system image on every host.
    SystemImage {
        #[command(subcommand)]
        action: SystemImageAction,
    },
    /// List groups with their quotas; the default group for new users is marked.
    Groups {
        #[arg(long)]
        json: bool,
    },
    /// Add or delete a group, or make one the default for new users.
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Move every vnode off a host and place no new ones there, showing progress until it is
    /// empty (--off: take it back into service; vnodes not moved yet stay).
    Drain {
        host: String,
        #[arg(long)]
        off: bool,
        /// Return at once; the leading master goes on moving the vnodes.
        #[arg(long)]
        no_wait: bool,
    },
    /// Run a command in a vnode of this host: `docklet-admin exec ID -- CMD [ARGS...]`.
    Exec {
        /// Run as this user of the vnode.
        #[arg(long, default_value = "root")]
        user: String,
        id: String,
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum HostAction {
    /// Print a one-time join token for host NAME (a new host, or one to re-key); run
    /// `docklet-admin join TOKEN` on that host.
    Add {
        name: String,
        /// How long the token may be used: seconds, or with an s, m, h or d suffix (at most 7d).
        #[arg(long, default_value = "1h")]
        valid_for: String,
    },
    /// Revoke host NAME's certificates: its daemons are refused by every agent from now on.
    Remove { name: String },
}

#[derive(Subcommand)]
enum UserAction {
    /// A local account (password read from standard input) or, with --pam, one whose password
    /// the hosts' PAM checks.
    Add {
        name: String,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        pam: bool,
    },
    /// Change the group or status (applying, normal, locked); --password reads a new local
    /// password from standard input.
    Set {
        name: String,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        password: bool,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum ImageAction {
    /// Save node NODE of USER/CLUSTER as USER's image NAME, and wait until it is saved.
    Save {
        /// USER/CLUSTER
        cluster: String,
        node: u32,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Replace USER's image of that name.
        #[arg(long)]
        force: bool,
        /// Return once the save is asked for.
        #[arg(long)]
        no_wait: bool,
    },
    /// Let every user start clusters from OWNER/NAME.
    Share { image: String },
    /// Make OWNER/NAME private again (clusters made from it keep it).
    Unshare { image: String },
    /// Delete OWNER/NAME (refused while a cluster uses it).
    Delete { image: String },
}

#[derive(Subcommand)]
enum SystemImageAction {
    /// Make the next version of system image NAME on every host: its current version with
    /// saved image OWNER/IMAGE's changes; wait until every host has it. Running nodes keep
    /// their version until they restart.
    Update {
        name: String,
        /// OWNER/IMAGE, saved on system image NAME.
        #[arg(long)]
        from: String,
        /// Return once the update is asked for.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
enum GroupAction {
    /// A new group with the quota and node defaults of another (default: the default group).
    Add {
        name: String,
        #[arg(long)]
        from: Option<String>,
        /// Members administer Docklet.
        #[arg(long)]
        admin: bool,
    },
    Delete {
        name: String,
    },
    /// New users join this group.
    Default {
        name: String,
    },
    /// Sets the destinations of the site the group's members' vnodes may reach besides what
    /// the site allows everyone: `CIDR` or `ADDRESS`, optionally `:PORT` or `:FIRST-LAST`
    /// (TCP and UDP). None: only the site's policy.
    Egress {
        name: String,
        allow: Vec<String>,
    },
}

#[derive(Subcommand)]
enum VnodeAction {
    /// Write a new vnode spec for a host.
    Create {
        id: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        cluster: String,
        #[arg(long, default_value_t = 0)]
        index: u32,
        #[arg(long, default_value = "base")]
        image: String,
        /// Cores, e.g. 1 or 0.5.
        #[arg(long, default_value = "1")]
        cpu: String,
        /// Bytes, or with a K, M, G or T suffix.
        #[arg(long, default_value = "1G")]
        memory: String,
        #[arg(long, default_value = "4G")]
        disk: String,
        #[arg(long, default_value_t = 2048)]
        tasks: u32,
        /// Create it stopped.
        #[arg(long)]
        stopped: bool,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Spec and status as JSON.
    Show {
        id: String,
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
        BusError::InvalidArgument(m) => (2, m),
        BusError::NotFound(m) => (7, m),
        BusError::Conflict(m) => (8, m),
        BusError::Exhausted(m) => (9, m),
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
        // Vnodes and drain state need an initialized cluster; without them the table says `-`.
        let loads: BTreeMap<String, HostLoadSummary> = match master.host_loads().await {
            Ok(text) => serde_json::from_str::<Vec<serde_json::Value>>(&text)
                .unwrap_or_default()
                .into_iter()
                .map(|h| {
                    (
                        h["name"].as_str().unwrap_or_default().to_owned(),
                        HostLoadSummary {
                            vnodes: h["allocated"]["vnodes"].as_u64().unwrap_or(0) as u32,
                            draining: h["draining"] == true,
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
async fn wait_drained(master: &Master1Proxy<'_>, host: &str) -> Result<(), Failure> {
    let mut last = String::new();
    loop {
        let text = master
            .host_loads()
            .await
            .map_err(|e| failure(e, "master"))?;
        let hosts: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        let Some(view) = hosts.iter().find(|h| h["name"] == host) else {
            return Err(Failure {
                code: 1,
                message: format!(
                    "{host} is down: its vnodes wait for it to come back (or recover them on another host)"
                ),
            });
        };
        let left = view["allocated"]["vnodes"].as_u64().unwrap_or(0);
        if view["draining"] != true {
            println!("{host}: the drain was called off with {left} vnode(s) left.");
            return Ok(());
        }
        let note = view["drain_note"].as_str().unwrap_or("").to_owned();
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

/// The portal's certificate: the configured one, or the site CA and certificate `init`
/// makes in /etc/docklet/tls when none is configured. Returns what to tell the administrator.
fn site_certificate() -> Result<String, Failure> {
    use docklet::master::tls::{self, Outcome};
    let config = admin_config()?;
    let host = docklet::daemon::host_name();
    let group = master_group();
    match tls::ensure_site_certificate(&config, &host, group) {
        Ok(Outcome::Present { cert }) => Ok(format!("{} (kept)", cert.display())),
        Ok(Outcome::Made { ca, cert }) => Ok(format!(
            "{} for {}, signed by a new site CA: give browsers {} (or configure a real certificate: tls_cert, tls_key)",
            cert.display(),
            tls::site_names(&config, &host).join(", "),
            ca.display()
        )),
        Err(e) => Err(Failure {
            code: 1,
            message: format!("the portal's certificate: {e}"),
        }),
    }
}

/// The site CA and this host's master and worker identities in /etc/docklet/pki (made when
/// missing). Returns what to tell the administrator and whether anything was made.
fn site_identities() -> Result<(String, bool), Failure> {
    use docklet::pki::{self, PKI_DIR};
    let config = admin_config()?;
    let host = docklet::daemon::host_name();
    let group = master_group();
    let dir = std::path::Path::new(PKI_DIR);
    let (_, outcome) =
        pki::ensure_local(dir, &config.cluster_name, &host, group).map_err(|e| Failure {
            code: 1,
            message: format!("the site CA: {e}"),
        })?;
    let made = outcome.made_ca || !outcome.issued.is_empty();
    let text = format!(
        "{} ({}), this host's identities {}",
        pki::ca_cert_file(dir).display(),
        if outcome.made_ca {
            "new; its key stays on this host, root's alone"
        } else {
            "kept"
        },
        if outcome.issued.is_empty() {
            "kept".to_owned()
        } else {
            format!(
                "made for {}",
                outcome
                    .issued
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        }
    );
    Ok((text, made))
}

/// The master's group, which may read the master's keys.
fn master_group() -> Option<nix::unistd::Gid> {
    nix::unistd::Group::from_name(docklet::master::MASTER_USER)
        .ok()
        .flatten()
        .map(|g| g.gid)
}

/// The configuration `docklet-admin` reads (`DOCKLET_CONFIG`, else the default path; the
/// defaults when there is no file).
fn admin_config() -> Result<docklet::config::Config, Failure> {
    let path = std::env::var_os("DOCKLET_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| docklet::config::DEFAULT_PATH.into());
    if path.exists() {
        docklet::config::Config::load(&path).map_err(|e| usage(e.to_string()))
    } else {
        Ok(docklet::config::Config::default())
    }
}

async fn init(force: bool) -> Result<(), Failure> {
    // The certificate first: a master started without one serves HTTPS from the moment
    // its files appear.
    let certificate = site_certificate()?;
    let (identities, made) = site_identities()?;
    let conn = connect().await?;
    if made {
        // systemd hands the master the CA's key at its start (LoadCredential=).
        let systemd = SystemdManagerProxy::new(&conn)
            .await
            .map_err(|e| failure(e.into(), "systemd"))?;
        if let Err(e) = systemd.try_restart_unit(MASTER_UNIT, "replace").await {
            eprintln!(
                "docklet-admin: cannot restart {MASTER_UNIT} ({e}); restart it to let it sign joins"
            );
        }
    }
    let master = Master1Proxy::new(&conn)
        .await
        .map_err(|e| failure(e.into(), "master"))?;
    let result = match master.init(force).await {
        Ok(result) => result,
        // An existing site from before identities: making them was the work to do.
        Err(BusError::AlreadyInitialized(_)) if made => {
            println!("Cluster already initialized.");
            println!("Identities:      {identities}");
            println!(
                "Other hosts:     `docklet-admin host add NAME` here, then `docklet-admin join TOKEN` there"
            );
            return Ok(());
        }
        Err(e) => return Err(failure(e, "master")),
    };
    println!("Cluster initialized.");
    println!("Portal:          {}", result.portal_url);
    println!("Certificate:     {certificate}");
    println!("Identities:      {identities}");
    println!(
        "Other hosts:     `docklet-admin host add NAME` here, then `docklet-admin join TOKEN` there"
    );
    println!("Administrator:   {}", result.admin_user);
    println!(
        "Password file:   {} (readable by root only)",
        result.password_file
    );
    // This host is the cluster's master host now: its master starts at boot, not only on
    // the first portal request, so port mappings and the controllers come back by themselves.
    match enable_master_at_boot(&conn).await {
        Ok(()) => println!("Master:          starts at boot on this host ({MASTER_UNIT} enabled)"),
        Err(e) => eprintln!(
            "docklet-admin: cannot enable {MASTER_UNIT} ({e}); run `systemctl enable {MASTER_UNIT}`"
        ),
    }
    Ok(())
}

const MASTER_UNIT: &str = "docklet-master.service";

async fn enable_master_at_boot(conn: &zbus::Connection) -> zbus::Result<()> {
    let systemd = SystemdManagerProxy::new(conn).await?;
    systemd
        .enable_unit_files(&[MASTER_UNIT], false, false)
        .await?;
    systemd.reload().await
}

/// `host add NAME`: prints the join token.
async fn host_add(name: &str, valid_for: &str) -> Result<(), Failure> {
    let seconds = parse_seconds(valid_for).ok_or_else(|| {
        usage(format!(
            "--valid-for {valid_for:?}: give seconds, or a number with s, m, h or d (like 1h)"
        ))
    })?;
    let conn = connect().await?;
    let token = master_proxy(&conn)
        .await?
        .add_host(name, seconds)
        .await
        .map_err(|e| failure(e, "master"))?;
    eprintln!("Join token for host {name}, valid {valid_for}, usable once. On {name}, run:");
    println!("docklet-admin join {token}");
    Ok(())
}

/// `60`, `90s`, `30m`, `1h`, `7d` in seconds.
fn parse_seconds(text: &str) -> Option<u64> {
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

async fn host_remove(name: &str) -> Result<(), Failure> {
    let conn = connect().await?;
    master_proxy(&conn)
        .await?
        .remove_host(name)
        .await
        .map_err(|e| failure(e, "master"))?;
    println!("Host {name} removed: etcd refuses its certificates now, the agents within seconds.");
    Ok(())
}

/// `etcd-certificate`: etcd's server key and certificate from the site CA, and the settings
/// that use them.
fn etcd_certificate(addresses: &[std::net::IpAddr], names: &[String]) -> Result<(), Failure> {
    use docklet::pki::{self, PKI_DIR};
    if addresses.is_empty() && names.is_empty() {
        return Err(usage(
            "give the addresses (--address IP) or names (--name DNS) etcd's clients dial".into(),
        ));
    }
    let (identities, _) = site_identities()?;
    let dir = std::path::Path::new(PKI_DIR);
    let ca = pki::SiteCa::load(dir).map_err(|e| Failure {
        code: 1,
        message: format!("the site CA: {e}"),
    })?;
    // Debian's etcd runs as the user etcd.
    let etcd_group = nix::unistd::Group::from_name("etcd")
        .ok()
        .flatten()
        .map(|g| g.gid);
    let (cert, key) =
        pki::write_etcd_server(dir, &ca, names, addresses, etcd_group).map_err(|e| Failure {
            code: 1,
            message: format!("etcd's certificate: {e}"),
        })?;
    let urls: Vec<String> = addresses
        .iter()
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => format!("https://{v4}:2379"),
            std::net::IpAddr::V6(v6) => format!("https://[{v6}]:2379"),
        })
        .chain(names.iter().map(|name| format!("https://{name}:2379")))
        .collect();
    eprintln!("Site CA:      {identities}");
    eprintln!(
        "Certificate:  {} and {} for {}",
        cert.display(),
        key.display(),
        addresses
            .iter()
            .map(|ip| ip.to_string())
            .chain(names.iter().cloned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("Set these in etcd's environment (/etc/default/etcd) and restart etcd:");
    println!("ETCD_CERT_FILE=\"{}\"", cert.display());
    println!("ETCD_KEY_FILE=\"{}\"", key.display());
    println!(
        "ETCD_TRUSTED_CA_FILE=\"{}\"",
        pki::ca_cert_file(dir).display()
    );
    println!("ETCD_CLIENT_CERT_AUTH=\"true\"");
    let listen: Vec<&str> = urls
        .iter()
        .filter(|u| !names.iter().any(|n| u.contains(n.as_str())))
        .map(String::as_str)
        .collect();
    if !listen.is_empty() {
        println!("ETCD_LISTEN_CLIENT_URLS=\"{}\"", listen.join(","));
    }
    println!("ETCD_ADVERTISE_CLIENT_URLS=\"{}\"", urls.join(","));
    eprintln!(
        "Then on every host, in /etc/docklet/docklet.toml: [etcd] endpoints = [{}]",
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `join TOKEN`: this host's keys, signed by the site's CA through the portal.
async fn join(token: &str) -> Result<(), Failure> {
    use docklet::pki::join::{JoinRequest, JoinToken, exchange};
    use docklet::pki::{self, PKI_DIR, Role};
    use rcgen::PublicKeyData;
    let failed = |message: String| Failure { code: 1, message };
    let token = JoinToken::decode(token).map_err(|e| usage(e.to_string()))?;
    let host = docklet::daemon::host_name();
    if token.host != host {
        return Err(usage(format!(
            "this token is for host {}, and this host is {host}: make one with `docklet-admin host add {host}`",
            token.host
        )));
    }
    if docklet::daemon::now_secs() >= token.expires_at {
        return Err(failed(
            "this token has expired: make a new one with `docklet-admin host add`".into(),
        ));
    }
    let keys = [
        rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?,
        rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?,
    ];
    let spki = |key: &rcgen::KeyPair| data_encoding::BASE64.encode(&key.subject_public_key_info());
    let request = JoinRequest::new(&token, spki(&keys[0]), spki(&keys[1]));
    println!("joining through {} ...", token.portal);
    let response = exchange(&token, &request)
        .await
        .map_err(|e| failed(format!("join: {e}")))?;
    let dir = std::path::Path::new(PKI_DIR);
    let group = master_group();
    std::fs::create_dir_all(dir).map_err(|e| failed(format!("{PKI_DIR}: {e}")))?;
    let write = || -> Result<(), pki::PkiError> {
        pki::write_file(&pki::ca_cert_file(dir), &response.ca, 0o644, None)?;
        pki::write_identity(
            dir,
            Role::Master,
            &response.master,
            &keys[0].serialize_pem(),
            group,
        )?;
        pki::write_identity(
            dir,
            Role::Worker,
            &response.worker,
            &keys[1].serialize_pem(),
            group,
        )
    };
    write().map_err(|e| failed(format!("writing {PKI_DIR}: {e}")))?;
    println!(
        "Host {host} joined: its identities are in {PKI_DIR} (the agent and the master use them within seconds)."
    );
    Ok(())
}

fn usage(message: String) -> Failure {
    Failure { code: 2, message }
}

async fn master_proxy(conn: &zbus::Connection) -> Result<Master1Proxy<'_>, Failure> {
    Master1Proxy::new(conn)
        .await
        .map_err(|e| failure(e.into(), "master"))
}

async fn worker_proxy(conn: &zbus::Connection) -> Result<Worker1Proxy<'_>, Failure> {
    Worker1Proxy::new(conn)
        .await
        .map_err(|e| failure(e.into(), "worker"))
}

async fn cluster_vnodes(conn: &zbus::Connection) -> Result<Vec<VNodeEntry>, Failure> {
    let text = master_proxy(conn)
        .await?
        .list_vnodes()
        .await
        .map_err(|e| failure(e, "master"))?;
    serde_json::from_str(&text).map_err(|e| Failure {
        code: 1,
        message: format!("the master sent an unreadable vnode list: {e}"),
    })
}

async fn vnodes(all: bool, json: bool) -> Result<(), Failure> {
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

async fn vnode(action: VnodeAction) -> Result<(), Failure> {
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
async fn exec(user: String, id: String, command: Vec<String>) -> Result<u8, Failure> {
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

fn parse_reply<T: serde::de::DeserializeOwned>(text: String) -> Result<T, Failure> {
    serde_json::from_str(&text).map_err(|e| Failure {
        code: 1,
        message: format!("the master sent an unreadable answer: {e}"),
    })
}

/// A password from standard input: the first line, so `echo pw | docklet-admin ...` works and
/// the password never shows in the process list.
fn read_password() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| Failure {
        code: 2,
        message: format!("cannot read the password from standard input: {e}"),
    })?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(usage("give the password on standard input".into()));
    }
    Ok(password)
}

async fn user(action: UserAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let bus = |e| failure(e, "master");
    let reply = match action {
        UserAction::Add { name, group, pam } => {
            let password = if pam { String::new() } else { read_password()? };
            master
                .create_user(
                    &name,
                    group.as_deref().unwrap_or(""),
                    if pam { "pam" } else { "local" },
                    &password,
                )
                .await
                .map_err(bus)?
        }
        UserAction::Set {
            name,
            group,
            status,
            password,
        } => {
            let mut patch = serde_json::Map::new();
            if let Some(group) = group {
                patch.insert("group".into(), group.into());
            }
            if let Some(status) = status {
                patch.insert("status".into(), status.into());
            }
            if password {
                patch.insert("password".into(), read_password()?.into());
            }
            if patch.is_empty() {
                return Err(usage(
                    "nothing to change: give --group, --status or --password".into(),
                ));
            }
            master
                .set_user(&name, &serde_json::Value::Object(patch).to_string())
                .await
                .map_err(bus)?
        }
        UserAction::Delete { name } => {
            master.delete_user(&name).await.map_err(bus)?;
            println!("User {name} deleted.");
            return Ok(());
        }
    };
    let user: serde_json::Value = parse_reply(reply)?;
    print!("{}", users_table(&[user]));
    Ok(())
}

/// `owner/name` → its two parts.
fn split_pair<'a>(text: &'a str, what: &str) -> Result<(&'a str, &'a str), Failure> {
    text.split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| usage(format!("{text:?}: give {what}")))
}

async fn image(action: ImageAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let bus = |e| failure(e, "master");
    let reply = match action {
        ImageAction::Save {
            cluster,
            node,
            name,
            description,
            force,
            no_wait,
        } => {
            let (user, cluster) = split_pair(&cluster, "USER/CLUSTER")?;
            let reply = master
                .save_image(user, cluster, node, &name, &description, force)
                .await
                .map_err(bus)?;
            if no_wait {
                reply
            } else {
                let reference = format!("{user}/{name}");
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let images: Vec<serde_json::Value> =
                        parse_reply(master.images().await.map_err(bus)?)?;
                    let Some(image) = images
                        .into_iter()
                        .find(|i| i["reference"] == reference.as_str())
                    else {
                        return Err(Failure {
                            code: 1,
                            message: format!("image {reference} disappeared while saving"),
                        });
                    };
                    let state = image["state"].as_str().unwrap_or("").to_owned();
                    if state.starts_with("saving") {
                        eprint!("\r{reference}: {state}   ");
                        continue;
                    }
                    eprintln!();
                    if state != "ready" {
                        return Err(Failure {
                            code: 1,
                            message: format!("image {reference}: {state}"),
                        });
                    }
                    break image.to_string();
                }
            }
        }
        ImageAction::Share { image } => {
            let (owner, name) = split_pair(&image, "OWNER/NAME")?;
            master
                .set_image_public(owner, name, true)
                .await
                .map_err(bus)?
        }
        ImageAction::Unshare { image } => {
            let (owner, name) = split_pair(&image, "OWNER/NAME")?;
            master
                .set_image_public(owner, name, false)
                .await
                .map_err(bus)?
        }
        ImageAction::Delete { image } => {
            let (owner, name) = split_pair(&image, "OWNER/NAME")?;
            master.delete_image(owner, name).await.map_err(bus)?;
            println!("Image {image} deleted.");
            return Ok(());
        }
    };
    let image: serde_json::Value = parse_reply(reply)?;
    print!("{}", images_table(&[image]));
    Ok(())
}

async fn system_image(action: SystemImageAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let bus = |e| failure(e, "master");
    let SystemImageAction::Update {
        name,
        from,
        no_wait,
    } = action;
    let mut image: serde_json::Value = parse_reply(
        master
            .update_system_image(&name, &from)
            .await
            .map_err(bus)?,
    )?;
    while !no_wait && image["settled"] != true {
        eprint!("\r{name}: {}   ", image["state"].as_str().unwrap_or(""));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let images: Vec<serde_json::Value> =
            parse_reply(master.system_images().await.map_err(bus)?)?;
        image = images
            .into_iter()
            .find(|i| i["name"] == name.as_str())
            .ok_or_else(|| Failure {
                code: 1,
                message: format!("system image {name} disappeared (are its hosts down?)"),
            })?;
        if image["settled"] == true {
            eprintln!();
        }
    }
    print!("{}", system_images_table(std::slice::from_ref(&image)));
    let state = image["state"].as_str().unwrap_or("");
    if state.contains("failed") {
        return Err(Failure {
            code: 1,
            message: format!("system image {name}: {state}"),
        });
    }
    Ok(())
}

fn system_images_table(images: &[serde_json::Value]) -> String {
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
fn print_listing(
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

fn images_table(images: &[serde_json::Value]) -> String {
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

async fn group(action: GroupAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let bus = |e| failure(e, "master");
    match action {
        GroupAction::Add { name, from, admin } => {
            let groups: Vec<serde_json::Value> = parse_reply(master.groups().await.map_err(bus)?)?;
            let from = from.unwrap_or_else(|| docklet::model::quota::DEFAULT_GROUP.to_owned());
            let mut group = groups
                .into_iter()
                .find(|g| g["name"] == from.as_str())
                .ok_or_else(|| Failure {
                    code: 7,
                    message: format!("no group {from} to copy the quota from"),
                })?;
            group["name"] = name.clone().into();
            group["admin"] = admin.into();
            let reply = master.create_group(&group.to_string()).await.map_err(bus)?;
            print!("{}", groups_table(&[parse_reply(reply)?], ""));
        }
        GroupAction::Delete { name } => {
            master.delete_group(&name).await.map_err(bus)?;
            println!("Group {name} deleted.");
        }
        GroupAction::Default { name } => {
            master.set_default_group(&name).await.map_err(bus)?;
            println!("New users join group {name}.");
        }
        GroupAction::Egress { name, allow } => {
            let rules = docklet::model::egress::parse_rules(&allow).map_err(|e| Failure {
                code: 2,
                message: e.to_string(),
            })?;
            let patch = json!({ "egress_allow": rules });
            let reply = master
                .set_group(&name, &patch.to_string())
                .await
                .map_err(bus)?;
            print!("{}", groups_table(&[parse_reply(reply)?], ""));
        }
    }
    Ok(())
}

fn ports_table(ports: &[serde_json::Value]) -> String {
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

fn users_table(users: &[serde_json::Value]) -> String {
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
fn groups_table(groups: &[serde_json::Value], default: &str) -> String {
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

/// `1`, `0.5`, `2.25` cores → thousandths of a core.
fn parse_cpu(text: &str) -> Result<u32, String> {
    let cores: f64 = text
        .parse()
        .map_err(|_| format!("--cpu {text:?}: expected a number of cores such as 1 or 0.5"))?;
    if !(0.0..=4096.0).contains(&cores) {
        return Err(format!("--cpu {text:?}: out of range"));
    }
    Ok((cores * 1000.0).round() as u32)
}

/// `512M`, `2G`, `1048576` → bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 30),
        Some('T' | 't') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?}: expected bytes or a number with K, M, G or T"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
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
            Command::Host { action } => match action {
                HostAction::Add { name, valid_for } => host_add(&name, &valid_for).await,
                HostAction::Remove { name } => host_remove(&name).await,
            },
            Command::Join { token } => join(&token).await,
            Command::EtcdCertificate { addresses, names } => etcd_certificate(&addresses, &names),
            Command::Vnodes { all, json } => vnodes(all, json).await,
            Command::Vnode { action } => vnode(action).await,
            Command::Network { user } => {
                let conn = connect().await?;
                let text = master_proxy(&conn)
                    .await?
                    .user_network(&user)
                    .await
                    .map_err(|e| failure(e, "master"))?;
                println!("{text}");
                Ok(())
            }
            Command::Quota {
                group,
                user,
                cpu,
                memory,
                disk,
                vnodes,
                images,
                image_size,
                port_mappings,
                idle,
                json,
            } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                if let Some(user) = user {
                    let vnodes = vnodes.ok_or_else(|| {
                        usage("--user sets a user's own vnode count: give --vnodes".into())
                    })?;
                    return master
                        .set_vnode_quota(&user, vnodes)
                        .await
                        .map_err(|e| failure(e, "master"))
                        .map(|()| ExitCode::SUCCESS);
                }
                let group = group.expect("clap requires a group without --user");
                let mut quota = serde_json::Map::new();
                if let Some(cpu) = cpu {
                    quota.insert("cpu_millis".into(), parse_cpu(&cpu).map_err(usage)?.into());
                }
                if let Some(memory) = memory {
                    quota.insert(
                        "memory_bytes".into(),
                        parse_size(&memory).map_err(usage)?.into(),
                    );
                }
                if let Some(disk) = disk {
                    quota.insert(
                        "disk_bytes".into(),
                        parse_size(&disk).map_err(usage)?.into(),
                    );
                }
                if let Some(size) = image_size {
                    quota.insert(
                        "image_bytes".into(),
                        parse_size(&size).map_err(usage)?.into(),
                    );
                }
                for (key, value) in [
                    ("vnodes", vnodes.map(u64::from)),
                    ("images", images.map(u64::from)),
                    ("port_mappings", port_mappings.map(u64::from)),
                    ("idle_secs", idle),
                ] {
                    if let Some(value) = value {
                        quota.insert(key.into(), value.into());
                    }
                }
                let text = if quota.is_empty() {
                    let groups: Vec<serde_json::Value> =
                        parse_reply(master.groups().await.map_err(|e| failure(e, "master"))?)?;
                    let found = groups
                        .into_iter()
                        .find(|g| g["name"] == group.as_str())
                        .ok_or_else(|| Failure {
                            code: 7,
                            message: format!("no group {group}"),
                        })?;
                    found.to_string()
                } else {
                    master
                        .set_group(&group, &json!({ "quota": quota }).to_string())
                        .await
                        .map_err(|e| failure(e, "master"))?
                };
                let group: serde_json::Value = parse_reply(text)?;
                if json {
                    println!("{group:#}");
                } else {
                    print!("{}", groups_table(&[group], ""));
                }
                Ok(())
            }
            Command::Ports { user, json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(master.ports(user.as_deref().unwrap_or("")).await, json, ports_table)
            }
            Command::Users { json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(master.users().await, json, users_table)
            }
            Command::User { action } => user(action).await,
            Command::Image { action } => image(action).await,
            Command::SystemImage { action } => system_image(action).await,
            Command::SystemImages { json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(master.system_images().await, json, system_images_table)
            }
            Command::Images { json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                print_listing(master.images().await, json, images_table)
            }
            Command::Groups { json } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                let groups: Vec<serde_json::Value> =
                    parse_reply(master.groups().await.map_err(|e| failure(e, "master"))?)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&groups).expect("JSON"));
                } else {
                    let default = master
                        .default_group()
                        .await
                        .map_err(|e| failure(e, "master"))?;
                    print!("{}", groups_table(&groups, &default));
                }
                Ok(())
            }
            Command::Group { action } => group(action).await,
            Command::Drain { host, off, no_wait } => {
                let conn = connect().await?;
                let master = master_proxy(&conn).await?;
                master
                    .drain(&host, !off)
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
                    println!("{host} takes no new vnodes; moving its vnodes elsewhere (Ctrl-C stops waiting, not the drain).");
                    wait_drained(&master, &host).await
                }
            }
            Command::Exec { user, id, command } => {
                return exec(user, id, command).await.map(ExitCode::from);
            }
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("docklet-admin: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
