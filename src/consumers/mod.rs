//! Consumers: who is reading. [`decision`] holds the one consumer decision per read request
//! (the group tie, the group's tier and budget) that every policy layer reads.

pub mod decision;
