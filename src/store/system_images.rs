//! System image updates on etcd: `system-images/<name>` holds the latest
//! [`SystemImageUpdate`] an administrator asked for, `system-image-builds/<name>/<host>` each
//! worker's [`SystemImageBuild`] of it.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, WatchStream};

use super::{EtcdStore, StoreError, encode};
use crate::model::system_image::{SystemImageBuild, SystemImageUpdate};

impl EtcdStore {
    /// The latest update of system image `name` and its revision (0 when there is none).
    pub async fn system_image_update(
        &self,
        name: &str,
    ) -> Result<(Option<SystemImageUpdate>, i64), StoreError> {
        Ok(
            match self
                .get_json_rev::<SystemImageUpdate>(&self.keys.system_image(name))
                .await?
            {
                Some((update, revision)) => (Some(update), revision),
                None => (None, 0),
            },
        )
    }

    /// The latest update of every system image that had one.
    pub async fn system_image_updates(&self) -> Result<Vec<SystemImageUpdate>, StoreError> {
        self.list_json(&self.keys.system_images()).await
    }

    /// Records `update` as the latest, if the record is still at `revision` (0: absent), so
    /// two administrators never both think theirs is the one the hosts build.
    pub async fn request_system_image_update(
        &self,
        update: &SystemImageUpdate,
        revision: i64,
    ) -> Result<bool, StoreError> {
        let key = self.keys.system_image(&update.name);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, encode(update), None)]);
        self.txn_ok(txn).await
    }

    /// Every host's work on system image `name`.
    pub async fn system_image_builds(
        &self,
        name: &str,
    ) -> Result<Vec<SystemImageBuild>, StoreError> {
        self.list_json(&self.keys.system_image_builds(name)).await
    }

    /// A worker's report on its build.
    pub async fn put_system_image_build(
        &self,
        name: &str,
        build: &SystemImageBuild,
    ) -> Result<(), StoreError> {
        let key = self.keys.system_image_build(name, &build.host);
        let txn = Txn::new().and_then([TxnOp::put(key, encode(build), None)]);
        self.txn_ok(txn).await.map(|_| ())
    }

    /// Every update and the revision they were read at, to watch from.
    pub async fn system_image_updates_and_revision(
        &self,
    ) -> Result<(Vec<SystemImageUpdate>, i64), StoreError> {
        self.list_json_rev(&self.keys.system_images()).await
    }

    /// Watches `system-images/` from `after_revision + 1`: every event means "read again".
    pub async fn watch_system_images(
        &self,
        after_revision: i64,
    ) -> Result<WatchStream, StoreError> {
        self.watch_prefix_after(self.keys.system_images(), after_revision)
            .await
    }
}
