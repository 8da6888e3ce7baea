//! One client connection: framing in, the stack, responses out in request order.
//!
//! The loop reads whole frames (cancel-safe: a partial frame stays in the buffer), parses
//! the header, calls the per-connection stack and queues the response future in a
//! `FuturesOrdered`, so many requests are in flight at once (pipelining) while responses leave
//! strictly in request order. A separate writer task sends them, coalescing small frames.
//!
//! - A malformed or oversized frame: logged, counted in `tollgate_frame_errors_total`, and
//!   the connection is closed. Nothing else is affected.
//! - A stack error (e.g. the broker connection dropped): the responses before it are sent,
//!   then the connection is closed, exactly as the client would see a broker disconnect.
//! - Large responses that no layer decodes arrive as [`Response::Stream`] and are written as
//!   their bytes arrive from the broker (cut-through), in their place in the order. An
//!   answer a layer decoded ([`Response::Fetch`], [`Response::Metadata`]) is encoded here,
//!   once; a Fetch answer becomes [`Response::Pieces`] (a merged tiered Fetch answer),
//!   written piece by piece, its record sets straight from the buffers they arrived in.
//! - Client gone (end of stream): the requests in flight are abandoned and the connection
//!   (and with it the broker connection) closes at once.
//! - Shutdown: reading stops, the requests already read finish, then the connection closes.
//! - Quiet clients: a connection that sends no whole request within
//!   `proxy.first_request_timeout_ms` of accept, or that has nothing in flight and sends
//!   nothing for `proxy.idle_timeout_ms`, is closed and counted in
//!   `tollgate_client_timeouts_total{reason}`; it holds a connection slot, not a broker
//!   socket (the broker connection opens on the first request). A client that stops reading
//!   so that one response write makes no progress for `proxy.idle_timeout_ms` is closed too
//!   (`reason="write_stalled"`).
//! - Memory: each request read reserves the bytes its answer may take (a Fetch: its
//!   `max_bytes`; anything else: its own size and 64 KiB), up to
//!   `proxy.max_buffered_bytes_per_connection`; the reservation is released once the answer
//!   is written to the client. While a connection's reservations are at the bound, Tollgate
//!   reads no more of its requests (TCP back-pressure). A client that pipelines Fetches and
//!   never reads can therefore hold about one bound's worth of answers, not one answer per
//!   request in flight (answers read whole: refused partitions merged, tiered merges).
//! - Unauthenticated clients: with `proxy.sasl.required`, a connection the broker has not
//!   authenticated within `proxy.sasl.authentication_timeout_ms` of accept is closed,
//!   whatever it sends meanwhile (`reason="authentication_timeout"`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::{debug, warn};

use crate::brokers::upstream::StreamedFrame;
use crate::error;
use crate::layers::stack::{ConnInfo, ProxyService, Request, Response};
use crate::metrics::Metrics;
use crate::wire::protocol::{api_name, parse_request, RequestMeta};
use crate::wire::protocol::{check_frame, missing_bytes, FrameError};

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionSettings {
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_in_flight: usize,
    /// Close a connection that sent no whole request this long after accept (zero: never).
    pub(crate) first_request_timeout: Duration,
    /// Close a connection with nothing in flight and no request for this long (zero: never).
    pub(crate) idle_timeout: Duration,
    /// Close a connection not authenticated by the broker this long after accept (zero:
    /// never; set only when SASL is required).
    pub(crate) authentication_timeout: Duration,
    /// Bytes of answers a connection may have reserved and not yet written (see the module
    /// docs).
    pub(crate) max_buffered_bytes: usize,
}

/// A connection's reserved answer bytes.
struct Budget {
    used: AtomicUsize,
    limit: usize,
    freed: tokio::sync::Notify,
}

impl Budget {
    fn full(&self) -> bool {
        self.used.load(Ordering::Acquire) >= self.limit
    }

    fn reserve(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
            self.freed.notify_one();
        }
    }
}

/// What a request reserves for its answer: a Fetch its `max_bytes`, anything else its own
/// size and 64 KiB; never more than `limit` (one request always fits).
fn reservation(meta: &RequestMeta, frame: &Bytes, limit: usize) -> usize {
    const SMALL: usize = 64 * 1024;
    let fetch_max = (meta.api == Some(ApiKey::Fetch))
        .then(|| {
            // max_bytes (v3+): after replica_id, max_wait_ms and min_bytes; v15 dropped
            // replica_id.
            let at = meta.body_offset? + if meta.api_version >= 15 { 8 } else { 12 };
            let b = frame.get(at..at + 4)?;
            Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(0) as usize)
        })
        .flatten();
    fetch_max
        .unwrap_or(frame.len() + SMALL)
        .clamp(SMALL, limit.max(SMALL))
}

impl ConnectionSettings {
    /// When the connection is closed if nothing happens: measured from the last request read
    /// (or from accept, before the first one). `None`: never.
    fn deadline(&self, last: Instant, requests: u64) -> Option<(Instant, &'static str)> {
        let (after, reason) = if requests == 0 {
            (self.first_request_timeout, "first_request_timeout")
        } else {
            (self.idle_timeout, "idle_timeout")
        };
        // A zero or unrepresentably far timeout: never.
        let at = last.checked_add(after).filter(|_| !after.is_zero())?;
        Some((at, reason))
    }

    /// When a connection the broker has not authenticated is closed. `None`: never, or it is
    /// authenticated.
    fn auth_deadline(&self, accepted: Instant, conn: &ConnInfo) -> Option<(Instant, &'static str)> {
        if self.authentication_timeout.is_zero() || conn.sasl_done() {
            return None;
        }
        let at = accepted.checked_add(self.authentication_timeout)?;
        Some((at, "authentication_timeout"))
    }
}

/// Serve one client connection until it closes, fails, or shutdown drains it. `rd` and `wr`
/// are the two halves of the client's stream (TCP, or TLS over TCP).
pub(crate) async fn serve<R, W>(
    (mut rd, wr): (R, W),
    conn: Arc<ConnInfo>,
    mut service: ProxyService,
    settings: ConnectionSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel::<(Outgoing, usize)>(settings.max_in_flight.max(1));
    let stall = (!settings.idle_timeout.is_zero()).then_some(settings.idle_timeout);
    let budget = Arc::new(Budget {
        used: AtomicUsize::new(0),
        limit: settings.max_buffered_bytes,
        freed: tokio::sync::Notify::new(),
    });
    let writer = tokio::spawn(write_loop(
        wr,
        out_rx,
        Writer {
            metrics: metrics.clone(),
            conn: conn.clone(),
            stall,
            budget: budget.clone(),
        },
    ));
    let mut inflight = FuturesOrdered::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut reading = !*shutdown.borrow();
    let (mut last_request, mut requests) = (Instant::now(), 0u64);
    let accepted = Instant::now();

    loop {
        // Only a connection with nothing in flight can time out (a long-poll Fetch is not idle);
        // an unauthenticated one times out whatever it does.
        let quiet = settings
            .deadline(last_request, requests)
            .filter(|_| inflight.is_empty() && reading);
        let deadline = match (quiet, settings.auth_deadline(accepted, &conn)) {
            (Some(q), Some(a)) => Some(if a.0 < q.0 { a } else { q }),
            (q, a) => q.or(a),
        };
        tokio::select! {
            biased;
            Some((result, reserved)) = inflight.next(), if !inflight.is_empty() => {
                let result: Result<Response, (i16, error::BoxError)> = result;
                match result.and_then(outgoing) {
                    Ok(Some(out)) => {
                        if out_tx.send((out, reserved)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => budget.release(reserved),
                    Err((api_key, e)) => {
                        let e: error::BoxError = e;
                        warn!(conn = conn.id, peer = %conn.peer, api = api_name(api_key),
                              reason = error::reason(e.as_ref()), error = %e,
                              "request failed; closing client connection");
                        break;
                    }
                }
            }
            _ = shutdown.changed(), if reading => {
                reading = false;
            }
            // Answers were written: reading may resume.
            _ = budget.freed.notified(), if reading && budget.full() => {}
            _ = sleep_until(deadline), if deadline.is_some() => {
                let reason = deadline.map_or("", |d| d.1);
                metrics.client_timeouts.with_label_values(&[reason]).inc();
                debug!(conn = conn.id, peer = %conn.peer, reason, "closing a quiet client connection");
                break;
            }
            frame = read_frame(&mut rd, &mut buf, settings.max_frame_bytes),
                if reading && inflight.len() < settings.max_in_flight && !budget.full() => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    // The client is gone (Kafka clients never half-close): its in-flight
                    // requests are abandoned, which closes its broker connection now rather
                    // than after a long-poll Fetch the broker would answer to nobody.
                    Ok(None) => break,
                    Err(ReadError::Frame(e)) => {
                        metrics.frame_errors.with_label_values(&[e.reason()]).inc();
                        warn!(conn = conn.id, peer = %conn.peer, error = %e,
                              "bad frame from client; closing its connection");
                        break;
                    }
                    Err(ReadError::Io(e)) => {
                        debug!(conn = conn.id, peer = %conn.peer, error = %e, "client read failed");
                        break;
                    }
                };
                (last_request, requests) = (Instant::now(), requests + 1);
                metrics.client_bytes_received.inc_by(frame.len() as u64);
                let meta = match parse_request(&frame) {
                    Ok(m) => m,
                    Err(e) => {
                        metrics.frame_errors.with_label_values(&[e.reason()]).inc();
                        warn!(conn = conn.id, peer = %conn.peer, error = %e,
                              "malformed request header; closing the connection");
                        break;
                    }
                };
                conn.observe_request(&meta, &frame);
                let api_key = meta.api_key;
                let reserved = reservation(&meta, &frame, settings.max_buffered_bytes);
                budget.reserve(reserved);
                let req = Request::new(meta, frame, conn.clone());
                let fut = match service.ready().await {
                    Ok(svc) => svc.call(req),
                    Err(e) => {
                        warn!(conn = conn.id, error = %e, "request stack not ready; closing");
                        break;
                    }
                };
                inflight.push_back(async move { (fut.await.map_err(|e| (api_key, e)), reserved) });
            }
            else => break,
        }
    }
    drop(out_tx);
    let _ = writer.await;
    debug!(conn = conn.id, peer = %conn.peer, "client connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_client_deadlines() {
        let s = ConnectionSettings {
            max_frame_bytes: 1024,
            max_in_flight: 1,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
            authentication_timeout: Duration::ZERO,
            max_buffered_bytes: 1 << 20,
        };
        let now = Instant::now();
        assert_eq!(
            s.deadline(now, 0),
            Some((now + Duration::from_secs(10), "first_request_timeout"))
        );
        assert_eq!(s.deadline(now, 1), None, "zero: never");
        // The largest configurable value is a (far) deadline, not a panic.
        let ms_max = ConnectionSettings {
            idle_timeout: Duration::from_millis(u64::MAX),
            ..s
        };
        assert!(ms_max.deadline(now, 1).is_some());
        let far = ConnectionSettings {
            idle_timeout: Duration::MAX,
            ..s
        };
        assert_eq!(far.deadline(now, 1), None, "too far to represent: never");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_ends_its_writer() {
        // The client's receive window: 1 KiB, and it never reads.
        let (ours, _client) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        let metrics = Arc::new(Metrics::new());
        let conn = Arc::new(ConnInfo::new(
            1,
            "10.0.0.1:5000".parse().unwrap(),
            crate::layers::stack::ListenerKind::Bootstrap,
        ));
        let budget = Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit: 1 << 20,
            freed: tokio::sync::Notify::new(),
        });
        let writer = tokio::spawn(write_loop(
            ours,
            rx,
            Writer {
                metrics: metrics.clone(),
                conn,
                stall: Some(Duration::from_secs(600)),
                budget,
            },
        ));
        tx.send((Outgoing::Frame(Bytes::from(vec![0u8; 64 * 1024])), 0))
            .await
            .unwrap();
        // Paused time: the runtime jumps to the stall deadline once everything is blocked.
        tokio::time::timeout(Duration::from_secs(3600), writer)
            .await
            .expect("the writer gives up on a client that does not read")
            .unwrap();
        assert_eq!(
            metrics
                .client_timeouts
                .with_label_values(&["write_stalled"])
                .get(),
            1
        );
    }
}

/// What the writer sends for a response; `None` when no response is due. A response a layer
/// decoded is encoded here, once, on its way out ([`Response::encoded`]); a failure ends the
/// connection like any failed request.
fn outgoing(response: Response) -> Result<Option<Outgoing>, (i16, error::BoxError)> {
    let key = match &response {
        Response::Fetch(_) => ApiKey::Fetch as i16,
        Response::Metadata(_) => ApiKey::Metadata as i16,
        _ => -1,
    };
    let response = match response {
        decoded @ (Response::Fetch(_) | Response::Metadata(_)) => {
            decoded.encoded().map_err(|e| (key, e.into()))?
        }
        other => other,
    };
    Ok(Some(match response {
        Response::Frame(frame) => Outgoing::Frame(frame),
        Response::Stream(stream) => Outgoing::Stream(stream),
        Response::Pieces(pieces) => Outgoing::Pieces(pieces),
        Response::None => return Ok(None),
        Response::Fetch(_) | Response::Metadata(_) => {
            return Err((key, "a decoded answer was not encoded".into()))
        }
    }))
}

async fn sleep_until(deadline: Option<(Instant, &'static str)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the writer task sends, in order.
enum Outgoing {
    Frame(Bytes),
    Stream(StreamedFrame),
    /// One frame in pieces ([`Response::Pieces`]).
    Pieces(Vec<Bytes>),
}

/// What the writer needs besides the stream and the queue.
struct Writer {
    metrics: Arc<Metrics>,
    conn: Arc<ConnInfo>,
    /// A write that does not complete in this long means the client stopped reading.
    stall: Option<Duration>,
    /// Released as answers are written.
    budget: Arc<Budget>,
}

/// Writes responses in order, and releases their reservations once written. A write that
/// stalls (see [`Writer::stall`]) ends the connection (counted as `write_stalled`) instead
/// of holding its slot and buffers forever.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<(Outgoing, usize)>,
    w: Writer,
) {
    let mut batch = Vec::with_capacity(32);
    let mut frames = Vec::with_capacity(32);
    let (m, stall, conn) = (&w.metrics, w.stall, &w.conn);
    while rx.recv_many(&mut batch, 32).await > 0 {
        let mut done = 0;
        for (item, reserved) in batch.drain(..) {
            match item {
                Outgoing::Frame(f) => frames.push(f),
                // Written in order like frames: small pieces coalesced, large ones as they are.
                Outgoing::Pieces(p) => frames.extend(p),
                Outgoing::Stream(s) => {
                    // Everything queued before the stream goes first.
                    if guarded(stall, m, flush(&mut wr, &mut frames, m, conn))
                        .await
                        .is_err()
                        || guarded(stall, m, write_stream(&mut wr, s, m, conn))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    w.budget.release(std::mem::take(&mut done) + reserved);
                    continue;
                }
            }
            done += reserved;
        }
        if guarded(stall, m, flush(&mut wr, &mut frames, m, conn))
            .await
            .is_err()
        {
            return;
        }
        w.budget.release(done);
    }
}

/// `write` within `stall` (when set), else a `TimedOut` error counted as `write_stalled`.
async fn guarded(
    stall: Option<Duration>,
    metrics: &Metrics,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    let Some(stall) = stall else {
        return write.await;
    };
    match tokio::time::timeout(stall, write).await {
        Ok(r) => r,
        Err(_) => {
            metrics
                .client_timeouts
                .with_label_values(&["write_stalled"])
                .inc();
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frames: &mut Vec<Bytes>,
    metrics: &Metrics,
    conn: &ConnInfo,
) -> std::io::Result<()> {
    let bytes: usize = frames.iter().map(Bytes::len).sum();
    write_frames(wr, frames).await?;
    count_sent(metrics, conn, bytes);
    Ok(())
}

/// Bytes sent to a client count in the global metric and in the connection's inventory entry.
fn count_sent(metrics: &Metrics, conn: &ConnInfo, bytes: usize) {
    metrics.client_bytes_sent.inc_by(bytes as u64);
    conn.add_bytes_out(bytes as u64);
}

/// Forward a cut-through response. If the broker connection fails mid-frame, the client
/// connection must close: it has a partial frame it can never complete.
async fn write_stream<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut s: StreamedFrame,
    metrics: &Metrics,
    conn: &ConnInfo,
) -> std::io::Result<()> {
    metrics.cut_through_responses.inc();
    let mut written = s.first.len();
    wr.write_all(&s.first).await?;
    // Kept for the tap: `first` and the chunks after it, rejoined in place (O(1) while they
    // are adjacent, as the broker reader makes them).
    let mut whole = s.tap.is_some().then(|| std::mem::take(&mut s.first));
    while written < s.total {
        let Some(chunk) = s.rest.recv().await else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        written += chunk.len();
        wr.write_all(&chunk).await?;
        if let Some(w) = whole.as_mut() {
            w.unsplit(chunk);
        }
    }
    count_sent(metrics, conn, written);
    if let (Some(tap), Some(w)) = (s.tap.take(), whole) {
        tap(vec![w.freeze()]);
    }
    Ok(())
}

/// Write frames with as few syscalls as possible: small frames are coalesced into one buffer,
/// large ones are written as they are (no copy).
async fn write_frames<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frames: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    const COALESCE: usize = 16 * 1024;
    let mut small = BytesMut::new();
    for f in frames.drain(..) {
        if f.len() <= COALESCE {
            small.extend_from_slice(&f);
            if small.len() >= 4 * COALESCE {
                wr.write_all(&small).await?;
                small.clear();
            }
        } else {
            if !small.is_empty() {
                wr.write_all(&small).await?;
                small.clear();
            }
            wr.write_all(&f).await?;
        }
    }
    if !small.is_empty() {
        wr.write_all(&small).await?;
    }
    wr.flush().await
}

/// Read one whole frame (size prefix included). Cancel-safe: partial data stays in `buf`.
/// `Ok(None)` is a clean end of stream between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, ReadError> {
    loop {
        if let Some(n) = check_frame(buf, max)? {
            return Ok(Some(buf.split_to(n).freeze()));
        }
        let want = missing_bytes(buf).max(8 * 1024);
        buf.reserve(want);
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            };
        }
    }
}

/// Reading a frame failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
