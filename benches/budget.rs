//! The cost of read-budget enforcement on a group that stays under its budget.
//!
//! One tansu broker; two Tollgate processes in front of it, identical but for the registry:
//! in one the consumer groups have no read budget, in the other every group has a budget
//! with `on_over_budget = "throttle"` far above what it reads (10 GB/s), so every Fetch goes
//! through the budget layer (registry lookup, token bucket, rate accounting, whole
//! responses) and is never held. Group consumers (`subscribe`) read 200,000 × 1 KiB records
//! through each, the two interleaved, `BENCH_ROUNDS` rounds (default 3); direct reads from
//! the broker in the same rounds give the usual ratio. Reports msg/s median and worst round,
//! and Tollgate's CPU per MB.
//!
//! `cargo bench --bench budget`

mod common;

use std::time::Duration;

use common::*;
use tollgate::loadgen::{self, ConsumeMode};

const REGISTRY: &str = r##"
mode = "shadow"
[[consumer]]
group_prefix = "bench-"
owner = "bench"
contact = "#bench"
topics = ["budget-bench"]
lag_slo_seconds = 3600
"##;

fn main() {
    let rounds: usize = knob("BENCH_ROUNDS", 3);
    let n: u64 = knob("BENCH_MESSAGES", 200_000);
    let broker = BenchBroker::start(Kind::Tansu);
    let addr = broker.addr.clone();
    broker.create_topic("budget-bench");
    let budgeted = format!(
        "{REGISTRY}read_budget_bytes_per_second = 10000000000\non_over_budget = \"throttle\"\n"
    );
    let (off, off_addr) = tollgate_governed(&addr, REGISTRY);
    let (on, on_addr) = tollgate_governed(&addr, &budgeted);
    loadgen::produce(&addr, "budget-bench", n, 1024, "all").unwrap();
    let targets = [
        ("direct", addr.clone(), None),
        ("no budget", off_addr, Some(off.0.id())),
        ("budget, under it", on_addr, Some(on.0.id())),
    ];
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (ti, (name, bootstrap, pid)) in targets.iter().enumerate() {
            let c0 = pid.map_or(0.0, cpu_seconds);
            let group = format!("bench-{round}-{ti}");
            let s = loadgen::consume(
                bootstrap,
                "budget-bench",
                4,
                n,
                ConsumeMode::Group,
                &group,
                Duration::from_secs(300),
            )
            .unwrap();
            assert_eq!(s.messages, n, "{name} read everything");
            let cpu = pid.map_or(0.0, |p| {
                (cpu_seconds(p) - c0) * 1000.0 / (s.bytes as f64 / 1e6)
            });
            eprintln!(
                "[{round}] {name:18} {:>9.0} msg/s  {cpu:.2} ms CPU/MB",
                s.msgs_per_sec()
            );
            results[ti].push((s.msgs_per_sec(), cpu));
        }
    }
    println!("\n{rounds} rounds, {n} x 1 KiB, 4 partitions, subscribe(), medians (worst round):\n");
    println!("| target | msg/s | / direct | / no budget | Tollgate CPU ms/MB |");
    println!("|---|---:|---:|---:|---:|");
    let med = |ti: usize| {
        let mut v: Vec<f64> = results[ti].iter().map(|r| r.0).collect();
        let worst = v.iter().cloned().fold(f64::MAX, f64::min);
        let mut c: Vec<f64> = results[ti].iter().map(|r| r.1).collect();
        (median(&mut v), worst, median(&mut c))
    };
    let direct = med(0);
    let off = med(1);
    for (ti, (name, _, _)) in targets.iter().enumerate() {
        let (m, w, c) = med(ti);
        println!(
            "| {name} | {m:.0} ({w:.0}) | {:.2}x ({:.2}x) | {:.2}x ({:.2}x) | {c:.2} |",
            m / direct.0,
            w / direct.1,
            m / off.0,
            w / off.1
        );
    }
}
