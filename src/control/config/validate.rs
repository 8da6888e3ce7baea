//! Validation: every key checked after loading, each error naming the key to fix.

use super::{parse_host_port, parse_socket_addr, Config, TopicNaming};
use crate::security::SecurityConfigError;

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

pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Config {
    /// `[proxy]` and the listeners.
    pub(super) fn validate_proxy(&self) -> Result<(), ConfigError> {
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
        if self.proxy.max_buffered_bytes_per_connection < 1024 * 1024 {
            return Err(invalid(
                "proxy.max_buffered_bytes_per_connection",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.admin.max_connections == 0 {
            return Err(invalid("admin.max_connections", "must be at least 1"));
        }
        Ok(())
    }

    /// `[upstream]`.
    pub(super) fn validate_upstream(&self) -> Result<(), ConfigError> {
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
    pub(super) fn validate_observation(&self) -> Result<(), ConfigError> {
        self.validate_audit()?;
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
    pub(super) fn validate_tiered(&self) -> Result<(), ConfigError> {
        let t = &self.tiered;
        if t.topic_naming == TopicNaming::Prefix && t.source_alias.trim().is_empty() {
            return Err(invalid(
                "tiered.source_alias",
                "must not be empty with topic_naming = \"prefix\"",
            ));
        }
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
    pub(super) fn validate_security(&self) -> Result<(), ConfigError> {
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

    /// `[audit]` and `[showback]`.
    fn validate_audit(&self) -> Result<(), ConfigError> {
        let a = &self.audit;
        if a.window_seconds == 0 || a.window_seconds > 3600 {
            return Err(invalid("audit.window_seconds", "must be 1 to 3600"));
        }
        if a.max_events_per_second == 0 {
            return Err(invalid("audit.max_events_per_second", "must be at least 1"));
        }
        if !a.topic.is_empty() && a.topic == self.state.topic {
            return Err(invalid("audit.topic", "must differ from state.topic"));
        }
        let s = &self.showback;
        for (key, rate) in [
            ("showback.produced_per_gib", s.produced_per_gib),
            ("showback.read_hot_per_gib", s.read_hot_per_gib),
            ("showback.read_cold_per_gib", s.read_cold_per_gib),
            ("showback.secondary_per_hour", s.secondary_per_hour),
        ] {
            if !(rate.is_finite() && rate >= 0.0) {
                return Err(invalid(key, "must be a number, zero or more"));
            }
        }
        Ok(())
    }
}
