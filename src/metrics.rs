//! Every Prometheus metric Tollgate exports, in one explicit [`Registry`].
//!
//! Names use base units and the conventional suffixes (`_total`, `_bytes_total`,
//! `_seconds`). Labels are low-cardinality: `api` is bounded by the Kafka API keys,
//! `reason` by the error enums, `broker` by the brokers of the cluster. `docs/metrics.md` is
//! generated from the table below (a unit test keeps the two equal).
//!
//! Per-API series are created lazily (on first use) so `/metrics` only shows APIs that were
//! actually used, and cached in a table indexed by API key so the hot path does no label hashing.

use std::sync::OnceLock;

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Holds a gauge one higher for as long as it lives: the decrement runs on every exit path,
/// including a panic that unwinds the task, so an "open" gauge cannot drift.
pub(crate) struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub(crate) fn inc(gauge: IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Per-API handles, resolved once.
pub(crate) struct ApiMetrics {
    pub(crate) requests: IntCounter,
    pub(crate) duration: Histogram,
}

/// Latency buckets, in seconds: 50 µs up to 30 s (Fetch long-polls sit at the top).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// How one kind of metric is made from its row in the table.
trait Make: prometheus::core::Collector + Clone + 'static {
    fn make(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> Self;
}

macro_rules! make_plain {
    ($($t:ty),*) => {$(
        impl Make for $t {
            fn make(name: &str, help: &str, _: &[&str], _: &[f64]) -> Self {
                <$t>::new(name, help).expect("valid metric")
            }
        }
    )*};
}
make_plain!(IntCounter, IntGauge);

macro_rules! make_vec {
    ($($t:ty),*) => {$(
        impl Make for $t {
            fn make(name: &str, help: &str, labels: &[&str], _: &[f64]) -> Self {
                <$t>::new(Opts::new(name, help), labels).expect("valid metric")
            }
        }
    )*};
}
make_vec!(IntCounterVec, IntGaugeVec, GaugeVec, CounterVec);

impl Make for HistogramVec {
    fn make(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> Self {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        HistogramVec::new(opts, labels).expect("valid metric")
    }
}

/// Register `m` in `registry` and note its name.
fn register<M: Make>(registry: &Registry, names: &mut Vec<String>, m: M) -> M {
    for d in prometheus::core::Collector::desc(&m) {
        names.push(d.fq_name.clone());
    }
    registry
        .register(Box::new(m.clone()))
        .expect("metric registers");
    m
}

/// The metrics table: each row is a field of [`Metrics`], its kind, its name, its help,
/// its labels and (histograms) its buckets. `Metrics::new` registers every row.
macro_rules! metrics_table {
    (@buckets) => { &[] };
    (@buckets $b:expr) => { $b };
    ($($vis:vis $field:ident: $kind:ty = $name:literal, $help:literal
        $(, [$($label:literal),*])? $(, buckets $buckets:expr)?;)*) => {
        /// All metrics, one field per row of the table.
        pub struct Metrics {
            pub(crate) registry: Registry,
            $($vis $field: $kind,)*
            per_api: Vec<OnceLock<ApiMetrics>>,
            /// Every metric name registered (for documentation checks).
            pub names: Vec<String>,
        }

        /// The table itself, for the generated reference (`docs/metrics.md`).
        const TABLE: &[Row] = &[
            Row {
                name: "tollgate_build_info",
                kind: "IntCounterVec",
                help: "Always 1; the version label tells the build.",
                labels: &["version"],
            },
            $(Row {
                name: $name,
                kind: stringify!($kind),
                help: $help,
                labels: &[$($($label),*)?],
            },)*
        ];

        impl Metrics {
            pub fn new() -> Metrics {
                let (registry, mut names) = base_registry();
                $(let $field: $kind = register(&registry, &mut names, <$kind as Make>::make(
                    $name,
                    $help,
                    &[$($($label),*)?],
                    metrics_table!(@buckets $($buckets)?),
                ));)*
                Metrics {
                    registry,
                    $($field,)*
                    per_api: (0..128).map(|_| OnceLock::new()).collect(),
                    names,
                }
            }
        }
    };
}

/// One row of the metrics table, as the reference shows it.
struct Row {
    name: &'static str,
    /// The Rust type (`IntCounterVec`, ...).
    kind: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

impl Row {
    fn prometheus_type(&self) -> &'static str {
        match self.kind {
            k if k.contains("Histogram") => "histogram",
            k if k.contains("Gauge") => "gauge",
            _ => "counter",
        }
    }
}

/// The metrics reference, generated from the table: `docs/metrics.md` holds it between its
/// `generated` markers, and a unit test keeps the two equal.
pub fn reference_markdown() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for row in TABLE {
        let labels: Vec<String> = row.labels.iter().map(|l| format!("`{l}`")).collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            row.name,
            row.prometheus_type(),
            labels.join(", "),
            row.help.replace('|', "\\|")
        ));
    }
    out
}

/// A registry holding `tollgate_build_info`, and the names registered so far.
fn base_registry() -> (Registry, Vec<String>) {
    let registry = Registry::new();
    let build_info = IntCounterVec::new(
        Opts::new(
            "tollgate_build_info",
            "Always 1; the version label tells the build.",
        ),
        &["version"],
    )
    .expect("valid metric");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .inc();
    registry
        .register(Box::new(build_info))
        .expect("metric registers");
    (registry, vec!["tollgate_build_info".into()])
}

metrics_table! {
    pub(crate) connections_open: IntGauge = "tollgate_client_connections_open",
        "Client connections currently open.";
    pub(crate) connections_accepted: IntCounter = "tollgate_client_connections_accepted_total",
        "Client connections accepted.";
    pub(crate) connections_refused: IntCounterVec = "tollgate_client_connections_refused_total",
        "Connections closed before being served (upstream_unavailable: no broker answered the connection's first request; sasl_required: a request before the SASL exchange, with proxy.sasl.required). Labels: reason = max_connections, upstream_unavailable, sasl_required.",
        ["reason"];
    pub(crate) client_timeouts: IntCounterVec = "tollgate_client_timeouts_total",
        "Client connections closed for saying nothing, for reading nothing (a response write that did not complete within proxy.idle_timeout_ms), or for not authenticating within proxy.sasl.authentication_timeout_ms when SASL is required. Labels: reason = first_request_timeout, idle_timeout, write_stalled, authentication_timeout.",
        ["reason"];
    pub(crate) tls_reloads: IntCounterVec = "tollgate_tls_reloads_total",
        "TLS certificate reloads after the files changed (error: the previous certificate stays). Labels: listener = client, admin; result = ok, error.",
        ["listener", "result"];
    pub(crate) tls_handshake_errors: IntCounterVec = "tollgate_tls_handshake_errors_total",
        "TLS handshakes with clients that failed or timed out (untrusted or missing client certificate, plaintext to a TLS port), by listener (client, admin).",
        ["listener"];
    pub(crate) sasl_authentications: IntCounterVec = "tollgate_sasl_authentications_total",
        "Client SASL exchanges the broker finished (unreadable: accepted, but no principal could be read; principal_changed: a re-authentication as another principal, not believed; ambiguous: an OAUTHBEARER message with a key twice, refused by Tollgate, never forwarded). Labels: mechanism, result = ok, failed, unreadable, principal_changed, ambiguous.",
        ["mechanism", "result"];
    pub(crate) admin_refused: IntCounterVec = "tollgate_admin_requests_refused_total",
        "Admin API requests refused, by reason (unauthorized: no or wrong bearer token; disabled: a mutation with no admin.token_file on a non-loopback listener, or a token file with too short a token; max_connections: a connection over admin.max_connections, closed at once).",
        ["reason"];
    pub(crate) client_bytes_received: IntCounter = "tollgate_client_received_bytes_total",
        "Bytes received from clients (request frames, size prefix included).";
    pub(crate) client_bytes_sent: IntCounter = "tollgate_client_sent_bytes_total",
        "Bytes sent to clients (response frames, size prefix included).";
    pub(crate) cut_through_responses: IntCounter = "tollgate_cut_through_responses_total",
        "Large responses forwarded to the client while still arriving from the broker.";
    pub(crate) frame_errors: IntCounterVec = "tollgate_frame_errors_total",
        "Bad frames; each closed its connection. Labels: reason = oversized, negative_size, too_short, bad_header.",
        ["reason"];
    requests: IntCounterVec = "tollgate_requests_total",
        "Requests from clients. Labels: api (Kafka API name, e.g. Produce).",
        ["api"];
    request_duration: HistogramVec = "tollgate_request_duration_seconds",
        "Request read → response ready (includes the broker's time; Fetch long-polls sit high).",
        ["api"],
        buckets LATENCY_BUCKETS;
    pub(crate) request_errors: IntCounterVec = "tollgate_request_errors_total",
        "Requests that failed; the client connection was closed. Labels: api, reason (closed, connect, protocol, rewrite_decode, policy_decode, node_id_out_of_range, bind, ...).",
        ["api", "reason"];
    pub(crate) upstream_connections_open: IntGauge = "tollgate_upstream_connections_open",
        "Connections from Tollgate to upstream brokers currently open.";
    pub(crate) upstream_connect_errors: IntCounterVec = "tollgate_upstream_connect_errors_total",
        "Failed connection attempts to upstream brokers, by broker address.",
        ["broker"];
    pub(crate) upstream_errors: IntCounterVec = "tollgate_upstream_errors_total",
        "Upstream connections that failed after connecting, by reason.",
        ["reason"];
    pub(crate) brokers_known: IntGauge = "tollgate_brokers",
        "Upstream brokers known from Metadata/FindCoordinator/DescribeCluster responses.";
    pub(crate) broker_listener_errors: IntCounterVec = "tollgate_broker_listener_errors_total",
        "Brokers that could not be given a listener. Labels: reason = node_id_out_of_range, bind.",
        ["reason"];
    pub(crate) address_rewrites: IntCounterVec = "tollgate_address_rewrites_total",
        "Responses whose broker addresses were rewritten, by API.",
        ["api"];
    pub(crate) api_version_caps: IntCounterVec = "tollgate_api_version_caps_total",
        "ApiVersions entries capped to what Tollgate can decode, by API.",
        ["api"];
    pub(crate) metadata_refresh_errors: IntCounter = "tollgate_metadata_refresh_errors_total",
        "Failed periodic Metadata refreshes by Tollgate itself.";
    pub(crate) ready: IntGauge = "tollgate_ready",
        "1 once the upstream cluster has answered Metadata, 0 before and during shutdown.";
    pub(crate) produced_bytes: IntCounterVec = "tollgate_produced_bytes_total",
        "Record-batch bytes produced and acknowledged, by principal, client id and topic.",
        ["principal", "client_id", "topic"];
    pub(crate) produced_records: IntCounterVec = "tollgate_produced_records_total",
        "Records produced and acknowledged (from batch headers), by principal, client id and topic.",
        ["principal", "client_id", "topic"];
    pub(crate) produce_errors: IntCounterVec = "tollgate_produce_errors_total",
        "Produce partitions the broker rejected. Labels: client_id, topic, error (Kafka error name, e.g. NOT_LEADER_OR_FOLLOWER).",
        ["client_id", "topic", "error"];
    pub(crate) fetched_bytes: IntCounterVec = "tollgate_fetched_bytes_total",
        "Record-batch bytes fetched: per-consumer read bandwidth is its rate(). Labels: group (or (none), (ambiguous)), principal, client_id, topic, temperature = hot/cold.",
        ["group", "principal", "client_id", "topic", "temperature"];
    pub(crate) fetched_records: IntCounterVec = "tollgate_fetched_records_total",
        "Records fetched (batch headers). Labels: group (or (none), (ambiguous)), principal, client_id, topic, temperature = hot/cold.",
        ["group", "principal", "client_id", "topic", "temperature"];
    pub(crate) label_overflow: IntCounterVec = "tollgate_attribution_label_overflow_total",
        "Observations over a cardinality cap, counted as other. Labels: label = client_id, group, topic.",
        ["label"];
    pub(crate) attribution_series_removed: IntCounter = "tollgate_attribution_series_removed_total",
        "Attribution series removed after being idle for `attribution.idle_series_seconds`.";
    pub(crate) attribution_errors: IntCounterVec = "tollgate_attribution_errors_total",
        "Requests or responses attribution could not decode (they are forwarded unchanged), by API.",
        ["api"];
    pub(crate) fetch_sessions_reset: IntCounter = "tollgate_fetch_sessions_reset_total",
        "Incremental fetches answered FETCH_SESSION_ID_NOT_FOUND because their session was not checked whole under the registry in force (after a reload, or a session from another connection); the client then sends a full fetch.";
    pub(crate) rejected_requests: IntCounterVec = "tollgate_rejected_requests_total",
        "Requests (or entries of one: topics, partitions, groups) refused by a policy, or that would have been in shadow mode: the consumer policy, the producer policy (topic_not_allowed and unregistered_producer on Produce, over_produce_budget), the admin-plane policy (admin_right, topic_name, topic_limit), offset protection (rewind, offset_delete), writes to Tollgate's own topics (internal_topic, always enforced), topic ids the instance cannot check yet (unknown_topic_id), and cluster administration without the client's own broker identity (cluster_admin). Labels: reason (unregistered_group, principal_mismatch, groupless_consumer, topic_not_allowed, poses_as_broker, share_group_unsupported, internal_topic, unknown_topic_id, cluster_admin, unauthenticated, unregistered_producer, over_produce_budget, admin_right, topic_name, topic_limit, rewind, offset_delete), api, mode (enforce, shadow).",
        ["reason", "api", "mode"];
    pub(crate) lag_records_committed: IntGaugeVec = "tollgate_consumer_lag_records",
        "Records between the partition head and the group's committed offset.",
        ["group", "topic", "partition"];
    pub(crate) lag_records_position: IntGaugeVec = "tollgate_consumer_fetch_lag_records",
        "Records between the partition head and the group's fetch position.",
        ["group", "topic", "partition"];
    pub(crate) lag_partitions_tracked: IntGauge = "tollgate_lag_partitions_tracked",
        "Group partitions tracked for lag (capped by lag.max_partitions).";
    pub(crate) lag_partitions_dropped: IntCounter = "tollgate_lag_partitions_dropped_total",
        "Observations of new group partitions not tracked because lag.max_partitions was reached.";
    pub(crate) lag_seconds: GaugeVec = "tollgate_consumer_lag_seconds",
        "How long the oldest record the group has not fetched has been waiting.",
        ["group", "topic", "partition"];
    pub(crate) partition_problems: IntGaugeVec = "tollgate_consumer_partition_problem",
        "1 while the detection holds; removed when it clears. Labels: group, topic, partition, problem (stopped, wedged, commit_stall, rewind, over_slo).",
        ["group", "topic", "partition", "problem"];
    pub(crate) group_status: IntGaugeVec = "tollgate_consumer_group_status",
        "1 for the current status, 0 for the others. Labels: group, status (OK, WARN, ERR, STOPPED, STALLED, WEDGED, REWIND).",
        ["group", "status"];
    pub(crate) group_read_rate: GaugeVec = "tollgate_consumer_group_read_bytes_per_second",
        "A group's read rate over the last evaluation interval.",
        ["group"];
    pub(crate) tiered_fetched_bytes: IntCounterVec = "tollgate_tiered_fetched_bytes_total",
        "Record bytes of mirrored topics fetched, by the cluster that served them. Labels: group, topic, cluster = primary/secondary.",
        ["group", "topic", "cluster"];
    pub(crate) tiered_fetched_records: IntCounterVec = "tollgate_tiered_fetched_records_total",
        "Records fetched from mirrored topics, by group, topic and the cluster that served them.",
        ["group", "topic", "cluster"];
    pub(crate) tiered_decisions: IntCounterVec = "tollgate_tiered_routing_decisions_total",
        "Partition fetches of mirrored topics by the cluster chosen, before fallbacks. Labels: cluster, reason (lag, probation, near_head, head_unknown).",
        ["cluster", "reason"];
    pub(crate) tiered_fallbacks: IntCounterVec = "tollgate_tiered_fallbacks_total",
        "Partition fetches routed to the secondary but served by the primary. Labels: reason (no_sync, inexact, secondary_behind, secondary_unavailable, secondary_error).",
        ["reason"];
    pub(crate) tiered_mirror_lag: IntGaugeVec = "tollgate_tiered_mirror_lag_records",
        "Records on the primary not yet on the secondary (at most 10,000 partitions of tiered.topics are exported).",
        ["topic", "partition"];
    pub(crate) tiered_offset_syncs: IntGauge = "tollgate_tiered_offset_syncs",
        "Offset syncs loaded from the offset-syncs topic.";
    pub(crate) tiered_on_secondary: IntGauge = "tollgate_tiered_partitions_on_secondary",
        "Consumer partitions (group or client, topic, partition) currently routed to the secondary.";
    pub(crate) tiered_read_ahead: IntCounterVec = "tollgate_tiered_read_ahead_total",
        "Secondary Fetches sent ahead of a client's next tiered Fetch: used by it, discarded (it asked for something else, or the answer was over 5 s old), failed (the secondary did not answer; the client's Fetch went as usual), full (not sent: tiered.read_ahead_bytes reached). Labels: outcome (started, used, discarded, failed, full).",
        ["outcome"];
    pub(crate) tiered_split_requests: IntCounter = "tollgate_tiered_split_requests_total",
        "Client Fetch requests answered partly by the secondary and partly by the primary.";
    pub(crate) tiered_secondary_errors: IntCounterVec = "tollgate_tiered_secondary_errors_total",
        "Failed requests to the secondary. Labels: reason (metadata, fetch, timeout, head).",
        ["reason"];
    pub(crate) group_tier: IntGaugeVec = "tollgate_consumer_group_tier",
        "1 for a registered group's tier. Labels: group, tier (primary, probation, promoted).",
        ["group", "tier"];
    pub(crate) consumer_throttle_seconds: CounterVec = "tollgate_consumer_throttle_seconds_total",
        "Time this instance held the group's fetches to keep it at its read budget (on_over_budget = \"throttle\").",
        ["group"];
    pub(crate) consumer_budget_enforced: IntGaugeVec = "tollgate_consumer_budget_enforced",
        "1 while a group is held at its read budget on this instance, else 0.",
        ["group"];
    pub(crate) consumer_demoted: IntGaugeVec = "tollgate_consumer_demoted",
        "1 while the group, over its read budget with on_over_budget = \"demote\", is served from the secondary cluster.",
        ["group"];
    pub(crate) producer_throttle_seconds: CounterVec = "tollgate_producer_throttle_seconds_total",
        "Time this instance held the producer's requests to keep it at its produce budget (on_over_budget = \"throttle\"). Labels: producer (the registry entry).",
        ["producer"];
    pub(crate) producer_over_budget: IntGaugeVec = "tollgate_producer_over_budget",
        "1 while a registered producer writes above its produce budget, tier-wide (whatever on_over_budget says), else 0. Labels: producer (the registry entry).",
        ["producer"];
    pub(crate) probation_demotions: IntCounter = "tollgate_probation_demotions_total",
        "Promoted groups demoted back to probation after lag.demote_after_seconds over their lag SLO.";
    pub(crate) promotions: IntCounterVec = "tollgate_probation_promotions_total",
        "Probation groups promoted. Labels: how = auto, api.",
        ["how"];
    pub(crate) audit_events: IntCounterVec = "tollgate_audit_events_total",
        "Audit events queued for the audit topic and file. Labels: kind (authenticated, authentication_failed, group_joined, group_left, refusal, admin_change, registry_reload, window_opened, usage, dropped).",
        ["kind"];
    pub(crate) audit_dropped: IntCounterVec = "tollgate_audit_events_dropped_total",
        "Audit events not written as events of their own. Labels: reason = dedup (folded into an earlier identical event's repeats), rate (over audit.max_events_per_second; counted in a dropped event), queue (the writer's queue was full), write (the cluster did not acknowledge it), file (the file write failed), closed.",
        ["reason"];
    pub(crate) ledger_overflow: IntCounter = "tollgate_audit_usage_rows_overflow_total",
        "Usage-window rows over the cap of one window (invented group or topic names), folded into one row whose subject and topic are `other`.";
    pub(crate) state_store_up: IntGauge = "tollgate_state_store_up",
        "1 when durable state is kept in the state topic, 0 when only in memory.";
    pub(crate) tie_waits: HistogramVec = "tollgate_tie_wait_seconds",
        "Time reads tied to no group waited for the tier view: tied (another instance or the coordinator placed it) or timed_out.",
        ["outcome"],
        buckets &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
    pub(crate) coordinator_requests: IntCounterVec = "tollgate_coordinator_requests_total",
        "Requests Tollgate sent to group coordinators for the cluster view (ListGroups, FindCoordinator, DescribeGroups, OffsetFetch), ok or error: the load Tollgate adds to the coordinators.",
        ["api", "result"];
    pub(crate) tier_published: IntCounterVec = "tollgate_tier_records_published_total",
        "Wire observations this instance shared through the state topic, by kind (member, offset_user, fetch, instance) and op (put, delete).",
        ["kind", "op"];
    pub(crate) groups_evicted: IntCounterVec = "tollgate_groups_evicted_total",
        "Entries evicted from the group view over tier.max_groups, tier.max_members_per_group, tier.max_offset_users_per_group (invented group ids, member ids or client ids). Labels: what = group, member, offset_user.",
        ["what"];
    pub(crate) tier_duplicate_instance_id: IntGauge = "tollgate_tier_duplicate_instance_id",
        "1 while another live process publishes this instance's tier.instance_id (the two would ignore each other's records), else 0.";
    pub(crate) tier_instances: IntGauge = "tollgate_tier_instances",
        "Tollgate instances (this one included) heard from in the state topic within the last minute.";
    pub(crate) registry_reloads: IntCounterVec = "tollgate_registry_reloads_total",
        "Registry reloads, by result (ok, error); a failed reload keeps the registry in force.",
        ["result"];
    pub(crate) registry_entries: IntGaugeVec = "tollgate_registry_entries",
        "Consumer entries in the registry in force. Labels: tier = primary, probation.",
        ["tier"];
    pub(crate) registry_loaded: IntGauge = "tollgate_registry_loaded_timestamp_seconds",
        "When the registry in force was loaded (Unix seconds); 0 when governance is off.";
}

impl Metrics {
    /// Handles for one API key, created on first use.
    pub(crate) fn api(&self, api_key: i16) -> &ApiMetrics {
        let idx = usize::try_from(api_key)
            .ok()
            .filter(|&i| {
                i < self.per_api.len() && crate::wire::protocol::api_name(api_key) != "Unknown"
            })
            .unwrap_or(self.per_api.len() - 1);
        self.per_api[idx].get_or_init(|| {
            let name = crate::wire::protocol::api_name(api_key);
            ApiMetrics {
                requests: self.requests.with_label_values(&[name]),
                duration: self.request_duration.with_label_values(&[name]),
            }
        })
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_reference_is_generated_from_the_table() {
        let m = Metrics::new();
        assert!(m.names.len() > 15);
        let table: Vec<&str> = TABLE.iter().map(|r| r.name).collect();
        assert_eq!(
            m.names, table,
            "every registered metric is a row of the table"
        );
        crate::check_generated_doc("docs/metrics.md", &reference_markdown());
    }

    #[test]
    fn alert_rules_only_use_metrics_that_exist() {
        let rules = include_str!("../deploy/prometheus/tollgate-rules.yaml");
        let names = Metrics::new().names;
        let mut checked = 0;
        for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("tollgate_") {
                assert!(
                    names.iter().any(|n| n == word),
                    "alert rule uses unknown metric {word}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 5);
        assert_eq!(
            rules.matches("- alert:").count(),
            rules.matches("runbook:").count(),
            "every alert has a runbook"
        );
    }

    #[test]
    fn grafana_dashboard_is_valid_and_uses_real_metrics() {
        let text = include_str!("../deploy/grafana/tollgate.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("dashboard is JSON");
        let names = Metrics::new().names;
        let panels = dash["panels"].as_array().expect("panels");
        assert!(panels.len() >= 8);
        let mut ids = std::collections::HashSet::new();
        let mut used = 0;
        for p in panels {
            assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
            assert!(p["gridPos"]["w"].as_i64().unwrap() > 0);
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("tollgate_") {
                        let base = word.trim_end_matches("_bucket");
                        assert!(
                            names.iter().any(|n| n == word || n == base),
                            "dashboard uses unknown metric {word}"
                        );
                        used += 1;
                    }
                }
            }
        }
        assert!(used >= 10);
        // The panels the issue asks for: read bandwidth, lag in seconds, rejections.
        for m in [
            "tollgate_fetched_bytes_total",
            "tollgate_consumer_lag_seconds",
            "tollgate_rejected_requests_total",
        ] {
            assert!(text.contains(m), "dashboard shows {m}");
        }
    }

    #[test]
    fn per_api_series_are_lazy_and_named() {
        let m = Metrics::new();
        assert!(!m.render().contains("tollgate_requests_total{"));
        m.api(1).requests.inc();
        m.api(999).requests.inc();
        m.api(-5).requests.inc();
        let text = m.render();
        assert!(
            text.contains("tollgate_requests_total{api=\"Fetch\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_requests_total{api=\"Unknown\"} 2"),
            "{text}"
        );
        assert!(text.contains("tollgate_build_info{version="));
    }
}
