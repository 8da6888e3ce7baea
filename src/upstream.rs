//! Connections from Tollgate to upstream brokers.
//!
//! [`UpstreamConn`] is one pipelined TCP connection to one broker. A Kafka broker answers the
//! requests of a connection in order, so requests and responses are matched first-in,
//! first-out, and each response's correlation id is checked against its request's: a mismatch
//! means the stream is out of step, and the connection is failed rather than trusted.
//!
//! Produce requests with `acks=0` get no response from a Kafka broker, but some brokers (tansu)
//! answer them anyway, as librdkafka tolerates. Both are handled: such requests are queued as
//! "no response expected"; a response carrying their correlation id is dropped, and they are
//! retired once a later request's response shows the broker skipped them.
//!
//! Reading runs in its own task; writing is done by the requester itself under a fair async
//! mutex. They must not share one task: a broker stops reading a connection while it writes a
//! response, so a task blocked writing a large request would never read the response the
//! broker is blocked on.
//!
//! Each client connection gets its own upstream connection (1:1), which keeps every piece of
//! per-connection broker state (ordering of idempotent produces, SASL, throttling) exactly as
//! the client would have it directly. Connections are never reused after an error.
//!
//! [`ControlClient`] is Tollgate's own client for its own requests (start-up probe, periodic
//! Metadata): an ApiVersions handshake first, then requests at versions both sides support.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::metrics::{GaugeGuard, Metrics};
use crate::protocol::{self, check_frame, LEN_PREFIX};
use crate::security::login::Credentials;
use crate::security::tls::Connector;
use crate::security::{ClientTlsConfig, SaslLoginConfig};

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to broker {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to broker {addr} after {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("connection to broker {addr} closed")]
    Closed { addr: String },
    #[error("protocol error from broker {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("TLS handshake with broker {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("SASL login to broker {addr} failed: {reason}")]
    Login { addr: String, reason: String },
}

impl UpstreamError {
    /// Low-cardinality reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Closed { .. } => "closed",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Login { .. } => "login",
        }
    }
}

struct Pending {
    correlation_id: i32,
    may_stream: bool,
    reply: oneshot::Sender<Reply>,
}

/// What the reader expects, in request order.
enum Expect {
    Response(Pending),
    /// A request the broker should not answer (Produce with `acks=0`).
    NoResponse(i32),
}

type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// The write side: the caller writes its own frame (no hand-off to a writer task, which
/// costs a wake-up per request), registering what it expects back in the same critical
/// section, so registration order is write order. The async mutex is fair (FIFO).
struct WriteSide {
    wr: BoxWriter,
    pending: mpsc::UnboundedSender<Expect>,
    /// Dropped with the write side: tells the reader to stop and close the socket.
    _closing: oneshot::Sender<()>,
}

/// One pipelined connection to a broker.
#[derive(Clone)]
pub struct UpstreamConn {
    write: Arc<tokio::sync::Mutex<Option<WriteSide>>>,
    addr: Arc<str>,
}

/// Settings for the connections to one cluster.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub max_response_bytes: usize,
    /// TLS to the brokers (every connection, the clients' included).
    pub tls: Option<Connector>,
    /// Tollgate's own SASL login: [`ControlClient`] connections only. A client's broker
    /// connection carries the client's own SASL exchange.
    pub login: Option<Arc<Credentials>>,
}

impl UpstreamSettings {
    /// Plaintext, no login.
    pub fn plain(connect_timeout: Duration, max_response_bytes: usize) -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout,
            max_response_bytes,
            tls: None,
            login: None,
        }
    }

    /// With the TLS and SASL settings of a cluster (reads their files now).
    pub fn secured(
        self,
        tls: &ClientTlsConfig,
        sasl: Option<&SaslLoginConfig>,
    ) -> anyhow::Result<UpstreamSettings> {
        Ok(UpstreamSettings {
            tls: crate::security::tls::connector(tls)?,
            login: sasl.map(Credentials::load).transpose()?.map(Arc::new),
            ..self
        })
    }
}

impl UpstreamConn {
    /// Connect to `addr` (`host:port`), with TCP_NODELAY.
    pub async fn connect(
        addr: &str,
        settings: &UpstreamSettings,
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamConn, UpstreamError> {
        let stream =
            match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => {
                    metrics
                        .upstream_connect_errors
                        .with_label_values(&[addr])
                        .inc();
                    return Err(UpstreamError::Connect {
                        addr: addr.to_string(),
                        source,
                    });
                }
                Err(_) => {
                    metrics
                        .upstream_connect_errors
                        .with_label_values(&[addr])
                        .inc();
                    return Err(UpstreamError::ConnectTimeout {
                        addr: addr.to_string(),
                        timeout: settings.connect_timeout,
                    });
                }
            };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &settings.tls else {
            return Ok(Self::spawn(stream, addr, settings, metrics));
        };
        let handshake = tokio::time::timeout(settings.connect_timeout, tls.connect(addr, stream));
        match handshake.await {
            Ok(Ok(stream)) => Ok(Self::spawn(stream, addr, settings, metrics)),
            Ok(Err(source)) => {
                metrics
                    .upstream_connect_errors
                    .with_label_values(&[addr])
                    .inc();
                Err(UpstreamError::Tls {
                    addr: addr.to_string(),
                    source,
                })
            }
            Err(_) => {
                metrics
                    .upstream_connect_errors
                    .with_label_values(&[addr])
                    .inc();
                Err(UpstreamError::ConnectTimeout {
                    addr: addr.to_string(),
                    timeout: settings.connect_timeout,
                })
            }
        }
    }

    /// Run the reader and writer tasks over an established stream.
    pub fn spawn<S>(
        stream: S,
        addr: &str,
        settings: &UpstreamSettings,
        metrics: Arc<Metrics>,
    ) -> UpstreamConn
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Expect>();
        let (closing_tx, closing_rx) = oneshot::channel::<()>();
        let addr: Arc<str> = Arc::from(addr);
        let open = GaugeGuard::inc(metrics.upstream_connections_open.clone());
        let write = Arc::new(tokio::sync::Mutex::new(Some(WriteSide {
            wr: Box::new(wr),
            pending: pending_tx,
            _closing: closing_tx,
        })));
        // Weak: the reader must not keep the write side (and so the socket) alive once every
        // user of the connection is gone; a broker never closes an idle connection quickly.
        let writer = Arc::downgrade(&write);
        let reader_addr = addr.clone();
        let max = settings.max_response_bytes;
        tokio::spawn(async move {
            let _open = open;
            let result = tokio::select! {
                r = read_loop(rd, pending_rx, max, &reader_addr) => r,
                // The write side was dropped (client gone, or a write failed): stop reading,
                // which drops the read half and closes the socket.
                _ = closing_rx => Ok(()),
            };
            if let Err(e) = &result {
                metrics
                    .upstream_errors
                    .with_label_values(&[e.reason()])
                    .inc();
                debug!(broker = %reader_addr, error = %e, "upstream connection ended");
            }
            // Fail every later send; the write half closes when dropped.
            if let Some(w) = writer.upgrade() {
                w.lock().await.take();
            }
        });
        UpstreamConn { write, addr }
    }

    /// The broker address this connection goes to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send one request frame and wait for its reply (at once for [`ReplyMode::NoResponse`]).
    pub async fn send(
        &self,
        frame: Bytes,
        correlation_id: i32,
        mode: ReplyMode,
    ) -> Result<Reply, UpstreamError> {
        let closed = || UpstreamError::Closed {
            addr: self.addr.to_string(),
        };
        let (expect, rx) = if mode != ReplyMode::NoResponse {
            let (reply, rx) = oneshot::channel();
            let pending = Pending {
                correlation_id,
                may_stream: mode == ReplyMode::MayStream,
                reply,
            };
            (Expect::Response(pending), Some(rx))
        } else {
            (Expect::NoResponse(correlation_id), None)
        };
        {
            let mut guard = self.write.lock().await;
            let side = guard.as_mut().ok_or_else(closed)?;
            // Register before writing so the reader always finds the entry for a response.
            side.pending.send(expect).map_err(|_| closed())?;
            if side.wr.write_all(&frame).await.is_err() {
                guard.take();
                return Err(closed());
            }
        }
        match rx {
            Some(rx) => rx.await.map_err(|_| closed()),
            None => Ok(Reply::None),
        }
    }
}

/// A client connection's broker connection, opened on the client's first request rather than
/// on accept: a client that connects and never speaks costs no broker socket.
pub struct LazyUpstream {
    conn: tokio::sync::OnceCell<UpstreamConn>,
    /// Where to connect, in order of preference (the first that answers wins).
    candidates: Vec<String>,
    settings: UpstreamSettings,
    metrics: Arc<Metrics>,
}

impl LazyUpstream {
    pub fn new(
        candidates: Vec<String>,
        settings: UpstreamSettings,
        metrics: Arc<Metrics>,
    ) -> LazyUpstream {
        LazyUpstream {
            conn: tokio::sync::OnceCell::new(),
            candidates,
            settings,
            metrics,
        }
    }

    /// The connection, opened now if this is the first request.
    pub async fn get(&self) -> Result<&UpstreamConn, UpstreamError> {
        self.conn
            .get_or_try_init(|| async {
                let mut last = None;
                for addr in &self.candidates {
                    match UpstreamConn::connect(addr, &self.settings, self.metrics.clone()).await {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Some(e),
                    }
                }
                self.metrics
                    .connections_refused
                    .with_label_values(&["upstream_unavailable"])
                    .inc();
                Err(last.unwrap_or(UpstreamError::Closed { addr: "-".into() }))
            })
            .await
    }
}

async fn read_loop<R: AsyncRead>(
    rd: R,
    mut pending: mpsc::UnboundedReceiver<Expect>,
    max: usize,
    addr: &str,
) -> Result<(), UpstreamError> {
    tokio::pin!(rd);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let proto = |reason: String| UpstreamError::Protocol {
        addr: addr.to_string(),
        reason,
    };
    let closed = || UpstreamError::Closed {
        addr: addr.to_string(),
    };
    loop {
        // Size prefix and correlation id first: enough to match the request.
        while buf.len() < LEN_PREFIX + 4 {
            buf.reserve(64 * 1024);
            if rd.read_buf(&mut buf).await.map_err(|_| closed())? == 0 {
                return if buf.is_empty() {
                    Ok(())
                } else {
                    Err(closed())
                };
            }
        }
        if let Err(e) = check_frame(&buf, max) {
            return Err(proto(e.to_string()));
        }
        let total = protocol::frame_len(&buf).expect("at least the size prefix is buffered");
        let got = protocol::response_correlation_id(&buf);
        let pending_reply = loop {
            // The requester registers every request before writing it, so the entry for this
            // response is already queued (or every requester is gone).
            let Some(expect) = pending.recv().await else {
                return Ok(());
            };
            match expect {
                Expect::Response(p) if got == Some(p.correlation_id) => break Some(p),
                Expect::Response(p) => {
                    return Err(proto(format!(
                        "response correlation id {got:?} does not match request {}",
                        p.correlation_id
                    )));
                }
                // The broker answered an acks=0 produce: drop the answer.
                Expect::NoResponse(id) if got == Some(id) => break None,
                // The broker (correctly) did not answer an acks=0 produce: retire it.
                Expect::NoResponse(_) => continue,
            }
        };
        let stream = pending_reply
            .as_ref()
            .is_some_and(|p| p.may_stream && total >= STREAM_THRESHOLD && buf.len() < total);
        if !stream {
            while buf.len() < total {
                buf.reserve(total - buf.len());
                if rd.read_buf(&mut buf).await.map_err(|_| closed())? == 0 {
                    return Err(closed());
                }
            }
            let frame = buf.split_to(total).freeze();
            if let Some(p) = pending_reply {
                // The requester may be gone (client disconnected); that is fine.
                let _ = p.reply.send(Reply::Frame(frame));
            }
            continue;
        }
        // Cut-through: hand over what is here now, then each chunk as it arrives.
        let p = pending_reply.expect("stream implies a requester");
        let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
        // The whole frame goes into ONE allocation: the bytes already read (at most one
        // read's worth) are copied to its front, and each chunk read after them is split off
        // it. The pieces stay adjacent, so a reader of the whole response (attribution) puts
        // them back together without copying (`BytesMut::unsplit`) and decodes the records
        // as slices; a first piece in another buffer made the first partition's records span
        // two buffers, and the decoder copied them. Reads are limited to the frame, so the
        // next frame's bytes never land here.
        let mut body = BytesMut::with_capacity(total);
        body.extend_from_slice(&buf.split());
        let first = body.split();
        let mut remaining = total - first.len();
        let _ = p.reply.send(Reply::Stream(StreamedFrame {
            first,
            rest: rx,
            total,
            tap: None,
        }));
        let mut receiver_gone = false;
        let mut limited = (&mut rd).take(remaining as u64);
        while remaining > 0 {
            if limited.read_buf(&mut body).await.map_err(|_| closed())? == 0 {
                return Err(closed());
            }
            let chunk = body.split();
            remaining -= chunk.len();
            // A gone receiver (client closed) still needs the rest read, to stay in step.
            if !receiver_gone && tx.send(chunk).await.is_err() {
                receiver_gone = true;
            }
        }
    }
}

/// Responses at least this large are forwarded cut-through when the request allows it.
pub const STREAM_THRESHOLD: usize = 256 * 1024;
/// Chunks of a streamed response in flight between the broker reader and the client writer.
const STREAM_CHUNKS: usize = 8;

/// A response forwarded while it is still arriving: `first` holds the size prefix, the
/// correlation id and whatever else had arrived; `rest` yields the remaining bytes in order.
/// If `rest` ends before `total` bytes were seen, the broker connection failed mid-frame.
///
/// A layer that wants to read the response without holding it back sets `tap`: the writer
/// keeps the chunks it forwards and, once the whole frame went to the client, calls `tap`
/// with the whole frame rejoined into one buffer (`first` and the chunks are adjacent in one
/// allocation, so rejoining them copies nothing).
pub struct StreamedFrame {
    pub first: BytesMut,
    pub rest: mpsc::Receiver<BytesMut>,
    pub total: usize,
    pub tap: Option<StreamTap>,
}

/// Called with the chunks of a streamed frame after it was forwarded whole.
pub type StreamTap = Box<dyn FnOnce(Vec<Bytes>) + Send>;

impl std::fmt::Debug for StreamedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedFrame")
            .field("first", &self.first.len())
            .field("total", &self.total)
            .field("tap", &self.tap.is_some())
            .finish()
    }
}

/// What a request gets back from the broker.
#[derive(Debug)]
pub enum Reply {
    /// No response is due (Produce with `acks=0`).
    None,
    /// The whole response frame.
    Frame(Bytes),
    /// A large response, forwarded as it arrives.
    Stream(StreamedFrame),
}

/// How a request wants its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    /// The broker sends none (Produce with `acks=0`).
    NoResponse,
    /// The whole frame, because a layer decodes it.
    Whole,
    /// Cut-through allowed for large responses.
    MayStream,
}

/// Tollgate's own Metadata requests never create topics: the topics it asks about can come
/// from what clients named (commits, fetches), and a broker with `auto.create.topics.enable`
/// would otherwise create every junk name. (v0-3 have no such field: the broker decides.)
fn no_auto_create(request: MetadataRequest, version: i16) -> MetadataRequest {
    if version >= 4 {
        request.with_allow_auto_topic_creation(false)
    } else {
        request
    }
}

/// Tollgate's own Kafka client for its own requests.
pub struct ControlClient {
    conn: UpstreamConn,
    versions: ApiVersionsResponse,
    next_correlation: AtomicI32,
}

/// The client id Tollgate uses for its own requests.
pub const CONTROL_CLIENT_ID: &str = "tollgate-control";

impl ControlClient {
    /// Connect and do the ApiVersions handshake (v0: every broker accepts it).
    pub async fn connect(
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
    pub fn version_for(&self, key: ApiKey) -> Option<i16> {
        let ours = crate::versions::decodable_versions(key);
        let theirs = self
            .versions
            .api_keys
            .iter()
            .find(|v| v.api_key == key as i16)?;
        let max = ours.max.min(theirs.max_version);
        (max >= ours.min.max(theirs.min_version)).then_some(max)
    }

    /// Fetch cluster Metadata (no topics: brokers only).
    pub async fn metadata(&self) -> Result<MetadataResponse, UpstreamError> {
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
    pub async fn metadata_all(&self) -> Result<MetadataResponse, UpstreamError> {
        let version = self.need(ApiKey::Metadata)?.max(1);
        let request = MetadataRequest::default().with_topics(None);
        self.request(ApiKey::Metadata, version, &no_auto_create(request, version))
            .await
    }

    /// Fetch Metadata for these topics (brokers, and each partition's leader).
    pub async fn metadata_for(&self, topics: &[String]) -> Result<MetadataResponse, UpstreamError> {
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
    pub async fn heads(
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
    pub fn addr(&self) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
