//! The governance layer: the consumer onboarding policy ([`crate::control::registry`]) at the door.
//!
//! - **Group APIs** (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//!   TxnOffsetCommit, DescribeGroups, ConsumerGroupHeartbeat, ConsumerGroupDescribe,
//!   ShareGroupHeartbeat, ShareGroupDescribe, and the ones that destroy a group's state:
//!   DeleteGroups, OffsetDelete) for a group that is not registered, or that a
//!   different principal owns, are answered by Tollgate with GROUP_AUTHORIZATION_FAILED (30),
//!   with the onboarding hint as the error message where the API version carries one. They
//!   never reach the broker. A request naming several groups (DescribeGroups, OffsetFetch v8+,
//!   the describe APIs) is refused whole when any of its groups is refused: every group in it
//!   gets the error (ask for the registered ones separately).
//! - **ListGroups** passes to the broker, and its answer lists only the groups the caller may
//!   use (registered, for its principal); in `shadow` mode (registry or entry) the hidden
//!   ones stay listed. Group names are what other tenants would otherwise learn of each
//!   other. Each answer that hid groups counts once in
//!   `tollgate_rejected_requests_total{api="ListGroups"}`.
//! - **Share groups** (KIP-932: ShareGroupHeartbeat, ShareFetch, ShareAcknowledge) are not
//!   governed topic by topic yet, so in `enforce` mode they are refused for every group with
//!   GROUP_AUTHORIZATION_FAILED (in `shadow` mode logged and passed). Share group reads would
//!   otherwise bypass the topic rule and every lag check.
//! - **Reads** (Fetch, ListOffsets): the reading client instance is tied to its group by the
//!   rule in [`crate::consumers::groups`]. A partition is refused with TOPIC_AUTHORIZATION_FAILED (29)
//!   when the client is in no group and not on the standalone allow-list, when its group is
//!   unregistered or owned by another principal, or when the topic is not among the group's
//!   allowed topics. Refused partitions are taken out of the request and answered with the
//!   error; the rest go to the broker and the two are merged in the client's order. A request
//!   with nothing left is answered by Tollgate alone.
//! - **Authentication** (`governance.require_authentication`): a connection with no
//!   authenticated principal (mTLS or a SASL exchange the broker accepted; see
//!   [`crate::security`]) is refused every group API and every read, as above, with
//!   `reason="unauthenticated"`, whatever the mode.
//! - **Producers** are not this layer's: Produce and the transactional producer APIs pass
//!   here; the registry's `[[producer]]` entries are enforced by [`crate::layers::producers`].
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
//!
//! Files: the policy and the group APIs here; reads (Fetch, ListOffsets, share groups) in
//! `reads.rs`; the answers governance gives itself in `answers.rs`; the rate-limited refusal
//! log in `log_limit.rs`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupHeartbeatRequest, DeleteGroupsRequest,
    DescribeGroupsRequest, FetchRequest, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsResponse, ListOffsetsRequest, OffsetCommitRequest, OffsetDeleteRequest,
    OffsetFetchRequest, ResponseHeader, ShareGroupDescribeRequest, SyncGroupRequest,
    TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;
use tower::{Layer, Service};
use uuid::Uuid;

use crate::brokers::topic_ids::TopicIds;
use crate::consumers::groups::{Tie, TopicPartition};
use crate::consumers::refusals::Refusals;
use crate::control::registry::{GroupVerdict, Mode, Registry, RegistryHandle};
use crate::error::{BoxError, PolicyDecodeError};
use crate::layers::request::{ConnInfo, Request, Response};
use crate::metrics::Metrics;
use crate::wire::protocol::{self, api_name};

mod answers;
mod log_limit;
mod reads;
mod record;
#[cfg(test)]
mod tests;

use answers::{add_refused, group_read_verdict, group_refusal};
pub(crate) use log_limit::{log_key, LogLimiter};
use record::{Decision, Recorder};

/// GROUP_AUTHORIZATION_FAILED.
pub(crate) const GROUP_AUTHORIZATION_FAILED: i16 = 30;
/// TOPIC_AUTHORIZATION_FAILED.
pub(crate) const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// CLUSTER_AUTHORIZATION_FAILED.
pub(crate) const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
/// The `reason` label of a refused read that posed as a follower broker.
pub(crate) const REPLICA_REASON: &str = "poses_as_broker";

/// APIs this layer decodes (their versions are capped in ApiVersions).
pub(crate) const GOVERNED_APIS: &[ApiKey] = &[
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
    ApiKey::DeleteGroups,
    ApiKey::OffsetDelete,
    ApiKey::ListGroups,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
];

/// FETCH_SESSION_ID_NOT_FOUND: the client drops its session and sends a full fetch.
pub(crate) const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

/// Why a request was (or would have been) refused; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
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
    pub(crate) fn label(self) -> &'static str {
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
    refusals: Arc<Refusals>,
    logs: Arc<LogLimiter>,
    require_auth: bool,
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
            refusals: Arc::default(),
            logs: Arc::default(),
            require_auth: false,
        }
    }

    /// Keep who was refused in `refusals` (the console's refusal table).
    pub(crate) fn recording(mut self, refusals: Arc<Refusals>) -> Self {
        self.refusals = refusals;
        self
    }

    /// Refuse consumer requests from connections without an authenticated principal
    /// (`governance.require_authentication`), whatever the registry's mode.
    pub(crate) fn requiring_authentication(mut self, on: bool) -> Self {
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
                recorder: Recorder {
                    metrics: self.metrics.clone(),
                    refusals: self.refusals.clone(),
                    logs: self.logs.clone(),
                },
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

/// The consumer policy of one connection: decides with the registry in force, and records
/// each refusal through its [`Recorder`].
#[derive(Clone)]
struct Policy {
    registry: Arc<RegistryHandle>,
    topic_ids: Arc<TopicIds>,
    recorder: Recorder,
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
        if key == ApiKey::ListGroups {
            return self.list_groups(req, registry);
        }
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
                Box::pin(async move { Ok(add_refused(key, version, fut.await?, &refused)?) })
            }
        }
    }
}

impl<S> GovernanceService<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    /// ListGroups: the broker's answer with the groups this caller may not use taken out.
    fn list_groups(&mut self, mut req: Request, registry: Arc<Registry>) -> BoxFut {
        req.whole_response = true;
        let (version, conn) = (req.meta.api_version, req.conn.clone());
        let policy = self.policy.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let Response::Frame(frame) = &response else {
                return Ok(response);
            };
            // Fail closed: an answer that cannot be filtered is not passed on.
            let (header, mut list) = protocol::decode_response::<ListGroupsResponse>(
                frame,
                ApiKey::ListGroups,
                version,
            )?;
            let before = list.groups.len();
            list.groups
                .retain(|g| policy.may_see(&registry, &conn, &g.group_id));
            if list.groups.len() == before {
                return Ok(response);
            }
            let reason = match policy.unauthenticated(&conn) {
                true => Reason::Unauthenticated,
                false => Reason::UnregisteredGroup,
            };
            (policy.recorder).hidden(&conn, before - list.groups.len(), reason);
            let encoded = protocol::encode_response(&header, &list, ApiKey::ListGroups, version)?;
            Ok(Response::Frame(encoded))
        })
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
    fn decide(&self, key: ApiKey, req: &Request, reg: &Arc<Registry>) -> anyhow::Result<Action> {
        if req.meta.body_offset.is_none() {
            return Ok(Action::Pass);
        }
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
            ApiKey::DeleteGroups => req
                .body::<DeleteGroupsRequest>()?
                .groups_names
                .iter()
                .map(|g| g.to_string())
                .collect(),
            ApiKey::OffsetDelete => vec![req.body::<OffsetDeleteRequest>()?.group_id.to_string()],
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
            let d = Decision {
                api: key,
                reason,
                mode,
                group: g,
                topic: None,
                entry: entry.as_deref(),
            };
            self.recorder.refused(conn, &d, reg);
            refuse |= mode == Mode::Enforce;
        }
        if !refuse {
            return Ok(Action::Pass);
        }
        // A refusal is rare: its answer decodes the request again, as its own type.
        let mut body = req.body_bytes()?;
        Ok(Action::Answer(group_refusal(
            key, version, &mut body, &header, &hint,
        )?))
    }

    /// Which partitions of a read may not be served, and whether any refusal is enforced.
    /// Logs (rate-limited) and counts one refusal per (reason, topic). `tie` is the consumer
    /// decision made for this request (no decision: no group).
    fn refused_reads(
        &self,
        key: ApiKey,
        conn: &ConnInfo,
        reg: &Registry,
        tie: &Tie,
        partitions: &HashMap<TopicPartition, i64>,
    ) -> HashSet<TopicPartition> {
        let group = tie.label();
        let mut refused = HashSet::new();
        let mut logged: HashSet<(Reason, String)> = HashSet::new();
        for tp in partitions.keys() {
            let topic = tp.0.as_str();
            let verdict = match tie {
                _ if self.unauthenticated(conn) => {
                    Some((Reason::Unauthenticated, Mode::Enforce, None))
                }
                Tie::None => self.standalone_verdict(conn, reg, topic),
                // Several groups match equally: allowed only if every one of them may read it.
                Tie::Ambiguous(candidates) => candidates
                    .iter()
                    .find_map(|g| group_read_verdict(reg, g, &conn.principal(), topic)),
                Tie::Group(group) => group_read_verdict(reg, group, &conn.principal(), topic),
            };
            let Some((reason, mode, entry)) = verdict else {
                continue;
            };
            if logged.insert((reason, topic.to_string())) {
                let d = Decision {
                    api: key,
                    reason,
                    mode,
                    group,
                    topic: Some(topic),
                    entry: entry.as_deref(),
                };
                self.recorder.refused(conn, &d, reg);
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

    /// Whether ListGroups may show `group` to this caller: it may use it, or the rule that
    /// would refuse it is in shadow mode.
    fn may_see(&self, reg: &Registry, conn: &ConnInfo, group: &str) -> bool {
        if self.unauthenticated(conn) {
            return false;
        }
        match reg.group_verdict(group, &conn.principal()) {
            GroupVerdict::Registered(_) => true,
            GroupVerdict::Unregistered => reg.mode == Mode::Shadow,
            GroupVerdict::WrongPrincipal(e) => e.mode.unwrap_or(reg.mode) == Mode::Shadow,
        }
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
}
