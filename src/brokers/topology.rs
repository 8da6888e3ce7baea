//! The broker map, learned from the cluster's own responses, and one listener per broker.
//!
//! Scheme (port per broker): the broker with node id `N` is served on
//! `proxy.broker_port_base + (N mod proxy.max_brokers)` (with the defaults, 9100 + N mod 100),
//! on `proxy.broker_bind_host`, and advertised to clients as
//! `proxy.advertised_host:<that port>`. Any node id works with no setting: 0, 111, 1001–1003,
//! 2^31−1. The mapping is a pure function of the node id, so every Tollgate instance (and
//! every restart) advertises the same port for the same broker: clients that cached metadata
//! keep working. Two brokers whose ids are equal mod `max_brokers` (1 and 101) would share a
//! port: the second is refused with an error that names the keys to set, at start-up when
//! both are in the cluster then. With `proxy.node_id_base` set, the range rule applies
//! instead: `broker_port_base + (N - node_id_base)` for `N` in
//! `node_id_base..node_id_base + max_brokers`, and other ids are refused. With
//! `broker_port_base = 0` each broker gets any free port (tests, single instances).
//!
//! Nothing here is configured by hand: whenever a Metadata, FindCoordinator or DescribeCluster
//! response names a broker, [`Topology::advertise`] records its real address and, the first
//! time the node id is seen, binds its listener *before* the response goes back to the client,
//! so the client's next connect succeeds. Brokers that join later work without a restart. A
//! broker that moves to a new address is followed (new connections go to the new address).
//! Listeners of brokers that leave the cluster are kept: a broker that comes back finds its port.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Why a broker could not be given a listener.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "broker node id {node_id} is outside the configured range {lo}..={hi}; \
         set proxy.node_id_base / proxy.max_brokers to cover it"
    )]
    OutOfRange { node_id: i32, lo: i32, hi: i32 },
    #[error(
        "broker node ids {other} and {node_id} both map to port {port} (node id mod \
         proxy.max_brokers = {max_brokers}); set proxy.node_id_base and proxy.max_brokers so \
         that every node id falls in node_id_base..node_id_base+max_brokers, or raise \
         proxy.max_brokers"
    )]
    Collision {
        node_id: i32,
        other: i32,
        port: u16,
        max_brokers: u16,
    },
    #[error("cannot open listener for broker {node_id} on {addr}: {source}")]
    Bind {
        node_id: i32,
        addr: String,
        source: std::io::Error,
    },
}

impl TopologyError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            TopologyError::OutOfRange { .. } => "node_id_out_of_range",
            TopologyError::Collision { .. } => "port_collision",
            TopologyError::Bind { .. } => "bind",
        }
    }
}

/// Settings derived from the config.
#[derive(Debug, Clone)]
pub(crate) struct TopologySettings {
    pub(crate) advertised_host: String,
    pub(crate) bind_host: String,
    pub(crate) port_base: u16,
    /// `None`: any node id, by `N mod max_brokers`.
    pub(crate) node_id_base: Option<i32>,
    pub(crate) max_brokers: u16,
}

#[derive(Debug, Clone)]
struct Broker {
    upstream: String,
    port: u16,
}

/// A listener that was just opened for a broker; the server runs its accept loop.
pub(crate) struct NewListener {
    pub(crate) node_id: i32,
    pub(crate) listener: TcpListener,
}

/// The broker map.
pub struct Topology {
    settings: TopologySettings,
    brokers: RwLock<HashMap<i32, Broker>>,
    bind_lock: tokio::sync::Mutex<()>,
    new_listeners: mpsc::UnboundedSender<NewListener>,
    metrics: Arc<Metrics>,
}

/// A broker as Tollgate knows it (for the admin API and logs).
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct BrokerView {
    pub node_id: i32,
    pub upstream: String,
    pub advertised: String,
}

impl Topology {
    pub(crate) fn new(
        settings: TopologySettings,
        metrics: Arc<Metrics>,
    ) -> (Arc<Topology>, mpsc::UnboundedReceiver<NewListener>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Topology {
                settings,
                brokers: RwLock::new(HashMap::new()),
                bind_lock: tokio::sync::Mutex::new(()),
                new_listeners: tx,
                metrics,
            }),
            rx,
        )
    }

    /// The host clients are told to connect to.
    pub(crate) fn advertised_host(&self) -> &str {
        &self.settings.advertised_host
    }

    /// Record that broker `node_id` lives at `host:port` and return the port clients must use
    /// for it, opening its listener the first time.
    pub(crate) async fn advertise(
        &self,
        node_id: i32,
        host: &str,
        port: i32,
    ) -> Result<u16, TopologyError> {
        let upstream = format!("{host}:{port}");
        if let Some(b) = self.brokers.read().expect("lock").get(&node_id) {
            if b.upstream == upstream {
                return Ok(b.port);
            }
        }
        let _guard = self.bind_lock.lock().await;
        // Re-check under the bind lock: another connection may have done it.
        let existing = self.brokers.read().expect("lock").get(&node_id).cloned();
        if let Some(b) = existing {
            if b.upstream != upstream {
                info!(node_id, from = %b.upstream, to = %upstream, "broker moved");
                self.brokers.write().expect("lock").insert(
                    node_id,
                    Broker {
                        upstream,
                        port: b.port,
                    },
                );
            }
            return Ok(b.port);
        }
        let port = match self.port_for(node_id) {
            Ok(p) => p,
            Err(e) => {
                self.metrics
                    .broker_listener_errors
                    .with_label_values(&[e.reason()])
                    .inc();
                return Err(e);
            }
        };
        let addr = format!("{}:{port}", self.settings.bind_host);
        let listener = match TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(source) => {
                let e = TopologyError::Bind {
                    node_id,
                    addr,
                    source,
                };
                self.metrics
                    .broker_listener_errors
                    .with_label_values(&[e.reason()])
                    .inc();
                warn!(error = %e, "broker listener");
                return Err(e);
            }
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
        info!(node_id, upstream = %upstream, listen = %format!("{}:{port}", self.settings.bind_host),
              advertised = %format!("{}:{port}", self.settings.advertised_host), "new broker");
        self.brokers
            .write()
            .expect("lock")
            .insert(node_id, Broker { upstream, port });
        self.metrics
            .brokers_known
            .set(self.brokers.read().expect("lock").len() as i64);
        // The receiver lives as long as the server; if it is gone we are shutting down.
        let _ = self.new_listeners.send(NewListener { node_id, listener });
        Ok(port)
    }

    /// The port of broker `node_id` by the scheme in the module docs; a port another broker
    /// already has is a [`TopologyError::Collision`].
    fn port_for(&self, node_id: i32) -> Result<u16, TopologyError> {
        let s = &self.settings;
        if s.port_base == 0 {
            return Ok(0);
        }
        let max = i32::from(s.max_brokers);
        let offset = match s.node_id_base {
            Some(lo) => {
                let hi = lo.saturating_add(max - 1);
                if node_id < lo || node_id > hi {
                    return Err(TopologyError::OutOfRange { node_id, lo, hi });
                }
                node_id - lo
            }
            None => node_id.rem_euclid(max),
        };
        let port = s.port_base + offset as u16;
        let brokers = self.brokers.read().expect("lock");
        match brokers
            .iter()
            .find(|(id, b)| **id != node_id && b.port == port)
        {
            Some((other, _)) => Err(TopologyError::Collision {
                node_id,
                other: *other,
                port,
                max_brokers: s.max_brokers,
            }),
            None => Ok(port),
        }
    }

    /// Where broker `node_id` really is.
    pub(crate) fn upstream_addr(&self, node_id: i32) -> Option<String> {
        self.brokers
            .read()
            .expect("lock")
            .get(&node_id)
            .map(|b| b.upstream.clone())
    }

    /// Every known broker, by node id.
    pub fn brokers(&self) -> Vec<BrokerView> {
        let mut v: Vec<BrokerView> = self
            .brokers
            .read()
            .expect("lock")
            .iter()
            .map(|(&node_id, b)| BrokerView {
                node_id,
                upstream: b.upstream.clone(),
                advertised: format!("{}:{}", self.settings.advertised_host, b.port),
            })
            .collect();
        v.sort_by_key(|b| b.node_id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(port_base: u16) -> (Arc<Topology>, mpsc::UnboundedReceiver<NewListener>) {
        Topology::new(
            TopologySettings {
                advertised_host: "proxy".into(),
                bind_host: "127.0.0.1".into(),
                port_base,
                node_id_base: Some(100),
                max_brokers: 3,
            },
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn listeners_open_once_per_broker_and_follow_moves() {
        let (t, mut rx) = topo(0);
        let p1 = t.advertise(100, "b1", 9092).await.unwrap();
        let again = t.advertise(100, "b1", 9092).await.unwrap();
        assert_eq!(p1, again);
        let moved = t.advertise(100, "b1-new", 9093).await.unwrap();
        assert_eq!(p1, moved);
        assert_eq!(t.upstream_addr(100).as_deref(), Some("b1-new:9093"));
        let l = rx.recv().await.unwrap();
        assert_eq!(l.node_id, 100);
        assert_eq!(l.listener.local_addr().unwrap().port(), p1);
        assert!(rx.try_recv().is_err(), "only one listener per broker");
    }

    #[tokio::test]
    async fn node_ids_outside_the_range_are_refused() {
        let (t, _rx) = topo(40000);
        let e = t.advertise(103, "b", 1).await.unwrap_err();
        assert!(e.to_string().contains("proxy.node_id_base"), "{e}");
        assert!(t.advertise(99, "b", 1).await.is_err());
    }

    #[tokio::test]
    async fn ports_are_a_function_of_the_node_id() {
        // Find three consecutive free ports.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        let (t, _rx) = topo(base);
        match t.advertise(102, "b", 1).await {
            Ok(p) => assert_eq!(p, base + 2),
            Err(TopologyError::Bind { .. }) => {} // the port was taken meanwhile; not our bug
            Err(e) => panic!("{e}"),
        }
        assert!(t.brokers().len() <= 1);
    }

    /// `count` consecutive free ports (best effort: another process may take one meanwhile).
    fn free_ports(count: u16) -> u16 {
        loop {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let base = probe.local_addr().unwrap().port();
            drop(probe);
            let held: Vec<_> = (0..count)
                .map_while(|i| {
                    std::net::TcpListener::bind(("127.0.0.1", base.checked_add(i)?)).ok()
                })
                .collect();
            if held.len() == count as usize {
                return base;
            }
        }
    }

    fn auto(port_base: u16, max_brokers: u16) -> Arc<Topology> {
        let (t, rx) = Topology::new(
            TopologySettings {
                advertised_host: "proxy".into(),
                bind_host: "127.0.0.1".into(),
                port_base,
                node_id_base: None,
                max_brokers,
            },
            Arc::new(Metrics::new()),
        );
        std::mem::forget(rx); // keep the listeners open for the test's life
        t
    }

    #[tokio::test]
    async fn any_node_id_maps_to_a_port_with_no_setting() {
        let base = free_ports(100);
        let t = auto(base, 100);
        for (id, offset) in [
            (0, 0),
            (111, 11),
            (1001, 1),
            (1002, 2),
            (1003, 3),
            (i32::MAX, 47),
        ] {
            match t.advertise(id, "b", 9092).await {
                Ok(p) => assert_eq!(p, base + offset, "node id {id}"),
                Err(TopologyError::Bind { .. }) => {} // taken meanwhile by another process
                Err(e) => panic!("node id {id}: {e}"),
            }
        }
        // Another instance (or a restart) maps every id to the same port.
        let again = auto(base, 100);
        for (id, offset) in [(0, 0), (111, 11), (1001, 1), (i32::MAX, 47)] {
            assert_eq!(again.port_for(id).unwrap(), base + offset);
        }
    }

    #[tokio::test]
    async fn ids_equal_mod_max_brokers_are_a_clear_error() {
        let base = free_ports(10);
        let t = auto(base, 10);
        if t.advertise(1, "b1", 9092).await.is_ok() {
            let e = t.advertise(11, "b11", 9092).await.unwrap_err();
            assert!(
                matches!(e, TopologyError::Collision { other: 1, .. }),
                "{e}"
            );
            let text = e.to_string();
            assert!(text.contains("proxy.node_id_base") && text.contains("proxy.max_brokers"));
            // Explicit settings still win: a range that covers both.
            let (t, _rx) = Topology::new(
                TopologySettings {
                    node_id_base: Some(1),
                    max_brokers: 11,
                    ..t.settings.clone()
                },
                Arc::new(Metrics::new()),
            );
            assert_eq!(t.port_for(11).unwrap(), base + 10);
        }
    }
}
