//! Offset protection at the door ([`crate::consumers::rewinds`] has the rule).
//!
//! For a group whose registry entry (or the registry's default) limits rewinds:
//! - **OffsetCommit**: each partition whose commit would move the group's offset back beyond
//!   the limit is refused with POLICY_VIOLATION (44) (`reason="rewind"`); the other partitions
//!   go to the coordinator and the two answers are merged. A commit with nothing left is
//!   answered by Tollgate alone. A consumer that seeks back keeps reading; only its commits
//!   for those partitions fail until it is within the limit again, so a mistaken reset does
//!   not move the whole group back when it restarts.
//! - **OffsetDelete** of such a group (it would send the group back to its reset policy,
//!   usually the earliest offset) is refused on every partition (`reason="offset_delete"`).
//! - While a rewind window is open for the group
//!   (`POST /v1/groups/{group}/rewind/allow?seconds=N`, tier-wide), nothing is judged.
//!
//! A reset of a group that has live members is refused by the coordinator itself (Kafka
//! answers a commit outside the group's generation UNKNOWN_MEMBER_ID); Tollgate adds nothing
//! there. Modes as for the group's consumers: the entry's `mode`, else the registry's; in
//! `shadow` the refusal is logged and counted and the commit goes through. Inside governance:
//! commits of groups the caller may not use never get here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kafka_protocol::messages::{
    offset_commit_response, offset_delete_response, ApiKey, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tower::{Layer, Service};

use crate::consumers::identity::ConnInfo;
use crate::consumers::refusals::Refusals;
use crate::consumers::rewinds::Rewinds;
use crate::control::registry::{Mode, Registry, RegistryHandle, RewindLimits};
use crate::error::BoxError;
use crate::layers::record::{Record, Seen};
use crate::layers::request::{policy_decode, Request, Response};
use crate::metrics::Metrics;
use crate::wire::protocol;

/// POLICY_VIOLATION.
const POLICY_VIOLATION: i16 = 44;

/// Built once; shared by every connection.
#[derive(Clone)]
pub struct OffsetsLayer {
    registry: Arc<RegistryHandle>,
    rewinds: Arc<Rewinds>,
    record: Arc<Record>,
}

impl OffsetsLayer {
    pub fn new(
        registry: Arc<RegistryHandle>,
        rewinds: Arc<Rewinds>,
        metrics: Arc<Metrics>,
        refusals: Arc<Refusals>,
    ) -> OffsetsLayer {
        OffsetsLayer {
            registry,
            rewinds,
            record: Arc::new(Record::new("offset protection", metrics, refusals)),
        }
    }
}

impl<S> Layer<S> for OffsetsLayer {
    type Service = OffsetsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OffsetsService {
            inner,
            cfg: self.clone(),
        }
    }
}

/// Offset protection around one connection's inner service.
#[derive(Clone)]
pub struct OffsetsService<S> {
    inner: S,
    cfg: OffsetsLayer,
}

type BoxFut = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

/// The group's protection, when it applies now: its limits, mode and entry name.
struct Guarded {
    limits: RewindLimits,
    mode: Mode,
    entry: String,
}

impl<S> Service<Request> for OffsetsService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let key = req.meta.api;
        let guarded = matches!(key, Some(ApiKey::OffsetCommit | ApiKey::OffsetDelete));
        let registry = self.cfg.registry.get().filter(|_| guarded);
        let Some(registry) = registry else {
            return Box::pin(self.inner.call(req));
        };
        let version = req.meta.api_version;
        let outcome = match key {
            Some(ApiKey::OffsetCommit) => self.commit(req, &registry),
            _ => self.delete(req, &registry),
        };
        outcome.unwrap_or_else(|(api, e)| policy_decode(api, version, e))
    }
}

type Undecodable = (&'static str, anyhow::Error);

impl<S> OffsetsService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    /// OffsetCommit: rewinds beyond the limit out, the rest to the coordinator.
    fn commit(&mut self, mut req: Request, registry: &Registry) -> Result<BoxFut, Undecodable> {
        let undecodable = |e: anyhow::Error| ("OffsetCommit", e);
        let body = req.body::<OffsetCommitRequest>().map_err(undecodable)?;
        let group = body.group_id.to_string();
        let Some(g) = self.cfg.guarded(registry, &group) else {
            return Ok(Box::pin(self.inner.call(req)));
        };
        let refused = self.cfg.rewinds_in(&req.conn, &group, &g, &body);
        if refused.is_empty() || g.mode == Mode::Shadow {
            return Ok(Box::pin(self.inner.call(req)));
        }
        let mut rest = OffsetCommitRequest::clone(&body);
        for t in rest.topics.iter_mut() {
            t.partitions
                .retain(|p| !refused.contains(&(t.name.to_string(), p.partition_index)));
        }
        rest.topics.retain(|t| !t.partitions.is_empty());
        let version = req.meta.api_version;
        if rest.topics.is_empty() {
            let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
            let answer = with_refused(OffsetCommitResponse::default(), &refused);
            let frame = protocol::encode_response(&header, &answer, ApiKey::OffsetCommit, version);
            return Ok(Box::pin(async move {
                Ok(Response::Frame(frame.map_err(BoxError::from)?))
            }));
        }
        req.set_body(rest).map_err(undecodable)?;
        req.whole_response = true;
        let fut = self.inner.call(req);
        Ok(Box::pin(async move {
            let Response::Frame(frame) = fut.await? else {
                return Err("OffsetCommit: the coordinator's answer was not a frame".into());
            };
            let (header, body) = protocol::decode_response::<OffsetCommitResponse>(
                &frame,
                ApiKey::OffsetCommit,
                version,
            )?;
            let merged = with_refused(body, &refused);
            let frame = protocol::encode_response(&header, &merged, ApiKey::OffsetCommit, version)?;
            Ok(Response::Frame(frame))
        }))
    }

    /// OffsetDelete of a protected group: refused on every partition.
    fn delete(&mut self, req: Request, registry: &Registry) -> Result<BoxFut, Undecodable> {
        let body = req
            .body::<OffsetDeleteRequest>()
            .map_err(|e| ("OffsetDelete", e))?;
        let group = body.group_id.to_string();
        let Some(g) = self.cfg.guarded(registry, &group) else {
            return Ok(Box::pin(self.inner.call(req)));
        };
        for t in &body.topics {
            let topic = t.name.to_string();
            let seen = seen(ApiKey::OffsetDelete, &group, &topic, &g, "offset_delete");
            self.cfg.record.refused(&req.conn, &seen);
        }
        if g.mode == Mode::Shadow {
            return Ok(Box::pin(self.inner.call(req)));
        }
        let topics = body.topics.iter().map(|t| {
            let parts = t.partitions.iter().map(|p| {
                offset_delete_response::OffsetDeleteResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(POLICY_VIOLATION)
            });
            offset_delete_response::OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(parts.collect())
        });
        let answer = OffsetDeleteResponse::default().with_topics(topics.collect());
        let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
        let version = req.meta.api_version;
        let frame = protocol::encode_response(&header, &answer, ApiKey::OffsetDelete, version);
        Ok(Box::pin(async move {
            Ok(Response::Frame(frame.map_err(BoxError::from)?))
        }))
    }
}

fn seen<'a>(
    api: ApiKey,
    group: &'a str,
    topic: &'a str,
    g: &'a Guarded,
    reason: &'static str,
) -> Seen<'a> {
    Seen {
        api,
        group,
        topic,
        entry: &g.entry,
        reason,
        mode: g.mode,
        hint: "an operator can open a window: POST /v1/groups/{group}/rewind/allow?seconds=N",
    }
}

impl OffsetsLayer {
    /// The group's protection, unless it has none or a rewind window is open.
    fn guarded(&self, registry: &Registry, group: &str) -> Option<Guarded> {
        let (limits, entry) = registry.rewind_limits(group)?;
        if self.rewinds.allowed_until(group).is_some() {
            return None;
        }
        Some(Guarded {
            limits,
            mode: entry.mode.unwrap_or(registry.mode),
            entry: entry.name(),
        })
    }

    /// The partitions of `body` whose commit would rewind the group beyond its limits
    /// (recorded, in either mode).
    fn rewinds_in(
        &self,
        conn: &ConnInfo,
        group: &str,
        g: &Guarded,
        body: &OffsetCommitRequest,
    ) -> Vec<(String, i32)> {
        let mut refused = Vec::new();
        for t in &body.topics {
            let topic = t.name.to_string();
            for p in &t.partitions {
                let tp = (topic.clone(), p.partition_index);
                if self
                    .rewinds
                    .check(group, &tp, p.committed_offset, g.limits)
                    .is_some()
                {
                    self.record.refused(
                        conn,
                        &seen(ApiKey::OffsetCommit, group, &topic, g, "rewind"),
                    );
                    refused.push(tp);
                }
            }
        }
        refused
    }
}

/// `resp` with POLICY_VIOLATION for every refused partition, in its topic's entry.
fn with_refused(mut resp: OffsetCommitResponse, refused: &[(String, i32)]) -> OffsetCommitResponse {
    for (topic, partition) in refused {
        let part = offset_commit_response::OffsetCommitResponsePartition::default()
            .with_partition_index(*partition)
            .with_error_code(POLICY_VIOLATION);
        match resp.topics.iter_mut().find(|t| t.name.as_str() == topic) {
            Some(t) => t.partitions.push(part),
            None => resp.topics.push(
                offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(vec![part]),
            ),
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use kafka_protocol::messages::{offset_commit_request, offset_delete_request};
    use kafka_protocol::protocol::Encodable;
    use tower::ServiceExt;

    use super::*;
    use crate::consumers::heads::Heads;
    use crate::consumers::lag::Lag;

    const REGISTRY: &str = r##"
mode = "enforce"
[[consumer]]
group = "ledger"
owner = "o"
contact = "c"
topics = ["t"]
lag_slo_seconds = 60
max_rewind_records = 100

[[consumer]]
group = "trial"
owner = "o"
contact = "c"
topics = ["t"]
lag_slo_seconds = 60
max_rewind_records = 100
mode = "shadow"
"##;

    fn layer() -> (OffsetsLayer, Arc<Lag>, Arc<Rewinds>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, REGISTRY).unwrap();
        let lag = Arc::new(Lag::new(Default::default()));
        let rewinds = Arc::new(Rewinds::new(lag.clone(), Arc::new(Heads::new())));
        for g in ["ledger", "trial"] {
            for p in 0..2 {
                lag.observe_commit(g, ("t".to_string(), p), 1000);
            }
        }
        let layer = OffsetsLayer::new(
            Arc::new(RegistryHandle::open(&path).unwrap()),
            rewinds.clone(),
            Arc::new(Metrics::new()),
            Arc::new(Refusals::new()),
        );
        (layer, lag, rewinds, dir)
    }

    fn request<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Request {
        crate::layers::request::test_request(key, version, None, body)
    }

    fn commit(group: &str, offsets: &[i64]) -> OffsetCommitRequest {
        let parts = offsets.iter().enumerate().map(|(i, o)| {
            offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(i as i32)
                .with_committed_offset(*o)
        });
        OffsetCommitRequest::default()
            .with_group_id(StrBytes::from_string(group.to_string()).into())
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(parts.collect()),
            ])
    }

    /// The partitions the coordinator stub saw, and each partition's error in the answer.
    async fn run(layer: &OffsetsLayer, req: Request) -> (Vec<i32>, Vec<(i32, i16)>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let coordinator = tower::service_fn(move |r: Request| {
            let log = log.clone();
            async move {
                let version = r.meta.api_version;
                let body = r.body::<OffsetCommitRequest>()?;
                let topics = body.topics.iter().map(|t| {
                    let parts = t.partitions.iter().map(|p| {
                        log.lock().unwrap().push(p.partition_index);
                        offset_commit_response::OffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                    });
                    offset_commit_response::OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(parts.collect())
                });
                let resp = OffsetCommitResponse::default().with_topics(topics.collect());
                let h = ResponseHeader::default().with_correlation_id(7);
                let f = protocol::encode_response(&h, &resp, ApiKey::OffsetCommit, version)?;
                Ok::<_, BoxError>(Response::Frame(f))
            }
        });
        let version = req.meta.api_version;
        let Response::Frame(f) = layer.layer(coordinator).oneshot(req).await.unwrap() else {
            panic!("a frame")
        };
        let (_, resp) =
            protocol::decode_response::<OffsetCommitResponse>(&f, ApiKey::OffsetCommit, version)
                .unwrap();
        let mut codes: Vec<(i32, i16)> = resp
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.partition_index, p.error_code))
            })
            .collect();
        codes.sort();
        let forwarded = seen.lock().unwrap().clone();
        (forwarded, codes)
    }

    #[tokio::test]
    async fn a_rewinding_partition_is_refused_and_the_rest_is_committed_at_every_version() {
        let (layer, _, _, _dir) = layer();
        for v in 2..=9 {
            let req = request(ApiKey::OffsetCommit, v, &commit("ledger", &[0, 990]));
            let (forwarded, codes) = run(&layer, req).await;
            assert_eq!(forwarded, vec![1], "v{v}");
            assert_eq!(codes, vec![(0, POLICY_VIOLATION), (1, 0)], "v{v}");
        }
        let req = request(ApiKey::OffsetCommit, 9, &commit("ledger", &[0, 0]));
        let (forwarded, codes) = run(&layer, req).await;
        assert!(forwarded.is_empty());
        assert_eq!(codes, vec![(0, 44), (1, 44)]);
    }

    #[tokio::test]
    async fn shadow_windows_and_unprotected_groups_pass() {
        let (layer, _, rewinds, _dir) = layer();
        let req = request(ApiKey::OffsetCommit, 9, &commit("trial", &[0, 0]));
        assert_eq!(run(&layer, req).await.0, vec![0, 1], "shadow");
        let req = request(ApiKey::OffsetCommit, 9, &commit("other", &[0, 0]));
        assert_eq!(run(&layer, req).await.0, vec![0, 1], "no protection");
        rewinds
            .allow("ledger", Duration::from_secs(60), "test")
            .unwrap();
        let req = request(ApiKey::OffsetCommit, 9, &commit("ledger", &[0, 0]));
        assert_eq!(run(&layer, req).await.0, vec![0, 1], "window open");
    }

    #[tokio::test]
    async fn deleting_a_protected_groups_offsets_is_refused() {
        let (layer, _, _, _dir) = layer();
        let body = OffsetDeleteRequest::default()
            .with_group_id(StrBytes::from_static_str("ledger").into())
            .with_topics(vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default(),
                    ]),
            ]);
        let broker = tower::service_fn(|_r: Request| async {
            Err::<Response, BoxError>("must not reach the coordinator".into())
        });
        let req = request(ApiKey::OffsetDelete, 0, &body);
        let Response::Frame(f) = layer.layer(broker).oneshot(req).await.unwrap() else {
            panic!()
        };
        let (_, resp) =
            protocol::decode_response::<OffsetDeleteResponse>(&f, ApiKey::OffsetDelete, 0).unwrap();
        assert_eq!(resp.topics[0].partitions[0].error_code, POLICY_VIOLATION);
    }
}
