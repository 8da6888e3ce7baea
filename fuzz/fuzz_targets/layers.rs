//! One request frame through the policy layers that read client input (the consumer
//! decision, attribution, the own-topics guard, governance with a registry in enforce mode,
//! the admin-plane policy and offset protection in enforce mode, the producer policy with an
//! alerting budget: a throttling one would sleep) over a stub broker that
//! answers with fuzzed bytes: no input may panic a layer, and every answer is a frame or a
//! clean error.
//!
//! Input: a 2-byte split point, then the request frame, then the broker's response body.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt};

use tollgate::consumers::usage::Usage;
use tollgate::control::config::{AttributionConfig, LagConfig};
use tollgate::consumers::groups::Groups;
use tollgate::consumers::heads::Heads;
use tollgate::consumers::lag::Lag;
use tollgate::brokers::topic_ids::TopicIds;
use tollgate::error::BoxError;
use tollgate::layers::own_topics::OwnTopicsLayer;
use tollgate::consumers::budgets::Budgets;
use tollgate::consumers::decision::{Decider, FetchSession};
use tollgate::layers::attribution::{AttributionLayer, Sinks};
use tollgate::layers::decision::DecisionLayer;
use tollgate::layers::governance::GovernanceLayer;
use tollgate::layers::producers::ProducersLayer;
use tollgate::layers::admin_plane::AdminPlaneLayer;
use tollgate::layers::offsets::OffsetsLayer;
use tollgate::consumers::rewinds::Rewinds;
use tollgate::consumers::budgets::Kind;
use tollgate::consumers::refusals::Refusals;
use tollgate::metrics::Metrics;
use tollgate::control::registry::RegistryHandle;
use tollgate::layers::request::{ConnInfo, ListenerKind, Request, Response};

struct World {
    rt: tokio::runtime::Runtime,
    sinks: Sinks,
    decider: Arc<Decider>,
    registry: Arc<RegistryHandle>,
    metrics: Arc<Metrics>,
    producers: ProducersLayer,
    admin_plane: AdminPlaneLayer,
    offsets: OffsetsLayer,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("tollgate-fuzz-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "mode = \"enforce\"\nmax_rewind_records = 10\n\
             [admin_policy]\nmode = \"enforce\"\ntopic_name_pattern = \"^t\"\nmax_partitions = 4\n\
             max_retention_ms = 1000\n\
             [[admin]]\nprincipal = \"User:ANONYMOUS\"\nrights = [\"create_topics\", \"alter_configs\"]\n\
             [[consumer]]\ngroup = \"g\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\nlag_slo_seconds = 60\n\
             [[producer]]\nclient_id = \"p\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\n\
             produce_budget_bytes_per_second = 1000\non_over_budget = \"alert\"\n",
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(RegistryHandle::open(&path).unwrap());
        let sinks = Sinks {
            usage: Arc::new(Usage::new(
                AttributionConfig::default(),
                metrics.clone(),
                Vec::new(),
            )),
            heads: Arc::new(Heads::new()),
            topic_ids: Arc::new(TopicIds::new()),
            groups: Arc::new(Groups::new(Duration::from_secs(300))),
            lag: Arc::new(Lag::new(LagConfig::default())),
            ledger: None,
        };
        let decider = Arc::new(Decider {
            groups: sinks.groups.clone(),
            lag: sinks.lag.clone(),
            registry: registry.clone(),
            budgets: Arc::new(Budgets::new(metrics.clone())),
            topic_ids: sinks.topic_ids.clone(),
            metrics: metrics.clone(),
            tie_wait: Duration::ZERO,
        });
        let producers = ProducersLayer::new(
            registry.clone(),
            sinks.topic_ids.clone(),
            Arc::new(Budgets::of(Kind::Writes, metrics.clone())),
            metrics.clone(),
            Arc::new(Refusals::new()),
        );
        let admin_plane = AdminPlaneLayer::new(
            registry.clone(),
            sinks.topic_ids.clone(),
            metrics.clone(),
            Arc::new(Refusals::new()),
        );
        // A committed offset to rewind from.
        sinks.lag.observe_commit("g", ("t".to_string(), 0), 1000);
        let offsets = OffsetsLayer::new(
            registry.clone(),
            Arc::new(Rewinds::new(sinks.lag.clone(), sinks.heads.clone())),
            metrics.clone(),
            Arc::new(Refusals::new()),
        );
        World {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            producers,
            admin_plane,
            offsets,
            sinks,
            decider,
            registry,
            metrics,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (u16::from_be_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (request, answer) = data[2..].split_at(split);
    let frame = Bytes::copy_from_slice(request);
    let Ok(meta) = tollgate::wire::protocol::parse_request(&frame) else {
        return;
    };
    let w = world();
    // The broker's answer: the request's correlation id, then the fuzzed body (header v0/v1
    // differences are the fuzzer's to find).
    let mut resp = BytesMut::new();
    resp.put_i32((4 + answer.len()) as i32);
    resp.put_i32(meta.correlation_id);
    resp.put_slice(answer);
    let resp = resp.freeze();
    let broker = tower::service_fn(move |_r: Request| {
        let resp = resp.clone();
        async move { Ok::<_, BoxError>(Response::Frame(resp)) }
    });
    let ids = w.sinks.topic_ids.clone();
    let session = Arc::new(FetchSession::default());
    let attribution = AttributionLayer::new(w.sinks.clone(), session.clone());
    let stack = DecisionLayer::new(w.decider.clone(), session).layer(attribution.layer(
        OwnTopicsLayer::new(["_tollgate_state".to_string()], ids.clone(), w.metrics.clone())
            .layer(
                GovernanceLayer::new(w.registry.clone(), ids, w.metrics.clone())
                    .layer(w.admin_plane.layer(
                        w.offsets.layer(w.producers.layer(broker)),
                    )),
            ),
    ));
    let conn = Arc::new(ConnInfo::new(
        1,
        "10.0.0.1:5000".parse().unwrap(),
        ListenerKind::Bootstrap,
    ));
    let req = Request::new(meta, frame, conn);
    let _ = w.rt.block_on(stack.oneshot(req));
});
