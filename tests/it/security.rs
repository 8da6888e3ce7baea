//! Security with real clients and a real broker, deployed as a tier (two instances behind a
//! connection balancer): TLS on both sides and the mTLS principal; SASL (SCRAM-SHA-512 and
//! PLAIN) passed through to a broker that requires it; principal-bound groups; the admin
//! token; the broker's own ACLs applied to each client's principal. The broker authenticates
//! for real: Apache Kafka's SSL (client certificates) and SASL listeners. With the suite on
//! tansu (which serves neither), the test-only TLS relay and SASL front of `common::secure`
//! stand in for them.

use crate::common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::secure::{secret_file, Pki};
use crate::common::secure_brokers::{SaslBroker, TlsBroker};
use crate::common::tier::Tier;
use crate::common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;

fn registry(dir: &std::path::Path, topic: &str) -> String {
    let text = format!(
        r#"
mode = "enforce"

[[consumer]]
group = "billing-readers"
principal = ["User:billing", "User:billing-batch"]
owner = "billing-team"
contact = "billing@example.com"
topics = ["{topic}"]
lag_slo_seconds = 60
"#
    );
    let path = dir.join("registry.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Errors a client reported through its context (authentication failures among them).
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.lock().unwrap().push(format!("{error}: {reason}"));
    }
}
impl ConsumerContext for Errors {}

impl Errors {
    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

fn with(mut c: ClientConfig, props: &[(&str, &str)]) -> ClientConfig {
    for (k, v) in props {
        c.set(*k, *v);
    }
    c
}

async fn produce(via: &str, props: &[(&str, &str)], topic: &str, n: usize) {
    let p: FutureProducer = with(client(via), props)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in 0..n {
        let key = format!("k{i}");
        p.send(
            FutureRecord::to(topic).key(&key).payload("v"),
            Duration::from_secs(20),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    }
}

/// Consume as `group` until `n` distinct keys arrived or `until` (an error code) is seen.
/// Returns (keys, error codes seen, duplicates).
fn consume(
    via: &str,
    props: &[(&str, &str)],
    group: &str,
    topic: &str,
    n: usize,
    until: Option<RDKafkaErrorCode>,
) -> (BTreeSet<String>, Vec<RDKafkaErrorCode>, usize) {
    let c: BaseConsumer<Errors> = with(client(via), props)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Errors::default())
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let (mut keys, mut errors, mut dups) = (BTreeSet::new(), Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && keys.len() < n {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let k = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
                dups += usize::from(!keys.insert(k));
            }
            Some(Err(e)) => {
                if let Some(code) = e.rdkafka_error_code() {
                    errors.push(code);
                    if Some(code) == until {
                        break;
                    }
                }
            }
            None => {}
        }
    }
    (keys, errors, dups)
}

/// Every open connection of the tier, as `/v1/clients` lists them.
async fn clients(tier: &Tier) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for i in &tier.instances {
        if let Some(serde_json::Value::Array(a)) = i.json("/v1/clients").await {
            all.extend(a);
        }
    }
    all
}

/// librdkafka over TLS to a tier of two, the tier over TLS to the broker; mutual TLS names
/// the principal, which is shown, labelled and bound by the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_both_sides_and_the_mtls_principal_across_a_tier() {
    let pki = Pki::new();
    let upstream = TlsBroker::start(&pki);
    upstream.broker.create_topic("sec-tls", 2);
    let (cert, key) = pki.server();
    // Tollgate's own certificate, for a broker that requires one (Kafka's SSL listener).
    let (own_cert, own_key) = pki.client("tollgate");
    let extra = format!(
        r#"
[proxy.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
principal_mapping_rules = ["RULE:^CN=([^,]+),.*$/$1/", "DEFAULT"]
[upstream.tls]
enabled = true
ca_file = "{ca}"
cert_file = "{own_cert}"
key_file = "{own_key}"
[governance]
registry = "{reg}"
"#,
        cert = cert.display(),
        key = key.display(),
        ca = pki.ca().display(),
        own_cert = own_cert.display(),
        own_key = own_key.display(),
        reg = registry(pki.dir.path(), "sec-tls"),
    );
    let tier = Tier::start(2, &upstream.addr, &extra).await;
    let via = tier.bootstrap();
    let ca = pki.ca().display().to_string();
    let tls_as = |cn: &str| TlsBroker::client_props(&pki, cn);
    let billing = tls_as("billing");
    let billing: Vec<(&str, &str)> = billing
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    produce(&via, &billing, "sec-tls", 200).await;

    let (v2, b2) = (
        via.clone(),
        billing
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
    );
    let reader = tokio::task::spawn_blocking(move || {
        let props: Vec<(&str, &str)> = b2.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        consume(&v2, &props, "billing-readers", "sec-tls", 200, None)
    });
    // While it reads: its connections carry the certificate's principal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let c = clients(&tier).await;
        if c.iter()
            .any(|c| c["principal"] == "User:billing" && c["authenticated_by"] == "mtls")
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (keys, errors, dups) = reader.await.unwrap();
    assert!(
        shown,
        "no connection shown as User:billing via mtls: {:?}",
        clients(&tier).await
    );
    assert_eq!(
        (keys.len(), dups),
        (200, 0),
        "errors {errors:?}\n{}",
        tier.logs()
    );
    let fetched = tier
        .sum(
            "tollgate_fetched_records_total",
            &[("principal", "User:billing"), ("group", "billing-readers")],
        )
        .await;
    assert!(fetched >= 200.0, "fetched series by principal: {fetched}");

    // Another team's certificate cannot consume as the billing group.
    let analytics = tls_as("analytics");
    let v3 = via.clone();
    let (keys, errors, _) = tokio::task::spawn_blocking(move || {
        let props: Vec<(&str, &str)> = analytics
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        consume(
            &v3,
            &props,
            "billing-readers",
            "sec-tls",
            1,
            Some(RDKafkaErrorCode::GroupAuthorizationFailed),
        )
    })
    .await
    .unwrap();
    assert!(keys.is_empty(), "analytics read billing's group");
    assert!(
        errors.contains(&RDKafkaErrorCode::GroupAuthorizationFailed),
        "{errors:?}"
    );
    let mismatch = tier
        .sum(
            "tollgate_rejected_requests_total",
            &[("reason", "principal_mismatch")],
        )
        .await;
    assert!(mismatch >= 1.0);

    // No client certificate, or plaintext: the handshake fails, counted.
    let v4 = via.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let no_cert = [
            ("security.protocol", "SSL"),
            ("ssl.ca.location", ca.as_str()),
        ];
        let c: BaseConsumer<Errors> = with(client(&v4), &no_cert)
            .create_with_context(Errors::default())
            .unwrap();
        let md = c.fetch_metadata(Some("sec-tls"), Duration::from_secs(5));
        (md.is_err(), c.context().text())
    })
    .await
    .unwrap();
    assert!(seen.0, "a client without a certificate got metadata");
    let errors = tier
        .sum(
            "tollgate_tls_handshake_errors_total",
            &[("listener", "client")],
        )
        .await;
    assert!(errors >= 1.0, "handshake errors counted: {errors}");
}

/// SASL passed through to a broker that requires it: SCRAM-SHA-512 and PLAIN work, a wrong
/// password fails as it does direct, the principal is shown and bound, a client that skips
/// SASL is closed, and Tollgate's own connections log in with their own user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_and_plain_through_a_tier_to_a_broker_that_requires_them() {
    let dir = tempfile::tempdir().unwrap();
    let users = [
        ("billing", "billing-secret"),
        ("analytics", "analytics-secret"),
        ("tollgate", "tollgate-secret"),
    ];
    let upstream = SaslBroker::start(&users);
    upstream.broker.create_topic("sec-sasl", 2);
    let extra = format!(
        r#"
[upstream.sasl]
mechanism = "SCRAM-SHA-512"
username = "tollgate"
password_file = "{pw}"
[governance]
registry = "{reg}"
"#,
        pw = secret_file(dir.path(), "tollgate-pw", "tollgate-secret"),
        reg = registry(dir.path(), "sec-sasl"),
    );
    let front = upstream.addr.clone();
    let tier = Tier::start(2, &front, &extra).await;
    let via = tier.bootstrap();
    let scram = |user: &'static str, pw: &'static str| {
        [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", user),
            ("sasl.password", pw),
        ]
    };
    let plain = |user: &'static str, pw: &'static str| {
        [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", user),
            ("sasl.password", pw),
        ]
    };
    produce(&via, &scram("billing", "billing-secret"), "sec-sasl", 100).await;
    let v = via.clone();
    let reader = tokio::task::spawn_blocking(move || {
        consume(
            &v,
            &plain("billing", "billing-secret"),
            "billing-readers",
            "sec-sasl",
            100,
            None,
        )
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let c = clients(&tier).await;
        if c.iter()
            .any(|c| c["principal"] == "User:billing" && c["authenticated_by"] == "PLAIN")
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (keys, errors, dups) = reader.await.unwrap();
    assert!(shown, "{:?}", clients(&tier).await);
    assert_eq!((keys.len(), dups), (100, 0), "{errors:?}\n{}", tier.logs());

    // One team cannot consume as another team's group.
    let v = via.clone();
    let (keys, errors, _) = tokio::task::spawn_blocking(move || {
        consume(
            &v,
            &scram("analytics", "analytics-secret"),
            "billing-readers",
            "sec-sasl",
            1,
            Some(RDKafkaErrorCode::GroupAuthorizationFailed),
        )
    })
    .await
    .unwrap();
    assert!(keys.is_empty());
    assert!(
        errors.contains(&RDKafkaErrorCode::GroupAuthorizationFailed),
        "{errors:?}"
    );

    // A wrong password fails as it does direct: an authentication error, no metadata.
    let wrong = |addr: String| {
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer<Errors> = with(client(&addr), &scram("billing", "not-it"))
                .create_with_context(Errors::default())
                .unwrap();
            let md = c.fetch_metadata(Some("sec-sasl"), Duration::from_secs(5));
            // Error events reach the context when the client is polled.
            for _ in 0..5 {
                let _ = c.poll(Duration::from_millis(100));
            }
            (md.is_err(), c.context().text())
        })
    };
    let (direct_failed, direct) = wrong(front.clone()).await.unwrap();
    let (through_failed, through) = wrong(via.clone()).await.unwrap();
    assert!(
        direct_failed && through_failed,
        "direct: {direct}\nthrough: {through}"
    );
    // The broker's own verdict, passed through unchanged.
    for text in [&direct, &through] {
        assert!(
            text.contains("invalid credentials with SASL mechanism SCRAM-SHA-512"),
            "{text}"
        );
    }
    let ok = tier
        .sum("tollgate_sasl_authentications_total", &[("result", "ok")])
        .await;
    let failed = tier
        .sum(
            "tollgate_sasl_authentications_total",
            &[("result", "failed")],
        )
        .await;
    assert!(ok >= 2.0 && failed >= 1.0, "ok {ok}, failed {failed}");

    // A client that skips SASL is closed before anything reaches the broker.
    let v = via.clone();
    let md = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client(&v).create().unwrap();
        c.fetch_metadata(Some("sec-sasl"), Duration::from_secs(3))
            .is_err()
    })
    .await
    .unwrap();
    assert!(md, "an unauthenticated client got metadata");
    let refused = tier
        .sum(
            "tollgate_client_connections_refused_total",
            &[("reason", "sasl_required")],
        )
        .await;
    assert!(refused >= 1.0);
    // Tollgate's own connections logged in: the tier became ready (its control connection's
    // Metadata; the front closes any connection that skips SASL), and the state store (a
    // librdkafka client with the same login) is up on every instance.
    for i in &tier.instances {
        let up = metric_value(&i.metrics().await, "tollgate_state_store_up");
        assert_eq!(up, 1.0, "{}", tier.logs());
    }
}

/// The admin API: mutations need the token; without it nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutations_need_the_token() {
    let broker = Broker::start();
    broker.create_topic("sec-admin", 1);
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), "sec-admin");
    let token = "s3cret-token-0123456789";
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.governance.registry = Some(reg.clone());
    cfg.governance.watch_interval_ms = 0; // only the API reloads
    cfg.admin.token_file = Some(secret_file(dir.path(), "token", token));
    cfg.admin.protect_reads = true;
    let proxy = start_proxy_with(cfg.validate().unwrap()).await;
    let admin = proxy.admin_addr;
    // A new entry in the file, then reload attempts.
    let text = std::fs::read_to_string(&reg).unwrap()
        + "\n[[consumer]]\ngroup = \"added\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\nlag_slo_seconds = 5\n";
    std::fs::write(&reg, text).unwrap();
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    let (code, _) = http_request_with(admin, "POST", "/v1/registry/reload", "").await;
    assert_eq!(code, 401);
    let (code, _) = http_request_with(admin, "POST", "/v1/registry/reload", &bearer("wrong")).await;
    assert_eq!(code, 401);
    let (code, body) = http_request_with(admin, "GET", "/v1/registry", &bearer(token)).await;
    assert_eq!(code, 200);
    assert!(
        !body.contains("\"added\""),
        "changed without a token: {body}"
    );
    let (code, _) = http_get(admin, "/v1/registry").await;
    assert_eq!(code, 401, "protect_reads");
    let (code, _) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200, "scrapes stay open");
    let (code, body) =
        http_request_with(admin, "POST", "/v1/registry/reload", &bearer(token)).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"added\""), "{body}");
    let text = metrics_text(&proxy).await;
    assert!(
        sum_series(
            &text,
            "tollgate_admin_requests_refused_total",
            &[("reason", "unauthorized")]
        ) >= 3.0
    );
    // A rotation to a token shorter than 16 characters (checked only at start before): it
    // lets nobody in, not even with that token.
    secret_file(dir.path(), "token", "short");
    let (code, _) = http_request_with(admin, "POST", "/v1/registry/reload", &bearer("short")).await;
    assert_eq!(code, 503, "a short rotated token is refused");
    proxy.shutdown().await;

    // No token file and a non-loopback listener: mutations are disabled.
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.governance.registry = Some(reg);
    cfg.admin.listen = "0.0.0.0:0".into();
    let proxy = start_proxy_with(cfg.validate().unwrap()).await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.admin_addr.port()));
    let (code, _) = http_request_with(admin, "POST", "/v1/registry/reload", "").await;
    assert_eq!(code, 403);
    let (code, _) = http_get(admin, "/v1/registry").await;
    assert_eq!(code, 200, "reads stay open without protect_reads");
    proxy.shutdown().await;
}

/// `admin.tls`: the API over TLS; plain HTTP to it gets nothing and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::start();
    let pki = Pki::new();
    let (cert, key) = pki.server();
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.admin.tls = Some(tollgate::security::ServerTlsConfig {
        cert_file: cert.display().to_string(),
        key_file: key.display().to_string(),
        ..Default::default()
    });
    let proxy = start_proxy_with(cfg.validate().unwrap()).await;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.ca()).unwrap();
    let ca = rustls::pki_types::pem::PemObject::from_pem_slice(&ca).unwrap();
    roots.add(ca).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // read_to_end keeps what arrived even if the stream ends without close_notify
    // (read_to_string would discard it on that error).
    let mut bytes = Vec::new();
    let _ = tls.read_to_end(&mut bytes).await;
    let answer = String::from_utf8_lossy(&bytes);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let plain = tokio::time::timeout(Duration::from_secs(15), http_plain(proxy.admin_addr)).await;
    assert!(
        plain.is_ok_and(|a| !a.starts_with("HTTP/1.1 200")),
        "plain HTTP answered"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = proxy.shared.metrics.render();
        if sum_series(
            &text,
            "tollgate_tls_handshake_errors_total",
            &[("listener", "admin")],
        ) >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.shutdown().await;
}

/// What a plaintext HTTP request to `addr` gets back (anything, until the server closes).
async fn http_plain(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// Create ACL bindings (`PRINCIPAL:RESOURCE_TYPE:NAME:OPERATION`, allow) with Kafka's own
/// Admin client, through the broker's setup listener.
fn create_acls(setup_addr: &str, bindings: &[&str]) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/TestAcls.java");
    let out = std::process::Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", common::kafka::libs().display()))
        .arg(src)
        .arg(setup_addr)
        .args(bindings)
        .output()
        .expect("run java");
    assert!(
        out.status.success(),
        "CreateAcls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Produce one record; the broker's error code if it was refused.
async fn try_produce(via: &str, props: &[(&str, &str)], topic: &str) -> Option<RDKafkaErrorCode> {
    let p: FutureProducer = with(client(via), props)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let r = p
        .send(
            FutureRecord::to(topic).key("k").payload("v"),
            Duration::from_secs(10),
        )
        .await;
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
    r.err().and_then(|(e, _)| e.rdkafka_error_code())
}

/// Apache Kafka with ACLs (StandardAuthorizer): Tollgate logs in as a super user, yet a client
/// without a WRITE ACL is refused by the broker through Tollgate exactly as it is direct, and
/// a client with one writes. The broker applies its ACLs to the principal each client proved
/// on its own connection; Tollgate's identity never stands in for a client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_acls_apply_to_each_clients_own_principal() {
    let dir = tempfile::tempdir().unwrap();
    let users = [
        ("billing", "billing-secret"),
        ("analytics", "analytics-secret"),
        ("tollgate", "tollgate-secret"),
    ];
    let upstream = SaslBroker::start_with(&users, Some(&["User:tollgate"]));
    upstream.broker.create_topic("sec-acl", 1);
    create_acls(
        &upstream.broker.setup_addr(),
        &[
            "User:billing:TOPIC:sec-acl:WRITE",
            "User:billing:TOPIC:sec-acl:DESCRIBE",
        ],
    );
    let extra = format!(
        r#"
[upstream.sasl]
mechanism = "SCRAM-SHA-256"
username = "tollgate"
password_file = "{pw}"
"#,
        pw = secret_file(dir.path(), "tollgate-pw", "tollgate-secret"),
    );
    let tier = Tier::start(2, &upstream.addr, &extra).await;
    let via = tier.bootstrap();
    let scram = |user: &'static str, pw: &'static str| {
        [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", user),
            ("sasl.password", pw),
        ]
    };
    let analytics = scram("analytics", "analytics-secret");
    let direct = try_produce(&upstream.addr, &analytics, "sec-acl").await;
    let through = try_produce(&via, &analytics, "sec-acl").await;
    assert_eq!(direct, Some(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert_eq!(through, direct, "{}", tier.logs());
    let billing = scram("billing", "billing-secret");
    assert_eq!(try_produce(&via, &billing, "sec-acl").await, None);
    let log = upstream.broker.log();
    assert!(!log.contains("ERROR"), "broker errors:\n{log}");
}

/// Send `frames` back to back on one connection and read up to `n` answers (fewer when the
/// peer closes). The connection stays open for the caller.
async fn pipelined(
    addr: &str,
    frames: &[bytes::Bytes],
    n: usize,
) -> (tokio::net::TcpStream, Vec<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let all: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    s.write_all(&all).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..n {
        let mut len = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut len)).await;
        if !matches!(read, Ok(Ok(_))) {
            break;
        }
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        if s.read_exact(&mut body).await.is_err() {
            break;
        }
        answers.push(body);
    }
    (s, answers)
}

/// A raw request frame with client id `forger`.
fn raw<T: kafka_protocol::protocol::Encodable>(
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    correlation: i32,
    body: &T,
) -> bytes::Bytes {
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_static_str(
            "forger",
        )));
    tollgate::wire::protocol::encode_request(&header, body).unwrap()
}

/// The forgery of issue 26: handshake, login as alice with her password, handshake, login
/// as admin with a wrong password, pipelined on one connection. The broker accepts alice
/// and refuses the late pair; the connection must be alice's (the old code took the name
/// of the latest request when the first answer arrived, and showed User:admin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_second_login_cannot_rename_the_connection() {
    use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};
    use kafka_protocol::protocol::StrBytes;
    let users = [
        ("alice", "alice-secret"),
        ("admin", "admin-secret"),
        ("tollgate", "tollgate-secret"),
    ];
    let upstream = SaslBroker::start(&users);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[upstream.sasl]\nmechanism = \"PLAIN\"\nusername = \"tollgate\"\npassword_file = \"{}\"\n",
        secret_file(dir.path(), "tollgate-pw", "tollgate-secret")
    );
    let tier = Tier::start(2, &upstream.addr, &extra).await;
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    let login = |user: &str, pw: &str| {
        SaslAuthenticateRequest::default()
            .with_auth_bytes(format!("\0{user}\0{pw}").into_bytes().into())
    };
    let frames = [
        raw(ApiKey::SaslHandshake, 1, 1, &handshake),
        raw(
            ApiKey::SaslAuthenticate,
            2,
            2,
            &login("alice", "alice-secret"),
        ),
        raw(ApiKey::SaslHandshake, 1, 3, &handshake),
        raw(ApiKey::SaslAuthenticate, 2, 4, &login("admin", "wrong")),
    ];
    let (_conn, answers) = pipelined(&tier.bootstrap(), &frames, 4).await;
    assert!(answers.len() >= 2, "the first exchange was answered");
    let forger = clients(&tier)
        .await
        .into_iter()
        .find(|c| c["client_id"] == "forger")
        .expect("the connection is listed");
    assert_eq!(forger["principal"], "User:alice", "{forger}");
    assert_eq!(
        tier.sum("tollgate_sasl_authentications_total", &[("result", "ok")])
            .await,
        1.0
    );
}

/// With SASL required, a connection the broker never authenticates is closed after
/// `proxy.sasl.authentication_timeout_ms`, even while it keeps sending ApiVersions (the old
/// code let it hold its slot and a broker connection for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_connection_is_closed_even_if_it_keeps_talking() {
    use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let users = [("alice", "alice-secret"), ("tollgate", "tollgate-secret")];
    let upstream = SaslBroker::start(&users);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[upstream.sasl]\nmechanism = \"PLAIN\"\nusername = \"tollgate\"\npassword_file = \"{}\"\n\
         [proxy.sasl]\nauthentication_timeout_ms = 2000\n",
        secret_file(dir.path(), "tollgate-pw", "tollgate-secret")
    );
    let tier = Tier::start(2, &upstream.addr, &extra).await;
    let mut s = tokio::net::TcpStream::connect(tier.bootstrap())
        .await
        .unwrap();
    let started = Instant::now();
    let mut answered = 0;
    let closed_after = loop {
        let frame = raw(
            ApiKey::ApiVersions,
            3,
            answered + 1,
            &ApiVersionsRequest::default(),
        );
        if s.write_all(&frame).await.is_err() {
            break started.elapsed();
        }
        let mut len = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {
                let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
                if s.read_exact(&mut body).await.is_err() {
                    break started.elapsed();
                }
                answered += 1;
            }
            _ => break started.elapsed(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still open after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    };
    assert!(answered >= 2, "ApiVersions was answered meanwhile");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(6),
        "closed after {closed_after:?}"
    );
    let text = tier
        .sum(
            "tollgate_client_timeouts_total",
            &[("reason", "authentication_timeout")],
        )
        .await;
    assert!(text >= 1.0);
}

/// The admin port is bounded: a connection over `admin.max_connections` is closed at once,
/// and a request whose headers never finish is closed after the header timeout, so
/// half-sent admin requests cannot pile up and take the proxy's file descriptors (the old
/// code kept 600 of them open over 45 s). The proxy answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_admin_requests_cannot_pile_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::start();
    let mut config = proxy_config(&[broker.addr()]);
    config.admin.max_connections = 8;
    let proxy = start_proxy_with(config).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(proxy.admin_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One more: closed at once.
    let mut extra = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // The proxy serves meanwhile.
    let via = proxy.bootstrap_addr.to_string();
    tokio::task::spawn_blocking(move || {
        let c: rdkafka::consumer::BaseConsumer = client(&via).create().unwrap();
        c.fetch_metadata(None, Duration::from_secs(5))
            .expect("Metadata through the proxy");
    })
    .await
    .unwrap();
    // The half-sent ones are closed by the header timeout (10 s).
    let started = Instant::now();
    for s in held.iter_mut() {
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("closed by the header timeout");
        assert!(matches!(n, Ok(0) | Ok(_) | Err(_)));
    }
    assert!(started.elapsed() < Duration::from_secs(13));
    // Room again: a whole request is answered.
    let (status, _) = http_get(proxy.admin_addr, "/healthz").await;
    assert_eq!(status, 200);
    let text = metrics_text(&proxy).await;
    assert!(
        sum_series(
            &text,
            "tollgate_admin_requests_refused_total",
            &[("reason", "max_connections")]
        ) >= 1.0,
        "{text}"
    );
    proxy.shutdown().await;
}

/// `/metrics` carries principal, client id and group labels: `admin.protect_metrics` puts it
/// behind the admin token (probes stay open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_put_behind_the_token() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let token = "metrics-token-0123456789";
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.admin.token_file = Some(secret_file(dir.path(), "token", token));
    cfg.admin.protect_metrics = true;
    let proxy = start_proxy_with(cfg.validate().unwrap()).await;
    let admin = proxy.admin_addr;
    assert_eq!(http_get(admin, "/metrics").await.0, 401);
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let (code, body) = http_request_with(admin, "GET", "/metrics", &bearer).await;
    assert_eq!(code, 200);
    assert!(body.contains("tollgate_"));
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    proxy.shutdown().await;
}

/// The broker sees Tollgate's connection, not the client's, unless the client
/// authenticated with SASL through it. Here the broker's plaintext listener makes every
/// connection `User:ANONYMOUS`, a super user: the old code let any client create ACLs through
/// Tollgate with those rights. CreateAcls is refused now (CLUSTER_AUTHORIZATION_FAILED);
/// the same call straight to the broker still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_administration_needs_the_clients_own_broker_identity() {
    let broker = Broker::start();
    if broker.kind != Kind::Kafka {
        return; // tansu has no ACLs
    }
    drop(broker);
    let broker = Broker::kafka(common::kafka::Options {
        acls_super_users: Some(vec!["User:ANONYMOUS".into()]),
        ..Default::default()
    });
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let run = |bootstrap: String| {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/TestAcls.java");
        std::process::Command::new("java")
            .arg("-cp")
            .arg(format!("{}/*", common::kafka::libs().display()))
            .arg(src)
            .arg(bootstrap)
            .arg("User:mallory:TOPIC:orders:READ")
            .output()
            .expect("run java")
    };
    let through = tokio::task::spawn_blocking({
        let via = via.clone();
        move || run(via)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&through.stderr);
    assert!(!through.status.success(), "created through Tollgate");
    assert!(stderr.contains("ClusterAuthorization"), "{stderr}");
    let direct = tokio::task::spawn_blocking({
        let addr = broker.addr();
        move || run(addr)
    })
    .await
    .unwrap();
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );
    let text = metrics_text(&proxy).await;
    assert!(
        sum_series(
            &text,
            "tollgate_rejected_requests_total",
            &[("reason", "cluster_admin")]
        ) >= 1.0
    );
    proxy.shutdown().await;
}
