//! Unit tests of the broker connection and the control client.

use super::*;
use control::no_auto_create;
use kafka_protocol::messages::{ApiKey, MetadataRequest, RequestHeader};

#[test]
fn tollgates_own_metadata_requests_never_create_topics() {
    for v in 0..=12 {
        let r = no_auto_create(MetadataRequest::default().with_topics(Some(vec![])), v);
        assert_eq!(r.allow_auto_topic_creation, v < 4, "v{v}");
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(v);
        protocol::encode_request(&header, &r).expect("encodes at every version");
    }
}

#[tokio::test]
async fn the_broker_socket_closes_when_its_client_is_gone() {
    let (ours, mut broker) = tokio::io::duplex(1 << 16);
    let metrics = Arc::new(Metrics::new());
    let conn = UpstreamConn::spawn(ours, "test:1", &settings(), metrics.clone());
    assert_eq!(metrics.upstream_connections_open.get(), 1);
    drop(conn);
    // The broker sees end-of-stream: the proxy closed its side.
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), broker.read(&mut b))
        .await
        .expect("the proxy side closes without the broker closing first")
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(metrics.upstream_connections_open.get(), 0);
}

fn settings() -> UpstreamSettings {
    UpstreamSettings::plain(Duration::from_secs(1), 1 << 20)
}

fn frame_of(reply: Result<Reply, UpstreamError>) -> Bytes {
    match reply.unwrap() {
        Reply::Frame(f) => f,
        other => panic!("expected a whole frame, got {other:?}"),
    }
}

fn response(correlation_id: i32, payload: &[u8]) -> Vec<u8> {
    let mut v = ((4 + payload.len()) as i32).to_be_bytes().to_vec();
    v.extend_from_slice(&correlation_id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[tokio::test]
async fn pipelined_requests_are_matched_in_order() {
    let (ours, mut broker) = tokio::io::duplex(1 << 16);
    let conn = UpstreamConn::spawn(ours, "test:1", &settings(), Arc::new(Metrics::new()));
    let a = tokio::spawn({
        let c = conn.clone();
        async move {
            c.send(Bytes::from_static(b"req-a"), 1, ReplyMode::Whole)
                .await
        }
    });
    tokio::task::yield_now().await;
    let b = tokio::spawn({
        let c = conn.clone();
        async move {
            c.send(Bytes::from_static(b"req-b"), 2, ReplyMode::Whole)
                .await
        }
    });
    let mut got = vec![0u8; 10];
    broker.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"req-areq-b");
    broker.write_all(&response(1, b"A")).await.unwrap();
    broker.write_all(&response(2, b"B")).await.unwrap();
    assert_eq!(&frame_of(a.await.unwrap())[8..], b"A");
    assert_eq!(&frame_of(b.await.unwrap())[8..], b"B");
}

#[tokio::test]
async fn a_correlation_mismatch_fails_the_connection() {
    let (ours, mut broker) = tokio::io::duplex(1 << 16);
    let conn = UpstreamConn::spawn(ours, "test:1", &settings(), Arc::new(Metrics::new()));
    let a = tokio::spawn({
        let c = conn.clone();
        async move { c.send(Bytes::from_static(b"x"), 5, ReplyMode::Whole).await }
    });
    let mut got = [0u8; 1];
    broker.read_exact(&mut got).await.unwrap();
    broker.write_all(&response(6, b"")).await.unwrap();
    assert!(matches!(
        a.await.unwrap(),
        Err(UpstreamError::Closed { .. })
    ));
}

#[tokio::test]
async fn brokers_that_answer_acks_zero_are_tolerated() {
    let (ours, mut broker) = tokio::io::duplex(1 << 16);
    let conn = UpstreamConn::spawn(ours, "test:1", &settings(), Arc::new(Metrics::new()));
    conn.send(Bytes::from_static(b"a0"), 1, ReplyMode::NoResponse)
        .await
        .unwrap();
    let got = conn.send(Bytes::from_static(b"rq"), 2, ReplyMode::Whole);
    let broker_side = async {
        let mut b = [0u8; 4];
        broker.read_exact(&mut b).await.unwrap();
        broker.write_all(&response(1, b"unasked")).await.unwrap();
        broker.write_all(&response(2, b"ok")).await.unwrap();
    };
    let (r, ()) = tokio::join!(got, broker_side);
    assert_eq!(&frame_of(r)[8..], b"ok");
}

#[tokio::test]
async fn large_responses_are_cut_through_in_order_and_small_ones_whole() {
    let (ours, mut broker) = tokio::io::duplex(1 << 16);
    let conn = UpstreamConn::spawn(ours, "test:1", &settings_big(), Arc::new(Metrics::new()));
    let big: Vec<u8> = (0..STREAM_THRESHOLD * 3).map(|i| (i % 251) as u8).collect();
    let expected = response(1, &big);
    let broker_side = {
        let expected = expected.clone();
        async move {
            let mut b = [0u8; 4];
            broker.read_exact(&mut b).await.unwrap();
            // Slowly, so the proxy sees the frame arrive in pieces; then a small one.
            for chunk in expected.chunks(50_000) {
                broker.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            broker.write_all(&response(2, b"small")).await.unwrap();
            broker
        }
    };
    let c2 = conn.clone();
    let requests = async move {
        let r1 = conn
            .send(Bytes::from_static(b"big1"), 1, ReplyMode::MayStream)
            .await
            .unwrap();
        let Reply::Stream(mut s) = r1 else {
            panic!("expected cut-through")
        };
        assert_eq!(s.total, expected.len());
        let mut got = s.first.to_vec();
        let mut next: Option<usize> = None;
        let mut chunks = 0;
        while let Some(chunk) = s.rest.recv().await {
            // Adjacent in one allocation: rejoining them for attribution copies nothing.
            if let Some(n) = next {
                assert_eq!(chunk.as_ptr() as usize, n, "chunks are adjacent");
            }
            next = Some(chunk.as_ptr() as usize + chunk.len());
            chunks += 1;
            got.extend_from_slice(&chunk);
        }
        assert!(chunks >= 2, "{chunks} chunks");
        assert_eq!(got, expected);
        let r2 = c2
            .send(Bytes::from_static(b"two!"), 2, ReplyMode::MayStream)
            .await;
        assert_eq!(&frame_of(r2)[8..], b"small");
    };
    let (_broker, ()) = tokio::join!(broker_side, requests);
}

#[tokio::test]
async fn a_broker_dying_mid_stream_ends_the_stream_short() {
    let (ours, mut broker) = tokio::io::duplex(1 << 16);
    let conn = UpstreamConn::spawn(ours, "test:1", &settings_big(), Arc::new(Metrics::new()));
    let big = vec![7u8; STREAM_THRESHOLD * 2];
    let frame = response(1, &big);
    let broker_side = async move {
        let mut b = [0u8; 4];
        broker.read_exact(&mut b).await.unwrap();
        broker.write_all(&frame[..frame.len() / 2]).await.unwrap();
        drop(broker); // the broker goes away mid-frame
    };
    let request = async {
        let Reply::Stream(mut s) = conn
            .send(Bytes::from_static(b"big!"), 1, ReplyMode::MayStream)
            .await
            .unwrap()
        else {
            panic!("expected cut-through")
        };
        let mut got = s.first.len();
        while let Some(c) = s.rest.recv().await {
            got += c.len();
        }
        assert!(
            got < s.total,
            "the consumer of the stream can tell it is incomplete"
        );
    };
    tokio::join!(broker_side, request);
    assert!(conn
        .send(Bytes::from_static(b"more"), 2, ReplyMode::Whole)
        .await
        .is_err());
}

fn settings_big() -> UpstreamSettings {
    UpstreamSettings {
        max_response_bytes: 16 << 20,
        ..settings()
    }
}

#[tokio::test]
async fn acks_zero_requests_do_not_wait() {
    let (ours, mut broker) = tokio::io::duplex(1 << 16);
    let conn = UpstreamConn::spawn(ours, "test:1", &settings(), Arc::new(Metrics::new()));
    assert!(matches!(
        conn.send(Bytes::from_static(b"fire"), 9, ReplyMode::NoResponse)
            .await
            .unwrap(),
        Reply::None
    ));
    let got = conn.send(Bytes::from_static(b"next"), 10, ReplyMode::Whole);
    let broker_side = async {
        let mut b = [0u8; 8];
        broker.read_exact(&mut b).await.unwrap();
        broker.write_all(&response(10, b"ok")).await.unwrap();
    };
    let (r, ()) = tokio::join!(got, broker_side);
    assert_eq!(&frame_of(r)[8..], b"ok");
}
