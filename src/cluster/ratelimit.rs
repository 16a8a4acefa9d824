//! A client-side token bucket for one cluster's list and discovery requests, as a tower
//! layer under the kube client. Watches are long-running and must never queue behind a
//! relist burst, so requests with `watch=true` pass untouched.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::Request;
use tokio::sync::Mutex;
use tower::{Layer, Service, ServiceExt};

/// Rate-limits non-watch requests to `qps` per second with bursts of `burst`.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl RateLimitLayer {
    /// `None` when `qps` is 0 (unlimited).
    pub fn new(qps: u32, burst: u32) -> Option<Self> {
        let qps = NonZeroU32::new(qps)?;
        let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
        Some(Self {
            limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(qps).allow_burst(burst),
            )),
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner: Arc::new(Mutex::new(inner)),
            limiter: self.limiter.clone(),
        }
    }
}

/// The service the layer makes. The inner service (kube's boxed stack) is not `Clone`, so it
/// sits behind a mutex held only while a request is handed to it, never while it runs.
pub struct RateLimited<S> {
    inner: Arc<Mutex<S>>,
    limiter: Arc<DefaultDirectRateLimiter>,
}

/// True for watch requests (`?watch=true` / `?watch=1`), which bypass the limit.
pub fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

impl<S, B> Service<Request<B>> for RateLimited<S>
where
    S: Service<Request<B>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited per request, under the lock.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let limiter = self.limiter.clone();
        Box::pin(async move {
            if !is_watch(req.uri()) {
                limiter.until_ready().await;
            }
            let fut = {
                let mut svc = inner.lock().await;
                svc.ready().await?.call(req)
            };
            fut.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_requests_are_recognised() {
        let u = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(is_watch(&u(
            "/api/v1/configmaps?watch=true&resourceVersion=5"
        )));
        assert!(is_watch(&u("/api/v1/configmaps?resourceVersion=5&watch=1")));
        assert!(!is_watch(&u("/api/v1/configmaps?limit=500")));
        assert!(!is_watch(&u("/api/v1/configmaps?watchy=true")));
    }

    // governor waits on real time, not tokio's clock: real (short) durations here.
    #[tokio::test]
    async fn lists_beyond_the_burst_wait_and_watches_do_not() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<()>, ()>();
        let mut svc = RateLimitLayer::new(2, 2).unwrap().layer(svc);
        handle.allow(100);
        let responder = tokio::spawn(async move {
            while let Some((_, send)) = handle.next_request().await {
                send.send_response(());
            }
        });
        let list = || {
            Request::get("/api/v1/configmaps?limit=500")
                .body(())
                .unwrap()
        };
        let watch = || {
            Request::get("/api/v1/configmaps?watch=true")
                .body(())
                .unwrap()
        };
        let start = std::time::Instant::now();
        svc.call(list()).await.unwrap();
        svc.call(list()).await.unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_millis(400),
            "the burst passes"
        );
        for _ in 0..5 {
            svc.call(watch()).await.unwrap();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_millis(400),
            "watches bypass the limit"
        );
        svc.call(list()).await.unwrap();
        assert!(
            start.elapsed() >= std::time::Duration::from_millis(400),
            "the third list waits for a token"
        );
        drop(svc);
        responder.abort();
    }
}
