//! REST request and response bodies under `/api/v1/`.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, MessageView, UserId};

/// `POST /api/v1/users` and `POST /api/v1/sessions` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// 3–32 characters of `a-z 0-9 _ . -` (upper case folds to lower).
    pub username: String,
    /// 8–128 characters.
    pub password: String,
}

/// `201` from `POST /api/v1/users`.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    /// The account.
    pub user_id: UserId,
    /// Its username.
    pub username: String,
}

/// `200` from `GET /api/v1/messages/{user_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Newest first, or oldest first with `after`.
    pub messages: Vec<MessageView>,
    /// Whether another page lies beyond this one.
    pub has_more: bool,
}

/// One entry of `GET /api/v1/conversations`.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationList {
    /// Most recent first.
    pub conversations: Vec<ConversationView>,
}

/// Every REST error: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human text.
    pub message: String,
}
