//! The attribution layer: reads Produce, Fetch and the consumer-group APIs as they pass and
//! reports to [`Attribution`]. It never changes a request or a response, and it never fails
//! one: what it cannot decode is forwarded as it is and counted in
//! `tollgate_attribution_errors_total{api}`.
//!
//! - **Produce**: the request's record batches give bytes and records per topic partition
//!   (batch headers only, never decompressed); they are counted when the response
//!   acknowledges the partition (right away for `acks=0`), and partition errors are counted
//!   by error name.
//! - **Fetch**: the request gives each partition's fetch offset. Incremental fetch sessions
//!   (KIP-227) send only what changed, so the layer keeps the connection's session: full
//!   requests replace it, incremental ones update it, forgotten topics leave it. The response
//!   gives each partition's head and record batches. Large responses are not held back:
//!   they go to the client cut-through and are read from the forwarded chunks afterwards.
//! - **Groups**: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit and
//!   ConsumerGroupHeartbeat feed [`crate::groups::Groups`], which ties each fetching
//!   connection to its group (the rule is in that module's docs). Each is applied when the
//!   broker's *answer* says it succeeded: a request governance refused, or the coordinator
//!   rejected, changes nothing. OffsetFetch ties nothing (anyone may ask for a group's
//!   offsets).
//! - **The consumer decision**: for each Fetch (from its whole fetch session) and ListOffsets
//!   this layer decides, once, which group the reading connection belongs to and puts it on
//!   the request ([`Request::tie`]) for governance, routing and lag. When the answer is "no
//!   group", the request waits up to `attribution.tie_wait_ms` for the tier view (another
//!   instance may have seen the group's coordinator traffic, see [`crate::tier`]) before
//!   going on with it, once per connection and set of partitions.
//! - **Fetch from a follower** (`replica_id >= 0`): not tied; governance refuses it.
//! - **Metadata**: topic ids, for Produce v13 and Fetch v13+, which name topics by id.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    ConsumerProtocolAssignment, FetchRequest, FetchResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListOffsetsRequest,
    MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, ProduceRequest, ProduceResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::buf::ByteBuf;
use kafka_protocol::protocol::Decodable;
use tower::{Layer, Service};
use tracing::debug;

use crate::attribution::{Attribution, FetchedPartition, Reader};
use crate::error::BoxError;
use crate::groups::Groups;
use crate::groups::{fingerprint, Binding, TopicPartition, AMBIGUOUS, NO_GROUP};
use crate::heads::{Heads, Observed};
use crate::lag::Lag;
use crate::protocol::{api_name, decode_response_from};
use crate::records::{self, Chunks};
use crate::request::{ConnInfo, Request, Response};
use crate::topic_ids::TopicIds;

/// APIs this layer decodes (their versions are capped in ApiVersions).
pub const ATTRIBUTED_APIS: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::ConsumerGroupHeartbeat,
    ApiKey::ListOffsets,
];

/// The components this layer reads and feeds, each through its own API (peers in the app
/// state, [`crate::app::Shared`]).
#[derive(Clone)]
pub struct Sinks {
    pub attribution: Arc<Attribution>,
    pub heads: Arc<Heads>,
    pub topic_ids: Arc<TopicIds>,
    pub groups: Arc<Groups>,
    pub lag: Arc<Lag>,
}

/// Builds [`AttributionService`]: one per connection, holding that connection's fetch
/// session and group tie, feeding the shared components ([`Sinks`]).
#[derive(Clone)]
pub struct AttributionLayer {
    sinks: Sinks,
}

impl AttributionLayer {
    pub fn new(sinks: Sinks) -> Self {
        Self { sinks }
    }
}

impl<S> Layer<S> for AttributionLayer {
    type Service = AttributionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AttributionService {
            inner,
            state: Arc::new(ConnState {
                sinks: self.sinks.clone(),
                session: Mutex::new(Session::default()),
                conn_id: Mutex::new(None),
            }),
        }
    }
}

/// The attribution layer around one connection's inner service: reads Produce, Fetch and
/// the group APIs both ways, never changes them.
#[derive(Clone)]
pub struct AttributionService<S> {
    inner: S,
    state: Arc<ConnState>,
}

/// Per-connection state: the fetch session and the connection's group.
struct ConnState {
    sinks: Sinks,
    session: Mutex<Session>,
    conn_id: Mutex<Option<u64>>,
}

#[derive(Default)]
struct Session {
    /// Fetch offset of every partition in the connection's fetch session.
    positions: HashMap<TopicPartition, i64>,
    /// The group this connection's fetches are attributed to, and when that was decided.
    binding: Option<Arc<Binding>>,
    /// Partitions changed since the binding was decided.
    dirty: bool,
    /// The partitions (fingerprint) this connection already waited for a tie on.
    waited: Option<u64>,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        if let Some(id) = *self.conn_id.lock().expect("lock") {
            self.sinks.groups.connection_closed(id);
        }
    }
}

/// What the request said that the response handler needs.
enum Pending {
    Produce(Vec<ProducedPartition>),
    Fetch {
        isolation_committed: bool,
        /// Which partitions the routing layer had the secondary serve.
        routed: Arc<crate::request::Routed>,
        tie: Arc<Binding>,
    },
    /// The consumer decision of a ListOffsets (nothing to do with the response).
    ListOffsets(Arc<Binding>),
    Heartbeat {
        group: String,
        member: String,
    },
    LeaveGroup {
        group: String,
        members: Vec<String>,
    },
    OffsetCommit {
        group: String,
        member: String,
        offsets: Vec<(TopicPartition, i64)>,
    },
    JoinGroup {
        group: String,
        protocol_type: String,
        session_timeout: Duration,
    },
    SyncGroup {
        group: String,
        member: String,
        consumer: bool,
    },
    ConsumerGroupHeartbeat {
        group: String,
        leaving: bool,
    },
    Metadata,
}

struct ProducedPartition {
    topic: String,
    partition: i32,
    bytes: u64,
    records: u64,
    offsets: u64,
}

impl<S> Service<Request> for AttributionService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(key) = req.meta.api else {
            return Box::pin(self.inner.call(req));
        };
        if !(ATTRIBUTED_APIS.contains(&key) || key == ApiKey::Metadata) {
            return Box::pin(self.inner.call(req));
        }
        {
            let mut id = self.state.conn_id.lock().expect("lock");
            if id.is_none() {
                *id = Some(req.conn.id);
            }
        }
        let version = req.meta.api_version;
        let conn = req.conn.clone();
        let pending = match req.meta.body_offset {
            Some(_) => match self.state.on_request(key, &req) {
                Ok(p) => p,
                Err(e) => {
                    self.state.decode_failed(key, &conn, &e);
                    None
                }
            },
            None => None,
        };
        let pending = match pending {
            Some(Pending::Fetch {
                isolation_committed,
                tie,
                ..
            }) => {
                req.tie = Some(tie.clone());
                Some(Pending::Fetch {
                    isolation_committed,
                    routed: req.routed.clone(),
                    tie,
                })
            }
            Some(Pending::ListOffsets(tie)) => {
                req.tie = Some(tie);
                None
            }
            p => p,
        };
        let state = self.state.clone();
        let Some(deadline) = self.state.tie_wait(key, &req) else {
            // The common case: decided, no wait; the inner service is called at once.
            let expects_response = req.meta.expects_response;
            let fut = self.inner.call(req);
            return Box::pin(async move {
                let response = fut.await?;
                state.after(key, version, pending, expects_response, response, conn)
            });
        };
        // Waiting: the clone takes this (ready) service's place; the ready one answers later.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        Box::pin(async move {
            state.wait_for_tie(key, &mut req, deadline).await;
            let pending = match pending {
                Some(Pending::Fetch {
                    isolation_committed,
                    routed,
                    ..
                }) => Some(Pending::Fetch {
                    isolation_committed,
                    routed,
                    tie: req.tie.clone().unwrap_or_default(),
                }),
                p => p,
            };
            let expects_response = req.meta.expects_response;
            let response = inner.call(req).await?;
            state.after(key, version, pending, expects_response, response, conn)
        })
    }
}

impl ConnState {
    /// How long this request may wait for the tier to tie it: only a read that is tied to no
    /// group, once per connection and set of partitions.
    fn tie_wait(&self, key: ApiKey, req: &Request) -> Option<Instant> {
        let wait = self.sinks.attribution.tie_wait();
        let tie = req.tie.as_ref()?;
        if wait.is_zero() || tie.group != NO_GROUP {
            return None;
        }
        let print = match key {
            ApiKey::Fetch => fingerprint(&self.session.lock().expect("lock").positions),
            _ => u64::MAX, // ListOffsets: once per connection
        };
        let mut s = self.session.lock().expect("lock");
        if s.waited == Some(print) {
            return None;
        }
        s.waited = Some(print);
        Some(Instant::now() + wait)
    }

    /// Wait until the group view changes in a way that ties this read, or `deadline`.
    async fn wait_for_tie(&self, key: ApiKey, req: &mut Request, deadline: Instant) {
        let groups = &self.sinks.groups;
        groups.want_refresh();
        let partitions = match key {
            ApiKey::Fetch => self.session.lock().expect("lock").positions.clone(),
            _ => list_offsets_partitions(req).unwrap_or_default(),
        };
        let started = Instant::now();
        loop {
            let seen = req.tie.as_ref().map_or(0, |t| t.epoch);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero()
                || tokio::time::timeout(left, groups.changed(seen))
                    .await
                    .is_err()
            {
                break;
            }
            let b = Arc::new(groups.resolve(req.conn.id, &req.conn.instance(), &partitions));
            let tied = b.group != NO_GROUP;
            if key == ApiKey::Fetch {
                let mut s = self.session.lock().expect("lock");
                s.binding = Some(b.clone());
                s.dirty = false;
            }
            req.tie = Some(b);
            if tied {
                break;
            }
        }
        self.sinks
            .attribution
            .metrics()
            .tie_waits
            .with_label_values(&[if req.tie.as_ref().is_some_and(|t| t.group != NO_GROUP) {
                "tied"
            } else {
                "timed_out"
            }])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The broker answered: hand the response to the right reader.
    fn after(
        self: Arc<Self>,
        key: ApiKey,
        version: i16,
        pending: Option<Pending>,
        expects_response: bool,
        response: Response,
        conn: Arc<ConnInfo>,
    ) -> Result<Response, BoxError> {
        let Some(pending) = pending else {
            return Ok(response);
        };
        if !expects_response {
            self.produced_unacknowledged(pending, &conn);
            return Ok(response);
        }
        Ok(match response {
            Response::Frame(frame) => {
                self.on_response_logged(key, version, pending, frame.clone(), &conn);
                Response::Frame(frame)
            }
            Response::Stream(mut s) => {
                let state = self.clone();
                s.tap = Some(Box::new(move |chunks: Vec<Bytes>| {
                    state.on_response_logged(key, version, pending, Chunks::new(chunks), &conn);
                }));
                Response::Stream(s)
            }
            Response::Pieces(pieces) => {
                let buf = Chunks::new(pieces.iter().cloned());
                self.on_response_logged(key, version, pending, buf, &conn);
                Response::Pieces(pieces)
            }
            Response::None => Response::None,
        })
    }

    /// The connection's group for its whole fetch session, decided again only when group
    /// state or the session's partitions changed.
    fn fetch_tie(&self, s: &mut Session, conn: &ConnInfo) -> Arc<Binding> {
        let epoch = self.sinks.groups.epoch();
        match &s.binding {
            Some(b) if b.epoch == epoch && !s.dirty => b.clone(),
            _ => {
                let b = Arc::new(self.sinks.groups.resolve(
                    conn.id,
                    &conn.instance(),
                    &s.positions,
                ));
                if b.group != NO_GROUP {
                    s.waited = None;
                }
                debug!(
                    conn = conn.id,
                    client_id = conn.client_id().unwrap_or_default(),
                    group = b.group,
                    partitions = s.positions.len(),
                    "fetch tie decided"
                );
                s.binding = Some(b.clone());
                s.dirty = false;
                b
            }
        }
    }

    fn decode_failed(&self, key: ApiKey, conn: &ConnInfo, e: &anyhow::Error) {
        debug!(conn = conn.id, api = api_name(key as i16), error = %e,
               "attribution could not decode; forwarded unchanged");
        self.sinks
            .attribution
            .metrics()
            .attribution_errors
            .with_label_values(&[api_name(key as i16)])
            .inc();
    }

    /// Read a request; returns what the response handler needs.
    fn on_request(&self, key: ApiKey, request: &Request) -> anyhow::Result<Option<Pending>> {
        let conn = &*request.conn;
        Ok(match key {
            ApiKey::Produce => Some(self.on_produce_request(request)?),
            ApiKey::Fetch => return self.on_fetch_request(request),
            ApiKey::ListOffsets => {
                let req = request.body::<ListOffsetsRequest>()?;
                if req.replica_id.0 >= 0 {
                    return Ok(None);
                }
                let parts = crate::layers::listed_partitions(&req);
                let tie = self.sinks.groups.resolve(conn.id, &conn.instance(), &parts);
                Some(Pending::ListOffsets(Arc::new(tie)))
            }
            ApiKey::Metadata => Some(Pending::Metadata),
            _ => self.on_group_request(key, request)?,
        })
    }

    /// A Produce request: bytes, records and offsets per partition, from the batch headers.
    fn on_produce_request(&self, request: &Request) -> anyhow::Result<Pending> {
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

    /// A Fetch request: the connection's fetch session and its group tie.
    fn on_fetch_request(&self, request: &Request) -> anyhow::Result<Option<Pending>> {
        let (a, conn) = (&self.sinks, &*request.conn);
        // Decoded once here, for every layer below (governance, routing).
        let req = request.body::<FetchRequest>()?;
        if req.replica_id.0 >= 0 || req.replica_state.replica_id.0 >= 0 {
            return Ok(None); // poses as a follower broker: governance refuses it
        }
        let mut s = self.session.lock().expect("lock");
        // session_epoch 0 opens a session and -1 fetches without one: both list every
        // partition. Higher epochs are incremental.
        if req.session_epoch <= 0 {
            s.positions.clear();
            s.dirty = true;
        }
        for f in &req.forgotten_topics_data {
            let topic = a.topic_ids.topic_of(&f.topic, &f.topic_id);
            for p in &f.partitions {
                s.positions.remove(&(topic.clone(), *p));
                s.dirty = true;
            }
        }
        for t in &req.topics {
            let topic = a.topic_ids.topic_of(&t.topic, &t.topic_id);
            for p in &t.partitions {
                let prev = s
                    .positions
                    .insert((topic.clone(), p.partition), p.fetch_offset);
                s.dirty |= prev.is_none();
            }
        }
        let tie = self.fetch_tie(&mut s, conn);
        Ok(Some(Pending::Fetch {
            isolation_committed: req.isolation_level == 1,
            routed: Arc::default(),
            tie,
        }))
    }

    /// A group API request: what its answer will be applied with.
    fn on_group_request(&self, key: ApiKey, request: &Request) -> anyhow::Result<Option<Pending>> {
        let a = &self.sinks;
        Ok(match key {
            ApiKey::JoinGroup => {
                let req = request.body::<JoinGroupRequest>()?;
                Some(Pending::JoinGroup {
                    group: req.group_id.to_string(),
                    protocol_type: req.protocol_type.to_string(),
                    session_timeout: Duration::from_millis(req.session_timeout_ms.max(0) as u64),
                })
            }
            ApiKey::SyncGroup => {
                let req = request.body::<SyncGroupRequest>()?;
                let consumer = req
                    .protocol_type
                    .as_ref()
                    .is_none_or(|t| t.as_str() == "consumer");
                Some(Pending::SyncGroup {
                    group: req.group_id.to_string(),
                    member: req.member_id.to_string(),
                    consumer,
                })
            }
            ApiKey::Heartbeat => {
                let req = request.body::<HeartbeatRequest>()?;
                Some(Pending::Heartbeat {
                    group: req.group_id.to_string(),
                    member: req.member_id.to_string(),
                })
            }
            ApiKey::LeaveGroup => {
                let req = request.body::<LeaveGroupRequest>()?;
                let mut members: Vec<String> = req
                    .members
                    .iter()
                    .map(|m| m.member_id.to_string())
                    .collect();
                if !req.member_id.is_empty() {
                    members.push(req.member_id.to_string());
                }
                Some(Pending::LeaveGroup {
                    group: req.group_id.to_string(),
                    members,
                })
            }
            ApiKey::OffsetCommit => {
                let req = request.body::<OffsetCommitRequest>()?;
                let offsets = req
                    .topics
                    .iter()
                    .flat_map(|t| {
                        let topic = a.topic_ids.topic_of(&t.name, &t.topic_id);
                        t.partitions
                            .iter()
                            .map(move |p| ((topic.clone(), p.partition_index), p.committed_offset))
                    })
                    .collect();
                Some(Pending::OffsetCommit {
                    group: req.group_id.to_string(),
                    member: req.member_id.to_string(),
                    offsets,
                })
            }
            ApiKey::ConsumerGroupHeartbeat => {
                let req = request.body::<ConsumerGroupHeartbeatRequest>()?;
                Some(Pending::ConsumerGroupHeartbeat {
                    group: req.group_id.to_string(),
                    leaving: req.member_epoch < 0,
                })
            }
            _ => None,
        })
    }

    /// An `acks=0` produce: nothing will acknowledge it; count what was sent.
    fn produced_unacknowledged(&self, pending: Pending, conn: &ConnInfo) {
        if let Pending::Produce(parts) = pending {
            for p in &parts {
                self.count_produced(p, conn);
            }
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

    fn count_produced(&self, p: &ProducedPartition, conn: &ConnInfo) {
        let a = &self.sinks;
        a.attribution.count_produce(
            &conn.principal(),
            &conn.client_id().unwrap_or_default(),
            conn.peer.ip(),
            &p.topic,
            p.bytes,
            p.records,
        );
        conn.note_produced(&p.topic);
    }

    fn on_response_logged<B: ByteBuf>(
        &self,
        key: ApiKey,
        version: i16,
        pending: Pending,
        buf: B,
        conn: &ConnInfo,
    ) {
        if let Err(e) = self.on_response(key, version, pending, buf, conn) {
            self.decode_failed(key, conn, &e);
        }
    }

    fn on_response<B: ByteBuf>(
        &self,
        key: ApiKey,
        version: i16,
        pending: Pending,
        buf: B,
        conn: &ConnInfo,
    ) -> anyhow::Result<()> {
        let a = &self.sinks;
        match pending {
            Pending::Produce(parts) => {
                let (_, resp) = decode_response_from::<ProduceResponse, B>(buf, key, version)?;
                self.on_produce_response(&resp, &parts, conn);
            }
            Pending::Fetch {
                isolation_committed,
                routed,
                tie,
            } => {
                let (_, resp) = decode_response_from::<FetchResponse, B>(buf, key, version)?;
                let secondary = routed.secondary.get();
                self.on_fetch_response(&resp, isolation_committed, conn, secondary, &tie.group);
            }
            Pending::ListOffsets(_) => {}
            Pending::Metadata => {
                let (_, resp) = decode_response_from::<MetadataResponse, B>(buf, key, version)?;
                a.topic_ids.learn(
                    resp.topics
                        .iter()
                        .filter_map(|t| t.name.as_ref().map(|n| (t.topic_id, n.to_string()))),
                );
            }
            group => self.on_group_response(key, version, group, buf, conn)?,
        }
        Ok(())
    }

    /// The answer to a group API (Heartbeat, LeaveGroup, OffsetCommit, JoinGroup, SyncGroup,
    /// ConsumerGroupHeartbeat): applied to the group model when it says it succeeded.
    fn on_group_response<B: ByteBuf>(
        &self,
        key: ApiKey,
        version: i16,
        pending: Pending,
        buf: B,
        conn: &ConnInfo,
    ) -> anyhow::Result<()> {
        let a = &self.sinks;
        match pending {
            Pending::Heartbeat { group, member } => {
                let (_, resp) = decode_response_from::<HeartbeatResponse, B>(buf, key, version)?;
                if resp.error_code == 0 {
                    a.groups.alive(&group, &member);
                }
            }
            Pending::LeaveGroup { group, members } => {
                let (_, resp) = decode_response_from::<LeaveGroupResponse, B>(buf, key, version)?;
                if resp.error_code == 0 {
                    // v3+ answers per member; a member the coordinator refused stays.
                    let refused: Vec<&str> = resp
                        .members
                        .iter()
                        .filter(|m| m.error_code != 0)
                        .map(|m| m.member_id.as_str())
                        .collect();
                    let gone: Vec<String> = members
                        .into_iter()
                        .filter(|m| !refused.contains(&m.as_str()))
                        .collect();
                    a.groups.left(&group, &gone);
                }
            }
            Pending::OffsetCommit {
                group,
                member,
                offsets,
            } => {
                let (_, resp) = decode_response_from::<OffsetCommitResponse, B>(buf, key, version)?;
                self.on_commit_response(&resp, &group, &member, offsets, conn);
            }
            Pending::JoinGroup {
                group,
                protocol_type,
                session_timeout,
            } => {
                let (_, resp) = decode_response_from::<JoinGroupResponse, B>(buf, key, version)?;
                if resp.error_code == 0 {
                    a.groups.joined(
                        &group,
                        &resp.member_id,
                        resp.generation_id,
                        &protocol_type,
                        session_timeout,
                        conn.instance(),
                        conn.id,
                    );
                }
            }
            Pending::SyncGroup {
                group,
                member,
                consumer,
            } => {
                let (_, resp) = decode_response_from::<SyncGroupResponse, B>(buf, key, version)?;
                let consumer = consumer
                    && resp
                        .protocol_type
                        .as_ref()
                        .is_none_or(|t| t.as_str() == "consumer");
                if resp.error_code == 0 && consumer {
                    let assignment = decode_assignment(resp.assignment.clone())?;
                    a.groups.assigned(&group, &member, assignment);
                    conn.note_group(&group);
                }
            }
            Pending::ConsumerGroupHeartbeat { group, leaving } => {
                let (_, resp) =
                    decode_response_from::<ConsumerGroupHeartbeatResponse, B>(buf, key, version)?;
                if resp.error_code == 0 {
                    let assignment = resp.assignment.as_ref().map(|asg| {
                        asg.topic_partitions
                            .iter()
                            .flat_map(|tp| {
                                let topic = a.topic_ids.name(&tp.topic_id);
                                tp.partitions.iter().map(move |p| (topic.clone(), *p))
                            })
                            .collect::<BTreeSet<_>>()
                    });
                    let member = resp
                        .member_id
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    a.groups.heartbeat_848(
                        &group,
                        &member,
                        resp.member_epoch,
                        assignment,
                        conn.instance(),
                        conn.id,
                        leaving,
                    );
                    conn.note_group(&group);
                }
            }
            Pending::Produce(_)
            | Pending::Fetch { .. }
            | Pending::ListOffsets(_)
            | Pending::Metadata => {}
        }
        Ok(())
    }
    /// A Produce answer: acknowledged partitions are counted and move their heads (one call to
    /// the head store for the whole response); failed ones are counted by error.
    fn on_produce_response(
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
                }
                (code, _) => {
                    a.attribution
                        .count_produce_error(&client_id, &p.topic, error_name(code))
                }
            }
        }
        a.heads
            .observe_produced(acked.iter().map(|(tp, h, b, o)| (tp, *h, *b, *o)));
    }

    /// Commits the coordinator accepted: lag, and the committing client's offset-user tie.
    fn on_commit_response(
        &self,
        resp: &OffsetCommitResponse,
        group: &str,
        member: &str,
        offsets: Vec<(TopicPartition, i64)>,
        conn: &ConnInfo,
    ) {
        let a = &self.sinks;
        let mut failed: std::collections::HashSet<TopicPartition> = Default::default();
        for t in &resp.topics {
            let topic = a.topic_ids.topic_of(&t.name, &t.topic_id);
            for p in t.partitions.iter().filter(|p| p.error_code != 0) {
                failed.insert((topic.clone(), p.partition_index));
            }
        }
        let accepted: Vec<(TopicPartition, i64)> = offsets
            .into_iter()
            .filter(|(tp, _)| !failed.contains(tp))
            .collect();
        if accepted.is_empty() {
            return;
        }
        if !member.is_empty() {
            a.groups.alive(group, member);
        }
        for (tp, o) in &accepted {
            a.lag.observe_commit(group, tp.clone(), *o);
        }
        a.groups
            .committed(group, conn.instance(), conn.id, accepted);
    }

    /// A Fetch answer: heads, counts, the activity rows and the group's fetch positions.
    /// One lock per component for the whole response (the connection's session once, the
    /// head store twice: to record the heads and to read the bytes-per-offset estimates
    /// back).
    fn on_fetch_response(
        &self,
        resp: &FetchResponse,
        read_committed: bool,
        conn: &ConnInfo,
        secondary: Option<&std::collections::HashSet<(String, i32)>>,
        group: &str,
    ) {
        let a = &self.sinks;
        conn.note_group(group);
        // This connection's session, held for the response (nothing else waits on it but the
        // connection's own next request): the positions are read, not copied.
        let session = self.session.lock().expect("lock");
        let positions = &session.positions;
        let parts = fetched_parts(resp, &a.topic_ids, positions);
        a.heads.observe(
            parts
                .iter()
                .filter(|f| f.error_code == 0)
                .map(|f| (&f.tp, f.head)),
        );
        let bpo = a.heads.bytes_per_offset(parts.iter().map(|f| &f.tp));
        let mut fetched = Vec::new();
        let mut fetched_bytes: HashMap<&TopicPartition, u64> = HashMap::new();
        for (f, bpo) in parts.iter().zip(bpo).filter(|(f, _)| f.bytes > 0) {
            fetched_bytes.insert(&f.tp, f.bytes);
            let head = if read_committed && f.head.last_stable_offset >= 0 {
                f.head.last_stable_offset
            } else {
                f.head.high_watermark
            };
            let from = f.fetch_offset.unwrap_or(head);
            let on_secondary = secondary.is_some_and(|set| set.contains(&f.tp));
            fetched.push(FetchedPartition {
                topic: f.tp.0.clone(),
                temperature: a.attribution.classify(head - from, bpo),
                cluster: if on_secondary { "secondary" } else { "primary" },
                bytes: f.bytes,
                records: f.records,
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
        a.attribution.count_fetches(&reader, &fetched);
        // Every partition of the session was fetched (incremental sessions leave out the ones
        // without news, but the broker fetched them all for this request).
        if group != NO_GROUP && group != AMBIGUOUS {
            a.lag.observe_fetches(
                group,
                positions
                    .iter()
                    .map(|(tp, offset)| (tp, *offset, fetched_bytes.get(tp).copied().unwrap_or(0))),
                read_committed,
            );
        }
    }
}

/// One partition of a Fetch response, as attribution reads it.
struct FetchedPart {
    tp: TopicPartition,
    error_code: i16,
    head: Observed,
    /// The offset the session fetched it from.
    fetch_offset: Option<i64>,
    bytes: u64,
    records: u64,
}

/// Every partition of a Fetch response: its head, and what its complete batches hold.
fn fetched_parts(
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
                bytes: s.bytes,
                records: s.records,
            });
        }
    }
    out
}

/// The partitions a ListOffsets request names.
fn list_offsets_partitions(req: &Request) -> anyhow::Result<HashMap<TopicPartition, i64>> {
    let lo = req.body::<ListOffsetsRequest>()?;
    Ok(crate::layers::listed_partitions(&lo))
}

/// Decode a consumer-protocol assignment: an int16 version, then the assignment.
fn decode_assignment(mut b: Bytes) -> anyhow::Result<BTreeSet<TopicPartition>> {
    if b.len() < 2 {
        return Ok(BTreeSet::new()); // an empty assignment (e.g. more members than partitions)
    }
    let version = bytes::Buf::get_i16(&mut b);
    let a = ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3))?;
    Ok(a.assigned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.to_string(), *p)))
        .collect())
}

/// The Kafka name of an error code (`NOT_LEADER_OR_FOLLOWER`), or `UNKNOWN_SERVER_ERROR`.
pub fn error_name(code: i16) -> &'static str {
    static NAMES: std::sync::OnceLock<HashMap<i16, &'static str>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (-1..=512)
            .filter_map(|c| {
                ResponseError::try_from_code(c).map(|e| {
                    let name: &'static str =
                        Box::leak(screaming_snake(&format!("{e:?}")).into_boxed_str());
                    (c, name)
                })
            })
            .collect()
    });
    names.get(&code).copied().unwrap_or("UNKNOWN_SERVER_ERROR")
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AttributionConfig;
    use crate::groups::Instance;
    use crate::metrics::Metrics;
    use crate::protocol;
    use crate::request::ListenerKind;
    use kafka_protocol::messages::{
        leave_group_request, offset_commit_request, offset_commit_response, RequestHeader,
        ResponseHeader,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use tower::ServiceExt;

    fn request<T: Encodable>(key: ApiKey, version: i16, body: &T, conn: &Arc<ConnInfo>) -> Request {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(9);
        let frame = protocol::encode_request(&header, body).unwrap();
        Request::new(
            protocol::parse_request(&frame).unwrap(),
            frame,
            conn.clone(),
        )
    }

    /// Send `req` through an attribution layer whose broker answers `answer`.
    async fn send<R: Encodable>(
        layer: &AttributionLayer,
        req: Request,
        key: ApiKey,
        answer: &R,
    ) -> AttributionService<impl Service<Request, Response = Response, Error = BoxError> + Clone>
    {
        let h = ResponseHeader::default().with_correlation_id(9);
        let frame = protocol::encode_response(&h, answer, key, req.meta.api_version).unwrap();
        let broker = tower::service_fn(move |_r: Request| {
            let f = frame.clone();
            async move { Ok::<_, BoxError>(Response::Frame(f)) }
        });
        let mut svc = layer.layer(broker);
        let _ = svc.ready().await.unwrap().call(req).await.unwrap();
        svc
    }

    fn sinks() -> (Sinks, AttributionLayer, Arc<ConnInfo>) {
        let a = Sinks {
            attribution: Arc::new(Attribution::new(
                AttributionConfig::default(),
                Arc::new(Metrics::new()),
            )),
            heads: Arc::default(),
            topic_ids: Arc::default(),
            groups: Arc::default(),
            lag: Arc::new(Lag::new(Default::default())),
        };
        let conn = Arc::new(ConnInfo::new(
            3,
            "10.0.0.1:4000".parse().unwrap(),
            ListenerKind::Bootstrap,
        ));
        (a.clone(), AttributionLayer::new(a), conn)
    }

    #[tokio::test]
    async fn group_state_follows_the_brokers_answer_not_the_request() {
        let (a, layer, conn) = sinks();
        let me = Instance {
            principal: crate::identity::ANONYMOUS.into(),
            client_id: String::new(),
            host: conn.peer.ip(),
        };
        a.groups
            .joined("g", "m", 1, "consumer", Duration::from_secs(10), me, 1);
        let leave = LeaveGroupRequest::default()
            .with_group_id(StrBytes::from_static_str("g").into())
            .with_members(vec![leave_group_request::MemberIdentity::default()
                .with_member_id(StrBytes::from_static_str("m"))]);
        // The coordinator refused the LeaveGroup (UNKNOWN_MEMBER_ID): the member stays.
        let refused = LeaveGroupResponse::default().with_error_code(25);
        let req = request(ApiKey::LeaveGroup, 3, &leave, &conn);
        send(&layer, req, ApiKey::LeaveGroup, &refused).await;
        assert_eq!(a.groups.view()[0].members.len(), 1);
        let req = request(ApiKey::LeaveGroup, 3, &leave, &conn);
        send(
            &layer,
            req,
            ApiKey::LeaveGroup,
            &LeaveGroupResponse::default(),
        )
        .await;
        assert!(a.groups.view()[0].members.is_empty());
    }

    #[tokio::test]
    async fn only_accepted_commits_make_offset_users_and_only_while_connected() {
        let (a, layer, conn) = sinks();
        let commit = OffsetCommitRequest::default()
            .with_group_id(StrBytes::from_static_str("x").into())
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(StrBytes::from_static_str("t").into())
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(7),
                    ]),
            ]);
        let answer = |code: i16| {
            OffsetCommitResponse::default().with_topics(vec![
                offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(StrBytes::from_static_str("t").into())
                    .with_partitions(vec![
                        offset_commit_response::OffsetCommitResponsePartition::default()
                            .with_partition_index(0)
                            .with_error_code(code),
                    ]),
            ])
        };
        // Refused (GROUP_AUTHORIZATION_FAILED, as governance answers): no tie.
        let req = request(ApiKey::OffsetCommit, 8, &commit, &conn);
        drop(send(&layer, req, ApiKey::OffsetCommit, &answer(30)).await);
        assert!(a.groups.view().iter().all(|g| g.offset_users.is_empty()));
        // Accepted: an offset user, until its connection closes.
        let req = request(ApiKey::OffsetCommit, 8, &commit, &conn);
        let svc = send(&layer, req, ApiKey::OffsetCommit, &answer(0)).await;
        assert_eq!(a.groups.view()[0].offset_users.len(), 1);
        drop(svc);
        assert!(a.groups.view()[0].offset_users.is_empty());
    }

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(29), "TOPIC_AUTHORIZATION_FAILED");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(30000), "UNKNOWN_SERVER_ERROR");
    }
}
