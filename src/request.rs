//! The types that flow through the request stack ([`crate::stack`]): a [`Request`] is one
//! whole frame from a client plus what was read from its header and who sent it; a
//! [`Response`] is the frame to send back, or nothing (Produce with `acks=0`). A leaf for the
//! layers: it imports no layer and no stack.

use std::sync::Arc;

use bytes::Bytes;

use crate::groups::Binding;
use crate::protocol::RequestMeta;
use crate::upstream::StreamedFrame;

pub use crate::identity::{ConnInfo, ListenerKind};

/// One request from a client.
#[derive(Debug, Clone)]
pub struct Request {
    pub meta: RequestMeta,
    /// The whole frame, size prefix included.
    pub frame: Bytes,
    pub conn: Arc<ConnInfo>,
    /// A layer needs the whole response frame (it decodes it). When `false`, a large
    /// response may be forwarded cut-through ([`Response::Stream`]) as it arrives.
    pub whole_response: bool,
    /// What the routing layer tells the layers above it about this request.
    pub routed: Arc<Routed>,
    /// For a read (Fetch, ListOffsets) from a consumer: the group the reading connection
    /// belongs to. Decided ONCE per request, by the attribution layer (which holds the
    /// connection's whole fetch session), before any layer below sees the request;
    /// governance, routing and the lag view read it and never decide again.
    pub tie: Option<Arc<Binding>>,
}

/// Filled by the routing layer: the (topic, partition) pairs of a Fetch that the secondary
/// cluster answered. Unset: all came from the primary.
#[derive(Debug, Default)]
pub struct Routed {
    pub secondary: std::sync::OnceLock<std::collections::HashSet<(String, i32)>>,
}

impl Request {
    pub fn new(meta: RequestMeta, frame: Bytes, conn: Arc<ConnInfo>) -> Request {
        Request {
            meta,
            frame,
            conn,
            whole_response: false,
            routed: Arc::default(),
            tie: None,
        }
    }
}

/// What goes back to the client.
#[derive(Debug)]
pub enum Response {
    /// A whole response frame, size prefix included.
    Frame(Bytes),
    /// A large response forwarded as it arrives (only when the request allowed it).
    Stream(StreamedFrame),
    /// No response is due (Produce with `acks=0`).
    None,
}
