//! Probation and promotion: the promotion record in the state store, eligibility (within
//! the lag SLO for `lag.probation_window_seconds`), automatic promotion, and demotion of a
//! promoted group that stays over its SLO (`lag.demote_after_seconds`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{GroupStatus, Lag};
use crate::control::registry::{Registry, Tier};
use crate::metrics::Metrics;

/// Key prefix of promotion records in the state store.
const PROMOTION: &str = "promotion/";
/// Key prefix of demotion records (a promoted group sent back to probation).
const DEMOTION: &str = "demotion/";

/// Why a promotion was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum PromoteError {
    #[error("group {0:?} is not registered with tier = \"probation\"")]
    NotProbation(String),
    #[error("group {group:?} is not eligible: within its SLO for {within:.0} s of the required {window} s (add ?force=true to promote anyway)")]
    NotEligible {
        group: String,
        within: f64,
        window: u64,
    },
    #[error("group {0:?} is already promoted")]
    AlreadyPromoted(String),
    #[error("cannot record the promotion: {0}")]
    Store(String),
}

impl Lag {
    pub(crate) fn promotion(&self, group: &str) -> Option<serde_json::Value> {
        self.store().get(&format!("{PROMOTION}{group}"))
    }

    /// The tier a group is served as: the registry's, with `probation` turned `primary` by a
    /// promotion. `None` for unregistered groups.
    pub(crate) fn effective_tier(&self, group: &str, registry: &Registry) -> Option<Tier> {
        let e = registry.entry_for(group)?;
        Some(match e.tier {
            Tier::Probation if self.promotion(group).is_some() => Tier::Primary,
            t => t,
        })
    }

    /// Promote a probation group (`how` = `auto` or `api`).
    pub(crate) fn promote(
        &self,
        group: &str,
        registry: &Registry,
        how: &str,
        force: bool,
        metrics: &Metrics,
    ) -> Result<serde_json::Value, PromoteError> {
        let entry = registry
            .entry_for(group)
            .filter(|e| e.tier == Tier::Probation)
            .ok_or_else(|| PromoteError::NotProbation(group.to_string()))?;
        if self.promotion(group).is_some() {
            return Err(PromoteError::AlreadyPromoted(group.to_string()));
        }
        let within = self
            .within_slo_since
            .lock()
            .expect("lock")
            .get(group)
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let window = self.cfg.probation_window_seconds;
        if !force && within < window as f64 {
            return Err(PromoteError::NotEligible {
                group: group.to_string(),
                within,
                window,
            });
        }
        let record = serde_json::json!({
            "group": group,
            "entry": entry.name(),
            "promoted_at": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "by": how,
            "forced": force,
            "within_slo_seconds": within.floor(),
            "window_seconds": window,
        });
        self.store()
            .put(&format!("{PROMOTION}{group}"), record.clone())
            .map_err(|e| PromoteError::Store(e.to_string()))?;
        metrics.promotions.with_label_values(&[how]).inc();
        info!(
            group,
            by = how,
            forced = force,
            within_slo_seconds = within.floor(),
            "probation group promoted"
        );
        Ok(record)
    }

    /// A probation group: how long it has been within its SLO without a break (`None` while
    /// it is not: over its SLO, or stopped).
    pub(super) fn probation_clock(
        &self,
        group: &str,
        problems: &[&str],
        now: Instant,
    ) -> Option<f64> {
        let mut w = self.within_slo_since.lock().expect("lock");
        if problems.contains(&"over_slo") || problems.contains(&"stopped") {
            w.remove(group);
            return None;
        }
        let since = *w.entry(group.to_string()).or_insert(now);
        Some(now.duration_since(since).as_secs_f64())
    }

    /// Demote back to probation every promoted group over its lag SLO without a break for
    /// `lag.demote_after_seconds`: its promotion record is deleted (every instance of the
    /// tier follows) and a demotion record says when and why.
    pub(super) fn demote_promoted(
        &self,
        statuses: &mut BTreeMap<String, GroupStatus>,
        metrics: &Metrics,
        now: Instant,
    ) {
        let window = Duration::from_secs(self.cfg.demote_after_seconds);
        let mut over = self.over_slo_since.lock().expect("lock");
        for s in statuses.values_mut() {
            if s.tier != Some("promoted") || !s.problems.contains(&"over_slo") {
                over.remove(&s.group);
                continue;
            }
            let since = *over.entry(s.group.clone()).or_insert(now);
            if now.duration_since(since) < window {
                continue;
            }
            let store = self.store();
            let record = serde_json::json!({
                "group": s.group,
                "demoted_at": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                "over_slo_seconds": now.duration_since(since).as_secs(),
                "window_seconds": self.cfg.demote_after_seconds,
            });
            let done = store
                .send(&format!("{PROMOTION}{}", s.group), None)
                .and_then(|()| store.put(&format!("{DEMOTION}{}", s.group), record));
            match done {
                Ok(()) => {
                    over.remove(&s.group);
                    metrics.probation_demotions.inc();
                    warn!(
                        group = s.group,
                        over_slo_seconds = now.duration_since(since).as_secs(),
                        "promoted group over its lag SLO; demoted back to probation"
                    );
                    s.tier = Some("probation");
                    s.promotion = None;
                }
                Err(e) => warn!(group = s.group, error = %e, "demotion failed"),
            }
        }
    }

    /// Promote every eligible probation group (`lag.auto_promote`).
    pub(super) fn auto_promote(
        &self,
        statuses: &mut BTreeMap<String, GroupStatus>,
        reg: &Registry,
        metrics: &Metrics,
    ) {
        let ready: Vec<String> = statuses
            .values()
            .filter(|s| s.probation_eligible && s.promotion.is_none())
            .map(|s| s.group.clone())
            .collect();
        for g in ready {
            match self.promote(&g, reg, "auto", false, metrics) {
                Ok(record) => {
                    if let Some(s) = statuses.get_mut(&g) {
                        s.tier = Some("promoted");
                        s.promotion = Some(record);
                    }
                }
                Err(e) => warn!(group = g, error = %e, "automatic promotion failed"),
            }
        }
    }
}
