//! End-to-end: real rdkafka clients through Tollgate against a real broker (Apache Kafka, or
//! tansu with `TOLLGATE_TEST_BROKER=tansu`). Every test
//! asserts that what is read through the proxy is exactly what was written, and the same as a
//! direct read of the broker.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_produce_and_assign_consume_are_exact() {
    let broker = Broker::start();
    broker.create_topic("orders", 3);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();

    let p = producer(&via, "it-producer");
    let acked = produce_known(&p, "orders", 600, "a").await;
    assert_eq!(acked.len(), 600);

    let through = read_all_async(via.clone(), "orders", 3, 600, Duration::from_secs(30)).await;
    let direct = read_all_async(broker.addr(), "orders", 3, 600, Duration::from_secs(30)).await;
    assert_eq!(
        through.len(),
        600,
        "every record arrives exactly once through the proxy"
    );
    assert_eq!(through, direct, "proxy read == direct read, field by field");
    // Acknowledged offsets are exactly the offsets read.
    let mut acked_sorted = acked.clone();
    acked_sorted.sort();
    let read_positions: Vec<(i32, i64)> = through.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(acked_sorted, read_positions);
    // Keys, values, headers and timestamps are the ones written.
    for r in &through {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let i: usize = key.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(
            r.value.as_deref(),
            Some(format!("a-value-{i}-{}", "x".repeat(i % 50)).as_bytes())
        );
        assert_eq!(r.timestamp, Some(1_700_000_000_000 + i as i64));
        assert_eq!(
            r.headers[0],
            ("seq".to_string(), Some(i.to_string().into_bytes()))
        );
    }
    let text = metrics_text(&proxy).await;
    assert!(
        metric_value(&text, "tollgate_requests_total{api=\"Produce\"}") >= 1.0,
        "{text}"
    );
    assert!(metric_value(&text, "tollgate_requests_total{api=\"Fetch\"}") >= 1.0);
    assert!(metric_value(&text, "tollgate_address_rewrites_total{api=\"Metadata\"}") >= 1.0);
    assert_eq!(metric_value(&text, "tollgate_frame_errors_total"), 0.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_subscribe_commit_and_rejoin() {
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::Message;

    let broker = Broker::start();
    broker.create_topic("events", 2);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "group-producer");
    produce_known(&p, "events", 200, "g").await;

    let make = || -> StreamConsumer {
        client(&via)
            .set("group.id", "billing")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap()
    };
    // First member: read 120 records, commit, leave.
    let c1 = make();
    c1.subscribe(&["events"]).unwrap();
    let mut first = Vec::new();
    while first.len() < 120 {
        let m = tokio::time::timeout(Duration::from_secs(30), c1.recv())
            .await
            .expect("records arrive through the proxy")
            .unwrap();
        first.push(rec_of(&m));
        c1.store_offset_from_message(&m).ok();
    }
    c1.commit_consumer_state(CommitMode::Sync).unwrap();
    let committed: Vec<(i32, i64)> = c1
        .committed(Duration::from_secs(10))
        .unwrap()
        .elements_for_topic("events")
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    // librdkafka's close (LeaveGroup) blocks its thread: keep it off the async workers.
    // (Holding a TopicPartitionList from `committed()` across the close hangs it.)
    tokio::task::spawn_blocking(move || {
        c1.unsubscribe();
        drop(c1)
    })
    .await
    .unwrap();

    // Second member of the same group re-joins and resumes exactly after the commit.
    let c2 = make();
    c2.subscribe(&["events"]).unwrap();
    let mut second = Vec::new();
    while first.len() + second.len() < 200 {
        let m = tokio::time::timeout(Duration::from_secs(40), c2.recv())
            .await
            .expect("the re-joined member resumes")
            .unwrap();
        assert!(m.offset() >= 0);
        second.push(rec_of(&m));
    }
    let mut all: Vec<Rec> = first.iter().chain(second.iter()).cloned().collect();
    all.sort_by_key(|r| (r.partition, r.offset));
    all.dedup();
    assert_eq!(
        all.len(),
        200,
        "no record lost or duplicated across the re-join"
    );
    for r in &second {
        if let Some((_, o)) = committed.iter().find(|(p, _)| *p == r.partition) {
            assert!(r.offset >= *o, "resumed at or after the committed offset");
        }
    }
    let direct = read_all_async(broker.addr(), "events", 2, 200, Duration::from_secs(30)).await;
    assert_eq!(all, direct);
    let text = metrics_text(&proxy).await;
    for api in [
        "FindCoordinator",
        "JoinGroup",
        "SyncGroup",
        "OffsetCommit",
        "OffsetFetch",
    ] {
        assert!(
            metric_value(&text, &format!("tollgate_requests_total{{api=\"{api}\"}}")) >= 1.0,
            "{api} went through the proxy"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_for_several_topics_points_at_the_proxy() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let broker = Broker::start();
    for (t, n) in [("m1", 1), ("m2", 4), ("m3", 7)] {
        broker.create_topic(t, n);
    }
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let fetch = |bootstrap: String| {
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = client(&bootstrap).create().unwrap();
            let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
            let mut topics: Vec<(String, Vec<(i32, i32)>)> = md
                .topics()
                .iter()
                .filter(|t| t.name().starts_with('m'))
                .map(|t| {
                    (
                        t.name().to_string(),
                        t.partitions()
                            .iter()
                            .map(|p| (p.id(), p.leader()))
                            .collect(),
                    )
                })
                .collect();
            topics.sort();
            let brokers: Vec<(i32, String, i32)> = md
                .brokers()
                .iter()
                .map(|b| (b.id(), b.host().to_string(), b.port()))
                .collect();
            (topics, brokers)
        })
    };
    let (through_topics, through_brokers) = fetch(via.clone()).await.unwrap();
    let (direct_topics, direct_brokers) = fetch(broker.addr()).await.unwrap();
    assert_eq!(through_topics, direct_topics);
    assert_eq!(
        through_topics.iter().map(|t| t.1.len()).collect::<Vec<_>>(),
        vec![1, 4, 7]
    );
    assert_eq!(direct_brokers.len(), through_brokers.len());
    let listeners = proxy.shared.topology.brokers();
    for (id, host, port) in &through_brokers {
        assert_eq!(host, "127.0.0.1");
        assert_ne!(
            *port as u16, broker.port,
            "clients are never sent to the broker directly"
        );
        let l = listeners.iter().find(|l| l.node_id == *id).unwrap();
        assert_eq!(l.advertised, format!("{host}:{port}"));
        assert_eq!(l.upstream, broker.addr());
    }
    let (status, body) = http_get(proxy.admin_addr, "/v1/brokers").await;
    assert_eq!(status, 200);
    assert!(body.contains(&broker.addr()));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_each_get_exactly_their_records() {
    let broker = Broker::start();
    broker.create_topic("shared", 4);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let clients = 16;
    let per = 150;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let via = via.clone();
        tasks.push(tokio::spawn(async move {
            let p = producer(&via, &format!("client-{c}"));
            produce_known(&p, "shared", per, &format!("c{c}")).await
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), clients * per);
    // The baseline first, on its own (tansu slows down under many parallel readers).
    let direct = read_all_async(
        broker.addr(),
        "shared",
        4,
        clients * per,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        direct.len(),
        clients * per,
        "direct baseline read is complete"
    );
    // Several concurrent readers through the proxy all see the same, complete log.
    let mut readers = Vec::new();
    for _ in 0..4 {
        let via = via.clone();
        readers.push(tokio::task::spawn_blocking(move || {
            read_all(&via, "shared", 4, clients * per, Duration::from_secs(60))
        }));
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), direct);
    }
    // Per-client order: each producer's records appear in the order it sent them, per partition.
    for c in 0..clients {
        let tag = format!("c{c}");
        for part in 0..4 {
            let seqs: Vec<usize> = direct
                .iter()
                .filter(|r| {
                    r.partition == part && r.headers[1].1.as_deref() == Some(tag.as_bytes())
                })
                .map(|r| {
                    String::from_utf8(r.headers[0].1.clone().unwrap())
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "client {c} partition {part} reordered"
            );
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_produce_is_forwarded_without_waiting_for_a_response() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let broker = Broker::start();
    broker.create_topic("fire", 1);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let p: FutureProducer = client(&via)
        .set("acks", "0")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for i in 0..50 {
        let v = format!("v{i}");
        p.send(
            FutureRecord::<(), _>::to("fire").payload(&v),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }
    // Then an acks=all produce on another connection is still served; all 51 arrive.
    let p2 = producer(&via, "after-acks-0");
    produce_known(&p2, "fire", 1, "tail").await;
    let got = read_all_async(via, "fire", 1, 51, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 51);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_close_only_their_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = Broker::start();
    broker.create_topic("steady", 1);
    let mut config = proxy_config(&[broker.addr()]);
    config.proxy.max_frame_bytes = 64 * 1024;
    let proxy = start_proxy_with(config).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "steady-producer");
    produce_known(&p, "steady", 10, "before").await;

    let hostile: Vec<Vec<u8>> = vec![
        // oversized: claims 1 GiB
        (1i32 << 30).to_be_bytes().to_vec(),
        // negative size
        (-5i32).to_be_bytes().to_vec(),
        // too short for a header
        [&3i32.to_be_bytes()[..], &[0, 3, 0]].concat(),
        // a Metadata v9 header whose client id length runs past the frame
        [
            &10i32.to_be_bytes()[..],
            &[0, 3, 0, 9, 0, 0, 0, 1, 0x7f, 0x00],
        ]
        .concat(),
    ];
    for bytes in &hostile {
        let mut s = tokio::net::TcpStream::connect(proxy.bootstrap_addr)
            .await
            .unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the proxy closes the connection promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "no response to a bad frame, just a close");
    }
    // The well-behaved producer on its own connection is unaffected.
    produce_known(&p, "steady", 10, "after").await;
    let got = read_all_async(via, "steady", 1, 20, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 20);
    let text = metrics_text(&proxy).await;
    assert_eq!(
        metric_value(&text, "tollgate_frame_errors_total{reason=\"oversized\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "tollgate_frame_errors_total{reason=\"negative_size\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&text, "tollgate_frame_errors_total{reason=\"too_short\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "tollgate_frame_errors_total{reason=\"bad_header\"}"),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_graceful_shutdown() {
    let broker = Broker::start();
    broker.create_topic("drain", 1);
    let proxy = start_proxy(&[broker.addr()]).await;
    assert_eq!(http_get(proxy.admin_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(proxy.admin_addr, "/readyz").await.0, 200);
    let text = metrics_text(&proxy).await;
    assert_eq!(metric_value(&text, "tollgate_ready"), 1.0);
    assert_eq!(metric_value(&text, "tollgate_brokers"), 1.0);

    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "drainer");
    produce_known(&p, "drain", 5, "d").await;
    let admin = proxy.admin_addr;
    let bootstrap = proxy.bootstrap_addr;
    // Connections drain; the call returns within the grace period.
    let started = std::time::Instant::now();
    drop(p);
    assert!(
        proxy.shutdown().await,
        "all connections drained within the grace period"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(
        tokio::net::TcpStream::connect(bootstrap).await.is_err(),
        "no longer accepting"
    );
    let _ = admin;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_fetch_responses_are_cut_through_exactly() {
    use rdkafka::producer::FutureRecord;

    let broker = Broker::start();
    broker.create_topic("bulk", 2);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "bulk-producer");
    // ~6 MB over two partitions: fetch responses far above the cut-through threshold.
    let n = 3000;
    let mut futs = Vec::new();
    for i in 0..n {
        let value: Vec<u8> = (0..2000).map(|j| ((i * 7 + j) % 251) as u8).collect();
        let key = format!("k{i}");
        futs.push(
            p.send_result(FutureRecord::to("bulk").key(&key).payload(&value))
                .unwrap(),
        );
    }
    for f in futs {
        f.await.unwrap().unwrap();
    }
    let through = read_all_async(via.clone(), "bulk", 2, n, Duration::from_secs(60)).await;
    let direct = read_all_async(broker.addr(), "bulk", 2, n, Duration::from_secs(60)).await;
    assert_eq!(through.len(), n);
    assert_eq!(through, direct);
    let text = metrics_text(&proxy).await;
    assert!(
        metric_value(&text, "tollgate_cut_through_responses_total") >= 1.0,
        "large fetches took the cut-through path: {text}"
    );
    // Attribution reads cut-through responses from the forwarded chunks: every record and
    // every produced byte is counted once for the reader.
    let produced = sum_series(&text, "tollgate_produced_bytes_total", &[("topic", "bulk")]);
    assert!(produced > (n * 2000) as f64);
    let text = eventually_metrics(&proxy, "fetched bulk records", |t| {
        sum_series(t, "tollgate_fetched_records_total", &[("topic", "bulk")]) >= n as f64
    })
    .await;
    assert_eq!(
        sum_series(
            &text,
            "tollgate_fetched_records_total",
            &[("topic", "bulk")]
        ),
        n as f64
    );
    assert_eq!(
        sum_series(&text, "tollgate_fetched_bytes_total", &[("topic", "bulk")]),
        produced
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_inventory_lists_exactly_the_live_clients() {
    let broker = Broker::start();
    broker.create_topic("inv", 1);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let a = producer(&via, "inventory-a");
    let b = producer(&via, "inventory-b");
    produce_known(&a, "inv", 5, "a").await;
    produce_known(&b, "inv", 5, "b").await;

    let clients = |body: String| -> Vec<serde_json::Value> { serde_json::from_str(&body).unwrap() };
    let (status, body) = http_get(proxy.admin_addr, "/v1/clients").await;
    assert_eq!(status, 200);
    let listed = clients(body);
    for id in ["inventory-a", "inventory-b"] {
        let conns: Vec<&serde_json::Value> =
            listed.iter().filter(|c| c["client_id"] == id).collect();
        assert!(!conns.is_empty(), "{id} is listed: {listed:?}");
        for c in &conns {
            assert_eq!(c["software_name"], "librdkafka", "{c}");
            assert_eq!(c["principal"], "ANONYMOUS");
            assert!(c["address"].as_str().unwrap().starts_with("127.0.0.1:"));
        }
        let bytes_in: u64 = conns.iter().map(|c| c["bytes_in"].as_u64().unwrap()).sum();
        assert!(bytes_in > 0);
    }
    // Every listed connection belongs to one of the two clients: nothing else is connected.
    assert!(listed
        .iter()
        .all(|c| c["client_id"] == "inventory-a" || c["client_id"] == "inventory-b"));

    // Client a goes away: it disappears from the inventory, b stays.
    tokio::task::spawn_blocking(move || drop(a)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = clients(http_get(proxy.admin_addr, "/v1/clients").await.1);
        let has = |id: &str| listed.iter().any(|c| c["client_id"] == id);
        if !has("inventory-a") {
            assert!(has("inventory-b"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "inventory-a still listed after disconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || drop(b)).await.unwrap();
    proxy.shutdown().await;
}

/// A KIP-848 consumer (`group.protocol=consumer`: ConsumerGroupHeartbeat instead of
/// JoinGroup/SyncGroup) through Tollgate on Apache Kafka: it is assigned every partition,
/// reads exactly what a direct read sees, commits, and a second member resumes after the
/// commit. Kafka only: tansu 0.6.0 does not implement the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_consumer_group_reads_exactly_and_resumes_after_its_commit() {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    let broker = Broker::kafka(Default::default());
    broker.create_topic("next-gen", 2);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "kip848-producer");
    produce_known(&p, "next-gen", 150, "n").await;
    let make = || -> StreamConsumer {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &via)
            .set("group.id", "next-gen-readers")
            .set("group.protocol", "consumer")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.queue.backoff.ms", "10");
        c.create().unwrap()
    };
    let recv_n = |c: StreamConsumer, n: usize| async move {
        let mut got = Vec::new();
        while got.len() < n {
            let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
                .await
                .expect("records arrive through the proxy")
                .unwrap();
            got.push(rec_of(&m));
            c.store_offset_from_message(&m).unwrap();
        }
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        tokio::task::spawn_blocking(move || {
            c.unsubscribe();
            drop(c)
        })
        .await
        .unwrap();
        got
    };
    let first = make();
    first.subscribe(&["next-gen"]).unwrap();
    let mut got = recv_n(first, 100).await;
    let second = make();
    second.subscribe(&["next-gen"]).unwrap();
    // Whatever the first member read past its last stored offset is read again: resume at
    // the commit, so the union is every record and nothing is skipped.
    got.extend(recv_n(second, 50).await);
    got.sort_by_key(|r| (r.partition, r.offset));
    got.dedup();
    let direct = read_all_async(broker.addr(), "next-gen", 2, 150, Duration::from_secs(30)).await;
    assert_eq!(
        got, direct,
        "a KIP-848 group through Tollgate == direct read"
    );
    let text = metrics_text(&proxy).await;
    assert!(
        text.contains("tollgate_requests_total{api=\"ConsumerGroupHeartbeat\"}"),
        "no ConsumerGroupHeartbeat went through"
    );
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
    proxy.shutdown().await;
}
