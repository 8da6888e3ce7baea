//! Start-up, accept loops and shutdown.
//!
//! [`start`] binds the bootstrap and admin listeners (a port in use is a clear error), probes
//! the upstream cluster with an ApiVersions handshake and a Metadata request until
//! `upstream.startup_timeout_ms` (an unreachable cluster is a clear error), opens a listener for
//! every broker the cluster names, and then serves. A `Semaphore` caps client connections; a
//! `watch` channel carries shutdown to every accept loop and connection.
//!
//! [`Running::shutdown`] stops accepting, lets every connection finish the requests it has
//! already read, and returns once all connections are gone or the grace period is over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::app::Shared;
use crate::app::{publish_registry_metrics, reload_registry};
use crate::attribution::Attribution;
use crate::config::Config;
use crate::connection::{self, ConnectionSettings};
use crate::groups::Groups;
use crate::heads::{Heads, Observed};
use crate::lag::Lag;
use crate::metrics::{GaugeGuard, Metrics};
use crate::registry::RegistryHandle;
use crate::security::tls::ServerTls;
use crate::stack::{build_stack, ConnInfo, ListenerKind, StackShared};
use crate::topic_ids::TopicIds;
use crate::topology::{NewListener, Topology, TopologySettings};

/// Where the topology announces the per-broker listeners it bound.
type NewListeners = tokio::sync::mpsc::UnboundedReceiver<NewListener>;
use crate::upstream::{ControlClient, LazyUpstream, UpstreamError, UpstreamSettings};

/// Start-up failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {addr} ({key}): {source}; choose a free address with {flag} or `{key}`"
    )]
    Bind {
        key: &'static str,
        flag: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start tiered reads: {0}")]
    Tiered(String),
    #[error("cannot load the TLS or SASL settings: {0}")]
    Security(String),
    #[error("cannot load the consumer registry (governance.registry): {0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("cannot serve the upstream cluster: {0}")]
    Topology(#[from] crate::topology::TopologyError),
    #[error(
        "cannot reach the upstream Kafka cluster at {servers} within {timeout:?} (last error: {last}); \
         check `upstream.bootstrap_servers` / --bootstrap-server and that the brokers are up"
    )]
    Upstream {
        servers: String,
        timeout: Duration,
        last: String,
    },
}

/// A running proxy.
pub struct Running {
    /// Address of the bootstrap listener (useful when `proxy.listen` used port 0).
    pub bootstrap_addr: SocketAddr,
    /// Address of the admin HTTP listener.
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Start a proxy with a validated config.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let bind = |addr: &str, key: &'static str, flag: &'static str| {
        let addr = addr.to_string();
        async move {
            TcpListener::bind(&addr)
                .await
                .map_err(|source| StartError::Bind {
                    key,
                    flag,
                    addr,
                    source,
                })
        }
    };
    let bootstrap = bind(&config.proxy.listen, "proxy.listen", "--listen").await?;
    let admin = bind(&config.admin.listen, "admin.listen", "--admin-listen").await?;
    let bootstrap_addr = bootstrap
        .local_addr()
        .expect("bound listener has an address");
    let admin_addr = admin.local_addr().expect("bound listener has an address");
    let (shared, new_listeners) = build_shared(config)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // The admin listener answers /healthz and /readyz (503) while the probe runs.
    tasks.push(tokio::spawn(crate::admin::serve(admin, shared.clone())));
    for (tls, listener) in [(&shared.client_tls, "client"), (&shared.admin_tls, "admin")] {
        if let Some(tls) = tls {
            tasks.push(tokio::spawn(tls.clone().watch(
                listener,
                shared.metrics.clone(),
                shutdown_rx.clone(),
            )));
        }
    }
    if let Err(e) = probe(&shared).await {
        for t in &tasks {
            t.abort();
        }
        return Err(e);
    }
    open_state(&shared).await?;
    shared.ready.store(true, Ordering::SeqCst);
    shared.metrics.ready.set(1);
    info!(listen = %bootstrap_addr, admin = %admin_addr,
          brokers = shared.topology.brokers().len(), "tollgate is ready");
    tasks.push(tokio::spawn(accept_loop(
        bootstrap,
        ListenerKind::Bootstrap,
        shared.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(broker_listeners(
        new_listeners,
        shared.clone(),
        shutdown_rx.clone(),
    )));
    spawn_background(&shared, admin_addr, &shutdown_rx, &mut tasks)?;
    Ok(Running {
        bootstrap_addr,
        admin_addr,
        shared,
        shutdown_tx,
        tasks,
    })
}

/// Everything the proxy's tasks share: settings for both clusters, TLS, the registry and the
/// peer components. Returns the receiver of the per-broker listeners to open.
fn build_shared(config: Config) -> Result<(Arc<Shared>, NewListeners), StartError> {
    let metrics = Arc::new(Metrics::new());
    let (topology, new_listeners) = Topology::new(
        TopologySettings {
            advertised_host: config.advertised_host(),
            bind_host: config.broker_bind_host(),
            port_base: config.proxy.broker_port_base,
            node_id_base: config.proxy.node_id_base,
            max_brokers: config.proxy.max_brokers,
        },
        metrics.clone(),
    );
    let plain = UpstreamSettings::plain(
        Duration::from_millis(config.upstream.connect_timeout_ms),
        config.upstream.max_response_bytes,
    );
    let upstream = plain
        .clone()
        .secured(&config.upstream.tls, config.upstream.sasl.as_ref())
        .map_err(|e| StartError::Security(format!("upstream: {e:#}")))?;
    let secondary = plain
        .secured(
            &config.tiered.secondary_tls,
            config.tiered.secondary_sasl.as_ref(),
        )
        .map_err(|e| StartError::Security(format!("tiered secondary: {e:#}")))?;
    let load_tls = |cfg: &Option<crate::security::ServerTlsConfig>, key: &str| {
        cfg.as_ref()
            .map(|c| ServerTls::new(c).map(Arc::new))
            .transpose()
            .map_err(|e| StartError::Security(format!("{key}: {e}")))
    };
    let client_tls = load_tls(&config.proxy.tls, "proxy.tls")?;
    let admin_tls = load_tls(&config.admin.tls, "admin.tls")?;
    let registry = Arc::new(match &config.governance.registry {
        Some(path) => RegistryHandle::open(std::path::Path::new(path))?,
        None => RegistryHandle::disabled(),
    });
    publish_registry_metrics(&metrics, &registry);
    let attribution = Arc::new(Attribution::new(
        config.attribution.clone(),
        metrics.clone(),
    ));
    let groups_idle = Duration::from_secs(config.attribution.idle_series_seconds.min(300));
    let (heads, topic_ids) = (Arc::new(Heads::new()), Arc::new(TopicIds::new()));
    let (groups, lag) = (
        Arc::new(Groups::new(groups_idle)),
        Arc::new(Lag::new(config.lag.clone())),
    );
    let refusals = Arc::new(crate::refusals::Refusals::new());
    let budgets = Arc::new(crate::budgets::Budgets::new(metrics.clone()));
    let tiered = config.tiered.enabled.then(|| {
        attribution.set_tiered_topics(config.tiered.topics.iter().cloned());
        Arc::new(crate::tiered::Tiered::new(
            config.tiered.clone(),
            config.upstream.bootstrap_servers.clone(),
            upstream.clone(),
            secondary,
            metrics.clone(),
        ))
    });
    let shared = Arc::new(Shared {
        stack: StackShared {
            metrics: metrics.clone(),
            topology: topology.clone(),
            heads: heads.clone(),
            topic_ids: topic_ids.clone(),
            attribution: attribution.clone(),
            groups: groups.clone(),
            lag: lag.clone(),
            refusals: refusals.clone(),
            budgets: budgets.clone(),
            registry: registry.clone(),
            tiered: tiered.clone(),
            require_authentication: config.governance.require_authentication,
            sasl: crate::layers::sasl::SaslLayer::new(
                config.sasl_required(),
                &config.proxy.sasl.oauthbearer_principal_claim,
                metrics.clone(),
            ),
            own_topics: crate::layers::own_topics::OwnTopicsLayer::new(
                config.own_topics(),
                metrics.clone(),
            ),
        },
        tiered,
        syncs_stop: Arc::new(AtomicBool::new(false)),
        client_tls,
        admin_tls,
        heads,
        topic_ids,
        attribution,
        groups,
        lag,
        refusals,
        budgets,
        registry,
        conn_limit: Arc::new(Semaphore::new(config.proxy.max_connections)),
        config,
        metrics,
        topology,
        upstream,
        inventory: Arc::default(),
        ready: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        next_conn_id: AtomicU64::new(1),
    });
    Ok((shared, new_listeners))
}

/// Durable state (probation promotions): loaded before serving, so every decision starts
/// from the shared state. Never fatal: without it, state is kept in memory.
async fn open_state(shared: &Shared) -> Result<(), StartError> {
    if shared.config.state.topic.is_empty() {
        return Ok(());
    }
    let props = crate::security::rdkafka_props(
        &shared.config.upstream.tls,
        shared.config.upstream.sasl.as_ref(),
    )
    .map_err(|e| StartError::Security(e.to_string()))?;
    let store = crate::state::StateStore::open(
        shared.config.upstream.bootstrap_servers.clone(),
        props,
        shared.config.state.topic.clone(),
        Duration::from_millis(shared.config.state.load_timeout_ms),
    )
    .await;
    shared.metrics.state_store_up.set(i64::from(store.is_up()));
    let store = Arc::new(store);
    shared.lag.set_state(store.clone());
    shared.budgets.set_state(store);
    Ok(())
}

/// The periodic tasks: registry watch, lag evaluation, expiry, tiered reads, the cluster
/// view, the tier's sharing, the metadata refresh.
fn spawn_background(
    shared: &Arc<Shared>,
    admin_addr: SocketAddr,
    shutdown_rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), StartError> {
    // Always: without it, SIGHUP (which operators send to reload) would end the process.
    tasks.push(tokio::spawn(watch_registry(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(evaluate_lag(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(sweep(shared.clone(), shutdown_rx.clone())));
    if let Some(t) = &shared.tiered {
        spawn_tiered(shared, t, shutdown_rx, tasks)?;
    }
    let view = crate::coordinator::View {
        groups: shared.groups.clone(),
        lag: shared.lag.clone(),
        registry: shared.registry.clone(),
        topology: shared.topology.clone(),
        metrics: shared.metrics.clone(),
        upstream: shared.upstream.clone(),
        bootstrap: shared.config.upstream.bootstrap_servers.clone(),
        cfg: shared.config.tier.clone(),
    };
    tasks.push(tokio::spawn(crate::coordinator::run(
        Arc::new(view),
        shutdown_rx.clone(),
    )));
    let instance_id = match shared.config.tier.instance_id.as_str() {
        "" => crate::tier::default_instance_id(admin_addr.port()),
        id => id.to_string(),
    };
    info!(instance = instance_id, "tier instance id");
    let sharing = crate::tier::Sharing {
        attribution: shared.attribution.clone(),
        groups: shared.groups.clone(),
        lag: shared.lag.clone(),
        budgets: shared.budgets.clone(),
        metrics: shared.metrics.clone(),
        every: Duration::from_millis(shared.config.tier.share_interval_ms),
    };
    tasks.push(tokio::spawn(crate::tier::run(
        sharing,
        instance_id,
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(refresh_metadata(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(learn_topic_ids(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    Ok(())
}

/// Tiered reads: the offset-syncs follower thread and the refresh of mirrored heads.
fn spawn_tiered(
    shared: &Arc<Shared>,
    t: &Arc<crate::tiered::Tiered>,
    shutdown_rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), StartError> {
    let c = &shared.config;
    let on_primary = c.tiered.offset_syncs_cluster == "primary";
    let bootstrap = if on_primary {
        &c.upstream.bootstrap_servers
    } else {
        &c.tiered.secondary_bootstrap_servers
    };
    let (bootstrap, topic) = (bootstrap.join(","), c.tiered.offset_syncs_topic.clone());
    let props = if on_primary {
        crate::security::rdkafka_props(&c.upstream.tls, c.upstream.sasl.as_ref())
    } else {
        crate::security::rdkafka_props(&c.tiered.secondary_tls, c.tiered.secondary_sasl.as_ref())
    }
    .map_err(|e| StartError::Security(e.to_string()))?;
    let (syncs, metrics, stop) = (
        t.syncs.clone(),
        shared.metrics.clone(),
        shared.syncs_stop.clone(),
    );
    std::thread::Builder::new()
        .name("tollgate-offset-syncs".into())
        .spawn(move || crate::tiered::follow_syncs(bootstrap, props, topic, syncs, metrics, stop))
        .map_err(|e| StartError::Tiered(e.to_string()))?;
    tasks.push(tokio::spawn(crate::tiered::refresh(
        t.clone(),
        shared.heads.clone(),
        shutdown_rx.clone(),
    )));
    Ok(())
}

impl Running {
    /// Stop accepting, drain in-flight requests within `proxy.shutdown_grace_ms`, stop.
    /// Returns `true` when every connection finished within the grace period.
    pub async fn shutdown(self) -> bool {
        let grace = self.shared.config.shutdown_grace();
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.metrics.ready.set(0);
        let _ = self.shutdown_tx.send(true);
        self.shared.syncs_stop.store(true, Ordering::SeqCst);
        let max = self.shared.config.proxy.max_connections as u32;
        let drained = tokio::time::timeout(grace, self.shared.conn_limit.acquire_many(max))
            .await
            .is_ok();
        if drained {
            info!("all client connections drained");
        } else {
            warn!(
                open = self.shared.metrics.connections_open.get(),
                ?grace,
                "grace period over; closing remaining connections"
            );
        }
        for t in &self.tasks {
            t.abort();
        }
        // Wait until the tasks are gone, so their listeners are closed when this returns (a
        // client connecting right after shutdown is refused, not accepted by a dying loop).
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            futures::future::join_all(self.tasks),
        )
        .await;
        drained
    }
}

/// Ask the cluster for Metadata until it answers or the start-up timeout passes.
async fn probe(shared: &Shared) -> Result<(), StartError> {
    let timeout = Duration::from_millis(shared.config.upstream.startup_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match refresh_once(shared, &shared.config.upstream.bootstrap_servers).await {
            Ok(()) => return Ok(()),
            // A broker we cannot give a listener to will not fix itself: say so now.
            Err(RefreshError::Topology(e)) => return Err(StartError::Topology(e)),
            Err(RefreshError::Upstream(e)) => {
                debug!(error = %e, "upstream probe failed; retrying");
                e
            }
        };
        if tokio::time::Instant::now() + Duration::from_millis(500) > deadline {
            return Err(StartError::Upstream {
                servers: shared.config.upstream.bootstrap_servers.join(","),
                timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
}

/// One Metadata round trip through the first reachable server; registers every broker.
async fn refresh_once(shared: &Shared, servers: &[String]) -> Result<(), RefreshError> {
    let mut last = String::from("no servers");
    for server in servers {
        let metadata = async {
            let client =
                ControlClient::connect(server, &shared.upstream, shared.metrics.clone()).await?;
            client.metadata().await
        }
        .await;
        match metadata {
            Ok(md) => {
                for b in &md.brokers {
                    shared
                        .topology
                        .advertise(b.node_id.0, &b.host, b.port)
                        .await?;
                }
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(RefreshError::Upstream(last))
}

/// Periodic Metadata so brokers that join are learned even when no client asks.
async fn refresh_metadata(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(shared.config.upstream.metadata_refresh_ms);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Known brokers first (the bootstrap list may be stale), then the bootstrap servers.
        let mut servers: Vec<String> = shared
            .topology
            .brokers()
            .into_iter()
            .map(|b| b.upstream)
            .collect();
        servers.extend(shared.config.upstream.bootstrap_servers.iter().cloned());
        if let Err(e) = refresh_once(&shared, &servers).await {
            shared.metrics.metadata_refresh_errors.inc();
            warn!(error = %e, "periodic metadata refresh failed");
        }
    }
}

async fn broker_listeners(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<NewListener>,
    shared: Arc<Shared>,
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

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Shared>,
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

async fn handle_client(
    socket: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    shared: Arc<Shared>,
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
fn tls_refused(shared: &Shared, conn: &ConnInfo, error: &str) {
    shared
        .metrics
        .tls_handshake_errors
        .with_label_values(&["client"])
        .inc();
    debug!(conn = conn.id, peer = %conn.peer, error, "client TLS handshake failed");
}

/// Serve an accepted (and, with TLS, handshaken) client connection.
async fn serve_client<R, W>(
    halves: (R, W),
    conn: Arc<ConnInfo>,
    candidates: Vec<String>,
    shared: Arc<Shared>,
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
    let service = build_stack(&shared.stack, upstream);
    let settings = ConnectionSettings {
        max_frame_bytes: shared.config.proxy.max_frame_bytes,
        max_in_flight: shared.config.proxy.max_in_flight_per_connection,
        first_request_timeout: Duration::from_millis(shared.config.proxy.first_request_timeout_ms),
        idle_timeout: Duration::from_millis(shared.config.proxy.idle_timeout_ms),
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
fn upstream_candidates(kind: ListenerKind, shared: &Shared) -> Result<Vec<String>, String> {
    match kind {
        ListenerKind::Bootstrap => Ok(shared.config.upstream.bootstrap_servers.clone()),
        ListenerKind::Broker(node_id) => match shared.topology.upstream_addr(node_id) {
            Some(a) => Ok(vec![a]),
            None => Err(format!("broker {node_id} is not known")),
        },
    }
}

/// Expire what nobody used for `attribution.idle_series_seconds`: attribution series and
/// activity rows, partition heads lag does not track, group state.
async fn sweep(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let idle = Duration::from_secs(shared.attribution.config().idle_series_seconds);
    let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let removed = shared.attribution.sweep();
        if removed > 0 {
            debug!(removed, "removed idle attribution series");
        }
        let tracked = shared.lag.tracked_partitions();
        shared.heads.expire(idle, |tp| tracked.contains(tp));
        shared.groups.expire();
    }
}

/// Least time between two all-topics Metadata requests for unknown topic ids.
const TOPIC_IDS_EVERY: Duration = Duration::from_secs(5);

/// When a request or response names a topic id this instance does not know, ask the cluster
/// for every topic's metadata (see [`crate::topic_ids`]).
async fn learn_topic_ids(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.topic_ids.missed() => {}
            _ = shutdown.changed() => return,
        }
        let learned = async {
            let server = shared.config.upstream.bootstrap_servers.first()?;
            let client = ControlClient::connect(server, &shared.upstream, shared.metrics.clone())
                .await
                .ok()?;
            client.metadata_all().await.ok()
        }
        .await;
        match learned {
            Some(md) => shared.topic_ids.learn(
                md.topics
                    .iter()
                    .filter_map(|t| t.name.as_ref().map(|n| (t.topic_id, n.to_string()))),
            ),
            None => shared.metrics.metadata_refresh_errors.inc(),
        }
        tokio::select! {
            _ = tokio::time::sleep(TOPIC_IDS_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Reload the registry when its file changes (polled) and on SIGHUP.
async fn watch_registry(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let every = shared.config.governance.watch_interval_ms;
    let mut tick = tokio::time::interval(Duration::from_millis(every.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = std::future::pending::<()>();
        tokio::select! {
            _ = tick.tick(), if every > 0 && shared.registry.get().is_some() => {
                if shared.registry.file_changed() {
                    let _ = reload_registry(&shared, "file_change");
                }
            }
            _ = hup_fut => {
                if shared.registry.get().is_some() {
                    let _ = reload_registry(&shared, "sighup");
                } else {
                    info!("SIGHUP: no consumer registry configured (governance.registry); nothing to reload");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Recompute lag, detections and group statuses every `lag.evaluate_interval_ms`; refresh the
/// heads of quiet partitions every `lag.head_refresh_seconds`.
async fn evaluate_lag(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(shared.config.lag.evaluate_interval_ms);
    let refresh = Duration::from_secs(shared.config.lag.head_refresh_seconds);
    let mut last_refresh = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if !refresh.is_zero() && last_refresh.elapsed() >= refresh {
            last_refresh = tokio::time::Instant::now();
            if let Err(e) = refresh_quiet_heads(&shared, refresh).await {
                shared.metrics.metadata_refresh_errors.inc();
                debug!(error = %e, "refreshing quiet partition heads failed");
            }
        }
        let registry = shared.registry.get();
        shared.lag.evaluate(
            &shared.heads,
            &shared.groups,
            registry.as_deref(),
            &shared.metrics,
        );
    }
}

/// ListOffsets (latest) to the leaders of tracked partitions that no traffic through this
/// instance has shown for `quiet`, so their record lag follows producers that write elsewhere.
async fn refresh_quiet_heads(shared: &Shared, quiet: Duration) -> Result<(), UpstreamError> {
    let quiet_parts = shared.heads.quiet(shared.lag.tracked_partitions(), quiet);
    if quiet_parts.is_empty() {
        return Ok(());
    }
    let mut topics: Vec<String> = quiet_parts.iter().map(|tp| tp.0.clone()).collect();
    topics.dedup();
    let mut last = None;
    let mut md = None;
    for server in &shared.config.upstream.bootstrap_servers {
        match ControlClient::connect(server, &shared.upstream, shared.metrics.clone()).await {
            Ok(c) => match c.metadata_for(&topics).await {
                Ok(m) => {
                    md = Some(m);
                    break;
                }
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    let Some(md) = md else {
        return Err(last.unwrap_or(UpstreamError::Closed { addr: "-".into() }));
    };
    let addr_of: std::collections::HashMap<i32, String> = md
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
        .collect();
    let mut by_leader: std::collections::HashMap<String, Vec<(String, i32)>> = Default::default();
    for t in &md.topics {
        let Some(name) = t.name.as_ref().map(|n| n.to_string()) else {
            continue;
        };
        for p in &t.partitions {
            let tp = (name.clone(), p.partition_index);
            if quiet_parts.contains(&tp) {
                if let Some(addr) = addr_of.get(&p.leader_id.0) {
                    by_leader.entry(addr.clone()).or_default().push(tp);
                }
            }
        }
    }
    for (addr, parts) in by_leader {
        let client =
            ControlClient::connect(&addr, &shared.upstream, shared.metrics.clone()).await?;
        let heads = client.heads(&parts).await?;
        let tps: Vec<(String, i32)> = heads.iter().map(|h| (h.0.clone(), h.1)).collect();
        shared.heads.observe(
            tps.iter()
                .zip(&heads)
                .map(|(tp, h)| (tp, Observed::offsets(h.2, h.3, -1))),
        );
    }
    Ok(())
}
