//! The command line: every command and option `docklet-admin` takes.

use clap::{Parser, Subcommand};

/// What `docklet-admin` exits with: (status, in `--help`, in the man page's EXIT STATUS).
pub(crate) const EXIT_CODES: [(u8, &str, &str); 10] = [
    (0, "ok", "Success."),
    (
        1,
        "failure reported by the daemon",
        "The daemon reported a failure.",
    ),
    (
        2,
        "usage or invalid argument",
        "Usage error or invalid argument.",
    ),
    (
        3,
        "daemon not running",
        "The daemon is not running on this host, or the system bus is unreachable.",
    ),
    (
        4,
        "permission denied",
        "Permission denied: be root or in group docklet-admin.",
    ),
    (
        5,
        "already initialized",
        "The cluster is already initialized.",
    ),
    (6, "etcd unreachable", "etcd is unreachable."),
    (7, "not found", "No such vnode, host, user, group or image."),
    (8, "conflict", "Conflict, e.g. a duplicate id."),
    (
        9,
        "exhausted (a quota, addresses or capacity)",
        "Exhausted: a quota, the addresses or the hosts' capacity.",
    ),
];

/// What `exec` exits with instead.
pub(crate) const EXEC_EXIT: &str = "`exec` exits with the command's status.";

/// `--help`'s closing paragraph: the exit codes.
fn exit_codes_help() -> String {
    let codes: Vec<String> = EXIT_CODES
        .iter()
        .map(|(code, brief, _)| format!("{code} {brief}"))
        .collect();
    format!("Exit codes: {}. {EXEC_EXIT}", codes.join(", "))
}

#[derive(Parser)]
#[command(
    name = "docklet-admin",
    version,
    about = "Administer Docklet on this host (root or group docklet-admin)",
    after_help = exit_codes_help()
)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Show the state of the master and worker on this host.
    Status {
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Wait until this host's master is connected to etcd and its worker is registered in the
    /// cluster (`systemctl start` returns as soon as they serve); prints each new status line.
    Wait {
        /// Which daemons to wait for (default: both).
        #[arg(value_enum)]
        daemons: Vec<Daemon>,
        /// Give up after this long (exit code 6): seconds, or a number with s, m, h.
        #[arg(long, default_value = "60s", value_name = "DURATION")]
        timeout: String,
    },
    /// List the hosts whose workers are registered in the cluster.
    Hosts {
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Create the cluster: the site CA and this host's identities, etcd's users (certificate
    /// users when etcd speaks TLS, else a password on the shared filesystem) and the portal
    /// administrator `root`.
    Init {
        /// Wipe an existing cluster's state and start over (asks first on a terminal).
        #[arg(long)]
        force: bool,
        /// With --force: wipe without asking (scripts; needed when not on a terminal).
        #[arg(long, requires = "force")]
        yes: bool,
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
        /// Every host's vnodes, from etcd through the master.
        #[arg(long)]
        all: bool,
        /// Machine-readable output (JSON).
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
    Network {
        /// The user.
        user: String,
    },
    /// Show a group's quota, or change it with any of the options; with --user, set one
    /// user's own vnode count over the group's (their network's blocks grow to match).
    Quota(QuotaArgs),
    /// List port mappings (every user's, or one user's) and whether they forward now.
    Ports {
        /// Only this user's mappings.
        #[arg(long)]
        user: Option<String>,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// List batch jobs not ended yet (every user's), with --ended also the ended ones.
    Jobs {
        /// Only this user's jobs.
        #[arg(long)]
        user: Option<String>,
        /// Also the jobs that ended.
        #[arg(long)]
        ended: bool,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Cancel, hold or release a batch job.
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// List accounts with their group, status and usage against the group's quota.
    Users {
        /// Machine-readable output (JSON).
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
        /// Machine-readable output (JSON).
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
        /// Machine-readable output (JSON).
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
        /// Machine-readable output (JSON).
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
        /// The host, as `docklet-admin hosts` names it.
        host: String,
        /// Take the host back into service.
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
        /// The vnode's id (`docklet-admin vnodes`).
        id: String,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Write the man pages and shell completions of docklet-admin and the daemons into a
    /// directory (the Debian package's build runs it).
    #[command(hide = true)]
    GenerateManuals {
        /// The directory: man8/, man5/ and completions/{bash,zsh,fish}/ are made in it.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum HostAction {
    /// Print a one-time join token for host NAME (a new host, or one to re-key); run
    /// `docklet-admin join TOKEN` on that host.
    Add {
        /// The host's name (its hostname).
        name: String,
        /// How long the token may be used: seconds, or with an s, m, h or d suffix (at most 7d).
        #[arg(long, default_value = "1h")]
        valid_for: String,
    },
    /// Revoke host NAME's certificates: its daemons are refused by every agent from now on.
    Remove {
        /// The host's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum UserAction {
    /// A local account (password read from standard input) or, with --pam, one whose password
    /// the hosts' PAM checks.
    Add {
        /// The account's name (for --pam, the system account's).
        name: String,
        /// Its group (default: the default group).
        #[arg(long)]
        group: Option<String>,
        /// The hosts' PAM checks its password (a system account of the same name).
        #[arg(long)]
        pam: bool,
    },
    /// Change the group or status (applying, normal, locked); --password reads a new local
    /// password from standard input.
    Set {
        /// The account.
        name: String,
        /// Move it to this group.
        #[arg(long)]
        group: Option<String>,
        /// applying, normal or locked (locked ends its sessions at once).
        #[arg(long)]
        status: Option<String>,
        /// Read a new local password from standard input.
        #[arg(long)]
        password: bool,
    },
    /// Delete an account (refused while it has clusters or images).
    Delete {
        /// The account.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum JobAction {
    /// Cancel job ID: nothing more of it starts, its running tasks stop and their nodes go.
    Cancel {
        /// The job's number, as `docklet-admin jobs` lists it.
        id: u64,
    },
    /// Hold job ID: nothing more of it starts until it is released.
    Hold {
        /// The job's number, as `docklet-admin jobs` lists it.
        id: u64,
    },
    /// Release held job ID.
    Release {
        /// The job's number, as `docklet-admin jobs` lists it.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ImageAction {
    /// Save node NODE of USER/CLUSTER as USER's image NAME, and wait until it is saved.
    Save {
        /// USER/CLUSTER
        cluster: String,
        /// The node's index in the cluster.
        node: u32,
        /// The image's name.
        name: String,
        /// What the image is for, shown with it.
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
    Share {
        /// OWNER/NAME
        image: String,
    },
    /// Make OWNER/NAME private again (clusters made from it keep it).
    Unshare {
        /// OWNER/NAME
        image: String,
    },
    /// Delete OWNER/NAME (refused while a cluster uses it).
    Delete {
        /// OWNER/NAME
        image: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum SystemImageAction {
    /// Make the next version of system image NAME on every host: its current version with
    /// saved image OWNER/IMAGE's changes; wait until every host has it. Running nodes keep
    /// their version until they restart.
    Update {
        /// The system image (e.g. base).
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
        /// The group's name.
        name: String,
        /// Copy the quota and node defaults of this group.
        #[arg(long)]
        from: Option<String>,
        /// Members administer Docklet.
        #[arg(long)]
        admin: bool,
    },
    /// Delete a group (refused while it has members or is the default).
    Delete {
        /// The group.
        name: String,
    },
    /// New users join this group.
    Default {
        /// The group.
        name: String,
    },
    /// Sets the destinations of the site the group's members' vnodes may reach besides what
    /// the site allows everyone: `CIDR` or `ADDRESS`, optionally `:PORT` or `:FIRST-LAST`
    /// (TCP and UDP). None: only the site's policy.
    Egress {
        /// The group.
        name: String,
        /// Destinations, replacing the group's list.
        allow: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum VnodeAction {
    /// Write a new vnode spec for a host.
    Create {
        /// The vnode's id, unique in the site.
        id: String,
        /// The host whose worker runs it.
        #[arg(long)]
        host: String,
        /// Its owner: its files are in the owner's uid range, its address on the owner's network.
        #[arg(long)]
        user: String,
        /// The cluster it belongs to (its hostname is host-INDEX there).
        #[arg(long)]
        cluster: String,
        /// Its index in the cluster.
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// The image it boots: a system image, or OWNER/NAME.
        #[arg(long, default_value = "base")]
        image: String,
        /// Cores, e.g. 1 or 0.5.
        #[arg(long, default_value = "1")]
        cpu: String,
        /// Bytes, or with a K, M, G or T suffix.
        #[arg(long, default_value = "1G")]
        memory: String,
        /// Disk size: bytes, or with a K, M, G or T suffix.
        #[arg(long, default_value = "4G")]
        disk: String,
        /// Most processes and threads it may run.
        #[arg(long, default_value_t = 2048)]
        tasks: u32,
        /// Create it stopped.
        #[arg(long)]
        stopped: bool,
    },
    /// Ask for the vnode to run.
    Start {
        /// The vnode's id.
        id: String,
    },
    /// Ask for the vnode to stop (its files stay).
    Stop {
        /// The vnode's id.
        id: String,
    },
    /// Delete the vnode and its files.
    Delete {
        /// The vnode's id.
        id: String,
    },
    /// Spec and status as JSON.
    Show {
        /// The vnode's id.
        id: String,
    },
}

/// `docklet-admin quota`'s arguments.
#[derive(clap::Args)]
pub(crate) struct QuotaArgs {
    /// The group (not with --user).
    #[arg(required_unless_present = "user", conflicts_with = "user")]
    pub(crate) group: Option<String>,
    /// Set this user's own vnode count (with --vnodes) over their group's.
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// Total cores, e.g. 4 or 0.5.
    #[arg(long)]
    pub(crate) cpu: Option<String>,
    /// Total memory: bytes, or with a K, M, G or T suffix.
    #[arg(long)]
    pub(crate) memory: Option<String>,
    /// Total disk: bytes, or with a K, M, G or T suffix.
    #[arg(long)]
    pub(crate) disk: Option<String>,
    /// Most vnodes at once.
    #[arg(long)]
    pub(crate) vnodes: Option<u32>,
    /// Most saved images.
    #[arg(long)]
    pub(crate) images: Option<u32>,
    /// Total size of saved images: bytes, or with a K, M, G or T suffix.
    #[arg(long)]
    pub(crate) image_size: Option<String>,
    /// Most port mappings.
    #[arg(long)]
    pub(crate) port_mappings: Option<u32>,
    /// Seconds a cluster may stay idle before it is stopped (0: never).
    #[arg(long)]
    pub(crate) idle: Option<u64>,
    /// Machine-readable output (JSON).
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Args;

    /// Every command and every argument says what it is in `--help` (and so in the man page).
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if !matches!(id, "help" | "version") && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Args::command(), "docklet-admin", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn the_exit_codes_are_all_listed() {
        let help = Args::command().render_long_help().to_string();
        for code in 0..=9 {
            assert!(
                help.contains(&format!(" {code} ")),
                "exit code {code}: {help}"
            );
        }
    }
}

/// A daemon of this host.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Daemon {
    Master,
    Worker,
}

impl Daemon {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Daemon::Master => "master",
            Daemon::Worker => "worker",
        }
    }
}
