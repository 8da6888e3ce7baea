//! What the operator controls and what Tollgate keeps: the configuration ([`config`]), the
//! consumer registry ([`registry`]) and durable shared state in a compacted topic
//! ([`state`]).

pub(crate) mod admin_rules;
pub mod config;
pub mod registry;
pub(crate) mod rules;
pub(crate) mod state;
