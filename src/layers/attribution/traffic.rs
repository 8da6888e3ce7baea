//! Produce and Fetch: what each request says and what its answer confirms (bytes, records,
//! heads, fetch positions), counted per client and group.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::messages::{FetchRequest, FetchResponse, ProduceRequest, ProduceResponse};

use super::{error_name, Pending, ProducedPartition, Sinks};
use crate::brokers::topic_ids::TopicIds;
use crate::consumers::decision::FetchSession;
use crate::consumers::groups::{Tie, TopicPartition};
use crate::consumers::heads::Observed;
use crate::consumers::identity::ConnInfo;
use crate::consumers::ledger::{Part, PartRead, ReadBy};
use crate::consumers::usage::{FetchedPartition, Reader, Temperature};
use crate::layers::request::Request;
use crate::wire::records;

/// Produce and Fetch traffic of one connection, counted into the shared components; reads
/// the connection's fetch session for each Fetch answer's positions.
pub(super) struct Traffic {
    pub(super) sinks: Sinks,
    pub(super) session: Arc<FetchSession>,
}

impl Traffic {
    /// A Produce request: bytes, records and offsets per partition, from the batch headers.
    pub(super) fn on_produce_request(&self, request: &Request) -> anyhow::Result<Pending> {
        let a = &self.sinks;
        // Decoded once here, for the own-topics guard below.
        let req = request.body::<ProduceRequest>()?;
        let mut parts = Vec::new();
        for t in &req.topic_data {
            let topic = a.topic_ids.topic_of(&t.name, &t.topic_id);
            for p in &t.partition_data {
                let s = records::summarize(p.records.as_deref().unwrap_or_default(), i64::MIN);
                parts.push(ProducedPartition {
                    topic: topic.clone(),
                    partition: p.index,
                    bytes: s.bytes,
                    records: s.records,
                    offsets: s.offsets,
                });
            }
        }
        Ok(Pending::Produce(parts))
    }

    /// A Fetch request: its reader, from the consumer decision (a follower's Fetch has
    /// none and is not counted).
    pub(super) fn on_fetch_request(&self, request: &Request) -> anyhow::Result<Option<Pending>> {
        let req = request.body::<FetchRequest>()?;
        Ok(request.consumer.as_ref().map(|c| Pending::Fetch {
            isolation_committed: req.isolation_level == 1,
            tie: c.tie.clone(),
            started: std::time::Instant::now(),
        }))
    }

    /// An `acks=0` produce: nothing will acknowledge it; count what was sent.
    pub(super) fn produced_unacknowledged(&self, pending: Pending, conn: &ConnInfo) {
        if let Pending::Produce(parts) = pending {
            for p in &parts {
                self.count_produced(p, conn);
            }
            // Nothing says where they landed: no offsets.
            self.to_ledger(conn, parts.iter().map(|p| (p, -1)));
            // No head to learn; the batches still refine the bytes-per-offset estimate.
            let tps: Vec<TopicPartition> = parts
                .iter()
                .map(|p| (p.topic.clone(), p.partition))
                .collect();
            self.sinks.heads.observe_produced(
                tps.iter()
                    .zip(&parts)
                    .map(|(tp, p)| (tp, -1, p.bytes, p.offsets)),
            );
        }
    }

    pub(super) fn count_produced(&self, p: &ProducedPartition, conn: &ConnInfo) {
        let a = &self.sinks;
        a.usage.count_produce(
            &conn.principal(),
            &conn.client_id().unwrap_or_default(),
            conn.peer.ip(),
            &p.topic,
            p.bytes,
            p.records,
        );
        conn.note_produced(&p.topic);
    }

    /// A Produce answer: acknowledged partitions are counted and move their heads (one call to
    /// the head store for the whole response); failed ones are counted by error.
    pub(super) fn on_produce_response(
        &self,
        resp: &ProduceResponse,
        parts: &[ProducedPartition],
        conn: &ConnInfo,
    ) {
        let a = &self.sinks;
        let mut answers: HashMap<TopicPartition, (i16, i64)> = HashMap::new();
        for t in &resp.responses {
            let topic = a.topic_ids.topic_of(&t.name, &t.topic_id);
            for p in &t.partition_responses {
                answers.insert((topic.clone(), p.index), (p.error_code, p.base_offset));
            }
        }
        let client_id = conn.client_id().unwrap_or_default();
        let mut acked: Vec<(TopicPartition, i64, u64, u64)> = Vec::with_capacity(parts.len());
        // Each acknowledged partition with its base offset (-1: not said), for the ledger.
        let mut bases: Vec<(&ProducedPartition, i64)> = Vec::with_capacity(parts.len());
        for p in parts {
            let tp = (p.topic.clone(), p.partition);
            match answers.get(&tp).copied().unwrap_or((0, -1)) {
                (0, base) => {
                    self.count_produced(p, conn);
                    // The head is now at least past this batch.
                    let at_least = if base >= 0 {
                        base + p.offsets as i64
                    } else {
                        -1
                    };
                    acked.push((tp, at_least, p.bytes, p.offsets));
                    bases.push((p, base.max(-1)));
                }
                (code, _) => a
                    .usage
                    .count_produce_error(&client_id, &p.topic, error_name(code)),
            }
        }
        a.heads
            .observe_produced(acked.iter().map(|(tp, h, b, o)| (tp, *h, *b, *o)));
        self.to_ledger(conn, bases.into_iter());
    }

    /// Acknowledged (or unacknowledged, base -1) partitions of a Produce, for the usage
    /// windows.
    fn to_ledger<'p>(
        &self,
        conn: &ConnInfo,
        parts: impl Iterator<Item = (&'p ProducedPartition, i64)>,
    ) {
        let Some(ledger) = &self.sinks.ledger else {
            return;
        };
        let written: Vec<Part> = parts
            .map(|(p, base)| Part {
                topic: &p.topic,
                partition: p.partition,
                first: base,
                last: if base >= 0 {
                    base + p.offsets as i64 - 1
                } else {
                    -1
                },
                bytes: p.bytes,
                records: p.records,
            })
            .collect();
        let (principal, client_id) = (conn.principal(), conn.client_id().unwrap_or_default());
        ledger.writes(&principal, &client_id, &written);
    }

    /// A Fetch answer: heads, counts, the activity rows and the group's fetch positions.
    /// One lock per component for the whole response (the connection's session once, the
    /// head store twice: to record the heads and to read the bytes-per-offset estimates
    /// back).
    pub(super) fn on_fetch_response(&self, resp: &FetchResponse, conn: &ConnInfo, read: FetchRead) {
        // This connection's session, held for the response (nothing else waits on it but the
        // connection's own next request): the positions are read, not copied.
        self.session
            .with_positions(|positions| self.count_fetch_response(resp, conn, &read, positions));
    }

    fn count_fetch_response(
        &self,
        resp: &FetchResponse,
        conn: &ConnInfo,
        read: &FetchRead,
        positions: &HashMap<TopicPartition, i64>,
    ) {
        let a = &self.sinks;
        let group = read.tie.label();
        conn.note_group(group);
        let parts = fetched_parts(resp, &a.topic_ids, positions);
        a.heads.observe(
            parts
                .iter()
                .filter(|f| f.error_code == 0)
                .map(|f| (&f.tp, f.head)),
        );
        let bpo = a.heads.bytes_per_offset(parts.iter().map(|f| &f.tp));
        let mut fetched = Vec::new();
        let mut ledger = Vec::new();
        let mut fetched_bytes: HashMap<&TopicPartition, u64> = HashMap::new();
        for (f, bpo) in parts.iter().zip(bpo).filter(|(f, _)| f.bytes > 0) {
            fetched_bytes.insert(&f.tp, f.bytes);
            let head = if read.read_committed && f.head.last_stable_offset >= 0 {
                f.head.last_stable_offset
            } else {
                f.head.high_watermark
            };
            let from = f.fetch_offset.unwrap_or(head);
            let on_secondary = read.secondary.is_some_and(|set| set.contains(&f.tp));
            let temperature = a.usage.classify(head - from, bpo);
            fetched.push(FetchedPartition {
                topic: f.tp.0.clone(),
                temperature,
                cluster: if on_secondary { "secondary" } else { "primary" },
                bytes: f.bytes,
                records: f.records,
            });
            ledger.push(PartRead {
                part: Part {
                    topic: &f.tp.0,
                    partition: f.tp.1,
                    first: f.fetch_offset.unwrap_or(f.first_offset).max(f.first_offset),
                    last: f.next_offset - 1,
                    bytes: f.bytes,
                    records: f.records,
                },
                hot: temperature == Temperature::Hot,
                secondary: on_secondary,
            });
            conn.note_fetched(&f.tp.0);
        }
        let (principal, client_id) = (conn.principal(), conn.client_id().unwrap_or_default());
        let reader = Reader {
            group,
            principal: &principal,
            client_id: &client_id,
            host: conn.peer.ip(),
        };
        a.usage.count_fetches(&reader, &fetched);
        if let Some(l) = &a.ledger {
            let by = ReadBy {
                group,
                grouped: read.tie.group().is_some(),
                principal: &principal,
                client_id: &client_id,
            };
            l.reads(by, &ledger, read.seconds);
        }
        // Every partition of the session was fetched (incremental sessions leave out the ones
        // without news, but the broker fetched them all for this request).
        if let Some(group) = read.tie.group() {
            a.lag.observe_fetches(
                group,
                positions
                    .iter()
                    .map(|(tp, offset)| (tp, *offset, fetched_bytes.get(tp).copied().unwrap_or(0))),
                read.read_committed,
            );
        }
    }
}

/// How a Fetch answer was read, from its request and the layers below.
pub(super) struct FetchRead<'a> {
    pub(super) read_committed: bool,
    /// The partitions the secondary cluster served (`None`: the answer came as bytes, all
    /// from the primary).
    pub(super) secondary: Option<&'a std::collections::HashSet<(String, i32)>>,
    pub(super) tie: &'a Tie,
    /// From request to answer.
    pub(super) seconds: f64,
}

/// One partition of a Fetch response, as attribution reads it.
pub(super) struct FetchedPart {
    tp: TopicPartition,
    error_code: i16,
    head: Observed,
    /// The offset the session fetched it from.
    fetch_offset: Option<i64>,
    /// The first offset of the first complete batch, and one past the last.
    first_offset: i64,
    next_offset: i64,
    bytes: u64,
    records: u64,
}

/// Every partition of a Fetch response: its head, and what its complete batches hold.
pub(super) fn fetched_parts(
    resp: &FetchResponse,
    topic_ids: &TopicIds,
    positions: &HashMap<TopicPartition, i64>,
) -> Vec<FetchedPart> {
    let mut out = Vec::new();
    for t in &resp.responses {
        let topic = topic_ids.topic_of(&t.topic, &t.topic_id);
        for p in &t.partitions {
            let tp = (topic.clone(), p.partition_index);
            let fetch_offset = positions.get(&tp).copied();
            let records = p.records.as_deref().unwrap_or_default();
            let s = records::summarize(records, fetch_offset.unwrap_or(i64::MIN));
            out.push(FetchedPart {
                tp,
                error_code: p.error_code,
                head: Observed {
                    batch_bytes: s.bytes,
                    batch_offsets: s.offsets,
                    ..Observed::offsets(p.high_watermark, p.last_stable_offset, p.log_start_offset)
                },
                fetch_offset,
                first_offset: s.first_offset,
                next_offset: s.next_offset,
                bytes: s.bytes,
                records: s.records,
            });
        }
    }
    out
}
