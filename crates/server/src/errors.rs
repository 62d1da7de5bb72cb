//! Error policy.
//!
//! Inside the server, failures are typed: [`ApiError`] for what a REST call
//! can answer, [`AccountError`] for the account service,
//! [`dyad_store::StoreError`] for storage. Each maps to exactly one
//! wire [`ErrorCode`] and HTTP status here, at the edge, and nowhere else.
//! A storage failure is never shown to a client as anything but
//! `unavailable`; its detail goes to the log.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dyad_protocol::ErrorCode;
use dyad_protocol::rest::{ErrorBody, ErrorDetail};
use dyad_store::StoreError;

use crate::accounts::AccountError;

/// Everything a REST call can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad username.
    #[error("username must be 3-32 characters of a-z 0-9 _ . -")]
    InvalidUsername,
    /// Bad password.
    #[error("password must be 8-128 characters")]
    InvalidPassword,
    /// Name in use.
    #[error("that username is taken")]
    UsernameTaken,
    /// Wrong name or password.
    #[error("wrong username or password")]
    InvalidCredentials,
    /// Login throttle.
    #[error("too many failed logins for this username; retry in {} s", retry_secs(.0))]
    TooManyAttempts(Duration),
    /// A per-address limit (registrations, login attempts, the hashing queue).
    #[error("too many requests from your address; retry in {} s", retry_secs(.0))]
    TooManyRequests(Duration),
    /// Too many open connections (a user's WebSockets).
    #[error("too many open connections; close one or retry in {} s", retry_secs(.0))]
    TooManyConnections(Duration),
    /// `--registration closed`.
    #[error("registration is closed on this server; ask its operator for an account")]
    RegistrationClosed,
    /// A WebSocket upgrade from an origin that is not allowed.
    #[error("WebSocket connections from this origin are not allowed")]
    ForbiddenOrigin,
    /// No valid token.
    #[error("missing, unknown, expired or revoked token")]
    Unauthorized,
    /// No such user.
    #[error("no such user")]
    UserNotFound,
    /// A bad query parameter; the text says which.
    #[error("{0}")]
    InvalidParameter(String),
    /// A body that is not the expected JSON; the text says why.
    #[error("{0}")]
    InvalidBody(String),
    /// No such route.
    #[error("no such route")]
    NotFound,
    /// No such live session of the caller's.
    #[error("no such session")]
    SessionNotFound,
    /// Storage is down.
    #[error("storage is unavailable; retry later")]
    Unavailable(#[source] StoreError),
    /// A bug or a broken invariant.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidUsername => ErrorCode::InvalidUsername,
            ApiError::InvalidPassword => ErrorCode::InvalidPassword,
            ApiError::UsernameTaken => ErrorCode::UsernameTaken,
            ApiError::InvalidCredentials => ErrorCode::InvalidCredentials,
            ApiError::TooManyAttempts(_) => ErrorCode::TooManyAttempts,
            ApiError::TooManyRequests(_) => ErrorCode::TooManyRequests,
            ApiError::TooManyConnections(_) => ErrorCode::TooManyConnections,
            ApiError::RegistrationClosed => ErrorCode::RegistrationClosed,
            ApiError::ForbiddenOrigin => ErrorCode::Forbidden,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::UserNotFound => ErrorCode::UserNotFound,
            ApiError::InvalidParameter(_) => ErrorCode::InvalidParameter,
            ApiError::InvalidBody(_) => ErrorCode::InvalidBody,
            ApiError::NotFound | ApiError::SessionNotFound => ErrorCode::NotFound,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidUsername
            | ApiError::InvalidPassword
            | ApiError::InvalidParameter(_)
            | ApiError::InvalidBody(_) => StatusCode::BAD_REQUEST,
            ApiError::UsernameTaken => StatusCode::CONFLICT,
            ApiError::InvalidCredentials | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooManyAttempts(_) | ApiError::TooManyRequests(_) | ApiError::TooManyConnections(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::RegistrationClosed | ApiError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            ApiError::UserNotFound | ApiError::NotFound | ApiError::SessionNotFound => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1 (`Retry-After`).
fn retry_secs(wait: &Duration) -> u64 {
    wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => ApiError::UsernameTaken,
            other => ApiError::Unavailable(other),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidUsername => ApiError::InvalidUsername,
            AccountError::InvalidPassword => ApiError::InvalidPassword,
            AccountError::UsernameTaken => ApiError::UsernameTaken,
            AccountError::InvalidCredentials => ApiError::InvalidCredentials,
            AccountError::Throttled(wait) => ApiError::TooManyAttempts(wait),
            AccountError::Limited(wait) => ApiError::TooManyRequests(wait),
            AccountError::Unauthorized => ApiError::Unauthorized,
            AccountError::NoSuchSession => ApiError::SessionNotFound,
            AccountError::Store(e) => ApiError::from(e),
            AccountError::Internal(why) => ApiError::Internal(why),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "storage unavailable"),
            ApiError::Internal(e) => tracing::error!(error = %e, "internal error"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let ApiError::TooManyAttempts(wait) | ApiError::TooManyRequests(wait) | ApiError::TooManyConnections(wait) =
            self
            && let Ok(v) = HeaderValue::from_str(&retry_secs(&wait).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}
