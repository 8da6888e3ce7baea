//! The governance layer: the consumer onboarding policy ([`crate::registry`]) at the door.
//!
//! - **Group APIs** (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//!   TxnOffsetCommit, DescribeGroups, ConsumerGroupHeartbeat, ConsumerGroupDescribe,
//!   ShareGroupHeartbeat, ShareGroupDescribe) for a group that is not registered, or that a
//!   different principal owns, are answered by Tollgate with GROUP_AUTHORIZATION_FAILED (30),
//!   with the onboarding hint as the error message where the API version carries one. They
//!   never reach the broker. A request naming several groups (DescribeGroups, OffsetFetch v8+,
//!   the describe APIs) is refused whole when any of its groups is refused: every group in it
//!   gets the error (ask for the registered ones separately).
//! - **Share groups** (KIP-932: ShareGroupHeartbeat, ShareFetch, ShareAcknowledge) are not
//!   governed topic by topic yet, so in `enforce` mode they are refused for every group with
//!   GROUP_AUTHORIZATION_FAILED (in `shadow` mode logged and passed). Share group reads would
//!   otherwise bypass the topic rule and every lag check.
//! - **Reads** (Fetch, ListOffsets): the reading client instance is tied to its group by the
//!   rule in [`crate::groups`]. A partition is refused with TOPIC_AUTHORIZATION_FAILED (29)
//!   when the client is in no group and not on the standalone allow-list, when its group is
//!   unregistered or owned by another principal, or when the topic is not among the group's
//!   allowed topics. Refused partitions are taken out of the request and answered with the
//!   error; the rest go to the broker and the two are merged in the client's order. A request
//!   with nothing left is answered by Tollgate alone.
//! - **Authentication** (`governance.require_authentication`): a connection with no
//!   authenticated principal (mTLS or a SASL exchange the broker accepted; see
//!   [`crate::security`]) is refused every group API and every read, as above, with
//!   `reason="unauthenticated"`, whatever the mode.
//! - **Producers** are never affected: Produce and the transactional producer APIs pass.
//! - **Modes**: `enforce` refuses; `shadow` lets the request through. Both log one structured
//!   line per refused (or would-be-refused) request and count it in
//!   `tollgate_rejected_requests_total{reason,api,mode}`. The registry's `mode` applies to
//!   unregistered groups and group-less consumers, an entry's own `mode` to its group.
//!
//! A governed request that cannot be decoded is not forwarded: its connection is closed (as
//! for a malformed frame) and counted in `tollgate_request_errors_total{reason="policy_decode"}`.
//!
//! Fetch sessions (KIP-227): refused partitions never enter the broker's session, because
//! they are stripped from every request; the client gets the error each time it names them.
//! An incremental fetch does not name the partitions already in its session, so after a
//! registry reload they would stay readable: the first incremental fetch of a connection
//! whose session was admitted under an older registry (or on another connection) is answered
//! with FETCH_SESSION_ID_NOT_FOUND, and the client starts a new session with a full fetch
//! that names every partition and is checked whole. Counted in
//! `tollgate_fetch_sessions_reset_total`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use kafka_protocol::messages::{
    consumer_group_describe_response, describe_groups_response, fetch_response,
    list_offsets_response, offset_commit_response, offset_fetch_response,
    share_group_describe_response, txn_offset_commit_response, ApiKey,
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, DescribeGroupsRequest, DescribeGroupsResponse, FetchRequest,
    FetchResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    ResponseHeader, ShareAcknowledgeRequest, ShareAcknowledgeResponse, ShareFetchRequest,
    ShareFetchResponse, ShareGroupDescribeRequest, ShareGroupDescribeResponse,
    ShareGroupHeartbeatRequest, ShareGroupHeartbeatResponse, SyncGroupRequest, SyncGroupResponse,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tower::{Layer, Service};
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::{BoxError, PolicyDecodeError};
use crate::groups::{Binding, TopicPartition, AMBIGUOUS, NO_GROUP};
use crate::metrics::Metrics;
use crate::protocol::{self, api_name};
use crate::registry::{GroupVerdict, Mode, Registry, RegistryHandle};
use crate::request::{ConnInfo, Request, Response};
use crate::topic_ids::TopicIds;

/// GROUP_AUTHORIZATION_FAILED.
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
/// TOPIC_AUTHORIZATION_FAILED.
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// CLUSTER_AUTHORIZATION_FAILED.
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
/// The `reason` label of a refused read that posed as a follower broker.
pub const REPLICA_REASON: &str = "poses_as_broker";

/// APIs this layer decodes (their versions are capped in ApiVersions).
pub const GOVERNED_APIS: &[ApiKey] = &[
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::TxnOffsetCommit,
    ApiKey::DescribeGroups,
    ApiKey::ConsumerGroupHeartbeat,
    ApiKey::ConsumerGroupDescribe,
    ApiKey::ShareGroupHeartbeat,
    ApiKey::ShareGroupDescribe,
    ApiKey::ShareFetch,
    ApiKey::ShareAcknowledge,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
];

/// FETCH_SESSION_ID_NOT_FOUND: the client drops its session and sends a full fetch.
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

/// Why a request was (or would have been) refused; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The group has no registry entry.
    UnregisteredGroup,
    /// The group's entry names another principal.
    PrincipalMismatch,
    /// A read from a client in no group and not on the standalone allow-list.
    GrouplessConsumer,
    /// The group (or standalone entry) may not read this topic.
    TopicNotAllowed,
    /// Share groups (KIP-932) are not governed yet.
    ShareGroup,
    /// No authenticated principal, and `governance.require_authentication` is set.
    Unauthenticated,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::UnregisteredGroup => "unregistered_group",
            Reason::PrincipalMismatch => "principal_mismatch",
            Reason::GrouplessConsumer => "groupless_consumer",
            Reason::TopicNotAllowed => "topic_not_allowed",
            Reason::ShareGroup => "share_group_unsupported",
            Reason::Unauthenticated => "unauthenticated",
        }
    }
}

/// Builds [`GovernanceService`] with the registry in force, topic names (for requests that
/// name topics by id) and the refusal metrics. The group tie comes on the request.
#[derive(Clone)]
pub struct GovernanceLayer {
    registry: Arc<RegistryHandle>,
    topic_ids: Arc<TopicIds>,
    metrics: Arc<Metrics>,
    logs: Arc<LogLimiter>,
    require_auth: bool,
}

/// One refusal log line per (reason, client instance) per [`LOG_INTERVAL`], saying how many
/// were left out since the last; the metric counts every refusal. Clients retry refused reads many times
/// a second, and an unbounded log is a denial of service of its own.
#[derive(Default)]
pub struct LogLimiter(std::sync::Mutex<HashMap<String, (std::time::Instant, u64)>>);

/// The [`LogLimiter`] key of a refusal: its reason and the client instance (principal,
/// client id, address).
pub fn log_key(reason: &str, client_id: &str, conn: &ConnInfo) -> String {
    format!(
        "{reason}|{}|{client_id}|{}",
        &conn.principal(),
        conn.peer.ip()
    )
}

/// See [`LogLimiter`].
pub const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Most keys a [`LogLimiter`] remembers.
const LOG_KEYS: usize = 10_000;

impl LogLimiter {
    /// Keys remembered (for tests).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// `Some(suppressed since the last line)` when a line for `key` is due now.
    pub fn admit(&self, key: String) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut m = self.0.lock().expect("lock");
        if m.len() >= LOG_KEYS {
            m.retain(|_, (t, _)| now.duration_since(*t) < LOG_INTERVAL);
            if m.len() >= LOG_KEYS {
                m.clear();
            }
        }
        match m.get_mut(&key) {
            Some((t, n)) if now.duration_since(*t) < LOG_INTERVAL => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let suppressed = *n;
                (*t, *n) = (now, 0);
                Some(suppressed)
            }
            None => {
                m.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

impl GovernanceLayer {
    pub fn new(
        registry: Arc<RegistryHandle>,
        topic_ids: Arc<TopicIds>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry,
            topic_ids,
            metrics,
            logs: Arc::default(),
            require_auth: false,
        }
    }

    /// Refuse consumer requests from connections without an authenticated principal
    /// (`governance.require_authentication`), whatever the registry's mode.
    pub fn requiring_authentication(mut self, on: bool) -> Self {
        self.require_auth = on;
        self
    }
}

impl<S> Layer<S> for GovernanceLayer {
    type Service = GovernanceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GovernanceService {
            inner,
            policy: Policy {
                registry: self.registry.clone(),
                topic_ids: self.topic_ids.clone(),
                metrics: self.metrics.clone(),
                logs: self.logs.clone(),
                require_auth: self.require_auth,
                session: Arc::default(),
            },
        }
    }
}

/// The governance layer around one connection's inner service: checks every group request,
/// Fetch and ListOffsets against the registry and answers refusals itself.
#[derive(Clone)]
pub struct GovernanceService<S> {
    inner: S,
    policy: Policy,
}

#[derive(Clone)]
struct Policy {
    registry: Arc<RegistryHandle>,
    topic_ids: Arc<TopicIds>,
    metrics: Arc<Metrics>,
    logs: Arc<LogLimiter>,
    require_auth: bool,
    /// The registry this connection's fetch session was last checked whole under. Weak: it
    /// keeps no old registry in use, yet its address cannot be reused by a newer registry
    /// while it is held (a plain pointer could be, and would compare equal).
    session: Arc<std::sync::Mutex<std::sync::Weak<Registry>>>,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

/// What to do with a request.
enum Action {
    Pass,
    /// Answer with this frame; the broker never sees the request.
    Answer(Bytes),
    /// Send this body instead (refused partitions removed), then add their errors to the
    /// response.
    Strip {
        body: Stripped,
        refused: Refused,
    },
}

/// A read with its refused partitions removed.
enum Stripped {
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
}

/// Refused partitions of a read, by topic as the client named it.
#[derive(Debug, Clone, Default)]
struct Refused {
    /// (topic name, topic id, partition).
    partitions: Vec<(StrBytes, Uuid, i32)>,
}

impl<S> Service<Request> for GovernanceService<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let registry = self.policy.registry.get();
        if registry.is_none() && matches!(req.meta.api, Some(ApiKey::Fetch | ApiKey::ListOffsets)) {
            // Governance off, and still no client may pose as a broker. (With a registry,
            // decide_fetch / decide_list_offsets check it on the body they decode anyway.)
            match self.policy.refuse_replica(&req) {
                Ok(None) => {}
                Ok(Some(frame)) => return Box::pin(async move { Ok(Response::Frame(frame)) }),
                Err(e) => return Box::pin(async move { Err(policy_error(&req, &e)) }),
            }
        }
        let (Some(key), Some(registry)) = (req.meta.api, registry) else {
            return Box::pin(self.inner.call(req));
        };
        if !GOVERNED_APIS.contains(&key) {
            return Box::pin(self.inner.call(req));
        }
        let action = match self.policy.decide(key, &req, &registry) {
            Ok(a) => a,
            Err(e) => {
                // Fail closed: a governed request the policy cannot read must not reach the
                // broker (it could be a way around the policy). Like a malformed frame, it
                // closes this one connection; `tollgate_request_errors_total` counts it.
                let err = policy_error(&req, &e);
                return Box::pin(async move { Err(err) });
            }
        };
        match action {
            Action::Pass => Box::pin(self.inner.call(req)),
            Action::Answer(frame) => Box::pin(async move { Ok(Response::Frame(frame)) }),
            Action::Strip { body, refused } => {
                let replaced = match body {
                    Stripped::Fetch(f) => req.set_body(f),
                    Stripped::ListOffsets(lo) => req.set_body(lo),
                };
                if let Err(e) = replaced {
                    let err = policy_error(&req, &e);
                    return Box::pin(async move { Err(err) });
                }
                req.whole_response = true;
                let version = req.meta.api_version;
                let fut = self.inner.call(req);
                Box::pin(async move {
                    match fut.await? {
                        Response::Frame(f) => {
                            Ok(Response::Frame(add_refused(key, version, &f, &refused)?))
                        }
                        other => Ok(other),
                    }
                })
            }
        }
    }
}

/// Could this Fetch or ListOffsets carry `replica_id >= 0`? Read without decoding the body:
/// the replica id is its first field (ListOffsets; Fetch before v15, which moved it into a
/// tagged field, so from v15 on this says "maybe" and the body is decoded).
fn claims_replica(key: ApiKey, version: i16, body: &[u8]) -> bool {
    if key == ApiKey::Fetch && version >= 15 {
        return true;
    }
    match body.get(..4) {
        Some(b) => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) >= 0,
        None => true, // let the decoder say what is wrong
    }
}

fn policy_error(req: &Request, e: &anyhow::Error) -> BoxError {
    Box::new(PolicyDecodeError {
        api: api_name(req.meta.api.map_or(-1, |k| k as i16)),
        version: req.meta.api_version,
        reason: e.to_string(),
    })
}

impl Policy {
    /// A Fetch or ListOffsets with `replica_id >= 0` claims to come from a follower broker.
    /// Followers talk to their leader directly, never through Tollgate: refuse it whole with
    /// CLUSTER_AUTHORIZATION_FAILED (as a broker answers a follower fetch it does not allow).
    fn refuse_replica(&self, req: &Request) -> anyhow::Result<Option<Bytes>> {
        let (Some(key), Some(offset)) = (req.meta.api, req.meta.body_offset) else {
            return Ok(None);
        };
        let version = req.meta.api_version;
        let mut body = req.frame.slice(offset..);
        if !claims_replica(key, version, &body) {
            return Ok(None);
        }
        let (replica, refused) = match key {
            ApiKey::Fetch => {
                let f = FetchRequest::decode(&mut body, version)?;
                let replica = f.replica_id.0.max(f.replica_state.replica_id.0);
                (replica, fetch_partitions(&f))
            }
            _ => {
                let lo = ListOffsetsRequest::decode(&mut body, version)?;
                (lo.replica_id.0, listed_refused(&lo))
            }
        };
        if replica < 0 {
            return Ok(None);
        }
        self.replica_answer(req, replica, &refused).map(Some)
    }

    /// The whole-request CLUSTER_AUTHORIZATION_FAILED answer to a read posing as follower
    /// `replica`; counted and logged (rate-limited).
    fn replica_answer(
        &self,
        req: &Request,
        replica: i32,
        refused: &Refused,
    ) -> anyhow::Result<Bytes> {
        let key = req.meta.api.unwrap_or(ApiKey::Fetch);
        let version = req.meta.api_version;
        let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
        self.metrics
            .rejected_requests
            .with_label_values(&[REPLICA_REASON, api_name(key as i16), "enforce"])
            .inc();
        let conn = &req.conn;
        let client_id = conn.client_id().unwrap_or_default();
        if let Some(suppressed) = self
            .logs
            .admit(format!("replica|{client_id}|{}", conn.peer.ip()))
        {
            warn!(decision = "reject", reason = REPLICA_REASON, api = api_name(key as i16),
                  replica_id = replica, client_id, peer = %conn.peer, conn = conn.id, suppressed,
                  "request refused: a client posed as a follower broker (replica_id >= 0)");
        }
        match key {
            ApiKey::Fetch => {
                let mut resp = FetchResponse::default()
                    .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                    .with_session_id(0);
                append_fetch_errors(&mut resp, refused, CLUSTER_AUTHORIZATION_FAILED);
                protocol::encode_response(&header, &resp, key, version)
            }
            _ => {
                let mut resp = ListOffsetsResponse::default();
                append_list_offsets_errors(&mut resp, refused, CLUSTER_AUTHORIZATION_FAILED);
                protocol::encode_response(&header, &resp, key, version)
            }
        }
    }

    fn decide(&self, key: ApiKey, req: &Request, reg: &Arc<Registry>) -> anyhow::Result<Action> {
        let Some(offset) = req.meta.body_offset else {
            return Ok(Action::Pass);
        };
        let version = req.meta.api_version;
        let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
        let conn = &req.conn;
        let hint = StrBytes::from_string(reg.onboarding_hint());
        // Group APIs: one verdict per named group.
        let groups: Vec<String> = match key {
            ApiKey::JoinGroup => vec![req.body::<JoinGroupRequest>()?.group_id.to_string()],
            ApiKey::SyncGroup => vec![req.body::<SyncGroupRequest>()?.group_id.to_string()],
            ApiKey::Heartbeat => vec![req.body::<HeartbeatRequest>()?.group_id.to_string()],
            ApiKey::LeaveGroup => vec![req.body::<LeaveGroupRequest>()?.group_id.to_string()],
            ApiKey::OffsetCommit => vec![req.body::<OffsetCommitRequest>()?.group_id.to_string()],
            ApiKey::TxnOffsetCommit => {
                vec![req.body::<TxnOffsetCommitRequest>()?.group_id.to_string()]
            }
            ApiKey::ConsumerGroupHeartbeat => {
                vec![req
                    .body::<ConsumerGroupHeartbeatRequest>()?
                    .group_id
                    .to_string()]
            }
            ApiKey::ShareGroupHeartbeat | ApiKey::ShareFetch | ApiKey::ShareAcknowledge => {
                return self.decide_share(key, req, reg, &header);
            }
            ApiKey::OffsetFetch => {
                let r = req.body::<OffsetFetchRequest>()?;
                if version < 8 {
                    vec![r.group_id.to_string()]
                } else {
                    r.groups.iter().map(|g| g.group_id.to_string()).collect()
                }
            }
            ApiKey::DescribeGroups => req
                .body::<DescribeGroupsRequest>()?
                .groups
                .iter()
                .map(|g| g.to_string())
                .collect(),
            ApiKey::ConsumerGroupDescribe => req
                .body::<ConsumerGroupDescribeRequest>()?
                .group_ids
                .iter()
                .map(|g| g.to_string())
                .collect(),
            ApiKey::ShareGroupDescribe => req
                .body::<ShareGroupDescribeRequest>()?
                .group_ids
                .iter()
                .map(|g| g.to_string())
                .collect(),
            ApiKey::Fetch => return self.decide_fetch(req, reg, &header),
            ApiKey::ListOffsets => return self.decide_list_offsets(req, reg, &header),
            _ => return Ok(Action::Pass),
        };
        let mut refuse = false;
        for g in &groups {
            let (reason, mode, entry) = match reg.group_verdict(g, &conn.principal()) {
                _ if self.unauthenticated(conn) => (Reason::Unauthenticated, Mode::Enforce, None),
                GroupVerdict::Registered(_) => continue,
                GroupVerdict::Unregistered => (Reason::UnregisteredGroup, reg.mode, None),
                GroupVerdict::WrongPrincipal(e) => (
                    Reason::PrincipalMismatch,
                    e.mode.unwrap_or(reg.mode),
                    Some(e.name()),
                ),
            };
            self.record(key, conn, reason, mode, g, None, entry.as_deref(), reg);
            refuse |= mode == Mode::Enforce;
        }
        if !refuse {
            return Ok(Action::Pass);
        }
        // A refusal is rare: its answer decodes the request again, as its own type.
        let mut body = req.frame.slice(offset..);
        Ok(Action::Answer(group_refusal(
            key, version, &mut body, &header, &hint,
        )?))
    }

    /// Log and count one refused (or, in shadow mode, would-be-refused) decision.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        key: ApiKey,
        conn: &ConnInfo,
        reason: Reason,
        mode: Mode,
        group: &str,
        topic: Option<&str>,
        entry: Option<&str>,
        reg: &Registry,
    ) {
        self.metrics
            .rejected_requests
            .with_label_values(&[reason.label(), api_name(key as i16), mode.label()])
            .inc();
        let client_id = conn.client_id().unwrap_or_default();
        // Per (reason, client instance): a client that names a new group or topic in every
        // request (invented names) still gets one line per interval, not one per name.
        let key_text = log_key(reason.label(), &client_id, conn);
        let Some(suppressed) = self.logs.admit(key_text) else {
            return;
        };
        let software = conn.view().software_name.unwrap_or_default();
        match mode {
            Mode::Enforce => warn!(
                decision = "reject", mode = mode.label(), reason = reason.label(),
                api = api_name(key as i16), group, topic = topic.unwrap_or(""),
                entry = entry.unwrap_or(""), client_id, principal = &*conn.principal(),
                peer = %conn.peer, software, conn = conn.id, suppressed,
                onboarding = reg.onboarding.as_deref().unwrap_or(""),
                "consumer policy: request refused"
            ),
            Mode::Shadow => info!(
                decision = "would_reject", mode = mode.label(), reason = reason.label(),
                api = api_name(key as i16), group, topic = topic.unwrap_or(""),
                entry = entry.unwrap_or(""), client_id, principal = &*conn.principal(),
                peer = %conn.peer, software, conn = conn.id, suppressed,
                onboarding = reg.onboarding.as_deref().unwrap_or(""),
                "consumer policy (shadow): request would be refused"
            ),
        }
    }

    /// Which partitions of a read may not be served, and whether any refusal is enforced.
    /// Logs (rate-limited) and counts one refusal per (reason, topic). `tie` is the consumer
    /// decision the attribution layer made for this request.
    fn refused_reads(
        &self,
        key: ApiKey,
        conn: &ConnInfo,
        reg: &Registry,
        tie: Option<&Binding>,
        partitions: &HashMap<TopicPartition, i64>,
    ) -> HashSet<TopicPartition> {
        let group = tie.map_or(NO_GROUP, |t| t.group.as_str());
        let mut refused = HashSet::new();
        let mut logged: HashSet<(Reason, String)> = HashSet::new();
        for tp in partitions.keys() {
            let topic = tp.0.as_str();
            let verdict = match group {
                _ if self.unauthenticated(conn) => {
                    Some((Reason::Unauthenticated, Mode::Enforce, None))
                }
                NO_GROUP => self.standalone_verdict(conn, reg, topic),
                // Several groups match equally: allowed only if every one of them may read it.
                AMBIGUOUS => tie
                    .into_iter()
                    .flat_map(|t| t.candidates.iter())
                    .find_map(|g| group_read_verdict(reg, g, &conn.principal(), topic)),
                group => group_read_verdict(reg, group, &conn.principal(), topic),
            };
            let Some((reason, mode, entry)) = verdict else {
                continue;
            };
            if logged.insert((reason, topic.to_string())) {
                self.record(
                    key,
                    conn,
                    reason,
                    mode,
                    group,
                    Some(topic),
                    entry.as_deref(),
                    reg,
                );
            }
            if mode == Mode::Enforce {
                refused.insert(tp.clone());
            }
        }
        refused
    }

    /// Refused for want of a principal (`governance.require_authentication`).
    fn unauthenticated(&self, conn: &ConnInfo) -> bool {
        self.require_auth && !conn.is_authenticated()
    }

    /// A read from a client in no group: only the standalone allow-list lets it through.
    fn standalone_verdict(
        &self,
        conn: &ConnInfo,
        reg: &Registry,
        topic: &str,
    ) -> Option<(Reason, Mode, Option<String>)> {
        match reg.standalone_for(&conn.client_id().unwrap_or_default(), &conn.principal()) {
            Some(s) if s.allows_topic(topic) => None,
            Some(_) => Some((Reason::TopicNotAllowed, reg.mode, None)),
            None => Some((Reason::GrouplessConsumer, reg.mode, None)),
        }
    }

    /// Share groups are refused in enforce mode (see the module docs).
    fn decide_share(
        &self,
        key: ApiKey,
        req: &Request,
        reg: &Registry,
        header: &ResponseHeader,
    ) -> anyhow::Result<Action> {
        let version = req.meta.api_version;
        let mut body = req.frame.slice(req.meta.body_offset.unwrap_or(0)..);
        let group = match key {
            ApiKey::ShareGroupHeartbeat => {
                Some(ShareGroupHeartbeatRequest::decode(&mut body, version)?.group_id)
            }
            ApiKey::ShareFetch => ShareFetchRequest::decode(&mut body, version)?.group_id,
            _ => ShareAcknowledgeRequest::decode(&mut body, version)?.group_id,
        };
        let group = group.map(|g| g.to_string()).unwrap_or_default();
        let mode = match reg.group_verdict(&group, &req.conn.principal()) {
            GroupVerdict::Registered(e) => e.mode.unwrap_or(reg.mode),
            _ => reg.mode,
        };
        self.record(
            key,
            &req.conn,
            Reason::ShareGroup,
            mode,
            &group,
            None,
            None,
            reg,
        );
        if mode != Mode::Enforce {
            return Ok(Action::Pass);
        }
        let msg = Some(StrBytes::from_static_str(
            "share groups are not supported through Tollgate yet; use a consumer group",
        ));
        const E: i16 = GROUP_AUTHORIZATION_FAILED;
        Ok(Action::Answer(match key {
            ApiKey::ShareGroupHeartbeat => protocol::encode_response(
                header,
                &ShareGroupHeartbeatResponse::default()
                    .with_error_code(E)
                    .with_error_message(msg),
                key,
                version,
            )?,
            ApiKey::ShareFetch => protocol::encode_response(
                header,
                &ShareFetchResponse::default()
                    .with_error_code(E)
                    .with_error_message(msg),
                key,
                version,
            )?,
            _ => protocol::encode_response(
                header,
                &ShareAcknowledgeResponse::default()
                    .with_error_code(E)
                    .with_error_message(msg),
                key,
                version,
            )?,
        }))
    }

    /// An incremental fetch (KIP-227) on a session that was not checked whole under the
    /// registry in force: `Some(answer)` that makes the client start a new session.
    fn stale_session(
        &self,
        fetch: &FetchRequest,
        reg: &Arc<Registry>,
        header: &ResponseHeader,
        version: i16,
    ) -> anyhow::Result<Option<Bytes>> {
        let mut checked = self.session.lock().expect("lock");
        if fetch.session_epoch <= 0 {
            // A full fetch names every partition; it is checked whole below.
            *checked = Arc::downgrade(reg);
            return Ok(None);
        }
        if std::sync::Weak::ptr_eq(&checked, &Arc::downgrade(reg)) {
            return Ok(None);
        }
        self.metrics.fetch_sessions_reset.inc();
        let resp = FetchResponse::default()
            .with_error_code(FETCH_SESSION_ID_NOT_FOUND)
            .with_session_id(0);
        Ok(Some(protocol::encode_response(
            header,
            &resp,
            ApiKey::Fetch,
            version,
        )?))
    }

    fn decide_fetch(
        &self,
        req: &Request,
        reg: &Arc<Registry>,
        header: &ResponseHeader,
    ) -> anyhow::Result<Action> {
        let version = req.meta.api_version;
        let fetch = req.body::<FetchRequest>()?;
        let replica = fetch.replica_id.0.max(fetch.replica_state.replica_id.0);
        if replica >= 0 {
            let refused = fetch_partitions(&fetch);
            return Ok(Action::Answer(self.replica_answer(req, replica, &refused)?));
        }
        if let Some(answer) = self.stale_session(&fetch, reg, header, version)? {
            return Ok(Action::Answer(answer));
        }
        let a = &self.topic_ids;
        let partitions: HashMap<TopicPartition, i64> = fetch
            .topics
            .iter()
            .flat_map(|t| {
                let topic = a.topic_of(&t.topic, &t.topic_id);
                t.partitions
                    .iter()
                    .map(move |p| ((topic.clone(), p.partition), p.fetch_offset))
            })
            .collect();
        if partitions.is_empty() {
            return Ok(Action::Pass);
        }
        let refused_set = self.refused_reads(
            ApiKey::Fetch,
            &req.conn,
            reg,
            req.tie.as_deref(),
            &partitions,
        );
        if refused_set.is_empty() {
            return Ok(Action::Pass);
        }
        let mut refused = Refused::default();
        let mut fetch = FetchRequest::clone(&fetch);
        for t in &mut fetch.topics {
            let topic = a.topic_of(&t.topic, &t.topic_id);
            t.partitions.retain(|p| {
                let out = refused_set.contains(&(topic.clone(), p.partition));
                if out {
                    refused
                        .partitions
                        .push((t.topic.0.clone(), t.topic_id, p.partition));
                }
                !out
            });
        }
        fetch.topics.retain(|t| !t.partitions.is_empty());
        if fetch.topics.is_empty() {
            // Nothing left for the broker. No session is opened or kept for this answer.
            let resp = FetchResponse::default()
                .with_session_id(0)
                .with_responses(Vec::new());
            let mut resp = resp;
            append_fetch_errors(&mut resp, &refused, TOPIC_AUTHORIZATION_FAILED);
            return Ok(Action::Answer(protocol::encode_response(
                header,
                &resp,
                ApiKey::Fetch,
                version,
            )?));
        }
        Ok(Action::Strip {
            body: Stripped::Fetch(fetch),
            refused,
        })
    }

    fn decide_list_offsets(
        &self,
        req: &Request,
        reg: &Registry,
        header: &ResponseHeader,
    ) -> anyhow::Result<Action> {
        let version = req.meta.api_version;
        let mut lo = ListOffsetsRequest::clone(&*req.body::<ListOffsetsRequest>()?);
        if lo.replica_id.0 >= 0 {
            let refused = listed_refused(&lo);
            return Ok(Action::Answer(self.replica_answer(
                req,
                lo.replica_id.0,
                &refused,
            )?));
        }
        let partitions = crate::layers::listed_partitions(&lo);
        if partitions.is_empty() {
            return Ok(Action::Pass);
        }
        let refused_set = self.refused_reads(
            ApiKey::ListOffsets,
            &req.conn,
            reg,
            req.tie.as_deref(),
            &partitions,
        );
        if refused_set.is_empty() {
            return Ok(Action::Pass);
        }
        let mut refused = Refused::default();
        for t in &mut lo.topics {
            let topic = t.name.to_string();
            t.partitions.retain(|p| {
                let out = refused_set.contains(&(topic.clone(), p.partition_index));
                if out {
                    refused
                        .partitions
                        .push((t.name.0.clone(), Uuid::nil(), p.partition_index));
                }
                !out
            });
        }
        lo.topics.retain(|t| !t.partitions.is_empty());
        if lo.topics.is_empty() {
            let mut resp = ListOffsetsResponse::default();
            append_list_offsets_errors(&mut resp, &refused, TOPIC_AUTHORIZATION_FAILED);
            return Ok(Action::Answer(protocol::encode_response(
                header,
                &resp,
                ApiKey::ListOffsets,
                version,
            )?));
        }
        Ok(Action::Strip {
            body: Stripped::ListOffsets(lo),
            refused,
        })
    }
}

/// Every partition a Fetch names, as refused.
fn fetch_partitions(f: &FetchRequest) -> Refused {
    Refused {
        partitions: f
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.clone(), t.topic_id, p.partition))
            })
            .collect(),
    }
}

/// Every partition a ListOffsets names, as refused.
fn listed_refused(lo: &ListOffsetsRequest) -> Refused {
    Refused {
        partitions: lo
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.0.clone(), Uuid::nil(), p.partition_index))
            })
            .collect(),
    }
}

fn append_fetch_errors(resp: &mut FetchResponse, refused: &Refused, code: i16) {
    for (name, id, partition) in &refused.partitions {
        let idx = resp
            .responses
            .iter()
            .position(|t| &t.topic.0 == name && &t.topic_id == id);
        let idx = match idx {
            Some(i) => i,
            None => {
                resp.responses.push(
                    fetch_response::FetchableTopicResponse::default()
                        .with_topic(name.clone().into())
                        .with_topic_id(*id),
                );
                resp.responses.len() - 1
            }
        };
        resp.responses[idx].partitions.push(
            fetch_response::PartitionData::default()
                .with_partition_index(*partition)
                .with_error_code(code)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1),
        );
    }
}

fn append_list_offsets_errors(resp: &mut ListOffsetsResponse, refused: &Refused, code: i16) {
    for (name, _, partition) in &refused.partitions {
        let idx = match resp.topics.iter().position(|t| &t.name.0 == name) {
            Some(i) => i,
            None => {
                resp.topics.push(
                    list_offsets_response::ListOffsetsTopicResponse::default()
                        .with_name(name.clone().into()),
                );
                resp.topics.len() - 1
            }
        };
        resp.topics[idx].partitions.push(
            list_offsets_response::ListOffsetsPartitionResponse::default()
                .with_partition_index(*partition)
                .with_error_code(code)
                .with_timestamp(-1)
                .with_offset(-1),
        );
    }
}

/// May a reader tied to `group` read `topic`? `None` when it may.
fn group_read_verdict(
    reg: &Registry,
    group: &str,
    principal: &str,
    topic: &str,
) -> Option<(Reason, Mode, Option<String>)> {
    match reg.group_verdict(group, principal) {
        GroupVerdict::Registered(e) if e.allows_topic(topic) => None,
        GroupVerdict::Registered(e) => Some((
            Reason::TopicNotAllowed,
            e.mode.unwrap_or(reg.mode),
            Some(e.name()),
        )),
        GroupVerdict::Unregistered => Some((Reason::UnregisteredGroup, reg.mode, None)),
        GroupVerdict::WrongPrincipal(e) => Some((
            Reason::PrincipalMismatch,
            e.mode.unwrap_or(reg.mode),
            Some(e.name()),
        )),
    }
}

/// Merge refused partitions into the broker's answer to a stripped request.
fn add_refused(
    key: ApiKey,
    version: i16,
    frame: &Bytes,
    refused: &Refused,
) -> anyhow::Result<Bytes> {
    match key {
        ApiKey::Fetch => {
            let (h, mut resp) = protocol::decode_response::<FetchResponse>(frame, key, version)?;
            append_fetch_errors(&mut resp, refused, TOPIC_AUTHORIZATION_FAILED);
            protocol::encode_response(&h, &resp, key, version)
        }
        ApiKey::ListOffsets => {
            let (h, mut resp) =
                protocol::decode_response::<ListOffsetsResponse>(frame, key, version)?;
            append_list_offsets_errors(&mut resp, refused, TOPIC_AUTHORIZATION_FAILED);
            protocol::encode_response(&h, &resp, key, version)
        }
        _ => Ok(frame.clone()),
    }
}

/// GROUP_AUTHORIZATION_FAILED for every group (and partition) a group request names.
fn group_refusal(
    key: ApiKey,
    version: i16,
    body: &mut Bytes,
    header: &ResponseHeader,
    hint: &StrBytes,
) -> anyhow::Result<Bytes> {
    const E: i16 = GROUP_AUTHORIZATION_FAILED;
    Ok(match key {
        ApiKey::JoinGroup => {
            let r = JoinGroupRequest::decode(body, version)?;
            let resp = JoinGroupResponse::default()
                .with_error_code(E)
                .with_generation_id(-1)
                .with_member_id(r.member_id)
                .with_protocol_name(if version >= 7 {
                    None
                } else {
                    Some(StrBytes::default())
                });
            protocol::encode_response(header, &resp, key, version)?
        }
        ApiKey::SyncGroup => protocol::encode_response(
            header,
            &SyncGroupResponse::default().with_error_code(E),
            key,
            version,
        )?,
        ApiKey::Heartbeat => protocol::encode_response(
            header,
            &HeartbeatResponse::default().with_error_code(E),
            key,
            version,
        )?,
        ApiKey::LeaveGroup => protocol::encode_response(
            header,
            &LeaveGroupResponse::default().with_error_code(E),
            key,
            version,
        )?,
        ApiKey::OffsetCommit => {
            let r = OffsetCommitRequest::decode(body, version)?;
            let topics = r
                .topics
                .iter()
                .map(|t| {
                    offset_commit_response::OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    offset_commit_response::OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(E)
                                })
                                .collect(),
                        )
                })
                .collect();
            protocol::encode_response(
                header,
                &OffsetCommitResponse::default().with_topics(topics),
                key,
                version,
            )?
        }
        ApiKey::TxnOffsetCommit => {
            let r = TxnOffsetCommitRequest::decode(body, version)?;
            let topics = r
                .topics
                .iter()
                .map(|t| {
                    txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(E)
                                })
                                .collect(),
                        )
                })
                .collect();
            protocol::encode_response(
                header,
                &TxnOffsetCommitResponse::default().with_topics(topics),
                key,
                version,
            )?
        }
        ApiKey::OffsetFetch => {
            let r = OffsetFetchRequest::decode(body, version)?;
            let resp = if version < 8 {
                let topics = r
                    .topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        offset_fetch_response::OffsetFetchResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|p| {
                                        offset_fetch_response::OffsetFetchResponsePartition::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(-1)
                                            .with_error_code(E)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponse::default()
                    .with_error_code(E)
                    .with_topics(topics)
            } else {
                OffsetFetchResponse::default().with_groups(
                    r.groups
                        .iter()
                        .map(|g| {
                            offset_fetch_response::OffsetFetchResponseGroup::default()
                                .with_group_id(g.group_id.clone())
                                .with_error_code(E)
                        })
                        .collect(),
                )
            };
            protocol::encode_response(header, &resp, key, version)?
        }
        ApiKey::DescribeGroups => {
            let r = DescribeGroupsRequest::decode(body, version)?;
            let groups = r
                .groups
                .iter()
                .map(|g| {
                    describe_groups_response::DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(E)
                        // The message field exists from v6 on.
                        .with_error_message((version >= 6).then(|| hint.clone()))
                })
                .collect();
            protocol::encode_response(
                header,
                &DescribeGroupsResponse::default().with_groups(groups),
                key,
                version,
            )?
        }
        ApiKey::ConsumerGroupHeartbeat => protocol::encode_response(
            header,
            &ConsumerGroupHeartbeatResponse::default()
                .with_error_code(E)
                .with_error_message(Some(hint.clone())),
            key,
            version,
        )?,
        ApiKey::ConsumerGroupDescribe => {
            let r = ConsumerGroupDescribeRequest::decode(body, version)?;
            let groups = r
                .group_ids
                .iter()
                .map(|g| {
                    consumer_group_describe_response::DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(E)
                        .with_error_message(Some(hint.clone()))
                })
                .collect();
            protocol::encode_response(
                header,
                &ConsumerGroupDescribeResponse::default().with_groups(groups),
                key,
                version,
            )?
        }
        ApiKey::ShareGroupDescribe => {
            let r = ShareGroupDescribeRequest::decode(body, version)?;
            let groups = r
                .group_ids
                .iter()
                .map(|g| {
                    share_group_describe_response::DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(E)
                        .with_error_message(Some(hint.clone()))
                })
                .collect();
            protocol::encode_response(
                header,
                &ShareGroupDescribeResponse::default().with_groups(groups),
                key,
                version,
            )?
        }
        other => anyhow::bail!("{other:?} is not a group API"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
    use kafka_protocol::messages::{GroupId, OffsetFetchRequest};
    use kafka_protocol::protocol::Encodable;

    use crate::request::ListenerKind;
    use std::sync::atomic::{AtomicUsize, Ordering as AtOrd};
    use tower::ServiceExt;

    const TWO_GROUPS: &str = "mode = \"enforce\"\n[[consumer]]\ngroup = \"a\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\nlag_slo_seconds = 60\n[[consumer]]\ngroup = \"b\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"u\"]\nlag_slo_seconds = 60\n[[consumer]]\ngroup = \"c\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\nlag_slo_seconds = 60\n";

    /// A Fetch for topic `t` partition 0 as a client would send it.
    fn fetch_request(replica_id: i32, tie: Option<Binding>) -> Request {
        let fetch = FetchRequest::default()
            .with_replica_id(replica_id.into())
            .with_max_wait_ms(1)
            .with_topics(vec![
                kafka_protocol::messages::fetch_request::FetchTopic::default()
                    .with_topic(StrBytes::from_static_str("t").into())
                    .with_partitions(vec![
                        kafka_protocol::messages::fetch_request::FetchPartition::default()
                            .with_partition(0),
                    ]),
            ]);
        let mut req = raw_request(ApiKey::Fetch, 11, body(&fetch, 11));
        req.tie = tie.map(Arc::new);
        req
    }

    /// A governance layer with `registry` (none: governance off), its metrics and registry
    /// handle; the directory holds the registry file.
    fn layer_with(
        registry: Option<&str>,
    ) -> (
        GovernanceLayer,
        Arc<Metrics>,
        Arc<RegistryHandle>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let handle = Arc::new(match registry {
            Some(text) => {
                let path = dir.path().join("r.toml");
                std::fs::write(&path, text).unwrap();
                RegistryHandle::open(&path).unwrap()
            }
            None => RegistryHandle::disabled(),
        });
        let metrics = Arc::new(Metrics::new());
        let layer = GovernanceLayer::new(handle.clone(), Arc::default(), metrics.clone());
        (layer, metrics, handle, dir)
    }

    /// Run one request through governance over a broker stub; the error code of partition 0
    /// in the answer, and whether the broker saw the request.
    async fn govern(registry: Option<&str>, req: Request) -> (i16, i16, bool) {
        let (layer, _, _, _dir) = layer_with(registry);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let broker = tower::service_fn(move |r: Request| {
            seen.fetch_add(1, AtOrd::SeqCst);
            let resp = FetchResponse::default();
            let h = ResponseHeader::default().with_correlation_id(r.meta.correlation_id);
            let frame = protocol::encode_response(&h, &resp, ApiKey::Fetch, 11).unwrap();
            async move { Ok::<_, BoxError>(Response::Frame(frame)) }
        });
        let svc = layer.layer(broker);
        let Response::Frame(f) = svc.oneshot(req).await.unwrap() else {
            panic!("a whole frame")
        };
        let (_, resp) = protocol::decode_response::<FetchResponse>(&f, ApiKey::Fetch, 11).unwrap();
        let code = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .map_or(0, |p| p.error_code);
        (resp.error_code, code, calls.load(AtOrd::SeqCst) > 0)
    }

    /// A Fetch v12 on session `epoch` for topic `t` partition 0 (none when incremental).
    fn session_fetch(epoch: i32) -> Request {
        let mut fetch = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(1)
            .with_session_id(if epoch > 0 { 42 } else { 0 })
            .with_session_epoch(epoch);
        if epoch <= 0 {
            fetch = fetch.with_topics(vec![
                kafka_protocol::messages::fetch_request::FetchTopic::default()
                    .with_topic(StrBytes::from_static_str("t").into())
                    .with_partitions(vec![
                        kafka_protocol::messages::fetch_request::FetchPartition::default(),
                    ]),
            ]);
        }
        let mut req = raw_request(ApiKey::Fetch, 12, body(&fetch, 12));
        req.tie = Some(Arc::new(Binding {
            epoch: 0,
            group: "a".into(),
            candidates: vec![],
        }));
        req
    }

    #[tokio::test]
    async fn an_incremental_fetch_session_is_checked_whole_again_after_a_reload() {
        let (layer, metrics, handle, _dir) = layer_with(Some(TWO_GROUPS));
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let broker = tower::service_fn(move |r: Request| {
            seen.fetch_add(1, AtOrd::SeqCst);
            let h = ResponseHeader::default().with_correlation_id(r.meta.correlation_id);
            let frame = protocol::encode_response(&h, &FetchResponse::default(), ApiKey::Fetch, 12)
                .unwrap();
            async move { Ok::<_, BoxError>(Response::Frame(frame)) }
        });
        let mut svc = layer.layer(broker);
        let mut send = async |req: Request| {
            let before = calls.load(AtOrd::SeqCst);
            let Response::Frame(f) = svc.ready().await.unwrap().call(req).await.unwrap() else {
                panic!("a whole frame")
            };
            let (_, r) = protocol::decode_response::<FetchResponse>(&f, ApiKey::Fetch, 12).unwrap();
            (r.error_code, calls.load(AtOrd::SeqCst) > before)
        };
        // A session's incremental fetch on a connection that never sent its full fetch.
        assert_eq!(
            send(session_fetch(3)).await,
            (FETCH_SESSION_ID_NOT_FOUND, false)
        );
        assert_eq!(send(session_fetch(0)).await, (0, true));
        assert_eq!(send(session_fetch(1)).await, (0, true));
        handle.reload().unwrap();
        assert_eq!(
            send(session_fetch(2)).await,
            (FETCH_SESSION_ID_NOT_FOUND, false)
        );
        assert_eq!(send(session_fetch(0)).await, (0, true));
        assert_eq!(send(session_fetch(1)).await, (0, true));
        assert_eq!(metrics.fetch_sessions_reset.get(), 2);
    }

    #[tokio::test]
    async fn share_groups_are_refused_in_enforce_mode_and_pass_in_shadow() {
        use kafka_protocol::messages::{ShareFetchRequest, ShareGroupHeartbeatRequest};
        let heartbeat = ShareGroupHeartbeatRequest::default()
            .with_group_id(StrBytes::from_static_str("a").into());
        let fetch =
            ShareFetchRequest::default().with_group_id(Some(StrBytes::from_static_str("a").into()));
        let frames = [
            (ApiKey::ShareGroupHeartbeat, body(&heartbeat, 1)),
            (ApiKey::ShareFetch, body(&fetch, 1)),
        ];
        for (mode, refused) in [("enforce", true), ("shadow", false)] {
            let text = TWO_GROUPS.replacen("mode = \"enforce\"", &format!("mode = \"{mode}\""), 1);
            for (key, b) in &frames {
                let (forwarded, code) = govern_raw(&text, *key, 1, b.clone()).await;
                assert_eq!(forwarded, !refused, "{mode} {key:?}");
                if refused {
                    assert_eq!(code, Some(GROUP_AUTHORIZATION_FAILED), "{key:?}");
                }
            }
        }
    }

    /// Run one raw request body through governance; whether the broker stub saw it, and the
    /// top-level error code of Tollgate's own answer.
    async fn govern_raw(
        registry: &str,
        key: ApiKey,
        version: i16,
        body: Bytes,
    ) -> (bool, Option<i16>) {
        let (layer, _, _, _dir) = layer_with(Some(registry));
        let broker = tower::service_fn(|_r: Request| async { Ok::<_, BoxError>(Response::None) });
        match layer
            .layer(broker)
            .oneshot(raw_request(key, version, body))
            .await
            .unwrap()
        {
            Response::None => (true, None),
            Response::Frame(f) => {
                // Every answer here starts with throttle_time_ms (i32), then error_code (i16).
                let at = protocol::LEN_PREFIX + 4 + 1 + 4;
                (false, Some(i16::from_be_bytes([f[at], f[at + 1]])))
            }
            Response::Stream(_) => panic!("no stream"),
        }
    }

    /// A request frame with a client header (client id "hostile") around a raw body.
    fn raw_request(key: ApiKey, version: i16, body: Bytes) -> Request {
        let header = kafka_protocol::messages::RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(9)
            .with_client_id(Some(StrBytes::from_static_str("hostile")));
        let mut frame = bytes::BytesMut::new();
        let hv = key.request_header_version(version);
        use kafka_protocol::protocol::Encodable;
        let size = header.compute_size(hv).unwrap() + body.len();
        bytes::BufMut::put_i32(&mut frame, size as i32);
        header.encode(&mut frame, hv).unwrap();
        frame.extend_from_slice(&body);
        let frame = frame.freeze();
        let meta = protocol::parse_request(&frame).unwrap();
        let conn = Arc::new(ConnInfo::new(
            1,
            "10.0.0.1:5000".parse().unwrap(),
            ListenerKind::Bootstrap,
        ));
        Request::new(meta, frame, conn)
    }

    #[tokio::test]
    async fn a_client_posing_as_a_follower_is_refused_with_or_without_a_registry() {
        for registry in [None, Some(TWO_GROUPS)] {
            let (top, code, forwarded) = govern(registry, fetch_request(3, None)).await;
            assert_eq!(
                (top, code),
                (CLUSTER_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED)
            );
            assert!(!forwarded, "a replica fetch reached the broker");
        }
        // A consumer's fetch (replica_id -1) passes when governance is off.
        let (_, code, forwarded) = govern(None, fetch_request(-1, None)).await;
        assert_eq!(code, 0);
        assert!(forwarded);
    }

    #[tokio::test]
    async fn an_ambiguous_tie_reads_only_what_every_candidate_may() {
        let tie = |c: &[&str]| Binding {
            epoch: 1,
            group: AMBIGUOUS.into(),
            candidates: c.iter().map(|s| s.to_string()).collect(),
        };
        // b may not read t: refused.
        let (_, code, forwarded) =
            govern(Some(TWO_GROUPS), fetch_request(-1, Some(tie(&["a", "b"])))).await;
        assert_eq!(code, TOPIC_AUTHORIZATION_FAILED);
        assert!(!forwarded);
        // a and c both may: allowed.
        let (_, code, forwarded) =
            govern(Some(TWO_GROUPS), fetch_request(-1, Some(tie(&["a", "c"])))).await;
        assert_eq!(code, 0);
        assert!(forwarded);
        // No decision on the request counts as no group: refused.
        let (_, code, _) = govern(Some(TWO_GROUPS), fetch_request(-1, None)).await;
        assert_eq!(code, TOPIC_AUTHORIZATION_FAILED);
    }

    #[test]
    fn refusal_logs_are_rate_limited_per_key() {
        let l = LogLimiter::default();
        assert_eq!(l.admit("k".into()), Some(0));
        assert_eq!(l.admit("k".into()), None);
        assert_eq!(l.admit("k".into()), None);
        assert_eq!(l.admit("other".into()), Some(0));
    }

    #[tokio::test]
    async fn a_client_inventing_a_group_per_request_gets_one_log_line_per_interval() {
        let (layer, metrics, _, _dir) = layer_with(Some(TWO_GROUPS));
        for i in 0..100 {
            let g = GroupId(StrBytes::from_string(format!("invented-{i}")));
            let req = raw_request(
                ApiKey::Heartbeat,
                3,
                body(&HeartbeatRequest::default().with_group_id(g), 3),
            );
            let broker =
                tower::service_fn(|_r: Request| async { Ok::<_, BoxError>(Response::None) });
            let _ = layer.layer(broker).oneshot(req).await.unwrap();
        }
        let refused = metrics
            .rejected_requests
            .with_label_values(&["unregistered_group", "Heartbeat", "enforce"])
            .get();
        assert_eq!(refused, 100, "the metric counts every refusal");
        assert_eq!(layer.logs.keys(), 1, "one log key for one client instance");
    }

    fn body<T: Encodable>(req: &T, version: i16) -> Bytes {
        let mut b = BytesMut::new();
        req.encode(&mut b, version).unwrap();
        b.freeze()
    }

    /// Every group API at every version Tollgate lets clients use gets a decodable
    /// GROUP_AUTHORIZATION_FAILED answer with the client's correlation id.
    #[test]
    fn refusals_decode_at_every_version() {
        let g = GroupId(StrBytes::from_static_str("unregistered"));
        let hint = StrBytes::from_static_str("register it");
        let header = ResponseHeader::default().with_correlation_id(77);
        let mut checked = 0;
        for key in GOVERNED_APIS {
            // Reads and share groups have their own answers (tested on their own).
            if matches!(
                key,
                ApiKey::Fetch
                    | ApiKey::ListOffsets
                    | ApiKey::ShareGroupHeartbeat
                    | ApiKey::ShareFetch
                    | ApiKey::ShareAcknowledge
            ) {
                continue;
            }
            let range = crate::versions::decodable_versions(*key);
            for v in range.min..=range.max {
                let req: Bytes = match key {
                    ApiKey::JoinGroup => {
                        body(&JoinGroupRequest::default().with_group_id(g.clone()), v)
                    }
                    ApiKey::SyncGroup => {
                        body(&SyncGroupRequest::default().with_group_id(g.clone()), v)
                    }
                    ApiKey::Heartbeat => {
                        body(&HeartbeatRequest::default().with_group_id(g.clone()), v)
                    }
                    ApiKey::LeaveGroup => {
                        body(&LeaveGroupRequest::default().with_group_id(g.clone()), v)
                    }
                    ApiKey::OffsetCommit => {
                        body(&OffsetCommitRequest::default().with_group_id(g.clone()), v)
                    }
                    ApiKey::TxnOffsetCommit => body(
                        &TxnOffsetCommitRequest::default().with_group_id(g.clone()),
                        v,
                    ),
                    ApiKey::OffsetFetch if v >= 8 => body(
                        &OffsetFetchRequest::default().with_groups(vec![
                            OffsetFetchRequestGroup::default().with_group_id(g.clone()),
                        ]),
                        v,
                    ),
                    ApiKey::OffsetFetch => {
                        body(&OffsetFetchRequest::default().with_group_id(g.clone()), v)
                    }
                    ApiKey::DescribeGroups => body(
                        &DescribeGroupsRequest::default().with_groups(vec![g.clone()]),
                        v,
                    ),
                    ApiKey::ConsumerGroupHeartbeat => body(
                        &ConsumerGroupHeartbeatRequest::default().with_group_id(g.clone()),
                        v,
                    ),
                    ApiKey::ConsumerGroupDescribe => body(
                        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![g.clone()]),
                        v,
                    ),
                    ApiKey::ShareGroupDescribe => body(
                        &ShareGroupDescribeRequest::default().with_group_ids(vec![g.clone()]),
                        v,
                    ),
                    other => panic!("no case for {other:?}"),
                };
                let frame = group_refusal(*key, v, &mut req.clone(), &header, &hint)
                    .unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
                let code = |f: &Bytes| -> (i32, Vec<i16>) {
                    macro_rules! dec {
                        ($t:ty) => {{
                            let (h, r) = protocol::decode_response::<$t>(f, *key, v)
                                .unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
                            (h.correlation_id, r)
                        }};
                    }
                    match key {
                        ApiKey::JoinGroup => {
                            let (c, r) = dec!(JoinGroupResponse);
                            (c, vec![r.error_code])
                        }
                        ApiKey::SyncGroup => {
                            let (c, r) = dec!(SyncGroupResponse);
                            (c, vec![r.error_code])
                        }
                        ApiKey::Heartbeat => {
                            let (c, r) = dec!(HeartbeatResponse);
                            (c, vec![r.error_code])
                        }
                        ApiKey::LeaveGroup => {
                            let (c, r) = dec!(LeaveGroupResponse);
                            (c, vec![r.error_code])
                        }
                        // No partitions named: nothing to answer, but it decodes.
                        ApiKey::OffsetCommit => {
                            let (c, _) = dec!(OffsetCommitResponse);
                            (c, vec![E])
                        }
                        ApiKey::TxnOffsetCommit => {
                            let (c, _) = dec!(TxnOffsetCommitResponse);
                            (c, vec![E])
                        }
                        ApiKey::OffsetFetch => {
                            let (c, r) = dec!(OffsetFetchResponse);
                            if v >= 8 {
                                (c, r.groups.iter().map(|g| g.error_code).collect())
                            } else if v >= 2 {
                                (c, vec![r.error_code])
                            } else {
                                (c, vec![E])
                            }
                        }
                        ApiKey::DescribeGroups => {
                            let (c, r) = dec!(DescribeGroupsResponse);
                            (c, r.groups.iter().map(|g| g.error_code).collect())
                        }
                        ApiKey::ConsumerGroupHeartbeat => {
                            let (c, r) = dec!(ConsumerGroupHeartbeatResponse);
                            (c, vec![r.error_code])
                        }
                        ApiKey::ConsumerGroupDescribe => {
                            let (c, r) = dec!(ConsumerGroupDescribeResponse);
                            (c, r.groups.iter().map(|g| g.error_code).collect())
                        }
                        ApiKey::ShareGroupDescribe => {
                            let (c, r) = dec!(ShareGroupDescribeResponse);
                            (c, r.groups.iter().map(|g| g.error_code).collect())
                        }
                        _ => unreachable!(),
                    }
                };
                const E: i16 = GROUP_AUTHORIZATION_FAILED;
                let (corr, codes) = code(&frame);
                assert_eq!(corr, 77, "{key:?} v{v}");
                assert!(
                    !codes.is_empty() && codes.iter().all(|c| *c == E),
                    "{key:?} v{v}: {codes:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "{checked}");
    }

    #[tokio::test]
    async fn an_undecodable_governed_request_is_not_forwarded() {
        use crate::protocol::{encode_request, parse_request};
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "mode = \"enforce\"\n").unwrap();
        let registry = Arc::new(RegistryHandle::open(&path).unwrap());
        let metrics = Arc::new(Metrics::new());
        let header = kafka_protocol::messages::RequestHeader::default()
            .with_request_api_key(ApiKey::JoinGroup as i16)
            .with_request_api_version(5)
            .with_correlation_id(3);
        // A JoinGroup header followed by a body that ends inside the group id.
        let mut frame = encode_request(&header, &JoinGroupRequest::default())
            .unwrap()
            .to_vec();
        frame.truncate(frame.len() - 8);
        frame.extend_from_slice(&[0, 50, b'x']);
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let frame = Bytes::from(frame);
        let meta = parse_request(&frame).unwrap();
        let conn = Arc::new(ConnInfo::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            crate::identity::ListenerKind::Bootstrap,
        ));
        let forwarded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = forwarded.clone();
        let inner = tower::service_fn(move |_r: Request| {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, BoxError>(Response::None) }
        });
        let svc = GovernanceLayer::new(registry, Arc::default(), metrics).layer(inner);
        let err = svc
            .oneshot(Request::new(meta, frame, conn))
            .await
            .expect_err("refused");
        assert_eq!(crate::error::reason(err.as_ref()), "policy_decode");
        assert!(!forwarded.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn refused_partitions_merge_into_the_broker_answer() {
        let refused = Refused {
            partitions: vec![
                (StrBytes::from_static_str("secret"), Uuid::nil(), 0),
                (StrBytes::from_static_str("open"), Uuid::nil(), 5),
            ],
        };
        let broker = FetchResponse::default().with_responses(vec![
            fetch_response::FetchableTopicResponse::default()
                .with_topic(StrBytes::from_static_str("open").into())
                .with_partitions(vec![fetch_response::PartitionData::default()
                    .with_partition_index(1)
                    .with_high_watermark(10)]),
        ]);
        let header = ResponseHeader::default().with_correlation_id(5);
        let frame = protocol::encode_response(&header, &broker, ApiKey::Fetch, 12).unwrap();
        let merged = add_refused(ApiKey::Fetch, 12, &frame, &refused).unwrap();
        let (h, r) =
            protocol::decode_response::<FetchResponse>(&merged, ApiKey::Fetch, 12).unwrap();
        assert_eq!(h.correlation_id, 5);
        let open = &r.responses[0];
        assert_eq!(open.partitions.len(), 2);
        assert_eq!(open.partitions[0].high_watermark, 10);
        assert_eq!(open.partitions[1].error_code, TOPIC_AUTHORIZATION_FAILED);
        assert_eq!(r.responses[1].topic.0.as_str(), "secret");
        assert_eq!(
            r.responses[1].partitions[0].error_code,
            TOPIC_AUTHORIZATION_FAILED
        );
    }
}
