//! The admin-plane policy against a broker stub.

use std::sync::Mutex;

use kafka_protocol::messages::{
    create_acls_request::AclCreation, create_topics_request, create_topics_response,
    CreateAclsRequest, CreateAclsResponse, CreateTopicsRequest, CreateTopicsResponse,
};
use kafka_protocol::protocol::Encodable;
use tower::ServiceExt;

use super::*;

const REGISTRY: &str = r#"
[admin_policy]
mode = "enforce"
topic_name_pattern = '^[a-z]+\.[a-z.-]+$'
max_partitions = 12
min_replication_factor = 1
max_retention_ms = 86400000

[[admin]]
principal = "User:ANONYMOUS"
rights = ["create_topics"]
topic_prefixes = ["ok."]
"#;

fn layer(text: &str) -> (AdminPlaneLayer, Arc<Metrics>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, text).unwrap();
    let metrics = Arc::new(Metrics::new());
    let layer = AdminPlaneLayer::new(
        Arc::new(RegistryHandle::open(&path).unwrap()),
        Arc::new(TopicIds::new()),
        metrics.clone(),
        Arc::new(Refusals::new()),
    );
    (layer, metrics, dir)
}

fn request<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Request {
    crate::layers::request::test_request(key, version, None, body)
}

fn topic(
    name: &str,
    partitions: i32,
    retention: Option<&str>,
) -> create_topics_request::CreatableTopic {
    let configs = retention
        .map(|v| {
            vec![create_topics_request::CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_value(Some(StrBytes::from_string(v.to_string())))]
        })
        .unwrap_or_default();
    create_topics_request::CreatableTopic::default()
        .with_name(StrBytes::from_string(name.to_string()).into())
        .with_num_partitions(partitions)
        .with_replication_factor(-1)
        .with_configs(configs)
}

/// The topics the broker stub was asked to create, and each topic's code in the answer.
async fn create(
    layer: &AdminPlaneLayer,
    version: i16,
    body: &CreateTopicsRequest,
) -> (Vec<String>, Vec<(String, i16, bool)>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let broker = tower::service_fn(move |r: Request| {
        let log = log.clone();
        async move {
            let body = r.body::<CreateTopicsRequest>()?;
            let topics = body.topics.iter().map(|t| {
                log.lock().unwrap().push(t.name.to_string());
                create_topics_response::CreatableTopicResult::default().with_name(t.name.clone())
            });
            let resp = CreateTopicsResponse::default().with_topics(topics.collect());
            let h = ResponseHeader::default().with_correlation_id(7);
            let f = protocol::encode_response(&h, &resp, ApiKey::CreateTopics, r.meta.api_version)?;
            Ok::<_, BoxError>(Response::Frame(f))
        }
    });
    let req = request(ApiKey::CreateTopics, version, body);
    let Response::Frame(f) = layer.layer(broker).oneshot(req).await.unwrap() else {
        panic!("a frame")
    };
    let (_, resp) =
        protocol::decode_response::<CreateTopicsResponse>(&f, ApiKey::CreateTopics, version)
            .unwrap();
    let mut codes: Vec<(String, i16, bool)> = resp
        .topics
        .iter()
        .map(|t| (t.name.to_string(), t.error_code, t.error_message.is_some()))
        .collect();
    codes.sort();
    let forwarded = seen.lock().unwrap().clone();
    (forwarded, codes)
}

#[tokio::test]
async fn new_topics_are_held_to_the_rights_the_name_and_the_limits_the_rest_is_created() {
    let (layer, metrics, _dir) = layer(REGISTRY);
    let body = CreateTopicsRequest::default().with_topics(vec![
        topic("ok.good", 3, Some("3600000")),
        topic("ok.Bad_Name", 3, None),
        topic("ok.huge", 100, None),
        topic("ok.forever", 3, Some("-1")),
        topic("other.x", 3, None),
    ]);
    for v in 2..=7 {
        let (forwarded, codes) = create(&layer, v, &body).await;
        assert_eq!(forwarded, vec!["ok.good".to_string()], "v{v}");
        let got: Vec<(&str, i16)> = codes.iter().map(|(n, c, _)| (n.as_str(), *c)).collect();
        assert_eq!(
            got,
            vec![
                ("ok.Bad_Name", 17),
                ("ok.forever", 44),
                ("ok.good", 0),
                ("ok.huge", 37),
                ("other.x", 29)
            ],
            "v{v}"
        );
        assert!(
            codes.iter().filter(|c| c.1 != 0).all(|c| c.2),
            "messages from v1"
        );
    }
    let named = metrics
        .rejected_requests
        .with_label_values(&["topic_name", "CreateTopics", "enforce"])
        .get();
    assert_eq!(named, 6);
}

#[tokio::test]
async fn in_shadow_mode_everything_is_created_and_counted() {
    let shadow = REGISTRY.replace("mode = \"enforce\"", "mode = \"shadow\"");
    let (layer, metrics, _dir) = layer(&shadow);
    let body = CreateTopicsRequest::default().with_topics(vec![topic("Bad", 1, None)]);
    let (forwarded, _) = create(&layer, 5, &body).await;
    assert_eq!(forwarded, vec!["Bad".to_string()]);
    let counted = metrics
        .rejected_requests
        .with_label_values(&["admin_right", "CreateTopics", "shadow"])
        .get();
    assert_eq!(counted, 1);
    // No admin rules at all: shadow too.
    let (layer, _, _dir) = self::layer("");
    assert_eq!(create(&layer, 5, &body).await.0, vec!["Bad".to_string()]);
}

#[tokio::test]
async fn acl_changes_without_the_right_are_refused_whole() {
    let (layer, _, _dir) = layer(REGISTRY);
    let body = CreateAclsRequest::default()
        .with_creations(vec![AclCreation::default(), AclCreation::default()]);
    let broker = tower::service_fn(|_r: Request| async {
        Err::<Response, BoxError>("must not reach the broker".into())
    });
    let req = request(ApiKey::CreateAcls, 2, &body);
    let Response::Frame(f) = layer.layer(broker).oneshot(req).await.unwrap() else {
        panic!()
    };
    let (_, resp) =
        protocol::decode_response::<CreateAclsResponse>(&f, ApiKey::CreateAcls, 2).unwrap();
    let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![31, 31]);
}

#[tokio::test]
async fn what_reached_the_broker_is_audited_with_its_answer_and_only_that() {
    let (layer, _metrics, _dir) = layer(REGISTRY);
    let audit = Arc::new(crate::control::audit::Audit::new(
        Default::default(),
        Arc::new(Metrics::new()),
    ));
    let queue = audit.take_queue().unwrap();
    let layer = layer.auditing(audit);
    let body = CreateTopicsRequest::default()
        .with_topics(vec![topic("ok.good", 3, None), topic("other.x", 3, None)]);
    create(&layer, 7, &body).await;
    let events: Vec<What> = queue
        .try_iter()
        .filter_map(|m| match m {
            crate::control::audit::Msg::Event(e) => Some(e.what),
            _ => None,
        })
        .collect();
    let changes: Vec<&What> = events
        .iter()
        .filter(|e| matches!(e, What::AdminChange { .. }))
        .collect();
    assert_eq!(changes.len(), 1, "{events:?}");
    let What::AdminChange { api, resources, .. } = changes[0] else {
        unreachable!()
    };
    assert_eq!(api, "CreateTopics");
    // The refused topic never reached the broker: it is a refusal, not a change.
    assert_eq!(
        resources,
        &vec![Resource {
            name: "ok.good".into(),
            error: 0
        }]
    );
}
