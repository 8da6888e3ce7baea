//! Broker address rewriting and ApiVersions capping.
//!
//! - Metadata, FindCoordinator (v0–v3 single coordinator and the batched v4+ form) and
//!   DescribeCluster responses name brokers by host and port. Each named broker is recorded
//!   in the [`Topology`] (which opens its listener the first time) and its address replaced
//!   with Tollgate's advertised host and that broker's listener port, so the client's next
//!   connection goes through Tollgate again. Entries that name no broker (node id -1, errors)
//!   are left alone.
//! - Produce v10+ answers may name brokers too (KIP-951 `node_endpoints`: a new leader's
//!   address, sent with NOT_LEADER_OR_FOLLOWER so the client can skip a Metadata round trip).
//!   They are rewritten like Metadata. Every Produce answer from v10 on is decoded to look (a
//!   few dozen bytes per partition); one that names no broker is passed on as the broker's
//!   bytes, not re-encoded.
//! - ApiVersions responses advertise what the broker supports. For the APIs whose bodies
//!   Tollgate decodes ([`super::decoded_apis`]), the range is capped to what `kafka-protocol` can
//!   decode, so a client never picks a version Tollgate would fail on later. Everything else
//!   passes through untouched. A broker's UNSUPPORTED_VERSION answer (v0 body, whatever the
//!   request version) is passed through as it is: the client retries with a lower version.
//!
//! Every other response is forwarded as the bytes the broker sent. A rewritten Metadata answer
//! goes up decoded ([`Response::Metadata`]): attribution reads its topic ids as they are, and
//! it is encoded once, on its way to the client.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FindCoordinatorResponse,
    MetadataResponse, ProduceResponse, ResponseHeader,
};
use kafka_protocol::protocol::StrBytes;
use tower::{Layer, Service};
use tracing::warn;

use crate::brokers::topology::Topology;
use crate::error::BoxError;
use crate::error::RewriteError;
use crate::layers::request::{Answer, Request, Response};
use crate::metrics::Metrics;
use crate::wire::protocol::{self, api_name};

/// APIs whose responses this layer rewrites; it needs them whole (not cut-through).
pub(crate) const REWRITTEN_APIS: &[ApiKey] = &[
    ApiKey::ApiVersions,
    ApiKey::Metadata,
    ApiKey::FindCoordinator,
    ApiKey::DescribeCluster,
    ApiKey::Produce,
];

/// Versions a client must not use through a proxy, whatever the broker supports.
///
/// Fetch v16+ responses may carry `node_endpoints` (KIP-951): the host and port of a
/// partition's new leader, sent with NOT_LEADER_OR_FOLLOWER so the client can skip a
/// Metadata round trip. Those are the brokers' real addresses, and a client following them
/// would leave the proxy. Fetch responses are forwarded cut-through, so the tagged field at
/// their very end cannot be rewritten in flight; instead these versions are not offered.
/// Clients then learn new leaders from Metadata (through Tollgate) as before KIP-951. Nothing
/// else is lost: Fetch v16 adds only that field, and topic ids (Fetch v13+) are still used.
///
/// Produce is offered in full: its answers are small and rewritten (see the module docs).
/// It was once capped at v9 too, which broke transactions on Kafka 4 clusters: with
/// `transaction.version=2` (KIP-890, the default on new 4.x clusters) a client adds a partition
/// to its transaction by writing to it with Produce v12+ and sends no AddPartitionsToTxn, so
/// at v9 the broker answered every transactional write INVALID_TXN_STATE.
pub(crate) fn proxy_max_version(key: ApiKey) -> i16 {
    match key {
        ApiKey::Fetch => 15,
        _ => i16::MAX,
    }
}

/// UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

/// Builds [`RewriteService`]: broker addresses in Metadata, FindCoordinator and
/// DescribeCluster responses pointed back at Tollgate, and ApiVersions capped.
#[derive(Clone)]
pub(crate) struct RewriteLayer {
    topology: Arc<Topology>,
    metrics: Arc<Metrics>,
}

impl RewriteLayer {
    pub(crate) fn new(topology: Arc<Topology>, metrics: Arc<Metrics>) -> Self {
        Self { topology, metrics }
    }
}

impl<S> Layer<S> for RewriteLayer {
    type Service = RewriteService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RewriteService {
            inner,
            topology: self.topology.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The rewrite layer around one connection's inner service.
#[derive(Clone)]
pub(crate) struct RewriteService<S> {
    inner: S,
    topology: Arc<Topology>,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request> for RewriteService<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let api = req.meta.api;
        let version = req.meta.api_version;
        let needs = api.is_some_and(|k| REWRITTEN_APIS.contains(&k));
        req.whole_response |= needs;
        let fut = self.inner.call(req);
        if !needs {
            return Box::pin(fut);
        }
        let key = api.expect("matched above");
        let topology = self.topology.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let frame = match fut.await? {
                Response::Frame(frame) => frame,
                // Requests for these APIs ask for whole responses (REWRITTEN_APIS), so a
                // stream or no response here is passed on as it is.
                other => return Ok(other),
            };
            if key == ApiKey::ApiVersions {
                return Ok(Response::Frame(cap_api_versions_frame(
                    &frame, version, &metrics,
                )?));
            }
            if key == ApiKey::Produce && version < 10 {
                return Ok(Response::Frame(frame));
            }
            let (header, body) =
                rewrite_addresses(&frame, key, version, &topology, &metrics).await?;
            Ok(match body {
                None => Response::Frame(frame),
                Some(AddressBody::Metadata(body)) => {
                    Response::Metadata(Answer::new(header, version, body))
                }
                Some(other) => Response::Frame(
                    other
                        .encode(&header, key, version)
                        .map_err(|e| encode_err(key, version, e))?,
                ),
            })
        })
    }
}

fn decode_err(key: ApiKey, version: i16, e: impl std::fmt::Display) -> RewriteError {
    RewriteError::Decode {
        api: api_name(key as i16),
        version,
        reason: e.to_string(),
    }
}

fn encode_err(key: ApiKey, version: i16, e: impl std::fmt::Display) -> RewriteError {
    RewriteError::Encode {
        api: api_name(key as i16),
        version,
        reason: e.to_string(),
    }
}

/// Cap an ApiVersions response frame; returns the frame unchanged when nothing was capped.
pub(crate) fn cap_api_versions_frame(
    frame: &Bytes,
    version: i16,
    metrics: &Metrics,
) -> Result<Bytes, RewriteError> {
    let key = ApiKey::ApiVersions;
    // error_code is the first body field in every version; the header is v0 (4 bytes).
    let body = frame.get(protocol::LEN_PREFIX + 4..).unwrap_or_default();
    if body.len() >= 2 && i16::from_be_bytes([body[0], body[1]]) == UNSUPPORTED_VERSION {
        return Ok(frame.clone());
    }
    let (header, mut resp) = protocol::decode_response::<ApiVersionsResponse>(frame, key, version)
        .map_err(|e| decode_err(key, version, e))?;
    let capped = cap_api_versions(&mut resp, super::decoded_apis());
    if capped.is_empty() {
        return Ok(frame.clone());
    }
    for k in &capped {
        metrics
            .api_version_caps
            .with_label_values(&[api_name(*k as i16)])
            .inc();
    }
    protocol::encode_response(&header, &resp, key, version).map_err(|e| encode_err(key, version, e))
}

/// Cap the version ranges of `decoded` APIs to what `kafka-protocol` supports. Returns the
/// APIs whose entry changed.
pub(crate) fn cap_api_versions(resp: &mut ApiVersionsResponse, decoded: &[ApiKey]) -> Vec<ApiKey> {
    let mut changed = Vec::new();
    resp.api_keys.retain_mut(|entry| {
        let Some(key) = decoded.iter().find(|k| **k as i16 == entry.api_key) else {
            return true;
        };
        let ours = crate::wire::versions::decodable_versions(*key);
        let min = entry.min_version.max(ours.min);
        let max = entry.max_version.min(ours.max).min(proxy_max_version(*key));
        if (min, max) == (entry.min_version, entry.max_version) {
            return true;
        }
        changed.push(*key);
        if min > max {
            warn!(api = ?key, broker_min = entry.min_version, broker_max = entry.max_version,
                  "broker supports no version of this API that Tollgate can decode; hiding it");
            return false;
        }
        entry.min_version = min;
        entry.max_version = max;
        true
    });
    changed
}

/// A response body that names brokers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AddressBody {
    Metadata(MetadataResponse),
    FindCoordinator(FindCoordinatorResponse),
    DescribeCluster(DescribeClusterResponse),
    Produce(ProduceResponse),
}

/// A broker as named in a response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) node_id: i32,
    pub(crate) host: String,
    pub(crate) port: i32,
}

impl AddressBody {
    fn decode(
        frame: &Bytes,
        key: ApiKey,
        version: i16,
    ) -> anyhow::Result<(kafka_protocol::messages::ResponseHeader, AddressBody)> {
        Ok(match key {
            ApiKey::Metadata => {
                let (h, b) = protocol::decode_response(frame, key, version)?;
                (h, AddressBody::Metadata(b))
            }
            ApiKey::FindCoordinator => {
                let (h, b) = protocol::decode_response(frame, key, version)?;
                (h, AddressBody::FindCoordinator(b))
            }
            ApiKey::DescribeCluster => {
                let (h, b) = protocol::decode_response(frame, key, version)?;
                (h, AddressBody::DescribeCluster(b))
            }
            ApiKey::Produce => {
                let (h, b) = protocol::decode_response(frame, key, version)?;
                (h, AddressBody::Produce(b))
            }
            other => anyhow::bail!("{other:?} names no brokers"),
        })
    }

    fn encode(
        &self,
        header: &kafka_protocol::messages::ResponseHeader,
        key: ApiKey,
        version: i16,
    ) -> anyhow::Result<Bytes> {
        match self {
            AddressBody::Metadata(b) => protocol::encode_response(header, b, key, version),
            AddressBody::FindCoordinator(b) => protocol::encode_response(header, b, key, version),
            AddressBody::DescribeCluster(b) => protocol::encode_response(header, b, key, version),
            AddressBody::Produce(b) => protocol::encode_response(header, b, key, version),
        }
    }

    /// Every broker the body names (node id >= 0 and a host).
    pub(crate) fn endpoints(&self, version: i16) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mut push = |node_id: i32, host: &StrBytes, port: i32| {
            if node_id >= 0 && !host.is_empty() {
                out.push(Endpoint {
                    node_id,
                    host: host.to_string(),
                    port,
                });
            }
        };
        match self {
            AddressBody::Metadata(m) => {
                for b in &m.brokers {
                    push(b.node_id.0, &b.host, b.port);
                }
            }
            AddressBody::FindCoordinator(f) => {
                if version < 4 {
                    if f.error_code == 0 {
                        push(f.node_id.0, &f.host, f.port);
                    }
                } else {
                    for c in f.coordinators.iter().filter(|c| c.error_code == 0) {
                        push(c.node_id.0, &c.host, c.port);
                    }
                }
            }
            AddressBody::DescribeCluster(d) => {
                for b in &d.brokers {
                    push(b.broker_id.0, &b.host, b.port);
                }
            }
            AddressBody::Produce(p) => {
                for b in &p.node_endpoints {
                    push(b.node_id.0, &b.host, b.port);
                }
            }
        }
        out
    }

    /// Replace the address of every broker in `ports` with `host` and its port.
    pub(crate) fn rewrite(&mut self, version: i16, host: &StrBytes, ports: &HashMap<i32, u16>) {
        let target = |node_id: i32| ports.get(&node_id).map(|p| i32::from(*p));
        match self {
            AddressBody::Metadata(m) => {
                for b in &mut m.brokers {
                    if let Some(p) = target(b.node_id.0) {
                        b.host = host.clone();
                        b.port = p;
                    }
                }
            }
            AddressBody::FindCoordinator(f) => {
                if version < 4 {
                    if f.error_code == 0 {
                        if let Some(p) = target(f.node_id.0) {
                            f.host = host.clone();
                            f.port = p;
                        }
                    }
                } else {
                    for c in f.coordinators.iter_mut().filter(|c| c.error_code == 0) {
                        if let Some(p) = target(c.node_id.0) {
                            c.host = host.clone();
                            c.port = p;
                        }
                    }
                }
            }
            AddressBody::DescribeCluster(d) => {
                for b in &mut d.brokers {
                    if let Some(p) = target(b.broker_id.0) {
                        b.host = host.clone();
                        b.port = p;
                    }
                }
            }
            AddressBody::Produce(p) => {
                for b in &mut p.node_endpoints {
                    if let Some(port) = target(b.node_id.0) {
                        b.host = host.clone();
                        b.port = port;
                    }
                }
            }
        }
    }
}

/// Rewrite the broker addresses of a Metadata, FindCoordinator or DescribeCluster frame.
#[cfg(test)]
pub(crate) async fn rewrite_addresses_frame(
    frame: &Bytes,
    key: ApiKey,
    version: i16,
    topology: &Topology,
    metrics: &Metrics,
) -> Result<Bytes, RewriteError> {
    match rewrite_addresses(frame, key, version, topology, metrics).await? {
        (header, Some(body)) => body
            .encode(&header, key, version)
            .map_err(|e| encode_err(key, version, e)),
        (_, None) => Ok(frame.clone()),
    }
}

/// The decoded answer of a Metadata, FindCoordinator or DescribeCluster frame with its
/// broker addresses rewritten; `None` when it names no broker (the frame stands as it is).
async fn rewrite_addresses(
    frame: &Bytes,
    key: ApiKey,
    version: i16,
    topology: &Topology,
    metrics: &Metrics,
) -> Result<(ResponseHeader, Option<AddressBody>), RewriteError> {
    let (header, mut body) =
        AddressBody::decode(frame, key, version).map_err(|e| decode_err(key, version, e))?;
    let endpoints = body.endpoints(version);
    if endpoints.is_empty() {
        return Ok((header, None));
    }
    let mut ports = HashMap::with_capacity(endpoints.len());
    for ep in &endpoints {
        let port = topology.advertise(ep.node_id, &ep.host, ep.port).await?;
        ports.insert(ep.node_id, port);
    }
    let host = StrBytes::from_string(topology.advertised_host().to_string());
    body.rewrite(version, &host, &ports);
    metrics
        .address_rewrites
        .with_label_values(&[api_name(key as i16)])
        .inc();
    Ok((header, Some(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable};
    use proptest::prelude::*;

    /// Used by property tests: decode-then-encode must be the identity for bodies we rewrite.
    fn roundtrip<T: Decodable + Encodable>(
        bytes: &mut Bytes,
        version: i16,
    ) -> anyhow::Result<Bytes> {
        let v = T::decode(bytes, version)?;
        let mut out = bytes::BytesMut::new();
        v.encode(&mut out, version)?;
        Ok(out.freeze())
    }

    fn s(x: &str) -> StrBytes {
        StrBytes::from_string(x.to_string())
    }

    #[test]
    fn api_versions_are_capped_only_for_decoded_apis() {
        let mut resp = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(3)
                .with_min_version(0)
                .with_max_version(99),
            ApiVersion::default()
                .with_api_key(1)
                .with_min_version(0)
                .with_max_version(99),
            ApiVersion::default()
                .with_api_key(10)
                .with_min_version(0)
                .with_max_version(2),
            ApiVersion::default()
                .with_api_key(32)
                .with_min_version(0)
                .with_max_version(99),
        ]);
        let changed = cap_api_versions(&mut resp, crate::layers::decoded_apis());
        assert_eq!(changed, vec![ApiKey::Metadata, ApiKey::Fetch]);
        let produce = ApiVersion::default()
            .with_api_key(0)
            .with_min_version(3)
            .with_max_version(13);
        let mut offered = ApiVersionsResponse::default().with_api_keys(vec![produce]);
        cap_api_versions(&mut offered, crate::layers::decoded_apis());
        assert_eq!(
            offered.api_keys[0].max_version, 13,
            "Produce v12+ is offered: transactions on Kafka 4 (KIP-890) need it"
        );
        assert_eq!(
            resp.api_keys[0].max_version,
            crate::wire::versions::decodable_versions(ApiKey::Metadata).max
        );
        // Fetch is decoded by attribution: both ends capped, and the top below v16, whose
        // responses can name brokers by their real address (KIP-951).
        assert_eq!(
            (resp.api_keys[1].min_version, resp.api_keys[1].max_version),
            (
                crate::wire::versions::decodable_versions(ApiKey::Fetch).min,
                15
            )
        );
        assert_eq!(resp.api_keys[2].max_version, 2);
        assert_eq!(
            resp.api_keys[3].max_version, 99,
            "DescribeConfigs is forwarded as bytes: untouched"
        );
    }

    #[test]
    fn api_versions_frame_is_rewritten_and_unsupported_version_passes() {
        let metrics = Metrics::new();
        let resp = ApiVersionsResponse::default().with_api_keys(vec![ApiVersion::default()
            .with_api_key(3)
            .with_min_version(0)
            .with_max_version(50)]);
        let header = ResponseHeader::default().with_correlation_id(9);
        let frame = protocol::encode_response(&header, &resp, ApiKey::ApiVersions, 3).unwrap();
        let out = cap_api_versions_frame(&frame, 3, &metrics).unwrap();
        let (h, r) =
            protocol::decode_response::<ApiVersionsResponse>(&out, ApiKey::ApiVersions, 3).unwrap();
        assert_eq!(h.correlation_id, 9);
        assert_eq!(
            r.api_keys[0].max_version,
            crate::wire::versions::decodable_versions(ApiKey::Metadata).max
        );

        let err = ApiVersionsResponse::default().with_error_code(UNSUPPORTED_VERSION);
        let frame = protocol::encode_response(&header, &err, ApiKey::ApiVersions, 0).unwrap();
        assert_eq!(cap_api_versions_frame(&frame, 3, &metrics).unwrap(), frame);
    }

    fn metadata(brokers: &[(i32, &str, i32)]) -> MetadataResponse {
        MetadataResponse::default()
            .with_cluster_id(Some(s("c1")))
            .with_brokers(
                brokers
                    .iter()
                    .map(|(id, h, p)| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(*id))
                            .with_host(s(h))
                            .with_port(*p)
                            .with_rack(Some(s("r1")))
                    })
                    .collect(),
            )
            .with_topics(vec![
                MetadataResponseTopic::default().with_name(Some(TopicName(s("t"))))
            ])
    }

    #[test]
    fn find_coordinator_both_forms() {
        let ports: HashMap<i32, u16> = [(1, 19001u16), (2, 19002)].into_iter().collect();
        let host = s("proxy");
        let mut old = AddressBody::FindCoordinator(
            FindCoordinatorResponse::default()
                .with_node_id(BrokerId(2))
                .with_host(s("b2"))
                .with_port(9092),
        );
        assert_eq!(
            old.endpoints(3),
            vec![Endpoint {
                node_id: 2,
                host: "b2".into(),
                port: 9092
            }]
        );
        old.rewrite(3, &host, &ports);
        let AddressBody::FindCoordinator(f) = &old else {
            unreachable!()
        };
        assert_eq!((f.host.as_str(), f.port), ("proxy", 19002));

        let mut batched = AddressBody::FindCoordinator(
            FindCoordinatorResponse::default().with_coordinators(vec![
                Coordinator::default()
                    .with_key(s("g1"))
                    .with_node_id(BrokerId(1))
                    .with_host(s("b1"))
                    .with_port(9092),
                Coordinator::default()
                    .with_key(s("g2"))
                    .with_node_id(BrokerId(-1))
                    .with_error_code(15),
            ]),
        );
        assert_eq!(batched.endpoints(4).len(), 1);
        batched.rewrite(4, &host, &ports);
        let AddressBody::FindCoordinator(f) = &batched else {
            unreachable!()
        };
        assert_eq!(
            (f.coordinators[0].host.as_str(), f.coordinators[0].port),
            ("proxy", 19001)
        );
        assert_eq!(f.coordinators[1].port, 0, "error entries are left alone");
    }

    #[test]
    fn describe_cluster_brokers_are_rewritten() {
        let mut d = AddressBody::DescribeCluster(DescribeClusterResponse::default().with_brokers(
            vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(7))
                .with_host(s("b7"))
                .with_port(1)],
        ));
        d.rewrite(0, &s("p"), &[(7, 2u16)].into_iter().collect());
        let AddressBody::DescribeCluster(d) = d else {
            unreachable!()
        };
        assert_eq!((d.brokers[0].host.as_str(), d.brokers[0].port), ("p", 2));
    }

    #[tokio::test]
    async fn metadata_frames_are_rewritten_through_the_topology() {
        let metrics = Arc::new(Metrics::new());
        let (topology, mut listeners) = Topology::new(
            crate::brokers::topology::TopologySettings {
                advertised_host: "tollgate.local".into(),
                bind_host: "127.0.0.1".into(),
                port_base: 0,
                node_id_base: Some(0),
                max_brokers: 10,
            },
            metrics.clone(),
        );
        let header = ResponseHeader::default().with_correlation_id(77);
        for version in [1, 9, 12] {
            let frame = protocol::encode_response(
                &header,
                &metadata(&[(1, "b1", 9092), (2, "b2", 9093)]),
                ApiKey::Metadata,
                version,
            )
            .unwrap();
            let out =
                rewrite_addresses_frame(&frame, ApiKey::Metadata, version, &topology, &metrics)
                    .await
                    .unwrap();
            let (h, m) =
                protocol::decode_response::<MetadataResponse>(&out, ApiKey::Metadata, version)
                    .unwrap();
            assert_eq!(h.correlation_id, 77);
            for b in &m.brokers {
                assert_eq!(b.host.as_str(), "tollgate.local");
                assert_ne!(b.port, 9092);
            }
            assert_eq!(topology.upstream_addr(2).as_deref(), Some("b2:9093"));
        }
        assert!(listeners.recv().await.is_some());
        assert!(listeners.recv().await.is_some());
        assert!(listeners.try_recv().is_err());
    }

    #[tokio::test]
    async fn produce_answers_name_new_leaders_by_tollgate_and_plain_ones_pass_as_bytes() {
        use kafka_protocol::messages::produce_response::NodeEndpoint;
        let metrics = Arc::new(Metrics::new());
        let (topology, _listeners) = Topology::new(
            crate::brokers::topology::TopologySettings {
                advertised_host: "tollgate.local".into(),
                bind_host: "127.0.0.1".into(),
                port_base: 0,
                node_id_base: Some(0),
                max_brokers: 10,
            },
            metrics.clone(),
        );
        let header = ResponseHeader::default().with_correlation_id(5);
        for version in 10..=13 {
            let plain = ProduceResponse::default().with_throttle_time_ms(3);
            let frame =
                protocol::encode_response(&header, &plain, ApiKey::Produce, version).unwrap();
            let same =
                rewrite_addresses_frame(&frame, ApiKey::Produce, version, &topology, &metrics)
                    .await
                    .unwrap();
            assert_eq!(same, frame, "no broker named: the broker's bytes");
            let moved = plain.with_node_endpoints(vec![NodeEndpoint::default()
                .with_node_id(BrokerId(3))
                .with_host(s("real-broker-3"))
                .with_port(9092)]);
            let frame =
                protocol::encode_response(&header, &moved, ApiKey::Produce, version).unwrap();
            let out =
                rewrite_addresses_frame(&frame, ApiKey::Produce, version, &topology, &metrics)
                    .await
                    .unwrap();
            let (_, p) =
                protocol::decode_response::<ProduceResponse>(&out, ApiKey::Produce, version)
                    .unwrap();
            let ep = &p.node_endpoints[0];
            assert_eq!((ep.node_id.0, ep.host.as_str()), (3, "tollgate.local"));
            assert_ne!(ep.port, 9092);
            assert_eq!(p.throttle_time_ms, 3);
        }
    }

    #[test]
    fn hostile_array_lengths_are_a_decode_error_not_an_abort() {
        // Metadata v1 response: correlation id, then a brokers array claiming i32::MAX entries.
        let mut payload = 1i32.to_be_bytes().to_vec();
        payload.extend_from_slice(&i32::MAX.to_be_bytes());
        payload.extend_from_slice(&[0, 0, 0, 1]);
        let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let r = AddressBody::decode(&Bytes::from(frame), ApiKey::Metadata, 1);
        assert!(r.is_err());
    }

    proptest! {
        // Rewriting changes broker host/port and nothing else, for every version.
        #[test]
        fn metadata_rewrite_changes_only_addresses(
            brokers in proptest::collection::btree_map(0i32..50, ("[a-z]{1,12}", 1i32..65535), 0..8),
            version in 0i16..=13,
        ) {
            let list: Vec<(i32, String, i32)> = brokers.iter().map(|(id, (h, p))| (*id, h.clone(), *p)).collect();
            let refs: Vec<(i32, &str, i32)> = list.iter().map(|(i, h, p)| (*i, h.as_str(), *p)).collect();
            let original = metadata(&refs);
            let header = ResponseHeader::default().with_correlation_id(5);
            let frame = protocol::encode_response(&header, &original, ApiKey::Metadata, version).unwrap();
            let (_, decoded) = AddressBody::decode(&frame, ApiKey::Metadata, version).unwrap();
            let mut body = decoded.clone();
            let ports: HashMap<i32, u16> = list.iter().map(|(id, _, _)| (*id, 20000 + *id as u16)).collect();
            body.rewrite(version, &s("proxy"), &ports);
            let out = body.encode(&header, ApiKey::Metadata, version).unwrap();
            let (_, AddressBody::Metadata(back)) = AddressBody::decode(&out, ApiKey::Metadata, version).unwrap() else { unreachable!() };
            let AddressBody::Metadata(mut expect) = decoded else { unreachable!() };
            for b in &mut expect.brokers {
                b.host = s("proxy");
                b.port = 20000 + b.node_id.0;
            }
            prop_assert_eq!(back, expect);
        }

        // Decode/encode of the bodies we rewrite is lossless for arbitrary input that decodes.
        #[test]
        fn address_bodies_roundtrip_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..256), version in 0i16..=13) {
            let mut b = Bytes::from(data.clone());
            let _ = roundtrip::<MetadataResponse>(&mut b, version);
            let mut b = Bytes::from(data.clone());
            let _ = roundtrip::<FindCoordinatorResponse>(&mut b, version.min(6));
            let mut b = Bytes::from(data);
            let _ = roundtrip::<DescribeClusterResponse>(&mut b, version.min(2));
        }
    }
}
