//! Configuration: one TOML file, serde defaults for every key, unknown keys rejected,
//! environment overrides, and validation that names the bad key.
//!
//! Precedence, lowest to highest: built-in defaults, the file, `TOLLGATE_<SECTION>__<KEY>`
//! environment variables (e.g. `TOLLGATE_UPSTREAM__BOOTSTRAP_SERVERS=a:9092,b:9092`), then
//! command-line flags. An environment value is read as a TOML value when it parses as one
//! (`100`, `true`, `["a:1","b:2"]`), otherwise as a string; a comma-separated string is
//! accepted where a list is expected. Every key is documented in `config/tollgate.toml` and
//! `docs/configuration.md` (generated from `reference.rs`).

mod choices;
pub mod reference;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

pub use choices::{LagUnit, LogFormat, Mirror, SyncsCluster, TopicNaming};
pub use sections::*;
use validate::invalid;
pub use validate::ConfigError;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// The audit trail: events and usage windows in a topic of Tollgate's own.
    pub audit: AuditConfig,
    /// Showback rates (`GET /v1/showback`).
    pub showback: ShowbackConfig,
    /// Tiered reads: the secondary cluster, the mirror, and routing of cold reads to it.
    pub tiered: TieredConfig,
    /// Running as a tier: the cluster view and what instances share.
    pub tier: TierConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Prefix of environment overrides.
pub(crate) const ENV_PREFIX: &str = "TOLLGATE_";

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
        choices::check(&value)?;
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
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        self.validate_security()?;
        Ok(self)
    }
}

impl Config {
    /// Whether clients must finish a SASL exchange before anything else
    /// (`proxy.sasl.required`, by default whether Tollgate itself logs in upstream).
    pub(crate) fn sasl_required(&self) -> bool {
        self.proxy
            .sasl
            .required
            .unwrap_or(self.upstream.sasl.is_some())
    }

    /// The rdkafka settings (TLS, SASL) of Tollgate's own clients of the upstream cluster: the
    /// state store, the audit writer, showback's reader, the offset-syncs follower.
    pub(crate) fn upstream_rdkafka_props(
        &self,
    ) -> Result<Vec<(String, String)>, crate::security::login::LoginError> {
        crate::security::rdkafka_props(&self.upstream.tls, self.upstream.sasl.as_ref())
    }

    /// Tollgate's own topics, which clients may not write or administer through it: the state
    /// topic and, with tiered reads on, the offset-syncs topic.
    pub(crate) fn own_topics(&self) -> Vec<String> {
        let mut topics = vec![self.state.topic.clone(), self.audit.topic.clone()];
        if self.tiered.enabled {
            topics.push(self.tiered.offset_syncs_topic.clone());
        }
        topics.retain(|t| !t.is_empty());
        topics
    }

    /// Host that clients are told to connect to for broker listeners.
    pub(crate) fn advertised_host(&self) -> String {
        if let Some(h) = &self.proxy.advertised_host {
            return h.clone();
        }
        match parse_socket_addr(&self.proxy.listen) {
            Ok(a) if !a.ip().is_unspecified() => a.ip().to_string(),
            _ => "127.0.0.1".into(),
        }
    }

    /// IP the broker listeners bind to.
    pub(crate) fn broker_bind_host(&self) -> String {
        if let Some(h) = &self.proxy.broker_bind_host {
            return h.clone();
        }
        match parse_socket_addr(&self.proxy.listen) {
            Ok(a) => a.ip().to_string(),
            _ => "0.0.0.0".into(),
        }
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.proxy.shutdown_grace_ms)
    }
}

/// Parse `ip:port`.
pub(crate) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an ip:port address (e.g. 0.0.0.0:9092)"))
}

/// Parse `host:port` (host may be a name).
pub(crate) fn parse_host_port(s: &str) -> Result<(String, u16), String> {
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
