//! Unit tests of lag detection, probation and promotion.

use super::*;
use crate::control::registry::Tier;

fn cfg() -> LagConfig {
    LagConfig {
        stopped_after_seconds: 0,
        commit_stall_seconds: 0,
        wedged_after_seconds: 0,
        rewind_offsets: 100,
        ..LagConfig::default()
    }
}

fn tp(p: i32) -> TopicPartition {
    ("t".into(), p)
}

fn head(hw: i64) -> crate::consumers::heads::Observed {
    crate::consumers::heads::Observed::offsets(hw, -1, -1)
}

#[test]
fn time_lag_counts_from_the_latest_of_fetch_and_commit() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut p = PartState::default();
    p.fetched(90, ms(0), false, 1000);
    assert_eq!(p.basis(), Some(90));
    // Committed on the way out, after the last fetch seen: it is where it committed.
    p.commit(100, ms(5), 1000);
    assert_eq!(p.basis(), Some(100));
    // Fetching again: where it fetches (commits lag behind fetches in steady state).
    p.fetched(120, ms(10), false, 1000);
    p.commit(110, ms(8), 1000);
    assert_eq!(p.basis(), Some(120));
    // An offset reset while stopped: the reset offset, not the old position.
    p.commit(20, ms(20), 1000);
    assert_eq!(p.basis(), Some(20));
}

#[test]
fn invented_groups_and_topics_stop_at_the_partition_cap() {
    let lag = Lag::new(LagConfig {
        max_partitions: 3,
        ..cfg()
    });
    let groups = Groups::default();
    let heads = Heads::new();
    let m = Metrics::new();
    // A client committing offsets for groups and topics it makes up.
    for i in 0..50 {
        lag.observe_commit(&format!("junk-{i}"), (format!("t{i}"), i), 1);
    }
    lag.observe_fetches("junk-99", [(&tp(0), 5, 10)], false);
    lag.evaluate(&heads, &groups, None, &m);
    assert_eq!(m.lag_partitions_tracked.get(), 3);
    assert_eq!(m.lag_partitions_dropped.get(), 48);
    assert_eq!(lag.statuses().len(), 3);
    let text = m.render();
    assert_eq!(
        text.matches("tollgate_consumer_lag_seconds{").count(),
        3,
        "{text}"
    );
    // Known partitions keep updating at the cap; forgetting a group frees its room.
    lag.observe_commit("junk-0", ("t0".into(), 0), 2);
    lag.forget("junk-0");
    lag.observe_commit("fresh", tp(0), 1);
    lag.evaluate(&heads, &groups, None, &m);
    assert!(lag.status("fresh").is_some());
    assert_eq!(m.lag_partitions_tracked.get(), 3);
}

#[test]
fn detections_and_group_status() {
    let lag = Lag::new(cfg());
    let groups = Groups::default();
    let heads = Heads::new();
    let m = Metrics::new();
    heads.observe([(&tp(0), head(100)), (&tp(1), head(100))]);
    // Partition 0: fetched up to 50 once, never committed.
    lag.observe_fetches("g", [(&tp(0), 50, 10)], false);
    // Partition 1: committed, then rewound by 80 (under the threshold), then by 500.
    lag.observe_commit("g", tp(1), 600);
    lag.observe_commit("g", tp(1), 520);
    std::thread::sleep(Duration::from_millis(5));
    lag.evaluate(&heads, &groups, None, &m);
    let s = lag.status("g").unwrap();
    let p0 = &s.partitions[0];
    assert_eq!(p0.lag_records_position, Some(50));
    assert!(p0.problems.contains(&"stopped"), "{p0:?}");
    assert!(p0.problems.contains(&"commit_stall") || p0.problems.contains(&"stopped"));
    assert!(!s.partitions[1].problems.contains(&"rewind"));
    lag.observe_commit("g", tp(1), 20);
    lag.evaluate(&heads, &groups, None, &m);
    let s = lag.status("g").unwrap();
    assert!(s.partitions[1].problems.contains(&"rewind"), "{s:?}");
    assert_eq!(s.status, "STOPPED");
    let text = m.render();
    assert!(
        text.contains("tollgate_consumer_group_status{group=\"g\",status=\"STOPPED\"} 1"),
        "{text}"
    );
    assert!(text.contains("problem=\"rewind\""));
    // A forgotten group's series go at the next evaluation.
    lag.forget("g");
    lag.evaluate(&heads, &groups, None, &m);
    assert!(!m.render().contains("group=\"g\""), "{}", m.render());
}

#[test]
fn a_promoted_group_over_its_slo_for_the_window_goes_back_to_probation() {
    let reg = Registry::parse(
        "[[consumer]]\ngroup=\"g\"\nowner=\"o\"\ncontact=\"c\"\ntopics=[\"t\"]\n\
         lag_slo_seconds=1\ntier=\"probation\"\n",
        "r",
    )
    .unwrap();
    let lag = Lag::new(LagConfig {
        demote_after_seconds: 1,
        ..LagConfig::default()
    });
    let (heads, groups, m) = (Heads::new(), Groups::default(), Metrics::new());
    lag.promote("g", &reg, "api", true, &m).unwrap();
    heads.observe([(&tp(0), head(10))]);
    lag.observe_fetches("g", [(&tp(0), 0, 0)], false);
    std::thread::sleep(Duration::from_millis(1100));
    lag.observe_fetches("g", [(&tp(0), 0, 0)], false);
    lag.evaluate(&heads, &groups, Some(&reg), &m);
    assert_eq!(
        lag.status("g").unwrap().tier,
        Some("promoted"),
        "over, not long enough"
    );
    std::thread::sleep(Duration::from_millis(1100));
    lag.observe_fetches("g", [(&tp(0), 0, 0)], false);
    lag.evaluate(&heads, &groups, Some(&reg), &m);
    let s = lag.status("g").unwrap();
    assert_eq!(s.tier, Some("probation"), "{s:?}");
    assert!(lag.promotion("g").is_none());
    assert_eq!(m.probation_demotions.get(), 1);
    assert_eq!(lag.effective_tier("g", &reg), Some(Tier::Probation));
}

#[test]
fn over_slo_uses_the_registry() {
    let reg = Registry::parse(
        "[[consumer]]\ngroup=\"g\"\nowner=\"o\"\ncontact=\"c\"\ntopics=[\"t\"]\nlag_slo_seconds=1\n",
        "r",
    )
    .unwrap();
    let lag = Lag::new(LagConfig::default());
    let heads = Heads::new();
    heads.observe([(&tp(0), head(10))]);
    lag.observe_fetches("g", [(&tp(0), 0, 0)], false);
    let m = Metrics::new();
    lag.evaluate(&heads, &Groups::default(), Some(&reg), &m);
    assert_eq!(lag.status("g").unwrap().status, "OK");
    std::thread::sleep(Duration::from_millis(1100));
    lag.observe_fetches("g", [(&tp(0), 0, 0)], false);
    lag.evaluate(&heads, &Groups::default(), Some(&reg), &m);
    let s = lag.status("g").unwrap();
    assert_eq!(s.status, "ERR", "{s:?}");
    assert!(s.partitions[0].lag_seconds >= 1.0);
}
