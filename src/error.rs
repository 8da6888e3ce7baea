//! Error classification, in one place.
//!
//! Leaves are typed `thiserror` errors ([`crate::upstream::UpstreamError`],
//! [`crate::topology::TopologyError`], [`crate::layers::rewrite::RewriteError`], ...). They
//! travel up the stack as a [`BoxError`]; [`reason`] walks the `source()` chain to find the
//! leaf and name it with a low-cardinality label for metrics and logs.

use std::error::Error;

/// The error type carried through the tower stack.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A short, bounded label for an error: the first typed leaf found in the chain.
pub fn reason(err: &(dyn Error + 'static)) -> &'static str {
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(e) = e.downcast_ref::<crate::upstream::UpstreamError>() {
            return e.reason();
        }
        if let Some(e) = e.downcast_ref::<crate::topology::TopologyError>() {
            return e.reason();
        }
        if let Some(e) = e.downcast_ref::<crate::layers::rewrite::RewriteError>() {
            return e.reason();
        }
        if e.is::<crate::layers::governance::PolicyDecodeError>() {
            return "policy_decode";
        }
        cur = e.source();
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamError;

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
