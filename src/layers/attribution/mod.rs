//! The attribution layer: reads Produce, Fetch and the consumer-group APIs as they pass and
//! reports to [`Usage`]. It never changes a request or a response, and it never fails
//! one: what it cannot decode is forwarded as it is and counted in
//! `tollgate_attribution_errors_total{api}`.
//!
//! This file holds the service, the per-connection state and the dispatch; Produce and Fetch
//! are read in `traffic.rs`, the group APIs in `group.rs`.
//!
//! - **Produce**: the request's record batches give bytes and records per topic partition
//!   (batch headers only, never decompressed); they are counted when the response
//!   acknowledges the partition (right away for `acks=0`), and partition errors are counted
//!   by error name.
//! - **Fetch**: the response gives each partition's head and record batches, counted for the
//!   reader the consumer decision named ([`Request::consumer`]), and its fetch positions
//!   from the connection's fetch session ([`FetchSession`], kept by the decision layer).
//!   Large responses are not held back: they go to the client cut-through and are read from
//!   the forwarded chunks afterwards. Partitions the routing layer had the secondary serve
//!   come back on its answer ([`crate::layers::request::Answer::from_secondary`]).
//! - **Groups**: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit and
//!   ConsumerGroupHeartbeat feed [`crate::consumers::groups::Groups`], which ties each fetching
//!   connection to its group (the rule is in that module's docs). Each is applied when the
//!   broker's *answer* says it succeeded: a request governance refused, or the coordinator
//!   rejected, changes nothing. OffsetFetch ties nothing (anyone may ask for a group's
//!   offsets).
//! - **Fetch from a follower** (`replica_id >= 0`): no consumer decision, not counted;
//!   governance refuses it.
//! - **Metadata**: topic ids, for Produce v13 and Fetch v13+, which name topics by id.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, FetchResponse, ListOffsetsRequest, MetadataResponse, ProduceResponse,
};
use kafka_protocol::protocol::buf::ByteBuf;
use tower::{Layer, Service};
use tracing::debug;

use crate::brokers::topic_ids::TopicIds;
use crate::consumers::decision::FetchSession;
use crate::consumers::groups::Groups;
use crate::consumers::groups::{Tie, TopicPartition};
use crate::consumers::heads::Heads;
use crate::consumers::lag::Lag;
use crate::consumers::usage::Usage;
use crate::error::BoxError;
use crate::layers::request::{ConnInfo, Request, Response};
use crate::wire::protocol::{api_name, decode_response_from};
use crate::wire::records::Chunks;

/// APIs this layer decodes (their versions are capped in ApiVersions).
pub(crate) const ATTRIBUTED_APIS: &[ApiKey] = &[
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
/// state, [`crate::app::App`]).
#[derive(Clone)]
pub struct Sinks {
    pub usage: Arc<Usage>,
    pub heads: Arc<Heads>,
    pub topic_ids: Arc<TopicIds>,
    pub groups: Arc<Groups>,
    pub lag: Arc<Lag>,
    /// The usage windows of the audit trail (none: not kept).
    pub ledger: Option<Arc<crate::consumers::ledger::Ledger>>,
}

/// Builds [`AttributionService`]: one per connection, reading that connection's fetch
/// session, feeding the shared components ([`Sinks`]).
#[derive(Clone)]
pub struct AttributionLayer {
    sinks: Sinks,
    session: Arc<FetchSession>,
}

impl AttributionLayer {
    pub fn new(sinks: Sinks, session: Arc<FetchSession>) -> Self {
        Self { sinks, session }
    }
}

impl<S> Layer<S> for AttributionLayer {
    type Service = AttributionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AttributionService {
            inner,
            state: Arc::new(ConnState {
                sinks: self.sinks.clone(),
                traffic: traffic::Traffic {
                    sinks: self.sinks.clone(),
                    session: self.session.clone(),
                },
                group_apis: group::GroupApis {
                    sinks: self.sinks.clone(),
                },
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

/// Per-connection state: the reader of Produce and Fetch ([`traffic::Traffic`]), the reader
/// of the group APIs ([`group::GroupApis`]), and the connection's id, to tell the group view
/// when it closes. This file dispatches to them.
struct ConnState {
    sinks: Sinks,
    traffic: traffic::Traffic,
    group_apis: group::GroupApis,
    conn_id: Mutex<Option<u64>>,
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
        /// The reader's group, from the consumer decision.
        tie: Tie,
        /// When the request went on (the secondary's serving time, for the ledger).
        started: std::time::Instant,
    },
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
        /// A first heartbeat (member epoch 0): the member is joining.
        joining: bool,
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
        let state = self.state.clone();
        let expects_response = req.meta.expects_response;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            state.after(key, version, pending, expects_response, response, conn)
        })
    }
}

impl ConnState {
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
            self.traffic.produced_unacknowledged(pending, &conn);
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
            // Decoded by a layer below: read as it is.
            Response::Fetch(a) => {
                if let Pending::Fetch {
                    isolation_committed,
                    tie,
                    started,
                } = pending
                {
                    let read = traffic::FetchRead {
                        read_committed: isolation_committed,
                        secondary: Some(&a.from_secondary),
                        tie: &tie,
                        seconds: started.elapsed().as_secs_f64(),
                    };
                    self.traffic.on_fetch_response(&a.body, &conn, read);
                }
                Response::Fetch(a)
            }
            Response::Metadata(a) => {
                if let Pending::Metadata = pending {
                    self.learn_topic_ids(&a.body);
                }
                Response::Metadata(a)
            }
            Response::None => Response::None,
        })
    }

    fn decode_failed(&self, key: ApiKey, conn: &ConnInfo, e: &anyhow::Error) {
        debug!(conn = conn.id, api = api_name(key as i16), error = %e,
               "attribution could not decode; forwarded unchanged");
        self.sinks
            .usage
            .metrics()
            .attribution_errors
            .with_label_values(&[api_name(key as i16)])
            .inc();
    }

    /// Read a request; returns what the response handler needs.
    fn on_request(&self, key: ApiKey, request: &Request) -> anyhow::Result<Option<Pending>> {
        Ok(match key {
            ApiKey::Produce => Some(self.traffic.on_produce_request(request)?),
            ApiKey::Fetch => return self.traffic.on_fetch_request(request),
            ApiKey::ListOffsets => {
                request.body::<ListOffsetsRequest>()?; // decodable, or counted
                None
            }
            ApiKey::Metadata => Some(Pending::Metadata),
            _ => self.group_apis.on_group_request(key, request)?,
        })
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
        match pending {
            Pending::Produce(parts) => {
                let (_, resp) = decode_response_from::<ProduceResponse, B>(buf, key, version)?;
                self.traffic.on_produce_response(&resp, &parts, conn);
            }
            Pending::Fetch {
                isolation_committed,
                tie,
                started,
            } => {
                let (_, resp) = decode_response_from::<FetchResponse, B>(buf, key, version)?;
                let read = traffic::FetchRead {
                    read_committed: isolation_committed,
                    secondary: None,
                    tie: &tie,
                    seconds: started.elapsed().as_secs_f64(),
                };
                self.traffic.on_fetch_response(&resp, conn, read);
            }
            Pending::Metadata => {
                let (_, resp) = decode_response_from::<MetadataResponse, B>(buf, key, version)?;
                self.learn_topic_ids(&resp);
            }
            group => (self.group_apis).on_group_response(key, version, group, buf, conn)?,
        }
        Ok(())
    }
}

impl ConnState {
    /// Topic ids and names from a Metadata answer (Fetch v13+ names topics by id).
    fn learn_topic_ids(&self, resp: &MetadataResponse) {
        self.sinks.topic_ids.learn(
            resp.topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| (t.topic_id, n.to_string()))),
        );
    }
}

/// The Kafka name of an error code (`NOT_LEADER_OR_FOLLOWER`), or `UNKNOWN_SERVER_ERROR`.
pub(crate) fn error_name(code: i16) -> &'static str {
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

mod group;
#[cfg(test)]
mod tests;
mod traffic;
