//! Accepting clients: the bootstrap and per-broker listeners, one task per connection (TLS
//! handshake, connection limit, the connection's own stack and its lazily opened broker
//! connection).

use super::connection;
use super::connection::ConnectionSettings;
use crate::app::App;
use crate::brokers::topology::NewListener;
use crate::brokers::upstream::LazyUpstream;
use crate::control::audit::What;
use crate::layers::stack::{ConnInfo, ListenerKind};
use crate::metrics::GaugeGuard;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

pub(super) async fn broker_listeners(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<NewListener>,
    shared: Arc<App>,
    shutdown: watch::Receiver<bool>,
) {
    while let Some(NewListener { node_id, listener }) = rx.recv().await {
        tokio::spawn(accept_loop(
            listener,
            ListenerKind::Broker(node_id),
            shared.clone(),
            shutdown.clone(),
        ));
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = shared.conn_limit.clone().try_acquire_owned() else {
            shared
                .metrics
                .connections_refused
                .with_label_values(&["max_connections"])
                .inc();
            warn!(%peer, max = shared.config.proxy.max_connections,
                  "connection refused: proxy.max_connections reached");
            continue;
        };
        shared.metrics.connections_accepted.inc();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            handle_client(socket, peer, kind, shared, shutdown).await;
        });
    }
}

pub(super) async fn handle_client(
    socket: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    shared: Arc<App>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = socket.set_nodelay(true);
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let candidates = match upstream_candidates(kind, &shared) {
        Ok(c) => c,
        Err(e) => {
            shared
                .metrics
                .connections_refused
                .with_label_values(&["upstream_unavailable"])
                .inc();
            warn!(conn = id, %peer, listener = ?kind, error = %e,
                  "no broker for this listener; closing the client connection");
            return;
        }
    };
    debug!(conn = id, %peer, listener = ?kind, "client connected");
    let conn = Arc::new(ConnInfo::new(id, peer, kind));
    let Some(tls) = shared.client_tls.clone() else {
        return serve_client(socket.into_split(), conn, candidates, shared, shutdown).await;
    };
    // The handshake is bounded like a first request: a client that opens a TLS port and says
    // nothing (or speaks plaintext) holds a slot for no longer.
    let limit = Duration::from_millis(shared.config.proxy.first_request_timeout_ms.max(1));
    match tokio::time::timeout(limit, tls.acceptor().accept(socket)).await {
        Ok(Ok(stream)) => {
            if let Some(principal) = tls.peer_principal(stream.get_ref().1) {
                shared.ledger.audit().emit(What::Authenticated {
                    principal: principal.clone(),
                    mechanism: "mTLS".into(),
                    peer: peer.to_string(),
                });
                conn.set_tls_principal(principal);
            }
            serve_client(tokio::io::split(stream), conn, candidates, shared, shutdown).await
        }
        Ok(Err(e)) => tls_refused(&shared, &conn, &e.to_string()),
        Err(_) => tls_refused(&shared, &conn, "handshake timed out"),
    }
}

/// A client's TLS handshake failed: counted, and logged at debug (scanners and plaintext
/// clients on a TLS port would otherwise flood the log).
pub(super) fn tls_refused(shared: &App, conn: &ConnInfo, error: &str) {
    shared
        .metrics
        .tls_handshake_errors
        .with_label_values(&["client"])
        .inc();
    debug!(conn = conn.id, peer = %conn.peer, error, "client TLS handshake failed");
}

/// Serve an accepted (and, with TLS, handshaken) client connection.
pub(super) async fn serve_client<R, W>(
    halves: (R, W),
    conn: Arc<ConnInfo>,
    candidates: Vec<String>,
    shared: Arc<App>,
    shutdown: watch::Receiver<bool>,
) where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _listed = shared.inventory.register(conn.clone());
    // The broker connection is opened on the first request (see `LazyUpstream`).
    let upstream = Arc::new(LazyUpstream::new(
        candidates,
        shared.upstream.clone(),
        shared.metrics.clone(),
    ));
    let service = shared.stack.for_connection(upstream);
    let settings = ConnectionSettings {
        max_frame_bytes: shared.config.proxy.max_frame_bytes,
        max_in_flight: shared.config.proxy.max_in_flight_per_connection,
        first_request_timeout: Duration::from_millis(shared.config.proxy.first_request_timeout_ms),
        idle_timeout: Duration::from_millis(shared.config.proxy.idle_timeout_ms),
        max_buffered_bytes: shared.config.proxy.max_buffered_bytes_per_connection,
        authentication_timeout: if shared.config.sasl_required() {
            Duration::from_millis(shared.config.proxy.sasl.authentication_timeout_ms)
        } else {
            Duration::ZERO
        },
    };
    let _open = GaugeGuard::inc(shared.metrics.connections_open.clone());
    connection::serve(
        halves,
        conn,
        service,
        settings,
        shared.metrics.clone(),
        shutdown,
    )
    .await;
}

/// The broker addresses a client connection on this listener is forwarded to.
pub(super) fn upstream_candidates(kind: ListenerKind, shared: &App) -> Result<Vec<String>, String> {
    match kind {
        ListenerKind::Bootstrap => Ok(shared.config.upstream.bootstrap_servers.clone()),
        ListenerKind::Broker(node_id) => match shared.topology.upstream_addr(node_id) {
            Some(a) => Ok(vec![a]),
            None => Err(format!("broker {node_id} is not known")),
        },
    }
}
