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
//! [`ControlClient`] (`control.rs`) is Tollgate's own client for its own requests (start-up
//! probe, periodic Metadata): an ApiVersions handshake first, then requests at versions both
//! sides support.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::metrics::{GaugeGuard, Metrics};
use crate::security::login::Credentials;
use crate::security::tls::Connector;
use crate::security::{ClientTlsConfig, SaslLoginConfig};
use crate::wire::protocol::{self, check_frame, LEN_PREFIX};

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
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
    pub(crate) fn reason(&self) -> &'static str {
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
pub(crate) struct UpstreamConn {
    write: Arc<tokio::sync::Mutex<Option<WriteSide>>>,
    addr: Arc<str>,
}

/// Settings for the connections to one cluster.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_response_bytes: usize,
    /// TLS to the brokers (every connection, the clients' included).
    pub(crate) tls: Option<Connector>,
    /// Tollgate's own SASL login: [`ControlClient`] connections only. A client's broker
    /// connection carries the client's own SASL exchange.
    pub(crate) login: Option<Arc<Credentials>>,
}

impl UpstreamSettings {
    /// Plaintext, no login.
    pub(crate) fn plain(connect_timeout: Duration, max_response_bytes: usize) -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout,
            max_response_bytes,
            tls: None,
            login: None,
        }
    }

    /// With the TLS and SASL settings of a cluster (reads their files now).
    pub(crate) fn secured(
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
    pub(crate) async fn connect(
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
    pub(crate) fn spawn<S>(
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
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Send one request frame and wait for its reply (at once for [`ReplyMode::NoResponse`]).
    pub(crate) async fn send(
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
pub(crate) struct LazyUpstream {
    conn: tokio::sync::OnceCell<UpstreamConn>,
    /// Where to connect, in order of preference (the first that answers wins).
    candidates: Vec<String>,
    settings: UpstreamSettings,
    metrics: Arc<Metrics>,
}

impl LazyUpstream {
    pub(crate) fn new(
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
    pub(crate) async fn get(&self) -> Result<&UpstreamConn, UpstreamError> {
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
pub(crate) const STREAM_THRESHOLD: usize = 256 * 1024;
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
    pub(crate) first: BytesMut,
    pub(crate) rest: mpsc::Receiver<BytesMut>,
    pub(crate) total: usize,
    pub(crate) tap: Option<StreamTap>,
}

/// Called with the chunks of a streamed frame after it was forwarded whole.
pub(crate) type StreamTap = Box<dyn FnOnce(Vec<Bytes>) + Send>;

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
pub(crate) enum Reply {
    /// No response is due (Produce with `acks=0`).
    None,
    /// The whole response frame.
    Frame(Bytes),
    /// A large response, forwarded as it arrives.
    Stream(StreamedFrame),
}

/// How a request wants its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyMode {
    /// The broker sends none (Produce with `acks=0`).
    NoResponse,
    /// The whole frame, because a layer decodes it.
    Whole,
    /// Cut-through allowed for large responses.
    MayStream,
}

mod control;
#[cfg(test)]
mod tests;

pub(crate) use control::ControlClient;
