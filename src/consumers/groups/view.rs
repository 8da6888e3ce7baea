//! The group view `GET /v1/groups` shows.

use super::{Group, Groups, Origin, TopicPartition};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// A group as `GET /v1/groups` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct GroupView {
    pub(crate) group: String,
    pub(crate) protocol_type: Option<String>,
    pub(crate) generation: i32,
    /// The coordinator's state for the group, from the last DescribeGroups.
    pub(crate) state: Option<String>,
    pub(crate) members: Vec<MemberView>,
    /// Client instances that committed offsets for the group without being a member
    /// (`assign()` consumers that commit).
    pub(crate) offset_users: Vec<OffsetUserView>,
    /// Fetch connections to this instance tied to the group: connection id, client id, host.
    pub(crate) fetch_connections: Vec<FetchConnView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct MemberView {
    pub(crate) member_id: String,
    pub(crate) client_id: String,
    pub(crate) host: String,
    pub(crate) coordinator_connection: u64,
    pub(crate) protocol: &'static str,
    /// `local` (seen on this instance's wire) or `remote` (seen by another instance).
    pub(crate) seen_by: &'static str,
    /// topic → partitions.
    pub(crate) assignment: BTreeMap<String, Vec<i32>>,
    pub(crate) last_seen_seconds_ago: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct OffsetUserView {
    pub(crate) client_id: String,
    pub(crate) host: String,
    pub(crate) seen_by: &'static str,
    pub(crate) assignment: BTreeMap<String, Vec<i32>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct FetchConnView {
    pub(crate) connection_id: u64,
    pub(crate) client_id: String,
    pub(crate) host: String,
}

fn by_topic<'a>(tps: impl IntoIterator<Item = &'a TopicPartition>) -> BTreeMap<String, Vec<i32>> {
    let mut m: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in tps {
        m.entry(t.clone()).or_default().push(*p);
    }
    m
}

fn origin_label(o: Origin) -> &'static str {
    match o {
        Origin::Local => "local",
        Origin::Remote => "remote",
    }
}

impl Groups {
    /// Every group, by name.
    pub(crate) fn view(&self) -> Vec<GroupView> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock");
        let mut out: Vec<GroupView> = g.iter().map(|(n, grp)| group_view(n, grp, now)).collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }
}

fn group_view(name: &str, grp: &Group, now: Instant) -> GroupView {
    let mut members: Vec<MemberView> = grp
        .members
        .iter()
        .map(|(id, m)| MemberView {
            member_id: id.clone(),
            client_id: m.instance.client_id.clone(),
            host: m.instance.host.to_string(),
            coordinator_connection: m.coordinator_conn,
            protocol: if m.kip848 { "consumer" } else { "classic" },
            seen_by: origin_label(m.origin),
            assignment: by_topic(&m.assignment),
            last_seen_seconds_ago: now.duration_since(m.last_seen).as_secs(),
        })
        .collect();
    members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    let mut offset_users: Vec<OffsetUserView> = grp
        .offset_users
        .iter()
        .map(|(i, u)| OffsetUserView {
            client_id: i.client_id.clone(),
            host: i.host.to_string(),
            seen_by: origin_label(u.origin),
            assignment: by_topic(&u.partitions),
        })
        .collect();
    offset_users.sort_by(|a, b| (&a.client_id, &a.host).cmp(&(&b.client_id, &b.host)));
    GroupView {
        group: name.to_string(),
        protocol_type: grp.protocol_type.clone(),
        generation: grp.generation,
        state: grp.cluster_state.clone(),
        members,
        offset_users,
        fetch_connections: grp
            .fetch_conns
            .iter()
            .map(|(id, i)| FetchConnView {
                connection_id: *id,
                client_id: i.client_id.clone(),
                host: i.host.to_string(),
            })
            .collect(),
    }
}
