//! REST handlers under `/api/v1/`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use dyad_protocol::UserId;
use dyad_protocol::events::PresenceView;
use dyad_protocol::rest::{
    ConversationList, ConversationView, Credentials, HistoryPage, SessionCreated, UserCreated, UserSummary,
};
use dyad_store::PageRequest;

use super::{Authed, Source};
use crate::App;
use crate::abuse::Limit;
use crate::domain::Username;
use crate::errors::ApiError;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn credentials(body: Result<Json<Credentials>, JsonRejection>) -> Result<Credentials, ApiError> {
    body.map(|Json(c)| c).map_err(|e| ApiError::InvalidBody(e.body_text()))
}

/// `POST /api/v1/users`: register.
pub(crate) async fn register(
    State(app): State<Arc<App>>,
    Source(source): Source,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<(StatusCode, Json<UserCreated>), ApiError> {
    if !app.config.registration_open {
        app.guard.refused(Limit::RegistrationClosed, source, "");
        return Err(ApiError::RegistrationClosed);
    }
    let c = credentials(body)?;
    Ok((
        StatusCode::CREATED,
        Json(app.accounts.register(&c.username, &c.password, source).await?),
    ))
}

/// `POST /api/v1/sessions`: log in.
pub(crate) async fn login(
    State(app): State<Arc<App>>,
    Source(source): Source,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<(StatusCode, Json<SessionCreated>), ApiError> {
    let c = credentials(body)?;
    Ok((
        StatusCode::CREATED,
        Json(app.accounts.login(&c.username, &c.password, source).await?),
    ))
}

/// `DELETE /api/v1/sessions/current`: log out; the token's sockets close.
pub(crate) async fn logout(State(app): State<Arc<App>>, Authed(session): Authed) -> Result<StatusCode, ApiError> {
    app.accounts.logout(&session).await?;
    app.hub.close_session(session.user_id, session.id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/users/by-username/{username}`: find a user.
pub(crate) async fn user_by_username(
    State(app): State<Arc<App>>,
    Authed(_): Authed,
    Path(username): Path<String>,
) -> Result<Json<UserSummary>, ApiError> {
    let name = Username::parse(&username).map_err(|_| ApiError::UserNotFound)?;
    let user = app
        .store
        .user_by_username(name.as_str())
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok(Json(UserSummary {
        user_id: user.id,
        username: user.username,
    }))
}

/// `GET /api/v1/users/{user_id}/status`: online, or when last seen.
pub(crate) async fn user_status(
    State(app): State<Arc<App>>,
    Authed(_): Authed,
    Path(user_id): Path<String>,
) -> Result<Json<PresenceView>, ApiError> {
    let user = user_id.parse::<UserId>().map_err(|_| ApiError::UserNotFound)?;
    Ok(Json(app.hub.presence(user).await?.ok_or(ApiError::UserNotFound)?))
}

/// `GET /api/v1/messages/{user_id}`: a page of the conversation with that user.
pub(crate) async fn history(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
    Path(user_id): Path<String>,
    params: Params,
) -> Result<Json<HistoryPage>, ApiError> {
    let page = page_request(params)?;
    let peer = user_id.parse::<UserId>().map_err(|_| ApiError::UserNotFound)?;
    let page = app.store.history(session.user_id, peer, page).await?;
    // A page with messages proves the peer exists; only an empty one needs
    // the lookup that tells "no such user" from "nothing yet".
    if page.messages.is_empty() {
        app.store.user_by_id(peer).await?.ok_or(ApiError::UserNotFound)?;
    }
    Ok(Json(HistoryPage {
        messages: page.messages.iter().map(|m| m.view()).collect(),
        has_more: page.has_more,
    }))
}

/// `GET /api/v1/conversations`: the caller's conversations, most recent first.
pub(crate) async fn conversations(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
    params: Params,
) -> Result<Json<ConversationList>, ApiError> {
    let params = params.map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    let limit = int_param(&params, "limit", 1, 1000)?.unwrap_or(100) as usize;
    let list = app.store.conversations(session.user_id, limit).await?;
    Ok(Json(ConversationList {
        conversations: list
            .into_iter()
            .map(|c| ConversationView {
                user_id: c.peer_id,
                username: c.peer_username,
                last_message: c.last_message.view(),
            })
            .collect(),
    }))
}

fn page_request(params: Params) -> Result<PageRequest, ApiError> {
    let params = params.map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    let limit = int_param(&params, "limit", 1, 100)?.unwrap_or(50) as usize;
    let before = int_param(&params, "before", i64::MIN, i64::MAX)?;
    let after = int_param(&params, "after", i64::MIN, i64::MAX)?;
    match (before, after) {
        (Some(_), Some(_)) => Err(ApiError::InvalidParameter("give `before` or `after`, not both".into())),
        (_, Some(after)) => Ok(PageRequest::After { after, limit }),
        (before, None) => Ok(PageRequest::Before { before, limit }),
    }
}

/// An optional integer parameter within `[min, max]`.
fn int_param(params: &HashMap<String, String>, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    let Some(raw) = params.get(name) else { return Ok(None) };
    match raw.parse::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
        _ if min == i64::MIN => Err(ApiError::InvalidParameter(format!(
            "`{name}` must be an integer (ms since the epoch)"
        ))),
        _ => Err(ApiError::InvalidParameter(format!(
            "`{name}` must be an integer from {min} to {max}"
        ))),
    }
}
