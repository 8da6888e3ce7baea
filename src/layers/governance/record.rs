//! Recording governance decisions: the refusal metric, the console's refusal table and one
//! rate-limited log line per (reason, client instance). The policy decides; this records.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use tracing::{info, warn};

use super::log_limit::{log_key, LogLimiter};
use super::Reason;
use crate::consumers::identity::ConnInfo;
use crate::consumers::refusals::{Refusal, Refusals};
use crate::control::registry::{Mode, Registry};
use crate::metrics::Metrics;
use crate::wire::protocol::api_name;

/// One refused (or, in shadow mode, would-be-refused) decision.
pub(super) struct Decision<'a> {
    pub(super) api: ApiKey,
    pub(super) reason: Reason,
    pub(super) mode: Mode,
    pub(super) group: &'a str,
    pub(super) topic: Option<&'a str>,
    /// The registry entry that decided, if any.
    pub(super) entry: Option<&'a str>,
}

/// Where decisions are recorded, shared by every connection.
#[derive(Clone)]
pub(super) struct Recorder {
    pub(super) metrics: Arc<Metrics>,
    pub(super) refusals: Arc<Refusals>,
    pub(super) logs: Arc<LogLimiter>,
}

impl Recorder {
    /// Log and count one decision.
    pub(super) fn refused(&self, conn: &ConnInfo, d: &Decision, reg: &Registry) {
        let (reason, mode, api) = (d.reason.label(), d.mode.label(), api_name(d.api as i16));
        self.metrics
            .rejected_requests
            .with_label_values(&[reason, api, mode])
            .inc();
        let client_id = conn.client_id().unwrap_or_default();
        let (group, topic, entry) = (d.group, d.topic.unwrap_or(""), d.entry.unwrap_or(""));
        self.refusals.record(Refusal {
            reason,
            mode,
            api,
            group,
            topic,
            principal: &conn.principal(),
            client_id: &client_id,
            host: &conn.peer.ip().to_string(),
        });
        // Per (reason, client instance): a client that names a new group or topic in every
        // request (invented names) still gets one line per interval, not one per name.
        let Some(suppressed) = self.logs.admit(log_key(reason, &client_id, conn)) else {
            return;
        };
        let software = conn.view().software_name.unwrap_or_default();
        let onboarding = reg.onboarding.as_deref().unwrap_or("");
        let principal = &*conn.principal();
        match d.mode {
            Mode::Enforce => warn!(
                decision = "reject", mode, reason, api, group, topic, entry, client_id,
                principal, peer = %conn.peer, software, conn = conn.id, suppressed, onboarding,
                "consumer policy: request refused"
            ),
            Mode::Shadow => info!(
                decision = "would_reject", mode, reason, api, group, topic, entry, client_id,
                principal, peer = %conn.peer, software, conn = conn.id, suppressed, onboarding,
                "consumer policy (shadow): request would be refused"
            ),
        }
    }

    /// Count (and log, rate-limited) a ListGroups answer that hid `hidden` groups.
    pub(super) fn hidden(&self, conn: &ConnInfo, hidden: usize, reason: Reason) {
        self.metrics
            .rejected_requests
            .with_label_values(&[reason.label(), "ListGroups", "enforce"])
            .inc();
        let client_id = conn.client_id().unwrap_or_default();
        if let Some(suppressed) = self.logs.admit(log_key("list_groups", &client_id, conn)) {
            info!(decision = "filter", api = "ListGroups", hidden, client_id,
                  principal = &*conn.principal(), peer = %conn.peer, suppressed,
                  "groups the caller may not use left out of ListGroups");
        }
    }
}
