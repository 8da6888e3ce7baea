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
//!   inside the buffer the secondary's response arrived in. The merged answer goes up decoded
//!   ([`Response::Fetch`]) and is encoded once, on its way to the client, around those
//!   buffers ([`crate::wire::pieces`]), so the records are never copied on the way; the
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
//! rewrite layer; its merged answer says which partitions the secondary served
//! ([`crate::layers::request::Answer::from_secondary`]), so attribution, above it, counts
//! `tollgate_tiered_fetched_*{cluster}`. Who is reading (a probation or demoted group) comes
//! from the consumer decision on the request.
//!
//! This file decides, splits and merges; the secondary's side (its Fetches, the checks of its
//! answers, rebasing) is in `secondary.rs`, and the read-ahead of a backfill's next secondary
//! Fetch in `ahead.rs`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ResponseHeader};
use tower::{Layer, Service, ServiceExt};
use tracing::debug;

use crate::brokers::topic_ids::TopicIds;
use crate::consumers::heads::Heads;
use crate::error::BoxError;
use crate::layers::request::{Request, Response};
use crate::tiered::{Route, Segment, Tiered, Translation};
use crate::wire::protocol;

mod ahead;
mod secondary;

use ahead::ReadAhead;
use secondary::fetch_secondary;

/// Builds [`RoutingService`]; a no-op without `tiered.enabled`.
#[derive(Clone)]
pub(crate) struct RoutingLayer {
    ctx: Option<Arc<Ctx>>,
}

struct Ctx {
    tiered: Arc<Tiered>,
    heads: Arc<Heads>,
    topic_ids: Arc<TopicIds>,
}

/// What routing reads besides the tiered-read state and the consumer decision: partition
/// heads and topic names.
pub(crate) struct RoutingInputs {
    pub(crate) heads: Arc<Heads>,
    pub(crate) topic_ids: Arc<TopicIds>,
}

impl RoutingLayer {
    pub(crate) fn new(tiered: Option<Arc<Tiered>>, inputs: RoutingInputs) -> Self {
        RoutingLayer {
            ctx: tiered.map(|tiered| {
                Arc::new(Ctx {
                    tiered,
                    heads: inputs.heads,
                    topic_ids: inputs.topic_ids,
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
            ahead: Arc::default(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RoutingService<S> {
    inner: S,
    ctx: Option<Arc<Ctx>>,
    /// This connection's read-ahead on the secondary (`ahead.rs`).
    ahead: Arc<ReadAhead>,
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
        Box::pin(split(ctx, inner, self.ahead.clone(), req, fetch, plan))
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
    // Who is reading, and in which tier: the consumer decision made once for this request.
    let decided = req.consumer.as_deref();
    let probation = decided.is_some_and(|c| c.on_probation());
    // Pinned to the secondary: a probation group (waits for the secondary), or a group over
    // its read budget with on_over_budget = "demote".
    let pinned = if probation {
        Some("probation")
    } else if decided.is_some_and(|c| c.demoted) {
        Some("over_budget")
    } else {
        None
    };
    let consumer = match decided.and_then(|c| c.group()) {
        Some(group) => group.to_string(),
        None => format!("client:{}", req.conn.client_id().unwrap_or_default()),
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
    ahead: Arc<ReadAhead>,
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
    let secondary_fut = fetch_secondary(&ctx, &ahead, &fetch, &plan);
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
    let merged = merge(
        &fetch,
        primary_resp.into_iter().chain(fallback_resp),
        &mut served,
    );
    let mut answer = answer(&req, version, merged);
    if let Response::Fetch(a) = &mut answer {
        a.from_secondary = routed;
    }
    Ok(answer)
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

/// The merged answer, decoded: the layers above read and change it as it is, and it is
/// encoded once, on its way to the client.
fn answer(req: &Request, version: i16, resp: FetchResponse) -> Response {
    let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
    Response::fetch(header, version, resp)
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
        Response::Fetch(a) => return Ok(a.body),
        Response::Stream(_) | Response::Pieces(_) | Response::Metadata(_) | Response::None => {
            return Err("the primary answered a Fetch without a whole frame".into())
        }
    };
    let (_, resp) = protocol::decode_response::<FetchResponse>(&frame, ApiKey::Fetch, version)?;
    Ok(resp)
}
