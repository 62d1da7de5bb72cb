//! The OpenAPI 3 document of the REST endpoints, served at
//! `/api/v1/openapi.json`. It is made from the handlers' own annotations and
//! the protocol's types, and the router registers each route together with
//! its entry here (utoipa-axum), so neither can lack what the other has;
//! schemathesis checks the server's answers against it.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// What the document says beyond its paths (which the router adds).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "dyad",
        description = "A 1-on-1 real-time chat server. The WebSocket protocol is in docs/protocol.md."
    ),
    modifiers(&BearerToken)
)]
pub(crate) struct ApiDoc;

/// `Authorization: Bearer <token>`, as `POST /api/v1/sessions` hands out.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON, made once at start-up.
#[derive(Clone)]
pub(crate) struct Document(Arc<str>);

impl Document {
    pub(crate) fn new(openapi: &utoipa::openapi::OpenApi) -> Self {
        let json = openapi.to_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not encode the OpenAPI document");
            "{}".to_owned()
        });
        Document(json.into())
    }
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn serve(document: Document) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document.0.to_string())
}
