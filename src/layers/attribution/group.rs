//! The group APIs: what a JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit or
//! ConsumerGroupHeartbeat says, applied to the group model only when the broker's answer
//! says it succeeded.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    ConsumerProtocolAssignment, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::buf::ByteBuf;
use kafka_protocol::protocol::Decodable;

use super::{Pending, Sinks};
use crate::consumers::groups::TopicPartition;
use crate::consumers::identity::ConnInfo;
use crate::control::audit::{Member, What};
use crate::layers::request::Request;
use crate::wire::protocol::decode_response_from;

/// The group APIs of one connection, applied to the group view (and commits to lag).
pub(super) struct GroupApis {
    pub(super) sinks: Sinks,
}

impl GroupApis {
    /// A group API request: what its answer will be applied with.
    pub(super) fn on_group_request(
        &self,
        key: ApiKey,
        request: &Request,
    ) -> anyhow::Result<Option<Pending>> {
        let a = &self.sinks;
        Ok(match key {
            ApiKey::JoinGroup => {
                let req = request.body::<JoinGroupRequest>()?;
                Some(Pending::JoinGroup {
                    group: req.group_id.to_string(),
                    protocol_type: req.protocol_type.to_string(),
                    session_timeout: Duration::from_millis(req.session_timeout_ms.max(0) as u64),
                })
            }
            ApiKey::SyncGroup => {
                let req = request.body::<SyncGroupRequest>()?;
                let consumer = req
                    .protocol_type
                    .as_ref()
                    .is_none_or(|t| t.as_str() == "consumer");
                Some(Pending::SyncGroup {
                    group: req.group_id.to_string(),
                    member: req.member_id.to_string(),
                    consumer,
                })
            }
            ApiKey::Heartbeat => {
                let req = request.body::<HeartbeatRequest>()?;
                Some(Pending::Heartbeat {
                    group: req.group_id.to_string(),
                    member: req.member_id.to_string(),
                })
            }
            ApiKey::LeaveGroup => {
                let req = request.body::<LeaveGroupRequest>()?;
                let mut members: Vec<String> = req
                    .members
                    .iter()
                    .map(|m| m.member_id.to_string())
                    .collect();
                if !req.member_id.is_empty() {
                    members.push(req.member_id.to_string());
                }
                Some(Pending::LeaveGroup {
                    group: req.group_id.to_string(),
                    members,
                })
            }
            ApiKey::OffsetCommit => {
                let req = request.body::<OffsetCommitRequest>()?;
                let offsets = req
                    .topics
                    .iter()
                    .flat_map(|t| {
                        let topic = a.topic_ids.topic_of(&t.name, &t.topic_id);
                        t.partitions
                            .iter()
                            .map(move |p| ((topic.clone(), p.partition_index), p.committed_offset))
                    })
                    .collect();
                Some(Pending::OffsetCommit {
                    group: req.group_id.to_string(),
                    member: req.member_id.to_string(),
                    offsets,
                })
            }
            ApiKey::ConsumerGroupHeartbeat => {
                let req = request.body::<ConsumerGroupHeartbeatRequest>()?;
                Some(Pending::ConsumerGroupHeartbeat {
                    group: req.group_id.to_string(),
                    leaving: req.member_epoch < 0,
                    joining: req.member_epoch == 0,
                })
            }
            _ => None,
        })
    }

    /// The answer to a group API (Heartbeat, LeaveGroup, OffsetCommit, JoinGroup, SyncGroup,
    /// ConsumerGroupHeartbeat): applied to the group model when it says it succeeded.
    pub(super) fn on_group_response<B: ByteBuf>(
        &self,
        key: ApiKey,
        version: i16,
        pending: Pending,
        buf: B,
        conn: &ConnInfo,
    ) -> anyhow::Result<()> {
        let a = &self.sinks;
        match pending {
            Pending::Heartbeat { group, member } => {
                let (_, resp) = decode_response_from::<HeartbeatResponse, B>(buf, key, version)?;
                if resp.error_code == 0 {
                    a.groups.alive(&group, &member);
                }
            }
            Pending::LeaveGroup { group, members } => {
                let (_, resp) = decode_response_from::<LeaveGroupResponse, B>(buf, key, version)?;
                if resp.error_code == 0 {
                    // v3+ answers per member; a member the coordinator refused stays.
                    let refused: Vec<&str> = resp
                        .members
                        .iter()
                        .filter(|m| m.error_code != 0)
                        .map(|m| m.member_id.as_str())
                        .collect();
                    let gone: Vec<String> = members
                        .into_iter()
                        .filter(|m| !refused.contains(&m.as_str()))
                        .collect();
                    for m in &gone {
                        self.audit_member(false, &group, m, conn);
                    }
                    a.groups.left(&group, &gone);
                }
            }
            Pending::OffsetCommit {
                group,
                member,
                offsets,
            } => {
                let (_, resp) = decode_response_from::<OffsetCommitResponse, B>(buf, key, version)?;
                self.on_commit_response(&resp, &group, &member, offsets, conn);
            }
            Pending::JoinGroup {
                group,
                protocol_type,
                session_timeout,
            } => {
                let (_, resp) = decode_response_from::<JoinGroupResponse, B>(buf, key, version)?;
                if resp.error_code == 0 {
                    a.groups.joined(
                        &group,
                        &resp.member_id,
                        resp.generation_id,
                        &protocol_type,
                        session_timeout,
                        conn.instance(),
                        conn.id,
                    );
                    self.audit_member(true, &group, &resp.member_id, conn);
                }
            }
            Pending::SyncGroup {
                group,
                member,
                consumer,
            } => {
                let (_, resp) = decode_response_from::<SyncGroupResponse, B>(buf, key, version)?;
                let consumer = consumer
                    && resp
                        .protocol_type
                        .as_ref()
                        .is_none_or(|t| t.as_str() == "consumer");
                if resp.error_code == 0 && consumer {
                    let assignment = decode_assignment(resp.assignment.clone())?;
                    a.groups.assigned(&group, &member, assignment);
                    conn.note_group(&group);
                }
            }
            Pending::ConsumerGroupHeartbeat {
                group,
                leaving,
                joining,
            } => {
                let (_, resp) =
                    decode_response_from::<ConsumerGroupHeartbeatResponse, B>(buf, key, version)?;
                if resp.error_code == 0 {
                    let assignment = resp.assignment.as_ref().map(|asg| {
                        asg.topic_partitions
                            .iter()
                            .flat_map(|tp| {
                                let topic = a.topic_ids.name(&tp.topic_id);
                                tp.partitions.iter().map(move |p| (topic.clone(), *p))
                            })
                            .collect::<BTreeSet<_>>()
                    });
                    let member = resp
                        .member_id
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    a.groups.heartbeat_848(
                        &group,
                        &member,
                        resp.member_epoch,
                        assignment,
                        conn.instance(),
                        conn.id,
                        leaving,
                    );
                    if joining || leaving {
                        self.audit_member(joining, &group, &member, conn);
                    }
                    conn.note_group(&group);
                }
            }
            Pending::Produce(_) | Pending::Fetch { .. } | Pending::Metadata => {}
        }
        Ok(())
    }

    /// A member joined or left `group`, for the audit trail.
    fn audit_member(&self, joined: bool, group: &str, member: &str, conn: &ConnInfo) {
        let Some(ledger) = &self.sinks.ledger else {
            return;
        };
        let member = Member {
            group: group.to_string(),
            member_id: member.to_string(),
            client_id: conn.client_id().unwrap_or_default().to_string(),
            principal: conn.principal().to_string(),
            peer: conn.peer.to_string(),
        };
        ledger.audit().emit(match joined {
            true => What::GroupJoined(member),
            false => What::GroupLeft {
                member,
                how: "leave".into(),
            },
        });
    }

    /// Commits the coordinator accepted: lag, and the committing client's offset-user tie.
    pub(super) fn on_commit_response(
        &self,
        resp: &OffsetCommitResponse,
        group: &str,
        member: &str,
        offsets: Vec<(TopicPartition, i64)>,
        conn: &ConnInfo,
    ) {
        let a = &self.sinks;
        let mut failed: std::collections::HashSet<TopicPartition> = Default::default();
        for t in &resp.topics {
            let topic = a.topic_ids.topic_of(&t.name, &t.topic_id);
            for p in t.partitions.iter().filter(|p| p.error_code != 0) {
                failed.insert((topic.clone(), p.partition_index));
            }
        }
        let accepted: Vec<(TopicPartition, i64)> = offsets
            .into_iter()
            .filter(|(tp, _)| !failed.contains(tp))
            .collect();
        if accepted.is_empty() {
            return;
        }
        if !member.is_empty() {
            a.groups.alive(group, member);
        }
        for (tp, o) in &accepted {
            a.lag.observe_commit(group, tp.clone(), *o);
        }
        a.groups
            .committed(group, conn.instance(), conn.id, accepted);
    }
}

/// Decode a consumer-protocol assignment: an int16 version, then the assignment.
pub(super) fn decode_assignment(mut b: Bytes) -> anyhow::Result<BTreeSet<TopicPartition>> {
    if b.len() < 2 {
        return Ok(BTreeSet::new()); // an empty assignment (e.g. more members than partitions)
    }
    let version = bytes::Buf::get_i16(&mut b);
    let a = ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3))?;
    Ok(a.assigned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.to_string(), *p)))
        .collect())
}
