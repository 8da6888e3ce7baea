//! Shared test harness: real brokers (Apache Kafka by default, tansu on request; see
//! [`Kind`]) on free loopback ports, an in-process Tollgate in
//! front of them, and rdkafka helpers that read back exactly what was written.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tollgate::control::config::Config;
use tollgate::proxy::Running;

/// The folder `scripts/install-test-deps` fills: $TOLLGATE_CACHE_DIR or ~/.cache/tollgate.
pub fn cache_dir() -> PathBuf {
    std::env::var("TOLLGATE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tollgate"))
}

/// Install the test dependencies ourselves, so `cargo test` works on a fresh machine too.
pub fn run_install_test_deps() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-test-deps");
    let status = Command::new(script)
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/install-test-deps");
    assert!(
        status.success(),
        "scripts/install-test-deps failed; the test brokers are needed for integration tests"
    );
}

/// Path of the tansu binary: $TANSU_BIN, else the cache that scripts/install-test-deps fills.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let p = cache_dir().join("tansu-0.6.0/tansu");
    if !p.exists() {
        run_install_test_deps();
    }
    p
}

/// Run `work` to completion on a runtime of its own (two workers) in a thread of its own: the
/// servers the tests start (Tollgate in-process, relays, the balancer) outlive the runtime of
/// the test that made them and stop when told.
pub fn in_own_runtime(work: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(work);
    });
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Which broker implementation a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Apache Kafka 4.x, KRaft (the broker users run).
    Kafka,
    /// tansu 0.6.0, in memory (a second implementation, and fast to start).
    Tansu,
}

impl Kind {
    /// The suite's broker: `TOLLGATE_TEST_BROKER` = `kafka` (the default) or `tansu`.
    pub fn from_env() -> Kind {
        match std::env::var("TOLLGATE_TEST_BROKER").as_deref() {
            Ok("tansu") => Kind::Tansu,
            Ok("kafka") | Err(_) => Kind::Kafka,
            Ok(other) => panic!("TOLLGATE_TEST_BROKER={other}: expected kafka or tansu"),
        }
    }
}

enum Process {
    Tansu(Child),
    Kafka(kafka::Node),
    Stopped,
}

/// One broker (one cluster): Apache Kafka or tansu, on a free port, stopped on drop.
pub struct Broker {
    pub port: u16,
    pub kind: Kind,
    process: Process,
}

impl Broker {
    /// A broker of the suite's kind ([`Kind::from_env`]).
    pub fn start() -> Broker {
        match Kind::from_env() {
            Kind::Kafka => Self::kafka(kafka::Options::default()),
            Kind::Tansu => Self::tansu(),
        }
    }

    /// An Apache Kafka node with these options (listener security, users, ACLs).
    pub fn kafka(options: kafka::Options) -> Broker {
        let node = kafka::Node::start(&options);
        Broker {
            port: node.port,
            kind: Kind::Kafka,
            process: Process::Kafka(node),
        }
    }

    /// A tansu broker, whatever the suite's kind.
    pub fn tansu() -> Broker {
        Self::tansu_advertising(None)
    }

    /// A tansu broker that advertises `127.0.0.1:{port}` instead of its own listener: for a
    /// relay in front of it (TLS, SASL) that clients must go through.
    pub fn tansu_advertising(advertised: Option<u16>) -> Broker {
        let bin = tansu_bin();
        for _ in 0..5 {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let adv = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
            let child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &adv,
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn tansu");
            let mut b = Broker {
                port,
                kind: Kind::Tansu,
                process: Process::Tansu(child),
            };
            if wait_for_port(port, Duration::from_secs(10)) {
                return b;
            }
            b.stop();
        }
        panic!("tansu did not start");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id (for /proc: its open sockets).
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Tansu(c) => c.id(),
            Process::Kafka(n) => n.java_pid,
            Process::Stopped => panic!("the broker is stopped"),
        }
    }

    /// The broker's own log (Kafka only; empty for tansu).
    pub fn log(&self) -> String {
        match &self.process {
            Process::Kafka(n) => n.log(),
            _ => String::new(),
        }
    }

    /// Where test setup talks to the broker: Kafka's internal plaintext listener (whatever
    /// the client listener speaks), tansu's only one.
    pub fn setup_addr(&self) -> String {
        match &self.process {
            Process::Kafka(n) => format!("127.0.0.1:{}", n.internal_port),
            _ => self.addr(),
        }
    }

    /// Create `name` and wait until every partition has a leader.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        match self.kind {
            Kind::Tansu => self.create_topic_tansu(name, partitions),
            Kind::Kafka => create_topic_admin(&self.setup_addr(), name, partitions),
        }
    }

    fn create_topic_tansu(&self, name: &str, partitions: i32) {
        let out = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", self.addr()),
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "topic create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&mut self) {
        match std::mem::replace(&mut self.process, Process::Stopped) {
            Process::Tansu(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Process::Kafka(mut n) => n.stop(),
            Process::Stopped => {}
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CreateTopics through the admin API (rdkafka), then Metadata until every partition has a
/// leader: Kafka answers CreateTopics before the partitions are ready to serve.
pub fn create_topic_admin(bootstrap: &str, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        client(bootstrap).create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res =
        futures::executor::block_on(admin.create_topics([&topic], &opts)).expect("CreateTopics");
    for r in res {
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
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions()
                            .iter()
                            .all(|p| p.leader() >= 0 && p.error().is_none())
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

/// A config for an in-process proxy in front of `bootstrap`, on free ports.
pub fn proxy_config(bootstrap: &[String]) -> Config {
    let mut c = Config::default();
    c.proxy.listen = "127.0.0.1:0".into();
    c.proxy.broker_port_base = 0;
    c.proxy.shutdown_grace_ms = 5_000;
    c.admin.listen = "127.0.0.1:0".into();
    c.upstream.bootstrap_servers = bootstrap.to_vec();
    c.upstream.startup_timeout_ms = 10_000;
    // No state topic unless a test asks for one (it costs a topic creation per proxy).
    c.state.topic = String::new();
    // Nor an audit topic (the audit tests set one).
    c.audit.topic = String::new();
    c.validate().expect("test config is valid")
}

pub async fn start_proxy(bootstrap: &[String]) -> TestProxy {
    start_proxy_with(proxy_config(bootstrap)).await
}

/// An in-process proxy on its own runtime and thread, as isolated from the test's blocking
/// client calls (librdkafka close/commit block their thread) as a separate process would be.
pub struct TestProxy {
    pub bootstrap_addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub shared: std::sync::Arc<tollgate::app::App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<bool>>,
}

impl TestProxy {
    /// Graceful shutdown; `true` when every connection drained within the grace period.
    pub async fn shutdown(mut self) -> bool {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap_or(false)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn start_proxy_with(config: Config) -> TestProxy {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "tollgate=warn".into()))
        .with_test_writer()
        .try_init();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    in_own_runtime(async move {
        let running: Running = match tollgate::proxy::start(config).await {
            Ok(r) => r,
            Err(e) => {
                let _ = started_tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = started_tx.send(Ok((
            running.bootstrap_addr,
            running.admin_addr,
            running.shared.clone(),
        )));
        let _ = stop_rx.await;
        let _ = done_tx.send(running.shutdown().await);
    });
    let (bootstrap_addr, admin_addr, shared) = started_rx.await.unwrap().expect("proxy starts");
    TestProxy {
        bootstrap_addr,
        admin_addr,
        shared,
        stop: Some(stop),
        done: Some(done),
    }
}

/// Base client config with settings tansu needs in tests.
pub fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.queue.backoff.ms", "10")
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "20000");
    c
}

pub fn producer(bootstrap: &str, client_id: &str) -> FutureProducer {
    client(bootstrap)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// One record as a consumer sees it: everything the invariant compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

pub fn rec_of<M: Message>(m: &M) -> Rec {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                .collect()
        })
        .unwrap_or_default();
    Rec {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| k.to_vec()),
        value: m.payload().map(|v| v.to_vec()),
        headers,
        timestamp: m.timestamp().to_millis(),
    }
}

/// Produce `n` records with distinct keys, values, headers and timestamps; returns the
/// (partition, offset) of each as acknowledged.
pub async fn produce_known(
    p: &FutureProducer,
    topic: &str,
    n: usize,
    tag: &str,
) -> Vec<(i32, i64)> {
    let base_ts = 1_700_000_000_000i64;
    let mut futs = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("{tag}-key-{i}");
        let value = format!("{tag}-value-{i}-{}", "x".repeat(i % 50));
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "seq",
                value: Some(&i.to_string()),
            })
            .insert(Header {
                key: "tag",
                value: Some(tag),
            });
        let rec = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(base_ts + i as i64);
        futs.push(p.send_result(rec).expect("queue"));
    }
    let mut out = Vec::with_capacity(n);
    for f in futs {
        let d = f.await.expect("delivery future").expect("delivered");
        out.push((d.partition, d.offset));
    }
    out
}

/// Read every partition of `topic` from the beginning with assign(), until `expect` records
/// arrived or `timeout` passed. Sorted by (partition, offset).
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expect: usize,
    timeout: Duration,
) -> Vec<Rec> {
    read_all_with(client(bootstrap), topic, partitions, expect, timeout)
}

/// [`read_all`] with a client config of the caller's (TLS, SASL).
pub fn read_all_with(
    mut config: ClientConfig,
    topic: &str,
    partitions: i32,
    expect: usize,
    timeout: Duration,
) -> Vec<Rec> {
    let consumer: BaseConsumer = config
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expect && Instant::now() < deadline {
        if let Some(r) = consumer.poll(Duration::from_millis(100)) {
            out.push(rec_of(&r.expect("consume")));
        }
    }
    // A short grace period: nothing beyond `expect` must arrive.
    let extra_deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < extra_deadline {
        if let Some(r) = consumer.poll(Duration::from_millis(50)) {
            out.push(rec_of(&r.expect("consume")));
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// [`read_all`] off the async workers (librdkafka blocks its thread).
pub async fn read_all_async(
    bootstrap: String,
    topic: &str,
    partitions: i32,
    expect: usize,
    timeout: Duration,
) -> Vec<Rec> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, partitions, expect, timeout))
        .await
        .unwrap()
}

pub async fn metrics_text(running: &TestProxy) -> String {
    http_get(running.admin_addr, "/metrics").await.1
}

/// Minimal HTTP GET for the admin API (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// Minimal HTTP POST (empty body) for the admin API (status, body).
pub async fn http_post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "POST", path).await
}

async fn http_request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request_with(addr, method, path, "").await
}

/// An HTTP/1.1 request with extra header lines (each ending in `\r\n`).
pub async fn http_request_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Value of a metric line (exact series text before the value), or 0.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Sum a metric over every series whose labels include all of `labels` (`k="v"` pairs).
pub fn sum_series(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Wait until `check` holds on /metrics (counters are updated as responses pass).
pub async fn eventually_metrics(
    proxy: &TestProxy,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics_text(proxy).await;
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- tiered reads -------------------------------------------------------------------

/// Run `tollgate mirror --until-caught-up`.
pub async fn mirror_once(primary: &Broker, secondary: &Broker, topic: &str) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.arg("mirror")
        .arg("--until-caught-up")
        .env("TOLLGATE_UPSTREAM__BOOTSTRAP_SERVERS", primary.addr())
        .env(
            "TOLLGATE_TIERED__SECONDARY_BOOTSTRAP_SERVERS",
            secondary.addr(),
        )
        .env("TOLLGATE_TIERED__TOPICS", topic)
        // Small batches on the secondary: a routed fetch returns about 20 records, so a
        // read takes many fetches (and the secondary can be stopped in the middle of one).
        .env("TOLLGATE_TIERED__MIRROR_BATCH_RECORDS", "20")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mirror: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A proxy with tiered reads on: secondary beyond 300 records of lag, back within 50.
pub async fn tiered_proxy(
    primary: &Broker,
    secondary: &Broker,
    topic: &str,
    registry: Option<&std::path::Path>,
) -> TestProxy {
    tiered_proxy_with(primary, secondary, topic, registry, |_| {}).await
}

/// [`tiered_proxy`] with the config changed by `tweak` first.
pub async fn tiered_proxy_with(
    primary: &Broker,
    secondary: &Broker,
    topic: &str,
    registry: Option<&std::path::Path>,
    tweak: impl FnOnce(&mut Config),
) -> TestProxy {
    let mut cfg = proxy_config(&[primary.addr()]);
    cfg.tiered.enabled = true;
    cfg.tiered.secondary_bootstrap_servers = vec![secondary.addr()];
    cfg.tiered.topics = vec![topic.into()];
    cfg.tiered.enter_lag = 300;
    cfg.tiered.exit_lag = 50;
    cfg.tiered.head_max_age_ms = 200;
    cfg.tiered.secondary_timeout_ms = 2_000;
    cfg.tiered.mirror_lag_interval_ms = 500;
    if let Some(r) = registry {
        cfg.governance.registry = Some(r.display().to_string());
    }
    tweak(&mut cfg);
    let cfg = cfg.validate().unwrap();
    let proxy = start_proxy_with(cfg).await;
    // Wait for the offset syncs.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(proxy.admin_addr, "/v1/routing").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["offset_syncs_loaded"] == true && v["offset_syncs"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "offset syncs never loaded: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy
}
pub mod kafka;
pub mod secure;
pub mod secure_brokers;
pub mod tier;
