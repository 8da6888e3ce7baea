//! One request frame through the policy layers that read client input (attribution, the
//! own-topics guard, governance with a registry in enforce mode) over a stub broker that
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

use tollgate::attribution::Attribution;
use tollgate::config::{AttributionConfig, LagConfig};
use tollgate::groups::Groups;
use tollgate::heads::Heads;
use tollgate::lag::Lag;
use tollgate::topic_ids::TopicIds;
use tollgate::error::BoxError;
use tollgate::layers::own_topics::OwnTopicsLayer;
use tollgate::layers::attribution::{AttributionLayer, Sinks};
use tollgate::layers::governance::GovernanceLayer;
use tollgate::metrics::Metrics;
use tollgate::registry::RegistryHandle;
use tollgate::request::{ConnInfo, ListenerKind, Request, Response};

struct World {
    rt: tokio::runtime::Runtime,
    sinks: Sinks,
    registry: Arc<RegistryHandle>,
    metrics: Arc<Metrics>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("tollgate-fuzz-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "mode = \"enforce\"\n[[consumer]]\ngroup = \"g\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\nlag_slo_seconds = 60\n",
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        World {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            sinks: Sinks {
                attribution: Arc::new(Attribution::new(
                    AttributionConfig::default(),
                    metrics.clone(),
                )),
                heads: Arc::new(Heads::new()),
                topic_ids: Arc::new(TopicIds::new()),
                groups: Arc::new(Groups::new(Duration::from_secs(300))),
                lag: Arc::new(Lag::new(LagConfig::default())),
            },
            registry: Arc::new(RegistryHandle::open(&path).unwrap()),
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
    let Ok(meta) = tollgate::protocol::parse_request(&frame) else {
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
    let stack = AttributionLayer::new(w.sinks.clone()).layer(
        OwnTopicsLayer::new(["_tollgate_state".to_string()], ids.clone(), w.metrics.clone())
            .layer(
                GovernanceLayer::new(w.registry.clone(), ids, w.metrics.clone()).layer(broker),
            ),
    );
    let conn = Arc::new(ConnInfo::new(
        1,
        "10.0.0.1:5000".parse().unwrap(),
        ListenerKind::Bootstrap,
    ));
    let req = Request::new(meta, frame, conn);
    let _ = w.rt.block_on(stack.oneshot(req));
});
