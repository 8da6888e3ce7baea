//! The request path as a tower stack. The types that flow through it ([`Request`],
//! [`Response`]) live in [`crate::request`], below the layers.
//! [`build_stack`] is the ONE place where the order of the policy layers is written, innermost
//! last. A stack is built per client connection around that connection's upstream, so layers
//! hold only cheap `Arc`s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::util::BoxService;
use tower::{Service, ServiceBuilder};

use crate::attribution::Attribution;
use crate::error::BoxError;
use crate::groups::Groups;
use crate::heads::Heads;
use crate::lag::Lag;
use crate::layers;
use crate::metrics::Metrics;
use crate::registry::RegistryHandle;
use crate::topic_ids::TopicIds;
use crate::topology::Topology;
use crate::upstream::{LazyUpstream, Reply, ReplyMode};

pub use crate::request::{ConnInfo, ListenerKind, Request, Response, Routed};

/// The boxed per-connection service.
pub type ProxyService = BoxService<Request, Response, BoxError>;

/// What the layers share across connections.
#[derive(Clone)]
pub struct StackShared {
    pub metrics: Arc<Metrics>,
    pub topology: Arc<Topology>,
    pub heads: Arc<Heads>,
    pub topic_ids: Arc<TopicIds>,
    pub attribution: Arc<Attribution>,
    pub groups: Arc<Groups>,
    pub lag: Arc<Lag>,
    pub refusals: Arc<crate::refusals::Refusals>,
    pub budgets: Arc<crate::budgets::Budgets>,
    pub registry: Arc<RegistryHandle>,
    /// Tiered reads (`tiered.enabled`).
    pub tiered: Option<Arc<crate::tiered::Tiered>>,
    /// `governance.require_authentication`.
    pub require_authentication: bool,
    /// Follows SASL exchanges; holds back unauthenticated clients when required.
    pub sasl: layers::sasl::SaslLayer,
    /// Tollgate's own topics: no client writes or administers them.
    pub own_topics: layers::own_topics::OwnTopicsLayer,
    /// Cluster administration only with the client's own broker identity.
    pub cluster_admin: layers::cluster_admin::ClusterAdminLayer,
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
            layers::attribution::Sinks {
                attribution: shared.attribution.clone(),
                heads: shared.heads.clone(),
                topic_ids: shared.topic_ids.clone(),
                groups: shared.groups.clone(),
                lag: shared.lag.clone(),
            },
        ))
        // Tollgate's own topics; inside attribution, so a refused Produce is counted as the
        // partition errors the client sees.
        .layer(shared.own_topics.clone())
        // Cluster administration (ACLs, SCRAM credentials, reassignments, elections) with
        // Tollgate's broker identity is refused; inside attribution, like the guard above.
        .layer(shared.cluster_admin.clone())
        // The consumer onboarding policy; inside attribution, so attribution sees the
        // refusals the client sees (a refused JoinGroup makes no member).
        .layer(
            layers::governance::GovernanceLayer::new(
                shared.registry.clone(),
                shared.topic_ids.clone(),
                shared.metrics.clone(),
            )
            .recording(shared.refusals.clone())
            .requiring_authentication(shared.require_authentication),
        )
        // Read budgets: a group over its budget is held here, after governance (refused reads
        // never count) and before routing (the budget covers both clusters).
        .layer(layers::budget::BudgetLayer::new(
            shared.budgets.clone(),
            shared.registry.clone(),
        ))
        // Tiered reads: cold and probation partitions to the secondary cluster. Inside
        // governance (refused partitions never get here), outside rewrite (the primary's
        // share still has its addresses and versions handled there).
        .layer(layers::routing::RoutingLayer::new(
            shared.tiered.clone(),
            layers::routing::RoutingInputs {
                heads: shared.heads.clone(),
                topic_ids: shared.topic_ids.clone(),
                lag: shared.lag.clone(),
                registry: shared.registry.clone(),
            },
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
