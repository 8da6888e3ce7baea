//! The admin-plane policy as deployed: two instances behind the balancer, librdkafka's admin
//! client with default settings (unauthenticated: `User:ANONYMOUS`), a registry that lets it
//! create topics under `ingest.` named by the rule, and nothing else.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::common::tier::Tier;
use crate::common::*;

const REGISTRY: &str = r#"
[admin_policy]
mode = "enforce"
topic_name_pattern = '^ingest\.[a-z0-9-]+$'
max_partitions = 8

[[admin]]
principal = "User:ANONYMOUS"
rights = ["create_topics"]
topic_prefixes = ["ingest."]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badly_named_topic_is_refused_and_a_good_one_created_through_a_tier() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    let extra = format!(
        "share_interval_ms = 250\n[governance]\nregistry = \"{}\"\n",
        path.display()
    );
    let tier = Tier::start(2, &broker.addr(), &extra).await;
    let admin: AdminClient<DefaultClientContext> = client(&tier.bootstrap()).create().unwrap();
    let new = |name| NewTopic::new(name, 2, TopicReplication::Fixed(1));
    let wanted = [
        new("ingest.clicks"),
        new("ingest.Clicks_V2"),
        new("billing.invoices"),
        NewTopic::new("ingest.wide", 64, TopicReplication::Fixed(1)),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&wanted, &opts).await.unwrap();
    let outcome: Vec<(String, Option<RDKafkaErrorCode>)> = results
        .into_iter()
        .map(|r| match r {
            Ok(name) => (name, None),
            Err((name, code)) => (name, Some(code)),
        })
        .collect();
    assert_eq!(
        outcome,
        vec![
            ("ingest.clicks".to_string(), None),
            (
                "ingest.Clicks_V2".to_string(),
                Some(RDKafkaErrorCode::InvalidTopic)
            ),
            (
                "billing.invoices".to_string(),
                Some(RDKafkaErrorCode::TopicAuthorizationFailed)
            ),
            (
                "ingest.wide".to_string(),
                Some(RDKafkaErrorCode::InvalidPartitions)
            ),
        ],
        "{}",
        tier.logs()
    );
    // The broker has the good topic and none of the others.
    let direct: BaseConsumer = client(&broker.addr()).create().unwrap();
    let md = tokio::task::spawn_blocking(move || {
        direct
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap()
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(md.contains(&"ingest.clicks".to_string()), "{md:?}");
    for absent in ["ingest.Clicks_V2", "billing.invoices", "ingest.wide"] {
        assert!(
            !md.contains(&absent.to_string()),
            "{absent} was created: {md:?}"
        );
    }
    let refused = tier
        .sum(
            "tollgate_rejected_requests_total",
            &[("api", "CreateTopics"), ("mode", "enforce")],
        )
        .await;
    assert_eq!(refused, 3.0);
}
