//! The master daemon: serves the portal and API on the (socket-activated) portal port, the
//! `org.docklet.Master1` D-Bus interface, and keeps its connection to etcd. It holds no state
//! of its own: everything lives in etcd, so a restart is a non-event.

pub mod actions;
pub mod agent_client;
pub mod api;
pub mod batch;
pub mod bus;
pub mod controllers;
pub mod errors;
pub mod events;
pub mod extract;
pub mod forwarder;
pub mod hosts;
pub mod init;
pub mod live;
pub mod logins;
pub mod metrics;
pub mod portal;
pub mod proxy_headers;
pub mod serve;
pub mod session;
pub mod terminal;
pub mod tls;
pub(crate) mod waits;
pub mod workspace;

/// Seconds since the epoch (shared with the worker, see [`crate::daemon`]).
pub use crate::daemon::now_secs;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::daemon::{self, Backoff, CredentialsError, Notifier, StatusLine};
use crate::dbus_api::{BusError, InitResult};
use crate::master::errors::ApiError;
use crate::model::cluster::EtcdCredentials;
use crate::store::{EtcdStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot open the portal port {port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("cannot serve HTTP: {0}")]
    Serve(std::io::Error),
    /// The sandbox of the packaged unit does not fit the configuration.
    #[error("{0}")]
    Sandbox(String),
}

/// Shared by the HTTP API, the D-Bus interface and the live loop.
pub struct Master {
    pub config: Config,
    pub host: String,
    status: StatusLine,
    /// The etcd connection, once made; watchable so that early requests can wait for it.
    store: watch::Sender<Option<EtcdStore>>,
    /// Serializes `init` calls.
    init_lock: tokio::sync::Mutex<()>,
    /// Whether the current etcd connection carries the cluster credentials.
    has_credentials: AtomicBool,
    /// Failed logins per account and source address. Kept in this master's memory: a
    /// restart forgets them, and with several masters each counts its own.
    throttle: std::sync::Mutex<crate::model::account::Throttle>,
    pam: Arc<dyn crate::sys::pam::PasswordCheck>,
    /// The bounded pool password checks and hashes run on.
    password_checks: logins::PasswordChecks,
    /// This master holds the leadership and runs the controllers ([`controllers`]).
    leading: AtomicBool,
    /// The lease of this master's candidacy, revoked on a clean stop so another master
    /// takes over at once.
    leader_lease: std::sync::Mutex<Option<(EtcdStore, i64)>>,
    /// Hosts and allocations for placement, kept current by a watch.
    placement: crate::store::placement_view::PlacementView,
    /// The workspace proxy's tunnels and the nodes' endpoints.
    pub workspace: workspace::Proxy,
    /// Samples collected from the workers, their history and the usage ledger.
    pub metrics: metrics::Collected,
    /// The portal's TLS certificate, as its files hold it now.
    pub certificate: Arc<tls::PortalCertificate>,
    /// Open event streams, terminals and workspace connections, ended with their token.
    pub live: Arc<live::LiveConnections>,
}

impl Master {
    pub fn new(config: Config, host: String, notifier: Notifier) -> Master {
        Master {
            host,
            status: StatusLine::new(notifier),
            store: watch::Sender::new(None),
            init_lock: tokio::sync::Mutex::new(()),
            has_credentials: AtomicBool::new(false),
            throttle: Default::default(),
            pam: Arc::new(crate::sys::pam::Pam {
                service: "docklet".into(),
            }),
            password_checks: Default::default(),
            leading: AtomicBool::new(false),
            leader_lease: Default::default(),
            placement: Default::default(),
            workspace: Default::default(),
            metrics: metrics::Collected::load(),
            certificate: Arc::new(tls::PortalCertificate::new(&config)),
            live: Default::default(),
            config,
        }
    }

    /// Keeps the placement view current, following the etcd connection of the moment.
    async fn follow_placement(self: Arc<Self>) {
        loop {
            let Some(store) = self.connected_store(Duration::from_secs(3600)).await else {
                continue;
            };
            let error = self.placement.follow(&store).await;
            tracing::debug!("placement view: {error}; reloading");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    async fn is_initialized(&self, store: &EtcdStore) -> bool {
        self.authenticated() && matches!(store.cluster_info().await, Ok(Some(_)))
    }

    /// Ends this master's candidacy at once (a clean stop): the next master leads without
    /// waiting for the lease to expire.
    async fn resign(&self) {
        let held = self.leader_lease.lock().unwrap().take();
        if let Some((store, lease)) = held {
            // Bounded: a stop (and so a package upgrade or removal) must not wait on an etcd
            // that is down; the lease expires by itself then.
            match tokio::time::timeout(Duration::from_secs(3), store.revoke(lease)).await {
                Err(_) => warn!("etcd did not answer in 3 s; the leader lease expires by itself"),
                Ok(Err(e)) => warn!("revoking the leader lease: {e}"),
                Ok(Ok(())) => {
                    if self.leading.swap(false, Ordering::SeqCst) {
                        info!("resigned the leadership");
                    }
                }
            }
        }
    }

    pub fn status(&self) -> String {
        self.status.get()
    }

    /// Whether requests can reach etcd (the connection is made once and kept).
    pub fn connected(&self) -> bool {
        self.store.borrow().is_some()
    }

    /// The etcd connection; a call that arrives while the master is still connecting (as
    /// the one that activated it does) waits up to `patience` for it.
    async fn connected_store(&self, patience: Duration) -> Option<EtcdStore> {
        let mut rx = self.store.subscribe();
        let waited = tokio::time::timeout(patience, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(store)) => store.clone(),
            _ => None,
        }
    }

    /// The etcd connection, waiting a little for one being made.
    pub(crate) async fn store(&self) -> Result<EtcdStore, ApiError> {
        self.connected_store(Duration::from_secs(10))
            .await
            .ok_or_else(|| {
                ApiError::Unavailable(format!(
                    "not connected to etcd at {} (see `systemctl status docklet-master`)",
                    self.config.etcd.endpoints.join(",")
                ))
            })
    }

    /// Is etcd reachable and the cluster initialized? For the health endpoint.
    pub async fn health(&self) -> (bool, bool) {
        match self.connected_store(Duration::from_secs(5)).await {
            Some(store) => match store.cluster_info().await {
                Ok(info) => (true, info.is_some()),
                Err(_) => (false, false),
            },
            None => (false, false),
        }
    }

    /// `docklet-admin init`: sets up etcd authentication (once), the cluster record and the
    /// portal administrator.
    pub async fn init(&self, force: bool) -> Result<InitResult, BusError> {
        let _serialized = self.init_lock.lock().await;
        let mut store = self.store().await?;
        if !force && store.cluster_info().await?.is_some() {
            return Err(StoreError::AlreadyInitialized.into());
        }
        if self.certificate_login() {
            if EtcdStore::takes_clients_without_certificate(&self.config).await {
                return Err(BusError::Failed(format!(
                    "etcd at {} answers TLS clients without a certificate, so it would not take the daemons' certificates as their logins: start it with client certificates required (ETCD_CLIENT_CERT_AUTH=true and the rest of what `docklet-admin etcd-certificate` prints), then run init again; nothing was changed",
                    self.config.etcd.endpoints.join(",")
                )));
            }
            // Certificates: the users of every host with an identity, this one's first.
            self.register_local_identity(&store).await?;
            self.make_certificate_users(&store).await?;
        } else {
            store = self.setup_password_auth(store).await?;
        }
        let password_file = self.config.generated_password_file();
        init::init_cluster(
            &store,
            &self.config.cluster_name,
            crate::VERSION,
            force,
            &password_file,
            now_secs(),
        )
        .await
        .map_err(|e| match e {
            init::InitError::Store(s) => s.into(),
            other => BusError::Failed(other.to_string()),
        })?;
        self.register_local_identity(&store).await?;
        info!(force, "cluster {} initialized", self.config.cluster_name);
        Ok(InitResult {
            portal_url: self.config.portal_url_or(&self.host),
            admin_user: init::ADMIN_USER.into(),
            password_file: password_file.display().to_string(),
        })
    }

    /// The password scheme, for an etcd without TLS: the credentials file on the shared
    /// filesystem (made once), etcd's users, and a connection with them.
    async fn setup_password_auth(&self, mut store: EtcdStore) -> Result<EtcdStore, BusError> {
        let creds_path = self.config.credentials_file();
        let creds = match daemon::read_credentials(&self.config) {
            Ok(creds) => creds,
            Err(CredentialsError::Missing(_)) => {
                let cluster = &self.config.cluster_name;
                let creds = EtcdCredentials {
                    user: EtcdCredentials::user_for_cluster(cluster),
                    password: crate::pki::random_secret(32),
                    root_password: crate::pki::random_secret(32),
                    agent_token: None,
                };
                // The file goes first: if etcd setup fails half-way, a rerun reuses it.
                init::write_private_file(&creds_path, &creds.to_toml())
                    .map_err(|e| BusError::Failed(e.to_string()))?;
                info!(path = %creds_path.display(), "wrote internal etcd credentials");
                creds
            }
            Err(e) => return Err(BusError::Failed(e.to_string())),
        };
        // A connection with the cluster's credentials means authentication is already on.
        if !self.authenticated() {
            store.setup_password_auth(&creds).await?;
            store = EtcdStore::connect(&self.config, Some(crate::pki::Role::Master), Some(&creds))
                .await?;
            self.store.send_replace(Some(store.clone()));
            self.has_credentials.store(true, Ordering::SeqCst);
        }
        Ok(store)
    }

    /// Does this master log in to etcd with its certificate (etcd over TLS, and this host
    /// holds a master identity)?
    pub fn certificate_login(&self) -> bool {
        self.config.etcd_uses_tls()
            && crate::pki::has_identity(
                std::path::Path::new(crate::pki::PKI_DIR),
                crate::pki::Role::Master,
            )
    }

    fn authenticated(&self) -> bool {
        self.has_credentials.load(Ordering::SeqCst)
    }

    /// Connects to etcd, retrying with backoff and saying so in the status, until it answers.
    async fn connect_etcd(&self) {
        let mut backoff = Backoff::default();
        let endpoints = self.config.etcd.endpoints.join(",");
        loop {
            let creds = match daemon::read_credentials(&self.config) {
                Ok(creds) => Some(creds),
                Err(CredentialsError::Missing(_)) => None,
                Err(e) => {
                    let delay = backoff.next_delay();
                    self.status
                        .set(format!("{e}; retrying in {}s", delay.as_secs()));
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if let Some(creds) = &creds
                && creds.agent_token.is_some()
            {
                // A site from before mutual TLS: its shared agent token opens nothing now.
                let path = self.config.credentials_file();
                match init::write_private_file(&path, &creds.to_toml()) {
                    Ok(()) => info!("dropped the old agent token from {}", path.display()),
                    Err(e) => warn!(
                        "cannot drop the old agent token from {}: {e}",
                        path.display()
                    ),
                }
            }
            let connected = if self.certificate_login() {
                self.connect_with_certificate(creds.as_ref()).await
            } else {
                EtcdStore::connect(&self.config, Some(crate::pki::Role::Master), creds.as_ref())
                    .await
            };
            match connected {
                Ok(store) => {
                    let authenticated = creds.is_some() || self.certificate_login();
                    self.has_credentials.store(authenticated, Ordering::SeqCst);
                    // Requests go ahead from here: the repairs below are idempotent and
                    // none of them is needed to answer one (a cold start's first request
                    // waits for this line, not for them).
                    self.store.send_replace(Some(store.clone()));
                    if authenticated {
                        ensure_default_groups(&store).await;
                        // On the CA host: this host's identities, made by `init` (on an
                        // upgraded site too), are recorded once.
                        if hosts::holds_site_ca()
                            && let Err(e) = self.register_local_identity(&store).await
                        {
                            warn!("{e}");
                        }
                    }
                    return;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    let hint = self.connect_hint(&e, creds.is_some());
                    warn!("etcd at {endpoints}: {e}");
                    self.status.set(format!(
                        "waiting for etcd at {endpoints}: {e}{hint}; retrying in {}s",
                        delay.as_secs()
                    ));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// What an operator can do about a refused connection, if we know.
    fn connect_hint(&self, e: &StoreError, has_credentials: bool) -> String {
        match (e, has_credentials, self.certificate_login()) {
            (StoreError::Unauthenticated(_), _, true) => format!(
                " (etcd does not take {}: was host {} removed? `docklet-admin host add {}` on the CA host, then `docklet-admin join` here)",
                crate::pki::Role::Master.common_name(&self.host),
                self.host,
                self.host
            ),
            (StoreError::Unauthenticated(_), false, false) => format!(
                " (etcd requires credentials but {} is missing: is the shared filesystem mounted?)",
                self.config.credentials_file().display()
            ),
            _ => String::new(),
        }
    }

    /// Connects with this master's certificate. A site still on passwords (their file is
    /// there) moves to certificates here: as etcd's root, by the password, the certificate
    /// users of every host with an identity are made; then, logged in by certificate, the
    /// password user goes, root's password is replaced by one no one keeps and the file is
    /// deleted. Each step repeats safely, so a master stopped half-way finishes at its next
    /// start. An etcd that does not take certificates as logins (TLS without
    /// `ETCD_CLIENT_CERT_AUTH`) keeps the site on its password, and the master says why.
    async fn connect_with_certificate(
        &self,
        creds: Option<&EtcdCredentials>,
    ) -> Result<EtcdStore, StoreError> {
        use crate::pki::Role;
        let by_certificate = EtcdStore::connect(&self.config, Some(Role::Master), None).await;
        // The users of every host are made once on the way: right away when the certificate
        // already logs in, else as root by the password before it can.
        let (store, creds) = match (by_certificate, creds) {
            (Ok(store), None) => return Ok(store),
            (Ok(store), Some(creds)) => {
                self.make_certificate_users(&store).await?;
                (store, creds)
            }
            (Err(StoreError::Unauthenticated(_)), Some(creds)) => {
                let root = EtcdCredentials {
                    user: "root".into(),
                    password: creds.root_password.clone(),
                    root_password: String::new(),
                    agent_token: None,
                };
                let admin =
                    EtcdStore::connect(&self.config, Some(Role::Master), Some(&root)).await?;
                self.make_certificate_users(&admin).await?;
                match EtcdStore::connect(&self.config, Some(Role::Master), None).await {
                    Ok(store) => (store, creds),
                    Err(e) => {
                        warn!(
                            "etcd does not take this master's certificate as its login ({e}): is etcd started with client certificates required (ETCD_CLIENT_CERT_AUTH=true, see `docklet-admin etcd-certificate`)? The site stays on the passwords of {}",
                            self.config.credentials_file().display()
                        );
                        return EtcdStore::connect(&self.config, Some(Role::Master), Some(creds))
                            .await;
                    }
                }
            }
            (Err(e), _) => return Err(e),
        };
        // Logged in by certificate (as etcd's root role) from here on.
        store.forget_passwords(creds).await?;
        let path = self.config.credentials_file();
        match std::fs::remove_file(&path) {
            Ok(()) => info!(
                "etcd: every daemon logs in with its certificate now; the passwords in {} are void and the file is gone",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                "cannot delete {} (its passwords are void): {e}",
                path.display()
            ),
        }
        Ok(store)
    }

    /// The certificate users of every host with a recorded identity (and this one).
    async fn make_certificate_users(&self, store: &EtcdStore) -> Result<(), StoreError> {
        let mut hosts = vec![self.host.clone()];
        hosts.extend(
            store
                .host_identities()
                .await?
                .into_iter()
                .map(|identity| identity.host)
                .filter(|host| *host != self.host),
        );
        store.setup_certificate_auth(&hosts).await
    }

    /// One look at etcd for the status line.
    async fn refresh_status(&self, listening: &str) {
        let Some(store) = self.store.borrow().clone() else {
            return;
        };
        let endpoints = self.config.etcd.endpoints.join(",");
        let text = match store.cluster_info().await {
            Ok(None) => format!(
                "{listening}; etcd {endpoints} ok; cluster not initialized: run `docklet-admin init`"
            ),
            Ok(Some(_)) => match store.list_hosts().await {
                Ok(hosts) => format!(
                    "{listening}; etcd {endpoints} ok; cluster {} has {} host{}; {}",
                    self.config.cluster_name,
                    hosts.len(),
                    if hosts.len() == 1 { "" } else { "s" },
                    match (self.leading(), store.leader().await) {
                        (true, _) => "leading".to_owned(),
                        (false, Ok(Some(leader))) => format!("standby (leader: {leader})"),
                        (false, _) => "standby (no leader yet)".to_owned(),
                    }
                ),
                Err(e) => format!("{listening}; etcd {endpoints}: {e}"),
            },
            Err(StoreError::Unauthenticated(e)) if !self.authenticated() => {
                // Someone ran init elsewhere: pick up the credentials it wrote.
                if let Ok(creds) = daemon::read_credentials(&self.config)
                    && let Ok(s) = EtcdStore::connect(
                        &self.config,
                        Some(crate::pki::Role::Master),
                        Some(&creds),
                    )
                    .await
                {
                    self.store.send_replace(Some(s));
                    self.has_credentials.store(true, Ordering::SeqCst);
                }
                format!("{listening}; etcd {endpoints} refused us: {e}")
            }
            Err(e) => format!("{listening}; etcd {endpoints} unreachable: {e} (retrying)"),
        };
        self.status.set(text);
    }
}

/// Clusters initialized by a version without groups get the default ones.
async fn ensure_default_groups(store: &EtcdStore) {
    if !matches!(store.cluster_info().await, Ok(Some(_))) {
        return;
    }
    match store
        .ensure_groups(&crate::model::quota::default_groups())
        .await
    {
        Ok(0) => {}
        Ok(n) => info!("created {n} missing default groups"),
        Err(e) => warn!("cannot check the default groups: {e}"),
    }
    // Accounts made before workers applied groups' egress allowances.
    match store.ensure_members().await {
        Ok(0) => {}
        Ok(n) => info!("recorded the group of {n} accounts for the workers"),
        Err(e) => warn!("cannot record accounts' groups for the workers: {e}"),
    }
}

/// The unprivileged user the packaged master runs as.
pub const MASTER_USER: &str = "docklet";

/// `docklet-master --prepare-dirs`, run as root before the sandboxed master starts:
/// `global/secrets/`, where the master keeps the internal credentials, writable by the
/// master's user, and `local/` root's alone (0755): the root worker follows what is there,
/// so the master must not be able to write it. A first password an older version left in
/// `local/` moves to the master's state directory. Outside the package (no such user) it only
/// creates the directories.
pub fn prepare_dirs(config: &Config) -> std::io::Result<()> {
    use nix::unistd::{Gid, Group, Uid, User, chown};
    use std::os::unix::fs::PermissionsExt;
    let user = User::from_name(MASTER_USER).ok().flatten();
    let group = Group::from_name(MASTER_USER).ok().flatten();
    let local = config.local_dir();
    let secrets = config.credentials_file();
    let secrets_dir = secrets.parent().unwrap_or(&local).to_owned();
    for dir in [&local, &secrets_dir] {
        std::fs::create_dir_all(dir)?;
    }
    let password = config.generated_password_file();
    let old_password = local.join("generated_password.txt");
    if old_password.exists() && !password.exists() {
        if let Some(dir) = password.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&old_password, &password)?;
        std::fs::remove_file(&old_password)?;
        info!(from = %old_password.display(), to = %password.display(), "moved the first password");
    }
    if let (Some(user), Some(group)) = (user, group) {
        chown(&local, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))?;
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755))?;
        chown(&secrets_dir, Some(user.uid), Some(group.gid))?;
        std::fs::set_permissions(&secrets_dir, std::fs::Permissions::from_mode(0o700))?;
        for file in [secrets.clone(), password] {
            if file.exists() {
                chown(&file, Some(user.uid), Some(group.gid))?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        // The master's key is its group's to read: a reinstall may have given the group
        // another number since `init` or `join` wrote it.
        let key = crate::pki::Role::Master.key_file(std::path::Path::new(crate::pki::PKI_DIR));
        if key.exists() {
            chown(&key, Some(Uid::from_raw(0)), Some(group.gid))?;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640))?;
        }
    }
    Ok(())
}

impl daemon::DaemonError for MasterError {
    fn exit_code(&self) -> u8 {
        match self {
            MasterError::Sandbox(_) => daemon::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// The packaged unit lets the sandboxed master write only the default
/// `/var/lib/docklet/global/secrets` (`ReadWritePaths=`); another `fs_prefix` needs a drop-in,
/// which this names instead of failing later, at `init`, with a read-only file system.
fn check_secrets_writable(config: &Config) -> Result<(), MasterError> {
    use nix::unistd::{AccessFlags, access};
    let Some(dir) = config.credentials_file().parent().map(Path::to_owned) else {
        return Ok(());
    };
    match access(&dir, AccessFlags::W_OK) {
        Err(errno) => read_only_secrets(&dir, &config.fs_prefix, errno)
            .map_or(Ok(()), |m| Err(MasterError::Sandbox(m))),
        Ok(()) => Ok(()),
    }
}

/// What to tell the administrator when the master cannot write `dir` for `errno`: only a
/// read-only mount is the sandbox's doing (a missing directory is `--prepare-dirs`' to make).
fn read_only_secrets(dir: &Path, fs_prefix: &Path, errno: nix::errno::Errno) -> Option<String> {
    (errno == nix::errno::Errno::EROFS).then(|| {
        format!(
            "{} is read-only for the master: with fs_prefix = {:?}, add a drop-in \
             /etc/systemd/system/docklet-master.service.d/fs-prefix.conf with\n[Service]\n\
             ReadWritePaths=-{}\nthen run systemctl daemon-reload",
            dir.display(),
            fs_prefix,
            dir.display()
        )
    })
}

/// Where the portal listens comes from the socket unit when systemd activates the master;
/// `proxy_port` still names the portal's port in its URLs, so the two must agree.
fn port_disagreement(activated: bool, listening: Option<u16>, proxy_port: u16) -> Option<String> {
    let port = listening.filter(|p| activated && *p != proxy_port)?;
    Some(format!(
        "docklet-master.socket listens on port {port} but proxy_port in docklet.toml is \
         {proxy_port}: the portal's URLs name {proxy_port}; change ListenStream= (a drop-in for \
         docklet-master.socket) or proxy_port so that they agree"
    ))
}

/// The portal's listener (systemd's, or bound here on `proxy_port`) and the status line's
/// words for it; warns when the socket unit's port is not `proxy_port`.
fn open_portal(config: &Config) -> Result<(std::net::TcpListener, String), MasterError> {
    let port = config.proxy_port;
    let (listener, activated) =
        daemon::portal_listener(port).map_err(|source| MasterError::Listen { port, source })?;
    let local = listener.local_addr().ok();
    let shown = local.map(|a| a.to_string()).unwrap_or_default();
    info!(activated, "listening on {shown}");
    if let Some(problem) = port_disagreement(activated, local.map(|a| a.port()), port) {
        warn!("{problem}");
    }
    let listening = if activated {
        format!("portal on {shown} (socket-activated)")
    } else {
        format!("portal on {shown}")
    };
    Ok((listener, listening))
}

/// Runs the master until SIGTERM.
pub async fn run(config: Config) -> Result<(), MasterError> {
    let notifier = Notifier::from_env();
    let host = daemon::host_name();
    let (listener, listening) = open_portal(&config)?;
    check_secrets_writable(&config)?;
    let master = Arc::new(Master::new(config, host, notifier.clone()));

    let listener = tokio::net::TcpListener::from_std(listener).map_err(MasterError::Serve)?;
    let app = api::router(master.clone());
    let certificate = master.certificate.clone();
    if let Some(problem) = certificate.problem() {
        warn!("the portal cannot serve HTTPS yet: {problem} (run `docklet-admin init`)");
    }
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(listener, app, certificate, async {
        let _ = http_stopped.await;
    }));

    // D-Bus and etcd at once: a cold start's first request does not wait for the bus as well.
    let shutdown = daemon::shutdown_signal();
    tokio::pin!(shutdown);
    master.status.set(format!(
        "{listening}; connecting to etcd at {}",
        master.config.etcd.endpoints.join(",")
    ));
    let connecting = tokio::spawn({
        let master = master.clone();
        async move { master.connect_etcd().await }
    });
    let _bus = bus::serve(master.clone())
        .await
        .inspect_err(|e| warn!("D-Bus interface not available: {e}"))
        .ok();
    // READY means serving: the portal and D-Bus answer from here (a request waits briefly
    // for etcd, then gets 503). Waiting for etcd is the status line's to tell, not a start
    // that never ends and holds up `systemctl start` and package upgrades.
    notifier.ready(&master.status());
    let mut watchdog = tokio::time::interval(notifier.watchdog_interval());
    tokio::pin!(connecting);
    let connected = loop {
        tokio::select! {
            _ = &mut connecting => break true,
            _ = watchdog.tick() => notifier.watchdog(),
            _ = &mut shutdown => break false,
        }
    };
    if !connected {
        connecting.abort();
        notifier.stopping();
        let _ = stop_http.send(());
        return Ok(());
    }
    master.refresh_status(&listening).await;
    let leadership = tokio::spawn(controllers::lead(master.clone()));
    let placement = tokio::spawn(master.clone().follow_placement());
    // Every master forwards every mapped port, so any master's address works.
    let forwarding = tokio::spawn(forwarder::run(master.clone()));
    let collecting = tokio::spawn(master.clone().collect_metrics());
    let revocations = tokio::spawn(master.clone().follow_revocations());

    let mut refresh = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = watchdog.tick() => notifier.watchdog(),
            _ = refresh.tick() => master.refresh_status(&listening).await,
            _ = &mut shutdown => break,
        }
    }
    notifier.stopping();
    leadership.abort();
    placement.abort();
    forwarding.abort();
    collecting.abort();
    revocations.abort();
    master.metrics.save();
    master.resign().await;
    let _ = stop_http.send(());
    if let Err(e) = server.await {
        error!("portal server: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_activated_socket_on_another_port_than_proxy_port_is_named() {
        assert_eq!(port_disagreement(true, Some(8000), 8000), None);
        // Run by hand, the master binds proxy_port itself: nothing to disagree.
        assert_eq!(port_disagreement(false, Some(9000), 8000), None);
        let problem = port_disagreement(true, Some(9000), 8000).unwrap();
        assert!(
            problem.contains("9000") && problem.contains("8000"),
            "{problem}"
        );
        assert!(problem.contains("ListenStream="), "{problem}");
    }

    #[test]
    fn a_read_only_secrets_directory_names_the_drop_in_to_write() {
        use nix::errno::Errno;
        let dir = Path::new("/srv/docklet/global/secrets");
        let message = read_only_secrets(dir, Path::new("/srv/docklet"), Errno::EROFS).unwrap();
        assert!(
            message.contains("ReadWritePaths=-/srv/docklet/global/secrets"),
            "{message}"
        );
        assert!(message.contains("docklet-master.service.d"), "{message}");
        assert_eq!(
            read_only_secrets(dir, Path::new("/srv/docklet"), Errno::ENOENT),
            None
        );
        // A writable directory passes the real check.
        let writable = tempfile::tempdir().unwrap();
        let config = Config {
            fs_prefix: writable.path().to_owned(),
            ..Config::default()
        };
        std::fs::create_dir_all(config.credentials_file().parent().unwrap()).unwrap();
        assert!(check_secrets_writable(&config).is_ok());
    }
}
