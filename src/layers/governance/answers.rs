//! The answers governance gives itself: refused partitions merged into the broker's answer,
//! and whole-request refusals (GROUP_AUTHORIZATION_FAILED for every group a request names).

use bytes::Bytes;
use kafka_protocol::messages::{
    consumer_group_describe_response, delete_groups_response, describe_groups_response,
    fetch_response, list_offsets_response, offset_commit_response, offset_fetch_response,
    share_group_describe_response, txn_offset_commit_response, ApiKey,
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatResponse,
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FetchRequest, FetchResponse, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupResponse, ListOffsetsRequest, ListOffsetsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
    ResponseHeader, ShareGroupDescribeRequest, ShareGroupDescribeResponse, SyncGroupResponse,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tracing::warn;
use uuid::Uuid;

use super::{
    Policy, Reason, Refused, CLUSTER_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED,
    REPLICA_REASON, TOPIC_AUTHORIZATION_FAILED,
};
use crate::control::registry::{GroupVerdict, Mode, Registry};
use crate::layers::request::{Request, Response};
use crate::wire::protocol::{self, api_name};

/// Every partition a Fetch names, as refused.
pub(super) fn fetch_partitions(f: &FetchRequest) -> Refused {
    Refused {
        partitions: f
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.clone(), t.topic_id, p.partition))
            })
            .collect(),
    }
}

/// Every partition a ListOffsets names, as refused.
pub(super) fn listed_refused(lo: &ListOffsetsRequest) -> Refused {
    Refused {
        partitions: lo
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.0.clone(), Uuid::nil(), p.partition_index))
            })
            .collect(),
    }
}

pub(super) fn append_fetch_errors(resp: &mut FetchResponse, refused: &Refused, code: i16) {
    for (name, id, partition) in &refused.partitions {
        let idx = resp
            .responses
            .iter()
            .position(|t| &t.topic.0 == name && &t.topic_id == id);
        let idx = match idx {
            Some(i) => i,
            None => {
                resp.responses.push(
                    fetch_response::FetchableTopicResponse::default()
                        .with_topic(name.clone().into())
                        .with_topic_id(*id),
                );
                resp.responses.len() - 1
            }
        };
        resp.responses[idx].partitions.push(
            fetch_response::PartitionData::default()
                .with_partition_index(*partition)
                .with_error_code(code)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1),
        );
    }
}

pub(super) fn append_list_offsets_errors(
    resp: &mut ListOffsetsResponse,
    refused: &Refused,
    code: i16,
) {
    for (name, _, partition) in &refused.partitions {
        let idx = match resp.topics.iter().position(|t| &t.name.0 == name) {
            Some(i) => i,
            None => {
                resp.topics.push(
                    list_offsets_response::ListOffsetsTopicResponse::default()
                        .with_name(name.clone().into()),
                );
                resp.topics.len() - 1
            }
        };
        resp.topics[idx].partitions.push(
            list_offsets_response::ListOffsetsPartitionResponse::default()
                .with_partition_index(*partition)
                .with_error_code(code)
                .with_timestamp(-1)
                .with_offset(-1),
        );
    }
}

/// May a reader tied to `group` read `topic`? `None` when it may.
pub(super) fn group_read_verdict(
    reg: &Registry,
    group: &str,
    principal: &str,
    topic: &str,
) -> Option<(Reason, Mode, Option<String>)> {
    match reg.group_verdict(group, principal) {
        GroupVerdict::Registered(e) if e.allows_topic(topic) => None,
        GroupVerdict::Registered(e) => Some((
            Reason::TopicNotAllowed,
            e.mode.unwrap_or(reg.mode),
            Some(e.name()),
        )),
        GroupVerdict::Unregistered => Some((Reason::UnregisteredGroup, reg.mode, None)),
        GroupVerdict::WrongPrincipal(e) => Some((
            Reason::PrincipalMismatch,
            e.mode.unwrap_or(reg.mode),
            Some(e.name()),
        )),
    }
}

/// Merge refused partitions into the answer to a stripped request. A Fetch answer that a
/// layer below already decoded (routing's merged tiered answer) is changed in place; a
/// broker's frame is decoded here, once, and goes up decoded (encoded once, for the client).
pub(super) fn add_refused(
    key: ApiKey,
    version: i16,
    response: Response,
    refused: &Refused,
) -> anyhow::Result<Response> {
    Ok(match (key, response) {
        (ApiKey::Fetch, Response::Fetch(mut a)) => {
            append_fetch_errors(&mut a.body, refused, TOPIC_AUTHORIZATION_FAILED);
            Response::Fetch(a)
        }
        (ApiKey::Fetch, Response::Frame(frame)) => {
            let (h, mut resp) = protocol::decode_response::<FetchResponse>(&frame, key, version)?;
            append_fetch_errors(&mut resp, refused, TOPIC_AUTHORIZATION_FAILED);
            Response::fetch(h, version, resp)
        }
        (ApiKey::ListOffsets, Response::Frame(frame)) => {
            let (h, mut resp) =
                protocol::decode_response::<ListOffsetsResponse>(&frame, key, version)?;
            append_list_offsets_errors(&mut resp, refused, TOPIC_AUTHORIZATION_FAILED);
            Response::Frame(protocol::encode_response(&h, &resp, key, version)?)
        }
        (_, other) => other,
    })
}

/// GROUP_AUTHORIZATION_FAILED for every group (and partition) a group request names.
pub(super) fn group_refusal(
    key: ApiKey,
    version: i16,
    body: &mut Bytes,
    header: &ResponseHeader,
    hint: &StrBytes,
) -> anyhow::Result<Bytes> {
    const E: i16 = GROUP_AUTHORIZATION_FAILED;
    Ok(match key {
        ApiKey::JoinGroup => {
            let r = JoinGroupRequest::decode(body, version)?;
            let resp = JoinGroupResponse::default()
                .with_error_code(E)
                .with_generation_id(-1)
                .with_member_id(r.member_id)
                .with_protocol_name(if version >= 7 {
                    None
                } else {
                    Some(StrBytes::default())
                });
            protocol::encode_response(header, &resp, key, version)?
        }
        ApiKey::SyncGroup => protocol::encode_response(
            header,
            &SyncGroupResponse::default().with_error_code(E),
            key,
            version,
        )?,
        ApiKey::Heartbeat => protocol::encode_response(
            header,
            &HeartbeatResponse::default().with_error_code(E),
            key,
            version,
        )?,
        ApiKey::LeaveGroup => protocol::encode_response(
            header,
            &LeaveGroupResponse::default().with_error_code(E),
            key,
            version,
        )?,
        ApiKey::OffsetCommit => offset_commit_refusal(body, header, version)?,
        ApiKey::TxnOffsetCommit => txn_offset_commit_refusal(body, header, version)?,
        ApiKey::OffsetFetch => offset_fetch_refusal(body, header, version)?,
        ApiKey::DescribeGroups => {
            let r = DescribeGroupsRequest::decode(body, version)?;
            let groups = r
                .groups
                .iter()
                .map(|g| {
                    describe_groups_response::DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(E)
                        // The message field exists from v6 on.
                        .with_error_message((version >= 6).then(|| hint.clone()))
                })
                .collect();
            protocol::encode_response(
                header,
                &DescribeGroupsResponse::default().with_groups(groups),
                key,
                version,
            )?
        }
        ApiKey::ConsumerGroupHeartbeat => protocol::encode_response(
            header,
            &ConsumerGroupHeartbeatResponse::default()
                .with_error_code(E)
                .with_error_message(Some(hint.clone())),
            key,
            version,
        )?,
        ApiKey::ConsumerGroupDescribe => {
            let r = ConsumerGroupDescribeRequest::decode(body, version)?;
            let groups = r
                .group_ids
                .iter()
                .map(|g| {
                    consumer_group_describe_response::DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(E)
                        .with_error_message(Some(hint.clone()))
                })
                .collect();
            protocol::encode_response(
                header,
                &ConsumerGroupDescribeResponse::default().with_groups(groups),
                key,
                version,
            )?
        }
        ApiKey::ShareGroupDescribe => {
            let r = ShareGroupDescribeRequest::decode(body, version)?;
            let groups = r
                .group_ids
                .iter()
                .map(|g| {
                    share_group_describe_response::DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(E)
                        .with_error_message(Some(hint.clone()))
                })
                .collect();
            protocol::encode_response(
                header,
                &ShareGroupDescribeResponse::default().with_groups(groups),
                key,
                version,
            )?
        }
        ApiKey::DeleteGroups => {
            let r = DeleteGroupsRequest::decode(body, version)?;
            let results = r
                .groups_names
                .iter()
                .map(|g| {
                    delete_groups_response::DeletableGroupResult::default()
                        .with_group_id(g.clone())
                        .with_error_code(E)
                })
                .collect();
            protocol::encode_response(
                header,
                &DeleteGroupsResponse::default().with_results(results),
                key,
                version,
            )?
        }
        // A group-level error, as Kafka gives for a group the caller may not touch.
        ApiKey::OffsetDelete => protocol::encode_response(
            header,
            &OffsetDeleteResponse::default().with_error_code(E),
            key,
            version,
        )?,
        other => anyhow::bail!("{other:?} is not a group API"),
    })
}

/// OffsetCommit: the error on every partition it names.
fn offset_commit_refusal(
    body: &mut Bytes,
    header: &ResponseHeader,
    version: i16,
) -> anyhow::Result<Bytes> {
    const E: i16 = GROUP_AUTHORIZATION_FAILED;
    let key = ApiKey::OffsetCommit;
    let r = OffsetCommitRequest::decode(body, version)?;
    let topics = r
        .topics
        .iter()
        .map(|t| {
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            offset_commit_response::OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(E)
                        })
                        .collect(),
                )
        })
        .collect();
    protocol::encode_response(
        header,
        &OffsetCommitResponse::default().with_topics(topics),
        key,
        version,
    )
}

/// TxnOffsetCommit: the error on every partition it names.
fn txn_offset_commit_refusal(
    body: &mut Bytes,
    header: &ResponseHeader,
    version: i16,
) -> anyhow::Result<Bytes> {
    const E: i16 = GROUP_AUTHORIZATION_FAILED;
    let key = ApiKey::TxnOffsetCommit;
    let r = TxnOffsetCommitRequest::decode(body, version)?;
    let topics = r
        .topics
        .iter()
        .map(|t| {
            txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(E)
                        })
                        .collect(),
                )
        })
        .collect();
    protocol::encode_response(
        header,
        &TxnOffsetCommitResponse::default().with_topics(topics),
        key,
        version,
    )
}

/// OffsetFetch: per partition before v8, per group from v8.
fn offset_fetch_refusal(
    body: &mut Bytes,
    header: &ResponseHeader,
    version: i16,
) -> anyhow::Result<Bytes> {
    const E: i16 = GROUP_AUTHORIZATION_FAILED;
    let key = ApiKey::OffsetFetch;
    let r = OffsetFetchRequest::decode(body, version)?;
    let resp = if version < 8 {
        let topics = r
            .topics
            .iter()
            .flatten()
            .map(|t| {
                offset_fetch_response::OffsetFetchResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|p| {
                                offset_fetch_response::OffsetFetchResponsePartition::default()
                                    .with_partition_index(*p)
                                    .with_committed_offset(-1)
                                    .with_error_code(E)
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetFetchResponse::default()
            .with_error_code(E)
            .with_topics(topics)
    } else {
        OffsetFetchResponse::default().with_groups(
            r.groups
                .iter()
                .map(|g| {
                    offset_fetch_response::OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(E)
                })
                .collect(),
        )
    };
    protocol::encode_response(header, &resp, key, version)
}

/// Could this Fetch or ListOffsets carry `replica_id >= 0`? Read without decoding the body:
/// the replica id is its first field (ListOffsets; Fetch before v15, which moved it into a
/// tagged field, so from v15 on this says "maybe" and the body is decoded).
pub(super) fn claims_replica(key: ApiKey, version: i16, body: &[u8]) -> bool {
    if key == ApiKey::Fetch && version >= 15 {
        return true;
    }
    match body.get(..4) {
        Some(b) => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) >= 0,
        None => true, // let the decoder say what is wrong
    }
}

impl Policy {
    /// A Fetch or ListOffsets with `replica_id >= 0` claims to come from a follower broker.
    /// Followers talk to their leader directly, never through Tollgate: refuse it whole with
    /// CLUSTER_AUTHORIZATION_FAILED (as a broker answers a follower fetch it does not allow).
    pub(super) fn refuse_replica(&self, req: &Request) -> anyhow::Result<Option<Bytes>> {
        let (Some(key), Some(_)) = (req.meta.api, req.meta.body_offset) else {
            return Ok(None);
        };
        let version = req.meta.api_version;
        let mut body = req.body_bytes()?;
        if !claims_replica(key, version, &body) {
            return Ok(None);
        }
        let (replica, refused) = match key {
            ApiKey::Fetch => {
                let f = FetchRequest::decode(&mut body, version)?;
                let replica = f.replica_id.0.max(f.replica_state.replica_id.0);
                (replica, fetch_partitions(&f))
            }
            _ => {
                let lo = ListOffsetsRequest::decode(&mut body, version)?;
                (lo.replica_id.0, listed_refused(&lo))
            }
        };
        if replica < 0 {
            return Ok(None);
        }
        self.replica_answer(req, replica, &refused).map(Some)
    }

    /// The whole-request CLUSTER_AUTHORIZATION_FAILED answer to a read posing as follower
    /// `replica`; counted and logged (rate-limited).
    pub(super) fn replica_answer(
        &self,
        req: &Request,
        replica: i32,
        refused: &Refused,
    ) -> anyhow::Result<Bytes> {
        let key = req.meta.api.unwrap_or(ApiKey::Fetch);
        let version = req.meta.api_version;
        let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
        let recorder = &self.recorder;
        recorder
            .metrics
            .rejected_requests
            .with_label_values(&[REPLICA_REASON, api_name(key as i16), "enforce"])
            .inc();
        let conn = &req.conn;
        let client_id = conn.client_id().unwrap_or_default();
        if let Some(suppressed) = recorder
            .logs
            .admit(format!("replica|{client_id}|{}", conn.peer.ip()))
        {
            warn!(decision = "reject", reason = REPLICA_REASON, api = api_name(key as i16),
                  replica_id = replica, client_id, peer = %conn.peer, conn = conn.id, suppressed,
                  "request refused: a client posed as a follower broker (replica_id >= 0)");
        }
        match key {
            ApiKey::Fetch => {
                let mut resp = FetchResponse::default()
                    .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                    .with_session_id(0);
                append_fetch_errors(&mut resp, refused, CLUSTER_AUTHORIZATION_FAILED);
                protocol::encode_response(&header, &resp, key, version)
            }
            _ => {
                let mut resp = ListOffsetsResponse::default();
                append_list_offsets_errors(&mut resp, refused, CLUSTER_AUTHORIZATION_FAILED);
                protocol::encode_response(&header, &resp, key, version)
            }
        }
    }
}
