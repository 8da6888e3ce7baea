//! Lag and rogue-consumer detection against a real broker (tansu) and real clients (rdkafka):
//! each scenario asserts the group status and metric within a bounded time, with short
//! thresholds (the defaults are in docs/configuration.md).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

async fn start(broker: &Broker) -> TestProxy {
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.lag.evaluate_interval_ms = 200;
    cfg.lag.stopped_after_seconds = 2;
    cfg.lag.commit_stall_seconds = 2;
    cfg.lag.wedged_after_seconds = 2;
    cfg.lag.rewind_offsets = 5;
    cfg.lag.rewind_hold_seconds = 60;
    start_proxy_with(cfg).await
}

async fn produce(p: &FutureProducer, topic: &str, n: usize) {
    for i in 0..n {
        let k = format!("k{i}");
        p.send(
            FutureRecord::to(topic).key(&k).payload("v"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
}

async fn status(proxy: &TestProxy, group: &str) -> Option<Value> {
    let (code, body) = http_get(proxy.admin_addr, &format!("/v1/groups/{group}/status")).await;
    (code == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// Wait until the group's status is `want`; returns the status document.
async fn wait_status(proxy: &TestProxy, group: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = status(proxy, group).await;
        if s.as_ref().is_some_and(|s| s["status"] == want) {
            return s.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{group} never became {want}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn consumer(via: &str, group: &str, auto_commit: bool) -> BaseConsumer {
    let mut cfg = client(via);
    cfg.set("client.id", format!("{group}-client"))
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set(
            "enable.auto.commit",
            if auto_commit { "true" } else { "false" },
        )
        .set("auto.commit.interval.ms", "300");
    cfg.create().unwrap()
}

/// Poll until `n` records arrived or `timeout` passed; how many arrived.
fn poll_n(c: &BaseConsumer, n: usize, timeout: Duration) -> usize {
    let end = Instant::now() + timeout;
    let mut got = 0;
    while got < n && Instant::now() < end {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
            got += 1;
        }
    }
    got
}

fn poll_for(c: &BaseConsumer, d: Duration) -> usize {
    let end = Instant::now() + d;
    let mut n = 0;
    while Instant::now() < end {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_group_stays_ok_and_a_killed_consumer_is_stopped() {
    let broker = Broker::start();
    broker.create_topic("lag-a", 1);
    let proxy = start(&broker).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "lag-producer");
    produce(&p, "lag-a", 20).await;

    // Healthy: consumes continuously with auto-commit while records keep arriving.
    let v = via.clone();
    let healthy = tokio::task::spawn_blocking(move || {
        let c = consumer(&v, "healthy", true);
        c.subscribe(&["lag-a"]).unwrap();
        poll_for(&c, Duration::from_secs(7));
        c
    });
    // A second consumer, in its own process, killed mid-stream (no LeaveGroup, no last
    // commit): `tollgate loadgen` reads in group "victim".
    let mut victim = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["loadgen", "--bootstrap-server", &via, "--topic", "lag-a"])
        .args(["--group", "victim", "--rate", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_ok = 0;
    let mut healthy_statuses = Vec::new();
    while Instant::now() < deadline && seen_ok < 20 {
        produce(&p, "lag-a", 5).await;
        if let Some(s) = status(&proxy, "healthy").await {
            healthy_statuses.push(s["status"].as_str().unwrap().to_string());
            seen_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen_ok >= 10,
        "healthy group evaluated: {healthy_statuses:?}"
    );
    assert!(
        healthy_statuses.iter().all(|s| s == "OK"),
        "{healthy_statuses:?}"
    );
    wait_status(&proxy, "victim", "OK", Duration::from_secs(20)).await;

    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let first = {
        produce(&p, "lag-a", 10).await;
        wait_status(&proxy, "victim", "STOPPED", Duration::from_secs(20)).await
    };
    let part = &first["partitions"][0];
    assert!(part["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "stopped"));
    assert!(
        part["lag_records_committed"].as_i64().unwrap() > 0,
        "{first}"
    );
    // Time lag keeps growing while nobody reads.
    let t1 = part["lag_seconds"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = status(&proxy, "victim").await.unwrap();
    let t2 = later["partitions"][0]["lag_seconds"].as_f64().unwrap();
    assert!(t2 >= t1 + 1.0, "time lag grows: {t1} -> {t2}");
    let text = metrics_text(&proxy).await;
    assert_eq!(
        metric_value(
            &text,
            "tollgate_consumer_partition_problem{group=\"victim\",partition=\"0\",problem=\"stopped\",topic=\"lag-a\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "tollgate_consumer_group_status{group=\"victim\",status=\"STOPPED\"}"
        ),
        1.0
    );
    assert!(
        metric_value(
            &text,
            "tollgate_consumer_lag_seconds{group=\"victim\",partition=\"0\",topic=\"lag-a\"}"
        ) >= 1.0
    );
    let c = healthy.await.unwrap();
    tokio::task::spawn_blocking(move || drop((c, p)))
        .await
        .unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_stall_wedged_member_and_rewind() {
    let broker = Broker::start();
    broker.create_topic("lag-b", 1);
    let proxy = start(&broker).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "lag-producer");
    produce(&p, "lag-b", 30).await;

    // Fetches but never commits: commit stall.
    let v = via.clone();
    let staller = tokio::task::spawn_blocking(move || {
        let c = consumer(&v, "staller", false);
        c.subscribe(&["lag-b"]).unwrap();
        poll_for(&c, Duration::from_secs(5));
        c
    });
    let s = wait_status(&proxy, "staller", "STALLED", Duration::from_secs(20)).await;
    assert!(s["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "commit_stall"));
    let staller = staller.await.unwrap();

    // Reads everything, commits, then pauses its partition and keeps heartbeating: wedged.
    let v = via.clone();
    let wedged = tokio::task::spawn_blocking(move || {
        let c = consumer(&v, "wedger", false);
        c.subscribe(&["lag-b"]).unwrap();
        assert_eq!(poll_n(&c, 30, Duration::from_secs(20)), 30);
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        c.pause(&c.assignment().unwrap()).unwrap();
        poll_for(&c, Duration::from_secs(6));
        c
    });
    let s = wait_status(&proxy, "wedger", "WEDGED", Duration::from_secs(20)).await;
    assert!(s["partitions"][0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "wedged"));
    let wedged = wedged.await.unwrap();

    // A group reset to earliest: it had read and committed 30, then seeks back to 0.
    let v = via.clone();
    let rewinder = tokio::task::spawn_blocking(move || {
        let c = consumer(&v, "rewinder", false);
        c.subscribe(&["lag-b"]).unwrap();
        assert_eq!(poll_n(&c, 30, Duration::from_secs(20)), 30);
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("lag-b", 0, Offset::Beginning)
            .unwrap();
        c.seek_partitions(tpl, Duration::from_secs(5)).unwrap();
        poll_for(&c, Duration::from_secs(3));
        c
    });
    let s = wait_status(&proxy, "rewinder", "REWIND", Duration::from_secs(30)).await;
    assert!(s["partitions"][0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "rewind"));
    let rewinder = rewinder.await.unwrap();
    let text = metrics_text(&proxy).await;
    assert_eq!(
        metric_value(
            &text,
            "tollgate_consumer_group_status{group=\"rewinder\",status=\"REWIND\"}"
        ),
        1.0,
        "{text}"
    );
    tokio::task::spawn_blocking(move || drop((staller, wedged, rewinder, p)))
        .await
        .unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probation_promotion_is_stored_in_kafka_and_survives_a_restart() {
    let broker = Broker::start();
    broker.create_topic("lag-p", 1);
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        r##"
[[consumer]]
group = "probe-g"
owner = "t"
contact = "c"
topics = ["lag-p"]
tier = "probation"
lag_slo_seconds = 60

[[consumer]]
group = "manual-g"
owner = "t"
contact = "c"
topics = ["lag-p"]
tier = "probation"
lag_slo_seconds = 60
"##,
    )
    .unwrap();
    let config = |auto: bool| {
        let mut cfg = proxy_config(&[broker.addr()]);
        cfg.governance.registry = Some(registry.display().to_string());
        cfg.state.topic = "_tollgate_state".into();
        cfg.lag.evaluate_interval_ms = 200;
        cfg.lag.probation_window_seconds = 2;
        cfg.lag.auto_promote = auto;
        cfg
    };
    let proxy = start_proxy_with(config(true)).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "lag-producer");
    produce(&p, "lag-p", 10).await;
    let v = via.clone();
    let c = tokio::task::spawn_blocking(move || {
        let c = consumer(&v, "probe-g", true);
        c.subscribe(&["lag-p"]).unwrap();
        poll_for(&c, Duration::from_secs(5));
        c
    });
    // Within its SLO for the (test) window of 2 s: promoted automatically.
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = status(&proxy, "probe-g").await;
        if s.as_ref().is_some_and(|s| s["tier"] == "promoted") {
            break s.unwrap();
        }
        assert!(Instant::now() < deadline, "never promoted: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s["promotion"]["by"], "auto", "{s}");
    let text = metrics_text(&proxy).await;
    assert_eq!(
        metric_value(&text, "tollgate_state_store_up"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "tollgate_probation_promotions_total{how=\"auto\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "tollgate_consumer_group_tier{group=\"probe-g\",tier=\"promoted\"}"
        ),
        1.0
    );
    let c = c.await.unwrap();
    tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
    proxy.shutdown().await;

    // A new instance (no local state): the promotion is read back from the state topic.
    let proxy = start_proxy_with(config(false)).await;
    let (code, body) = http_post(proxy.admin_addr, "/v1/groups/probe-g/promote").await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("already promoted"), "{body}");
    // Admin promotion: refused before the window, allowed with force, recorded.
    let (code, body) = http_post(proxy.admin_addr, "/v1/groups/manual-g/promote").await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("not eligible"), "{body}");
    let (code, body) = http_post(proxy.admin_addr, "/v1/groups/manual-g/promote?force=true").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"by\": \"api\""), "{body}");
    let (code, _) = http_post(proxy.admin_addr, "/v1/groups/no-such-group/promote").await;
    assert_eq!(code, 409);
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_of_quiet_partitions_are_refreshed_with_list_offsets() {
    let broker = Broker::start();
    broker.create_topic("lag-q", 1);
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.lag.evaluate_interval_ms = 200;
    cfg.lag.head_refresh_seconds = 1;
    let proxy = start_proxy_with(cfg).await;
    let via = proxy.bootstrap_addr.to_string();
    let p = producer(&via, "lag-producer");
    produce(&p, "lag-q", 10).await;
    // Read everything, commit, then pause: this instance sees no more Fetch responses for the
    // partition, and the producer below writes to the broker directly, around the proxy.
    let v = via.clone();
    let c = tokio::task::spawn_blocking(move || {
        let c = consumer(&v, "quiet-g", false);
        c.subscribe(&["lag-q"]).unwrap();
        assert_eq!(poll_n(&c, 10, Duration::from_secs(20)), 10);
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        c.pause(&c.assignment().unwrap()).unwrap();
        c
    })
    .await
    .unwrap();
    let direct = producer(&broker.addr(), "direct-producer");
    produce(&direct, "lag-q", 25).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&proxy, "quiet-g").await;
        let lag = s
            .as_ref()
            .and_then(|s| s["partitions"][0]["lag_records_committed"].as_i64());
        if lag == Some(25) {
            break;
        }
        assert!(Instant::now() < deadline, "head never refreshed: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::spawn_blocking(move || drop((c, p, direct)))
        .await
        .unwrap();
    proxy.shutdown().await;
}
