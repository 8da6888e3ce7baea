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
//! - **Groups**: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch and
//!   ConsumerGroupHeartbeat feed [`crate::groups::Groups`], which ties each fetching
//!   connection to its group (the rule is in that module's docs).
//! - **Metadata**: topic ids, for Produce v13 and Fetch v13+, which name topics by id.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    ConsumerProtocolAssignment, FetchRequest, FetchResponse, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, MetadataResponse, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, ProduceResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::buf::ByteBuf;
use kafka_protocol::protocol::Decodable;
use tower::{Layer, Service};
use tracing::debug;

use crate::attribution::Attribution;
use crate::error::BoxError;
use crate::groups::{Binding, TopicPartition};
use crate::protocol::{api_name, decode_response_from};
use crate::records::{self, Chunks};
use crate::stack::{ConnInfo, Request, Response};

/// APIs this layer decodes (their versions are capped in ApiVersions).
pub const ATTRIBUTED_APIS: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::ConsumerGroupHeartbeat,
];

/// See the module docs.
#[derive(Clone)]
pub struct AttributionLayer {
    attribution: Arc<Attribution>,
}

impl AttributionLayer {
    pub fn new(attribution: Arc<Attribution>) -> Self {
        Self { attribution }
    }
}

impl<S> Layer<S> for AttributionLayer {
    type Service = AttributionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AttributionService {
            inner,
            state: Arc::new(ConnState {
                attribution: self.attribution.clone(),
                session: Mutex::new(Session::default()),
                conn_id: Mutex::new(None),
            }),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct AttributionService<S> {
    inner: S,
    state: Arc<ConnState>,
}

/// Per-connection state: the fetch session and the connection's group.
struct ConnState {
    attribution: Arc<Attribution>,
    session: Mutex<Session>,
    conn_id: Mutex<Option<u64>>,
}

#[derive(Default)]
struct Session {
    /// Fetch offset of every partition in the connection's fetch session.
    positions: HashMap<TopicPartition, i64>,
    /// The group this connection's fetches are attributed to, and when that was decided.
    binding: Option<Binding>,
    /// Partitions changed since the binding was decided.
    dirty: bool,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        if let Some(id) = *self.conn_id.lock().expect("lock") {
            self.attribution.groups.connection_closed(id);
        }
    }
}

/// What the request said that the response handler needs.
enum Pending {
    Produce(Vec<ProducedPartition>),
    Fetch {
        isolation_committed: bool,
        /// Which partitions the routing layer had the secondary serve.
        routed: Arc<crate::stack::Routed>,
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
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
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
        let expects_response = req.meta.expects_response;
        let pending = match req.meta.body_offset {
            Some(offset) => {
                let body = req.frame.slice(offset..);
                match self.state.on_request(key, version, body, &conn) {
                    Ok(p) => p,
                    Err(e) => {
                        self.state.decode_failed(key, &conn, &e);
                        None
                    }
                }
            }
            None => None,
        };
        let pending = match pending {
            Some(Pending::Fetch {
                isolation_committed,
                ..
            }) => Some(Pending::Fetch {
                isolation_committed,
                routed: req.routed.clone(),
            }),
            p => p,
        };
        let fut = self.inner.call(req);
        let state = self.state.clone();
        Box::pin(async move {
            let response = fut.await?;
            let Some(pending) = pending else {
                return Ok(response);
            };
            if !expects_response {
                state.produced_unacknowledged(pending, &conn);
                return Ok(response);
            }
            Ok(match response {
                Response::Frame(frame) => {
                    state.on_response_logged(key, version, pending, frame.clone(), &conn);
                    Response::Frame(frame)
                }
                Response::Stream(mut s) => {
                    let state = state.clone();
                    s.tap = Some(Box::new(move |chunks: Vec<Bytes>| {
                        state.on_response_logged(key, version, pending, Chunks::new(chunks), &conn);
                    }));
                    Response::Stream(s)
                }
                Response::None => Response::None,
            })
        })
    }
}

impl ConnState {
    fn decode_failed(&self, key: ApiKey, conn: &ConnInfo, e: &anyhow::Error) {
        debug!(conn = conn.id, api = api_name(key as i16), error = %e,
               "attribution could not decode; forwarded unchanged");
        self.attribution
            .metrics()
            .attribution_errors
            .with_label_values(&[api_name(key as i16)])
            .inc();
    }

    /// Read a request; returns what the response handler needs.
    fn on_request(
        &self,
        key: ApiKey,
        version: i16,
        mut body: Bytes,
        conn: &ConnInfo,
    ) -> anyhow::Result<Option<Pending>> {
        let a = &self.attribution;
        Ok(match key {
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut body, version)?;
                let mut parts = Vec::new();
                for t in &req.topic_data {
                    let topic = a.topic_of(&t.name, &t.topic_id);
                    for p in &t.partition_data {
                        let s =
                            records::summarize(p.records.as_deref().unwrap_or_default(), i64::MIN);
                        parts.push(ProducedPartition {
                            topic: topic.clone(),
                            partition: p.index,
                            bytes: s.bytes,
                            records: s.records,
                            offsets: s.offsets,
                        });
                    }
                }
                Some(Pending::Produce(parts))
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut body, version)?;
                if req.replica_id.0 >= 0 || req.replica_state.replica_id.0 >= 0 {
                    return Ok(None); // a follower broker, not a consumer
                }
                let mut s = self.session.lock().expect("lock");
                // session_epoch 0 opens a session and -1 fetches without one: both list every
                // partition. Higher epochs are incremental.
                if req.session_epoch <= 0 {
                    s.positions.clear();
                    s.dirty = true;
                }
                for f in &req.forgotten_topics_data {
                    let topic = a.topic_of(&f.topic, &f.topic_id);
                    for p in &f.partitions {
                        s.positions.remove(&(topic.clone(), *p));
                        s.dirty = true;
                    }
                }
                for t in &req.topics {
                    let topic = a.topic_of(&t.topic, &t.topic_id);
                    for p in &t.partitions {
                        let prev = s
                            .positions
                            .insert((topic.clone(), p.partition), p.fetch_offset);
                        s.dirty |= prev.is_none();
                    }
                }
                Some(Pending::Fetch {
                    isolation_committed: req.isolation_level == 1,
                    routed: Arc::default(),
                })
            }
            ApiKey::JoinGroup => {
                let req = JoinGroupRequest::decode(&mut body, version)?;
                Some(Pending::JoinGroup {
                    group: req.group_id.to_string(),
                    protocol_type: req.protocol_type.to_string(),
                    session_timeout: Duration::from_millis(req.session_timeout_ms.max(0) as u64),
                })
            }
            ApiKey::SyncGroup => {
                let req = SyncGroupRequest::decode(&mut body, version)?;
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
                let req = HeartbeatRequest::decode(&mut body, version)?;
                a.groups.alive(&req.group_id, &req.member_id);
                None
            }
            ApiKey::LeaveGroup => {
                let req = LeaveGroupRequest::decode(&mut body, version)?;
                let mut ids: Vec<String> = req
                    .members
                    .iter()
                    .map(|m| m.member_id.to_string())
                    .collect();
                if !req.member_id.is_empty() {
                    ids.push(req.member_id.to_string());
                }
                if a.groups.left(&req.group_id, &ids) {
                    // The group left: its lag series go (a crashed consumer sends no
                    // LeaveGroup and stays monitored, as `stopped`).
                    a.lag.forget(&req.group_id);
                }
                None
            }
            ApiKey::OffsetCommit => {
                let req = OffsetCommitRequest::decode(&mut body, version)?;
                let parts: Vec<(TopicPartition, Option<i64>)> = req
                    .topics
                    .iter()
                    .flat_map(|t| {
                        let topic = a.topic_of(&t.name, &t.topic_id);
                        t.partitions.iter().map(move |p| {
                            ((topic.clone(), p.partition_index), Some(p.committed_offset))
                        })
                    })
                    .collect();
                if !req.member_id.is_empty() {
                    a.groups.alive(&req.group_id, &req.member_id);
                }
                for (tp, offset) in &parts {
                    if let Some(o) = offset {
                        a.lag.observe_commit(&req.group_id, tp.clone(), *o);
                    }
                }
                a.groups.offsets_used(&req.group_id, conn.instance(), parts);
                None
            }
            ApiKey::OffsetFetch => {
                let req = OffsetFetchRequest::decode(&mut body, version)?;
                let who = conn.instance();
                if version < 8 {
                    let parts: Vec<(TopicPartition, Option<i64>)> = req
                        .topics
                        .iter()
                        .flatten()
                        .flat_map(|t| {
                            t.partition_indexes
                                .iter()
                                .map(move |p| ((t.name.to_string(), *p), None))
                        })
                        .collect();
                    if !parts.is_empty() {
                        a.groups.offsets_used(&req.group_id, who, parts);
                    }
                } else {
                    for g in &req.groups {
                        let parts: Vec<(TopicPartition, Option<i64>)> = g
                            .topics
                            .iter()
                            .flatten()
                            .flat_map(|t| {
                                let topic = a.topic_of(&t.name, &t.topic_id);
                                t.partition_indexes
                                    .iter()
                                    .map(move |p| ((topic.clone(), *p), None))
                            })
                            .collect();
                        if !parts.is_empty() {
                            a.groups.offsets_used(&g.group_id, who.clone(), parts);
                        }
                    }
                }
                None
            }
            ApiKey::ConsumerGroupHeartbeat => {
                let req = ConsumerGroupHeartbeatRequest::decode(&mut body, version)?;
                Some(Pending::ConsumerGroupHeartbeat {
                    group: req.group_id.to_string(),
                    leaving: req.member_epoch < 0,
                })
            }
            ApiKey::Metadata => Some(Pending::Metadata),
            _ => None,
        })
    }

    /// An `acks=0` produce: nothing will acknowledge it; count what was sent.
    fn produced_unacknowledged(&self, pending: Pending, conn: &ConnInfo) {
        if let Pending::Produce(parts) = pending {
            for p in parts {
                self.count_produced(&p, conn);
            }
        }
    }

    fn count_produced(&self, p: &ProducedPartition, conn: &ConnInfo) {
        let a = &self.attribution;
        a.count_produce(
            conn.principal(),
            &conn.client_id().unwrap_or_default(),
            conn.peer.ip(),
            &p.topic,
            p.bytes,
            p.records,
        );
        a.observe_produced(&p.topic, p.partition, p.bytes, p.offsets);
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
        let a = &self.attribution;
        match pending {
            Pending::Produce(parts) => {
                let (_, resp) = decode_response_from::<ProduceResponse, B>(buf, key, version)?;
                let mut errors: HashMap<(String, i32), i16> = HashMap::new();
                let mut bases: HashMap<(String, i32), i64> = HashMap::new();
                for t in &resp.responses {
                    let topic = a.topic_of(&t.name, &t.topic_id);
                    for p in &t.partition_responses {
                        if p.error_code != 0 {
                            errors.insert((topic.clone(), p.index), p.error_code);
                        } else {
                            bases.insert((topic.clone(), p.index), p.base_offset);
                        }
                    }
                }
                let client_id = conn.client_id().unwrap_or_default();
                for p in &parts {
                    let key = (p.topic.clone(), p.partition);
                    match errors.get(&key) {
                        None => {
                            self.count_produced(p, conn);
                            if let Some(base) = bases.get(&key).filter(|b| **b >= 0) {
                                // The head is now at least past this batch.
                                a.lag.observe_head(
                                    &p.topic,
                                    p.partition,
                                    base + p.offsets as i64,
                                    -1,
                                );
                            }
                        }
                        Some(code) => {
                            a.count_produce_error(&client_id, &p.topic, error_name(*code))
                        }
                    }
                }
            }
            Pending::Fetch {
                isolation_committed,
                routed,
            } => {
                let (_, resp) = decode_response_from::<FetchResponse, B>(buf, key, version)?;
                self.on_fetch_response(&resp, isolation_committed, conn, routed.secondary.get());
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
                                let topic = a.topic_name(&tp.topic_id);
                                tp.partitions.iter().map(move |p| (topic.clone(), *p))
                            })
                            .collect::<BTreeSet<_>>()
                    });
                    let member = resp
                        .member_id
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    if a.groups.heartbeat_848(
                        &group,
                        &member,
                        resp.member_epoch,
                        assignment,
                        conn.instance(),
                        conn.id,
                        leaving,
                    ) {
                        a.lag.forget(&group);
                    }
                    conn.note_group(&group);
                }
            }
            Pending::Metadata => {
                let (_, resp) = decode_response_from::<MetadataResponse, B>(buf, key, version)?;
                a.learn_topic_ids(
                    resp.topics
                        .iter()
                        .filter_map(|t| t.name.as_ref().map(|n| (t.topic_id, n.to_string()))),
                );
            }
        }
        Ok(())
    }

    fn on_fetch_response(
        &self,
        resp: &FetchResponse,
        read_committed: bool,
        conn: &ConnInfo,
        secondary: Option<&std::collections::HashSet<(String, i32)>>,
    ) {
        let a = &self.attribution;
        let client_id = conn.client_id().unwrap_or_default();
        let host = conn.peer.ip();
        let group = {
            let mut s = self.session.lock().expect("lock");
            let epoch = a.groups.epoch();
            let fresh = s.binding.as_ref().is_some_and(|b| b.epoch == epoch) && !s.dirty;
            if !fresh {
                let b = a.groups.resolve(conn.id, &conn.instance(), &s.positions);
                s.binding = Some(b);
                s.dirty = false;
            }
            s.binding
                .as_ref()
                .map(|b| b.group.clone())
                .unwrap_or_default()
        };
        conn.note_group(&group);
        let mut fetched_bytes: HashMap<(String, i32), u64> = HashMap::new();
        for t in &resp.responses {
            let topic = a.topic_of(&t.topic, &t.topic_id);
            for p in &t.partitions {
                let fetch_offset = self
                    .session
                    .lock()
                    .expect("lock")
                    .positions
                    .get(&(topic.clone(), p.partition_index))
                    .copied();
                let records = p.records.as_deref().unwrap_or_default();
                let s = records::summarize(records, fetch_offset.unwrap_or(i64::MIN));
                if p.error_code == 0 {
                    a.lag.observe_head(
                        &topic,
                        p.partition_index,
                        p.high_watermark,
                        p.last_stable_offset,
                    );
                    a.observe_head(
                        &topic,
                        p.partition_index,
                        p.high_watermark,
                        p.last_stable_offset,
                        p.log_start_offset,
                        s.bytes,
                        s.offsets,
                    );
                }
                if s.bytes == 0 {
                    continue;
                }
                fetched_bytes.insert((topic.clone(), p.partition_index), s.bytes);
                let head = if read_committed && p.last_stable_offset >= 0 {
                    p.last_stable_offset
                } else {
                    p.high_watermark
                };
                let from = fetch_offset.unwrap_or(head);
                let bpo = a
                    .head(&topic, p.partition_index)
                    .map(|h| h.bytes_per_offset)
                    .unwrap_or(0.0);
                let temperature = a.classify(head - from, bpo);
                a.count_fetch(
                    &group,
                    conn.principal(),
                    &client_id,
                    host,
                    &topic,
                    temperature,
                    s.bytes,
                    s.records,
                );
                let tp = (topic.clone(), p.partition_index);
                let cluster = if secondary.is_some_and(|set| set.contains(&tp)) {
                    "secondary"
                } else {
                    "primary"
                };
                a.count_tiered_fetch(&group, &topic, cluster, s.bytes, s.records);
                conn.note_fetched(&topic);
            }
        }
        // Every partition of the session was fetched (incremental sessions leave out the ones
        // without news, but the broker fetched them all for this request).
        if group != crate::groups::NO_GROUP && group != crate::groups::AMBIGUOUS {
            let session = self.session.lock().expect("lock");
            a.lag.observe_fetches(
                &group,
                session
                    .positions
                    .iter()
                    .map(|(tp, offset)| (tp, *offset, fetched_bytes.get(tp).copied().unwrap_or(0))),
                read_committed,
            );
        }
    }
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

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(29), "TOPIC_AUTHORIZATION_FAILED");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(30000), "UNKNOWN_SERVER_ERROR");
    }
}
