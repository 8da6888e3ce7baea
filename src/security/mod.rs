//! Security: TLS on both sides, who is on each connection, and Tollgate's own logins.
//!
//! - [`tls`]: serving TLS to clients from PEM files (optionally mutual), reloaded when the
//!   files change; connecting to brokers over TLS; the principal of a client certificate.
//! - [`sasl`]: reading the principal out of a client's SASL exchange with the broker
//!   (PLAIN, SCRAM-SHA-256/512, OAUTHBEARER), trusted only once the broker says yes.
//! - [`login`]: Tollgate's own SASL login (PLAIN, SCRAM) for its own broker connections.
//!
//! The configuration types live here; [`crate::control::config::Config`] embeds them:
//!
//! ```toml
//! [proxy.tls]                       # TLS on every client listener (bootstrap and brokers)
//! cert_file = "/etc/tollgate/tls/tls.crt"
//! key_file = "/etc/tollgate/tls/tls.key"
//! client_ca_file = "/etc/tollgate/tls/ca.crt"   # optional: mutual TLS
//! principal_mapping_rules = ["RULE:^CN=([^,]+).*$/$1/", "DEFAULT"]
//!
//! [proxy.sasl]
//! required = true                   # default: true when [upstream.sasl] is set
//! oauthbearer_principal_claim = "sub"
//!
//! [upstream.tls]                    # Tollgate → brokers
//! enabled = true
//! ca_file = "/etc/tollgate/broker-ca.crt"       # default: the system's roots
//!
//! [upstream.sasl]                   # Tollgate's own connections (control, state, mirror)
//! mechanism = "SCRAM-SHA-512"
//! username = "tollgate"
//! password_file = "/etc/tollgate/sasl-password"
//! ```

pub(crate) mod login;
pub mod sasl;
pub mod tls;

use serde::{Deserialize, Serialize};

/// TLS served to clients (`proxy.tls`) or on the admin listener (`admin.tls`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM file with the CAs that sign client certificates. Set: mutual TLS; a client
    /// without a certificate signed by one of them is refused in the handshake.
    pub client_ca_file: Option<String>,
    /// Kafka's `ssl.principal.mapping.rules`, one rule per entry: `RULE:pattern/replacement/`
    /// (optionally `/L` or `/U`) or `DEFAULT`, applied to the certificate subject in RFC 2253
    /// form (`CN=billing,O=Example`); the first matching rule wins and the principal is
    /// `User:<result>`. No rule matches: the connection stays unauthenticated.
    pub principal_mapping_rules: Vec<String>,
    /// How often the PEM files are checked for changes, in milliseconds. New connections use
    /// the new certificate; open ones keep theirs.
    pub reload_interval_ms: u64,
}

impl Default for ServerTlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: None,
            principal_mapping_rules: vec!["DEFAULT".into()],
            reload_interval_ms: 10_000,
        }
    }
}

/// TLS from Tollgate to the brokers of one cluster (`upstream.tls`, `tiered.secondary_tls`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsConfig {
    pub enabled: bool,
    /// PEM file with the CAs to trust. Unset: the system's root certificates.
    pub ca_file: Option<String>,
    /// Name to send in SNI and to check the broker certificate against. Unset: the host of
    /// each broker address.
    pub(crate) server_name: Option<String>,
    /// PEM files of Tollgate's client certificate and key, for brokers that require mutual
    /// TLS. Both or neither.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// Tollgate's own SASL login to one cluster (`upstream.sasl`, `tiered.secondary_sasl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SaslLoginConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub(crate) mechanism: String,
    pub(crate) username: String,
    /// File holding the password (trailing newline ignored); never the password itself.
    pub(crate) password_file: String,
}

/// How Tollgate treats the SASL exchange of its clients (`proxy.sasl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSaslConfig {
    /// Refuse (close) a client connection that sends anything but ApiVersions, SaslHandshake
    /// and SaslAuthenticate before the broker confirmed its authentication, as a broker's
    /// SASL listener does. Unset: true when `upstream.sasl` is set (the cluster requires
    /// SASL, and Tollgate must not answer on its own authority for a client the broker never
    /// authenticated).
    pub(crate) required: Option<bool>,
    /// The JWT claim that names an OAUTHBEARER client's principal.
    pub(crate) oauthbearer_principal_claim: String,
    /// With SASL required: a connection the broker has not authenticated this long after
    /// accept is closed, whatever it sends meanwhile (ApiVersions every few minutes would
    /// otherwise hold its slot and a broker connection for ever). 0: never.
    pub(crate) authentication_timeout_ms: u64,
}

impl Default for ClientSaslConfig {
    fn default() -> Self {
        Self {
            required: None,
            oauthbearer_principal_claim: "sub".into(),
            authentication_timeout_ms: 30_000,
        }
    }
}

/// A security setting that does not hold.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct SecurityConfigError {
    pub(crate) key: String,
    pub(crate) reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> SecurityConfigError {
    SecurityConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl ServerTlsConfig {
    /// Check the settings and that the files load (`section` names the key in errors).
    pub(crate) fn validate(&self, section: &str) -> Result<(), SecurityConfigError> {
        if self.cert_file.is_empty() || self.key_file.is_empty() {
            return Err(bad(section, "cert_file and key_file are both required"));
        }
        if self.reload_interval_ms < 100 {
            return Err(bad(
                &format!("{section}.reload_interval_ms"),
                "must be at least 100",
            ));
        }
        tls::MappingRules::parse(&self.principal_mapping_rules)
            .map_err(|e| bad(&format!("{section}.principal_mapping_rules"), e))?;
        tls::server_config(self).map_err(|e| bad(section, e.to_string()))?;
        Ok(())
    }
}

impl ClientTlsConfig {
    pub(crate) fn validate(&self, section: &str) -> Result<(), SecurityConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(bad(section, "set both cert_file and key_file, or neither"));
        }
        tls::client_config(self).map_err(|e| bad(section, e.to_string()))?;
        Ok(())
    }
}

impl SaslLoginConfig {
    pub(crate) fn validate(&self, section: &str) -> Result<(), SecurityConfigError> {
        login::Mechanism::parse(&self.mechanism).ok_or_else(|| {
            bad(
                &format!("{section}.mechanism"),
                "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            )
        })?;
        if self.username.is_empty() {
            return Err(bad(&format!("{section}.username"), "must not be empty"));
        }
        login::read_secret(&self.password_file)
            .map_err(|e| bad(&format!("{section}.password_file"), e.to_string()))?;
        Ok(())
    }
}

/// librdkafka properties for Tollgate's own `rdkafka` clients of one cluster (the state
/// store, the offset-syncs reader, `tollgate mirror`): the same TLS and SASL settings as its
/// own protocol connections. (librdkafka brings its own TLS, OpenSSL; these clients are not
/// on the proxy path.)
/// librdkafka properties (`key`, `value`) for TLS and SASL to a cluster.
pub(crate) type Props = [(String, String)];

pub(crate) fn rdkafka_props(
    tls: &ClientTlsConfig,
    sasl: Option<&SaslLoginConfig>,
) -> Result<Vec<(String, String)>, login::LoginError> {
    let protocol = match (tls.enabled, sasl.is_some()) {
        (false, false) => return Ok(Vec::new()),
        (true, false) => "SSL",
        (false, true) => "SASL_PLAINTEXT",
        (true, true) => "SASL_SSL",
    };
    let mut props = vec![("security.protocol".to_string(), protocol.to_string())];
    let mut set = |k: &str, v: &str| props.push((k.to_string(), v.to_string()));
    if tls.enabled {
        if let Some(ca) = &tls.ca_file {
            set("ssl.ca.location", ca);
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            set("ssl.certificate.location", cert);
            set("ssl.key.location", key);
        }
    }
    if let Some(s) = sasl {
        set("sasl.mechanism", &s.mechanism);
        set("sasl.username", &s.username);
        set("sasl.password", &login::read_secret(&s.password_file)?);
    }
    Ok(props)
}
