//! The worker daemon: registers its host in etcd under a lease and keeps the lease alive, so
//! the cluster always knows which hosts are up; runs the vnode reconciler ([`vnodes`]) on the
//! specs etcd holds for this host and keeps this host's part of the users' networks
//! ([`network`]) in line with etcd; serves `org.docklet.Worker1` on D-Bus.

pub mod agent;
pub mod bus;
pub mod exec;
pub mod images;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod relay;
pub mod ssh;
pub mod system_images;
pub mod terminals;
pub mod tunnel;
pub mod vnode;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::daemon::now_secs;
use crate::daemon::{self, Backoff, Notifier, StatusLine};
use crate::model::host::{HostRecord, validate_host_name};
use crate::store::{EtcdStore, StoreError};
use crate::sys::host::HostProbe;

/// How long a host stays listed after its worker stops renewing: the bound on how stale
/// `docklet-admin hosts` can be after a worker dies.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the lease is renewed.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(3);
/// How often the record is rewritten with fresh capacity figures.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("this host's name cannot be used: {0}")]
    HostName(#[from] crate::model::host::HostNameError),
    #[error("users' networks cannot work on this host: {0}")]
    Network(#[from] network::NetworkError),
}

impl crate::daemon::DaemonError for WorkerError {
    fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Network(network::NetworkError::Config(_)) => crate::daemon::EXIT_CONFIG,
            _ => 1,
        }
    }
}

pub struct Worker {
    pub config: Config,
    pub host: String,
    status: StatusLine,
    probe: Arc<dyn HostProbe>,
    /// Set once systemd answered; the vnode runtime lives as long as the worker.
    pub runtime: std::sync::OnceLock<Arc<vnode::Runtime>>,
    /// The terminal sessions of this host's vnodes.
    pub terminals: Arc<terminals::Registry>,
    /// The last samples of what this host and its vnodes use.
    pub metrics: Arc<metrics::Metrics>,
    /// Whether this host's registration is live in etcd.
    registered: std::sync::atomic::AtomicBool,
}

impl Worker {
    pub fn new(
        config: Config,
        host: String,
        notifier: Notifier,
        probe: Arc<dyn HostProbe>,
    ) -> Worker {
        Worker {
            config,
            host,
            status: StatusLine::new(notifier),
            probe,
            runtime: std::sync::OnceLock::new(),
            terminals: Default::default(),
            metrics: Default::default(),
            registered: Default::default(),
        }
    }

    /// Whether this host is registered in the cluster (what `docklet-admin wait` waits for:
    /// the worker is READY to systemd as soon as it serves, registered or not).
    pub fn registered(&self) -> bool {
        self.registered.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn status(&self) -> String {
        self.status.get()
    }

    /// What this worker registers: measured now.
    pub fn host_record(&self, registered_at: u64) -> HostRecord {
        let local = self.config.local_dir();
        let capacity = self.probe.capacity(&local).unwrap_or_else(|e| {
            warn!("cannot measure capacity under {}: {e}", local.display());
            crate::model::host::Capacity {
                cpus: 0,
                memory_bytes: 0,
                disk_free_bytes: 0,
            }
        });
        let addresses = self
            .probe
            .addresses(&self.config.network_device)
            .unwrap_or_else(|e| {
                warn!(
                    "cannot read addresses of {}: {e}",
                    self.config.network_device
                );
                Vec::new()
            });
        let image_versions = paths::installed_images(&self.config);
        HostRecord {
            name: self.host.clone(),
            addresses,
            capacity,
            version: crate::VERSION.to_owned(),
            registered_at,
            images: image_versions.keys().cloned().collect(),
            image_versions,
        }
    }

    /// One attempt: with the password file of the shared filesystem while there is one (a
    /// site not moved to certificates yet: its master deletes the file when it has moved it),
    /// else with this host's worker certificate on a site whose etcd speaks TLS.
    async fn connect_once(&self) -> Result<EtcdStore, String> {
        let endpoints = self.config.etcd.endpoints.join(",");
        let pki = std::path::Path::new(crate::pki::PKI_DIR);
        let role = crate::pki::Role::Worker;
        let password = daemon::read_credentials(&self.config);
        if self.config.etcd_uses_tls() && password.is_err() {
            if !crate::pki::has_identity(pki, role) {
                return Err(format!(
                    "waiting: this host has no identity for etcd yet: run `docklet-admin join TOKEN` here, with a token from `docklet-admin host add {}` on the CA host (or `docklet-admin init` on a new site)",
                    self.host
                ));
            }
            return EtcdStore::connect(&self.config, Some(role), None)
                .await
                .map_err(|e| match e {
                    StoreError::Unauthenticated(_) => format!(
                        "waiting for etcd at {endpoints}: it does not take {} ({e}): a new site's master has not run `docklet-admin init` yet, or host {} was removed (`docklet-admin host add {}` on the CA host, then `docklet-admin join` here)",
                        role.common_name(&self.host),
                        self.host,
                        self.host
                    ),
                    e => format!("waiting for etcd at {endpoints}: {e}"),
                });
        }
        let creds = password.map_err(|e| format!("waiting: {e}"))?;
        EtcdStore::connect(&self.config, Some(role), Some(&creds))
            .await
            .map_err(|e| format!("waiting for etcd at {endpoints}: {e}"))
    }

    /// Gets credentials and a connection, retrying with backoff until both work.
    async fn connect(&self, backoff: &mut Backoff) -> EtcdStore {
        loop {
            let result = self.connect_once().await;
            match result {
                Ok(store) => return store,
                Err(text) => {
                    let pki = std::path::Path::new(crate::pki::PKI_DIR);
                    let delay = if self.config.etcd_uses_tls()
                        && !crate::pki::has_identity(pki, crate::pki::Role::Worker)
                    {
                        // Waiting for `docklet-admin join`, a local step: look again soon.
                        Duration::from_secs(2)
                    } else {
                        backoff.next_delay()
                    };
                    warn!("{text}");
                    self.status
                        .set(format!("{text}; retrying in {}s", delay.as_secs()));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Registers and keeps the lease alive; returns when the registration is lost so the
    /// caller can start over. Calls `on_registered` after each successful registration.
    async fn register_and_keep_alive(
        &self,
        store: &EtcdStore,
        lease_slot: &Mutex<Option<(EtcdStore, i64)>>,
        on_registered: &(dyn Fn() + Sync),
    ) -> StoreError {
        let registered_at = now_secs();
        let lease = match store
            .register_host(&self.host_record(registered_at), LEASE_TTL)
            .await
        {
            Ok(lease) => lease,
            Err(e) => return e,
        };
        *lease_slot.lock().unwrap() = Some((store.clone(), lease));
        let (mut keeper, mut responses) = match store.keep_alive(lease).await {
            Ok(pair) => pair,
            Err(e) => return e,
        };
        self.status.set(format!(
            "registered host {} in cluster {} (etcd {}, lease {}s)",
            self.host,
            self.config.cluster_name,
            self.config.etcd.endpoints.join(","),
            LEASE_TTL.as_secs()
        ));
        on_registered();
        let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        refresh.tick().await;
        loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    if let Err(e) = EtcdStore::renew(&mut keeper, &mut responses, LEASE_TTL).await {
                        return e;
                    }
                }
                _ = refresh.tick() => {
                    if let Err(e) = store.put_host(&self.host_record(registered_at), lease).await {
                        return e;
                    }
                }
            }
        }
    }
}

/// Runs the worker until SIGTERM. On a clean stop the lease is revoked, so the host leaves
/// the list at once; a killed worker leaves it when the lease expires.
pub async fn run(config: Config, probe: Arc<dyn HostProbe>) -> Result<(), WorkerError> {
    let notifier = Notifier::from_env();
    let host = daemon::host_name();
    validate_host_name(&host)?;
    // Before anything else: a configuration that cannot work here stops the worker at start.
    let network = Arc::new(
        network::Network::start(&config, &host, Arc::new(crate::sys::firewall::Nft)).await?,
    );
    raise_inotify_limits();
    let worker = Arc::new(Worker::new(config, host, notifier.clone(), probe));
    if let Err(e) = std::fs::create_dir_all(worker.config.local_dir()) {
        warn!("cannot create {}: {e}", worker.config.local_dir().display());
    }
    let _bus = match bus::serve(worker.clone()).await {
        Ok(conn) => Some(conn),
        Err(e) => {
            warn!("D-Bus interface not available: {e}");
            None
        }
    };

    // The live registration, so that a clean stop can revoke it on the same connection.
    let lease: Arc<Mutex<Option<(EtcdStore, i64)>>> = Arc::new(Mutex::new(None));
    let registration = registration_loop(worker.clone(), lease.clone());
    // READY means serving: D-Bus answers from here. Waiting for etcd or for `docklet-admin
    // init` is the status line's to tell, not a start that never ends and holds up
    // `systemctl start` and package upgrades.
    worker.status.set(format!(
        "connecting to etcd at {}",
        worker.config.etcd.endpoints.join(",")
    ));
    notifier.ready(&worker.status());

    let reconciler = reconcile_loop(worker.clone(), network.clone());
    let networks = network_loop(worker.clone(), network);
    let agent = agent_loop(worker.clone());

    let watchdog_every = notifier.watchdog_interval();
    let live_loop = async {
        let mut watchdog = tokio::time::interval(watchdog_every);
        loop {
            watchdog.tick().await;
            notifier.watchdog();
        }
    };

    tokio::select! {
        _ = registration => {}
        _ = reconciler => {}
        _ = networks => {}
        _ = agent => {}
        _ = live_loop => {}
        _ = daemon::shutdown_signal() => {}
    }
    notifier.stopping();
    let registration = lease.lock().unwrap().take();
    if let Some((store, lease_id)) = registration {
        match tokio::time::timeout(Duration::from_secs(3), store.revoke(lease_id)).await {
            Ok(Ok(())) => info!("host {} unregistered", worker.host),
            Ok(Err(e)) => warn!("cannot unregister (the lease expires by itself): {e}"),
            Err(_) => warn!("etcd did not answer in 3 s; the lease expires by itself"),
        }
    }
    Ok(())
}

/// Every vnode's systemd, journald, logind and dbus-daemon hold inotify instances, all
/// charged to root of the host (the owner of the vnodes' user namespaces): the kernel's
/// default of 128 fits about 15 vnodes. Raised (never lowered) while the worker runs, rather
/// than by a sysctl.d file that would change the host from installation on.
fn raise_inotify_limits() {
    for (key, wanted) in [
        ("fs/inotify/max_user_instances", 8192u64),
        ("fs/inotify/max_user_watches", 1_048_576),
    ] {
        let path = format!("/proc/sys/{key}");
        let current = std::fs::read_to_string(&path)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        if current.is_some_and(|c| c >= wanted) {
            continue;
        }
        match crate::sys::netlink::set_sysctl(key, &wanted.to_string()) {
            Ok(()) => info!("raised {key} to {wanted} for vnodes"),
            // A host that is itself a container may keep /proc/sys read-only: its own host
            // must raise the limit.
            Err(e) => warn!(
                "cannot raise {key} from {} to {wanted} ({e}): hosts with many vnodes run out of inotify instances",
                current.map_or("?".to_owned(), |c| c.to_string())
            ),
        }
    }
}

/// Registers this host and keeps the registration alive for ever, again after every loss.
/// `lease` holds the live one, for a clean stop.
async fn registration_loop(worker: Arc<Worker>, lease: Arc<Mutex<Option<(EtcdStore, i64)>>>) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut backoff = Backoff::default();
    let on_registered = || worker.registered.store(true, SeqCst);
    loop {
        let store = worker.connect(&mut backoff).await;
        let lost = worker
            .register_and_keep_alive(&store, &lease, &on_registered)
            .await;
        worker.registered.store(false, SeqCst);
        let delay = backoff.next_delay();
        warn!("registration lost: {lost}");
        worker.status.set(format!(
            "registration lost ({lost}); re-registering in {}s",
            delay.as_secs()
        ));
        tokio::time::sleep(delay).await;
        if matches!(lost, StoreError::Unavailable(_)) {
            continue;
        }
        backoff.reset();
    }
}

/// Serves the node agent for ever, starting it again after a failure.
async fn agent_loop(worker: Arc<Worker>) {
    let mut backoff = Backoff::default();
    loop {
        if let Err(e) = agent::serve(worker.clone()).await {
            let delay = backoff.next_delay();
            warn!(
                "agent endpoint on port {}: {e}; retrying in {}s",
                worker.config.agent_port,
                delay.as_secs()
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// systemd's manager, once it answers.
async fn connect_systemd() -> crate::sys::systemd::Systemd {
    let mut backoff = Backoff::default();
    loop {
        match crate::sys::systemd::Systemd::connect().await {
            Ok(systemd) => return systemd,
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(
                    "cannot reach systemd, which runs the vnodes: {e}; retrying in {}s",
                    delay.as_secs()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Connects to systemd, then follows this host's vnode specs for ever: a full pass at start
/// and after every change in etcd, every unit that goes away, and every few seconds.
async fn reconcile_loop(worker: Arc<Worker>, network: Arc<network::Network>) {
    let systemd = connect_systemd().await;
    let mut backoff = Backoff::default();
    let runtime = worker
        .runtime
        .get_or_init(|| {
            Arc::new(vnode::Runtime::new(
                worker.config.clone(),
                worker.host.clone(),
                vnode::runtime::HostSeams {
                    units: Arc::new(systemd.clone()),
                    mounts: Arc::new(crate::sys::mounts::HostMounts),
                    network,
                    probe: worker.probe.clone(),
                    run_dir: paths::RUN_DIR.into(),
                },
            ))
        })
        .clone();
    tokio::spawn(
        worker
            .metrics
            .clone()
            .run(worker.config.clone(), runtime.clone()),
    );
    tokio::spawn(image_loop(worker.clone(), runtime.clone()));
    let mut first_pass = true;
    loop {
        let store = worker.connect(&mut backoff).await;
        let result: Result<(), StoreError> = async {
            let (specs, revision) = store.host_vnode_specs(&worker.host).await?;
            if std::mem::take(&mut first_pass) {
                let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
                runtime.load_statuses(&store, &ids).await;
                info!("{} vnode spec(s) for this host", ids.len());
            }
            runtime.reconcile_all(&store, specs).await;
            let _task_watch = runtime.spawn_task_watch(&store);
            let mut watch = store.watch_host_vnodes(&worker.host, revision).await?;
            let mut tick = tokio::time::interval(RESYNC_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    message = watch.message() => match message {
                        Ok(Some(_)) => {}
                        Ok(None) => return Err(StoreError::Unavailable("the watch ended".into())),
                        Err(e) => return Err(crate::store::etcd::classify(e)),
                    },
                    _ = systemd.vnode_unit_removed() => {
                        // Bursts of these (every look at an unloaded unit makes one) share a pass.
                        tokio::time::sleep(UNIT_EVENT_DEBOUNCE).await;
                    }
                    _ = tick.tick() => {}
                }
                let (specs, _) = store.host_vnode_specs(&worker.host).await?;
                runtime.reconcile_all(&store, specs).await;
            }
        }
        .await;
        if let Err(e) = result {
            let delay = backoff.next_delay();
            warn!(
                "vnode reconciler: {e}; starting over in {}s",
                delay.as_secs()
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// Carries out the image saves the catalog asks of this host and the system image updates,
/// for ever.
async fn image_loop(worker: Arc<Worker>, runtime: Arc<vnode::Runtime>) {
    let saver = images::Saver::new(worker.config.clone(), worker.host.clone(), runtime);
    let builder = system_images::Builder::new(worker.config.clone(), worker.host.clone());
    let mut backoff = Backoff::default();
    loop {
        let store = worker.connect(&mut backoff).await;
        let result = tokio::select! {
            r = images::saver_loop(saver.clone(), store.clone()) => r,
            r = system_images::builder_loop(builder.clone(), store) => r,
        };
        if let Err(e) = result {
            let delay = backoff.next_delay();
            warn!("images: {e}; starting over in {}s", delay.as_secs());
            tokio::time::sleep(delay).await;
        }
    }
}

/// Keeps this host's part of the users' networks in line with etcd: a pass at start, after
/// every change of a vnode spec, a user's network or a host's endpoint, and every few seconds
/// (which also repairs devices someone removed by hand).
async fn network_loop(worker: Arc<Worker>, network: Arc<network::Network>) {
    let mut backoff = Backoff::default();
    loop {
        let store = worker.connect(&mut backoff).await;
        let result: Result<(), network::NetworkError> = async {
            store.put_vtep(&worker.host, network.vtep()).await?;
            let mut watch = store.watch_network().await?;
            let mut tick = tokio::time::interval(NETWORK_RESYNC_EVERY);
            loop {
                if let Err(e) = network.sync(&store).await {
                    match e {
                        network::NetworkError::Store(e) => return Err(e.into()),
                        other => warn!("user networks: {other}"),
                    }
                }
                loop {
                    tokio::select! {
                        response = watch.next() => {
                            if response?.events().iter().any(|e| {
                                e.kv().is_some_and(|kv| store.is_network_key(kv.key()))
                            }) {
                                // Let a burst of changes (a cluster scaling out) settle.
                                tokio::time::sleep(NETWORK_DEBOUNCE).await;
                                break;
                            }
                        }
                        _ = tick.tick() => break,
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            let delay = backoff.next_delay();
            warn!("user networks: {e}; starting over in {}s", delay.as_secs());
            tokio::time::sleep(delay).await;
        }
    }
}

const NETWORK_RESYNC_EVERY: Duration = Duration::from_secs(10);
const NETWORK_DEBOUNCE: Duration = Duration::from_millis(50);

/// A full pass this often even without events: restarts after backoff, drift repair.
const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// How long a pass waits after a unit went away, so that a burst makes one pass.
const UNIT_EVENT_DEBOUNCE: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::host::Capacity;
    use crate::sys::host::FakeHost;

    #[test]
    fn host_record_carries_measured_capacity_and_version() {
        let probe = FakeHost {
            capacity: Capacity {
                cpus: 4,
                memory_bytes: 8 << 30,
                disk_free_bytes: 100 << 30,
            },
            addresses: vec!["10.213.0.12/24".into()],
        };
        let worker = Worker::new(
            Config::default(),
            "tb2".into(),
            Notifier::from_env(),
            Arc::new(probe),
        );
        let record = worker.host_record(77);
        assert_eq!(record.name, "tb2");
        assert_eq!(record.capacity.cpus, 4);
        assert_eq!(record.addresses, ["10.213.0.12/24"]);
        assert_eq!(record.version, crate::VERSION);
        assert_eq!(record.registered_at, 77);
    }
}
