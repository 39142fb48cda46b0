//! An in-memory [`Store`] with etcd's semantics for the operations the trait offers.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Keys, Store, StoreError, decode, encode};
use crate::model::account::Account;
use crate::model::cluster::ClusterInfo;
use crate::model::host::HostRecord;
use crate::model::quota::Group;

pub struct MemoryStore {
    keys: Keys,
    data: Mutex<BTreeMap<String, String>>,
}

impl MemoryStore {
    pub fn new(prefix: &str) -> MemoryStore {
        MemoryStore {
            keys: Keys::new(prefix),
            data: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn put_raw(&self, key: &str, value: &str) {
        self.data.lock().unwrap().insert(key.into(), value.into());
    }

    pub fn get_raw(&self, key: &str) -> Option<String> {
        self.data.lock().unwrap().get(key).cloned()
    }

    pub fn put_host(&self, host: &HostRecord) {
        self.put_raw(&self.keys.host(&host.name), &encode(host));
    }
}

impl Store for MemoryStore {
    async fn cluster_info(&self) -> Result<Option<ClusterInfo>, StoreError> {
        let key = self.keys.cluster();
        self.get_raw(&key)
            .map(|v| decode(&key, v.as_bytes()))
            .transpose()
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let prefix = self.keys.hosts();
        let data = self.data.lock().unwrap();
        data.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| decode(k, v.as_bytes()))
            .collect()
    }

    async fn initialize(
        &self,
        info: &ClusterInfo,
        admin: &Account,
        groups: &[Group],
        force: bool,
    ) -> Result<(), StoreError> {
        let mut data = self.data.lock().unwrap();
        if force {
            let hosts = self.keys.hosts();
            let prefix = self.keys.prefix();
            data.retain(|k, _| !k.starts_with(prefix) || k.starts_with(&hosts));
        }
        if data.contains_key(&self.keys.cluster()) {
            return Err(StoreError::AlreadyInitialized);
        }
        data.insert(self.keys.cluster(), encode(info));
        data.insert(self.keys.user(&admin.name), encode(admin));
        for group in groups {
            data.insert(self.keys.group(&group.name), encode(group));
        }
        Ok(())
    }
}
