//! Tollgate's own durable state, kept in Kafka: a compacted topic on the upstream cluster.
//!
//! State that must survive a restart or be shared by every Tollgate instance in front of the
//! same cluster (probation promotions, and the wire observations of [`crate::peers`]) is written as records `key → JSON value` to
//! `state.topic` (created with `cleanup.policy=compact` when missing). Every instance reads the
//! topic from the beginning at start-up and keeps tailing it, so a promotion made on one
//! instance (or before a restart) is in force on all of them within a poll interval. A record
//! with an empty value deletes its key. Nothing is kept on local disk.
//!
//! The store talks to the cluster directly (not through the proxy) with `rdkafka`, on its own
//! thread. If the topic cannot be created or read (ACLs, cluster down), Tollgate still starts:
//! state is then kept in memory only, `tollgate_state_store_up` is 0 and a warning is logged.
//!
//! **The topic vanishing.** Someone may delete the state topic while Tollgate runs. The
//! reading thread checks every [`WATCH_EVERY`] that it is still there. When it is not, the
//! store says so (an error log, `tollgate_state_store_up` 0, a warning on `/readyz`), stops
//! writing (the tier's sharing pauses; the producer never auto-creates a non-compacted topic:
//! `allow.auto.create.topics=false`), keeps serving from what it holds in memory, and
//! recreates the topic (compacted) at the next check. Once the topic is back it rereads it
//! from the beginning and writes everything it holds, so durable state (promotions, lifted
//! budgets) survives the deletion as long as one instance lives.

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
use tracing::{debug, info, warn};

/// How often the reading thread checks that the state topic still exists.
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The store. Cheap to share (`Arc`).
pub(crate) struct StateStore {
    topic: Option<String>,
    values: Arc<Values>,
    producer: Option<Arc<BaseProducer>>,
    stop: Arc<AtomicBool>,
    /// Backed by the topic: false in memory, and while the topic is missing.
    up: Arc<AtomicBool>,
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

fn base_config(bootstrap: &[String], props: &crate::security::Props) -> ClientConfig {
    client_config(bootstrap, props, "tollgate-state")
}

/// An rdkafka client of Tollgate's own to the upstream cluster (`props`: its TLS and SASL
/// settings), named `client_id`. Shared by the state store and the audit trail.
pub(crate) fn client_config(
    bootstrap: &[String],
    props: &crate::security::Props,
    client_id: &str,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap.join(","))
        .set("client.id", client_id)
        .set("socket.timeout.ms", "10000");
    for (k, v) in props {
        c.set(k, v);
    }
    c
}

impl StateStore {
    /// State in memory only (no `state.topic`).
    pub(crate) fn in_memory() -> StateStore {
        StateStore {
            topic: None,
            values: Arc::default(),
            producer: None,
            stop: Arc::new(AtomicBool::new(false)),
            up: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Open the store on `topic` and load it (up to `timeout`). Never fails: on error the
    /// store falls back to memory and says so.
    /// `props`: the cluster's TLS and SASL settings ([`crate::security::rdkafka_props`]).
    pub(crate) async fn open(
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
        props: &crate::security::Props,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<StateStore> {
        create_topic(bootstrap, props, topic, timeout)?;
        let consumer: BaseConsumer = base_config(bootstrap, props)
            // Used locally only: the store assigns partitions and never commits.
            .set("group.id", "tollgate-state-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "200")
            // A recreated topic is read from its start (see `Reader::recreated`).
            .set("auto.offset.reset", "earliest")
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
        let producer: Arc<BaseProducer> = Arc::new(
            base_config(bootstrap, props)
                .set("message.timeout.ms", "15000")
                .set("enable.idempotence", "true")
                .set("acks", "all")
                // A deleted state topic must not come back as an ordinary (uncompacted) one.
                .set("allow.auto.create.topics", "false")
                .create()?,
        );
        let (stop, up) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(true)),
        );
        let reader = Reader {
            consumer,
            topic: topic.to_string(),
            bootstrap: bootstrap.to_vec(),
            props: props.to_vec(),
            values: values.clone(),
            producer: producer.clone(),
            up: up.clone(),
            next,
            regressed: false,
        };
        let halt = stop.clone();
        std::thread::Builder::new()
            .name("tollgate-state".into())
            .spawn(move || reader.run(&halt))?;
        Ok(StateStore {
            topic: Some(topic.to_string()),
            values,
            producer: Some(producer),
            stop,
            up,
        })
    }

    /// Is the store backed by Kafka (and is its topic there)?
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Why a store configured with a topic is not backed by it right now (`None`: it is, or
    /// no topic is configured).
    pub(crate) fn trouble(&self) -> Option<String> {
        let topic = self.topic.as_ref()?;
        (!self.is_up()).then(|| format!("state topic {topic} is missing; recreating it"))
    }

    /// Write `key → value` (applied locally at once, and sent to the topic) and wait until
    /// the cluster acknowledged it.
    pub(crate) fn put(&self, key: &str, value: serde_json::Value) -> anyhow::Result<()> {
        self.send(key, Some(value))?;
        if let Some(p) = self.producer.as_ref().filter(|_| self.is_up()) {
            p.flush(Duration::from_secs(10))
                .map_err(|e| anyhow::anyhow!("state store flush: {e}"))?;
        }
        Ok(())
    }

    /// Write `key → value` (`None`: delete the key) without waiting for the cluster: for
    /// state that is republished periodically anyway.
    pub(crate) fn send(&self, key: &str, value: Option<serde_json::Value>) -> anyhow::Result<()> {
        self.values.set(key, value.clone());
        match (&self.producer, &self.topic) {
            // While the topic is missing, only memory; it is all written once it is back.
            (Some(p), Some(topic)) if self.is_up() => write(p, topic, key, value.as_ref()),
            _ => Ok(()),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.values.map.lock().expect("lock").get(key).cloned()
    }

    /// Every key starting with `prefix`, with its value.
    pub(crate) fn entries(&self, prefix: &str) -> Vec<(String, serde_json::Value)> {
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
    pub(crate) fn version(&self) -> u64 {
        self.values.version.load(Ordering::Acquire)
    }
}

/// Send one record (`None`: a tombstone) without waiting.
fn write(
    p: &BaseProducer,
    topic: &str,
    key: &str,
    value: Option<&serde_json::Value>,
) -> anyhow::Result<()> {
    let payload = value.map(serde_json::to_vec).transpose()?;
    let mut record = BaseRecord::<str, [u8]>::to(topic).key(key);
    if let Some(bytes) = payload.as_deref() {
        record = record.payload(bytes);
    }
    p.send(record)
        .map_err(|(e, _)| anyhow::anyhow!("state store write: {e}"))?;
    p.poll(Duration::ZERO);
    Ok(())
}

/// Create the (compacted) state topic unless it exists.
fn create_topic(
    bootstrap: &[String],
    props: &crate::security::Props,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let config = base_config(bootstrap, props);
    create_topic_with(&config, topic, &[("cleanup.policy", "compact")], timeout).map(|_| ())
}

/// Create `topic` (one partition, the cluster's replication factor, `settings`) unless it
/// exists; whether it was created. Shared by the state store and the audit trail.
pub(crate) fn create_topic_with(
    config: &ClientConfig,
    topic: &str,
    settings: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<bool> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1));
    for (k, v) in settings {
        new = new.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let mut created = false;
    for r in rt.block_on(admin.create_topics([&new], &opts))? {
        match r {
            Ok(_) => created = true,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => anyhow::bail!("cannot create topic {t}: {code}"),
        }
    }
    Ok(created)
}

/// The store's reading thread: tails the topic, and watches that it is still there.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    bootstrap: Vec<String>,
    props: Vec<(String, String)>,
    values: Arc<Values>,
    producer: Arc<BaseProducer>,
    up: Arc<AtomicBool>,
    /// The next offset to read, by partition: a topic whose end is below it was recreated.
    next: BTreeMap<i32, i64>,
    /// An offset went backwards since the last check.
    regressed: bool,
}

impl Reader {
    fn run(mut self, stop: &AtomicBool) {
        let mut checked = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if checked.elapsed() >= WATCH_EVERY {
                checked = Instant::now();
                self.watch();
            }
            if !self.up.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    apply(&self.values, &m);
                    let before = self.next.insert(m.partition(), m.offset() + 1);
                    // Offsets only grow in one topic: going back means a new one.
                    self.regressed |= before.is_some_and(|n| m.offset() + 1 < n);
                }
                Some(Err(e)) => debug!(error = %e, "state store read error"),
                None => {}
            }
        }
    }

    /// Is the topic there? If it vanished: say so and recreate it. If it is back, or was
    /// recreated by someone else meanwhile (its end is below what was read): reread it and
    /// write what this instance holds.
    fn watch(&mut self) {
        let partitions = self
            .consumer
            .fetch_metadata(Some(&self.topic), WATCH_EVERY)
            .map(|md| {
                md.topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect::<Vec<i32>>()
            });
        let was_up = self.up.load(Ordering::SeqCst);
        match partitions {
            Ok(p) if !p.is_empty() && !was_up => self.recover(&p),
            Ok(p) if !p.is_empty() && (self.regressed || self.recreated(&p)) => {
                tracing::error!(
                    topic = self.topic,
                    "the state topic was recreated (deleted?)"
                );
                self.recover(&p)
            }
            Ok(p) if !p.is_empty() => {}
            Ok(_) => {
                if was_up {
                    self.up.store(false, Ordering::SeqCst);
                    tracing::error!(
                        topic = self.topic,
                        "the state topic is gone (deleted?); \
                        serving from memory and recreating it"
                    );
                }
                if let Err(e) = create_topic(&self.bootstrap, &self.props, &self.topic, WATCH_EVERY)
                {
                    warn!(topic = self.topic, error = %e, "cannot recreate the state topic");
                }
            }
            Err(e) => debug!(topic = self.topic, error = %e, "state topic check failed"),
        }
    }

    /// Whether a partition ends below the offset this reader reached: the topic is new.
    fn recreated(&self, partitions: &[i32]) -> bool {
        partitions.iter().any(|p| {
            let next = self.next.get(p).copied().unwrap_or(0);
            next > 0
                && matches!(self.consumer.fetch_watermarks(&self.topic, *p, WATCH_EVERY),
                    Ok((_, high)) if high < next)
        })
    }

    /// The topic is back: read it from the beginning again and write everything held here.
    fn recover(&mut self, partitions: &[i32]) {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            if tpl
                .add_partition_offset(&self.topic, *p, Offset::Beginning)
                .is_err()
            {
                return;
            }
        }
        if self.consumer.assign(&tpl).is_err() {
            return;
        }
        self.next.clear();
        self.regressed = false;
        let held: Vec<(String, serde_json::Value)> = self
            .values
            .map
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, value) in &held {
            if let Err(e) = write(&self.producer, &self.topic, key, Some(value)) {
                warn!(key, error = %e, "cannot rewrite a state record");
            }
        }
        self.up.store(true, Ordering::SeqCst);
        info!(
            topic = self.topic,
            records = held.len(),
            "the state topic is back; rewrote what this instance holds"
        );
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
