//! Unit tests of the attribution layer.

use super::*;
use crate::consumers::groups::Instance;
use crate::control::config::AttributionConfig;
use crate::layers::request::ListenerKind;
use crate::metrics::Metrics;
use crate::wire::protocol;
use kafka_protocol::messages::{
    leave_group_request, offset_commit_request, offset_commit_response, LeaveGroupRequest,
    LeaveGroupResponse, OffsetCommitRequest, OffsetCommitResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tower::ServiceExt;

fn request<T: Encodable>(key: ApiKey, version: i16, body: &T, conn: &Arc<ConnInfo>) -> Request {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(9);
    let frame = protocol::encode_request(&header, body).unwrap();
    Request::new(
        protocol::parse_request(&frame).unwrap(),
        frame,
        conn.clone(),
    )
}

/// Send `req` through an attribution layer whose broker answers `answer`.
async fn send<R: Encodable>(
    layer: &AttributionLayer,
    req: Request,
    key: ApiKey,
    answer: &R,
) -> AttributionService<impl Service<Request, Response = Response, Error = BoxError> + Clone> {
    let h = ResponseHeader::default().with_correlation_id(9);
    let frame = protocol::encode_response(&h, answer, key, req.meta.api_version).unwrap();
    let broker = tower::service_fn(move |_r: Request| {
        let f = frame.clone();
        async move { Ok::<_, BoxError>(Response::Frame(f)) }
    });
    let mut svc = layer.layer(broker);
    let _ = svc.ready().await.unwrap().call(req).await.unwrap();
    svc
}

fn sinks() -> (Sinks, AttributionLayer, Arc<ConnInfo>) {
    let a = Sinks {
        usage: Arc::new(Usage::new(
            AttributionConfig::default(),
            Arc::new(Metrics::new()),
            Vec::new(),
        )),
        heads: Arc::default(),
        topic_ids: Arc::default(),
        groups: Arc::default(),
        lag: Arc::new(Lag::new(Default::default())),
        ledger: None,
    };
    let conn = Arc::new(ConnInfo::new(
        3,
        "10.0.0.1:4000".parse().unwrap(),
        ListenerKind::Bootstrap,
    ));
    (a.clone(), AttributionLayer::new(a, Arc::default()), conn)
}

#[tokio::test]
async fn group_state_follows_the_brokers_answer_not_the_request() {
    let (a, layer, conn) = sinks();
    let me = Instance {
        principal: crate::consumers::identity::ANONYMOUS.into(),
        client_id: String::new(),
        host: conn.peer.ip(),
    };
    a.groups
        .joined("g", "m", 1, "consumer", Duration::from_secs(10), me, 1);
    let leave = LeaveGroupRequest::default()
        .with_group_id(StrBytes::from_static_str("g").into())
        .with_members(vec![leave_group_request::MemberIdentity::default()
            .with_member_id(StrBytes::from_static_str("m"))]);
    // The coordinator refused the LeaveGroup (UNKNOWN_MEMBER_ID): the member stays.
    let refused = LeaveGroupResponse::default().with_error_code(25);
    let req = request(ApiKey::LeaveGroup, 3, &leave, &conn);
    send(&layer, req, ApiKey::LeaveGroup, &refused).await;
    assert_eq!(a.groups.view()[0].members.len(), 1);
    let req = request(ApiKey::LeaveGroup, 3, &leave, &conn);
    send(
        &layer,
        req,
        ApiKey::LeaveGroup,
        &LeaveGroupResponse::default(),
    )
    .await;
    assert!(a.groups.view()[0].members.is_empty());
}

#[tokio::test]
async fn only_accepted_commits_make_offset_users_and_only_while_connected() {
    let (a, layer, conn) = sinks();
    let commit = OffsetCommitRequest::default()
        .with_group_id(StrBytes::from_static_str("x").into())
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(StrBytes::from_static_str("t").into())
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(7),
                ]),
        ]);
    let answer = |code: i16| {
        OffsetCommitResponse::default().with_topics(vec![
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(StrBytes::from_static_str("t").into())
                .with_partitions(vec![
                    offset_commit_response::OffsetCommitResponsePartition::default()
                        .with_partition_index(0)
                        .with_error_code(code),
                ]),
        ])
    };
    // Refused (GROUP_AUTHORIZATION_FAILED, as governance answers): no tie.
    let req = request(ApiKey::OffsetCommit, 8, &commit, &conn);
    drop(send(&layer, req, ApiKey::OffsetCommit, &answer(30)).await);
    assert!(a.groups.view().iter().all(|g| g.offset_users.is_empty()));
    // Accepted: an offset user, until its connection closes.
    let req = request(ApiKey::OffsetCommit, 8, &commit, &conn);
    let svc = send(&layer, req, ApiKey::OffsetCommit, &answer(0)).await;
    assert_eq!(a.groups.view()[0].offset_users.len(), 1);
    drop(svc);
    assert!(a.groups.view()[0].offset_users.is_empty());
}

#[test]
fn error_names_are_kafkas() {
    assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
    assert_eq!(error_name(29), "TOPIC_AUTHORIZATION_FAILED");
    assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
    assert_eq!(error_name(30000), "UNKNOWN_SERVER_ERROR");
}
