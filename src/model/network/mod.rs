//! Per-user networks, as pure decisions: address blocks and addresses (IPAM), device names
//! and MAC addresses, what one host must carry (bridges, VXLAN peers, veths), the hosts file
//! a vnode reads and the nftables ruleset that isolates users.
//!
//! Every user has one L2 network spanning the hosts that run the user's vnodes: a bridge
//! per host joined by a VXLAN (VNI per user). Addresses come from `cluster_net` in per-user
//! blocks sized by the user's vnode quota; a vnode's address carries the prefix of the whole
//! `cluster_net`, so all the user's blocks are on-link and growing the quota never touches
//! running vnodes. The gateway (the first host address of the user's first block) sits on
//! the bridge of every host with the same MAC; its ARP never crosses the VXLAN.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::egress::EgressRule;
use super::vnode::{DesiredState, VNodeSpec, node_hostname};

mod firewall;

pub use firewall::{FirewallContext, TABLE, ruleset, ruleset_additions};

/// Bytes a VXLAN over IPv4 adds to every frame (outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Smallest block handed to a user: a /29 (8 addresses, 5 or 6 usable).
pub const MAX_BLOCK_PREFIX: u8 = 29;
/// A user's vnode quota until quotas are configurable per group.
pub const DEFAULT_VNODE_QUOTA: u32 = 16;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error(
        "the address pool {pool} has no free block of {size} addresses left for user {user} (blocks in use: {used})"
    )]
    PoolExhausted {
        pool: Ipv4Net,
        size: u32,
        user: String,
        used: usize,
    },
    #[error(
        "user {user} has used all {capacity} addresses of their network (vnode quota {quota}); delete a vnode or raise the quota"
    )]
    UserFull {
        user: String,
        capacity: u32,
        quota: u32,
    },
}

/// A user's network: its VNI and address blocks, kept at `network/users/<user>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserNet {
    pub vni: u32,
    /// Disjoint blocks of `cluster_net`; the first one holds the gateway.
    pub blocks: Vec<Ipv4Net>,
}

impl UserNet {
    /// The user's gateway, the same on every host.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.blocks.first().map(|b| next(b.network()))
    }

    /// Addresses vnodes may get, in order: every block without its network, broadcast
    /// and gateway addresses.
    pub fn assignable(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let gateway = self.gateway();
        self.blocks
            .iter()
            .flat_map(|b| b.hosts())
            .filter(move |a| Some(*a) != gateway)
    }

    pub fn capacity(&self) -> u32 {
        self.blocks.iter().map(|b| block_capacity(*b)).sum::<u32>()
            - u32::from(!self.blocks.is_empty())
    }

    /// Whether the blocks hold `quota` vnodes (no block to add).
    pub fn holds(&self, quota: u32) -> bool {
        !self.blocks.is_empty() && self.capacity() >= quota
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        self.blocks.iter().any(|b| b.contains(&address))
    }
}

fn next(a: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a).wrapping_add(1))
}

/// Host addresses of a block (network and broadcast excluded).
fn block_capacity(block: Ipv4Net) -> u32 {
    (1u32 << (32 - block.prefix_len())) - 2
}

/// The prefix of the smallest block with at least `needed` host addresses.
pub fn block_prefix(needed: u32) -> u8 {
    let mut prefix = MAX_BLOCK_PREFIX;
    while prefix > 1 && (1u64 << (32 - prefix)) - 2 < u64::from(needed) {
        prefix -= 1;
    }
    prefix
}

/// The block to add to `net` (None for a new user) so that it holds `quota` vnodes, if it
/// holds fewer now. Blocks are aligned and taken lowest first from `pool`.
pub fn grow(
    user: &str,
    net: Option<&UserNet>,
    quota: u32,
    pool: Ipv4Net,
    taken: &[Ipv4Net],
) -> Result<Option<Ipv4Net>, IpamError> {
    if net.is_some_and(|n| n.holds(quota)) {
        return Ok(None);
    }
    let capacity = net.map_or(0, |n| n.capacity());
    // A first block also holds the gateway.
    let first = net.is_none_or(|n| n.blocks.is_empty());
    let needed = quota.saturating_sub(capacity).max(1) + u32::from(first);
    let prefix = block_prefix(needed);
    let exhausted = || IpamError::PoolExhausted {
        pool,
        size: 1u32.checked_shl(32 - u32::from(prefix)).unwrap_or(u32::MAX),
        user: user.to_owned(),
        used: taken.len(),
    };
    if prefix < pool.prefix_len() {
        return Err(exhausted());
    }
    let candidates = pool.subnets(prefix).map_err(|_| exhausted())?;
    for candidate in candidates {
        if !taken
            .iter()
            .any(|t| t.contains(&candidate.network()) || candidate.contains(&t.network()))
        {
            return Ok(Some(candidate));
        }
    }
    Err(exhausted())
}

/// A free address of the user's network, chosen by `pick` among the free ones (a random
/// pick keeps concurrent creates from all racing for the same address).
pub fn free_address(
    user: &str,
    net: &UserNet,
    quota: u32,
    used: &HashSet<Ipv4Addr>,
    pick: impl FnOnce(usize) -> usize,
) -> Result<Ipv4Addr, IpamError> {
    let free: Vec<Ipv4Addr> = net.assignable().filter(|a| !used.contains(a)).collect();
    if free.is_empty() || used.len() as u32 >= quota {
        return Err(IpamError::UserFull {
            user: user.to_owned(),
            capacity: net.capacity(),
            quota,
        });
    }
    Ok(free[pick(free.len()) % free.len()])
}

/// The VNI of a user: one per uid slot, so unique as long as slots are.
pub fn vni(vni_base: u32, uid_slot: u32) -> u32 {
    vni_base + uid_slot
}

/// Device names (at most 15 bytes): `dkb<vni>` bridge, `dkx<vni>` VXLAN, `dkv<hash>` the
/// host end of a vnode's veth. Docklet owns every device whose name starts with `dk`+b/x/v.
pub fn bridge_name(vni: u32) -> String {
    format!("dkb{vni}")
}

pub fn vxlan_name(vni: u32) -> String {
    format!("dkx{vni}")
}

pub fn veth_name(vnode_id: &str) -> String {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in vnode_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("dkv{:011x}", hash >> 20)
}

/// The VNI a Docklet device name carries, if it is one of ours.
pub fn vni_of_device(name: &str) -> Option<u32> {
    let digits = name
        .strip_prefix("dkb")
        .or_else(|| name.strip_prefix("dkx"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Locally administered MAC derived from an address: vnodes and gateways keep theirs across
/// restarts and hosts, so ARP caches never go stale.
pub fn mac_for(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0xdc, a, b, c, d]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One vnode's place on this host's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VNodeNet {
    pub id: String,
    pub veth: String,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
}

/// What one user needs on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPlan {
    pub user: String,
    pub vni: u32,
    pub gateway: Ipv4Addr,
    pub blocks: Vec<Ipv4Net>,
    /// VXLAN endpoints of the other hosts running this user's vnodes.
    pub remotes: BTreeSet<Ipv4Addr>,
    pub vnodes: Vec<VNodeNet>,
}

impl UserPlan {
    pub fn bridge(&self) -> String {
        bridge_name(self.vni)
    }
    pub fn vxlan(&self) -> String {
        vxlan_name(self.vni)
    }
}

/// Everything the data path of one host must be: one entry per user with a vnode meant to
/// run here. A user absent from the plan has no devices on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPlan {
    pub users: BTreeMap<String, UserPlan>,
}

/// The cluster as the network sees it.
#[derive(Debug, Clone, Default)]
pub struct NetView {
    /// `(host, spec)` of every vnode.
    pub specs: Vec<(String, VNodeSpec)>,
    pub users: BTreeMap<String, UserNet>,
    /// VXLAN endpoint (management address) of every host that ever ran a worker.
    pub vteps: BTreeMap<String, Ipv4Addr>,
    /// Every IPv4 address registered hosts report on their network device.
    pub host_addresses: BTreeSet<Ipv4Addr>,
    /// The networks of those addresses: the site's, closed to vnodes.
    pub host_networks: BTreeSet<Ipv4Net>,
    /// Each account's group (`network/members/`) and each group's egress allowances.
    pub members: BTreeMap<String, String>,
    pub group_egress: BTreeMap<String, Vec<EgressRule>>,
}

impl NetView {
    /// The extra destinations of each user who has vnodes here, by their group.
    pub fn user_allow(&self, plan: &HostPlan) -> BTreeMap<String, Vec<EgressRule>> {
        plan.users
            .keys()
            .filter_map(|user| {
                let rules = self.group_egress.get(self.members.get(user)?)?;
                (!rules.is_empty()).then(|| (user.clone(), rules.clone()))
            })
            .collect()
    }
}

/// A vnode takes part in the network while it is meant to run.
fn carried(spec: &VNodeSpec) -> bool {
    spec.state == DesiredState::Running && spec.address.is_some()
}

/// The plan of `host` from the cluster's view.
pub fn plan(view: &NetView, host: &str) -> HostPlan {
    let mut users: BTreeMap<String, UserPlan> = BTreeMap::new();
    for (on, spec) in &view.specs {
        if on != host || !carried(spec) {
            continue;
        }
        let (Some(net), Some(address)) = (view.users.get(&spec.user), spec.address) else {
            continue;
        };
        let Some(gateway) = net.gateway() else {
            continue;
        };
        let entry = users.entry(spec.user.clone()).or_insert_with(|| UserPlan {
            user: spec.user.clone(),
            vni: net.vni,
            gateway,
            blocks: net.blocks.clone(),
            remotes: BTreeSet::new(),
            vnodes: Vec::new(),
        });
        entry.vnodes.push(VNodeNet {
            id: spec.id.clone(),
            veth: veth_name(&spec.id),
            address,
            mac: mac_for(address),
        });
    }
    let local_vtep = view.vteps.get(host);
    for (on, spec) in &view.specs {
        if on == host || !carried(spec) {
            continue;
        }
        if let (Some(plan), Some(vtep)) = (users.get_mut(&spec.user), view.vteps.get(on))
            && Some(vtep) != local_vtep
        {
            plan.remotes.insert(*vtep);
        }
    }
    for plan in users.values_mut() {
        plan.vnodes.sort_by(|a, b| a.id.cmp(&b.id));
    }
    HostPlan { users }
}

/// `/etc/hosts` of the vnodes of one vcluster: every node of it by `host-N` and
/// `host-N.<cluster>`, whatever host it runs on or whether it runs. `claimed` adds nodes the
/// view does not know yet (see [`claimed_nodes`]).
pub fn hosts_file(
    view: &NetView,
    user: &str,
    cluster: &str,
    claimed: &[(u32, Ipv4Addr)],
) -> String {
    let mut nodes: Vec<(u32, Ipv4Addr)> = view
        .specs
        .iter()
        .filter(|(_, s)| s.user == user && s.cluster == cluster && s.state != DesiredState::Deleted)
        .filter_map(|(_, s)| s.address.map(|a| (s.index, a)))
        .chain(claimed.iter().copied())
        .collect();
    nodes.sort();
    nodes.dedup();
    let mut out = String::from(
        "# Written by Docklet: the nodes of this vcluster. Changes here are overwritten.\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for (index, address) in nodes {
        let name = node_hostname(cluster, index);
        let _ = writeln!(out, "{address}\t{name} {name}.{cluster}");
    }
    out
}

/// Nodes of a cluster that hold an address (`claims`: address → vnode id, written in the
/// transaction that created them) but that `view` does not have yet: a vnode starting right
/// after its siblings were created learns them from its user's claims, one small read,
/// rather than waiting for the next pass to rewrite its hosts file.
pub fn claimed_nodes(
    view: &NetView,
    user: &str,
    cluster: &str,
    claims: &BTreeMap<String, String>,
) -> Vec<(u32, Ipv4Addr)> {
    let prefix = format!("{user}-{cluster}-");
    claims
        .iter()
        .filter(|(_, id)| !view.specs.iter().any(|(_, s)| &s.id == *id))
        .filter_map(|(address, id)| {
            let index = id.strip_prefix(&prefix)?;
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((index.parse().ok()?, address.parse().ok()?))
        })
        .collect()
}

/// `cluster_net` must not overlap any network this host is on or routes to (other than
/// Docklet's own routes): `routes` are `(destination, device)` of the main table, `addresses`
/// the host's own networks.
pub fn check_cluster_net(
    cluster_net: Ipv4Net,
    addresses: &[(Ipv4Net, String)],
    routes: &[(Ipv4Net, String)],
) -> Result<(), String> {
    for (net, device) in addresses.iter().chain(routes) {
        if device.starts_with("dkb") || net.prefix_len() == 0 {
            continue;
        }
        if net.contains(&cluster_net.network()) || cluster_net.contains(&net.network()) {
            return Err(format!(
                "cluster_net {cluster_net} overlaps {net} on device {device} of this host; choose a range no host uses"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vnode::tests::spec;

    pub(super) fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    pub(super) fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_are_sized_by_quota_and_grow() {
        assert_eq!(block_prefix(1), 29);
        assert_eq!(block_prefix(6), 29);
        assert_eq!(block_prefix(7), 28);
        assert_eq!(block_prefix(17), 27);
        let pool = net("172.16.0.0/16");
        // Quota 4: one /29 (gateway + 5 vnodes).
        let first = grow("alice", None, 4, pool, &[]).unwrap().unwrap();
        assert_eq!(first, net("172.16.0.0/29"));
        let mut alice = UserNet {
            vni: 7,
            blocks: vec![first],
        };
        assert_eq!(alice.gateway(), Some(ip("172.16.0.1")));
        assert_eq!(alice.capacity(), 5);
        assert_eq!(
            grow("alice", Some(&alice), 5, pool, &[first]).unwrap(),
            None
        );
        // Bob takes the next free block; alice's growth skips it.
        let bob = grow("bob", None, 13, pool, &[first]).unwrap().unwrap();
        assert_eq!(bob, net("172.16.0.16/28"));
        let more = grow("alice", Some(&alice), 10, pool, &[first, bob])
            .unwrap()
            .unwrap();
        assert_eq!(more, net("172.16.0.8/29"));
        alice.blocks.push(more);
        assert_eq!(alice.capacity(), 11);
        assert!(alice.assignable().all(|a| a != ip("172.16.0.1")));
        assert!(alice.assignable().any(|a| a == ip("172.16.0.9")));
        assert!(!alice.assignable().any(|a| a == ip("172.16.0.15")));
    }

    #[test]
    fn an_exhausted_pool_is_a_clear_error() {
        let pool = net("10.0.0.0/28");
        let a = grow("a", None, 5, pool, &[]).unwrap().unwrap();
        let b = grow("b", None, 5, pool, &[a]).unwrap().unwrap();
        let err = grow("c", None, 5, pool, &[a, b]).unwrap_err();
        assert!(
            err.to_string().contains("10.0.0.0/28 has no free block"),
            "{err}"
        );
        // A quota larger than the pool: refused, not truncated.
        assert!(grow("d", None, 100, pool, &[]).is_err());
    }

    #[test]
    fn addresses_are_free_and_within_the_quota() {
        let alice = UserNet {
            vni: 1,
            blocks: vec![net("172.16.0.0/29")],
        };
        let mut used = HashSet::new();
        for _ in 0..5 {
            let a = free_address("alice", &alice, 5, &used, |n| n - 1).unwrap();
            assert!(alice.contains(a) && a != ip("172.16.0.1"));
            assert!(used.insert(a), "{a} given twice");
        }
        let err = free_address("alice", &alice, 5, &used, |_| 0).unwrap_err();
        assert!(err.to_string().contains("used all 5 addresses"), "{err}");
    }

    #[test]
    fn names_fit_and_belong_to_docklet() {
        let veth = veth_name("alice-c1-0");
        assert!(veth.len() <= 15 && veth.starts_with("dkv"), "{veth}");
        assert_eq!(veth, veth_name("alice-c1-0"));
        assert_ne!(veth, veth_name("alice-c1-1"));
        assert_eq!(bridge_name(1_000_003), "dkb1000003");
        assert!(vxlan_name(MAX_VNI).len() <= 15);
        assert_eq!(vni_of_device("dkx1000003"), Some(1_000_003));
        assert_eq!(vni_of_device("dkb12"), Some(12));
        assert_eq!(vni_of_device("dkv12"), None);
        assert_eq!(vni_of_device("vxlan0"), None);
        assert_eq!(format_mac(&mac_for(ip("172.16.0.2"))), "02:dc:ac:10:00:02");
    }

    pub(super) fn node(
        host: &str,
        id: &str,
        user: &str,
        index: u32,
        addr: &str,
    ) -> (String, VNodeSpec) {
        let mut s = spec();
        s.id = id.into();
        s.user = user.into();
        s.cluster = "c1".into();
        s.index = index;
        s.address = Some(ip(addr));
        (host.into(), s)
    }

    pub(super) fn view() -> NetView {
        let mut v = NetView {
            specs: vec![
                node("tb1", "a0", "alice", 0, "172.16.0.2"),
                node("tb2", "a1", "alice", 1, "172.16.0.3"),
                node("tb3", "a2", "alice", 2, "172.16.0.4"),
                node("tb1", "b0", "bob", 0, "172.16.0.10"),
            ],
            ..NetView::default()
        };
        v.specs[2].1.state = DesiredState::Stopped;
        v.users.insert(
            "alice".into(),
            UserNet {
                vni: 100,
                blocks: vec![net("172.16.0.0/29")],
            },
        );
        v.users.insert(
            "bob".into(),
            UserNet {
                vni: 101,
                blocks: vec![net("172.16.0.8/29")],
            },
        );
        for (h, a) in [
            ("tb1", "10.0.0.11"),
            ("tb2", "10.0.0.12"),
            ("tb3", "10.0.0.13"),
        ] {
            v.vteps.insert(h.into(), ip(a));
        }
        v
    }

    #[test]
    fn a_host_carries_the_users_meant_to_run_there() {
        let v = view();
        let tb1 = plan(&v, "tb1");
        assert_eq!(tb1.users.keys().collect::<Vec<_>>(), ["alice", "bob"]);
        let alice = &tb1.users["alice"];
        assert_eq!(alice.bridge(), "dkb100");
        assert_eq!(alice.gateway, ip("172.16.0.1"));
        // tb3's vnode is stopped: no VXLAN peer there.
        assert_eq!(alice.remotes, BTreeSet::from([ip("10.0.0.12")]));
        assert_eq!(alice.vnodes.len(), 1);
        assert!(tb1.users["bob"].remotes.is_empty());
        // tb3 carries nobody: its devices go.
        assert!(plan(&v, "tb3").users.is_empty());
        assert_eq!(
            plan(&v, "tb2").users["alice"].remotes,
            BTreeSet::from([ip("10.0.0.11")])
        );
    }

    #[test]
    fn hosts_file_names_every_node_of_the_cluster() {
        let v = view();
        let text = hosts_file(&v, "alice", "c1", &[]);
        assert!(text.contains("172.16.0.2\thost-0 host-0.c1\n"), "{text}");
        assert!(text.contains("172.16.0.4\thost-2 host-2.c1\n"), "{text}");
        assert!(!text.contains("172.16.0.10"), "bob's node leaked: {text}");
        assert!(text.contains("127.0.0.1\tlocalhost"));
    }

    #[test]
    fn nodes_created_after_the_view_come_from_the_address_claims() {
        let v = view();
        let known = v
            .specs
            .iter()
            .find(|(_, s)| s.user == "alice" && s.cluster == "c1")
            .map(|(_, s)| (s.address.unwrap().to_string(), s.id.clone()))
            .unwrap();
        let claims = BTreeMap::from([
            known,
            ("172.16.0.7".to_owned(), "alice-c1-7".to_owned()),
            // Another cluster whose name starts like this one, and a malformed id.
            ("172.16.0.8".to_owned(), "alice-c1-x-0".to_owned()),
            ("172.16.0.9".to_owned(), "alice-c1-".to_owned()),
        ]);
        let claimed = claimed_nodes(&v, "alice", "c1", &claims);
        assert_eq!(claimed, vec![(7, ip("172.16.0.7"))]);
        let text = hosts_file(&v, "alice", "c1", &claimed);
        assert!(text.contains("172.16.0.7\thost-7 host-7.c1\n"), "{text}");
        assert!(text.contains("172.16.0.2\thost-0 host-0.c1\n"), "{text}");
    }

    #[test]
    fn cluster_net_must_not_overlap_host_networks() {
        let pool = net("172.16.0.0/16");
        let eth = |n: &str| (net(n), "eth0".to_string());
        assert!(check_cluster_net(pool, &[eth("10.213.0.0/24")], &[eth("0.0.0.0/0")]).is_ok());
        let err = check_cluster_net(pool, &[eth("172.16.5.0/24")], &[]).unwrap_err();
        assert!(
            err.contains("overlaps 172.16.5.0/24 on device eth0"),
            "{err}"
        );
        assert!(check_cluster_net(pool, &[], &[eth("172.0.0.0/8")]).is_err());
        // Docklet's own routes to user blocks are no overlap.
        let ours = (net("172.16.0.0/29"), "dkb100".to_string());
        assert!(check_cluster_net(pool, &[], &[ours]).is_ok());
    }
}
