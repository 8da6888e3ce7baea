//! Tollgate as it is deployed: two `tollgate run` processes behind a connection-level
//! round-robin balancer (tests/common/tier.rs), governance enforced, a real broker (tansu) and
//! real librdkafka consumers, most of them with the default `client.id` ("rdkafka") from one
//! host. A consumer's coordinator and fetch connections land on different instances; every
//! answer (refusal, attribution, status) must be the same on every instance.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::tier::Tier;
use crate::common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// Short thresholds; the state topic and coordinator view fast enough for a test.
fn extra(registry: &std::path::Path) -> String {
    format!(
        r#"
share_interval_ms = 200
coordinator_refresh_ms = 1000
[governance]
registry = "{}"
[lag]
evaluate_interval_ms = 500
stopped_after_seconds = 4
commit_stall_seconds = 4
wedged_after_seconds = 30
head_refresh_seconds = 1
"#,
        registry.display()
    )
}

fn registry(dir: &std::path::Path, groups: &[&str], topic: &str) -> std::path::PathBuf {
    let mut text = String::from("mode = \"enforce\"\nonboarding = \"https://wiki/onboarding\"\n");
    for g in groups {
        text.push_str(&format!(
            "[[consumer]]\ngroup = \"{g}\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"{topic}\"]\nlag_slo_seconds = 600\n"
        ));
    }
    let path = dir.join("registry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn produce(p: &FutureProducer, topic: &str, n: usize) {
    for i in 0..n {
        let k = format!("k{i}");
        p.send(
            FutureRecord::to(topic).key(&k).payload("value"),
            Duration::from_secs(15),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce through the tier");
    }
}

/// A consumer on its own thread, polling until told to stop; what it read, by (partition,
/// offset), and the errors it saw.
struct Reader {
    read: Arc<Mutex<BTreeSet<(i32, i64)>>>,
    total: Arc<Mutex<usize>>,
    errors: Arc<Mutex<Vec<RDKafkaErrorCode>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    /// `client_id` None: librdkafka's default ("rdkafka").
    fn subscribe(
        via: &str,
        group: &str,
        client_id: Option<&str>,
        topic: &str,
        commit: bool,
    ) -> Reader {
        let mut cfg = client(via);
        cfg.set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", if commit { "true" } else { "false" })
            .set("auto.commit.interval.ms", "300");
        if let Some(c) = client_id {
            cfg.set("client.id", c);
        }
        let c: BaseConsumer = cfg.create().unwrap();
        c.subscribe(&[topic]).unwrap();
        Reader::run(c, Duration::ZERO)
    }

    fn run(c: BaseConsumer, per_record: Duration) -> Reader {
        let read: Arc<Mutex<BTreeSet<(i32, i64)>>> = Arc::default();
        let total: Arc<Mutex<usize>> = Arc::default();
        let errors: Arc<Mutex<Vec<RDKafkaErrorCode>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, t, e, s) = (read.clone(), total.clone(), errors.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match c.poll(Duration::from_millis(50)) {
                    Some(Ok(m)) => {
                        use rdkafka::Message;
                        r.lock().unwrap().insert((m.partition(), m.offset()));
                        *t.lock().unwrap() += 1;
                        std::thread::sleep(per_record);
                    }
                    Some(Err(KafkaError::MessageConsumption(code)))
                    | Some(Err(KafkaError::Global(code))) => e.lock().unwrap().push(code),
                    Some(Err(_)) | None => {}
                }
            }
            // Dropping the consumer closes it: a final commit and a LeaveGroup.
            drop(c);
        });
        Reader {
            read,
            total,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.read.lock().unwrap().len()
    }

    /// Stop polling and close the consumer cleanly (LeaveGroup).
    fn close(mut self) -> (BTreeSet<(i32, i64)>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let read = self.read.lock().unwrap().clone();
        let total = *self.total.lock().unwrap();
        (read, total)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A consumer in `group` that neither subscribes nor commits on its own (assign() and
/// explicit commits only), with librdkafka's default client.id.
fn manual_consumer(via: &str, group: &str) -> BaseConsumer {
    client(via)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The group's status on instance `i`, if it has one.
async fn status(tier: &Tier, i: usize, group: &str) -> Option<Value> {
    tier.instances[i]
        .json(&format!("/v1/groups/{group}/status"))
        .await
}

/// Wait until `group` is `want` on every instance; returns the lag seconds seen on each.
async fn status_everywhere(tier: &Tier, group: &str, want: &str, within: Duration) -> Vec<f64> {
    let deadline = Instant::now() + within;
    loop {
        let mut lags = Vec::new();
        let mut seen = Vec::new();
        for i in 0..tier.instances.len() {
            let s = status(tier, i, group).await;
            seen.push(s.as_ref().map(|s| s["status"].clone()));
            if let Some(s) = s.filter(|s| s["status"] == want) {
                lags.push(max_lag_seconds(&s));
            }
        }
        if lags.len() == tier.instances.len() {
            return lags;
        }
        assert!(
            Instant::now() < deadline,
            "{group} is not {want} on every instance: {seen:?}\n{}",
            tier.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn max_lag_seconds(s: &Value) -> f64 {
    s["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["lag_seconds"].as_f64())
        .fold(0.0, f64::max)
}

/// The number of records in `topic` (partitions 0..n), asked of the broker directly.
fn records_in(broker: &Broker, topic: &str, partitions: i32) -> usize {
    let c: BaseConsumer = client(&broker.addr()).create().unwrap();
    (0..partitions)
        .map(|p| {
            let (lo, hi) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (hi - lo) as usize
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_a_balancer_agree_on_every_group() {
    let broker = Broker::start();
    broker.create_topic("tier-a", 2);
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), &["tier-g1", "tier-g2", "tier-victim"], "tier-a");
    let tier = Tier::start(2, &broker.addr(), &extra(&reg)).await;
    let via = tier.bootstrap();
    let p = producer(&via, "tier-producer");
    produce(&p, "tier-a", 100).await;

    let g1 = Reader::subscribe(&via, "tier-g1", Some("tier-g1-client"), "tier-a", true);
    let g2 = Reader::subscribe(&via, "tier-g2", Some("tier-g2-client"), "tier-a", true);
    let rogue = Reader::subscribe(
        &via,
        "tier-rogue",
        Some("tier-rogue-client"),
        "tier-a",
        true,
    );
    // A registered consumer in its own process, to be SIGKILLed (no LeaveGroup).
    let mut victim = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["loadgen", "--bootstrap-server", &via, "--topic", "tier-a"])
        .args(["--group", "tier-victim", "--rate", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Healthy, committing groups are flagged on no instance while records keep coming.
    let mut statuses = Vec::new();
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        produce(&p, "tier-a", 10).await;
        for i in 0..2 {
            for g in ["tier-g1", "tier-g2"] {
                if let Some(s) = status(&tier, i, g).await {
                    statuses.push((i, g, s["status"].as_str().unwrap().to_string()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(statuses.len() > 20, "statuses seen: {statuses:?}");
    let flagged: Vec<_> = statuses
        .iter()
        .filter(|(_, _, s)| ["STOPPED", "WEDGED", "STALLED"].contains(&s.as_str()))
        .collect();
    if !flagged.is_empty() {
        let s = status(&tier, 0, "tier-g1").await;
        let m = tier.instances[0].metrics().await;
        let coord: Vec<&str> = m.lines().filter(|l| l.contains("coordinator")).collect();
        panic!(
            "healthy groups flagged: {flagged:?}\n{s:?}\n{coord:?}\n{}",
            tier.logs()
        );
    }
    let _ = victim.kill();
    let _ = victim.wait();

    // Every registered group reads every record; the unregistered one reads none.
    let total = records_in(&broker, "tier-a", 2);
    wait_for(
        "g1 and g2 to read everything",
        Duration::from_secs(30),
        async || g1.count() == total && g2.count() == total,
    )
    .await;
    assert_eq!(
        rogue.count(),
        0,
        "an unregistered group read through the tier"
    );
    assert!(
        tier.sum(
            "tollgate_rejected_requests_total",
            &[("reason", "unregistered_group")]
        )
        .await
            > 0.0
    );

    // Attribution, summed over both instances, is what each group read, and none of it
    // went to "(none)".
    let (g2_read, g2_total) = g2.close();
    assert_eq!(g2_read.len(), total);
    for (group, client_id, read) in [("tier-g2", "tier-g2-client", g2_total)] {
        let attributed = tier
            .sum("tollgate_fetched_records_total", &[("group", group)])
            .await;
        assert_eq!(attributed as usize, read, "{group}: {}", tier.logs());
        let lost = tier
            .sum(
                "tollgate_fetched_records_total",
                &[("group", "(none)"), ("client_id", client_id)],
            )
            .await;
        assert_eq!(lost, 0.0, "{group}'s reads attributed to (none)");
    }

    // g1 leaves cleanly; the victim was killed. Both are STOPPED on every instance, and
    // their time lag keeps growing.
    let (g1_read, _) = g1.close();
    assert_eq!(g1_read.len(), total);
    produce(&p, "tier-a", 20).await;
    for g in ["tier-g1", "tier-victim"] {
        let first = status_everywhere(&tier, g, "STOPPED", Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = status_everywhere(&tier, g, "STOPPED", Duration::from_secs(5)).await;
        for (a, b) in first.iter().zip(&later) {
            assert!(b > a && *b > 0.0, "{g}: time lag {first:?} then {later:?}");
        }
    }
    // One view of the tier: both instances list the same groups.
    let names = |v: Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|g| g["group"].as_str().unwrap().to_string())
            .collect()
    };
    let a = names(tier.instances[0].json("/v1/groups").await.unwrap());
    let b = names(tier.instances[1].json("/v1/groups").await.unwrap());
    for g in ["tier-g1", "tier-g2", "tier-victim"] {
        assert!(a.contains(g) && b.contains(g), "{g}: {a:?} / {b:?}");
    }
    drop(rogue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_client_ids_inherit_nothing() {
    let broker = Broker::start();
    broker.create_topic("dc-t", 1);
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), &["dc-reg", "dc-live"], "dc-t");
    let tier = Tier::start(2, &broker.addr(), &extra(&reg)).await;
    let via = tier.bootstrap();
    let p = producer(&via, "dc-producer");
    produce(&p, "dc-t", 30).await;

    // A registered consumer, default client.id, reads everything, commits and exits.
    let a = Reader::subscribe(&via, "dc-reg", None, "dc-t", true);
    wait_for("dc-reg to read", Duration::from_secs(30), async || {
        a.count() == 30
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await; // the last auto-commit
    let (_, a_total) = a.close();
    produce(&p, "dc-t", 20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Same host, same default client.id, no registration, assign() only: refused, and its
    // refused commit ties it to nothing.
    let v = via.clone();
    let (got, errors) = tokio::task::spawn_blocking(move || {
        let c = manual_consumer(&v, "dc-unregistered");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("dc-t", 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let r = Reader::run(c, Duration::ZERO);
        std::thread::sleep(Duration::from_secs(5));
        let errors = r.errors.lock().unwrap().clone();
        (r.close().0.len(), errors)
    })
    .await
    .unwrap();
    assert_eq!(
        got, 0,
        "an unregistered assign() consumer inherited dc-reg's rights"
    );
    assert!(
        errors.contains(&RDKafkaErrorCode::TopicAuthorizationFailed),
        "{errors:?}"
    );
    let v = via.clone();
    let commit = tokio::task::spawn_blocking(move || {
        let c = manual_consumer(&v, "dc-unregistered");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("dc-t", 0, Offset::Offset(5))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert!(
        commit.is_err(),
        "a commit to an unregistered group was accepted"
    );

    // Asking for a registered group's offsets (OffsetFetch) grants nothing either.
    let v = via.clone();
    let got = tokio::task::spawn_blocking(move || {
        let c = manual_consumer(&v, "dc-reg");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("dc-t", 0, Offset::Stored).unwrap();
        c.assign(&tpl).unwrap();
        let r = Reader::run(c, Duration::ZERO);
        std::thread::sleep(Duration::from_secs(4));
        r.close().0.len()
    })
    .await
    .unwrap();
    assert_eq!(
        got, 0,
        "an OffsetFetch for dc-reg tied the reader to dc-reg"
    );
    for i in 0..2 {
        let groups = tier.instances[i].json("/v1/groups").await.unwrap();
        for g in groups.as_array().unwrap() {
            assert!(
                g["group"] != "dc-unregistered" || g["offset_users"].as_array().unwrap().is_empty(),
                "a refused commit made an offset user: {g}"
            );
        }
    }

    // A live member of another registered group, same default client.id, never commits,
    // on the partition dc-reg committed on: it is STALLED under its own name, and the
    // departed dc-reg is STOPPED, on every instance.
    let live = Reader::subscribe(&via, "dc-live", None, "dc-t", false);
    wait_for("dc-live to read", Duration::from_secs(30), async || {
        live.count() == 50
    })
    .await;
    status_everywhere(&tier, "dc-live", "STALLED", Duration::from_secs(20)).await;
    status_everywhere(&tier, "dc-reg", "STOPPED", Duration::from_secs(20)).await;
    // dc-live's reads are all its own. (dc-reg may count a few more than its consumer
    // polled: the long-poll Fetch in flight when it closed is still answered by the broker.)
    let (_, live_total) = live.close();
    let to_live = tier
        .sum("tollgate_fetched_records_total", &[("group", "dc-live")])
        .await;
    let to_reg = tier
        .sum("tollgate_fetched_records_total", &[("group", "dc-reg")])
        .await;
    assert_eq!(
        to_live,
        live_total as f64,
        "dc-live read {live_total}; dc-reg got {to_reg} (its consumer read {a_total})\n{}",
        tier.logs()
    );
    assert!(
        to_reg >= a_total as f64 && to_reg <= 50.0,
        "{to_reg} / {a_total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_instance_mid_consume_loses_nothing() {
    let broker = Broker::start();
    broker.create_topic("kill-t", 2);
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), &["kill-g"], "kill-t");
    let mut tier = Tier::start(2, &broker.addr(), &extra(&reg)).await;
    let via = tier.bootstrap();
    let p = producer(&via, "kill-producer");
    produce(&p, "kill-t", 300).await;

    let mut cfg = client(&via);
    cfg.set("group.id", "kill-g")
        .set("client.id", "kill-client")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("fetch.max.bytes", "2000")
        .set("message.max.bytes", "1000");
    let c: BaseConsumer = cfg.create().unwrap();
    c.subscribe(&["kill-t"]).unwrap();
    let reader = Reader::run(c, Duration::from_millis(20));
    wait_for(
        "the consumer to start",
        Duration::from_secs(30),
        async || reader.count() > 50,
    )
    .await;
    tier.instances[0].kill();
    let before = reader.count();
    // Records written after the kill can only be fetched through the survivor.
    produce(&p, "kill-t", 200).await;
    let total = records_in(&broker, "kill-t", 2);
    wait_for(
        "every record through the survivor",
        Duration::from_secs(60),
        async || reader.count() == total,
    )
    .await;
    assert!(
        before < total,
        "the kill came too late to matter ({before}/{total})"
    );
    let (read, _) = reader.close();
    assert_eq!(read.len(), total, "records lost");
    // The survivor still reports the group, and attributes its reads.
    let survivor = &tier.instances[1];
    let s = survivor.json("/v1/groups/kill-g/status").await;
    assert!(s.is_some(), "the survivor does not know kill-g");
    let text = survivor.metrics().await;
    let to_group = sum_series(
        &text,
        "tollgate_fetched_records_total",
        &[("group", "kill-g")],
    );
    assert!(
        to_group >= 200.0,
        "the survivor attributed {to_group} records to kill-g\n{text}"
    );
    let lost = sum_series(
        &text,
        "tollgate_fetched_records_total",
        &[("group", "(none)"), ("client_id", "kill-client")],
    );
    assert_eq!(
        lost, 0.0,
        "kill-g's reads attributed to (none) on the survivor"
    );
}

/// Time from `subscribe()` to the first record, for a fresh group.
fn first_record_after_subscribe(via: &str, group: &str, topic: &str) -> Duration {
    let c: BaseConsumer = client(via)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let start = Instant::now();
    c.subscribe(&[topic]).unwrap();
    loop {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(10)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{group} read nothing"
        );
    }
}

/// Not a check: the numbers docs/performance.md reports. Run with
/// `cargo test --test it -- --ignored --nocapture tier::measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_first_fetch_latency_and_coordinator_load() {
    let broker = Broker::start();
    broker.create_topic("m-t", 1);
    let dir = tempfile::tempdir().unwrap();
    let groups: Vec<String> = (0..10).map(|i| format!("m-g{i}")).collect();
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    let reg = registry(dir.path(), &names, "m-t");
    let tier = Tier::start(
        2,
        &broker.addr(),
        &extra(&reg).replace(
            "coordinator_refresh_ms = 1000",
            "coordinator_refresh_ms = 5000",
        ),
    )
    .await;
    let p = producer(&broker.addr(), "m-producer");
    produce(&p, "m-t", 100).await;
    let (direct, via_tier): (Vec<Duration>, Vec<Duration>) = {
        let (b, t) = (broker.addr(), tier.bootstrap());
        tokio::task::spawn_blocking(move || {
            let mut d = Vec::new();
            let mut v = Vec::new();
            for i in 0..5 {
                d.push(first_record_after_subscribe(
                    &b,
                    &format!("direct-{i}"),
                    "m-t",
                ));
                v.push(first_record_after_subscribe(&t, &format!("m-g{i}"), "m-t"));
            }
            (d, v)
        })
        .await
        .unwrap()
    };
    println!("first record after subscribe, direct: {direct:?}");
    println!("first record after subscribe, via a 2-instance tier: {via_tier:?}");
    let waits =
        |m: &str, what: &str| sum_series(m, &format!("tollgate_tie_wait_seconds_{what}"), &[]);
    for i in &tier.instances {
        let m = i.metrics().await;
        println!(
            "instance {}: tie waits {} (sum {:.3} s)",
            i.index,
            waits(&m, "count"),
            waits(&m, "sum")
        );
    }
    // Coordinator load over 30 s, 10 registered groups (+ the direct ones the cluster lists).
    let before = tier.sum("tollgate_coordinator_requests_total", &[]).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = tier.sum("tollgate_coordinator_requests_total", &[]).await;
    let listed = tier.instances[0]
        .json("/v1/groups")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    println!(
        "coordinator requests: {:.2}/s for the tier of 2, {listed} groups followed: {:.3} req/s per group per instance",
        (after - before) / 30.0,
        (after - before) / 30.0 / 2.0 / listed as f64
    );
}

/// Two live processes configured with one `tier.instance_id` would each ignore the other's
/// records as their own and the tier would silently fall apart: both must say so (the gauge,
/// `/readyz`, an error log) while still serving. Instances with the default id (every other
/// test here: same listen port, same host) never collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_instances_with_one_id_are_reported() {
    let broker = Broker::start();
    let tier = Tier::start(2, &broker.addr(), "instance_id = \"tollgate-9644\"\n").await;
    // Each instance notices: each process's liveness record has a key of its own (the id and
    // a per-process run), so each sees the other's, whatever order they are written in.
    // (With one key per id, an instance saw the other only while the other's write was the
    // latest, which two phase-locked publishers could keep from happening.)
    for i in &tier.instances {
        wait_for(
            "the duplicate id reported",
            Duration::from_secs(60),
            async || {
                let gauge = metric_value(&i.metrics().await, "tollgate_tier_duplicate_instance_id");
                let (status, body) = i.get("/readyz").await;
                gauge == 1.0 && status == 200 && body.contains("another live process")
            },
        )
        .await;
        assert!(i
            .log_text()
            .contains("another live Tollgate process publishes this tier instance id"));
    }

    // Default ids, on a state topic of their own (the pair above still has records in the
    // first one).
    let distinct = Tier::start(
        2,
        &broker.addr(),
        "[state]\ntopic = \"_tollgate_state_b\"\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    for i in &distinct.instances {
        let text = i.metrics().await;
        assert_eq!(
            metric_value(&text, "tollgate_tier_duplicate_instance_id"),
            0.0
        );
        assert_eq!(
            metric_value(&text, "tollgate_tier_instances"),
            2.0,
            "each default-id instance sees itself and the other\n{}",
            distinct.logs()
        );
    }
}

/// OffsetCommits with invented group ids and client ids grew the group view (and the tier
/// records published from it) without limit: 20,000 commits gave 20,001 groups. The view is
/// bounded now, the least recently active evicted and counted, on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_groups_from_commits_stay_bounded_on_every_instance() {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, RequestHeader};
    use kafka_protocol::protocol::StrBytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::start();
    broker.create_topic("inv", 1);
    let tier = Tier::start(2, &broker.addr(), "max_groups = 40\n").await;
    let mut s = tokio::net::TcpStream::connect(tier.bootstrap())
        .await
        .unwrap();
    for i in 0..300 {
        let body = OffsetCommitRequest::default()
            .with_group_id(StrBytes::from_string(format!("inv-{i}")).into())
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(StrBytes::from_static_str("inv").into())
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(i)])]);
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::OffsetCommit as i16)
            .with_request_api_version(8)
            .with_correlation_id(i as i32)
            .with_client_id(Some(StrBytes::from_string(format!("invented-{i}"))));
        let frame = tollgate::wire::protocol::encode_request(&header, &body).unwrap();
        s.write_all(&frame).await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut rest = vec![0u8; i32::from_be_bytes(len) as usize];
        s.read_exact(&mut rest).await.unwrap();
    }
    // Every instance: its own view and what it applied from the other's records.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in &tier.instances {
        let groups = i.json("/v1/groups").await.expect("/v1/groups");
        let n = groups.as_array().map_or(0, |a| a.len());
        assert!(n <= 40, "{n} groups held");
    }
    wait_for("evictions counted", Duration::from_secs(40), async || {
        tier.sum("tollgate_groups_evicted_total", &[("what", "group")])
            .await
            >= 200.0
    })
    .await;
}
