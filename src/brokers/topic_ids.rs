//! Topic id → name map.
//!
//! Produce v13, Fetch v13+ and OffsetCommit/OffsetFetch v10 name topics by id. Every Metadata
//! response that passes through fills this map; every layer that needs a topic's name asks it
//! ([`TopicIds::topic_of`]). Read-mostly: lookups take a read lock, and a Metadata response
//! only takes the write lock when it brings a new id.
//!
//! In a tier, a client's Metadata may have gone through another instance than its Fetch. An
//! id this instance does not know wakes [`TopicIds::missed`]; the server then asks the
//! cluster for every topic's metadata (at most every few seconds, so made-up ids cost a
//! bounded number of requests) and the name resolves from then on.

use std::collections::HashMap;
use std::sync::RwLock;

use tokio::sync::Notify;
use uuid::Uuid;

/// Topic id → name, learned from Metadata answers (Fetch v13+ names topics by id only).
#[derive(Default)]
pub struct TopicIds {
    names: RwLock<HashMap<Uuid, String>>,
    missed: Notify,
}

impl TopicIds {
    pub fn new() -> TopicIds {
        TopicIds::default()
    }

    /// Record topic ids from a Metadata response.
    pub(crate) fn learn(&self, topics: impl IntoIterator<Item = (Uuid, String)>) {
        let new: Vec<(Uuid, String)> = {
            let known = self.names.read().expect("lock");
            topics
                .into_iter()
                .filter(|(id, name)| !id.is_nil() && known.get(id) != Some(name))
                .collect()
        };
        if !new.is_empty() {
            self.names.write().expect("lock").extend(new);
        }
    }

    /// The name of a topic id; unknown ids are named by the id itself.
    pub(crate) fn name(&self, id: &Uuid) -> String {
        self.lookup(id).unwrap_or_else(|| id.to_string())
    }

    /// The name of a topic id if this instance knows it; a miss wakes [`TopicIds::missed`].
    pub(crate) fn lookup(&self, id: &Uuid) -> Option<String> {
        let found = self.names.read().expect("lock").get(id).cloned();
        if found.is_none() {
            self.missed.notify_one();
        }
        found
    }

    /// Ask for every topic's id soon (at start: own topics' ids must be known before any
    /// client names them by id).
    pub(crate) fn learn_all_soon(&self) {
        self.missed.notify_one();
    }

    /// Resolves when a lookup missed since the last call.
    pub(crate) async fn missed(&self) {
        self.missed.notified().await
    }

    /// The topic a request or response entry names: by name, or by id when the name is empty.
    pub(crate) fn topic_of(&self, name: &str, id: &Uuid) -> String {
        if name.is_empty() && !id.is_nil() {
            self.name(id)
        } else {
            name.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_once_learned_and_names_pass_through() {
        let ids = TopicIds::new();
        let id = Uuid::from_u128(7);
        assert_eq!(ids.topic_of("", &id), id.to_string());
        ids.learn([(id, "orders".to_string()), (Uuid::nil(), "x".to_string())]);
        assert_eq!(ids.topic_of("", &id), "orders");
        assert_eq!(ids.topic_of("named", &id), "named");
        assert_eq!(ids.name(&Uuid::nil()), Uuid::nil().to_string());
    }
}
