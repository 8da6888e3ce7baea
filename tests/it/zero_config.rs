//! Zero-config port per broker against a cluster whose node ids are 1001–1003 (ZooKeeper-era
//! generated ids), with Tollgate's default port settings: no `node_id_base`, no
//! `max_brokers`, no `broker_port_base`.
//!
//! tansu is a single broker (id 111; `tests/cli.rs` starts the binary against it with no
//! setting) and librdkafka's mock cluster numbers its brokers 1..N, so the cluster here is a
//! small Kafka-speaking mock: one socket that answers ApiVersions and Metadata and names
//! three brokers, 1001, 1002 and 1003, all at its own address. Tollgate must give each its
//! own port, 9100 + id mod 100, and every Metadata answer that goes back to a client must
//! name those ports.

use crate::common;

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataRequest, MetadataResponse, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::wire::protocol::{encode_request, encode_response};

const IDS: [i32; 3] = [1001, 1002, 1003];

/// Read one length-prefixed frame (without its length).
async fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let len = s.read_i32().await.ok()?;
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    s.read_exact(&mut buf).await.ok()?;
    Some(Bytes::from(buf))
}

/// The mock cluster: every connection gets ApiVersions and Metadata answered.
async fn mock_cluster() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                while let Some(mut frame) = read_frame(&mut s).await {
                    let key = ApiKey::try_from(frame.clone().get_i16()).unwrap();
                    let version = frame.clone().slice(2..).get_i16();
                    let header =
                        RequestHeader::decode(&mut frame, key.request_header_version(version))
                            .unwrap();
                    let reply =
                        ResponseHeader::default().with_correlation_id(header.correlation_id);
                    let out = match key {
                        ApiKey::ApiVersions => encode_response(
                            &reply,
                            &ApiVersionsResponse::default().with_api_keys(vec![
                                ApiVersion::default()
                                    .with_api_key(ApiKey::ApiVersions as i16)
                                    .with_max_version(3),
                                ApiVersion::default()
                                    .with_api_key(ApiKey::Metadata as i16)
                                    .with_max_version(12),
                            ]),
                            key,
                            0, // a broker answers in v0 when it cannot tell the version
                        ),
                        ApiKey::Metadata => encode_response(
                            &reply,
                            &MetadataResponse::default()
                                .with_cluster_id(Some(StrBytes::from_static_str("mock")))
                                .with_controller_id(BrokerId(IDS[0]))
                                .with_brokers(
                                    IDS.iter()
                                        .map(|id| {
                                            MetadataResponseBroker::default()
                                                .with_node_id(BrokerId(*id))
                                                .with_host(StrBytes::from_static_str("127.0.0.1"))
                                                .with_port(i32::from(addr.port()))
                                        })
                                        .collect(),
                                ),
                            key,
                            version,
                        ),
                        _ => return,
                    }
                    .unwrap();
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr.to_string()
}

/// A Metadata v12 request through `proxy`; the brokers it names.
async fn metadata_through(proxy: std::net::SocketAddr) -> Vec<(i32, String, i32)> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(12)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("zero-config")));
    let req = encode_request(
        &header,
        &MetadataRequest::default().with_topics(Some(vec![])),
    )
    .unwrap();
    s.write_all(&req).await.unwrap();
    let mut frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s))
        .await
        .unwrap()
        .unwrap();
    let h =
        ResponseHeader::decode(&mut frame, ApiKey::Metadata.response_header_version(12)).unwrap();
    assert_eq!(h.correlation_id, 7);
    let resp = MetadataResponse::decode(&mut BytesMut::from(&frame[..]).freeze(), 12).unwrap();
    let mut brokers: Vec<(i32, String, i32)> = resp
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.to_string(), b.port))
        .collect();
    brokers.sort();
    brokers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_node_ids_need_no_setting() {
    let cluster = mock_cluster().await;
    let mut c = tollgate::control::config::Config::default();
    // Only what a test must: free ports for the bootstrap and admin listeners, no state or
    // audit topic (the mock speaks two APIs; librdkafka aborts on its other answers). The
    // broker ports are the defaults.
    c.proxy.listen = "127.0.0.1:0".into();
    c.admin.listen = "127.0.0.1:0".into();
    c.upstream.bootstrap_servers = vec![cluster];
    c.state.topic = String::new();
    c.audit.topic = String::new();
    assert_eq!(c.proxy.node_id_base, None);
    assert_eq!((c.proxy.broker_port_base, c.proxy.max_brokers), (9100, 100));
    let proxy = common::start_proxy_with(c.validate().unwrap()).await;

    let expect: Vec<(i32, String, i32)> = IDS
        .iter()
        .map(|id| (*id, "127.0.0.1".to_string(), 9100 + id % 100))
        .collect();
    assert_eq!(metadata_through(proxy.bootstrap_addr).await, expect);
    // Each broker's own listener answers too (a client's next connection goes there).
    for (_, _, port) in &expect {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(metadata_through(addr).await, expect);
    }
    let known: Vec<(i32, String)> = proxy
        .shared
        .topology
        .brokers()
        .into_iter()
        .map(|b| (b.node_id, b.advertised))
        .collect();
    assert_eq!(
        known,
        vec![
            (1001, "127.0.0.1:9101".to_string()),
            (1002, "127.0.0.1:9102".to_string()),
            (1003, "127.0.0.1:9103".to_string()),
        ]
    );
    assert!(proxy.shutdown().await);
}
