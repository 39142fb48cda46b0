//! A live copy of the biggest part of what placement reads, the host records and the hosts'
//! allocations, kept current by etcd watches from the revision it was read at. A create then
//! reads no thousands of keys; the copy only proposes hosts, since the transaction that
//! writes the vnodes checks the chosen hosts' fresh allocations itself. Drains are read
//! fresh at every placement (a handful of keys): a create right after a drain must see it.
//! Until the copy is loaded, or once its watch broke, placement reads etcd instead.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use etcd_client::{EventType, GetOptions, Txn, TxnOp, TxnOpResponse};
use tracing::warn;

use super::clusters::PlacementSnapshot;
use super::etcd::classify;
use super::{EtcdStore, StoreError, decode};
use crate::model::host::HostRecord;
use crate::model::quota::Usage;

#[derive(Clone, Default)]
struct Copy {
    hosts: BTreeMap<String, HostRecord>,
    allocations: BTreeMap<String, Usage>,
}

#[derive(Clone, Default)]
pub struct PlacementView {
    current: Arc<Mutex<Option<Copy>>>,
}

impl PlacementView {
    /// What placement needs now: from the copy when it is current, else read.
    pub async fn snapshot(&self, store: &EtcdStore) -> Result<PlacementSnapshot, StoreError> {
        let copy = self.current.lock().unwrap().clone();
        match copy {
            Some(copy) => Ok(PlacementSnapshot {
                hosts: copy.hosts.into_values().collect(),
                drained: store
                    .drained_hosts()
                    .await?
                    .into_iter()
                    .collect::<HashSet<_>>(),
                allocations: copy.allocations,
            }),
            None => store.placement_snapshot().await,
        }
    }

    /// Whether the copy is loaded and followed (else placement reads etcd).
    pub fn is_current(&self) -> bool {
        self.current.lock().unwrap().is_some()
    }

    /// Loads the copy and keeps it current until a watch fails; returns why (the copy is
    /// dropped then, and the caller follows again).
    pub async fn follow(&self, store: &EtcdStore) -> StoreError {
        let error = self.follow_until_error(store).await;
        *self.current.lock().unwrap() = None;
        error
    }

    async fn follow_until_error(&self, store: &EtcdStore) -> StoreError {
        let (hosts_prefix, allocations_prefix) = (store.keys.hosts(), store.keys.allocations());
        let txn = Txn::new().and_then([
            TxnOp::get(hosts_prefix.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(
                allocations_prefix.clone(),
                Some(GetOptions::new().with_prefix()),
            ),
        ]);
        let response = match store.client.kv_client().txn(txn).await {
            Ok(response) => response,
            Err(e) => return classify(e),
        };
        let revision = response.header().map_or(0, |h| h.revision());
        let mut copy = Copy::default();
        for op in response.op_responses() {
            let TxnOpResponse::Get(get) = op else {
                continue;
            };
            for kv in get.kvs() {
                copy.apply(
                    &hosts_prefix,
                    &allocations_prefix,
                    kv.key(),
                    Some(kv.value()),
                );
            }
        }
        let mut watches = match store
            .watch_prefixes(&[&hosts_prefix, &allocations_prefix], Some(revision))
            .await
        {
            Ok(watches) => watches,
            Err(e) => return e,
        };
        *self.current.lock().unwrap() = Some(copy);
        loop {
            let response = match watches.next().await {
                Ok(response) => response,
                Err(e) => return e,
            };
            let mut current = self.current.lock().unwrap();
            let Some(copy) = current.as_mut() else {
                return StoreError::Failed("the copy went away".into());
            };
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let value = (event.event_type() == EventType::Put).then(|| kv.value());
                copy.apply(&hosts_prefix, &allocations_prefix, kv.key(), value);
            }
        }
    }
}

impl Copy {
    /// One key's new value (`None`: deleted).
    fn apply(&mut self, hosts: &str, allocations: &str, key: &[u8], value: Option<&[u8]>) {
        let key = String::from_utf8_lossy(key);
        if let Some(name) = key.strip_prefix(hosts) {
            match value.map(|v| decode::<HostRecord>(&key, v)) {
                Some(Ok(record)) => {
                    self.hosts.insert(name.to_owned(), record);
                }
                Some(Err(e)) => warn!("placement view: {e}"),
                None => {
                    self.hosts.remove(name);
                }
            }
        } else if let Some(name) = key.strip_prefix(allocations) {
            match value.map(|v| decode::<Usage>(&key, v)) {
                Some(Ok(usage)) => {
                    self.allocations.insert(name.to_owned(), usage);
                }
                Some(Err(e)) => warn!("placement view: {e}"),
                None => {
                    self.allocations.remove(name);
                }
            }
        }
    }
}
