//! The tie rule (see the module docs): which group a fetching connection belongs to.

use super::{Group, Groups, Instance, Origin, TopicPartition, AMBIGUOUS, NO_GROUP};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Which group a read belongs to: the answer of [`Groups::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Tie {
    /// The connection reads for this group.
    Group(String),
    /// No group claims it: a group-less reader (or one no instance has placed yet).
    #[default]
    None,
    /// Several groups match equally well; the candidates, sorted. Governance allows a read
    /// only if every one of them may make it.
    Ambiguous(Vec<String>),
}

impl Tie {
    /// The group, when the read is tied to exactly one.
    pub(crate) fn group(&self) -> Option<&str> {
        match self {
            Tie::Group(g) => Some(g),
            _ => None,
        }
    }

    /// The `group` label of the read's series: the group, [`NO_GROUP`] or [`AMBIGUOUS`].
    pub(crate) fn label(&self) -> &str {
        match self {
            Tie::Group(g) => g,
            Tie::None => NO_GROUP,
            Tie::Ambiguous(_) => AMBIGUOUS,
        }
    }
}

/// Which partitions of `fetching` a group's live members (or offset users) of `instance` cover.
fn coverage<'a>(
    grp: &'a Group,
    instance: &Instance,
    fetching: &HashMap<TopicPartition, i64>,
    now: Instant,
    ttl: Duration,
) -> (usize, usize) {
    let mut by_members: BTreeSet<&'a TopicPartition> = BTreeSet::new();
    for m in grp.members.values() {
        if &m.instance == instance && m.live(now) {
            by_members.extend(m.assignment.iter().filter(|tp| fetching.contains_key(*tp)));
        }
    }
    let mut by_offsets = 0;
    if let Some(u) = grp.offset_users.get(instance) {
        let open = u.origin == Origin::Remote || !u.conns.is_empty();
        if open && now.duration_since(u.last_seen) <= ttl {
            by_offsets = u
                .partitions
                .iter()
                .filter(|tp| fetching.contains_key(*tp))
                .count();
        }
    }
    (by_members.len(), by_offsets)
}

/// The best-scoring names; empty when nothing scored.
fn best_of<'a>(scores: impl Iterator<Item = (&'a String, usize)>) -> Vec<&'a String> {
    let mut best: Vec<&String> = Vec::new();
    let mut top = 0;
    for (name, score) in scores {
        if score == 0 || score < top {
            continue;
        }
        if score > top {
            best.clear();
            top = score;
        }
        best.push(name);
    }
    best
}

/// Among tied groups, the one whose commits sit closest below the fetch offsets.
fn closest_commits(
    g: &HashMap<String, Group>,
    best: &[&String],
    fetching: &HashMap<TopicPartition, i64>,
) -> Option<String> {
    let distance = |name: &String| -> Option<i64> {
        let grp = &g[name];
        let mut total: Option<i64> = None;
        for (tp, &fetch) in fetching {
            if let Some(&(c, _)) = grp.committed.get(tp) {
                if c <= fetch {
                    *total.get_or_insert(0) += fetch - c;
                }
            }
        }
        total
    };
    let mut scored: Vec<(i64, &String)> = best
        .iter()
        .filter_map(|n| distance(n).map(|d| (d, *n)))
        .collect();
    scored.sort();
    match scored.as_slice() {
        [(d, n), rest @ ..] if rest.first().is_none_or(|(d2, _)| d2 > d) => Some((*n).clone()),
        _ => None,
    }
}

impl Groups {
    /// The group a fetch connection of `instance` that fetches `fetching` at these offsets
    /// belongs to (the rule in the module docs). Records the tie for `GET /v1/groups`. A
    /// caller that waits for a better answer reads [`Groups::epoch`] first.
    pub(crate) fn resolve(
        &self,
        conn: u64,
        instance: &Instance,
        fetching: &HashMap<TopicPartition, i64>,
    ) -> Tie {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock");
        let scores: Vec<(&String, (usize, usize))> = g
            .iter()
            .map(|(n, grp)| {
                (
                    n,
                    coverage(grp, instance, fetching, now, self.offset_user_ttl),
                )
            })
            .collect();
        // Live members beat offset users: offset users count only when no member matches.
        let mut best = best_of(scores.iter().map(|(n, s)| (*n, s.0)));
        if best.is_empty() {
            best = best_of(scores.iter().map(|(n, s)| (*n, s.1)));
        }
        let tie = match best.len() {
            0 => Tie::None,
            1 => Tie::Group(best[0].clone()),
            _ => match closest_commits(&g, &best, fetching) {
                Some(n) => Tie::Group(n),
                None => {
                    let mut c: Vec<String> = best.iter().map(|n| (*n).clone()).collect();
                    c.sort();
                    Tie::Ambiguous(c)
                }
            },
        };
        for grp in g.values_mut() {
            grp.fetch_conns.remove(&conn);
        }
        if let Some(grp) = tie.group().and_then(|n| g.get_mut(n)) {
            grp.fetch_conns.insert(conn, instance.clone());
        }
        tie
    }

    /// Partitions assigned to live members (heard from within `max_silence` and their
    /// expiry), with the member id.
    pub(crate) fn live_assignments(
        &self,
        max_silence: Duration,
    ) -> HashMap<(String, TopicPartition), String> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock");
        let mut out = HashMap::new();
        for (name, grp) in g.iter() {
            for (id, m) in &grp.members {
                if m.live(now) && now.duration_since(m.last_seen) <= max_silence {
                    for tp in &m.assignment {
                        out.insert((name.clone(), tp.clone()), id.clone());
                    }
                }
            }
        }
        out
    }
}
