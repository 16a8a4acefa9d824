//! Priority and fairness, as a tower layer under every cluster client (it replaces kube's
//! default retry, so that each throttled attempt is seen): a `429 Too Many Requests` is sent
//! again after max(`Retry-After`, an exponential backoff 250 ms → 30 s), without end — lists,
//! discovery and watch starts alike wait for their seat rather than fail; a `503` / `504`
//! (an API server restarting, a timeout behind a proxy) is sent again up to five times. Every
//! response's flow-schema and priority-level headers go to the debug log, and each 429 is
//! counted (`kubewire_api_throttled_total`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use tokio::sync::Mutex;
use tower::{Layer, Service, ServiceExt};

/// Called once per throttled (429) attempt.
pub type OnThrottled = Arc<dyn Fn() + Send + Sync>;

/// The smallest wait after a 429 without a usable `Retry-After`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The largest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Attempts of a request answered 503 or 504 before that answer is returned.
const UNAVAILABLE_ATTEMPTS: u32 = 5;

/// Makes [`Throttled`] services for one cluster.
#[derive(Clone)]
pub struct ThrottleLayer {
    cluster: Arc<str>,
    on_throttled: Option<OnThrottled>,
}

impl ThrottleLayer {
    /// For the cluster named `cluster`; `on_throttled` counts 429s (the metric).
    pub fn new(cluster: &str, on_throttled: Option<OnThrottled>) -> Self {
        Self {
            cluster: cluster.into(),
            on_throttled,
        }
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttled<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttled {
            inner: Arc::new(Mutex::new(inner)),
            cluster: self.cluster.clone(),
            on_throttled: self.on_throttled.clone(),
        }
    }
}

/// The service the layer makes. The inner service (kube's boxed stack) is not `Clone`, so it
/// sits behind a mutex held only while a request is handed to it, never while it runs.
pub struct Throttled<S> {
    inner: Arc<Mutex<S>>,
    cluster: Arc<str>,
    on_throttled: Option<OnThrottled>,
}

/// How long to wait before sending again after `status`, at attempt `attempt` (1-based);
/// `None`: return the response as it is.
pub fn retry_delay(
    status: StatusCode,
    retry_after: Option<Duration>,
    attempt: u32,
) -> Option<Duration> {
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    match status {
        // Never sooner than the server asked.
        StatusCode::TOO_MANY_REQUESTS => Some(backoff.max(retry_after.unwrap_or_default())),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            if attempt < UNAVAILABLE_ATTEMPTS =>
        {
            Some(backoff.max(retry_after.unwrap_or_default()))
        }
        _ => None,
    }
}

/// `Retry-After` in seconds (the API server's form; an HTTP date is ignored).
fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    let value = response.headers().get(http::header::RETRY_AFTER)?;
    value
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

fn header<'a, B>(response: &'a Response<B>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A copy of `req` to send again; `None` when its body cannot be copied.
fn copy(req: &Request<Body>) -> Option<Request<Body>> {
    let mut copy = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version())
        .body(req.body().try_clone()?)
        .ok()?;
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

impl<S, ResB> Service<Request<Body>> for Throttled<S>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    ResB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited per attempt, under the lock.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let cluster = self.cluster.clone();
        let on_throttled = self.on_throttled.clone();
        Box::pin(async move {
            let mut next = Some(req);
            let mut attempt = 0u32;
            loop {
                let req = next.take().expect("a request to send");
                let again = copy(&req);
                let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                attempt += 1;
                let fut = {
                    let mut svc = inner.lock().await;
                    svc.ready().await?.call(req)
                };
                let response = fut.await?;
                let status = response.status();
                let flow_schema = header(&response, "X-Kubernetes-PF-FlowSchema-UID");
                if !flow_schema.is_empty() {
                    tracing::debug!(%cluster, %method, %path, status = status.as_u16(), flow_schema, priority_level = header(&response, "X-Kubernetes-PF-PriorityLevel-UID"), "API response (priority and fairness)");
                }
                if status == StatusCode::TOO_MANY_REQUESTS
                    && let Some(count) = &on_throttled
                {
                    count();
                }
                let delay = retry_delay(status, retry_after(&response), attempt);
                match (delay, again) {
                    (Some(delay), Some(again)) => {
                        tracing::debug!(%cluster, %method, %path, status = status.as_u16(), attempt, ?delay, "API server asked to wait; sending again");
                        tokio::time::sleep(delay).await;
                        next = Some(again);
                    }
                    _ => return Ok(response),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_429_waits_at_least_retry_after_and_at_least_the_backoff() {
        let s = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            retry_delay(s, Some(Duration::from_secs(3)), 1),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_delay(s, None, 1), Some(FIRST_BACKOFF));
        assert_eq!(
            retry_delay(s, Some(Duration::ZERO), 3),
            Some(FIRST_BACKOFF * 4)
        );
        assert_eq!(
            retry_delay(s, None, 40),
            Some(MAX_BACKOFF),
            "without end, capped"
        );
    }

    #[test]
    fn unavailable_is_retried_a_few_times_and_other_answers_never() {
        let s = StatusCode::SERVICE_UNAVAILABLE;
        assert!(retry_delay(s, None, UNAVAILABLE_ATTEMPTS - 1).is_some());
        assert_eq!(retry_delay(s, None, UNAVAILABLE_ATTEMPTS), None);
        for s in [
            StatusCode::OK,
            StatusCode::FORBIDDEN,
            StatusCode::GONE,
            StatusCode::NOT_FOUND,
        ] {
            assert_eq!(retry_delay(s, None, 1), None, "{s}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_request_is_sent_again_after_retry_after_and_counted() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<()>>();
        let throttled = Arc::new(AtomicU32::new(0));
        let count = throttled.clone();
        let mut svc = ThrottleLayer::new(
            "test",
            Some(Arc::new(move || {
                count.fetch_add(1, Ordering::Relaxed);
            })),
        )
        .layer(svc);
        let server = tokio::spawn(async move {
            let mut sent_at = Vec::new();
            for answer in [429u16, 429, 200] {
                let (req, send) = handle.next_request().await.expect("a request");
                assert_eq!(req.uri().path(), "/api/v1/configmaps");
                sent_at.push(tokio::time::Instant::now());
                let mut response = Response::new(());
                *response.status_mut() = StatusCode::from_u16(answer).unwrap();
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, "2".parse().unwrap());
                send.send_response(response);
            }
            sent_at
        });
        let req = Request::get("/api/v1/configmaps?limit=500")
            .body(Body::empty())
            .unwrap();
        let response = svc.call(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let sent_at = server.await.unwrap();
        for pair in sent_at.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_secs(2),
                "never sooner than Retry-After"
            );
        }
        assert_eq!(throttled.load(Ordering::Relaxed), 2);
    }
}
