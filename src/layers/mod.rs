//! Policy layers of the request stack. Their order is written in [`crate::stack::build_stack`].
//!
//! - [`metrics`]: outermost; counts and times every request, and counts the ones that fail.
//! - [`attribution`]: reads Produce, Fetch and the group APIs (never changes them) to
//!   attribute traffic to clients and groups.
//! - [`rewrite`]: broker address rewriting and ApiVersions capping.
//!
//! - [`governance`]: the consumer onboarding policy: refuses unregistered groups and
//!   unmonitored or out-of-policy reads.
//!
//! The routing layer slots in here.

use kafka_protocol::messages::ApiKey;

pub mod attribution;
pub mod governance;
pub mod metrics;
pub mod rewrite;

/// Every API whose bodies some layer decodes. ApiVersions responses cap these to the versions
/// `kafka-protocol` can decode, so a client never picks a version a layer would fail on.
pub fn decoded_apis() -> &'static [ApiKey] {
    static ALL: std::sync::OnceLock<Vec<ApiKey>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut v = rewrite::REWRITTEN_APIS.to_vec();
        for k in attribution::ATTRIBUTED_APIS
            .iter()
            .chain(governance::GOVERNED_APIS)
        {
            if !v.contains(k) {
                v.push(*k);
            }
        }
        v
    })
}
