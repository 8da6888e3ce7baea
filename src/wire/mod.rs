//! The Kafka wire format: the leaves every other part reads frames and batches with.

pub(crate) mod pieces;
pub mod protocol;
pub mod records;
pub(crate) mod versions;
