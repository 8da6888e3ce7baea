//! The broker the security tests authenticate at. With the suite on Apache Kafka (the
//! default): Kafka's own SSL listener (client certificates required) or SASL_PLAINTEXT
//! listener (PLAIN and SCRAM users, optionally ACLs). With the suite on tansu, which serves
//! neither TLS nor SASL usable here (PRODUCT.md): tansu behind the test-only
//! [`TlsRelay`] or [`SaslFront`].
#![allow(dead_code)]

use super::secure::{Pki, SaslFront, TlsRelay};

/// A broker that speaks TLS: Apache Kafka's own SSL listener, which requires a client
/// certificate (Tollgate presents `CN=tollgate`); or, when the suite runs tansu, tansu behind
/// the [`TlsRelay`] (no client certificate asked).
pub struct TlsBroker {
    /// Where clients and Tollgate connect (TLS).
    pub addr: String,
    pub broker: super::Broker,
    _relay: Option<TlsRelay>,
}

impl TlsBroker {
    pub fn start(pki: &Pki) -> TlsBroker {
        use super::{kafka, Broker, Kind};
        match Kind::from_env() {
            Kind::Kafka => {
                let (cert, key) = pki.server();
                let broker = Broker::kafka(kafka::Options {
                    security: kafka::Security::Ssl,
                    tls: Some((cert, key, pki.ca())),
                    ..Default::default()
                });
                TlsBroker {
                    addr: broker.addr(),
                    broker,
                    _relay: None,
                }
            }
            Kind::Tansu => {
                let relay_port = super::free_port();
                let broker = Broker::tansu_advertising(Some(relay_port));
                let relay = TlsRelay::start(relay_port, pki, broker.addr());
                TlsBroker {
                    addr: format!("127.0.0.1:{relay_port}"),
                    broker,
                    _relay: Some(relay),
                }
            }
        }
    }

    /// rdkafka settings for a client of this broker with the certificate of `cn`.
    pub fn client_props(pki: &Pki, cn: &str) -> Vec<(String, String)> {
        let (c, k) = pki.client(cn);
        vec![
            ("security.protocol".into(), "SSL".into()),
            ("ssl.ca.location".into(), pki.ca().display().to_string()),
            ("ssl.certificate.location".into(), c.display().to_string()),
            ("ssl.key.location".into(), k.display().to_string()),
        ]
    }
}

/// A broker whose listener requires SASL (PLAIN, SCRAM-SHA-256/512) for `users`: Apache
/// Kafka's own SASL_PLAINTEXT listener (SCRAM users in its bootstrap metadata), optionally
/// with ACLs; or, when the suite runs tansu, tansu behind the [`SaslFront`].
pub struct SaslBroker {
    pub addr: String,
    pub broker: super::Broker,
    _front: Option<SaslFront>,
}

impl SaslBroker {
    pub fn start(users: &[(&str, &str)]) -> SaslBroker {
        Self::start_with(users, None)
    }

    /// `acl_super_users`: turn on Kafka's StandardAuthorizer with these super users (Kafka
    /// only: the front has no ACLs).
    pub fn start_with(users: &[(&str, &str)], acl_super_users: Option<&[&str]>) -> SaslBroker {
        use super::{kafka, Broker, Kind};
        let kind = if acl_super_users.is_some() {
            Kind::Kafka
        } else {
            Kind::from_env()
        };
        match kind {
            Kind::Kafka => {
                let broker = Broker::kafka(kafka::Options {
                    security: kafka::Security::SaslPlaintext,
                    users: users
                        .iter()
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                        .collect(),
                    acls_super_users: acl_super_users
                        .map(|s| s.iter().map(|p| p.to_string()).collect()),
                    ..Default::default()
                });
                SaslBroker {
                    addr: broker.addr(),
                    broker,
                    _front: None,
                }
            }
            Kind::Tansu => {
                let port = super::free_port();
                let broker = Broker::tansu_advertising(Some(port));
                let front = SaslFront::start(port, broker.addr(), users);
                SaslBroker {
                    addr: format!("127.0.0.1:{port}"),
                    broker,
                    _front: Some(front),
                }
            }
        }
    }
}
