//! The WebSocket side: one connection, typed events in and out.

use dyad_protocol::events::SendMessage;
use dyad_protocol::{ClientEvent, ConnectionId, MessageId, ServerEvent, UserId};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{Message, WebSocketConfig};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::ClientError;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Chat frames are small: modest buffers keep thousands of connections cheap
/// (and the read buffer is zeroed before every read, so a big one costs
/// time on every frame).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(0)
}

fn request(
    base_url: &str,
    token: &str,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ClientError> {
    let Some(rest) = base_url.strip_prefix("http") else {
        return Err(ClientError::Url(base_url.to_owned()));
    };
    let mut request = format!("ws{rest}/api/v1/ws").into_client_request()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| ClientError::Url(e.to_string()))?;
    request.headers_mut().insert("authorization", bearer);
    Ok(request)
}

/// A TCP connection to `remote` from the local address `local`. The port
/// is chosen at connect time, per 4-tuple: reserving one at bind time scans
/// every port in use and stalls past ~10k connections from one address.
pub async fn tcp_from(remote: SocketAddr, local: IpAddr) -> std::io::Result<TcpStream> {
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    #[cfg(target_os = "linux")]
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(remote).await
}

/// The sending half of a split [`Connection`].
#[derive(Debug)]
pub struct Sender {
    sink: SplitSink<Ws, Message>,
}

impl Sender {
    /// Sends one event.
    pub async fn send(&mut self, event: &ClientEvent) -> Result<(), ClientError> {
        self.sink.send(Message::text(serde_json::to_string(event)?)).await?;
        Ok(())
    }

    /// Queues one event without flushing; call [`Sender::flush`] after a batch.
    pub async fn feed(&mut self, event: &ClientEvent) -> Result<(), ClientError> {
        self.sink.feed(Message::text(serde_json::to_string(event)?)).await?;
        Ok(())
    }

    /// Flushes what [`Sender::feed`] queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.sink.flush().await?;
        Ok(())
    }

    /// Closes the connection with a normal close frame.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.sink.close().await?;
        Ok(())
    }
}

/// The receiving half of a split [`Connection`].
#[derive(Debug)]
pub struct Receiver {
    stream: SplitStream<Ws>,
}

impl Receiver {
    /// The next event; see [`Connection::next_event`]. Pongs to the server's
    /// pings go out when the sending half next writes or flushes.
    pub async fn next_event(&mut self) -> Result<ServerEvent, ClientError> {
        next_event(&mut self.stream).await
    }
}

async fn next_event<S>(stream: &mut S) -> Result<ServerEvent, ClientError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let Some(message) = stream.next().await else {
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

/// An open WebSocket, past its `connected` frame.
#[derive(Debug)]
pub struct Connection {
    ws: Ws,
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
        Self::open_with(base_url, token, None).await
    }

    /// Like [`Connection::open`], with `tls` for `https://` servers instead
    /// of the system's trusted roots (see [`crate::Client::trusting`]).
    pub async fn open_with(
        base_url: &str,
        token: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            request(base_url, token)?,
            Some(config()),
            true,
            tls.map(Connector::Rustls),
        )
        .await?;
        Self::handshake(ws).await
    }

    /// Like [`Connection::open`] over plain `ws://`, from a chosen local
    /// address: each source address has its own ~28k ephemeral ports, so
    /// spreading over 127.0.0.2, 127.0.0.3, … lets one machine open more
    /// connections to one server.
    pub async fn open_from(base_url: &str, token: &str, local: IpAddr) -> Result<Connection, ClientError> {
        let request = request(base_url, token)?;
        let host = request.uri().host().unwrap_or("127.0.0.1").to_owned();
        let port = request.uri().port_u16().unwrap_or(80);
        let remote = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| ClientError::Url(e.to_string()))?
                .find(|a| a.is_ipv4() == local.is_ipv4())
                .ok_or_else(|| ClientError::Url(format!("no address for {host}")))?,
        };
        let stream = tcp_from(remote, local)
            .await
            .map_err(|e| ClientError::Url(format!("connect {remote} from {local}: {e}")))?;
        stream.set_nodelay(true).map_err(|e| ClientError::Url(e.to_string()))?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config())).await?;
        Self::handshake(ws).await
    }

    async fn handshake(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Result<Connection, ClientError> {
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
        next_event(&mut self.ws).await
    }

    /// Splits into a sending half and a receiving half, to use from two
    /// places at once.
    pub fn split(self) -> (Sender, Receiver) {
        let (sink, stream) = self.ws.split();
        (Sender { sink }, Receiver { stream })
    }

    /// Closes the connection with a normal close frame.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }
}
