//! The admin HTTP listener.
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once the upstream cluster answered Metadata; 503 before that and during shutdown |
//! | `GET /v1/brokers` | JSON: the brokers Tollgate knows, their real and advertised addresses |
//! | `GET /v1/clients` | JSON: every open client connection and who is on it ([`crate::consumers::identity`]) |
//! | `GET /v1/registry` | JSON: the consumer registry in force, its path, when it was loaded, the last failed reload |
//! | `POST /v1/registry/reload` | reload the registry file; 422 with the error (and the old registry kept) when it is invalid |
//! | `GET /v1/groups` | JSON: consumer groups seen, members, assignments, the connections tied to them ([`crate::consumers::groups`]) |
//! | `GET /v1/groups/{group}/status` | JSON: the group's status (OK, WARN, ERR, STOPPED, STALLED, WEDGED, REWIND) and per-partition lag and problems ([`crate::consumers::lag`]) |
//! | `POST /v1/groups/{group}/promote[?force=true]` | promote an eligible probation group (409 with the reason otherwise) |
//! | `GET /v1/lag` | JSON: every group's status |
//! | `GET /v1/routing` | JSON: tiered reads: offset syncs loaded, and every consumer partition on the secondary now ([`crate::tiered`]) |
//! | `GET /v1/topics` | JSON: topics with traffic, and how many producers and consumers each has |
//! | `GET /v1/topics/{topic}/consumers` | JSON: who reads the topic, bytes and records, bytes/s over the last minute |
//! | `GET /v1/topics/{topic}/producers` | JSON: who writes the topic, likewise |
//! | `GET /v1/showback?window=1h[&format=csv]` | JSON or CSV: per owner, bytes and records produced and read, hot and cold, secondary, throttled, refusals, cost ([`showback`]) |
//!
//! Routes are matched in [`route`], the one place to add more.
//!
//! **Who may call what** ([`authorize`]):
//! - `/metrics`, `/healthz` and `/readyz` are open (scrapers and probes).
//! - Every other method than GET is a mutation. It needs `Authorization: Bearer <token>`
//!   with the token in `admin.token_file` (read at each call, so a rotated token applies at
//!   once). With no token file, mutations are refused (403) unless the listener is a loopback
//!   address. A missing or wrong token: 401.
//! - With `admin.protect_reads`, the `/v1` reads need the token too; with
//!   `admin.protect_metrics`, `/metrics` does (its series carry principal, client id and group
//!   labels; Prometheus sends the token with `authorization: {credentials_file: ...}`).
//! - Every mutation is logged at info level: who (peer address, and whether by token or on
//!   loopback), what (method, path) and what changed. Refusals are counted in
//!   `tollgate_admin_requests_refused_total{reason}`.
//! - `admin.tls` serves the API over TLS (reloaded like the client listeners').
//! - **Bounded**: at most `admin.max_connections` open admin connections (one more is closed
//!   at once, `tollgate_admin_requests_refused_total{reason="max_connections"}`), so the
//!   admin port can never take the file descriptors the proxy needs; a request whose headers
//!   have not arrived within [`HEADER_TIMEOUT`] (a half-sent request, or an idle keep-alive
//!   connection) is closed.
//! - A token file whose token is shorter than [`MIN_TOKEN_LEN`] (checked at start, and again
//!   at each call, so a rotation to a short token does not weaken it) lets nobody in.

pub(crate) mod console;
pub(crate) mod showback;
pub mod top;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::app::{reload_registry, App};
use crate::consumers::usage::Direction;

/// How long a request's headers may take to arrive (also the idle limit of a keep-alive
/// connection between requests).
pub(crate) const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The shortest admin token accepted.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// Serve the admin API until shutdown is complete (it keeps answering `/readyz` with 503
/// while connections drain; the server aborts it at the end).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<App>) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let slots = Arc::new(tokio::sync::Semaphore::new(
        shared.config.admin.max_connections.max(1),
    ));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: this connection is closed at once (dropped), and counted.
            shared
                .metrics
                .admin_refused
                .with_label_values(&["max_connections"])
                .inc();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(tls) = shared.admin_tls.clone() else {
                return serve_http(stream, peer, loopback, shared).await;
            };
            let limit = std::time::Duration::from_secs(10);
            match tokio::time::timeout(limit, tls.acceptor().accept(stream)).await {
                Ok(Ok(stream)) => serve_http(stream, peer, loopback, shared).await,
                _ => shared
                    .metrics
                    .tls_handshake_errors
                    .with_label_values(&["admin"])
                    .inc(),
            }
        });
    }
}

async fn serve_http<S>(stream: S, peer: SocketAddr, loopback: bool, shared: Arc<App>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move {
            let answer = match authorize(&req, &shared, peer, loopback) {
                Ok(_) if req.method() == Method::GET && req.uri().path() == "/v1/showback" => {
                    showback(&req, &shared).await
                }
                Ok(caller) => route(&req, &shared, &caller),
                Err(refusal) => *refusal,
            };
            Ok::<_, Infallible>(answer)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        debug!(error = %e, "admin connection error");
    }
}

/// `GET /v1/showback` ([`showback`]): reads the audit topic on a blocking thread, one
/// read at a time per instance (429 while one runs).
async fn showback(req: &Request<Incoming>, shared: &Arc<App>) -> Response<Full<Bytes>> {
    static BUSY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let query = req.uri().query().unwrap_or("");
    let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k));
    let audit = &shared.config.audit;
    let longest = audit.retention_ms / 1000;
    let Some(window) = param("window=").map_or(Some(3600), showback::parse_window) else {
        return reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            "window: a number with s, m, h or d (90s, 15m, 1h, 7d)\n",
        );
    };
    if window > longest {
        return reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            format!("window: at most audit.retention_ms ({longest} s)\n"),
        );
    }
    if audit.topic.is_empty() {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "showback needs the audit topic (audit.topic)\n",
        );
    }
    if BUSY.swap(true, Ordering::SeqCst) {
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            TEXT,
            "a showback read is running; try again\n",
        );
    }
    // Cleared however this ends (a caller hanging up drops the future).
    struct Free;
    impl Drop for Free {
        fn drop(&mut self) {
            BUSY.store(false, Ordering::SeqCst);
        }
    }
    let _free = Free;
    let (from, to) = showback::bounds(window);
    let read = read_showback(shared, from).await;
    match read {
        Ok(usage) => {
            let s = showback::showback(&usage, from, to, &shared.config.showback);
            match param("format=") {
                Some("csv") => reply(StatusCode::OK, "text/csv; charset=utf-8", showback::csv(&s)),
                _ => json(&s),
            }
        }
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("cannot read the audit topic: {e:#}\n"),
        ),
    }
}

async fn read_showback(
    shared: &App,
    from_ms: u64,
) -> anyhow::Result<Vec<crate::control::audit::Usage>> {
    let props = shared.config.upstream_rdkafka_props()?;
    let bootstrap = shared.config.upstream.bootstrap_servers.clone();
    let topic = shared.config.audit.topic.clone();
    tokio::task::spawn_blocking(move || {
        crate::control::audit::read_usage(
            &bootstrap,
            &props,
            &topic,
            from_ms,
            showback::READ_TIMEOUT,
        )
    })
    .await?
}

/// Who is calling, as far as the admin API can tell.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) peer: SocketAddr,
    /// `token`, `loopback` (a mutation on a loopback listener without a token file), or
    /// `open` (a read that needs no token).
    pub(crate) via: &'static str,
}

/// Let the request through, or answer it with 401/403 (see the module docs).
pub(crate) fn authorize(
    req: &Request<Incoming>,
    shared: &App,
    peer: SocketAddr,
    loopback: bool,
) -> Result<Caller, Box<Response<Full<Bytes>>>> {
    let path = req.uri().path();
    let mutation = req.method() != Method::GET && req.method() != Method::HEAD;
    // The console's page holds no data (it reads /v1/console, which stays protected).
    let open = matches!(path, "/metrics" | "/healthz" | "/readyz" | "/" | "/ui");
    let metrics_protected = path == "/metrics" && shared.config.admin.protect_metrics;
    let needs_token = mutation || metrics_protected || (shared.config.admin.protect_reads && !open);
    if !needs_token {
        return Ok(Caller { peer, via: "open" });
    }
    let refuse = |status: StatusCode, reason: &str, text: &str| {
        shared
            .metrics
            .admin_refused
            .with_label_values(&[reason])
            .inc();
        let mut r = reply(status, "text/plain; charset=utf-8", format!("{text}\n"));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
        }
        r
    };
    let Some(path) = &shared.config.admin.token_file else {
        if mutation && loopback {
            return Ok(Caller {
                peer,
                via: "loopback",
            });
        }
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "disabled",
            "admin mutations are disabled: set admin.token_file (or listen on loopback)",
        )));
    };
    // Read at each call: a rotated token applies at once. Unreadable: nobody gets in.
    let Ok(token) = crate::security::login::read_secret(path) else {
        return Err(Box::new(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "disabled",
            "admin token file unreadable",
        )));
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token.len() < MIN_TOKEN_LEN {
        return Err(Box::new(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "disabled",
            "admin token too short (at least 16 characters); nobody gets in",
        )));
    }
    if !same_secret(given.trim().as_bytes(), token.as_bytes()) {
        return Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )));
    }
    Ok(Caller { peer, via: "token" })
}

/// Compare secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// What a registry reload changed, for the mutation log: consumer entries added, removed
/// and changed (by group or group prefix), and the mode.
fn registry_change(
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) -> String {
    use std::collections::BTreeMap;
    let entries = |v: Option<&serde_json::Value>| -> BTreeMap<String, String> {
        let list = v
            .and_then(|v| v.pointer("/registry/consumer"))
            .and_then(|a| a.as_array())
            .cloned()
            .unwrap_or_default();
        list.into_iter()
            .map(|e| {
                let name = e.get("group").and_then(|g| g.as_str()).map(str::to_string);
                let prefix = e.get("group_prefix").and_then(|g| g.as_str());
                let name = name.unwrap_or_else(|| format!("{}*", prefix.unwrap_or("")));
                (name, e.to_string())
            })
            .collect()
    };
    let mode = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.pointer("/registry/mode"))
            .cloned()
            .unwrap_or_default()
    };
    let (b, a) = (entries(before), entries(after));
    let added: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let removed: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let changed: Vec<&String> = a
        .keys()
        .filter(|k| b.get(*k).is_some_and(|v| v != &a[*k]))
        .collect();
    format!(
        "added {added:?}, removed {removed:?}, changed {changed:?}, mode {} -> {}",
        mode(before),
        mode(after)
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

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// Route one admin request.
pub(crate) fn route(
    req: &Request<Incoming>,
    shared: &App,
    caller: &Caller,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() == Method::POST && path == "/v1/registry/reload" {
        return reload(shared, caller);
    }
    if req.method() == Method::POST {
        let group_path = |suffix: &str| {
            path.strip_prefix("/v1/groups/")
                .and_then(|p| p.strip_suffix(suffix))
                .and_then(percent_decode)
        };
        if let Some(group) = group_path("/promote") {
            return promote(req, shared, caller, &group);
        }
        if let Some(group) = group_path("/budget/lift") {
            return lift(req, shared, caller, &group);
        }
        if let Some(group) = group_path("/rewind/allow") {
            return allow_rewind(req, shared, caller, &group);
        }
        let producer = path
            .strip_prefix("/v1/producers/")
            .and_then(|p| p.strip_suffix("/budget/lift"))
            .and_then(percent_decode);
        if let Some(producer) = producer {
            return lift_producer(req, shared, caller, &producer);
        }
    }
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET is supported (and POST /v1/registry/reload)\n",
        );
    }
    get(path, shared)
}

fn no_registry() -> Response<Full<Bytes>> {
    reply(
        StatusCode::NOT_FOUND,
        TEXT,
        "no registry configured (governance.registry)\n",
    )
}

/// `POST /v1/registry/reload`.
fn reload(shared: &App, caller: &Caller) -> Response<Full<Bytes>> {
    if shared.registry.get().is_none() {
        return no_registry();
    }
    let before = shared.registry.loaded().map(|l| l.view());
    let result = reload_registry(shared, "api");
    let after = shared.registry.loaded().map(|l| l.view());
    info!(peer = %caller.peer, auth = caller.via, action = "POST /v1/registry/reload",
          ok = result.is_ok(), change = %registry_change(before.as_ref(), after.as_ref()),
          "admin mutation");
    match result {
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
    }
}

/// The group's read budget state, when it has a budget.
fn budget_status(shared: &App, group: &str) -> Option<crate::consumers::budgets::BudgetStatus> {
    let (bytes_per_second, action) = shared.registry.get()?.budget_for(group)?;
    let budget = crate::consumers::budgets::Budget {
        bytes_per_second,
        action,
    };
    shared.budgets.status(group, Some(budget))
}

/// A lift's `?seconds=N` (default 3600, at most a week); `None` when it is not one.
fn lift_seconds(req: &Request<Incoming>) -> Option<u64> {
    let seconds = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("seconds=")))
        .map_or(Ok(3600), str::parse::<u64>);
    seconds.ok().filter(|s| (1..=604_800).contains(s))
}

fn bad_seconds() -> Response<Full<Bytes>> {
    reply(
        StatusCode::BAD_REQUEST,
        TEXT,
        "seconds must be a whole number from 1 to 604800\n",
    )
}

/// A time-limited exception an operator opens (a budget lift, a rewind window): recorded in
/// the state topic, logged as an admin mutation, answered with its end.
struct Window<'a> {
    /// The route, for the log.
    action: &'static str,
    /// What it is for (`group`, `producer`) and which one.
    kind: &'static str,
    target: &'a str,
    /// The change, for the log ("read budget lifted").
    change: &'static str,
    /// The answer's field holding the window's end (Unix seconds).
    until_field: &'static str,
}

/// Open `w` for the request's `?seconds=N` with `open` (which records it for the tier), unless
/// `missing` says there is nothing to open it for (404).
fn open_window(
    req: &Request<Incoming>,
    shared: &App,
    caller: &Caller,
    w: Window,
    missing: Option<String>,
    open: impl FnOnce(std::time::Duration, &str) -> Result<u64, String>,
) -> Response<Full<Bytes>> {
    let Some(seconds) = lift_seconds(req) else {
        return bad_seconds();
    };
    if let Some(text) = missing {
        return reply(StatusCode::NOT_FOUND, TEXT, text);
    }
    let by = format!("api:{}", caller.peer);
    let result = open(std::time::Duration::from_secs(seconds), &by);
    let (action, target) = (w.action, w.target);
    info!(peer = %caller.peer, auth = caller.via, action, target, seconds, ok = result.is_ok(),
          change = %format!("{target}: {} for {seconds} s", w.change), "admin mutation");
    if result.is_ok() {
        shared
            .ledger
            .audit()
            .emit(crate::control::audit::What::WindowOpened {
                window: w.change.replace(' ', "_"),
                subject: format!("{}:{target}", w.kind),
                seconds,
            });
    }
    match result {
        Ok(until) => json(&serde_json::json!({ w.kind: target, w.until_field: until })),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
    }
}

/// `POST /v1/producers/{entry}/budget/lift?seconds=N`: a producer entry's produce budget
/// (by its name, as in `tollgate_producer_over_budget{producer}`) stops being enforced for a
/// while, on every instance.
fn lift_producer(
    req: &Request<Incoming>,
    shared: &App,
    caller: &Caller,
    producer: &str,
) -> Response<Full<Bytes>> {
    let budgeted = shared.registry.get().is_some_and(|r| {
        r.producers
            .iter()
            .any(|p| p.name() == producer && p.produce_budget_bytes_per_second.is_some())
    });
    let missing =
        (!budgeted).then(|| format!("no producer entry {producer:?} with a produce budget\n"));
    let w = Window {
        action: "POST /v1/producers/{entry}/budget/lift",
        kind: "producer",
        target: producer,
        change: "produce budget lifted",
        until_field: "lifted_until",
    };
    open_window(req, shared, caller, w, missing, |period, by| {
        shared.produce_budgets.lift(producer, period, by)
    })
}

/// `POST /v1/groups/{group}/rewind/allow?seconds=N`: the group's commits may move its
/// offsets back freely for a while, on every instance (offset protection).
fn allow_rewind(
    req: &Request<Incoming>,
    shared: &App,
    caller: &Caller,
    group: &str,
) -> Response<Full<Bytes>> {
    let protected = shared
        .registry
        .get()
        .is_some_and(|r| r.rewind_limits(group).is_some());
    let missing = (!protected).then(|| {
        format!(
            "group {group:?} has no offset protection (max_rewind_records / max_rewind_seconds)\n"
        )
    });
    let w = Window {
        action: "POST /v1/groups/{group}/rewind/allow",
        kind: "group",
        target: group,
        change: "rewinds allowed",
        until_field: "rewind_allowed_until",
    };
    open_window(req, shared, caller, w, missing, |period, by| {
        shared.rewinds.allow(group, period, by)
    })
}

/// `POST /v1/groups/{group}/budget/lift?seconds=N` (default 3600, at most a week).
fn lift(
    req: &Request<Incoming>,
    shared: &App,
    caller: &Caller,
    group: &str,
) -> Response<Full<Bytes>> {
    let budgeted = shared
        .registry
        .get()
        .and_then(|r| r.budget_for(group))
        .is_some();
    let missing = (!budgeted).then(|| format!("group {group:?} has no read budget\n"));
    let w = Window {
        action: "POST /v1/groups/{group}/budget/lift",
        kind: "group",
        target: group,
        change: "read budget lifted",
        until_field: "lifted_until",
    };
    open_window(req, shared, caller, w, missing, |period, by| {
        shared.budgets.lift(group, period, by)
    })
}

/// `POST /v1/groups/{group}/promote`.
fn promote(
    req: &Request<Incoming>,
    shared: &App,
    caller: &Caller,
    group: &str,
) -> Response<Full<Bytes>> {
    let force = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force=1"));
    let Some(registry) = shared.registry.get() else {
        return no_registry();
    };
    let result = shared
        .lag
        .promote(group, &registry, "api", force, &shared.metrics);
    info!(peer = %caller.peer, auth = caller.via, action = "POST /v1/groups/{group}/promote",
              group, force, ok = result.is_ok(),
              change = %result.as_ref().map_or_else(|e| format!("none ({e})"), |_| format!("{group}: probation -> promoted")),
              "admin mutation");
    match result {
        Ok(record) => json(&record),
        Err(e) => reply(StatusCode::CONFLICT, TEXT, format!("{e}\n")),
    }
}

/// The read-only endpoints.
fn get(path: &str, shared: &App) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/" | "/ui" => reply(StatusCode::OK, "text/html; charset=utf-8", crate::admin::console::PAGE),
        "/v1/console" => json(&crate::admin::console::snapshot(shared)),
        "/readyz" => {
            if shared.shutting_down.load(Ordering::SeqCst) {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "shutting down\n")
            } else if shared.ready.load(Ordering::SeqCst) {
                // Still serving (taking every instance out of rotation for these would be an
                // outage), but said where operators look.
                reply(StatusCode::OK, TEXT, ready_text(shared))
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
        "/v1/groups" => json(&shared.groups.view()),
        "/v1/registry" => match shared.registry.loaded() {
            Some(l) => json(&l.view()),
            None => json(&serde_json::json!({"registry": null, "governance": "off"})),
        },
        "/v1/topics" => {
            let topics: Vec<serde_json::Value> = shared
                .usage
                .topics()
                .into_iter()
                .map(|(topic, (producers, consumers))| {
                    serde_json::json!({"topic": topic, "producers": producers, "consumers": consumers})
                })
                .collect();
            json(&topics)
        }
        "/v1/lag" => json(&shared.lag.statuses()),
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
            match shared.lag.status(&group) {
                Some(s) => {
                    let mut v = serde_json::to_value(&s).expect("serializable");
                    v["budget"] = serde_json::to_value(budget_status(shared, &group))
                        .expect("serializable");
                    json(&v)
                }
                None => reply(
                    StatusCode::NOT_FOUND,
                    TEXT,
                    format!("no lag data for group {group:?} (yet): no Tollgate instance saw it fetch, and the coordinator knows no commits of it\n"),
                ),
            }
        }
        path => match topic_view(path) {
            Some((topic, direction)) => {
                json(&shared.usage.topic_clients(&topic, direction))
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

/// `/readyz` of a serving instance: `ready`, with a warning line for each trouble that does
/// not stop it serving (a duplicate tier id, a missing state topic).
fn ready_text(shared: &App) -> String {
    let mut text = String::from("ready\n");
    if shared.metrics.tier_duplicate_instance_id.get() > 0 {
        text.push_str("warning: another live process uses this tier.instance_id\n");
    }
    if let Some(trouble) = shared.lag.store().trouble() {
        text.push_str(&format!("warning: {trouble}\n"));
    }
    text
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
