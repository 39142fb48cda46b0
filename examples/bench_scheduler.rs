//! The batch scheduler's decision time at scale (`tools/bench-jobs scheduler`): 10,000
//! queued task instances of 100 users in 10 groups over 1,000 simulated hosts, most of them
//! busy with running instances, as `model::jobs::schedule::decide` sees them in one pass of
//! the leading master. Pure: no etcd, no hosts. Prints one Markdown table on stdout.
//!
//! `cargo run --release --example bench_scheduler [QUEUED] [HOSTS] [ROUNDS]`

use std::collections::HashMap;
use std::time::Instant;

use docklet::model::jobs::schedule::{Candidate, Holding, Input, decide};
use docklet::model::placement::{HostLoad, Overcommit};
use docklet::model::quota::{NodeSize, Quota, Usage};

const GIB: u64 = 1 << 30;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// A deterministic pseudo-random sequence (xorshift), so that every run weighs the same
/// queue.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn input(queued: usize, hosts: usize, busy: f64) -> Input {
    let mut rng = Rng(0x5eed);
    let mut loads: Vec<HostLoad> = (0..hosts)
        .map(|i| HostLoad {
            name: format!("h{i:04}"),
            cpu_millis: [16_000, 32_000, 64_000][i % 3],
            memory_bytes: [64, 128, 256][i % 3] * GIB,
            disk_bytes: 2000 * GIB,
            allocated: Usage::default(),
            draining: false,
            cluster_nodes: 0,
        })
        .collect();
    // Running instances fill `busy` of each host's cores (4 × its cpus: the default cpu
    // overcommit), each with a time limit.
    let mut holding = Vec::new();
    for (i, host) in loads.iter_mut().enumerate() {
        let node = NodeSize {
            cpu_millis: 4000,
            memory_bytes: 2 * GIB,
            disk_bytes: 10 * GIB,
        };
        let count = ((host.cpu_millis as f64 * 4.0 * busy) / 4000.0) as u32;
        for _ in 0..count {
            host.allocated = host.allocated.plus(&Usage::of_node(&node));
            holding.push(Holding {
                user: format!("u{:03}", i % 100),
                hosts: vec![host.name.clone()],
                node,
                ends_at: Some(1_000 + rng.next(7200)),
            });
        }
    }
    let candidates: Vec<Candidate> = (0..queued)
        .map(|id| {
            let user = rng.next(100);
            let nodes = [1, 1, 1, 2, 4, 8][rng.next(6) as usize];
            Candidate {
                id,
                user: format!("u{user:03}"),
                group: format!("g{}", user % 10),
                priority: [0, 0, 0, 10][rng.next(4) as usize],
                job: 1 + (id / 100) as u64,
                order: (0, (id % 100) as u32),
                nodes,
                node: NodeSize {
                    cpu_millis: [1000, 2000, 4000, 8000][rng.next(4) as usize],
                    memory_bytes: [2, 4, 8, 16][rng.next(4) as usize] * GIB,
                    disk_bytes: 10 * GIB,
                },
                image: "base".into(),
                timeout_secs: Some(600 + rng.next(3600)),
            }
        })
        .collect();
    let quota = Quota {
        cpu_millis: 400_000,
        memory_bytes: 800 * GIB,
        disk_bytes: 4000 * GIB,
        vnodes: 100,
        images: 0,
        image_bytes: 0,
        port_mappings: 0,
        idle_secs: 0,
    };
    let quotas: HashMap<String, (Quota, Usage)> = (0..100)
        .map(|u| (format!("u{u:03}"), (quota.clone(), Usage::default())))
        .collect();
    let user_usage = (0..100)
        .map(|u| (format!("u{u:03}"), rng.next(100_000) as f64))
        .collect();
    let group_usage = (0..10)
        .map(|g| (format!("g{g}"), rng.next(1_000_000) as f64))
        .collect();
    Input {
        now: 1_000,
        candidates,
        holding,
        host_images: vec![vec!["base".to_owned()]; hosts],
        hosts: loads,
        overcommit: Overcommit::default(),
        quotas,
        group_usage,
        user_usage,
    }
}

fn main() {
    let queued = arg(1, 10_000);
    let hosts = arg(2, 1_000);
    let rounds = arg(3, 20);
    println!(
        "| hosts busy | queued | hosts | started | pass p50 (ms) | pass max (ms) | per queued instance p50 (µs) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for busy in [0.5, 0.9, 1.0] {
        let input = input(queued, hosts, busy);
        let mut times = Vec::new();
        let mut started = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let decision = decide(&input);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            started = decision.starts.len();
            assert_eq!(decision.starts.len() + decision.queued.len(), queued);
        }
        times.sort_by(f64::total_cmp);
        let p50 = times[times.len() / 2];
        let max = times[times.len() - 1];
        println!(
            "| {:.0} % | {queued} | {hosts} | {started} | {p50:.1} | {max:.1} | {:.1} |",
            busy * 100.0,
            p50 * 1000.0 / queued as f64
        );
    }
}
