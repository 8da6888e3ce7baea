//! The audit trail's writer thread (topic and file) and the reader showback uses.
//!
//! The writer creates `audit.topic` when it is missing (`cleanup.policy=delete`,
//! `retention.ms = audit.retention_ms`), and checks every 5 s that it is still there,
//! creating it again if it was deleted (events written meanwhile wait in the producer, up to
//! its 30 s message timeout). Every record
//! is keyed by the writing instance, so one instance's events stay in order. A write the
//! cluster does not acknowledge is counted (`tollgate_audit_events_dropped_total
//! {reason="write"}`), not retried past `message.timeout.ms`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::{Event, Msg, What};
use crate::control::config::AuditConfig;
use crate::control::state::{client_config, create_topic_with};
use crate::metrics::Metrics;

/// Least time between two attempts to create a missing audit topic.
const RECREATE_EVERY: Duration = Duration::from_secs(5);
/// How often the file is flushed while events keep coming.
const FILE_FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Most records one showback read goes through.
const MAX_READ: usize = 5_000_000;

/// Counts unacknowledged writes, and has the writer check the topic is there.
struct Delivery {
    metrics: Arc<Metrics>,
    missing: Arc<AtomicBool>,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            // Whatever the error (the topic deleted shows as unknown topic or as a timeout),
            // the writer checks that the topic is there at its next turn.
            debug!(error = %e, "audit event not acknowledged");
            self.missing.store(true, Ordering::SeqCst);
            self.metrics
                .audit_dropped
                .with_label_values(&["write"])
                .inc();
        }
    }
}

pub(super) fn spawn_writer(
    rx: Receiver<Msg>,
    bootstrap: Vec<String>,
    props: Vec<(String, String)>,
    config: AuditConfig,
    metrics: Arc<Metrics>,
) {
    let spawned = std::thread::Builder::new()
        .name("tollgate-audit".into())
        .spawn(move || Writer::open(bootstrap, props, config, metrics).run(&rx));
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the audit writer; audit events are not written");
    }
}

struct Writer {
    producer: Option<BaseProducer<Delivery>>,
    missing: Arc<AtomicBool>,
    created_at: Option<Instant>,
    file: Option<BufWriter<File>>,
    flushed_at: Instant,
    bootstrap: Vec<String>,
    props: Vec<(String, String)>,
    config: AuditConfig,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn open(
        bootstrap: Vec<String>,
        props: Vec<(String, String)>,
        config: AuditConfig,
        metrics: Arc<Metrics>,
    ) -> Writer {
        let missing = Arc::new(AtomicBool::new(true));
        let producer = (!config.topic.is_empty())
            .then(|| producer(&bootstrap, &props, &metrics, &missing))
            .and_then(|r| {
                r.map_err(|e| warn!(error = %e, "cannot make the audit producer"))
                    .ok()
            });
        let file = (!config.file.is_empty())
            .then(|| open_file(&config.file))
            .flatten();
        Writer {
            producer,
            missing,
            created_at: None,
            file,
            flushed_at: Instant::now(),
            bootstrap,
            props,
            config,
            metrics,
        }
    }

    fn run(mut self, rx: &Receiver<Msg>) {
        loop {
            self.ensure_topic();
            match rx.recv_timeout(FILE_FLUSH_EVERY) {
                Ok(Msg::Event(e)) => self.write(&e),
                Ok(Msg::Flush(done)) => {
                    self.flush(Duration::from_secs(10));
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(Duration::from_secs(10));
                    return;
                }
            }
            if self.flushed_at.elapsed() >= FILE_FLUSH_EVERY {
                self.flush(Duration::ZERO);
            }
        }
    }

    /// Every [`RECREATE_EVERY`]: is the topic there? (Created at start, and again when it
    /// was deleted or a write failed.)
    fn ensure_topic(&mut self) {
        let Some(p) = &self.producer else {
            return;
        };
        let recent = self
            .created_at
            .is_some_and(|t| t.elapsed() < RECREATE_EVERY);
        if recent {
            return;
        }
        self.created_at = Some(Instant::now());
        if !self.missing.load(Ordering::SeqCst) && topic_exists(p, &self.config.topic) {
            return;
        }
        match create_topic(&self.bootstrap, &self.props, &self.config) {
            Ok(created) => {
                self.missing.store(false, Ordering::SeqCst);
                if created {
                    info!(topic = self.config.topic, "audit topic created");
                }
            }
            Err(e) => warn!(topic = self.config.topic, error = %e, "cannot create the audit topic"),
        }
    }

    fn write(&mut self, event: &Event) {
        let Ok(json) = serde_json::to_vec(event) else {
            return;
        };
        if let Some(f) = &mut self.file {
            let ok = f.write_all(&json).and_then(|()| f.write_all(b"\n"));
            if ok.is_err() {
                self.metrics
                    .audit_dropped
                    .with_label_values(&["file"])
                    .inc();
            }
        }
        let Some(p) = &self.producer else {
            return;
        };
        let record = BaseRecord::to(&self.config.topic)
            .key(event.instance.as_bytes())
            .payload(&json);
        if let Err((e, record)) = p.send(record) {
            // A full local queue: give the cluster a moment, then try once more.
            p.poll(Duration::from_millis(100));
            if p.send(record).is_err() {
                warn!(error = %e, "audit producer queue full; event dropped");
                self.metrics
                    .audit_dropped
                    .with_label_values(&["write"])
                    .inc();
            }
        }
        p.poll(Duration::ZERO);
    }

    fn flush(&mut self, wait: Duration) {
        self.flushed_at = Instant::now();
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
        if let Some(p) = &self.producer {
            if wait.is_zero() {
                p.poll(Duration::ZERO);
            } else if let Err(e) = p.flush(wait) {
                warn!(error = %e, "audit events not acknowledged within {wait:?}");
            }
        }
    }
}

fn producer(
    bootstrap: &[String],
    props: &[(String, String)],
    metrics: &Arc<Metrics>,
    missing: &Arc<AtomicBool>,
) -> anyhow::Result<BaseProducer<Delivery>> {
    let context = Delivery {
        metrics: metrics.clone(),
        missing: missing.clone(),
    };
    Ok(client_config(bootstrap, props, "tollgate-audit")
        .set("message.timeout.ms", "30000")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "100")
        .set("compression.type", "lz4")
        // A deleted audit topic is recreated with its retention, not auto-created bare.
        .set("allow.auto.create.topics", "false")
        .create_with_context(context)?)
}

fn open_file(path: &str) -> Option<BufWriter<File>> {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => Some(BufWriter::new(f)),
        Err(e) => {
            warn!(path, error = %e, "cannot open audit.file; events go to the topic only");
            None
        }
    }
}

/// Does the cluster know `topic` (a failed check counts as yes: only a clear "unknown"
/// makes the writer create it)?
fn topic_exists(p: &BaseProducer<Delivery>, topic: &str) -> bool {
    match p
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
    {
        Ok(md) => md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()),
        Err(_) => true,
    }
}

/// Create the audit topic unless it exists; whether it was created.
fn create_topic(
    bootstrap: &[String],
    props: &[(String, String)],
    config: &AuditConfig,
) -> anyhow::Result<bool> {
    let client = client_config(bootstrap, props, "tollgate-audit");
    let retention = config.retention_ms.to_string();
    let settings = [("cleanup.policy", "delete"), ("retention.ms", &retention)];
    create_topic_with(&client, &config.topic, &settings, Duration::from_secs(10))
}

/// Every usage window in `topic` that ended after `since_ms`, from every instance. Blocking:
/// run it on a blocking thread. Reads from the first record at or after `since_ms` (by
/// timestamp) to the end the topic had when called.
pub(crate) fn read_usage(
    bootstrap: &[String],
    props: &[(String, String)],
    topic: &str,
    since_ms: u64,
    timeout: Duration,
) -> anyhow::Result<Vec<super::Usage>> {
    let consumer: BaseConsumer = client_config(bootstrap, props, "tollgate-showback")
        .set("group.id", "tollgate-showback-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut from = TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        from.add_partition_offset(topic, p.id(), Offset::Offset(since_ms as i64))?;
    }
    if from.count() == 0 {
        anyhow::bail!("audit topic {topic} has no partitions");
    }
    let from = consumer.offsets_for_times(from, timeout)?;
    let mut ends = Vec::new();
    for e in from.elements() {
        let (_, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        if let Offset::Offset(start) = e.offset() {
            if start < high {
                ends.push((e.partition(), start, high));
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, start, _) in &ends {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*start))?;
    }
    consumer.assign(&tpl)?;
    collect(&consumer, ends, since_ms, timeout)
}

/// Poll until every partition reached the end it had when the read began.
fn collect(
    consumer: &BaseConsumer,
    ends: Vec<(i32, i64, i64)>,
    since_ms: u64,
    timeout: Duration,
) -> anyhow::Result<Vec<super::Usage>> {
    let deadline = Instant::now() + timeout;
    let mut next: std::collections::HashMap<i32, (i64, i64)> =
        ends.into_iter().map(|(p, s, h)| (p, (s, h))).collect();
    let (mut out, mut read) = (Vec::new(), 0usize);
    while next.values().any(|(n, h)| n < h) {
        if Instant::now() > deadline || read > MAX_READ {
            anyhow::bail!("reading the audit topic took too long ({read} records)");
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        read += 1;
        if let Some(n) = next.get_mut(&m.partition()) {
            n.0 = m.offset() + 1;
        }
        let event = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Event>(p).ok());
        if let Some(Event {
            what: What::Usage(u),
            ..
        }) = event
        {
            if u.end_ms > since_ms {
                out.push(u);
            }
        }
    }
    Ok(out)
}
