//! Port mappings on etcd: `ports/<public_port>` holds a [`PortMapping`], and the owner's
//! `usage/<user>` counts them. A mapping is created in one transaction that creates its key
//! (the public port is free), raises the usage within the group's quota (the usage is
//! unchanged since read) and finds its vnode's spec unchanged (not being deleted). The
//! transaction that forgets a deleted vnode (`remove_vnode`) deletes its mappings and
//! releases them; since every one of these writes changes the owner's usage key, none of
//! them can miss another.

use std::collections::{BTreeMap, HashMap, HashSet};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::watch;

use super::etcd::classify;
use super::{EtcdStore, StoreError, decode, encode};
use crate::model::ports::{self, PortMapping, PortRange};
use crate::model::quota::{self, Quota, Usage};
use crate::model::vnode::{DesiredState, Phase, VNodeSpec, VNodeStatus};

/// How often contention (other writes of the same usage, spec or port) is retried.
const ATTEMPTS: usize = 64;

/// What a user asks to map.
pub struct NewMapping<'a> {
    pub user: &'a str,
    pub cluster: &'a str,
    pub node: u32,
    pub port: u16,
    /// A specific public port, or any free one of `range`.
    pub public_port: Option<u16>,
    pub range: &'a PortRange,
    pub quota: &'a Quota,
    pub now: u64,
}

/// What the masters' forwarders look at: every mapping, and the last reported phase of
/// every vnode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortsState {
    pub mappings: BTreeMap<u16, PortMapping>,
    pub phases: HashMap<String, Phase>,
}

fn one_mapping() -> Usage {
    Usage {
        port_mappings: 1,
        ..Usage::default()
    }
}

impl EtcdStore {
    /// Every mapping, by public port.
    pub async fn port_mappings(&self) -> Result<BTreeMap<u16, PortMapping>, StoreError> {
        let mappings: Vec<PortMapping> = self.list_json(&self.keys.ports()).await?;
        Ok(mappings.into_iter().map(|m| (m.public_port, m)).collect())
    }

    /// A user's mappings, by public port.
    pub async fn port_mappings_of(
        &self,
        user: &str,
    ) -> Result<BTreeMap<u16, PortMapping>, StoreError> {
        let mut all = self.port_mappings().await?;
        all.retain(|_, m| m.user == user);
        Ok(all)
    }

    /// Creates a mapping (see the module's comment for what makes it atomic).
    pub async fn create_port_mapping(
        &self,
        new: &NewMapping<'_>,
    ) -> Result<PortMapping, StoreError> {
        let id = crate::model::vcluster::node_id(new.user, new.cluster, new.node);
        let no_node =
            || StoreError::NotFound(format!("cluster {} has no node {}", new.cluster, new.node));
        for _ in 0..ATTEMPTS {
            let (host, spec, spec_revision) = self.vnode_spec(&id).await?.ok_or_else(no_node)?;
            if spec.user != new.user || spec.cluster != new.cluster {
                return Err(no_node());
            }
            let mappings = self.port_mappings().await?;
            check_mappable(new, &spec, &id, &mappings)?;
            // The quota first: a request over it is refused as such, whatever port it names.
            let usage_key = self.keys.usage(new.user);
            let (usage, usage_revision) = self
                .get_json_rev::<Usage>(&usage_key)
                .await?
                .unwrap_or_default();
            let new_usage = quota::admit(new.quota, &usage, &one_mapping())
                .map_err(|e| StoreError::QuotaExceeded(e.to_string()))?;
            let taken: HashSet<u16> = mappings.keys().copied().collect();
            let public_port = choose_public_port(new, &taken)?;
            let mapping = PortMapping {
                user: new.user.to_owned(),
                cluster: new.cluster.to_owned(),
                node: new.node,
                port: new.port,
                public_port,
                created_at: new.now,
            };
            let port_key = self.keys.port(public_port);
            let spec_key = self.keys.vnode(&host, &id);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(port_key.clone(), CompareOp::Equal, 0),
                    Compare::mod_revision(usage_key.clone(), CompareOp::Equal, usage_revision),
                    Compare::mod_revision(spec_key, CompareOp::Equal, spec_revision),
                ])
                .and_then([
                    TxnOp::put(port_key, encode(&mapping), None),
                    TxnOp::put(usage_key, encode(&new_usage), None),
                ]);
            if self.txn_ok(txn).await? {
                tracing::info!(
                    user = new.user,
                    vnode = %id,
                    port = new.port,
                    public_port,
                    "port mapped"
                );
                return Ok(mapping);
            }
        }
        Err(StoreError::Unavailable(
            "too many concurrent changes: try again".into(),
        ))
    }

    /// Deletes `owner`'s mapping on `public_port` and releases it; another user's mapping is
    /// as absent as none.
    pub async fn delete_port_mapping(
        &self,
        owner: &str,
        public_port: u16,
    ) -> Result<PortMapping, StoreError> {
        let port_key = self.keys.port(public_port);
        for _ in 0..ATTEMPTS {
            let mapping = match self.get_json_rev::<PortMapping>(&port_key).await? {
                Some((mapping, revision)) if mapping.user == owner => (mapping, revision),
                _ => {
                    return Err(StoreError::NotFound(format!(
                        "you have no port mapping on public port {public_port}"
                    )));
                }
            };
            let (mapping, port_revision) = mapping;
            let usage_key = self.keys.usage(owner);
            let (usage, usage_revision) = self
                .get_json_rev::<Usage>(&usage_key)
                .await?
                .unwrap_or_default();
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(port_key.clone(), CompareOp::Equal, port_revision),
                    Compare::mod_revision(usage_key.clone(), CompareOp::Equal, usage_revision),
                ])
                .and_then([
                    TxnOp::delete(port_key.clone(), None::<DeleteOptions>),
                    TxnOp::put(usage_key, encode(&usage.minus(&one_mapping())), None),
                ]);
            if self.txn_ok(txn).await? {
                tracing::info!(user = owner, public_port, "port mapping deleted");
                return Ok(mapping);
            }
        }
        Err(StoreError::Unavailable(
            "too many concurrent changes: try again".into(),
        ))
    }

    /// The keys of the mappings that lead to vnode `id` of `user`, and what they hold: for
    /// the transaction that forgets the vnode.
    pub(super) async fn mappings_of_vnode(
        &self,
        user: &str,
        id: &str,
    ) -> Result<(Vec<String>, Usage), StoreError> {
        let mut keys = Vec::new();
        for (public_port, mapping) in self.port_mappings().await? {
            if mapping.user == user && mapping.vnode_id() == id {
                keys.push(self.keys.port(public_port));
            }
        }
        let held = Usage {
            port_mappings: keys.len() as u32,
            ..Usage::default()
        };
        Ok((keys, held))
    }

    /// Loads every mapping and vnode phase at one revision and keeps them current from etcd
    /// watches until a watch fails; returns why. What `select` makes of them is published
    /// whenever it changes: only that is compared and cloned, not every vnode's phase.
    pub async fn follow_ports<T: PartialEq>(
        &self,
        select: impl Fn(&PortsState) -> T,
        publish: &watch::Sender<Option<T>>,
    ) -> StoreError {
        let (ports_prefix, status_prefix) = (self.keys.ports(), self.keys.vnode_statuses());
        let prefixed = || Some(GetOptions::new().with_prefix());
        let txn = Txn::new().and_then([
            TxnOp::get(ports_prefix.clone(), prefixed()),
            TxnOp::get(status_prefix.clone(), prefixed()),
        ]);
        let response = match self.client.kv_client().txn(txn).await {
            Ok(response) => response,
            Err(e) => return classify(e),
        };
        let revision = response.header().map_or(0, |h| h.revision());
        let mut state = PortsState::default();
        for op in response.op_responses() {
            let TxnOpResponse::Get(get) = op else {
                continue;
            };
            for kv in get.kvs() {
                state.apply(&ports_prefix, &status_prefix, kv.key(), Some(kv.value()));
            }
        }
        let mut watches = match self
            .watch_prefixes(&[&ports_prefix, &status_prefix], Some(revision))
            .await
        {
            Ok(watches) => watches,
            Err(e) => return e,
        };
        publish.send_replace(Some(select(&state)));
        loop {
            let response = match watches.next().await {
                Ok(response) => response,
                Err(e) => return e,
            };
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let value = (event.event_type() == EventType::Put).then(|| kv.value());
                state.apply(&ports_prefix, &status_prefix, kv.key(), value);
            }
            let selected = select(&state);
            publish.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&selected);
                if changed {
                    *current = Some(selected);
                }
                changed
            });
        }
    }
}

impl PortsState {
    /// One key's new value (`None`: deleted). Unreadable records are skipped with a warning:
    /// one bad key must not close everyone's ports.
    fn apply(&mut self, ports: &str, statuses: &str, key: &[u8], value: Option<&[u8]>) {
        let key = String::from_utf8_lossy(key);
        if let Some(port) = key.strip_prefix(ports) {
            let Ok(port) = port.parse::<u16>() else {
                tracing::warn!(key = %key, "not a port mapping key");
                return;
            };
            match value.map(|v| decode::<PortMapping>(&key, v)) {
                Some(Ok(mapping)) => {
                    self.mappings.insert(port, mapping);
                }
                Some(Err(e)) => tracing::warn!("port mappings: {e}"),
                None => {
                    self.mappings.remove(&port);
                }
            }
        } else if let Some(id) = key.strip_prefix(statuses) {
            match value.map(|v| decode::<VNodeStatus>(&key, v)) {
                Some(Ok(status)) => {
                    self.phases.insert(id.to_owned(), status.phase);
                }
                Some(Err(e)) => tracing::warn!("port mappings: {e}"),
                None => {
                    self.phases.remove(id);
                }
            }
        }
    }
}

/// A node being deleted takes no mapping, and a port of a node is mapped once.
fn check_mappable(
    new: &NewMapping<'_>,
    spec: &VNodeSpec,
    id: &str,
    mappings: &BTreeMap<u16, PortMapping>,
) -> Result<(), StoreError> {
    if spec.state == DesiredState::Deleted {
        return Err(StoreError::Conflict(format!(
            "node {} of cluster {} is being deleted",
            new.node, new.cluster
        )));
    }
    if let Some(same) = mappings
        .values()
        .find(|m| m.vnode_id() == id && m.port == new.port)
    {
        return Err(StoreError::Conflict(format!(
            "port {} of node {} is already mapped to public port {}",
            new.port, new.node, same.public_port
        )));
    }
    Ok(())
}

/// The public port asked for if it is free, else a free one of the range.
fn choose_public_port(new: &NewMapping<'_>, taken: &HashSet<u16>) -> Result<u16, StoreError> {
    match new.public_port {
        Some(port) if taken.contains(&port) => Err(StoreError::Conflict(format!(
            "public port {port} is taken: leave public_port out to get a free one"
        ))),
        Some(port) => Ok(port),
        None => ports::free_public_port(new.range, taken, |n| rand::random_range(0..n)).ok_or_else(
            || {
                StoreError::Exhausted(format!(
                    "every public port ({}) is mapped: ask an administrator to widen \
                     port_range",
                    new.range
                ))
            },
        ),
    }
}
