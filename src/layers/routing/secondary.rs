//! The secondary's side of a split Fetch: one Fetch per secondary leader at the translated
//! offsets, each answer checked and its batches rebased in place into primary offsets, or a
//! fallback with its reason.

use super::ahead::ReadAhead;
use super::ahead::{Ask, Fetched};
use super::{Ctx, Outcome, ToSecondary};
use crate::tiered::cluster::{FetchParams, PartitionFetch};
use crate::tiered::{Scan, Tiered};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::FetchRequest;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::warn;

/// NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, FENCED and
/// UNKNOWN_LEADER_EPOCH: the secondary's leadership moved.
const LEADERSHIP_ERRORS: &[i16] = &[6, 3, 5, 74, 76];

/// Fetch the planned partitions from the secondary's leaders; one outcome per plan entry.
pub(super) async fn fetch_secondary(
    ctx: &Ctx,
    ahead: &ReadAhead,
    fetch: &FetchRequest,
    plan: &[ToSecondary],
) -> Vec<Outcome> {
    let t = &ctx.tiered;
    let cfg = &t.cfg;
    let names: Vec<String> = plan.iter().map(|s| cfg.secondary_topic(&s.topic)).collect();
    let timeout = Duration::from_millis(cfg.secondary_timeout_ms)
        + Duration::from_millis(fetch.max_wait_ms.max(0) as u64);
    let leaders = match tokio::time::timeout(
        timeout,
        t.secondary.leaders(
            names
                .iter()
                .zip(plan)
                .map(|(n, s)| (n.clone(), s.partition.partition)),
        ),
    )
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            secondary_failed(ctx, "metadata", &e.to_string());
            return plan
                .iter()
                .map(|_| Outcome::Fallback("secondary_unavailable"))
                .collect();
        }
        Err(_) => {
            secondary_failed(ctx, "timeout", "metadata timed out");
            return plan
                .iter()
                .map(|_| Outcome::Fallback("secondary_unavailable"))
                .collect();
        }
    };
    // One Fetch per leader.
    let mut by_leader: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut outcomes: Vec<Option<Outcome>> = plan.iter().map(|_| None).collect();
    for (i, (name, s)) in names.iter().zip(plan).enumerate() {
        match leaders.get(&(name.clone(), s.partition.partition)) {
            Some(addr) => by_leader.entry(addr.as_str()).or_default().push(i),
            None => outcomes[i] = Some(Outcome::Fallback("secondary_unavailable")),
        }
    }
    let params = FetchParams {
        max_wait_ms: fetch.max_wait_ms.max(1),
        min_bytes: fetch.min_bytes,
        max_bytes: if fetch.max_bytes > 0 {
            fetch.max_bytes
        } else {
            i32::MAX
        },
        isolation_level: fetch.isolation_level,
    };
    let requests = by_leader.into_iter().map(|(addr, idxs)| {
        let parts: Vec<PartitionFetch> = idxs
            .iter()
            .map(|&i| PartitionFetch {
                topic: names[i].clone(),
                partition: plan[i].partition.partition,
                offset: plan[i].segment.down(plan[i].partition.fetch_offset),
                max_bytes: plan[i].partition.partition_max_bytes,
            })
            .collect();
        let leader = Leader {
            addr,
            params,
            timeout,
        };
        fetch_leader(ctx, ahead, plan, &names, leader, idxs, parts)
    });
    for served in futures::future::join_all(requests).await {
        for (i, outcome) in served {
            outcomes[i] = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Fallback("secondary_error")))
        .collect()
}

/// One secondary leader and how to ask it.
#[derive(Clone, Copy)]
struct Leader<'a> {
    addr: &'a str,
    params: FetchParams,
    timeout: Duration,
}

impl Leader<'_> {
    /// Fetch partitions `ks` of `parts` now.
    async fn fetch(&self, t: &Tiered, parts: &[PartitionFetch], ks: &[usize]) -> Fetched {
        let some: Vec<PartitionFetch> = ks.iter().map(|&k| parts[k].clone()).collect();
        let work = t.secondary.fetch(self.addr, self.params, &some);
        tokio::time::timeout(self.timeout, work).await
    }
}

/// One secondary leader's share of the plan (`idxs`, asking for `parts`): what this
/// connection's read-ahead holds of it, and the rest fetched at the same time; then the
/// client's likely next Fetch is read ahead.
async fn fetch_leader(
    ctx: &Ctx,
    ahead: &ReadAhead,
    plan: &[ToSecondary],
    names: &[String],
    leader: Leader<'_>,
    idxs: Vec<usize>,
    parts: Vec<PartitionFetch>,
) -> Vec<(usize, Outcome)> {
    let t = &ctx.tiered;
    let ask = Ask::new(leader.addr, &leader.params, &parts);
    let claim = ahead.claim(t, &ask);
    let (held, rest): (Vec<usize>, Vec<usize>) =
        (0..idxs.len()).partition(|&k| claim.as_ref().is_some_and(|c| c.holds(k)));
    let from_ahead = async {
        match claim {
            Some(c) => c.answer(t).await,
            None => None,
        }
    };
    let now = async {
        if rest.is_empty() {
            None
        } else {
            Some(leader.fetch(t, &parts, &rest).await)
        }
    };
    let (from_ahead, now) = tokio::join!(from_ahead, now);
    let mut results = Vec::with_capacity(2);
    if let Some(r) = now {
        results.push((rest, r));
    }
    match from_ahead {
        Some(r) => results.push((held, r)),
        // The read-ahead failed: those partitions are fetched now.
        None if !held.is_empty() => {
            let r = leader.fetch(t, &parts, &held).await;
            results.push((held, r));
        }
        None => {}
    }
    let mut size = 0;
    let mut served = Vec::with_capacity(idxs.len());
    for (ks, result) in results {
        if let Ok(Ok((_, frame))) = &result {
            size += frame.len();
        }
        let these = ks.iter().map(|&k| idxs[k]).collect();
        served.extend(answers(ctx, plan, names, these, result));
    }
    if let Some(next) = next_ask(plan, &idxs, ask, &served) {
        ahead.start(t, next, leader.params, leader.timeout, size);
    }
    served
}

/// The client's next Fetch from this leader if it keeps reading: the same partitions, each
/// one past the last whole batch it was just served (one that came back empty at the same
/// offset). `None` when a partition was not served from the secondary, or none returned
/// records (caught up: a Fetch sent now would wait).
fn next_ask(
    plan: &[ToSecondary],
    idxs: &[usize],
    mut ask: Ask,
    served: &[(usize, Outcome)],
) -> Option<Ask> {
    let mut moved = false;
    let served: HashMap<usize, &PartitionData> = served
        .iter()
        .filter_map(|(i, o)| match o {
            Outcome::Served(d) => Some((*i, &**d)),
            Outcome::Fallback(_) => None,
        })
        .collect();
    for (part, &i) in ask.parts.iter_mut().zip(idxs) {
        let data = served.get(&i)?;
        let Some(records) = data.records.as_ref().filter(|r| !r.is_empty()) else {
            continue; // asked again at the same offset
        };
        let next = crate::wire::records::summarize(records, i64::MIN).next_offset;
        let down = plan[i].segment.down(next);
        if down <= part.2 {
            return None;
        }
        part.2 = down;
        moved = true;
    }
    moved.then_some(ask)
}

/// One secondary leader's answer for the plan entries `idxs`: each served (rebased in place)
/// or a fallback with its reason.
fn answers(
    ctx: &Ctx,
    plan: &[ToSecondary],
    names: &[String],
    idxs: Vec<usize>,
    result: Fetched,
) -> Vec<(usize, Outcome)> {
    let unavailable = |idxs: Vec<usize>| {
        ctx.tiered.secondary.forget_leaders();
        idxs.into_iter()
            .map(|i| (i, Outcome::Fallback("secondary_unavailable")))
            .collect()
    };
    let (resp, frame) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            secondary_failed(ctx, "fetch", &e.to_string());
            return unavailable(idxs);
        }
        Err(_) => {
            secondary_failed(ctx, "timeout", "fetch timed out");
            return unavailable(idxs);
        }
    };
    let mut out = Vec::with_capacity(idxs.len());
    let mut served = Vec::new();
    for i in idxs {
        let s = &plan[i];
        let pd = resp
            .responses
            .iter()
            .filter(|rt| rt.topic.as_str() == names[i])
            .flat_map(|rt| rt.partitions.iter())
            .find(|p| p.partition_index == s.partition.partition);
        match pd.map(|pd| serve(ctx, s, pd, &frame)) {
            None => out.push((i, Outcome::Fallback("secondary_error"))),
            Some(Err(reason)) => out.push((i, Outcome::Fallback(reason))),
            Some(Ok(answer)) => served.push((i, answer)),
        }
    }
    // The response's records are slices of `frame`; with them gone, the frame is ours
    // to change: the kept batches' base offsets are moved in place.
    drop(resp);
    for (i, answer) in rebase_in_place(frame, served) {
        out.push((i, Outcome::Served(Box::new(answer))));
    }
    out
}

/// One secondary partition's answer, before its batches are rebased: the partition data in
/// primary terms (records not yet set), and where its whole batches lie in the frame.
struct Answer {
    data: PartitionData,
    batches: Option<Batches>,
}

/// Whole record batches inside the secondary's response frame, and the offset shift that
/// moves them into primary offsets.
struct Batches {
    range: std::ops::Range<usize>,
    delta: i64,
}

/// One secondary partition answer, in primary offsets, or why it cannot be used.
fn serve(
    ctx: &Ctx,
    s: &ToSecondary,
    pd: &PartitionData,
    frame: &Bytes,
) -> Result<Answer, &'static str> {
    let t = &ctx.tiered;
    let p = s.partition.partition;
    if pd.error_code != 0 {
        if LEADERSHIP_ERRORS.contains(&pd.error_code) {
            t.secondary.forget_leaders();
        }
        return Err("secondary_error");
    }
    t.observe_secondary_hw(&s.topic, p, pd.high_watermark);
    let head = ctx.heads.get(&s.topic, p);
    let (hw, lso, start) = head.map_or((-1, -1, -1), |h| {
        (h.high_watermark, h.last_stable_offset, h.log_start_offset)
    });
    let answer = |batches: Option<Batches>, next: i64| {
        let hw = hw.max(next);
        let lso = if lso < 0 { hw } else { lso.max(next) };
        let data = PartitionData::default()
            .with_partition_index(p)
            .with_high_watermark(hw)
            .with_last_stable_offset(lso)
            .with_log_start_offset(start);
        Ok(Answer { data, batches })
    };
    let empty = Bytes::new();
    let records = pd.records.as_ref().unwrap_or(&empty);
    match crate::tiered::scan_batches(records, &s.segment) {
        Scan::Batches { len, next } => match offset_in(frame, records) {
            Some(at) => answer(
                Some(Batches {
                    range: at..at + len,
                    delta: s.segment.delta(),
                }),
                next,
            ),
            // Records decoded from the frame are slices of it; anything else is a bug.
            None => Err("secondary_error"),
        },
        Scan::Inexact => Err("inexact"),
        Scan::Empty => {
            let down = s.segment.down(s.partition.fetch_offset);
            if pd.high_watermark <= down && !s.probation {
                Err("secondary_behind")
            } else {
                answer(None, s.partition.fetch_offset)
            }
        }
    }
}

/// Where `part` starts inside `whole`, if it is a slice of it (addresses compared, nothing
/// read).
fn offset_in(whole: &Bytes, part: &Bytes) -> Option<usize> {
    let at = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (at + part.len() <= whole.len()).then_some(at)
}

/// Move every answer's batches into primary offsets inside `frame` (in place when nothing
/// else holds the frame, which is the rule; else on one copy of it), and give each answer
/// its records as a slice of the result.
fn rebase_in_place(
    frame: Bytes,
    answers: Vec<(usize, Answer)>,
) -> impl Iterator<Item = (usize, PartitionData)> {
    let mut buf = frame
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    for (_, a) in &answers {
        if let Some(b) = &a.batches {
            crate::tiered::shift_base_offsets(&mut buf[b.range.clone()], b.delta);
        }
    }
    let frame = buf.freeze();
    answers.into_iter().map(move |(i, a)| {
        let records = a.batches.map_or_else(Bytes::new, |b| frame.slice(b.range));
        (i, a.data.with_records(Some(records)))
    })
}

/// Count a failed secondary request and log it (at most every 10 seconds).
fn secondary_failed(ctx: &Ctx, reason: &'static str, error: &str) {
    ctx.tiered
        .metrics()
        .tiered_secondary_errors
        .with_label_values(&[reason])
        .inc();
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().expect("lock");
    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
        *last = Some(Instant::now());
        warn!(
            reason,
            error, "secondary cluster request failed; serving from the primary"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiered::Segment;
    use bytes::BufMut;
    use kafka_protocol::messages::fetch_request::FetchPartition;

    /// A v2 batch of `count` records from `base` (header only, no record bodies).
    fn batch(base: i64, count: i32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i64(base);
        b.put_i32(61 - 12);
        b.put_i32(0);
        b.put_i8(2);
        b.put_u32(0);
        b.put_i16(0);
        b.put_i32(count - 1);
        b.put_i64(0);
        b.put_i64(0);
        b.put_i64(-1);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i32(count);
        b.freeze()
    }

    fn to_secondary(partition: i32, offset: i64) -> ToSecondary {
        ToSecondary {
            topic_idx: 0,
            topic: "t".into(),
            partition: FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset),
            // Primary offsets from 1000 are secondary offsets from 900.
            segment: Segment {
                up_start: 1000,
                down_start: 900,
                len: None,
            },
            probation: false,
        }
    }

    fn served(i: usize, records: Bytes) -> (usize, Outcome) {
        let data = PartitionData::default().with_records(Some(records));
        (i, Outcome::Served(Box::new(data)))
    }

    fn ask(offsets: &[i64]) -> Ask {
        Ask {
            addr: "s:9092".into(),
            min_bytes: 1,
            max_bytes: 1 << 20,
            isolation_level: 0,
            parts: offsets
                .iter()
                .enumerate()
                .map(|(p, o)| ("t".to_string(), p as i32, *o, 1 << 20))
                .collect(),
        }
    }

    #[test]
    fn the_next_ask_starts_one_past_what_each_partition_was_served() {
        let plan = [to_secondary(0, 1100), to_secondary(1, 1200)];
        // Served in primary offsets (rebased): 1100..1110 and 1200..1205.
        let out = [served(1, batch(1200, 5)), served(0, batch(1100, 10))];
        let next = next_ask(&plan, &[0, 1], ask(&[1000, 1100]), &out).unwrap();
        assert_eq!(next, ask(&[1010, 1105]));
    }

    #[test]
    fn an_empty_partition_is_asked_again_where_it_was() {
        let plan = [to_secondary(0, 1100), to_secondary(1, 1200)];
        let out = [served(0, batch(1100, 10)), served(1, Bytes::new())];
        let next = next_ask(&plan, &[0, 1], ask(&[1000, 1100]), &out).unwrap();
        assert_eq!(next, ask(&[1010, 1100]));
    }

    #[test]
    fn no_next_ask_when_all_are_caught_up_or_one_was_not_served() {
        let plan = [to_secondary(0, 1100), to_secondary(1, 1200)];
        let empty = [served(0, Bytes::new()), served(1, Bytes::new())];
        assert!(next_ask(&plan, &[0, 1], ask(&[1000, 1100]), &empty).is_none());
        let fallback = [
            served(0, batch(1100, 10)),
            (1, Outcome::Fallback("inexact")),
        ];
        assert!(next_ask(&plan, &[0, 1], ask(&[1000, 1100]), &fallback).is_none());
    }
}
