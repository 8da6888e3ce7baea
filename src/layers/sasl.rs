//! The SASL layer: learns each connection's principal from its SASL exchange with the broker
//! (see [`crate::security::sasl`] for what is read and when it is trusted), and, when
//! `proxy.sasl.required`, holds back every other request until the broker has accepted one.
//!
//! - SaslHandshake and SaslAuthenticate pass through unchanged; Tollgate holds no secret and
//!   the broker decides. SaslHandshake is advertised from v1: after a v0 handshake the SASL
//!   tokens travel as raw frames without a Kafka header, which no Kafka-aware proxy can
//!   frame (clients since Kafka 1.0 and librdkafka 0.11 use v1). A v0 handshake is answered
//!   here with UNSUPPORTED_VERSION.
//! - Each finished exchange is counted in `tollgate_sasl_authentications_total{mechanism,
//!   result}`; a success sets the connection's principal (in `/v1/clients`, every
//!   `principal` label, the client-instance identity and governance).
//! - Required and not yet authenticated: any request but ApiVersions, SaslHandshake and
//!   SaslAuthenticate closes the connection, as a broker's SASL listener does, and is counted
//!   in `tollgate_client_connections_refused_total{reason="sasl_required"}`. Without this, a
//!   client the broker never authenticated could be answered from Tollgate's own
//!   (authenticated) connections, e.g. a Fetch routed to the secondary cluster.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kafka_protocol::messages::{
    ApiKey, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tower::{Layer, Service};
use tracing::{info, warn};

use crate::error::BoxError;
use crate::layers::request::{Request, Response};
use crate::metrics::Metrics;
use crate::security::sasl::Outcome;
use crate::wire::protocol;

/// APIs this layer decodes (their versions are capped in ApiVersions).
pub(crate) const SASL_APIS: &[ApiKey] = &[ApiKey::SaslHandshake, ApiKey::SaslAuthenticate];

use crate::control::audit::{Audit, What};
use crate::wire::versions::SASL_HANDSHAKE_MIN_VERSION;

const UNSUPPORTED_VERSION: i16 = 35;
/// SASL_AUTHENTICATION_FAILED.
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// Shared by every connection of this instance.
#[derive(Clone)]
pub(crate) struct SaslLayer {
    required: bool,
    claim: Arc<str>,
    metrics: Arc<Metrics>,
    /// Where authentications and failures are audited.
    audit: Option<Arc<Audit>>,
}

impl SaslLayer {
    pub(crate) fn new(required: bool, oauthbearer_claim: &str, metrics: Arc<Metrics>) -> SaslLayer {
        SaslLayer {
            required,
            claim: Arc::from(oauthbearer_claim),
            metrics,
            audit: None,
        }
    }

    /// Audit every authentication and failure in `audit`.
    pub(crate) fn auditing(mut self, audit: Arc<Audit>) -> SaslLayer {
        self.audit = Some(audit);
        self
    }
}

impl<S> Layer<S> for SaslLayer {
    type Service = SaslService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SaslService {
            inner,
            cfg: self.clone(),
        }
    }
}

/// One connection's SASL follower.
#[derive(Clone)]
pub(crate) struct SaslService<S> {
    inner: S,
    cfg: SaslLayer,
}

/// The connection was closed because it did not authenticate first.
#[derive(Debug, thiserror::Error)]
#[error("{api} before SASL authentication, on a listener that requires it (proxy.sasl.required)")]
pub(crate) struct Unauthenticated {
    pub(crate) api: &'static str,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

impl<S> Service<Request> for SaslService<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match req.meta.api {
            Some(ApiKey::SaslHandshake) => self.handshake(req),
            Some(ApiKey::SaslAuthenticate) => {
                req.whole_response = true;
                self.authenticate(req)
            }
            Some(ApiKey::ApiVersions) => Box::pin(self.inner.call(req)),
            _ if self.cfg.required && !req.conn.sasl_done() => {
                self.cfg
                    .metrics
                    .connections_refused
                    .with_label_values(&["sasl_required"])
                    .inc();
                let err: BoxError = Box::new(Unauthenticated {
                    api: protocol::api_name(req.meta.api_key),
                });
                Box::pin(async move { Err(err) })
            }
            _ => Box::pin(self.inner.call(req)),
        }
    }
}

impl<S> SaslService<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    fn handshake(&mut self, req: Request) -> BoxFut {
        let version = req.meta.api_version;
        if version < SASL_HANDSHAKE_MIN_VERSION {
            let answer = unsupported_handshake(&req);
            return Box::pin(async move { answer.map(Response::Frame).map_err(Into::into) });
        }
        if let Some(r) = decode::<SaslHandshakeRequest>(&req) {
            req.conn.sasl().begin(&r.mechanism);
        }
        Box::pin(self.inner.call(req))
    }

    fn authenticate(&mut self, req: Request) -> BoxFut {
        let step = decode::<SaslAuthenticateRequest>(&req)
            .map(|r| req.conn.sasl().request(&r.auth_bytes, &self.cfg.claim));
        if let Some(step) = step.as_ref().filter(|s| s.is_ambiguous()) {
            return self.refuse_ambiguous(&req, step.label);
        }
        let (conn, metrics, version, audit) = (
            req.conn.clone(),
            self.cfg.metrics.clone(),
            req.meta.api_version,
            self.cfg.audit.clone(),
        );
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let (Some(step), Response::Frame(frame)) = (step, &response) else {
                return Ok(response);
            };
            let Ok((_, answer)) = protocol::decode_response::<SaslAuthenticateResponse>(
                frame,
                ApiKey::SaslAuthenticate,
                version,
            ) else {
                return Ok(response);
            };
            // Judged by this request's own step: what later (pipelined) requests claimed
            // cannot change what this answer means.
            let outcome = step.outcome(answer.error_code, &answer.auth_bytes);
            let result = match outcome {
                Outcome::Pending if answer.error_code != 0 => "failed",
                Outcome::Pending => return Ok(response),
                Outcome::Authenticated(name) => authenticated(&conn, step.label, name),
                Outcome::AuthenticatedOpaque if conn.sasl_done() => "principal_changed",
                Outcome::AuthenticatedOpaque => {
                    conn.set_sasl_principal(step.label, None);
                    "unreadable"
                }
            };
            metrics
                .sasl_authentications
                .with_label_values(&[step.label, result])
                .inc();
            if let Some(audit) = audit {
                audit_outcome(&audit, &conn, step.label, result);
            }
            Ok(response)
        })
    }

    /// An OAUTHBEARER message with a key twice: Tollgate and the broker could read two
    /// different principals from it, so it never reaches the broker.
    fn refuse_ambiguous(&self, req: &Request, mechanism: &'static str) -> BoxFut {
        self.cfg
            .metrics
            .sasl_authentications
            .with_label_values(&[mechanism, "ambiguous"])
            .inc();
        warn!(conn = req.conn.id, peer = %req.conn.peer, mechanism,
              "SASL message with a duplicate key refused");
        let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
        let body = SaslAuthenticateResponse::default()
            .with_error_code(SASL_AUTHENTICATION_FAILED)
            .with_error_message(Some(StrBytes::from_static_str(
                "Tollgate: the SASL message names a key twice",
            )));
        let answer = protocol::encode_response(
            &header,
            &body,
            ApiKey::SaslAuthenticate,
            req.meta.api_version,
        );
        Box::pin(async move { answer.map(Response::Frame).map_err(Into::into) })
    }
}

/// The broker accepted an exchange that claimed `name`. A connection keeps its first SASL
/// principal: Kafka refuses a re-authentication (KIP-368) as anyone else, so a "yes" for
/// another name is not believed.
fn authenticated(
    conn: &crate::layers::request::ConnInfo,
    mechanism: &'static str,
    name: String,
) -> &'static str {
    if conn.sasl_done() && *conn.principal() != *format!("User:{name}") {
        warn!(conn = conn.id, peer = %conn.peer, mechanism, principal = &*conn.principal(),
              claimed = name, "re-authentication as another principal ignored");
        return "principal_changed";
    }
    conn.set_sasl_principal(mechanism, Some(name));
    info!(conn = conn.id, peer = %conn.peer, mechanism,
          principal = &*conn.principal(), "client authenticated by the broker");
    "ok"
}

/// An authentication's outcome, for the audit trail (a re-authentication that changed
/// nothing is not news).
fn audit_outcome(
    audit: &Audit,
    conn: &crate::layers::request::ConnInfo,
    mechanism: &str,
    result: &str,
) {
    let (mechanism, peer) = (mechanism.to_string(), conn.peer.to_string());
    match result {
        "ok" | "unreadable" => audit.emit(What::Authenticated {
            principal: conn.principal().to_string(),
            mechanism,
            peer,
        }),
        "failed" => audit.emit(What::AuthenticationFailed { mechanism, peer }),
        _ => {}
    }
}

/// The request body, if it decodes (a body that does not is the broker's to refuse).
fn decode<T: Decodable>(req: &Request) -> Option<T> {
    let mut body = req.body_bytes().ok()?;
    T::decode(&mut body, req.meta.api_version).ok()
}

/// UNSUPPORTED_VERSION for a v0 SaslHandshake (the client then reports it cannot
/// authenticate, rather than sending unframed tokens).
fn unsupported_handshake(req: &Request) -> anyhow::Result<bytes::Bytes> {
    let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
    let body = SaslHandshakeResponse::default()
        .with_error_code(UNSUPPORTED_VERSION)
        .with_mechanisms(Vec::new());
    protocol::encode_response(&header, &body, ApiKey::SaslHandshake, req.meta.api_version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::request::{ConnInfo, ListenerKind};
    use kafka_protocol::messages::{MetadataRequest, RequestHeader};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use tower::ServiceExt;

    fn request<T: Encodable>(conn: &Arc<ConnInfo>, key: ApiKey, version: i16, body: &T) -> Request {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7);
        let frame = protocol::encode_request(&header, body).unwrap();
        Request::new(
            protocol::parse_request(&frame).unwrap(),
            frame,
            conn.clone(),
        )
    }

    /// A broker that accepts PLAIN logins whose password is `ok`.
    fn broker(
    ) -> impl Service<Request, Response = Response, Error = BoxError, Future = BoxFut> + Clone {
        tower::service_fn(|r: Request| -> BoxFut {
            Box::pin(async move {
                let header = ResponseHeader::default().with_correlation_id(r.meta.correlation_id);
                let v = r.meta.api_version;
                let frame = match r.meta.api {
                    Some(ApiKey::SaslAuthenticate) => {
                        let req = decode::<SaslAuthenticateRequest>(&r).unwrap();
                        let ok = req.auth_bytes.ends_with(b"\0ok");
                        let body = SaslAuthenticateResponse::default().with_error_code(if ok {
                            0
                        } else {
                            58
                        });
                        protocol::encode_response(&header, &body, ApiKey::SaslAuthenticate, v)
                    }
                    _ => {
                        let body = SaslHandshakeResponse::default();
                        protocol::encode_response(&header, &body, ApiKey::SaslHandshake, 1)
                    }
                };
                Ok(Response::Frame(frame.unwrap()))
            })
        })
    }

    async fn login(
        svc: &mut SaslService<
            impl Service<Request, Response = Response, Error = BoxError, Future = BoxFut>,
        >,
        conn: &Arc<ConnInfo>,
        user: &str,
        password: &str,
    ) {
        let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        svc.call(request(conn, ApiKey::SaslHandshake, 1, &hs))
            .await
            .unwrap();
        let auth = SaslAuthenticateRequest::default()
            .with_auth_bytes(format!("\0{user}\0{password}").into_bytes().into());
        svc.call(request(conn, ApiKey::SaslAuthenticate, 2, &auth))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn principal_from_the_brokers_yes_and_reauthentication() {
        let metrics = Arc::new(Metrics::new());
        let audit = Arc::new(Audit::new(
            crate::control::config::AuditConfig {
                dedup_seconds: 0,
                ..Default::default()
            },
            metrics.clone(),
        ));
        let queue = audit.take_queue().unwrap();
        let mut svc = SaslLayer::new(true, "sub", metrics.clone())
            .auditing(audit)
            .layer(broker());
        let conn = Arc::new(ConnInfo::new(
            1,
            "10.0.0.1:5000".parse().unwrap(),
            ListenerKind::Bootstrap,
        ));
        // Required: nothing but SASL before the broker says yes.
        let md = request(&conn, ApiKey::Metadata, 12, &MetadataRequest::default());
        assert!(svc.ready().await.unwrap().call(md).await.is_err());
        login(&mut svc, &conn, "alice", "wrong").await;
        assert_eq!(&*conn.principal(), crate::consumers::identity::ANONYMOUS);
        assert!(!conn.sasl_done());
        login(&mut svc, &conn, "alice", "ok").await;
        assert_eq!(&*conn.principal(), "User:alice");
        let md = request(&conn, ApiKey::Metadata, 12, &MetadataRequest::default());
        assert!(svc.call(md).await.is_ok());
        // KIP-368: re-authentication as the same principal is fine; Kafka refuses it as
        // anyone else, so a "yes" for another name is not believed.
        login(&mut svc, &conn, "alice", "ok").await;
        login(&mut svc, &conn, "bob", "ok").await;
        assert_eq!(&*conn.principal(), "User:alice");
        assert!(metrics.render().contains(
            r#"tollgate_sasl_authentications_total{mechanism="PLAIN",result="principal_changed"} 1"#
        ));
        let text = metrics.render();
        assert!(
            text.contains(
                r#"tollgate_sasl_authentications_total{mechanism="PLAIN",result="ok"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"tollgate_sasl_authentications_total{mechanism="PLAIN",result="failed"} 1"#
        ));
        // Audited: the failure, then alice twice (the first login and the same-principal
        // re-authentication); the refused rename is not an authentication.
        let audited: Vec<What> = queue
            .try_iter()
            .filter_map(|m| match m {
                crate::control::audit::Msg::Event(e) => Some(e.what),
                _ => None,
            })
            .collect();
        let failed = What::AuthenticationFailed {
            mechanism: "PLAIN".into(),
            peer: "10.0.0.1:5000".into(),
        };
        let alice = What::Authenticated {
            principal: "User:alice".into(),
            mechanism: "PLAIN".into(),
            peer: "10.0.0.1:5000".into(),
        };
        assert_eq!(audited, vec![failed, alice.clone(), alice]);
    }

    #[tokio::test]
    async fn a_v0_handshake_is_answered_unsupported() {
        let mut svc = SaslLayer::new(false, "sub", Arc::new(Metrics::new())).layer(broker());
        let conn = Arc::new(ConnInfo::new(
            1,
            "10.0.0.1:5000".parse().unwrap(),
            ListenerKind::Bootstrap,
        ));
        let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let Response::Frame(f) = svc
            .call(request(&conn, ApiKey::SaslHandshake, 0, &hs))
            .await
            .unwrap()
        else {
            panic!("a frame");
        };
        let (_, r) =
            protocol::decode_response::<SaslHandshakeResponse>(&f, ApiKey::SaslHandshake, 0)
                .unwrap();
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
    }
}
