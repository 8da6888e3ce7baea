//! How long the request path waits while lag evaluation runs.
//!
//! Every `lag.evaluate_interval_ms` one task recomputes every group partition's lag. Fetch
//! responses on the request path feed the same state (fetch positions, partition heads). This
//! bench fills the state at production scale (`STALL_TOPICS` topics of 100 partitions, one
//! group reading each: 100,000 group partitions by default), runs evaluations back to back on
//! one thread, and on another thread does what each Fetch response does (record its heads,
//! then its fetch positions) for one group's 100 partitions, timing each. It reports the
//! evaluation time and the request-path call's p50, p99, p99.9 and max, with evaluation
//! running and without it. No broker: this measures Tollgate's locking, nothing else.
//!
//! `cargo bench --bench stall` (`STALL_TOPICS`, `STALL_SECONDS` to change the defaults).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::consumers::groups::{Groups, TopicPartition};
use tollgate::consumers::heads::{Heads, Observed};
use tollgate::consumers::lag::Lag;
use tollgate::control::config::LagConfig;
use tollgate::metrics::Metrics;

const PARTITIONS: i32 = 100;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct State {
    heads: Heads,
    lag: Lag,
    groups: Groups,
    metrics: Metrics,
}

/// What one Fetch response does to the shared state: its heads, then its positions.
fn fetch_response(s: &State, group: &str, tps: &[TopicPartition], offset: i64) {
    s.heads.observe(tps.iter().map(|tp| {
        let head = Observed {
            batch_bytes: 1024,
            batch_offsets: 1,
            ..Observed::offsets(offset + 1000, offset + 1000, 0)
        };
        (tp, head)
    }));
    s.lag
        .observe_fetches(group, tps.iter().map(|tp| (tp, offset, 1024)), false);
}

fn fill(topics: u64) -> (State, Vec<(String, Vec<TopicPartition>)>) {
    let s = State {
        heads: Heads::new(),
        lag: Lag::new(LagConfig {
            max_partitions: 1_000_000,
            ..LagConfig::default()
        }),
        groups: Groups::default(),
        metrics: Metrics::new(),
    };
    let readers: Vec<(String, Vec<TopicPartition>)> = (0..topics)
        .map(|t| {
            let tps = (0..PARTITIONS).map(|p| (format!("topic-{t}"), p)).collect();
            (format!("group-{t}"), tps)
        })
        .collect();
    for (group, tps) in &readers {
        fetch_response(&s, group, tps, 0);
    }
    (s, readers)
}

/// Time request-path calls for `secs`; with `evaluating`, evaluations run meanwhile.
fn run(
    s: &Arc<State>,
    readers: &Arc<Vec<(String, Vec<TopicPartition>)>>,
    secs: u64,
    evaluating: bool,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let evaluator = evaluating.then(|| {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut took = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                s.lag.evaluate(&s.heads, &s.groups, None, &s.metrics);
                took.push(t.elapsed());
            }
            took
        })
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut calls = Vec::new();
    let mut i = 0usize;
    while Instant::now() < deadline {
        let (group, tps) = &readers[i % readers.len()];
        let t = Instant::now();
        fetch_response(s, group, tps, 1 + (i / readers.len()) as i64);
        calls.push(t.elapsed());
        i += 1;
        // A busy consumer fleet, not a spin loop: about 10,000 Fetch responses a second.
        std::thread::sleep(Duration::from_micros(100));
    }
    stop.store(true, Ordering::Relaxed);
    let evals = evaluator.map(|h| h.join().expect("evaluator"));
    calls.sort();
    let q = |f: f64| calls[((calls.len() as f64 * f) as usize).min(calls.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let eval = evals.map_or("-".to_string(), |mut e| {
        e.sort();
        format!("{} runs, median {:.0} ms", e.len(), ms(e[e.len() / 2]))
    });
    println!(
        "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.1} |",
        if evaluating { "on" } else { "off" },
        eval,
        calls.len(),
        ms(q(0.5)),
        ms(q(0.99)),
        ms(q(0.999)),
        ms(*calls.last().expect("calls"))
    );
}

fn main() {
    let topics = env("STALL_TOPICS", 1000);
    let secs = env("STALL_SECONDS", 10);
    let (s, readers) = fill(topics);
    let (s, readers) = (Arc::new(s), Arc::new(readers));
    println!(
        "{} group partitions; request-path call = one Fetch response of 100 partitions\n",
        topics * PARTITIONS as u64
    );
    println!("| evaluation | evaluations | calls | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    run(&s, &readers, secs, false);
    run(&s, &readers, secs, true);
}
