//! The registry's shared vocabulary: the enforcement mode, principal lists and name lists.
//! A leaf of `control`: the registry and its admin-plane rules both use it.

use serde::{Deserialize, Serialize};

/// The principal of a connection with no authenticated identity (Kafka's is `User:ANONYMOUS`).
pub(crate) const ANONYMOUS: &str = "ANONYMOUS";

/// Enforce (reject) or shadow (allow, but log and count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// Is `name` in `names`, or does it start with one of `prefixes`?
pub(crate) fn listed(names: &[String], prefixes: &[String], name: &str) -> bool {
    names.iter().any(|n| n == name) || prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// `principal = "User:billing"` or `principal = ["User:billing", "User:billing-batch"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Principals {
    One(String),
    Many(Vec<String>),
}

impl Principals {
    pub(crate) fn names(&self) -> &[String] {
        match self {
            Principals::One(p) => std::slice::from_ref(p),
            Principals::Many(ps) => ps,
        }
    }

    /// Does the list name `principal`? Tollgate calls an unauthenticated connection's
    /// principal `ANONYMOUS`; Kafka calls it `User:ANONYMOUS`, which is how a registry names it.
    pub(crate) fn allows(&self, principal: &str) -> bool {
        let kafka = (principal == ANONYMOUS).then_some("User:ANONYMOUS");
        self.names()
            .iter()
            .any(|p| p == principal || Some(p.as_str()) == kafka)
    }

    /// Every name is `Type:name` (Kafka's form, e.g. `User:billing`).
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.names().is_empty() {
            return Err("list at least one principal".into());
        }
        match self.names().iter().find(|p| {
            p.split_once(':')
                .is_none_or(|(t, n)| t.is_empty() || n.is_empty())
        }) {
            Some(p) => Err(format!(
                "{p:?} is not a principal; write it as Kafka does, e.g. \"User:{p}\""
            )),
            None => Ok(()),
        }
    }
}
