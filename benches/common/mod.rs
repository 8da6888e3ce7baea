//! Helpers shared by the benchmarks: child processes, CPU time from /proc, medians, knobs,
//! Tollgate as its own process, and the broker under test ([`BenchBroker`]: Apache Kafka by
//! default, tansu with `TOLLGATE_BENCH_BROKER=tansu`). Brokers, free ports and topic
//! creation come from the integration tests' harness ([`harness`], included by path), so the
//! benchmarks run the brokers exactly as the tests do.
#![allow(dead_code)]

/// The integration tests' harness (`tests/it/common`).
#[path = "../../tests/it/common/mod.rs"]
pub mod harness;

pub use harness::{free_port, kafka, Broker, Kind};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Proc(pub Child);

/// Start `bin args...` with its output discarded, killed on drop.
pub fn spawn_quiet(bin: &str, args: &[&str]) -> Proc {
    Proc(
        Command::new(bin)
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The tansu binary (installed by `scripts/install-test-deps` when missing).
pub fn tansu() -> String {
    harness::tansu_bin().display().to_string()
}

/// Which broker a benchmark runs against: `TOLLGATE_BENCH_BROKER` = `kafka` (the default) or
/// `tansu`.
pub fn bench_kind() -> Kind {
    match std::env::var("TOLLGATE_BENCH_BROKER").as_deref() {
        Ok("tansu") => Kind::Tansu,
        Ok("kafka") | Err(_) => Kind::Kafka,
        Ok(other) => panic!("TOLLGATE_BENCH_BROKER={other}: expected kafka or tansu"),
    }
}

/// One broker of the chosen kind on a free port, stopped on drop. Apache Kafka runs with the
/// JVM settings `kafka-server-start.sh` gives and Kafka's default broker settings (one node).
pub struct BenchBroker {
    pub broker: Broker,
    /// `host:port` clients bootstrap from.
    pub addr: String,
}

impl BenchBroker {
    pub fn start(kind: Kind) -> BenchBroker {
        let broker = match kind {
            Kind::Tansu => Broker::tansu(),
            Kind::Kafka => Broker::kafka(kafka::Options {
                production_jvm: true,
                ..Default::default()
            }),
        };
        BenchBroker {
            addr: broker.addr(),
            broker,
        }
    }

    pub fn kind(&self) -> Kind {
        self.broker.kind
    }

    /// The broker's process id (the JVM for Kafka), for CPU time.
    pub fn pid(&self) -> u32 {
        self.broker.pid()
    }

    /// What the reports call the broker.
    pub fn label(&self) -> String {
        match self.kind() {
            Kind::Tansu => "one tansu 0.6.0 broker (in-memory)".into(),
            Kind::Kafka => format!(
                "one Apache Kafka {} node (KRaft, combined, default settings, 1 GiB G1 heap)",
                kafka::VERSION
            ),
        }
    }

    /// Create `topic` with 4 partitions and wait until every partition has a leader.
    pub fn create_topic(&self, topic: &str) {
        self.broker.create_topic(topic, 4);
    }
}

/// A benchmark knob from the environment, or its default.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Tollgate (the release binary, its own process) in front of `broker` with everything on:
/// attribution, lag detection, and governance with the registry `registry_toml`. Returns the
/// process and its bootstrap address once it is serving.
pub fn tollgate_governed(broker: &str, registry_toml: &str) -> (Proc, String) {
    tollgate_governed_env(broker, registry_toml, &[])
}

/// [`tollgate_governed`] with extra environment variables (configuration overrides).
pub fn tollgate_governed_env(
    broker: &str,
    registry_toml: &str,
    env: &[(&str, &str)],
) -> (Proc, String) {
    tollgate_governed_bin(env!("CARGO_BIN_EXE_tollgate"), broker, registry_toml, env)
}

/// [`tollgate_governed_env`] with another tollgate binary (a baseline build to compare in
/// the same run).
pub fn tollgate_governed_bin(
    bin: &str,
    broker: &str,
    registry_toml: &str,
    env: &[(&str, &str)],
) -> (Proc, String) {
    use std::io::BufRead;
    let (port, admin) = (free_port(), free_port());
    let registry = std::env::temp_dir().join(format!(
        "tollgate-bench-registry-{}-{port}.toml",
        std::process::id()
    ));
    std::fs::write(&registry, registry_toml).unwrap();
    let mut tg = Command::new(bin)
        .args([
            "run",
            "--bootstrap-server",
            broker,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("TOLLGATE_PROXY__BROKER_PORT_BASE", "0")
        .env("TOLLGATE_GOVERNANCE__REGISTRY", &registry)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(tg.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Proc(tg), format!("127.0.0.1:{port}"))
}

/// A consumer group (`bench-{topic}`) reading `topic` through `bootstrap` until `stop`, on
/// a thread of its own.
pub fn group_reader(
    bootstrap: String,
    topic: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    std::thread::spawn(move || {
        let consumer: BaseConsumer = tollgate::loadgen::base_config(&bootstrap)
            .set("group.id", format!("bench-{topic}"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = consumer.poll(Duration::from_millis(50));
        }
    })
}
