//! Offset protection as deployed: two instances behind the balancer in front of the suite's
//! broker, a group with `max_rewind_records = 100`, and commits made with librdkafka the way
//! an offset-reset tool makes them (a client outside the group's generation).
//!
//! A commit 50 records back passes; one 950 back is refused on every instance and the
//! coordinator keeps the group where it was; an operator opens a rewind window on one
//! instance and the same commit passes through either.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::common::tier::Tier;
use crate::common::*;

const REGISTRY: &str = r##"
mode = "enforce"
[[consumer]]
group = "ledger-readers"
owner = "finance"
contact = "#finance"
topics = ["ledger"]
lag_slo_seconds = 60
max_rewind_records = 100
"##;

/// Commit `offset` for ledger/0 as `ledger-readers` through `via`, with a client of its own
/// (a new connection: behind the balancer it may land on either instance).
async fn commit(via: &str, offset: i64) -> Result<(), String> {
    let via = via.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client(&via)
            .set("group.id", "ledger-readers")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("ledger", 0, Offset::Offset(offset))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).map_err(|e| e.to_string())
    })
    .await
    .unwrap()
}

/// The group's committed offset for ledger/0, asked of the broker directly.
async fn committed(broker: &str) -> i64 {
    let broker = broker.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client(&broker)
            .set("group.id", "ledger-readers")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("ledger", 0);
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        match got.find_partition("ledger", 0).unwrap().offset() {
            Offset::Offset(o) => o,
            other => panic!("no committed offset: {other:?}"),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_is_refused_on_every_instance_then_allowed_by_a_window() {
    let broker = Broker::start();
    broker.create_topic("ledger", 1);
    let p = producer(&broker.addr(), "ledger-writer");
    produce_known(&p, "ledger", 1000, "l").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    let extra = format!(
        "share_interval_ms = 250\ncoordinator_refresh_ms = 500\n[governance]\nregistry = \"{}\"\n",
        path.display()
    );
    let tier = Tier::start(2, &broker.addr(), &extra).await;
    let via = tier.bootstrap();
    commit(&via, 1000).await.expect("forward");
    // Both instances learn the committed offset from the coordinator.
    tokio::time::sleep(Duration::from_secs(2)).await;
    commit(&via, 950)
        .await
        .expect("50 back is within the limit");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for attempt in 0..4 {
        let refused = commit(&via, 0).await;
        assert!(
            refused.is_err(),
            "attempt {attempt}: 950 back was committed\n{}",
            tier.logs()
        );
    }
    assert_eq!(committed(&broker.addr()).await, 950, "the group stayed put");
    let counted = tier
        .sum(
            "tollgate_rejected_requests_total",
            &[("reason", "rewind"), ("api", "OffsetCommit")],
        )
        .await;
    assert!(counted >= 4.0, "{counted}");
    let (status, body) = http_post(
        tier.instances[0].admin,
        "/v1/groups/ledger-readers/rewind/allow?seconds=60",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["group"], "ledger-readers", "{body}");
    assert!(answer["rewind_allowed_until"].is_u64(), "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..2 {
        commit(&via, 0)
            .await
            .expect("the window is open on every instance");
    }
    assert_eq!(committed(&broker.addr()).await, 0);
}
