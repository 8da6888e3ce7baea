//! Every Prometheus metric Tollgate exports, in one explicit [`Registry`].
//!
//! Names use base units and the conventional suffixes (`_total`, `_bytes_total`,
//! `_seconds`). Labels are low-cardinality: `api` is bounded by the Kafka API keys,
//! `reason` by the error enums, `broker` by the brokers of the cluster. The README's metrics
//! reference lists each metric; keep the two in step.
//!
//! Per-API series are created lazily (on first use) so `/metrics` only shows APIs that were
//! actually used, and cached in a table indexed by API key so the hot path does no label hashing.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Holds a gauge one higher for as long as it lives: the decrement runs on every exit path,
/// including a panic that unwinds the task, so an "open" gauge cannot drift.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn inc(gauge: IntGauge) -> GaugeGuard {
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
pub struct ApiMetrics {
    pub requests: IntCounter,
    pub duration: Histogram,
}

/// All metrics.
pub struct Metrics {
    pub registry: Registry,
    pub connections_open: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_refused: IntCounterVec,
    pub client_timeouts: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub tls_handshake_errors: IntCounterVec,
    pub sasl_authentications: IntCounterVec,
    pub admin_refused: IntCounterVec,
    pub client_bytes_received: IntCounter,
    pub client_bytes_sent: IntCounter,
    pub cut_through_responses: IntCounter,
    pub frame_errors: IntCounterVec,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    pub request_errors: IntCounterVec,
    pub upstream_connections_open: IntGauge,
    pub upstream_connect_errors: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub brokers_known: IntGauge,
    pub broker_listener_errors: IntCounterVec,
    pub address_rewrites: IntCounterVec,
    pub api_version_caps: IntCounterVec,
    pub metadata_refresh_errors: IntCounter,
    pub ready: IntGauge,
    pub produced_bytes: IntCounterVec,
    pub produced_records: IntCounterVec,
    pub produce_errors: IntCounterVec,
    pub fetched_bytes: IntCounterVec,
    pub fetched_records: IntCounterVec,
    pub label_overflow: IntCounterVec,
    pub attribution_series_removed: IntCounter,
    pub attribution_errors: IntCounterVec,
    pub rejected_requests: IntCounterVec,
    pub fetch_sessions_reset: IntCounter,
    pub lag_records_committed: prometheus::IntGaugeVec,
    pub lag_records_position: prometheus::IntGaugeVec,
    pub lag_seconds: prometheus::GaugeVec,
    pub lag_partitions_tracked: IntGauge,
    pub lag_partitions_dropped: IntCounter,
    pub partition_problems: prometheus::IntGaugeVec,
    pub group_status: prometheus::IntGaugeVec,
    pub group_read_rate: prometheus::GaugeVec,
    pub group_tier: prometheus::IntGaugeVec,
    pub promotions: IntCounterVec,
    pub probation_demotions: IntCounter,
    pub consumer_throttle_seconds: prometheus::CounterVec,
    pub consumer_budget_enforced: prometheus::IntGaugeVec,
    pub consumer_demoted: prometheus::IntGaugeVec,
    pub state_store_up: IntGauge,
    pub tie_waits: HistogramVec,
    pub coordinator_requests: IntCounterVec,
    pub tier_published: IntCounterVec,
    pub tier_instances: IntGauge,
    pub registry_reloads: IntCounterVec,
    pub registry_entries: prometheus::IntGaugeVec,
    pub registry_loaded: IntGauge,
    pub tiered_fetched_bytes: IntCounterVec,
    pub tiered_fetched_records: IntCounterVec,
    pub tiered_decisions: IntCounterVec,
    pub tiered_fallbacks: IntCounterVec,
    pub tiered_mirror_lag: prometheus::IntGaugeVec,
    pub tiered_offset_syncs: IntGauge,
    pub tiered_on_secondary: IntGauge,
    pub tiered_secondary_errors: IntCounterVec,
    pub tiered_split_requests: IntCounter,
    per_api: Vec<OnceLock<ApiMetrics>>,
    /// Every metric name registered (for documentation checks).
    pub names: Vec<String>,
}

/// Latency buckets, in seconds: 50 µs up to 30 s (Fetch long-polls sit at the top).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let mut names: Vec<String> = vec!["tollgate_build_info".into()];
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                for d in prometheus::core::Collector::desc(&m) {
                    names.push(d.fq_name.clone());
                }
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registers");
                m
            }};
        }
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");

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

        let per_api = (0..128).map(|_| OnceLock::new()).collect();
        Metrics {
            connections_open: reg!(gauge(
                "tollgate_client_connections_open",
                "Client connections currently open."
            )),
            connections_accepted: reg!(counter(
                "tollgate_client_connections_accepted_total",
                "Client connections accepted."
            )),
            connections_refused: reg!(counter_vec(
                "tollgate_client_connections_refused_total",
                "Client connections closed before serving, by reason.",
                &["reason"]
            )),
            client_timeouts: reg!(counter_vec(
                "tollgate_client_timeouts_total",
                "Client connections closed for saying or reading nothing: reason is first_request_timeout (no whole request after accept), idle_timeout (nothing in flight, no request) or write_stalled (a response write did not complete within proxy.idle_timeout_ms: the client stopped reading).",
                &["reason"]
            )),
            tls_reloads: reg!(counter_vec(
                "tollgate_tls_reloads_total",
                "TLS certificate reloads after the PEM files changed, by listener (client, admin) and result (ok, or error: the old certificate stays).",
                &["listener", "result"]
            )),
            tls_handshake_errors: reg!(counter_vec(
                "tollgate_tls_handshake_errors_total",
                "TLS handshakes with clients that failed or timed out (untrusted or missing client certificate, plaintext to a TLS port), by listener (client, admin).",
                &["listener"]
            )),
            sasl_authentications: reg!(counter_vec(
                "tollgate_sasl_authentications_total",
                "Client SASL exchanges the broker finished, by mechanism and result (ok: the principal is known; failed: the broker refused; unreadable: accepted, but no principal could be read).",
                &["mechanism", "result"]
            )),
            admin_refused: reg!(counter_vec(
                "tollgate_admin_requests_refused_total",
                "Admin API requests refused, by reason (unauthorized: no or wrong bearer token; disabled: a mutation with no admin.token_file on a non-loopback listener).",
                &["reason"]
            )),
            client_bytes_received: reg!(counter(
                "tollgate_client_received_bytes_total",
                "Bytes received from clients (request frames, size prefix included)."
            )),
            client_bytes_sent: reg!(counter(
                "tollgate_client_sent_bytes_total",
                "Bytes sent to clients (response frames, size prefix included)."
            )),
            cut_through_responses: reg!(counter(
                "tollgate_cut_through_responses_total",
                "Large responses forwarded to the client while still arriving from the broker."
            )),
            frame_errors: reg!(counter_vec(
                "tollgate_frame_errors_total",
                "Malformed or oversized frames from clients; each closed its connection.",
                &["reason"]
            )),
            requests: reg!(counter_vec(
                "tollgate_requests_total",
                "Requests received from clients, by Kafka API.",
                &["api"]
            )),
            request_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "tollgate_request_duration_seconds",
                    "Time from reading a request to having its response, by Kafka API."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["api"]
            )
            .expect("valid metric")),
            request_errors: reg!(counter_vec(
                "tollgate_request_errors_total",
                "Requests that got no response from the proxy (the connection was closed), by API and reason.",
                &["api", "reason"]
            )),
            upstream_connections_open: reg!(gauge(
                "tollgate_upstream_connections_open",
                "Connections from Tollgate to upstream brokers currently open."
            )),
            upstream_connect_errors: reg!(counter_vec(
                "tollgate_upstream_connect_errors_total",
                "Failed connection attempts to upstream brokers, by broker address.",
                &["broker"]
            )),
            upstream_errors: reg!(counter_vec(
                "tollgate_upstream_errors_total",
                "Upstream connections that failed after connecting, by reason.",
                &["reason"]
            )),
            brokers_known: reg!(gauge(
                "tollgate_brokers",
                "Upstream brokers known from Metadata/FindCoordinator/DescribeCluster responses."
            )),
            broker_listener_errors: reg!(counter_vec(
                "tollgate_broker_listener_errors_total",
                "Failures to open a per-broker listener, by reason.",
                &["reason"]
            )),
            address_rewrites: reg!(counter_vec(
                "tollgate_address_rewrites_total",
                "Responses whose broker addresses were rewritten, by API.",
                &["api"]
            )),
            api_version_caps: reg!(counter_vec(
                "tollgate_api_version_caps_total",
                "ApiVersions entries capped to what Tollgate can decode, by API.",
                &["api"]
            )),
            metadata_refresh_errors: reg!(counter(
                "tollgate_metadata_refresh_errors_total",
                "Failed periodic Metadata refreshes by Tollgate itself."
            )),
            ready: reg!(gauge(
                "tollgate_ready",
                "1 once the upstream cluster has answered Metadata, 0 before and during shutdown."
            )),
            produced_bytes: reg!(counter_vec(
                "tollgate_produced_bytes_total",
                "Record-batch bytes produced and acknowledged, by principal, client id and topic.",
                &["principal", "client_id", "topic"]
            )),
            produced_records: reg!(counter_vec(
                "tollgate_produced_records_total",
                "Records produced and acknowledged (from batch headers), by principal, client id and topic.",
                &["principal", "client_id", "topic"]
            )),
            produce_errors: reg!(counter_vec(
                "tollgate_produce_errors_total",
                "Produce partitions the broker answered with an error, by client id, topic and error.",
                &["client_id", "topic", "error"]
            )),
            fetched_bytes: reg!(counter_vec(
                "tollgate_fetched_bytes_total",
                "Record-batch bytes fetched, by group, principal, client id, topic and hot/cold.",
                &["group", "principal", "client_id", "topic", "temperature"]
            )),
            fetched_records: reg!(counter_vec(
                "tollgate_fetched_records_total",
                "Records fetched (from batch headers), by group, principal, client id, topic and hot/cold.",
                &["group", "principal", "client_id", "topic", "temperature"]
            )),
            label_overflow: reg!(counter_vec(
                "tollgate_attribution_label_overflow_total",
                "Observations whose label value was over its cardinality cap and counted as `other`, by label.",
                &["label"]
            )),
            attribution_series_removed: reg!(counter(
                "tollgate_attribution_series_removed_total",
                "Attribution series removed after being idle for `attribution.idle_series_seconds`."
            )),
            attribution_errors: reg!(counter_vec(
                "tollgate_attribution_errors_total",
                "Requests or responses attribution could not decode (they are forwarded unchanged), by API.",
                &["api"]
            )),
            fetch_sessions_reset: reg!(counter(
                "tollgate_fetch_sessions_reset_total",
                "Incremental fetches answered FETCH_SESSION_ID_NOT_FOUND because their session was not checked whole under the registry in force (after a reload, or a session from another connection); the client then sends a full fetch."
            )),
            rejected_requests: reg!(counter_vec(
                "tollgate_rejected_requests_total",
                "Requests refused by the consumer policy (mode=enforce) or that would have been (mode=shadow), by reason and API.",
                &["reason", "api", "mode"]
            )),
            lag_records_committed: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_consumer_lag_records",
                    "Records between the partition head and the group's committed offset."
                ),
                &["group", "topic", "partition"]
            )
            .expect("valid metric")),
            lag_records_position: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_consumer_fetch_lag_records",
                    "Records between the partition head and the group's fetch position."
                ),
                &["group", "topic", "partition"]
            )
            .expect("valid metric")),
            lag_partitions_tracked: reg!(gauge(
                "tollgate_lag_partitions_tracked",
                "Group partitions tracked for lag (capped by lag.max_partitions)."
            )),
            lag_partitions_dropped: reg!(counter(
                "tollgate_lag_partitions_dropped_total",
                "Observations of new group partitions not tracked because lag.max_partitions was reached."
            )),
            lag_seconds: reg!(prometheus::GaugeVec::new(
                Opts::new(
                    "tollgate_consumer_lag_seconds",
                    "How long the oldest record the group has not fetched has been waiting."
                ),
                &["group", "topic", "partition"]
            )
            .expect("valid metric")),
            partition_problems: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_consumer_partition_problem",
                    "1 while a detection holds for a group's partition (stopped, commit_stall, wedged, rewind, over_slo)."
                ),
                &["group", "topic", "partition", "problem"]
            )
            .expect("valid metric")),
            group_status: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_consumer_group_status",
                    "1 for the group's current status (OK, WARN, ERR, STOPPED, STALLED, WEDGED, REWIND), 0 for the others."
                ),
                &["group", "status"]
            )
            .expect("valid metric")),
            group_read_rate: reg!(prometheus::GaugeVec::new(
                Opts::new(
                    "tollgate_consumer_group_read_bytes_per_second",
                    "A group's read rate over the last evaluation interval."
                ),
                &["group"]
            )
            .expect("valid metric")),
            tiered_fetched_bytes: reg!(counter_vec(
                "tollgate_tiered_fetched_bytes_total",
                "Record bytes fetched from mirrored topics, by group, topic and the cluster that served them (primary, secondary).",
                &["group", "topic", "cluster"]
            )),
            tiered_fetched_records: reg!(counter_vec(
                "tollgate_tiered_fetched_records_total",
                "Records fetched from mirrored topics, by group, topic and the cluster that served them.",
                &["group", "topic", "cluster"]
            )),
            tiered_decisions: reg!(counter_vec(
                "tollgate_tiered_routing_decisions_total",
                "Partition fetches of mirrored topics by the cluster chosen and why (lag, probation, near_head, head_unknown), before fallbacks.",
                &["cluster", "reason"]
            )),
            tiered_fallbacks: reg!(counter_vec(
                "tollgate_tiered_fallbacks_total",
                "Partition fetches routed to the secondary but served by the primary, by reason (no_sync, inexact, secondary_behind, secondary_unavailable, secondary_error).",
                &["reason"]
            )),
            tiered_mirror_lag: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_tiered_mirror_lag_records",
                    "Records of a mirrored partition on the primary not yet on the secondary."
                ),
                &["topic", "partition"]
            )
            .expect("valid metric")),
            tiered_offset_syncs: reg!(gauge(
                "tollgate_tiered_offset_syncs",
                "Offset syncs loaded from the offset-syncs topic."
            )),
            tiered_on_secondary: reg!(gauge(
                "tollgate_tiered_partitions_on_secondary",
                "Consumer partitions (group or client, topic, partition) currently routed to the secondary."
            )),
            tiered_split_requests: reg!(counter(
                "tollgate_tiered_split_requests_total",
                "Client Fetch requests answered partly by the secondary and partly by the primary."
            )),
            tiered_secondary_errors: reg!(counter_vec(
                "tollgate_tiered_secondary_errors_total",
                "Failed requests to the secondary cluster, by reason.",
                &["reason"]
            )),
            group_tier: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_consumer_group_tier",
                    "1 for a registered group's tier (primary, probation, promoted), 0 for the others."
                ),
                &["group", "tier"]
            )
            .expect("valid metric")),
            consumer_throttle_seconds: reg!(prometheus::CounterVec::new(
                Opts::new(
                    "tollgate_consumer_throttle_seconds_total",
                    "Time this instance held a group's fetches to keep it at its read budget (on_over_budget = throttle)."
                ),
                &["group"]
            )
            .expect("valid metric")),
            consumer_budget_enforced: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_consumer_budget_enforced",
                    "1 while a group is held at its read budget on this instance, else 0."
                ),
                &["group"]
            )
            .expect("valid metric")),
            consumer_demoted: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_consumer_demoted",
                    "1 while a group over its read budget is served from the secondary cluster (on_over_budget = demote), else 0."
                ),
                &["group"]
            )
            .expect("valid metric")),
            probation_demotions: reg!(counter(
                "tollgate_probation_demotions_total",
                "Promoted groups demoted back to probation after lag.demote_after_seconds over their lag SLO."
            )),
            promotions: reg!(counter_vec(
                "tollgate_probation_promotions_total",
                "Probation groups promoted, by how (auto, api).",
                &["how"]
            )),
            state_store_up: reg!(gauge(
                "tollgate_state_store_up",
                "1 when durable state is kept in the state topic, 0 when only in memory."
            )),
            tie_waits: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "tollgate_tie_wait_seconds",
                    "Time reads tied to no group waited for the tier view, by outcome (tied, timed_out)."
                )
                .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["outcome"]
            )
            .expect("valid metric")),
            coordinator_requests: reg!(counter_vec(
                "tollgate_coordinator_requests_total",
                "Requests Tollgate itself sent to group coordinators for the cluster view, by API and result (ok, error).",
                &["api", "result"]
            )),
            tier_published: reg!(counter_vec(
                "tollgate_tier_records_published_total",
                "Wire observations this instance shared through the state topic, by kind (member, offset_user, fetch, instance) and op (put, delete).",
                &["kind", "op"]
            )),
            tier_instances: reg!(gauge(
                "tollgate_tier_instances",
                "Tollgate instances (this one included) heard from in the state topic within the last minute."
            )),
            registry_reloads: reg!(counter_vec(
                "tollgate_registry_reloads_total",
                "Registry reloads, by result (ok, error); a failed reload keeps the registry in force.",
                &["result"]
            )),
            registry_entries: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_registry_entries",
                    "Consumer entries in the registry in force, by tier (primary, probation)."
                ),
                &["tier"]
            )
            .expect("valid metric")),
            registry_loaded: reg!(gauge(
                "tollgate_registry_loaded_timestamp_seconds",
                "When the registry in force was loaded (Unix seconds); 0 when governance is off."
            )),
            per_api,
            registry,
            names,
        }
    }

    /// Handles for one API key, created on first use.
    pub fn api(&self, api_key: i16) -> &ApiMetrics {
        let idx = usize::try_from(api_key)
            .ok()
            .filter(|&i| i < self.per_api.len() && crate::protocol::api_name(api_key) != "Unknown")
            .unwrap_or(self.per_api.len() - 1);
        self.per_api[idx].get_or_init(|| {
            let name = crate::protocol::api_name(api_key);
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
    fn every_metric_is_documented_in_the_readme() {
        let readme = include_str!("../README.md");
        let m = Metrics::new();
        assert!(m.names.len() > 15);
        for name in &m.names {
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} is missing from README's metrics reference"
            );
        }
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
