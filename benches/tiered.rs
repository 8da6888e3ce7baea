//! Tiered-reads benchmark: backfill throughput through Tollgate when the secondary serves it,
//! against a direct read of the primary in the same run (and, for reference, a direct read of
//! the secondary, Tollgate with tiered reads but no read-ahead, and Tollgate with tiered reads
//! off), interleaved round by round. Also the
//! Tollgate process's CPU per MB read (splitting, decoding, rebasing and re-encoding), and
//! `tollgate mirror`'s copy rate.
//!
//! Run: `cargo bench --bench tiered` (knobs: BENCH_ROUNDS=3, BENCH_SCALE=1.0 multiplies the
//! 200k x 1 KiB dataset; BENCH_OUT=path for the markdown table, default
//! target/bench-tiered.md).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate::loadgen::{self, ConsumeMode};

mod common;
use common::*;

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A Tollgate process in front of `primary`; tiered reads on when `secondary` is given,
/// with read-ahead unless `read_ahead` is false.
fn tollgate(
    primary: &str,
    secondary: Option<&str>,
    topic: &str,
    read_ahead: bool,
) -> (Proc, String, u16) {
    let (port, admin) = (free_port(), free_port());
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.args([
        "run",
        "--bootstrap-server",
        primary,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
    ])
    .env("TOLLGATE_PROXY__BROKER_PORT_BASE", "0")
    .env("TOLLGATE_STATE__TOPIC", "")
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if let Some(s) = secondary {
        c.env("TOLLGATE_TIERED__ENABLED", "true")
            .env("TOLLGATE_TIERED__SECONDARY_BOOTSTRAP_SERVERS", s)
            .env("TOLLGATE_TIERED__TOPICS", topic)
            .env("TOLLGATE_TIERED__ENTER_LAG", "1000")
            .env("TOLLGATE_TIERED__EXIT_LAG", "100");
        if !read_ahead {
            c.env("TOLLGATE_TIERED__READ_AHEAD_BYTES", "0");
        }
    }
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Proc(child), format!("127.0.0.1:{port}"), admin)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = knob("BENCH_ROUNDS", 3);
    let scale: f64 = knob("BENCH_SCALE", 1.0);
    let n = (200_000.0 * scale) as u64;
    let kind = bench_kind();
    let (p, s) = (BenchBroker::start(kind), BenchBroker::start(kind));
    let (primary, secondary) = (p.addr.clone(), s.addr.clone());
    let topic = "tier-1k";
    p.create_topic(topic);
    let produced = loadgen::produce(&primary, topic, n, 1024, "all").unwrap();
    eprintln!("produced {n} x 1 KiB at {:.1} MB/s", produced.mb_per_sec());

    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["mirror", "--until-caught-up"])
        .env("TOLLGATE_UPSTREAM__BOOTSTRAP_SERVERS", &primary)
        .env("TOLLGATE_TIERED__SECONDARY_BOOTSTRAP_SERVERS", &secondary)
        .env("TOLLGATE_TIERED__TOPICS", topic)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mirror_secs = t0.elapsed().as_secs_f64();
    let mirror_mb_s = n as f64 * 1024.0 / 1e6 / mirror_secs;
    eprintln!("mirrored in {mirror_secs:.1} s ({mirror_mb_s:.1} MB/s)");

    let (tiered_proc, tiered_addr, tiered_admin) =
        tollgate(&primary, Some(&secondary), topic, true);
    let (no_ahead_proc, no_ahead_addr, no_ahead_admin) =
        tollgate(&primary, Some(&secondary), topic, false);
    let (plain_proc, plain_addr, _) = tollgate(&primary, None, topic, true);
    let deadline = Instant::now() + Duration::from_secs(30);
    let loaded = |admin| {
        let v: serde_json::Value =
            serde_json::from_str(&http_get(admin, "/v1/routing")).unwrap_or_default();
        v["offset_syncs_loaded"] == true
    };
    while !loaded(tiered_admin) || !loaded(no_ahead_admin) {
        assert!(Instant::now() < deadline, "offset syncs never loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let targets: [(&str, &str, Option<u32>); 5] = [
        ("primary, direct", &primary, None),
        (
            "tollgate, tiered (secondary serves)",
            &tiered_addr,
            Some(tiered_proc.0.id()),
        ),
        (
            "tollgate, tiered, no read-ahead",
            &no_ahead_addr,
            Some(no_ahead_proc.0.id()),
        ),
        (
            "tollgate, tiered off (primary)",
            &plain_addr,
            Some(plain_proc.0.id()),
        ),
        ("secondary, direct", &secondary, None),
    ];
    let mut mbps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, addr, pid)) in targets.iter().enumerate() {
            let c0 = pid.map(cpu_seconds);
            let s = loadgen::consume(
                addr,
                topic,
                4,
                n,
                ConsumeMode::Assign,
                &format!("bench-tier-{round}-{i}"),
                Duration::from_secs(600),
            )
            .unwrap();
            assert_eq!(s.messages, n, "{name}: read everything");
            let mb = s.bytes as f64 / 1e6;
            mbps[i].push(s.mb_per_sec());
            if let (Some(c0), Some(pid)) = (c0, pid) {
                cpu[i].push((cpu_seconds(*pid) - c0) * 1000.0 / mb);
            }
            eprintln!("round {round} {name}: {:.1} MB/s", s.mb_per_sec());
        }
    }
    let metrics = http_get(tiered_admin, "/metrics");
    let by_cluster = |c: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("tollgate_tiered_fetched_bytes_total{")
                    && l.contains(&format!("cluster=\"{c}\""))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    // `+ 0.0`: an empty f64 sum is -0.
    let (on_sec, on_prim) = (by_cluster("secondary") + 0.0, by_cluster("primary") + 0.0);
    let fallbacks = sum_metric(&metrics, "tollgate_tiered_fallbacks_total") + 0.0;
    let ahead = |o: &str| {
        sum_metric(
            &metrics,
            &format!("tollgate_tiered_read_ahead_total{{outcome=\"{o}\"}}"),
        ) + 0.0
    };
    let read_ahead = ["started", "used", "discarded", "failed", "full"]
        .map(|o| format!("{o} {}", ahead(o)))
        .join(", ");
    let base = median(&mut mbps[0].clone());
    let mut table = format!(
        "Medians of {rounds} interleaved rounds, {n} x 1 KiB in 4 partitions read from the \
         beginning with assign() (rdkafka), two brokers, each {}, one machine.\n\n\
         | read | MB/s | vs primary direct | worst round vs secondary direct (same round) | proxy CPU ms per MB |\n|---|---|---|---|---|\n",
        p.label()
    );
    let secondary_idx = targets.len() - 1;
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let m = median(&mut mbps[i].clone());
        let c = if cpu[i].is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", median(&mut cpu[i].clone()))
        };
        let worst = mbps[i]
            .iter()
            .zip(&mbps[secondary_idx])
            .map(|(v, s)| v / s)
            .fold(f64::INFINITY, f64::min);
        table.push_str(&format!(
            "| {name} | {m:.1} | {:.2}x | {worst:.2}x | {c} |\n",
            m / base
        ));
    }
    table.push_str(&format!(
        "\nThrough the tiered proxy, the secondary served {:.1}% of the bytes ({:.0} MB \
         secondary, {:.0} MB primary; fallbacks: {fallbacks}; read-ahead: {read_ahead}). \
         `tollgate mirror` copied the dataset at {mirror_mb_s:.1} MB/s.\n",
        100.0 * on_sec / (on_sec + on_prim).max(1.0),
        on_sec / 1e6,
        on_prim / 1e6
    ));
    println!("{table}");
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-tiered.md").to_string()
    });
    std::fs::write(&out, &table).unwrap();
    eprintln!("written to {out}");
}
