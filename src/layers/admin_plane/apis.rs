//! Each admin API as a [`Plane`]: its entries, the rules that apply to each, and how its
//! refusals are answered and merged with the broker's answer.

use kafka_protocol::messages::{
    alter_configs_response, create_acls_response, create_partitions_response,
    create_topics_response, delete_acls_response, delete_groups_response, delete_records_response,
    delete_topics_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, ApiKey, CreateAclsRequest, CreateAclsResponse, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteAclsRequest,
    DeleteAclsResponse, DeleteGroupsRequest, DeleteGroupsResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{message, Ctx, Plane, Refused};
use crate::control::admin_rules::{AdminPolicy, Right};

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const POLICY_VIOLATION: i16 = 44;
const OPERATION_NOT_ATTEMPTED: i16 = 55;
/// Config resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;

fn limit(code: i16, message: String) -> Option<Refused> {
    Some(Refused {
        code,
        reason: "topic_limit",
        message: format!("Tollgate: {message}"),
    })
}

/// `retention.ms` over `max_retention_ms` (unlimited, -1, is over any limit).
fn retention(policy: &AdminPolicy, name: &str, value: Option<&str>) -> Option<Refused> {
    let max = policy.max_retention_ms?;
    if name != "retention.ms" {
        return None;
    }
    let ms: i64 = value?.trim().parse().ok()?;
    if (0..=max).contains(&ms) {
        return None;
    }
    limit(
        POLICY_VIOLATION,
        format!("retention.ms {ms} is over the cluster's limit of {max}"),
    )
}

fn keep_by<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    items.retain(|_| {
        i += 1;
        keep.get(i - 1).copied().unwrap_or(true)
    });
}

/// The first error of several (0 when there is none).
fn first_error(codes: impl Iterator<Item = i16>) -> i16 {
    codes.filter(|c| *c != 0).take(1).sum()
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub(crate) struct CreateTopics;

impl CreateTopics {
    /// The naming rule and the limits for one new topic.
    fn rules(
        t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
        p: &AdminPolicy,
    ) -> Option<Refused> {
        let name = t.name.as_str();
        if let Some(re) = &p.topic_name {
            if !re.0.is_match(name) {
                return Some(Refused {
                    code: INVALID_TOPIC_EXCEPTION,
                    reason: "topic_name",
                    message: format!(
                        "Tollgate: topic name {name:?} must match {:?}",
                        re.0.as_str()
                    ),
                });
            }
        }
        let partitions = match t.assignments.len() {
            0 => t.num_partitions,
            n => i32::try_from(n).unwrap_or(i32::MAX),
        };
        if let Some(max) = p.max_partitions.filter(|m| partitions > *m) {
            return limit(
                INVALID_PARTITIONS,
                format!("{partitions} partitions is over the limit of {max}"),
            );
        }
        let rf = match t.assignments.first() {
            Some(a) => i16::try_from(a.broker_ids.len()).unwrap_or(i16::MAX),
            None => t.replication_factor,
        };
        let low = p.min_replication_factor.is_some_and(|m| rf != -1 && rf < m);
        let high = p.max_replication_factor.is_some_and(|m| rf > m);
        if low || high {
            return limit(
                INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor {rf} is outside {:?}..={:?}",
                    p.min_replication_factor, p.max_replication_factor
                ),
            );
        }
        t.configs
            .iter()
            .find_map(|c| retention(p, &c.name, c.value.as_deref()))
    }
}

impl Plane for CreateTopics {
    type Req = CreateTopicsRequest;
    type Resp = CreateTopicsResponse;
    const KEY: ApiKey = ApiKey::CreateTopics;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        req.topics
            .iter()
            .map(|t| {
                let name = t.name.to_string();
                let r = ctx
                    .right(Right::CreateTopics, &name, TOPIC_AUTHORIZATION_FAILED)
                    .or_else(|| Self::rules(t, &ctx.registry.admin_policy));
                (name, r)
            })
            .collect()
    }

    fn retain(req: &mut Self::Req, keep: &[bool]) {
        keep_by(&mut req.topics, keep);
    }

    fn answer(req: &Self::Req, refused: &[Option<Refused>], version: i16) -> Self::Resp {
        let topics = req.topics.iter().zip(refused).filter_map(|(t, r)| {
            let r = r.as_ref()?;
            Some(
                create_topics_response::CreatableTopicResult::default()
                    .with_name(t.name.clone())
                    .with_error_code(r.code)
                    .with_error_message(message(r, version >= 1))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            )
        });
        CreateTopicsResponse::default().with_topics(topics.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.topics
            .iter()
            .map(|t| (t.name.to_string(), t.error_code))
            .collect()
    }

    fn merge(resp: &mut Self::Resp, refused: Self::Resp) {
        resp.topics.extend(refused.topics);
    }
}

pub(crate) struct DeleteTopics;

impl DeleteTopics {
    /// Every entry's topic name: by name (v0–v5) then by name or id (v6+).
    fn names(req: &DeleteTopicsRequest, ctx: &Ctx) -> Vec<String> {
        let by_name = req.topic_names.iter().map(|n| n.to_string());
        let by_state = req.topics.iter().map(|t| match &t.name {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => ctx.topic_ids.name(&t.topic_id),
        });
        by_name.chain(by_state).collect()
    }
}

impl Plane for DeleteTopics {
    type Req = DeleteTopicsRequest;
    type Resp = DeleteTopicsResponse;
    const KEY: ApiKey = ApiKey::DeleteTopics;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        Self::names(req, ctx)
            .into_iter()
            .map(|n| {
                let r = ctx.right(Right::DeleteTopics, &n, TOPIC_AUTHORIZATION_FAILED);
                (n, r)
            })
            .collect()
    }

    fn retain(req: &mut Self::Req, keep: &[bool]) {
        let split = req.topic_names.len().min(keep.len());
        keep_by(&mut req.topic_names, &keep[..split]);
        keep_by(&mut req.topics, &keep[split..]);
    }

    fn answer(req: &Self::Req, refused: &[Option<Refused>], version: i16) -> Self::Resp {
        let entries = req
            .topic_names
            .iter()
            .map(|n| (Some(n.clone()), uuid::Uuid::nil()))
            .chain(req.topics.iter().map(|t| (t.name.clone(), t.topic_id)));
        let responses = entries.zip(refused).filter_map(|((name, id), r)| {
            let r = r.as_ref()?;
            let id = if version >= 6 { id } else { uuid::Uuid::nil() };
            Some(
                delete_topics_response::DeletableTopicResult::default()
                    .with_name(name.or_else(|| (version < 6).then(|| topic_name(""))))
                    .with_topic_id(id)
                    .with_error_code(r.code)
                    .with_error_message(message(r, version >= 5)),
            )
        });
        DeleteTopicsResponse::default().with_responses(responses.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.responses
            .iter()
            .map(|t| {
                (
                    t.name
                        .as_ref()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| t.topic_id.to_string()),
                    t.error_code,
                )
            })
            .collect()
    }

    fn merge(resp: &mut Self::Resp, refused: Self::Resp) {
        resp.responses.extend(refused.responses);
    }
}

pub(crate) struct CreatePartitions;

impl Plane for CreatePartitions {
    type Req = CreatePartitionsRequest;
    type Resp = CreatePartitionsResponse;
    const KEY: ApiKey = ApiKey::CreatePartitions;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        let max = ctx.registry.admin_policy.max_partitions;
        req.topics
            .iter()
            .map(|t| {
                let name = t.name.to_string();
                let r = ctx
                    .right(Right::CreatePartitions, &name, TOPIC_AUTHORIZATION_FAILED)
                    .or_else(|| {
                        let max = max.filter(|m| t.count > *m)?;
                        limit(
                            INVALID_PARTITIONS,
                            format!("{} partitions is over the limit of {max}", t.count),
                        )
                    });
                (name, r)
            })
            .collect()
    }

    fn retain(req: &mut Self::Req, keep: &[bool]) {
        keep_by(&mut req.topics, keep);
    }

    fn answer(req: &Self::Req, refused: &[Option<Refused>], _version: i16) -> Self::Resp {
        let results = req.topics.iter().zip(refused).filter_map(|(t, r)| {
            let r = r.as_ref()?;
            Some(
                create_partitions_response::CreatePartitionsTopicResult::default()
                    .with_name(t.name.clone())
                    .with_error_code(r.code)
                    .with_error_message(message(r, true)),
            )
        });
        CreatePartitionsResponse::default().with_results(results.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.results
            .iter()
            .map(|t| (t.name.to_string(), t.error_code))
            .collect()
    }

    fn merge(resp: &mut Self::Resp, refused: Self::Resp) {
        resp.results.extend(refused.results);
    }
}

/// A config resource: topic configs need the topic right, others (brokers, the cluster) a
/// right without a topic scope; `retention.ms` on a topic is held to the limit.
fn config_verdict<'a>(
    ctx: &Ctx,
    kind: i8,
    name: &str,
    mut configs: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Option<Refused> {
    if kind != TOPIC_RESOURCE {
        return ctx.right(Right::AlterConfigs, "", CLUSTER_AUTHORIZATION_FAILED);
    }
    ctx.right(Right::AlterConfigs, name, TOPIC_AUTHORIZATION_FAILED)
        .or_else(|| configs.find_map(|(k, v)| retention(&ctx.registry.admin_policy, k, v)))
}

pub(crate) struct AlterConfigs;

impl Plane for AlterConfigs {
    type Req = AlterConfigsRequest;
    type Resp = AlterConfigsResponse;
    const KEY: ApiKey = ApiKey::AlterConfigs;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        req.resources
            .iter()
            .map(|r| {
                let configs = r
                    .configs
                    .iter()
                    .map(|c| (c.name.as_str(), c.value.as_deref()));
                let v = config_verdict(ctx, r.resource_type, &r.resource_name, configs);
                (r.resource_name.to_string(), v)
            })
            .collect()
    }

    fn retain(req: &mut Self::Req, keep: &[bool]) {
        keep_by(&mut req.resources, keep);
    }

    fn answer(req: &Self::Req, refused: &[Option<Refused>], _version: i16) -> Self::Resp {
        let responses = req.resources.iter().zip(refused).filter_map(|(x, r)| {
            let r = r.as_ref()?;
            Some(
                alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(x.resource_type)
                    .with_resource_name(x.resource_name.clone())
                    .with_error_code(r.code)
                    .with_error_message(message(r, true)),
            )
        });
        AlterConfigsResponse::default().with_responses(responses.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.responses
            .iter()
            .map(|r| (r.resource_name.to_string(), r.error_code))
            .collect()
    }

    fn merge(resp: &mut Self::Resp, refused: Self::Resp) {
        resp.responses.extend(refused.responses);
    }
}

pub(crate) struct IncrementalAlterConfigs;

impl Plane for IncrementalAlterConfigs {
    type Req = IncrementalAlterConfigsRequest;
    type Resp = IncrementalAlterConfigsResponse;
    const KEY: ApiKey = ApiKey::IncrementalAlterConfigs;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        req.resources
            .iter()
            .map(|r| {
                // SET (0) and APPEND (2) give a value; DELETE and SUBTRACT do not raise it.
                let configs = r
                    .configs
                    .iter()
                    .filter(|c| matches!(c.config_operation, 0 | 2))
                    .map(|c| (c.name.as_str(), c.value.as_deref()));
                let v = config_verdict(ctx, r.resource_type, &r.resource_name, configs);
                (r.resource_name.to_string(), v)
            })
            .collect()
    }

    fn retain(req: &mut Self::Req, keep: &[bool]) {
        keep_by(&mut req.resources, keep);
    }

    fn answer(req: &Self::Req, refused: &[Option<Refused>], _version: i16) -> Self::Resp {
        let responses = req.resources.iter().zip(refused).filter_map(|(x, r)| {
            let r = r.as_ref()?;
            Some(
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(x.resource_type)
                    .with_resource_name(x.resource_name.clone())
                    .with_error_code(r.code)
                    .with_error_message(message(r, true)),
            )
        });
        IncrementalAlterConfigsResponse::default().with_responses(responses.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.responses
            .iter()
            .map(|r| (r.resource_name.to_string(), r.error_code))
            .collect()
    }

    fn merge(resp: &mut Self::Resp, refused: Self::Resp) {
        resp.responses.extend(refused.responses);
    }
}

pub(crate) struct DeleteRecords;

impl Plane for DeleteRecords {
    type Req = DeleteRecordsRequest;
    type Resp = DeleteRecordsResponse;
    const KEY: ApiKey = ApiKey::DeleteRecords;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        req.topics
            .iter()
            .map(|t| {
                let name = t.name.to_string();
                let r = ctx.right(Right::DeleteRecords, &name, TOPIC_AUTHORIZATION_FAILED);
                (name, r)
            })
            .collect()
    }

    fn retain(req: &mut Self::Req, keep: &[bool]) {
        keep_by(&mut req.topics, keep);
    }

    fn answer(req: &Self::Req, refused: &[Option<Refused>], _version: i16) -> Self::Resp {
        let topics = req.topics.iter().zip(refused).filter_map(|(t, r)| {
            let code = r.as_ref()?.code;
            let parts = t.partitions.iter().map(|p| {
                delete_records_response::DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1)
                    .with_error_code(code)
            });
            Some(
                delete_records_response::DeleteRecordsTopicResult::default()
                    .with_name(t.name.clone())
                    .with_partitions(parts.collect()),
            )
        });
        DeleteRecordsResponse::default().with_topics(topics.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.topics
            .iter()
            .map(|t| {
                (
                    t.name.to_string(),
                    first_error(t.partitions.iter().map(|p| p.error_code)),
                )
            })
            .collect()
    }

    fn merge(resp: &mut Self::Resp, refused: Self::Resp) {
        resp.topics.extend(refused.topics);
    }
}

pub(crate) struct DeleteGroups;

impl Plane for DeleteGroups {
    type Req = DeleteGroupsRequest;
    type Resp = DeleteGroupsResponse;
    const KEY: ApiKey = ApiKey::DeleteGroups;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        req.groups_names
            .iter()
            .map(|g| {
                let name = g.to_string();
                let r = ctx.right(Right::DeleteGroups, &name, GROUP_AUTHORIZATION_FAILED);
                (name, r)
            })
            .collect()
    }

    fn retain(req: &mut Self::Req, keep: &[bool]) {
        keep_by(&mut req.groups_names, keep);
    }

    fn answer(req: &Self::Req, refused: &[Option<Refused>], _version: i16) -> Self::Resp {
        let results = req.groups_names.iter().zip(refused).filter_map(|(g, r)| {
            Some(
                delete_groups_response::DeletableGroupResult::default()
                    .with_group_id(g.clone())
                    .with_error_code(r.as_ref()?.code),
            )
        });
        DeleteGroupsResponse::default().with_results(results.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.results
            .iter()
            .map(|g| (g.group_id.to_string(), g.error_code))
            .collect()
    }

    fn merge(resp: &mut Self::Resp, refused: Self::Resp) {
        resp.results.extend(refused.results);
    }
}

pub(crate) struct OffsetDelete;

impl Plane for OffsetDelete {
    type Req = OffsetDeleteRequest;
    type Resp = OffsetDeleteResponse;
    const KEY: ApiKey = ApiKey::OffsetDelete;
    const WHOLE: bool = true;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        let group = req.group_id.to_string();
        let r = ctx.right(Right::DeleteOffsets, &group, GROUP_AUTHORIZATION_FAILED);
        vec![(group, r)]
    }

    fn retain(_req: &mut Self::Req, _keep: &[bool]) {}

    fn answer(_req: &Self::Req, refused: &[Option<Refused>], _version: i16) -> Self::Resp {
        let code = refused.iter().flatten().next().map_or(0, |r| r.code);
        OffsetDeleteResponse::default().with_error_code(code)
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        let parts = resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code));
        vec![(
            String::new(),
            first_error(std::iter::once(resp.error_code).chain(parts)),
        )]
    }

    fn merge(_resp: &mut Self::Resp, _refused: Self::Resp) {}
}

pub(crate) struct CreateAcls;

/// ACL changes: one right, no scope; refused entries get the error, the rest are not
/// attempted (CreateAcls and DeleteAcls answer by position).
fn acl_verdicts(n: usize, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
    let r = ctx.right(Right::Acls, "", CLUSTER_AUTHORIZATION_FAILED);
    (0..n).map(|i| (format!("acl[{i}]"), r.clone())).collect()
}

fn acl_code(r: &Option<Refused>) -> (i16, Option<StrBytes>) {
    match r {
        Some(r) => (r.code, message(r, true)),
        None => (OPERATION_NOT_ATTEMPTED, None),
    }
}

impl Plane for CreateAcls {
    type Req = CreateAclsRequest;
    type Resp = CreateAclsResponse;
    const KEY: ApiKey = ApiKey::CreateAcls;
    const WHOLE: bool = true;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        acl_verdicts(req.creations.len(), ctx)
    }

    fn retain(_req: &mut Self::Req, _keep: &[bool]) {}

    fn answer(_req: &Self::Req, refused: &[Option<Refused>], _version: i16) -> Self::Resp {
        let results = refused.iter().map(|r| {
            let (code, msg) = acl_code(r);
            create_acls_response::AclCreationResult::default()
                .with_error_code(code)
                .with_error_message(msg)
        });
        CreateAclsResponse::default().with_results(results.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.results
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("acl#{i}"), r.error_code))
            .collect()
    }

    fn merge(_resp: &mut Self::Resp, _refused: Self::Resp) {}
}

pub(crate) struct DeleteAcls;

impl Plane for DeleteAcls {
    type Req = DeleteAclsRequest;
    type Resp = DeleteAclsResponse;
    const KEY: ApiKey = ApiKey::DeleteAcls;
    const WHOLE: bool = true;

    fn check(req: &Self::Req, ctx: &Ctx) -> Vec<(String, Option<Refused>)> {
        acl_verdicts(req.filters.len(), ctx)
    }

    fn retain(_req: &mut Self::Req, _keep: &[bool]) {}

    fn answer(_req: &Self::Req, refused: &[Option<Refused>], _version: i16) -> Self::Resp {
        let results = refused.iter().map(|r| {
            let (code, msg) = acl_code(r);
            delete_acls_response::DeleteAclsFilterResult::default()
                .with_error_code(code)
                .with_error_message(msg)
        });
        DeleteAclsResponse::default().with_filter_results(results.collect())
    }

    fn results(resp: &Self::Resp) -> Vec<(String, i16)> {
        resp.filter_results
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("filter#{i}"), r.error_code))
            .collect()
    }

    fn merge(_resp: &mut Self::Resp, _refused: Self::Resp) {}
}
