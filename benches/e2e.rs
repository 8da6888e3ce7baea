//! End-to-end benchmark: the same rdkafka workload against one broker (Apache Kafka, or tansu
//! with `TOLLGATE_BENCH_BROKER=tansu`) directly, through
//! Tollgate, and through `tansu proxy`, interleaved (direct, tollgate, tansu-proxy, direct, ...)
//! in one run so machine noise hits all three alike. Reported as ratios against direct.
//!
//! `BENCH_BASELINE_BIN=/path/to/an/older/tollgate` adds that build as a third target (in
//! place of `tansu proxy`): a before/after comparison in one run.
//!
//! Run: `cargo bench --bench e2e` (knobs: BENCH_ROUNDS=3, BENCH_SCALE=1.0 multiplies the
//! message counts, BENCH_CONSUME_PASSES=3 reads each consume dataset that many times;
//! BENCH_OUT=path for the markdown table, default target/bench-e2e.md).
//!
//! Scenarios: produce 1M x 100 B and 200k x 1 KiB (acks=all, idempotent); consume the same
//! data with assign() and in a consumer group; produce latency p50/p99 at 1,000 and 5,000
//! msg/s; and the proxy processes' CPU seconds (from /proc) per MB moved.

use std::time::Duration;

use tollgate::loadgen::{self, ConsumeMode};

mod common;
use common::*;

struct Target {
    name: &'static str,
    bootstrap: String,
    pid: Option<u32>,
}

#[derive(Default, Clone)]
struct Sample {
    value: f64,
    cpu_ms_per_mb: Option<f64>,
}

fn main() {
    // `cargo test --benches` runs this in test mode with --bench absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = knob("BENCH_ROUNDS", 3);
    let scale: f64 = knob("BENCH_SCALE", 1.0);
    let consume_passes: u64 = knob("BENCH_CONSUME_PASSES", 3);
    let n100 = (1_000_000.0 * scale) as u64;
    let n1k = (200_000.0 * scale) as u64;
    let broker = BenchBroker::start(bench_kind());
    let direct = broker.addr.clone();
    let burl = format!("tcp://{direct}");
    // Everything on, as in production: attribution, lag detection, and governance with a
    // registry that admits the benchmark's groups (and its assign() readers by client.id).
    let (tg, tollgate_addr) = tollgate_governed(
        &direct,
        "[[consumer]]\ngroup_prefix = \"bench-\"\nowner = \"bench\"\ncontact = \"-\"\n\
         topic_prefixes = [\"b100-\", \"b1k-\"]\nlag_slo_seconds = 600\n\n\
         [[standalone]]\nclient_id = \"rdkafka\"\n",
    );

    // `tansu proxy` is the comparison proxy on tansu; in front of Apache Kafka it stops
    // answering (seen with 0.6.0), so the Kafka run compares direct and Tollgate only.
    let tansu_proxy = (broker.kind() == Kind::Tansu).then(|| {
        let pport = free_port();
        let purl = format!("tcp://127.0.0.1:{pport}");
        let tp = spawn_quiet(
            &common::tansu(),
            &[
                "proxy",
                "--listener-url",
                &purl,
                "--advertised-listener-url",
                &purl,
                "--origin-url",
                &burl,
            ],
        );
        wait_port(pport);
        (tp, pport)
    });

    let mut targets = vec![
        Target {
            name: "direct",
            bootstrap: direct.clone(),
            pid: None,
        },
        Target {
            name: "tollgate",
            bootstrap: tollgate_addr.clone(),
            pid: Some(tg.0.id()),
        },
    ];
    let registry = "[[consumer]]\ngroup_prefix = \"bench-\"\nowner = \"bench\"\ncontact = \"-\"\n\
         topic_prefixes = [\"b100-\", \"b1k-\"]\nlag_slo_seconds = 600\n\n\
         [[standalone]]\nclient_id = \"rdkafka\"\n";
    let baseline = std::env::var("BENCH_BASELINE_BIN")
        .ok()
        // A state topic of its own: two processes on one state topic are a tier of two, and
        // a group-less reader's first Fetch then waits for the tier view
        // (`attribution.tie_wait_ms`), which would swamp these short consume scenarios.
        .map(|bin| {
            let own = [("TOLLGATE_STATE__TOPIC", "_tollgate_state_baseline")];
            tollgate_governed_bin(&bin, &direct, registry, &own)
        });
    if let Some((tp, pport)) = &tansu_proxy {
        targets.push(Target {
            name: "tansu proxy",
            bootstrap: format!("127.0.0.1:{pport}"),
            pid: Some(tp.0.id()),
        });
    } else if let Some((bp, addr)) = &baseline {
        targets.push(Target {
            name: "baseline",
            bootstrap: addr.clone(),
            pid: Some(bp.0.id()),
        });
    }
    let create = |topic: &str| broker.create_topic(topic);

    // results[scenario][target] = samples
    let scenarios = [
        "produce 100 B, msg/s",
        "produce 1 KiB, msg/s",
        "consume 100 B assign, msg/s",
        "consume 1 KiB assign, msg/s",
        "consume 1 KiB group, msg/s",
        "produce latency p50 @1k msg/s, ms",
        "produce latency p99 @1k msg/s, ms",
        "produce latency p50 @5k msg/s, ms",
        "produce latency p99 @5k msg/s, ms",
    ];
    let mut results: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); targets.len()]; scenarios.len()];

    for round in 0..rounds {
        for (ti, t) in targets.iter().enumerate() {
            let cpu = || t.pid.map(cpu_seconds);
            let per_mb = |c0: Option<f64>, mb: f64| {
                c0.map(|c0| (t.pid.map(cpu_seconds).unwrap() - c0) * 1000.0 / mb)
            };
            let p100 = format!("b100-{ti}-{round}");
            let p1k = format!("b1k-{ti}-{round}");
            create(&p100);
            create(&p1k);

            for (si, topic, n, size) in [(0, &p100, n100, 100), (1, &p1k, n1k, 1024)] {
                let c0 = cpu();
                let s = loadgen::produce(&t.bootstrap, topic, n, size, "all").unwrap();
                assert_eq!(s.errors, 0);
                results[si][ti].push(Sample {
                    value: s.msgs_per_sec(),
                    cpu_ms_per_mb: per_mb(c0, s.bytes as f64 / 1e6),
                });
                eprintln!(
                    "[{round}] {:12} {}: {:>9.0} msg/s {:>7.1} MB/s",
                    t.name,
                    scenarios[si],
                    s.msgs_per_sec(),
                    s.mb_per_sec()
                );
            }

            for (si, topic, n, mode) in [
                (2, &p100, n100, ConsumeMode::Assign),
                (3, &p1k, n1k, ConsumeMode::Assign),
                (4, &p1k, n1k, ConsumeMode::Group),
            ] {
                let c0 = cpu();
                // Several passes over the same data (a fresh consumer, and group, each time),
                // so one figure covers several hundred MB rather than a fraction of a second.
                let mut s = loadgen::ConsumeStats {
                    messages: 0,
                    bytes: 0,
                    elapsed: Duration::ZERO,
                };
                for pass in 0..consume_passes {
                    let group = format!("bench-{ti}-{round}-{si}-{pass}");
                    let one = loadgen::consume(
                        &t.bootstrap,
                        topic,
                        4,
                        n,
                        mode,
                        &group,
                        Duration::from_secs(300),
                    )
                    .unwrap();
                    assert_eq!(one.messages, n, "{} {:?} read everything", t.name, mode);
                    s.messages += one.messages;
                    s.bytes += one.bytes;
                    s.elapsed += one.elapsed;
                }
                results[si][ti].push(Sample {
                    value: s.msgs_per_sec(),
                    cpu_ms_per_mb: per_mb(c0, s.bytes as f64 / 1e6),
                });
                eprintln!(
                    "[{round}] {:12} {}: {:>9.0} msg/s {:>7.1} MB/s",
                    t.name,
                    scenarios[si],
                    s.msgs_per_sec(),
                    s.mb_per_sec()
                );
            }

            for (si, rate) in [(5, 1000u64), (7, 5000u64)] {
                let topic = format!("lat-{ti}-{round}-{rate}");
                create(&topic);
                let mut l = loadgen::produce_latency(
                    &t.bootstrap,
                    &topic,
                    rate,
                    Duration::from_secs(6),
                    100,
                )
                .unwrap();
                let p50 = loadgen::quantile(&mut l, 0.5).as_secs_f64() * 1e3;
                let p99 = loadgen::quantile(&mut l, 0.99).as_secs_f64() * 1e3;
                results[si][ti].push(Sample {
                    value: p50,
                    cpu_ms_per_mb: None,
                });
                results[si + 1][ti].push(Sample {
                    value: p99,
                    cpu_ms_per_mb: None,
                });
                eprintln!(
                    "[{round}] {:12} latency @{rate}/s: p50 {p50:.3} ms p99 {p99:.3} ms",
                    t.name
                );
            }
        }
    }

    let mut out = String::new();
    out.push_str(&format!(
        "Medians of {rounds} interleaved rounds, {} x 100 B and {} x 1 KiB (each consume figure: {consume_passes} passes over the data), 4 partitions, {}, rdkafka {} clients, 2-core machine.\n\n",
        n100, n1k, broker.label(), rdkafka::util::get_rdkafka_version().1
    ));
    let third = targets.get(2).map_or("-", |t| t.name);
    out.push_str(&format!("| scenario | direct | tollgate | tollgate / direct | worst round, tollgate / direct | {third} | {third} / direct |\n|---|---:|---:|---:|---:|---:|---:|\n"));
    for (si, name) in scenarios.iter().enumerate() {
        let med: Vec<f64> = (0..targets.len())
            .map(|ti| median(&mut results[si][ti].iter().map(|s| s.value).collect::<Vec<_>>()))
            .collect();
        let is_latency = name.contains("latency");
        let fmt = |v: f64| {
            if is_latency {
                format!("{v:.3}")
            } else {
                format!("{v:.0}")
            }
        };
        let rel = |v: f64| {
            if is_latency {
                format!("{:+.3} ms", v - med[0])
            } else {
                format!("{:.2}x", v / med[0])
            }
        };
        // The worst round: tollgate against direct in the same round.
        let per_round = results[si][0].iter().zip(&results[si][1]);
        let worst = if is_latency {
            let d = per_round.map(|(d, t)| t.value - d.value);
            format!("{:+.3} ms", d.fold(f64::NEG_INFINITY, f64::max))
        } else {
            let r = per_round.map(|(d, t)| t.value / d.value);
            format!("{:.2}x", r.fold(f64::INFINITY, f64::min))
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {worst} | {} | {} |\n",
            fmt(med[0]),
            fmt(med[1]),
            rel(med[1]),
            med.get(2).map_or("-".into(), |v| fmt(*v)),
            med.get(2).map_or("-".into(), |v| rel(*v))
        ));
    }
    out.push_str(&format!("\nProxy CPU, milli-core-seconds per MB moved (= milli-cores per MB/s), medians:\n\n| scenario | tollgate | {third} |\n|---|---:|---:|\n"));
    for (si, name) in scenarios.iter().enumerate().take(5) {
        let c: Vec<f64> = (1..targets.len())
            .map(|ti| {
                median(
                    &mut results[si][ti]
                        .iter()
                        .filter_map(|s| s.cpu_ms_per_mb)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        out.push_str(&format!(
            "| {} | {:.2} | {} |\n",
            name.trim_end_matches(", msg/s"),
            c[0],
            c.get(1).map_or("-".into(), |v| format!("{v:.2}"))
        ));
    }
    println!("{out}");
    let path = std::env::var("BENCH_OUT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-e2e.md").into());
    std::fs::write(&path, &out).unwrap();
    eprintln!("written to {path}");
}
