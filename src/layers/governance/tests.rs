//! Unit tests of the governance layer (in-process; the integration tests run real brokers).

use super::*;
use bytes::BytesMut;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    fetch_response, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatResponse,
    DeleteGroupsResponse, DescribeGroupsResponse, FetchResponse, HeartbeatResponse,
    JoinGroupResponse, LeaveGroupResponse, OffsetCommitResponse, OffsetDeleteResponse,
    OffsetFetchResponse, ShareGroupDescribeResponse, SyncGroupResponse, TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest};
use kafka_protocol::protocol::Encodable;

use crate::layers::request::ListenerKind;
use std::sync::atomic::{AtomicUsize, Ordering as AtOrd};
use tower::ServiceExt;

const TWO_GROUPS: &str = "mode = \"enforce\"\n[[consumer]]\ngroup = \"a\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\nlag_slo_seconds = 60\n[[consumer]]\ngroup = \"b\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"u\"]\nlag_slo_seconds = 60\n[[consumer]]\ngroup = \"c\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\nlag_slo_seconds = 60\n";

/// The consumer decision for a read tied to `tie`.
fn consumer(tie: Tie) -> Arc<crate::consumers::decision::Consumer> {
    Arc::new(crate::consumers::decision::Consumer {
        tie,
        ..Default::default()
    })
}

/// A Fetch for topic `t` partition 0 as a client would send it.
fn fetch_request(replica_id: i32, tie: Option<Tie>) -> Request {
    let fetch = FetchRequest::default()
        .with_replica_id(replica_id.into())
        .with_max_wait_ms(1)
        .with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(StrBytes::from_static_str("t").into())
                .with_partitions(vec![
                    kafka_protocol::messages::fetch_request::FetchPartition::default()
                        .with_partition(0),
                ]),
        ]);
    let mut req = raw_request(ApiKey::Fetch, 11, body(&fetch, 11));
    req.consumer = tie.map(consumer);
    req
}

/// A governance layer with `registry` (none: governance off), its metrics and registry
/// handle; the directory holds the registry file.
fn layer_with(
    registry: Option<&str>,
) -> (
    GovernanceLayer,
    Arc<Metrics>,
    Arc<RegistryHandle>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let handle = Arc::new(match registry {
        Some(text) => {
            let path = dir.path().join("r.toml");
            std::fs::write(&path, text).unwrap();
            RegistryHandle::open(&path).unwrap()
        }
        None => RegistryHandle::disabled(),
    });
    let metrics = Arc::new(Metrics::new());
    let layer = GovernanceLayer::new(handle.clone(), Arc::default(), metrics.clone());
    (layer, metrics, handle, dir)
}

/// Run one request through governance over a broker stub; the error code of partition 0
/// in the answer, and whether the broker saw the request.
async fn govern(registry: Option<&str>, req: Request) -> (i16, i16, bool) {
    let (layer, _, _, _dir) = layer_with(registry);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let broker = tower::service_fn(move |r: Request| {
        seen.fetch_add(1, AtOrd::SeqCst);
        let resp = FetchResponse::default();
        let h = ResponseHeader::default().with_correlation_id(r.meta.correlation_id);
        let frame = protocol::encode_response(&h, &resp, ApiKey::Fetch, 11).unwrap();
        async move { Ok::<_, BoxError>(Response::Frame(frame)) }
    });
    let svc = layer.layer(broker);
    let Response::Frame(f) = svc.oneshot(req).await.unwrap() else {
        panic!("a whole frame")
    };
    let (_, resp) = protocol::decode_response::<FetchResponse>(&f, ApiKey::Fetch, 11).unwrap();
    let code = resp
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .map_or(0, |p| p.error_code);
    (resp.error_code, code, calls.load(AtOrd::SeqCst) > 0)
}

/// A Fetch v12 on session `epoch` for topic `t` partition 0 (none when incremental).
fn session_fetch(epoch: i32) -> Request {
    let mut fetch = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(1)
        .with_session_id(if epoch > 0 { 42 } else { 0 })
        .with_session_epoch(epoch);
    if epoch <= 0 {
        fetch = fetch.with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(StrBytes::from_static_str("t").into())
                .with_partitions(vec![
                    kafka_protocol::messages::fetch_request::FetchPartition::default(),
                ]),
        ]);
    }
    let mut req = raw_request(ApiKey::Fetch, 12, body(&fetch, 12));
    req.consumer = Some(consumer(Tie::Group("a".into())));
    req
}

#[tokio::test]
async fn an_incremental_fetch_session_is_checked_whole_again_after_a_reload() {
    let (layer, metrics, handle, _dir) = layer_with(Some(TWO_GROUPS));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let broker = tower::service_fn(move |r: Request| {
        seen.fetch_add(1, AtOrd::SeqCst);
        let h = ResponseHeader::default().with_correlation_id(r.meta.correlation_id);
        let frame =
            protocol::encode_response(&h, &FetchResponse::default(), ApiKey::Fetch, 12).unwrap();
        async move { Ok::<_, BoxError>(Response::Frame(frame)) }
    });
    let mut svc = layer.layer(broker);
    let mut send = async |req: Request| {
        let before = calls.load(AtOrd::SeqCst);
        let Response::Frame(f) = svc.ready().await.unwrap().call(req).await.unwrap() else {
            panic!("a whole frame")
        };
        let (_, r) = protocol::decode_response::<FetchResponse>(&f, ApiKey::Fetch, 12).unwrap();
        (r.error_code, calls.load(AtOrd::SeqCst) > before)
    };
    // A session's incremental fetch on a connection that never sent its full fetch.
    assert_eq!(
        send(session_fetch(3)).await,
        (FETCH_SESSION_ID_NOT_FOUND, false)
    );
    assert_eq!(send(session_fetch(0)).await, (0, true));
    assert_eq!(send(session_fetch(1)).await, (0, true));
    handle.reload().unwrap();
    assert_eq!(
        send(session_fetch(2)).await,
        (FETCH_SESSION_ID_NOT_FOUND, false)
    );
    assert_eq!(send(session_fetch(0)).await, (0, true));
    assert_eq!(send(session_fetch(1)).await, (0, true));
    assert_eq!(metrics.fetch_sessions_reset.get(), 2);
}

#[tokio::test]
async fn share_groups_are_refused_in_enforce_mode_and_pass_in_shadow() {
    use kafka_protocol::messages::{ShareFetchRequest, ShareGroupHeartbeatRequest};
    let heartbeat =
        ShareGroupHeartbeatRequest::default().with_group_id(StrBytes::from_static_str("a").into());
    let fetch =
        ShareFetchRequest::default().with_group_id(Some(StrBytes::from_static_str("a").into()));
    let frames = [
        (ApiKey::ShareGroupHeartbeat, body(&heartbeat, 1)),
        (ApiKey::ShareFetch, body(&fetch, 1)),
    ];
    for (mode, refused) in [("enforce", true), ("shadow", false)] {
        let text = TWO_GROUPS.replacen("mode = \"enforce\"", &format!("mode = \"{mode}\""), 1);
        for (key, b) in &frames {
            let (forwarded, code) = govern_raw(&text, *key, 1, b.clone()).await;
            assert_eq!(forwarded, !refused, "{mode} {key:?}");
            if refused {
                assert_eq!(code, Some(GROUP_AUTHORIZATION_FAILED), "{key:?}");
            }
        }
    }
}

/// Run one raw request body through governance; whether the broker stub saw it, and the
/// top-level error code of Tollgate's own answer.
async fn govern_raw(registry: &str, key: ApiKey, version: i16, body: Bytes) -> (bool, Option<i16>) {
    let (layer, _, _, _dir) = layer_with(Some(registry));
    let broker = tower::service_fn(|_r: Request| async { Ok::<_, BoxError>(Response::None) });
    match layer
        .layer(broker)
        .oneshot(raw_request(key, version, body))
        .await
        .unwrap()
        .encoded()
        .unwrap()
    {
        Response::None => (true, None),
        Response::Frame(f) => {
            // Every answer here starts with throttle_time_ms (i32), then error_code (i16).
            let at = protocol::LEN_PREFIX + 4 + 1 + 4;
            (false, Some(i16::from_be_bytes([f[at], f[at + 1]])))
        }
        other => panic!("no stream: {other:?}"),
    }
}

/// A request frame with a client header (client id "hostile") around a raw body.
fn raw_request(key: ApiKey, version: i16, body: Bytes) -> Request {
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(9)
        .with_client_id(Some(StrBytes::from_static_str("hostile")));
    let mut frame = bytes::BytesMut::new();
    let hv = key.request_header_version(version);
    use kafka_protocol::protocol::Encodable;
    let size = header.compute_size(hv).unwrap() + body.len();
    bytes::BufMut::put_i32(&mut frame, size as i32);
    header.encode(&mut frame, hv).unwrap();
    frame.extend_from_slice(&body);
    let frame = frame.freeze();
    let meta = protocol::parse_request(&frame).unwrap();
    let conn = Arc::new(ConnInfo::new(
        1,
        "10.0.0.1:5000".parse().unwrap(),
        ListenerKind::Bootstrap,
    ));
    Request::new(meta, frame, conn)
}

#[tokio::test]
async fn a_client_posing_as_a_follower_is_refused_with_or_without_a_registry() {
    for registry in [None, Some(TWO_GROUPS)] {
        let (top, code, forwarded) = govern(registry, fetch_request(3, None)).await;
        assert_eq!(
            (top, code),
            (CLUSTER_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED)
        );
        assert!(!forwarded, "a replica fetch reached the broker");
    }
    // A consumer's fetch (replica_id -1) passes when governance is off.
    let (_, code, forwarded) = govern(None, fetch_request(-1, None)).await;
    assert_eq!(code, 0);
    assert!(forwarded);
}

#[tokio::test]
async fn an_ambiguous_tie_reads_only_what_every_candidate_may() {
    let tie = |c: &[&str]| Tie::Ambiguous(c.iter().map(|s| s.to_string()).collect());
    // b may not read t: refused.
    let (_, code, forwarded) =
        govern(Some(TWO_GROUPS), fetch_request(-1, Some(tie(&["a", "b"])))).await;
    assert_eq!(code, TOPIC_AUTHORIZATION_FAILED);
    assert!(!forwarded);
    // a and c both may: allowed.
    let (_, code, forwarded) =
        govern(Some(TWO_GROUPS), fetch_request(-1, Some(tie(&["a", "c"])))).await;
    assert_eq!(code, 0);
    assert!(forwarded);
    // No decision on the request counts as no group: refused.
    let (_, code, _) = govern(Some(TWO_GROUPS), fetch_request(-1, None)).await;
    assert_eq!(code, TOPIC_AUTHORIZATION_FAILED);
}

#[test]
fn refusal_logs_are_rate_limited_per_key() {
    let l = LogLimiter::default();
    assert_eq!(l.admit("k".into()), Some(0));
    assert_eq!(l.admit("k".into()), None);
    assert_eq!(l.admit("k".into()), None);
    assert_eq!(l.admit("other".into()), Some(0));
}

#[tokio::test]
async fn a_client_inventing_a_group_per_request_gets_one_log_line_per_interval() {
    let (layer, metrics, _, _dir) = layer_with(Some(TWO_GROUPS));
    for i in 0..100 {
        let g = GroupId(StrBytes::from_string(format!("invented-{i}")));
        let req = raw_request(
            ApiKey::Heartbeat,
            3,
            body(&HeartbeatRequest::default().with_group_id(g), 3),
        );
        let broker = tower::service_fn(|_r: Request| async { Ok::<_, BoxError>(Response::None) });
        let _ = layer.layer(broker).oneshot(req).await.unwrap();
    }
    let refused = metrics
        .rejected_requests
        .with_label_values(&["unregistered_group", "Heartbeat", "enforce"])
        .get();
    assert_eq!(refused, 100, "the metric counts every refusal");
    assert_eq!(layer.logs.keys(), 1, "one log key for one client instance");
}

fn body<T: Encodable>(req: &T, version: i16) -> Bytes {
    let mut b = BytesMut::new();
    req.encode(&mut b, version).unwrap();
    b.freeze()
}

/// Every group API at every version Tollgate lets clients use gets a decodable
/// GROUP_AUTHORIZATION_FAILED answer with the client's correlation id.
#[test]
fn refusals_decode_at_every_version() {
    let g = GroupId(StrBytes::from_static_str("unregistered"));
    let hint = StrBytes::from_static_str("register it");
    let header = ResponseHeader::default().with_correlation_id(77);
    let mut checked = 0;
    for key in GOVERNED_APIS {
        // Reads and share groups have their own answers (tested on their own).
        if matches!(
            key,
            ApiKey::Fetch
                | ApiKey::ListOffsets
                | ApiKey::ShareGroupHeartbeat
                | ApiKey::ShareFetch
                | ApiKey::ShareAcknowledge
                | ApiKey::ListGroups
        ) {
            continue;
        }
        let range = crate::wire::versions::decodable_versions(*key);
        for v in range.min..=range.max {
            let req: Bytes = match key {
                ApiKey::JoinGroup => body(&JoinGroupRequest::default().with_group_id(g.clone()), v),
                ApiKey::SyncGroup => body(&SyncGroupRequest::default().with_group_id(g.clone()), v),
                ApiKey::Heartbeat => body(&HeartbeatRequest::default().with_group_id(g.clone()), v),
                ApiKey::LeaveGroup => {
                    body(&LeaveGroupRequest::default().with_group_id(g.clone()), v)
                }
                ApiKey::OffsetCommit => {
                    body(&OffsetCommitRequest::default().with_group_id(g.clone()), v)
                }
                ApiKey::TxnOffsetCommit => body(
                    &TxnOffsetCommitRequest::default().with_group_id(g.clone()),
                    v,
                ),
                ApiKey::OffsetFetch if v >= 8 => body(
                    &OffsetFetchRequest::default().with_groups(vec![
                        OffsetFetchRequestGroup::default().with_group_id(g.clone()),
                    ]),
                    v,
                ),
                ApiKey::OffsetFetch => {
                    body(&OffsetFetchRequest::default().with_group_id(g.clone()), v)
                }
                ApiKey::DescribeGroups => body(
                    &DescribeGroupsRequest::default().with_groups(vec![g.clone()]),
                    v,
                ),
                ApiKey::ConsumerGroupHeartbeat => body(
                    &ConsumerGroupHeartbeatRequest::default().with_group_id(g.clone()),
                    v,
                ),
                ApiKey::ConsumerGroupDescribe => body(
                    &ConsumerGroupDescribeRequest::default().with_group_ids(vec![g.clone()]),
                    v,
                ),
                ApiKey::ShareGroupDescribe => body(
                    &ShareGroupDescribeRequest::default().with_group_ids(vec![g.clone()]),
                    v,
                ),
                ApiKey::DeleteGroups => body(
                    &DeleteGroupsRequest::default().with_groups_names(vec![g.clone()]),
                    v,
                ),
                ApiKey::OffsetDelete => {
                    body(&OffsetDeleteRequest::default().with_group_id(g.clone()), v)
                }
                other => panic!("no case for {other:?}"),
            };
            let frame = group_refusal(*key, v, &mut req.clone(), &header, &hint)
                .unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
            let code = |f: &Bytes| -> (i32, Vec<i16>) {
                macro_rules! dec {
                    ($t:ty) => {{
                        let (h, r) = protocol::decode_response::<$t>(f, *key, v)
                            .unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
                        (h.correlation_id, r)
                    }};
                }
                match key {
                    ApiKey::JoinGroup => {
                        let (c, r) = dec!(JoinGroupResponse);
                        (c, vec![r.error_code])
                    }
                    ApiKey::SyncGroup => {
                        let (c, r) = dec!(SyncGroupResponse);
                        (c, vec![r.error_code])
                    }
                    ApiKey::Heartbeat => {
                        let (c, r) = dec!(HeartbeatResponse);
                        (c, vec![r.error_code])
                    }
                    ApiKey::LeaveGroup => {
                        let (c, r) = dec!(LeaveGroupResponse);
                        (c, vec![r.error_code])
                    }
                    // No partitions named: nothing to answer, but it decodes.
                    ApiKey::OffsetCommit => {
                        let (c, _) = dec!(OffsetCommitResponse);
                        (c, vec![E])
                    }
                    ApiKey::TxnOffsetCommit => {
                        let (c, _) = dec!(TxnOffsetCommitResponse);
                        (c, vec![E])
                    }
                    ApiKey::OffsetFetch => {
                        let (c, r) = dec!(OffsetFetchResponse);
                        if v >= 8 {
                            (c, r.groups.iter().map(|g| g.error_code).collect())
                        } else if v >= 2 {
                            (c, vec![r.error_code])
                        } else {
                            (c, vec![E])
                        }
                    }
                    ApiKey::DescribeGroups => {
                        let (c, r) = dec!(DescribeGroupsResponse);
                        (c, r.groups.iter().map(|g| g.error_code).collect())
                    }
                    ApiKey::ConsumerGroupHeartbeat => {
                        let (c, r) = dec!(ConsumerGroupHeartbeatResponse);
                        (c, vec![r.error_code])
                    }
                    ApiKey::ConsumerGroupDescribe => {
                        let (c, r) = dec!(ConsumerGroupDescribeResponse);
                        (c, r.groups.iter().map(|g| g.error_code).collect())
                    }
                    ApiKey::ShareGroupDescribe => {
                        let (c, r) = dec!(ShareGroupDescribeResponse);
                        (c, r.groups.iter().map(|g| g.error_code).collect())
                    }
                    ApiKey::DeleteGroups => {
                        let (c, r) = dec!(DeleteGroupsResponse);
                        (c, r.results.iter().map(|g| g.error_code).collect())
                    }
                    ApiKey::OffsetDelete => {
                        let (c, r) = dec!(OffsetDeleteResponse);
                        (c, vec![r.error_code])
                    }
                    _ => unreachable!(),
                }
            };
            const E: i16 = GROUP_AUTHORIZATION_FAILED;
            let (corr, codes) = code(&frame);
            assert_eq!(corr, 77, "{key:?} v{v}");
            assert!(
                !codes.is_empty() && codes.iter().all(|c| *c == E),
                "{key:?} v{v}: {codes:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked}");
}

#[tokio::test]
async fn an_undecodable_governed_request_is_not_forwarded() {
    use crate::wire::protocol::{encode_request, parse_request};
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, "mode = \"enforce\"\n").unwrap();
    let registry = Arc::new(RegistryHandle::open(&path).unwrap());
    let metrics = Arc::new(Metrics::new());
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(ApiKey::JoinGroup as i16)
        .with_request_api_version(5)
        .with_correlation_id(3);
    // A JoinGroup header followed by a body that ends inside the group id.
    let mut frame = encode_request(&header, &JoinGroupRequest::default())
        .unwrap()
        .to_vec();
    frame.truncate(frame.len() - 8);
    frame.extend_from_slice(&[0, 50, b'x']);
    let len = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    let frame = Bytes::from(frame);
    let meta = parse_request(&frame).unwrap();
    let conn = Arc::new(ConnInfo::new(
        1,
        "127.0.0.1:1".parse().unwrap(),
        crate::consumers::identity::ListenerKind::Bootstrap,
    ));
    let forwarded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = forwarded.clone();
    let inner = tower::service_fn(move |_r: Request| {
        f.store(true, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, BoxError>(Response::None) }
    });
    let svc = GovernanceLayer::new(registry, Arc::default(), metrics).layer(inner);
    let err = svc
        .oneshot(Request::new(meta, frame, conn))
        .await
        .expect_err("refused");
    assert_eq!(crate::error::reason(err.as_ref()), "policy_decode");
    assert!(!forwarded.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn refused_partitions_merge_into_the_broker_answer() {
    let refused = Refused {
        partitions: vec![
            (StrBytes::from_static_str("secret"), Uuid::nil(), 0),
            (StrBytes::from_static_str("open"), Uuid::nil(), 5),
        ],
    };
    let broker = FetchResponse::default().with_responses(vec![
        fetch_response::FetchableTopicResponse::default()
            .with_topic(StrBytes::from_static_str("open").into())
            .with_partitions(vec![fetch_response::PartitionData::default()
                .with_partition_index(1)
                .with_high_watermark(10)]),
    ]);
    let header = ResponseHeader::default().with_correlation_id(5);
    let frame = protocol::encode_response(&header, &broker, ApiKey::Fetch, 12).unwrap();
    let merged = add_refused(ApiKey::Fetch, 12, Response::Frame(frame), &refused).unwrap();
    let Response::Fetch(a) = merged else {
        panic!("the merged answer goes up decoded")
    };
    let (h, r) = (a.header, a.body);
    assert_eq!(h.correlation_id, 5);
    let open = &r.responses[0];
    assert_eq!(open.partitions.len(), 2);
    assert_eq!(open.partitions[0].high_watermark, 10);
    assert_eq!(open.partitions[1].error_code, TOPIC_AUTHORIZATION_FAILED);
    assert_eq!(r.responses[1].topic.0.as_str(), "secret");
    assert_eq!(
        r.responses[1].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
}

#[test]
fn refused_partitions_merge_into_a_decoded_answer_without_copying_its_records() {
    // A tiered split answer arrives decoded (routing); its refused partitions must be added
    // too (they were once dropped from such answers), and its records stay where they are.
    let refused = Refused {
        partitions: vec![(StrBytes::from_static_str("secret"), Uuid::nil(), 0)],
    };
    let records = Bytes::from(vec![1u8; 20_000]);
    let merged = FetchResponse::default().with_responses(vec![
        fetch_response::FetchableTopicResponse::default()
            .with_topic(StrBytes::from_static_str("open").into())
            .with_partitions(vec![fetch_response::PartitionData::default()
                .with_partition_index(1)
                .with_records(Some(records.clone()))]),
    ]);
    let header = ResponseHeader::default().with_correlation_id(5);
    let answer = Response::fetch(header, 12, merged);
    let Response::Fetch(a) = add_refused(ApiKey::Fetch, 12, answer, &refused).unwrap() else {
        panic!("stays decoded")
    };
    assert_eq!(a.body.responses.len(), 2);
    assert_eq!(a.body.responses[1].topic.0.as_str(), "secret");
    assert_eq!(
        a.body.responses[1].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    let kept = a.body.responses[0].partitions[0].records.as_ref().unwrap();
    assert_eq!(kept.as_ptr(), records.as_ptr());
    // Encoded once, for the client: it decodes to the same answer.
    let pieces = match Response::Fetch(a).encoded().unwrap() {
        Response::Pieces(p) => p,
        other => panic!("a large record set is its own piece: {other:?}"),
    };
    let joined: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let (h, r) =
        protocol::decode_response::<FetchResponse>(&Bytes::from(joined), ApiKey::Fetch, 12)
            .unwrap();
    assert_eq!(h.correlation_id, 5);
    assert_eq!(r.responses[1].topic.0.as_str(), "secret");
    assert_eq!(
        r.responses[0].partitions[0].records.as_ref(),
        Some(&records)
    );
}

#[tokio::test]
async fn a_stripped_fetch_answered_by_the_tiers_gets_its_refusals_back() {
    // Group a may read t, not u. Its Fetch names both; u is taken out, and the layer below
    // (routing) answers t from the secondary: a decoded answer with a large record set,
    // which goes to the client in pieces. The refusal of u must be in it (it was dropped
    // from such answers once), and t's records must not be copied.
    let (layer, _, _, _dir) = layer_with(Some(TWO_GROUPS));
    let fetch = FetchRequest::default().with_max_wait_ms(1).with_topics(
        ["t", "u"]
            .iter()
            .map(|t| {
                kafka_protocol::messages::fetch_request::FetchTopic::default()
                    .with_topic(StrBytes::from_static_str(t).into())
                    .with_partitions(vec![
                        kafka_protocol::messages::fetch_request::FetchPartition::default()
                            .with_partition(0),
                    ])
            })
            .collect(),
    );
    let mut req = raw_request(ApiKey::Fetch, 11, body(&fetch, 11));
    req.consumer = Some(consumer(Tie::Group("a".into())));
    let records = Bytes::from(vec![3u8; 32 * 1024]);
    let served = records.clone();
    let routing = tower::service_fn(move |r: Request| {
        let asked = r.body::<FetchRequest>().unwrap();
        let topics: Vec<String> = asked.topics.iter().map(|t| t.topic.to_string()).collect();
        assert_eq!(topics, ["t"], "u never leaves Tollgate");
        let answer = FetchResponse::default().with_responses(vec![
            fetch_response::FetchableTopicResponse::default()
                .with_topic(StrBytes::from_static_str("t").into())
                .with_partitions(vec![fetch_response::PartitionData::default()
                    .with_partition_index(0)
                    .with_records(Some(served.clone()))]),
        ]);
        let h = ResponseHeader::default().with_correlation_id(r.meta.correlation_id);
        async move { Ok::<_, BoxError>(Response::fetch(h, 11, answer)) }
    });
    let resp = layer.layer(routing).oneshot(req).await.unwrap();
    let Response::Fetch(a) = &resp else {
        panic!("stays decoded until it leaves: {resp:?}")
    };
    let t = &a.body.responses[0].partitions[0];
    assert_eq!(t.records.as_ref().unwrap().as_ptr(), records.as_ptr());
    let Response::Pieces(pieces) = resp.encoded().unwrap() else {
        panic!("a large record set is a piece of its own")
    };
    let joined: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let (_, r) =
        protocol::decode_response::<FetchResponse>(&Bytes::from(joined), ApiKey::Fetch, 11)
            .unwrap();
    let codes: Vec<(String, i16)> = r
        .responses
        .iter()
        .map(|t| (t.topic.to_string(), t.partitions[0].error_code))
        .collect();
    assert_eq!(
        codes,
        [("t".into(), 0), ("u".into(), TOPIC_AUTHORIZATION_FAILED)]
    );
    assert_eq!(
        r.responses[0].partitions[0].records.as_ref(),
        Some(&records)
    );
}
