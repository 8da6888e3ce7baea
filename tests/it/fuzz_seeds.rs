//! Seed corpus for the fuzz targets (`fuzz/`), recorded from real client traffic: librdkafka
//! producing (plain and idempotent, compressed), a consumer group that subscribes, fetches,
//! commits and leaves, an `assign()` reader, and admin requests, all through a recording
//! relay in front of tansu (tansu advertises the relay, so every connection passes it).
//!
//! Ignored in the test suite; `benches/fuzz.sh` runs it when the corpus is missing:
//! `FUZZ_SEEDS_DIR=fuzz/corpus cargo test --test it -- --ignored fuzz_seeds::`.

use crate::common;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ProduceRequest};
use kafka_protocol::protocol::Decodable;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// (api key, version) of the requests in flight on one connection, by correlation id.
type InFlight = Arc<Mutex<HashMap<i32, (i16, i16)>>>;

/// Every seed recorded, by target.
#[derive(Default)]
struct Seeds {
    files: Mutex<Vec<(&'static str, Vec<u8>)>>,
}

impl Seeds {
    fn add(&self, target: &'static str, data: Vec<u8>) {
        self.files.lock().unwrap().push((target, data));
    }

    fn write(&self, dir: &Path) -> usize {
        let files = self.files.lock().unwrap();
        for (i, (target, data)) in files.iter().enumerate() {
            let d = dir.join(target);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("real-{i:05}")), data).unwrap();
        }
        files.len()
    }
}

/// Read one frame (size prefix included) or `None` at end of stream.
async fn read_frame(s: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let n = i32::from_be_bytes(len).max(0) as usize;
    let mut frame = len.to_vec();
    frame.resize(4 + n, 0);
    s.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

/// The `bodies` seed header for (key, version): see `fuzz/fuzz_targets/bodies.rs`.
fn body_prefix(key: ApiKey, version: i16, response: bool) -> Option<Vec<u8>> {
    let apis = tollgate::layers::decoded_apis();
    let index = apis.iter().position(|k| *k == key)?;
    let range = tollgate::layers::decodable_versions(key);
    let v = (version - range.min + 1) as u8;
    Some(vec![index as u8, v, u8::from(response)])
}

fn record_request(seeds: &Seeds, frame: &[u8], inflight: &InFlight) {
    let bytes = Bytes::copy_from_slice(frame);
    let Ok(meta) = tollgate::wire::protocol::parse_request(&bytes) else {
        return;
    };
    seeds.add("frames", frame.to_vec());
    let Some(key) = meta.api else { return };
    inflight
        .lock()
        .unwrap()
        .insert(meta.correlation_id, (key as i16, meta.api_version));
    let body = &frame[meta.body_offset.unwrap_or(frame.len())..];
    if let Some(mut seed) = body_prefix(key, meta.api_version, false) {
        seed.extend_from_slice(body);
        seeds.add("bodies", seed);
    }
    if key == ApiKey::Produce {
        if let Ok(p) = ProduceRequest::decode(&mut Bytes::copy_from_slice(body), meta.api_version) {
            for t in &p.topic_data {
                for part in &t.partition_data {
                    let mut seed = vec![0u8; 16];
                    seed.extend_from_slice(part.records.as_deref().unwrap_or_default());
                    seeds.add("records", seed);
                }
            }
        }
    }
}

fn record_response(
    seeds: &Seeds,
    frame: &[u8],
    inflight: &InFlight,
    requests: &mut VecDeque<Vec<u8>>,
) {
    let Some(cid) = tollgate::wire::protocol::response_correlation_id(frame) else {
        return;
    };
    let Some((key, version)) = inflight.lock().unwrap().remove(&cid) else {
        return;
    };
    let Ok(key) = ApiKey::try_from(key) else {
        return;
    };
    let header = if key.response_header_version(version) >= 1 {
        9
    } else {
        8
    };
    let body = frame.get(header..).unwrap_or_default();
    if let Some(mut seed) = body_prefix(key, version, true) {
        seed.extend_from_slice(body);
        seeds.add("bodies", seed);
    }
    if let Some(request) = requests.pop_front() {
        let mut seed = (request.len() as u16).to_be_bytes().to_vec();
        seed.extend_from_slice(&request);
        seed.extend_from_slice(body);
        seeds.add("layers", seed);
    }
}

async fn relay(client: TcpStream, broker: String, seeds: Arc<Seeds>) {
    let Ok(up) = TcpStream::connect(&broker).await else {
        return;
    };
    let (mut crd, mut cwr) = client.into_split();
    let (mut urd, mut uwr) = up.into_split();
    let inflight: InFlight = Arc::default();
    let requests = Arc::new(Mutex::new(VecDeque::new()));
    let (s1, i1, r1) = (seeds.clone(), inflight.clone(), requests.clone());
    let to_broker = tokio::spawn(async move {
        while let Some(f) = read_frame(&mut crd).await {
            record_request(&s1, &f, &i1);
            r1.lock().unwrap().push_back(f.clone());
            if uwr.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    while let Some(f) = read_frame(&mut urd).await {
        record_response(&seeds, &f, &inflight, &mut requests.lock().unwrap());
        if cwr.write_all(&f).await.is_err() {
            break;
        }
    }
    to_broker.abort();
}

fn traffic(bootstrap: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = common::client(bootstrap).create().unwrap();
    rt.block_on(admin.create_topics(
        &[NewTopic::new("seeds", 2, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    for (idempotent, compression) in [("false", "none"), ("true", "lz4")] {
        let p: FutureProducer = common::client(bootstrap)
            .set("enable.idempotence", idempotent)
            .set("compression.type", compression)
            .create()
            .unwrap();
        rt.block_on(common::produce_known(&p, "seeds", 50, compression));
        let _ = rt.block_on(p.send(
            FutureRecord::to("seeds").key("one").payload("single"),
            Duration::from_secs(5),
        ));
    }
    let c: BaseConsumer = common::client(bootstrap)
        .set("group.id", "seed-group")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&["seeds"]).unwrap();
    let mut got = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got < 100 && std::time::Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            got += 1;
        }
    }
    let _ = c.commit_consumer_state(CommitMode::Sync);
    drop(c);
    let _ = common::read_all(bootstrap, "seeds", 2, 100, Duration::from_secs(10));
    let _ = rt.block_on(admin.delete_topics(&["seeds"], &AdminOptions::new()));
}

#[test]
#[ignore = "records the fuzz seed corpus; run by benches/fuzz.sh"]
fn record_seed_corpus_from_real_clients() {
    let dir = PathBuf::from(std::env::var("FUZZ_SEEDS_DIR").expect("FUZZ_SEEDS_DIR"));
    let relay_port = common::free_port();
    let broker_port = common::free_port();
    let mut tansu = Command::new(common::tansu_bin())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{broker_port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{relay_port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seeds = Arc::new(Seeds::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(TcpListener::bind(("127.0.0.1", relay_port)))
        .unwrap();
    let s = seeds.clone();
    rt.spawn(async move {
        let broker = format!("127.0.0.1:{broker_port}");
        while let Ok((c, _)) = listener.accept().await {
            tokio::spawn(relay(c, broker.clone(), s.clone()));
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    traffic(&format!("127.0.0.1:{relay_port}"));
    std::thread::sleep(Duration::from_millis(500));
    let n = seeds.write(&dir);
    let _ = tansu.kill();
    let _ = tansu.wait();
    eprintln!("recorded {n} seeds into {}", dir.display());
    assert!(n > 100, "too few seeds: {n}");
}
