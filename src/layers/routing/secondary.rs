//! The secondary's side of a split Fetch: one Fetch per secondary leader at the translated
//! offsets, each answer checked and its batches rebased in place into primary offsets, or a
//! fallback with its reason.

use super::*;

/// NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, FENCED and
/// UNKNOWN_LEADER_EPOCH: the secondary's leadership moved.
const LEADERSHIP_ERRORS: &[i16] = &[6, 3, 5, 74, 76];

/// Fetch the planned partitions from the secondary's leaders; one outcome per plan entry.
pub(super) async fn fetch_secondary(
    ctx: &Ctx,
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
        async move {
            let r = tokio::time::timeout(timeout, t.secondary.fetch(addr, params, &parts)).await;
            (idxs, r)
        }
    });
    for (idxs, result) in futures::future::join_all(requests).await {
        for (i, outcome) in answers(ctx, plan, &names, idxs, result) {
            outcomes[i] = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Fallback("secondary_error")))
        .collect()
}

/// One secondary leader's answer for the plan entries `idxs`: each served (rebased in place)
/// or a fallback with its reason.
fn answers(
    ctx: &Ctx,
    plan: &[ToSecondary],
    names: &[String],
    idxs: Vec<usize>,
    result: Result<Result<(FetchResponse, Bytes), UpstreamError>, tokio::time::error::Elapsed>,
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
