//! Tollgate's own durable state, kept in Kafka: a compacted topic on the upstream cluster.
//!
//! State that must survive a restart or be shared by every Tollgate instance in front of the
//! same cluster (probation promotions, and the wire observations of [`crate::tier`]) is written as records `key → JSON value` to
//! `state.topic` (created with `cleanup.policy=compact` when missing). Every instance reads the
//! topic from the beginning at start-up and keeps tailing it, so a promotion made on one
//! instance (or before a restart) is in force on all of them within a poll interval. A record
//! with an empty value deletes its key. Nothing is kept on local disk.
//!
//! The store talks to the cluster directly (not through the proxy) with `rdkafka`, on its own
//! thread. If the topic cannot be created or read (ACLs, cluster down), Tollgate still starts:
//! state is then kept in memory only, `tollgate_state_store_up` is 0 and a warning is logged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

/// The store. Cheap to share (`Arc`).
pub struct StateStore {
    topic: Option<String>,
    values: Arc<Values>,
    producer: Option<BaseProducer>,
    stop: Arc<AtomicBool>,
    up: AtomicBool,
}

/// The store's content, and a version that moves on every change.
#[derive(Default)]
struct Values {
    map: Mutex<BTreeMap<String, serde_json::Value>>,
    version: std::sync::atomic::AtomicU64,
}

impl Values {
    fn set(&self, key: &str, value: Option<serde_json::Value>) {
        let mut m = self.map.lock().expect("lock");
        match value {
            Some(v) => m.insert(key.to_string(), v),
            None => m.remove(key),
        };
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for StateStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn base_config(bootstrap: &[String], props: &crate::mirror::Props) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap.join(","))
        .set("client.id", "tollgate-state")
        .set("socket.timeout.ms", "10000");
    for (k, v) in props {
        c.set(k, v);
    }
    c
}

impl StateStore {
    /// State in memory only (no `state.topic`).
    pub fn in_memory() -> StateStore {
        StateStore {
            topic: None,
            values: Arc::default(),
            producer: None,
            stop: Arc::new(AtomicBool::new(false)),
            up: AtomicBool::new(false),
        }
    }

    /// Open the store on `topic` and load it (up to `timeout`). Never fails: on error the
    /// store falls back to memory and says so.
    /// `props`: the cluster's TLS and SASL settings ([`crate::security::rdkafka_props`]).
    pub async fn open(
        bootstrap: Vec<String>,
        props: Vec<(String, String)>,
        topic: String,
        timeout: Duration,
    ) -> StateStore {
        let t = topic.clone();
        let opened = tokio::task::spawn_blocking(move || {
            Self::open_blocking(&bootstrap, &props, &t, timeout)
        })
        .await
        .map_err(|e| anyhow::anyhow!("state store thread: {e}"))
        .and_then(|r| r);
        match opened {
            Ok(store) => {
                info!(
                    topic,
                    keys = store.values.map.lock().expect("lock").len(),
                    "state store loaded"
                );
                store
            }
            Err(e) => {
                warn!(topic, error = %e, "state store unavailable; keeping state in memory only (lost on restart, not shared)");
                StateStore::in_memory()
            }
        }
    }

    fn open_blocking(
        bootstrap: &[String],
        props: &crate::mirror::Props,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<StateStore> {
        let admin: AdminClient<DefaultClientContext> = base_config(bootstrap, props).create()?;
        let new =
            NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let opts = AdminOptions::new().operation_timeout(Some(timeout));
        let results = rt.block_on(admin.create_topics([&new], &opts))?;
        for r in results {
            if let Err((t, code)) = r {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    anyhow::bail!("cannot create state topic {t}: {code}");
                }
            }
        }
        let consumer: BaseConsumer = base_config(bootstrap, props)
            // Used locally only: the store assigns partitions and never commits.
            .set("group.id", "tollgate-state-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "200")
            .create()?;
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            anyhow::bail!("state topic {topic} has no partitions");
        }
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
            let (_, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
            ends.push((*p, high));
        }
        consumer.assign(&tpl)?;
        let values: Arc<Values> = Arc::default();
        // Load up to the end offsets seen now, then keep tailing on a thread.
        let deadline = Instant::now() + timeout;
        let mut next: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
        while ends.iter().any(|(p, h)| next[p] < *h) {
            if Instant::now() > deadline {
                anyhow::bail!("timed out loading state topic {topic}");
            }
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m?;
                apply(&values, &m);
                next.insert(m.partition(), m.offset() + 1);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        {
            let values = values.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tollgate-state".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match consumer.poll(Duration::from_millis(200)) {
                            Some(Ok(m)) => apply(&values, &m),
                            Some(Err(e)) => warn!(error = %e, "state store read error"),
                            None => {}
                        }
                    }
                })?;
        }
        let producer: BaseProducer = base_config(bootstrap, props)
            .set("message.timeout.ms", "15000")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(StateStore {
            topic: Some(topic.to_string()),
            values,
            producer: Some(producer),
            stop,
            up: AtomicBool::new(true),
        })
    }

    /// Is the store backed by Kafka?
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Write `key → value` (applied locally at once, and sent to the topic) and wait until
    /// the cluster acknowledged it.
    pub fn put(&self, key: &str, value: serde_json::Value) -> anyhow::Result<()> {
        self.send(key, Some(value))?;
        if let Some(p) = &self.producer {
            p.flush(Duration::from_secs(10))
                .map_err(|e| anyhow::anyhow!("state store flush: {e}"))?;
        }
        Ok(())
    }

    /// Write `key → value` (`None`: delete the key) without waiting for the cluster: for
    /// state that is republished periodically anyway.
    pub fn send(&self, key: &str, value: Option<serde_json::Value>) -> anyhow::Result<()> {
        self.values.set(key, value.clone());
        if let (Some(p), Some(topic)) = (&self.producer, &self.topic) {
            let payload = value.map(|v| serde_json::to_vec(&v)).transpose()?;
            let mut record = BaseRecord::<str, [u8]>::to(topic).key(key);
            if let Some(bytes) = payload.as_deref() {
                record = record.payload(bytes);
            }
            p.send(record)
                .map_err(|(e, _)| anyhow::anyhow!("state store write: {e}"))?;
            p.poll(Duration::ZERO);
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.values.map.lock().expect("lock").get(key).cloned()
    }

    /// Every key starting with `prefix`, with its value.
    pub fn entries(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
        self.values
            .map
            .lock()
            .expect("lock")
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Moves on every change (local or read from the topic).
    pub fn version(&self) -> u64 {
        self.values.version.load(Ordering::Acquire)
    }
}

fn apply<M: Message>(values: &Values, m: &M) {
    let Some(Ok(key)) = m.key().map(std::str::from_utf8) else {
        return;
    };
    match m.payload() {
        None | Some([]) => values.set(key, None),
        Some(p) => match serde_json::from_slice(p) {
            Ok(value) => values.set(key, Some(value)),
            Err(e) => warn!(key, error = %e, "ignoring unreadable state record"),
        },
    }
}
