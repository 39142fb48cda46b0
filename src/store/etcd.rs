//! [`Store`] on a real etcd v3 cluster, plus what only etcd has: leases for host
//! registration (etcd's users and roles: [`super::auth`]).

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};

use tonic::Code;

use super::{Keys, StoreError, decode, encode};
use crate::config::Config;
use crate::model::account::Account;
use crate::model::cluster::{ClusterInfo, EtcdCredentials};
use crate::model::host::HostRecord;
use crate::model::quota::Group;
use crate::pki::Role;

/// A connection to etcd, scoped to one cluster's keys.
#[derive(Clone)]
pub struct EtcdStore {
    pub(super) client: Client,
    pub(super) keys: Keys,
}

/// Watches of several prefixes, followed as one stream of changes (the views that mirror
/// several kinds of keys: placement, port mappings, users' networks).
pub(crate) struct Watches(Vec<etcd_client::WatchStream>);

impl EtcdStore {
    /// Watches every key under each prefix, from `revision + 1` on (from now with `None`).
    pub(crate) async fn watch_prefixes(
        &self,
        prefixes: &[&str],
        revision: Option<i64>,
    ) -> Result<Watches, StoreError> {
        let mut streams = Vec::new();
        for prefix in prefixes {
            let mut options = WatchOptions::new().with_prefix();
            if let Some(revision) = revision {
                options = options.with_start_revision(revision + 1);
            }
            streams.push(
                self.client
                    .watch_client()
                    .watch(*prefix, Some(options))
                    .await
                    .map_err(classify)?,
            );
        }
        Ok(Watches(streams))
    }
}

impl Watches {
    /// The next response of any watch, or why following them has to start over.
    pub(crate) async fn next(&mut self) -> Result<etcd_client::WatchResponse, StoreError> {
        let pending = self.0.iter_mut().map(|w| Box::pin(w.message()));
        let (message, _, _) = futures_util::future::select_all(pending).await;
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Err(StoreError::Unavailable("the watch ended".into())),
            Err(e) => return Err(classify(e)),
        };
        if response.canceled() || response.compact_revision() > 0 {
            return Err(StoreError::Unavailable("the watch was cancelled".into()));
        }
        Ok(response)
    }
}

/// A watch that also fires every `period`, for followers that read everything again on any
/// change and now and then (repairing what a failed pass left).
pub(crate) struct Changes {
    watch: WatchStream,
    tick: tokio::time::Interval,
}

impl Changes {
    pub(crate) fn new(watch: WatchStream, period: std::time::Duration) -> Changes {
        let tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        Changes { watch, tick }
    }

    /// Returns at the next change or tick, or with why following has to start over.
    pub(crate) async fn next(&mut self) -> Result<(), StoreError> {
        tokio::select! {
            message = self.watch.message() => match message {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(StoreError::Unavailable("the watch ended".into())),
                Err(e) => Err(classify(e)),
            },
            _ = self.tick.tick() => Ok(()),
        }
    }
}

pub(crate) fn classify(e: etcd_client::Error) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                StoreError::Unauthenticated(status.message().to_owned())
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                StoreError::Unavailable(status.message().to_owned())
            }
            // etcd answers these with generic codes (InvalidArgument, FailedPrecondition):
            // its words are the only tell, read here once so no caller reads them again.
            _ if status.message().contains("authentication failed")
                || status.message().contains("user name is empty") =>
            {
                StoreError::Unauthenticated(status.message().to_owned())
            }
            Code::FailedPrecondition if status.message().ends_with("already exists") => {
                StoreError::Conflict(status.message().to_owned())
            }
            Code::FailedPrecondition if status.message().ends_with("not found") => {
                StoreError::NotFound(status.message().to_owned())
            }
            _ => StoreError::Failed(status.message().to_owned()),
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            StoreError::Unavailable(error_chain(&e))
        }
        _ => StoreError::Failed(error_chain(&e)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}

impl EtcdStore {
    /// Connects and checks that etcd answers. Over TLS, the client certificate is the
    /// `identity`'s (unless the configuration names one): with no password, etcd takes its
    /// common name as the user. A password (sites without TLS, and an upgrade's first step)
    /// takes precedence over the certificate's name.
    pub async fn connect(
        config: &Config,
        identity: Option<Role>,
        password: Option<&EtcdCredentials>,
    ) -> Result<EtcdStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_auto_token_refresh(true);
        if let Some(creds) = password {
            options = options.with_user(creds.user.clone(), creds.password.clone());
        }
        if let Some(tls) = tls_options(config, identity)? {
            options = options.with_tls(tls);
        }
        let client = Client::connect(&config.etcd.endpoints, Some(options))
            .await
            .map_err(classify)?;
        let store = EtcdStore {
            client,
            keys: Keys::new(&config.etcd_prefix()),
        };
        store.ping().await?;
        Ok(store)
    }

    /// Does etcd answer a TLS client that presents no certificate? On an `https://` site it
    /// must not: etcd takes a certificate's name as the login only when it requires client
    /// certificates, so authentication turned on without that would let no daemon in.
    pub async fn takes_clients_without_certificate(config: &Config) -> bool {
        let mut anonymous = config.clone();
        anonymous.etcd.cert_file = None;
        anonymous.etcd.key_file = None;
        EtcdStore::connect(&anonymous, None, None).await.is_ok()
    }

    /// One round trip to etcd.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        kv.get(
            self.keys.cluster(),
            Some(GetOptions::new().with_count_only()),
        )
        .await
        .map(|_| ())
        .map_err(classify)
    }

    /// The JSON record at `key`, `None` when absent.
    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.get_json_rev(key).await?.map(|(value, _)| value))
    }

    /// A JSON record and its mod revision (for a compare-and-swap).
    pub(super) async fn get_json_rev<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, i64)>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(classify)?;
        match response.kvs().first() {
            Some(kv) => Ok(Some((decode(key, kv.value())?, kv.mod_revision()))),
            None => Ok(None),
        }
    }

    /// Every key under `prefix` (without it) with its value as text.
    pub(super) async fn get_text_map(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        Ok(self
            .get_prefix(prefix)
            .await?
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    /// The plain text at `key` (host names, ids), `None` when absent.
    pub(super) async fn get_text(&self, key: &str) -> Result<Option<String>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(classify)?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every key under `prefix`, with the revision of the read in the response header.
    pub(super) async fn get_prefix(
        &self,
        prefix: &str,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(classify)
    }

    /// Every JSON record under `prefix`, in key order.
    pub(super) async fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        Ok(self.list_json_rev(prefix).await?.0)
    }

    /// Every JSON record under `prefix`, in key order, and the revision they were read at
    /// (to watch from).
    pub(super) async fn list_json_rev<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<T>, i64), StoreError> {
        let response = self.get_prefix(prefix).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let records = response
            .kvs()
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect::<Result<_, _>>()?;
        Ok((records, revision))
    }

    /// Watches every key under `prefix` from `after_revision + 1`.
    pub(super) async fn watch_prefix_after(
        &self,
        prefix: String,
        after_revision: i64,
    ) -> Result<WatchStream, StoreError> {
        self.client
            .watch_client()
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(after_revision + 1),
                ),
            )
            .await
            .map_err(classify)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Puts this host's record under a new lease of `ttl` and returns the lease id.
    pub async fn register_host(
        &self,
        record: &HostRecord,
        ttl: Duration,
    ) -> Result<i64, StoreError> {
        let mut lease = self.client.lease_client();
        let granted = lease
            .grant(ttl.as_secs() as i64, None)
            .await
            .map_err(classify)?;
        self.put_host(record, granted.id()).await?;
        Ok(granted.id())
    }

    /// Rewrites this host's record (fresh capacity figures) under an existing lease.
    pub async fn put_host(&self, record: &HostRecord, lease: i64) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        kv.put(
            self.keys.host(&record.name),
            encode(record),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(classify)?;
        Ok(())
    }

    pub async fn keep_alive(
        &self,
        lease: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), StoreError> {
        self.client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(classify)
    }

    /// One keep-alive round trip of a lease (from [`Self::keep_alive`]): an error when the
    /// lease is gone or etcd does not answer within `patience`.
    pub async fn renew(
        keeper: &mut LeaseKeeper,
        responses: &mut LeaseKeepAliveStream,
        patience: Duration,
    ) -> Result<(), StoreError> {
        keeper
            .keep_alive()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        match tokio::time::timeout(patience, responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => Ok(()),
            Ok(Ok(Some(_))) => Err(StoreError::Failed("the lease expired".into())),
            Ok(Ok(None)) => Err(StoreError::Unavailable("keep-alive stream closed".into())),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Unavailable("no keep-alive answer".into())),
        }
    }

    /// Ends a lease at once, so the host disappears without waiting for the TTL.
    pub async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.client
            .lease_client()
            .revoke(lease)
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

fn tls_options(config: &Config, identity: Option<Role>) -> Result<Option<TlsOptions>, StoreError> {
    if !config.etcd_uses_tls() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| StoreError::Failed(format!("cannot read {}: {e}", path.display())))
    };
    let pki = std::path::Path::new(crate::pki::PKI_DIR);
    let mut tls = TlsOptions::new();
    let ca = config
        .etcd
        .ca_file
        .clone()
        .or_else(|| Some(crate::pki::ca_cert_file(pki)).filter(|p| p.exists()));
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(&ca)?));
    }
    let files = match (&config.etcd.cert_file, &config.etcd.key_file, identity) {
        (Some(cert), Some(key), _) => Some((cert.clone(), key.clone())),
        (None, None, Some(role)) => {
            Some((role.cert_file(pki), role.key_file(pki))).filter(|(cert, _)| cert.exists())
        }
        _ => None,
    };
    if let Some((cert, key)) = files {
        tls = tls.identity(Identity::from_pem(read(&cert)?, read(&key)?));
    }
    Ok(Some(tls))
}

/// The records `init` writes and every daemon reads first.
impl EtcdStore {
    /// The cluster record, `None` before `init`.
    pub async fn cluster_info(&self) -> Result<Option<ClusterInfo>, StoreError> {
        self.get_json(&self.keys.cluster()).await
    }

    /// Every host whose worker currently holds its lease, sorted by name.
    pub async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.list_json(&self.keys.hosts()).await
    }

    /// Writes the cluster record, the portal administrator and the default groups in one
    /// transaction. Refuses with [`StoreError::AlreadyInitialized`] when the cluster record
    /// exists, unless `force`, which first deletes every key of the cluster except the live
    /// host registrations and the hosts' identities.
    pub async fn initialize(
        &self,
        info: &ClusterInfo,
        admin: &Account,
        groups: &[Group],
        force: bool,
    ) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let mut operations = Vec::new();
        if force {
            // Wipe everything but the live host registrations, which belong to running
            // workers, and the hosts' identities, which belong to the hosts that joined.
            let existing = kv
                .get(
                    self.keys.prefix(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
                .map_err(classify)?;
            let kept = [self.keys.hosts(), self.keys.identities()];
            for item in existing.kvs() {
                let key = String::from_utf8_lossy(item.key()).into_owned();
                if !kept.iter().any(|prefix| key.starts_with(prefix)) {
                    operations.push(TxnOp::delete(key, None::<DeleteOptions>));
                }
            }
        }
        operations.push(TxnOp::put(self.keys.cluster(), encode(info), None));
        operations.push(TxnOp::put(self.keys.user(&admin.name), encode(admin), None));
        for group in groups {
            operations.push(TxnOp::put(
                self.keys.group(&group.name),
                encode(group),
                None,
            ));
        }
        let mut txn = Txn::new();
        if !force {
            txn = txn.when([Compare::create_revision(
                self.keys.cluster(),
                CompareOp::Equal,
                0,
            )]);
        }
        let response = kv.txn(txn.and_then(operations)).await.map_err(classify)?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(StoreError::AlreadyInitialized)
        }
    }
}
