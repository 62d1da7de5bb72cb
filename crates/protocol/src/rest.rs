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

/// Who sees a user online, and their `last_seen`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceVisibility {
    /// Anyone.
    #[default]
    Everyone,
    /// Users they share a conversation with.
    Contacts,
    /// Nobody: everyone sees them offline, last seen never.
    Nobody,
}

impl PresenceVisibility {
    /// The name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceVisibility::Everyone => "everyone",
            PresenceVisibility::Contacts => "contacts",
            PresenceVisibility::Nobody => "nobody",
        }
    }

    /// The value a stored name stands for (`everyone` for anything else).
    pub fn from_stored(name: &str) -> Self {
        match name {
            "contacts" => PresenceVisibility::Contacts,
            "nobody" => PresenceVisibility::Nobody,
            _ => PresenceVisibility::Everyone,
        }
    }
}

/// A user's settings: `GET` and `PATCH /api/v1/users/me/settings`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Whether read marks cross between this user and others (both must allow).
    pub read_receipts: bool,
    /// Who sees this user online.
    pub presence: PresenceVisibility,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            read_receipts: true,
            presence: PresenceVisibility::Everyone,
        }
    }
}

/// `PATCH /api/v1/users/me/settings` body: any of the settings.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// New `read_receipts`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_receipts: Option<bool>,
    /// New `presence`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceVisibility>,
}

/// One user the caller blocks.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockView {
    /// Whom.
    pub user_id: UserId,
    /// Their username.
    pub username: String,
    /// Since when, ms since the epoch.
    pub blocked_at: i64,
}

/// `200` from `GET /api/v1/blocks`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockList {
    /// Most recent first.
    pub blocks: Vec<BlockView>,
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
    /// Messages from them above the caller's read mark.
    #[serde(default)]
    pub unread_count: i64,
    /// The caller's read mark: the `seq` up to which they have read (0: none).
    #[serde(default)]
    pub last_read_seq: i64,
    /// Their read mark, if both allow read receipts; otherwise 0.
    #[serde(default)]
    pub peer_last_read_seq: i64,
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
