//! The gateway: the HTTP routes (REST, WebSocket upgrade, operations, the
//! browser client) over the services. Handlers stay thin: decode, call a
//! service, encode.

mod frames;
mod openapi;
mod ops;
mod rest;
mod session;
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
use axum::routing::get;
use dyad_store::SessionRecord;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::App;
use crate::abuse::source_address;
use crate::errors::ApiError;
use crate::listener::TcpPeer;

/// The largest request body any route takes (credentials, mostly).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Every route the server answers.
pub(crate) fn router(app: Arc<App>) -> Router {
    // The API's routes and its OpenAPI document come from the same list,
    // so that neither can name a route the other lacks.
    let (api, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(rest::register))
        .routes(routes!(rest::login))
        .routes(routes!(rest::logout))
        .routes(routes!(rest::sessions))
        .routes(routes!(rest::revoke_session))
        .routes(routes!(rest::change_password))
        .routes(routes!(rest::settings, rest::update_settings))
        .routes(routes!(rest::block, rest::unblock))
        .routes(routes!(rest::blocks))
        .routes(routes!(rest::delete_account))
        .routes(routes!(rest::user_by_username))
        .routes(routes!(rest::user_status))
        .routes(routes!(rest::history))
        .routes(routes!(rest::conversations))
        .routes(routes!(rest::search))
        .routes(routes!(ws::upgrade))
        .split_for_parts();
    let document = openapi::Document::new(&document);
    api.route("/api/v1/openapi.json", get(move || openapi::serve(document.clone())))
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
