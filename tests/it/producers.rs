//! Producer onboarding as deployed: two instances behind the balancer in front of the suite's
//! broker (Apache Kafka by default), a registry with `[[producer]]` entries, real clients
//! with their default client ids.
//!
//! - librdkafka, idempotent: records for a topic the producer may not write fail with
//!   TOPIC_AUTHORIZATION_FAILED, alone; every record for its allowed topic, before and after
//!   the refusals, is on the broker exactly once and in order per partition, and the refused
//!   topic holds nothing.
//! - Apache Kafka's Java client (4.1.1), transactional: the transaction that wrote to the
//!   refused topic aborts, the next one commits, and a read-committed read of the broker sees
//!   exactly the committed transaction. (On Kafka 4 this needs Produce v12+ through Tollgate,
//!   KIP-890: with Produce capped at v9, as it was, every transactional write failed with
//!   INVALID_TXN_STATE, governed or not.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common::tier::Tier;
use crate::common::*;

const REGISTRY: &str = r##"
mode = "enforce"

[[producer]]
client_id = "rdkafka"
owner = "ingest"
contact = "#ingest"
topics = ["allowed"]

[[producer]]
client_id = "producer-tx-refusal"
owner = "ingest"
contact = "#ingest"
topics = ["allowed-tx"]
"##;

/// Two instances behind the balancer with [`REGISTRY`] (and the directory holding it).
async fn tier_with_registry(broker: &Broker) -> (Tier, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    let extra = format!(
        "share_interval_ms = 250\n[governance]\nregistry = \"{}\"\n",
        path.display()
    );
    (Tier::start(2, &broker.addr(), &extra).await, dir)
}

/// The index in a key `{tag}-{i}`.
fn index(key: &[u8], tag: &str) -> Option<usize> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(tag)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_topic_fails_alone_and_an_idempotent_producer_goes_on_exactly_once() {
    let broker = Broker::start();
    broker.create_topic("allowed", 2);
    broker.create_topic("refused", 1);
    let (tier, _registry) = tier_with_registry(&broker).await;
    // Default client id ("rdkafka"), idempotent, several requests in flight.
    let p: FutureProducer = client(&tier.bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let n = 300;
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for i in 0..n {
        let key = format!("before-{i}");
        ok.push(
            p.send_result(FutureRecord::to("allowed").key(&key).payload("v"))
                .unwrap(),
        );
        if i % 10 == 0 {
            let r = FutureRecord::to("refused").key(&key).payload("v");
            refused.push(p.send_result(r).unwrap());
        }
    }
    for f in refused {
        let err = f.await.unwrap().expect_err("the refused topic was written");
        assert!(
            matches!(
                err.0,
                KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)
            ),
            "{err:?}"
        );
    }
    for f in ok {
        f.await.unwrap().expect("an allowed record failed");
    }
    // The producer is still healthy: the next records go through too.
    for i in 0..n {
        let key = format!("after-{i}");
        let r = FutureRecord::to("allowed").key(&key).payload("v");
        p.send(r, Duration::from_secs(30))
            .await
            .expect("after the refusals");
    }
    let direct = read_all_async(broker.addr(), "allowed", 2, 2 * n, Duration::from_secs(30)).await;
    assert_eq!(direct.len(), 2 * n, "every allowed record exactly once");
    // In order per partition: within each partition the indices only grow, per tag.
    let mut last: HashMap<(i32, &str), usize> = HashMap::new();
    for r in &direct {
        let key = r.key.as_deref().unwrap();
        let (tag, i) = ["before", "after"]
            .iter()
            .find_map(|t| index(key, t).map(|i| (*t, i)))
            .expect("a key of ours");
        if let Some(prev) = last.insert((r.partition, tag), i) {
            assert!(
                prev < i,
                "partition {} out of order: {prev} then {i}",
                r.partition
            );
        }
    }
    let leaked = read_all_async(broker.addr(), "refused", 1, 1, Duration::from_secs(3)).await;
    assert!(leaked.is_empty(), "the refused topic holds {leaked:?}");
    let counted = tier
        .sum(
            "tollgate_rejected_requests_total",
            &[("reason", "topic_not_allowed"), ("api", "Produce")],
        )
        .await;
    assert!(
        counted >= 1.0,
        "refusals counted: {counted}\n{}",
        tier.logs()
    );
}

fn compile_java(source: &str) -> (PathBuf, PathBuf) {
    let jars = kafka::libs();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("java-classes-producers");
    std::fs::create_dir_all(&out).unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/java")
        .join(source);
    let status = Command::new("javac")
        .arg("-cp")
        .arg(format!("{}/*", jars.display()))
        .arg("-d")
        .arg(&out)
        .arg(src)
        .status()
        .expect("javac (JDK 17)");
    assert!(status.success(), "javac failed");
    (jars, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_java_producer_aborts_a_refused_write_and_commits_the_next() {
    let broker = Broker::start();
    broker.create_topic("allowed-tx", 2);
    broker.create_topic("refused-tx", 1);
    let (tier, _registry) = tier_with_registry(&broker).await;
    let (jars, classes) = compile_java("TxnThroughRefusal.java");
    let classpath = format!("{}:{}/*", classes.display(), jars.display());
    let via = tier.bootstrap();
    let n = 50;
    let output = tokio::task::spawn_blocking(move || {
        Command::new("java")
            .args(["-cp", &classpath, "TxnThroughRefusal", &via])
            .args(["allowed-tx", "refused-tx", &n.to_string()])
            .output()
            .expect("java")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success() && stdout.contains("COMMITTED"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        tier.logs()
    );
    assert!(
        stdout.contains("ABORTED") && stdout.contains("authorization=true"),
        "{stdout}"
    );
    // librdkafka reads read_committed by default: the committed transaction only.
    let direct = read_all_async(broker.addr(), "allowed-tx", 2, n, Duration::from_secs(30)).await;
    let mut keys: Vec<String> = direct
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap()).to_string())
        .collect();
    keys.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("committed-{i}")).collect();
    want.sort();
    assert_eq!(keys, want, "exactly the committed transaction is visible");
    let leaked = read_all_async(broker.addr(), "refused-tx", 1, 1, Duration::from_secs(3)).await;
    assert!(leaked.is_empty(), "the refused topic holds {leaked:?}");
}

/// Four producers of one registered entry, through two instances behind the balancer, write
/// as fast as they can to a topic with a 1 MB/s throttling produce budget: together they are
/// held at the budget (±25%), not at one budget per instance; the admin lift releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_of_one_entry_are_held_at_one_budget_across_the_tier() {
    const BUDGET: f64 = 1_000_000.0;
    let broker = Broker::start();
    broker.create_topic("metered", 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    let registry = format!(
        "[[producer]]\nclient_id = \"metered\"\nowner = \"batch\"\ncontact = \"#batch\"\n\
         topics = [\"metered\"]\nproduce_budget_bytes_per_second = {}\n\
         on_over_budget = \"throttle\"\n",
        BUDGET as u64
    );
    std::fs::write(&path, registry).unwrap();
    let extra = format!(
        "share_interval_ms = 250\n[governance]\nregistry = \"{}\"\n",
        path.display()
    );
    let tier = Tier::start(2, &broker.addr(), &extra).await;
    let via = tier.bootstrap();
    let run_for = Duration::from_secs(16);
    let mut writers = Vec::new();
    for _ in 0..4 {
        writers.push(tokio::spawn(write_flat_out(via.clone(), run_for)));
    }
    // The rate the tier let through, from its own count of acknowledged bytes, between 6 s
    // (the instances have shared their rates and the start's burst is paid for) and 16 s.
    let written = || tier.sum("tollgate_produced_bytes_total", &[("topic", "metered")]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let at_6 = written().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let measured = (written().await - at_6) / 10.0;
    let mut acked = 0;
    for w in writers {
        acked += w.await.unwrap().len();
    }
    assert!(acked > 0);
    let per_instance: Vec<f64> = {
        let mut v = Vec::new();
        for i in &tier.instances {
            v.push(sum_series(
                &i.metrics().await,
                "tollgate_produced_bytes_total",
                &[("topic", "metered")],
            ));
        }
        v
    };
    eprintln!("tier of two: producers of one entry wrote {measured:.0} B/s over 6-16 s; bytes per instance {per_instance:?}");
    assert!(
        (0.75 * BUDGET..=1.25 * BUDGET).contains(&measured),
        "held at {measured:.0} B/s for a budget of {BUDGET} (per instance {per_instance:?})\n{}",
        tier.logs()
    );
    assert!(
        per_instance.iter().all(|b| *b > 0.0),
        "both instances carried the producers: {per_instance:?}"
    );
    let throttled = tier
        .sum(
            "tollgate_producer_throttle_seconds_total",
            &[("producer", "client:metered")],
        )
        .await;
    assert!(throttled > 0.0, "holds counted");
    // The lift releases them on every instance.
    let (status, body) = http_post(
        tier.instances[0].admin,
        "/v1/producers/client:metered/budget/lift?seconds=60",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acks = write_flat_out(via.clone(), Duration::from_secs(4)).await;
    let lifted = acks.iter().filter(|t| **t >= 1.0).count() as f64 * 1000.0 / 3.0;
    assert!(
        lifted > 2.0 * BUDGET,
        "after the lift one producer wrote {lifted:.0} B/s"
    );
}

/// One producer (client id `metered`) writing 1,000-byte records as fast as it is let, for
/// `run_for`; the seconds (since its start) at which each record was acknowledged.
async fn write_flat_out(via: String, run_for: Duration) -> Vec<f64> {
    let p: FutureProducer = client(&via)
        .set("client.id", "metered")
        .set("linger.ms", "10")
        .set("batch.size", "65536")
        .set("queue.buffering.max.kbytes", "2048")
        .create()
        .unwrap();
    let payload = vec![b'x'; 1000];
    let start = std::time::Instant::now();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    while start.elapsed() < run_for {
        match p.send_result(FutureRecord::<(), _>::to("metered").payload(&payload)) {
            Ok(f) => {
                let acked = acked.clone();
                tasks.push(tokio::spawn(async move {
                    if let Ok(Ok(_)) = f.await {
                        acked.lock().unwrap().push(start.elapsed().as_secs_f64());
                    }
                }));
            }
            // Queue full: the producer is held; try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    drop(p);
    for t in tasks {
        let _ = t.await;
    }
    let out = acked.lock().unwrap().clone();
    out
}
