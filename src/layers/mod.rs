//! The policy stack: the types that flow through it ([`request`]), the one place the layers
//! are put in order ([`stack::Stack::for_connection`]), and the layers, outermost first:
//!
//! - [`metrics`]: outermost; counts and times every request, and counts the ones that fail.
//! - [`sasl`]: follows each client's SASL exchange with the broker to learn its principal;
//!   with `proxy.sasl.required`, closes connections that skip it.
//! - [`decision`]: the consumer decision, once per read ([`crate::consumers::decision`]).
//! - [`attribution`]: reads Produce, Fetch and the group APIs (never changes them) to
//!   attribute traffic to clients and groups.
//! - [`governance`]: the consumer onboarding policy: refuses unregistered groups and
//!   unmonitored or out-of-policy reads.
//! - [`own_topics`]: Tollgate's own topics (state, offset syncs) refuse client writes and
//!   administration.
//! - [`cluster_admin`]: ACL, SCRAM credential, reassignment and leader-election requests are
//!   refused unless the broker sees the client's own (SASL) principal.
//! - [`admin_plane`]: the admin-plane policy: who may create, delete and alter topics, groups
//!   and ACLs, and what new topics must look like (name, partitions, replication, retention).
//! - [`offsets`]: offset protection: commits that would move a registered group back
//!   further than its limits, and offset deletions, are refused unless a window is open.
//! - [`producers`]: the producer policy: who may write which topics (refused topics get
//!   TOPIC_AUTHORIZATION_FAILED, the rest goes through) and produce budgets, tier-wide.
//! - [`budget`]: holds the Fetches of a group over its read budget (`on_over_budget =
//!   "throttle"`), tier-wide.
//! - [`routing`]: tiered reads: cold and probation partition fetches go to the secondary
//!   cluster, with offsets translated both ways.
//! - [`rewrite`]: innermost; broker address rewriting and ApiVersions capping.

use kafka_protocol::messages::ApiKey;

pub mod admin_plane;
pub mod attribution;
pub(crate) mod budget;
pub(crate) mod cluster_admin;
pub mod decision;
pub mod governance;
pub(crate) mod metrics;
pub mod offsets;
pub mod own_topics;
pub mod producers;
pub(crate) mod record;
pub mod request;
pub(crate) mod rewrite;
pub(crate) mod routing;
pub(crate) mod sasl;
pub(crate) mod stack;

pub use crate::wire::versions::decodable_versions;

/// Every API whose bodies some layer decodes. ApiVersions responses cap these to the versions
/// `kafka-protocol` can decode, so a client never picks a version a layer would fail on.
pub fn decoded_apis() -> &'static [ApiKey] {
    static ALL: std::sync::OnceLock<Vec<ApiKey>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut v = rewrite::REWRITTEN_APIS.to_vec();
        for k in attribution::ATTRIBUTED_APIS
            .iter()
            .chain(governance::GOVERNED_APIS)
            .chain(own_topics::GUARDED_APIS)
            .chain(producers::PRODUCER_APIS)
            .chain(admin_plane::ADMIN_APIS)
            .chain(sasl::SASL_APIS)
        {
            if !v.contains(k) {
                v.push(*k);
            }
        }
        v
    })
}

pub(crate) use crate::consumers::decision::listed_partitions;
