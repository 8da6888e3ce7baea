//! The outermost layer: counts and times every request by Kafka API, and counts the requests
//! that ended in an error (which closes the client connection) by API and reason.
//!
//! It sits outside every policy layer so it also sees requests those layers answer themselves,
//! and it classifies errors with [`crate::error::reason`], so the label is the real cause.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use crate::error::{self, BoxError};
use crate::layers::request::{Request, Response};
use crate::metrics::Metrics;
use crate::wire::protocol::api_name;

/// Builds [`MetricsService`]: the outermost layer, counting and timing every request.
#[derive(Clone)]
pub(crate) struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The metrics layer around one connection's stack: requests by API, their latency, and
/// failures by classified reason.
#[derive(Clone)]
pub(crate) struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request> for MetricsService<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let api_key = req.meta.api_key;
        let m = self.metrics.api(api_key);
        m.requests.inc();
        let duration = m.duration.clone();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            duration.observe(start.elapsed().as_secs_f64());
            if let Err(e) = &result {
                metrics
                    .request_errors
                    .with_label_values(&[api_name(api_key), error::reason(e.as_ref())])
                    .inc();
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::request::{ConnInfo, ListenerKind};
    use crate::wire::protocol::RequestMeta;
    use bytes::Bytes;
    use tower::ServiceExt;

    pub(crate) fn request(api_key: i16) -> Request {
        Request::new(
            RequestMeta {
                api_key,
                api: kafka_protocol::messages::ApiKey::try_from(api_key).ok(),
                api_version: 0,
                correlation_id: 1,
                client_id: None,
                body_offset: None,
                expects_response: true,
            },
            Bytes::new(),
            Arc::new(ConnInfo::new(
                1,
                "127.0.0.1:1".parse().unwrap(),
                ListenerKind::Bootstrap,
            )),
        )
    }

    #[tokio::test]
    async fn counts_requests_and_classified_errors() {
        let metrics = Arc::new(Metrics::new());
        let ok = tower::service_fn(|_r: Request| async { Ok::<_, BoxError>(Response::None) });
        MetricsLayer::new(metrics.clone())
            .layer(ok)
            .oneshot(request(3))
            .await
            .unwrap();
        let failing = tower::service_fn(|_r: Request| async {
            Err::<Response, BoxError>(Box::new(crate::brokers::upstream::UpstreamError::Closed {
                addr: "b:1".into(),
            }))
        });
        let _ = MetricsLayer::new(metrics.clone())
            .layer(failing)
            .oneshot(request(1))
            .await;
        let text = metrics.render();
        assert!(text.contains("tollgate_requests_total{api=\"Metadata\"} 1"));
        assert!(text.contains("tollgate_requests_total{api=\"Fetch\"} 1"));
        assert!(text.contains("tollgate_request_errors_total{api=\"Fetch\",reason=\"closed\"} 1"));
        assert!(text.contains("tollgate_request_duration_seconds_count{api=\"Metadata\"} 1"));
    }
}
