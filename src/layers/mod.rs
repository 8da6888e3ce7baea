//! Policy layers of the request stack. Their order is written in [`crate::stack::build_stack`].
//!
//! - [`metrics`]: outermost; counts and times every request, and counts the ones that fail.
//! - [`rewrite`]: broker address rewriting and ApiVersions capping.
//!
//! Attribution, governance and routing layers slot in here.

pub mod metrics;
pub mod rewrite;
