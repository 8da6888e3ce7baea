//! The periodic tasks each instance runs: Metadata refresh, the sweep of idle state, topic
//! ids, registry reloads, lag evaluation and the quiet-head refresh.

use crate::app::{reload_registry, App};
use crate::brokers::upstream::{ControlClient, UpstreamError};
use crate::consumers::heads::Observed;
use crate::control::audit::{Member, What};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub(super) enum RefreshError {
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Topology(#[from] crate::brokers::topology::TopologyError),
}

/// One Metadata round trip through the first reachable server; registers every broker.
pub(super) async fn refresh_once(shared: &App, servers: &[String]) -> Result<(), RefreshError> {
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
pub(super) async fn refresh_metadata(shared: Arc<App>, mut shutdown: watch::Receiver<bool>) {
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

/// Expire what nobody used for `attribution.idle_series_seconds`: attribution series and
/// activity rows, partition heads lag does not track, group state.
pub(super) async fn sweep(shared: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let idle = Duration::from_secs(shared.usage.config().idle_series_seconds);
    let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let removed = shared.usage.sweep();
        if removed > 0 {
            debug!(removed, "removed idle attribution series");
        }
        let tracked = shared.lag.tracked_partitions();
        shared.heads.expire(idle, |tp| tracked.contains(tp));
        shared.groups.expire();
        for e in shared.groups.take_expired() {
            let member = Member {
                group: e.group,
                member_id: e.member_id,
                client_id: e.instance.client_id,
                principal: e.instance.principal,
                peer: e.instance.host.to_string(),
            };
            let how = "expired".into();
            shared.ledger.audit().emit(What::GroupLeft { member, how });
        }
        let (groups, members, users) = shared.groups.take_evicted();
        for (what, n) in [
            ("group", groups),
            ("member", members),
            ("offset_user", users),
        ] {
            if n > 0 {
                shared
                    .metrics
                    .groups_evicted
                    .with_label_values(&[what])
                    .inc_by(n);
                warn!(
                    what,
                    evicted = n,
                    "group view full: least recently active evicted"
                );
            }
        }
    }
}

/// Least time between two all-topics Metadata requests for unknown topic ids.
pub(super) const TOPIC_IDS_EVERY: Duration = Duration::from_secs(5);

/// When a request or response names a topic id this instance does not know, ask the cluster
/// for every topic's metadata (see [`crate::brokers::topic_ids`]).
pub(super) async fn learn_topic_ids(shared: Arc<App>, mut shutdown: watch::Receiver<bool>) {
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
            Some(md) => {
                let ids: Vec<(uuid::Uuid, String)> = md
                    .topics
                    .iter()
                    .filter_map(|t| t.name.as_ref().map(|n| (t.topic_id, n.to_string())))
                    .collect();
                // Assignments recorded before the ids were known carry the id as the name.
                shared.groups.rename_topics(
                    &ids.iter()
                        .filter(|(id, _)| !id.is_nil())
                        .map(|(id, n)| (id.to_string(), n.clone()))
                        .collect(),
                );
                shared.topic_ids.learn(ids);
            }
            None => shared.metrics.metadata_refresh_errors.inc(),
        }
        tokio::select! {
            _ = tokio::time::sleep(TOPIC_IDS_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Reload the registry when its file changes (polled) and on SIGHUP.
pub(super) async fn watch_registry(shared: Arc<App>, mut shutdown: watch::Receiver<bool>) {
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
pub(super) async fn evaluate_lag(shared: Arc<App>, mut shutdown: watch::Receiver<bool>) {
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
pub(super) async fn refresh_quiet_heads(
    shared: &App,
    quiet: Duration,
) -> Result<(), UpstreamError> {
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

/// Once a second: end the ledger's usage window when its time is up, and write the audit
/// trail's folded repeats and rate-limit summary.
pub(super) async fn roll_ledger(shared: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        shared.ledger.roll(false);
        shared.ledger.audit().tick();
    }
}
