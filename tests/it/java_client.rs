//! Apache Kafka's own Java client (kafka-clients 3.9.1, the client most production consumers
//! run) through Tollgate against a real tansu broker: idempotent produce, then a consumer group
//! with incremental fetch sessions and synchronous commits. What it reads through the proxy
//! must equal a direct read of the broker, field by field.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn jars_dir() -> PathBuf {
    tansu_bin(); // installs the test dependencies when missing
    let cache = std::env::var("TOLLGATE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tollgate"));
    let dir = cache.join("kafka-clients-3.9.1");
    if !dir.join("kafka-clients.jar").exists() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-test-deps");
        assert!(Command::new(script).status().unwrap().success());
    }
    dir
}

/// The Kafka 4.x client: the broker's own jars (kafka-clients 4.1.1 and its dependencies).
pub(crate) fn jars_dir_4x() -> PathBuf {
    common::kafka::libs()
}

pub(crate) fn compile(jars: &std::path::Path) -> PathBuf {
    let name = jars.file_name().unwrap().to_string_lossy().to_string();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("java-classes-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("javac")
        .arg("-cp")
        .arg(format!("{}/*", jars.display()))
        .arg("-d")
        .arg(&out)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/java/JavaClientCheck.java"
        ))
        .status()
        .expect("javac (JDK 17) is needed for the Java client test");
    assert!(status.success(), "javac failed");
    out
}

/// Run JavaClientCheck (`mode`: produce, consume or both); the records it consumed, sorted,
/// and its output.
pub(crate) async fn run_java(
    jars: &std::path::Path,
    classes: &std::path::Path,
    via: &str,
    topic: &str,
    n: usize,
    group: &str,
    mode: &str,
) -> (Vec<Rec>, String) {
    run_java_with(jars, classes, via, topic, n, group, mode, "").await
}

/// [`run_java`] with extra client properties (`k=v;k=v`).
#[allow(clippy::too_many_arguments)]
async fn run_java_with(
    jars: &std::path::Path,
    classes: &std::path::Path,
    via: &str,
    topic: &str,
    n: usize,
    group: &str,
    mode: &str,
    props: &str,
) -> (Vec<Rec>, String) {
    let props = props.to_string();
    let classpath = format!("{}:{}/*", classes.display(), jars.display());
    let args: Vec<String> = [via, topic, &n.to_string(), group, mode]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("java")
            .env("KAFKA_CLIENT_PROPS", &props)
            .args(["-cp", &classpath, "JavaClientCheck"])
            .args(&args)
            .output()
            .expect("java")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "Java client failed through the proxy: {}\n{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut through: Vec<Rec> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("REC\t"))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Rec {
                partition: f[0].parse().unwrap(),
                offset: f[1].parse().unwrap(),
                key: Some(f[2].as_bytes().to_vec()),
                value: Some(f[3].as_bytes().to_vec()),
                headers: f[4]
                    .split(';')
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        let (k, v) = h.split_once('=').unwrap();
                        (k.to_string(), Some(v.as_bytes().to_vec()))
                    })
                    .collect(),
                timestamp: Some(f[5].parse().unwrap()),
            }
        })
        .collect();
    through.sort_by_key(|r| (r.partition, r.offset));
    (through, stdout)
}

/// The Java consumer (which asks for incremental fetch sessions) backfilling through tiered
/// reads: Tollgate declines the session, the secondary serves the backlog, and every record
/// is the primary's, at the primary's offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_client_backfills_exactly_through_tiered_reads() {
    let jars = jars_dir();
    let classes = compile(&jars);
    let primary = Broker::start();
    let secondary = Broker::start();
    primary.create_topic("jtier", 3);
    let n = 3000;
    let direct_proxy = start_proxy(&[primary.addr()]).await;
    let via = direct_proxy.bootstrap_addr.to_string();
    run_java(&jars, &classes, &via, "jtier", n, "-", "produce").await;
    mirror_once(&primary, &secondary, "jtier").await;
    let proxy = tiered_proxy(&primary, &secondary, "jtier", None).await;
    let via = proxy.bootstrap_addr.to_string();
    let (through, _) = run_java(&jars, &classes, &via, "jtier", n, "jtier-group", "consume").await;
    let direct = read_all_async(primary.addr(), "jtier", 3, n, Duration::from_secs(30)).await;
    assert_eq!(direct.len(), n);
    assert_eq!(
        through, direct,
        "Java client through tiered reads == direct read"
    );
    let text = metrics_text(&proxy).await;
    let secondary_served = sum_series(
        &text,
        "tollgate_tiered_fetched_records_total",
        &[("group", "jtier-group"), ("cluster", "secondary")],
    );
    assert!(secondary_served >= 1000.0, "{text}");
    assert_eq!(
        secondary_served
            + sum_series(
                &text,
                "tollgate_tiered_fetched_records_total",
                &[("group", "jtier-group"), ("cluster", "primary")],
            ),
        n as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_client_produces_and_consumes_in_a_group_exactly() {
    let jars = jars_dir();
    let classes = compile(&jars);
    let broker = Broker::start();
    broker.create_topic("java", 3);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let n = 600;

    let (through, stdout) = run_java(&jars, &classes, &via, "java", n, "java-group", "both").await;
    let direct = read_all_async(broker.addr(), "java", 3, n, Duration::from_secs(30)).await;
    assert_eq!(direct.len(), n);
    assert_eq!(
        through, direct,
        "Java client through the proxy == direct read"
    );

    // Committed positions are the ends of the partitions.
    for line in stdout.lines().filter_map(|l| l.strip_prefix("COMMITTED\t")) {
        let (p, o) = line.split_once('\t').unwrap();
        let p: i32 = p.parse().unwrap();
        let end = direct
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset + 1)
            .max()
            .unwrap_or(0);
        assert_eq!(
            o.parse::<i64>().unwrap(),
            end,
            "partition {p} committed at its end"
        );
    }
    let text = metrics_text(&proxy).await;
    assert!(
        metric_value(
            &text,
            "tollgate_address_rewrites_total{api=\"FindCoordinator\"}"
        ) >= 1.0
    );
    assert!(metric_value(&text, "tollgate_requests_total{api=\"Fetch\"}") >= 2.0);
    assert_eq!(metric_value(&text, "tollgate_frame_errors_total"), 0.0);

    // Attribution of the Java client's traffic: incremental fetch sessions are followed (the
    // Java consumer sends only changed partitions), and the group tie holds.
    let produced = sum_series(
        &text,
        "tollgate_produced_records_total",
        &[("client_id", "java-producer"), ("topic", "java")],
    );
    assert_eq!(produced, n as f64, "{text}");
    let produced_bytes = sum_series(&text, "tollgate_produced_bytes_total", &[("topic", "java")]);
    let labels = [
        ("client_id", "java-consumer"),
        ("group", "java-group"),
        ("topic", "java"),
    ];
    assert_eq!(
        sum_series(&text, "tollgate_fetched_records_total", &labels),
        n as f64,
        "{text}"
    );
    assert_eq!(
        sum_series(&text, "tollgate_fetched_bytes_total", &labels),
        produced_bytes
    );
    proxy.shutdown().await;
}

/// Kafka 4.x's Java client (kafka-clients 4.1.1) with the new consumer group protocol
/// (KIP-848): through Tollgate it writes and reads back exactly what a direct read gives, and
/// its traffic is attributed by topic name. (It negotiates Produce down to v9, the highest
/// Tollgate offers; Produce v13 by topic id is covered by a raw-frame test in hostile.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_4x_java_client_with_kip848_reads_exactly_and_is_attributed_by_name() {
    let broker = Broker::start();
    if broker.kind != Kind::Kafka {
        return; // tansu 0.6.0 offers neither Produce v13 nor KIP-848
    }
    let jars = jars_dir_4x();
    let classes = compile(&jars);
    broker.create_topic("java4", 3);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let n = 300;
    let (through, _) = run_java_with(
        &jars,
        &classes,
        &via,
        "java4",
        n,
        "java4-group",
        "both",
        "group.protocol=consumer",
    )
    .await;
    let direct = read_all_async(broker.addr(), "java4", 3, n, Duration::from_secs(30)).await;
    assert_eq!(direct.len(), n);
    assert_eq!(
        through, direct,
        "Kafka 4.x client through Tollgate == direct"
    );

    let text = metrics_text(&proxy).await;
    let by_name = [("client_id", "java-producer"), ("topic", "java4")];
    let consumed = [
        ("client_id", "java-consumer"),
        ("group", "java4-group"),
        ("topic", "java4"),
    ];
    assert_eq!(
        sum_series(&text, "tollgate_produced_records_total", &by_name),
        n as f64,
        "{text}"
    );
    assert_eq!(
        sum_series(&text, "tollgate_fetched_records_total", &consumed),
        n as f64,
        "{text}"
    );
    proxy.shutdown().await;
}

/// The Java client over mutual TLS (PEM trust and key stores, KIP-651) to Tollgate, and
/// Tollgate over TLS to the broker: the same records as a direct read, the certificate's
/// principal on its traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_client_over_mutual_tls() {
    use crate::common::secure::Pki;
    use crate::common::secure_brokers::TlsBroker;
    let jars = jars_dir();
    let classes = compile(&jars);
    let pki = Pki::new();
    let upstream = TlsBroker::start(&pki);
    upstream.broker.create_topic("java-tls", 2);
    let mut cfg = proxy_config(std::slice::from_ref(&upstream.addr));
    let (cert, key) = pki.server();
    cfg.proxy.tls = Some(tollgate::security::ServerTlsConfig {
        cert_file: cert.display().to_string(),
        key_file: key.display().to_string(),
        client_ca_file: Some(pki.ca().display().to_string()),
        principal_mapping_rules: vec!["RULE:^CN=([^,]+),.*$/$1/".into()],
        ..Default::default()
    });
    cfg.upstream.tls.enabled = true;
    cfg.upstream.tls.ca_file = Some(pki.ca().display().to_string());
    // Tollgate's own certificate: Kafka's SSL listener requires one.
    let (own_cert, own_key) = pki.client("tollgate");
    cfg.upstream.tls.cert_file = Some(own_cert.display().to_string());
    cfg.upstream.tls.key_file = Some(own_key.display().to_string());
    let proxy = start_proxy_with(cfg.validate().unwrap()).await;
    let props = format!(
        "security.protocol=SSL;ssl.truststore.type=PEM;ssl.truststore.location={};\
         ssl.keystore.type=PEM;ssl.keystore.location={}",
        pki.ca().display(),
        pki.client_keystore("java-team").display()
    );
    let via = proxy.bootstrap_addr.to_string();
    let n = 300;
    let (through, _) = run_java_with(
        &jars,
        &classes,
        &via,
        "java-tls",
        n,
        "java-tls-group",
        "both",
        &props,
    )
    .await;
    // Direct, with TLS (and a client certificate, which Kafka's listener requires).
    let mut tls = client(&upstream.addr);
    for (k, v) in TlsBroker::client_props(&pki, "direct-reader") {
        tls.set(k, v);
    }
    let direct = tokio::task::spawn_blocking(move || {
        read_all_with(tls, "java-tls", 2, n, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(direct.len(), n);
    assert_eq!(through, direct, "Java client over TLS == direct read");
    let text = metrics_text(&proxy).await;
    let labels = [("principal", "User:java-team"), ("group", "java-tls-group")];
    assert_eq!(
        sum_series(&text, "tollgate_fetched_records_total", &labels),
        n as f64,
        "{text}"
    );
    proxy.shutdown().await;
}
