//! The types that flow through the request stack ([`crate::layers::stack`]): a [`Request`] is one
//! whole frame from a client plus what was read from its header and who sent it; a
//! [`Response`] is the frame to send back, or nothing (Produce with `acks=0`). A leaf for the
//! layers: it imports no layer and no stack.
//!
//! Decode once, encode once:
//! - [`Request::body`] decodes the body on the first call by any layer and shares the result
//!   with every layer below (Fetch: attribution decodes it, governance and routing read it).
//! - [`Request::set_body`] is the one way to change a request. The new body replaces the
//!   cached one at once; the frame is encoded from it only when it is asked for
//!   ([`Request::frame`], at the upstream boundary), once, behind the client's own header
//!   bytes. A Fetch that governance strips, the budget layer caps and routing splits is
//!   encoded once per request that leaves for a broker, not once per layer.
//! - A layer that decodes a response and changes it hands it on decoded
//!   ([`Response::Fetch`], [`Response::Metadata`]); the layers above read and change the same
//!   value, and it is encoded once, when it leaves for the client ([`Response::encoded`]).

use std::any::Any;
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, MetadataResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::brokers::upstream::StreamedFrame;
use crate::consumers::decision::Consumer;
use crate::error::{BoxError, PolicyDecodeError};
use crate::wire::protocol::RequestMeta;

pub use crate::consumers::identity::{ConnInfo, ListenerKind};

/// One request from a client.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) meta: RequestMeta,
    /// The whole frame as the client sent it, size prefix included; behind a changed body
    /// it still holds the client's header bytes. Read it through [`Request::frame`].
    frame: Bytes,
    pub(crate) conn: Arc<ConnInfo>,
    /// A layer needs the whole response frame (it decodes it). When `false`, a large
    /// response may be forwarded cut-through ([`Response::Stream`]) as it arrives.
    pub(crate) whole_response: bool,
    /// For a read (Fetch, ListOffsets) from a consumer: who is reading (the group tie, the
    /// group's tier and budget). Decided ONCE per request, by the decision layer, before any
    /// policy layer sees the request; attribution, governance, the budget layer and routing
    /// read it and never decide again.
    pub(crate) consumer: Option<Arc<Consumer>>,
    /// The body, decoded at most once (see [`Request::body`]).
    body: Body,
    /// Set by [`Request::set_body`]: the body differs from `frame`'s and is encoded on the
    /// first call to [`Request::frame`].
    changed: Option<Arc<Changed>>,
}

/// A body a layer replaced, and its frame once something asked for it.
struct Changed {
    body: Arc<dyn EncodeBody>,
    frame: OnceLock<Result<Bytes, Arc<str>>>,
}

impl std::fmt::Debug for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.frame.get().is_some() {
            "changed, encoded"
        } else {
            "changed"
        })
    }
}

/// A message body that can be encoded without knowing its type.
trait EncodeBody: Send + Sync {
    fn encode_into(&self, buf: &mut BytesMut, version: i16) -> anyhow::Result<()>;
}

impl<T: Encodable + Send + Sync> EncodeBody for T {
    fn encode_into(&self, buf: &mut BytesMut, version: i16) -> anyhow::Result<()> {
        self.encode(buf, version)
    }
}

/// A request body decoded on first use by any layer and shared by every layer below it (and
/// by every clone of the request). A decode error is kept too, so that every layer sees the
/// same answer.
#[derive(Clone, Default)]
struct Body(Arc<OnceLock<Decoded>>);

/// A decoded body of some message type, or why it could not be decoded.
type Decoded = Result<Arc<dyn Any + Send + Sync>, Arc<str>>;

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0.get() {
            None => "not decoded",
            Some(Ok(_)) => "decoded",
            Some(Err(_)) => "undecodable",
        };
        f.write_str(state)
    }
}

impl Request {
    pub fn new(meta: RequestMeta, frame: Bytes, conn: Arc<ConnInfo>) -> Request {
        Request {
            meta,
            frame,
            conn,
            whole_response: false,
            consumer: None,
            body: Body::default(),
            changed: None,
        }
    }

    /// The frame to forward, size prefix included: the client's own bytes, or, when a layer
    /// changed the body, the client's header bytes and the new body, encoded on the first
    /// call and kept for every later one (and every clone).
    pub(crate) fn frame(&self) -> anyhow::Result<Bytes> {
        let Some(changed) = &self.changed else {
            return Ok(self.frame.clone());
        };
        changed
            .frame
            .get_or_init(|| {
                self.encode(&*changed.body)
                    .map_err(|e| Arc::from(e.to_string()))
            })
            .clone()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The body's bytes in [`Request::frame`] (for a layer that reads a part of the body
    /// without decoding it all).
    pub(crate) fn body_bytes(&self) -> anyhow::Result<Bytes> {
        let offset = self.body_offset()?;
        Ok(self.frame()?.slice(offset..))
    }

    fn body_offset(&self) -> anyhow::Result<usize> {
        self.meta
            .body_offset
            .filter(|o| *o <= self.frame.len())
            .ok_or_else(|| anyhow::anyhow!("the request header could not be read"))
    }

    /// The body as `T`, the message type of this request's API: decoded on the first call by
    /// any layer, then shared. Asking for another type than the first caller did decodes
    /// again, uncached (a bug, but not a wrong answer).
    pub(crate) fn body<T: Decodable + Send + Sync + 'static>(&self) -> anyhow::Result<Arc<T>> {
        let decoded = self.body.0.get_or_init(|| {
            self.decode::<T>()
                .map(|b| b as Arc<dyn Any + Send + Sync>)
                .map_err(|e| Arc::from(e.to_string()))
        });
        match decoded {
            Ok(any) => match any.clone().downcast::<T>() {
                Ok(body) => Ok(body),
                Err(_) => self.decode::<T>(),
            },
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    }

    fn decode<T: Decodable>(&self) -> anyhow::Result<Arc<T>> {
        let mut buf = self.body_bytes()?;
        Ok(Arc::new(T::decode(&mut buf, self.meta.api_version)?))
    }

    /// Replace the body: `body` becomes the decoded body the layers below see, and the frame
    /// is encoded from it when [`Request::frame`] is first called. Fails (before anything
    /// changes) only when the client's header could not be read.
    pub(crate) fn set_body<T: Encodable + Send + Sync + 'static>(
        &mut self,
        body: T,
    ) -> anyhow::Result<()> {
        self.body_offset()?;
        let body = Arc::new(body);
        let cell = OnceLock::new();
        let _ = cell.set(Ok(body.clone() as Arc<dyn Any + Send + Sync>));
        self.body = Body(Arc::new(cell));
        self.changed = Some(Arc::new(Changed {
            body,
            frame: OnceLock::new(),
        }));
        Ok(())
    }

    /// `body` behind the client's own header bytes, size prefix included.
    fn encode(&self, body: &dyn EncodeBody) -> anyhow::Result<Bytes> {
        let offset = self.body_offset()?;
        let mut buf = BytesMut::with_capacity(self.frame.len());
        buf.put_i32(0);
        buf.extend_from_slice(&self.frame[crate::wire::protocol::LEN_PREFIX..offset]);
        body.encode_into(&mut buf, self.meta.api_version)?;
        let len = i32::try_from(buf.len() - crate::wire::protocol::LEN_PREFIX)?;
        buf[..crate::wire::protocol::LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        Ok(buf.freeze())
    }
}

/// What goes back to the client.
#[derive(Debug)]
pub enum Response {
    /// A whole response frame, size prefix included.
    Frame(Bytes),
    /// A large response forwarded as it arrives (only when the request allowed it).
    Stream(StreamedFrame),
    /// A whole response frame in pieces (size prefix included in the first), written one
    /// after the other without being joined: a merged tiered Fetch answer whose record sets
    /// are slices of the secondary's responses ([`crate::wire::pieces`]).
    Pieces(Vec<Bytes>),
    /// A Fetch answer a layer decoded (routing's merged tiered answer, or one governance
    /// added refused partitions to): read and changed in place by the layers above, encoded
    /// once on its way to the client, around its record sets ([`crate::wire::pieces`]).
    Fetch(Box<Answer<FetchResponse>>),
    /// A Metadata answer the rewrite layer decoded to point its brokers at Tollgate:
    /// attribution reads it as it is, and it is encoded once on its way to the client.
    Metadata(Box<Answer<MetadataResponse>>),
    /// No response is due (Produce with `acks=0`).
    None,
}

/// A decoded response: its header, its body and the version both are read and written at.
#[derive(Debug)]
pub struct Answer<T> {
    pub(crate) header: ResponseHeader,
    pub(crate) version: i16,
    pub(crate) body: T,
    /// A Fetch answer the routing layer merged: the (topic, partition) pairs the secondary
    /// cluster served (the routing outcome, for attribution above). Empty otherwise.
    pub(crate) from_secondary: std::collections::HashSet<(String, i32)>,
}

impl<T> Answer<T> {
    pub(crate) fn new(header: ResponseHeader, version: i16, body: T) -> Box<Answer<T>> {
        Box::new(Answer {
            header,
            version,
            body,
            from_secondary: Default::default(),
        })
    }
}

impl Response {
    /// A decoded Fetch answer.
    pub(crate) fn fetch(header: ResponseHeader, version: i16, body: FetchResponse) -> Response {
        Response::Fetch(Answer::new(header, version, body))
    }

    /// The response as bytes for the client: a decoded answer is encoded (once; a Fetch
    /// answer around its record sets, without copying them), anything else is as it is.
    pub(crate) fn encoded(self) -> anyhow::Result<Response> {
        Ok(match self {
            Response::Fetch(a) => {
                let mut pieces = crate::wire::pieces::encode_fetch(&a.header, a.body, a.version)?;
                if pieces.len() == 1 {
                    Response::Frame(pieces.remove(0))
                } else {
                    Response::Pieces(pieces)
                }
            }
            Response::Metadata(a) => Response::Frame(crate::wire::protocol::encode_response(
                &a.header,
                &a.body,
                ApiKey::Metadata,
                a.version,
            )?),
            other => other,
        })
    }
}

/// The answer of a policy layer to a request it must read and cannot: a
/// [`PolicyDecodeError`] (the connection is closed, as for a malformed frame).
pub(crate) fn policy_decode(
    api: &'static str,
    version: i16,
    reason: impl std::fmt::Display,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, BoxError>> + Send>> {
    let err: BoxError = Box::new(PolicyDecodeError {
        api,
        version,
        reason: reason.to_string(),
    });
    Box::pin(async move { Err(err) })
}

/// A request as a client at 10.0.0.1 would send it (correlation id 7), for the layers' unit
/// tests: `key` at `version`, with `client_id` in its header and on its connection.
#[cfg(test)]
pub(crate) fn test_request<T: Encodable>(
    key: ApiKey,
    version: i16,
    client_id: Option<&str>,
    body: &T,
) -> Request {
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::StrBytes;
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(client_id.map(|c| StrBytes::from_string(c.to_string())));
    let frame = crate::wire::protocol::encode_request(&header, body).expect("encodes");
    let meta = crate::wire::protocol::parse_request(&frame).expect("parses");
    let conn = Arc::new(ConnInfo::new(
        1,
        "10.0.0.1:5000".parse().expect("address"),
        ListenerKind::Bootstrap,
    ));
    conn.observe_request(&meta, &frame);
    Request::new(meta, frame, conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::request::ListenerKind;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn fetch_request(partitions: &[i32]) -> Request {
        let body = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|p| FetchPartition::default().with_partition(*p))
                        .collect(),
                )]);
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(12)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("me")));
        let frame = crate::wire::protocol::encode_request(&header, &body).unwrap();
        let meta = crate::wire::protocol::parse_request(&frame).unwrap();
        let conn = Arc::new(ConnInfo::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            ListenerKind::Bootstrap,
        ));
        Request::new(meta, frame, conn)
    }

    #[test]
    fn the_body_is_decoded_once_and_shared_by_clones() {
        let req = fetch_request(&[0, 1]);
        let first = req.body::<FetchRequest>().unwrap();
        let copy = req.clone();
        let again = copy.body::<FetchRequest>().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "decoded once");
        assert_eq!(first.topics[0].partitions.len(), 2);
    }

    #[test]
    fn a_replaced_body_is_what_the_frame_says_and_keeps_the_header() {
        let mut req = fetch_request(&[0, 1, 2]);
        let mut fewer = FetchRequest::clone(&req.body::<FetchRequest>().unwrap());
        fewer.topics[0].partitions.truncate(1);
        req.set_body(fewer.clone()).unwrap();
        assert_eq!(*req.body::<FetchRequest>().unwrap(), fewer);
        // The new frame decodes to the same body, behind the client's own header.
        let frame = req.frame().unwrap();
        let meta = crate::wire::protocol::parse_request(&frame).unwrap();
        assert_eq!(meta.correlation_id, 7);
        assert_eq!(meta.client_id.as_deref(), Some("me"));
        let fresh = Request::new(meta, frame, req.conn.clone());
        assert_eq!(*fresh.body::<FetchRequest>().unwrap(), fewer);
    }

    #[test]
    fn a_body_changed_twice_is_encoded_once_when_the_frame_is_asked_for() {
        let mut req = fetch_request(&[0, 1, 2]);
        let original = req.frame().unwrap();
        let mut body = FetchRequest::clone(&req.body::<FetchRequest>().unwrap());
        body.topics[0].partitions.truncate(2);
        req.set_body(body.clone()).unwrap();
        body.topics[0].partitions.truncate(1);
        req.set_body(body.clone()).unwrap();
        assert!(
            req.changed.as_ref().unwrap().frame.get().is_none(),
            "not encoded yet"
        );
        let copy = req.clone();
        let frame = copy.frame().unwrap();
        assert!(frame.len() < original.len());
        // Encoded once: the request and its clone share the one frame.
        let again = req.frame().unwrap();
        assert_eq!(frame.as_ptr(), again.as_ptr());
        let meta = crate::wire::protocol::parse_request(&frame).unwrap();
        let fresh = Request::new(meta, frame, req.conn.clone());
        assert_eq!(*fresh.body::<FetchRequest>().unwrap(), body);
        assert_eq!(
            req.body_bytes().unwrap(),
            again.slice(req.meta.body_offset.unwrap()..)
        );
    }

    #[test]
    fn an_unchanged_request_forwards_the_clients_bytes() {
        let req = fetch_request(&[0]);
        let _ = req.body::<FetchRequest>().unwrap();
        assert_eq!(req.frame().unwrap().as_ptr(), req.frame.as_ptr());
    }

    #[test]
    fn an_undecodable_body_is_an_error_for_every_layer() {
        let req = fetch_request(&[0]);
        let cut = req.frame.len() - 3;
        let broken = Request::new(req.meta.clone(), req.frame.slice(..cut), req.conn.clone());
        assert!(broken.body::<FetchRequest>().is_err());
        assert!(broken.body::<FetchRequest>().is_err());
    }
}
