//! Tiered reads with two real clusters (two tansu brokers), the real mirror (`tollgate
//! mirror`) and real consumers (rdkafka). The invariant is the test: what a consumer reads
//! through Tollgate is exactly what a direct read of the primary returns (partition, offset,
//! key, value, headers, timestamp), whichever cluster served each part.

use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

const TOPIC: &str = "orders";

/// Small batches, so that a fetch returns a few records and a read takes many fetches.
fn small_batch_producer(bootstrap: &str) -> FutureProducer {
    client(bootstrap)
        .set("client.id", "orders-producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("batch.num.messages", "20")
        .create()
        .expect("producer")
}

/// Two clusters, `n` records (small batches) produced to the primary's two-partition
/// topic and mirrored to the secondary. The producer is returned to be dropped off the
/// async workers.
async fn mirrored(n: usize) -> (Broker, Broker, FutureProducer) {
    let primary = Broker::start();
    let secondary = Broker::start();
    primary.create_topic(TOPIC, 2);
    let p = small_batch_producer(&primary.addr());
    produce_known(&p, TOPIC, n, "m").await;
    mirror_once(&primary, &secondary, TOPIC).await;
    (primary, secondary, p)
}

/// A consumer of the topic through the proxy with small fetches (about one batch each).
fn consumer(via: &str, group: &str) -> BaseConsumer {
    let c: BaseConsumer = client(via)
        .set("client.id", format!("{group}-client"))
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("max.partition.fetch.bytes", "1024")
        // tansu ignores the per-partition limit but honours the request's: keep both small.
        .set("message.max.bytes", "1000")
        .set("fetch.max.bytes", "2048")
        // Fetch little ahead of what the test has polled.
        .set("queued.min.messages", "20")
        .create()
        .expect("consumer");
    c.subscribe(&[TOPIC]).unwrap();
    c
}

/// Read `expect` records (sorted by partition, offset), calling `each` after every record.
fn read(c: &BaseConsumer, expect: usize, mut each: impl FnMut(usize)) -> Vec<Rec> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < expect && Instant::now() < deadline {
        if let Some(r) = c.poll(Duration::from_millis(100)) {
            out.push(rec_of(&r.expect("consume")));
            each(out.len());
        }
    }
    let grace = Instant::now() + Duration::from_millis(500);
    while Instant::now() < grace {
        if let Some(r) = c.poll(Duration::from_millis(50)) {
            out.push(rec_of(&r.expect("consume")));
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

fn served(text: &str, group: &str, cluster: &str) -> f64 {
    sum_series(
        text,
        "tollgate_tiered_fetched_records_total",
        &[("group", group), ("cluster", cluster), ("topic", TOPIC)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_reads_exactly_the_primary_sequence_from_both_clusters() {
    let primary = Broker::start();
    let secondary = Broker::start();
    primary.create_topic(TOPIC, 2);
    let p = small_batch_producer(&primary.addr());
    produce_known(&p, TOPIC, 2000, "old").await;
    mirror_once(&primary, &secondary, TOPIC).await;
    // A tail the mirror has not copied: only the primary has it.
    produce_known(&p, TOPIC, 100, "new").await;
    let total = 2100;
    let want = read_all_async(primary.addr(), TOPIC, 2, total, Duration::from_secs(30)).await;
    assert_eq!(want.len(), total);

    let proxy = tiered_proxy(&primary, &secondary, TOPIC, None).await;
    let via = proxy.bootstrap_addr.to_string();
    let (got, on_secondary_midway) = {
        let admin = proxy.admin_addr;
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let c = consumer(&via, "backfill");
            // Seen on the secondary at some point of the read (sampled every 100 records).
            let mut midway = false;
            let got = read(&c, total, |n| {
                if n % 100 == 0 && !midway {
                    let (_, body) = rt.block_on(http_get(admin, "/v1/routing"));
                    let v: Value = serde_json::from_str(&body).unwrap();
                    midway = v["on_secondary"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r["consumer"] == "backfill" && r["topic"] == TOPIC);
                }
            });
            (got, midway)
        })
        .await
        .unwrap()
    };
    assert_eq!(got.len(), want.len(), "no gap, no duplicate");
    assert_eq!(
        got, want,
        "the primary's exact sequence: offset, key, value, headers, timestamp"
    );
    // Mid-read, the group was on the secondary (GET /v1/routing) ...
    assert!(on_secondary_midway, "never listed in /v1/routing");
    // ... and at the end it had switched back: both clusters served it.
    let text = metrics_text(&proxy).await;
    let (sec, prim) = (
        served(&text, "backfill", "secondary"),
        served(&text, "backfill", "primary"),
    );
    assert!(sec >= 1000.0, "secondary served {sec}\n{text}");
    assert!(prim >= 100.0, "primary served {prim} (the unmirrored tail)");
    assert_eq!(sec + prim, total as f64);
    // The backfill's next Fetches were read ahead, and what was read ahead was exact (above).
    let read_ahead = |outcome| {
        sum_series(
            &text,
            "tollgate_tiered_read_ahead_total",
            &[("outcome", outcome)],
        )
    };
    assert!(
        read_ahead("used") > 0.0,
        "no read-ahead answer used\n{text}"
    );
    assert!(
        sum_series(
            &text,
            "tollgate_tiered_routing_decisions_total",
            &[("cluster", "primary"), ("reason", "near_head")]
        ) > 0.0
    );
    let (_, body) = http_get(proxy.admin_addr, "/v1/routing").await;
    let routing: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !routing["on_secondary"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["consumer"] == "backfill"),
        "back on the primary: {routing}"
    );
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probation_group_reads_only_from_the_secondary() {
    let (primary, secondary, p) = mirrored(600).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        format!(
            "mode = \"enforce\"\n[[consumer]]\ngroup = \"newbie\"\nowner = \"t\"\n\
             contact = \"t\"\ntopics = [\"{TOPIC}\"]\ntier = \"probation\"\n\
             lag_slo_seconds = 600\n"
        ),
    )
    .unwrap();
    let proxy = tiered_proxy(&primary, &secondary, TOPIC, Some(&registry)).await;
    let want = read_all_async(primary.addr(), TOPIC, 2, 600, Duration::from_secs(30)).await;
    let via = proxy.bootstrap_addr.to_string();
    let got = tokio::task::spawn_blocking(move || read(&consumer(&via, "newbie"), 600, |_| {}))
        .await
        .unwrap();
    assert_eq!(got, want);
    let text = metrics_text(&proxy).await;
    assert_eq!(served(&text, "newbie", "secondary"), 600.0, "{text}");
    assert_eq!(served(&text, "newbie", "primary"), 0.0, "{text}");
    assert!(
        sum_series(
            &text,
            "tollgate_tiered_routing_decisions_total",
            &[("cluster", "secondary"), ("reason", "probation")]
        ) > 0.0
    );
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
}

/// A group over its read budget with `on_over_budget = "demote"` reads from the secondary
/// while it is over (the lag rule alone would keep it on the primary here), every record
/// exactly once, and comes back to the primary once it has slowed down for
/// `demote_hold_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_its_budget_is_demoted_to_the_secondary_and_comes_back() {
    let (primary, secondary, p) = mirrored(6000).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        format!(
            "mode = \"enforce\"\ndemote_hold_seconds = 2\n[[consumer]]\ngroup = \"bulk\"\n\
             owner = \"t\"\ncontact = \"t\"\ntopics = [\"{TOPIC}\"]\nlag_slo_seconds = 600\n\
             read_budget_bytes_per_second = 2000\non_over_budget = \"demote\"\n"
        ),
    )
    .unwrap();
    // Only the budget sends anyone to the secondary here.
    let proxy = tiered_proxy_with(&primary, &secondary, TOPIC, Some(&registry), |c| {
        c.tiered.enter_lag = 1_000_000_000;
        c.tiered.exit_lag = 1_000_000_000;
    })
    .await;
    let want = read_all_async(primary.addr(), TOPIC, 2, 6000, Duration::from_secs(30)).await;
    let via = proxy.bootstrap_addr.to_string();
    let admin = proxy.admin_addr;
    let primary_addr = primary.addr();
    let (got, after) = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = consumer(&via, "bulk");
        let got = read(&c, 6000, |_| {});
        // Idle, it is under its budget: back on the primary after the hold.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let _ = c.poll(Duration::from_millis(100));
            let status = rt.block_on(http_get(admin, "/v1/groups/bulk/status")).1;
            let v: Value = serde_json::from_str(&status).unwrap_or_default();
            if v["budget"]["demoted"] == false {
                break;
            }
            assert!(Instant::now() < deadline, "never came back: {v}");
        }
        let p = small_batch_producer(&primary_addr);
        rt.block_on(produce_known(&p, TOPIC, 40, "late"));
        let after = read(&c, 40, |_| {});
        (got, after)
    })
    .await
    .unwrap();
    assert_eq!(got, want, "every record exactly once");
    assert_eq!(after.len(), 40);
    let text = metrics_text(&proxy).await;
    let on_secondary = served(&text, "bulk", "secondary");
    // Detection takes a moment (the rate is a 3 s average): the start of the backlog comes
    // from the primary, the rest from the secondary.
    eprintln!("demoted: the secondary served {on_secondary} of 6000 records");
    assert!(
        on_secondary > 500.0,
        "the secondary served {on_secondary} records\n{text}"
    );
    assert!(
        served(&text, "bulk", "primary") >= 40.0,
        "the late records came from the primary"
    );
    assert!(
        sum_series(
            &text,
            "tollgate_tiered_routing_decisions_total",
            &[("cluster", "secondary"), ("reason", "over_budget")]
        ) > 0.0
    );
    assert_eq!(
        metric_value(&text, "tollgate_consumer_demoted{group=\"bulk\"}"),
        0.0
    );
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secondary_stopping_mid_backfill_moves_the_reader_to_the_primary_without_gap_or_duplicate(
) {
    let (primary, mut secondary, p) = mirrored(2000).await;
    let want = read_all_async(primary.addr(), TOPIC, 2, 2000, Duration::from_secs(30)).await;
    let proxy = tiered_proxy(&primary, &secondary, TOPIC, None).await;
    let via = proxy.bootstrap_addr.to_string();
    let admin = proxy.admin_addr;
    let (got, sec_before) = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = consumer(&via, "resilient");
        let mut sec_before = 0.0;
        let got = read(&c, 2000, |n| {
            // Early enough that, with the client's read-ahead, most is left to read.
            if n == 300 {
                // The secondary goes away mid-backfill.
                let text = rt.block_on(http_get(admin, "/metrics")).1;
                sec_before = served(&text, "resilient", "secondary");
                secondary.stop();
            }
        });
        (got, sec_before)
    })
    .await
    .unwrap();
    assert_eq!(got.len(), want.len(), "no gap, no duplicate");
    assert_eq!(got, want);
    let text = metrics_text(&proxy).await;
    assert!(sec_before > 0.0, "the secondary served the start");
    assert!(served(&text, "resilient", "primary") >= 1000.0, "{text}");
    assert_eq!(
        served(&text, "resilient", "primary") + served(&text, "resilient", "secondary"),
        2000.0,
        "every record served once"
    );
    assert!(
        sum_series(
            &text,
            "tollgate_tiered_fallbacks_total",
            &[("reason", "secondary_unavailable")]
        ) > 0.0,
        "{text}"
    );
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_spanning_hot_and_cold_partitions_is_split_and_merged() {
    let (primary, secondary, p) = mirrored(2000).await;
    let want = read_all_async(primary.addr(), TOPIC, 2, 2000, Duration::from_secs(30)).await;
    let proxy = tiered_proxy(&primary, &secondary, TOPIC, None).await;
    // Partition 0 from the beginning (cold), partition 1 from 20 before its end (hot).
    let p1: Vec<&Rec> = want.iter().filter(|r| r.partition == 1).collect();
    let p1_start = p1[p1.len() - 20].offset;
    let expected: Vec<Rec> = want
        .iter()
        .filter(|r| r.partition == 0 || r.offset >= p1_start)
        .cloned()
        .collect();
    let via = proxy.bootstrap_addr.to_string();
    let n = expected.len();
    // Learn the heads first (a short read of both partitions at their ends).
    let got = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client(&via)
            .set("client.id", "splitter")
            .set("group.id", "splitter")
            .set("enable.auto.commit", "false")
            .set("max.partition.fetch.bytes", "1024")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::End).unwrap();
        tpl.add_partition_offset(TOPIC, 1, Offset::End).unwrap();
        c.assign(&tpl).unwrap();
        let _ = c.poll(Duration::from_millis(1500));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
            .unwrap();
        tpl.add_partition_offset(TOPIC, 1, Offset::Offset(p1_start))
            .unwrap();
        c.assign(&tpl).unwrap();
        read(&c, n, |_| {})
    })
    .await
    .unwrap();
    assert_eq!(got, expected);
    let text = metrics_text(&proxy).await;
    assert!(
        metric_value(&text, "tollgate_tiered_split_requests_total") > 0.0,
        "{text}"
    );
    for cluster in ["primary", "secondary"] {
        assert!(
            sum_series(
                &text,
                "tollgate_tiered_fetched_records_total",
                &[("cluster", cluster)]
            ) > 0.0,
            "{cluster} served part: {text}"
        );
    }
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
}

/// Transactions leave markers in the primary's offsets: the mirror writes a sync after each
/// gap, and the reader still gets the primary's exact sequence (a fetch offset that falls on
/// a marker would be served by the primary: `inexact`). Also: `--until-caught-up` ends
/// although the partition ends in a marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_markers_are_gaps_that_stay_exact() {
    use rdkafka::producer::{FutureRecord, Producer};
    let primary = Broker::start();
    let secondary = Broker::start();
    primary.create_topic(TOPIC, 1);
    let tx: FutureProducer = client(&primary.addr())
        .set("transactional.id", "tiered-tx")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let tx = tokio::task::spawn_blocking(move || {
        tx.init_transactions(Duration::from_secs(10)).unwrap();
        tx
    })
    .await
    .unwrap();
    for t in 0..6 {
        tx.begin_transaction().unwrap();
        for i in 0..100 {
            let k = format!("t{t}-{i}");
            tx.send(
                FutureRecord::to(TOPIC).key(&k).payload(&k),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        }
        let tx2 = tx.clone();
        tokio::task::spawn_blocking(move || {
            tx2.commit_transaction(Duration::from_secs(10)).unwrap()
        })
        .await
        .unwrap();
    }
    mirror_once(&primary, &secondary, TOPIC).await;
    let want = read_all_async(primary.addr(), TOPIC, 1, 600, Duration::from_secs(30)).await;
    assert_eq!(want.len(), 600);
    assert!(want.last().unwrap().offset > 600, "markers take offsets");
    let proxy = tiered_proxy(&primary, &secondary, TOPIC, None).await;
    let via = proxy.bootstrap_addr.to_string();
    let got = tokio::task::spawn_blocking(move || read(&consumer(&via, "txreader"), 600, |_| {}))
        .await
        .unwrap();
    assert_eq!(got, want);
    let text = metrics_text(&proxy).await;
    assert!(served(&text, "txreader", "secondary") > 0.0, "{text}");
    // One sync for the start and one after each of the five markers inside the data.
    let (_, body) = http_get(proxy.admin_addr, "/v1/routing").await;
    let routing: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(routing["offset_syncs"], 6, "{routing}");
    tokio::task::spawn_blocking(move || drop(tx)).await.unwrap();
}

/// Governance and routing on one Fetch: a registered group that also subscribes to a topic
/// it may not read has that topic's partitions taken out of its Fetch (and answered
/// TOPIC_AUTHORIZATION_FAILED), while its mirrored topic is served by the secondary. The
/// client must see the refusal and exactly the primary's records. (That a tiered answer sent
/// in pieces carries the refusal too is pinned by a unit test of the governance layer:
/// here librdkafka also sees refusals in the answers the primary serves, so this test
/// passed before that was fixed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_answer_carries_the_refusal_of_a_topic_the_group_may_not_read() {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let (primary, secondary, p) = mirrored(2000).await;
    primary.create_topic("secret", 1);
    produce_known(&p, "secret", 20, "s").await;
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        format!(
            "mode = \"enforce\"\n[[consumer]]\ngroup = \"reader\"\nowner = \"t\"\n\
             contact = \"t\"\ntopics = [\"{TOPIC}\"]\nlag_slo_seconds = 600\n"
        ),
    )
    .unwrap();
    let proxy = tiered_proxy(&primary, &secondary, TOPIC, Some(&registry)).await;
    let want = read_all_async(primary.addr(), TOPIC, 2, 2000, Duration::from_secs(30)).await;
    let via = proxy.bootstrap_addr.to_string();
    let (got, refused) = tokio::task::spawn_blocking(move || {
        // Default fetch sizes: an answer holds a whole partition's backlog (about 70 KB).
        let c: BaseConsumer = client(&via)
            .set("client.id", "reader-client")
            .set("group.id", "reader")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[TOPIC, "secret"]).unwrap();
        let (mut got, mut refused) = (Vec::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while (got.len() < 2000 || refused == 0) && Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => got.push(rec_of(&m)),
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::TopicAuthorizationFailed,
                ))) => refused += 1,
                Some(Err(e)) => panic!("unexpected error: {e}"),
                None => {}
            }
        }
        got.sort_by_key(|r| (r.partition, r.offset));
        (got, refused)
    })
    .await
    .unwrap();
    assert!(
        refused > 0,
        "the refusal of `secret` never reached the client"
    );
    assert_eq!(got.len(), want.len(), "only `{TOPIC}` records, each once");
    assert_eq!(got, want);
    let text = metrics_text(&proxy).await;
    assert!(served(&text, "reader", "secondary") > 0.0, "{text}");
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
}
