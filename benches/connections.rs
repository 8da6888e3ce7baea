//! Connection-scale benchmark: many client connections, mostly idle, and a steady active load.
//!
//! One broker (Apache Kafka; tansu with `TOLLGATE_BENCH_BROKER=tansu`) and Tollgate in front
//! of it with everything on (attribution, governance with a registry, lag detection), as in `e2e`. For each size (1k, 5k and 10k by default):
//! a fresh Tollgate; then, for each target (the broker directly, then Tollgate), open that
//! many idle client connections (each sends one ApiVersions request and reads the answer, so
//! Tollgate has opened its broker connection for it, then stays silent), and run an rdkafka
//! producer at a fixed rate (acks=all, linger.ms=0, 100 B) beside them. It reports:
//!
//! - the resident memory the idle connections added to Tollgate (its client side and its
//!   broker side: Tollgate holds one broker connection per client connection) and to the
//!   broker, per connection, from `/proc/<pid>/status` (VmRSS); the summary takes Tollgate's
//!   from the first round (a fresh process: later rounds reuse memory the first one freed);
//! - the kernel's TCP buffer memory (`/proc/net/sockstat`, `mem` in pages) per connection;
//! - the active producer's p50 and p99 latency, directly and through Tollgate, at that size.
//!
//! Tollgate needs two descriptors per client connection (its client side and its broker side).
//! The process raises its open-files limit to the hard limit when it may (`prlimit`), and
//! the broker and Tollgate it starts inherit it. On this project's machine the hard limit is
//! 20,000 and cannot be raised from inside the container, so the largest default size is
//! 9,900 client connections (19,800 of Tollgate's descriptors), not 10,000.
//!
//! Run: `cargo bench --bench connections` (knobs: BENCH_SIZES=1000,5000,9900,
//! BENCH_RATE=2000 msg/s, BENCH_SECONDS=10 per target, size and round, BENCH_ROUNDS=3
//! interleaved rounds; BENCH_PRODUCE_DIRECT=1 sends the producer to the broker directly in
//! both columns, so that only where the idle connections go differs; BENCH_OUT=path for the
//! markdown table, default target/bench-connections.md).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tollgate::loadgen;

mod common;
use common::*;

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The kernel's TCP buffer memory, in KiB (`/proc/net/sockstat`, `TCP: ... mem <pages>`).
fn tcp_mem_kib() -> f64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages: f64 = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    pages * 4.0
}

/// An ApiVersions v0 request (header v1, client id `idle`).
fn api_versions_frame(correlation: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation.to_be_bytes());
    body.extend_from_slice(&4i16.to_be_bytes());
    body.extend_from_slice(b"idle");
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

/// Open `n` connections to `addr`, each answered once, and keep them open.
fn open_idle(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&api_versions_frame(i as i32)).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("ApiVersions answer");
        let mut rest = vec![0u8; i32::from_be_bytes(len) as usize];
        s.read_exact(&mut rest).unwrap();
        conns.push(s);
    }
    conns
}

/// One target at one size.
struct Measured {
    tollgate_kib_per_conn: f64,
    broker_kib_per_conn: f64,
    kernel_kib_per_conn: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn measure(
    (target, producer): (&str, &str),
    n: usize,
    pids: (u32, Option<u32>),
    topic: &str,
    rate: u64,
    seconds: u64,
) -> Measured {
    let (broker_pid, tollgate_pid) = pids;
    let before = (
        tollgate_pid.map_or(0.0, rss_kib),
        rss_kib(broker_pid),
        tcp_mem_kib(),
    );
    let conns = open_idle(target, n);
    std::thread::sleep(Duration::from_secs(1));
    let after = (
        tollgate_pid.map_or(0.0, rss_kib),
        rss_kib(broker_pid),
        tcp_mem_kib(),
    );
    let mut lat =
        loadgen::produce_latency(producer, topic, rate, Duration::from_secs(seconds), 100).unwrap();
    drop(conns);
    std::thread::sleep(Duration::from_secs(2)); // let both ends close before the next step
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Measured {
        tollgate_kib_per_conn: (after.0 - before.0) / n as f64,
        broker_kib_per_conn: (after.1 - before.1) / n as f64,
        kernel_kib_per_conn: (after.2 - before.2) / n as f64,
        p50_ms: ms(loadgen::quantile(&mut lat, 0.5)),
        p99_ms: ms(loadgen::quantile(&mut lat, 0.99)),
    }
}

/// One table row.
fn row(n: usize, round: usize, name: &str, is_tollgate: bool, m: &Measured) -> String {
    let tg = if is_tollgate {
        format!("{:.1}", m.tollgate_kib_per_conn)
    } else {
        "-".into()
    };
    format!(
        "| {n} | {round} | {name} | {tg} | {:.1} | {:.2} | {:.3} | {:.3} |\n",
        m.broker_kib_per_conn, m.kernel_kib_per_conn, m.p50_ms, m.p99_ms
    )
}

/// Raise this process's open-files limit where allowed; the broker and Tollgate inherit it.
fn raise_nofile() {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1048576:1048576"])
        .stderr(std::process::Stdio::null())
        .status();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(l) = limits.lines().find(|l| l.starts_with("Max open files")) {
        eprintln!("{l}");
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    raise_nofile();
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000,5000,9900".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rate: u64 = knob("BENCH_RATE", 2000);
    let seconds: u64 = knob("BENCH_SECONDS", 10);
    let rounds: usize = knob("BENCH_ROUNDS", 3);
    let produce_direct = knob("BENCH_PRODUCE_DIRECT", 0u8) == 1;
    let broker = BenchBroker::start(bench_kind());
    let direct = broker.addr.clone();
    let registry = "[[consumer]]\ngroup_prefix = \"bench-\"\nowner = \"bench\"\ncontact = \"-\"\n\
         topic_prefixes = [\"conn-\"]\nlag_slo_seconds = 600\n\n\
         [[standalone]]\nclient_id = \"rdkafka\"\n\n[[standalone]]\nclient_id = \"idle\"\n";
    let mut out = format!(
        "Idle client connections (one ApiVersions each, then silent) beside a producer at {rate} msg/s of 100 B (acks=all, linger.ms=0) for {seconds} s, {}, rdkafka {}; memory is resident-set growth per idle connection.\n\n\
         | connections | round | target | Tollgate KiB/conn | broker KiB/conn | kernel TCP KiB/conn | p50 ms | p99 ms |\n|---:|---:|---|---:|---:|---:|---:|---:|\n",
        broker.label(),
        rdkafka::util::get_rdkafka_version().1
    );
    let mut summary = String::from(
        "\n| connections | Tollgate KiB per idle connection | median p99 direct ms | median p99 Tollgate ms | difference | worst p99 direct ms | worst p99 Tollgate ms | difference |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let broker_pid = broker.pid();
    for &n in &sizes {
        let (tg, via) = tollgate_governed_env(
            &direct,
            registry,
            &[("TOLLGATE_PROXY__MAX_CONNECTIONS", "30000")],
        );
        let targets = [
            ("direct", direct.clone(), None),
            ("tollgate", via.clone(), Some(tg.0.id())),
        ];
        let mut p99s: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut per_conn = f64::NAN;
        for round in 0..rounds {
            for (ti, (name, addr, tg_pid)) in targets.iter().enumerate() {
                let topic = format!("conn-{name}-{n}-{round}");
                broker.create_topic(&topic);
                // BENCH_PRODUCE_DIRECT=1: the producer goes to the broker directly in both
                // columns, so only the idle connections differ (is a tail Tollgate's own?).
                let producer = if produce_direct { &direct } else { addr };
                let m = measure(
                    (addr, producer),
                    n,
                    (broker_pid, *tg_pid),
                    &topic,
                    rate,
                    seconds,
                );
                eprintln!(
                    "{n:>6} [{round}] {name:8}: tollgate {:.1} KiB/conn, broker {:.1} KiB/conn, kernel {:.2} KiB/conn, p50 {:.3} ms, p99 {:.3} ms",
                    m.tollgate_kib_per_conn, m.broker_kib_per_conn, m.kernel_kib_per_conn, m.p50_ms, m.p99_ms
                );
                out.push_str(&row(n, round, name, tg_pid.is_some(), &m));
                p99s[ti].push(m.p99_ms);
                if tg_pid.is_some() && round == 0 {
                    // A fresh process: later rounds reuse memory the first one freed.
                    per_conn = m.tollgate_kib_per_conn;
                }
            }
        }
        let worst = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let (wd, wt) = (worst(&p99s[0]), worst(&p99s[1]));
        let (md, mt) = (median(&mut p99s[0]), median(&mut p99s[1]));
        summary.push_str(&format!(
            "| {n} | {:.1} | {md:.3} | {mt:.3} | {:+.3} ms | {wd:.3} | {wt:.3} | {:+.3} ms |\n",
            per_conn,
            mt - md,
            wt - wd
        ));
        drop(tg);
    }
    out.push_str(&summary);
    out.push_str("\nTargets: Tollgate <= 64 KiB per idle connection (both its sides), active p99 within +1 ms of direct.\n");
    let path = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-connections.md").to_string()
    });
    std::fs::write(&path, &out).unwrap();
    println!("{out}\nwritten to {path}");
}
