//! End-to-end: real rdkafka clients through Tollgate against a real tansu broker. Every test
//! asserts that what is read through the proxy is exactly what was written, and the same as a
//! direct read of the broker.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_produce_and_assign_consume_are_exact() {
    let broker = Broker::start();
    broker.create_topic("orders", 3);
    let proxy = start_proxy(&[broker.addr()]).await;
    let via = proxy.bootstrap_addr.to_string();

    let p = producer(&via, "it-producer");
    let acked = produce_known(&p, "orders", 600, "a").await;
    assert_eq!(acked.len(), 600);

    let through = tokio::task::spawn_blocking({
        let via = via.clone();
        move || read_all(&via, "orders", 3, 600, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let direct = tokio::task::spawn_blocking({
        let addr = broker.addr();
        move || read_all(&addr, "orders", 3, 600, Duration::from_secs(30))
    })
    .await
    .unwrap();
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
