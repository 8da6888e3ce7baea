//! Unit tests of the group view and the tie rule.

use super::*;

fn inst(client: &str) -> Instance {
    Instance {
        principal: crate::consumers::identity::ANONYMOUS.into(),
        client_id: client.into(),
        host: "10.0.0.1".parse().unwrap(),
    }
}

fn tps(t: &str, ps: &[i32]) -> BTreeSet<TopicPartition> {
    ps.iter().map(|p| (t.to_string(), *p)).collect()
}

fn fetching(t: &str, ps: &[i32], offset: i64) -> HashMap<TopicPartition, i64> {
    ps.iter().map(|p| ((t.to_string(), *p), offset)).collect()
}

fn join(g: &Groups, group: &str, member: &str, client: &str, parts: &[i32]) {
    g.joined(
        group,
        member,
        1,
        "consumer",
        Duration::from_secs(10),
        inst(client),
        1,
    );
    g.assigned(group, member, tps("t", parts));
}

fn group_of(g: &Groups, conn: u64, client: &str, parts: &[i32], offset: i64) -> String {
    g.resolve(conn, &inst(client), &fetching("t", parts, offset))
        .label()
        .to_string()
}

#[test]
fn member_assignment_decides_and_follows_a_rebalance() {
    let g = Groups::default();
    join(&g, "a", "m1", "app", &[0, 1]);
    join(&g, "b", "m2", "app", &[2, 3]);
    assert_eq!(group_of(&g, 9, "app", &[0, 1], 0), "a");
    assert_eq!(group_of(&g, 10, "app", &[2], 0), "b");
    let before = g.epoch();
    // Rebalance: group a's member now owns partition 2 as well; b's owns 3 only.
    g.assigned("a", "m1", tps("t", &[0, 1, 2]));
    g.assigned("b", "m2", tps("t", &[3]));
    assert!(g.epoch() > before);
    assert_eq!(group_of(&g, 10, "app", &[2], 0), "a");
    // Other client ids and hosts never match.
    assert_eq!(group_of(&g, 11, "other", &[0], 0), NO_GROUP);
    let views = g.view();
    assert_eq!(views[0].fetch_connections.len(), 2);
    g.connection_closed(10);
    assert_eq!(g.view()[0].fetch_connections.len(), 1);
}

#[test]
fn same_client_id_same_partitions_is_split_by_committed_offsets() {
    let g = Groups::default();
    join(&g, "a", "m1", "rdkafka", &[0]);
    join(&g, "b", "m2", "rdkafka", &[0]);
    // No commits yet: the two cannot be told apart; both are candidates.
    let b = g.resolve(5, &inst("rdkafka"), &fetching("t", &[0], 100));
    assert_eq!(b, Tie::Ambiguous(vec!["a".to_string(), "b".to_string()]));
    g.committed("a", inst("rdkafka"), 1, [(("t".into(), 0), 90)]);
    g.committed("b", inst("rdkafka"), 1, [(("t".into(), 0), 5000)]);
    assert_eq!(group_of(&g, 5, "rdkafka", &[0], 100), "a");
    assert_eq!(group_of(&g, 6, "rdkafka", &[0], 5010), "b");
}

#[test]
fn an_offset_user_tie_ends_with_its_connection() {
    let g = Groups::default();
    g.committed("tool", inst("rdkafka"), 7, [(("t".into(), 4), 10)]);
    assert_eq!(group_of(&g, 1, "rdkafka", &[4], 10), "tool");
    // The committing client exits: the next reader with the same client.id and host
    // inherits nothing.
    let before = g.epoch();
    g.connection_closed(7);
    assert!(g.epoch() > before);
    assert_eq!(group_of(&g, 2, "rdkafka", &[4], 0), NO_GROUP);
}

#[test]
fn live_members_beat_offset_users() {
    let g = Groups::default();
    // Group a committed on partition 0 from a connection that is still open.
    g.committed("a", inst("rdkafka"), 7, [(("t".into(), 0), 10)]);
    // A live member of group b (never commits) owns partition 0.
    join(&g, "b", "m", "rdkafka", &[0]);
    assert_eq!(group_of(&g, 3, "rdkafka", &[0], 10), "b");
}

#[test]
fn leaving_and_the_coordinator_end_member_ties() {
    let g = Groups::default();
    join(&g, "x", "m", "app", &[0]);
    assert!(g.left("x", &["m".into()]), "the last member left");
    assert_eq!(group_of(&g, 2, "app", &[0], 0), NO_GROUP);
    join(&g, "y", "m1", "app", &[1]);
    join(&g, "y", "m2", "app", &[2]);
    let asked = Instant::now();
    std::thread::sleep(Duration::from_millis(2));
    // The coordinator lists m1 only: m2 timed out.
    g.apply_cluster("y", "Stable", Some(&["m1".to_string()].into()), asked);
    assert_eq!(group_of(&g, 3, "app", &[1], 0), "y");
    assert_eq!(group_of(&g, 4, "app", &[2], 0), NO_GROUP);
    // A member that joined after the question was asked is kept.
    join(&g, "y", "m3", "app", &[2]);
    g.apply_cluster("y", "Stable", Some(&["m1".to_string()].into()), asked);
    assert_eq!(group_of(&g, 4, "app", &[2], 0), "y");
    // A group the coordinator described is not forgotten when its members are gone.
    g.apply_cluster("x", "Empty", Some(&BTreeSet::new()), Instant::now());
    g.connection_closed(2);
    assert!(g.expire().is_empty());
    assert_eq!(g.view()[0].state.as_deref(), Some("Empty"));
}

#[test]
fn remote_members_tie_and_local_ones_win() {
    let g = Groups::default();
    let remote = RemoteMember {
        group: "r".into(),
        member_id: "m".into(),
        instance: inst("rdkafka"),
        assignment: tps("t", &[0, 1]),
        seen: SystemTime::now(),
        expiry: Duration::from_secs(12),
        kip848: false,
    };
    let before = g.epoch();
    g.set_remote(std::slice::from_ref(&remote), &[]);
    assert!(g.epoch() > before);
    assert_eq!(group_of(&g, 1, "rdkafka", &[0, 1], 0), "r");
    assert_eq!(g.view()[0].members[0].seen_by, "remote");
    // A stale record (its instance stopped refreshing it) ties nothing.
    let stale = RemoteMember {
        seen: SystemTime::now() - Duration::from_secs(60),
        ..remote.clone()
    };
    g.set_remote(&[stale], &[]);
    assert_eq!(group_of(&g, 1, "rdkafka", &[0, 1], 0), NO_GROUP);
    // Gone from the topic: gone here.
    g.set_remote(&[], &[]);
    assert!(g.view()[0].members.is_empty());
    // Local members are published, and never replaced by remote ones.
    join(&g, "r", "m", "rdkafka", &[5]);
    g.set_remote(&[remote], &[]);
    assert_eq!(g.view()[0].members[0].seen_by, "local");
    let (members, users) = g.local();
    assert_eq!(members.len(), 1);
    assert!(users.is_empty());
}

#[test]
fn kip848_assignment_and_leave() {
    let g = Groups::default();
    g.heartbeat_848("n", "u1", 3, Some(tps("t", &[1])), inst("java"), 4, false);
    assert_eq!(group_of(&g, 7, "java", &[1], 0), "n");
    // A heartbeat without an assignment keeps the last one.
    g.heartbeat_848("n", "u1", 3, None, inst("java"), 4, false);
    assert_eq!(group_of(&g, 7, "java", &[1], 0), "n");
    g.heartbeat_848("n", "u1", -1, None, inst("java"), 4, true);
    assert_eq!(group_of(&g, 7, "java", &[1], 0), NO_GROUP);
}

#[test]
fn a_kip848_assignment_recorded_by_topic_id_ties_once_the_id_is_learned() {
    // The coordinator connection's instance had not seen the topic's id in a Metadata
    // answer yet: the assignment was recorded under the id. A later heartbeat carries no
    // assignment (unchanged), so only the rename can make the member's fetches tie.
    let g = Groups::default();
    let id = "6f1c6f5e-6b3a-4a55-9d1e-1b2c3d4e5f60";
    g.heartbeat_848("n", "u1", 3, Some(tps(id, &[0, 1])), inst("app"), 4, false);
    g.heartbeat_848("n", "u1", 3, None, inst("app"), 4, false);
    assert_eq!(group_of(&g, 7, "app", &[0, 1], 0), NO_GROUP);
    let before = g.epoch();
    g.rename_topics(&HashMap::from([(id.to_string(), "t".to_string())]));
    assert_eq!(group_of(&g, 7, "app", &[0, 1], 0), "n");
    assert!(
        g.epoch() > before,
        "the renamed assignment is republished to the tier"
    );
    // Nothing to rename: nothing changes, nothing is republished.
    let after = g.epoch();
    g.rename_topics(&HashMap::from([("other-id".to_string(), "x".to_string())]));
    assert_eq!(g.epoch(), after);
}

#[test]
fn a_silent_local_member_is_reported_once_as_expired() {
    let g = Groups::default();
    g.joined(
        "killed",
        "m-1",
        1,
        "consumer",
        Duration::from_millis(20),
        inst("rdkafka"),
        1,
    );
    join(&g, "alive", "m-2", "rdkafka", &[0]);
    g.expire();
    assert!(g.take_expired().is_empty(), "nobody is past expiry yet");
    // Silent for a minute (expiry is at least 10 s).
    {
        let mut inner = g.inner.lock().unwrap();
        let m = inner
            .get_mut("killed")
            .unwrap()
            .members
            .get_mut("m-1")
            .unwrap();
        m.last_seen = m.last_seen.checked_sub(Duration::from_secs(60)).unwrap();
    }
    g.expire();
    let expired = g.take_expired();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].group.as_str(), expired[0].member_id.as_str()),
        ("killed", "m-1")
    );
    g.expire();
    assert!(g.take_expired().is_empty(), "reported once");
}
