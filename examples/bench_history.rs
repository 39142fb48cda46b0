//! The history half of `tools/bench-metrics` (issue 7): how much a vnode's metrics history
//! costs the master, in memory and in the JSON file it saves (`metrics.json`).
//!
//! Feeds one `History` (the default tiers: 10 s × 360, 60 s × 1440, 900 s × 2880) a point
//! every 10 s, as a worker's sampling at the default `metrics_interval` gives it, for 1, 7
//! and 30 days (and 60, to show it stops growing), and prints per vnode: the points kept, the
//! bytes of those points in memory (points × `size_of::<Point>()`; the `VecDeque`s' spare
//! capacity and the open buckets are left out), and the bytes of the history as
//! `serde_json::to_vec` writes it (the master saves `HashMap<String, History>` that way),
//! then the growth per day between the rows.
//!
//! The points carry realistic figures (a memory of some 60 MB that moves, counters that only
//! grow), since the JSON size depends on the digits.
//!
//! Run: `cargo run --release --example bench_history` (no arguments; prints Markdown).

use docklet::model::metrics::{History, Point};

const STEP: u64 = 10;
const DAY: u64 = 86_400;

fn point(i: u64, t: u64) -> Point {
    // A cheap deterministic wobble (no rand dependency needed).
    let w = (i.wrapping_mul(2_654_435_761) >> 7) % 1000;
    Point {
        t,
        cpu_percent: (w as f32) / 333.0,
        memory_bytes: 60_000_000 + w * 12_345,
        disk_bytes: 120_000_000 + (i / 360) * 4096,
        rx_bytes: 1_000 + i * 1_337 + w,
        tx_bytes: 1_000 + i * 911 + w,
    }
}

fn main() {
    let t0: u64 = 1_764_000_000;
    let days = [1u64, 7, 30, 60];
    let point_size = std::mem::size_of::<Point>();
    let mut history = History::default();
    let mut fed: u64 = 0;
    let mut rows = Vec::new();
    for &d in &days {
        let until = d * DAY / STEP;
        while fed < until {
            history.record(&point(fed, t0 + fed * STEP));
            fed += 1;
        }
        let kept = history.len();
        let json = serde_json::to_vec(&history).expect("serialize").len();
        rows.push((d, fed, kept, kept * point_size, json));
    }
    println!("size_of::<Point>() = {point_size} bytes; a point every {STEP} s");
    println!();
    println!(
        "| days fed | points fed | points kept | in memory (points × {point_size} B) | JSON (serde_json, as saved) | JSON bytes per point |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &(d, fed, kept, mem, json) in &rows {
        println!(
            "| {d} | {fed} | {kept} | {} | {} | {:.1} |",
            kib(mem),
            kib(json),
            json as f64 / kept.max(1) as f64
        );
    }
    println!();
    println!("| from → to (days) | growth per day, in memory | growth per day, JSON |");
    println!("|---|---:|---:|");
    let mut prev = (0u64, 0usize, 0usize);
    for &(d, _, _, mem, json) in &rows {
        let span = (d - prev.0) as f64;
        println!(
            "| {} → {d} | {} | {} |",
            prev.0,
            kib_f((mem as f64 - prev.1 as f64) / span),
            kib_f((json as f64 - prev.2 as f64) / span)
        );
        prev = (d, mem, json);
    }
}

fn kib(bytes: usize) -> String {
    kib_f(bytes as f64)
}

fn kib_f(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}
