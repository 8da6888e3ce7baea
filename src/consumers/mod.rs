//! Who is reading and what they cost: the one consumer decision per read request
//! ([`decision`]), the groups it ties reads to, identity, usage, heads, lag, budgets and
//! offset protection ([`rewinds`]), and the ledger of usage windows for the audit trail
//! ([`ledger`]).

pub mod budgets;
pub(crate) mod coordinator;
pub mod decision;
pub mod groups;
pub mod heads;
pub(crate) mod identity;
pub mod lag;
pub mod ledger;
pub mod refusals;
pub mod rewinds;
pub mod usage;
