//! Who is reading and what they cost: the one consumer decision per read request
//! ([`decision`]), the groups it ties reads to, identity, usage, heads, lag and budgets.

pub mod budgets;
pub(crate) mod coordinator;
pub mod decision;
pub mod groups;
pub mod heads;
pub(crate) mod identity;
pub mod lag;
pub(crate) mod refusals;
pub mod usage;
