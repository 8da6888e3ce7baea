//! Configuration: one TOML file, serde defaults for every key, unknown keys rejected,
//! environment overrides, and validation that names the bad key.
//!
//! Precedence, lowest to highest: built-in defaults, the file, `TOLLGATE_<SECTION>__<KEY>`
//! environment variables (e.g. `TOLLGATE_UPSTREAM__BOOTSTRAP_SERVERS=a:9092,b:9092`), then
//! command-line flags. An environment value is read as a TOML value when it parses as one
//! (`100`, `true`, `["a:1","b:2"]`), otherwise as a string; a comma-separated string is
//! accepted where a list is expected. Every key is documented in `config/tollgate.toml` and
//! the README's configuration reference.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::security::{
    ClientSaslConfig, ClientTlsConfig, SaslLoginConfig, SecurityConfigError, ServerTlsConfig,
};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client-facing listeners and per-connection limits.
    pub proxy: ProxyConfig,
    /// The upstream (primary) Kafka cluster.
    pub upstream: UpstreamConfig,
    /// The admin HTTP listener (metrics, health).
    pub admin: AdminConfig,
    /// Who produced and read what: per-client metrics and the inventory API.
    pub attribution: AttributionConfig,
    /// The consumer onboarding policy.
    pub governance: GovernanceConfig,
    /// Lag and rogue-consumer detection.
    pub lag: LagConfig,
    /// Tollgate's durable state (a compacted topic on the upstream cluster).
    pub state: StateConfig,
    /// Tiered reads: the secondary cluster, the mirror, and routing of cold reads to it.
    pub tiered: TieredConfig,
    /// Running as a tier: the cluster view and what instances share.
    pub tier: TierConfig,
    /// Logging.
    pub log: LogConfig,
}

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
    /// default): any node id, mapped by `N mod max_brokers` ([`crate::topology`]).
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
    /// Time allowed for in-flight requests to finish after SIGTERM/SIGINT, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// A client connection that sends no complete request within this long after it was
    /// accepted is closed, in milliseconds (frees its connection slot; 0 = never).
    pub first_request_timeout_ms: u64,
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
            shutdown_grace_ms: 10_000,
            first_request_timeout_ms: 10_000,
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9644".into(),
            token_file: None,
            protect_reads: false,
            tls: None,
        }
    }
}

/// Attribution of produce and fetch traffic to clients and groups.
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
    pub topic_naming: String,
    /// The source cluster alias for `topic_naming = "prefix"`.
    pub source_alias: String,
    /// Who writes the offset syncs: `tollgate` (`tollgate mirror`: a sync at every change of
    /// the offset mapping, so ranges after the last sync are exact) or `mirrormaker2` (sparse
    /// syncs: only ranges between two syncs that advance equally are exact).
    pub mirror: String,
    /// The offset-syncs topic on the secondary (MirrorMaker 2's default name for a target
    /// alias `secondary`).
    pub offset_syncs_topic: String,
    /// Which cluster holds the offset-syncs topic: `secondary` (where `tollgate mirror`
    /// writes it) or `primary` (MirrorMaker 2's default, `offset-syncs.topic.location =
    /// source`).
    pub offset_syncs_cluster: String,
    /// What the routing thresholds measure: `records` or `bytes` (records times the
    /// partition's bytes-per-offset estimate) behind the primary's high watermark.
    pub lag_unit: String,
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
            topic_naming: "identity".into(),
            source_alias: "primary".into(),
            mirror: "tollgate".into(),
            offset_syncs_topic: "mm2-offset-syncs.secondary.internal".into(),
            offset_syncs_cluster: "secondary".into(),
            lag_unit: "records".into(),
            enter_lag: 1_000_000,
            exit_lag: 100_000,
            head_max_age_ms: 1_000,
            secondary_timeout_ms: 5_000,
            mirror_lag_interval_ms: 10_000,
            mirror_batch_records: 10_000,
            secondary_tls: ClientTlsConfig::default(),
            secondary_sasl: None,
        }
    }
}

impl TieredConfig {
    /// The secondary's name for a primary topic.
    pub fn secondary_topic(&self, topic: &str) -> String {
        if self.topic_naming == "prefix" {
            format!("{}.{topic}", self.source_alias)
        } else {
            topic.to_string()
        }
    }

    /// Whether `topic` is mirrored.
    pub fn mirrors(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
    }
}

/// Running several instances as one tier behind one address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// This instance's name in the tier (keys of what it shares in `state.topic`). Empty:
    /// `$HOSTNAME` (a StatefulSet pod name is stable across restarts), else `tollgate`,
    /// followed by `-` and the admin port.
    pub instance_id: String,
    /// How often this instance shares its wire observations (members, offset users, fetch
    /// positions) through `state.topic` and applies the other instances', in milliseconds.
    pub share_interval_ms: u64,
    /// How often the group coordinators are asked (ListGroups, DescribeGroups, OffsetFetch)
    /// for every registered and known group, in milliseconds (0 = never). A read waiting for
    /// a tie asks at once, at most once a second.
    pub coordinator_refresh_ms: u64,
    /// Most groups the coordinator view follows (registered groups first).
    pub max_groups: usize,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            share_interval_ms: 500,
            coordinator_refresh_ms: 5_000,
            max_groups: 10_000,
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
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// A configuration problem, worded for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("invalid value for {0}")]
    Security(#[from] SecurityConfigError),
}

/// `value` must be one of `options`.
fn one_of(key: &'static str, value: &str, options: &[&str]) -> Result<(), ConfigError> {
    if options.contains(&value) {
        return Ok(());
    }
    let quoted: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
    Err(invalid(
        key,
        format!("{value:?} is not one of {}", quoted.join(", ")),
    ))
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TOLLGATE_";

impl Config {
    /// Load a config: defaults, then `path` (if any), then environment overrides from `env`.
    /// Does not validate; call [`Config::validate`].
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut value = toml::Value::try_from(Config::default()).expect("defaults serialize");
        let source = path.map(|p| p.display().to_string());
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let file: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            merge(&mut value, file);
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        vars.sort();
        for (var, raw) in vars {
            apply_env(&mut value, &var, &raw)?;
        }
        let label = source.unwrap_or_else(|| "<defaults and environment>".into());
        Config::deserialize(value).map_err(|e| ConfigError::Parse {
            path: label,
            message: e.to_string(),
        })
    }

    /// Check every value and report the first bad key in words an operator understands.
    pub fn validate(self) -> Result<Config, ConfigError> {
        self.validate_proxy()?;
        self.validate_upstream()?;
        self.validate_observation()?;
        self.validate_tiered()?;
        if let Some(r) = &self.governance.registry {
            if r.trim().is_empty() {
                return Err(invalid("governance.registry", "must not be empty when set"));
            }
        }
        one_of("log.format", &self.log.format, &["text", "json"])?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        self.validate_security()?;
        Ok(self)
    }

    /// `[proxy]` and the listeners.
    fn validate_proxy(&self) -> Result<(), ConfigError> {
        parse_socket_addr(&self.proxy.listen).map_err(|r| invalid("proxy.listen", r))?;
        parse_socket_addr(&self.admin.listen).map_err(|r| invalid("admin.listen", r))?;
        if let Some(h) = &self.proxy.advertised_host {
            if h.trim().is_empty() {
                return Err(invalid("proxy.advertised_host", "must not be empty"));
            }
        }
        if let Some(h) = &self.proxy.broker_bind_host {
            h.parse::<std::net::IpAddr>().map_err(|_| {
                invalid(
                    "proxy.broker_bind_host",
                    format!("{h:?} is not an IP address"),
                )
            })?;
        }
        if self.tier.share_interval_ms < 50 {
            return Err(invalid("tier.share_interval_ms", "must be at least 50"));
        }
        if self.proxy.max_brokers == 0 {
            return Err(invalid("proxy.max_brokers", "must be at least 1"));
        }
        if self.proxy.broker_port_base != 0
            && u32::from(self.proxy.broker_port_base) + u32::from(self.proxy.max_brokers) > 65_536
        {
            return Err(invalid(
                "proxy.broker_port_base",
                format!(
                    "{} + max_brokers {} runs past port 65535",
                    self.proxy.broker_port_base, self.proxy.max_brokers
                ),
            ));
        }
        if self.proxy.broker_port_base != 0 {
            let listen_port = parse_socket_addr(&self.proxy.listen)
                .map(|a| a.port())
                .unwrap_or(0);
            let lo = self.proxy.broker_port_base;
            let hi = u32::from(lo) + u32::from(self.proxy.max_brokers);
            if listen_port >= lo && u32::from(listen_port) < hi {
                return Err(invalid(
                    "proxy.broker_port_base",
                    format!(
                        "broker ports {lo}..{} overlap the bootstrap listener port {listen_port}",
                        hi - 1
                    ),
                ));
            }
        }
        if !(1024..=i32::MAX as usize).contains(&self.proxy.max_frame_bytes) {
            return Err(invalid(
                "proxy.max_frame_bytes",
                "must be between 1024 and 2147483647",
            ));
        }
        if self.proxy.max_connections == 0 {
            return Err(invalid("proxy.max_connections", "must be at least 1"));
        }
        if self.proxy.max_in_flight_per_connection == 0 {
            return Err(invalid(
                "proxy.max_in_flight_per_connection",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// `[upstream]`.
    fn validate_upstream(&self) -> Result<(), ConfigError> {
        if self.upstream.bootstrap_servers.is_empty() {
            return Err(invalid(
                "upstream.bootstrap_servers",
                "at least one host:port is required (or pass --bootstrap-server)",
            ));
        }
        for s in &self.upstream.bootstrap_servers {
            parse_host_port(s).map_err(|r| invalid("upstream.bootstrap_servers", r))?;
        }
        if self.upstream.connect_timeout_ms == 0 {
            return Err(invalid("upstream.connect_timeout_ms", "must be positive"));
        }
        if self.upstream.metadata_refresh_ms < 100 {
            return Err(invalid(
                "upstream.metadata_refresh_ms",
                "must be at least 100",
            ));
        }
        if !(1024..=i32::MAX as usize).contains(&self.upstream.max_response_bytes) {
            return Err(invalid(
                "upstream.max_response_bytes",
                "must be between 1024 and 2147483647",
            ));
        }
        Ok(())
    }

    /// `[attribution]` and `[lag]`.
    fn validate_observation(&self) -> Result<(), ConfigError> {
        let a = &self.attribution;
        for (key, cap) in [
            ("attribution.max_client_ids", a.max_client_ids),
            ("attribution.max_groups", a.max_groups),
            ("attribution.max_topics", a.max_topics),
        ] {
            if cap == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if a.idle_series_seconds == 0 {
            return Err(invalid(
                "attribution.idle_series_seconds",
                "must be at least 1",
            ));
        }
        if self.lag.evaluate_interval_ms < 100 {
            return Err(invalid("lag.evaluate_interval_ms", "must be at least 100"));
        }
        if self.lag.rewind_offsets < 1 {
            return Err(invalid("lag.rewind_offsets", "must be at least 1"));
        }
        if self.lag.max_partitions == 0 {
            return Err(invalid("lag.max_partitions", "must be at least 1"));
        }
        if self.lag.bandwidth_spike_factor.is_nan() || self.lag.bandwidth_spike_factor <= 1.0 {
            return Err(invalid(
                "lag.bandwidth_spike_factor",
                "must be greater than 1",
            ));
        }
        Ok(())
    }

    /// `[tiered]`.
    fn validate_tiered(&self) -> Result<(), ConfigError> {
        let t = &self.tiered;
        one_of(
            "tiered.topic_naming",
            &t.topic_naming,
            &["identity", "prefix"],
        )?;
        if t.topic_naming == "prefix" && t.source_alias.trim().is_empty() {
            return Err(invalid(
                "tiered.source_alias",
                "must not be empty with topic_naming = \"prefix\"",
            ));
        }
        one_of("tiered.mirror", &t.mirror, &["tollgate", "mirrormaker2"])?;
        one_of(
            "tiered.offset_syncs_cluster",
            &t.offset_syncs_cluster,
            &["secondary", "primary"],
        )?;
        one_of("tiered.lag_unit", &t.lag_unit, &["records", "bytes"])?;
        if t.exit_lag > t.enter_lag {
            return Err(invalid(
                "tiered.exit_lag",
                format!("{} is above enter_lag {}", t.exit_lag, t.enter_lag),
            ));
        }
        for s in &t.secondary_bootstrap_servers {
            parse_host_port(s).map_err(|r| invalid("tiered.secondary_bootstrap_servers", r))?;
        }
        if t.enabled && t.secondary_bootstrap_servers.is_empty() {
            return Err(invalid(
                "tiered.secondary_bootstrap_servers",
                "at least one host:port is required when tiered.enabled = true",
            ));
        }
        if t.enabled && t.topics.is_empty() {
            return Err(invalid(
                "tiered.topics",
                "name the mirrored topics when tiered.enabled = true",
            ));
        }
        if t.offset_syncs_topic.trim().is_empty() {
            return Err(invalid("tiered.offset_syncs_topic", "must not be empty"));
        }
        if !(1..=1_000_000).contains(&t.mirror_batch_records) {
            return Err(invalid(
                "tiered.mirror_batch_records",
                "must be between 1 and 1000000",
            ));
        }
        if t.secondary_timeout_ms == 0 {
            return Err(invalid("tiered.secondary_timeout_ms", "must be positive"));
        }
        Ok(())
    }

    /// TLS files load, SASL settings are complete (see [`crate::security`]).
    fn validate_security(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.proxy.tls {
            t.validate("proxy.tls")?;
        }
        if let Some(t) = &self.admin.tls {
            t.validate("admin.tls")?;
            if t.client_ca_file.is_some() {
                return Err(invalid(
                    "admin.tls.client_ca_file",
                    "not supported on the admin listener (use admin.token_file)",
                ));
            }
        }
        if let Some(path) = &self.admin.token_file {
            let token = crate::security::login::read_secret(path)
                .map_err(|e| invalid("admin.token_file", e.to_string()))?;
            if token.len() < 16 {
                return Err(invalid(
                    "admin.token_file",
                    "the token must be at least 16 characters",
                ));
            }
        }
        if self.admin.protect_reads && self.admin.token_file.is_none() {
            return Err(invalid("admin.protect_reads", "needs admin.token_file"));
        }
        self.upstream.tls.validate("upstream.tls")?;
        self.tiered.secondary_tls.validate("tiered.secondary_tls")?;
        if let Some(s) = &self.upstream.sasl {
            s.validate("upstream.sasl")?;
        }
        if let Some(s) = &self.tiered.secondary_sasl {
            s.validate("tiered.secondary_sasl")?;
        }
        if self.governance.require_authentication && self.governance.registry.is_none() {
            return Err(invalid(
                "governance.require_authentication",
                "applies with a registry: set governance.registry",
            ));
        }
        if self.proxy.sasl.oauthbearer_principal_claim.is_empty() {
            return Err(invalid(
                "proxy.sasl.oauthbearer_principal_claim",
                "must not be empty",
            ));
        }
        Ok(())
    }

    /// Whether clients must finish a SASL exchange before anything else
    /// (`proxy.sasl.required`, by default whether Tollgate itself logs in upstream).
    pub fn sasl_required(&self) -> bool {
        self.proxy
            .sasl
            .required
            .unwrap_or(self.upstream.sasl.is_some())
    }

    /// Tollgate's own topics, which clients may not write or administer through it: the state
    /// topic and, with tiered reads on, the offset-syncs topic.
    pub fn own_topics(&self) -> Vec<String> {
        let mut topics = vec![self.state.topic.clone()];
        if self.tiered.enabled {
            topics.push(self.tiered.offset_syncs_topic.clone());
        }
        topics.retain(|t| !t.is_empty());
        topics
    }

    /// Host that clients are told to connect to for broker listeners.
    pub fn advertised_host(&self) -> String {
        if let Some(h) = &self.proxy.advertised_host {
            return h.clone();
        }
        match parse_socket_addr(&self.proxy.listen) {
            Ok(a) if !a.ip().is_unspecified() => a.ip().to_string(),
            _ => "127.0.0.1".into(),
        }
    }

    /// IP the broker listeners bind to.
    pub fn broker_bind_host(&self) -> String {
        if let Some(h) = &self.proxy.broker_bind_host {
            return h.clone();
        }
        match parse_socket_addr(&self.proxy.listen) {
            Ok(a) => a.ip().to_string(),
            _ => "0.0.0.0".into(),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.proxy.shutdown_grace_ms)
    }
}

/// Parse `ip:port`.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an ip:port address (e.g. 0.0.0.0:9092)"))
}

/// Parse `host:port` (host may be a name).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port (e.g. kafka-1:9092)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has an invalid port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?} is not host:port (e.g. kafka-1:9092)"));
    }
    Ok((host.to_string(), port))
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn apply_env(root: &mut toml::Value, var: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    if path.iter().any(|p| p.is_empty()) {
        return Err(err("expected TOLLGATE_<SECTION>__<KEY>".into()));
    }
    let (last, parents) = path.split_last().expect("non-empty");
    let mut node = root;
    for p in parents {
        let table = node
            .as_table_mut()
            .ok_or_else(|| err(format!("`{p}` is not a section")))?;
        node = table
            .get_mut(p)
            .ok_or_else(|| err(format!("unknown config section `{p}`")))?;
    }
    let table = node
        .as_table_mut()
        .ok_or_else(|| err("not a config section".into()))?;
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let wants_list = matches!(table.get(last), Some(toml::Value::Array(_)));
    let value = match parsed {
        Some(v @ toml::Value::Array(_)) => v,
        Some(_) | None if wants_list => toml::Value::Array(
            raw.split(',')
                .map(|s| toml::Value::String(s.trim().to_string()))
                .filter(|v| v.as_str() != Some(""))
                .collect(),
        ),
        Some(v) => v,
        None => toml::Value::String(raw.to_string()),
    };
    // Keep strings strings: `TOLLGATE_LOG__LEVEL=info` parses as nothing, `=123` as an int.
    let value = match (table.get(last), value) {
        (Some(toml::Value::String(_)), v) if !v.is_str() => toml::Value::String(raw.to_string()),
        (_, v) => v,
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_config_key_is_documented() {
        let readme = include_str!("../README.md");
        let example = include_str!("../config/tollgate.toml");
        let value = toml::Value::try_from(Config::default()).unwrap();
        let mut n = 0;
        for (section, table) in value.as_table().unwrap() {
            for (key, v) in table.as_table().unwrap() {
                // A nested table (`proxy.sasl`): its keys are documented as `proxy.sasl.x`.
                let full = match v.as_table() {
                    Some(_) => format!("`{section}.{key}."),
                    None => format!("`{section}.{key}`"),
                };
                assert!(
                    readme.contains(&full),
                    "{full} is missing from README's configuration reference"
                );
                assert!(
                    example.contains(key.as_str()),
                    "{key} is missing from config/tollgate.toml"
                );
                n += 1;
            }
        }
        // Option keys without a default do not serialize; check them by name.
        for full in [
            "`proxy.advertised_host`",
            "`proxy.broker_bind_host`",
            "`proxy.tls.cert_file`",
            "`proxy.tls.client_ca_file`",
            "`proxy.sasl.required`",
            "`upstream.sasl.mechanism`",
            "`admin.token_file`",
            "`admin.tls.cert_file`",
            "`tiered.secondary_sasl.*`",
        ] {
            assert!(readme.contains(full), "{full}");
        }
        assert!(n >= 15);
    }

    #[test]
    fn defaults_validate() {
        Config::load(None, vec![]).unwrap().validate().unwrap();
    }

    #[test]
    fn example_configs_load_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tollgate")
                && path.extension().is_some_and(|e| e == "toml")
            {
                Config::load(Some(&path), vec![])
                    .and_then(Config::validate)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 1, "no example configs found");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[upstream]\nbootstrap_server = [\"a:1\"]\n").unwrap();
        let e = Config::load(Some(&p), vec![]).unwrap_err().to_string();
        assert!(e.contains("bootstrap_server"), "{e}");
    }

    #[test]
    fn env_overrides_every_kind_of_key() {
        let c = Config::load(
            None,
            env(&[
                ("TOLLGATE_UPSTREAM__BOOTSTRAP_SERVERS", "k1:9092, k2:9093"),
                ("TOLLGATE_PROXY__MAX_CONNECTIONS", "7"),
                ("TOLLGATE_PROXY__ADVERTISED_HOST", "proxy.example"),
                ("TOLLGATE_LOG__LEVEL", "debug"),
                ("TOLLGATE_ADMIN__LISTEN", "127.0.0.1:1"),
                ("TOLLGATE_UNRELATED", "ignored: no double underscore"),
            ]),
        )
        .unwrap();
        assert_eq!(c.upstream.bootstrap_servers, vec!["k1:9092", "k2:9093"]);
        assert_eq!(c.proxy.max_connections, 7);
        assert_eq!(c.proxy.advertised_host.as_deref(), Some("proxy.example"));
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.admin.listen, "127.0.0.1:1");
    }

    #[test]
    fn env_typos_are_errors() {
        let e = Config::load(None, env(&[("TOLLGATE_UPSTREM__X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TOLLGATE_UPSTREM__X"), "{e}");
        let e = Config::load(None, env(&[("TOLLGATE_PROXY__MAX_CONECTIONS", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn validation_names_the_bad_key() {
        type Case = (fn(&mut Config), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.proxy.listen = "nope".into(), "proxy.listen"),
            (
                |c| c.upstream.bootstrap_servers = vec![],
                "upstream.bootstrap_servers",
            ),
            (
                |c| c.upstream.bootstrap_servers = vec!["host-without-port".into()],
                "upstream.bootstrap_servers",
            ),
            (|c| c.proxy.max_frame_bytes = 10, "proxy.max_frame_bytes"),
            (|c| c.log.format = "yaml".into(), "log.format"),
            (
                |c| {
                    c.proxy.listen = "0.0.0.0:9105".into();
                    c.proxy.broker_port_base = 9100;
                },
                "proxy.broker_port_base",
            ),
            (
                |c| c.proxy.broker_port_base = 65_500,
                "proxy.broker_port_base",
            ),
        ];
        for (mutate, key) in cases {
            let mut c = Config::default();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "expected {key} in {e}");
        }
    }

    #[test]
    fn advertised_host_defaults() {
        let mut c = Config::default();
        assert_eq!(c.advertised_host(), "127.0.0.1");
        c.proxy.listen = "10.1.2.3:9092".into();
        assert_eq!(c.advertised_host(), "10.1.2.3");
        c.proxy.advertised_host = Some("tollgate.svc".into());
        assert_eq!(c.advertised_host(), "tollgate.svc");
    }
}
