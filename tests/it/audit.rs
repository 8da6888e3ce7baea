//! The audit trail and showback as deployed: two instances behind the balancer in front of
//! the suite's broker (Apache Kafka by default), a registry with a consumer entry and a
//! producer entry, real librdkafka clients with their default client ids.
//!
//! - librdkafka produces and reads in one group, Apache Kafka's Java client (4.1.1) reads in
//!   another.
//! - Showback, asked of a third instance started after the traffic (so recomputed from the
//!   audit topic, not from any instance's memory), equals what the test produced and read:
//!   records exactly, bytes as the tier's own counters say; the refused group's refusals
//!   land on `unregistered`; CSV says the same.
//! - The audit topic holds, as versioned JSON: the group's join and its clean leave, the
//!   refusal, the admin change (a topic created through the tier, with the broker's
//!   answer), the registry reload and the rewind window; and clients cannot write it.
//! - `audit.file` gets the same events, one JSON object per line.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::tier::{Instance, Tier};
use crate::common::*;

const AUDIT_TOPIC: &str = "audit-it";

const REGISTRY: &str = r##"
mode = "enforce"
max_rewind_records = 100

[[consumer]]
group = "billing"
owner = "billing-team"
contact = "#billing"
topics = ["orders"]
lag_slo_seconds = 60

[[consumer]]
group = "ledger-java"
owner = "finance"
contact = "#finance"
topics = ["orders"]
lag_slo_seconds = 60

[[producer]]
client_id = "rdkafka"
owner = "web-team"
contact = "#web"
topics = ["orders"]

[admin_policy]
mode = "shadow"
"##;

/// `extra` for a tier with [`REGISTRY`] in `dir` and 2-second usage windows.
fn extra(dir: &std::path::Path) -> String {
    let path = dir.join("registry.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    format!(
        "share_interval_ms = 250\n[governance]\nregistry = \"{}\"\n\
         [audit]\ntopic = \"{AUDIT_TOPIC}\"\nwindow_seconds = 2\n",
        path.display()
    )
}

/// Produce `n` records of 100 bytes to `orders` on a connection of its own.
async fn produce(via: &str, n: usize, tag: &str) {
    let p: FutureProducer = client(via).set("linger.ms", "5").create().unwrap();
    let payload = vec![b'x'; 100];
    let mut futs = Vec::new();
    for i in 0..n {
        let key = format!("{tag}-{i}");
        let r = FutureRecord::to("orders").key(&key).payload(&payload);
        futs.push(p.send_result(r).unwrap());
    }
    for f in futs {
        f.await.unwrap().expect("delivered");
    }
}

/// Read `want` records of `orders` as a member of `group`, then leave cleanly.
fn consume(via: &str, group: &str, want: usize, timeout: Duration) -> usize {
    let c: BaseConsumer = client(via)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["orders"]).unwrap();
    let (start, mut got) = (Instant::now(), 0);
    while got < want && start.elapsed() < timeout {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            got += 1;
        }
    }
    c.unsubscribe();
    drop(c); // closes: LeaveGroup
    got
}

/// Every event in the audit topic, read directly from the broker.
fn audit_events(broker: &str) -> Vec<serde_json::Value> {
    read_all(broker, AUDIT_TOPIC, 1, usize::MAX, Duration::from_secs(5))
        .into_iter()
        .filter_map(|r| serde_json::from_slice(r.value.as_deref()?).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn showback_adds_up_across_the_tier_and_the_audit_topic_says_what_happened() {
    let broker = Broker::start();
    broker.create_topic("orders", 2);
    let dir = tempfile::tempdir().unwrap();
    let extra = extra(dir.path());
    let tier = Tier::start(2, &broker.addr(), &extra).await;
    let via = tier.bootstrap();
    // Two producers: two connections, one on each instance (the balancer alternates).
    let (n1, n2) = (700, 500);
    tokio::join!(produce(&via, n1, "a"), produce(&via, n2, "b"));
    let v = via.clone();
    let read = tokio::task::spawn_blocking(move || {
        consume(&v, "billing", n1 + n2, Duration::from_secs(40))
    });
    assert_eq!(read.await.unwrap(), n1 + n2, "{}", tier.logs());
    // Apache Kafka's Java client (4.1.1, default client id) reads it all in another group.
    let jars = crate::java_client::jars_dir_4x();
    let classes = crate::java_client::compile(&jars);
    let (java, _) = crate::java_client::run_java(
        &jars,
        &classes,
        &via,
        "orders",
        n1 + n2,
        "ledger-java",
        "consume",
    )
    .await;
    assert_eq!(java.len(), n1 + n2);
    // An unregistered group is refused (enforce).
    let v = via.clone();
    tokio::task::spawn_blocking(move || consume(&v, "rogue", 1, Duration::from_secs(3)))
        .await
        .unwrap();
    admin_actions(&tier, &via).await;
    // Two windows pass: every instance has written what it counted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let produced = tier
        .sum("tollgate_produced_bytes_total", &[("topic", "orders")])
        .await;
    let fetched = tier
        .sum("tollgate_fetched_bytes_total", &[("group", "billing")])
        .await;
    let fetched_java = tier
        .sum("tollgate_fetched_bytes_total", &[("group", "ledger-java")])
        .await;
    // A third instance, started now, saw none of it: its answer comes from the topic.
    let late = Instance::start(2, tier.ports, &broker.addr(), tier.dir.path(), &extra).await;
    let (status, body) = late.get("/v1/showback?window=10m").await;
    assert_eq!(status, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    eprintln!("showback from a fresh instance: {s}");
    let owner = |name: &str| {
        s["owners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["owner"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no owner {name} in {s:#}"))
    };
    let web = owner("web-team");
    assert_eq!(web["produced_records"], (n1 + n2) as u64, "{s:#}");
    assert_eq!(web["produced_bytes"].as_f64().unwrap(), produced, "{s:#}");
    let billing = owner("billing-team");
    assert_eq!(billing["read_records"], (n1 + n2) as u64, "{s:#}");
    assert_eq!(billing["read_bytes"].as_f64().unwrap(), fetched, "{s:#}");
    let finance = owner("finance");
    assert_eq!(finance["read_records"], (n1 + n2) as u64, "{s:#}");
    assert_eq!(
        finance["read_bytes"].as_f64().unwrap(),
        fetched_java,
        "{s:#}"
    );
    let hot_cold =
        billing["read_hot_bytes"].as_u64().unwrap() + billing["read_cold_bytes"].as_u64().unwrap();
    assert_eq!(hot_cold as f64, fetched);
    let unregistered = owner("unregistered");
    let rogue = unregistered["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subject"] == "rogue")
        .unwrap_or_else(|| panic!("the refused group is its own subject: {s:#}"));
    assert!(rogue["refusals"].as_u64().unwrap() >= 1, "{s:#}");
    // The admin policy is in shadow mode: the topic creation is a would-be refusal.
    assert!(
        unregistered["shadow_refusals"].as_u64().unwrap() >= 1,
        "{s:#}"
    );
    let (status, csv) = late.get("/v1/showback?window=10m&format=csv").await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("owner,produced_bytes,"), "{csv}");
    assert!(
        csv.contains(&format!("\nweb-team,{},{},", produced, n1 + n2)),
        "{csv}"
    );
    let (status, _) = late.get("/v1/showback?window=2w").await;
    assert_eq!(status, 400);
    check_events(&broker.addr());
    // Clients cannot write the audit topic through Tollgate.
    let p: FutureProducer = client(&via).create().unwrap();
    let forged = p
        .send(
            FutureRecord::<(), _>::to(AUDIT_TOPIC).payload("{}"),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        matches!(
            forged,
            Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed),
                _
            ))
        ),
        "{forged:?}"
    );
}

/// A topic created through the tier, a registry reload, a rewind window.
async fn admin_actions(tier: &Tier, via: &str) {
    let admin: AdminClient<DefaultClientContext> = client(via).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let made = admin
        .create_topics(
            &[NewTopic::new("audited", 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    assert!(made[0].is_ok(), "{made:?}");
    let (status, body) = http_post(tier.instances[1].admin, "/v1/registry/reload").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_post(
        tier.instances[0].admin,
        "/v1/groups/billing/rewind/allow?seconds=60",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn check_events(broker: &str) {
    let events = audit_events(broker);
    assert!(events
        .iter()
        .all(|e| e["v"] == 1 && e["instance"].is_string() && e["ts_ms"].is_u64()));
    let find = |kind: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        events.iter().any(|e| e["kind"] == kind && pred(e))
    };
    let kinds: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect();
    assert!(
        find("group_joined", &|e| e["group"] == "billing"
            && e["client_id"] == "rdkafka"),
        "{kinds:?}"
    );
    assert!(
        find("group_left", &|e| e["group"] == "billing"),
        "{kinds:?}"
    );
    assert!(
        find("refusal", &|e| e["group"] == "rogue"
            && e["mode"] == "enforce"),
        "{kinds:?}"
    );
    assert!(
        find("admin_change", &|e| e["api"] == "CreateTopics"
            && e["resources"]
                == serde_json::json!([{"name": "audited", "error": 0}])),
        "{kinds:?}"
    );
    assert!(
        find("registry_reload", &|e| e["ok"] == true
            && e["trigger"] == "api"),
        "{kinds:?}"
    );
    assert!(
        find("window_opened", &|e| e["window"] == "rewinds_allowed"
            && e["subject"] == "group:billing"),
        "{kinds:?}"
    );
    // Reads rolled up: the offsets each window covered, per partition.
    assert!(
        find("usage", &|e| e["direction"] == "read"
            && e["subject"] == "billing"
            && e["offsets"].as_array().is_some_and(|o| !o.is_empty())),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_gets_every_event_as_a_json_line() {
    let broker = Broker::start();
    broker.create_topic("filed", 1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let mut config = proxy_config(&[broker.addr()]);
    config.audit.file = file.display().to_string();
    config.audit.window_seconds = 1;
    let proxy = start_proxy_with(config).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "filer");
    for i in 0..10 {
        let key = i.to_string();
        p.send(
            FutureRecord::to("filed").key(&key).payload("v"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    // A clean shutdown writes the last window.
    assert!(proxy.shutdown().await);
    let text = std::fs::read_to_string(&file).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let written: u64 = events
        .iter()
        .filter(|e| e["kind"] == "usage" && e["direction"] == "write" && e["topic"] == "filed")
        .map(|e| e["records"].as_u64().unwrap())
        .sum();
    assert_eq!(written, 10, "{text}");
}

/// The records the usage windows in `topic` say were written to `written`.
fn written_per_audit(broker: &str, topic: &str, written: &str) -> u64 {
    read_all(broker, topic, 1, usize::MAX, Duration::from_secs(3))
        .into_iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(r.value.as_deref()?).ok())
        .filter(|e| e["kind"] == "usage" && e["direction"] == "write" && e["topic"] == written)
        .map(|e| e["records"].as_u64().unwrap_or(0))
        .sum()
}

/// Someone deletes the audit topic while Tollgate runs: it is created again within seconds
/// and the trail goes on (what was written while it was gone waits in the producer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_audit_topic_comes_back_and_the_trail_goes_on() {
    let broker = Broker::start();
    broker.create_topic("kept", 1);
    let mut config = proxy_config(&[broker.addr()]);
    config.audit.topic = "audit-gone".into();
    config.audit.window_seconds = 1;
    let proxy = start_proxy_with(config).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "keeper");
    let send = |n: usize| {
        let p = p.clone();
        async move {
            for i in 0..n {
                let key = i.to_string();
                let r = FutureRecord::to("kept").key(&key).payload("v");
                p.send(r, Duration::from_secs(10)).await.unwrap();
            }
        }
    };
    send(10).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = broker.addr();
    let before = tokio::task::spawn_blocking(move || written_per_audit(&b, "audit-gone", "kept"));
    assert_eq!(before.await.unwrap(), 10);
    let admin: AdminClient<DefaultClientContext> = client(&broker.addr()).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let gone = admin.delete_topics(&["audit-gone"], &opts).await.unwrap();
    assert!(gone[0].is_ok(), "{gone:?}");
    send(20).await;
    // Back within the writer's 5 s check, with what was written since.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut after = 0;
    while after < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let b = broker.addr();
        after = tokio::task::spawn_blocking(move || written_per_audit(&b, "audit-gone", "kept"))
            .await
            .unwrap();
    }
    assert_eq!(
        after, 20,
        "the windows after the deletion are in the new topic"
    );
    assert!(proxy.shutdown().await);
}
