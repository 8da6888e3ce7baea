//! The request path as a tower stack, and the types that flow through it.
//!
//! A [`Request`] is one whole frame from a client plus what was read from its header and who
//! sent it; a [`Response`] is the frame to send back, or nothing (Produce with `acks=0`).
//! [`build_stack`] is the ONE place where the order of the policy layers is written, innermost
//! last. A stack is built per client connection around that connection's upstream, so layers
//! hold only cheap `Arc`s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tower::util::BoxService;
use tower::{Service, ServiceBuilder};

use crate::attribution::Attribution;
use crate::error::BoxError;
use crate::groups::Binding;
use crate::layers;
use crate::metrics::Metrics;
use crate::protocol::RequestMeta;
use crate::registry::RegistryHandle;
use crate::topology::Topology;
use crate::upstream::{LazyUpstream, Reply, ReplyMode, StreamedFrame};

pub use crate::identity::{ConnInfo, ListenerKind};

/// One request from a client.
#[derive(Debug, Clone)]
pub struct Request {
    pub meta: RequestMeta,
    /// The whole frame, size prefix included.
    pub frame: Bytes,
    pub conn: Arc<ConnInfo>,
    /// A layer needs the whole response frame (it decodes it). When `false`, a large
    /// response may be forwarded cut-through ([`Response::Stream`]) as it arrives.
    pub whole_response: bool,
    /// What the routing layer tells the layers above it about this request.
    pub routed: Arc<Routed>,
    /// For a read (Fetch, ListOffsets) from a consumer: the group the reading connection
    /// belongs to. Decided ONCE per request, by the attribution layer (which holds the
    /// connection's whole fetch session), before any layer below sees the request;
    /// governance, routing and the lag view read it and never decide again.
    pub tie: Option<Arc<Binding>>,
}

/// Filled by the routing layer: the (topic, partition) pairs of a Fetch that the secondary
/// cluster answered. Unset: all came from the primary.
#[derive(Debug, Default)]
pub struct Routed {
    pub secondary: std::sync::OnceLock<std::collections::HashSet<(String, i32)>>,
}

impl Request {
    pub fn new(meta: RequestMeta, frame: Bytes, conn: Arc<ConnInfo>) -> Request {
        let whole_response = meta
            .api
            .is_some_and(|k| layers::rewrite::REWRITTEN_APIS.contains(&k));
        Request {
            meta,
            frame,
            conn,
            whole_response,
            routed: Arc::default(),
            tie: None,
        }
    }
}

/// What goes back to the client.
#[derive(Debug)]
pub enum Response {
    /// A whole response frame, size prefix included.
    Frame(Bytes),
    /// A large response forwarded as it arrives (only when the request allowed it).
    Stream(StreamedFrame),
    /// No response is due (Produce with `acks=0`).
    None,
}

/// The boxed per-connection service.
pub type ProxyService = BoxService<Request, Response, BoxError>;

/// What the layers share across connections.
#[derive(Clone)]
pub struct StackShared {
    pub metrics: Arc<Metrics>,
    pub topology: Arc<Topology>,
    pub attribution: Arc<Attribution>,
    pub registry: Arc<RegistryHandle>,
    /// Tiered reads (`tiered.enabled`).
    pub tiered: Option<Arc<crate::tiered::Tiered>>,
    /// `governance.require_authentication`.
    pub require_authentication: bool,
    /// Follows SASL exchanges; holds back unauthenticated clients when required.
    pub sasl: layers::sasl::SaslLayer,
    /// Tollgate's own topics: no client writes or administers them.
    pub own_topics: layers::own_topics::OwnTopicsLayer,
}

/// Build the request stack for one client connection, outermost layer first.
pub fn build_stack(shared: &StackShared, upstream: Arc<LazyUpstream>) -> ProxyService {
    let stack = ServiceBuilder::new()
        // Outermost: sees every request, including any a later layer answers itself.
        .layer(layers::metrics::MetricsLayer::new(shared.metrics.clone()))
        // Who the client is: before every layer that reads the principal or answers on its
        // own (with its own broker connections) for the client.
        .layer(shared.sasl.clone())
        // Reads Produce/Fetch/group traffic; sees responses as the client will.
        .layer(layers::attribution::AttributionLayer::new(
            shared.attribution.clone(),
        ))
        // Tollgate's own topics; inside attribution, so a refused Produce is counted as the
        // partition errors the client sees.
        .layer(shared.own_topics.clone())
        // The consumer onboarding policy; inside attribution, so attribution sees the
        // refusals the client sees (a refused JoinGroup makes no member).
        .layer(
            layers::governance::GovernanceLayer::new(
                shared.registry.clone(),
                shared.attribution.clone(),
                shared.metrics.clone(),
            )
            .requiring_authentication(shared.require_authentication),
        )
        // Tiered reads: cold and probation partitions to the secondary cluster. Inside
        // governance (refused partitions never get here), outside rewrite (the primary's
        // share still has its addresses and versions handled there).
        .layer(layers::routing::RoutingLayer::new(
            shared.tiered.clone(),
            shared.attribution.clone(),
            shared.registry.clone(),
        ))
        // Broker addresses in responses point back at Tollgate's listeners.
        .layer(layers::rewrite::RewriteLayer::new(
            shared.topology.clone(),
            shared.metrics.clone(),
        ))
        // Innermost: the broker.
        .service(Upstream { conn: upstream });
    BoxService::new(stack)
}

/// The innermost service: forwards the frame unchanged to this connection's broker (opened
/// on the first request).
#[derive(Clone)]
pub struct Upstream {
    conn: Arc<LazyUpstream>,
}

impl Service<Request> for Upstream {
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let conn = self.conn.clone();
        Box::pin(async move {
            let mode = match (req.meta.expects_response, req.whole_response) {
                (false, _) => ReplyMode::NoResponse,
                (true, true) => ReplyMode::Whole,
                (true, false) => ReplyMode::MayStream,
            };
            let conn = conn.get().await?;
            Ok(
                match conn.send(req.frame, req.meta.correlation_id, mode).await? {
                    Reply::Frame(frame) => Response::Frame(frame),
                    Reply::Stream(s) => Response::Stream(s),
                    Reply::None => Response::None,
                },
            )
        })
    }
}
