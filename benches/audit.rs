//! The audit trail: its own write load on the cluster, and what it costs produce, at
//! 10,000 msg/s.
//!
//! One broker (Apache Kafka by default; `TOLLGATE_BENCH_BROKER=tansu`), and two Tollgate
//! processes in front of it with everything on (attribution, governance with a registry of
//! consumer and producer entries in enforce mode, lag detection), identical but for the
//! audit trail:
//! - **audit off**: `audit.topic = ""`;
//! - **audit on**: `audit.topic = "bench-audit"` with `audit.window_seconds = 1`, sixty times
//!   the default rate of usage windows (the worst case for the topic's load).
//!
//! Per target and round, for `BENCH_SECONDS` (default 20): a producer at `BENCH_RATE`
//! (default 10,000) msg/s of 100 B (acks=all, linger.ms=0, idempotent), a consumer group
//! reading the topic, and a rogue producer (a client id no entry registers) writing as fast
//! as it is refused: a refusal storm. Direct to the broker runs the same producer and
//! reader (the storm has nothing to hit there).
//!
//! Reported: produce latency by 5-second window (median-window p50, worst-window p99), msg/s
//! acknowledged, Tollgate's CPU (percent of one core; the storm is most of it), and, for audit
//! on, what the audit topic received: records and bytes per second, by kind, and the
//! refusals its usage windows counted, read back from the topic itself.
//!
//! `cargo bench --bench audit`

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tollgate::loadgen;

const AUDIT_TOPIC: &str = "bench-audit";

const REGISTRY: &str = r##"
mode = "enforce"
[[consumer]]
group_prefix = "bench-"
owner = "bench"
contact = "#bench"
topic_prefixes = ["audit-bench-"]
lag_slo_seconds = 3600
[[producer]]
client_id = "rdkafka"
owner = "bench"
contact = "#bench"
topic_prefixes = ["audit-bench-"]
"##;

/// An unregistered producer writing `topic` as fast as it is refused.
fn storm(bootstrap: String, topic: String, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let p: BaseProducer = loadgen::base_config(&bootstrap)
            .set("client.id", "rogue")
            .set("linger.ms", "0")
            .set("retries", "0")
            .create()
            .unwrap();
        while !stop.load(Ordering::Relaxed) {
            if p.send(BaseRecord::<(), _>::to(&topic).payload("x"))
                .is_err()
            {
                p.poll(Duration::from_millis(1));
            }
            p.poll(Duration::ZERO);
        }
    });
}

/// The audit topic's end offset.
fn audit_end(broker: &str) -> i64 {
    let c: BaseConsumer = loadgen::base_config(broker).create().unwrap();
    c.fetch_watermarks(AUDIT_TOPIC, 0, Duration::from_secs(10))
        .map_or(0, |(_, h)| h)
}

/// Records and bytes in the audit topic between two offsets, by kind; and the refusals the
/// usage windows among them counted.
fn audit_between(broker: &str, from: i64, to: i64) -> (BTreeMap<String, (u64, u64)>, u64) {
    let c: BaseConsumer = loadgen::base_config(broker)
        .set("group.id", "bench-audit-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(AUDIT_TOPIC, 0, Offset::Offset(from))
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut refusals = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut next = from;
    while next < to && std::time::Instant::now() < deadline {
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        next = m.offset() + 1;
        let payload = m.payload().unwrap_or_default();
        let event = serde_json::from_slice::<serde_json::Value>(payload).unwrap_or_default();
        refusals += event["refusals"].as_u64().unwrap_or(0);
        let kind = event["kind"].as_str().unwrap_or("?").to_string();
        let e = out.entry(kind).or_default();
        e.0 += 1;
        e.1 += (payload.len() + m.key().map_or(0, <[u8]>::len)) as u64;
    }
    (out, refusals)
}

struct Run {
    p50s: Vec<f64>,
    worst_p99: f64,
    msgs_per_sec: f64,
    /// Tollgate's CPU time over the run's wall time, in percent of one core.
    cpu_percent: f64,
}

fn one(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
    pid: Option<u32>,
    storm_on: bool,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let read = group_reader(bootstrap.to_string(), topic.to_string(), stop.clone());
    if storm_on {
        storm(bootstrap.to_string(), topic.to_string(), stop.clone());
    }
    let c0 = pid.map_or(0.0, cpu_seconds);
    let timed =
        loadgen::produce_latency_timed(bootstrap, topic, rate, Duration::from_secs(seconds), 100)
            .unwrap();
    let cpu = pid.map_or(0.0, cpu_seconds) - c0;
    stop.store(true, Ordering::Relaxed);
    let _ = read.join();
    let mut p50s = Vec::new();
    let mut worst_p99: f64 = 0.0;
    for w in 0..seconds.div_ceil(5) {
        let mut lat: Vec<Duration> = timed
            .iter()
            .filter(|(sent, _)| sent.as_secs() / 5 == w)
            .map(|(_, l)| *l)
            .collect();
        p50s.push(loadgen::quantile(&mut lat, 0.5).as_secs_f64() * 1e3);
        worst_p99 = worst_p99.max(loadgen::quantile(&mut lat, 0.99).as_secs_f64() * 1e3);
    }
    Run {
        p50s,
        worst_p99,
        msgs_per_sec: timed.len() as f64 / seconds as f64,
        cpu_percent: cpu * 100.0 / seconds as f64,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = knob("BENCH_ROUNDS", 3);
    let rate: u64 = knob("BENCH_RATE", 10_000);
    let seconds: u64 = knob("BENCH_SECONDS", 20);
    let broker = BenchBroker::start(bench_kind());
    let direct = broker.addr.clone();
    let off_env = [("TOLLGATE_AUDIT__TOPIC", "")];
    let on_env = [
        ("TOLLGATE_AUDIT__TOPIC", AUDIT_TOPIC),
        ("TOLLGATE_AUDIT__WINDOW_SECONDS", "1"),
    ];
    let (off, off_addr) = tollgate_governed_env(&direct, REGISTRY, &off_env);
    let (on, on_addr) = tollgate_governed_env(&direct, REGISTRY, &on_env);
    let targets = [
        ("direct", direct.clone(), None),
        ("audit off", off_addr, Some(off.0.id())),
        ("audit on", on_addr, Some(on.0.id())),
    ];
    println!(
        "{}, {rate} msg/s of 100 B, {seconds} s per target, {rounds} rounds\n",
        broker.label()
    );
    let mut runs: Vec<Vec<Run>> = (0..targets.len()).map(|_| Vec::new()).collect();
    let mut audit: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut audited_seconds = 0.0;
    let mut refusals = 0;
    for round in 0..rounds {
        for (ti, (name, bootstrap, pid)) in targets.iter().enumerate() {
            let topic = format!("audit-bench-{ti}-{round}");
            broker.create_topic(&topic);
            let before = (ti == 2).then(|| audit_end(&direct));
            let r = one(bootstrap, &topic, rate, seconds, *pid, ti > 0);
            eprintln!(
                "[{round}] {name:10} {:>7.0} msg/s  worst p99 {:.2} ms  Tollgate CPU {:.0}%",
                r.msgs_per_sec, r.worst_p99, r.cpu_percent
            );
            if let Some(from) = before {
                // Two windows: the last usage windows of the round are written.
                std::thread::sleep(Duration::from_secs(2));
                let to = audit_end(&direct);
                let (kinds, refused) = audit_between(&direct, from, to);
                for (kind, (n, b)) in kinds {
                    let e = audit.entry(kind).or_default();
                    (e.0, e.1) = (e.0 + n, e.1 + b);
                }
                audited_seconds += seconds as f64 + 2.0;
                refusals += refused;
            }
            runs[ti].push(r);
        }
    }
    report(&targets, &mut runs, &audit, audited_seconds, refusals);
}

fn report(
    targets: &[(&str, String, Option<u32>)],
    runs: &mut [Vec<Run>],
    audit: &BTreeMap<String, (u64, u64)>,
    seconds: f64,
    refusals: u64,
) {
    println!("| target | msg/s (worst round) | median-window p50 ms | worst-window p99 ms | Tollgate CPU % of a core |");
    println!("|---|---:|---:|---:|---:|");
    for (ti, (name, _, _)) in targets.iter().enumerate() {
        let mut rates: Vec<f64> = runs[ti].iter().map(|r| r.msgs_per_sec).collect();
        let worst_rate = rates.iter().cloned().fold(f64::MAX, f64::min);
        let mut p50s: Vec<f64> = runs[ti].iter().flat_map(|r| r.p50s.clone()).collect();
        let worst = runs[ti].iter().map(|r| r.worst_p99).fold(0.0, f64::max);
        let mut cpu: Vec<f64> = runs[ti].iter().map(|r| r.cpu_percent).collect();
        println!(
            "| {name} | {:.0} ({worst_rate:.0}) | {:.3} | {worst:.3} | {:.0} |",
            median(&mut rates),
            median(&mut p50s),
            median(&mut cpu)
        );
    }
    let (n, b): (u64, u64) = audit.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
    println!("\nThe audit topic's load with audit on (window_seconds = 1), over {seconds:.0} s: {:.1} records/s, {:.0} B/s", n as f64 / seconds, b as f64 / seconds);
    println!("| kind | records | bytes |\n|---|---:|---:|");
    for (kind, (n, b)) in audit {
        println!("| {kind} | {n} | {b} |");
    }
    let events = audit.get("refusal").map_or(0, |r| r.0);
    println!("\nThe refusal storm: {refusals} refused requests counted in the usage windows, written as {events} refusal events (folded).");
}
