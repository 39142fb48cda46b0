//! The network keys on etcd: users' networks and blocks, assigned addresses, hosts' VXLAN
//! endpoints and users' vnode quotas. A vnode's address is assigned in the very transaction
//! that creates its spec, so no two vnodes ever share one, however many creates race.

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use ipnet::Ipv4Net;

use super::etcd::classify;
use super::{EtcdStore, StoreError, decode, encode};
use crate::model::network::{self, DEFAULT_VNODE_QUOTA, NetView, UserNet};
use crate::model::vnode::VNodeSpec;

/// How a new vnode gets its address.
pub struct AddressPlan {
    pub cluster_net: Ipv4Net,
    pub vni_base: u32,
}

impl From<network::IpamError> for StoreError {
    fn from(e: network::IpamError) -> Self {
        StoreError::Exhausted(e.to_string())
    }
}

impl EtcdStore {
    /// A user's vnode quota: the user's own when an administrator set one, else the group's,
    /// else the default (vnodes of users without an account, made with the admin primitive).
    pub async fn vnode_quota(&self, user: &str) -> Result<u32, StoreError> {
        if let Some(own) = self.get_json(&self.keys.quota_key(user)).await? {
            return Ok(own);
        }
        if let Some(account) = self.account(user).await?
            && let Some(group) = self.group(&account.group).await?
        {
            // Batch task nodes live on the same network beside the clusters' nodes.
            return Ok(group.quota.vnodes.saturating_add(group.batch.vnodes));
        }
        Ok(DEFAULT_VNODE_QUOTA)
    }

    pub async fn set_vnode_quota(&self, user: &str, vnodes: u32) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(self.keys.quota_key(user), encode(&vnodes), None)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    pub async fn user_net(&self, user: &str) -> Result<Option<UserNet>, StoreError> {
        self.get_json(&self.keys.network_user(user)).await
    }

    /// A user's network, vnode quota and assigned addresses (address → vnode id).
    pub async fn user_network(
        &self,
        user: &str,
    ) -> Result<
        (
            Option<UserNet>,
            u32,
            std::collections::BTreeMap<String, String>,
        ),
        StoreError,
    > {
        let net = self.user_net(user).await?;
        let quota = self.vnode_quota(user).await?;
        let addresses = self.address_claims(user).await?;
        Ok((net, quota, addresses))
    }

    /// A user's assigned addresses: address → vnode id.
    pub async fn address_claims(
        &self,
        user: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        self.get_text_map(&self.keys.network_addrs(user)).await
    }

    /// The user's network, made or grown to hold the quota. Blocks are claimed in a
    /// transaction on the block key and the user's record, so two users never share one.
    pub(super) async fn user_net_for(
        &self,
        user: &str,
        quota: u32,
        plan: &AddressPlan,
    ) -> Result<(UserNet, i64), StoreError> {
        let key = self.keys.network_user(user);
        let mut kv = self.client.kv_client();
        loop {
            let response = kv.get(key.clone(), None).await.map_err(classify)?;
            let current: Option<(UserNet, i64)> = match response.kvs().first() {
                Some(item) => Some((decode(&key, item.value())?, item.mod_revision())),
                None => None,
            };
            // The common case, a network that holds the quota: no need to list the blocks.
            if let Some((net, revision)) = current.as_ref().filter(|c| c.0.holds(quota)) {
                return Ok((net.clone(), *revision));
            }
            let taken: Vec<Ipv4Net> = self
                .keys_under(&self.keys.network_blocks())
                .await?
                .iter()
                .filter_map(|k| k.parse().ok())
                .collect();
            let Some(block) = network::grow(
                user,
                current.as_ref().map(|c| &c.0),
                quota,
                plan.cluster_net,
                &taken,
            )?
            else {
                return Ok(current.expect("grow adds a block to a missing network"));
            };
            let (mut net, guard) = match current {
                Some((net, revision)) => (
                    net,
                    Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                ),
                None => {
                    let slot = self.uid_slot(user).await?;
                    (
                        UserNet {
                            vni: network::vni(plan.vni_base, slot),
                            blocks: Vec::new(),
                        },
                        Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    )
                }
            };
            net.blocks.push(block);
            let block_key = format!("{}{block}", self.keys.network_blocks());
            let txn = Txn::new()
                .when([
                    guard,
                    Compare::create_revision(block_key.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(key.clone(), encode(&net), None),
                    TxnOp::put(block_key, user, None),
                ]);
            if kv.txn(txn).await.map_err(classify)?.succeeded() {
                tracing::info!(user, %block, vni = net.vni, "network block {block} (VNI {}) assigned to {user}", net.vni);
            }
        }
    }

    /// The key that claims `address` for a vnode of `user`.
    pub(super) fn address_key(&self, user: &str, address: Ipv4Addr) -> String {
        format!("{}{address}", self.keys.network_addrs(user))
    }

    /// Records the address other hosts send this host's VXLAN traffic to. Not bound to the
    /// worker's lease: a worker restart must not cut its vnodes off.
    pub async fn put_vtep(&self, host: &str, address: Ipv4Addr) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(
                format!("{}{host}", self.keys.network_vteps()),
                address.to_string(),
                None,
            )
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Everything the network of every host is made from. Unreadable specs are left out
    /// (their worker reports them).
    pub async fn net_view(&self) -> Result<NetView, StoreError> {
        let mut view = NetView::default();
        let prefix = self.keys.vnodes();
        for kv in self.get_prefix(&prefix).await?.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let host = key[prefix.len()..].split('/').next().unwrap_or_default();
            if let Ok(spec) = decode::<VNodeSpec>(&key, kv.value()) {
                view.specs.push((host.to_owned(), spec));
            }
        }
        let prefix = self.keys.network_users();
        for kv in self.get_prefix(&prefix).await?.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Ok(net) = decode::<UserNet>(&key, kv.value()) {
                view.users.insert(key[prefix.len()..].to_owned(), net);
            }
        }
        for kv in self.get_prefix(&self.keys.hosts()).await?.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Ok(host) = decode::<crate::model::host::HostRecord>(&key, kv.value()) {
                for address in &host.addresses {
                    if let Ok(net) = address.parse::<Ipv4Net>() {
                        view.host_addresses.insert(net.addr());
                        view.host_networks.insert(net.trunc());
                    } else if let Ok(address) = address.parse::<Ipv4Addr>() {
                        view.host_addresses.insert(address);
                    }
                }
            }
        }
        view.members = self.get_text_map(&self.keys.network_members()).await?;
        for group in self
            .list_json::<crate::model::quota::Group>(&self.keys.groups())
            .await?
        {
            view.group_egress.insert(group.name, group.egress_allow);
        }
        let prefix = self.keys.network_vteps();
        for kv in self.get_prefix(&prefix).await?.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Ok(address) = String::from_utf8_lossy(kv.value()).parse() {
                view.vteps.insert(key[prefix.len()..].to_owned(), address);
            }
        }
        Ok(view)
    }

    /// Every change under the cluster's prefix; callers skip the keys that are not theirs
    /// (the master's event stream).
    pub async fn watch_all(&self) -> Result<etcd_client::WatchStream, StoreError> {
        self.client
            .watch_client()
            .watch(self.keys.prefix(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(classify)
    }

    /// Every change of groups, networks and vnode specs: what a worker's users' networks are
    /// made from (a worker may not read all of the prefix: [`super::auth`]).
    pub(crate) async fn watch_network(&self) -> Result<super::etcd::Watches, StoreError> {
        let keys = &self.keys;
        let (groups, network, vnodes) = (
            keys.groups(),
            format!("{}network/", keys.prefix()),
            keys.vnodes(),
        );
        self.watch_prefixes(&[&groups, &network, &vnodes], None)
            .await
    }

    /// Whether a watched key is one the network is made from.
    pub fn is_network_key(&self, key: &[u8]) -> bool {
        let key = String::from_utf8_lossy(key);
        let Some(rest) = key.strip_prefix(self.keys.prefix()) else {
            return false;
        };
        rest.starts_with("vnodes/")
            || rest.starts_with("network/users/")
            || rest.starts_with("network/vteps/")
            || rest.starts_with("network/members/")
            || rest.starts_with("groups/")
    }

    /// The last path segment of every key under `prefix`.
    pub(super) async fn keys_under(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(classify)?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned())
            .collect())
    }
}
