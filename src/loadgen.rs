//! Load generation with a real Kafka client (rdkafka / librdkafka).
//!
//! Used by `tollgate loadgen` (the local stack's traffic) and by the end-to-end benchmark in
//! `benches/e2e.rs`, so both measure the same client behaviour. Everything here blocks the
//! calling thread (librdkafka has its own threads); call it from a plain thread or
//! `spawn_blocking`.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Extra librdkafka properties for every load-generating client, `k=v;k=v` (TLS or SASL
/// settings, e.g. `security.protocol=SSL;ssl.ca.location=ca.pem`).
pub const PROPS_ENV: &str = "TOLLGATE_LOADGEN_PROPS";

/// Client settings shared by every load-generating client.
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        // librdkafka's default 1 s backoff stalls a consumer when a broker returns more than
        // the per-partition maximum (tansu does); see PRODUCT.md.
        .set("fetch.queue.backoff.ms", "10")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    for kv in std::env::var(PROPS_ENV).unwrap_or_default().split(';') {
        if let Some((k, v)) = kv.split_once('=') {
            c.set(k.trim(), v.trim());
        }
    }
    c
}

/// Result of a produce run.
#[derive(Debug, Clone, Copy)]
pub struct ProduceStats {
    pub(crate) messages: u64,
    pub bytes: u64,
    pub(crate) elapsed: Duration,
    pub errors: u64,
}

impl ProduceStats {
    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

struct Counting {
    tx: std::sync::mpsc::Sender<(Instant, bool)>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        let _ = self.tx.send((*sent, result.is_ok()));
    }
}

/// Produce `count` messages of `size` bytes to `topic` as fast as the client allows, with
/// `acks` and an idempotent producer when `acks = "all"`.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    count: u64,
    size: usize,
    acks: &str,
) -> Result<ProduceStats, KafkaError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let producer: ThreadedProducer<Counting> = base_config(bootstrap)
        .set("acks", acks)
        .set(
            "enable.idempotence",
            if acks == "all" { "true" } else { "false" },
        )
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "60000")
        .create_with_context(Counting { tx })?;
    let payload = vec![b'x'; size];
    let start = Instant::now();
    let mut queued = 0u64;
    let mut done = 0u64;
    let mut errors = 0u64;
    while queued < count {
        let key = queued.to_be_bytes();
        let rec = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .key(&key[..])
            .payload(&payload[..]);
        match producer.send(rec) {
            Ok(()) => queued += 1,
            Err((KafkaError::MessageProduction(_), _)) => {
                // Queue full: let deliveries drain.
                while let Ok((_, ok)) = rx.recv_timeout(Duration::from_millis(5)) {
                    done += 1;
                    errors += u64::from(!ok);
                }
            }
            Err((e, _)) => return Err(e),
        }
    }
    while done < count {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((_, ok)) => {
                done += 1;
                errors += u64::from(!ok);
            }
            Err(_) => break,
        }
    }
    Ok(ProduceStats {
        messages: done,
        bytes: done * size as u64,
        elapsed: start.elapsed(),
        errors,
    })
}

/// Produce at a fixed `rate` (messages/s) for `duration`, with `linger.ms=0` and acks=all,
/// and return each message's acknowledgement latency.
pub fn produce_latency(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    duration: Duration,
    size: usize,
) -> Result<Vec<Duration>, KafkaError> {
    let timed = produce_latency_timed(bootstrap, topic, rate, duration, size)?;
    Ok(timed.into_iter().map(|(_, latency)| latency).collect())
}

/// [`produce_latency`], each latency with when its message was sent (from the start of the
/// measurement), so that latencies can be grouped into time windows.
pub fn produce_latency_timed(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    duration: Duration,
    size: usize,
) -> Result<Vec<(Duration, Duration)>, KafkaError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let producer: ThreadedProducer<Counting> = base_config(bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000")
        .create_with_context(Counting { tx })?;
    // Warm up: connections and metadata are not part of the measurement.
    producer
        .send(
            BaseRecord::<(), _, _>::with_opaque_to(topic, Box::new(Instant::now()))
                .payload("warmup"),
        )
        .map_err(|(e, _)| e)?;
    let _ = rx.recv_timeout(Duration::from_secs(30));
    let payload = vec![b'l'; size];
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let rec = BaseRecord::<(), _, _>::with_opaque_to(topic, Box::new(Instant::now()))
            .payload(&payload[..]);
        if let Err((e, _)) = producer.send(rec) {
            return Err(e);
        }
        while let Ok((sent, ok)) = rx.try_recv() {
            if ok {
                latencies.push((sent.saturating_duration_since(start), sent.elapsed()));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        if let Ok((sent, ok)) = rx.recv_timeout(Duration::from_millis(100)) {
            if ok {
                latencies.push((sent.saturating_duration_since(start), sent.elapsed()));
            }
        }
    }
    Ok(latencies)
}

/// How a consumer gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeMode {
    /// `assign()` every partition from the beginning.
    Assign,
    /// `subscribe()` in a fresh consumer group from the earliest offset.
    Group,
}

/// Result of a consume run.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeStats {
    pub messages: u64,
    pub bytes: u64,
    /// From the first record to the last (group join and metadata excluded).
    pub elapsed: Duration,
}

impl ConsumeStats {
    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// Read `expect` records of `topic` (with `partitions` partitions) from the beginning.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expect: u64,
    mode: ConsumeMode,
    group: &str,
    timeout: Duration,
) -> Result<ConsumeStats, KafkaError> {
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "52428800")
        .set("queued.max.messages.kbytes", "262144")
        .create()?;
    match mode {
        ConsumeMode::Assign => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            }
            consumer.assign(&tpl)?;
        }
        ConsumeMode::Group => consumer.subscribe(&[topic])?,
    }
    let deadline = Instant::now() + timeout;
    let mut first: Option<Instant> = None;
    let mut messages = 0u64;
    let mut bytes = 0u64;
    while messages < expect && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            messages += 1;
            bytes += m.payload_len() as u64;
        }
    }
    let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
    Ok(ConsumeStats {
        messages,
        bytes,
        elapsed,
    })
}

/// Steady traffic for the local stack: produce `rate` messages/s to `topic` and read them
/// back in consumer group `group`, printing a line every `report` interval, until `duration`
/// has passed (forever if `None`).
pub fn steady(
    bootstrap: &str,
    topic: &str,
    group: &str,
    rate: u64,
    size: usize,
    duration: Option<Duration>,
) -> Result<(), KafkaError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let producer: ThreadedProducer<Counting> = base_config(bootstrap)
        .set("client.id", "tollgate-loadgen-producer")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Counting { tx })?;
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("client.id", "tollgate-loadgen-consumer")
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let payload = vec![b's'; size];
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let mut next_report = start + Duration::from_secs(5);
    let (mut sent, mut acked, mut read) = (0u64, 0u64, 0u64);
    loop {
        if duration.is_some_and(|d| start.elapsed() >= d) {
            return Ok(());
        }
        let due = start + interval * sent as u32;
        if Instant::now() >= due {
            let key = sent.to_string();
            let rec = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
                .key(&key)
                .payload(&payload[..]);
            if producer.send(rec).is_ok() {
                sent += 1;
            }
        }
        while let Ok((_, ok)) = rx.try_recv() {
            acked += u64::from(ok);
        }
        if let Some(m) = consumer.poll(Duration::from_millis(1)) {
            if m.is_ok() {
                read += 1;
            }
        }
        if Instant::now() >= next_report {
            println!("loadgen: sent {sent}, acknowledged {acked}, read back {read} (topic {topic}, group {group})");
            next_report += Duration::from_secs(5);
        }
    }
}

/// The `q`-quantile (0..=1) of `v` (sorted in place).
pub fn quantile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    v[idx]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&mut v, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&mut v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&mut [], 0.5), Duration::ZERO);
    }
}
