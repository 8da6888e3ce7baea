//! The admin-plane rules of the registry: who may change the cluster's topics, groups and
//! ACLs through Tollgate, and what new topics must look like.
//!
//! ```toml
//! [admin_policy]
//! mode = "shadow"                                # the default: log, refuse nothing
//! topic_name_pattern = '^[a-z][a-z0-9-]*\.[a-z0-9.-]+$'
//! max_partitions = 64                            # CreateTopics, CreatePartitions
//! min_replication_factor = 2                     # CreateTopics (-1, the broker's default, passes)
//! max_replication_factor = 3
//! max_retention_ms = 604800000                   # retention.ms on create and alter (-1 is over)
//!
//! [[admin]]
//! principal = "User:platform"                    # one, or a list
//! rights = ["create_topics", "delete_topics", "create_partitions", "alter_configs",
//!           "delete_records", "delete_groups", "delete_offsets", "acls"]
//! topic_prefixes = ["platform."]                 # scope of the topic rights; none: all topics
//! group_prefixes = ["platform-"]                 # scope of the group rights; none: all groups
//! ```
//!
//! A principal may use an admin API on a resource when an `[[admin]]` entry names it, grants
//! the API's right and covers the resource. The naming rule and the limits apply to everyone,
//! admins included. With no `[admin_policy]` and no `[[admin]]`, the rules are evaluated in
//! shadow mode: nothing is refused, and what would be is logged and counted, so the policy
//! can be written from what the cluster's users really do.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::control::rules::{listed, Mode, Principals};

/// The registry's `[admin_policy]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminPolicy {
    #[serde(default = "shadow")]
    pub(crate) mode: Mode,
    #[serde(default)]
    pub(crate) topic_name_pattern: Option<String>,
    #[serde(default)]
    pub(crate) max_partitions: Option<i32>,
    #[serde(default)]
    pub(crate) min_replication_factor: Option<i16>,
    #[serde(default)]
    pub(crate) max_replication_factor: Option<i16>,
    #[serde(default)]
    pub(crate) max_retention_ms: Option<i64>,
    /// `topic_name_pattern`, compiled when the registry is loaded.
    #[serde(skip)]
    pub(crate) topic_name: Option<CompiledPattern>,
}

impl Default for AdminPolicy {
    fn default() -> Self {
        AdminPolicy {
            mode: Mode::Shadow,
            topic_name_pattern: None,
            max_partitions: None,
            min_replication_factor: None,
            max_replication_factor: None,
            max_retention_ms: None,
            topic_name: None,
        }
    }
}

/// A compiled pattern compared by its text (for the registry's `PartialEq`).
#[derive(Debug, Clone)]
pub(crate) struct CompiledPattern(pub(crate) Regex);

impl PartialEq for CompiledPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

fn shadow() -> Mode {
    Mode::Shadow
}

/// One admin-plane right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Right {
    CreateTopics,
    DeleteTopics,
    CreatePartitions,
    AlterConfigs,
    DeleteRecords,
    DeleteGroups,
    DeleteOffsets,
    Acls,
}

impl Right {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Right::CreateTopics => "create_topics",
            Right::DeleteTopics => "delete_topics",
            Right::CreatePartitions => "create_partitions",
            Right::AlterConfigs => "alter_configs",
            Right::DeleteRecords => "delete_records",
            Right::DeleteGroups => "delete_groups",
            Right::DeleteOffsets => "delete_offsets",
            Right::Acls => "acls",
        }
    }

    /// Rights on groups are scoped by `group_prefixes`; the others (but `acls`) by topics.
    fn on_groups(self) -> bool {
        matches!(self, Right::DeleteGroups | Right::DeleteOffsets)
    }
}

/// One `[[admin]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminEntry {
    pub(crate) principal: Principals,
    pub(crate) rights: Vec<Right>,
    #[serde(default)]
    pub(crate) topics: Vec<String>,
    #[serde(default)]
    pub(crate) topic_prefixes: Vec<String>,
    #[serde(default)]
    pub(crate) groups: Vec<String>,
    #[serde(default)]
    pub(crate) group_prefixes: Vec<String>,
}

/// An empty scope covers every name.
fn covers(names: &[String], prefixes: &[String], name: &str) -> bool {
    (names.is_empty() && prefixes.is_empty()) || listed(names, prefixes, name)
}

impl AdminEntry {
    /// Does this entry let `principal` use `right` on `resource` (a topic, a group, or
    /// nothing for ACLs)?
    pub(crate) fn grants(&self, principal: &str, right: Right, resource: &str) -> bool {
        if !self.principal.allows(principal) || !self.rights.contains(&right) {
            return false;
        }
        match right {
            Right::Acls => true,
            r if r.on_groups() => covers(&self.groups, &self.group_prefixes, resource),
            _ => covers(&self.topics, &self.topic_prefixes, resource),
        }
    }
}

/// Check the admin rules when the registry is loaded; compiles the naming pattern.
pub(crate) fn validate(policy: &mut AdminPolicy, entries: &[AdminEntry]) -> Result<(), String> {
    if let Some(p) = &policy.topic_name_pattern {
        let re = Regex::new(p).map_err(|e| {
            format!("admin_policy.topic_name_pattern: not a regular expression: {e}")
        })?;
        policy.topic_name = Some(CompiledPattern(re));
    }
    if policy.max_partitions.is_some_and(|n| n < 1) {
        return Err("admin_policy.max_partitions: must be at least 1".into());
    }
    if let (Some(lo), Some(hi)) = (policy.min_replication_factor, policy.max_replication_factor) {
        if lo > hi {
            return Err("admin_policy.min_replication_factor: above max_replication_factor".into());
        }
    }
    for (i, e) in entries.iter().enumerate() {
        e.principal
            .check()
            .map_err(|r| format!("admin[{i}]: principal: {r}"))?;
        if e.rights.is_empty() {
            return Err(format!("admin[{i}]: rights: list at least one right"));
        }
    }
    Ok(())
}
