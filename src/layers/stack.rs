//! The request path as a tower stack. The types that flow through it ([`Request`],
//! [`Response`]) live in [`crate::layers::request`], below the layers.
//! [`Stack::for_connection`] is the ONE place where the order of the policy layers is written,
//! innermost last. A stack is built per client connection around that connection's upstream,
//! from layers built once per proxy, so a connection's layers hold only cheap `Arc`s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::util::BoxService;
use tower::{Service, ServiceBuilder};

use crate::brokers::upstream::{LazyUpstream, Reply, ReplyMode};
use crate::consumers::decision::{Decider, FetchSession};
use crate::error::BoxError;
use crate::layers;

pub(crate) use crate::layers::request::{ConnInfo, ListenerKind, Request, Response};

/// The boxed per-connection service.
pub(crate) type ProxyService = BoxService<Request, Response, BoxError>;

/// The policy layers, each built once per proxy with the inputs it uses (by
/// [`crate::app::App::build`]); [`Stack::for_connection`] puts them around one connection's
/// upstream, in the one order they run.
#[derive(Clone)]
pub(crate) struct Stack {
    pub(crate) metrics: layers::metrics::MetricsLayer,
    /// Follows SASL exchanges; holds back unauthenticated clients when required.
    pub(crate) sasl: layers::sasl::SaslLayer,
    /// The consumer decision (per connection: around that connection's fetch session).
    pub(crate) decider: Arc<Decider>,
    /// What attribution feeds (per connection: reads that connection's fetch session).
    pub(crate) attribution: layers::attribution::Sinks,
    /// Tollgate's own topics: no client writes or administers them.
    pub(crate) own_topics: layers::own_topics::OwnTopicsLayer,
    /// Cluster administration only with the client's own broker identity.
    pub(crate) cluster_admin: layers::cluster_admin::ClusterAdminLayer,
    pub(crate) governance: layers::governance::GovernanceLayer,
    pub(crate) admin_plane: layers::admin_plane::AdminPlaneLayer,
    pub(crate) offsets: layers::offsets::OffsetsLayer,
    pub(crate) producers: layers::producers::ProducersLayer,
    pub(crate) budget: layers::budget::BudgetLayer,
    pub(crate) routing: layers::routing::RoutingLayer,
    pub(crate) rewrite: layers::rewrite::RewriteLayer,
}

impl Stack {
    /// The request stack for one client connection, outermost layer first.
    pub(crate) fn for_connection(&self, upstream: Arc<LazyUpstream>) -> ProxyService {
        // The connection's fetch session: the decision layer keeps it, attribution reads it.
        let session = Arc::new(FetchSession::default());
        let stack = ServiceBuilder::new()
            // Outermost: sees every request, including any a later layer answers itself.
            .layer(self.metrics.clone())
            // Who the client is: before every layer that reads the principal or answers on
            // its own (with its own broker connections) for the client.
            .layer(self.sasl.clone())
            // Who is reading: the one consumer decision per read, before any policy.
            .layer(layers::decision::DecisionLayer::new(
                self.decider.clone(),
                session.clone(),
            ))
            // Reads Produce/Fetch/group traffic; sees responses as the client will.
            .layer(layers::attribution::AttributionLayer::new(
                self.attribution.clone(),
                session,
            ))
            // Tollgate's own topics; inside attribution, so a refused Produce is counted as
            // the partition errors the client sees.
            .layer(self.own_topics.clone())
            // Cluster administration (ACLs, SCRAM credentials, reassignments, elections) with
            // Tollgate's broker identity is refused; inside attribution, like the guard above.
            .layer(self.cluster_admin.clone())
            // The consumer onboarding policy; inside attribution, so attribution sees the
            // refusals the client sees (a refused JoinGroup makes no member).
            .layer(self.governance.clone())
            // The producer policy; inside attribution (a refused Produce is counted as the
            // partition errors the client sees) and own_topics (Tollgate's topics are refused
            // whatever the registry says).
            // The admin-plane policy; inside own_topics and cluster_admin (their refusals come
            // first) and governance (a group the caller may not use is refused there).
            .layer(self.admin_plane.clone())
            // Offset protection; inside governance (commits of groups the caller may not use
            // never get here), inside attribution (a refused commit is not seen as one).
            .layer(self.offsets.clone())
            .layer(self.producers.clone())
            // Read budgets: a group over its budget is held here, after governance (refused
            // reads never count) and before routing (the budget covers both clusters).
            .layer(self.budget.clone())
            // Tiered reads: cold, probation and demoted partitions to the secondary cluster.
            // Inside governance (refused partitions never get here), outside rewrite (the
            // primary's share still has its addresses and versions handled there).
            .layer(self.routing.clone())
            // Broker addresses in responses point back at Tollgate's listeners.
            .layer(self.rewrite.clone())
            // Innermost: the broker.
            .service(Upstream { conn: upstream });
        BoxService::new(stack)
    }
}

/// The innermost service: forwards the frame unchanged to this connection's broker (opened
/// on the first request).
#[derive(Clone)]
pub(crate) struct Upstream {
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
            // The one place a changed request is encoded (see `Request::frame`).
            let frame = req.frame().map_err(|e| -> BoxError { e.into() })?;
            let conn = conn.get().await?;
            Ok(
                match conn.send(frame, req.meta.correlation_id, mode).await? {
                    Reply::Frame(frame) => Response::Frame(frame),
                    Reply::Stream(s) => Response::Stream(s),
                    Reply::None => Response::None,
                },
            )
        })
    }
}
