//! Attribution against a real broker (tansu) with real clients (rdkafka): a known workload
//! and exact counters per client, group ties through a rebalance and with a shared client.id,
//! the cardinality cap and idle-series removal, and the topic/group inventory views.

use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// Produce `n` records of `size` value bytes; returns the key+value bytes written.
async fn produce_sized(p: &FutureProducer, topic: &str, n: usize, size: usize, tag: &str) -> u64 {
    let mut futs = Vec::new();
    let mut payload_bytes = 0u64;
    for i in 0..n {
        let key = format!("{tag}-{i}");
        let value = vec![b'v'; size];
        payload_bytes += (key.len() + value.len()) as u64;
        futs.push(
            p.send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .expect("queue"),
        );
    }
    for f in futs {
        f.await.expect("future").expect("delivered");
    }
    payload_bytes
}

/// A consumer: `group` None = group-less `assign()` of every partition from the beginning
/// (librdkafka needs a `group.id` even then; it is only used locally and never reaches the
/// broker, so on the wire the consumer is in no group); Some = `subscribe()` in that group.
fn consumer(
    via: &str,
    client_id: &str,
    group: Option<&str>,
    topic: &str,
    parts: i32,
) -> BaseConsumer {
    let mut cfg = client(via);
    cfg.set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    cfg.set("group.id", group.unwrap_or("local-only-never-sent"));
    let c: BaseConsumer = cfg.create().expect("consumer");
    match group {
        Some(_) => c.subscribe(&[topic]).unwrap(),
        None => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..parts {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
            c.assign(&tpl).unwrap();
        }
    }
    c
}

/// Poll until `n` records arrived (or the deadline); returns how many per partition.
fn poll_n(c: &BaseConsumer, n: usize, timeout: Duration) -> Vec<(i32, i64)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            got.push((
                rdkafka::Message::partition(&m),
                rdkafka::Message::offset(&m),
            ));
        }
    }
    got
}

async fn get_json(proxy: &TestProxy, path: &str) -> Value {
    let (status, body) = http_get(proxy.admin_addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn close(c: BaseConsumer) {
    tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_what_each_client_wrote_and_read() {
    let broker = Broker::start();
    broker.create_topic("attr", 2);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();

    // Two producers, known record counts and sizes.
    let a = producer(&via, "prod-a");
    let b = producer(&via, "prod-b");
    let a_payload = produce_sized(&a, "attr", 30, 100, "a").await;
    let b_payload = produce_sized(&b, "attr", 20, 300, "b").await;

    let text = metrics_text(&proxy).await;
    let produced = |client: &str, what: &str| {
        sum_series(
            &text,
            &format!("tollgate_produced_{what}_total"),
            &[
                ("client_id", client),
                ("topic", "attr"),
                ("principal", "ANONYMOUS"),
            ],
        )
    };
    assert_eq!(produced("prod-a", "records"), 30.0, "{text}");
    assert_eq!(produced("prod-b", "records"), 20.0, "{text}");
    // Bytes are whole record batches: the payload plus batch and record framing.
    let (a_bytes, b_bytes) = (produced("prod-a", "bytes"), produced("prod-b", "bytes"));
    for (bytes, payload, n) in [(a_bytes, a_payload, 30.0), (b_bytes, b_payload, 20.0)] {
        assert!(bytes > payload as f64, "{bytes} > {payload}");
        assert!(
            bytes < payload as f64 + n * 30.0 + 2.0 * 61.0 * n,
            "{bytes} vs {payload}"
        );
    }
    assert_eq!(sum_series(&text, "tollgate_produce_errors_total", &[]), 0.0);

    // Two groups and one group-less consumer each read everything once.
    let total = 50;
    let (via2, via3) = (via.clone(), via.clone());
    let g1 = tokio::task::spawn_blocking(move || {
        let c = consumer(&via2, "cons-1", Some("g1"), "attr", 2);
        let got = poll_n(&c, total, Duration::from_secs(40));
        c.commit_consumer_state(CommitMode::Sync).expect("commit");
        (c, got.len())
    });
    let g2 = tokio::task::spawn_blocking(move || {
        let c = consumer(&via3, "cons-2", Some("g2"), "attr", 2);
        let got = poll_n(&c, total, Duration::from_secs(40));
        (c, got.len())
    });
    let via4 = via.clone();
    let loner = tokio::task::spawn_blocking(move || {
        let c = consumer(&via4, "loner", None, "attr", 2);
        let got = poll_n(&c, total, Duration::from_secs(40));
        (c, got.len())
    });
    let (c1, n1) = g1.await.unwrap();
    let (c2, n2) = g2.await.unwrap();
    let (c3, n3) = loner.await.unwrap();
    assert_eq!((n1, n2, n3), (total, total, total));

    let produced_bytes = a_bytes + b_bytes;
    let text = eventually_metrics(&proxy, "fetched records", |t| {
        ["cons-1", "cons-2", "loner"].iter().all(|c| {
            sum_series(t, "tollgate_fetched_records_total", &[("client_id", c)]) >= total as f64
        })
    })
    .await;
    for (client, group) in [("cons-1", "g1"), ("cons-2", "g2"), ("loner", "(none)")] {
        let labels = [("client_id", client), ("group", group), ("topic", "attr")];
        assert_eq!(
            sum_series(&text, "tollgate_fetched_records_total", &labels),
            total as f64,
            "{client} in {group}:\n{text}"
        );
        // Each consumer read exactly the batches the producers wrote.
        assert_eq!(
            sum_series(&text, "tollgate_fetched_bytes_total", &labels),
            produced_bytes,
            "{client} bytes"
        );
        // A fresh topic a few KiB long is all hot.
        assert_eq!(
            sum_series(
                &text,
                "tollgate_fetched_bytes_total",
                &[("client_id", client), ("temperature", "cold")]
            ),
            0.0
        );
    }

    // Who reads and writes the topic.
    let consumers = get_json(&proxy, "/v1/topics/attr/consumers").await;
    let rows = consumers.as_array().unwrap();
    let row = |client: &str| rows.iter().find(|r| r["client_id"] == client).cloned();
    assert_eq!(row("cons-1").unwrap()["group"], "g1");
    assert_eq!(row("cons-2").unwrap()["group"], "g2");
    assert_eq!(row("loner").unwrap()["group"], "(none)");
    assert_eq!(row("loner").unwrap()["records"], total);
    assert!(row("cons-1").unwrap()["bytes_per_second"].as_f64().unwrap() > 0.0);
    let producers = get_json(&proxy, "/v1/topics/attr/producers").await;
    let prod: Vec<(String, u64)> = producers
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["client_id"].as_str().unwrap().to_string(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        prod.contains(&("prod-a".into(), a_bytes as u64)),
        "{prod:?}"
    );
    assert!(
        prod.contains(&("prod-b".into(), b_bytes as u64)),
        "{prod:?}"
    );
    assert_eq!(prod.len(), 2);

    // Groups: members, assignments, and the fetch connections tied to them.
    let groups = get_json(&proxy, "/v1/groups").await;
    let g1 = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "g1")
        .expect("g1 listed")
        .clone();
    assert_eq!(g1["members"].as_array().unwrap().len(), 1, "{g1}");
    assert_eq!(g1["members"][0]["client_id"], "cons-1");
    assert_eq!(
        g1["members"][0]["assignment"]["attr"],
        serde_json::json!([0, 1])
    );
    assert!(
        !g1["fetch_connections"].as_array().unwrap().is_empty(),
        "{g1}"
    );

    // The client inventory names groups and topics per connection.
    let clients = get_json(&proxy, "/v1/clients").await;
    let conns = clients.as_array().unwrap();
    let has = |client: &str, field: &str, value: &str| {
        conns.iter().any(|c| {
            c["client_id"] == client && c[field].as_array().unwrap().iter().any(|v| v == value)
        })
    };
    assert!(has("cons-1", "groups", "g1"));
    assert!(has("cons-1", "topics_fetched", "attr"));
    assert!(has("loner", "groups", "(none)"));
    assert!(has("prod-a", "topics_produced", "attr"));

    for c in [c1, c2, c3] {
        close(c).await;
    }
    tokio::task::spawn_blocking(move || drop((a, b)))
        .await
        .unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribution_follows_partitions_through_a_rebalance_and_a_shared_client_id() {
    let broker = Broker::start();
    broker.create_topic("rb", 2);
    broker.create_topic("other", 1);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "rb-producer");
    produce_sized(&p, "rb", 20, 50, "first").await;
    produce_sized(&p, "other", 7, 50, "other").await;

    // One member owns both partitions and reads all 20. A second group with the SAME
    // client.id on the same host reads another topic: attribution must tell them apart.
    let v = via.clone();
    let first = tokio::task::spawn_blocking(move || {
        let c = consumer(&v, "shared-id", Some("rb-group"), "rb", 2);
        let got = poll_n(&c, 20, Duration::from_secs(40));
        // Commit, so the partition that moves is resumed where this member left it.
        c.commit_consumer_state(CommitMode::Sync).expect("commit");
        (c, got.len())
    });
    let v = via.clone();
    let side = tokio::task::spawn_blocking(move || {
        let c = consumer(&v, "shared-id", Some("side-group"), "other", 1);
        let got = poll_n(&c, 7, Duration::from_secs(40));
        (c, got.len())
    });
    let (c1, n) = first.await.unwrap();
    assert_eq!(n, 20);
    let (side, n) = side.await.unwrap();
    assert_eq!(n, 7);

    // A second member joins: each now owns one partition.
    let v = via.clone();
    let c2 =
        tokio::task::spawn_blocking(move || consumer(&v, "rb-second", Some("rb-group"), "rb", 2))
            .await
            .unwrap();
    let (c1, c2) = tokio::task::spawn_blocking(move || {
        // Poll both until the rebalance settles (both have an assignment).
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let _ = c1.poll(Duration::from_millis(50));
            let _ = c2.poll(Duration::from_millis(50));
            let a1 = c1.assignment().map(|a| a.count()).unwrap_or(0);
            let a2 = c2.assignment().map(|a| a.count()).unwrap_or(0);
            if a1 == 1 && a2 == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rebalance did not settle: {a1} {a2}"
            );
        }
        (c1, c2)
    })
    .await
    .unwrap();
    // Let the Fetches sent before the rebalance expire first. Apache Kafka holds a Fetch up
    // to fetch.wait.max.ms (librdkafka: 500 ms) for data: one still parked for the partition
    // the first member just lost would be answered with this round's records, which really
    // cross the wire to that member (and are counted for it) before librdkafka drops them.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    produce_sized(&p, "rb", 20, 50, "second").await;
    let (c1, c2, got1, got2) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(40);
        let (mut got1, mut got2) = (Vec::new(), Vec::new());
        // Until all 20 arrived, then a second more: nothing must be delivered twice.
        let mut quiet_until: Option<Instant> = None;
        while Instant::now() < deadline && quiet_until.is_none_or(|q| Instant::now() < q) {
            if let Some(Ok(m)) = c1.poll(Duration::from_millis(50)) {
                got1.push(rdkafka::Message::partition(&m));
            }
            if let Some(Ok(m)) = c2.poll(Duration::from_millis(50)) {
                got2.push(rdkafka::Message::partition(&m));
            }
            if quiet_until.is_none() && got1.len() + got2.len() >= 20 {
                quiet_until = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        (c1, c2, got1, got2)
    })
    .await
    .unwrap();
    assert_eq!(got1.len() + got2.len(), 20);
    let n1 = got1.len() as f64;
    let n2 = got2.len() as f64;

    let text = eventually_metrics(&proxy, "second-round records", |t| {
        sum_series(t, "tollgate_fetched_records_total", &[("topic", "rb")]) >= 40.0
    })
    .await;
    let records = |client: &str, group: &str, topic: &str| {
        sum_series(
            &text,
            "tollgate_fetched_records_total",
            &[("client_id", client), ("group", group), ("topic", topic)],
        )
    };
    // The first member read all 20 before the rebalance, and its share after it; the second
    // member's share after the rebalance is attributed to it, in the same group.
    assert_eq!(records("shared-id", "rb-group", "rb"), 20.0 + n1, "{text}");
    assert_eq!(records("rb-second", "rb-group", "rb"), n2, "{text}");
    // Same client.id, same host, other group: kept apart.
    assert_eq!(records("shared-id", "side-group", "other"), 7.0, "{text}");
    assert_eq!(records("shared-id", "side-group", "rb"), 0.0);
    assert_eq!(records("shared-id", "rb-group", "other"), 0.0);
    assert_eq!(
        sum_series(
            &text,
            "tollgate_fetched_records_total",
            &[("group", "(ambiguous)")]
        ),
        0.0
    );

    for c in [c1, c2, side] {
        close(c).await;
    }
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cardinality_cap_holds_and_idle_series_go_away() {
    let broker = Broker::start();
    broker.create_topic("cap", 1);
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.attribution.max_client_ids = 2;
    cfg.attribution.idle_series_seconds = 2;
    let proxy = start_proxy_with(cfg).await;
    let via = proxy.bootstrap_addr.to_string();
    let mut producers = Vec::new();
    for id in ["cap-1", "cap-2", "cap-3", "cap-4"] {
        let p = producer(&via, id);
        produce_sized(&p, "cap", 5, 10, id).await;
        producers.push(p);
    }
    let text = metrics_text(&proxy).await;
    let clients: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tollgate_produced_records_total{"))
        .collect();
    // Two admitted client ids plus `other`; every record is still counted.
    assert_eq!(clients.len(), 3, "{clients:?}");
    assert_eq!(
        sum_series(&text, "tollgate_produced_records_total", &[]),
        20.0
    );
    assert_eq!(
        sum_series(
            &text,
            "tollgate_produced_records_total",
            &[("client_id", "other")]
        ),
        10.0
    );
    assert!(
        metric_value(
            &text,
            "tollgate_attribution_label_overflow_total{label=\"client_id\"}"
        ) >= 2.0
    );
    // Nothing is produced for longer than the idle time: the series are removed.
    eventually_metrics(&proxy, "idle series removal", |t| {
        !t.contains("tollgate_produced_records_total{")
            && metric_value(t, "tollgate_attribution_series_removed_total") >= 6.0
    })
    .await;
    tokio::task::spawn_blocking(move || drop(producers))
        .await
        .unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_far_behind_the_head_are_cold_and_the_tail_is_hot() {
    let broker = Broker::start();
    broker.create_topic("backlog", 1);
    let mut cfg = proxy_config(&[broker.addr()]);
    // 20 KiB from the head is hot; the topic holds ~200 KiB.
    cfg.attribution.hot_threshold_bytes = 20 * 1024;
    let proxy = start_proxy_with(cfg).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "backlog-producer");
    // One record per batch (each awaited), so fetches can stop anywhere.
    for i in 0..200 {
        produce_sized(&p, "backlog", 1, 1000, &format!("b{i}")).await;
    }

    // Small fetches from the beginning: the first ones are far behind the head.
    let v = via.clone();
    let (c, n) = tokio::task::spawn_blocking(move || {
        let mut cfg = client(&v);
        cfg.set("client.id", "rewinder")
            .set("group.id", "local-only-never-sent")
            .set("max.partition.fetch.bytes", "8192")
            .set("fetch.max.bytes", "8192")
            .set("message.max.bytes", "8192");
        let c: BaseConsumer = cfg.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("backlog", 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let got = poll_n(&c, 200, Duration::from_secs(60));
        (c, got.len())
    })
    .await
    .unwrap();
    assert_eq!(n, 200);
    let text = eventually_metrics(&proxy, "backlog read", |t| {
        sum_series(
            t,
            "tollgate_fetched_records_total",
            &[("client_id", "rewinder")],
        ) >= 200.0
    })
    .await;
    let bytes = |temp: &str| {
        sum_series(
            &text,
            "tollgate_fetched_bytes_total",
            &[("client_id", "rewinder"), ("temperature", temp)],
        )
    };
    let produced = sum_series(
        &text,
        "tollgate_produced_bytes_total",
        &[("topic", "backlog")],
    );
    let (cold, hot) = (bytes("cold"), bytes("hot"));
    assert_eq!(cold + hot, produced, "{text}");
    // Everything but the last ~20 KiB was read cold (one fetch of slack either side).
    assert!(
        cold >= produced - 40.0 * 1024.0,
        "cold {cold} of {produced}"
    );
    assert!(hot >= 8.0 * 1024.0, "hot {hot}");
    close(c).await;
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
    proxy.shutdown().await;
}
