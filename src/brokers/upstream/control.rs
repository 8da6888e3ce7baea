//! [`ControlClient`]: Tollgate's own Kafka client for its own requests (start-up probe,
//! periodic Metadata, heads, group views): an ApiVersions handshake first (and a SASL login
//! when configured), then requests at versions both sides support.

use super::{Reply, ReplyMode, UpstreamConn, UpstreamError, UpstreamSettings};
use crate::metrics::Metrics;
use crate::security::login::Credentials;
use crate::wire::protocol;
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// Tollgate's own Metadata requests never create topics: the topics it asks about can come
/// from what clients named (commits, fetches), and a broker with `auto.create.topics.enable`
/// would otherwise create every junk name. (v0-3 have no such field: the broker decides.)
pub(super) fn no_auto_create(request: MetadataRequest, version: i16) -> MetadataRequest {
    if version >= 4 {
        request.with_allow_auto_topic_creation(false)
    } else {
        request
    }
}

/// Tollgate's own Kafka client for its own requests.
pub(crate) struct ControlClient {
    conn: UpstreamConn,
    versions: ApiVersionsResponse,
    next_correlation: AtomicI32,
}

/// The client id Tollgate uses for its own requests.
pub(crate) const CONTROL_CLIENT_ID: &str = "tollgate-control";

impl ControlClient {
    /// Connect and do the ApiVersions handshake (v0: every broker accepts it).
    pub(crate) async fn connect(
        addr: &str,
        settings: &UpstreamSettings,
        metrics: Arc<Metrics>,
    ) -> Result<ControlClient, UpstreamError> {
        let conn = UpstreamConn::connect(addr, settings, metrics).await?;
        let mut client = ControlClient {
            conn,
            versions: ApiVersionsResponse::default(),
            next_correlation: AtomicI32::new(1),
        };
        client.versions = client
            .request::<ApiVersionsRequest, ApiVersionsResponse>(
                ApiKey::ApiVersions,
                0,
                &ApiVersionsRequest::default(),
            )
            .await?;
        if client.versions.error_code != 0 {
            return Err(UpstreamError::Protocol {
                addr: addr.to_string(),
                reason: format!("ApiVersions error code {}", client.versions.error_code),
            });
        }
        if let Some(creds) = &settings.login {
            client.login(creds).await?;
        }
        Ok(client)
    }

    /// Tollgate's own SASL login: SaslHandshake v1, then SaslAuthenticate until done.
    async fn login(&self, creds: &Credentials) -> Result<(), UpstreamError> {
        let fail = |reason: String| UpstreamError::Login {
            addr: self.addr().to_string(),
            reason,
        };
        let handshake: SaslHandshakeResponse = self
            .request(
                ApiKey::SaslHandshake,
                1,
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(creds.mechanism.name())),
            )
            .await?;
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(fail(format!(
                "{} not enabled (error {}; the broker offers {offered:?})",
                creds.mechanism.name(),
                handshake.error_code
            )));
        }
        let (mut state, mut message) = creds.start();
        loop {
            let version = self.version_for(ApiKey::SaslAuthenticate).unwrap_or(0);
            let reply: SaslAuthenticateResponse = self
                .request(
                    ApiKey::SaslAuthenticate,
                    version,
                    &SaslAuthenticateRequest::default().with_auth_bytes(message.into()),
                )
                .await?;
            if reply.error_code != 0 {
                let detail = reply.error_message.as_ref().map_or("", |m| m.as_str());
                return Err(fail(format!("error {}: {detail}", reply.error_code)));
            }
            let (next, send) = state
                .step(&reply.auth_bytes)
                .map_err(|e| fail(e.to_string()))?;
            match send {
                Some(m) => (state, message) = (next, m),
                None => return Ok(()),
            }
        }
    }

    /// Highest version of `key` that both the broker and `kafka-protocol` support.
    pub(crate) fn version_for(&self, key: ApiKey) -> Option<i16> {
        let ours = crate::wire::versions::decodable_versions(key);
        let theirs = self
            .versions
            .api_keys
            .iter()
            .find(|v| v.api_key == key as i16)?;
        let max = ours.max.min(theirs.max_version);
        (max >= ours.min.max(theirs.min_version)).then_some(max)
    }

    /// Fetch cluster Metadata (no topics: brokers only).
    pub(crate) async fn metadata(&self) -> Result<MetadataResponse, UpstreamError> {
        let version =
            self.version_for(ApiKey::Metadata)
                .ok_or_else(|| UpstreamError::Protocol {
                    addr: self.conn.addr().to_string(),
                    reason: "broker supports no Metadata version Tollgate can decode".into(),
                })?;
        let request = if version >= 1 {
            MetadataRequest::default().with_topics(Some(vec![]))
        } else {
            MetadataRequest::default()
        };
        self.request(ApiKey::Metadata, version, &no_auto_create(request, version))
            .await
    }

    /// Fetch Metadata for every topic.
    pub(crate) async fn metadata_all(&self) -> Result<MetadataResponse, UpstreamError> {
        let version = self.need(ApiKey::Metadata)?.max(1);
        let request = MetadataRequest::default().with_topics(None);
        self.request(ApiKey::Metadata, version, &no_auto_create(request, version))
            .await
    }

    /// Fetch Metadata for these topics (brokers, and each partition's leader).
    pub(crate) async fn metadata_for(
        &self,
        topics: &[String],
    ) -> Result<MetadataResponse, UpstreamError> {
        let version = self.need(ApiKey::Metadata)?.max(1);
        let request = MetadataRequest::default().with_topics(Some(
            topics
                .iter()
                .map(|t| {
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(StrBytes::from_string(t.clone()).into()))
                })
                .collect(),
        ));
        self.request(ApiKey::Metadata, version, &no_auto_create(request, version))
            .await
    }

    /// The high watermark and the last stable offset of each partition, from this broker
    /// (which must lead them): two ListOffsets (latest), read_uncommitted and read_committed.
    /// Partitions answered with an error are left out.
    pub(crate) async fn heads(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<(String, i32, i64, i64)>, UpstreamError> {
        let hw = self.latest_offsets(partitions, 0).await?;
        let lso = self.latest_offsets(partitions, 1).await?;
        Ok(hw
            .into_iter()
            .map(|(t, p, h)| {
                let l = lso
                    .iter()
                    .find(|(t2, p2, _)| *t2 == t && *p2 == p)
                    .map_or(-1, |x| x.2);
                (t, p, h, l)
            })
            .collect())
    }

    /// The latest offset of each partition at `isolation_level` (0: high watermark, 1: last
    /// stable offset; ListOffsets v2+, below that always the high watermark).
    async fn latest_offsets(
        &self,
        partitions: &[(String, i32)],
        isolation_level: i8,
    ) -> Result<Vec<(String, i32, i64)>, UpstreamError> {
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
        let version = self.need(ApiKey::ListOffsets)?;
        let mut topics: Vec<ListOffsetsTopic> = Vec::new();
        for (t, p) in partitions {
            let part = ListOffsetsPartition::default()
                .with_partition_index(*p)
                .with_timestamp(-1); // latest
            match topics.iter_mut().find(|x| x.name.as_str() == t) {
                Some(x) => x.partitions.push(part),
                None => topics.push(
                    ListOffsetsTopic::default()
                        .with_name(StrBytes::from_string(t.clone()).into())
                        .with_partitions(vec![part]),
                ),
            }
        }
        let request = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_isolation_level(if version >= 2 { isolation_level } else { 0 })
            .with_topics(topics);
        let resp: ListOffsetsResponse =
            self.request(ApiKey::ListOffsets, version, &request).await?;
        Ok(resp
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.error_code == 0 && p.offset >= 0)
                    .map(move |p| (t.name.to_string(), p.partition_index, p.offset))
            })
            .collect())
    }

    fn need(&self, key: ApiKey) -> Result<i16, UpstreamError> {
        self.version_for(key)
            .ok_or_else(|| UpstreamError::Protocol {
                addr: self.conn.addr().to_string(),
                reason: format!("broker supports no {key:?} version Tollgate can decode"),
            })
    }

    /// The address of the broker this client talks to.
    pub(crate) fn addr(&self) -> &str {
        self.conn.addr()
    }

    /// Send one request and decode its response.
    pub(crate) async fn request<Req, Resp>(
        &self,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Result<Resp, UpstreamError>
    where
        Req: kafka_protocol::protocol::Encodable,
        Resp: kafka_protocol::protocol::Decodable,
    {
        self.request_framed(key, version, body)
            .await
            .map(|(r, _)| r)
    }

    /// Send one request; its response decoded, and the frame it was decoded from (the
    /// response's byte fields, such as records, are slices of that frame).
    pub(crate) async fn request_framed<Req, Resp>(
        &self,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Result<(Resp, Bytes), UpstreamError>
    where
        Req: kafka_protocol::protocol::Encodable,
        Resp: kafka_protocol::protocol::Decodable,
    {
        let addr = self.conn.addr().to_string();
        let correlation_id = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CONTROL_CLIENT_ID)));
        let frame =
            protocol::encode_request(&header, body).map_err(|e| UpstreamError::Protocol {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let Reply::Frame(response) = self
            .conn
            .send(frame, correlation_id, ReplyMode::Whole)
            .await?
        else {
            return Err(UpstreamError::Closed { addr });
        };
        protocol::decode_response::<Resp>(&response, key, version)
            .map(|(_, body)| (body, response))
            .map_err(|e| UpstreamError::Protocol {
                addr,
                reason: format!("cannot decode {key:?} v{version} response: {e}"),
            })
    }
}
