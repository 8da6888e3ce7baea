//! Produce-latency benchmark by time window: is there a stall? One broker (Apache Kafka, or
//! tansu with `TOLLGATE_BENCH_BROKER=tansu`), Tollgate in
//! front of it with everything on (attribution, governance with a registry, lag detection,
//! and a consumer group reading the topic, so the periodic tasks have work), and an rdkafka
//! producer at a fixed rate (acks=all, linger.ms=0, 100 B), directly and through Tollgate,
//! interleaved round by round. Every message's acknowledgement latency is kept with its send
//! time and grouped into windows; the report shows each window's p50, p99 and max, and the
//! worst window of each target, so a periodic stall shows up instead of averaging away.
//!
//! Run: `cargo bench --bench latency` (knobs: BENCH_ROUNDS=2, BENCH_RATE=5000 msg/s,
//! BENCH_SECONDS=30 per target and round, BENCH_WINDOW=5 seconds; BENCH_BASELINE_BIN=another
//! tollgate binary to compare in the same rounds; BENCH_OUT=path for the
//! markdown table, default target/bench-latency.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate::loadgen;

mod common;
use common::*;

/// One window of one run.
struct Window {
    p50: f64,
    p99: f64,
    max: f64,
    count: usize,
}

fn windows(timed: &[(Duration, Duration)], width: Duration, seconds: u64) -> Vec<Window> {
    let n = (seconds as f64 / width.as_secs_f64()).ceil() as usize;
    let mut buckets: Vec<Vec<Duration>> = vec![Vec::new(); n.max(1)];
    for (sent, latency) in timed {
        let i = (sent.as_secs_f64() / width.as_secs_f64()) as usize;
        if let Some(b) = buckets.get_mut(i) {
            b.push(*latency);
        }
    }
    buckets
        .into_iter()
        .map(|mut b| {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            Window {
                p50: ms(loadgen::quantile(&mut b, 0.5)),
                p99: ms(loadgen::quantile(&mut b, 0.99)),
                max: ms(loadgen::quantile(&mut b, 1.0)),
                count: b.len(),
            }
        })
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = knob("BENCH_ROUNDS", 2);
    let rate: u64 = knob("BENCH_RATE", 5000);
    let seconds: u64 = knob("BENCH_SECONDS", 30);
    let width = Duration::from_secs(knob("BENCH_WINDOW", 5));
    let broker = BenchBroker::start(bench_kind());
    let direct = broker.addr.clone();
    // Everything on, as in the e2e benchmark.
    let registry = "[[consumer]]\ngroup_prefix = \"bench-\"\nowner = \"bench\"\ncontact = \"-\"\n\
         topic_prefixes = [\"lat-\"]\nlag_slo_seconds = 600\n\n\
         [[standalone]]\nclient_id = \"rdkafka\"\n";
    let (_tg, via) = tollgate_governed(&direct, registry);
    let mut targets = vec![("direct", direct.clone()), ("tollgate", via)];
    // BENCH_BASELINE_BIN: another build, the same way, in the same rounds.
    // Held for the run: the process stops when it is dropped.
    let _baseline = std::env::var("BENCH_BASELINE_BIN").ok().map(|bin| {
        let (p, addr) = tollgate_governed_bin(&bin, &direct, registry, &[]);
        targets.push(("baseline", addr));
        p
    });

    let mut out = format!(
        "Produce latency by {}-second window, {rate} msg/s of 100 B (acks=all, linger.ms=0), {seconds} s per target and round, {rounds} interleaved rounds, a consumer group reading the same topic, {}, rdkafka {}.\n\n| round | target | window | messages | p50 ms | p99 ms | max ms |\n|---|---|---:|---:|---:|---:|---:|\n",
        width.as_secs(),
        broker.label(),
        rdkafka::util::get_rdkafka_version().1
    );
    let mut worst: Vec<(f64, f64)> = vec![(0.0, 0.0); targets.len()];
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (ti, (name, bootstrap)) in targets.iter().enumerate() {
            let topic = format!("lat-{ti}-{round}");
            broker.create_topic(&topic);
            let stop = Arc::new(AtomicBool::new(false));
            group_reader(bootstrap.clone(), topic.clone(), stop.clone());
            let timed = loadgen::produce_latency_timed(
                bootstrap,
                &topic,
                rate,
                Duration::from_secs(seconds),
                100,
            )
            .unwrap();
            stop.store(true, Ordering::Relaxed);
            for (wi, w) in windows(&timed, width, seconds).iter().enumerate() {
                eprintln!(
                    "[{round}] {name:8} window {wi}: {} msgs p50 {:.3} p99 {:.3} max {:.3} ms",
                    w.count, w.p50, w.p99, w.max
                );
                out.push_str(&format!(
                    "| {round} | {name} | {wi} | {} | {:.3} | {:.3} | {:.3} |\n",
                    w.count, w.p50, w.p99, w.max
                ));
                worst[ti].0 = worst[ti].0.max(w.p99);
                worst[ti].1 = worst[ti].1.max(w.max);
                p50s[ti].push(w.p50);
            }
        }
    }
    out.push_str("\n| target | median window p50 ms | worst window p99 ms | worst max ms |\n|---|---:|---:|---:|\n");
    for (ti, (name, _)) in targets.iter().enumerate() {
        out.push_str(&format!(
            "| {name} | {:.3} | {:.3} | {:.3} |\n",
            median(&mut p50s[ti]),
            worst[ti].0,
            worst[ti].1
        ));
    }
    out.push_str(&format!(
        "\nWorst-window p99, tollgate - direct: {:+.3} ms (target: within +5 ms).\n",
        worst[1].0 - worst[0].0
    ));
    let path = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-latency.md").to_string()
    });
    std::fs::write(&path, &out).unwrap();
    println!("{out}\nwritten to {path}");
}
