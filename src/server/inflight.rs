//! One limit on calls in flight across all connections (see [`InFlightLimit`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::throttle::Throttled;

/// Health checks answer even at the limit: a monitor must be able to see a busy server.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// At most `max` calls in flight at once, over all connections; one more is answered
/// `RESOURCE_EXHAUSTED` before its request body is read.
///
/// A request is decoded whole (up to `max_text_bytes`) before its handler runs, so
/// without this the memory held by requests is bounded only by
/// `max_connections × max_concurrent_streams × max_text_bytes`.
#[derive(Clone)]
pub struct InFlightLimit {
    permits: Arc<Semaphore>,
    max: usize,
    refusals: Arc<Mutex<Throttled>>,
}

impl InFlightLimit {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            refusals: Arc::new(Mutex::new(Throttled::new())),
        }
    }
}

impl<S> Layer<S> for InFlightLimit {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    limit: InFlightLimit,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for InFlight<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if request.uri().path().starts_with(EXEMPT_PREFIX) {
            return Box::pin(inner.call(request));
        }
        let Ok(permit) = self.limit.permits.clone().try_acquire_owned() else {
            let max = self.limit.max;
            let due = match self.limit.refusals.lock() {
                Ok(mut throttle) => throttle.due(),
                Err(poisoned) => poisoned.into_inner().due(),
            };
            if let Some(skipped) = due {
                tracing::warn!(
                    method = request.uri().path(),
                    skipped,
                    "refused a call: max_calls_in_flight ({max}) calls are in flight"
                );
            }
            let status = Status::resource_exhausted(format!(
                "server busy: max_calls_in_flight ({max}) calls are in flight; retry later"
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        Box::pin(async move {
            let response = inner.call(request).await;
            drop(permit);
            response
        })
    }
}
