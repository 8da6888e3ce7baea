//! Tollgate: a Kafka wire-protocol proxy.
//!
//! Producers and consumers point `bootstrap.servers` at Tollgate and change nothing else.
//! Tollgate forwards every request to the upstream cluster, rewrites the broker addresses
//! the cluster advertises so that clients keep talking through it, and gives every request a
//! pass through a tower policy stack where attribution, governance and routing live.
//!
//! # Layout
//!
//! The request path reads like the diagram:
//!
//! ```text
//! listener ──► connection ──► policy stack (stack.rs) ───────────────────► upstream ──► primary
//!  (server;    (framing; in-   metrics → sasl → attribution → own topics   (encodes a changed
//!   TLS)        order answers;   → cluster admin → governance → budget →     request, once, when
//!               answer bytes     routing → rewrite (layers/)                  it is sent)
//!               bounded; encodes                   │
//!               a decoded                          └──► cluster ──► secondary cluster
//!               answer, once)
//!
//! request ──► decision ──────────► layers ───────────► upstream
//!  frame,      req.body(): decoded  read req.body and   req.frame(): the client's bytes,
//!  header      once, shared;        req.tie; change     or the changed body encoded once
//!  (request)   req.tie: the group   with set_body;
//!              (attribution, once)  answers go up decoded (Response::Fetch / ::Metadata)
//!
//! beside them (app::App): heads · topic_ids · attribution · refusals · budgets · groups · lag
//! ```
//!
//! - [`config`]: the configuration file, its defaults, environment overrides and validation
//!   (`config/sections.rs` the sections and their defaults, `config/validate.rs` the checks).
//! - [`protocol`]: Kafka framing (length-prefixed frames, "need more bytes" as a value) and
//!   the few header/body fields the proxy reads by hand (correlation id, client id, acks).
//! - [`app`]: the state one proxy's tasks share, components side by side ([`app::App`]).
//! - [`server`]: starts everything: binds listeners, probes the upstream cluster, runs accept
//!   loops, and drains connections on shutdown.
//! - [`connection`]: one client connection: reads frames, calls the stack, writes responses
//!   back in request order with many requests in flight.
//! - [`request`]: the request/response types that flow through the stack (a leaf below the
//!   layers). A request carries its body decoded at most once, by the first layer that
//!   reads it, and shared by the layers below; a layer that changes it replaces the body,
//!   and the frame is encoded from it once, at the upstream boundary. A response a layer
//!   decodes goes up decoded and is encoded once, for the client.
//! - [`stack`]: `build_stack()`, the ONE place where the order of the policy layers is
//!   written down.
//! - [`layers`]: the policy layers. [`layers::metrics`] counts and times every request;
//!   [`layers::sasl`] follows each client's SASL exchange with the broker for its principal;
//!   [`layers::rewrite`] rewrites broker addresses in Metadata, FindCoordinator and
//!   DescribeCluster responses and caps ApiVersions for the APIs Tollgate decodes;
//!   [`layers::attribution`] reads Produce, Fetch and the group APIs for [`attribution`];
//!   [`layers::own_topics`] keeps clients away from Tollgate's own topics (state, offset
//!   syncs): no writes, no administration, no reads, not even in Metadata, by name or id;
//!   [`layers::cluster_admin`] refuses ACL, credential, reassignment and election requests
//!   unless the broker sees the client's own SASL principal;
//!   [`layers::governance`] enforces the [`registry`]; [`layers::budget`] holds groups over
//!   their read budget; [`layers::routing`] sends cold and
//!   probation reads to the secondary cluster (and reads a backfill's next Fetch ahead).
//! - The app state's peer components, each behind its own API and reaching into none of the
//!   others ([`app::App`] owns them side by side; the layers get the ones they use):
//!   - [`heads`]: the one partition-head store (high watermark, last stable offset, log
//!     start, bytes per offset, when each head was first seen), fed by Fetch responses,
//!     Produce acknowledgements, the quiet-head refresh and the tiered refresh;
//!   - [`topic_ids`]: topic id → name, from Metadata;
//!   - [`attribution`]: per-client produce/fetch series with capped cardinality, hot/cold
//!     classification, and the per-topic activity views;
//!   - [`refusals`]: who governance refused in the last hour (the console's table);
//!   - [`budgets`]: per-group read budgets held across the tier (token buckets whose rates
//!     are each instance's share of the budget);
//!   - [`groups`] and [`lag`] (below).
//! - [`groups`]: consumer groups as the tier sees them (wire, other instances, coordinator),
//!   and the rule tying a fetching connection to its group (`groups/tie.rs`).
//! - [`coordinator`]: the cluster view: ListGroups, DescribeGroups and OffsetFetch over
//!   Tollgate's own control connections, on a period and on demand.
//! - [`tier`]: what each instance saw on the wire, shared with the other instances through
//!   the state topic, so that any instance can place any connection.
//! - [`records`]: record-batch headers read without decompressing, and a zero-copy buffer over
//!   the chunks of a streamed response.
//! - [`pieces`]: a Fetch response encoded around its record sets: the merged tiered answer
//!   goes to the client as pieces, and the secondary's records are never copied.
//! - [`lag`]: lag (records and seconds) and rogue-consumer detection per group partition,
//!   from fetch positions, commits and partition heads seen on the wire; observations and
//!   evaluation in `lag/mod.rs`, the detections in `lag/detect.rs`, probation and promotion
//!   in `lag/promotion.rs`, the Prometheus series in `lag/publish.rs`.
//! - [`state`]: Tollgate's durable, shared state in a compacted topic (probation promotions,
//!   the tier's shared observations).
//! - [`tiered`]: tiered reads: offset syncs and exact offset translation, record-batch
//!   rebasing, the primary/secondary routing rule with hysteresis, the routes in force.
//!   [`layers::routing`] splits and merges Fetches with it; [`cluster`] is the client for
//!   the secondary cluster (leaders, a connection pool per broker, Fetch by topic name).
//! - [`mirror`]: `tollgate mirror`, the rdkafka-based primary → secondary copier that writes
//!   MirrorMaker 2-format offset syncs and resumes exactly.
//! - [`registry`]: the consumer onboarding registry (file, validation, hot reload).
//! - [`identity`]: who is on each client connection (address, client.id, software, principal)
//!   and the live inventory behind `GET /v1/clients`.
//! - [`security`]: TLS on both sides (rustls; certificates reloaded when their files
//!   change), the principal of an mTLS certificate or of a client's SASL exchange with the
//!   broker, and Tollgate's own SASL login.
//! - [`topology`]: the broker map learned from responses, and the listener (port) that
//!   Tollgate opens for each broker.
//! - [`upstream`]: a pipelined connection to one broker (requests and responses matched in
//!   order), and the control client Tollgate uses for its own requests.
//! - [`admin`]: the admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, the `/v1` JSON
//!   API and the console page.
//! - [`console`]: the console at `/` (one page compiled into the binary) and the one JSON
//!   document it reads, `/v1/console`; [`top`]: the same table in a terminal
//!   (`tollgate top`), merged over a tier's instances.
//! - [`metrics`]: every Prometheus metric Tollgate exports, in one explicit registry.
//! - [`loadgen`]: an rdkafka-based load generator used by the local stack and the benchmark.
//! - [`error`]: the typed errors the layers raise and their classification for metrics and
//!   logs (it imports no layer).
//! - [`versions`]: the API versions Tollgate can decode, which ApiVersions answers and
//!   Tollgate's own connections cap to.
//!
//! The import graph of `src/` has no cycle: leaves (`protocol`, `versions`, `groups`,
//! `heads`, `topic_ids`, `registry`, `records`, `pieces` above `protocol`) at the bottom; `request` below `layers`; `stack` above them; `app`
//! below both `server` and `admin`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod attribution;
pub mod budgets;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod console;
pub mod consumers;
pub mod coordinator;
pub mod error;
pub mod groups;
pub mod heads;
pub mod identity;
pub mod lag;
pub mod layers;
pub mod loadgen;

pub mod metrics;
pub mod mirror;
pub mod pieces;
pub mod protocol;
pub mod records;
pub mod refusals;
pub mod registry;
pub mod request;
pub mod security;
pub mod server;
pub mod stack;
pub mod state;
pub mod tier;
pub mod tiered;
pub mod top;
pub mod topic_ids;
pub mod topology;
pub mod upstream;
pub mod versions;

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
