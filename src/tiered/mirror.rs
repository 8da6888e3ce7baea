//! `tollgate mirror`: copy topics from the primary cluster to the secondary,
//! partition-for-partition, for tiered reads.
//!
//! Every record keeps its key, value, headers and timestamp, and lands in the same partition
//! number of the secondary topic (same name, or MirrorMaker 2's `<source_alias>.<topic>`,
//! see `tiered.topic_naming`). The producer is idempotent with librdkafka's gapless
//! guarantee, and the mirror reads the primary with `read_committed`.
//!
//! **Offset syncs** use MirrorMaker 2's format, so Tollgate reads MM2's and MM2's tools read
//! ours: key = topic (int16 length + UTF-8) + partition (int32), value = upstream offset
//! (int64) + downstream offset (int64), big-endian. A sync is written whenever the mapping
//! changes: before the first record of a partition, and before the first record after any
//! gap in the primary's offsets (transaction markers, aborted records, compaction). Between
//! two syncs the two offsets advance together, so the translation is exact for every offset,
//! and after the last sync it is exact up to the secondary's high watermark. The topic is
//! created with `cleanup.policy=delete` and no retention limit: Tollgate needs the whole
//! history, and compaction would keep only the latest sync per partition.
//!
//! **Resuming without gaps or duplicates**: everything sent before a sync is flushed before
//! the sync is written, and the sync is flushed before the next record is sent. So the latest
//! sync `(up, down)` of a partition always has `down <=` the secondary's end offset, and the
//! records after it are contiguous: a restarted mirror resumes at
//! `up + (secondary end offset - down)`. The end offset is read from a Fetch response, not
//! ListOffsets (see docs/testing.md on tansu). A secondary partition with records but no sync
//! (written by something else) is refused rather than guessed at. A record that cannot be
//! written stops the mirror (exit 1); the restart resumes exactly.
//!
//! Known cost: a transactional primary topic has a marker after every transaction, so each
//! transaction costs one sync and two producer flushes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::info;

use crate::brokers::upstream::UpstreamSettings;
use crate::control::config::Config;
use crate::metrics::Metrics;
use crate::tiered::cluster::ClusterClient;

/// What to mirror, from where to where.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    pub(crate) source: String,
    pub(crate) target: String,
    pub(crate) topics: Vec<String>,
    /// Primary topic name to secondary topic name.
    pub(crate) naming: crate::control::config::TieredConfig,
    /// The offset-syncs topic on the target.
    pub(crate) offset_syncs_topic: String,
    /// Exit once every partition has reached the primary's end (otherwise: run until
    /// `stop` is set).
    pub(crate) until_caught_up: bool,
    /// Most records per produce batch on the secondary.
    pub(crate) batch_records: u32,
    /// How the mirror's own connections reach each cluster (TLS, SASL).
    pub(crate) source_settings: UpstreamSettings,
    pub(crate) target_settings: UpstreamSettings,
    /// The same, as librdkafka properties.
    pub(crate) source_props: Vec<(String, String)>,
    pub(crate) target_props: Vec<(String, String)>,
}

impl MirrorOptions {
    /// The mirror described by a configuration's `upstream` and `tiered` sections.
    pub fn from_config(cfg: &Config, until_caught_up: bool) -> anyhow::Result<MirrorOptions> {
        let t = &cfg.tiered;
        if t.secondary_bootstrap_servers.is_empty() {
            bail!("tiered.secondary_bootstrap_servers is empty: where should the mirror write?");
        }
        if t.topics.is_empty() {
            bail!("tiered.topics is empty: name the topics to mirror");
        }
        if t.offset_syncs_cluster != crate::control::config::SyncsCluster::Secondary {
            bail!(
                "tollgate mirror writes its offset syncs on the secondary; set \
                 tiered.offset_syncs_cluster = \"secondary\" (\"primary\" is for MirrorMaker 2)"
            );
        }
        Ok(MirrorOptions {
            source: cfg.upstream.bootstrap_servers.join(","),
            target: t.secondary_bootstrap_servers.join(","),
            topics: t.topics.clone(),
            naming: t.clone(),
            offset_syncs_topic: t.offset_syncs_topic.clone(),
            until_caught_up,
            batch_records: t.mirror_batch_records,
            source_settings: UpstreamSettings::plain(TIMEOUT, 64 << 20)
                .secured(&cfg.upstream.tls, cfg.upstream.sasl.as_ref())?,
            target_settings: UpstreamSettings::plain(TIMEOUT, 64 << 20)
                .secured(&t.secondary_tls, t.secondary_sasl.as_ref())?,
            source_props: crate::security::rdkafka_props(
                &cfg.upstream.tls,
                cfg.upstream.sasl.as_ref(),
            )?,
            target_props: crate::security::rdkafka_props(
                &t.secondary_tls,
                t.secondary_sasl.as_ref(),
            )?,
        })
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorStats {
    pub records: u64,
    pub syncs: u64,
}

/// A topic and partition.
pub(crate) type TopicPart = (String, i32);
/// One offset sync: (primary topic, partition) and (upstream offset, downstream offset).
pub(crate) type OffsetSync = (TopicPart, (i64, i64));

/// Encode an offset-sync key: topic (int16 length + UTF-8) + partition (int32).
pub(crate) fn sync_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + topic.len() + 4);
    k.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Encode an offset-sync value: upstream offset + downstream offset (int64 each).
pub(crate) fn sync_value(upstream: i64, downstream: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&upstream.to_be_bytes());
    v[8..].copy_from_slice(&downstream.to_be_bytes());
    v
}

/// Decode an offset sync: ((topic, partition), (upstream, downstream)).
pub(crate) fn decode_sync(key: &[u8], value: &[u8]) -> Option<OffsetSync> {
    let len = i16::from_be_bytes(key.get(..2)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let topic = std::str::from_utf8(key.get(2..2 + len)?).ok()?.to_string();
    let partition = i32::from_be_bytes(key.get(2 + len..6 + len)?.try_into().ok()?);
    if key.len() != 6 + len || value.len() != 16 {
        return None;
    }
    let up = i64::from_be_bytes(value[..8].try_into().ok()?);
    let down = i64::from_be_bytes(value[8..].try_into().ok()?);
    Some(((topic, partition), (up, down)))
}

/// Cluster properties for librdkafka: TLS and SASL ([`crate::security::rdkafka_props`]).
pub(crate) use crate::security::Props;

fn config(bootstrap: &str, client_id: &str, props: &Props) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", client_id);
    for (k, v) in props {
        c.set(k, v);
    }
    c
}

/// A consumer context that does not log end-of-partition (an expected event here) as an
/// error.
pub(crate) struct EofQuiet;

impl ClientContext for EofQuiet {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofQuiet {}

const TIMEOUT: Duration = Duration::from_secs(15);

/// A read_committed consumer (for assign()) that reports end-of-partition, quietly.
pub(crate) fn eof_consumer(
    bootstrap: &str,
    client_id: &str,
    props: &Props,
) -> anyhow::Result<BaseConsumer<EofQuiet>> {
    config(bootstrap, client_id, props)
        // Required by librdkafka even for assign(); no group request is ever sent.
        .set("group.id", "tollgate-mirror-local")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.queue.backoff.ms", "10")
        .create_with_context(EofQuiet)
        .context("creating a consumer")
}

/// The partitions of `topic`, or `None` when the cluster does not have it.
pub(crate) fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    c: &BaseConsumer<C>,
    topic: &str,
) -> anyhow::Result<Option<Vec<i32>>> {
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("metadata for {topic}"))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect()))
}

/// Every offset sync in `topic` on `bootstrap`, in the order written, read to the end.
/// An absent topic has none.
pub fn read_syncs(bootstrap: &str, props: &Props, topic: &str) -> anyhow::Result<Vec<OffsetSync>> {
    let c = eof_consumer(bootstrap, "tollgate-mirror-syncs", props)?;
    let Some(partitions) = topic_partitions(&c, topic)? else {
        return Ok(Vec::new());
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while !open.is_empty() {
        if Instant::now() > deadline {
            bail!("timed out reading the offset syncs in {topic}");
        }
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e).context("reading offset syncs"),
            Some(Ok(m)) => {
                if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                    if let Some(sync) = decode_sync(k, v) {
                        out.push(sync);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    rt: &tokio::runtime::Runtime,
    topics: &[NewTopic<'_>],
) -> anyhow::Result<()> {
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for r in rt.block_on(admin.create_topics(topics, &opts))? {
        if let Err((t, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("cannot create topic {t} on the secondary: {code}");
            }
        }
    }
    Ok(())
}

/// Remembers the first failed delivery: the mirror then stops (a restart resumes exactly),
/// rather than go on with a hole in the target.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed
                .lock()
                .expect("lock")
                .get_or_insert_with(|| e.to_string());
        }
    }
}

fn check(producer: &BaseProducer<Deliveries>) -> anyhow::Result<()> {
    match producer.context().failed.lock().expect("lock").as_ref() {
        Some(e) => bail!(
            "a record could not be written to the secondary ({e}); stopping so that a restart \
             resumes without a gap"
        ),
        None => Ok(()),
    }
}

struct PartState {
    /// The primary offset the next record should have; another one means the mapping
    /// changes (and `None`: nothing mirrored yet, the first record needs a sync).
    expect: Option<i64>,
    /// The secondary offset the next record will get.
    next_target: i64,
    /// Reached the primary's end at least once.
    caught_up: bool,
}

/// Where to resume one partition: `Some(primary offset)`, or `None` for a fresh partition
/// (from the beginning). `latest` is the partition's latest sync, `target_end` the
/// secondary's end offset.
pub(crate) fn resume_at(
    latest: Option<(i64, i64)>,
    target_end: i64,
    what: &str,
) -> anyhow::Result<Option<i64>> {
    match latest {
        Some((up, down)) if down <= target_end => Ok(Some(up + (target_end - down))),
        Some((up, down)) => bail!(
            "{what}: the latest offset sync ({up} -> {down}) is past the secondary's end \
             offset {target_end}; the secondary was truncated or written by something else"
        ),
        None if target_end == 0 => Ok(None),
        None => bail!(
            "{what} has {target_end} records but no offset sync: it was not written by tollgate \
             mirror, so its offsets cannot be translated exactly (mirror into an empty topic)"
        ),
    }
}

/// Mirror until caught up (with `until_caught_up`) or until `stop` is set. Blocks.
pub fn run(opts: &MirrorOptions, stop: Arc<AtomicBool>) -> anyhow::Result<MirrorStats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let source = eof_consumer(&opts.source, "tollgate-mirror", &opts.source_props)?;
    let mut partitions: Vec<TopicPart> = Vec::new();
    for topic in &opts.topics {
        let found = topic_partitions(&source, topic)?
            .with_context(|| format!("topic {topic} not found on {}", opts.source))?;
        partitions.extend(found.into_iter().map(|p| (topic.clone(), p)));
    }
    create_secondary_topics(opts, &rt, &partitions)?;
    let cluster = |servers: &str, settings: &UpstreamSettings| {
        let servers = servers.split(',').map(str::to_string).collect();
        ClusterClient::new(servers, settings.clone(), Arc::new(Metrics::new()))
    };
    let secondary = cluster(&opts.target, &opts.target_settings);
    let primary = cluster(&opts.source, &opts.source_settings);
    let producer: BaseProducer<Deliveries> =
        config(&opts.target, "tollgate-mirror", &opts.target_props)
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", opts.batch_records.to_string())
            .create_with_context(Deliveries::default())
            .context("secondary producer")?;
    let (mut state, tpl) = resume_points(opts, &rt, &secondary, &partitions)?;
    source.assign(&tpl)?;
    let mut stats = MirrorStats::default();
    while !stop.load(Ordering::SeqCst) {
        if opts.until_caught_up && state.values().all(|s| s.caught_up) {
            break;
        }
        let m = match source.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if opts.until_caught_up {
                    note_caught_up(&source, &rt, &primary, &mut state, p);
                }
                continue;
            }
            Some(Err(e)) => return Err(e).context("reading the primary"),
            Some(Ok(m)) => m,
        };
        let key = (m.topic().to_string(), m.partition());
        let s = state
            .get_mut(&key)
            .context("a record from a partition that is not mirrored")?;
        if s.expect != Some(m.offset()) {
            // First record, or a gap (transaction marker, compaction, aborted records).
            write_sync(opts, &producer, &key.0, key.1, m.offset(), s.next_target)?;
            stats.syncs += 1;
        }
        copy(&producer, &m, &opts.naming.secondary_topic(&key.0))?;
        s.expect = Some(m.offset() + 1);
        s.next_target += 1;
        stats.records += 1;
    }
    producer.flush(TIMEOUT).context("flushing the secondary")?;
    check(&producer)?;
    Ok(stats)
}

/// Secondary topics with the primary's partition counts, and the offset-syncs topic.
fn create_secondary_topics(
    opts: &MirrorOptions,
    rt: &tokio::runtime::Runtime,
    partitions: &[TopicPart],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        config(&opts.target, "tollgate-mirror", &opts.target_props)
            .create()
            .context("secondary admin client")?;
    let mut counts: BTreeMap<String, i32> = BTreeMap::new();
    for (t, _) in partitions {
        *counts.entry(opts.naming.secondary_topic(t)).or_default() += 1;
    }
    let mut specs: Vec<NewTopic<'_>> = counts
        .iter()
        .map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(-1)))
        .collect();
    specs.push(
        NewTopic::new(&opts.offset_syncs_topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "delete")
            .set("retention.ms", "-1"),
    );
    create_topics(&admin, rt, &specs)
}

/// Where each partition resumes: from the latest offset sync and the secondary's end.
fn resume_points(
    opts: &MirrorOptions,
    rt: &tokio::runtime::Runtime,
    secondary: &ClusterClient,
    partitions: &[TopicPart],
) -> anyhow::Result<(BTreeMap<TopicPart, PartState>, TopicPartitionList)> {
    let latest: BTreeMap<TopicPart, (i64, i64)> =
        read_syncs(&opts.target, &opts.target_props, &opts.offset_syncs_topic)?
            .into_iter()
            .collect();
    let mut state = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        let target = opts.naming.secondary_topic(topic);
        let sync = latest.get(&(topic.clone(), *p)).copied();
        let target_end = rt
            .block_on(secondary.high_watermark(&target, *p, sync.map_or(0, |s| s.1), TIMEOUT))
            .with_context(|| format!("end offset of {target}[{p}] on the secondary"))?;
        let resume = resume_at(sync, target_end, &format!("{target}[{p}]"))?;
        tpl.add_partition_offset(topic, *p, resume.map_or(Offset::Beginning, Offset::Offset))?;
        state.insert(
            (topic.clone(), *p),
            PartState {
                expect: resume,
                next_target: target_end,
                caught_up: false,
            },
        );
        info!(
            topic,
            partition = p,
            ?resume,
            target_end,
            "mirroring partition"
        );
    }
    Ok((state, tpl))
}

/// EOF names only the partition number: compare the consumer's position (past any
/// transaction markers) of each mirrored topic's partition `p` with the primary's high
/// watermark.
fn note_caught_up(
    source: &BaseConsumer<EofQuiet>,
    rt: &tokio::runtime::Runtime,
    primary: &ClusterClient,
    state: &mut BTreeMap<TopicPart, PartState>,
    p: i32,
) {
    let positions = source.position().unwrap_or_default();
    for ((topic, part), s) in state.iter_mut() {
        if *part != p || s.caught_up {
            continue;
        }
        let pos = match positions.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => s.expect.unwrap_or(0),
        };
        if let Ok(hw) = rt.block_on(primary.high_watermark(topic, p, pos, TIMEOUT)) {
            s.caught_up = pos >= hw;
        }
    }
}

/// Write an offset sync: everything before it is durable first, and it before what follows.
fn write_sync(
    opts: &MirrorOptions,
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    p: i32,
    up: i64,
    down: i64,
) -> anyhow::Result<()> {
    producer.flush(TIMEOUT)?;
    check(producer)?;
    producer
        .send(
            BaseRecord::to(&opts.offset_syncs_topic)
                .key(&sync_key(topic, p))
                .payload(&sync_value(up, down)[..]),
        )
        .map_err(|(e, _)| e)?;
    producer.flush(TIMEOUT)?;
    check(producer)
}

/// Produce one record to the same partition of `target`: key, value, timestamp, headers.
fn copy<M: Message>(
    producer: &BaseProducer<Deliveries>,
    m: &M,
    target: &str,
) -> anyhow::Result<()> {
    let mut rec = BaseRecord::to(target).partition(m.partition());
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    if let Some(v) = m.payload() {
        rec = rec.payload(v);
    }
    if let Some(ts) = m.timestamp().to_millis() {
        rec = rec.timestamp(ts);
    }
    if let Some(h) = m.headers() {
        let mut out = OwnedHeaders::new_with_capacity(h.count());
        for hd in h.iter() {
            out = out.insert(Header {
                key: hd.key,
                value: hd.value,
            });
        }
        rec = rec.headers(out);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => break,
            Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(10));
                rec = r;
            }
            Err((e, _)) => return Err(e).context("producing to the secondary"),
        }
    }
    producer.poll(Duration::ZERO);
    check(producer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_sync_encoding_round_trips_in_mm2_format() {
        let k = sync_key("orders", 7);
        assert_eq!(&k[..2], &[0, 6]);
        assert_eq!(&k[2..8], b"orders");
        assert_eq!(&k[8..], &7i32.to_be_bytes());
        let v = sync_value(1234, 56);
        assert_eq!(
            decode_sync(&k, &v),
            Some((("orders".into(), 7), (1234, 56)))
        );
        assert_eq!(decode_sync(&k[..5], &v), None);
        assert_eq!(decode_sync(&k, &v[..15]), None);
        let mut t = crate::control::config::TieredConfig::default();
        assert_eq!(t.secondary_topic("orders"), "orders");
        t.topic_naming = crate::control::config::TopicNaming::Prefix;
        assert_eq!(t.secondary_topic("orders"), "primary.orders");
    }

    #[test]
    fn resume_is_exact_or_refused() {
        assert_eq!(resume_at(None, 0, "t[0]").unwrap(), None);
        assert!(resume_at(None, 5, "t[0]").is_err());
        // Sync 100 -> 0, then 7 records landed: resume at 107.
        assert_eq!(resume_at(Some((100, 0)), 7, "t[0]").unwrap(), Some(107));
        assert!(resume_at(Some((100, 8)), 7, "t[0]").is_err());
    }
}
