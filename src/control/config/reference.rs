//! The configuration reference: every key with what it means, in one table. The defaults
//! are not written here: [`reference_markdown`] reads them from [`Config::default`], so the
//! reference cannot drift from the code. `docs/configuration.md` holds the generated table,
//! and a unit test keeps the two equal (`TOLLGATE_BLESS=1` rewrites it).

use super::Config;

/// One row: the keys it documents (several for a pair such as cert and key files, a `.*`
/// for a whole nested table), a note on the default when the code's value alone does not say
/// it (an unset option, a derived value; it must show the code's value when there is one),
/// and the meaning.
pub struct Key {
    pub keys: &'static [&'static str],
    pub default_note: &'static str,
    pub meaning: &'static str,
}

/// Every key, in the order of `config/tollgate.toml`.
pub const KEYS: &[Key] = &[
    Key {
        keys: &["proxy.listen"],
        default_note: "",
        meaning: "bootstrap listener (what clients put in `bootstrap.servers`)",
    },
    Key {
        keys: &["proxy.advertised_host"],
        default_note: "host of `listen`, or `127.0.0.1` if wildcard",
        meaning: "host advertised to clients for the broker listeners",
    },
    Key {
        keys: &["proxy.broker_bind_host"],
        default_note: "host of `listen`",
        meaning: "IP the broker listeners bind to",
    },
    Key {
        keys: &["proxy.broker_port_base"],
        default_note: "",
        meaning: "first broker port: node id N is served on `broker_port_base + N mod max_brokers` (or `+ N - node_id_base` when that is set); `0` = any free port",
    },
    Key {
        keys: &["proxy.node_id_base"],
        default_note: "unset",
        meaning: "unset: any node id, by `N mod max_brokers`; set: the lowest node id expected (e.g. 1001), and ids outside `node_id_base .. node_id_base + max_brokers` are refused",
    },
    Key {
        keys: &["proxy.max_brokers"],
        default_note: "",
        meaning: "broker ports reserved from `broker_port_base`",
    },
    Key {
        keys: &["proxy.max_frame_bytes"],
        default_note: "",
        meaning: "largest request frame from a client (Kafka's `socket.request.max.bytes`)",
    },
    Key {
        keys: &["proxy.max_connections"],
        default_note: "",
        meaning: "client connections open at once; more are refused",
    },
    Key {
        keys: &["proxy.max_in_flight_per_connection"],
        default_note: "",
        meaning: "pipelining depth per client connection",
    },
    Key {
        keys: &["proxy.allow_cluster_admin"],
        default_note: "",
        meaning: "forward CreateAcls, DeleteAcls, AlterUserScramCredentials, AlterPartitionReassignments and ElectLeaders from clients the broker does not know as themselves (no SASL exchange through Tollgate), with Tollgate's broker identity; off, they are answered `CLUSTER_AUTHORIZATION_FAILED` (`tollgate_rejected_requests_total{reason=\"cluster_admin\"}`)",
    },
    Key {
        keys: &["proxy.max_buffered_bytes_per_connection"],
        default_note: "`67108864` (64 MiB)",
        meaning: "bytes of answers one client connection may have reserved and not yet received: a Fetch reserves its `max_bytes`, other requests their size and 64 KiB; at the bound no more of its requests are read until answers are written (TCP back-pressure). At least 1 MiB",
    },
    Key {
        keys: &["proxy.shutdown_grace_ms"],
        default_note: "",
        meaning: "time for in-flight requests after SIGTERM/SIGINT",
    },
    Key {
        keys: &["proxy.first_request_timeout_ms"],
        default_note: "",
        meaning: "a client connection that sends no whole request this long after accept is closed (0 = never)",
    },
    Key {
        keys: &["proxy.idle_timeout_ms"],
        default_note: "",
        meaning: "a client connection with nothing in flight and no request for this long is closed, as Kafka's `connections.max.idle.ms`; also the longest one response write may take before a client that stopped reading is closed (0 = never)",
    },
    Key {
        keys: &["proxy.tls.cert_file", "proxy.tls.key_file"],
        default_note: "unset (plaintext)",
        meaning: "PEM certificate chain and key: TLS on every client listener (bootstrap and per-broker); see [Security](security.md)",
    },
    Key {
        keys: &["proxy.tls.client_ca_file"],
        default_note: "unset",
        meaning: "PEM CAs that sign client certificates: mutual TLS, a client without such a certificate fails the handshake",
    },
    Key {
        keys: &["proxy.tls.principal_mapping_rules"],
        default_note: "`[\"DEFAULT\"]`",
        meaning: "Kafka's `ssl.principal.mapping.rules`, one rule per entry (`RULE:pattern/replacement/[L\\|U]` or `DEFAULT`), over the certificate subject in RFC 2253 form; the principal is `User:<result>`; no rule matches: unauthenticated",
    },
    Key {
        keys: &["proxy.tls.reload_interval_ms"],
        default_note: "`10000`",
        meaning: "how often the PEM files are checked; changed files apply to new handshakes, open connections keep theirs",
    },
    Key {
        keys: &["proxy.sasl.required"],
        default_note: "`true` when `upstream.sasl` is set, else `false`",
        meaning: "close a client connection that sends anything but ApiVersions/SaslHandshake/SaslAuthenticate before the broker accepted its SASL exchange",
    },
    Key {
        keys: &["proxy.sasl.oauthbearer_principal_claim"],
        default_note: "",
        meaning: "the JWT claim that names an OAUTHBEARER client (read after the broker accepted the token; Tollgate does not verify it)",
    },
    Key {
        keys: &["proxy.sasl.authentication_timeout_ms"],
        default_note: "",
        meaning: "with SASL required, a connection the broker has not authenticated this long after accept is closed, whatever it sends meanwhile (`tollgate_client_timeouts_total{reason=\"authentication_timeout\"}`); 0: never",
    },
    Key {
        keys: &["upstream.bootstrap_servers"],
        default_note: "",
        meaning: "the cluster's bootstrap servers, `host:port`",
    },
    Key {
        keys: &["upstream.connect_timeout_ms"],
        default_note: "",
        meaning: "one TCP connect to a broker",
    },
    Key {
        keys: &["upstream.startup_timeout_ms"],
        default_note: "",
        meaning: "how long start-up waits for the cluster to answer Metadata",
    },
    Key {
        keys: &["upstream.metadata_refresh_ms"],
        default_note: "",
        meaning: "Tollgate's own Metadata refresh, to learn new brokers",
    },
    Key {
        keys: &["upstream.max_response_bytes"],
        default_note: "",
        meaning: "largest response frame accepted from a broker",
    },
    Key {
        keys: &["upstream.tls.enabled"],
        default_note: "",
        meaning: "TLS from Tollgate to the brokers (client connections and Tollgate's own)",
    },
    Key {
        keys: &["upstream.tls.ca_file"],
        default_note: "unset (the system's roots)",
        meaning: "PEM CAs trusted for broker certificates",
    },
    Key {
        keys: &["upstream.tls.server_name"],
        default_note: "unset (each broker's host)",
        meaning: "name sent in SNI and checked against the broker certificates",
    },
    Key {
        keys: &["upstream.tls.cert_file", "upstream.tls.key_file"],
        default_note: "unset",
        meaning: "Tollgate's client certificate, for brokers that require mutual TLS",
    },
    Key {
        keys: &["upstream.sasl.mechanism"],
        default_note: "unset (no login)",
        meaning: "Tollgate's own login for the connections it opens itself (control queries, state store, offset syncs): `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`",
    },
    Key {
        keys: &["upstream.sasl.username", "upstream.sasl.password_file"],
        default_note: "unset",
        meaning: "its user, and the file holding its password",
    },
    Key {
        keys: &["admin.listen"],
        default_note: "",
        meaning: "admin HTTP listener",
    },
    Key {
        keys: &["admin.token_file"],
        default_note: "unset",
        meaning: "file holding the bearer token that mutating endpoints require (at least 16 characters; re-read at each call, so rotation needs no restart); unset: mutations only on a loopback listener",
    },
    Key {
        keys: &["admin.protect_reads"],
        default_note: "",
        meaning: "require the token for the `/v1` reads as well (`/metrics`, `/healthz`, `/readyz` stay open)",
    },
    Key {
        keys: &["admin.protect_metrics"],
        default_note: "",
        meaning: "require the token for `/metrics` as well: its series carry principal, client id and group labels (Prometheus: `authorization: {credentials_file: ...}` in the scrape config). `/healthz` and `/readyz` stay open",
    },
    Key {
        keys: &["admin.max_connections"],
        default_note: "",
        meaning: "most admin connections open at once; one more is closed at once (`tollgate_admin_requests_refused_total{reason=\"max_connections\"}`). A request's headers must arrive within 10 s (idle keep-alive connections close after 10 s too). Bounds the file descriptors the admin port can take from the proxy",
    },
    Key {
        keys: &["admin.tls.cert_file", "admin.tls.key_file"],
        default_note: "unset (plaintext)",
        meaning: "TLS on the admin listener (reloaded like `proxy.tls`)",
    },
    Key {
        keys: &["attribution.hot_threshold_bytes"],
        default_note: "",
        meaning: "distance from the head (bytes) beyond which a fetch is `cold`",
    },
    Key {
        keys: &["attribution.max_client_ids"],
        default_note: "",
        meaning: "distinct `client_id` label values; more count as `other`",
    },
    Key {
        keys: &["attribution.max_groups"],
        default_note: "",
        meaning: "distinct `group` label values; more count as `other`",
    },
    Key {
        keys: &["attribution.max_topics"],
        default_note: "",
        meaning: "distinct `topic` label values; more count as `other`",
    },
    Key {
        keys: &["attribution.idle_series_seconds"],
        default_note: "",
        meaning: "series, label values and views idle this long are removed",
    },
    Key {
        keys: &["attribution.tie_wait_ms"],
        default_note: "",
        meaning: "a read tied to no group waits up to this long for the tier view (coordinator, other instances) before it is attributed to `(none)` or refused; once per connection and set of partitions, and only while other instances are heard from; `0` = never wait",
    },
    Key {
        keys: &["governance.registry"],
        default_note: "unset (governance off)",
        meaning: "path of the consumer registry file",
    },
    Key {
        keys: &["governance.watch_interval_ms"],
        default_note: "",
        meaning: "how often the registry file is checked for changes; `0` = only SIGHUP and the API",
    },
    Key {
        keys: &["governance.require_authentication"],
        default_note: "",
        meaning: "refuse every consumer request (group APIs, Fetch, ListOffsets) from a connection with no authenticated principal, whatever the registry's mode (`reason=\"unauthenticated\"`); needs `governance.registry`",
    },
    Key {
        keys: &["lag.evaluate_interval_ms"],
        default_note: "",
        meaning: "how often lag, detections and statuses are recomputed",
    },
    Key {
        keys: &["lag.stopped_after_seconds"],
        default_note: "",
        meaning: "`stopped`: lag > 0 and no fetch and no commit anywhere in the tier for this long",
    },
    Key {
        keys: &["lag.commit_stall_seconds"],
        default_note: "",
        meaning: "`commit_stall`: position past the commit and no commit for this long",
    },
    Key {
        keys: &["lag.wedged_after_seconds"],
        default_note: "",
        meaning: "`wedged`: assigned to a heartbeating member, not fetched for this long",
    },
    Key {
        keys: &["lag.rewind_offsets"],
        default_note: "",
        meaning: "`rewind`: a backwards jump larger than this",
    },
    Key {
        keys: &["lag.rewind_hold_seconds"],
        default_note: "",
        meaning: "how long a rewind stays reported",
    },
    Key {
        keys: &["lag.bandwidth_spike_factor"],
        default_note: "",
        meaning: "`bandwidth`: read rate above this × the group's baseline ...",
    },
    Key {
        keys: &["lag.bandwidth_min_bytes_per_second"],
        default_note: "",
        meaning: "... once the baseline is at least this",
    },
    Key {
        keys: &["lag.forget_after_seconds"],
        default_note: "",
        meaning: "an unregistered group silent this long is forgotten, its series removed (registered groups never are)",
    },
    Key {
        keys: &["lag.head_refresh_seconds"],
        default_note: "",
        meaning: "heads of tracked partitions not seen in traffic this long are refreshed with ListOffsets to their leader; `0` = never. On tansu each refresh stalls the broker (125-160 ms for 4 partitions here; see the latency benchmark in [Performance](performance.md))",
    },
    Key {
        keys: &["lag.probation_window_seconds"],
        default_note: "",
        meaning: "a probation group within its SLO this long becomes eligible for promotion",
    },
    Key {
        keys: &["lag.demote_after_seconds"],
        default_note: "",
        meaning: "a promoted group over its lag SLO without a break this long is demoted back to probation (its promotion deleted, a `demotion/{group}` record written, `tollgate_probation_demotions_total`); `0` = never",
    },
    Key {
        keys: &["lag.auto_promote"],
        default_note: "",
        meaning: "promote eligible probation groups automatically",
    },
    Key {
        keys: &["lag.max_partitions"],
        default_note: "",
        meaning: "most group partitions tracked for lag; each is a few `tollgate_consumer_*` series, and group and topic names come from clients (commits), so further new ones are dropped and counted in `tollgate_lag_partitions_dropped_total`",
    },
    Key {
        keys: &["tiered.enabled"],
        default_note: "",
        meaning: "route cold and probation reads to the secondary cluster",
    },
    Key {
        keys: &["tiered.secondary_bootstrap_servers"],
        default_note: "",
        meaning: "the secondary cluster's bootstrap servers, `host:port` (required when enabled)",
    },
    Key {
        keys: &["tiered.topics"],
        default_note: "",
        meaning: "mirrored topics: what `tollgate mirror` copies and the only topics routed (required when enabled)",
    },
    Key {
        keys: &["tiered.topic_naming"],
        default_note: "",
        meaning: "secondary topic names: `identity`, or `prefix` for MirrorMaker 2's `<source_alias>.<topic>`",
    },
    Key {
        keys: &["tiered.source_alias"],
        default_note: "",
        meaning: "the alias for `topic_naming = \"prefix\"`",
    },
    Key {
        keys: &["tiered.mirror"],
        default_note: "",
        meaning: "who writes the offset syncs: `tollgate` (dense: a sync at every mapping change) or `mirrormaker2` (sparse)",
    },
    Key {
        keys: &["tiered.offset_syncs_topic"],
        default_note: "",
        meaning: "the offset-syncs topic (MM2's default name for a target alias `secondary`)",
    },
    Key {
        keys: &["tiered.offset_syncs_cluster"],
        default_note: "",
        meaning: "where that topic lives: `secondary` (`tollgate mirror`) or `primary` (MM2's default `offset-syncs.topic.location = source`)",
    },
    Key {
        keys: &["tiered.lag_unit"],
        default_note: "",
        meaning: "what the thresholds measure behind the primary's head: `records` or `bytes` (records × the partition's bytes-per-offset estimate)",
    },
    Key {
        keys: &["tiered.enter_lag"],
        default_note: "",
        meaning: "a partition fetch further behind than this goes to the secondary ...",
    },
    Key {
        keys: &["tiered.exit_lag"],
        default_note: "",
        meaning: "... and returns to the primary once within this (hysteresis; ≤ `enter_lag`)",
    },
    Key {
        keys: &["tiered.head_max_age_ms"],
        default_note: "",
        meaning: "the primary head reported for secondary-served partitions is refreshed when older than this",
    },
    Key {
        keys: &["tiered.secondary_timeout_ms"],
        default_note: "",
        meaning: "time for a secondary Fetch (plus the client's `max_wait`) before its partitions are served by the primary",
    },
    Key {
        keys: &["tiered.mirror_batch_records"],
        default_note: "",
        meaning: "`tollgate mirror`: most records per produce batch on the secondary (librdkafka's `batch.num.messages`); a routed fetch returns at least one whole batch",
    },
    Key {
        keys: &["tiered.secondary_tls.*"],
        default_note: "as `upstream.tls`",
        meaning: "TLS to the secondary cluster (Tollgate's routed reads, `tollgate mirror`)",
    },
    Key {
        keys: &["tiered.secondary_sasl.*"],
        default_note: "as `upstream.sasl`",
        meaning: "Tollgate's login to the secondary cluster: routed reads there are Tollgate's own requests",
    },
    Key {
        keys: &["tiered.mirror_lag_interval_ms"],
        default_note: "",
        meaning: "how often the mirror-lag metric is refreshed; `0` = never",
    },
    Key {
        keys: &["tiered.read_ahead_bytes"],
        default_note: "",
        meaning: "most bytes of secondary answers read ahead for clients' next Fetches, all connections together (counted at the size of the answer each follows); `0` = no read-ahead",
    },
    Key {
        keys: &["state.topic"],
        default_note: "",
        meaning: "compacted topic for durable, shared state (promotions, the tier's shared wire observations); empty = memory only, and nothing is shared between instances",
    },
    Key {
        keys: &["state.load_timeout_ms"],
        default_note: "",
        meaning: "how long start-up waits to create and load the state topic",
    },
    Key {
        keys: &["audit.topic"],
        default_note: "",
        meaning: "topic of Tollgate's own for the audit trail (versioned JSON events and usage windows, `docs/audit.md`), created when missing with `cleanup.policy=delete`; guarded like `state.topic`; empty = no topic and no showback",
    },
    Key {
        keys: &["audit.file"],
        default_note: "",
        meaning: "also append every audit event, one JSON object per line, to this file; empty = no file",
    },
    Key {
        keys: &["audit.window_seconds"],
        default_note: "",
        meaning: "length of the usage windows: reads rolled up per (group, principal, topic) and writes per (producer, topic), with bytes, records and offsets covered (1 to 3600)",
    },
    Key {
        keys: &["audit.dedup_seconds"],
        default_note: "",
        meaning: "identical events (same kind, who and what) within this many seconds are written once, then once more with `repeats`; `0` = never folded",
    },
    Key {
        keys: &["audit.max_events_per_second"],
        default_note: "",
        meaning: "most audit events written per second by this instance (usage windows not counted); the rest are counted in `tollgate_audit_events_dropped_total{reason=\"rate\"}` and one `dropped` event",
    },
    Key {
        keys: &["audit.retention_ms"],
        default_note: "",
        meaning: "`retention.ms` of the audit topic when Tollgate creates it: the longest showback window",
    },
    Key {
        keys: &["showback.currency"],
        default_note: "",
        meaning: "the unit the rates are in, as shown by `GET /v1/showback`",
    },
    Key {
        keys: &["showback.produced_per_gib", "showback.read_hot_per_gib", "showback.read_cold_per_gib"],
        default_note: "",
        meaning: "what a GiB produced, read hot, read cold costs; all rates zero = no cost column",
    },
    Key {
        keys: &["showback.secondary_per_hour"],
        default_note: "",
        meaning: "what an hour of fetches served by the secondary cluster costs",
    },
    Key {
        keys: &["tier.instance_id"],
        default_note: "`<host name>-<listen port>-<nonce>`",
        meaning: "this instance's name in the tier (keys of what it shares in `state.topic`); must differ between live instances. The default is unique per process (the OS host name, the client listener's port and a random per-start nonce); two live processes with one id are reported by `tollgate_tier_duplicate_instance_id`, an error log and a warning on `/readyz`",
    },
    Key {
        keys: &["tier.share_interval_ms"],
        default_note: "",
        meaning: "how often members, offset users and fetch positions seen here are shared, and the others' applied",
    },
    Key {
        keys: &["tier.coordinator_refresh_ms"],
        default_note: "",
        meaning: "how often the group coordinators are asked (ListGroups, DescribeGroups, OffsetFetch); `0` = never",
    },
    Key {
        keys: &["tier.max_groups"],
        default_note: "",
        meaning: "most groups the coordinator view follows (registered ones first), and most groups the group view holds: a new one evicts the least recently active (one with a live member or a tied fetch last)",
    },
    Key {
        keys: &["tier.max_members_per_group"],
        default_note: "",
        meaning: "most members the group view holds per group (the least recently seen is evicted)",
    },
    Key {
        keys: &["tier.max_offset_users_per_group"],
        default_note: "",
        meaning: "most offset users (committing `assign()` readers) held per group, likewise",
    },
    Key {
        keys: &["log.level"],
        default_note: "",
        meaning: "`tracing` filter; `RUST_LOG` wins when set",
    },
    Key {
        keys: &["log.format"],
        default_note: "",
        meaning: "`text` or `json`",
    },
];

/// The code's default for `key` (`section.name`), as the reference shows it.
fn code_default(defaults: &toml::Value, key: &str) -> Option<String> {
    let mut v = defaults;
    for part in key.split('.') {
        v = v.get(part)?;
    }
    Some(match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The default column of one row.
pub fn default_cell(defaults: &toml::Value, row: &Key) -> String {
    if !row.default_note.is_empty() {
        return row.default_note.to_string();
    }
    row.keys
        .iter()
        .filter_map(|k| code_default(defaults, k))
        .map(|v| format!("`{v}`"))
        .next()
        .unwrap_or_default()
}

/// The configuration reference as a Markdown table.
pub fn reference_markdown() -> String {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for row in KEYS {
        let keys: Vec<String> = row.keys.iter().map(|k| format!("`{k}`")).collect();
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            keys.join(", "),
            default_cell(&defaults, row),
            row.meaning
        ));
    }
    out
}
