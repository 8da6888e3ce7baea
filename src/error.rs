//! Error classification, in one place.
//!
//! Leaves are typed `thiserror` errors ([`crate::brokers::upstream::UpstreamError`],
//! [`crate::brokers::topology::TopologyError`], and the two the policy layers raise, defined here:
//! [`RewriteError`], [`PolicyDecodeError`]). They travel up the stack as a [`BoxError`];
//! [`reason`] walks the `source()` chain to find the leaf and name it with a low-cardinality
//! label for metrics and logs. This module imports no layer: the layers import it.

use std::error::Error;

use crate::brokers::topology::TopologyError;

/// The error type carried through the tower stack.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A response that should have been rewritten could not be.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RewriteError {
    #[error("cannot decode {api} v{version} response from the broker: {reason}")]
    Decode {
        api: &'static str,
        version: i16,
        reason: String,
    },
    #[error("cannot encode rewritten {api} v{version} response: {reason}")]
    Encode {
        api: &'static str,
        version: i16,
        reason: String,
    },
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

impl RewriteError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            RewriteError::Decode { .. } => "rewrite_decode",
            RewriteError::Encode { .. } => "rewrite_encode",
            RewriteError::Topology(e) => e.reason(),
        }
    }
}

/// A governed request that could not be decoded; its connection is closed.
#[derive(Debug, thiserror::Error)]
#[error("consumer policy cannot decode {api} v{version} request: {reason}")]
pub(crate) struct PolicyDecodeError {
    pub(crate) api: &'static str,
    pub(crate) version: i16,
    pub(crate) reason: String,
}

/// A Produce with `acks=0` had a topic refused by the producer policy: as Kafka does for
/// any error on such a request, the connection is closed (the rest was forwarded).
#[derive(Debug, thiserror::Error)]
#[error("producer policy refused a topic of an acks=0 Produce; closing the connection")]
pub(crate) struct ProduceRefused;

/// A short, bounded label for an error: the first typed leaf found in the chain.
pub(crate) fn reason(err: &(dyn Error + 'static)) -> &'static str {
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(e) = e.downcast_ref::<crate::brokers::upstream::UpstreamError>() {
            return e.reason();
        }
        if let Some(e) = e.downcast_ref::<TopologyError>() {
            return e.reason();
        }
        if let Some(e) = e.downcast_ref::<RewriteError>() {
            return e.reason();
        }
        if e.is::<PolicyDecodeError>() {
            return "policy_decode";
        }
        if e.is::<ProduceRefused>() {
            return "produce_refused";
        }
        cur = e.source();
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::upstream::UpstreamError;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapper(#[source] UpstreamError);

    #[test]
    fn finds_the_leaf_through_wrappers() {
        let leaf = UpstreamError::Closed { addr: "b:1".into() };
        let boxed: BoxError = Box::new(Wrapper(leaf));
        assert_eq!(reason(boxed.as_ref()), "closed");
        let other: BoxError = "plain".into();
        assert_eq!(reason(other.as_ref()), "other");
    }
}
