//! Operational endpoints: liveness, readiness, metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::App;

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: storage (and Redis, on a cluster node) answer; 503 says
/// what is down.
pub(crate) async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut body = json!({"status": "ready", "storage": "up"});
    let mut ready = true;
    if let Err(e) = app.store.ping().await {
        body["storage"] = json!("down");
        body["detail"] = json!(e.to_string());
        ready = false;
    }
    if app.config.cluster.is_some() {
        body["redis"] = json!("up");
        if let Err(e) = app.hub.ping().await {
            body["redis"] = json!("down");
            body["redis_detail"] = json!(e.to_string());
            ready = false;
        }
    }
    if !ready {
        body["status"] = json!("not_ready");
    } else if app.shutdown.is_cancelled() {
        body["status"] = json!("shutting_down");
        ready = false;
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
}
