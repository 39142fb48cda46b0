//! Accounting and idleness from the samples: usage per user and day (the ledger
//! administrators export), calendar days, and when a vnode or a cluster counts as idle.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::VnodeSample;

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
    use crate::model::metrics::NetCounters;

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
