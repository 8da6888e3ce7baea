//! The decision layer: makes the consumer decision ([`crate::consumers::decision`]) once
//! for each read request and puts it on the request ([`Request::consumer`]) for every layer
//! below. A read tied to no group may wait here for the tier view first; every other request
//! passes untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use kafka_protocol::messages::{ApiKey, FetchRequest, ListOffsetsRequest};

use crate::consumers::decision::{Decider, FetchSession, Read};
use crate::error::BoxError;
use crate::layers::request::{Request, Response};

/// Builds [`DecisionService`] for one connection, around that connection's fetch session.
#[derive(Clone)]
pub struct DecisionLayer {
    decider: Arc<Decider>,
    session: Arc<FetchSession>,
}

impl DecisionLayer {
    pub fn new(decider: Arc<Decider>, session: Arc<FetchSession>) -> Self {
        Self { decider, session }
    }
}

impl<S> Layer<S> for DecisionLayer {
    type Service = DecisionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DecisionService {
            inner,
            decider: self.decider.clone(),
            session: self.session.clone(),
        }
    }
}

/// The decision layer around one connection's inner service.
#[derive(Clone)]
pub struct DecisionService<S> {
    inner: S,
    decider: Arc<Decider>,
    session: Arc<FetchSession>,
}

impl<S> Service<Request> for DecisionService<S>
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
        let Some(what) = read_of(&req) else {
            return Box::pin(self.inner.call(req));
        };
        let Some(mut read) = self.decider.tie(&self.session, &what, &req.conn) else {
            return Box::pin(self.inner.call(req));
        };
        if read.wait_until.is_none() {
            // The common case: decided at once; the inner service is called now.
            req.consumer = Some(Arc::new(self.decider.decide(read)));
            return Box::pin(self.inner.call(req));
        }
        // Waiting: the clone takes this (ready) service's place; the ready one answers later.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let (decider, session) = (self.decider.clone(), self.session.clone());
        Box::pin(async move {
            decider.wait(&session, &what, &req.conn, &mut read).await;
            req.consumer = Some(Arc::new(decider.decide(read)));
            inner.call(req).await
        })
    }
}

/// The request as a consumer read: Fetch or ListOffsets, its body decoded (what does not
/// decode is left to the layers below, which forward it or count it).
fn read_of(req: &Request) -> Option<Read> {
    req.meta.body_offset?;
    match req.meta.api? {
        ApiKey::Fetch => req.body::<FetchRequest>().ok().map(Read::Fetch),
        ApiKey::ListOffsets => req.body::<ListOffsetsRequest>().ok().map(Read::ListOffsets),
        _ => None,
    }
}
