//! `GET /api/v1/ws`: the upgrade. It checks the origin, authenticates the
//! token (header, subprotocol or query) and the per-user socket limit, all
//! before upgrading, then hands the socket to [`super::session`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use axum::response::{IntoResponse, Response};
use dyad_protocol::rest::ErrorBody;

use super::session;
use super::{Source, bearer};
use crate::App;
use crate::abuse::Limit;
use crate::errors::ApiError;

/// Frames larger than the limit by this factor end the connection (1009)
/// instead of getting an `error` event.
const HARD_FRAME_FACTOR: usize = 4;

/// `GET /api/v1/ws`: checks the origin, authenticates, then upgrades. A
/// foreign origin gets `403`, a bad token `401`, and a user with all the
/// WebSockets allowed open `429`, all before any upgrade.
#[utoipa::path(get, path = "/api/v1/ws", tag = "real time", security(("bearer" = [])),
    params(("token" = Option<String>, Query, description = "The token, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Upgraded to a WebSocket; see the protocol document for its events"),
        (status = 400, description = "`invalid_parameter`: not a WebSocket upgrade", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: an Origin that is not allowed", body = ErrorBody),
        (status = 429, description = "`too_many_connections`: the user has all the WebSockets allowed open", body = ErrorBody),
    ))]
pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    Source(source): Source,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !origin_allowed(&headers, &app.config.allowed_origins) {
        let origin = headers.get(ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or("?");
        app.guard
            .refused(Limit::Origin, source, &origin.chars().take(200).collect::<String>());
        return ApiError::ForbiddenOrigin.into_response();
    }
    let query_token = query.ok().and_then(|Query(q)| q.get("token").cloned());
    let Some(token) = bearer(&headers)
        .or_else(|| subprotocol_token(&headers))
        .map(str::to_owned)
        .or(query_token)
    else {
        return ApiError::Unauthorized.into_response();
    };
    let session = match app.accounts.authenticate_once(&token).await {
        Ok(session) => session,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return ApiError::InvalidParameter(rejection.body_text()).into_response(),
    };
    let Some(socket_permit) = app.guard.websocket(session.user_id, source) else {
        return ApiError::TooManyConnections(Duration::from_secs(10)).into_response();
    };
    if app.shutdown.is_cancelled() {
        return ApiError::Unavailable(dyad_store::StoreError::Closed).into_response();
    }
    let hard_limit = app.config.max_frame_bytes.saturating_mul(HARD_FRAME_FACTOR);
    let tracker = app.connections.clone();
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(app.config.ws_buffer_bytes)
        .write_buffer_size(app.config.ws_buffer_bytes)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                session::run(socket, app, session).await;
                drop(socket_permit);
            })
        })
}

/// The subprotocol a browser offers along with `bearer.<token>` (browsers
/// cannot set headers on a WebSocket, and a token in the URL ends up in logs).
const SUBPROTOCOL: &str = "dyad.v1";

/// The token offered as a `bearer.<token>` subprotocol, if any.
fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))
}

/// Whether a WebSocket upgrade may come from the page that asked: no
/// `Origin` (not a browser), the server's own origin (same host and port as
/// the request's `Host`), or one listed with `--allowed-origin`.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let origin = origin.trim().trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    let own_host = headers.get(HOST).and_then(|h| h.to_str().ok());
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
        && own_host.is_some_and(|h| h.eq_ignore_ascii_case(host))
}
