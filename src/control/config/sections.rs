//! The configuration file's sections (`[proxy]`, `[upstream]`, ...): each a struct with its
//! serde defaults, documented key by key in `config/tollgate.toml`.

use serde::{Deserialize, Serialize};

use super::choices::{LagUnit, LogFormat, Mirror, SyncsCluster, TopicNaming};
use crate::security::{ClientSaslConfig, ClientTlsConfig, SaslLoginConfig, ServerTlsConfig};

/// Client-facing side.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Bootstrap listener: the address clients put in `bootstrap.servers`.
    pub listen: String,
    /// Host name or IP that Tollgate advertises to clients for its broker listeners.
    /// Must be reachable by clients. Defaults to the host of `listen` (or 127.0.0.1 when
    /// that is a wildcard address).
    pub advertised_host: Option<String>,
    /// IP address the per-broker listeners bind to. Defaults to the host of `listen`.
    pub broker_bind_host: Option<String>,
    /// Port-per-broker scheme: the broker with node id N is served on
    /// `broker_port_base + (N mod max_brokers)`, or `broker_port_base + (N - node_id_base)`
    /// when `node_id_base` is set. 0 means "any free port" (ports then change across
    /// restarts; for tests and single-instance setups only).
    pub broker_port_base: u16,
    /// Lowest broker node id expected (e.g. 1001 for clusters with generated ids). Unset (the
    /// default): any node id, mapped by `N mod max_brokers` ([`crate::brokers::topology`]).
    pub node_id_base: Option<i32>,
    /// How many ports (from `broker_port_base`) are reserved for brokers.
    pub max_brokers: u16,
    /// Largest request frame accepted from a client, in bytes (Kafka's
    /// `socket.request.max.bytes`). Larger frames close that connection.
    pub max_frame_bytes: usize,
    /// Most client connections open at once; further connections are refused.
    pub max_connections: usize,
    /// Most requests in flight per client connection (pipelining depth).
    pub max_in_flight_per_connection: usize,
    /// Bytes of answers one client connection may have reserved and not yet received: a
    /// Fetch reserves its `max_bytes`, other requests their size and 64 KiB. At the bound,
    /// no more of its requests are read until answers are written (TCP back-pressure).
    pub max_buffered_bytes_per_connection: usize,
    /// Time allowed for in-flight requests to finish after SIGTERM/SIGINT, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// A client connection that sends no complete request within this long after it was
    /// accepted is closed, in milliseconds (frees its connection slot; 0 = never).
    pub first_request_timeout_ms: u64,
    /// Forward ACL, SCRAM credential, partition reassignment and leader election requests
    /// from clients the broker does not know as themselves (no SASL through Tollgate), with
    /// Tollgate's broker identity. Off: such requests are refused (CLUSTER_AUTHORIZATION_FAILED).
    pub allow_cluster_admin: bool,
    /// A client connection with no request in flight and no request read for this long is
    /// closed, in milliseconds (Kafka's `connections.max.idle.ms` default; 0 = never).
    pub idle_timeout_ms: u64,
    /// TLS on every client listener (see [`crate::security`]). Unset: plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// How Tollgate treats its clients' SASL exchanges with the brokers.
    pub sasl: ClientSaslConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9092".into(),
            advertised_host: None,
            broker_bind_host: None,
            broker_port_base: 9100,
            node_id_base: None,
            max_brokers: 100,
            max_frame_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_in_flight_per_connection: 128,
            max_buffered_bytes_per_connection: 64 * 1024 * 1024,
            shutdown_grace_ms: 10_000,
            first_request_timeout_ms: 10_000,
            allow_cluster_admin: false,
            idle_timeout_ms: 600_000,
            tls: None,
            sasl: ClientSaslConfig::default(),
        }
    }
}

/// The upstream cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Bootstrap servers of the upstream cluster, `host:port`.
    pub bootstrap_servers: Vec<String>,
    /// Timeout for one TCP connect to a broker, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long start-up keeps trying to get Metadata from the cluster before giving up.
    pub startup_timeout_ms: u64,
    /// How often Tollgate refreshes Metadata itself to learn about new brokers.
    pub metadata_refresh_ms: u64,
    /// Largest response frame accepted from a broker, in bytes.
    pub max_response_bytes: usize,
    /// TLS from Tollgate to the brokers.
    pub tls: ClientTlsConfig,
    /// Tollgate's own SASL login, for the connections it opens itself (control queries,
    /// the state store). Client connections carry their clients' own SASL exchanges.
    pub sasl: Option<SaslLoginConfig>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: vec!["127.0.0.1:9092".into()],
            connect_timeout_ms: 5_000,
            startup_timeout_ms: 30_000,
            metadata_refresh_ms: 30_000,
            max_response_bytes: 1024 * 1024 * 1024,
            tls: ClientTlsConfig::default(),
            sasl: None,
        }
    }
}

/// Admin HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub listen: String,
    /// File holding the bearer token that mutating endpoints require
    /// (`Authorization: Bearer <token>`). Unset: mutations are refused unless the listener
    /// is a loopback address.
    pub token_file: Option<String>,
    /// Require the token for the read endpoints too (`/v1/...`); `/metrics`, `/healthz` and
    /// `/readyz` stay open for scrapers and probes.
    pub protect_reads: bool,
    /// TLS on the admin listener. Unset: plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Require the token for `/metrics` too: its series carry principal, client id and group
    /// labels. `/healthz` and `/readyz` stay open for probes.
    pub protect_metrics: bool,
    /// Most admin connections open at once; one more is closed at once. Bounds the file
    /// descriptors the admin port can take from the proxy.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9644".into(),
            token_file: None,
            protect_reads: false,
            tls: None,
            max_connections: 64,
            protect_metrics: false,
        }
    }
}

/// Usage: produce and fetch traffic per client and group, hot and cold, and the views over it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AttributionConfig {
    /// A fetched partition counts as `cold` when the data it returns is further behind the
    /// partition's head (high watermark) than this many bytes (distance in offsets times the
    /// partition's bytes-per-offset estimate). Default: 512 MiB, a broker's pagecache share
    /// per partition leader for a 64 GiB pagecache and 128 leaders; size it to yours.
    pub hot_threshold_bytes: u64,
    /// Most distinct `client_id` label values; more go to the `other` bucket.
    pub max_client_ids: usize,
    /// Most distinct `group` label values; more go to the `other` bucket.
    pub max_groups: usize,
    /// Most distinct `topic` label values; more go to the `other` bucket.
    pub max_topics: usize,
    /// Series (and label values) not updated for this long are removed, in seconds.
    pub idle_series_seconds: u64,
    /// A read (Fetch, ListOffsets) tied to no group waits up to this long, in milliseconds,
    /// for the tier view (the coordinator, other instances) to tie it before it is
    /// attributed to `(none)` or refused; once per connection and set of partitions
    /// (0 = never wait).
    pub tie_wait_ms: u64,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            hot_threshold_bytes: 512 * 1024 * 1024,
            max_client_ids: 1_000,
            max_groups: 1_000,
            max_topics: 10_000,
            idle_series_seconds: 600,
            tie_wait_ms: 1_000,
        }
    }
}

/// Consumer governance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GovernanceConfig {
    /// Path of the registry file (see `config/registry.toml`). Unset: governance is off and
    /// every consumer may read.
    pub registry: Option<String>,
    /// How often the registry file is checked for changes, in milliseconds (0 = never; SIGHUP
    /// and `POST /v1/registry/reload` still reload it).
    pub watch_interval_ms: u64,
    /// Refuse every consumer request (group APIs, Fetch, ListOffsets) from a connection with
    /// no authenticated principal (neither an mTLS certificate nor a SASL exchange the
    /// broker accepted), with `reason="unauthenticated"`.
    pub require_authentication: bool,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        Self {
            registry: None,
            watch_interval_ms: 2_000,
            require_authentication: false,
        }
    }
}

/// Lag and rogue-consumer detection thresholds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LagConfig {
    /// How often statuses and lag metrics are recomputed, in milliseconds.
    pub evaluate_interval_ms: u64,
    /// `stopped`: lag > 0 and no fetch for this long (seconds).
    pub stopped_after_seconds: u64,
    /// `commit_stall`: the position moved past the committed offset and no commit for this long.
    pub commit_stall_seconds: u64,
    /// `wedged`: assigned to a member still heartbeating but not fetched for this long.
    pub wedged_after_seconds: u64,
    /// `rewind`: the position or committed offset jumped back by more than this many offsets.
    pub rewind_offsets: i64,
    /// How long a rewind stays reported.
    pub rewind_hold_seconds: u64,
    /// `bandwidth`: read rate above this multiple of the group's own baseline ...
    pub bandwidth_spike_factor: f64,
    /// ... once the baseline is at least this many bytes per second.
    pub bandwidth_min_bytes_per_second: u64,
    /// A group with no fetch or commit for this long is forgotten (its series removed).
    pub forget_after_seconds: u64,
    /// Heads of tracked partitions not seen in traffic for this long are refreshed with
    /// ListOffsets to their leader (0 = never).
    pub head_refresh_seconds: u64,
    /// A `probation` group that stays within its lag SLO this long becomes eligible for
    /// promotion.
    pub probation_window_seconds: u64,
    /// Promote eligible probation groups automatically (otherwise: `POST
    /// /v1/groups/{group}/promote`).
    pub auto_promote: bool,
    /// A promoted group over its lag SLO without a break this long is demoted back to
    /// probation (its promotion record deleted). 0: never.
    pub demote_after_seconds: u64,
    /// Most group partitions tracked for lag (each is a few `tollgate_consumer_*` series);
    /// observations of further new ones are dropped and counted in
    /// `tollgate_lag_partitions_dropped_total`. Group and topic names come from clients.
    pub max_partitions: usize,
}

/// Tiered reads (the secondary cluster).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TieredConfig {
    /// Route cold and probation reads to the secondary cluster.
    pub enabled: bool,
    /// Bootstrap servers of the secondary cluster, `host:port`.
    pub secondary_bootstrap_servers: Vec<String>,
    /// Topics that are mirrored (what `tollgate mirror` copies, and the only topics routed).
    pub topics: Vec<String>,
    /// Secondary topic names: `identity` (same name) or `prefix` (MirrorMaker 2's
    /// `<source_alias>.<topic>`).
    pub topic_naming: TopicNaming,
    /// The source cluster alias for `topic_naming = "prefix"`.
    pub source_alias: String,
    /// Who writes the offset syncs: `tollgate` (`tollgate mirror`: a sync at every change of
    /// the offset mapping, so ranges after the last sync are exact) or `mirrormaker2` (sparse
    /// syncs: only ranges between two syncs that advance equally are exact).
    pub mirror: Mirror,
    /// The offset-syncs topic on the secondary (MirrorMaker 2's default name for a target
    /// alias `secondary`).
    pub offset_syncs_topic: String,
    /// Which cluster holds the offset-syncs topic: `secondary` (where `tollgate mirror`
    /// writes it) or `primary` (MirrorMaker 2's default, `offset-syncs.topic.location =
    /// source`).
    pub offset_syncs_cluster: SyncsCluster,
    /// What the routing thresholds measure: `records` or `bytes` (records times the
    /// partition's bytes-per-offset estimate) behind the primary's high watermark.
    pub lag_unit: LagUnit,
    /// A partition fetch further behind the head than this goes to the secondary ...
    pub enter_lag: u64,
    /// ... and comes back to the primary once within this (hysteresis; at most `enter_lag`).
    pub exit_lag: u64,
    /// Longest time the primary's high watermark reported for a secondary-served partition
    /// may be stale before Tollgate asks the primary again, in milliseconds.
    pub head_max_age_ms: u64,
    /// Time allowed for a secondary Fetch (connect included) before the partitions are
    /// served from the primary instead, in milliseconds (added to the client's `max_wait`).
    pub secondary_timeout_ms: u64,
    /// How often the secondary's high watermarks are read for the mirror-lag metric, in
    /// milliseconds (0 = never).
    pub mirror_lag_interval_ms: u64,
    /// Most bytes of secondary answers read ahead for clients' next Fetches, all connections
    /// of the instance together (0 = no read-ahead).
    pub read_ahead_bytes: u64,
    /// `tollgate mirror`: most records per produce batch written to the secondary
    /// (librdkafka's `batch.num.messages`). A secondary Fetch returns at least one whole
    /// batch, so this also bounds how much one routed fetch can return.
    pub mirror_batch_records: u32,
    /// TLS from Tollgate (and `tollgate mirror`) to the secondary cluster.
    pub secondary_tls: ClientTlsConfig,
    /// Tollgate's SASL login to the secondary cluster (its reads there are its own).
    pub secondary_sasl: Option<SaslLoginConfig>,
}

impl Default for TieredConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            secondary_bootstrap_servers: Vec::new(),
            topics: Vec::new(),
            topic_naming: TopicNaming::Identity,
            source_alias: "primary".into(),
            mirror: Mirror::Tollgate,
            offset_syncs_topic: "mm2-offset-syncs.secondary.internal".into(),
            offset_syncs_cluster: SyncsCluster::Secondary,
            lag_unit: LagUnit::Records,
            enter_lag: 1_000_000,
            exit_lag: 100_000,
            head_max_age_ms: 1_000,
            secondary_timeout_ms: 5_000,
            mirror_lag_interval_ms: 10_000,
            read_ahead_bytes: 64 * 1024 * 1024,
            mirror_batch_records: 10_000,
            secondary_tls: ClientTlsConfig::default(),
            secondary_sasl: None,
        }
    }
}

impl TieredConfig {
    /// The secondary's name for a primary topic.
    pub(crate) fn secondary_topic(&self, topic: &str) -> String {
        if self.topic_naming == TopicNaming::Prefix {
            format!("{}.{topic}", self.source_alias)
        } else {
            topic.to_string()
        }
    }

    /// Whether `topic` is mirrored.
    pub(crate) fn mirrors(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
    }
}

/// Running several instances as one tier behind one address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// This instance's name in the tier (keys of what it shares in `state.topic`); it must
    /// differ between live instances. Empty (the default): the host name (from the OS, else
    /// `$HOSTNAME`, else `tollgate`), `-`, the client listener's port, `-` and a random
    /// per-start nonce, unique per process. Two live processes with one id are reported
    /// (`tollgate_tier_duplicate_instance_id`, an error log, a warning on `/readyz`).
    pub instance_id: String,
    /// How often this instance shares its wire observations (members, offset users, fetch
    /// positions) through `state.topic` and applies the other instances', in milliseconds.
    pub share_interval_ms: u64,
    /// How often the group coordinators are asked (ListGroups, DescribeGroups, OffsetFetch)
    /// for every registered and known group, in milliseconds (0 = never). A read waiting for
    /// a tie asks at once, at most once a second.
    pub coordinator_refresh_ms: u64,
    /// Most groups the coordinator view follows (registered groups first), and most groups
    /// the group view holds (the least recently active is evicted for a new one).
    pub max_groups: usize,
    /// Most members the group view holds per group (the least recently seen is evicted).
    pub max_members_per_group: usize,
    /// Most offset users (committing `assign()` readers) held per group, likewise.
    pub max_offset_users_per_group: usize,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            share_interval_ms: 500,
            coordinator_refresh_ms: 5_000,
            max_groups: 10_000,
            max_members_per_group: 5_000,
            max_offset_users_per_group: 1_000,
        }
    }
}

/// Durable state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Compacted topic on the upstream cluster holding Tollgate's state (probation promotions),
    /// shared by every instance and surviving restarts. Empty: state is kept in memory only.
    pub topic: String,
    /// How long start-up waits to create and load the state topic before going on without it.
    pub load_timeout_ms: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            topic: "_tollgate_state".into(),
            load_timeout_ms: 10_000,
        }
    }
}

/// The audit trail (see [`crate::control::audit`] and `docs/audit.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Topic of Tollgate's own on the upstream cluster for the audit events (created when
    /// missing, `cleanup.policy=delete`). Empty: no topic (and no showback).
    pub topic: String,
    /// Also append every event, one JSON object per line, to this file. Empty: no file.
    pub file: String,
    /// Length of the usage windows (reads per group and topic, writes per producer and
    /// topic), in seconds.
    pub window_seconds: u64,
    /// Identical events within this many seconds are written once, then once more with the
    /// count. `0` = never folded.
    pub dedup_seconds: u64,
    /// Most events written per second (usage windows not counted); the rest are counted.
    pub max_events_per_second: u64,
    /// `retention.ms` of the audit topic when Tollgate creates it.
    pub retention_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            topic: "_tollgate_audit".into(),
            file: String::new(),
            window_seconds: 60,
            dedup_seconds: 60,
            max_events_per_second: 1_000,
            retention_ms: 30 * 86_400_000,
        }
    }
}

/// Showback rates: what a GiB or an hour costs. All zero: no cost column.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShowbackConfig {
    /// The unit of the rates, as shown (`USD`, `EUR`, `credits`).
    pub currency: String,
    /// Per GiB produced.
    pub produced_per_gib: f64,
    /// Per GiB read from near the head (hot).
    pub read_hot_per_gib: f64,
    /// Per GiB read from far behind the head (cold).
    pub read_cold_per_gib: f64,
    /// Per hour of fetches the secondary cluster served.
    pub secondary_per_hour: f64,
}

impl Default for LagConfig {
    fn default() -> Self {
        Self {
            evaluate_interval_ms: 5_000,
            stopped_after_seconds: 300,
            commit_stall_seconds: 600,
            wedged_after_seconds: 120,
            rewind_offsets: 1_000,
            rewind_hold_seconds: 600,
            bandwidth_spike_factor: 10.0,
            bandwidth_min_bytes_per_second: 1024 * 1024,
            forget_after_seconds: 86_400,
            head_refresh_seconds: 30,
            probation_window_seconds: 86_400,
            auto_promote: false,
            demote_after_seconds: 0,
            max_partitions: 100_000,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter in `tracing` syntax (`info`, `tollgate=debug`). `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
