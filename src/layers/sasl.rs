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
use kafka_protocol::protocol::Decodable;
use tower::{Layer, Service};
use tracing::info;

use crate::error::BoxError;
use crate::metrics::Metrics;
use crate::protocol;
use crate::security::sasl::Outcome;
use crate::stack::{Request, Response};

/// APIs this layer decodes (their versions are capped in ApiVersions).
pub const SASL_APIS: &[ApiKey] = &[ApiKey::SaslHandshake, ApiKey::SaslAuthenticate];

/// The lowest SaslHandshake version Tollgate can carry (see the module docs).
pub const SASL_HANDSHAKE_MIN_VERSION: i16 = 1;

const UNSUPPORTED_VERSION: i16 = 35;

/// Shared by every connection of this instance.
#[derive(Clone)]
pub struct SaslLayer {
    required: bool,
    claim: Arc<str>,
    metrics: Arc<Metrics>,
}

impl SaslLayer {
    pub fn new(required: bool, oauthbearer_claim: &str, metrics: Arc<Metrics>) -> SaslLayer {
        SaslLayer {
            required,
            claim: Arc::from(oauthbearer_claim),
            metrics,
        }
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
pub struct SaslService<S> {
    inner: S,
    cfg: SaslLayer,
}

/// The connection was closed because it did not authenticate first.
#[derive(Debug, thiserror::Error)]
#[error("{api} before SASL authentication, on a listener that requires it (proxy.sasl.required)")]
pub struct Unauthenticated {
    pub api: &'static str,
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
        let (conn, metrics, version) = (
            req.conn.clone(),
            self.cfg.metrics.clone(),
            req.meta.api_version,
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
            let mechanism = conn.sasl().mechanism_name();
            let outcome = conn
                .sasl()
                .response(step, answer.error_code, &answer.auth_bytes);
            let result = match outcome {
                Outcome::Pending if answer.error_code != 0 => "failed",
                Outcome::Pending => return Ok(response),
                Outcome::Authenticated(name) => {
                    conn.set_sasl_principal(mechanism, Some(name));
                    info!(conn = conn.id, peer = %conn.peer, mechanism,
                          principal = &*conn.principal(), "client authenticated by the broker");
                    "ok"
                }
                Outcome::AuthenticatedOpaque => {
                    conn.set_sasl_principal(mechanism, None);
                    "unreadable"
                }
            };
            metrics
                .sasl_authentications
                .with_label_values(&[mechanism, result])
                .inc();
            Ok(response)
        })
    }
}

/// The request body, if it decodes (a body that does not is the broker's to refuse).
fn decode<T: Decodable>(req: &Request) -> Option<T> {
    let offset = req.meta.body_offset?;
    let mut body = req.frame.slice(offset..);
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
