//! Read-ahead on the secondary: while a client consumes one tiered answer, the next one is
//! already on its way.
//!
//! A tiered answer is store-and-forward: Tollgate reads the secondary's whole response before
//! it can rebase and send it, so every routed Fetch adds one full transfer to the client's
//! fetch loop, and a backfill through the secondary ran at about 0.85x of reading the
//! secondary directly. When a secondary Fetch comes back with records, the partitions' next
//! offsets are known (one past the last whole batch served), and so is the client's next
//! Fetch, if it keeps reading. That Fetch is sent to the secondary at once, and its answer is
//! kept for the client's next request.
//!
//! - **Used only for what it holds.** The next Fetch to that leader must ask with the same
//!   size limits and isolation level; each of its partitions that the read-ahead holds at the
//!   asked offset is served from it, and the others are fetched at the same time as usual
//!   (clients drop partitions that reached the end and add newly assigned ones from fetch to
//!   fetch). A read-ahead that holds none of them (a seek, a new assignment) is discarded.
//!   Records below the secondary's high watermark do not change, and everything that depends
//!   on the moment (the primary's heads, fallbacks, rebasing) is done when the answer is
//!   used, exactly as for a Fetch sent then.
//! - **Not when caught up.** A partition that came back empty is asked again at the same
//!   offset (brokers that honour only the request's size limit leave later partitions
//!   empty), but when all came back empty there is no read-ahead (the secondary would hold
//!   it for the client's `max_wait`), nor when one fell back to the primary.
//! - **Bounded.** At most one answer per secondary leader per client connection, none older
//!   than [`MAX_AGE`], and at most `tiered.read_ahead_bytes` held by all connections of the
//!   instance together (counted at the size of the answer it follows; 0 turns read-ahead off).
//!   A connection that closes drops its read-ahead (the Fetch is cancelled).
//! - Counted in `tollgate_tiered_read_ahead_total{outcome}`: `started`, `used`, `discarded`
//!   (it held none of what the client asked next, or it was too old), `failed` (the secondary
//!   did not answer it; its partitions are then fetched as usual), `full` (not started: the
//!   instance's bound was reached).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::FetchResponse;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::brokers::upstream::UpstreamError;
use crate::tiered::cluster::{FetchParams, PartitionFetch};
use crate::tiered::Tiered;

/// A read-ahead answer older than this is not used (the client stopped, or reads slowly).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(5);

/// A secondary Fetch's result, as the routing layer reads it.
pub(super) type Fetched =
    Result<Result<(FetchResponse, Bytes), UpstreamError>, tokio::time::error::Elapsed>;

/// What one secondary Fetch asked for; a read-ahead answer is used only for an equal one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ask {
    pub(crate) addr: String,
    pub(crate) min_bytes: i32,
    pub(crate) max_bytes: i32,
    pub(crate) isolation_level: i8,
    /// (topic on the secondary, partition, secondary offset, partition max bytes).
    pub(crate) parts: Vec<(String, i32, i64, i32)>,
}

impl Ask {
    pub(crate) fn new(addr: &str, params: &FetchParams, parts: &[PartitionFetch]) -> Ask {
        Ask {
            addr: addr.to_string(),
            min_bytes: params.min_bytes,
            max_bytes: params.max_bytes,
            isolation_level: params.isolation_level,
            parts: parts
                .iter()
                .map(|p| (p.topic.clone(), p.partition, p.offset, p.max_bytes))
                .collect(),
        }
    }

    /// Same leader, size limits and isolation level.
    fn same_terms(&self, other: &Ask) -> bool {
        (
            &self.addr,
            self.min_bytes,
            self.max_bytes,
            self.isolation_level,
        ) == (
            &other.addr,
            other.min_bytes,
            other.max_bytes,
            other.isolation_level,
        )
    }

    fn partitions(&self) -> Vec<PartitionFetch> {
        self.parts
            .iter()
            .map(|(topic, partition, offset, max_bytes)| PartitionFetch {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                max_bytes: *max_bytes,
            })
            .collect()
    }
}

/// One connection's read-ahead answers, one per secondary leader.
#[derive(Default)]
pub(super) struct ReadAhead {
    pending: Mutex<HashMap<String, Pending>>,
}

/// A read-ahead Fetch in flight or answered; it gives its bytes back to the instance's
/// bound and cancels the Fetch when dropped.
struct Pending {
    ask: Ask,
    started: Instant,
    task: JoinHandle<Fetched>,
    held: usize,
    tiered: Arc<Tiered>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.task.abort();
        self.tiered
            .read_ahead_held
            .fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl ReadAhead {
    /// Claim what a read-ahead holds for `ask`: the one for its leader, if it was sent with
    /// the same size limits and isolation level, is not too old, and holds at least one of
    /// `ask`'s partitions at the asked offset. It is taken either way (a read-ahead is used
    /// once); the partitions it does not hold are fetched as usual.
    pub(crate) fn claim(&self, tiered: &Tiered, ask: &Ask) -> Option<Claim> {
        let pending = self.pending.lock().unwrap().remove(&ask.addr)?;
        let have: std::collections::HashSet<_> = pending.ask.parts.iter().collect();
        let held: Vec<bool> = ask.parts.iter().map(|p| have.contains(p)).collect();
        let usable = pending.ask.same_terms(ask)
            && pending.started.elapsed() <= MAX_AGE
            && held.iter().any(|h| *h);
        if !usable {
            debug!(read_ahead = ?pending.ask, asked = ?ask, "read-ahead discarded");
            count(tiered, "discarded");
            return None;
        }
        Some(Claim { pending, held })
    }

    /// Send `ask` to the secondary now, for the client's next Fetch; `size` is the answer
    /// it follows (what it is expected to hold).
    pub(crate) fn start(
        &self,
        tiered: &Arc<Tiered>,
        ask: Ask,
        params: FetchParams,
        timeout: Duration,
        size: usize,
    ) {
        let bound = tiered.cfg.read_ahead_bytes as usize;
        if bound == 0 {
            return;
        }
        let held = &tiered.read_ahead_held;
        if held.fetch_add(size, Ordering::Relaxed) + size > bound {
            held.fetch_sub(size, Ordering::Relaxed);
            count(tiered, "full");
            return;
        }
        count(tiered, "started");
        let (t, parts, addr) = (tiered.clone(), ask.partitions(), ask.addr.clone());
        let task = tokio::spawn(async move {
            tokio::time::timeout(timeout, t.secondary.fetch(&addr, params, &parts)).await
        });
        let pending = Pending {
            ask,
            started: Instant::now(),
            task,
            held: size,
            tiered: tiered.clone(),
        };
        // A read-ahead for the same leader that was never asked for gives way.
        let addr = pending.ask.addr.clone();
        if self.pending.lock().unwrap().insert(addr, pending).is_some() {
            count(tiered, "discarded");
        }
    }
}

/// A read-ahead claimed for a client's Fetch.
pub(super) struct Claim {
    pending: Pending,
    /// For each partition of the client's ask: whether the read-ahead holds it.
    held: Vec<bool>,
}

impl Claim {
    /// Whether the read-ahead holds partition `k` of the client's ask.
    pub(crate) fn holds(&self, k: usize) -> bool {
        self.held.get(k).copied().unwrap_or(false)
    }

    /// The read-ahead's answer, waiting for it if it is still on its way; `None` when the
    /// secondary did not answer it (the partitions are then fetched as usual).
    pub(crate) async fn answer(mut self, tiered: &Tiered) -> Option<Fetched> {
        match (&mut self.pending.task).await {
            Ok(Ok(Ok(answer))) => {
                count(tiered, "used");
                Some(Ok(Ok(answer)))
            }
            _ => {
                count(tiered, "failed");
                None
            }
        }
    }
}

fn count(tiered: &Tiered, outcome: &str) {
    tiered
        .metrics()
        .tiered_read_ahead
        .with_label_values(&[outcome])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::upstream::UpstreamSettings;
    use crate::control::config::TieredConfig;
    use crate::metrics::Metrics;

    fn tiered(bound: u64) -> Arc<Tiered> {
        let cfg = TieredConfig {
            read_ahead_bytes: bound,
            ..TieredConfig::default()
        };
        let nowhere = || UpstreamSettings::plain(Duration::from_millis(10), 1 << 20);
        Arc::new(Tiered::new(
            cfg,
            vec!["127.0.0.1:1".into()],
            nowhere(),
            nowhere(),
            Arc::new(Metrics::new()),
        ))
    }

    fn ask(max_bytes: i32, parts: &[(i32, i64)]) -> Ask {
        Ask {
            addr: "127.0.0.1:1".into(),
            min_bytes: 1,
            max_bytes,
            isolation_level: 0,
            parts: parts
                .iter()
                .map(|(p, o)| ("t".to_string(), *p, *o, 1024))
                .collect(),
        }
    }

    fn params() -> FetchParams {
        FetchParams {
            max_wait_ms: 1,
            min_bytes: 1,
            max_bytes: 100,
            isolation_level: 0,
        }
    }

    fn outcomes(t: &Tiered, o: &str) -> u64 {
        t.metrics().tiered_read_ahead.with_label_values(&[o]).get()
    }

    #[tokio::test]
    async fn a_read_ahead_serves_the_partitions_it_holds_once() {
        let t = tiered(1 << 20);
        let ahead = ReadAhead::default();
        let wait = Duration::from_millis(200);
        ahead.start(&t, ask(100, &[(0, 10), (1, 20)]), params(), wait, 1000);
        assert_eq!(t.read_ahead_held.load(Ordering::Relaxed), 1000);
        // The client dropped partition 0, kept 1 at the predicted offset, added 2.
        let next = ask(100, &[(1, 20), (2, 0)]);
        let claim = ahead.claim(&t, &next).expect("holds partition 1");
        assert!(claim.holds(0) && !claim.holds(1));
        // Nothing listens at the secondary here: the read-ahead failed, the bytes it held
        // are given back, and it is gone (used once).
        assert!(claim.answer(&t).await.is_none());
        assert_eq!(outcomes(&t, "failed"), 1);
        assert_eq!(t.read_ahead_held.load(Ordering::Relaxed), 0);
        assert!(ahead.claim(&t, &next).is_none());
    }

    #[tokio::test]
    async fn other_terms_or_other_offsets_discard_it_and_the_bound_holds() {
        let t = tiered(1500);
        let ahead = ReadAhead::default();
        let wait = Duration::from_millis(200);
        ahead.start(&t, ask(100, &[(0, 10)]), params(), wait, 1000);
        // Over the instance's bound: not started.
        ahead.start(&t, ask(100, &[(0, 10)]), params(), wait, 1000);
        assert_eq!(outcomes(&t, "full"), 1);
        // Another size limit: discarded.
        assert!(ahead.claim(&t, &ask(200, &[(0, 10)])).is_none());
        assert_eq!(outcomes(&t, "discarded"), 1);
        assert_eq!(t.read_ahead_held.load(Ordering::Relaxed), 0);
        // Another offset (a seek): discarded.
        ahead.start(&t, ask(100, &[(0, 10)]), params(), wait, 1000);
        assert!(ahead.claim(&t, &ask(100, &[(0, 11)])).is_none());
        assert_eq!(outcomes(&t, "discarded"), 2);
        // Off.
        let off = tiered(0);
        ReadAhead::default().start(&off, ask(100, &[(0, 10)]), params(), wait, 1);
        assert_eq!(outcomes(&off, "started"), 0);
    }
}
