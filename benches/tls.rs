//! TLS on both sides: rdkafka over TLS to a broker directly, against rdkafka over TLS to
//! Tollgate with Tollgate over TLS to the same broker, interleaved in one run. The broker
//! side is tansu behind the test-only rustls relay (tansu 0.6.0 serves no usable TLS;
//! PRODUCT.md), which both paths cross, so the ratio is what Tollgate adds: one more TLS
//! termination and origination, and its own work.
//!
//! Run: `cargo bench --bench tls` (BENCH_ROUNDS=3, BENCH_SCALE=1.0; BENCH_OUT, default
//! target/bench-tls.md). Reports medians, the worst round, and Tollgate's CPU per MB.

use std::process::{Command, Stdio};
use std::time::Duration;

use tollgate::loadgen::{self, ConsumeMode};

mod common;
use common::harness::secure;
use common::*;

/// Per scenario, per target: (msg/s, Tollgate CPU ms per MB) of each round.
type Results = Vec<Vec<Vec<(f64, Option<f64>)>>>;

const SCENARIOS: [&str; 3] = [
    "produce 1 KiB, msg/s",
    "consume 1 KiB assign, msg/s",
    "consume 1 KiB group, msg/s",
];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = knob("BENCH_ROUNDS", 3);
    let n = (200_000.0 * knob("BENCH_SCALE", 1.0)) as u64;
    let pki = secure::Pki::new();
    let relay_port = free_port();
    // tansu advertises the TLS relay in front of it, so clients must go through the relay.
    let broker = Broker::tansu_advertising(Some(relay_port));
    let _relay = secure::TlsRelay::start(relay_port, &pki, broker.addr());
    let tg = start_tollgate(&pki, relay_port);
    // Both paths: librdkafka over TLS, trusting the test CA.
    std::env::set_var(
        loadgen::PROPS_ENV,
        format!(
            "security.protocol=SSL;ssl.ca.location={}",
            pki.ca().display()
        ),
    );
    let targets = [
        ("direct TLS", format!("127.0.0.1:{relay_port}"), None),
        (
            "tollgate TLS",
            format!("127.0.0.1:{}", tg.1),
            Some(tg.0 .0.id()),
        ),
    ];
    let mut results: Results = vec![vec![Vec::new(); 2]; SCENARIOS.len()];
    for round in 0..rounds {
        for (ti, (name, bootstrap, pid)) in targets.iter().enumerate() {
            let topic = format!("tls-{ti}-{round}");
            broker.create_topic(&topic, 4);
            let cpu0 = pid.map(cpu_seconds);
            let per_mb =
                |c0: Option<f64>, mb: f64| c0.map(|c| (cpu_seconds(pid.unwrap()) - c) * 1e3 / mb);
            let s = loadgen::produce(bootstrap, &topic, n, 1024, "all").unwrap();
            assert_eq!(s.errors, 0);
            results[0][ti].push((s.msgs_per_sec(), per_mb(cpu0, s.bytes as f64 / 1e6)));
            for (si, mode) in [(1, ConsumeMode::Assign), (2, ConsumeMode::Group)] {
                let c0 = pid.map(cpu_seconds);
                let group = format!("bench-tls-{ti}-{round}-{si}");
                let s = loadgen::consume(
                    bootstrap,
                    &topic,
                    4,
                    n,
                    mode,
                    &group,
                    Duration::from_secs(300),
                )
                .unwrap();
                assert_eq!(s.messages, n, "{name} read everything");
                results[si][ti].push((s.msgs_per_sec(), per_mb(c0, s.bytes as f64 / 1e6)));
            }
            eprintln!(
                "[{round}] {name}: {:?}",
                results
                    .iter()
                    .map(|r| r[ti].last().unwrap().0 as u64)
                    .collect::<Vec<_>>()
            );
        }
    }
    report(rounds, n, &results);
}

/// Tollgate with TLS to clients and to the broker (through the relay); (process, port).
fn start_tollgate(pki: &secure::Pki, relay_port: u16) -> (Proc, u16) {
    let (port, admin) = (free_port(), free_port());
    let (cert, key) = pki.server();
    let config = format!(
        r#"
[proxy]
listen = "127.0.0.1:{port}"
broker_port_base = 0
[proxy.tls]
cert_file = "{cert}"
key_file = "{key}"
[upstream]
bootstrap_servers = ["127.0.0.1:{relay_port}"]
[upstream.tls]
enabled = true
ca_file = "{ca}"
[admin]
listen = "127.0.0.1:{admin}"
"#,
        cert = cert.display(),
        key = key.display(),
        ca = pki.ca().display(),
    );
    let path = pki.dir.path().join("tollgate.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_port(port);
    (Proc(child), port)
}

fn report(rounds: usize, n: u64, results: &Results) {
    let mut out = format!(
        "TLS on both sides. Medians of {rounds} interleaved rounds, {n} x 1 KiB, 4 partitions, one tansu 0.6.0 broker behind a rustls relay, rdkafka clients over TLS, 2-core machine.\n\n\
         | scenario | direct TLS | tollgate TLS | median ratio | worst round ratio | tollgate CPU ms/MB |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for (si, name) in SCENARIOS.iter().enumerate() {
        let vals = |ti: usize| results[si][ti].iter().map(|s| s.0).collect::<Vec<_>>();
        let (d, t) = (vals(0), vals(1));
        let worst = d
            .iter()
            .zip(&t)
            .map(|(d, t)| t / d)
            .fold(f64::INFINITY, f64::min);
        let cpu = median(
            &mut results[si][1]
                .iter()
                .filter_map(|s| s.1)
                .collect::<Vec<_>>(),
        );
        let (dm, tm) = (median(&mut d.clone()), median(&mut t.clone()));
        out.push_str(&format!(
            "| {name} | {dm:.0} | {tm:.0} | {:.2}x | {worst:.2}x | {cpu:.2} |\n",
            tm / dm
        ));
    }
    println!("{out}");
    let path = std::env::var("BENCH_OUT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-tls.md").into());
    std::fs::write(&path, &out).unwrap();
    eprintln!("written to {path}");
}
