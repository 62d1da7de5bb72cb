//! REST handlers under `/api/v1/`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use dyad_protocol::SessionId;
use dyad_protocol::UserId;
use dyad_protocol::events::PresenceView;
use dyad_protocol::rest::{
    BlockList, ConversationList, ConversationView, Credentials, ErrorBody, HistoryPage, PasswordChange,
    PasswordConfirmation, SessionCreated, SessionList, Settings, SettingsPatch, UserCreated, UserSummary,
};
use dyad_store::{Page, PageRequest};

use super::{Authed, Source};
use crate::App;
use crate::abuse::Limit;
use crate::bus::Revoked;
use crate::domain::{SearchText, Username};
use crate::errors::ApiError;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// A JSON body, or `invalid_body` saying why not.
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| ApiError::InvalidBody(e.body_text()))
}

/// `POST /api/v1/users`: register.
#[utoipa::path(post, path = "/api/v1/users", tag = "accounts", request_body = Credentials,
    responses(
        (status = 201, description = "Registered", body = UserCreated),
        (status = 400, description = "`invalid_username`, `invalid_password` or `invalid_body`", body = ErrorBody),
        (status = 403, description = "`registration_closed`", body = ErrorBody),
        (status = 409, description = "`username_taken`", body = ErrorBody),
        (status = 429, description = "`too_many_requests` (per address); see `Retry-After`", body = ErrorBody),
    ))]
pub(crate) async fn register(
    State(app): State<Arc<App>>,
    Source(source): Source,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<(StatusCode, Json<UserCreated>), ApiError> {
    if !app.config.registration_open {
        app.guard.refused(Limit::RegistrationClosed, source, "");
        return Err(ApiError::RegistrationClosed);
    }
    let c: Credentials = json_body(body)?;
    Ok((
        StatusCode::CREATED,
        Json(app.accounts.register(&c.username, &c.password, source).await?),
    ))
}

/// `POST /api/v1/sessions`: log in.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "accounts", request_body = Credentials,
    responses(
        (status = 201, description = "Logged in", body = SessionCreated),
        (status = 400, description = "`invalid_body`", body = ErrorBody),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
        (status = 429, description = "`too_many_attempts` or `too_many_requests`; see `Retry-After`", body = ErrorBody),
    ))]
pub(crate) async fn login(
    State(app): State<Arc<App>>,
    Source(source): Source,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<(StatusCode, Json<SessionCreated>), ApiError> {
    let c: Credentials = json_body(body)?;
    Ok((
        StatusCode::CREATED,
        Json(app.accounts.login(&c.username, &c.password, source).await?),
    ))
}

/// `DELETE /api/v1/sessions/current`: log out; the token's sockets close.
#[utoipa::path(delete, path = "/api/v1/sessions/current", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out; the token's WebSockets are closed"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
pub(crate) async fn logout(State(app): State<Arc<App>>, Authed(session): Authed) -> Result<StatusCode, ApiError> {
    app.accounts.logout(&session).await?;
    app.hub.close_revoked(session.user_id, Revoked::Session(session.id));
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/sessions`: the caller's devices.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's live sessions, newest first", body = SessionList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
pub(crate) async fn sessions(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
) -> Result<Json<SessionList>, ApiError> {
    Ok(Json(app.accounts.sessions(&session).await?))
}

/// `DELETE /api/v1/sessions/{session_id}`: log one of the caller's devices out.
#[utoipa::path(delete, path = "/api/v1/sessions/{session_id}", tag = "accounts", security(("bearer" = [])),
    params(("session_id" = String, Path, description = "From `GET /api/v1/sessions`")),
    responses(
        (status = 204, description = "Revoked as by a logout; its WebSockets are closed"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such live session of the caller's", body = ErrorBody),
    ))]
pub(crate) async fn revoke_session(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let target = session_id.parse::<SessionId>().map_err(|_| ApiError::SessionNotFound)?;
    app.accounts.revoke(&session, target).await?;
    app.hub.close_revoked(session.user_id, Revoked::Session(target));
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/users/me/password`: change the password; other devices are logged out.
#[utoipa::path(put, path = "/api/v1/users/me/password", tag = "accounts", security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; every other session is revoked and its WebSockets closed"),
        (status = 400, description = "`invalid_password` or `invalid_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`, or `invalid_credentials` for a wrong current password", body = ErrorBody),
        (status = 429, description = "`too_many_attempts` or `too_many_requests`; see `Retry-After`", body = ErrorBody),
    ))]
pub(crate) async fn change_password(
    State(app): State<Arc<App>>,
    Source(source): Source,
    Authed(session): Authed,
    body: Result<Json<PasswordChange>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let body = json_body(body)?;
    let ended = app
        .accounts
        .change_password(&session, &body.current_password, &body.new_password, source)
        .await?;
    for id in ended {
        app.hub.close_revoked(session.user_id, Revoked::Session(id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/users/me/settings`: the caller's settings.
#[utoipa::path(get, path = "/api/v1/users/me/settings", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 200, description = "The settings", body = Settings),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
pub(crate) async fn settings(State(app): State<Arc<App>>, Authed(session): Authed) -> Result<Json<Settings>, ApiError> {
    let me = app.store.user_by_id(session.user_id).await?;
    Ok(Json(me.ok_or(ApiError::Unauthorized)?.settings))
}

/// `PATCH /api/v1/users/me/settings`: change some settings.
#[utoipa::path(patch, path = "/api/v1/users/me/settings", tag = "accounts", security(("bearer" = [])),
    request_body = SettingsPatch,
    responses(
        (status = 200, description = "Every setting, after the change", body = Settings),
        (status = 400, description = "`invalid_parameter`: an unknown field or value", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
pub(crate) async fn update_settings(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
    body: Result<Json<SettingsPatch>, JsonRejection>,
) -> Result<Json<Settings>, ApiError> {
    let patch = body
        .map(|Json(p)| p)
        .map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    let settings = app
        .store
        .update_settings(session.user_id, patch)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if patch.presence.is_some() {
        app.hub.visibility_changed(session.user_id);
    }
    Ok(Json(settings))
}

/// `PUT /api/v1/blocks/{user_id}`: block a user.
#[utoipa::path(put, path = "/api/v1/blocks/{user_id}", tag = "users", security(("bearer" = [])),
    params(("user_id" = String, Path)),
    responses(
        (status = 204, description = "Blocked (again, if already): neither can send to the other, typing is not \
            relayed, and each sees the other offline"),
        (status = 400, description = "`invalid_parameter`: yourself", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn block(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_block(&app, session.user_id, &user_id, Some(crate::clock::now_ms())).await
}

/// `DELETE /api/v1/blocks/{user_id}`: stop blocking a user.
#[utoipa::path(delete, path = "/api/v1/blocks/{user_id}", tag = "users", security(("bearer" = [])),
    params(("user_id" = String, Path)),
    responses(
        (status = 204, description = "Not blocked (any more)"),
        (status = 400, description = "`invalid_parameter`: yourself", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn unblock(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_block(&app, session.user_id, &user_id, None).await
}

async fn set_block(app: &Arc<App>, me: UserId, other: &str, at: Option<i64>) -> Result<StatusCode, ApiError> {
    let other = other.parse::<UserId>().map_err(|_| ApiError::UserNotFound)?;
    if other == me {
        return Err(ApiError::InvalidParameter("you cannot block yourself".into()));
    }
    if !app.store.set_block(me, other, at).await? {
        return Err(ApiError::UserNotFound);
    }
    app.hub.blocks_changed(me, other);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/blocks`: the users the caller blocks.
#[utoipa::path(get, path = "/api/v1/blocks", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "Most recent first", body = BlockList),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
pub(crate) async fn blocks(State(app): State<Arc<App>>, Authed(session): Authed) -> Result<Json<BlockList>, ApiError> {
    Ok(Json(BlockList {
        blocks: app.store.blocks_of(session.user_id).await?,
    }))
}

/// `DELETE /api/v1/users/me`: delete the caller's account.
#[utoipa::path(delete, path = "/api/v1/users/me", tag = "accounts", security(("bearer" = [])),
    request_body = PasswordConfirmation,
    responses(
        (status = 204, description = "Deleted: every session is revoked and its WebSockets closed; the name is free; \
            the peers keep the messages exchanged"),
        (status = 400, description = "`invalid_body`", body = ErrorBody),
        (status = 401, description = "`unauthorized`, or `invalid_credentials` for a wrong password", body = ErrorBody),
        (status = 429, description = "`too_many_attempts` or `too_many_requests`; see `Retry-After`", body = ErrorBody),
    ))]
pub(crate) async fn delete_account(
    State(app): State<Arc<App>>,
    Source(source): Source,
    Authed(session): Authed,
    body: Result<Json<PasswordConfirmation>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let body = json_body(body)?;
    app.accounts.delete_account(&session, &body.password, source).await?;
    app.hub.close_revoked(session.user_id, Revoked::Account);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/users/by-username/{username}`: find a user.
#[utoipa::path(get, path = "/api/v1/users/by-username/{username}", tag = "users", security(("bearer" = [])),
    params(("username" = String, Path, description = "Any case")),
    responses(
        (status = 200, description = "Found", body = UserSummary),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
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
#[utoipa::path(get, path = "/api/v1/users/{user_id}/status", tag = "users", security(("bearer" = [])),
    params(("user_id" = String, Path)),
    responses(
        (status = 200, description = "Online, or when last seen", body = PresenceView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn user_status(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
    Path(user_id): Path<String>,
) -> Result<Json<PresenceView>, ApiError> {
    let user = user_id.parse::<UserId>().map_err(|_| ApiError::UserNotFound)?;
    let view = app.hub.presence_for(session.user_id, user).await?;
    Ok(Json(view.ok_or(ApiError::UserNotFound)?))
}

/// `GET /api/v1/messages/{user_id}`: a page of the conversation with that user.
#[utoipa::path(get, path = "/api/v1/messages/{user_id}", tag = "messages", security(("bearer" = [])),
    params(
        ("user_id" = String, Path, description = "The other participant"),
        ("before" = Option<i64>, Query, description = "Exclusive bound, ms; the newest messages older than it, newest first"),
        ("after" = Option<i64>, Query, description = "Exclusive bound, ms; the oldest messages newer than it, oldest first"),
        ("changed_since" = Option<i64>, Query, description = "Exclusive bound, ms; the messages edited or deleted after it, any age, in order of change"),
        ("limit" = Option<i64>, Query, description = "1-100, default 50", minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "A page", body = HistoryPage),
        (status = 400, description = "`invalid_parameter`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
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
    Ok(Json(history_page(&page)))
}

/// `GET /api/v1/conversations`: the caller's conversations, most recent first.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "messages", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, description = "1-1000, default 100", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "Most recent first", body = ConversationList),
        (status = 400, description = "`invalid_parameter`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
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
                unread_count: c.unread_count,
                last_read_seq: c.last_read_seq,
                peer_last_read_seq: c.peer_last_read_seq,
            })
            .collect(),
    }))
}

/// `GET /api/v1/search`: the caller's own messages holding every word of
/// `q`, newest first.
#[utoipa::path(get, path = "/api/v1/search", tag = "messages", security(("bearer" = [])),
    params(
        ("q" = String, Query, description = "Words to find (1-16 words, at most 256 characters): whole words, any case"),
        ("before" = Option<i64>, Query, description = "Exclusive bound, ms; matches older than it"),
        ("limit" = Option<i64>, Query, description = "1-100, default 50", minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "Newest first", body = HistoryPage),
        (status = 400, description = "`invalid_parameter`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ))]
pub(crate) async fn search(
    State(app): State<Arc<App>>,
    Authed(session): Authed,
    params: Params,
) -> Result<Json<HistoryPage>, ApiError> {
    let params = params.map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    let limit = int_param(&params, "limit", 1, 100)?.unwrap_or(50) as usize;
    let before = int_param(&params, "before", i64::MIN, i64::MAX)?;
    let text = params.get("q").and_then(|q| SearchText::parse(q)).ok_or_else(|| {
        ApiError::InvalidParameter(format!(
            "`q` must hold 1-{} words of letters or digits, at most {} characters",
            SearchText::MAX_WORDS,
            SearchText::MAX_CHARS
        ))
    })?;
    let page = app.store.search(session.user_id, &text, before, limit).await?;
    Ok(Json(history_page(&page)))
}

/// A page of messages as the API answers it (history and search alike).
fn history_page(page: &Page) -> HistoryPage {
    HistoryPage {
        messages: page.messages.iter().map(|m| m.view()).collect(),
        has_more: page.has_more,
    }
}

fn page_request(params: Params) -> Result<PageRequest, ApiError> {
    let params = params.map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    let limit = int_param(&params, "limit", 1, 100)?.unwrap_or(50) as usize;
    let before = int_param(&params, "before", i64::MIN, i64::MAX)?;
    let after = int_param(&params, "after", i64::MIN, i64::MAX)?;
    let changed_since = int_param(&params, "changed_since", i64::MIN, i64::MAX)?;
    match (before, after, changed_since) {
        (None, None, Some(since)) => Ok(PageRequest::ChangedSince { since, limit }),
        (_, _, Some(_)) | (Some(_), Some(_), None) => Err(ApiError::InvalidParameter(
            "give one of `before`, `after` and `changed_since`".into(),
        )),
        (_, Some(after), None) => Ok(PageRequest::After { after, limit }),
        (before, None, None) => Ok(PageRequest::Before { before, limit }),
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
