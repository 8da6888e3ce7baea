//! Tollgate: a Kafka wire-protocol proxy.
//!
//! Producers and consumers point `bootstrap.servers` at Tollgate and change nothing else.
//! Tollgate forwards every request to the upstream cluster, rewrites the broker addresses
//! the cluster advertises so that clients keep talking through it, and gives every request a
//! pass through a tower policy stack where attribution, governance and routing live.
//!
//! # Layout
//!
//! Each folder is one part of the architecture. They stand in layers, each importing only
//! those below it (the import graph has no cycle, between files or between folders), from
//! the top:
//!
//! ```text
//! main.rs      the command line
//! proxy/       the running proxy: start-up, listeners, client connections, periodic tasks
//! admin/       the admin HTTP API, the console, `tollgate top`
//! app.rs       the composition root: every part made once, each given what it uses
//! layers/      the policy stack: its request/response types, its order (stack.rs), the layers
//! peers/ tiered/   the other instances of the tier; reads served by the secondary cluster
//! consumers/   who is reading: the one decision per read, groups, usage, lag, budgets
//! error.rs     the layers' typed errors
//! control/ brokers/   config, registry, durable state; broker connections and the broker map
//! security/    TLS, principals (mTLS, SASL), Tollgate's own login
//! metrics.rs   every metric, in one registry
//! wire/        the Kafka wire format
//! ```
//!
//! A request's way through them:
//!
//! ```text
//! proxy (accept) ─► proxy/connection ─► layers/stack: metrics → sasl → decision → attribution
//!   → own topics → cluster admin → governance → admin plane → offsets → producers → budget
//!   → routing → rewrite
//!   ─► brokers/upstream ─► primary                             └─► tiered/cluster ─► secondary
//! ```
//!
//! Decode once, decide once, encode once: a request's body is decoded by the first layer
//! that reads it and shared ([`layers::request::Request::body`]); the consumer decision is
//! made once, by [`layers::decision`], and carried on the request
//! ([`layers::request::Request::consumer`]); a changed body is encoded once, when it is sent.
//!
//! - [`wire`]: framing and headers ([`wire::protocol`]), record-batch headers read without
//!   decompressing ([`wire::records`], the one batch-header parser), a Fetch answer encoded
//!   around its record sets ([`wire::pieces`]), the API versions Tollgate decodes
//!   ([`wire::versions`]).
//! - [`metrics`]: every Prometheus metric, one table (and the generated reference).
//! - [`security`]: TLS on both sides (certificates reloaded when their files change), the
//!   principal of an mTLS certificate or of a client's SASL exchange with the broker, and
//!   Tollgate's own SASL login.
//! - [`control`]: the configuration ([`control::config`], with the generated reference),
//!   the consumer registry ([`control::registry`]), durable shared state in a compacted topic
//!   ([`control::state`]), the audit trail's events and writer ([`control::audit`]).
//! - [`brokers`]: pipelined connections to brokers and Tollgate's own control client
//!   ([`brokers::upstream`]), the broker map and per-broker listeners
//!   ([`brokers::topology`]), topic ids ([`brokers::topic_ids`]).
//! - [`consumers`]: "which group is this Fetch from?" is [`consumers::decision`] (the tie,
//!   by the rule in [`consumers::groups`]; the group's tier and budget). Beside it: the
//!   tier's view of groups ([`consumers::groups`]), the group coordinators' view
//!   ([`consumers::coordinator`]), who is on each connection ([`consumers::identity`]),
//!   per-client produce/fetch series and views ([`consumers::usage`]), partition heads
//!   ([`consumers::heads`]), lag and rogue-consumer detection with probation
//!   ([`consumers::lag`]), read budgets held tier-wide ([`consumers::budgets`]), recent
//!   refusals ([`consumers::refusals`]), the usage windows of the audit trail
//!   ([`consumers::ledger`]).
//! - [`peers`]: the other instances of the tier: what each saw on the wire, shared through
//!   the state topic (config section `[tier]`; a registered group's *tier*, primary or
//!   probation, is [`control::registry::Tier`], a different thing).
//! - [`tiered`]: tiered reads: offset syncs and translation, the routing rule, the routes in
//!   force; the secondary cluster's client ([`tiered::cluster`]); `tollgate mirror`
//!   ([`tiered::mirror`]).
//! - [`layers`]: the request and response types ([`layers::request`]), the one place the
//!   layers are put in order ([`layers::stack`]), and one file or folder per layer.
//! - [`app`]: [`app::App::build`] makes every part once; [`app::App`] holds them.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, the `/v1` JSON API, the console
//!   ([`admin::console`]), showback ([`admin::showback`]) and `tollgate top` ([`admin::top`]).
//! - [`proxy`]: binds the listeners, probes the cluster, runs the accept loops
//!   (`accept.rs`), the periodic tasks (`tasks.rs`) and each client connection
//!   ([`proxy::connection`]), and drains them on shutdown.
//! - [`error`]: the typed errors the layers raise and their classification; [`loadgen`]: the
//!   rdkafka load generator of the local stack and the benchmarks.

#![forbid(unsafe_code)]
// Items are `pub(crate)` unless the binary, the integration tests, the benchmarks or the fuzz
// targets use them; a `pub` item nothing outside can reach is a warning (an error in CI).
#![warn(unreachable_pub)]
// These docs are for contributors and link to crate-private items: read them with
// `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod app;
pub mod brokers;
pub mod consumers;
pub mod control;
pub mod error;
pub mod layers;
pub mod loadgen;
pub mod metrics;
pub mod peers;
pub mod proxy;
pub mod security;
pub mod tiered;
pub mod wire;

/// The references in `docs/` that are generated from the code: the text between a file's
/// `<!-- generated -->` and `<!-- end generated -->` markers must equal what the code
/// generates. `TOLLGATE_BLESS=1 cargo test --lib reference` rewrites it.
#[cfg(test)]
pub(crate) fn check_generated_doc(relative: &str, generated: &str) {
    const START: &str = "<!-- generated -->\n";
    const END: &str = "<!-- end generated -->";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{relative}: {e}"));
    let (Some(a), Some(b)) = (text.find(START), text.find(END)) else {
        panic!("{relative} has no generated markers");
    };
    let current = &text[a + START.len()..b];
    if current == generated {
        return;
    }
    if std::env::var("TOLLGATE_BLESS").is_ok_and(|v| v == "1") {
        let new = format!("{}{generated}{}", &text[..a + START.len()], &text[b..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    panic!("{relative} does not match the code; run TOLLGATE_BLESS=1 cargo test --lib reference");
}
