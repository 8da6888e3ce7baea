//! The state one proxy's tasks share: configuration, metrics, the cluster map and the
//! components (attribution, registry, tiered reads, inventory, TLS), owned side by side in
//! [`Shared`]. The server ([`crate::server`]) builds it and runs the listeners; the admin API
//! ([`crate::admin`]) reads it and calls [`reload_registry`]. Neither imports the other.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::attribution::Attribution;
use crate::config::Config;
use crate::groups::Groups;
use crate::heads::Heads;
use crate::lag::Lag;
use crate::metrics::Metrics;
use crate::registry::RegistryHandle;
use crate::security::tls::ServerTls;
use crate::stack::StackShared;
use crate::topic_ids::TopicIds;
use crate::topology::Topology;
use crate::upstream::UpstreamSettings;

/// State shared by every task of one proxy.
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub topology: Arc<Topology>,
    pub stack: StackShared,
    pub upstream: UpstreamSettings,
    pub inventory: Arc<crate::identity::Inventory>,
    /// The peer components: each owns one kind of state behind its own API.
    pub heads: Arc<Heads>,
    pub topic_ids: Arc<TopicIds>,
    pub attribution: Arc<Attribution>,
    pub groups: Arc<Groups>,
    pub lag: Arc<Lag>,
    pub refusals: Arc<crate::refusals::Refusals>,
    pub budgets: Arc<crate::budgets::Budgets>,
    pub registry: Arc<RegistryHandle>,
    /// Tiered reads, when `tiered.enabled`.
    pub tiered: Option<Arc<crate::tiered::Tiered>>,
    /// Stops the offset-syncs reader thread.
    pub(crate) syncs_stop: Arc<AtomicBool>,
    /// TLS on the client listeners (`proxy.tls`).
    pub client_tls: Option<Arc<ServerTls>>,
    /// TLS on the admin listener (`admin.tls`).
    pub admin_tls: Option<Arc<ServerTls>>,
    pub ready: AtomicBool,
    pub shutting_down: AtomicBool,
    pub(crate) conn_limit: Arc<Semaphore>,
    pub(crate) next_conn_id: AtomicU64,
}

/// Reload the registry and report the outcome in metrics and the log. Used by the file watch,
/// SIGHUP and `POST /v1/registry/reload`.
pub fn reload_registry(
    shared: &Shared,
    trigger: &str,
) -> Result<(), crate::registry::RegistryError> {
    match shared.registry.reload() {
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
        crate::registry::Tier::Primary,
        crate::registry::Tier::Probation,
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
