//! What the other instances and the group coordinator say: remote members and offset
//! users from the tier topic, and the coordinator's DescribeGroups.

use super::{instant_of, Group, Groups, Instance, Member, OffsetUser, Origin, TopicPartition};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

/// A member another instance saw (from the tier topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteMember {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) instance: Instance,
    pub(crate) assignment: BTreeSet<TopicPartition>,
    /// When that instance last heard from it.
    pub(crate) seen: SystemTime,
    pub(crate) expiry: Duration,
    pub(crate) kip848: bool,
}

/// An offset user another instance saw (from the tier topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteOffsetUser {
    pub(crate) group: String,
    pub(crate) instance: Instance,
    pub(crate) partitions: BTreeSet<TopicPartition>,
    pub(crate) seen: SystemTime,
}

/// Add or refresh a remote member; `true` when that could change a tie.
fn upsert_remote_member(groups: &Groups, g: &mut HashMap<String, Group>, r: &RemoteMember) -> bool {
    let grp = groups.group_mut(g, &r.group);
    groups.room_for_member(grp, &r.member_id);
    grp.protocol_type.get_or_insert_with(|| "consumer".into());
    let now = Instant::now();
    match grp.members.get_mut(&r.member_id) {
        Some(m) if m.origin == Origin::Local => false, // seen here: at least as fresh
        Some(m) => {
            let was_live = m.live(now);
            let changed = m.assignment != r.assignment || m.instance != r.instance;
            m.assignment = r.assignment.clone();
            m.instance = r.instance.clone();
            m.last_seen = instant_of(r.seen);
            m.expiry = r.expiry;
            changed || was_live != m.live(now)
        }
        None => {
            let mut m = Member::new(r.instance.clone(), 0, r.expiry, r.kip848);
            m.assignment = r.assignment.clone();
            m.last_seen = instant_of(r.seen);
            m.origin = Origin::Remote;
            grp.members.insert(r.member_id.clone(), m);
            true
        }
    }
}

impl Groups {
    /// The coordinator described `group` (asked at `asked_at`): its state and, when given,
    /// the ids of its members. Members it does not list, and not heard from since the
    /// question was asked, are gone (classic members only: KIP-848 members live by their
    /// ConsumerGroupHeartbeat and expiry).
    pub(crate) fn apply_cluster(
        &self,
        group: &str,
        state: &str,
        members: Option<&BTreeSet<String>>,
        asked_at: Instant,
    ) {
        let mut g = self.inner.lock().expect("lock");
        let grp = self.group_mut(&mut g, group);
        grp.cluster_state = Some(state.to_string());
        let before = grp.members.len();
        if let Some(ids) = members {
            // KIP-848 members are not the classic DescribeGroups' to list.
            grp.members
                .retain(|id, m| m.kip848 || ids.contains(id) || m.last_seen > asked_at);
        }
        let changed = before != grp.members.len();
        drop(g);
        if changed {
            self.bump();
        }
    }

    /// Replace what other instances saw with `members` and `users` (the tier topic's
    /// current content). What this instance saw itself is kept. The epoch moves only when a
    /// tie could change (a member or offset user came, went, or changed partitions).
    pub(crate) fn set_remote(&self, members: &[RemoteMember], users: &[RemoteOffsetUser]) {
        let mut g = self.inner.lock().expect("lock");
        let mut wanted_m: HashMap<(&str, &str), &RemoteMember> = HashMap::new();
        for r in members {
            wanted_m.insert((r.group.as_str(), r.member_id.as_str()), r);
        }
        let mut wanted_u: HashMap<(&str, &Instance), &RemoteOffsetUser> = HashMap::new();
        for r in users {
            wanted_u.insert((r.group.as_str(), &r.instance), r);
        }
        let mut changed = false;
        for (name, grp) in g.iter_mut() {
            let before = grp.members.len() + grp.offset_users.len();
            grp.members.retain(|id, m| {
                m.origin == Origin::Local || wanted_m.contains_key(&(name.as_str(), id.as_str()))
            });
            grp.offset_users.retain(|i, u| {
                u.origin == Origin::Local || wanted_u.contains_key(&(name.as_str(), i))
            });
            changed |= before != grp.members.len() + grp.offset_users.len();
        }
        for r in members {
            changed |= upsert_remote_member(self, &mut g, r);
        }
        for r in users {
            let grp = self.group_mut(&mut g, &r.group);
            self.room_for_user(grp, &r.instance);
            match grp.offset_users.get_mut(&r.instance) {
                Some(u) if u.origin == Origin::Local => {}
                Some(u) => {
                    changed |= u.partitions != r.partitions;
                    u.partitions = r.partitions.clone();
                    u.last_seen = instant_of(r.seen);
                }
                None => {
                    grp.offset_users.insert(
                        r.instance.clone(),
                        OffsetUser {
                            partitions: r.partitions.clone(),
                            last_seen: instant_of(r.seen),
                            conns: BTreeSet::new(),
                            origin: Origin::Remote,
                        },
                    );
                    changed = true;
                }
            }
        }
        drop(g);
        if changed {
            self.bump();
        }
    }

    /// What this instance saw itself, for the tier topic: live members and tied offset users.
    pub(crate) fn local(&self) -> (Vec<RemoteMember>, Vec<RemoteOffsetUser>) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let ago = |t: Instant| wall - now.duration_since(t);
        let g = self.inner.lock().expect("lock");
        let mut members = Vec::new();
        let mut users = Vec::new();
        for (name, grp) in g.iter() {
            for (id, m) in &grp.members {
                if m.origin == Origin::Local && m.live(now) {
                    members.push(RemoteMember {
                        group: name.clone(),
                        member_id: id.clone(),
                        instance: m.instance.clone(),
                        assignment: m.assignment.clone(),
                        seen: ago(m.last_seen),
                        expiry: m.expiry,
                        kip848: m.kip848,
                    });
                }
            }
            for (i, u) in &grp.offset_users {
                if u.origin == Origin::Local && !u.conns.is_empty() {
                    users.push(RemoteOffsetUser {
                        group: name.clone(),
                        instance: i.clone(),
                        partitions: u.partitions.clone(),
                        seen: ago(u.last_seen),
                    });
                }
            }
        }
        (members, users)
    }
}
