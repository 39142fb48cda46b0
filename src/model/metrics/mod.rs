//! Metrics, as pure data and rules: what a worker reads for a vnode at one instant (cumulative
//! counters), the sample it publishes (with CPU percent worked out from two readings), the
//! bounded history a master keeps in tiers of coarser and coarser steps, and the Prometheus
//! text format both daemons serve on `/metrics`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

mod exposition;
mod usage;

pub use exposition::{Exposition, Kind, exposition};
pub use usage::{
    DAY_SECS, IDLE_CPU_PERCENT, IDLE_NET_BYTES, UsageAmounts, UsageLedger, date_of_day,
    day_of_date, idle_expired, vnode_busy,
};

/// A network interface's cumulative counters (`/sys/class/net/<if>/statistics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// What a worker reads for one vnode at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnodeReading {
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
    /// CPU time of the vnode's cgroup since it started (`cpu.stat` `usage_usec`).
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    /// Bytes its own disk (the overlay's upper layer) holds.
    pub disk_bytes: u64,
    pub net: NetCounters,
    pub processes: u32,
    pub uptime_secs: u64,
}

/// One vnode's sample, as a worker publishes it and the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VnodeSample {
    /// Seconds since the epoch.
    pub at: u64,
    /// Over the last interval; 100 is one core busy. `None` for the first reading of a vnode
    /// (or the first after it restarted): there is nothing to compare with.
    pub cpu_percent: Option<f64>,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub net: NetCounters,
    pub processes: u32,
    pub uptime_secs: u64,
}

impl VnodeSample {
    /// The sample of `now`, given the vnode's previous reading if any.
    pub fn new(previous: Option<&VnodeReading>, now: &VnodeReading) -> VnodeSample {
        VnodeSample {
            at: now.at_ms / 1000,
            cpu_percent: previous.and_then(|p| cpu_percent(p, now)),
            cpu_seconds: now.cpu_usec as f64 / 1e6,
            memory_bytes: now.memory_bytes,
            disk_bytes: now.disk_bytes,
            net: now.net,
            processes: now.processes,
            uptime_secs: now.uptime_secs,
        }
    }
}

/// CPU use between two readings, 100 per busy core; `None` when the counter went back (the
/// vnode restarted) or no time passed.
pub fn cpu_percent(previous: &VnodeReading, now: &VnodeReading) -> Option<f64> {
    let elapsed_ms = now.at_ms.checked_sub(previous.at_ms).filter(|&ms| ms > 0)?;
    let used_usec = now.cpu_usec.checked_sub(previous.cpu_usec)?;
    Some(used_usec as f64 / (elapsed_ms as f64 * 1000.0) * 100.0)
}

/// One point of a history: gauges averaged over the point's step, counters as they were at
/// its end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The start of the step, seconds since the epoch.
    pub t: u64,
    pub cpu_percent: f32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Point {
    pub fn of(sample: &VnodeSample) -> Point {
        Point {
            t: sample.at,
            cpu_percent: sample.cpu_percent.unwrap_or(0.0) as f32,
            memory_bytes: sample.memory_bytes,
            disk_bytes: sample.disk_bytes,
            rx_bytes: sample.net.rx_bytes,
            tx_bytes: sample.net.tx_bytes,
        }
    }
}

/// A tier's resolution and how many of its points are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub step_secs: u64,
    pub points: usize,
}

/// The default tiers: 10 s for an hour, 1 min for a day, 15 min for 30 days.
pub const DEFAULT_RESOLUTIONS: [Resolution; 3] = [
    Resolution {
        step_secs: 10,
        points: 360,
    },
    Resolution {
        step_secs: 60,
        points: 1440,
    },
    Resolution {
        step_secs: 900,
        points: 2880,
    },
];

/// Points being summed into one step of a tier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Bucket {
    /// Which step: `t / step_secs`.
    step: u64,
    count: u32,
    cpu_sum: f64,
    memory_sum: u128,
    disk_sum: u128,
    last: Point,
}

impl Bucket {
    fn start(step: u64, point: &Point) -> Bucket {
        Bucket {
            step,
            count: 1,
            cpu_sum: point.cpu_percent as f64,
            memory_sum: point.memory_bytes as u128,
            disk_sum: point.disk_bytes as u128,
            last: *point,
        }
    }

    fn add(&mut self, point: &Point) {
        self.count += 1;
        self.cpu_sum += point.cpu_percent as f64;
        self.memory_sum += point.memory_bytes as u128;
        self.disk_sum += point.disk_bytes as u128;
        self.last = *point;
    }

    fn point(&self, step_secs: u64) -> Point {
        let n = self.count.max(1);
        Point {
            t: self.step * step_secs,
            cpu_percent: (self.cpu_sum / n as f64) as f32,
            memory_bytes: (self.memory_sum / n as u128) as u64,
            disk_bytes: (self.disk_sum / n as u128) as u64,
            rx_bytes: self.last.rx_bytes,
            tx_bytes: self.last.tx_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tier {
    resolution: Resolution,
    points: VecDeque<Point>,
    open: Option<Bucket>,
}

impl Tier {
    fn record(&mut self, point: &Point) {
        let step = point.t / self.resolution.step_secs;
        match &mut self.open {
            Some(bucket) if bucket.step == step => bucket.add(point),
            // A point older than the open step (a clock that went back) is dropped.
            Some(bucket) if bucket.step > step => {}
            open => {
                if let Some(done) = open.replace(Bucket::start(step, point)) {
                    self.points.push_back(done.point(self.resolution.step_secs));
                    while self.points.len() > self.resolution.points {
                        self.points.pop_front();
                    }
                }
            }
        }
    }

    /// Closed points from `from` on, then the open step as it is so far.
    fn since(&self, from: u64) -> Vec<Point> {
        let mut out: Vec<Point> = self
            .points
            .iter()
            .filter(|p| p.t >= from)
            .copied()
            .collect();
        if let Some(bucket) = &self.open {
            let point = bucket.point(self.resolution.step_secs);
            if point.t >= from {
                out.push(point);
            }
        }
        out
    }

    fn oldest(&self) -> Option<u64> {
        self.points
            .front()
            .map(|p| p.t)
            .or_else(|| self.open.map(|b| b.step * self.resolution.step_secs))
    }
}

/// A vnode's (or host's) history: every sample goes into each tier, and each tier keeps its
/// last `points` steps. Its size is bounded whatever the uptime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    tiers: Vec<Tier>,
}

impl Default for History {
    fn default() -> Self {
        History::new(&DEFAULT_RESOLUTIONS)
    }
}

impl History {
    /// Tiers from the finest to the coarsest.
    pub fn new(resolutions: &[Resolution]) -> History {
        History {
            tiers: resolutions
                .iter()
                .map(|&resolution| Tier {
                    resolution,
                    points: VecDeque::new(),
                    open: None,
                })
                .collect(),
        }
    }

    pub fn record(&mut self, point: &Point) {
        for tier in &mut self.tiers {
            tier.record(point);
        }
    }

    /// The points from `from` (seconds since the epoch) on, at the finest step that still
    /// holds everything since then (it reaches back that far, or has dropped nothing yet:
    /// a young history is whole in every tier), else the coarsest; and that step.
    pub fn since(&self, from: u64) -> (u64, Vec<Point>) {
        let tier = self
            .tiers
            .iter()
            .find(|t| {
                t.points.len() < t.resolution.points
                    || t.oldest().is_some_and(|oldest| oldest <= from)
            })
            .or(self.tiers.last());
        match tier {
            Some(tier) => (tier.resolution.step_secs, tier.since(from)),
            None => (0, Vec::new()),
        }
    }

    /// When the last point was recorded (the start of its finest step).
    pub fn latest(&self) -> Option<u64> {
        self.tiers.first().and_then(|t| {
            t.open
                .map(|b| b.last.t)
                .or_else(|| t.points.back().map(|p| p.t))
        })
    }

    /// Points kept, closed ones only, over all tiers.
    pub fn len(&self) -> usize {
        self.tiers.iter().map(|t| t.points.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.tiers
            .iter()
            .all(|t| t.points.is_empty() && t.open.is_none())
    }
}

/// The host's own figures at one sampling.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    pub at: u64,
    /// Over the last interval, 100 per busy core; `None` at the first sampling.
    pub cpu_percent: Option<f64>,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub disk_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub load: [f64; 3],
    pub vnodes: u32,
}

/// One vnode's sample with who it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSample {
    pub id: String,
    pub user: String,
    pub cluster: String,
    pub index: u32,
    pub sample: VnodeSample,
}

/// A worker's last sampling: what its agent's `GET /agent/v1/samples` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerSamples {
    pub host: String,
    /// How often the worker samples.
    pub interval_secs: u64,
    pub host_sample: Option<HostSample>,
    pub vnodes: Vec<NodeSample>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ms: u64, cpu_usec: u64) -> VnodeReading {
        VnodeReading {
            at_ms,
            cpu_usec,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_is_per_core_and_absent_across_a_restart() {
        // 2 s of CPU in 1 s: two cores busy.
        let before = reading(10_000, 5_000_000);
        let after = reading(11_000, 7_000_000);
        assert_eq!(cpu_percent(&before, &after), Some(200.0));
        // The counter went back: the vnode restarted in between.
        assert_eq!(cpu_percent(&after, &reading(12_000, 10)), None);
        // No time passed, or time went back.
        assert_eq!(cpu_percent(&after, &after), None);
        assert_eq!(cpu_percent(&after, &before), None);
        let first = VnodeSample::new(None, &after);
        assert_eq!(
            (first.cpu_percent, first.cpu_seconds, first.at),
            (None, 7.0, 11)
        );
        let second = VnodeSample::new(Some(&before), &after);
        assert_eq!(second.cpu_percent, Some(200.0));
    }

    fn point(t: u64, cpu: f32, memory: u64, rx: u64) -> Point {
        Point {
            t,
            cpu_percent: cpu,
            memory_bytes: memory,
            disk_bytes: 0,
            rx_bytes: rx,
            tx_bytes: 0,
        }
    }

    #[test]
    fn tiers_average_gauges_keep_the_last_counter_and_stay_bounded() {
        let mut history = History::new(&[
            Resolution {
                step_secs: 10,
                points: 6,
            },
            Resolution {
                step_secs: 60,
                points: 10,
            },
        ]);
        assert!(history.is_empty());
        // Ten minutes of samples every 10 s: CPU alternating 0 and 100, memory rising.
        for i in 0..60u64 {
            let cpu = if i % 2 == 0 { 0.0 } else { 100.0 };
            history.record(&point(1_000_000 + i * 10, cpu, 1000 + i, i * 100));
        }
        // Bounded: 6 closed 10 s points and 10 closed minutes (of 11 touched: minutes are
        // aligned to the epoch, so the first one holds only two samples).
        assert_eq!(history.len(), 16);
        // The last minute at 10 s steps (the newest, open step included).
        let (step, recent) = history.since(1_000_000 + 540);
        assert_eq!(step, 10);
        assert_eq!(recent.len(), 6);
        assert_eq!(recent.last().unwrap().rx_bytes, 5900);
        // Further back than the 10 s tier reaches: minutes, averaged.
        let (step, minutes) = history.since(1_000_000 + 200);
        assert_eq!(step, 60);
        let minute = minutes.iter().find(|p| p.t == 1_000_200).unwrap();
        assert_eq!(minute.cpu_percent, 50.0);
        // Samples 20..25 (t = ...200 to ...250): memory 1020..1025 averages to 1022 (floor).
        assert_eq!(minute.memory_bytes, 1022);
        assert_eq!(
            minute.rx_bytes, 2500,
            "a counter's value at the end of the step"
        );
        // Older than anything kept: the coarsest tier, all of it (and its open minute).
        let (step, all) = history.since(0);
        assert_eq!(step, 60);
        assert_eq!(all.len(), 11);
        assert_eq!(all[0].t, 999_960);
    }

    #[test]
    fn a_point_older_than_the_open_step_is_dropped() {
        let mut history = History::new(&[Resolution {
            step_secs: 10,
            points: 10,
        }]);
        history.record(&point(100, 1.0, 1, 1));
        history.record(&point(110, 2.0, 2, 2));
        history.record(&point(90, 9.0, 9, 9));
        let (_, points) = history.since(0);
        assert_eq!(
            points.iter().map(|p| p.t).collect::<Vec<_>>(),
            vec![100, 110]
        );
    }

    #[test]
    fn a_young_history_is_served_at_its_finest_step() {
        let mut history = History::default();
        // Halfway through a 15-minute step (1_800_000_000 is a multiple of 900).
        let start = 1_800_000_000 + 450;
        for i in 0..30 {
            history.record(&Point {
                t: start + i * 10,
                cpu_percent: 1.0,
                memory_bytes: 0,
                disk_bytes: 0,
                rx_bytes: 0,
                tx_bytes: 0,
            });
        }
        // An hour back is before the first point, but nothing was dropped yet.
        let (step, points) = history.since(start + 300 - 3600);
        assert_eq!((step, points.len()), (10, 30));
    }
}
