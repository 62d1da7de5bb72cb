//! The gateway: the HTTP routes (REST, WebSocket upgrade, operations, the
//! browser client) over the services. Handlers stay thin: decode, call a
//! service, encode.

mod ops;
mod rest;
mod web;
mod ws;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use dyad_store::SessionRecord;

use crate::App;
use crate::abuse::source_address;
use crate::errors::ApiError;
use crate::listener::TcpPeer;

/// The largest request body any route takes (credentials, mostly).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Every route the server answers.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v1/users", post(rest::register))
        .route("/api/v1/sessions", post(rest::login))
        .route("/api/v1/sessions/current", delete(rest::logout))
        .route("/api/v1/users/by-username/{username}", get(rest::user_by_username))
        .route("/api/v1/users/{user_id}/status", get(rest::user_status))
        .route("/api/v1/messages/{user_id}", get(rest::history))
        .route("/api/v1/conversations", get(rest::conversations))
        .route("/api/v1/ws", get(ws::upgrade))
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/app.css", get(web::stylesheet))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// The bearer token of a request, if its `Authorization` header has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller's live session; extracting it answers `401 unauthorized` when
/// the token is missing, unknown, expired or revoked.
pub(crate) struct Authed(pub SessionRecord);

impl FromRequestParts<Arc<App>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        Ok(Authed(app.accounts.authenticate(token).await?))
    }
}

/// The client's address: the TCP peer's, or behind a trusted proxy the
/// address it forwards for (see [`source_address`]).
pub(crate) struct Source(pub IpAddr);

impl FromRequestParts<Arc<App>> for Source {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<TcpPeer>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
        Ok(Source(source_address(
            peer,
            &parts.headers,
            &app.config.trusted_proxies,
        )))
    }
}
