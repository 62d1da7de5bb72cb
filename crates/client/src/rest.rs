//! The REST side: accounts, sessions, history, status, conversations.

use dyad_protocol::events::PresenceView;
use dyad_protocol::rest::{
    BlockList, ConversationList, Credentials, ErrorBody, HistoryPage, PasswordChange, PasswordConfirmation,
    SessionCreated, SessionList, Settings, SettingsPatch, UserCreated, UserSummary,
};
use dyad_protocol::{ErrorCode, SessionId, UserId};
use std::sync::Arc;

use reqwest::{Method, RequestBuilder, Response};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::de::DeserializeOwned;

use crate::{ClientError, Connection};

/// A client of one server, optionally logged in.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    user_id: Option<UserId>,
    /// For WebSockets to an `https://` server with an extra trusted authority.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').to_owned(),
            token: None,
            user_id: None,
            tls: None,
        }
    }

    /// The same client, also trusting the certificate authority (or
    /// self-signed certificate) in `pem`, beside the system's roots: for an
    /// `https://` server whose certificate the system does not know.
    pub fn trusting(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        let tls = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            // An unreadable system certificate is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::Tls("no certificate in the PEM given".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = reqwest::Client::builder();
        for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| tls(&e))? {
            http = http.add_root_certificate(cert);
        }
        self.http = http.build().map_err(|e| tls(&e))?;
        self.tls = Some(Arc::new(config));
        Ok(self)
    }

    /// A client whose connections all come from the local address `local`
    /// (tests stand in for different clients with 127.0.0.2, 127.0.0.3, …).
    pub fn from_address(base_url: &str, local: std::net::IpAddr) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .local_address(local)
            .build()
            .map_err(|e| ClientError::Url(e.to_string()))?;
        Ok(Client {
            http,
            ..Client::new(base_url)
        })
    }

    /// The same client, using `token` for its calls.
    pub fn with_token(mut self, token: impl Into<String>, user_id: UserId) -> Self {
        self.token = Some(token.into());
        self.user_id = Some(user_id);
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The bearer token, once logged in.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The logged-in user.
    pub fn user_id(&self) -> Option<UserId> {
        self.user_id
    }

    /// `POST /api/v1/users`.
    pub async fn register(&self, username: &str, password: &str) -> Result<UserCreated, ClientError> {
        let body = Credentials {
            username: username.into(),
            password: password.into(),
        };
        decode(self.request(Method::POST, "/api/v1/users").json(&body).send().await?).await
    }

    /// `POST /api/v1/sessions`; keeps the token for later calls.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<SessionCreated, ClientError> {
        let body = Credentials {
            username: username.into(),
            password: password.into(),
        };
        let session: SessionCreated = decode(
            self.request(Method::POST, "/api/v1/sessions")
                .json(&body)
                .send()
                .await?,
        )
        .await?;
        self.token = Some(session.token.clone());
        self.user_id = Some(session.user_id);
        Ok(session)
    }

    /// `DELETE /api/v1/sessions/current`.
    pub async fn logout(&self) -> Result<(), ClientError> {
        let response = self.authed(Method::DELETE, "/api/v1/sessions/current")?.send().await?;
        check(response).await.map(drop)
    }

    /// `GET /api/v1/sessions`: this user's devices, newest first.
    pub async fn sessions(&self) -> Result<SessionList, ClientError> {
        decode(self.authed(Method::GET, "/api/v1/sessions")?.send().await?).await
    }

    /// `DELETE /api/v1/sessions/{session_id}`: logs that device out.
    pub async fn revoke_session(&self, session: SessionId) -> Result<(), ClientError> {
        let path = format!("/api/v1/sessions/{session}");
        let response = self.authed(Method::DELETE, &path)?.send().await?;
        check(response).await.map(drop)
    }

    /// `PUT /api/v1/users/me/password`: every other device is logged out.
    pub async fn change_password(&self, current: &str, new: &str) -> Result<(), ClientError> {
        let body = PasswordChange {
            current_password: current.into(),
            new_password: new.into(),
        };
        let response = self
            .authed(Method::PUT, "/api/v1/users/me/password")?
            .json(&body)
            .send()
            .await?;
        check(response).await.map(drop)
    }

    /// `GET /api/v1/users/me/settings`.
    pub async fn settings(&self) -> Result<Settings, ClientError> {
        decode(self.authed(Method::GET, "/api/v1/users/me/settings")?.send().await?).await
    }

    /// `PATCH /api/v1/users/me/settings`: changes the fields given.
    pub async fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings, ClientError> {
        let request = self.authed(Method::PATCH, "/api/v1/users/me/settings")?.json(patch);
        decode(request.send().await?).await
    }

    /// `PUT /api/v1/blocks/{user_id}`.
    pub async fn block(&self, user: UserId) -> Result<(), ClientError> {
        let response = self
            .authed(Method::PUT, &format!("/api/v1/blocks/{user}"))?
            .send()
            .await?;
        check(response).await.map(drop)
    }

    /// `DELETE /api/v1/blocks/{user_id}`.
    pub async fn unblock(&self, user: UserId) -> Result<(), ClientError> {
        let response = self
            .authed(Method::DELETE, &format!("/api/v1/blocks/{user}"))?
            .send()
            .await?;
        check(response).await.map(drop)
    }

    /// `GET /api/v1/blocks`: the users this user blocks, most recent first.
    pub async fn blocks(&self) -> Result<BlockList, ClientError> {
        decode(self.authed(Method::GET, "/api/v1/blocks")?.send().await?).await
    }

    /// `DELETE /api/v1/users/me`: deletes the account, given its password.
    pub async fn delete_account(&self, password: &str) -> Result<(), ClientError> {
        let body = PasswordConfirmation {
            password: password.into(),
        };
        let response = self
            .authed(Method::DELETE, "/api/v1/users/me")?
            .json(&body)
            .send()
            .await?;
        check(response).await.map(drop)
    }

    /// `GET /api/v1/users/by-username/{username}`.
    pub async fn user_by_username(&self, username: &str) -> Result<UserSummary, ClientError> {
        let path = format!("/api/v1/users/by-username/{username}");
        decode(self.authed(Method::GET, &path)?.send().await?).await
    }

    /// `GET /api/v1/users/{user_id}/status`.
    pub async fn status(&self, user: UserId) -> Result<PresenceView, ClientError> {
        decode(
            self.authed(Method::GET, &format!("/api/v1/users/{user}/status"))?
                .send()
                .await?,
        )
        .await
    }

    /// `GET /api/v1/messages/{user_id}` with raw query parameters
    /// (`before`, `after`, `limit`).
    pub async fn history(&self, peer: UserId, query: &[(&str, String)]) -> Result<HistoryPage, ClientError> {
        let request = self
            .authed(Method::GET, &format!("/api/v1/messages/{peer}"))?
            .query(query);
        decode(request.send().await?).await
    }

    /// `GET /api/v1/search?q=…`, with optional `before` and `limit`.
    pub async fn search(&self, query: &[(&str, String)]) -> Result<HistoryPage, ClientError> {
        let request = self.authed(Method::GET, "/api/v1/search")?.query(query);
        decode(request.send().await?).await
    }

    /// `GET /api/v1/conversations`.
    pub async fn conversations(&self) -> Result<ConversationList, ClientError> {
        decode(self.authed(Method::GET, "/api/v1/conversations")?.send().await?).await
    }

    /// Opens the WebSocket and waits for `connected`.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NotLoggedIn)?;
        Connection::open_with(&self.base, token, self.tls.clone()).await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    fn authed(&self, method: Method, path: &str) -> Result<RequestBuilder, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NotLoggedIn)?;
        Ok(self.request(method, path).bearer_auth(token))
    }
}

async fn check(response: Response) -> Result<Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await?;
    Err(match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: ErrorCode::Internal,
            message: text,
        },
    })
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let bytes = check(response).await?.bytes().await?;
    Ok(serde_json::from_slice(&bytes)?)
}
