//! The admin HTTP listener.
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once the upstream cluster answered Metadata; 503 before that and during shutdown |
//! | `GET /v1/brokers` | JSON: the brokers Tollgate knows, their real and advertised addresses |
//! | `GET /v1/clients` | JSON: every open client connection and who is on it ([`crate::identity`]) |
//!
//! Routes are matched in [`route`], the one place to add more.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::server::Shared;

/// Serve the admin API until shutdown is complete (it keeps answering `/readyz` with 503
/// while connections drain; the server aborts it at the end).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&req, &shared)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "admin connection error");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// Route one admin request.
pub fn route(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET is supported\n",
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => {
            if shared.shutting_down.load(Ordering::SeqCst) {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "shutting down\n")
            } else if shared.ready.load(Ordering::SeqCst) {
                reply(StatusCode::OK, TEXT, "ready\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready: waiting for the upstream cluster to answer Metadata\n",
                )
            }
        }
        "/v1/brokers" => reply(
            StatusCode::OK,
            JSON,
            serde_json::to_vec_pretty(&shared.topology.brokers()).expect("serializable"),
        ),
        "/v1/clients" => reply(
            StatusCode::OK,
            JSON,
            serde_json::to_vec_pretty(&shared.inventory.clients()).expect("serializable"),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics, /healthz, /readyz, /v1/brokers, /v1/clients\n",
        ),
    }
}
