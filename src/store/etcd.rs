//! [`Store`] on a real etcd v3 cluster, plus what only etcd has: leases for host
//! registration and the auth setup `init` performs.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, Permission, PutOptions, TlsOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};

use tonic::Code;

use super::{Keys, Store, StoreError, decode, encode};
use crate::config::Config;
use crate::model::account::Account;
use crate::model::cluster::{ClusterInfo, EtcdCredentials};
use crate::model::host::HostRecord;
use crate::model::quota::Group;

/// A connection to etcd, scoped to one cluster's keys.
#[derive(Clone)]
pub struct EtcdStore {
    pub(super) client: Client,
    pub(super) keys: Keys,
}

/// Two prefixes' watches, followed as one stream of changes (the views that mirror two kinds
/// of keys: placement, port mappings).
pub(crate) struct TwoWatches([etcd_client::WatchStream; 2]);

impl EtcdStore {
    /// Watches every key under both prefixes, from `revision + 1` on.
    pub(crate) async fn watch_two(
        &self,
        prefixes: [&str; 2],
        revision: i64,
    ) -> Result<TwoWatches, StoreError> {
        let mut streams = Vec::new();
        for prefix in prefixes {
            streams.push(self.watch_prefix_after(prefix.to_owned(), revision).await?);
        }
        let pair = streams
            .try_into()
            .map_err(|_| StoreError::Failed("two watches expected".into()))?;
        Ok(TwoWatches(pair))
    }
}

impl TwoWatches {
    /// The next response of either watch, or why following them has to start over.
    pub(crate) async fn next(&mut self) -> Result<etcd_client::WatchResponse, StoreError> {
        let [first, second] = &mut self.0;
        let message = tokio::select! {
            m = first.message() => m,
            m = second.message() => m,
        };
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
            _ if status.message().contains("authentication failed")
                || status.message().contains("user name is empty") =>
            {
                StoreError::Unauthenticated(status.message().to_owned())
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
    /// Connects and checks that etcd answers with these credentials.
    pub async fn connect(
        config: &Config,
        credentials: Option<&EtcdCredentials>,
    ) -> Result<EtcdStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_auto_token_refresh(true);
        if let Some(creds) = credentials {
            options = options.with_user(creds.user.clone(), creds.password.clone());
        }
        if let Some(tls) = tls_options(config)? {
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

    /// Creates the etcd user and role that own this cluster's prefix and enables etcd
    /// authentication. Safe to repeat: existing users get the given passwords.
    pub async fn setup_auth(&self, creds: &EtcdCredentials) -> Result<(), StoreError> {
        let mut auth = self.client.auth_client();
        let ignore_exists = |r: Result<(), StoreError>| match r {
            Err(StoreError::Failed(m)) if m.contains("already exists") => Ok(()),
            other => other,
        };
        // etcd requires a `root` user holding the built-in `root` role before auth is enabled.
        ignore_exists(auth.role_add("root").await.map(|_| ()).map_err(classify))?;
        match auth
            .user_add("root", creds.root_password.clone(), None)
            .await
        {
            Ok(_) => {}
            Err(e) => match classify(e) {
                StoreError::Failed(m) if m.contains("already exists") => {
                    auth.user_change_password("root", creds.root_password.clone())
                        .await
                        .map_err(classify)?;
                }
                other => return Err(other),
            },
        }
        auth.user_grant_role("root", "root")
            .await
            .map_err(classify)?;

        let role = creds.user.clone();
        ignore_exists(
            auth.role_add(role.clone())
                .await
                .map(|_| ())
                .map_err(classify),
        )?;
        auth.role_grant_permission(
            role.clone(),
            Permission::read_write(self.keys.prefix()).with_prefix(),
        )
        .await
        .map_err(classify)?;
        match auth
            .user_add(creds.user.clone(), creds.password.clone(), None)
            .await
        {
            Ok(_) => {}
            Err(e) => match classify(e) {
                StoreError::Failed(m) if m.contains("already exists") => {
                    auth.user_change_password(creds.user.clone(), creds.password.clone())
                        .await
                        .map_err(classify)?;
                }
                other => return Err(other),
            },
        }
        auth.user_grant_role(creds.user.clone(), role)
            .await
            .map_err(classify)?;
        auth.auth_enable().await.map_err(classify)?;
        Ok(())
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

fn tls_options(config: &Config) -> Result<Option<TlsOptions>, StoreError> {
    let wants_tls = config
        .etcd
        .endpoints
        .iter()
        .any(|e| e.starts_with("https://"))
        || config.etcd.ca_file.is_some()
        || config.etcd.cert_file.is_some();
    if !wants_tls {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| StoreError::Failed(format!("cannot read {}: {e}", path.display())))
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.etcd.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.etcd.cert_file, &config.etcd.key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

impl Store for EtcdStore {
    async fn cluster_info(&self) -> Result<Option<ClusterInfo>, StoreError> {
        self.get_json(&self.keys.cluster()).await
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.list_json(&self.keys.hosts()).await
    }

    async fn initialize(
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
