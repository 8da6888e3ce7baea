//! Apache Kafka test brokers: one KRaft node (combined broker and controller) per
//! [`super::Broker`], in its own temporary directory, on free loopback ports.
//!
//! - The jars come from `scripts/install-test-deps` (Maven Central, pinned in
//!   `scripts/kafka/pom.xml`), found in `$KAFKA_LIBS` or the tollgate cache.
//! - A node starts in about 3 s on 2 cores: the storage is formatted once per cache
//!   (`kafka.tools.StorageTool format`, 2 s of JVM start) and copied for every broker, and
//!   the JVM runs C1-only with a 512 MiB heap (about 350 MB resident). Brokers with SCRAM
//!   users are formatted for themselves (`--add-scram` writes the credentials into the
//!   cluster's bootstrap metadata, as `kafka-storage.sh format --add-scram` does).
//! - The JVM runs under `sh`, which kills it when the test process's end of a pipe closes:
//!   a test process that panics or is killed leaves no broker behind.
//! - Settings are Kafka's defaults except what one node needs (replication factors of 1)
//!   and what makes tests fast without changing behaviour a client sees
//!   (`group.initial.rebalance.delay.ms=0`, a few internal-topic partitions).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The pinned version (scripts/kafka/pom.xml).
pub const VERSION: &str = "4.1.1";

/// A listener of the test broker and what it speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    Plaintext,
    /// SASL_PLAINTEXT with PLAIN (users from `users`) and SCRAM-SHA-256/512 (the same users,
    /// created in the cluster's bootstrap metadata).
    SaslPlaintext,
    /// SSL, client certificates required (`ssl.client.auth=required`); principals from the
    /// certificate subject by Kafka's default rule.
    Ssl,
}

impl Security {
    fn protocol(&self) -> &'static str {
        match self {
            Security::Plaintext => "PLAINTEXT",
            Security::SaslPlaintext => "SASL_PLAINTEXT",
            Security::Ssl => "SSL",
        }
    }
    fn sasl(&self) -> bool {
        matches!(self, Security::SaslPlaintext)
    }
    fn tls(&self) -> bool {
        matches!(self, Security::Ssl)
    }
}

/// How to start a test broker beyond the defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// What the client listener speaks.
    pub security: Security,
    /// `(user, password)` pairs known to PLAIN and SCRAM (SASL listeners only).
    pub users: Vec<(String, String)>,
    /// Server certificate, key and CA (PEM) for TLS listeners.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Enable ACLs (StandardAuthorizer), with these principals as super users (besides
    /// `User:ANONYMOUS` on the internal and controller listeners).
    pub acls_super_users: Option<Vec<String>>,
    /// Extra `server.properties` lines.
    pub extra: Vec<String>,
    /// Run the JVM as `kafka-server-start.sh` does (1 GiB heap, G1, full JIT) instead of
    /// the small, quick-starting test JVM: for benchmarks.
    pub production_jvm: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            security: Security::Plaintext,
            users: Vec::new(),
            tls: None,
            acls_super_users: None,
            extra: Vec::new(),
            production_jvm: false,
        }
    }
}

/// A running Kafka node. Dropping it kills the JVM and removes its directory.
pub struct Node {
    pub port: u16,
    /// A plaintext listener beside the client one, for test setup (topics, ACLs): it
    /// advertises itself, and with ACLs on its connections are `User:ANONYMOUS`, a super
    /// user. Clients under test never use it.
    pub internal_port: u16,
    pub java_pid: u32,
    child: Child,
    guard: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

/// Where the broker's jars are.
pub fn libs() -> PathBuf {
    if let Ok(p) = std::env::var("KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    let libs = super::cache_dir().join(format!("kafka-{VERSION}/libs"));
    if !libs.join(format!("kafka_2.13-{VERSION}.jar")).exists() {
        super::run_install_test_deps();
    }
    libs
}

fn classpath() -> String {
    format!("{}/*", libs().display())
}

/// The formatted storage every plain broker starts from (cluster id, node id 1, bootstrap
/// metadata), made once per cache.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = super::cache_dir().join(format!("kafka-{VERSION}/template-v1"));
        if !dir.join("meta.properties").exists() {
            let work = tempfile::tempdir().unwrap();
            let props = work.path().join("server.properties");
            let data = work.path().join("data");
            std::fs::write(&props, properties(&data, [1, 2, 3], &Options::default())).unwrap();
            format(&props, &[]);
            let part = dir.with_extension(format!("part{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&part);
            copy_dir(&data, &part);
            let _ = std::fs::rename(&part, &dir);
            let _ = std::fs::remove_dir_all(&part);
        }
        dir
    })
}

fn format(props: &Path, scram: &[String]) {
    let mut cmd = Command::new("java");
    cmd.args(["-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp"])
        .arg(classpath())
        .args([
            "kafka.tools.StorageTool",
            "format",
            "-t",
            "tollgate-test-cluster0",
        ])
        .arg("-c")
        .arg(props);
    for s in scram {
        cmd.args(["--add-scram", s]);
    }
    let out = cmd.output().expect("run java (kafka.tools.StorageTool)");
    assert!(
        out.status.success(),
        "kafka storage format failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// `server.properties` for one node listening on `port` (clients) and `controller`.
fn properties(data: &Path, ports: [u16; 3], o: &Options) -> String {
    let [port, internal, controller] = ports;
    let proto = o.security.protocol();
    let mut p = vec![
        "process.roles=broker,controller".to_string(),
        "node.id=1".into(),
        format!("controller.quorum.voters=1@127.0.0.1:{controller}"),
        format!("listeners=CLIENT://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}"),
        format!("advertised.listeners=CLIENT://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal}"),
        format!("listener.security.protocol.map=CLIENT:{proto},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"),
        "controller.listener.names=CONTROLLER".into(),
        "inter.broker.listener.name=INTERNAL".into(),
        format!("log.dirs={}", data.display()),
        "offsets.topic.replication.factor=1".into(),
        "offsets.topic.num.partitions=4".into(),
        "transaction.state.log.replication.factor=1".into(),
        "transaction.state.log.min.isr=1".into(),
        "transaction.state.log.num.partitions=4".into(),
        "share.coordinator.state.topic.replication.factor=1".into(),
        "share.coordinator.state.topic.min.isr=1".into(),
        "group.initial.rebalance.delay.ms=0".into(),
    ];
    if o.security.sasl() {
        let plain_users: String = o
            .users
            .iter()
            .map(|(u, pw)| format!(" user_{u}=\"{pw}\""))
            .collect();
        p.push("sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512".into());
        p.push(format!(
            "listener.name.client.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};"
        ));
        for m in ["scram-sha-256", "scram-sha-512"] {
            p.push(format!(
                "listener.name.client.{m}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ));
        }
    }
    if o.security.tls() {
        let (cert, key, ca) = o.tls.as_ref().expect("a TLS listener needs tls files");
        p.push("ssl.keystore.type=PEM".into());
        p.push(format!(
            "ssl.keystore.location={}",
            keystore_pem(data, cert, key).display()
        ));
        p.push("ssl.truststore.type=PEM".into());
        p.push(format!("ssl.truststore.location={}", ca.display()));
        p.push("ssl.client.auth=required".into());
    }
    if let Some(supers) = &o.acls_super_users {
        p.push(
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer".into(),
        );
        // The internal and controller listeners are plaintext (ANONYMOUS): the node's own
        // broker-to-controller and inter-broker requests need a super user there.
        p.push(format!("super.users=User:ANONYMOUS;{}", supers.join(";")));
        p.push("allow.everyone.if.no.acl.found=false".into());
    }
    p.extend(o.extra.iter().cloned());
    p.join("\n") + "\n"
}

/// Kafka's PEM keystore: the key then the certificate, in one file.
fn keystore_pem(data: &Path, cert: &Path, key: &Path) -> PathBuf {
    let path = data.with_file_name("server.keystore.pem");
    let text = std::fs::read_to_string(key).unwrap() + &std::fs::read_to_string(cert).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

const LOG4J2: &str = "Configuration:
  Appenders:
    File:
      name: F
      fileName: \"${sys:tollgate.test.log}\"
      PatternLayout:
        pattern: \"[%d] %p %m (%c)%n\"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: F
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
";

impl Node {
    pub fn start(o: &Options) -> Node {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(o) {
                Ok(n) => return n,
                Err(e) => last = e,
            }
        }
        panic!("Apache Kafka did not start: {last}");
    }

    fn try_start(o: &Options) -> Result<Node, String> {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ports = [super::free_port(), super::free_port(), super::free_port()];
        let port = ports[0];
        let props = dir.path().join("server.properties");
        std::fs::write(&props, properties(&data, ports, o)).unwrap();
        if o.security.sasl() && !o.users.is_empty() {
            format(&props, &scram_users(&o.users));
        } else {
            copy_dir(template(), &data);
        }
        std::fs::write(dir.path().join("log4j2.yaml"), LOG4J2).unwrap();
        let log = dir.path().join("server.log");
        let mut child = spawn(dir.path(), &props, &log, o.production_jvm);
        let java_pid = read_pid(&mut child);
        let guard = child.stdin.take();
        let node = Node {
            port,
            internal_port: ports[1],
            java_pid,
            child,
            guard,
            dir,
        };
        node.wait_started(&log)?;
        Ok(node)
    }

    fn wait_started(&self, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Kafka Server started") {
                return Ok(());
            }
            if !alive(self.java_pid) {
                return Err(format!("the JVM exited; log:\n{}", tail(&text)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "not started within 60 s; log:\n{}",
            tail(&std::fs::read_to_string(log).unwrap_or_default())
        ))
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's own log (WARN and above, plus start-up).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        // Closing the guard pipe makes `sh` kill the JVM and wait for it.
        drop(self.guard.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-9", &self.java_pid.to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn scram_users(users: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (u, pw) in users {
        for m in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            out.push(format!("{m}=[name={u},password={pw}]"));
        }
    }
    out
}

/// `sh` starts the JVM, prints its pid, and kills it (SIGKILL: a test broker has nothing to
/// flush) as soon as its standard input closes: when the node is stopped, or when the test
/// process dies.
fn spawn(dir: &Path, props: &Path, log: &Path, production_jvm: bool) -> Child {
    let script = "java \"$@\" >/dev/null 2>&1 </dev/null & j=$!; echo $j; \
                  cat >/dev/null; kill -9 $j 2>/dev/null; wait $j";
    Command::new("sh")
        .args(["-c", script, "sh"])
        .args(jvm_flags(production_jvm))
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.yaml").display()
        ))
        .arg(format!("-Dtollgate.test.log={}", log.display()))
        .arg("-cp")
        .arg(classpath())
        .arg("kafka.Kafka")
        .arg(props)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh (java)")
}

/// The test JVM starts fast and stays small; the production one is what
/// `kafka-server-start.sh` and `kafka-run-class.sh` give by default.
fn jvm_flags(production: bool) -> &'static [&'static str] {
    if production {
        &[
            "-Xms1g",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
        ]
    } else {
        &[
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xshare:auto",
            "-Djava.awt.headless=true",
        ]
    }
}

fn read_pid(child: &mut Child) -> u32 {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().parse().expect("the JVM's pid")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
