//! Consumer governance against a real broker (tansu) with real clients (rdkafka): refusals
//! the client understands, promptly; registered groups unaffected; group-less readers refused
//! unless allow-listed; per-topic refusals; shadow mode; hot reload; producers untouched.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const REGISTRY: &str = r##"
mode = "enforce"
onboarding = "https://wiki.example.com/kafka/onboarding"

[[consumer]]
group = "gov-ok"
owner = "team-a"
contact = "#team-a"
topics = ["gov-a"]
lag_slo_seconds = 60

[[consumer]]
group_prefix = "probe-"
owner = "team-b"
contact = "#team-b"
topics = ["gov-a"]
tier = "probation"
lag_slo_seconds = 600

[[standalone]]
client_id = "exporter"
topics = ["gov-a"]
"##;

async fn produce(p: &FutureProducer, topic: &str, n: usize) {
    for i in 0..n {
        let key = format!("k{i}");
        p.send(
            FutureRecord::to(topic).key(&key).payload("v"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("producers are never affected by consumer policy");
    }
}

/// What a consumer saw: records per topic, and the error codes it surfaced.
#[derive(Debug, Default)]
struct Seen {
    records: Vec<(String, i64)>,
    errors: Vec<RDKafkaErrorCode>,
    first_error_after: Option<Duration>,
}

fn error_code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// Consume until `want` records arrived and/or the `until` error code was seen, or timeout.
fn run_consumer(
    via: &str,
    client_id: &str,
    group: Option<&str>,
    topics: &[&str],
    want: usize,
    until: Option<RDKafkaErrorCode>,
    timeout: Duration,
) -> Seen {
    let mut cfg = client(via);
    cfg.set("client.id", client_id);
    run_consumer_with(cfg, group, topics, want, until, timeout)
}

/// [`run_consumer`] with a client config of the caller's (the group protocol, say).
fn run_consumer_with(
    mut cfg: rdkafka::config::ClientConfig,
    group: Option<&str>,
    topics: &[&str],
    want: usize,
    until: Option<RDKafkaErrorCode>,
    timeout: Duration,
) -> Seen {
    cfg.set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("group.id", group.unwrap_or("local-only-never-sent"));
    let c: BaseConsumer = cfg.create().expect("consumer");
    match group {
        Some(_) => c.subscribe(topics).unwrap(),
        None => {
            let mut tpl = TopicPartitionList::new();
            for t in topics {
                tpl.add_partition_offset(t, 0, Offset::Beginning).unwrap();
            }
            c.assign(&tpl).unwrap();
        }
    }
    let start = Instant::now();
    let mut seen = Seen::default();
    let done =
        |s: &Seen| s.records.len() >= want && until.is_none_or(|code| s.errors.contains(&code));
    while !done(&seen) && start.elapsed() < timeout {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => seen.records.push((
                rdkafka::Message::topic(&m).to_string(),
                rdkafka::Message::offset(&m),
            )),
            Some(Err(e)) => {
                if let Some(code) = error_code(&e) {
                    seen.first_error_after.get_or_insert(start.elapsed());
                    seen.errors.push(code);
                }
            }
            None => {}
        }
    }
    if group.is_some() && !seen.records.is_empty() {
        c.commit_consumer_state(CommitMode::Sync)
            .expect("a registered group commits");
    }
    drop(c);
    seen
}

async fn consume(
    via: &str,
    client_id: &str,
    group: Option<&str>,
    topics: &[&str],
    want: usize,
    until: Option<RDKafkaErrorCode>,
    timeout: Duration,
) -> Seen {
    let (via, client_id) = (via.to_string(), client_id.to_string());
    let group = group.map(str::to_string);
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let t: Vec<&str> = topics.iter().map(String::as_str).collect();
        run_consumer(&via, &client_id, group.as_deref(), &t, want, until, timeout)
    })
    .await
    .unwrap()
}

async fn start_with_registry(broker: &Broker, path: &Path) -> TestProxy {
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.governance.registry = Some(path.display().to_string());
    cfg.governance.watch_interval_ms = 200;
    start_proxy_with(cfg).await
}

fn rejected(text: &str, reason: &str, mode: &str) -> f64 {
    sum_series(
        text,
        "tollgate_rejected_requests_total",
        &[("reason", reason), ("mode", mode)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refuses_what_it_must_and_nothing_else() {
    let broker = Broker::start();
    broker.create_topic("gov-a", 1);
    broker.create_topic("gov-b", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    let proxy = start_with_registry(&broker, &path).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "gov-producer");
    produce(&p, "gov-a", 10).await;
    produce(&p, "gov-b", 10).await;

    // An unregistered group: its join is refused with the group-authorization error, at once.
    let seen = consume(
        &via,
        "stranger",
        Some("gov-unknown"),
        &["gov-a"],
        0,
        Some(RDKafkaErrorCode::GroupAuthorizationFailed),
        Duration::from_secs(20),
    )
    .await;
    assert!(seen.records.is_empty(), "{seen:?}");
    assert!(
        seen.errors
            .contains(&RDKafkaErrorCode::GroupAuthorizationFailed),
        "{seen:?}"
    );
    assert!(
        seen.first_error_after.unwrap() < Duration::from_secs(5),
        "refusal must be prompt: {seen:?}"
    );

    // A registered group reads its topic, and is refused on the topic it may not read only.
    produce(&p, "gov-a", 5).await; // producers keep producing throughout
    let seen = consume(
        &via,
        "team-a-app",
        Some("gov-ok"),
        &["gov-a", "gov-b"],
        15,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(seen.records.len(), 15, "{seen:?}");
    assert!(seen.records.iter().all(|(t, _)| t == "gov-a"));
    assert!(
        seen.errors
            .contains(&RDKafkaErrorCode::TopicAuthorizationFailed),
        "{seen:?}"
    );

    // A group-less assign() reader is refused ...
    let seen = consume(
        &via,
        "nobody",
        None,
        &["gov-a"],
        0,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        Duration::from_secs(20),
    )
    .await;
    assert!(seen.records.is_empty(), "{seen:?}");
    assert!(seen
        .errors
        .contains(&RDKafkaErrorCode::TopicAuthorizationFailed));
    // ... unless allow-listed.
    let seen = consume(
        &via,
        "exporter",
        None,
        &["gov-a"],
        15,
        None,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(seen.records.len(), 15, "{seen:?}");

    produce(&p, "gov-b", 5).await;
    let text = metrics_text(&proxy).await;
    assert!(
        rejected(&text, "unregistered_group", "enforce") >= 1.0,
        "{text}"
    );
    assert!(
        rejected(&text, "topic_not_allowed", "enforce") >= 1.0,
        "{text}"
    );
    assert!(
        rejected(&text, "groupless_consumer", "enforce") >= 1.0,
        "{text}"
    );
    assert_eq!(
        sum_series(
            &text,
            "tollgate_rejected_requests_total",
            &[("api", "Produce")]
        ),
        0.0
    );
    assert_eq!(
        metric_value(&text, "tollgate_registry_entries{tier=\"probation\"}"),
        1.0
    );
    // Refused groups never became members.
    let groups = http_get(proxy.admin_addr, "/v1/groups").await.1;
    assert!(!groups.contains("\"gov-unknown\""), "{groups}");
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_lets_everything_through_and_counts() {
    let broker = Broker::start();
    broker.create_topic("gov-a", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(
        &path,
        REGISTRY.replace("mode = \"enforce\"", "mode = \"shadow\""),
    )
    .unwrap();
    let proxy = start_with_registry(&broker, &path).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "gov-producer");
    produce(&p, "gov-a", 10).await;
    let seen = consume(
        &via,
        "stranger",
        Some("gov-unknown"),
        &["gov-a"],
        10,
        None,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(seen.records.len(), 10, "{seen:?}");
    assert!(seen.errors.is_empty(), "{seen:?}");
    let seen = consume(
        &via,
        "nobody",
        None,
        &["gov-a"],
        10,
        None,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(seen.records.len(), 10, "{seen:?}");
    let text = metrics_text(&proxy).await;
    assert!(
        rejected(&text, "unregistered_group", "shadow") >= 1.0,
        "{text}"
    );
    assert!(
        rejected(&text, "groupless_consumer", "shadow") >= 1.0,
        "{text}"
    );
    assert_eq!(
        sum_series(
            &text,
            "tollgate_rejected_requests_total",
            &[("mode", "enforce")]
        ),
        0.0
    );
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_takes_effect_for_the_next_join_and_a_bad_file_changes_nothing() {
    let broker = Broker::start();
    broker.create_topic("gov-a", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    let proxy = start_with_registry(&broker, &path).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "gov-producer");
    produce(&p, "gov-a", 10).await;

    let seen = consume(
        &via,
        "late",
        Some("late-group"),
        &["gov-a"],
        0,
        Some(RDKafkaErrorCode::GroupAuthorizationFailed),
        Duration::from_secs(20),
    )
    .await;
    assert!(seen
        .errors
        .contains(&RDKafkaErrorCode::GroupAuthorizationFailed));

    // Register the group; the file watch picks it up without a restart.
    let added = format!(
        "{REGISTRY}\n[[consumer]]\ngroup = \"late-group\"\nowner = \"t\"\ncontact = \"c\"\ntopics = [\"gov-a\"]\nlag_slo_seconds = 60\n"
    );
    std::fs::write(&path, &added).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(proxy.admin_addr, "/v1/registry")
        .await
        .1
        .contains("late-group")
    {
        assert!(Instant::now() < deadline, "file change not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&p, "gov-a", 1).await;
    let seen = consume(
        &via,
        "late",
        Some("late-group"),
        &["gov-a"],
        11,
        None,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(seen.records.len(), 11, "{seen:?}");

    // An invalid file: the reload is refused with the entry and key, the old policy stays.
    std::fs::write(
        &path,
        added.replace("lag_slo_seconds = 60\n", "lag_slo_seconds = 0\n"),
    )
    .unwrap();
    let (status, body) = http_post(proxy.admin_addr, "/v1/registry/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("lag_slo_seconds"), "{body}");
    let (_, reg) = http_get(proxy.admin_addr, "/v1/registry").await;
    assert!(
        reg.contains("late-group") && reg.contains("last_error"),
        "{reg}"
    );
    produce(&p, "gov-a", 1).await;
    let seen = consume(
        &via,
        "late",
        Some("late-group"),
        &["gov-a"],
        1,
        None,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        seen.records.len(),
        1,
        "still registered after the bad reload: {seen:?}"
    );
    let text = metrics_text(&proxy).await;
    assert!(metric_value(&text, "tollgate_registry_reloads_total{result=\"error\"}") >= 1.0);
    assert!(metric_value(&text, "tollgate_registry_reloads_total{result=\"ok\"}") >= 1.0);
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
    proxy.shutdown().await;
}

/// KIP-848 groups (`group.protocol=consumer`: ConsumerGroupHeartbeat, no JoinGroup) through
/// two instances behind the balancer, on Apache Kafka (tansu 0.6.0 lacks the protocol): an
/// unregistered group is refused with GROUP_AUTHORIZATION_FAILED and reads nothing; a
/// registered group reads every record, and the tier ties its fetches to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_groups_are_governed_across_a_tier() {
    let broker = Broker::kafka(Default::default());
    broker.create_topic("gov-a", 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    // Quick lag verdicts, as in tests/tier.rs, for the lag check at the end.
    let extra = format!(
        "[governance]\nregistry = \"{}\"\n[lag]\nstopped_after_seconds = 4\nhead_refresh_seconds = 1\n",
        path.display()
    );
    let tier = common::tier::Tier::start(2, &broker.addr(), &extra).await;
    let via = tier.bootstrap();
    let p = producer(&via, "gov-producer");
    produce(&p, "gov-a", 100).await;
    let run = |group: &'static str, want: usize, until: Option<RDKafkaErrorCode>| {
        let mut cfg = client(&via);
        cfg.set("group.protocol", "consumer");
        // Kafka's KIP-848 coordinator owns these: the client may not set them.
        cfg.remove("session.timeout.ms");
        cfg.remove("heartbeat.interval.ms");
        tokio::task::spawn_blocking(move || {
            run_consumer_with(
                cfg,
                Some(group),
                &["gov-a"],
                want,
                until,
                Duration::from_secs(40),
            )
        })
    };
    let ok = run("gov-ok", 100, None).await.unwrap();
    let mut codes = ok.errors.clone();
    codes.dedup();
    assert_eq!(ok.records.len(), 100, "{codes:?}\n{}", tier.logs());
    let rogue = run(
        "rogue-848",
        0,
        Some(RDKafkaErrorCode::GroupAuthorizationFailed),
    )
    .await
    .unwrap();
    assert!(
        rogue.records.is_empty(),
        "an unregistered KIP-848 group read"
    );
    assert!(
        rogue
            .errors
            .contains(&RDKafkaErrorCode::GroupAuthorizationFailed),
        "{:?}",
        rogue.errors
    );
    let tied = tier
        .sum("tollgate_fetched_records_total", &[("group", "gov-ok")])
        .await;
    assert!(tied >= 100.0, "fetches tied to gov-ok: {tied}");
    let refused = tier
        .sum(
            "tollgate_rejected_requests_total",
            &[("group", "rogue-848")],
        )
        .await
        + tier
            .sum("tollgate_rejected_requests_total", &[("mode", "enforce")])
            .await;
    assert!(refused >= 1.0, "the refusal is counted");

    // Lag with the new protocol: gov-ok committed and left; with more records produced it
    // is STOPPED on every instance (absence is a signal), from the coordinator's view and
    // what the instances shared, whichever instance its connections used.
    produce(&p, "gov-a", 20).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in &tier.instances {
        loop {
            let s = i.json("/v1/groups/gov-ok/status").await;
            if s.as_ref().is_some_and(|s| s["status"] == "STOPPED") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gov-ok is not STOPPED: {s:?}\n{}",
                tier.logs()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
}

/// The committed offset of `group` on `topic` partition 0, read at the broker.
fn committed(bootstrap: &str, group: &str, topic: &str) -> Offset {
    let c: BaseConsumer = client(bootstrap).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.find_partition(topic, 0).unwrap().offset()
}

/// Commit `offset` for `group` at the broker, as its real owner would.
fn commit_at(bootstrap: &str, group: &str, topic: &str, offset: i64) {
    let c: BaseConsumer = client(bootstrap).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// DeleteGroups and OffsetDelete destroy a group's committed state: the old code passed them
/// ungoverned, so a client refused every other API of a group could delete it (committed
/// offset 42 -> gone). They follow the group's rules now; a group the caller may use is
/// deleted as before. ListGroups lists only the groups the caller may use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_the_caller_may_not_use_cannot_be_deleted() {
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };
    use kafka_protocol::messages::{ApiKey, OffsetDeleteRequest, OffsetDeleteResponse};
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let broker = Broker::start();
    broker.create_topic("gov-a", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    let proxy = start_with_registry(&broker, &path).await;
    let via = proxy.bootstrap_addr.to_string();
    let direct = broker.addr();
    for g in ["legacy", "gov-ok"] {
        let d = direct.clone();
        tokio::task::spawn_blocking(move || commit_at(&d, g, "gov-a", 42))
            .await
            .unwrap();
    }

    // ListGroups shows the caller only what it may use.
    let v = via.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client(&v).create().unwrap();
        let groups = c.fetch_group_list(None, Duration::from_secs(10)).unwrap();
        groups
            .groups()
            .iter()
            .map(|g| g.name().to_string())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(listed.contains(&"gov-ok".to_string()), "{listed:?}");
    assert!(!listed.contains(&"legacy".to_string()), "{listed:?}");

    let admin: AdminClient<DefaultClientContext> = client(&via).create().unwrap();
    let deleted = admin
        .delete_groups(&["legacy"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(
        matches!(
            &deleted[0],
            Err((_, RDKafkaErrorCode::GroupAuthorizationFailed))
        ),
        "{deleted:?}"
    );
    // OffsetDelete (no rdkafka call for it): a raw request through Tollgate.
    let req = OffsetDeleteRequest::default()
        .with_group_id(kafka_protocol::protocol::StrBytes::from_static_str("legacy").into())
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(kafka_protocol::protocol::StrBytes::from_static_str("gov-a").into())
            .with_partitions(vec![
                OffsetDeleteRequestPartition::default().with_partition_index(0)
            ])]);
    let answer: OffsetDeleteResponse = raw_call(&via, ApiKey::OffsetDelete, 0, &req).await;
    assert_eq!(answer.error_code, 30);
    let d = direct.clone();
    let kept = tokio::task::spawn_blocking(move || committed(&d, "legacy", "gov-a"))
        .await
        .unwrap();
    assert_eq!(
        kept,
        Offset::Offset(42),
        "the refused group's offset is kept"
    );

    // A registered group is deleted as before.
    let deleted = admin
        .delete_groups(&["gov-ok"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let text = metrics_text(&proxy).await;
    assert!(
        sum_series(
            &text,
            "tollgate_rejected_requests_total",
            &[("api", "DeleteGroups")]
        ) >= 1.0,
        "{text}"
    );
    proxy.shutdown().await;
}

/// One request on a fresh connection, and its decoded answer.
async fn raw_call<
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
>(
    addr: &str,
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    body: &Req,
) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(5)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_static_str(
            "raw",
        )));
    let frame = tollgate::wire::protocol::encode_request(&header, body).unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&frame).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut rest = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut rest).await.unwrap();
    let whole = bytes::Bytes::from([len.to_vec(), rest].concat());
    tollgate::wire::protocol::decode_response::<Resp>(&whole, key, version)
        .unwrap()
        .1
}
