//! The HTTP listener at `[server] listen`: `/metrics` (Prometheus text), `/healthz`
//! (every rule keeps polling), `/readyz` (rules loaded, first round done, leading) and
//! `/status` (every rule's figures, and the changed keys that wait for a restart, as
//! JSON). It shares the daemon's shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::status::Observer;

/// How late beyond two polling intervals a rule may be before `/healthz` fails: two
/// call timeouts plus margin.
pub const HEALTH_SLACK: Duration = Duration::from_secs(30);

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    observer: Arc<Observer>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(observer)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

pub fn router(observer: Arc<Observer>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(observer)
}

async fn metrics(State(o): State<Arc<Observer>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], o.encode_metrics())
        .into_response()
}

fn check(result: Result<(), crate::status::NotReady>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn healthz(State(o): State<Arc<Observer>>) -> Response {
    check(o.health(HEALTH_SLACK))
}

async fn readyz(State(o): State<Arc<Observer>>) -> Response {
    check(o.readiness())
}

async fn status(State(o): State<Arc<Observer>>) -> Response {
    let mut body = serde_json::json!({ "rules": o.statuses(), "restart_required": o.restart_required() });
    if let Some(election) = o.election() {
        body["leader_election"] = serde_json::json!(election);
    }
    let groups = o.groups().statuses();
    if !groups.is_empty() {
        body["groups"] = serde_json::json!(groups);
    }
    axum::Json(body).into_response()
}
