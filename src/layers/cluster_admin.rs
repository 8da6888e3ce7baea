//! Cluster administration through Tollgate: ACLs (CreateAcls, DeleteAcls), SCRAM
//! credentials (AlterUserScramCredentials), partition reassignments
//! (AlterPartitionReassignments), leader elections (ElectLeaders), client quotas
//! (AlterClientQuotas), replica log directories (AlterReplicaLogDirs), cluster features
//! (UpdateFeatures), delegation tokens (Create-, Renew-, ExpireDelegationToken: a token
//! created on Tollgate's connection would authenticate as Tollgate), broker registrations
//! (UnregisterBroker), and the brokers' batched AddPartitionsToTxn (v4+, which names other
//! producers' transactions).
//!
//! The broker authorizes a request by the principal of the connection it arrives on. A
//! client that authenticated with SASL through Tollgate is that principal on its own broker
//! connection, so the broker decides for it as it would directly. Any other client's broker
//! connection is Tollgate's: plaintext, or TLS with Tollgate's certificate
//! (`upstream.tls`), which may well be a super user. Such a client would change the
//! cluster's security or layout with Tollgate's rights. So, unless
//! `proxy.allow_cluster_admin`, these requests from a connection without a broker-accepted
//! SASL exchange are answered by Tollgate with CLUSTER_AUTHORIZATION_FAILED (31) for every
//! entry, never forwarded, and counted in
//! `tollgate_rejected_requests_total{reason="cluster_admin"}`. Run such tools against the
//! brokers directly, or with SASL.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    alter_client_quotas_response, AddPartitionsToTxnResponse, AlterClientQuotasRequest,
    AlterClientQuotasResponse, AlterReplicaLogDirsResponse, CreateDelegationTokenResponse,
    ExpireDelegationTokenResponse, RenewDelegationTokenResponse, UnregisterBrokerResponse,
    UpdateFeaturesResponse,
};
use kafka_protocol::messages::{
    alter_user_scram_credentials_response, create_acls_response, delete_acls_response,
    elect_leaders_response, AlterPartitionReassignmentsResponse, AlterUserScramCredentialsRequest,
    AlterUserScramCredentialsResponse, ApiKey, CreateAclsRequest, CreateAclsResponse,
    DeleteAclsRequest, DeleteAclsResponse, ElectLeadersRequest, ElectLeadersResponse,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tower::{Layer, Service};
use tracing::warn;

use crate::error::BoxError;
use crate::layers::governance::{log_key, LogLimiter, CLUSTER_AUTHORIZATION_FAILED};
use crate::layers::request::{Request, Response};
use crate::metrics::Metrics;
use crate::wire::protocol::{self, api_name};

/// The APIs this layer refuses (their versions are capped in ApiVersions).
pub(crate) const CLUSTER_ADMIN_APIS: &[ApiKey] = &[
    ApiKey::CreateAcls,
    ApiKey::DeleteAcls,
    ApiKey::AlterUserScramCredentials,
    ApiKey::AlterPartitionReassignments,
    ApiKey::ElectLeaders,
    ApiKey::AlterClientQuotas,
    ApiKey::AlterReplicaLogDirs,
    ApiKey::UpdateFeatures,
    ApiKey::CreateDelegationToken,
    ApiKey::RenewDelegationToken,
    ApiKey::ExpireDelegationToken,
    ApiKey::UnregisterBroker,
];

/// Is this request cluster administration? One of [`CLUSTER_ADMIN_APIS`], or the brokers'
/// form of AddPartitionsToTxn (v4+; clients use v0–v3).
fn is_cluster_admin(key: ApiKey, version: i16) -> bool {
    CLUSTER_ADMIN_APIS.contains(&key) || (key == ApiKey::AddPartitionsToTxn && version >= 4)
}

const E: i16 = CLUSTER_AUTHORIZATION_FAILED;

fn message() -> Option<StrBytes> {
    Some(StrBytes::from_static_str(
        "Tollgate: cluster administration needs the broker to see your own principal \
         (authenticate with SASL, or go to the brokers directly)",
    ))
}

/// Built once; shared by every connection.
#[derive(Clone)]
pub(crate) struct ClusterAdminLayer {
    allow: bool,
    metrics: Arc<Metrics>,
    logs: Arc<LogLimiter>,
}

impl ClusterAdminLayer {
    /// `allow`: `proxy.allow_cluster_admin` (pass everything).
    pub(crate) fn new(allow: bool, metrics: Arc<Metrics>) -> ClusterAdminLayer {
        ClusterAdminLayer {
            allow,
            metrics,
            logs: Arc::default(),
        }
    }
}

impl<S> Layer<S> for ClusterAdminLayer {
    type Service = ClusterAdminService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClusterAdminService {
            inner,
            cfg: self.clone(),
        }
    }
}

/// One connection's cluster-admin guard.
#[derive(Clone)]
pub(crate) struct ClusterAdminService<S> {
    inner: S,
    cfg: ClusterAdminLayer,
}

type BoxFut =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, BoxError>> + Send>>;

impl<S> Service<Request> for ClusterAdminService<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFut;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let version = req.meta.api_version;
        let key = req.meta.api.filter(|k| is_cluster_admin(*k, version));
        let Some(key) = key.filter(|_| !self.cfg.allow && !req.conn.sasl_done()) else {
            return Box::pin(self.inner.call(req));
        };
        self.cfg.refused(key, &req);
        let answer = refusal(key, &req).map(Response::Frame);
        Box::pin(async move { answer.map_err(Into::into) })
    }
}

impl ClusterAdminLayer {
    fn refused(&self, key: ApiKey, req: &Request) {
        let api = api_name(key as i16);
        self.metrics
            .rejected_requests
            .with_label_values(&["cluster_admin", api, "enforce"])
            .inc();
        let conn = &req.conn;
        let client_id = conn.client_id().unwrap_or_default();
        if let Some(suppressed) = self.logs.admit(log_key("cluster_admin", &client_id, conn)) {
            warn!(decision = "reject", reason = "cluster_admin", api, client_id,
                  principal = &*conn.principal(), peer = %conn.peer, suppressed,
                  "cluster administration without the client's own broker identity refused");
        }
    }
}

/// CLUSTER_AUTHORIZATION_FAILED for every entry of the request. A body that does not decode
/// is answered with no entries (the request is refused either way).
fn refusal(key: ApiKey, req: &Request) -> anyhow::Result<Bytes> {
    let version = req.meta.api_version;
    let header = ResponseHeader::default().with_correlation_id(req.meta.correlation_id);
    let mut body = req.body_bytes().unwrap_or_default();
    macro_rules! enc {
        ($body:expr) => {
            protocol::encode_response(&header, &$body, key, version)
        };
    }
    match key {
        ApiKey::CreateAcls => {
            let n = CreateAclsRequest::decode(&mut body, version).map_or(0, |r| r.creations.len());
            let results = (0..n)
                .map(|_| {
                    create_acls_response::AclCreationResult::default()
                        .with_error_code(E)
                        .with_error_message(message())
                })
                .collect();
            enc!(CreateAclsResponse::default().with_results(results))
        }
        ApiKey::DeleteAcls => {
            let n = DeleteAclsRequest::decode(&mut body, version).map_or(0, |r| r.filters.len());
            let results = (0..n)
                .map(|_| {
                    delete_acls_response::DeleteAclsFilterResult::default()
                        .with_error_code(E)
                        .with_error_message(message())
                })
                .collect();
            enc!(DeleteAclsResponse::default().with_filter_results(results))
        }
        ApiKey::AlterUserScramCredentials => {
            let r = AlterUserScramCredentialsRequest::decode(&mut body, version).ok();
            let users = r.iter().flat_map(|r| {
                let deleted = r.deletions.iter().map(|d| d.name.clone());
                deleted.chain(r.upsertions.iter().map(|u| u.name.clone()))
            });
            let results = users
                .map(|user| {
                    alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default(
                    )
                    .with_user(user)
                    .with_error_code(E)
                    .with_error_message(message())
                })
                .collect();
            enc!(AlterUserScramCredentialsResponse::default().with_results(results))
        }
        ApiKey::AlterPartitionReassignments => enc!(AlterPartitionReassignmentsResponse::default()
            .with_error_code(E)
            .with_error_message(message())),
        ApiKey::ElectLeaders => {
            let r = ElectLeadersRequest::decode(&mut body, version).ok();
            let results = r
                .and_then(|r| r.topic_partitions)
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    let parts = t.partitions.iter().map(|p| {
                        elect_leaders_response::PartitionResult::default()
                            .with_partition_id(*p)
                            .with_error_code(E)
                            .with_error_message(message())
                    });
                    elect_leaders_response::ReplicaElectionResult::default()
                        .with_topic(t.topic)
                        .with_partition_result(parts.collect())
                })
                .collect();
            enc!(ElectLeadersResponse::default()
                .with_error_code(E)
                .with_replica_election_results(results))
        }
        other => whole_refusal(other, &mut body, version, &header),
    }
}

/// The APIs answered with one top-level error (and, where they list entries, the error on
/// each).
fn whole_refusal(
    key: ApiKey,
    body: &mut Bytes,
    version: i16,
    header: &ResponseHeader,
) -> anyhow::Result<Bytes> {
    macro_rules! enc {
        ($body:expr) => {
            protocol::encode_response(header, &$body, key, version)
        };
    }
    match key {
        ApiKey::AlterClientQuotas => {
            let r = AlterClientQuotasRequest::decode(body, version).ok();
            let entries = r.iter().flat_map(|r| &r.entries).map(|e| {
                let entity = e.entity.iter().map(|x| {
                    alter_client_quotas_response::EntityData::default()
                        .with_entity_type(x.entity_type.clone())
                        .with_entity_name(x.entity_name.clone())
                });
                alter_client_quotas_response::EntryData::default()
                    .with_error_code(E)
                    .with_error_message(message())
                    .with_entity(entity.collect())
            });
            enc!(AlterClientQuotasResponse::default().with_entries(entries.collect()))
        }
        ApiKey::AlterReplicaLogDirs => enc!(AlterReplicaLogDirsResponse::default()),
        ApiKey::UpdateFeatures => enc!(UpdateFeaturesResponse::default()
            .with_error_code(E)
            .with_error_message(message())),
        ApiKey::CreateDelegationToken => {
            enc!(CreateDelegationTokenResponse::default().with_error_code(E))
        }
        ApiKey::RenewDelegationToken => {
            enc!(RenewDelegationTokenResponse::default().with_error_code(E))
        }
        ApiKey::ExpireDelegationToken => {
            enc!(ExpireDelegationTokenResponse::default().with_error_code(E))
        }
        ApiKey::UnregisterBroker => enc!(UnregisterBrokerResponse::default()
            .with_error_code(E)
            .with_error_message(message())),
        ApiKey::AddPartitionsToTxn => {
            enc!(AddPartitionsToTxnResponse::default().with_error_code(E))
        }
        other => anyhow::bail!("{other:?} is not a cluster-admin API"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::request::{ConnInfo, ListenerKind};
    use kafka_protocol::messages::{create_acls_request::AclCreation, RequestHeader};
    use tower::ServiceExt;

    fn create_acls(conn: &Arc<ConnInfo>) -> Request {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::CreateAcls as i16)
            .with_request_api_version(3)
            .with_correlation_id(9);
        let body = CreateAclsRequest::default().with_creations(vec![AclCreation::default()]);
        let frame = protocol::encode_request(&header, &body).unwrap();
        Request::new(
            protocol::parse_request(&frame).unwrap(),
            frame,
            conn.clone(),
        )
    }

    /// The answer, or `None` when the request reached the broker.
    async fn through(allow: bool, conn: &Arc<ConnInfo>) -> Option<CreateAclsResponse> {
        let layer = ClusterAdminLayer::new(allow, Arc::new(Metrics::new()));
        let broker = tower::service_fn(|_r: Request| async {
            Ok::<_, BoxError>(Response::Frame(Bytes::from_static(b"broker")))
        });
        match layer
            .layer(broker)
            .oneshot(create_acls(conn))
            .await
            .unwrap()
        {
            Response::Frame(f) if &f[..] == b"broker" => None,
            Response::Frame(f) => Some(
                protocol::decode_response::<CreateAclsResponse>(&f, ApiKey::CreateAcls, 3)
                    .unwrap()
                    .1,
            ),
            _ => panic!("a frame"),
        }
    }

    #[tokio::test]
    async fn quotas_features_tokens_and_the_brokers_txn_form_are_refused_without_sasl() {
        use kafka_protocol::messages::{
            AddPartitionsToTxnRequest, AlterClientQuotasRequest, CreateDelegationTokenRequest,
            UpdateFeaturesRequest,
        };
        use kafka_protocol::protocol::Encodable;
        async fn refused<T: Encodable>(key: ApiKey, version: i16, body: &T) -> bool {
            let layer = ClusterAdminLayer::new(false, Arc::new(Metrics::new()));
            let broker = tower::service_fn(|_r: Request| async {
                Ok::<_, BoxError>(Response::Frame(Bytes::from_static(b"broker")))
            });
            let req = crate::layers::request::test_request(key, version, None, body);
            let Response::Frame(f) = layer.layer(broker).oneshot(req).await.unwrap() else {
                panic!("a frame")
            };
            &f[..] != b"broker"
        }
        let quotas = AlterClientQuotasRequest::default();
        assert!(refused(ApiKey::AlterClientQuotas, 1, &quotas).await);
        let token = CreateDelegationTokenRequest::default();
        assert!(refused(ApiKey::CreateDelegationToken, 3, &token).await);
        let features = UpdateFeaturesRequest::default();
        assert!(refused(ApiKey::UpdateFeatures, 1, &features).await);
        let txn = AddPartitionsToTxnRequest::default();
        assert!(
            refused(ApiKey::AddPartitionsToTxn, 4, &txn).await,
            "the brokers' form"
        );
        assert!(
            !refused(ApiKey::AddPartitionsToTxn, 3, &txn).await,
            "the clients' form passes"
        );
    }

    #[tokio::test]
    async fn only_a_client_the_broker_knows_as_itself_administers_the_cluster() {
        let conn = Arc::new(ConnInfo::new(
            1,
            "10.0.0.1:5000".parse().unwrap(),
            ListenerKind::Bootstrap,
        ));
        let refused = through(false, &conn).await.expect("refused by Tollgate");
        assert_eq!(refused.results.len(), 1);
        assert_eq!(refused.results[0].error_code, E);
        assert!(
            through(true, &conn).await.is_none(),
            "allowed by configuration"
        );
        conn.set_sasl_principal("SCRAM-SHA-512", Some("ops".into()));
        assert!(
            through(false, &conn).await.is_none(),
            "the broker sees ops itself"
        );
    }
}
