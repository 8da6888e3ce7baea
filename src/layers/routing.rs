//! The routing layer: tiered reads. For every partition of a client's Fetch on a mirrored
//! topic (`tiered.topics`), [`Tiered::decide`] picks the primary or the secondary cluster.
//!
//! - **Nothing for the secondary** (the common case): the request goes on unchanged and the
//!   response may stream cut-through as before.
//! - **Split**: the partitions for the secondary are taken out of the request, which goes to
//!   the primary with what is left (and a `max_wait_ms` of 1, so the secondary's data is not
//!   held back by a long poll on the primary); the others go to the secondary's partition
//!   leaders, one Fetch each, at the translated offsets, with the client's wait, size limits
//!   and isolation level. The answers are merged in the client's order.
//! - **Offsets the client sees are primary offsets**: each secondary batch's base offset is
//!   moved back into primary offsets (it is outside the CRC, nothing else changes) in place,
//!   inside the buffer the secondary's response arrived in, and the merged answer is encoded
//!   around them ([`crate::pieces`]), so the records are never copied on the way; the
//!   partition reports the primary's high watermark, last stable offset and log start offset
//!   (never below the end of the records returned).
//! - **Fallbacks**: a partition goes to the primary instead, counted in
//!   `tollgate_tiered_fallbacks_total{reason}`, when there is no sync at or before its offset
//!   (`no_sync`), the mapping there is not exact (`inexact`: a gap, transaction markers,
//!   compaction, a batch crossing a sync), the secondary does not have the offset yet
//!   (`secondary_behind`; not for probation groups, which wait on the secondary), the
//!   secondary could not be reached in time (`secondary_unavailable`) or answered an error
//!   (`secondary_error`). Those partitions are fetched from the primary in a second request
//!   before the client is answered. A record is never delivered at an offset Tollgate cannot
//!   vouch for.
//! - **Fetch sessions (KIP-227)**: with tiered reads on, Tollgate turns every client's
//!   session-creating Fetch (session id 0, epoch 0) into a sessionless full fetch (epoch -1),
//!   so no broker session is ever opened for a client connection: each Fetch names all its
//!   partitions, which the split needs, and the client's session handling sees a broker that
//!   declined a session (it keeps sending full fetches; librdkafka never uses sessions). A
//!   request already inside a session (possible only if it was opened before Tollgate) is
//!   passed on unrouted.
//! - ListOffsets, OffsetCommit and OffsetFetch are not touched: they stay on the primary.
//!
//! The layer sits inside governance (refused partitions never reach it) and outside the
//! rewrite layer; attribution, above it, learns which partitions the secondary served through
//! [`crate::request::Routed`] and counts `tollgate_tiered_fetched_*{cluster}`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ResponseHeader};
use tower::{Layer, Service, ServiceExt};
use tracing::{debug, warn};

use crate::cluster::{FetchParams, PartitionFetch};
use crate::error::BoxError;
use crate::groups::{AMBIGUOUS, NO_GROUP};
use crate::heads::Heads;
use crate::lag::Lag;
use crate::pieces;
use crate::protocol;
use crate::registry::{RegistryHandle, Tier};
use crate::request::{Request, Response};
use crate::tiered::{Route, Scan, Segment, Tiered, Translation};
use crate::topic_ids::TopicIds;
use crate::upstream::UpstreamError;

/// NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, FENCED and
/// UNKNOWN_LEADER_EPOCH: the secondary's leadership moved.
const LEADERSHIP_ERRORS: &[i16] = &[6, 3, 5, 74, 76];

/// Builds [`RoutingService`]; a no-op without `tiered.enabled`.
#[derive(Clone)]
pub struct RoutingLayer {
    ctx: Option<Arc<Ctx>>,
}

struct Ctx {
    tiered: Arc<Tiered>,
    heads: Arc<Heads>,
    topic_ids: Arc<TopicIds>,
    /// Promotions (a promoted probation group reads from the primary).
    lag: Arc<Lag>,
    registry: Arc<RegistryHandle>,
}

/// What routing reads besides the tiered-read state: partition heads, topic names,
/// promotions and the registry.
pub struct RoutingInputs {
    pub heads: Arc<Heads>,
    pub topic_ids: Arc<TopicIds>,
    pub lag: Arc<Lag>,
    pub registry: Arc<RegistryHandle>,
}

impl RoutingLayer {
    pub fn new(tiered: Option<Arc<Tiered>>, inputs: RoutingInputs) -> Self {
        RoutingLayer {
            ctx: tiered.map(|tiered| {
                Arc::new(Ctx {
                    tiered,
                    heads: inputs.heads,
                    topic_ids: inputs.topic_ids,
                    lag: inputs.lag,
                    registry: inputs.registry,
                })
            }),
        }
    }
}

impl<S> Layer<S> for RoutingLayer {
    type Service = RoutingService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RoutingService {
            inner,
            ctx: self.ctx.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RoutingService<S> {
    inner: S,
    ctx: Option<Arc<Ctx>>,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

/// One partition bound for the secondary.
struct ToSecondary {
    /// Index of the topic in the client's request.
    topic_idx: usize,
    topic: String,
    partition: FetchPartition,
    segment: Segment,
    /// The group waits on the secondary rather than fall back when it is behind.
    probation: bool,
}

/// What became of one secondary partition.
enum Outcome {
    Served(Box<PartitionData>),
    Fallback(&'static str),
}

impl<S> Service<Request> for RoutingService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(ctx) = self.ctx.clone() else {
            return Box::pin(self.inner.call(req));
        };
        if req.meta.api != Some(ApiKey::Fetch) {
            return Box::pin(self.inner.call(req));
        }
        if req.meta.body_offset.is_none() {
            return Box::pin(self.inner.call(req));
        }
        let version = req.meta.api_version;
        // Decoded once, by the first layer that read it (attribution).
        let Ok(decoded) = req.body::<FetchRequest>() else {
            // Routing is no policy: what it cannot read goes to the primary as it came.
            return Box::pin(self.inner.call(req));
        };
        if decoded.replica_id.0 >= 0 || decoded.replica_state.replica_id.0 >= 0 {
            return Box::pin(self.inner.call(req)); // a follower broker
        }
        if version >= 7 && decoded.session_id != 0 {
            return Box::pin(self.inner.call(req)); // inside a session opened before us
        }
        // Sessionless: see the module docs.
        let sessionless = |mut f: FetchRequest| {
            if version >= 7 && f.session_epoch == 0 {
                f.session_epoch = -1;
            }
            f
        };
        let plan = plan(&ctx, &req, &decoded);
        if plan.is_empty() {
            if version >= 7 && decoded.session_epoch == 0 {
                if let Err(e) = req.set_body(sessionless(FetchRequest::clone(&decoded))) {
                    return Box::pin(async move { Err(e.into()) });
                }
            }
            return Box::pin(self.inner.call(req));
        }
        let fetch = sessionless(FetchRequest::clone(&decoded));
        let inner = self.inner.clone();
        Box::pin(split(ctx, inner, req, fetch, plan))
    }
}

/// Decide every partition; the ones for the secondary (fallbacks decided up front are
/// counted here and stay in the request).
fn plan(ctx: &Ctx, req: &Request, fetch: &FetchRequest) -> Vec<ToSecondary> {
    let t = &ctx.tiered;
    let mirrored: Vec<(usize, String)> = fetch
        .topics
        .iter()
        .enumerate()
        .map(|(i, ft)| (i, ctx.topic_ids.topic_of(&ft.topic, &ft.topic_id)))
        .filter(|(_, name)| t.cfg.mirrors(name))
        .collect();
    if mirrored.is_empty() {
        return Vec::new();
    }
    // Who is reading, and in which tier.
    let conn = &req.conn;
    // The consumer decision made once for this request (attribution layer).
    let group = req
        .tie
        .as_ref()
        .map_or(NO_GROUP.to_string(), |t| t.group.clone());
    let grouped = group != NO_GROUP && group != AMBIGUOUS;
    let probation = grouped
        && ctx
            .registry
            .get()
            .is_some_and(|reg| ctx.lag.effective_tier(&group, &reg) == Some(Tier::Probation));
    // Pinned to the secondary: a probation group (waits for the secondary), or a group over
    // its read budget with on_over_budget = "demote" (the budget layer's mark).
    let pinned = if probation {
        Some("probation")
    } else if req.demoted {
        Some("over_budget")
    } else {
        None
    };
    let consumer = if grouped {
        group
    } else {
        format!("client:{}", conn.client_id().unwrap_or_default())
    };
    let m = t.metrics();
    let mut out = Vec::new();
    for (idx, name) in mirrored {
        for p in &fetch.topics[idx].partitions {
            let head = ctx.heads.get(&name, p.partition);
            let route = t.decide(&consumer, &name, p.partition, p.fetch_offset, head, pinned);
            let (cluster, reason) = match route {
                Route::Primary(r) => ("primary", r),
                Route::Secondary(r) => ("secondary", r),
            };
            m.tiered_decisions
                .with_label_values(&[cluster, reason])
                .inc();
            if matches!(route, Route::Primary(_)) {
                continue;
            }
            let fallback = match t.syncs.translate(&name, p.partition, p.fetch_offset) {
                Translation::NoSync => Some("no_sync"),
                Translation::Inexact => Some("inexact"),
                Translation::Exact(seg) => {
                    // Known to be behind, as of a moment ago: do not ask.
                    let behind = t.secondary_hw(&name, p.partition).is_some_and(|(hw, at)| {
                        seg.down(p.fetch_offset) >= hw && at.elapsed() < Duration::from_secs(1)
                    });
                    if behind && !probation {
                        Some("secondary_behind")
                    } else {
                        out.push(ToSecondary {
                            topic_idx: idx,
                            topic: name.clone(),
                            partition: p.clone(),
                            segment: seg,
                            probation,
                        });
                        None
                    }
                }
            };
            if let Some(reason) = fallback {
                m.tiered_fallbacks.with_label_values(&[reason]).inc();
            }
        }
    }
    out
}

/// Send the split request, merge, fall back where needed, answer in the client's order.
async fn split<S>(
    ctx: Arc<Ctx>,
    mut inner: S,
    req: Request,
    fetch: FetchRequest,
    plan: Vec<ToSecondary>,
) -> Result<Response, BoxError>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let version = req.meta.api_version;
    let secondary_set: HashSet<(usize, i32)> = plan
        .iter()
        .map(|s| (s.topic_idx, s.partition.partition))
        .collect();
    // The primary's share: everything else.
    let mut primary = subset(&fetch, |i, p| !secondary_set.contains(&(i, p)));
    // Not 0: tansu 0.6.0 answers max_wait_ms = 0 with no partitions at all.
    primary.max_wait_ms = fetch.max_wait_ms.min(1);
    let mut inner_p = inner.clone();
    let primary_fut = async {
        if primary.topics.is_empty() {
            return Ok(None);
        }
        let r = send_primary(&mut inner_p, &req, &primary).await?;
        Ok::<_, BoxError>(Some(r))
    };
    let secondary_fut = fetch_secondary(&ctx, &fetch, &plan);
    let (primary_resp, outcomes) = tokio::join!(primary_fut, secondary_fut);
    let primary_resp = primary_resp?;
    let Sorted {
        mut served,
        fallback,
        routed,
    } = sort_outcomes(&ctx.tiered, &plan, outcomes);
    // Fallbacks: a second primary request, before answering.
    let mut fallback_resp = None;
    if !fallback.is_empty() {
        let mut again = subset(&fetch, |i, p| fallback.contains(&(i, p)));
        let has_data = served
            .values()
            .any(|p| p.records.as_ref().is_some_and(|r| !r.is_empty()));
        if has_data {
            again.max_wait_ms = again.max_wait_ms.min(1);
        }
        fallback_resp = Some(send_primary(&mut inner, &req, &again).await?);
    }
    if !routed.is_empty() && (!primary.topics.is_empty() || !fallback.is_empty()) {
        ctx.tiered.metrics().tiered_split_requests.inc();
    }
    let _ = req.routed.secondary.set(routed);
    let merged = merge(
        &fetch,
        primary_resp.into_iter().chain(fallback_resp),
        &mut served,
    );
    encode(&req, version, merged)
}

/// The partitions of `fetch` that `keep(topic index, partition)` names.
fn subset(fetch: &FetchRequest, keep: impl Fn(usize, i32) -> bool) -> FetchRequest {
    let mut out = fetch.clone();
    for (i, t) in out.topics.iter_mut().enumerate() {
        t.partitions.retain(|p| keep(i, p.partition));
    }
    out.topics.retain(|t| !t.partitions.is_empty());
    out
}

/// What the secondary served, and what falls back to the primary.
struct Sorted {
    /// By (topic index, partition).
    served: HashMap<(usize, i32), PartitionData>,
    fallback: HashSet<(usize, i32)>,
    /// (topic, partition) served by the secondary, for attribution.
    routed: HashSet<(String, i32)>,
}

fn sort_outcomes(t: &Tiered, plan: &[ToSecondary], outcomes: Vec<Outcome>) -> Sorted {
    let mut sorted = Sorted {
        served: HashMap::new(),
        fallback: HashSet::new(),
        routed: HashSet::new(),
    };
    for (s, outcome) in plan.iter().zip(outcomes) {
        let key = (s.topic_idx, s.partition.partition);
        match outcome {
            Outcome::Served(pd) => {
                sorted
                    .routed
                    .insert((s.topic.clone(), s.partition.partition));
                sorted.served.insert(key, *pd);
            }
            Outcome::Fallback(reason) => {
                t.metrics()
                    .tiered_fallbacks
                    .with_label_values(&[reason])
                    .inc();
                debug!(
                    topic = s.topic,
                    partition = s.partition.partition,
                    offset = s.partition.fetch_offset,
                    reason,
                    "served from the primary instead"
                );
                sorted.fallback.insert(key);
            }
        }
    }
    sorted
}

/// One answer in the client's order from the primary's answers and what the secondary
/// served. A top-level error (e.g. a session error) in a primary answer is the answer.
fn merge(
    fetch: &FetchRequest,
    primary: impl Iterator<Item = FetchResponse>,
    served: &mut HashMap<(usize, i32), PartitionData>,
) -> FetchResponse {
    let mut from_primary: HashMap<(usize, i32), PartitionData> = HashMap::new();
    let mut merged = FetchResponse::default();
    for resp in primary {
        if resp.error_code != 0 {
            return resp;
        }
        merged.throttle_time_ms = merged.throttle_time_ms.max(resp.throttle_time_ms);
        merged.session_id = resp.session_id;
        if merged.node_endpoints.is_empty() {
            merged.node_endpoints = resp.node_endpoints;
        }
        for rt in resp.responses {
            let Some(idx) = fetch
                .topics
                .iter()
                .position(|ft| ft.topic == rt.topic && ft.topic_id == rt.topic_id)
            else {
                continue;
            };
            for pd in rt.partitions {
                from_primary.insert((idx, pd.partition_index), pd);
            }
        }
    }
    for (idx, ft) in fetch.topics.iter().enumerate() {
        let partitions: Vec<PartitionData> = ft
            .partitions
            .iter()
            .filter_map(|p| {
                let key = (idx, p.partition);
                from_primary.remove(&key).or_else(|| served.remove(&key))
            })
            .collect();
        if !partitions.is_empty() {
            merged.responses.push(
                FetchableTopicResponse::default()
                    .with_topic(ft.topic.clone())
                    .with_topic_id(ft.topic_id)
                    .with_partitions(partitions),
            );
        }
    }
    merged
}

/// The merged answer, encoded around its record sets (no copy of the records).
fn encode(req: &Request, version: i16, resp: FetchResponse) -> Result<Response, BoxError> {
    let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
    let mut pieces = pieces::encode_fetch(&header, resp, version)?;
    Ok(if pieces.len() == 1 {
        Response::Frame(pieces.remove(0))
    } else {
        Response::Pieces(pieces)
    })
}

/// Send a (reduced) Fetch to the primary under the client's header; decode the answer.
async fn send_primary<S>(
    inner: &mut S,
    req: &Request,
    body: &FetchRequest,
) -> Result<FetchResponse, BoxError>
where
    S: Service<Request, Response = Response, Error = BoxError>,
{
    let mut sub = req.clone();
    sub.set_body(body.clone())?;
    sub.whole_response = true;
    let version = req.meta.api_version;
    let frame = match inner.ready().await?.call(sub).await? {
        Response::Frame(f) => f,
        Response::Stream(_) | Response::Pieces(_) | Response::None => {
            return Err("the primary answered a Fetch without a whole frame".into())
        }
    };
    let (_, resp) = protocol::decode_response::<FetchResponse>(&frame, ApiKey::Fetch, version)?;
    Ok(resp)
}

/// Fetch the planned partitions from the secondary's leaders; one outcome per plan entry.
async fn fetch_secondary(ctx: &Ctx, fetch: &FetchRequest, plan: &[ToSecondary]) -> Vec<Outcome> {
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
