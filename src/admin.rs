//! The admin HTTP listener.
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once the upstream cluster answered Metadata; 503 before that and during shutdown |
//! | `GET /v1/brokers` | JSON: the brokers Tollgate knows, their real and advertised addresses |
//! | `GET /v1/clients` | JSON: every open client connection and who is on it ([`crate::identity`]) |
//! | `GET /v1/registry` | JSON: the consumer registry in force, its path, when it was loaded, the last failed reload |
//! | `POST /v1/registry/reload` | reload the registry file; 422 with the error (and the old registry kept) when it is invalid |
//! | `GET /v1/groups` | JSON: consumer groups seen, members, assignments, the connections tied to them ([`crate::groups`]) |
//! | `GET /v1/groups/{group}/status` | JSON: the group's status (OK, WARN, ERR, STOPPED, STALLED, WEDGED, REWIND) and per-partition lag and problems ([`crate::lag`]) |
//! | `POST /v1/groups/{group}/promote[?force=true]` | promote an eligible probation group (409 with the reason otherwise) |
//! | `GET /v1/lag` | JSON: every group's status |
//! | `GET /v1/routing` | JSON: tiered reads: offset syncs loaded, and every consumer partition on the secondary now ([`crate::tiered`]) |
//! | `GET /v1/topics` | JSON: topics with traffic, and how many producers and consumers each has |
//! | `GET /v1/topics/{topic}/consumers` | JSON: who reads the topic, bytes and records, bytes/s over the last minute |
//! | `GET /v1/topics/{topic}/producers` | JSON: who writes the topic, likewise |
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

use crate::attribution::Direction;
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

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(value).expect("serializable"),
    )
}

/// `/v1/topics/{topic}/consumers|producers` → (topic, direction). Topic names are
/// percent-decoded (Kafka topic names only use `[a-zA-Z0-9._-]`, but be lenient).
fn topic_view(path: &str) -> Option<(String, Direction)> {
    let rest = path.strip_prefix("/v1/topics/")?;
    let (topic, what) = rest.rsplit_once('/')?;
    let direction = match what {
        "consumers" => Direction::Fetch,
        "producers" => Direction::Produce,
        _ => return None,
    };
    let topic = percent_decode(topic)?;
    (!topic.is_empty()).then_some((topic, direction))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Route one admin request.
pub fn route(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    if req.method() == Method::POST && req.uri().path() == "/v1/registry/reload" {
        if shared.registry.get().is_none() {
            return reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "no registry configured (governance.registry)\n",
            );
        }
        return match crate::server::reload_registry(shared, "api") {
            Ok(()) => json(
                &shared
                    .registry
                    .loaded()
                    .map(|l| l.view())
                    .unwrap_or_default(),
            ),
            Err(e) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                TEXT,
                format!("{e}\nthe previous registry stays in force\n"),
            ),
        };
    }
    if req.method() == Method::POST {
        let path = req.uri().path();
        if let Some(group) = path
            .strip_prefix("/v1/groups/")
            .and_then(|p| p.strip_suffix("/promote"))
            .and_then(percent_decode)
        {
            let force = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force=1"));
            let Some(registry) = shared.registry.get() else {
                return reply(
                    StatusCode::NOT_FOUND,
                    TEXT,
                    "no registry configured (governance.registry)\n",
                );
            };
            return match shared.attribution.lag.promote(
                &group,
                &registry,
                "api",
                force,
                &shared.metrics,
            ) {
                Ok(record) => json(&record),
                Err(e) => reply(StatusCode::CONFLICT, TEXT, format!("{e}\n")),
            };
        }
    }
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET is supported (and POST /v1/registry/reload)\n",
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
        "/v1/groups" => json(&shared.attribution.groups.view()),
        "/v1/registry" => match shared.registry.loaded() {
            Some(l) => json(&l.view()),
            None => json(&serde_json::json!({"registry": null, "governance": "off"})),
        },
        "/v1/topics" => {
            let topics: Vec<serde_json::Value> = shared
                .attribution
                .topics()
                .into_iter()
                .map(|(topic, (producers, consumers))| {
                    serde_json::json!({"topic": topic, "producers": producers, "consumers": consumers})
                })
                .collect();
            json(&topics)
        }
        "/v1/lag" => json(&shared.attribution.lag.statuses()),
        "/v1/routing" => match &shared.tiered {
            Some(t) => json(&serde_json::json!({
                "tiered": "on",
                "offset_syncs": t.syncs.len(),
                "offset_syncs_loaded": t.syncs.loaded(),
                "on_secondary": t.routes(),
            })),
            None => json(&serde_json::json!({"tiered": "off", "on_secondary": []})),
        },
        path if path.starts_with("/v1/groups/") && path.ends_with("/status") => {
            let group = path
                .strip_prefix("/v1/groups/")
                .and_then(|p| p.strip_suffix("/status"))
                .and_then(percent_decode)
                .unwrap_or_default();
            match shared.attribution.lag.status(&group) {
                Some(s) => json(&s),
                None => reply(
                    StatusCode::NOT_FOUND,
                    TEXT,
                    format!("no lag data for group {group:?} (yet): no Tollgate instance saw it fetch, and the coordinator knows no commits of it\n"),
                ),
            }
        }
        path => match topic_view(path) {
            Some((topic, direction)) => {
                json(&shared.attribution.topic_clients(&topic, direction))
            }
            None => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "not found; try /metrics, /healthz, /readyz, /v1/brokers, /v1/clients, \
                 /v1/groups, /v1/topics, /v1/topics/{topic}/consumers, /v1/topics/{topic}/producers\n",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_paths() {
        assert_eq!(
            topic_view("/v1/topics/orders/consumers"),
            Some(("orders".into(), Direction::Fetch))
        );
        assert_eq!(
            topic_view("/v1/topics/a%2Eb/producers"),
            Some(("a.b".into(), Direction::Produce))
        );
        assert_eq!(topic_view("/v1/topics//consumers"), None);
        assert_eq!(topic_view("/v1/topics/x/other"), None);
        assert_eq!(topic_view("/v1/topics/%zz/consumers"), None);
    }
}
