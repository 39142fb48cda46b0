//! The command line: every command and option `docklet-admin` takes.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Administer Docklet on this host (root or group docklet-admin)",
    after_help = "Exit codes: 0 ok, 1 failure reported by the daemon, 2 usage or invalid argument, \
                  3 daemon not running, 4 permission denied, 5 already initialized, 6 etcd unreachable, \
                  7 not found, 8 conflict. `exec` exits with the command's status."
)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Quota(QuotaArgs),
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
pub(crate) enum HostAction {
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
pub(crate) enum UserAction {
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
pub(crate) enum ImageAction {
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
pub(crate) enum SystemImageAction {
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
pub(crate) enum GroupAction {
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
pub(crate) enum VnodeAction {
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

/// `docklet-admin quota`'s arguments.
#[derive(clap::Args)]
pub(crate) struct QuotaArgs {
    /// The group (not with --user).
    #[arg(required_unless_present = "user", conflicts_with = "user")]
    pub(crate) group: Option<String>,
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// Total cores, e.g. 4 or 0.5.
    #[arg(long)]
    pub(crate) cpu: Option<String>,
    /// Total memory: bytes, or with a K, M, G or T suffix.
    #[arg(long)]
    pub(crate) memory: Option<String>,
    #[arg(long)]
    pub(crate) disk: Option<String>,
    #[arg(long)]
    pub(crate) vnodes: Option<u32>,
    #[arg(long)]
    pub(crate) images: Option<u32>,
    /// Total size of saved images: bytes, or with a K, M, G or T suffix.
    #[arg(long)]
    pub(crate) image_size: Option<String>,
    #[arg(long)]
    pub(crate) port_mappings: Option<u32>,
    /// Seconds a cluster may stay idle before it is stopped (0: never).
    #[arg(long)]
    pub(crate) idle: Option<u64>,
    #[arg(long)]
    pub(crate) json: bool,
}
