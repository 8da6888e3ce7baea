//! The brokers side: pipelined connections to the brokers and Tollgate's own control client
//! ([`upstream`]), the broker map and the per-broker listeners it asks for ([`topology`]),
//! topic ids ([`topic_ids`]).

pub mod topic_ids;
pub(crate) mod topology;
pub(crate) mod upstream;
