//! The read-budget layer: holds the Fetches of a group over its read budget
//! (`on_over_budget = "throttle"`), tier-wide ([`crate::consumers::budgets`]).
//!
//! For a Fetch from a group with a throttling budget (the group and its budget are on the
//! request: the consumer decision, [`Request::consumer`]):
//! - before: the request waits until the group's bucket on this instance is out of debt (at
//!   most [`crate::consumers::budgets::MAX_HOLD`]), and asks for at most one second of this instance's
//!   allowance (`max_bytes`, each `partition_max_bytes`; the broker still returns the first
//!   batch whole, so the group always progresses). Its answer is taken whole (not streamed),
//!   so that it can carry the throttle time;
//! - after: the answer's bytes are charged to the group, and the hold the next request will
//!   get goes into the answer's `throttle_time_ms` (if larger than the broker's), as a broker
//!   quota sets it (KIP-219), so clients back off by themselves.
//!
//! A group with `on_over_budget = "demote"` is not held here: the consumer decision says
//! whether it is demoted now, and the routing layer serves its mirrored partitions from the
//! secondary cluster while it is. Its answers are still charged to its budget here.
//!
//! Every other request passes untouched. Inside governance (refused reads are answered before they get here),
//! outside routing (the budget covers what the secondary serves too).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchRequest, ResponseHeader};
use kafka_protocol::protocol::Decodable;
use tower::{Layer, Service};

use crate::consumers::budgets::{Budget, Budgets};
use crate::error::BoxError;
use crate::layers::request::{Request, Response};

/// Builds [`BudgetService`].
#[derive(Clone)]
pub(crate) struct BudgetLayer {
    budgets: Arc<Budgets>,
}

impl BudgetLayer {
    pub(crate) fn new(budgets: Arc<Budgets>) -> Self {
        Self { budgets }
    }
}

impl<S> Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BudgetService {
            inner,
            budgets: self.budgets.clone(),
        }
    }
}

/// The read-budget layer around one connection's inner service.
#[derive(Clone)]
pub(crate) struct BudgetService<S> {
    inner: S,
    budgets: Arc<Budgets>,
}

/// The group a Fetch reads for and its budget, from the consumer decision.
fn budget_of(req: &Request) -> Option<(String, Budget)> {
    if req.meta.api != Some(ApiKey::Fetch) {
        return None;
    }
    let consumer = req.consumer.as_deref()?;
    Some((consumer.group()?.to_string(), consumer.budget?.budget))
}

impl<S> Service<Request> for BudgetService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some((group, budget)) = budget_of(&req) else {
            return Box::pin(self.inner.call(req));
        };
        let budgets = self.budgets.clone();
        let hold = budgets.before(&group, Some(budget));
        if let Some(h) = hold {
            req.whole_response = true;
            if let Err(e) = cap_fetch(&mut req, h.max_bytes) {
                return Box::pin(async move { Err(e) });
            }
        }
        let mut inner = self.inner.clone();
        let version = req.meta.api_version;
        Box::pin(async move {
            if let Some(h) = hold.filter(|h| !h.wait.is_zero()) {
                tokio::time::sleep(h.wait).await;
            }
            let resp = inner.call(req).await?;
            let next = budgets.served(&group, served_bytes(&resp), Some(budget));
            Ok(throttled(resp, version, next))
        })
    }
}

/// The bytes a Fetch answer serves the group (a decoded answer: its record sets, which are
/// all but a few bytes of it).
fn served_bytes(resp: &Response) -> u64 {
    match resp {
        Response::Frame(f) => f.len() as u64,
        Response::Stream(s) => s.total as u64,
        Response::Pieces(p) => p.iter().map(|b| b.len() as u64).sum(),
        Response::Fetch(a) => a
            .body
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .filter_map(|p| p.records.as_ref())
            .map(|r| r.len() as u64)
            .sum(),
        Response::Metadata(_) | Response::None => 0,
    }
}

/// The answer with `throttle_time_ms` raised to `next` (KIP-219: the client holds its next
/// Fetch that long); as it is when `next` is zero.
fn throttled(resp: Response, version: i16, next: Duration) -> Response {
    if next.is_zero() {
        return resp;
    }
    match resp {
        Response::Frame(f) => Response::Frame(with_throttle(f, version, next)),
        Response::Pieces(mut p) if !p.is_empty() => {
            // The first piece holds the header and throttle_time_ms.
            p[0] = with_throttle(p[0].clone(), version, next);
            Response::Pieces(p)
        }
        // Decoded by a layer below: changed in place, encoded once on the way out.
        Response::Fetch(mut a) if version >= 1 => {
            let ms = i32::try_from(next.as_millis()).unwrap_or(i32::MAX);
            a.body.throttle_time_ms = a.body.throttle_time_ms.max(ms);
            Response::Fetch(a)
        }
        other => other,
    }
}

/// Ask for at most `max_bytes` in all and per partition.
fn cap_fetch(req: &mut Request, max_bytes: i32) -> Result<(), BoxError> {
    let fetch = req.body::<FetchRequest>()?;
    let over = fetch.max_bytes > max_bytes
        || fetch
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.partition_max_bytes > max_bytes);
    if !over {
        return Ok(());
    }
    let mut capped = FetchRequest::clone(&fetch);
    capped.max_bytes = capped.max_bytes.min(max_bytes);
    for p in capped.topics.iter_mut().flat_map(|t| &mut t.partitions) {
        p.partition_max_bytes = p.partition_max_bytes.min(max_bytes);
    }
    req.set_body(capped)?;
    Ok(())
}

/// The Fetch answer `frame` with `throttle_time_ms` raised to `hold` (the first field of the
/// body from v1 on, right after the response header).
fn with_throttle(frame: Bytes, version: i16, hold: Duration) -> Bytes {
    if version < 1 || frame.len() < 4 {
        return frame;
    }
    let mut body = frame.slice(4..);
    let before = body.len();
    let header_version = ApiKey::Fetch.response_header_version(version);
    if ResponseHeader::decode(&mut body, header_version).is_err() || body.len() < 4 {
        return frame;
    }
    let at = 4 + before - body.len();
    let current = i32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
    let ms = i32::try_from(hold.as_millis()).unwrap_or(i32::MAX);
    if current >= ms {
        return frame;
    }
    let mut out = BytesMut::from(&frame[..]);
    out[at..at + 4].copy_from_slice(&ms.to_be_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::encode_response;
    use kafka_protocol::messages::FetchResponse;

    #[test]
    fn the_throttle_time_is_raised_in_place_at_every_version() {
        // kafka-protocol encodes Fetch responses from v4 (the versions clients send here).
        for version in 4..=18 {
            let header = ResponseHeader::default().with_correlation_id(9);
            let resp = FetchResponse::default().with_throttle_time_ms(5);
            let frame = encode_response(&header, &resp, ApiKey::Fetch, version).unwrap();
            let out = with_throttle(frame.clone(), version, Duration::from_millis(750));
            let mut body = out.slice(4..);
            let h =
                ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(version))
                    .unwrap();
            assert_eq!(h.correlation_id, 9);
            let decoded = FetchResponse::decode(&mut body, version).unwrap();
            assert_eq!(decoded.throttle_time_ms, 750, "v{version}");
            // A broker's larger throttle stays.
            let kept = with_throttle(frame, version, Duration::from_millis(1));
            let mut body = kept.slice(4..);
            ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(version))
                .unwrap();
            assert_eq!(
                FetchResponse::decode(&mut body, version)
                    .unwrap()
                    .throttle_time_ms,
                5
            );
        }
    }

    #[test]
    fn a_decoded_answer_is_throttled_in_place_and_counted_by_its_records() {
        let records = bytes::Bytes::from(vec![7u8; 40_000]);
        let body = FetchResponse::default()
            .with_throttle_time_ms(5)
            .with_responses(vec![
                kafka_protocol::messages::fetch_response::FetchableTopicResponse::default()
                    .with_partitions(vec![
                        kafka_protocol::messages::fetch_response::PartitionData::default()
                            .with_records(Some(records.clone())),
                    ]),
            ]);
        let resp = Response::fetch(ResponseHeader::default(), 12, body);
        assert_eq!(served_bytes(&resp), 40_000);
        let Response::Fetch(a) = throttled(resp, 12, Duration::from_millis(900)) else {
            panic!("stays decoded");
        };
        assert_eq!(a.body.throttle_time_ms, 900);
        let kept = a.body.responses[0].partitions[0].records.as_ref().unwrap();
        assert_eq!(
            kept.as_ptr(),
            records.as_ptr(),
            "the records are not copied"
        );
        let Response::Fetch(a) = throttled(Response::Fetch(a), 12, Duration::from_millis(1)) else {
            panic!("stays decoded");
        };
        assert_eq!(a.body.throttle_time_ms, 900, "a larger throttle stays");
    }
}
