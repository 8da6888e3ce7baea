//! Offset protection: a registered group's committed offsets do not move back further than its
//! registry entry allows (`max_rewind_records`, `max_rewind_seconds`, or the registry's
//! defaults), unless an operator opened a rewind window for it.
//!
//! **The rule.** A commit for partition `p` at offset `o` is a rewind when the group's
//! committed offset `c` for `p` is above `o`. It is refused when `c − o` exceeds
//! `max_rewind_records`, or when the record at `o` is more than `max_rewind_seconds` older
//! than the record at `c` (ages from the partition's head history, [`Heads::record_age`]; an
//! offset older than that history counts as at least its span).
//!
//! **What "committed" is.** The committed offset this instance knows: commits it saw the
//! coordinator accept on the wire, and the coordinator's own answers (OffsetFetch for every
//! registered group, every `tier.coordinator_refresh_ms`, on every instance). A partition
//! whose committed offset is not known here yet (the first seconds after a start, or a
//! partition never committed) is not judged: the commit passes. A commit that moves forward
//! always passes.
//!
//! **Rewind windows.** `POST /v1/groups/{group}/rewind/allow?seconds=N` opens a window in
//! which the group's commits are not judged. It is recorded in the state topic
//! (`rewind-allow/{group}`), so every instance honours it, and it closes by itself. A rewind
//! that is allowed is read as any rewind is: from the secondary cluster when tiered reads
//! are on.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tracing::info;

use crate::consumers::groups::TopicPartition;
use crate::consumers::heads::Heads;
use crate::consumers::lag::Lag;
use crate::control::registry::RewindLimits;
use crate::control::state::StateStore;

/// Key prefix of rewind windows in the state store.
const ALLOW: &str = "rewind-allow/";

/// How far one commit would move a group back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rewind {
    /// Committed offset now, and the commit's.
    pub(crate) from: i64,
    pub(crate) to: i64,
    /// Seconds of history between them, when the head history knows.
    pub(crate) seconds: Option<f64>,
}

/// Judges commits against the limits; holds nothing of its own but the state store handle.
pub struct Rewinds {
    lag: Arc<Lag>,
    heads: Arc<Heads>,
    state: RwLock<Arc<StateStore>>,
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Rewinds {
    pub fn new(lag: Arc<Lag>, heads: Arc<Heads>) -> Rewinds {
        Rewinds {
            lag,
            heads,
            state: RwLock::new(Arc::new(StateStore::in_memory())),
        }
    }

    /// Use `store` for rewind windows (shared by the tier).
    pub(crate) fn set_state(&self, store: Arc<StateStore>) {
        *self.state.write().expect("lock") = store;
    }

    fn store(&self) -> Arc<StateStore> {
        self.state.read().expect("lock").clone()
    }

    /// Open a rewind window for `group` for `period`; every instance honours it. Returns
    /// its end (Unix seconds).
    pub(crate) fn allow(&self, group: &str, period: Duration, by: &str) -> Result<u64, String> {
        let until = epoch_ms(SystemTime::now() + period);
        let record = serde_json::json!({"group": group, "until_ms": until, "by": by});
        self.store()
            .put(&format!("{ALLOW}{group}"), record)
            .map_err(|e| e.to_string())?;
        info!(
            group,
            seconds = period.as_secs(),
            by,
            "offset protection: rewind window opened"
        );
        Ok(until / 1000)
    }

    /// Until when `group` may rewind freely (Unix seconds), if a window is open.
    pub(crate) fn allowed_until(&self, group: &str) -> Option<u64> {
        let rec = self.store().get(&format!("{ALLOW}{group}"))?;
        let until = rec["until_ms"].as_u64()?;
        (until > epoch_ms(SystemTime::now())).then_some(until / 1000)
    }

    /// Would committing `offset` for `tp` move `group` back beyond `limits`?
    pub(crate) fn check(
        &self,
        group: &str,
        tp: &TopicPartition,
        offset: i64,
        limits: RewindLimits,
    ) -> Option<Rewind> {
        let from = self.lag.committed(group, tp)?;
        if offset >= from || offset < 0 {
            return None;
        }
        let back = u64::try_from(from - offset).unwrap_or(u64::MAX);
        let seconds = match (
            self.heads.record_age(tp, offset),
            self.heads.record_age(tp, from),
        ) {
            (Some(old), Some(new)) => Some(old.saturating_sub(new).as_secs_f64()),
            _ => None,
        };
        let too_many = limits.records.is_some_and(|max| back > max);
        let too_old = matches!((limits.seconds, seconds), (Some(max), Some(s)) if s > max as f64);
        (too_many || too_old).then_some(Rewind {
            from,
            to: offset,
            seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::heads::Observed;

    fn tp() -> TopicPartition {
        ("t".to_string(), 0)
    }

    #[test]
    fn commits_back_beyond_a_limit_are_rewinds_and_others_are_not() {
        let lag = Arc::new(Lag::new(Default::default()));
        let heads = Arc::new(Heads::new());
        let r = Rewinds::new(lag.clone(), heads);
        let limits = RewindLimits {
            records: Some(100),
            seconds: None,
        };
        assert_eq!(
            r.check("g", &tp(), 0, limits),
            None,
            "nothing known: not judged"
        );
        lag.observe_commit("g", tp(), 1000);
        assert_eq!(r.check("g", &tp(), 950, limits), None, "within the limit");
        assert_eq!(r.check("g", &tp(), 2000, limits), None, "forward");
        let rw = r.check("g", &tp(), 0, limits).unwrap();
        assert_eq!((rw.from, rw.to), (1000, 0));
    }

    #[test]
    fn a_rewind_window_lets_the_group_through_and_closes_by_itself() {
        let r = Rewinds::new(
            Arc::new(Lag::new(Default::default())),
            Arc::new(Heads::new()),
        );
        assert!(r.allowed_until("g").is_none());
        r.allow("g", Duration::from_secs(60), "test").unwrap();
        assert!(r.allowed_until("g").is_some());
        assert!(r.allowed_until("other").is_none());
        let store = r.store();
        store
            .put(
                "rewind-allow/g",
                serde_json::json!({"until_ms": epoch_ms(SystemTime::now()) - 1}),
            )
            .unwrap();
        assert!(r.allowed_until("g").is_none(), "expired");
    }

    #[test]
    fn seconds_of_history_count_from_the_head_samples() {
        let heads = Arc::new(Heads::new());
        heads.observe([(&tp(), Observed::offsets(10, 10, 0))]);
        std::thread::sleep(Duration::from_millis(1100));
        heads.observe([(&tp(), Observed::offsets(20, 20, 0))]);
        let lag = Arc::new(Lag::new(Default::default()));
        lag.observe_commit("g", tp(), 19);
        let r = Rewinds::new(lag, heads);
        let limits = RewindLimits {
            records: None,
            seconds: Some(1),
        };
        assert_eq!(r.check("g", &tp(), 12, limits), None, "same second");
        let rw = r.check("g", &tp(), 5, limits).expect("older than a second");
        assert!(rw.seconds.unwrap() >= 1.0, "{rw:?}");
    }
}
