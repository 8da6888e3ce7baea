//! The consumer onboarding registry: which consumer groups may read what, owned by whom.
//!
//! One TOML file, kept in source control (`config/registry.toml` is the example):
//!
//! ```toml
//! mode = "enforce"                  # or "shadow": log and count, reject nothing
//! onboarding = "https://wiki.example.com/kafka/onboarding"
//!
//! [[consumer]]
//! group = "billing-invoicer"        # exact group id ...
//! # group_prefix = "billing-"       # ... or a prefix (exactly one of the two)
//! principal = "User:billing"        # optional: only this principal may use the group
//! owner = "billing"
//! contact = "#billing-oncall"
//! topics = ["invoices"]             # allowed topics, by name ...
//! topic_prefixes = ["payments."]    # ... and/or by prefix
//! tier = "primary"                  # or "probation"
//! lag_slo_seconds = 60
//! read_budget_bytes_per_second = 50000000   # optional
//! max_rewind_records = 100000       # optional offset protection (also max_rewind_seconds;
//!                                   # allow_rewind = true turns the registry's default off)
//! mode = "shadow"                   # optional: this entry's own mode
//!
//! [[standalone]]                    # group-less consumers allowed anyway (rare tools)
//! client_id = "offset-exporter"     # and/or principal = "User:ops"
//!
//! [[producer]]                      # who may write what (see below)
//! principal = "User:clickstream"    # and/or client_id = "clickstream-writer"
//! owner = "web"
//! contact = "#web-oncall"
//! topics = ["clicks"]               # and/or topic_prefixes
//! produce_budget_bytes_per_second = 10000000   # optional
//! on_over_budget = "throttle"       # "alert" (default), "throttle" or "reject"
//! mode = "shadow"                   # optional: this entry's own mode
//! ```
//!
//! **Producers** are governed once the registry lists a `[[producer]]` entry (before that,
//! Produce passes as it always did, so adding this section is the opt-in). A producer
//! matches an entry when the entry's `principal` (if set) names the connection's principal
//! and its `client_id` (if set) equals the client's. A topic may be written when a matching
//! entry allows it; the first such entry (in file order) owns the write, its budget and its
//! mode. A producer no entry lets write the topic is refused under `producer_mode` (default:
//! the registry's `mode`). A `client_id` is chosen by the client: entries that name only a
//! client id are a convenience for unauthenticated clusters, not a control.
//!
//! Loading validates everything and names the entry and key of the first problem
//! (`consumer[2] (group "x"): topics: ...`). A registry in force is immutable; reloading
//! builds a new one and swaps it in ([`RegistryHandle`]), so a bad file never replaces a good
//! one and requests in flight keep the registry they started with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::control::admin_rules::{AdminEntry, AdminPolicy};
pub use crate::control::rules::Mode;
pub(crate) use crate::control::rules::{listed, Principals};

/// Where a registered group is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Tier {
    #[default]
    Primary,
    Probation,
}

impl Tier {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Tier::Primary => "primary",
            Tier::Probation => "probation",
        }
    }
}

/// What Tollgate does with a group reading above its `read_budget_bytes_per_second`
/// ([`crate::consumers::budgets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OverBudget {
    /// Raise the `bandwidth` problem and the alert; nothing else.
    #[default]
    Alert,
    /// Hold the group's reads at the budget, tier-wide, as a broker quota would.
    Throttle,
    /// With tiered reads on: serve the group from the secondary cluster while it is over
    /// the budget, and from the primary again after `demote_hold_seconds` below it.
    /// Consumers only.
    Demote,
    /// Refuse the producer's writes while it is over its budget, tier-wide. Producers only.
    Reject,
}

impl OverBudget {
    pub(crate) fn label(self) -> &'static str {
        match self {
            OverBudget::Alert => "alert",
            OverBudget::Throttle => "throttle",
            OverBudget::Demote => "demote",
            OverBudget::Reject => "reject",
        }
    }
}

/// The registry file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Mode for everything not covered by an entry's own `mode` (unregistered groups,
    /// group-less consumers).
    #[serde(default)]
    pub mode: Mode,
    /// Where teams learn how to onboard; quoted in rejection messages and logs.
    #[serde(default)]
    pub(crate) onboarding: Option<String>,
    #[serde(default, rename = "consumer")]
    pub consumers: Vec<ConsumerEntry>,
    #[serde(default, rename = "standalone")]
    pub standalone: Vec<StandaloneEntry>,
    /// The budget of groups no entry covers (they read only in shadow mode); unset: none.
    #[serde(default)]
    pub(crate) default_read_budget_bytes_per_second: Option<u64>,
    /// What to do when such a group is over it.
    #[serde(default)]
    pub(crate) default_on_over_budget: OverBudget,
    /// A demoted group returns to the primary after its rate stayed below its budget this
    /// long.
    #[serde(default = "default_demote_hold")]
    pub(crate) demote_hold_seconds: u64,
    /// Offset protection for every registered group whose entry sets no limit of its own:
    /// a commit may move its offset back by at most this many records ...
    #[serde(default)]
    pub(crate) max_rewind_records: Option<u64>,
    /// ... and by at most this many seconds of the partition's history.
    #[serde(default)]
    pub(crate) max_rewind_seconds: Option<u64>,
    /// Who may produce to what. Empty: producers are not governed.
    #[serde(default, rename = "producer")]
    pub producers: Vec<ProducerEntry>,
    /// The mode for producers no entry lets write a topic; unset: `mode`.
    #[serde(default)]
    pub(crate) producer_mode: Option<Mode>,
    /// The admin-plane rules ([`crate::control::admin_rules`]).
    #[serde(default)]
    pub(crate) admin_policy: AdminPolicy,
    /// Who may change what through the admin APIs.
    #[serde(default, rename = "admin")]
    pub(crate) admins: Vec<AdminEntry>,
}

/// One registered producer: who (principal and/or client id) may write which topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerEntry {
    #[serde(default)]
    pub(crate) principal: Option<Principals>,
    #[serde(default)]
    pub(crate) client_id: Option<String>,
    pub(crate) owner: String,
    pub(crate) contact: String,
    #[serde(default)]
    pub(crate) topics: Vec<String>,
    #[serde(default)]
    pub(crate) topic_prefixes: Vec<String>,
    #[serde(default)]
    pub(crate) produce_budget_bytes_per_second: Option<u64>,
    /// Over the budget: `alert` (default), `throttle` or `reject`.
    #[serde(default)]
    pub(crate) on_over_budget: OverBudget,
    #[serde(default)]
    pub(crate) mode: Option<Mode>,
}

impl ProducerEntry {
    /// How the entry is named in logs, metrics and errors: `User:web` or `client:web-writer`
    /// or `User:web/client:web-writer`.
    pub(crate) fn name(&self) -> String {
        let principal = self.principal.as_ref().map(|p| p.names().join(","));
        let client = self.client_id.as_ref().map(|c| format!("client:{c}"));
        match (principal, client) {
            (Some(p), Some(c)) => format!("{p}/{c}"),
            (Some(p), None) => p,
            (None, Some(c)) => c,
            (None, None) => "?".into(),
        }
    }

    pub(crate) fn matches(&self, client_id: &str, principal: &str) -> bool {
        self.client_id.as_deref().is_none_or(|c| c == client_id)
            && self.principal.as_ref().is_none_or(|p| p.allows(principal))
    }

    pub(crate) fn allows_topic(&self, topic: &str) -> bool {
        listed(&self.topics, &self.topic_prefixes, topic)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.principal.is_none() && self.client_id.is_none() {
            return Err(("principal", "set principal and/or client_id".into()));
        }
        if let Some(p) = &self.principal {
            p.check().map_err(|r| ("principal", r))?;
        }
        if self
            .client_id
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(("client_id", "must not be empty".into()));
        }
        check_owned_topics(
            &self.owner,
            &self.contact,
            &self.topics,
            &self.topic_prefixes,
        )?;
        if self.produce_budget_bytes_per_second == Some(0) {
            return Err((
                "produce_budget_bytes_per_second",
                "must be positive when set".into(),
            ));
        }
        match self.on_over_budget {
            OverBudget::Demote => Err((
                "on_over_budget",
                "\"demote\" is for consumers; a producer takes \"alert\", \"throttle\" or \"reject\"".into(),
            )),
            OverBudget::Alert => Ok(()),
            _ if self.produce_budget_bytes_per_second.is_none() => Err((
                "on_over_budget",
                "needs produce_budget_bytes_per_second (the rate to hold the producer at)".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// An entry's owner and contact are set and it lists at least one topic, by name or prefix,
/// none of them blank: the key and the problem otherwise.
fn check_owned_topics(
    owner: &str,
    contact: &str,
    topics: &[String],
    prefixes: &[String],
) -> Result<(), (&'static str, String)> {
    if owner.trim().is_empty() {
        return Err(("owner", "must not be empty".into()));
    }
    if contact.trim().is_empty() {
        return Err(("contact", "must not be empty".into()));
    }
    if topics.is_empty() && prefixes.is_empty() {
        return Err((
            "topics",
            "list at least one topic (topics or topic_prefixes)".into(),
        ));
    }
    match topics.iter().chain(prefixes).find(|t| t.trim().is_empty()) {
        Some(t) => Err(("topics", format!("{t:?} is not a topic name"))),
        None => Ok(()),
    }
}

/// What the registry says about one producer writing one topic.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ProduceVerdict<'a> {
    /// Producers are not governed (no `[[producer]]` entry).
    Ungoverned,
    /// This entry lets it write the topic.
    Allowed(&'a ProducerEntry),
    /// Entries match the producer, none lets it write the topic.
    TopicNotAllowed(&'a ProducerEntry),
    /// No entry matches the producer.
    Unregistered,
}

fn default_demote_hold() -> u64 {
    60
}

/// One registered consumer (group or group prefix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerEntry {
    #[serde(default)]
    pub(crate) group: Option<String>,
    #[serde(default)]
    pub(crate) group_prefix: Option<String>,
    /// The principals that own the group (one, or a list); unset: any principal.
    #[serde(default)]
    pub(crate) principal: Option<Principals>,
    pub(crate) owner: String,
    pub(crate) contact: String,
    #[serde(default)]
    pub(crate) topics: Vec<String>,
    #[serde(default)]
    pub(crate) topic_prefixes: Vec<String>,
    #[serde(default)]
    pub(crate) tier: Tier,
    pub(crate) lag_slo_seconds: u64,
    #[serde(default)]
    pub(crate) read_budget_bytes_per_second: Option<u64>,
    /// What to do when the group reads above its budget: `alert` (default) or `throttle`.
    #[serde(default)]
    pub(crate) on_over_budget: OverBudget,
    /// Offset protection: the most records, and seconds of history, a commit may move the
    /// group's offset back ([`crate::consumers::rewinds`]); unset: the registry's default.
    #[serde(default)]
    pub(crate) max_rewind_records: Option<u64>,
    #[serde(default)]
    pub(crate) max_rewind_seconds: Option<u64>,
    /// The group may move its offsets back freely (the registry's default limits do not
    /// apply).
    #[serde(default)]
    pub(crate) allow_rewind: bool,
    #[serde(default)]
    pub(crate) mode: Option<Mode>,
}

/// How far back a commit may move a group's offset (either limit, when set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RewindLimits {
    pub(crate) records: Option<u64>,
    pub(crate) seconds: Option<u64>,
}

/// A group-less consumer allowed anyway, by client id and/or principal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneEntry {
    #[serde(default)]
    pub(crate) client_id: Option<String>,
    #[serde(default)]
    pub(crate) principal: Option<Principals>,
    /// Allowed topics; empty = all.
    #[serde(default)]
    pub(crate) topics: Vec<String>,
    #[serde(default)]
    pub(crate) topic_prefixes: Vec<String>,
    #[serde(default)]
    pub(crate) owner: Option<String>,
}

/// Why a registry could not be loaded: file, entry and key.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("registry {path}: {message}")]
pub struct RegistryError {
    pub(crate) path: String,
    pub(crate) message: String,
}

impl ConsumerEntry {
    /// `"billing"` or `"billing-*"`: how the entry is named in logs and errors.
    pub(crate) fn name(&self) -> String {
        match (&self.group, &self.group_prefix) {
            (Some(g), _) => g.clone(),
            (None, Some(p)) => format!("{p}*"),
            (None, None) => "?".into(),
        }
    }

    fn matches_group(&self, group: &str) -> bool {
        match (&self.group, &self.group_prefix) {
            (Some(g), _) => g == group,
            (None, Some(p)) => group.starts_with(p.as_str()),
            (None, None) => false,
        }
    }

    /// May this entry's consumers read `topic`?
    pub(crate) fn allows_topic(&self, topic: &str) -> bool {
        listed(&self.topics, &self.topic_prefixes, topic)
    }
}

impl StandaloneEntry {
    pub(crate) fn matches(&self, client_id: &str, principal: &str) -> bool {
        self.client_id.as_deref().is_none_or(|c| c == client_id)
            && self.principal.as_ref().is_none_or(|p| p.allows(principal))
    }

    pub(crate) fn allows_topic(&self, topic: &str) -> bool {
        (self.topics.is_empty() && self.topic_prefixes.is_empty())
            || listed(&self.topics, &self.topic_prefixes, topic)
    }
}

/// What the registry says about one group for one principal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GroupVerdict<'a> {
    Registered(&'a ConsumerEntry),
    /// No entry matches the group.
    Unregistered,
    /// An entry matches, but it names another principal.
    WrongPrincipal(&'a ConsumerEntry),
}

impl Registry {
    /// Parse and validate registry text. `path` only labels errors.
    pub(crate) fn parse(text: &str, path: &str) -> Result<Registry, RegistryError> {
        let err = |message: String| RegistryError {
            path: path.to_string(),
            message,
        };
        let mut reg: Registry = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        reg.validate().map_err(err)?;
        crate::control::admin_rules::validate(&mut reg.admin_policy, &reg.admins).map_err(err)?;
        Ok(reg)
    }

    /// Load and validate a registry file.
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Registry::parse(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<(), String> {
        let mut seen: Vec<String> = Vec::new();
        for (i, e) in self.consumers.iter().enumerate() {
            let at = |key: &str, msg: &str| format!("consumer[{i}] ({}): {key}: {msg}", e.name());
            match (&e.group, &e.group_prefix) {
                (Some(_), Some(_)) => {
                    return Err(at("group", "set either group or group_prefix, not both"))
                }
                (None, None) => {
                    return Err(at("group", "one of group or group_prefix is required"))
                }
                (Some(g), None) | (None, Some(g)) if g.trim().is_empty() => {
                    return Err(at("group", "must not be empty"))
                }
                _ => {}
            }
            check_owned_topics(&e.owner, &e.contact, &e.topics, &e.topic_prefixes)
                .map_err(|(key, msg)| at(key, &msg))?;
            if e.lag_slo_seconds == 0 {
                return Err(at("lag_slo_seconds", "must be at least 1"));
            }
            if e.read_budget_bytes_per_second == Some(0) {
                return Err(at(
                    "read_budget_bytes_per_second",
                    "must be positive when set",
                ));
            }
            if e.on_over_budget == OverBudget::Reject {
                return Err(at(
                    "on_over_budget",
                    "\"reject\" is for producers; a consumer group takes \"alert\", \"throttle\" or \"demote\"",
                ));
            }
            if e.on_over_budget != OverBudget::Alert && e.read_budget_bytes_per_second.is_none() {
                return Err(at(
                    "on_over_budget",
                    "needs read_budget_bytes_per_second (the rate to hold the group at)",
                ));
            }
            if let Some(p) = &e.principal {
                p.check().map_err(|r| at("principal", &r))?;
            }
            let key = e.name();
            if seen.contains(&key) {
                return Err(at("group", "registered twice"));
            }
            seen.push(key);
        }
        for (i, s) in self.standalone.iter().enumerate() {
            if s.client_id.is_none() && s.principal.is_none() {
                return Err(format!(
                    "standalone[{i}]: client_id: set client_id and/or principal"
                ));
            }
            if let Some(p) = &s.principal {
                p.check()
                    .map_err(|r| format!("standalone[{i}]: principal: {r}"))?;
            }
        }
        for (i, p) in self.producers.iter().enumerate() {
            p.validate()
                .map_err(|(key, msg)| format!("producer[{i}] ({}): {key}: {msg}", p.name()))?;
            // A budget is kept, shared and lifted by the entry's name.
            let twin = self.producers[..i].iter().any(|q| {
                q.name() == p.name()
                    && q.produce_budget_bytes_per_second.is_some()
                    && p.produce_budget_bytes_per_second.is_some()
            });
            if twin {
                return Err(format!(
                    "producer[{i}] ({}): produce_budget_bytes_per_second: another entry for the same \
                     principal and client id has a budget too; give the budget to one of them",
                    p.name()
                ));
            }
        }
        if self.demote_hold_seconds == 0 {
            return Err("demote_hold_seconds: must be at least 1".into());
        }
        if self.default_read_budget_bytes_per_second == Some(0) {
            return Err("default_read_budget_bytes_per_second: must be positive when set".into());
        }
        Ok(())
    }

    /// The entry for `group`: an exact `group` beats a prefix, a longer prefix a shorter one.
    pub(crate) fn entry_for(&self, group: &str) -> Option<&ConsumerEntry> {
        self.consumers
            .iter()
            .filter(|e| e.matches_group(group))
            .max_by_key(|e| match (&e.group, &e.group_prefix) {
                (Some(_), _) => usize::MAX,
                (None, Some(p)) => p.len(),
                _ => 0,
            })
    }

    /// The read budget of `group` and what to do over it: its entry's, or the registry's
    /// default for groups no entry covers.
    pub(crate) fn budget_for(&self, group: &str) -> Option<(u64, OverBudget)> {
        match self.entry_for(group) {
            Some(e) => e
                .read_budget_bytes_per_second
                .map(|b| (b, e.on_over_budget)),
            None => self
                .default_read_budget_bytes_per_second
                .map(|b| (b, self.default_on_over_budget)),
        }
    }

    /// The offset protection of `group`: its entry's limits, else the registry's defaults;
    /// `None` for an unregistered group, an entry with `allow_rewind`, or no limit at all.
    pub(crate) fn rewind_limits(&self, group: &str) -> Option<(RewindLimits, &ConsumerEntry)> {
        let e = self.entry_for(group).filter(|e| !e.allow_rewind)?;
        let limits = RewindLimits {
            records: e.max_rewind_records.or(self.max_rewind_records),
            seconds: e.max_rewind_seconds.or(self.max_rewind_seconds),
        };
        (limits.records.is_some() || limits.seconds.is_some()).then_some((limits, e))
    }

    /// May `principal` use `group`?
    pub(crate) fn group_verdict(&self, group: &str, principal: &str) -> GroupVerdict<'_> {
        match self.entry_for(group) {
            None => GroupVerdict::Unregistered,
            Some(e) if e.principal.as_ref().is_some_and(|p| !p.allows(principal)) => {
                GroupVerdict::WrongPrincipal(e)
            }
            Some(e) => GroupVerdict::Registered(e),
        }
    }

    /// The standalone entry that lets a group-less client read, if any.
    pub(crate) fn standalone_for(
        &self,
        client_id: &str,
        principal: &str,
    ) -> Option<&StandaloneEntry> {
        self.standalone
            .iter()
            .find(|s| s.matches(client_id, principal))
    }

    /// May this producer write `topic`, and under which entry?
    pub(crate) fn produce_verdict(
        &self,
        client_id: &str,
        principal: &str,
        topic: &str,
    ) -> ProduceVerdict<'_> {
        if self.producers.is_empty() {
            return ProduceVerdict::Ungoverned;
        }
        let mut matching = self
            .producers
            .iter()
            .filter(|p| p.matches(client_id, principal))
            .peekable();
        let Some(first) = matching.peek().copied() else {
            return ProduceVerdict::Unregistered;
        };
        match matching.find(|p| p.allows_topic(topic)) {
            Some(e) => ProduceVerdict::Allowed(e),
            None => ProduceVerdict::TopicNotAllowed(first),
        }
    }

    /// The mode a produce verdict is enforced in: the entry's own, else `producer_mode`, else
    /// `mode`.
    pub(crate) fn produce_mode(&self, entry: Option<&ProducerEntry>) -> Mode {
        entry
            .and_then(|e| e.mode)
            .or(self.producer_mode)
            .unwrap_or(self.mode)
    }

    /// How to onboard a producer, for error messages.
    pub(crate) fn producer_onboarding_hint(&self) -> String {
        match &self.onboarding {
            Some(url) => format!("register the producer and its topics in the Tollgate registry: {url}"),
            None => "register the producer and its topics in the Tollgate registry (ask the Kafka platform team)".into(),
        }
    }

    /// How to onboard, for error messages.
    pub(crate) fn onboarding_hint(&self) -> String {
        match &self.onboarding {
            Some(url) => format!("register the consumer group in the Tollgate registry: {url}"),
            None => {
                "register the consumer group in the Tollgate registry (ask the Kafka platform team)"
                    .into()
            }
        }
    }
}

/// The registry in force, and how it got there.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) registry: Arc<Registry>,
    pub(crate) path: Option<PathBuf>,
    /// Seconds since the Unix epoch.
    pub(crate) loaded_at: u64,
    /// File modification time of the loaded file (for the file watch).
    pub(crate) mtime: Option<SystemTime>,
    /// The last failed reload, if it came after the last good one.
    pub(crate) last_error: Option<String>,
}

/// Shared, swappable registry. `None` inside = governance off (no registry configured).
pub struct RegistryHandle {
    current: RwLock<Option<Loaded>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Loaded {
    /// What `GET /v1/registry` shows.
    pub(crate) fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path.as_ref().map(|p| p.display().to_string()),
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "registry": &*self.registry,
        })
    }
}

impl RegistryHandle {
    /// No registry: governance is off.
    pub(crate) fn disabled() -> RegistryHandle {
        RegistryHandle {
            current: RwLock::new(None),
        }
    }

    /// Load `path` at start-up; an invalid file is a start-up error.
    pub fn open(path: &Path) -> Result<RegistryHandle, RegistryError> {
        let registry = Registry::load(path)?;
        Ok(RegistryHandle {
            current: RwLock::new(Some(Loaded {
                registry: Arc::new(registry),
                path: Some(path.to_path_buf()),
                loaded_at: now_secs(),
                mtime: mtime(path),
                last_error: None,
            })),
        })
    }

    /// The registry in force (`None` when governance is off).
    pub(crate) fn get(&self) -> Option<Arc<Registry>> {
        self.current
            .read()
            .expect("lock")
            .as_ref()
            .map(|l| l.registry.clone())
    }

    pub(crate) fn loaded(&self) -> Option<Loaded> {
        self.current.read().expect("lock").clone()
    }

    /// Reload from the file. On error the registry in force stays and the error is kept
    /// for `GET /v1/registry`.
    pub(crate) fn reload(&self) -> Result<Arc<Registry>, RegistryError> {
        let Some(path) = self.loaded().and_then(|l| l.path) else {
            return Err(RegistryError {
                path: "-".into(),
                message: "no registry is configured (governance.registry)".into(),
            });
        };
        let m = mtime(&path);
        match Registry::load(&path) {
            Ok(r) => {
                let r = Arc::new(r);
                *self.current.write().expect("lock") = Some(Loaded {
                    registry: r.clone(),
                    path: Some(path),
                    loaded_at: now_secs(),
                    mtime: m,
                    last_error: None,
                });
                Ok(r)
            }
            Err(e) => {
                if let Some(l) = self.current.write().expect("lock").as_mut() {
                    l.last_error = Some(e.to_string());
                    // Do not retry the same bad file on every watch tick.
                    l.mtime = m;
                }
                Err(e)
            }
        }
    }

    /// Has the file changed since it was last (attempted to be) loaded?
    pub(crate) fn file_changed(&self) -> bool {
        let Some(l) = self.loaded() else {
            return false;
        };
        match &l.path {
            Some(p) => mtime(p) != l.mtime,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"
mode = "enforce"
onboarding = "https://wiki/onboard"

[[consumer]]
group = "billing"
owner = "billing-team"
contact = "#billing"
topics = ["invoices"]
topic_prefixes = ["payments."]
lag_slo_seconds = 60

[[consumer]]
group_prefix = "analytics-"
principal = "User:analytics"
owner = "data"
contact = "data@example.com"
topics = ["clicks"]
tier = "probation"
lag_slo_seconds = 3600
mode = "shadow"

[[consumer]]
group = "analytics-special"
owner = "data"
contact = "data@example.com"
topics = ["clicks"]
lag_slo_seconds = 30

[[standalone]]
client_id = "offset-exporter"
"##;

    #[test]
    fn example_registry_is_valid() {
        let text = include_str!("../../config/registry.toml");
        Registry::parse(text, "config/registry.toml").unwrap();
    }

    #[test]
    fn principal_lists_and_forms() {
        let text = r#"
[[consumer]]
group = "billing"
principal = ["User:billing", "User:billing-batch"]
owner = "b"
contact = "c"
topics = ["t"]
lag_slo_seconds = 60

[[standalone]]
principal = "User:ops"
"#;
        let r = Registry::parse(text, "t").unwrap();
        for p in ["User:billing", "User:billing-batch"] {
            assert!(matches!(
                r.group_verdict("billing", p),
                GroupVerdict::Registered(_)
            ));
        }
        assert!(matches!(
            r.group_verdict("billing", "User:analytics"),
            GroupVerdict::WrongPrincipal(_)
        ));
        assert!(r.standalone_for("any", "User:ops").is_some());
        assert!(r.standalone_for("any", "ANONYMOUS").is_none());
        let bare = text.replace("\"User:billing\", ", "\"billing\", ");
        let err = Registry::parse(&bare, "t").unwrap_err().to_string();
        assert!(err.contains("User:billing"), "{err}");
        let empty = text.replace("[\"User:billing\", \"User:billing-batch\"]", "[]");
        assert!(Registry::parse(&empty, "t").is_err());
    }

    #[test]
    fn lookups() {
        let r = Registry::parse(GOOD, "t").unwrap();
        assert!(
            matches!(r.group_verdict("billing", "ANONYMOUS"), GroupVerdict::Registered(e) if e.owner == "billing-team")
        );
        assert_eq!(
            r.group_verdict("billing2", "ANONYMOUS"),
            GroupVerdict::Unregistered
        );
        assert!(matches!(
            r.group_verdict("analytics-x", "ANONYMOUS"),
            GroupVerdict::WrongPrincipal(_)
        ));
        let e = r.entry_for("analytics-x").unwrap();
        assert_eq!((e.tier, e.mode), (Tier::Probation, Some(Mode::Shadow)));
        // An exact entry beats a prefix.
        assert_eq!(
            r.entry_for("analytics-special").unwrap().lag_slo_seconds,
            30
        );
        let b = r.entry_for("billing").unwrap();
        assert!(b.allows_topic("invoices") && b.allows_topic("payments.eu"));
        assert!(!b.allows_topic("invoices2") && !b.allows_topic("payments"));
        assert!(r.standalone_for("offset-exporter", "ANONYMOUS").is_some());
        assert!(r.standalone_for("other", "ANONYMOUS").is_none());
        assert!(r.onboarding_hint().contains("https://wiki/onboard"));
    }

    #[test]
    fn errors_name_the_entry_and_key() {
        let cases = [
            ("[[consumer]]\ngroup=\"a\"\nowner=\"o\"\ncontact=\"c\"\nlag_slo_seconds=1\n", "consumer[0] (a): topics"),
            ("[[consumer]]\ngroup=\"a\"\ngroup_prefix=\"b\"\nowner=\"o\"\ncontact=\"c\"\ntopics=[\"t\"]\nlag_slo_seconds=1\n", "consumer[0] (a): group"),
            ("[[consumer]]\ngroup=\"a\"\nowner=\"o\"\ncontact=\"c\"\ntopics=[\"t\"]\nlag_slo_seconds=0\n", "lag_slo_seconds"),
            ("[[consumer]]\ngroup=\"a\"\nowner=\"o\"\ncontact=\"c\"\ntopics=[\"t\"]\nlag_slo_seconds=1\ntier=\"gold\"\n", "tier"),
            ("[[consumer]]\ngroup=\"a\"\nowner=\"o\"\ncontact=\"c\"\ntopics=[\"t\"]\nlag_slo_seconds=1\ncolour=1\n", "colour"),
            ("[[standalone]]\ntopics=[\"t\"]\n", "standalone[0]: client_id"),
            ("mode=\"loud\"\n", "mode"),
        ];
        for (text, want) in cases {
            let e = Registry::parse(text, "r.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
            assert!(e.starts_with("registry r.toml"), "{e}");
        }
    }

    #[test]
    fn rewind_limits_come_from_the_entry_or_the_registry_default() {
        let text = r#"
max_rewind_records = 1000

[[consumer]]
group = "ledger"
owner = "o"
contact = "c"
topics = ["t"]
lag_slo_seconds = 60
max_rewind_seconds = 3600

[[consumer]]
group = "replayer"
owner = "o"
contact = "c"
topics = ["t"]
lag_slo_seconds = 60
allow_rewind = true
"#;
        let r = Registry::parse(text, "t").unwrap();
        let (l, _) = r.rewind_limits("ledger").unwrap();
        assert_eq!((l.records, l.seconds), (Some(1000), Some(3600)));
        assert!(r.rewind_limits("replayer").is_none());
        assert!(r.rewind_limits("unregistered").is_none());
        assert!(Registry::parse("", "t")
            .unwrap()
            .rewind_limits("x")
            .is_none());
    }

    #[test]
    fn producer_entries_match_by_principal_and_client_and_own_their_topics() {
        let text = r#"
producer_mode = "shadow"

[[producer]]
principal = "User:web"
owner = "web"
contact = "c"
topics = ["clicks"]

[[producer]]
principal = "User:web"
client_id = "backfill"
owner = "web-batch"
contact = "c"
topic_prefixes = ["web."]
mode = "enforce"
"#;
        let r = Registry::parse(text, "t").unwrap();
        let owner = |client, principal, topic| match r.produce_verdict(client, principal, topic) {
            ProduceVerdict::Allowed(e) => e.owner.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(owner("rdkafka", "User:web", "clicks"), "web");
        assert_eq!(owner("backfill", "User:web", "web.x"), "web-batch");
        assert!(matches!(
            r.produce_verdict("rdkafka", "User:web", "web.x"),
            ProduceVerdict::TopicNotAllowed(e) if e.owner == "web"
        ));
        assert_eq!(
            r.produce_verdict("rdkafka", "ANONYMOUS", "clicks"),
            ProduceVerdict::Unregistered
        );
        assert_eq!(r.produce_mode(None), Mode::Shadow);
        assert_eq!(r.produce_mode(Some(&r.producers[1])), Mode::Enforce);
        assert_eq!(r.producers[1].name(), "User:web/client:backfill");
        let none = Registry::parse("", "t").unwrap();
        assert_eq!(
            none.produce_verdict("x", "ANONYMOUS", "t"),
            ProduceVerdict::Ungoverned
        );
    }

    #[test]
    fn producer_errors_name_the_entry_and_key() {
        let entry = "[[producer]]\nclient_id=\"w\"\nowner=\"o\"\ncontact=\"c\"\n";
        let cases = [
            ("[[producer]]\nowner=\"o\"\ncontact=\"c\"\ntopics=[\"t\"]\n", "producer[0] (?): principal"),
            (entry, "producer[0] (client:w): topics"),
            (&format!("{entry}topics=[\"t\"]\non_over_budget=\"throttle\"\n"), "produce_budget_bytes_per_second"),
            (&format!("{entry}topics=[\"t\"]\nproduce_budget_bytes_per_second=5\non_over_budget=\"demote\"\n"), "demote"),
            (&format!("{entry}topics=[\"t\"]\nprincipal=\"web\"\n"), "User:web"),
            (&format!("{entry}topics=[\"t\"]\nproduce_budget_bytes_per_second=5\n{entry}topics=[\"u\"]\nproduce_budget_bytes_per_second=5\n"), "producer[1] (client:w): produce_budget_bytes_per_second"),
            ("[[consumer]]\ngroup=\"a\"\nowner=\"o\"\ncontact=\"c\"\ntopics=[\"t\"]\nlag_slo_seconds=1\nread_budget_bytes_per_second=5\non_over_budget=\"reject\"\n", "for producers"),
        ];
        for (text, want) in cases {
            let e = Registry::parse(text, "r.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn a_bad_reload_keeps_the_registry_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, GOOD).unwrap();
        let h = RegistryHandle::open(&path).unwrap();
        assert_eq!(h.get().unwrap().consumers.len(), 3);
        std::fs::write(&path, "[[consumer]]\ngroup = 1\n").unwrap();
        let e = h.reload().unwrap_err();
        assert!(e.message.contains("group"), "{e}");
        assert_eq!(h.get().unwrap().consumers.len(), 3);
        assert!(h.loaded().unwrap().last_error.is_some());
        std::fs::write(
            &path,
            GOOD.replace("group = \"billing\"", "group = \"billing-v2\""),
        )
        .unwrap();
        let r = h.reload().unwrap();
        assert!(r.entry_for("billing-v2").is_some());
        assert!(h.loaded().unwrap().last_error.is_none());
    }
}
