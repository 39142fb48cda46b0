//! `docklet-admin init`: creates the cluster record and the portal administrator `root`,
//! whose random password goes to the master's state directory,
//! `/var/lib/docklet-master/generated_password.txt` (mode 0600).

use std::path::{Path, PathBuf};

use crate::model::account::{Account, HashError};
use crate::model::cluster::ClusterInfo;
use crate::model::quota;
use crate::store::{EtcdStore, StoreError};

/// The portal administrator `init` creates.
pub const ADMIN_USER: &str = "root";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("cannot write {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `contents` to `path` with mode 0600 so that no reader ever sees a partial file: a
/// temporary file beside it is renamed over it.
pub fn write_private_file(path: &Path, contents: &str) -> Result<(), InitError> {
    let file_error = |source| InitError::File {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(file_error)?;
    }
    crate::sys::files::write_whole(path, contents.as_bytes(), 0o600, None).map_err(file_error)
}

/// Initializes the cluster in `store`. The password file is written only once the store
/// accepted the cluster, so a refused `init` leaves the previous password file alone.
pub async fn init_cluster(
    store: &EtcdStore,
    cluster_name: &str,
    version: &str,
    force: bool,
    password_file: &Path,
    now: u64,
) -> Result<(), InitError> {
    // `initialize` refuses an existing cluster atomically; nothing is written before that.
    let password = crate::pki::random_secret(20);
    // `root` is in group `root`, an administrators' group of the defaults.
    let admin = Account::local(ADMIN_USER, ADMIN_USER, &password, now)?;
    let info = ClusterInfo {
        name: cluster_name.to_owned(),
        created_at: now,
        created_by_version: version.to_owned(),
    };
    store
        .initialize(&info, &admin, &quota::default_groups(), force)
        .await?;
    write_private_file(password_file, &format!("{password}\n"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::Config;
    use crate::model::host::{Capacity, HostRecord};
    use crate::store::memory_etcd::MemoryEtcd;

    /// The in-process etcd, a store of cluster `docklet` on it, and a raw client for keys
    /// outside what the store reads.
    async fn site() -> (MemoryEtcd, EtcdStore, etcd_client::Client) {
        let etcd = MemoryEtcd::start().await.unwrap();
        let store = etcd.connect(&Config::default()).await.unwrap();
        let raw = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap();
        (etcd, store, raw)
    }

    async fn get_raw(raw: &mut etcd_client::Client, key: &str) -> Option<String> {
        let answer = raw.get(key, None).await.unwrap();
        answer
            .kvs()
            .first()
            .map(|kv| kv.value_str().unwrap().to_owned())
    }

    async fn account(raw: &mut etcd_client::Client) -> Account {
        serde_json::from_str(&get_raw(raw, "/docklet/users/root").await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn init_creates_admin_whose_password_is_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("local/generated_password.txt");
        let (_etcd, store, mut raw) = site().await;
        init_cluster(&store, "docklet", "0.1.0", false, &file, 100)
            .await
            .unwrap();
        let password = std::fs::read_to_string(&file).unwrap();
        let password = password.trim_end();
        assert_eq!(password.len(), 20);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let root = account(&mut raw).await;
        assert_eq!(root.group, "root");
        let group = get_raw(&mut raw, "/docklet/groups/root").await.unwrap();
        assert!(group.contains("\"admin\":true"), "{group}");
        assert!(
            get_raw(&mut raw, "/docklet/groups/foundation")
                .await
                .is_some()
        );
        assert!(root.verify_password(password));
        let info = store.cluster_info().await.unwrap().unwrap();
        assert_eq!(info.created_at, 100);
    }

    #[tokio::test]
    async fn second_init_is_refused_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("generated_password.txt");
        let (_etcd, store, mut raw) = site().await;
        init_cluster(&store, "docklet", "0.1.0", false, &file, 1)
            .await
            .unwrap();
        let first = std::fs::read_to_string(&file).unwrap();
        raw.put("/docklet/vclusters/alice/1", "{}", None)
            .await
            .unwrap();
        let err = init_cluster(&store, "docklet", "0.1.0", false, &file, 2)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            InitError::Store(StoreError::AlreadyInitialized)
        ));
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
        assert!(account(&mut raw).await.verify_password(first.trim_end()));
        assert!(
            get_raw(&mut raw, "/docklet/vclusters/alice/1")
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn forced_init_wipes_state_but_keeps_live_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("generated_password.txt");
        let (_etcd, store, mut raw) = site().await;
        init_cluster(&store, "docklet", "0.1.0", false, &file, 1)
            .await
            .unwrap();
        let first = std::fs::read_to_string(&file).unwrap();
        raw.put("/docklet/vclusters/alice/1", "{}", None)
            .await
            .unwrap();
        raw.put("/other/untouched", "x", None).await.unwrap();
        let host = HostRecord {
            name: "tb1".into(),
            addresses: vec![],
            capacity: Capacity {
                cpus: 1,
                memory_bytes: 1,
                disk_free_bytes: 1,
            },
            version: "0.1.0".into(),
            registered_at: 1,
            images: vec![],
            image_versions: Default::default(),
        };
        store
            .register_host(&host, std::time::Duration::from_secs(60))
            .await
            .unwrap();
        init_cluster(&store, "docklet", "0.1.0", true, &file, 2)
            .await
            .unwrap();
        let second = std::fs::read_to_string(&file).unwrap();
        assert_ne!(first, second);
        assert!(account(&mut raw).await.verify_password(second.trim_end()));
        assert!(
            get_raw(&mut raw, "/docklet/vclusters/alice/1")
                .await
                .is_none()
        );
        assert_eq!(
            get_raw(&mut raw, "/other/untouched").await.as_deref(),
            Some("x")
        );
        assert_eq!(store.list_hosts().await.unwrap().len(), 1);
        assert_eq!(store.cluster_info().await.unwrap().unwrap().created_at, 2);
    }

    #[test]
    fn secrets_are_random_alphanumerics() {
        let a = crate::pki::random_secret(32);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, crate::pki::random_secret(32));
    }
}
