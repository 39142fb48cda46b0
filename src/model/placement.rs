//! The scheduler: which host each new vnode of a cluster goes to. Pure, so the master can run
//! it on a snapshot of the hosts and write the result in one etcd transaction.

use serde::{Deserialize, Serialize};

use crate::model::host::human_bytes;
use crate::model::quota::{NodeSize, Usage, human_cores};

/// One host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLoad {
    pub name: String,
    /// Capacity: cpus × 1000.
    pub cpu_millis: u64,
    /// Capacity.
    pub memory_bytes: u64,
    /// Capacity for vnode disks.
    pub disk_bytes: u64,
    /// Sum of the vnodes already placed here.
    pub allocated: Usage,
    /// Takes no new vnodes.
    pub draining: bool,
    /// Nodes of the cluster being placed that already run here.
    pub cluster_nodes: u32,
}

impl HostLoad {
    fn capacity(&self) -> [u64; 3] {
        [self.cpu_millis, self.memory_bytes, self.disk_bytes]
    }
}

/// How far allocations may exceed capacity: 1.0 = never beyond. CPU is commonly
/// overcommitted (idle vnodes leave it unused), memory and disk little or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overcommit {
    pub cpu: f64,
    pub memory: f64,
    pub disk: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            cpu: 4.0,
            memory: 1.0,
            disk: 1.0,
        }
    }
}

impl Overcommit {
    /// The most a host of `capacity` may hold of each resource. Rounded, not truncated:
    /// capacity × ratio is rarely exact in binary floating point, and 1000 × 0.7 must stay 700.
    /// f64 also keeps huge capacities from overflowing (the cast saturates).
    fn limits(&self, capacity: [u64; 3]) -> [u64; 3] {
        let ratios = [self.cpu, self.memory, self.disk];
        std::array::from_fn(|r| (capacity[r] as f64 * ratios[r]).round() as u64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no host is up")]
    NoHosts,
    /// `detail` says which node failed, the most any host could still take and how many hosts
    /// are draining.
    #[error("no host has room for a node of {wanted}: {detail}")]
    NoRoom { wanted: String, detail: String },
}

fn amounts(usage: &Usage) -> [u64; 3] {
    [usage.cpu_millis, usage.memory_bytes, usage.disk_bytes]
}

/// The largest of the allocation fractions: how full the host's fullest resource is.
fn load(capacity: [u64; 3], allocated: [u64; 3]) -> f64 {
    (0..3)
        .map(|r| match capacity[r] {
            // Nothing fits on a zero capacity but zero, which loads it by nothing.
            0 => 0.0,
            cap => allocated[r] as f64 / cap as f64,
        })
        .fold(0.0, f64::max)
}

/// A host that can take the node, and how good a choice it is.
struct Candidate {
    index: usize,
    /// Nodes of this cluster on the host, counting those placed in this call.
    cluster_nodes: u32,
    /// See [`load`], after placing the node.
    load: f64,
}

impl Candidate {
    /// Fewer nodes of the cluster first (spreading), then the less loaded host, then the
    /// name, so that equal hosts are chosen the same way every time.
    fn better_than(&self, other: &Candidate, hosts: &[HostLoad]) -> bool {
        self.cluster_nodes
            .cmp(&other.cluster_nodes)
            .then(self.load.total_cmp(&other.load))
            .then_with(|| hosts[self.index].name.cmp(&hosts[other.index].name))
            .is_lt()
    }
}

/// Chooses a host for each node, in order; returns indices into `hosts`.
///
/// Each node goes to an eligible host (not draining, and within capacity × overcommit for cpu,
/// memory and disk, counting nodes placed earlier in this call) with the fewest nodes of this
/// cluster; ties go to the least loaded host after placing, then to the name. All or nothing:
/// if any node cannot be placed, nothing is.
///
/// O(hosts) per node; the only allocations are two vectors of `hosts.len()`.
pub fn place(
    hosts: &[HostLoad],
    nodes: &[NodeSize],
    overcommit: Overcommit,
) -> Result<Vec<usize>, PlacementError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    if hosts.is_empty() {
        return Err(PlacementError::NoHosts);
    }
    let limits: Vec<[u64; 3]> = hosts
        .iter()
        .map(|h| overcommit.limits(h.capacity()))
        .collect();
    // What this call has added to each host so far; `vnodes` counts the cluster's new nodes.
    let mut placed = vec![Usage::default(); hosts.len()];
    let mut chosen = Vec::with_capacity(nodes.len());
    for (n, size) in nodes.iter().enumerate() {
        let add = Usage::of_node(size);
        let mut best: Option<Candidate> = None;
        for (i, host) in hosts.iter().enumerate() {
            if host.draining {
                continue;
            }
            let after = amounts(&host.allocated.plus(&placed[i]).plus(&add));
            if (0..3).any(|r| after[r] > limits[i][r]) {
                continue;
            }
            let candidate = Candidate {
                index: i,
                cluster_nodes: host.cluster_nodes.saturating_add(placed[i].vnodes),
                load: load(host.capacity(), after),
            };
            if best
                .as_ref()
                .is_none_or(|b| candidate.better_than(b, hosts))
            {
                best = Some(candidate);
            }
        }
        let Some(best) = best else {
            return Err(no_room(hosts, &limits, &placed, size, n, nodes.len()));
        };
        placed[best.index] = placed[best.index].plus(&add);
        chosen.push(best.index);
    }
    Ok(chosen)
}

/// Whether a host's allocation (after adding something) stays within capacity × overcommit:
/// the check the store repeats in its transaction, when other creates may have filled the
/// host since `place` saw it.
pub fn within(host: &HostLoad, overcommit: Overcommit) -> bool {
    let limits = overcommit.limits(host.capacity());
    let allocated = amounts(&host.allocated);
    (0..3).all(|r| allocated[r] <= limits[r])
}

/// Describes a size for people: "1 core, 1.0G memory, 4.0G disk".
fn describe(cpu_millis: u64, memory_bytes: u64, disk_bytes: u64) -> String {
    format!(
        "{}, {} memory, {} disk",
        human_cores(cpu_millis),
        human_bytes(memory_bytes),
        human_bytes(disk_bytes)
    )
}

/// The error for node `node` of `count`: which node, the roomiest host's free resources (what
/// the user could still ask for) and how many hosts are draining (often the real cause).
fn no_room(
    hosts: &[HostLoad],
    limits: &[[u64; 3]],
    placed: &[Usage],
    size: &NodeSize,
    node: usize,
    count: usize,
) -> PlacementError {
    let need = amounts(&Usage::of_node(size));
    // The roomiest host is the one that could take the largest share of the node; ties go
    // to the name, as in `place`.
    let roomiest = hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.draining)
        .map(|(i, h)| {
            let allocated = amounts(&h.allocated.plus(&placed[i]));
            let free: [u64; 3] = std::array::from_fn(|r| limits[i][r].saturating_sub(allocated[r]));
            let share = (0..3)
                .filter(|&r| need[r] > 0)
                .map(|r| free[r] as f64 / need[r] as f64)
                .fold(f64::INFINITY, f64::min);
            (i, free, share)
        })
        .max_by(|a, b| {
            a.2.total_cmp(&b.2)
                .then_with(|| hosts[b.0].name.cmp(&hosts[a.0].name))
        });

    let mut parts = Vec::new();
    if count > 1 {
        parts.push(format!(
            "node {} of {count} did not fit, so none was placed",
            node + 1
        ));
    }
    if let Some((i, free, _)) = roomiest {
        parts.push(format!(
            "the roomiest host, {}, has {} free",
            hosts[i].name,
            describe(free[0], free[1], free[2])
        ));
    }
    let draining = hosts.iter().filter(|h| h.draining).count();
    match draining {
        0 => {}
        d if d == hosts.len() => parts.push(format!("all {d} hosts are draining")),
        d => parts.push(format!("{d} of {} hosts draining", hosts.len())),
    }
    PlacementError::NoRoom {
        wanted: describe(need[0], need[1], need[2]),
        detail: parts.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// 4 cores, 16 GiB memory, 100 GiB disk, empty.
    fn host(name: &str) -> HostLoad {
        HostLoad {
            name: name.into(),
            cpu_millis: 4000,
            memory_bytes: 16 * GIB,
            disk_bytes: 100 * GIB,
            allocated: Usage::default(),
            draining: false,
            cluster_nodes: 0,
        }
    }

    fn node() -> NodeSize {
        NodeSize {
            cpu_millis: 1000,
            memory_bytes: GIB,
            disk_bytes: 4 * GIB,
        }
    }

    fn exact() -> Overcommit {
        Overcommit {
            cpu: 1.0,
            memory: 1.0,
            disk: 1.0,
        }
    }

    fn counts(hosts: usize, chosen: &[usize]) -> Vec<usize> {
        let mut counts = vec![0; hosts];
        for &i in chosen {
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn nodes_spread_evenly_over_equal_hosts() {
        let hosts = [host("a"), host("b")];
        let chosen = place(&hosts, &[node(); 4], Overcommit::default()).unwrap();
        assert_eq!(chosen.len(), 4);
        assert_eq!(counts(2, &chosen), [2, 2]);
        // Equal hosts alternate, starting with the first name.
        assert_eq!(chosen, [0, 1, 0, 1]);
    }

    #[test]
    fn the_clusters_existing_nodes_count() {
        let mut a = host("a");
        a.cluster_nodes = 2;
        let hosts = [a, host("b")];
        let chosen = place(&hosts, &[node(); 3], Overcommit::default()).unwrap();
        assert_eq!(chosen, [1, 1, 0]);
    }

    #[test]
    fn spreading_wins_over_load_and_load_over_name() {
        let mut busy = host("a");
        busy.allocated = Usage {
            cpu_millis: 3000,
            memory_bytes: 12 * GIB,
            disk_bytes: 0,
            vnodes: 3,
            ..Usage::default()
        };
        let mut spread = host("b");
        spread.cluster_nodes = 1;
        let hosts = [busy, spread, host("c")];
        // `a` has no node of the cluster but is the fullest: it still comes before `b`.
        let chosen = place(&hosts, &[node(); 2], Overcommit::default()).unwrap();
        assert_eq!(chosen, [2, 0]);
    }

    #[test]
    fn draining_hosts_are_never_chosen() {
        let mut a = host("a");
        a.draining = true;
        let hosts = [a, host("b")];
        let chosen = place(&hosts, &[node(); 5], Overcommit::default()).unwrap();
        assert!(chosen.iter().all(|&i| i == 1), "{chosen:?}");

        let mut b = host("b");
        b.draining = true;
        let mut a = host("a");
        a.draining = true;
        let e = place(&[a, b], &[node()], Overcommit::default()).unwrap_err();
        assert!(e.to_string().contains("all 2 hosts are draining"), "{e}");
    }

    #[test]
    fn overcommit_is_respected_exactly_at_the_boundary() {
        // 4 cores × 1.5 = 6 cores: six one-core nodes fit, a seventh does not.
        let overcommit = Overcommit {
            cpu: 1.5,
            ..exact()
        };
        let hosts = [host("a")];
        assert_eq!(
            place(&hosts, &[node(); 6], overcommit).unwrap(),
            [0; 6].to_vec()
        );
        assert!(place(&hosts, &[node(); 7], overcommit).is_err());

        // One millicore above the limit is refused.
        let mut full = host("a");
        full.allocated.cpu_millis = 5000;
        let mut size = node();
        assert!(place(&[full.clone()], &[size], overcommit).is_ok());
        size.cpu_millis += 1;
        let e = place(&[full], &[size], overcommit).unwrap_err();
        assert!(matches!(e, PlacementError::NoRoom { .. }));

        // A ratio that is inexact in binary still gives the decimal limit.
        let mut small = host("a");
        small.cpu_millis = 1000;
        let tenth = NodeSize {
            cpu_millis: 100,
            ..node()
        };
        let overcommit = Overcommit {
            cpu: 0.7,
            ..exact()
        };
        assert!(place(&[small.clone()], &[tenth; 7], overcommit).is_ok());
        assert!(place(&[small], &[tenth; 8], overcommit).is_err());
    }

    #[test]
    fn a_memory_full_host_is_skipped() {
        let mut a = host("a");
        a.allocated.memory_bytes = 16 * GIB - GIB / 2;
        let hosts = [a, host("b")];
        // `a` would be chosen by name, but it has half a node of memory left.
        let chosen = place(&hosts, &[node()], Overcommit::default()).unwrap();
        assert_eq!(chosen, [1]);
        // Cpu overcommit does not stretch memory.
        assert!(place(&hosts[..1], &[node()], Overcommit::default()).is_err());
    }

    #[test]
    fn all_or_nothing_with_a_helpful_error() {
        let mut a = host("a");
        a.allocated.memory_bytes = 14 * GIB;
        let mut b = host("b");
        b.allocated.memory_bytes = 15 * GIB;
        let mut c = host("c");
        c.draining = true;
        let hosts = [a, b, c];
        // Memory for three nodes is left: two on a, one on b.
        assert_eq!(place(&hosts, &[node(); 3], exact()).unwrap(), [0, 1, 0]);
        let e = place(&hosts, &[node(); 4], exact()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no host has room for a node of 1 core, 1.0G memory, 4.0G disk: \
             node 4 of 4 did not fit, so none was placed; \
             the roomiest host, a, has 2 cores, 0B memory, 92.0G disk free; \
             1 of 3 hosts draining"
        );

        // The roomiest host is the one closest to taking the node, not the first.
        let mut a = host("a");
        a.allocated.memory_bytes = 16 * GIB - GIB / 4;
        let mut b = host("b");
        b.allocated.memory_bytes = 16 * GIB - GIB / 2;
        let e = place(&[a, b], &[node()], exact()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no host has room for a node of 1 core, 1.0G memory, 4.0G disk: \
             the roomiest host, b, has 4 cores, 512.0M memory, 100.0G disk free"
        );

        assert_eq!(place(&[], &[node()], exact()), Err(PlacementError::NoHosts));
        assert_eq!(place(&[], &[], exact()), Ok(Vec::new()));
    }

    #[test]
    fn ties_are_broken_by_name_whatever_the_order() {
        let hosts = [host("c"), host("a"), host("b")];
        assert_eq!(
            place(&hosts, &[node(); 3], Overcommit::default()).unwrap(),
            [1, 2, 0]
        );
        let reversed = [host("b"), host("a"), host("c")];
        assert_eq!(
            place(&reversed, &[node(); 3], Overcommit::default()).unwrap(),
            [1, 0, 2]
        );
    }

    #[test]
    fn ten_nodes_spread_over_a_thousand_hosts() {
        let hosts: Vec<HostLoad> = (0..1000u64)
            .map(|i| {
                let mut h = host(&format!("h{i:04}"));
                // A quarter of the hosts are empty; the rest carry varied loads, some are
                // full or draining, and a few already run a node of the cluster.
                let share = i % 4;
                h.allocated = Usage {
                    cpu_millis: share * 1000,
                    memory_bytes: share * 2 * GIB,
                    disk_bytes: share * 10 * GIB,
                    vnodes: share as u32,
                    ..Usage::default()
                };
                if i % 13 == 0 {
                    h.allocated.memory_bytes = 16 * GIB;
                }
                h.draining = i % 11 == 0;
                h.cluster_nodes = u32::from(i % 100 == 1);
                h
            })
            .collect();
        let chosen = place(&hosts, &[node(); 10], Overcommit::default()).unwrap();
        assert!(
            counts(hosts.len(), &chosen).iter().all(|&c| c <= 1),
            "{chosen:?}"
        );
        // Every empty eligible host is equally good, so the first ten by name are taken.
        let expected: Vec<usize> = (0..1000)
            .filter(|i| i % 4 == 0 && i % 11 != 0 && i % 13 != 0)
            .take(10)
            .collect();
        assert_eq!(chosen, expected);
    }
}
