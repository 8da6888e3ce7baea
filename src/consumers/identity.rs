//! Who is on the other end of a client connection, and the live inventory of connections.
//!
//! Every connection carries a [`ConnInfo`]: its source address, the listener it came in on,
//! when it connected, the principal (from an mTLS certificate or a SASL exchange the broker
//! accepted; `ANONYMOUS` otherwise, see [`crate::security`]), the latest
//! `client.id` from its request headers, the client software name and version from its
//! ApiVersions request (v3+), and its request and byte counts. The connection loop updates it
//! for every request ([`ConnInfo::observe_request`]) before the policy stack runs, so every
//! layer sees the identity as of that request.
//!
//! The [`Inventory`] holds the `ConnInfo` of every open connection; `GET /v1/clients` lists
//! it. One Kafka client instance usually holds several connections (bootstrap, one per
//! broker); each is listed, with the same `client_id` and software.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
use kafka_protocol::protocol::Decodable;

use crate::wire::protocol::RequestMeta;

pub(crate) use crate::control::rules::ANONYMOUS;

/// Which listener a client connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// The bootstrap listener (`proxy.listen`): forwarded to a bootstrap server.
    Bootstrap,
    /// The listener of one broker, by node id.
    Broker(i32),
}

/// One client connection's identity and counters.
#[derive(Debug)]
pub struct ConnInfo {
    /// Process-unique connection id (used in logs).
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) listener: ListenerKind,
    pub(crate) connected_at: SystemTime,
    client_id: Mutex<Option<String>>,
    principal: Mutex<Principal>,
    sasl: Mutex<crate::security::sasl::Exchange>,
    software: Mutex<Option<(String, String)>>,
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    seen: Mutex<Seen>,
}

/// Who the connection is, as far as Tollgate can tell.
#[derive(Debug, Clone)]
struct Principal {
    name: Arc<str>,
    /// How it was established: `none`, `mtls` or the SASL mechanism.
    via: &'static str,
    /// The broker accepted a SASL exchange on this connection.
    sasl_done: bool,
}

/// Topics and groups a connection was seen using.
#[derive(Debug, Default)]
struct Seen {
    groups: BTreeSet<String>,
    produced: BTreeSet<String>,
    fetched: BTreeSet<String>,
}

/// Add `value` to `set` without allocating when it is already there.
fn note(set: &mut BTreeSet<String>, value: &str) {
    if !set.contains(value) {
        set.insert(value.to_string());
    }
}

/// A connection as `GET /v1/clients` shows it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub(crate) struct ClientView {
    pub(crate) connection_id: u64,
    pub(crate) address: String,
    pub(crate) listener: String,
    pub(crate) principal: String,
    /// How the principal was established: `none`, `mtls`, or the SASL mechanism.
    pub(crate) authenticated_by: String,
    pub(crate) client_id: Option<String>,
    pub(crate) software_name: Option<String>,
    pub(crate) software_version: Option<String>,
    /// Seconds since the Unix epoch.
    pub(crate) connected_since: u64,
    /// Groups the connection acted for (coordinator traffic, or fetches attributed to them;
    /// `(none)` marks group-less fetching).
    pub(crate) groups: Vec<String>,
    pub(crate) topics_produced: Vec<String>,
    pub(crate) topics_fetched: Vec<String>,
    pub(crate) requests: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

impl ConnInfo {
    pub fn new(id: u64, peer: SocketAddr, listener: ListenerKind) -> ConnInfo {
        ConnInfo {
            id,
            peer,
            listener,
            connected_at: SystemTime::now(),
            client_id: Mutex::new(None),
            principal: Mutex::new(Principal {
                name: Arc::from(ANONYMOUS),
                via: "none",
                sasl_done: false,
            }),
            sasl: Mutex::default(),
            software: Mutex::new(None),
            requests: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The client instance this connection belongs to (`client.id` and source host): what
    /// ties fetching connections to consumer groups ([`crate::consumers::groups`]).
    pub(crate) fn instance(&self) -> crate::consumers::groups::Instance {
        crate::consumers::groups::Instance {
            principal: self.principal().to_string(),
            client_id: self.client_id().unwrap_or_default(),
            host: self.peer.ip(),
        }
    }

    /// The connection produced to `topic`.
    pub(crate) fn note_produced(&self, topic: &str) {
        note(&mut self.seen.lock().expect("lock").produced, topic);
    }

    /// The connection fetched from `topic`.
    pub(crate) fn note_fetched(&self, topic: &str) {
        note(&mut self.seen.lock().expect("lock").fetched, topic);
    }

    /// The connection acts for consumer group `group` (as a member, or its fetches are
    /// attributed to it).
    pub(crate) fn note_group(&self, group: &str) {
        note(&mut self.seen.lock().expect("lock").groups, group);
    }

    /// The principal: `User:<name>` once authenticated, else [`ANONYMOUS`].
    pub(crate) fn principal(&self) -> Arc<str> {
        self.principal.lock().expect("lock").name.clone()
    }

    /// Whether the connection has an authenticated principal.
    pub(crate) fn is_authenticated(&self) -> bool {
        self.principal.lock().expect("lock").via != "none"
    }

    /// Whether the broker accepted a SASL exchange on this connection.
    pub(crate) fn sasl_done(&self) -> bool {
        self.principal.lock().expect("lock").sasl_done
    }

    /// The principal of the client certificate (mutual TLS), set once after the handshake.
    pub(crate) fn set_tls_principal(&self, name: String) {
        let mut p = self.principal.lock().expect("lock");
        p.name = Arc::from(name);
        p.via = "mtls";
    }

    /// The connection's SASL exchange, as the SASL layer follows it.
    pub(crate) fn sasl(&self) -> std::sync::MutexGuard<'_, crate::security::sasl::Exchange> {
        self.sasl.lock().expect("lock")
    }

    /// The broker accepted a SASL exchange with `mechanism`; `name` is its principal
    /// (`None`: not readable). It replaces any earlier principal (KIP-368 re-authentication,
    /// or SASL over mTLS, where Kafka also takes the SASL principal).
    pub(crate) fn set_sasl_principal(&self, mechanism: &'static str, name: Option<String>) {
        let mut p = self.principal.lock().expect("lock");
        p.sasl_done = true;
        match name {
            Some(n) => {
                p.name = Arc::from(format!("User:{n}"));
                p.via = mechanism;
            }
            None => {
                p.name = Arc::from(ANONYMOUS);
                p.via = "none";
            }
        }
    }

    /// The latest `client.id` seen on this connection.
    pub(crate) fn client_id(&self) -> Option<String> {
        self.client_id.lock().expect("lock").clone()
    }

    /// Record what a request tells about its sender. Cheap for every request: the client id
    /// is only copied when it changes, and only ApiVersions bodies are decoded.
    pub(crate) fn observe_request(&self, meta: &RequestMeta, frame: &Bytes) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_in
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if let Some(id) = meta.client_id.as_deref() {
            let mut current = self.client_id.lock().expect("lock");
            if current.as_deref() != Some(id) {
                *current = Some(id.to_string());
            }
        }
        if meta.api == Some(ApiKey::ApiVersions) && meta.api_version >= 3 {
            if let Some(offset) = meta.body_offset {
                let mut body = frame.slice(offset..);
                if let Ok(req) = ApiVersionsRequest::decode(&mut body, meta.api_version) {
                    *self.software.lock().expect("lock") = Some((
                        req.client_software_name.to_string(),
                        req.client_software_version.to_string(),
                    ));
                }
            }
        }
    }

    /// Count bytes sent to this client.
    pub(crate) fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn view(&self) -> ClientView {
        let software = self.software.lock().expect("lock").clone();
        let seen = self.seen.lock().expect("lock");
        ClientView {
            groups: seen.groups.iter().cloned().collect(),
            topics_produced: seen.produced.iter().cloned().collect(),
            topics_fetched: seen.fetched.iter().cloned().collect(),
            connection_id: self.id,
            address: self.peer.to_string(),
            listener: match self.listener {
                ListenerKind::Bootstrap => "bootstrap".into(),
                ListenerKind::Broker(n) => format!("broker-{n}"),
            },
            principal: self.principal().to_string(),
            authenticated_by: self.principal.lock().expect("lock").via.to_string(),
            client_id: self.client_id(),
            software_name: software.as_ref().map(|s| s.0.clone()),
            software_version: software.map(|s| s.1),
            connected_since: self
                .connected_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            requests: self.requests.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// Every open client connection.
#[derive(Default)]
pub(crate) struct Inventory {
    conns: Mutex<HashMap<u64, Arc<ConnInfo>>>,
}

impl Inventory {
    /// Add a connection; it is removed when the returned guard drops.
    pub(crate) fn register(self: &Arc<Self>, conn: Arc<ConnInfo>) -> InventoryGuard {
        let id = conn.id;
        self.conns.lock().expect("lock").insert(id, conn);
        InventoryGuard {
            inventory: self.clone(),
            id,
        }
    }

    /// Every open connection, by connection id.
    pub(crate) fn clients(&self) -> Vec<ClientView> {
        let mut v: Vec<ClientView> = self
            .conns
            .lock()
            .expect("lock")
            .values()
            .map(|c| c.view())
            .collect();
        v.sort_by_key(|c| c.connection_id);
        v
    }
}

/// Removes its connection from the inventory on drop.
pub(crate) struct InventoryGuard {
    inventory: Arc<Inventory>,
    id: u64,
}

impl Drop for InventoryGuard {
    fn drop(&mut self) {
        self.inventory.conns.lock().expect("lock").remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::{encode_request, parse_request};
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::StrBytes;

    fn api_versions(version: i16, client: &str, name: &str) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(version)
            .with_correlation_id(1)
            .with_client_id(Some(StrBytes::from_string(client.into())));
        let body = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_string(name.into()))
            .with_client_software_version(StrBytes::from_static_str("2.12.1"));
        encode_request(&header, &body).unwrap()
    }

    #[test]
    fn identity_comes_from_headers_and_api_versions() {
        let c = ConnInfo::new(7, "10.0.0.1:5000".parse().unwrap(), ListenerKind::Broker(3));
        let f = api_versions(3, "billing-app", "librdkafka");
        c.observe_request(&parse_request(&f).unwrap(), &f);
        c.add_bytes_out(10);
        let v = c.view();
        assert_eq!(v.client_id.as_deref(), Some("billing-app"));
        assert_eq!(v.software_name.as_deref(), Some("librdkafka"));
        assert_eq!(v.software_version.as_deref(), Some("2.12.1"));
        assert_eq!(v.principal, ANONYMOUS);
        assert_eq!(v.listener, "broker-3");
        assert_eq!(
            (v.requests, v.bytes_in, v.bytes_out),
            (1, f.len() as u64, 10)
        );
        // ApiVersions v0-2 carry no software name.
        let c = ConnInfo::new(8, "10.0.0.1:5001".parse().unwrap(), ListenerKind::Bootstrap);
        let f = api_versions(2, "old", "ignored");
        c.observe_request(&parse_request(&f).unwrap(), &f);
        assert_eq!(c.view().software_name, None);
        assert_eq!(c.view().client_id.as_deref(), Some("old"));
    }

    #[test]
    fn inventory_forgets_closed_connections() {
        let inv = Arc::new(Inventory::default());
        let a = inv.register(Arc::new(ConnInfo::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            ListenerKind::Bootstrap,
        )));
        let b = inv.register(Arc::new(ConnInfo::new(
            2,
            "127.0.0.1:2".parse().unwrap(),
            ListenerKind::Bootstrap,
        )));
        assert_eq!(inv.clients().len(), 2);
        drop(a);
        assert_eq!(
            inv.clients()
                .iter()
                .map(|c| c.connection_id)
                .collect::<Vec<_>>(),
            vec![2]
        );
        drop(b);
        assert!(inv.clients().is_empty());
    }
}
