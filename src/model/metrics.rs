//! Metrics, as pure data and rules: what a worker reads for a vnode at one instant (cumulative
//! counters), the sample it publishes (with CPU percent worked out from two readings), the
//! bounded history a master keeps in tiers of coarser and coarser steps, and the Prometheus
//! text format both daemons serve on `/metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

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

/// Workers' samplings in the Prometheus text format: each family once, every host's and
/// vnode's sample under it, labelled with host, user, cluster, node and vnode.
pub fn exposition(workers: &[WorkerSamples]) -> String {
    let mut out = Exposition::default();
    for worker in workers {
        let host = worker.host.as_str();
        if let Some(h) = &worker.host_sample {
            let labels = [("host", host)];
            let gauges: [(&str, &str, Option<f64>); 8] = [
                (
                    "docklet_host_cpu_percent",
                    "CPU use over the last interval, 100 per busy core.",
                    h.cpu_percent,
                ),
                ("docklet_host_cpus", "CPUs.", Some(h.cpus as f64)),
                (
                    "docklet_host_memory_total_bytes",
                    "Memory.",
                    Some(h.memory_total_bytes as f64),
                ),
                (
                    "docklet_host_memory_available_bytes",
                    "Memory available (MemAvailable).",
                    Some(h.memory_available_bytes as f64),
                ),
                (
                    "docklet_host_disk_total_bytes",
                    "Size of the filesystem under fs_prefix.",
                    Some(h.disk_total_bytes as f64),
                ),
                (
                    "docklet_host_disk_used_bytes",
                    "Bytes used on the filesystem under fs_prefix.",
                    Some(h.disk_used_bytes as f64),
                ),
                (
                    "docklet_host_load1",
                    "Load average over one minute.",
                    Some(h.load[0]),
                ),
                (
                    "docklet_host_vnodes",
                    "Vnodes running on the host.",
                    Some(h.vnodes as f64),
                ),
            ];
            for (name, help, value) in gauges {
                if let Some(value) = value {
                    out.family(name, Kind::Gauge, help)
                        .sample(name, &labels, value);
                }
            }
        }
        for node in &worker.vnodes {
            let s = &node.sample;
            let index = node.index.to_string();
            let labels = [
                ("user", node.user.as_str()),
                ("cluster", node.cluster.as_str()),
                ("node", index.as_str()),
                ("vnode", node.id.as_str()),
                ("host", host),
            ];
            let mut metric = |name: &str, kind: Kind, help: &str, value: f64| {
                out.family(name, kind, help).sample(name, &labels, value);
            };
            if let Some(percent) = s.cpu_percent {
                metric(
                    "docklet_vnode_cpu_percent",
                    Kind::Gauge,
                    "CPU use over the last interval, 100 per busy core.",
                    percent,
                );
            }
            let gauges = [
                (
                    "docklet_vnode_memory_bytes",
                    "Memory in use.",
                    s.memory_bytes,
                ),
                (
                    "docklet_vnode_disk_bytes",
                    "Bytes its own layer takes.",
                    s.disk_bytes,
                ),
                ("docklet_vnode_processes", "Tasks.", u64::from(s.processes)),
                (
                    "docklet_vnode_uptime_seconds",
                    "Since it booted.",
                    s.uptime_secs,
                ),
            ];
            for (name, help, value) in gauges {
                metric(name, Kind::Gauge, help, value as f64);
            }
            metric(
                "docklet_vnode_cpu_seconds_total",
                Kind::Counter,
                "CPU time used since it booted.",
                s.cpu_seconds,
            );
            let n = &s.net;
            let counters = [
                ("docklet_vnode_network_receive_bytes_total", n.rx_bytes),
                ("docklet_vnode_network_transmit_bytes_total", n.tx_bytes),
                ("docklet_vnode_network_receive_packets_total", n.rx_packets),
                ("docklet_vnode_network_transmit_packets_total", n.tx_packets),
                ("docklet_vnode_network_receive_errors_total", n.rx_errors),
                ("docklet_vnode_network_transmit_errors_total", n.tx_errors),
                ("docklet_vnode_network_receive_drops_total", n.rx_dropped),
                ("docklet_vnode_network_transmit_drops_total", n.tx_dropped),
            ];
            for (name, value) in counters {
                metric(
                    name,
                    Kind::Counter,
                    "On its eth0, since its network was made.",
                    value as f64,
                );
            }
        }
    }
    out.finish()
}

/// What a Prometheus metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// Builds the Prometheus text exposition format (version 0.0.4): each family's `# HELP` and
/// `# TYPE` once, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    families: Vec<String>,
}

impl Exposition {
    /// Starts family `name` (names are the code's own, never users' strings).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        if !self.families.iter().any(|f| f == name) {
            let kind = match kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            self.families.push(name.to_owned());
        }
        self
    }

    /// One sample of family `name`; label values may be anything (users' and clusters'
    /// names) and are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{label}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// What one user's vnodes used in one day (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageAmounts {
    /// Seconds of vnodes running.
    pub vnode_secs: f64,
    /// CPU time.
    pub cpu_secs: f64,
    /// Memory in use × time, in GiB-seconds.
    pub memory_gib_secs: f64,
}

/// Usage per user and day, added up from the samples the master collects: the accounting
/// administrators export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageLedger {
    /// user → day (days since the epoch) → amounts.
    users: BTreeMap<String, BTreeMap<u64, UsageAmounts>>,
}

pub const DAY_SECS: u64 = 86_400;

impl UsageLedger {
    /// Counts one sample of a running vnode of `user`, standing for `interval_secs`.
    pub fn add(&mut self, user: &str, sample: &VnodeSample, interval_secs: u64) {
        let day = sample.at / DAY_SECS;
        let amounts = self
            .users
            .entry(user.to_owned())
            .or_default()
            .entry(day)
            .or_default();
        let seconds = interval_secs as f64;
        amounts.vnode_secs += seconds;
        amounts.cpu_secs += sample.cpu_percent.unwrap_or(0.0) / 100.0 * seconds;
        amounts.memory_gib_secs += sample.memory_bytes as f64 / (1u64 << 30) as f64 * seconds;
    }

    /// Drops days before `oldest_day`: the ledger keeps a bounded past.
    pub fn forget_before(&mut self, oldest_day: u64) {
        for days in self.users.values_mut() {
            days.retain(|day, _| *day >= oldest_day);
        }
        self.users.retain(|_, days| !days.is_empty());
    }

    /// Each user's sum over days `from..=to`.
    pub fn totals(&self, from: u64, to: u64) -> BTreeMap<String, UsageAmounts> {
        self.users
            .iter()
            .map(|(user, days)| {
                let sum = days
                    .range(from..=to)
                    .fold(UsageAmounts::default(), |a, (_, d)| UsageAmounts {
                        vnode_secs: a.vnode_secs + d.vnode_secs,
                        cpu_secs: a.cpu_secs + d.cpu_secs,
                        memory_gib_secs: a.memory_gib_secs + d.memory_gib_secs,
                    });
                (user.clone(), sum)
            })
            .filter(|(_, sum)| sum.vnode_secs > 0.0)
            .collect()
    }

    /// One line per user and day of `from..=to`, in hours: `user,date,vnode_hours,cpu_hours,
    /// memory_gib_hours`, with a header line.
    pub fn csv(&self, from: u64, to: u64) -> String {
        let mut out = String::from("user,date,vnode_hours,cpu_hours,memory_gib_hours\n");
        for (user, days) in &self.users {
            for (day, d) in days.range(from..=to) {
                let _ = writeln!(
                    out,
                    "{user},{},{:.4},{:.4},{:.4}",
                    date_of_day(*day),
                    d.vnode_secs / 3600.0,
                    d.cpu_secs / 3600.0,
                    d.memory_gib_secs / 3600.0
                );
            }
        }
        out
    }
}

/// `YYYY-MM-DD` of a day since the epoch (proleptic Gregorian, UTC).
pub fn date_of_day(day: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day since the epoch of `YYYY-MM-DD`, if it is one.
pub fn day_of_date(date: &str) -> Option<u64> {
    let mut parts = date.split('-');
    let (y, m, d): (i64, i64, i64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let day = era * 146_097 + doe - 719_468;
    // 2021-02-31 and the like: the round trip says whether it was a real date.
    (day >= 0 && date_of_day(day as u64) == date).then_some(day as u64)
}

/// Below this a vnode is idle: CPU (100 per busy core) over an interval...
pub const IDLE_CPU_PERCENT: f64 = 2.0;
/// ...and bytes it sent and received over an interval.
pub const IDLE_NET_BYTES: u64 = 64 * 1024;

/// Did the vnode do anything between two samples? Its own timers and daemons use a little
/// CPU; a person or a job uses more, or moves data. Without a previous sample (a new or
/// restarted vnode), it did.
pub fn vnode_busy(previous: Option<&VnodeSample>, now: &VnodeSample) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let moved = (now.net.rx_bytes + now.net.tx_bytes)
        .saturating_sub(previous.net.rx_bytes + previous.net.tx_bytes);
    now.cpu_percent.is_none_or(|p| p >= IDLE_CPU_PERCENT) || moved >= IDLE_NET_BYTES
}

/// Should a cluster idle since `idle_since` be stopped at `now`, with the group's
/// `idle_secs` (0: never)?
pub fn idle_expired(idle_since: u64, now: u64, idle_secs: u64) -> bool {
    idle_secs > 0 && now.saturating_sub(idle_since) >= idle_secs
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
    fn exposition_declares_each_family_once_and_escapes_label_values() {
        let mut out = Exposition::default();
        out.family("docklet_vnode_memory_bytes", Kind::Gauge, "Memory in use.")
            .sample(
                "docklet_vnode_memory_bytes",
                &[("user", "alice"), ("cluster", "a\"b\\c\nd")],
                1048576.0,
            )
            .family("docklet_vnode_memory_bytes", Kind::Gauge, "Memory in use.")
            .sample("docklet_vnode_memory_bytes", &[("user", "bob")], 0.5)
            .family("docklet_up", Kind::Counter, "Line one\nline two.")
            .sample("docklet_up", &[], f64::NAN);
        assert_eq!(
            out.finish(),
            "# HELP docklet_vnode_memory_bytes Memory in use.\n\
             # TYPE docklet_vnode_memory_bytes gauge\n\
             docklet_vnode_memory_bytes{user=\"alice\",cluster=\"a\\\"b\\\\c\\nd\"} 1048576\n\
             docklet_vnode_memory_bytes{user=\"bob\"} 0.5\n\
             # HELP docklet_up Line one\\nline two.\n\
             # TYPE docklet_up counter\n\
             docklet_up NaN\n"
        );
    }

    fn sample_at(at: u64, cpu: Option<f64>, memory: u64, net: u64) -> VnodeSample {
        VnodeSample {
            at,
            cpu_percent: cpu,
            cpu_seconds: 0.0,
            memory_bytes: memory,
            disk_bytes: 0,
            net: NetCounters {
                rx_bytes: net,
                ..NetCounters::default()
            },
            processes: 1,
            uptime_secs: 1,
        }
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

    #[test]
    fn the_ledger_adds_hours_per_user_and_day_and_exports_csv() {
        let mut ledger = UsageLedger::default();
        let day = day_of_date("2026-11-28").unwrap();
        let noon = day * DAY_SECS + 12 * 3600;
        // Two hours of one vnode at half a core and 2 GiB, in 10 s samples.
        for i in 0..720 {
            ledger.add(
                "alice",
                &sample_at(noon + i * 10, Some(50.0), 2 << 30, 0),
                10,
            );
        }
        ledger.add("bob", &sample_at(noon + DAY_SECS, None, 0, 0), 3600);
        let totals = ledger.totals(day, day);
        let alice = totals["alice"];
        assert!((alice.vnode_secs - 7200.0).abs() < 1e-6);
        assert!((alice.cpu_secs - 3600.0).abs() < 1e-6);
        assert!((alice.memory_gib_secs - 14_400.0).abs() < 1e-6);
        assert!(!totals.contains_key("bob"), "bob's hour is the next day");
        assert_eq!(
            ledger.csv(day, day + 1),
            "user,date,vnode_hours,cpu_hours,memory_gib_hours\n\
             alice,2026-11-28,2.0000,1.0000,4.0000\n\
             bob,2026-11-29,1.0000,0.0000,0.0000\n"
        );
        ledger.forget_before(day + 1);
        assert!(!ledger.totals(0, u64::MAX).contains_key("alice"));
    }

    #[test]
    fn dates_round_trip_and_nonsense_is_refused() {
        assert_eq!(date_of_day(0), "1970-01-01");
        assert_eq!(day_of_date("1970-01-01"), Some(0));
        assert_eq!(
            day_of_date("2000-02-29").map(date_of_day).as_deref(),
            Some("2000-02-29")
        );
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-1-1x",
            "yesterday",
            "1969-12-31",
            "",
        ] {
            assert_eq!(day_of_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_vnode_is_idle_when_it_neither_computes_nor_talks() {
        let before = sample_at(0, Some(0.1), 0, 1000);
        assert!(vnode_busy(None, &before), "a new vnode counts as busy");
        assert!(!vnode_busy(
            Some(&before),
            &sample_at(10, Some(0.5), 0, 2000)
        ));
        assert!(vnode_busy(
            Some(&before),
            &sample_at(10, Some(30.0), 0, 1000)
        ));
        assert!(vnode_busy(
            Some(&before),
            &sample_at(10, Some(0.0), 0, 1000 + IDLE_NET_BYTES)
        ));
        assert!(!idle_expired(100, 150, 0), "0 means never");
        assert!(!idle_expired(100, 150, 60));
        assert!(idle_expired(100, 160, 60));
    }
}
