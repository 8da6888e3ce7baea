//! The composition root: [`App::build`] is the one place where a proxy's parts are made and
//! wired, each given the narrow inputs it uses. [`App`] holds them side by side (settings,
//! metrics, the cluster map, the peer components, the policy layers built once, TLS); the
//! server ([`crate::proxy`]) runs the listeners and tasks over it, and the admin API
//! ([`crate::admin`]) reads it and calls [`reload_registry`]. Neither imports the other.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::brokers::topic_ids::TopicIds;
use crate::brokers::topology::{NewListener, Topology, TopologySettings};
use crate::brokers::upstream::UpstreamSettings;
use crate::consumers::budgets::{Budgets, Kind};
use crate::consumers::decision::Decider;
use crate::consumers::groups::Groups;
use crate::consumers::heads::Heads;
use crate::consumers::lag::Lag;
use crate::consumers::ledger::Ledger;
use crate::consumers::refusals::Refusals;
use crate::consumers::rewinds::Rewinds;
use crate::consumers::usage::Usage;
use crate::control::audit::{Audit, What};
use crate::control::config::Config;
use crate::control::registry::RegistryHandle;
use crate::layers;
use crate::layers::stack::Stack;
use crate::metrics::Metrics;
use crate::security::tls::ServerTls;
use crate::tiered::Tiered;

/// Where the topology announces the per-broker listeners it bound.
pub(crate) type NewListeners = tokio::sync::mpsc::UnboundedReceiver<NewListener>;

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
    Registry(#[from] crate::control::registry::RegistryError),
    #[error("cannot serve the upstream cluster: {0}")]
    Topology(#[from] crate::brokers::topology::TopologyError),
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

/// One proxy: what every task shares.
pub struct App {
    pub(crate) config: Config,
    pub metrics: Arc<Metrics>,
    pub topology: Arc<Topology>,
    /// The policy layers, built once; each connection's stack is made from them.
    pub(crate) stack: Stack,
    pub(crate) upstream: UpstreamSettings,
    pub(crate) inventory: Arc<crate::consumers::identity::Inventory>,
    /// The peer components: each owns one kind of state behind its own API.
    pub(crate) heads: Arc<Heads>,
    pub(crate) topic_ids: Arc<TopicIds>,
    pub(crate) usage: Arc<Usage>,
    pub(crate) groups: Arc<Groups>,
    pub(crate) lag: Arc<Lag>,
    pub(crate) refusals: Arc<Refusals>,
    pub(crate) budgets: Arc<Budgets>,
    /// Registered producers' produce budgets.
    pub(crate) produce_budgets: Arc<Budgets>,
    /// Offset protection's rewind windows.
    pub(crate) rewinds: Arc<Rewinds>,
    /// Usage windows and the audit trail.
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) registry: Arc<RegistryHandle>,
    /// Tiered reads, when `tiered.enabled`.
    pub(crate) tiered: Option<Arc<Tiered>>,
    /// Stops the offset-syncs reader thread.
    pub(crate) syncs_stop: Arc<AtomicBool>,
    /// TLS on the client listeners (`proxy.tls`).
    pub(crate) client_tls: Option<Arc<ServerTls>>,
    /// TLS on the admin listener (`admin.tls`).
    pub(crate) admin_tls: Option<Arc<ServerTls>>,
    pub(crate) ready: AtomicBool,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) conn_limit: Arc<Semaphore>,
    pub(crate) next_conn_id: AtomicU64,
}

/// The peer components, before they are wired into the layers.
struct Components {
    heads: Arc<Heads>,
    topic_ids: Arc<TopicIds>,
    usage: Arc<Usage>,
    groups: Arc<Groups>,
    lag: Arc<Lag>,
    refusals: Arc<Refusals>,
    budgets: Arc<Budgets>,
    produce_budgets: Arc<Budgets>,
    rewinds: Arc<Rewinds>,
    ledger: Arc<Ledger>,
    registry: Arc<RegistryHandle>,
    tiered: Option<Arc<Tiered>>,
}

impl App {
    /// Build every part of a proxy from a validated config. Returns the receiver of the
    /// per-broker listeners to open.
    pub(crate) fn build(config: Config) -> Result<(Arc<App>, NewListeners), StartError> {
        let metrics = Arc::new(Metrics::new());
        let (topology, new_listeners) = Topology::new(topology_settings(&config), metrics.clone());
        let (upstream, secondary) = cluster_settings(&config)?;
        let load_tls = |cfg: &Option<crate::security::ServerTlsConfig>, key: &str| {
            cfg.as_ref()
                .map(|c| ServerTls::new(c).map(Arc::new))
                .transpose()
                .map_err(|e| StartError::Security(format!("{key}: {e}")))
        };
        let client_tls = load_tls(&config.proxy.tls, "proxy.tls")?;
        let admin_tls = load_tls(&config.admin.tls, "admin.tls")?;
        let c = components(&config, &metrics, &upstream, secondary)?;
        let stack = stack(&config, &metrics, &topology, &c);
        let app = App {
            stack,
            syncs_stop: Arc::new(AtomicBool::new(false)),
            client_tls,
            admin_tls,
            heads: c.heads,
            topic_ids: c.topic_ids,
            usage: c.usage,
            groups: c.groups,
            lag: c.lag,
            refusals: c.refusals,
            budgets: c.budgets,
            produce_budgets: c.produce_budgets,
            rewinds: c.rewinds,
            ledger: c.ledger,
            registry: c.registry,
            tiered: c.tiered,
            conn_limit: Arc::new(Semaphore::new(config.proxy.max_connections)),
            config,
            metrics,
            topology,
            upstream,
            inventory: Arc::default(),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
        };
        Ok((Arc::new(app), new_listeners))
    }
}

fn topology_settings(config: &Config) -> TopologySettings {
    TopologySettings {
        advertised_host: config.advertised_host(),
        bind_host: config.broker_bind_host(),
        port_base: config.proxy.broker_port_base,
        node_id_base: config.proxy.node_id_base,
        max_brokers: config.proxy.max_brokers,
    }
}

/// How Tollgate connects to the primary cluster and to the secondary (TLS, SASL, limits).
fn cluster_settings(config: &Config) -> Result<(UpstreamSettings, UpstreamSettings), StartError> {
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
    Ok((upstream, secondary))
}

/// The peer components, each made once.
fn components(
    config: &Config,
    metrics: &Arc<Metrics>,
    upstream: &UpstreamSettings,
    secondary: UpstreamSettings,
) -> Result<Components, StartError> {
    let registry = Arc::new(match &config.governance.registry {
        Some(path) => RegistryHandle::open(std::path::Path::new(path))?,
        None => RegistryHandle::disabled(),
    });
    publish_registry_metrics(metrics, &registry);
    let tiered_topics = if config.tiered.enabled {
        config.tiered.topics.clone()
    } else {
        Vec::new()
    };
    let groups_idle = Duration::from_secs(config.attribution.idle_series_seconds.min(300));
    let limits = crate::consumers::groups::Limits {
        groups: config.tier.max_groups,
        members_per_group: config.tier.max_members_per_group,
        offset_users_per_group: config.tier.max_offset_users_per_group,
    };
    let tiered = config.tiered.enabled.then(|| {
        Arc::new(Tiered::new(
            config.tiered.clone(),
            config.upstream.bootstrap_servers.clone(),
            upstream.clone(),
            secondary,
            metrics.clone(),
        ))
    });
    let heads = Arc::new(Heads::new());
    let lag = Arc::new(Lag::new(config.lag.clone()));
    let audit = Arc::new(Audit::new(config.audit.clone(), metrics.clone()));
    let ledger = Arc::new(Ledger::new(audit, registry.clone(), metrics.clone()));
    let refusals = Arc::new(Refusals::new());
    refusals.set_sink(ledger.clone());
    let budgets = Arc::new(Budgets::new(metrics.clone()));
    budgets.set_ledger(ledger.clone());
    let produce_budgets = Arc::new(Budgets::of(Kind::Writes, metrics.clone()));
    produce_budgets.set_ledger(ledger.clone());
    Ok(Components {
        rewinds: Arc::new(Rewinds::new(lag.clone(), heads.clone())),
        ledger,
        refusals,
        budgets,
        produce_budgets,
        heads,
        topic_ids: Arc::new(TopicIds::new()),
        usage: Arc::new(Usage::new(
            config.attribution.clone(),
            metrics.clone(),
            tiered_topics,
        )),
        groups: Arc::new(Groups::with_limits(groups_idle, limits)),
        lag,
        registry,
        tiered,
    })
}

/// The policy layers, each given what it reads and feeds.
fn stack(
    config: &Config,
    metrics: &Arc<Metrics>,
    topology: &Arc<Topology>,
    c: &Components,
) -> Stack {
    let decider = Decider {
        groups: c.groups.clone(),
        lag: c.lag.clone(),
        registry: c.registry.clone(),
        budgets: c.budgets.clone(),
        topic_ids: c.topic_ids.clone(),
        metrics: metrics.clone(),
        tie_wait: Duration::from_millis(config.attribution.tie_wait_ms),
    };
    let routing_inputs = layers::routing::RoutingInputs {
        heads: c.heads.clone(),
        topic_ids: c.topic_ids.clone(),
    };
    Stack {
        metrics: layers::metrics::MetricsLayer::new(metrics.clone()),
        sasl: layers::sasl::SaslLayer::new(
            config.sasl_required(),
            &config.proxy.sasl.oauthbearer_principal_claim,
            metrics.clone(),
        )
        .auditing(c.ledger.audit().clone()),
        decider: Arc::new(decider),
        attribution: layers::attribution::Sinks {
            usage: c.usage.clone(),
            heads: c.heads.clone(),
            topic_ids: c.topic_ids.clone(),
            groups: c.groups.clone(),
            lag: c.lag.clone(),
            ledger: Some(c.ledger.clone()),
        },
        own_topics: layers::own_topics::OwnTopicsLayer::new(
            config.own_topics(),
            c.topic_ids.clone(),
            metrics.clone(),
        ),
        cluster_admin: layers::cluster_admin::ClusterAdminLayer::new(
            config.proxy.allow_cluster_admin,
            metrics.clone(),
        ),
        governance: layers::governance::GovernanceLayer::new(
            c.registry.clone(),
            c.topic_ids.clone(),
            metrics.clone(),
        )
        .recording(c.refusals.clone())
        .requiring_authentication(config.governance.require_authentication),
        admin_plane: layers::admin_plane::AdminPlaneLayer::new(
            c.registry.clone(),
            c.topic_ids.clone(),
            metrics.clone(),
            c.refusals.clone(),
        )
        .auditing(c.ledger.audit().clone()),
        offsets: layers::offsets::OffsetsLayer::new(
            c.registry.clone(),
            c.rewinds.clone(),
            metrics.clone(),
            c.refusals.clone(),
        ),
        producers: layers::producers::ProducersLayer::new(
            c.registry.clone(),
            c.topic_ids.clone(),
            c.produce_budgets.clone(),
            metrics.clone(),
            c.refusals.clone(),
        ),
        budget: layers::budget::BudgetLayer::new(c.budgets.clone()),
        routing: layers::routing::RoutingLayer::new(c.tiered.clone(), routing_inputs),
        rewrite: layers::rewrite::RewriteLayer::new(topology.clone(), metrics.clone()),
    }
}

/// Reload the registry and report the outcome in metrics and the log. Used by the file watch,
/// SIGHUP and `POST /v1/registry/reload`.
pub(crate) fn reload_registry(
    shared: &App,
    trigger: &str,
) -> Result<(), crate::control::registry::RegistryError> {
    let result = shared.registry.reload();
    shared.ledger.audit().emit(What::RegistryReload {
        trigger: trigger.into(),
        ok: result.is_ok(),
        error: result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    });
    match result {
        Ok(r) => {
            shared
                .metrics
                .registry_reloads
                .with_label_values(&["ok"])
                .inc();
            publish_registry_metrics(&shared.metrics, &shared.registry);
            info!(
                trigger,
                consumers = r.consumers.len(),
                standalone = r.standalone.len(),
                mode = r.mode.label(),
                "consumer registry reloaded"
            );
            Ok(())
        }
        Err(e) => {
            shared
                .metrics
                .registry_reloads
                .with_label_values(&["error"])
                .inc();
            warn!(trigger, error = %e, "consumer registry reload failed; the previous registry stays in force");
            Err(e)
        }
    }
}

pub(crate) fn publish_registry_metrics(metrics: &Metrics, registry: &RegistryHandle) {
    let Some(loaded) = registry.loaded() else {
        metrics.registry_loaded.set(0);
        return;
    };
    metrics.registry_loaded.set(loaded.loaded_at as i64);
    for tier in [
        crate::control::registry::Tier::Primary,
        crate::control::registry::Tier::Probation,
    ] {
        let n = loaded
            .registry
            .consumers
            .iter()
            .filter(|e| e.tier == tier)
            .count();
        metrics
            .registry_entries
            .with_label_values(&[tier.label()])
            .set(n as i64);
    }
}
