//! A small async client for a whole cluster, used to read the secondary cluster: partition
//! leaders from Metadata, a pool of connections per broker, and Fetch by topic name.
//!
//! Tollgate's own requests to the secondary never share a connection with a long poll in
//! flight: a connection is taken from the broker's pool for one request and put back after
//! its response, so one consumer's long poll does not delay another's fetch. Leaders are
//! learned from Metadata on first use and again after a connection failure or a
//! leadership error in a response ([`ClusterClient::forget_leaders`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use kafka_protocol::protocol::StrBytes;

use crate::brokers::upstream::{ControlClient, UpstreamError, UpstreamSettings};
use crate::metrics::Metrics;

/// Highest Fetch version used for the secondary: v12 still names topics (v13+ uses topic
/// ids, which differ between clusters).
pub(crate) const MAX_FETCH_VERSION: i16 = 12;
/// Lowest Fetch version used: v4 reports the last stable offset and takes an isolation level.
pub(crate) const MIN_FETCH_VERSION: i16 = 4;
/// Idle connections kept per broker.
const MAX_IDLE_PER_BROKER: usize = 8;

/// One partition to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionFetch {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) max_bytes: i32,
}

/// What one Fetch asks for, besides the partitions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchParams {
    pub(crate) max_wait_ms: i32,
    pub(crate) min_bytes: i32,
    pub(crate) max_bytes: i32,
    pub(crate) isolation_level: i8,
}

/// A cluster, by its bootstrap servers.
pub(crate) struct ClusterClient {
    bootstrap: Vec<String>,
    settings: UpstreamSettings,
    metrics: Arc<Metrics>,
    /// (topic, partition) → leader address.
    leaders: Mutex<HashMap<(String, i32), String>>,
    /// Broker address → idle connections.
    idle: Mutex<HashMap<String, Vec<Arc<ControlClient>>>>,
}

impl ClusterClient {
    pub(crate) fn new(
        bootstrap: Vec<String>,
        settings: UpstreamSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        ClusterClient {
            bootstrap,
            settings,
            metrics,
            leaders: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
        }
    }

    async fn checkout(&self, addr: &str) -> Result<Arc<ControlClient>, UpstreamError> {
        let idle = self
            .idle
            .lock()
            .expect("lock")
            .get_mut(addr)
            .and_then(Vec::pop);
        match idle {
            Some(c) => Ok(c),
            None => Ok(Arc::new(
                ControlClient::connect(addr, &self.settings, self.metrics.clone()).await?,
            )),
        }
    }

    fn checkin(&self, addr: &str, c: Arc<ControlClient>) {
        let mut idle = self.idle.lock().expect("lock");
        let v = idle.entry(addr.to_string()).or_default();
        if v.len() < MAX_IDLE_PER_BROKER {
            v.push(c);
        }
    }

    /// Forget what is known of leaders and idle connections (after a failure).
    pub(crate) fn forget_leaders(&self) {
        self.leaders.lock().expect("lock").clear();
        self.idle.lock().expect("lock").clear();
    }

    /// Learn the leaders of `topics` from the first bootstrap server that answers.
    async fn refresh(&self, topics: &[String]) -> Result<(), UpstreamError> {
        let mut last = None;
        for addr in &self.bootstrap {
            let c = match self.checkout(addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match c.metadata_for(topics).await {
                Ok(md) => {
                    self.checkin(addr, c);
                    let brokers: HashMap<i32, String> = md
                        .brokers
                        .iter()
                        .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                        .collect();
                    let mut leaders = self.leaders.lock().expect("lock");
                    for t in &md.topics {
                        let Some(name) = &t.name else { continue };
                        if t.error_code != 0 {
                            continue;
                        }
                        for p in &t.partitions {
                            if let Some(a) = brokers.get(&p.leader_id.0) {
                                leaders.insert((name.to_string(), p.partition_index), a.clone());
                            }
                        }
                    }
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Closed {
            addr: "no secondary bootstrap server".into(),
        }))
    }

    /// The leader of each partition, learning unknown ones from Metadata. Partitions without
    /// a known leader are left out.
    pub(crate) async fn leaders(
        &self,
        partitions: impl Iterator<Item = (String, i32)>,
    ) -> Result<HashMap<(String, i32), String>, UpstreamError> {
        let wanted: Vec<(String, i32)> = partitions.collect();
        let missing: Vec<String> = {
            let leaders = self.leaders.lock().expect("lock");
            let mut m: Vec<String> = wanted
                .iter()
                .filter(|tp| !leaders.contains_key(*tp))
                .map(|tp| tp.0.clone())
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            self.refresh(&missing).await?;
        }
        let leaders = self.leaders.lock().expect("lock");
        Ok(wanted
            .into_iter()
            .filter_map(|tp| leaders.get(&tp).map(|a| (tp, a.clone())))
            .collect())
    }

    /// One Fetch to the broker at `addr` (which should lead every partition in it): the
    /// response, and the frame its records are slices of.
    pub(crate) async fn fetch(
        &self,
        addr: &str,
        params: FetchParams,
        partitions: &[PartitionFetch],
    ) -> Result<(FetchResponse, Bytes), UpstreamError> {
        let c = self.checkout(addr).await?;
        let version = c
            .version_for(ApiKey::Fetch)
            .map(|v| v.min(MAX_FETCH_VERSION))
            .filter(|v| *v >= MIN_FETCH_VERSION)
            .ok_or_else(|| UpstreamError::Protocol {
                addr: addr.to_string(),
                reason: format!(
                    "broker supports no Fetch version in {MIN_FETCH_VERSION}..={MAX_FETCH_VERSION}"
                ),
            })?;
        let mut topics: Vec<FetchTopic> = Vec::new();
        for p in partitions {
            let part = FetchPartition::default()
                .with_partition(p.partition)
                .with_fetch_offset(p.offset)
                .with_partition_max_bytes(p.max_bytes)
                .with_log_start_offset(-1);
            match topics.iter_mut().find(|t| t.topic.as_str() == p.topic) {
                Some(t) => t.partitions.push(part),
                None => topics.push(
                    FetchTopic::default()
                        .with_topic(StrBytes::from_string(p.topic.clone()).into())
                        .with_partitions(vec![part]),
                ),
            }
        }
        let request = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(params.max_wait_ms)
            .with_min_bytes(params.min_bytes)
            .with_max_bytes(params.max_bytes)
            .with_isolation_level(params.isolation_level)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics);
        let answer = c.request_framed(ApiKey::Fetch, version, &request).await?;
        self.checkin(addr, c);
        Ok(answer)
    }

    /// The high watermark of one partition (see [`ClusterClient::head`]).
    pub(crate) async fn high_watermark(
        &self,
        topic: &str,
        partition: i32,
        at: i64,
        timeout: Duration,
    ) -> anyhow::Result<i64> {
        Ok(self.head(topic, partition, at, timeout).await?.0)
    }

    /// The high watermark, last stable offset and log start offset of one partition, from a
    /// Fetch (some brokers' ListOffsets is not to be trusted, see docs/testing.md, "Tested against") at `at`, an
    /// offset known to exist or the end. At most one record batch is read.
    pub(crate) async fn head(
        &self,
        topic: &str,
        partition: i32,
        at: i64,
        timeout: Duration,
    ) -> anyhow::Result<(i64, i64, i64)> {
        let tp = (topic.to_string(), partition);
        let work = async {
            let leaders = self.leaders(std::iter::once(tp.clone())).await?;
            let addr = leaders
                .get(&tp)
                .ok_or_else(|| anyhow::anyhow!("no leader known for {topic}[{partition}]"))?;
            let params = FetchParams {
                // Not 0: tansu 0.6.0 answers a Fetch with max_wait_ms = 0 with no partitions.
                max_wait_ms: 1,
                min_bytes: 0,
                max_bytes: 1,
                isolation_level: 0,
            };
            let one = [PartitionFetch {
                topic: topic.to_string(),
                partition,
                offset: at,
                max_bytes: 1,
            }];
            let (resp, _) = self.fetch(addr, params, &one).await?;
            let p = resp
                .responses
                .iter()
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.partition_index == partition)
                .ok_or_else(|| {
                    anyhow::anyhow!("{topic}[{partition}] missing from the Fetch: {resp:?}")
                })?;
            if p.error_code != 0 {
                anyhow::bail!(
                    "{topic}[{partition}]: Fetch at {at} answered error code {}",
                    p.error_code
                );
            }
            Ok((p.high_watermark, p.last_stable_offset, p.log_start_offset))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => {
                if r.is_err() {
                    self.forget_leaders();
                }
                r
            }
            Err(_) => {
                self.forget_leaders();
                anyhow::bail!("timed out reading the high watermark of {topic}[{partition}]")
            }
        }
    }
}
