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
//!
//! This file starts and stops; the listeners and client connections are in `accept.rs`, the
//! periodic tasks in `tasks.rs`.

mod accept;
pub(crate) mod connection;
mod tasks;

use accept::{accept_loop, broker_listeners};
use tasks::{
    evaluate_lag, learn_topic_ids, refresh_metadata, refresh_once, roll_ledger, sweep,
    watch_registry, RefreshError,
};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::app::App;
pub(crate) use crate::app::StartError;
use crate::control::config::Config;
use crate::layers::stack::ListenerKind;

/// A running proxy.
pub struct Running {
    /// Address of the bootstrap listener (useful when `proxy.listen` used port 0).
    pub bootstrap_addr: SocketAddr,
    /// Address of the admin HTTP listener.
    pub admin_addr: SocketAddr,
    pub shared: Arc<App>,
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
    let (shared, new_listeners) = App::build(config)?;
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
    let instance_id = match shared.config.tier.instance_id.as_str() {
        "" => crate::peers::default_instance_id(bootstrap_addr.port()),
        id => id.to_string(),
    };
    start_audit(&shared, &instance_id)?;
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
    spawn_background(&shared, instance_id, &shutdown_rx, &mut tasks)?;
    Ok(Running {
        bootstrap_addr,
        admin_addr,
        shared,
        shutdown_tx,
        tasks,
    })
}

/// Durable state (probation promotions): loaded before serving, so every decision starts
/// from the shared state. Never fatal: without it, state is kept in memory.
async fn open_state(shared: &App) -> Result<(), StartError> {
    if shared.config.state.topic.is_empty() {
        return Ok(());
    }
    let props = shared
        .config
        .upstream_rdkafka_props()
        .map_err(|e| StartError::Security(e.to_string()))?;
    let store = crate::control::state::StateStore::open(
        shared.config.upstream.bootstrap_servers.clone(),
        props,
        shared.config.state.topic.clone(),
        Duration::from_millis(shared.config.state.load_timeout_ms),
    )
    .await;
    shared.metrics.state_store_up.set(i64::from(store.is_up()));
    let store = Arc::new(store);
    shared.lag.set_state(store.clone());
    shared.budgets.set_state(store.clone());
    shared.produce_budgets.set_state(store.clone());
    shared.rewinds.set_state(store);
    Ok(())
}

/// The audit trail's writer: events name this instance, and go to `audit.topic` and
/// `audit.file` from now on (those emitted before wait in the queue).
fn start_audit(shared: &App, instance_id: &str) -> Result<(), StartError> {
    let audit = shared.ledger.audit();
    audit.set_instance(instance_id);
    let props = shared
        .config
        .upstream_rdkafka_props()
        .map_err(|e| StartError::Security(e.to_string()))?;
    audit.start(shared.config.upstream.bootstrap_servers.clone(), props);
    Ok(())
}

/// The periodic tasks: registry watch, lag evaluation, expiry, tiered reads, the cluster
/// view, the tier's sharing, the metadata refresh.
fn spawn_background(
    shared: &Arc<App>,
    instance_id: String,
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
    let view = crate::consumers::coordinator::View {
        groups: shared.groups.clone(),
        lag: shared.lag.clone(),
        registry: shared.registry.clone(),
        topology: shared.topology.clone(),
        metrics: shared.metrics.clone(),
        upstream: shared.upstream.clone(),
        bootstrap: shared.config.upstream.bootstrap_servers.clone(),
        cfg: shared.config.tier.clone(),
    };
    tasks.push(tokio::spawn(crate::consumers::coordinator::run(
        Arc::new(view),
        shutdown_rx.clone(),
    )));
    info!(instance = instance_id, "tier instance id");
    tasks.push(tokio::spawn(roll_ledger(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    let sharing = crate::peers::Sharing {
        groups: shared.groups.clone(),
        lag: shared.lag.clone(),
        budgets: shared.budgets.clone(),
        writes: shared.produce_budgets.clone(),
        metrics: shared.metrics.clone(),
        every: Duration::from_millis(shared.config.tier.share_interval_ms),
    };
    tasks.push(tokio::spawn(crate::peers::run(
        sharing,
        instance_id,
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(refresh_metadata(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    shared.topic_ids.learn_all_soon();
    tasks.push(tokio::spawn(learn_topic_ids(
        shared.clone(),
        shutdown_rx.clone(),
    )));
    Ok(())
}

/// Tiered reads: the offset-syncs follower thread and the refresh of mirrored heads.
fn spawn_tiered(
    shared: &Arc<App>,
    t: &Arc<crate::tiered::Tiered>,
    shutdown_rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), StartError> {
    let c = &shared.config;
    let on_primary = c.tiered.offset_syncs_cluster == crate::control::config::SyncsCluster::Primary;
    let bootstrap = if on_primary {
        &c.upstream.bootstrap_servers
    } else {
        &c.tiered.secondary_bootstrap_servers
    };
    let (bootstrap, topic) = (bootstrap.join(","), c.tiered.offset_syncs_topic.clone());
    let props = if on_primary {
        c.upstream_rdkafka_props()
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
        // The last, partial usage window, so that showback loses nothing on a restart.
        let ledger = self.shared.ledger.clone();
        let _ = tokio::task::spawn_blocking(move || {
            ledger.roll(true);
            ledger.audit().flush(Duration::from_secs(10));
        })
        .await;
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
async fn probe(shared: &App) -> Result<(), StartError> {
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
