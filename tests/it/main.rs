//! The integration tests, one crate so that librdkafka and the test harness are compiled and
//! linked once (each file under `tests/` used to be a crate of its own). Real brokers (Apache
//! Kafka by default, tansu with `TOLLGATE_TEST_BROKER=tansu`), real clients, Tollgate
//! in-process or as the built binary; the harness is [`common`].
//!
//! Run one file's tests with a filter on its module: `cargo test --test it -- tier::`.
//! `tests/hostile_frames.rs` stays a crate of its own: it installs a counting global
//! allocator, which would measure every other test too.

mod common;

mod admin_plane;
mod attribution;
mod audit;
mod budgets;
mod cli;
mod console;
mod deploy;
mod fuzz_seeds;
mod governance;
mod hostile;
mod image;
mod java_client;
mod lag;
mod mirror;
mod offsets;
mod producers;
mod proxy;
mod proxy_mock_cluster;
mod security;
mod tier;
mod tiered;
mod x500;
mod zero_config;
