//! `tollgate mirror` between two real clusters (two tansu brokers): the secondary ends up with
//! exactly the primary's records (partition, offset, key, value, headers, timestamp), also
//! when the mirror is killed mid-copy and restarted, and MirrorMaker 2-format offset syncs
//! describe the mapping.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const SYNCS: &str = "mm2-offset-syncs.secondary.internal";

fn mirror(primary: &Broker, secondary: &Broker, until_caught_up: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.arg("mirror")
        .env("TOLLGATE_UPSTREAM__BOOTSTRAP_SERVERS", primary.addr())
        .env(
            "TOLLGATE_TIERED__SECONDARY_BOOTSTRAP_SERVERS",
            secondary.addr(),
        )
        .env("TOLLGATE_TIERED__TOPICS", "orders")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if until_caught_up {
        c.arg("--until-caught-up");
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_exactly_and_resumes_after_a_kill_without_gap_or_duplicate() {
    let primary = Broker::start();
    let secondary = Broker::start();
    primary.create_topic("orders", 2);
    let p = producer(&primary.addr(), "orders-producer");
    let n = 4000;
    produce_known(&p, "orders", n, "m").await;

    // First run, killed mid-copy (SIGKILL: no flush, no goodbye).
    let mut first = mirror(&primary, &secondary, false).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let copied =
            read_all_async(secondary.addr(), "orders", 2, 1, Duration::from_millis(300)).await;
        if !copied.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the mirror copied nothing");
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // More records arrive while the mirror is down; then it is restarted and catches up.
    produce_known(&p, "orders", 500, "late").await;
    let out = tokio::task::spawn_blocking({
        let mut c = mirror(&primary, &secondary, true);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let total = n + 500;
    let want = read_all_async(primary.addr(), "orders", 2, total, Duration::from_secs(30)).await;
    let got = read_all_async(
        secondary.addr(),
        "orders",
        2,
        total,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(want.len(), total);
    assert_eq!(got.len(), want.len(), "no gap, no duplicate");
    assert_eq!(
        got, want,
        "same partition, offset, key, value, headers, timestamp"
    );

    // Offset syncs in MM2's format: the first record of each partition maps 0 -> 0.
    let syncs = tokio::task::spawn_blocking({
        let a = secondary.addr();
        move || tollgate::tiered::mirror::read_syncs(&a, &[], SYNCS).unwrap()
    })
    .await
    .unwrap();
    for part in 0..2 {
        assert!(
            syncs
                .iter()
                .any(|((t, p), m)| t == "orders" && *p == part && *m == (0, 0)),
            "partition {part} has a sync: {syncs:?}"
        );
    }
    // A third run has nothing to copy and changes nothing.
    let out = tokio::task::spawn_blocking({
        let mut c = mirror(&primary, &secondary, true);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0 records, 0 offset syncs"), "{stderr}");
    let again = read_all_async(
        secondary.addr(),
        "orders",
        2,
        total,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(again, want);
    tokio::task::spawn_blocking(move || drop(p)).await.unwrap();
}

#[test]
fn mirror_refuses_a_config_without_a_secondary() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("mirror")
        .env("TOLLGATE_TIERED__TOPICS", "orders")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("tiered.secondary_bootstrap_servers"), "{e}");
}
