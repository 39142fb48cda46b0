//! Admitting new vnodes, decided from one snapshot: the group's quota, the host each node
//! goes to and its address. Pure: the store reads the snapshot with the revision of every
//! key in it, asks [`plan`], and writes the plan in one transaction guarded by those
//! revisions; when something changed meanwhile the transaction fails whole and the store
//! plans again from a new snapshot. Moving a vnode checks its new host with [`room_for`].

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use crate::model::network::{self, IpamError, UserNet};
use crate::model::placement::{self, HostLoad, Overcommit, PlacementError};
use crate::model::quota::{self, NodeSize, Quota, QuotaError, Usage};
use crate::model::vnode::VNodeSpec;

/// Where new vnodes go.
#[derive(Debug, Clone)]
pub enum Hosts {
    /// Each on this host, unchecked: the administrator's single-vnode primitive names it.
    On(String),
    /// Wherever placement puts them among these hosts (their capacity, drain and the
    /// cluster's nodes on each); each host's allocation comes from the snapshot, not from
    /// `allocated` here.
    Placed {
        hosts: Vec<HostLoad>,
        overcommit: Overcommit,
    },
    /// Each on the host already chosen for it (a batch scheduler's decision), checked
    /// against each host's allocation in the snapshot: one `HostLoad` per spec.
    Chosen {
        hosts: Vec<HostLoad>,
        overcommit: Overcommit,
    },
}

/// What is asked: new vnodes of one user (without addresses), the quota they count
/// against (`None`: the administrator's primitive) and where they may go.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub user: &'a str,
    pub quota: Option<&'a Quota>,
    pub specs: Vec<VNodeSpec>,
    pub hosts: Hosts,
}

/// What the plan is made from, as read at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The user's usage.
    pub usage: Usage,
    /// The user's network, already grown to hold `vnode_quota` addresses.
    pub net: UserNet,
    pub vnode_quota: u32,
    /// Addresses of the user's network already assigned.
    pub taken: HashSet<Ipv4Addr>,
    /// Hosts' allocations (a host without vnodes may be absent).
    pub allocations: BTreeMap<String, Usage>,
}

/// What to write: the user's usage after, each new vnode on its host with its address, and
/// the allocation after of each host that receives one.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub usage: Usage,
    pub nodes: Vec<(String, VNodeSpec)>,
    pub allocations: BTreeMap<String, Usage>,
}

/// Why the vnodes cannot be admitted, checked in this order: the quota's message is the
/// more useful one when several hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error(transparent)]
    NoRoom(#[from] PlacementError),
    #[error(transparent)]
    Addresses(#[from] IpamError),
    #[error("host {0} filled up meanwhile: try again")]
    HostFull(String),
}

/// What one vnode takes from its user's quota and its host.
pub fn spec_usage(spec: &VNodeSpec) -> Usage {
    Usage::of_node(&NodeSize {
        cpu_millis: spec.cpu_millis,
        memory_bytes: spec.memory_bytes,
        disk_bytes: spec.disk_bytes,
    })
}

/// Admits `request` over `snapshot`: quota, then hosts, then addresses (`pick(n)` chooses
/// among `n` free addresses, so that concurrent creates of one user rarely collide).
pub fn plan(
    request: &Request<'_>,
    snapshot: &Snapshot,
    mut pick: impl FnMut(usize) -> usize,
) -> Result<Plan, Refusal> {
    let added = request
        .specs
        .iter()
        .fold(Usage::default(), |sum, s| sum.plus(&spec_usage(s)));
    let usage = match request.quota {
        Some(limit) => quota::admit(limit, &snapshot.usage, &added)?,
        None => snapshot.usage.plus(&added),
    };
    let hosts = choose_hosts(request, snapshot)?;
    let mut taken = snapshot.taken.clone();
    let mut nodes = Vec::with_capacity(request.specs.len());
    let mut allocations = BTreeMap::new();
    for (host, spec) in hosts.into_iter().zip(&request.specs) {
        let address = network::free_address(
            request.user,
            &snapshot.net,
            snapshot.vnode_quota,
            &taken,
            &mut pick,
        )?;
        taken.insert(address);
        let allocation: &mut Usage = allocations
            .entry(host.clone())
            .or_insert_with(|| snapshot.allocations.get(&host).copied().unwrap_or_default());
        *allocation = allocation.plus(&spec_usage(spec));
        let mut spec = spec.clone();
        spec.address = Some(address);
        nodes.push((host, spec));
    }
    if let Hosts::Chosen { hosts, overcommit } = &request.hosts {
        for (name, after) in &allocations {
            if let Some(load) = hosts.iter().find(|h| &h.name == name) {
                room_for(load, *after, *overcommit)?;
            }
        }
    }
    Ok(Plan {
        usage,
        nodes,
        allocations,
    })
}

/// The host of each spec, in order.
fn choose_hosts(request: &Request<'_>, snapshot: &Snapshot) -> Result<Vec<String>, Refusal> {
    match &request.hosts {
        Hosts::On(host) => Ok(vec![host.clone(); request.specs.len()]),
        Hosts::Chosen { hosts, .. } => Ok(hosts.iter().map(|h| h.name.clone()).collect()),
        Hosts::Placed { hosts, overcommit } => {
            let loads: Vec<HostLoad> = hosts
                .iter()
                .map(|h| HostLoad {
                    allocated: snapshot
                        .allocations
                        .get(&h.name)
                        .copied()
                        .unwrap_or_default(),
                    ..h.clone()
                })
                .collect();
            let sizes: Vec<NodeSize> = request.specs.iter().map(node_size).collect();
            let chosen = placement::place(&loads, &sizes, *overcommit)?;
            Ok(chosen.into_iter().map(|i| loads[i].name.clone()).collect())
        }
    }
}

fn node_size(spec: &VNodeSpec) -> NodeSize {
    NodeSize {
        cpu_millis: spec.cpu_millis,
        memory_bytes: spec.memory_bytes,
        disk_bytes: spec.disk_bytes,
    }
}

/// Whether `host` still has room for a vnode that would bring its allocation to `after`
/// (a move's target: draining or not, it was chosen for this vnode).
pub fn room_for(host: &HostLoad, after: Usage, overcommit: Overcommit) -> Result<(), Refusal> {
    let load = HostLoad {
        allocated: after,
        draining: false,
        ..host.clone()
    };
    if placement::within(&load, overcommit) {
        Ok(())
    } else {
        Err(Refusal::HostFull(host.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vnode::DesiredState;

    const GIB: u64 = 1 << 30;

    fn spec(index: u32) -> VNodeSpec {
        VNodeSpec {
            id: format!("alice-c1-{index}"),
            user: "alice".into(),
            cluster: "c1".into(),
            index,
            image: "base".into(),
            cpu_millis: 1000,
            memory_bytes: GIB,
            disk_bytes: 4 * GIB,
            tasks: 512,
            state: DesiredState::Running,
            address: None,
            handoff: None,
            task: None,
        }
    }

    fn host(name: &str, cpus: u64) -> HostLoad {
        HostLoad {
            name: name.into(),
            cpu_millis: cpus * 1000,
            memory_bytes: 64 * GIB,
            disk_bytes: 1024 * GIB,
            allocated: Usage::default(),
            draining: false,
            cluster_nodes: 0,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            net: UserNet {
                vni: 4096,
                blocks: vec!["10.20.0.0/28".parse().unwrap()],
            },
            vnode_quota: 8,
            usage: Usage::default(),
            taken: HashSet::new(),
            allocations: BTreeMap::new(),
        }
    }

    fn quota(vnodes: u32) -> Quota {
        Quota {
            cpu_millis: 64_000,
            memory_bytes: 64 * GIB,
            disk_bytes: 1024 * GIB,
            vnodes,
            images: 0,
            image_bytes: 0,
            port_mappings: 0,
            idle_secs: 0,
        }
    }

    fn exact() -> Overcommit {
        Overcommit {
            cpu: 1.0,
            memory: 1.0,
            disk: 1.0,
        }
    }

    fn placed(hosts: Vec<HostLoad>) -> Hosts {
        Hosts::Placed {
            hosts,
            overcommit: exact(),
        }
    }

    #[test]
    fn nodes_are_spread_addressed_and_counted() {
        let limit = quota(4);
        let request = Request {
            user: "alice",
            quota: Some(&limit),
            specs: vec![spec(0), spec(1)],
            hosts: placed(vec![host("h1", 4), host("h2", 4)]),
        };
        let plan = plan(&request, &snapshot(), |_| 0).unwrap();
        let hosts: Vec<&str> = plan.nodes.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hosts, ["h1", "h2"]);
        let addresses: HashSet<_> = plan.nodes.iter().map(|(_, s)| s.address).collect();
        assert_eq!(addresses.len(), 2, "{:?}", plan.nodes);
        assert!(addresses.iter().all(Option::is_some));
        assert_eq!(plan.usage.vnodes, 2);
        assert_eq!(plan.usage.cpu_millis, 2000);
        assert_eq!(plan.allocations["h1"].cpu_millis, 1000);
        assert_eq!(plan.allocations["h2"].memory_bytes, GIB);
    }

    #[test]
    fn the_quota_is_checked_before_the_hosts() {
        let limit = quota(1);
        let request = Request {
            user: "alice",
            quota: Some(&limit),
            specs: vec![spec(0), spec(1)],
            // No host at all: the quota still answers first.
            hosts: placed(Vec::new()),
        };
        let refusal = plan(&request, &snapshot(), |_| 0).unwrap_err();
        assert!(matches!(refusal, Refusal::Quota(_)), "{refusal}");
        assert!(refusal.to_string().contains("vnodes"), "{refusal}");
    }

    #[test]
    fn placement_counts_the_snapshots_allocations_not_the_hosts_copy() {
        let mut full = host("h1", 2);
        // A stale copy says h1 is empty; the snapshot says it is full.
        full.allocated = Usage::default();
        let mut snap = snapshot();
        snap.allocations.insert(
            "h1".into(),
            Usage {
                cpu_millis: 2000,
                ..Usage::default()
            },
        );
        let request = Request {
            user: "alice",
            quota: None,
            specs: vec![spec(0)],
            hosts: placed(vec![full, host("h2", 2)]),
        };
        let plan = plan(&request, &snap, |_| 0).unwrap();
        assert_eq!(plan.nodes[0].0, "h2");
        assert_eq!(plan.allocations.len(), 1);

        snap.allocations.insert(
            "h2".into(),
            Usage {
                cpu_millis: 2000,
                ..Usage::default()
            },
        );
        let refusal = super::plan(&request, &snap, |_| 0).unwrap_err();
        assert!(matches!(refusal, Refusal::NoRoom(_)), "{refusal}");
    }

    #[test]
    fn addresses_already_taken_are_never_given_and_a_full_network_refuses() {
        let mut snap = snapshot();
        snap.vnode_quota = 3;
        let first: Vec<Ipv4Addr> = snap.net.assignable().take(2).collect();
        snap.taken.extend(first.iter().copied());
        let request = Request {
            user: "alice",
            quota: None,
            specs: vec![spec(0)],
            hosts: Hosts::On("h1".into()),
        };
        let plan = plan(&request, &snap, |_| 0).unwrap();
        let given = plan.nodes[0].1.address.unwrap();
        assert!(!first.contains(&given), "{given} was taken");

        let two = Request {
            specs: vec![spec(0), spec(1)],
            ..request
        };
        let refusal = super::plan(&two, &snap, |_| 0).unwrap_err();
        assert!(matches!(refusal, Refusal::Addresses(_)), "{refusal}");
    }

    #[test]
    fn a_named_host_is_taken_unchecked_and_without_a_quota() {
        let mut snap = snapshot();
        snap.usage = Usage {
            vnodes: 1000,
            ..Usage::default()
        };
        let request = Request {
            user: "alice",
            quota: None,
            specs: vec![spec(0)],
            hosts: Hosts::On("h9".into()),
        };
        let plan = plan(&request, &snap, |_| 0).unwrap();
        assert_eq!(plan.nodes[0].0, "h9");
        assert_eq!(plan.usage.vnodes, 1001);
    }

    #[test]
    fn a_moves_target_needs_room_even_when_draining() {
        let mut target = host("h2", 2);
        target.draining = true;
        let fits = Usage {
            cpu_millis: 2000,
            ..Usage::default()
        };
        assert_eq!(room_for(&target, fits, exact()), Ok(()));
        let over = Usage {
            cpu_millis: 2001,
            ..Usage::default()
        };
        assert_eq!(
            room_for(&target, over, exact()),
            Err(Refusal::HostFull("h2".into()))
        );
    }
}
