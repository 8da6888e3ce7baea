//! Multi-broker topology and broker failure, through Tollgate, on librdkafka's mock cluster
//! (3 brokers in-process). Complements the real-broker tests in `proxy.rs`: tansu is a
//! single broker, the mock cluster has several and can take one down and up again.

use std::time::Duration;

use crate::common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_coordinator_elsewhere_and_a_broker_bouncing() {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(3).unwrap();
    mock.create_topic("spread", 3, 1).unwrap();
    for (partition, leader) in [(0, 1), (1, 2), (2, 3)] {
        mock.partition_leader("spread", partition, Some(leader))
            .unwrap();
    }
    // The group's coordinator is broker 3, which is not the proxy's bootstrap server.
    mock.coordinator(MockCoordinator::Group("spread-readers".into()), 3)
        .unwrap();
    let first = mock
        .bootstrap_servers()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let proxy = start_proxy(&[first]).await;
    let via = proxy.bootstrap_addr.to_string();

    let p = producer(&via, "spread-producer");
    let acked = produce_known(&p, "spread", 300, "s").await;
    assert_eq!(acked.len(), 300);
    // Every broker got its own listener, learned from Metadata (none configured by hand).
    let brokers = proxy.shared.topology.brokers();
    assert_eq!(
        brokers.iter().map(|b| b.node_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let mut partitions: Vec<i32> = acked.iter().map(|a| a.0).collect();
    partitions.dedup();
    partitions.sort();
    partitions.dedup();
    assert_eq!(
        partitions,
        vec![0, 1, 2],
        "all three leaders were written through the proxy"
    );

    // A consumer group whose coordinator is broker 3.
    let consumer: StreamConsumer = client(&via)
        .set("group.id", "spread-readers")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["spread"]).unwrap();
    let mut got = Vec::new();
    while got.len() < 300 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("group consumption through the proxy")
            .unwrap();
        got.push(rec_of(&m));
    }
    got.sort_by_key(|r| (r.partition, r.offset));
    got.dedup();
    assert_eq!(got.len(), 300);
    let text = metrics_text(&proxy).await;
    assert!(
        metric_value(
            &text,
            "tollgate_address_rewrites_total{api=\"FindCoordinator\"}"
        ) >= 1.0,
        "{text}"
    );

    // Broker 2 goes down: its connections fail, clients retry; once it is back, every
    // acknowledged record is there exactly once.
    mock.broker_down(2).unwrap();
    let sending = tokio::spawn({
        let via = via.clone();
        async move {
            let p = producer(&via, "bounce-producer");
            produce_known(&p, "spread", 60, "b").await
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.broker_up(2).unwrap();
    let acked2 = tokio::time::timeout(Duration::from_secs(40), sending)
        .await
        .expect("produce completes after the broker is back")
        .unwrap();
    assert_eq!(acked2.len(), 60);
    while got.len() < 360 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the group keeps consuming after the bounce")
            .unwrap();
        got.push(rec_of(&m));
        got.sort_by_key(|r| (r.partition, r.offset));
        got.dedup();
    }
    let b_values: usize = got
        .iter()
        .filter(|r| r.headers[1].1.as_deref() == Some(b"b"))
        .count();
    assert_eq!(
        b_values, 60,
        "each record produced across the bounce arrives once"
    );
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
    proxy.shutdown().await;
}
