//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (alive, loops not
//! wedged), `/readyz` (every stream synced, sink reachable; the body says what is not).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::{Telemetry, TelemetryError};

struct AdminState {
    telemetry: Arc<Telemetry>,
    wedged_after: Duration,
}

/// Binds `address` and serves until `shutdown`. Returns the bound address (useful with port 0).
pub async fn serve(
    address: &str,
    telemetry: Arc<Telemetry>,
    wedged_after: Duration,
    shutdown: CancellationToken,
) -> Result<std::net::SocketAddr, TelemetryError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| TelemetryError::Bind {
            address: address.to_owned(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind {
            address: address.to_owned(),
            source,
        })?;
    let state = Arc::new(AdminState {
        telemetry,
        wedged_after,
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(bound)
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.telemetry.metrics.encode(),
    )
}

async fn healthz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let wedged = s.telemetry.health.wedged(s.wedged_after);
    if wedged.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "wedged (no sign of life for {:?}): {}\n",
                s.wedged_after,
                wedged.join(", ")
            ),
        )
    }
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    match s.telemetry.health.readiness() {
        Ok(body) => (StatusCode::OK, body),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
    }
}
