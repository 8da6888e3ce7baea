//! The producer policy: who may write which topics, and at what rate
//! ([`crate::control::registry`]'s `[[producer]]` entries).
//!
//! Off until the registry lists a `[[producer]]` entry; then, for every Produce:
//! - **Topics.** Each topic of the request is checked on its own
//!   ([`Registry::produce_verdict`]): a producer no entry matches (`unregistered_producer`),
//!   or one whose entries do not list the topic (`topic_not_allowed`), is refused that topic
//!   with TOPIC_AUTHORIZATION_FAILED (29) on every partition, with the onboarding hint as the
//!   error message (v8+). A topic named by id (v13) is looked up in the instance's topic-id
//!   map; an id it does not know yet is answered UNKNOWN_TOPIC_ID (100), which clients retry
//!   after refreshing their metadata.
//! - **The rest goes through.** Refused topics are taken out of the request, the rest goes to
//!   the broker, and the refusals are added to its answer. A request with nothing left is
//!   answered by Tollgate alone. This is what a broker does when ACLs refuse some topics, so
//!   clients handle it as they handle ACLs: the refused batches fail, the others are
//!   acknowledged. The broker never sees a refused batch, so an idempotent producer's
//!   sequence numbers on the other partitions are untouched.
//! - **`acks=0`.** There is no answer to carry an error, so, as Kafka does with any error
//!   on an `acks=0` Produce, the rest is forwarded and then the connection is closed (the
//!   client notices, refreshes its metadata and reconnects).
//! - **Transactions.** AddPartitionsToTxn (v0–v3, sent by transactional producers before
//!   writing a partition) naming a topic the producer may not write is answered by Tollgate,
//!   as the broker answers an ACL refusal: the refused topics' partitions get
//!   TOPIC_AUTHORIZATION_FAILED, the others OPERATION_NOT_ATTEMPTED (55), and nothing is
//!   added; the producer aborts the transaction and goes on. (Brokers' batched v4+ form
//!   names other producers' transactions: refused whole, CLUSTER_AUTHORIZATION_FAILED, when
//!   any topic in it is refused.)
//! - **Budgets.** An entry's `produce_budget_bytes_per_second` is counted over the tier
//!   ([`crate::consumers::budgets`], [`Kind::Writes`](crate::consumers::budgets::Kind)):
//!   `alert` raises `tollgate_producer_over_budget`; `throttle` charges each request's record
//!   bytes when it arrives and holds it while the producer's bucket on this instance is in
//!   debt (as a broker mutes a quota-violating channel), and puts the hold the next request
//!   will get in the answer's `throttle_time_ms` (KIP-219);
//!   `reject` refuses its writes (`over_produce_budget`, POLICY_VIOLATION (44), which clients
//!   do not retry) while it is over the budget.
//! - **Modes.** An entry's own `mode`, else `producer_mode`, else `mode`. `shadow` logs and
//!   counts what `enforce` would refuse and lets it through.
//!
//! Every refusal is counted in `tollgate_rejected_requests_total{reason,api,mode}`, shown in
//! the console's refusal table and logged once per interval per client instance.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use kafka_protocol::messages::{
    add_partitions_to_txn_response, produce_response, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, ApiKey, ProduceRequest, ProduceResponse, ResponseHeader,
};
use kafka_protocol::protocol::StrBytes;
use tower::{Layer, Service};

use crate::brokers::topic_ids::TopicIds;
use crate::consumers::budgets::{Budget, Budgets};
use crate::consumers::identity::ConnInfo;
use crate::consumers::refusals::Refusals;
use crate::control::registry::{Mode, OverBudget, ProduceVerdict, Registry, RegistryHandle};
use crate::error::{BoxError, ProduceRefused};
use crate::layers::governance::{CLUSTER_AUTHORIZATION_FAILED, TOPIC_AUTHORIZATION_FAILED};
use crate::layers::record::{Record, Seen};
use crate::layers::request::{policy_decode, Request, Response};
use crate::metrics::Metrics;
use crate::wire::protocol;

/// UNKNOWN_TOPIC_ID.
const UNKNOWN_TOPIC_ID: i16 = 100;
/// POLICY_VIOLATION.
const POLICY_VIOLATION: i16 = 44;
/// OPERATION_NOT_ATTEMPTED.
const OPERATION_NOT_ATTEMPTED: i16 = 55;

/// APIs this layer decodes (their versions are capped in ApiVersions).
pub(crate) const PRODUCER_APIS: &[ApiKey] = &[ApiKey::Produce, ApiKey::AddPartitionsToTxn];

/// Built once; shared by every connection.
#[derive(Clone)]
pub struct ProducersLayer {
    registry: Arc<RegistryHandle>,
    topic_ids: Arc<TopicIds>,
    budgets: Arc<Budgets>,
    record: Arc<Record>,
}

impl ProducersLayer {
    pub fn new(
        registry: Arc<RegistryHandle>,
        topic_ids: Arc<TopicIds>,
        budgets: Arc<Budgets>,
        metrics: Arc<Metrics>,
        refusals: Arc<Refusals>,
    ) -> ProducersLayer {
        ProducersLayer {
            registry,
            topic_ids,
            budgets,
            record: Arc::new(Record::new("producer policy", metrics, refusals)),
        }
    }
}

impl<S> Layer<S> for ProducersLayer {
    type Service = ProducersService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProducersService {
            inner,
            cfg: self.clone(),
        }
    }
}

/// The producer policy around one connection's inner service.
#[derive(Clone)]
pub struct ProducersService<S> {
    inner: S,
    cfg: ProducersLayer,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

/// Who is producing: read from the connection once per request, not once per topic.
struct Who<'a> {
    conn: &'a ConnInfo,
    client_id: String,
    principal: Arc<str>,
}

impl<'a> Who<'a> {
    fn of(conn: &'a ConnInfo) -> Who<'a> {
        Who {
            conn,
            client_id: conn.client_id().unwrap_or_default(),
            principal: conn.principal(),
        }
    }
}

/// Why a topic is refused, and with what.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Refused {
    reason: &'static str,
    code: i16,
}

/// The decision for one topic of a request.
#[derive(Debug, Clone)]
struct TopicDecision {
    topic: String,
    /// The entry that owns the write (its name and budget), when one allows it.
    owner: Option<(String, Budget)>,
    /// Refused (in enforce mode); `None`: it goes to the broker.
    refused: Option<Refused>,
}

impl<S> Service<Request> for ProducersService<S>
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

    fn call(&mut self, req: Request) -> Self::Future {
        let registry = self.cfg.registry.get().filter(|r| !r.producers.is_empty());
        let (Some(registry), Some(key)) = (registry, req.meta.api) else {
            return Box::pin(self.inner.call(req));
        };
        let result = match key {
            ApiKey::Produce => self.produce(req, &registry),
            ApiKey::AddPartitionsToTxn => self.add_partitions(req, &registry),
            _ => Ok(Box::pin(self.inner.call(req)) as BoxFut),
        };
        result.unwrap_or_else(|(api, version, e)| policy_decode(api, version, e))
    }
}

type Undecodable = (&'static str, i16, anyhow::Error);

impl<S> ProducersService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// A Produce: refused topics out, the rest through (held and charged under a budget).
    fn produce(&mut self, mut req: Request, registry: &Registry) -> Result<BoxFut, Undecodable> {
        let version = req.meta.api_version;
        let undecodable = |e: anyhow::Error| ("Produce", version, e);
        let body = req.body::<ProduceRequest>().map_err(undecodable)?;
        let decisions = self.cfg.decide_produce(&req.conn, registry, &body);
        let refused = decisions.iter().filter(|d| d.refused.is_some()).count();
        let charges = charges(&body, &decisions);
        if refused == body.topic_data.len() && refused > 0 {
            return Ok(self.answer_alone(&req, &body, &decisions));
        }
        let answer = refused_topics(&body, &decisions, version >= 8);
        if refused > 0 {
            let mut rest = ProduceRequest::clone(&body);
            let mut i = 0;
            rest.topic_data.retain(|_| {
                i += 1;
                decisions[i - 1].refused.is_none()
            });
            req.set_body(rest).map_err(undecodable)?;
            req.whole_response = true;
        }
        let throttled = charges
            .iter()
            .any(|(_, b, _)| b.action == OverBudget::Throttle);
        req.whole_response |= throttled;
        let close_after = !req.meta.expects_response && refused > 0;
        // Held by the debt before this request; charged at once, so that the producer's
        // other requests in flight (up to five per connection) see these bytes too. Charged
        // after the answer, as reads are, a producer's pipelined batches all passed before
        // the first was counted.
        let wait = hold_before(&self.cfg.budgets, &charges);
        let next = charge(&self.cfg.budgets, &charges);
        let mut inner = self.inner.clone();
        Ok(Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let resp = inner.call(req).await?;
            if close_after {
                return Err(Box::new(ProduceRefused) as BoxError);
            }
            merge_produce(resp, answer, version, next)
        }))
    }

    /// Every topic refused: Tollgate answers (or, with `acks=0`, closes the connection).
    fn answer_alone(&self, req: &Request, body: &ProduceRequest, d: &[TopicDecision]) -> BoxFut {
        if !req.meta.expects_response {
            return Box::pin(async { Err(Box::new(ProduceRefused) as BoxError) });
        }
        let version = req.meta.api_version;
        let answer = refused_topics(body, d, version >= 8);
        let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
        let frame = protocol::encode_response(&header, &answer, ApiKey::Produce, version);
        Box::pin(async move { Ok(Response::Frame(frame.map_err(BoxError::from)?)) })
    }

    /// AddPartitionsToTxn naming a topic the producer may not write: answered here.
    fn add_partitions(&mut self, req: Request, registry: &Registry) -> Result<BoxFut, Undecodable> {
        let version = req.meta.api_version;
        let body = req
            .body::<AddPartitionsToTxnRequest>()
            .map_err(|e| ("AddPartitionsToTxn", version, e))?;
        let topics: Vec<String> = body
            .v3_and_below_topics
            .iter()
            .map(|t| t.name.to_string())
            .chain(
                body.transactions
                    .iter()
                    .flat_map(|x| x.topics.iter().map(|t| t.name.to_string())),
            )
            .collect();
        let who = Who::of(&req.conn);
        let refused: Vec<(String, Refused)> = topics
            .iter()
            .filter_map(|t| {
                let d = self
                    .cfg
                    .decide_topic(&who, registry, t, ApiKey::AddPartitionsToTxn);
                d.refused.map(|r| (d.topic, r))
            })
            .collect();
        if refused.is_empty() {
            return Ok(Box::pin(self.inner.call(req)));
        }
        let answer = txn_refusal(&body, &refused, version);
        let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
        let frame =
            protocol::encode_response(&header, &answer, ApiKey::AddPartitionsToTxn, version);
        Ok(Box::pin(async move {
            Ok(Response::Frame(frame.map_err(BoxError::from)?))
        }))
    }
}

impl ProducersLayer {
    /// One decision per topic of the request, in its order.
    fn decide_produce(
        &self,
        conn: &ConnInfo,
        registry: &Registry,
        body: &ProduceRequest,
    ) -> Vec<TopicDecision> {
        let who = Who::of(conn);
        body.topic_data
            .iter()
            .map(|t| {
                let name = match t.name.is_empty() && !t.topic_id.is_nil() {
                    true => self.topic_ids.lookup(&t.topic_id),
                    false => Some(t.name.to_string()),
                };
                match name {
                    Some(name) => self.decide_topic(&who, registry, &name, ApiKey::Produce),
                    None => self.unknown_id(conn, &t.topic_id.to_string()),
                }
            })
            .collect()
    }

    fn unknown_id(&self, conn: &ConnInfo, id: &str) -> TopicDecision {
        self.topic_ids.learn_all_soon();
        let refused = Refused {
            reason: "unknown_topic_id",
            code: UNKNOWN_TOPIC_ID,
        };
        self.record.refused(
            conn,
            &Seen {
                api: ApiKey::Produce,
                group: "",
                topic: id,
                entry: "",
                reason: refused.reason,
                mode: Mode::Enforce,
                hint: "",
            },
        );
        TopicDecision {
            topic: id.to_string(),
            owner: None,
            refused: Some(refused),
        }
    }

    /// May this connection write `topic`? Records what it refuses (or would, in shadow).
    fn decide_topic(
        &self,
        who: &Who,
        registry: &Registry,
        topic: &str,
        api: ApiKey,
    ) -> TopicDecision {
        let verdict = registry.produce_verdict(&who.client_id, &who.principal, topic);
        let (entry, reason) = match verdict {
            ProduceVerdict::Ungoverned => (None, None),
            ProduceVerdict::Allowed(e) => (Some(e), None),
            ProduceVerdict::TopicNotAllowed(e) => (Some(e), Some("topic_not_allowed")),
            ProduceVerdict::Unregistered => (None, Some("unregistered_producer")),
        };
        let owner = match (reason, entry) {
            (None, Some(e)) => e
                .produce_budget_bytes_per_second
                .map(|b| (e.name(), budget(b, e.on_over_budget))),
            _ => None,
        };
        // `over` raises the over-budget gauge for alert budgets too; only reject refuses.
        let over = owner.as_ref().filter(|(name, b)| {
            api == ApiKey::Produce
                && self.budgets.over(name, Some(*b))
                && b.action == OverBudget::Reject
        });
        let refused = match (reason, over) {
            (Some(reason), _) => Some(Refused {
                reason,
                code: TOPIC_AUTHORIZATION_FAILED,
            }),
            (None, Some(_)) => Some(Refused {
                reason: "over_produce_budget",
                code: POLICY_VIOLATION,
            }),
            (None, None) => None,
        };
        let mode = registry.produce_mode(entry);
        if let Some(r) = refused {
            let seen = Seen {
                api,
                group: "",
                topic,
                entry: &entry.map(|e| e.name()).unwrap_or_default(),
                reason: r.reason,
                mode,
                hint: &registry.producer_onboarding_hint(),
            };
            self.record.refused(who.conn, &seen);
        }
        TopicDecision {
            topic: topic.to_string(),
            owner,
            refused: refused.filter(|_| mode == Mode::Enforce),
        }
    }
}

fn budget(bytes_per_second: u64, action: OverBudget) -> Budget {
    Budget {
        bytes_per_second,
        action,
    }
}

/// The record bytes each budgeted producer entry writes in this request (refused topics
/// not counted): (entry, budget, bytes).
fn charges(body: &ProduceRequest, decisions: &[TopicDecision]) -> Vec<(String, Budget, u64)> {
    let mut by_entry: HashMap<String, (Budget, u64)> = HashMap::new();
    for (t, d) in body.topic_data.iter().zip(decisions) {
        let (Some((name, b)), None) = (&d.owner, d.refused) else {
            continue;
        };
        let bytes: u64 = t
            .partition_data
            .iter()
            .filter_map(|p| p.records.as_ref())
            .map(|r| r.len() as u64)
            .sum();
        by_entry.entry(name.clone()).or_insert((*b, 0)).1 += bytes;
    }
    by_entry
        .into_iter()
        .map(|(n, (b, bytes))| (n, b, bytes))
        .collect()
}

/// How long to hold the request: the longest hold of its throttled entries.
fn hold_before(budgets: &Budgets, charges: &[(String, Budget, u64)]) -> Duration {
    charges
        .iter()
        .filter_map(|(name, b, _)| budgets.before(name, Some(*b)))
        .map(|h| h.wait)
        .max()
        .unwrap_or_default()
}

/// Charge the written bytes; returns the hold the next request will get.
fn charge(budgets: &Budgets, charges: &[(String, Budget, u64)]) -> Duration {
    charges
        .iter()
        .map(|(name, b, bytes)| budgets.served(name, *bytes, Some(*b)))
        .max()
        .unwrap_or_default()
}

/// The answer for the refused topics of `body` (every partition, the topic's error).
fn refused_topics(
    body: &ProduceRequest,
    d: &[TopicDecision],
    with_message: bool,
) -> ProduceResponse {
    produce_answer(body, |i| {
        let r = d.get(i)?.refused?;
        Some((r.code, with_message.then(|| message(r.reason))))
    })
}

/// A Produce answer for the topics `refused` names, by their index in `body`: each of their
/// partitions gets the error code (and message, where the version carries one). Also the
/// own-topics guard's answer.
pub(crate) fn produce_answer(
    body: &ProduceRequest,
    refused: impl Fn(usize) -> Option<(i16, Option<StrBytes>)>,
) -> ProduceResponse {
    let responses = body
        .topic_data
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((t, refused(i)?)))
        .map(|(t, (code, msg))| {
            let parts = t.partition_data.iter().map(|p| {
                produce_response::PartitionProduceResponse::default()
                    .with_index(p.index)
                    .with_error_code(code)
                    .with_base_offset(-1)
                    .with_error_message(msg.clone())
            });
            produce_response::TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_partition_responses(parts.collect())
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

fn message(reason: &str) -> StrBytes {
    StrBytes::from_string(match reason {
        "over_produce_budget" => {
            "Tollgate: this producer is over its produce budget (tollgate_producer_over_budget)"
                .to_string()
        }
        "unknown_topic_id" => "Tollgate: topic id not known yet; refresh metadata".to_string(),
        _ => "Tollgate: this producer may not write this topic; register it and its topics in \
              the Tollgate registry"
            .to_string(),
    })
}

/// The broker's answer with the refused topics added and `throttle_time_ms` raised to `next`.
fn merge_produce(
    resp: Response,
    refused: ProduceResponse,
    version: i16,
    next: Duration,
) -> Result<Response, BoxError> {
    if refused.responses.is_empty() && next.is_zero() {
        return Ok(resp);
    }
    let Response::Frame(frame) = resp else {
        return Ok(resp);
    };
    let (header, mut body) =
        protocol::decode_response::<ProduceResponse>(&frame, ApiKey::Produce, version)?;
    body.responses.extend(refused.responses);
    let ms = i32::try_from(next.as_millis()).unwrap_or(i32::MAX);
    body.throttle_time_ms = body.throttle_time_ms.max(ms);
    Ok(Response::Frame(protocol::encode_response(
        &header,
        &body,
        ApiKey::Produce,
        version,
    )?))
}

/// AddPartitionsToTxn answered as a broker answers an ACL refusal.
fn txn_refusal(
    body: &AddPartitionsToTxnRequest,
    refused: &[(String, Refused)],
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version >= 4 {
        return AddPartitionsToTxnResponse::default().with_error_code(CLUSTER_AUTHORIZATION_FAILED);
    }
    let code_of = |topic: &str| {
        refused
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(OPERATION_NOT_ATTEMPTED, |(_, r)| r.code)
    };
    let results = body
        .v3_and_below_topics
        .iter()
        .map(|t| {
            let code = code_of(&t.name);
            let parts = t.partitions.iter().map(|p| {
                add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                    .with_partition_index(*p)
                    .with_partition_error_code(code)
            });
            add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(parts.collect())
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

#[cfg(test)]
mod tests;
