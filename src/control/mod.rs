//! What the operator controls and what Tollgate keeps: the configuration ([`config`]), the
//! consumer registry ([`registry`]), durable shared state in a compacted topic
//! ([`state`]) and the audit trail ([`audit`]).

pub(crate) mod admin_rules;
pub(crate) mod audit;
pub mod config;
pub mod registry;
pub(crate) mod rules;
pub(crate) mod state;
