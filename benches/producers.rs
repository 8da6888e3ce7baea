//! The cost of the producer policy on producers it lets through.
//!
//! One broker (Apache Kafka by default; `TOLLGATE_BENCH_BROKER=tansu`), and three Tollgate
//! processes in front of it, identical but for the registry:
//! - **no producer entries**: Produce is not governed (the registry has consumer entries
//!   only, as before producers were governed);
//! - **enforcing**: 200 `[[producer]]` entries, enforce mode, the load generator's entry
//!   among the last, by librdkafka's default client id (every Produce is decoded and each
//!   topic looked up);
//! - **enforcing + budget**: the same, and the load generator's entry has a throttling produce
//!   budget far above what it writes (10 GB/s): every Produce is also charged to the tier-wide
//!   bucket and its answer taken whole, and it is never held.
//!
//! The load generator produces `BENCH_MESSAGES` (default 300,000) records of 100 B and
//! 1 KiB, acks=all, idempotent, through each target and directly to the broker, interleaved,
//! `BENCH_ROUNDS` rounds (default 3). Reports msg/s (median, worst round), the ratio to direct
//! and to "no producer entries" in the same rounds, and Tollgate's CPU per MB.
//!
//! `cargo bench --bench producers`

mod common;

use common::*;
use tollgate::loadgen;

const CONSUMERS: &str = r##"
mode = "enforce"
[[consumer]]
group_prefix = "bench-"
owner = "bench"
contact = "#bench"
topics = ["producers-bench"]
lag_slo_seconds = 3600
"##;

/// 199 other producers, then the load generator's entry (`extra` appended to it).
fn producers(extra: &str) -> String {
    let mut r = String::from(CONSUMERS);
    for i in 0..199 {
        r.push_str(&format!(
            "[[producer]]\nprincipal = \"User:team-{i}\"\nowner = \"team-{i}\"\ncontact = \"#t{i}\"\ntopics = [\"t{i}\"]\ntopic_prefixes = [\"team-{i}.\"]\n"
        ));
    }
    r.push_str(&format!(
        "[[producer]]\nclient_id = \"rdkafka\"\nowner = \"bench\"\ncontact = \"#bench\"\ntopics = [\"producers-bench\"]\n{extra}"
    ));
    r
}

fn main() {
    let rounds: usize = knob("BENCH_ROUNDS", 3);
    let n: u64 = knob("BENCH_MESSAGES", 300_000);
    let broker = BenchBroker::start(bench_kind());
    let addr = broker.addr.clone();
    broker.create_topic("producers-bench");
    let budget = "produce_budget_bytes_per_second = 10000000000\non_over_budget = \"throttle\"\n";
    let (off, off_addr) = tollgate_governed(&addr, CONSUMERS);
    let (on, on_addr) = tollgate_governed(&addr, &producers(""));
    let (bud, bud_addr) = tollgate_governed(&addr, &producers(budget));
    let targets = [
        ("direct", addr.clone(), None),
        ("no producer entries", off_addr, Some(off.0.id())),
        ("enforcing", on_addr, Some(on.0.id())),
        ("enforcing + budget", bud_addr, Some(bud.0.id())),
    ];
    println!("{}\n", broker.label());
    for size in [100usize, 1024] {
        let results = run(&targets, rounds, n, size);
        report(&targets, &results, rounds, n, size);
    }
}

/// msg/s and Tollgate CPU ms per MB, per target, per round.
fn run(
    targets: &[(&str, String, Option<u32>)],
    rounds: usize,
    n: u64,
    size: usize,
) -> Vec<Vec<(f64, f64)>> {
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (ti, (name, bootstrap, pid)) in targets.iter().enumerate() {
            let c0 = pid.map_or(0.0, cpu_seconds);
            let s = loadgen::produce(bootstrap, "producers-bench", n, size, "all").unwrap();
            assert_eq!(s.errors, 0, "{name}: every record acknowledged");
            let cpu = pid.map_or(0.0, |p| {
                (cpu_seconds(p) - c0) * 1000.0 / (s.bytes as f64 / 1e6)
            });
            eprintln!(
                "[{round}] {size:>5} B {name:20} {:>9.0} msg/s  {cpu:.2} ms CPU/MB",
                s.msgs_per_sec()
            );
            results[ti].push((s.msgs_per_sec(), cpu));
        }
    }
    results
}

fn report(
    targets: &[(&str, String, Option<u32>)],
    results: &[Vec<(f64, f64)>],
    rounds: usize,
    n: u64,
    size: usize,
) {
    println!("\n{rounds} rounds, {n} x {size} B, acks=all, idempotent, medians (worst round):\n");
    println!("| target | msg/s | / direct | / no producer entries | Tollgate CPU ms/MB |");
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
