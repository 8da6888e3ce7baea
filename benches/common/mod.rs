//! Helpers shared by the benchmarks: free ports, child processes, CPU time from /proc,
//! medians, and the broker under test ([`BenchBroker`]: Apache Kafka by default, tansu with
//! `TOLLGATE_BENCH_BROKER=tansu`).
#![allow(dead_code)]

/// The Apache Kafka node the tests use, started here with the production JVM settings.
#[path = "../../tests/it/common/kafka.rs"]
pub mod kafka;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    String::from_utf8(
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/install-test-deps"
        ))
        .output()
        .expect("scripts/install-test-deps")
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string()
}

/// The folder `scripts/install-test-deps` fills (as in the tests' harness).
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var("TOLLGATE_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tollgate")
        })
}

/// Run `scripts/install-test-deps` (fetches the brokers when missing).
pub fn run_install_test_deps() {
    let _ = tansu();
}

/// Which broker a benchmark runs against: `TOLLGATE_BENCH_BROKER` = `kafka` (the default) or
/// `tansu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    Kafka,
    Tansu,
}

impl BrokerKind {
    pub fn from_env() -> BrokerKind {
        match std::env::var("TOLLGATE_BENCH_BROKER").as_deref() {
            Ok("tansu") => BrokerKind::Tansu,
            Ok("kafka") | Err(_) => BrokerKind::Kafka,
            Ok(other) => panic!("TOLLGATE_BENCH_BROKER={other}: expected kafka or tansu"),
        }
    }
}

enum Held {
    Tansu(Proc),
    Kafka(kafka::Node),
}

/// One broker of the chosen kind on a free port, stopped on drop. Apache Kafka runs with the
/// JVM settings `kafka-server-start.sh` gives and Kafka's default broker settings (one node).
pub struct BenchBroker {
    pub kind: BrokerKind,
    /// `host:port` clients bootstrap from.
    pub addr: String,
    /// tansu's listener URL (tansu only).
    pub url: Option<String>,
    held: Held,
}

impl BenchBroker {
    pub fn start(kind: BrokerKind) -> BenchBroker {
        match kind {
            BrokerKind::Tansu => {
                let (p, addr, url) = tansu_broker(&tansu());
                BenchBroker {
                    kind,
                    addr,
                    url: Some(url),
                    held: Held::Tansu(p),
                }
            }
            BrokerKind::Kafka => {
                let node = kafka::Node::start(&kafka::Options {
                    production_jvm: true,
                    ..Default::default()
                });
                BenchBroker {
                    kind,
                    addr: node.addr(),
                    url: None,
                    held: Held::Kafka(node),
                }
            }
        }
    }

    /// The broker's process id (the JVM for Kafka), for CPU time.
    pub fn pid(&self) -> u32 {
        match &self.held {
            Held::Tansu(p) => p.0.id(),
            Held::Kafka(n) => n.java_pid,
        }
    }

    /// What the reports call the broker.
    pub fn label(&self) -> String {
        match self.kind {
            BrokerKind::Tansu => "one tansu 0.6.0 broker (in-memory)".into(),
            BrokerKind::Kafka => format!(
                "one Apache Kafka {} node (KRaft, combined, default settings, 1 GiB G1 heap)",
                kafka::VERSION
            ),
        }
    }

    /// Create `topic` with 4 partitions and wait until every partition has a leader.
    pub fn create_topic(&self, topic: &str) {
        match self.kind {
            BrokerKind::Tansu => create_topic(&tansu(), self.url.as_ref().unwrap(), topic),
            BrokerKind::Kafka => create_topic_admin(&self.addr, topic, 4),
        }
    }
}

/// CreateTopics with rdkafka's admin client, then Metadata until every partition leads.
pub fn create_topic_admin(bootstrap: &str, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    for r in futures::executor::block_on(admin.create_topics([&topic], &opts)).unwrap() {
        if let Err((t, e)) = r {
            panic!("topic create {t} failed: {e}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics().first().map(|t| {
                    t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} has no leaders");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A benchmark knob from the environment, or its default.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tansu broker on a free port: the process (killed on drop), its address (`host:port`) and
/// its listener URL.
pub fn tansu_broker(tansu: &str) -> (Proc, String, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let p = spawn_quiet(
        tansu,
        &[
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ],
    );
    wait_port(port);
    (p, format!("127.0.0.1:{port}"), url)
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

/// Create `topic` with 4 partitions on the tansu broker at `broker_url` (`tansu topic create`).
pub fn create_topic(tansu: &str, broker_url: &str, topic: &str) {
    let ok = Command::new(tansu)
        .args([
            "topic",
            "create",
            "--broker",
            broker_url,
            "--partitions",
            "4",
            topic,
        ])
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "create topic {topic}");
}
