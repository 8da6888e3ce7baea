//! Which API versions Tollgate can carry: the versions `kafka-protocol` decodes both ways,
//! narrowed where a layer needs it. ApiVersions answers (the rewrite layer) and Tollgate's own
//! broker connections ([`crate::brokers::upstream`]) cap to these. A leaf: it imports nothing of ours.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Message, VersionRange};

/// The lowest SaslHandshake version Tollgate can carry: v0 is followed by unframed SASL
/// tokens, which Tollgate cannot read (the SASL layer).
pub(crate) const SASL_HANDSHAKE_MIN_VERSION: i16 = 1;

/// The versions of `key` that Tollgate can decode both ways: the intersection of the request
/// and response message ranges. (`ApiKey::valid_versions` can be wider than the message types
/// `kafka-protocol` ships, e.g. OffsetCommit v10 in 0.18, so it is not used for capping.)
pub fn decodable_versions(key: ApiKey) -> VersionRange {
    use kafka_protocol::messages::*;
    fn both<Req: Message, Resp: Message>() -> VersionRange {
        Req::VERSIONS.intersect(&Resp::VERSIONS)
    }
    match key {
        ApiKey::ApiVersions => both::<ApiVersionsRequest, ApiVersionsResponse>(),
        ApiKey::Metadata => both::<MetadataRequest, MetadataResponse>(),
        ApiKey::FindCoordinator => both::<FindCoordinatorRequest, FindCoordinatorResponse>(),
        ApiKey::DescribeCluster => both::<DescribeClusterRequest, DescribeClusterResponse>(),
        ApiKey::Produce => both::<ProduceRequest, ProduceResponse>(),
        ApiKey::AddPartitionsToTxn => {
            both::<AddPartitionsToTxnRequest, AddPartitionsToTxnResponse>()
        }
        ApiKey::Fetch => both::<FetchRequest, FetchResponse>(),
        ApiKey::ListOffsets => both::<ListOffsetsRequest, ListOffsetsResponse>(),
        ApiKey::JoinGroup => both::<JoinGroupRequest, JoinGroupResponse>(),
        ApiKey::SyncGroup => both::<SyncGroupRequest, SyncGroupResponse>(),
        ApiKey::Heartbeat => both::<HeartbeatRequest, HeartbeatResponse>(),
        ApiKey::LeaveGroup => both::<LeaveGroupRequest, LeaveGroupResponse>(),
        ApiKey::OffsetCommit => both::<OffsetCommitRequest, OffsetCommitResponse>(),
        ApiKey::OffsetFetch => both::<OffsetFetchRequest, OffsetFetchResponse>(),
        ApiKey::TxnOffsetCommit => both::<TxnOffsetCommitRequest, TxnOffsetCommitResponse>(),
        ApiKey::DescribeGroups => both::<DescribeGroupsRequest, DescribeGroupsResponse>(),
        ApiKey::ConsumerGroupHeartbeat => {
            both::<ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse>()
        }
        ApiKey::ConsumerGroupDescribe => {
            both::<ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse>()
        }
        ApiKey::ShareGroupHeartbeat => {
            both::<ShareGroupHeartbeatRequest, ShareGroupHeartbeatResponse>()
        }
        ApiKey::ShareFetch => both::<ShareFetchRequest, ShareFetchResponse>(),
        ApiKey::ShareAcknowledge => both::<ShareAcknowledgeRequest, ShareAcknowledgeResponse>(),
        ApiKey::ShareGroupDescribe => {
            both::<ShareGroupDescribeRequest, ShareGroupDescribeResponse>()
        }
        ApiKey::DeleteRecords => both::<DeleteRecordsRequest, DeleteRecordsResponse>(),
        ApiKey::DeleteGroups => both::<DeleteGroupsRequest, DeleteGroupsResponse>(),
        ApiKey::ListGroups => both::<ListGroupsRequest, ListGroupsResponse>(),
        ApiKey::OffsetDelete => both::<OffsetDeleteRequest, OffsetDeleteResponse>(),
        ApiKey::CreateTopics => both::<CreateTopicsRequest, CreateTopicsResponse>(),
        ApiKey::DeleteTopics => both::<DeleteTopicsRequest, DeleteTopicsResponse>(),
        ApiKey::SaslHandshake => {
            both::<SaslHandshakeRequest, SaslHandshakeResponse>().intersect(&VersionRange {
                min: SASL_HANDSHAKE_MIN_VERSION,
                max: i16::MAX,
            })
        }
        ApiKey::SaslAuthenticate => both::<SaslAuthenticateRequest, SaslAuthenticateResponse>(),
        ApiKey::CreatePartitions => both::<CreatePartitionsRequest, CreatePartitionsResponse>(),
        ApiKey::AlterConfigs => both::<AlterConfigsRequest, AlterConfigsResponse>(),
        ApiKey::CreateAcls => both::<CreateAclsRequest, CreateAclsResponse>(),
        ApiKey::DeleteAcls => both::<DeleteAclsRequest, DeleteAclsResponse>(),
        ApiKey::IncrementalAlterConfigs => {
            both::<IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse>()
        }
        other => other.valid_versions(),
    }
}
