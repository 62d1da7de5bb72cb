//! REST request and response bodies under `/api/v1/`.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, MessageView, SessionId, UserId};

/// `POST /api/v1/users` and `POST /api/v1/sessions` body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// 3–32 characters of `a-z 0-9 _ . -` (upper case folds to lower).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.-]{3,32}$"))]
    pub username: String,
    /// 8–128 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 128))]
    pub password: String,
}

/// `DELETE /api/v1/users/me` body: the password, confirmed once more.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordConfirmation {
    /// The account's current password.
    pub password: String,
}

/// `PUT /api/v1/users/me/password` body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordChange {
    /// The password now.
    pub current_password: String,
    /// The new one: 8–128 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 128))]
    pub new_password: String,
}

/// One of the caller's live sessions: a device.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Its id, for `DELETE /api/v1/sessions/{session_id}`.
    pub session_id: SessionId,
    /// When it logged in, ms since the epoch.
    pub created_at: i64,
    /// When its token was last used, ms since the epoch (to the minute).
    pub last_used_at: i64,
    /// Whether it is the session making this request.
    pub current: bool,
}

/// `200` from `GET /api/v1/sessions`: the caller's devices, newest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    /// Live sessions (neither revoked nor expired).
    pub sessions: Vec<SessionView>,
}

/// `201` from `POST /api/v1/users`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    /// The new account.
    pub user_id: UserId,
    /// The folded username.
    pub username: String,
    /// ms since the epoch.
    pub created_at: i64,
}

/// `201` from `POST /api/v1/sessions`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    /// Bearer token; shown once, stored only hashed.
    pub token: String,
    /// Whose.
    pub user_id: UserId,
    /// ms since the epoch.
    pub expires_at: i64,
}

/// `200` from `GET /api/v1/users/by-username/{username}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    /// The account.
    pub user_id: UserId,
    /// Its username.
    pub username: String,
}

/// `200` from `GET /api/v1/messages/{user_id}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Newest first, or oldest first with `after`.
    pub messages: Vec<MessageView>,
    /// Whether another page lies beyond this one.
    pub has_more: bool,
}

/// One entry of `GET /api/v1/conversations`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationView {
    /// The other participant.
    pub user_id: UserId,
    /// Their username.
    pub username: String,
    /// The newest message.
    pub last_message: MessageView,
}

/// `200` from `GET /api/v1/conversations`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationList {
    /// Most recent first.
    pub conversations: Vec<ConversationView>,
}

/// Every REST error: `{"error": {"code", "message"}}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human text.
    pub message: String,
}
