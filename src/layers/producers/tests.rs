//! The producer policy against a broker stub: what is forwarded, what is answered.

use std::sync::Mutex;

use bytes::Bytes;
use kafka_protocol::messages::{add_partitions_to_txn_request, produce_request};
use kafka_protocol::protocol::Encodable;
use tower::ServiceExt;

use super::*;

const REGISTRY: &str = r##"
mode = "enforce"

[[producer]]
client_id = "writer"
owner = "web"
contact = "#web"
topics = ["clicks"]
topic_prefixes = ["web."]

[[producer]]
client_id = "trial"
owner = "trial"
contact = "#trial"
topics = ["clicks"]
mode = "shadow"

[[producer]]
client_id = "capped"
owner = "batch"
contact = "#batch"
topics = ["bulk"]
produce_budget_bytes_per_second = 1000
on_over_budget = "reject"
"##;

fn layer(text: &str) -> (ProducersLayer, Arc<Metrics>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, text).unwrap();
    let metrics = Arc::new(Metrics::new());
    let ids = TopicIds::new();
    ids.learn([(uuid::Uuid::from_u128(5), "clicks".to_string())]);
    let layer = ProducersLayer::new(
        Arc::new(RegistryHandle::open(&path).unwrap()),
        Arc::new(ids),
        Arc::new(Budgets::of(
            crate::consumers::budgets::Kind::Writes,
            metrics.clone(),
        )),
        metrics.clone(),
        Arc::new(Refusals::new()),
    );
    (layer, metrics, dir)
}

fn request<T: Encodable>(key: ApiKey, version: i16, client: &str, body: &T) -> Request {
    crate::layers::request::test_request(key, version, Some(client), body)
}

fn produce(topics: &[&str], acks: i16) -> ProduceRequest {
    let data = topics.iter().map(|t| {
        produce_request::TopicProduceData::default()
            .with_name(StrBytes::from_string(t.to_string()).into())
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(vec![1u8; 600]))),
                produce_request::PartitionProduceData::default()
                    .with_index(1)
                    .with_records(Some(Bytes::from(vec![1u8; 600]))),
            ])
    });
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(1000)
        .with_topic_data(data.collect())
}

/// What the broker stub got (topics of each Produce it saw) and the answer.
struct Outcome {
    forwarded: Vec<Vec<String>>,
    answer: Result<Response, BoxError>,
}

/// Runs `req` through the layer in front of a broker stub that acknowledges every partition
/// of a Produce.
async fn run(layer: &ProducersLayer, req: Request) -> Outcome {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let broker = tower::service_fn(move |r: Request| {
        let log = log.clone();
        async move {
            let version = r.meta.api_version;
            let body = r.body::<ProduceRequest>()?;
            log.lock().unwrap().push(
                body.topic_data
                    .iter()
                    .map(|t| t.name.to_string())
                    .collect::<Vec<_>>(),
            );
            let responses = body.topic_data.iter().map(|t| {
                produce_response::TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| {
                                produce_response::PartitionProduceResponse::default()
                                    .with_index(p.index)
                            })
                            .collect(),
                    )
            });
            let header = ResponseHeader::default().with_correlation_id(7);
            let resp = ProduceResponse::default().with_responses(responses.collect());
            let frame = protocol::encode_response(&header, &resp, ApiKey::Produce, version)?;
            Ok::<_, BoxError>(Response::Frame(frame))
        }
    });
    let answer = layer.layer(broker).oneshot(req).await;
    let forwarded = seen.lock().unwrap().clone();
    Outcome { forwarded, answer }
}

/// Each topic's partition error codes in a Produce answer.
fn codes(resp: &Response, version: i16) -> Vec<(String, Vec<i16>)> {
    let Response::Frame(f) = resp else {
        panic!("a whole answer: {resp:?}")
    };
    let (_, body) =
        protocol::decode_response::<ProduceResponse>(f, ApiKey::Produce, version).expect("decodes");
    let mut out: Vec<_> = body
        .responses
        .iter()
        .map(|t| {
            let codes = t.partition_responses.iter().map(|p| p.error_code);
            (t.name.to_string(), codes.collect())
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn refused_topics_are_answered_and_the_rest_goes_to_the_broker_at_every_version() {
    let (layer, metrics, _dir) = layer(REGISTRY);
    for v in 3..=12 {
        let req = request(
            ApiKey::Produce,
            v,
            "writer",
            &produce(&["clicks", "payments"], -1),
        );
        let out = run(&layer, req).await;
        assert_eq!(out.forwarded, vec![vec!["clicks".to_string()]], "v{v}");
        assert_eq!(
            codes(&out.answer.unwrap(), v),
            vec![
                ("clicks".to_string(), vec![0, 0]),
                ("payments".to_string(), vec![29, 29])
            ],
            "v{v}"
        );
    }
    let refused = metrics
        .rejected_requests
        .with_label_values(&["topic_not_allowed", "Produce", "enforce"])
        .get();
    assert_eq!(refused, 10);
}

#[tokio::test]
async fn a_producer_with_nothing_allowed_is_answered_without_the_broker() {
    let (layer, _, _dir) = layer(REGISTRY);
    let out = run(
        &layer,
        request(ApiKey::Produce, 9, "rdkafka", &produce(&["clicks"], -1)),
    )
    .await;
    assert!(out.forwarded.is_empty());
    assert_eq!(
        codes(&out.answer.unwrap(), 9),
        vec![("clicks".to_string(), vec![29, 29])]
    );
}

#[tokio::test]
async fn shadow_entries_and_registries_without_producers_let_everything_through() {
    let (layer, metrics, _dir) = layer(REGISTRY);
    let out = run(
        &layer,
        request(ApiKey::Produce, 9, "trial", &produce(&["other"], -1)),
    )
    .await;
    assert_eq!(out.forwarded, vec![vec!["other".to_string()]]);
    let shadow = metrics
        .rejected_requests
        .with_label_values(&["topic_not_allowed", "Produce", "shadow"])
        .get();
    assert_eq!(shadow, 1);
    let consumers_only = REGISTRY.split("[[producer]]").next().unwrap();
    let (layer, _, _dir) = self::layer(consumers_only);
    let out = run(
        &layer,
        request(ApiKey::Produce, 9, "anyone", &produce(&["x"], -1)),
    )
    .await;
    assert_eq!(out.forwarded, vec![vec!["x".to_string()]]);
}

#[tokio::test]
async fn an_acks_0_produce_with_a_refused_topic_sends_the_rest_then_closes() {
    let (layer, _, _dir) = layer(REGISTRY);
    let req = request(
        ApiKey::Produce,
        9,
        "writer",
        &produce(&["clicks", "payments"], 0),
    );
    let out = run(&layer, req).await;
    assert_eq!(out.forwarded, vec![vec!["clicks".to_string()]]);
    let err = out.answer.unwrap_err();
    assert_eq!(crate::error::reason(err.as_ref()), "produce_refused");
}

#[tokio::test]
async fn a_topic_named_by_id_is_checked_by_its_name_and_unknown_ids_are_retried() {
    let (layer, _, _dir) = layer(REGISTRY);
    let by_id = |id: u128| {
        let mut p = produce(&[""], -1);
        p.topic_data[0].topic_id = uuid::Uuid::from_u128(id);
        p
    };
    let out = run(&layer, request(ApiKey::Produce, 13, "writer", &by_id(5))).await;
    assert_eq!(out.forwarded.len(), 1, "clicks, by id, is allowed");
    let out = run(&layer, request(ApiKey::Produce, 13, "writer", &by_id(6))).await;
    assert!(out.forwarded.is_empty());
    let Response::Frame(f) = out.answer.unwrap() else {
        panic!()
    };
    let (_, body) = protocol::decode_response::<ProduceResponse>(&f, ApiKey::Produce, 13).unwrap();
    assert_eq!(body.responses[0].topic_id, uuid::Uuid::from_u128(6));
    assert_eq!(body.responses[0].partition_responses[0].error_code, 100);
}

#[tokio::test]
async fn a_producer_over_a_reject_budget_is_refused_while_over_it() {
    let (layer, metrics, _dir) = layer(REGISTRY);
    // 1,200 bytes per request against 1,000 per second: over within a few rate windows.
    let mut refused_at = None;
    for i in 0..40 {
        let out = run(
            &layer,
            request(ApiKey::Produce, 9, "capped", &produce(&["bulk"], -1)),
        )
        .await;
        if out.forwarded.is_empty() {
            assert_eq!(codes(&out.answer.unwrap(), 9)[0].1, vec![44, 44]);
            refused_at = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(refused_at.is_some(), "never refused");
    let gauge = metrics
        .producer_over_budget
        .with_label_values(&["client:capped"]);
    assert_eq!(gauge.get(), 1);
}

#[tokio::test]
async fn add_partitions_to_txn_with_a_refused_topic_adds_nothing() {
    let (layer, _, _dir) = layer(REGISTRY);
    let topic = |name: &str| {
        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
            .with_name(StrBytes::from_string(name.to_string()).into())
            .with_partitions(vec![0, 1])
    };
    let body = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(StrBytes::from_static_str("tx").into())
        .with_v3_and_below_topics(vec![topic("clicks"), topic("payments")]);
    let broker = tower::service_fn(|_r: Request| async {
        Err::<Response, BoxError>("must not reach the broker".into())
    });
    for v in 0..=3 {
        let req = request(ApiKey::AddPartitionsToTxn, v, "writer", &body);
        let Response::Frame(f) = layer.layer(broker).oneshot(req).await.unwrap() else {
            panic!()
        };
        let (_, resp) = protocol::decode_response::<AddPartitionsToTxnResponse>(
            &f,
            ApiKey::AddPartitionsToTxn,
            v,
        )
        .unwrap();
        let codes: Vec<(String, i16)> = resp
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| {
                t.results_by_partition
                    .iter()
                    .map(|p| (t.name.to_string(), p.partition_error_code))
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                ("clicks".into(), 55),
                ("clicks".into(), 55),
                ("payments".into(), 29),
                ("payments".into(), 29)
            ]
        );
    }
    // Allowed topics only: forwarded.
    let ok = AddPartitionsToTxnRequest::default().with_v3_and_below_topics(vec![topic("web.x")]);
    let req = request(ApiKey::AddPartitionsToTxn, 3, "writer", &ok);
    assert!(
        layer.layer(broker).oneshot(req).await.is_err(),
        "reached the broker"
    );
}
