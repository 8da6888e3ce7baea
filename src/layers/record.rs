//! Recording what a policy layer refused (the producer policy, offset protection): the
//! refusal metric, the console's refusal table and one rate-limited log line per (reason,
//! client instance). The consumer onboarding policy has its own recorder
//! (`governance/record.rs`), with its reasons and the group in every line.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use tracing::{info, warn};

use crate::consumers::identity::ConnInfo;
use crate::consumers::refusals::{Refusal, Refusals};
use crate::control::registry::Mode;
use crate::layers::governance::{log_key, LogLimiter};
use crate::metrics::Metrics;
use crate::wire::protocol::api_name;

/// One refused (or, in shadow mode, would-be-refused) request entry.
pub(crate) struct Seen<'a> {
    pub(crate) api: ApiKey,
    pub(crate) group: &'a str,
    pub(crate) topic: &'a str,
    /// The registry entry that decided (its name), if any.
    pub(crate) entry: &'a str,
    pub(crate) reason: &'static str,
    pub(crate) mode: Mode,
    /// What the client should do (onboarding link, how to open a window).
    pub(crate) hint: &'a str,
}

/// Where one policy's refusals go.
pub(crate) struct Record {
    /// The policy's name in log lines ("producer policy").
    policy: &'static str,
    metrics: Arc<Metrics>,
    refusals: Arc<Refusals>,
    logs: LogLimiter,
}

impl Record {
    pub(crate) fn new(
        policy: &'static str,
        metrics: Arc<Metrics>,
        refusals: Arc<Refusals>,
    ) -> Record {
        Record {
            policy,
            metrics,
            refusals,
            logs: LogLimiter::default(),
        }
    }

    /// Count, show and log (rate-limited) one refusal.
    pub(crate) fn refused(&self, conn: &ConnInfo, seen: &Seen) {
        let Seen {
            group,
            topic,
            entry,
            hint,
            reason,
            ..
        } = *seen;
        let (api, mode) = (api_name(seen.api as i16), seen.mode.label());
        self.metrics
            .rejected_requests
            .with_label_values(&[reason, api, mode])
            .inc();
        let client_id = conn.client_id().unwrap_or_default();
        let principal = conn.principal();
        self.refusals.record(Refusal {
            reason,
            mode,
            api,
            group,
            topic,
            principal: &principal,
            client_id: &client_id,
            host: &conn.peer.ip().to_string(),
        });
        let Some(suppressed) = self.logs.admit(log_key(reason, &client_id, conn)) else {
            return;
        };
        let (principal, policy) = (&*principal, self.policy);
        if seen.mode == Mode::Enforce {
            warn!(decision = "reject", policy, mode, reason, api, group, topic, entry, client_id,
                  principal, peer = %conn.peer, conn = conn.id, suppressed, hint,
                  "{policy}: refused");
        } else {
            info!(decision = "would_reject", policy, mode, reason, api, group, topic, entry,
                  client_id, principal, peer = %conn.peer, conn = conn.id, suppressed, hint,
                  "{policy} (shadow): would be refused");
        }
    }
}
