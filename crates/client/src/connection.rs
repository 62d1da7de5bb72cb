//! The WebSocket side: one connection, typed events in and out.

use dyad_protocol::events::SendMessage;
use dyad_protocol::{ClientEvent, ConnectionId, MessageId, ServerEvent, UserId};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;

/// An open WebSocket, past its `connected` frame.
#[derive(Debug)]
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The authenticated user.
    pub user_id: UserId,
    /// This connection's id.
    pub connection_id: ConnectionId,
    /// The server's heartbeat interval.
    pub heartbeat_interval_ms: u64,
}

impl Connection {
    /// Connects to `base_url` (http or https) with `token` in the header.
    pub async fn open(base_url: &str, token: &str) -> Result<Connection, ClientError> {
        let url = if let Some(rest) = base_url.strip_prefix("http") {
            format!("ws{rest}/api/v1/ws")
        } else {
            return Err(ClientError::Url(base_url.to_owned()));
        };
        let mut request = url.into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| ClientError::Url(e.to_string()))?;
        request.headers_mut().insert("authorization", bearer);
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let mut conn = Connection {
            ws,
            user_id: UserId(0),
            connection_id: ConnectionId(0),
            heartbeat_interval_ms: 0,
        };
        match conn.next_event().await? {
            ServerEvent::Connected {
                user_id,
                connection_id,
                heartbeat_interval_ms,
                ..
            } => {
                conn.user_id = user_id;
                conn.connection_id = connection_id;
                conn.heartbeat_interval_ms = heartbeat_interval_ms;
                Ok(conn)
            }
            other => Err(ClientError::Url(format!("expected `connected` first, got {other:?}"))),
        }
    }

    /// Sends one event.
    pub async fn send(&mut self, event: &ClientEvent) -> Result<(), ClientError> {
        let text = serde_json::to_string(event)?;
        self.send_raw(&text).await
    }

    /// Sends a text frame as is (for tests of bad input).
    pub async fn send_raw(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a message.
    pub async fn send_message(
        &mut self,
        recipient_id: UserId,
        message: &str,
        client_msg_id: Option<&str>,
    ) -> Result<(), ClientError> {
        self.send(&ClientEvent::SendMessage(SendMessage {
            recipient_id,
            message: message.to_owned(),
            client_timestamp: None,
            client_msg_id: client_msg_id.map(str::to_owned),
        }))
        .await
    }

    /// Acknowledges delivery of messages.
    pub async fn delivery_ack(&mut self, message_ids: Vec<MessageId>) -> Result<(), ClientError> {
        self.send(&ClientEvent::DeliveryAck { message_ids }).await
    }

    /// The next event. Pings are answered on the way; a close frame becomes
    /// [`ClientError::Closed`].
    pub async fn next_event(&mut self) -> Result<ServerEvent, ClientError> {
        loop {
            let Some(message) = self.ws.next().await else {
                return Err(ClientError::Closed {
                    code: 1006,
                    reason: "connection dropped".into(),
                });
            };
            match message? {
                Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
                Message::Close(frame) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string()));
                    return Err(ClientError::Closed { code, reason });
                }
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Closes the connection with a normal close frame.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }
}
