//! The admin-plane policy ([`crate::control::admin_rules`]): CreateTopics, DeleteTopics,
//! CreatePartitions, AlterConfigs, IncrementalAlterConfigs, DeleteRecords, DeleteGroups,
//! OffsetDelete, CreateAcls and DeleteAcls, checked entry by entry against the registry's
//! `[[admin]]` rights and `[admin_policy]` rules.
//!
//! - **Rights.** An entry (a topic, a group, a config resource) the caller's principal has no
//!   right to is refused: TOPIC_AUTHORIZATION_FAILED (29) for topics and topic configs,
//!   GROUP_AUTHORIZATION_FAILED (30) for groups, CLUSTER_AUTHORIZATION_FAILED (31) for ACL
//!   changes and non-topic configs (`reason="admin_right"`).
//! - **New topics** (CreateTopics) must match `topic_name_pattern` (INVALID_TOPIC_EXCEPTION,
//!   17, `reason="topic_name"`) and stay within `max_partitions` (INVALID_PARTITIONS, 37),
//!   `min_replication_factor`..`max_replication_factor` (INVALID_REPLICATION_FACTOR, 38; -1,
//!   the broker's default, passes) and `max_retention_ms` (POLICY_VIOLATION, 44; `-1`,
//!   unlimited, is over any limit) (`reason="topic_limit"`). CreatePartitions is held to
//!   `max_partitions`, AlterConfigs and IncrementalAlterConfigs on topics to
//!   `max_retention_ms`.
//! - **The rest goes through.** Refused entries are taken out, the rest goes to the broker and
//!   the answers are merged (clients match them by name). CreateAcls and DeleteAcls answer
//!   by position, and OffsetDelete names one group: those are refused whole.
//! - **Messages.** Where the API version carries an error message, it says which rule and
//!   what to do ("topic name must match ...").
//! - **Mode.** `[admin_policy] mode`, `shadow` unless set: what would be refused is logged and
//!   counted and goes through.
//!
//! Inside own_topics and cluster_admin (Tollgate's topics and cluster administration without
//! the client's own identity are refused before this layer) and governance (a group the
//! caller may not use is refused there).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tower::{Layer, Service};

use crate::brokers::topic_ids::TopicIds;
use crate::consumers::identity::ConnInfo;
use crate::consumers::refusals::Refusals;
use crate::control::admin_rules::Right;
use crate::control::audit::{Audit, Resource, What};
use crate::control::registry::{Mode, Registry, RegistryHandle};
use crate::error::BoxError;
use crate::layers::record::{Record, Seen};
use crate::layers::request::{policy_decode, Request, Response};
use crate::metrics::Metrics;
use crate::wire::protocol::{self, api_name};

mod apis;
#[cfg(test)]
mod tests;

use apis::{
    AlterConfigs, CreateAcls, CreatePartitions, CreateTopics, DeleteAcls, DeleteGroups,
    DeleteRecords, DeleteTopics, IncrementalAlterConfigs, OffsetDelete,
};

/// The APIs this layer decodes (their versions are capped in ApiVersions).
pub(crate) const ADMIN_APIS: &[ApiKey] = &[
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::CreatePartitions,
    ApiKey::AlterConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::DeleteRecords,
    ApiKey::DeleteGroups,
    ApiKey::OffsetDelete,
    ApiKey::CreateAcls,
    ApiKey::DeleteAcls,
];

/// Why an entry is refused: the error code, the metric's reason and the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refused {
    pub(crate) code: i16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// What a rule check needs: the rules, who asks, and the topic-id map.
pub(crate) struct Ctx<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) principal: &'a str,
    pub(crate) topic_ids: &'a TopicIds,
}

impl Ctx<'_> {
    /// Refused unless the principal has `right` on `resource`.
    pub(crate) fn right(&self, right: Right, resource: &str, code: i16) -> Option<Refused> {
        let granted = self
            .registry
            .admins
            .iter()
            .any(|e| e.grants(self.principal, right, resource));
        (!granted).then(|| Refused {
            code,
            reason: "admin_right",
            message: format!(
                "Tollgate: {} has no {} right on {resource:?}; ask the Kafka platform team \
                 for an [[admin]] entry",
                self.principal,
                right.label()
            ),
        })
    }
}

/// One admin API: how to read its entries, drop some, and answer the ones refused.
pub(crate) trait Plane {
    type Req: Decodable + Encodable + Clone + Send + Sync + 'static;
    type Resp: Decodable + Encodable + Default + Send + 'static;
    const KEY: ApiKey;
    /// Refused entries answered alone, the others not attempted (answers by position).
    const WHOLE: bool = false;
    /// Each entry's name (for the log) and verdict, in request order.
    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)>;
    /// Keep only the entries whose `keep` is true.
    fn retain(req: &mut Self::Req, keep: &[bool]);
    /// The answer for the refused entries (`refused[i]` is entry i's verdict; `None` entries
    /// are left out, or, for `WHOLE` APIs, answered as not attempted).
    fn answer(req: &Self::Req, refused: &[Option<Refused>], version: i16) -> Self::Resp;
    /// Add `refused` answers to the broker's.
    fn merge(resp: &mut Self::Resp, refused: Self::Resp);
    /// Each entry of an answer and its error code, for the audit trail (entries answered
    /// by position are named by it: `acl#0`; a whole answer has an empty name).
    fn results(resp: &Self::Resp) -> Vec<(String, i16)>;
}

/// Built once; shared by every connection.
#[derive(Clone)]
pub struct AdminPlaneLayer {
    registry: Arc<RegistryHandle>,
    topic_ids: Arc<TopicIds>,
    record: Arc<Record>,
    /// Where the requests that went to the broker are audited, with its answers.
    audit: Option<Arc<Audit>>,
}

impl AdminPlaneLayer {
    pub fn new(
        registry: Arc<RegistryHandle>,
        topic_ids: Arc<TopicIds>,
        metrics: Arc<Metrics>,
        refusals: Arc<Refusals>,
    ) -> AdminPlaneLayer {
        AdminPlaneLayer {
            registry,
            topic_ids,
            record: Arc::new(Record::new("admin-plane policy", metrics, refusals)),
            audit: None,
        }
    }

    /// Audit every admin request that reaches the broker, and its answer, in `audit`.
    pub(crate) fn auditing(mut self, audit: Arc<Audit>) -> AdminPlaneLayer {
        self.audit = Some(audit);
        self
    }
}

impl<S> Layer<S> for AdminPlaneLayer {
    type Service = AdminPlaneService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AdminPlaneService {
            inner,
            cfg: self.clone(),
        }
    }
}

/// The admin-plane policy around one connection's inner service.
#[derive(Clone)]
pub struct AdminPlaneService<S> {
    inner: S,
    cfg: AdminPlaneLayer,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

impl<S> Service<Request> for AdminPlaneService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let key = req.meta.api.filter(|k| ADMIN_APIS.contains(k));
        let registry = self.cfg.registry.get();
        let Some(key) = key.filter(|_| registry.is_some() || self.cfg.audit.is_some()) else {
            return Box::pin(self.inner.call(req));
        };
        let registry = registry.as_deref();
        match key {
            ApiKey::CreateTopics => self.handle::<CreateTopics>(req, registry),
            ApiKey::DeleteTopics => self.handle::<DeleteTopics>(req, registry),
            ApiKey::CreatePartitions => self.handle::<CreatePartitions>(req, registry),
            ApiKey::AlterConfigs => self.handle::<AlterConfigs>(req, registry),
            ApiKey::IncrementalAlterConfigs => {
                self.handle::<IncrementalAlterConfigs>(req, registry)
            }
            ApiKey::DeleteRecords => self.handle::<DeleteRecords>(req, registry),
            ApiKey::DeleteGroups => self.handle::<DeleteGroups>(req, registry),
            ApiKey::OffsetDelete => self.handle::<OffsetDelete>(req, registry),
            ApiKey::CreateAcls => self.handle::<CreateAcls>(req, registry),
            _ => self.handle::<DeleteAcls>(req, registry),
        }
    }
}

impl<S> AdminPlaneService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    /// Check every entry; forward what passes, answer what does not, merge.
    fn handle<P: Plane>(&mut self, mut req: Request, registry: Option<&Registry>) -> BoxFut {
        let version = req.meta.api_version;
        let body = match req.body::<P::Req>() {
            Ok(b) => b,
            // Nothing to enforce: the broker answers it.
            Err(_) if registry.is_none() => return Box::pin(self.inner.call(req)),
            Err(e) => return undecodable(P::KEY, version, e),
        };
        let (refused, mode) = self.cfg.verdicts::<P>(&body, &req.conn, registry);
        let enforced = mode == Mode::Enforce && refused.iter().any(Option::is_some);
        let audit = self.cfg.audit.clone();
        if !enforced && audit.is_none() {
            return Box::pin(self.inner.call(req));
        }
        let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
        let answer = enforced.then(|| P::answer(&body, &refused, version));
        if let Some(answer) = answer
            .as_ref()
            .filter(|_| P::WHOLE || refused.iter().all(Option::is_some))
        {
            return answered::<P>(&header, answer, version);
        }
        if enforced {
            let keep: Vec<bool> = refused.iter().map(Option::is_none).collect();
            let mut rest = P::Req::clone(&body);
            P::retain(&mut rest, &keep);
            if let Err(e) = req.set_body(rest) {
                return undecodable(P::KEY, version, e);
            }
        }
        req.whole_response = true;
        let change = audit.map(|a| (a, admin_change::<P>(&req.conn)));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Response::Frame(frame) = fut.await? else {
                return Err(format!(
                    "{}: the broker's answer was not a frame",
                    api_name(P::KEY as i16)
                )
                .into());
            };
            merged::<P>(frame, version, answer, change)
        })
    }
}

/// The broker's answer: audited (what it did to each resource), and merged with the
/// refusals when some entries were refused.
fn merged<P: Plane>(
    frame: bytes::Bytes,
    version: i16,
    refused: Option<P::Resp>,
    change: Option<(Arc<Audit>, What)>,
) -> Result<Response, BoxError> {
    let (header, mut resp) = protocol::decode_response::<P::Resp>(&frame, P::KEY, version)?;
    if let Some((audit, mut change)) = change {
        if let What::AdminChange { resources, .. } = &mut change {
            *resources = P::results(&resp)
                .into_iter()
                .map(|(name, error)| Resource { name, error })
                .collect();
        }
        audit.emit(change);
    }
    let Some(refused) = refused else {
        return Ok(Response::Frame(frame));
    };
    P::merge(&mut resp, refused);
    let frame = protocol::encode_response(&header, &resp, P::KEY, version)?;
    Ok(Response::Frame(frame))
}

/// The audit event of an admin request that goes to the broker (its resources are filled
/// in from the answer).
fn admin_change<P: Plane>(conn: &ConnInfo) -> What {
    What::AdminChange {
        api: api_name(P::KEY as i16).into(),
        principal: conn.principal().to_string(),
        client_id: conn.client_id().unwrap_or_default().to_string(),
        peer: conn.peer.to_string(),
        resources: Vec::new(),
    }
}

fn answered<P: Plane>(header: &ResponseHeader, answer: &P::Resp, version: i16) -> BoxFut {
    let frame = protocol::encode_response(header, answer, P::KEY, version);
    Box::pin(async move { Ok(Response::Frame(frame.map_err(BoxError::from)?)) })
}

fn undecodable(key: ApiKey, version: i16, e: anyhow::Error) -> BoxFut {
    policy_decode(api_name(key as i16), version, e)
}

impl AdminPlaneLayer {
    /// Each entry's verdict, recorded, and the mode they are enforced in. Without a registry
    /// nothing is checked (the request is only audited).
    fn verdicts<P: Plane>(
        &self,
        body: &P::Req,
        conn: &ConnInfo,
        registry: Option<&Registry>,
    ) -> (Vec<Option<Refused>>, Mode) {
        let Some(registry) = registry else {
            return (Vec::new(), Mode::Shadow);
        };
        let principal = conn.principal();
        let ctx = Ctx {
            registry,
            principal: &principal,
            topic_ids: &self.topic_ids,
        };
        let verdicts = P::check(body, &ctx);
        let mode = registry.admin_policy.mode;
        self.record_all(conn, P::KEY, &verdicts, mode);
        (verdicts.into_iter().map(|(_, r)| r).collect(), mode)
    }

    fn record_all(
        &self,
        conn: &ConnInfo,
        api: ApiKey,
        verdicts: &[(String, Option<Refused>)],
        mode: Mode,
    ) {
        for (name, r) in verdicts {
            let Some(r) = r else { continue };
            let group_api = matches!(api, ApiKey::DeleteGroups | ApiKey::OffsetDelete);
            let (group, topic) = if group_api {
                (name.as_str(), "")
            } else {
                ("", name.as_str())
            };
            self.record.refused(
                conn,
                &Seen {
                    api,
                    group,
                    topic,
                    entry: "",
                    reason: r.reason,
                    mode,
                    hint: &r.message,
                },
            );
        }
    }
}

/// The message, where the version carries one.
pub(crate) fn message(r: &Refused, carries: bool) -> Option<StrBytes> {
    carries.then(|| StrBytes::from_string(r.message.clone()))
}
