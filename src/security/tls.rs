//! TLS with rustls (no OpenSSL in the proxy path).
//!
//! - [`ServerTls`]: what a TLS listener serves, from PEM files, optionally requiring client
//!   certificates signed by `client_ca_file`. [`ServerTls::watch`] checks the files every
//!   `reload_interval_ms` and swaps the configuration when they change: new handshakes use
//!   the new certificate, open connections keep theirs. A change that does not load (a key
//!   that does not match, a half-written file) keeps the old one and is logged and counted
//!   in `tollgate_tls_reloads_total{listener,result="error"}`.
//! - [`client_config`] / [`connector`]: Tollgate → broker TLS (CA bundle or the system's
//!   roots, SNI from the broker address or `server_name`, optional client certificate).
//! - [`MappingRules`]: Kafka's `ssl.principal.mapping.rules` over the client certificate's
//!   subject in RFC 2253 form, as a Kafka broker maps an mTLS principal.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{ClientTlsConfig, ServerTlsConfig};
use crate::metrics::Metrics;

/// A TLS file or setting that does not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

fn roots_from(path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::File {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The rustls server configuration for `cfg` (reads the files now).
pub fn server_config(cfg: &ServerTlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(load_certs(&cfg.cert_file)?, load_key(&cfg.key_file)?)?;
    Ok(Arc::new(config))
}

/// The rustls client configuration for connections to brokers.
pub(crate) fn client_config(cfg: &ClientTlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = match &cfg.ca_file {
        Some(path) => roots_from(path)?,
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// How Tollgate opens TLS to the brokers of one cluster.
#[derive(Clone)]
pub(crate) struct Connector {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A [`Connector`] for `cfg`, or `None` when TLS to brokers is off.
pub(crate) fn connector(cfg: &ClientTlsConfig) -> Result<Option<Connector>, TlsError> {
    if !cfg.enabled {
        return Ok(None);
    }
    Ok(Some(Connector {
        connector: tokio_rustls::TlsConnector::from(client_config(cfg)?),
        server_name: cfg.server_name.clone(),
    }))
}

impl Connector {
    /// The name checked against the certificate of the broker at `addr` (`host:port`).
    fn name_for(&self, addr: &str) -> std::io::Result<ServerName<'static>> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => host_of(addr),
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }

    /// Wrap an open TCP connection to `addr` in TLS.
    pub(crate) async fn connect(
        &self,
        addr: &str,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connector.connect(self.name_for(addr)?, tcp).await
    }
}

/// The host part of `host:port` (`[v6]:port` without the brackets).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The files' modification times and sizes: a change in any one means "reload".
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(cfg: &ServerTlsConfig) -> Stamp {
    [
        Some(&cfg.cert_file),
        Some(&cfg.key_file),
        cfg.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

/// A TLS listener's configuration, swapped when its files change.
pub(crate) struct ServerTls {
    cfg: ServerTlsConfig,
    current: RwLock<tokio_rustls::TlsAcceptor>,
    seen: Mutex<Stamp>,
    rules: MappingRules,
    /// Whether client certificates are verified (mutual TLS).
    pub(crate) mutual: bool,
}

impl ServerTls {
    /// Load the files now (an error is a start-up error).
    pub(crate) fn new(cfg: &ServerTlsConfig) -> Result<ServerTls, TlsError> {
        let config = server_config(cfg)?;
        let rules =
            MappingRules::parse(&cfg.principal_mapping_rules).map_err(TlsError::Verifier)?;
        Ok(ServerTls {
            seen: Mutex::new(stamp(cfg)),
            current: RwLock::new(config.into()),
            mutual: cfg.client_ca_file.is_some(),
            cfg: cfg.clone(),
            rules,
        })
    }

    /// The acceptor for the next handshake.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current.read().expect("lock").clone()
    }

    /// Reload when the files changed since the last look. `None`: unchanged.
    pub(crate) fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamp(&self.cfg);
        let mut seen = self.seen.lock().expect("lock");
        if *seen == now {
            return None;
        }
        *seen = now;
        drop(seen);
        Some(server_config(&self.cfg).map(|c| {
            *self.current.write().expect("lock") = c.into();
        }))
    }

    /// Check the files every `reload_interval_ms` until shutdown.
    pub(crate) async fn watch(
        self: Arc<Self>,
        listener: &'static str,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let every = Duration::from_millis(self.cfg.reload_interval_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let result = match self.reload_if_changed() {
                None => continue,
                Some(Ok(())) => {
                    info!(listener, cert = %self.cfg.cert_file, "TLS certificate reloaded");
                    "ok"
                }
                Some(Err(e)) => {
                    warn!(listener, error = %e, "TLS files changed but do not load; keeping the previous certificate");
                    "error"
                }
            };
            metrics
                .tls_reloads
                .with_label_values(&[listener, result])
                .inc();
        }
    }

    /// The principal of a client certificate that the handshake verified (mutual TLS only).
    pub(crate) fn peer_principal(&self, conn: &rustls::ServerConnection) -> Option<String> {
        if !self.mutual {
            return None;
        }
        let leaf = conn.peer_certificates()?.first()?;
        let dn = subject_dn(leaf)?;
        self.rules.apply(&dn).map(|name| format!("User:{name}"))
    }
}

/// The subject of a DER certificate in RFC 2253 form (most specific first, `CN=a,O=b`),
/// exactly as Java's `X500Principal.getName()` renders it for Kafka's mapping rules:
///
/// - only RFC 2253's keywords (CN, C, L, ST, O, OU, STREET, DC, UID) are named; any other
///   attribute is its dotted OID;
/// - a value is text when its attribute is named and its type is a directory string Java
///   shows as text (PrintableString, TeletexString, IA5String, GeneralString, BMPString,
///   UTF8String; the bytes read as UTF-8, as Java does); otherwise it is `#` and the hex of
///   its whole DER encoding, so no attribute Java shows in hex (a `title` of `CN=admin`, say)
///   can be matched as text by a rule;
/// - text escapes `, = + < > # ; " \` with a backslash, a NUL as `\00`, and leading and
///   trailing spaces.
///
/// `tests/x500.rs` checks this against the JDK itself, certificate by certificate.
pub fn subject_dn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let rdns: Vec<String> = cert
        .subject()
        .iter()
        .map(|rdn| rdn.iter().map(render_atv).collect::<Vec<_>>().join("+"))
        .collect();
    Some(rdns.into_iter().rev().collect::<Vec<_>>().join(","))
}

fn render_atv(atv: &x509_parser::x509::AttributeTypeAndValue) -> String {
    let value = atv.attr_value();
    match (rfc2253_keyword(atv.attr_type()), directory_string(value)) {
        (Some(keyword), Some(text)) => format!("{keyword}={}", escape_like_java(&text)),
        (keyword, _) => format!(
            "{}=#{}",
            keyword.map_or_else(|| atv.attr_type().to_id_string(), str::to_string),
            hex(&der_of(value))
        ),
    }
}

/// The keywords Java's RFC 2253 rendering uses; any other attribute is shown by OID.
fn rfc2253_keyword(oid: &x509_parser::der_parser::oid::Oid) -> Option<&'static str> {
    Some(match oid.to_id_string().as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// The text of a value of a directory-string type Java shows as text; `None` for any other
/// type. Java reads the contents as UTF-8 whatever the type says (a BMPString's UTF-16 comes
/// out with a NUL before each ASCII letter, each NUL then escaped as `\00`); so do we.
fn directory_string(value: &x509_parser::der_parser::asn1_rs::Any) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::{Class, Tag};
    if value.header.class() != Class::Universal {
        return None;
    }
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::GeneralString
        | Tag::T61String
        | Tag::BmpString => Some(String::from_utf8_lossy(value.data).into_owned()),
        _ => None,
    }
}

/// The whole DER encoding (identifier, length, contents) of a value.
fn der_of(value: &x509_parser::der_parser::asn1_rs::Any) -> Vec<u8> {
    let h = &value.header;
    let tag = h.tag().0;
    let mut out = Vec::with_capacity(value.data.len() + 6);
    let class_bits = (h.class() as u8) << 6 | u8::from(h.constructed()) << 5;
    if tag < 31 {
        out.push(class_bits | tag as u8);
    } else {
        out.push(class_bits | 0x1f);
        let mut groups = Vec::new();
        let mut t = tag;
        loop {
            groups.push((t & 0x7f) as u8);
            t >>= 7;
            if t == 0 {
                break;
            }
        }
        for (i, g) in groups.iter().enumerate().rev() {
            out.push(if i > 0 { g | 0x80 } else { *g });
        }
    }
    let len = value.data.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value.data);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Escape as Java's RFC 2253 rendering does.
fn escape_like_java(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let lead = chars.iter().take_while(|c| matches!(c, ' ' | '\r')).count();
    let trail = chars.len()
        - chars
            .iter()
            .rev()
            .take_while(|c| matches!(c, ' ' | '\r'))
            .count();
    let mut out = String::with_capacity(value.len() + 4);
    for (i, c) in chars.iter().enumerate() {
        if *c == '\0' {
            out.push_str("\\00");
            continue;
        }
        if matches!(c, ',' | '=' | '+' | '<' | '>' | '#' | ';' | '"' | '\\')
            || i < lead
            || i >= trail
        {
            out.push('\\');
        }
        out.push(*c);
    }
    out
}

/// Kafka's `ssl.principal.mapping.rules`.
#[derive(Debug, Clone)]
pub struct MappingRules(Vec<Rule>);

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Map {
        pattern: regex::Regex,
        replacement: String,
        case: Option<char>,
    },
}

impl MappingRules {
    /// Parse `DEFAULT` and `RULE:pattern/replacement/[L|U]` entries.
    pub fn parse(rules: &[String]) -> Result<MappingRules, String> {
        if rules.is_empty() {
            return Err("at least one rule (DEFAULT keeps the subject as it is)".into());
        }
        rules
            .iter()
            .map(|r| Rule::parse(r))
            .collect::<Result<_, _>>()
            .map(MappingRules)
    }

    /// The name for subject `dn`: the first rule that matches. `None`: no rule matches.
    pub fn apply(&self, dn: &str) -> Option<String> {
        self.0.iter().find_map(|r| r.apply(dn))
    }
}

impl Rule {
    fn parse(rule: &str) -> Result<Rule, String> {
        let rule = rule.trim();
        if rule == "DEFAULT" {
            return Ok(Rule::Default);
        }
        let body = rule
            .strip_prefix("RULE:")
            .ok_or_else(|| format!("{rule:?}: expected DEFAULT or RULE:pattern/replacement/"))?;
        let (body, case) = match body.rsplit_once('/') {
            Some((b, "")) => (b, None),
            Some((b, "L")) => (b, Some('L')),
            Some((b, "U")) => (b, Some('U')),
            _ => return Err(format!("{rule:?}: must end with /, /L or /U")),
        };
        let (pattern, replacement) = body
            .rsplit_once('/')
            .ok_or_else(|| format!("{rule:?}: expected RULE:pattern/replacement/"))?;
        let pattern =
            regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("{rule:?}: {e}"))?;
        let replacement = java_replacement(replacement, pattern.captures_len() - 1)
            .map_err(|e| format!("{rule:?}: {e}"))?;
        Ok(Rule::Map {
            pattern,
            replacement,
            case,
        })
    }

    fn apply(&self, dn: &str) -> Option<String> {
        match self {
            Rule::Default => Some(dn.to_string()),
            Rule::Map {
                pattern,
                replacement,
                case,
            } => {
                let caps = pattern.captures(dn)?;
                let mut name = String::new();
                caps.expand(replacement, &mut name);
                Some(match case {
                    Some('L') => name.to_lowercase(),
                    Some('U') => name.to_uppercase(),
                    _ => name,
                })
            }
        }
    }
}

/// A replacement in Java's syntax (Kafka applies rules with `String.replaceAll`) as the
/// regex crate's: `$n` takes as many digits as still name a group (`$12` with two groups is
/// group 1, then `2`), so `$1_svc` is group 1 then `_svc`; `${name}` is a named group; `\x`
/// is `x` itself. A group that does not exist is an error, as in Java.
fn java_replacement(java: &str, groups: usize) -> Result<String, String> {
    let mut out = String::with_capacity(java.len() + 8);
    let literal = |out: &mut String, c: char| match c {
        '$' => out.push_str("$$"),
        c => out.push(c),
    };
    let mut chars = java.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => literal(
                &mut out,
                chars.next().ok_or("a replacement ends with `\\`")?,
            ),
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                out.push_str(&format!("${{{name}}}"));
            }
            '$' => {
                let first = chars
                    .next()
                    .and_then(|d| d.to_digit(10))
                    .ok_or("`$` must be followed by a group number or {name}")?;
                let mut n = first as usize;
                if n > groups {
                    return Err(format!("no group {n} in the pattern"));
                }
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    if n * 10 + d as usize > groups {
                        break;
                    }
                    n = n * 10 + d as usize;
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            c => literal(&mut out, c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[&str]) -> MappingRules {
        MappingRules::parse(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn kafka_mapping_rules() {
        let r = rules(&["RULE:^CN=([^,]+),OU=svc.*$/$1/L", "DEFAULT"]);
        assert_eq!(
            r.apply("CN=Billing,OU=svc,O=Ex").as_deref(),
            Some("billing")
        );
        assert_eq!(r.apply("CN=x,O=Ex").as_deref(), Some("CN=x,O=Ex"));
        let only = rules(&["RULE:^CN=(.*?),.*$/$1/U"]);
        assert_eq!(only.apply("CN=ab,O=c").as_deref(), Some("AB"));
        assert_eq!(only.apply("O=c"), None, "no rule matches: no principal");
        assert!(MappingRules::parse(&["RULE:(/x".into()]).is_err());
        assert!(MappingRules::parse(&["CN".into()]).is_err());
        assert!(MappingRules::parse(&[]).is_err());
    }

    #[test]
    fn subject_in_rfc2253_order() {
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Ex, Inc");
        dn.push(rcgen::DnType::CommonName, "billing");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_dn(cert.der()).as_deref(),
            Some("CN=billing,O=Ex\\, Inc")
        );
    }

    /// A self-signed certificate for `localhost`: (cert PEM, key PEM, cert DER).
    fn self_signed() -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Handshake with `tls`; the certificate the server presented, and the open stream.
    async fn handshake(
        tls: &ServerTls,
        trust: &[&[u8]],
    ) -> (
        Vec<u8>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    ) {
        let mut roots = RootCertStore::empty();
        for der in trust {
            roots.add(CertificateDer::from(der.to_vec())).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = tls.acceptor();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = acceptor.accept(s).await.unwrap();
            // Echo until the client goes away.
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let name = ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, c)
            .await
            .unwrap();
        let presented = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        drop(server);
        (presented, stream)
    }

    /// Changed files apply to new handshakes; open connections keep working; a file that
    /// does not load keeps the previous certificate.
    #[tokio::test]
    async fn certificates_reload_without_dropping_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (a_pem, a_key, a_der) = self_signed();
        let (b_pem, b_key, b_der) = self_signed();
        std::fs::write(&cert, &a_pem).unwrap();
        std::fs::write(&key, &a_key).unwrap();
        let cfg = ServerTlsConfig {
            cert_file: cert.display().to_string(),
            key_file: key.display().to_string(),
            ..Default::default()
        };
        let tls = ServerTls::new(&cfg).unwrap();
        assert!(
            tls.reload_if_changed().is_none(),
            "unchanged files: no reload"
        );
        let (presented, mut open) = handshake(&tls, &[&a_der, &b_der]).await;
        assert_eq!(presented, a_der);

        std::thread::sleep(std::time::Duration::from_millis(20)); // a new mtime
        std::fs::write(&cert, format!("{b_pem}\n")).unwrap();
        std::fs::write(&key, &b_key).unwrap();
        assert!(matches!(tls.reload_if_changed(), Some(Ok(()))));
        let (presented, _) = handshake(&tls, &[&a_der, &b_der]).await;
        assert_eq!(presented, b_der, "new handshakes get the new certificate");
        open.write_all(b"still here").await.unwrap();
        let mut back = [0u8; 10];
        open.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"still here", "the open connection keeps working");

        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(tls.reload_if_changed(), Some(Err(_))));
        let (presented, _) = handshake(&tls, &[&a_der, &b_der]).await;
        assert_eq!(
            presented, b_der,
            "a bad file keeps the previous certificate"
        );
    }

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("kafka-1.example:9093"), "kafka-1.example");
        assert_eq!(host_of("[::1]:9093"), "::1");
    }
}
