//! The batch scheduler: which queued task instances start now, and on which hosts. Pure, so
//! the leading master runs it on what it read of etcd and writes the starts with
//! compare-and-swap, and so a benchmark can run it on 10,000 tasks over 1,000 hosts.
//!
//! Order: priority first; then fair share, between groups and then between the users of a
//! group, by their decayed usage (cpu-seconds, see [`Decayed`]) — each start in a pass adds
//! to its user's usage so that users take turns; then submission order. An instance's nodes
//! start together or not at all (gang). When the first instance in that order does not fit,
//! it gets a reservation: the moment enough running instances end (by their time limits) for
//! it to fit. Instances behind it start now only if they fit and do not delay it (they end
//! before it, or leave it room): EASY backfill.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::placement::{self, HostLoad, Overcommit};
use crate::model::quota::{self, NodeSize, Quota, Usage};

/// An amount (cpu-seconds) that halves every `half_life` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Decayed {
    pub value: f64,
    /// Unix seconds `value` was last brought up to date.
    pub at: u64,
}

impl Decayed {
    pub fn at(&self, now: u64, half_life_secs: u64) -> f64 {
        let elapsed = now.saturating_sub(self.at) as f64;
        self.value * 0.5f64.powf(elapsed / half_life_secs.max(1) as f64)
    }

    pub fn add(&mut self, amount: f64, now: u64, half_life_secs: u64) {
        self.value = self.at(now, half_life_secs) + amount;
        self.at = now.max(self.at);
    }
}

/// Past batch usage of groups and users. Stored at `batch/fair-share`; the leading master
/// adds an instance's cpu-seconds when it ends.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FairShare {
    pub groups: BTreeMap<String, Decayed>,
    pub users: BTreeMap<String, Decayed>,
}

/// Usage halves in a week, as Slurm's default `PriorityDecayHalfLife`.
pub const HALF_LIFE_SECS: u64 = 7 * 24 * 3600;
/// What a start adds to its user's usage within a pass, as if it ran this long: the next
/// start goes to someone else when usage was equal.
const TURN_SECS: f64 = 60.0;

impl FairShare {
    pub fn charge(&mut self, group: &str, user: &str, cpu_seconds: f64, now: u64) {
        for (map, key) in [(&mut self.groups, group), (&mut self.users, user)] {
            map.entry(key.to_owned())
                .or_default()
                .add(cpu_seconds, now, HALF_LIFE_SECS);
        }
    }

    pub fn group(&self, group: &str, now: u64) -> f64 {
        self.groups
            .get(group)
            .map_or(0.0, |d| d.at(now, HALF_LIFE_SECS))
    }

    pub fn user(&self, user: &str, now: u64) -> f64 {
        self.users
            .get(user)
            .map_or(0.0, |d| d.at(now, HALF_LIFE_SECS))
    }
}

/// A queued instance, as the scheduler weighs it. `id` is the caller's, handed back.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: usize,
    pub user: String,
    pub group: String,
    pub priority: i32,
    pub job: u64,
    /// Task position in its job, then index: submission order within a job.
    pub order: (u32, u32),
    pub nodes: u32,
    pub node: NodeSize,
    /// The system image its nodes boot from (a user's image: the one under it).
    pub image: String,
    pub timeout_secs: Option<u64>,
}

/// An instance holding nodes now.
#[derive(Debug, Clone)]
pub struct Holding {
    pub user: String,
    /// The host of each node.
    pub hosts: Vec<String>,
    pub node: NodeSize,
    /// When it will have ended at the latest (its time limit), if it has one.
    pub ends_at: Option<u64>,
}

/// What the scheduler decides from.
#[derive(Debug, Clone)]
pub struct Input {
    pub now: u64,
    pub candidates: Vec<Candidate>,
    pub holding: Vec<Holding>,
    /// Hosts that take new vnodes, with what they hold now (interactive vnodes and batch).
    pub hosts: Vec<HostLoad>,
    /// The images each host has, by position in `hosts`.
    pub host_images: Vec<Vec<String>>,
    pub overcommit: Overcommit,
    /// Each user's batch limit and batch usage now.
    pub quotas: HashMap<String, (Quota, Usage)>,
    /// Usage of groups and users so far, decayed to `now`.
    pub group_usage: HashMap<String, f64>,
    pub user_usage: HashMap<String, f64>,
}

/// Why a candidate stays queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Blocked {
    /// No set of hosts has room for all its nodes now.
    Resources,
    /// It would fit, but would delay the instance ahead of it that waits for room.
    Reserved,
    /// Its user's batch quota is used up by instances running now.
    Quota(String),
    /// No host has its image.
    Image(String),
}

impl Blocked {
    pub fn describe(&self) -> String {
        match self {
            Blocked::Resources => "waiting for free resources".into(),
            Blocked::Reserved => {
                "waiting: the resources it fits in are reserved for an earlier task".into()
            }
            Blocked::Quota(why) => format!("waiting for the group's batch quota: {why}"),
            Blocked::Image(image) => format!("no host has the image {image}"),
        }
    }
}

/// A start: the candidate, and the host of each of its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub id: usize,
    pub hosts: Vec<String>,
}

/// What stays queued: its place in the order (1 = next) and why it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: usize,
    pub position: usize,
    pub blocked: Blocked,
    /// When it can start, for the instance holding the reservation (time limits known).
    pub eta: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Decision {
    pub starts: Vec<Start>,
    pub queued: Vec<Queued>,
}

/// The hosts as one image sees them: those without it take nothing (drained, as placement
/// understands it).
struct Views {
    by_image: HashMap<String, Vec<HostLoad>>,
    index: HashMap<String, usize>,
}

impl Views {
    fn new(input: &Input) -> Views {
        let mut images: Vec<&str> = input.candidates.iter().map(|c| c.image.as_str()).collect();
        images.sort_unstable();
        images.dedup();
        let by_image = images
            .into_iter()
            .map(|image| {
                let view = input
                    .hosts
                    .iter()
                    .zip(&input.host_images)
                    .map(|(h, have)| HostLoad {
                        draining: h.draining || !have.iter().any(|i| i == image),
                        cluster_nodes: 0,
                        ..h.clone()
                    })
                    .collect();
                (image.to_owned(), view)
            })
            .collect();
        let index = input
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.clone(), i))
            .collect();
        Views { by_image, index }
    }

    fn allocate(&mut self, hosts: &[usize], node: &NodeSize) {
        let add = Usage::of_node(node);
        for view in self.by_image.values_mut() {
            for &h in hosts {
                view[h].allocated = view[h].allocated.plus(&add);
            }
        }
    }
}

/// The instance waiting for room: when it can start and on which hosts.
struct Reservation {
    /// `None`: only once instances without a time limit end.
    at: Option<u64>,
    node: NodeSize,
    hosts: Vec<usize>,
    /// By image, the hosts as they are now with the reserved instance added on its hosts
    /// (made on first use, kept up to date with every start after).
    beside: HashMap<String, Vec<HostLoad>>,
}

fn sizes(c: &Candidate) -> Vec<NodeSize> {
    vec![c.node; c.nodes as usize]
}

/// Finds when `head` could start as running instances end, earliest time limit first, and
/// where.
fn reserve(
    head: &Candidate,
    view: &[HostLoad],
    holding: &[Holding],
    index: &HashMap<String, usize>,
    overcommit: Overcommit,
) -> Option<Reservation> {
    let mut ending: Vec<&Holding> = holding.iter().collect();
    ending.sort_by_key(|h| h.ends_at.unwrap_or(u64::MAX));
    let place_after = |k: usize| {
        let mut view = view.to_vec();
        for held in &ending[..k] {
            let size = Usage::of_node(&held.node);
            for host in &held.hosts {
                if let Some(&i) = index.get(host) {
                    view[i].allocated = view[i].allocated.minus(&size);
                }
            }
        }
        placement::place(&view, &sizes(head), overcommit).ok()
    };
    place_after(ending.len())?;
    // Fitting only gets easier as more end: the first k that fits, by bisection.
    let (mut low, mut high) = (0, ending.len());
    while low < high {
        let mid = (low + high) / 2;
        if place_after(mid).is_some() {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    Some(Reservation {
        at: if low == 0 {
            Some(0)
        } else {
            ending[low - 1].ends_at
        },
        node: head.node,
        hosts: place_after(low)?,
        beside: HashMap::new(),
    })
}

/// Orders the candidates and decides each in turn (see the module's documentation).
pub fn decide(input: &Input) -> Decision {
    let mut decision = Decision::default();
    let mut views = Views::new(input);
    let mut quotas = input.quotas.clone();
    let mut group_usage = input.group_usage.clone();
    let mut user_usage = input.user_usage.clone();
    // Each user's candidates, best first.
    let mut queues: BTreeMap<&str, VecDeque<&Candidate>> = BTreeMap::new();
    for c in &input.candidates {
        queues.entry(&c.user).or_default().push_back(c);
    }
    for queue in queues.values_mut() {
        queue
            .make_contiguous()
            .sort_by_key(|c| (-c.priority, c.job, c.order));
    }
    let mut reservation: Option<Reservation> = None;
    // Shapes (nodes, size, image) found not to fit in this pass: room only shrinks in a pass.
    let mut no_room: Vec<(u32, NodeSize, &str)> = Vec::new();
    // Shapes that fit only where the reservation needs room, for backfill candidates.
    let mut reserved_shapes: Vec<(u32, NodeSize, &str)> = Vec::new();
    let mut position = 0;
    loop {
        let best = queues
            .iter()
            .filter_map(|(user, q)| q.front().map(|c| (*user, *c)))
            .min_by(|(_, a), (_, b)| {
                let usage = |c: &Candidate| {
                    (
                        group_usage.get(&c.group).copied().unwrap_or(0.0),
                        user_usage.get(&c.user).copied().unwrap_or(0.0),
                    )
                };
                let (ga, ua) = usage(a);
                let (gb, ub) = usage(b);
                b.priority
                    .cmp(&a.priority)
                    .then(ga.total_cmp(&gb))
                    .then(ua.total_cmp(&ub))
                    .then((a.job, a.order).cmp(&(b.job, b.order)))
            });
        let Some((user, candidate)) = best else {
            break;
        };
        queues.get_mut(user).expect("picked from it").pop_front();
        let mut queue_until = |blocked: Blocked, eta: Option<u64>| {
            position += 1;
            decision.queued.push(Queued {
                id: candidate.id,
                position,
                blocked,
                eta,
            });
        };
        let mut queue = |blocked: Blocked| queue_until(blocked, None);
        let size = candidate.node;
        let add =
            (0..candidate.nodes).fold(Usage::default(), |s, _| s.plus(&Usage::of_node(&size)));
        if let Some((limit, used)) = quotas.get(&candidate.user)
            && let Err(e) = quota::admit(limit, used, &add)
        {
            queue(Blocked::Quota(e.to_string()));
            continue;
        }
        let Some(view) = views.by_image.get(&candidate.image) else {
            unreachable!("a view per candidate image");
        };
        if view.iter().all(|h| h.draining) {
            queue(Blocked::Image(candidate.image.clone()));
            continue;
        }
        let shape = (candidate.nodes, size, candidate.image.as_str());
        if no_room.contains(&shape) {
            queue(Blocked::Resources);
            continue;
        }
        let backfill = match &reservation {
            None => false,
            Some(r) => match (r.at, candidate.timeout_secs) {
                // It ends before the reserved instance can start.
                (Some(at), Some(limit)) => input.now.saturating_add(limit) > at,
                (None, Some(_)) => false,
                _ => true,
            },
        };
        if backfill && reserved_shapes.contains(&shape) {
            queue(Blocked::Reserved);
            continue;
        }
        let placed = if backfill {
            // It must fit beside the reserved instance as if that ran already: room only
            // grows until then, so it cannot delay it.
            let r = reservation.as_mut().expect("backfill has one");
            let beside = r.beside.entry(candidate.image.clone()).or_insert_with(|| {
                let mut beside = view.clone();
                for &h in &r.hosts {
                    beside[h].allocated = beside[h].allocated.plus(&Usage::of_node(&r.node));
                }
                beside
            });
            placement::place(beside, &sizes(candidate), input.overcommit)
        } else {
            placement::place(view, &sizes(candidate), input.overcommit)
        };
        let chosen = match placed {
            Ok(chosen) => chosen,
            Err(_) if backfill => {
                if placement::place(view, &sizes(candidate), input.overcommit).is_ok() {
                    reserved_shapes.push(shape);
                    queue(Blocked::Reserved);
                } else {
                    no_room.push(shape);
                    queue(Blocked::Resources);
                }
                continue;
            }
            Err(_) => {
                no_room.push(shape);
                let mut eta = None;
                if reservation.is_none() {
                    reservation = reserve(
                        candidate,
                        view,
                        &input.holding,
                        &views.index,
                        input.overcommit,
                    );
                    eta = reservation.as_ref().and_then(|r| r.at).filter(|&at| at > 0);
                }
                queue_until(Blocked::Resources, eta);
                continue;
            }
        };
        views.allocate(&chosen, &size);
        if let Some(r) = &mut reservation {
            for beside in r.beside.values_mut() {
                for &h in &chosen {
                    beside[h].allocated = beside[h].allocated.plus(&Usage::of_node(&size));
                }
            }
        }
        if let Some((_, used)) = quotas.get_mut(&candidate.user) {
            *used = used.plus(&add);
        }
        let turn = add.cpu_millis as f64 / 1000.0 * TURN_SECS;
        *group_usage.entry(candidate.group.clone()).or_default() += turn;
        *user_usage.entry(candidate.user.clone()).or_default() += turn;
        decision.starts.push(Start {
            id: candidate.id,
            hosts: chosen
                .iter()
                .map(|&h| input.hosts[h].name.clone())
                .collect(),
        });
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(name: &str, cpus: u64) -> HostLoad {
        HostLoad {
            name: name.into(),
            cpu_millis: cpus * 1000,
            memory_bytes: 64 * GIB,
            disk_bytes: 1000 * GIB,
            allocated: Usage::default(),
            draining: false,
            cluster_nodes: 0,
        }
    }

    fn candidate(id: usize, user: &str, nodes: u32, cores: u32) -> Candidate {
        Candidate {
            id,
            user: user.into(),
            group: "g".into(),
            priority: 0,
            job: id as u64,
            order: (0, 0),
            nodes,
            node: NodeSize {
                cpu_millis: cores * 1000,
                memory_bytes: GIB,
                disk_bytes: GIB,
            },
            image: "base".into(),
            timeout_secs: None,
        }
    }

    fn input(hosts: Vec<HostLoad>, candidates: Vec<Candidate>) -> Input {
        let host_images = vec![vec!["base".to_owned()]; hosts.len()];
        Input {
            now: 1000,
            candidates,
            holding: Vec::new(),
            hosts,
            host_images,
            overcommit: Overcommit {
                cpu: 1.0,
                memory: 1.0,
                disk: 1.0,
            },
            quotas: HashMap::new(),
            group_usage: HashMap::new(),
            user_usage: HashMap::new(),
        }
    }

    fn started(d: &Decision) -> Vec<usize> {
        d.starts.iter().map(|s| s.id).collect()
    }

    #[test]
    fn priority_then_submission_order() {
        let mut c = vec![
            candidate(0, "a", 1, 1),
            candidate(1, "a", 1, 1),
            candidate(2, "a", 1, 1),
        ];
        c[2].priority = 5;
        let d = decide(&input(vec![host("h1", 2)], c));
        assert_eq!(started(&d), [2, 0]);
        assert_eq!(d.queued[0].id, 1);
        assert_eq!(d.queued[0].blocked, Blocked::Resources);
        assert_eq!(d.queued[0].position, 1);
    }

    #[test]
    fn users_take_turns_and_the_lighter_user_goes_first() {
        // alice has 100 queued and past usage; bob has one.
        let mut c: Vec<Candidate> = (0..100).map(|i| candidate(i, "alice", 1, 1)).collect();
        c.push(candidate(100, "bob", 1, 1));
        let mut i = input(vec![host("h1", 1)], c.clone());
        i.user_usage.insert("alice".into(), 500.0);
        assert_eq!(started(&decide(&i)), [100]);
        // Equal usage: they alternate.
        c.push(candidate(101, "bob", 1, 1));
        let d = decide(&input(vec![host("h1", 4)], c));
        assert_eq!(started(&d), [0, 100, 1, 101]);
    }

    #[test]
    fn groups_share_before_users() {
        let mut c = vec![candidate(0, "a1", 1, 1), candidate(1, "b1", 1, 1)];
        c[0].group = "heavy".into();
        c[1].group = "light".into();
        let mut i = input(vec![host("h1", 1)], c);
        i.group_usage.insert("heavy".into(), 100.0);
        i.user_usage.insert("b1".into(), 1000.0);
        assert_eq!(started(&decide(&i)), [1]);
    }

    #[test]
    fn a_gang_starts_whole_or_not_at_all() {
        let c = vec![candidate(0, "a", 3, 1)];
        let d = decide(&input(vec![host("h1", 1), host("h2", 1)], c.clone()));
        assert!(d.starts.is_empty());
        let d = decide(&input(vec![host("h1", 1), host("h2", 1), host("h3", 1)], c));
        let mut hosts = d.starts[0].hosts.clone();
        hosts.sort();
        assert_eq!(hosts, ["h1", "h2", "h3"]);
    }

    #[test]
    fn quota_and_image_block_only_their_candidate() {
        let mut c = vec![candidate(0, "a", 2, 1), candidate(1, "b", 1, 1)];
        c[1].image = "gpu".into();
        c.push(candidate(2, "b", 1, 1));
        let mut i = input(vec![host("h1", 8)], c);
        let limit = Quota {
            cpu_millis: 1000,
            memory_bytes: 100 * GIB,
            disk_bytes: 100 * GIB,
            vnodes: 10,
            images: 0,
            image_bytes: 0,
            port_mappings: 0,
            idle_secs: 0,
        };
        i.quotas.insert("a".into(), (limit, Usage::default()));
        let d = decide(&i);
        assert_eq!(started(&d), [2]);
        let why: Vec<_> = d.queued.iter().map(|q| (q.id, q.blocked.clone())).collect();
        assert!(matches!(why[0], (0, Blocked::Quota(_))), "{why:?}");
        assert_eq!(why[1], (1, Blocked::Image("gpu".into())));
    }

    #[test]
    fn backfill_never_delays_the_reserved_instance() {
        // h1 (2 cores) has one core busy until t=1100. The head wants both cores.
        let mut hosts = vec![host("h1", 2)];
        hosts[0].allocated = Usage::of_node(&candidate(9, "x", 1, 1).node);
        let head = candidate(0, "a", 1, 2);
        // Considered in this order: the head, then long, then short.
        let mut long = candidate(1, "c", 1, 1);
        long.timeout_secs = Some(500);
        let mut short = candidate(2, "b", 1, 1);
        short.timeout_secs = Some(50); // ends at 1050, before 1100
        let mut i = input(hosts, vec![head, long, short]);
        i.holding.push(Holding {
            user: "x".into(),
            hosts: vec!["h1".into()],
            node: candidate(9, "x", 1, 1).node,
            ends_at: Some(1100),
        });
        let d = decide(&i);
        assert_eq!(started(&d), [2]);
        let long = d.queued.iter().find(|q| q.id == 1).unwrap();
        assert_eq!(long.blocked, Blocked::Reserved);
        // The head knows when it starts (the holder's time limit); the others do not.
        let eta: Vec<_> = d.queued.iter().map(|q| (q.id, q.eta)).collect();
        assert_eq!(eta, [(0, Some(1100)), (1, None)]);
    }

    #[test]
    fn backfill_uses_room_the_reserved_instance_does_not_need() {
        // x holds one of h1's two cores for good; the head wants both.
        let x = candidate(9, "x", 1, 1).node;
        let mut hosts = vec![host("h1", 2)];
        hosts[0].allocated = Usage::of_node(&x);
        let mut i = input(
            hosts,
            vec![candidate(0, "a", 1, 2), candidate(1, "b", 1, 1)],
        );
        i.holding.push(Holding {
            user: "x".into(),
            hosts: vec!["h1".into()],
            node: x,
            ends_at: None,
        });
        // b on h1 would keep the head waiting after x ends.
        let d = decide(&i);
        assert!(d.starts.is_empty());
        assert_eq!(d.queued[1].blocked, Blocked::Reserved);
        // With another host, b goes there.
        i.hosts.push(host("h2", 1));
        i.host_images.push(vec!["base".into()]);
        let d = decide(&i);
        assert_eq!(started(&d), [1]);
        assert_eq!(d.starts[0].hosts, ["h2"]);
    }

    #[test]
    fn usage_decays_by_half_lives() {
        let mut d = Decayed::default();
        d.add(100.0, 0, 10);
        assert!((d.at(10, 10) - 50.0).abs() < 1e-9);
        d.add(50.0, 20, 10);
        assert!((d.at(20, 10) - 75.0).abs() < 1e-9);
    }
}
