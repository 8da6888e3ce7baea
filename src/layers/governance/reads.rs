//! Decisions on reads: Fetch (whole and incremental sessions), ListOffsets, and the share
//! group APIs.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, ResponseHeader,
    ShareAcknowledgeRequest, ShareAcknowledgeResponse, ShareFetchRequest, ShareFetchResponse,
    ShareGroupHeartbeatRequest, ShareGroupHeartbeatResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use uuid::Uuid;

use super::answers::{
    append_fetch_errors, append_list_offsets_errors, fetch_partitions, listed_refused,
};
use super::record::Decision;
use super::{
    Action, Policy, Reason, Refused, Stripped, FETCH_SESSION_ID_NOT_FOUND,
    GROUP_AUTHORIZATION_FAILED, TOPIC_AUTHORIZATION_FAILED,
};
use crate::consumers::groups::{Tie, TopicPartition};
use crate::control::registry::{GroupVerdict, Mode, Registry};
use crate::layers::request::Request;
use crate::wire::protocol;

impl Policy {
    /// Share groups are refused in enforce mode (see the module docs).
    pub(super) fn decide_share(
        &self,
        key: ApiKey,
        req: &Request,
        reg: &Registry,
        header: &ResponseHeader,
    ) -> anyhow::Result<Action> {
        let version = req.meta.api_version;
        let mut body = req.body_bytes()?;
        let group = match key {
            ApiKey::ShareGroupHeartbeat => {
                Some(ShareGroupHeartbeatRequest::decode(&mut body, version)?.group_id)
            }
            ApiKey::ShareFetch => ShareFetchRequest::decode(&mut body, version)?.group_id,
            _ => ShareAcknowledgeRequest::decode(&mut body, version)?.group_id,
        };
        let group = group.map(|g| g.to_string()).unwrap_or_default();
        let mode = match reg.group_verdict(&group, &req.conn.principal()) {
            GroupVerdict::Registered(e) => e.mode.unwrap_or(reg.mode),
            _ => reg.mode,
        };
        let d = Decision {
            api: key,
            reason: Reason::ShareGroup,
            mode,
            group: &group,
            topic: None,
            entry: None,
        };
        self.recorder.refused(&req.conn, &d, reg);
        if mode != Mode::Enforce {
            return Ok(Action::Pass);
        }
        let msg = Some(StrBytes::from_static_str(
            "share groups are not supported through Tollgate yet; use a consumer group",
        ));
        const E: i16 = GROUP_AUTHORIZATION_FAILED;
        Ok(Action::Answer(match key {
            ApiKey::ShareGroupHeartbeat => protocol::encode_response(
                header,
                &ShareGroupHeartbeatResponse::default()
                    .with_error_code(E)
                    .with_error_message(msg),
                key,
                version,
            )?,
            ApiKey::ShareFetch => protocol::encode_response(
                header,
                &ShareFetchResponse::default()
                    .with_error_code(E)
                    .with_error_message(msg),
                key,
                version,
            )?,
            _ => protocol::encode_response(
                header,
                &ShareAcknowledgeResponse::default()
                    .with_error_code(E)
                    .with_error_message(msg),
                key,
                version,
            )?,
        }))
    }

    /// An incremental fetch (KIP-227) on a session that was not checked whole under the
    /// registry in force: `Some(answer)` that makes the client start a new session.
    fn stale_session(
        &self,
        fetch: &FetchRequest,
        reg: &Arc<Registry>,
        header: &ResponseHeader,
        version: i16,
    ) -> anyhow::Result<Option<Bytes>> {
        let mut checked = self.session.lock().expect("lock");
        if fetch.session_epoch <= 0 {
            // A full fetch names every partition; it is checked whole below.
            *checked = Arc::downgrade(reg);
            return Ok(None);
        }
        if std::sync::Weak::ptr_eq(&checked, &Arc::downgrade(reg)) {
            return Ok(None);
        }
        self.recorder.metrics.fetch_sessions_reset.inc();
        let resp = FetchResponse::default()
            .with_error_code(FETCH_SESSION_ID_NOT_FOUND)
            .with_session_id(0);
        Ok(Some(protocol::encode_response(
            header,
            &resp,
            ApiKey::Fetch,
            version,
        )?))
    }

    pub(super) fn decide_fetch(
        &self,
        req: &Request,
        reg: &Arc<Registry>,
        header: &ResponseHeader,
    ) -> anyhow::Result<Action> {
        let version = req.meta.api_version;
        let fetch = req.body::<FetchRequest>()?;
        let replica = fetch.replica_id.0.max(fetch.replica_state.replica_id.0);
        if replica >= 0 {
            let refused = fetch_partitions(&fetch);
            return Ok(Action::Answer(self.replica_answer(req, replica, &refused)?));
        }
        if let Some(answer) = self.stale_session(&fetch, reg, header, version)? {
            return Ok(Action::Answer(answer));
        }
        let a = &self.topic_ids;
        let partitions: HashMap<TopicPartition, i64> = fetch
            .topics
            .iter()
            .flat_map(|t| {
                let topic = a.topic_of(&t.topic, &t.topic_id);
                t.partitions
                    .iter()
                    .map(move |p| ((topic.clone(), p.partition), p.fetch_offset))
            })
            .collect();
        if partitions.is_empty() {
            return Ok(Action::Pass);
        }
        let refused_set = self.refused_reads(
            ApiKey::Fetch,
            &req.conn,
            reg,
            req.consumer.as_deref().map_or(&Tie::None, |c| &c.tie),
            &partitions,
        );
        if refused_set.is_empty() {
            return Ok(Action::Pass);
        }
        let mut refused = Refused::default();
        let mut fetch = FetchRequest::clone(&fetch);
        for t in &mut fetch.topics {
            let topic = a.topic_of(&t.topic, &t.topic_id);
            t.partitions.retain(|p| {
                let out = refused_set.contains(&(topic.clone(), p.partition));
                if out {
                    refused
                        .partitions
                        .push((t.topic.0.clone(), t.topic_id, p.partition));
                }
                !out
            });
        }
        fetch.topics.retain(|t| !t.partitions.is_empty());
        if fetch.topics.is_empty() {
            // Nothing left for the broker. No session is opened or kept for this answer.
            let resp = FetchResponse::default()
                .with_session_id(0)
                .with_responses(Vec::new());
            let mut resp = resp;
            append_fetch_errors(&mut resp, &refused, TOPIC_AUTHORIZATION_FAILED);
            return Ok(Action::Answer(protocol::encode_response(
                header,
                &resp,
                ApiKey::Fetch,
                version,
            )?));
        }
        Ok(Action::Strip {
            body: Stripped::Fetch(fetch),
            refused,
        })
    }

    pub(super) fn decide_list_offsets(
        &self,
        req: &Request,
        reg: &Registry,
        header: &ResponseHeader,
    ) -> anyhow::Result<Action> {
        let version = req.meta.api_version;
        let lo = req.body::<ListOffsetsRequest>()?;
        if lo.replica_id.0 >= 0 {
            let refused = listed_refused(&lo);
            return Ok(Action::Answer(self.replica_answer(
                req,
                lo.replica_id.0,
                &refused,
            )?));
        }
        let partitions = crate::layers::listed_partitions(&lo);
        if partitions.is_empty() {
            return Ok(Action::Pass);
        }
        let refused_set = self.refused_reads(
            ApiKey::ListOffsets,
            &req.conn,
            reg,
            req.consumer.as_deref().map_or(&Tie::None, |c| &c.tie),
            &partitions,
        );
        if refused_set.is_empty() {
            return Ok(Action::Pass);
        }
        // Copied only to be stripped (the decoded body stays shared and unchanged).
        let mut lo = ListOffsetsRequest::clone(&lo);
        let mut refused = Refused::default();
        for t in &mut lo.topics {
            let topic = t.name.to_string();
            t.partitions.retain(|p| {
                let out = refused_set.contains(&(topic.clone(), p.partition_index));
                if out {
                    refused
                        .partitions
                        .push((t.name.0.clone(), Uuid::nil(), p.partition_index));
                }
                !out
            });
        }
        lo.topics.retain(|t| !t.partitions.is_empty());
        if lo.topics.is_empty() {
            let mut resp = ListOffsetsResponse::default();
            append_list_offsets_errors(&mut resp, &refused, TOPIC_AUTHORIZATION_FAILED);
            return Ok(Action::Answer(protocol::encode_response(
                header,
                &resp,
                ApiKey::ListOffsets,
                version,
            )?));
        }
        Ok(Action::Strip {
            body: Stripped::ListOffsets(lo),
            refused,
        })
    }
}
