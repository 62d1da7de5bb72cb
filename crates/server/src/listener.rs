//! The accept loop: every TCP connection is admitted (or refused) before
//! anything is read from it, then served as HTTP/1.1 with upgrades.
//!
//! Admission: at most `max_connections` in all and, with the abuse limits
//! on, `connections_per_address` from one source address; a connection over
//! either is answered with a canned `503`/`429` and closed at once. A
//! connection must send a complete request head within the request deadline,
//! or it is closed; an idle keep-alive connection likewise. The places a
//! connection holds travel with its socket, so an upgraded WebSocket keeps
//! holding them until the socket itself is dropped.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::abuse::counts::OpenPermit;
use crate::abuse::{AbuseGuard, AddressKey, Limit, is_trusted_proxy};
use crate::metrics::Metrics;

/// The TCP peer of a request, as the accept loop saw it.
#[derive(Debug, Clone, Copy)]
pub struct TcpPeer(pub SocketAddr);

/// What the accept loop needs.
pub struct Listener {
    /// Where connections arrive.
    pub tcp: TcpListener,
    /// The routes.
    pub router: Router,
    /// The per-address limits.
    pub guard: Arc<AbuseGuard>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time allowed to send a request head (and, with TLS, to finish the
    /// TLS handshake first).
    pub request_deadline: Duration,
    /// Terminates TLS on every connection, if set.
    pub tls: Option<TlsAcceptor>,
    /// Reverse proxies: their connections carry many clients, so they are
    /// not held to the per-address connection limit (only to the total).
    pub trusted_proxies: Vec<IpAddr>,
}

impl Listener {
    /// Accepts until `shutdown`, then stops accepting, lets each HTTP
    /// connection finish the request it is on, and returns once they have
    /// (or after `drain`). Upgraded WebSockets are not waited for here.
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) {
        let open = Arc::new(AtomicUsize::new(0));
        let connections = TaskTracker::new();
        let mut last_error_log: Option<tokio::time::Instant> = None;
        loop {
            let accepted = tokio::select! {
                accepted = self.tcp.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a little for
                    // some to close (deadlines close idle ones), and say so
                    // at most once a second.
                    let now = tokio::time::Instant::now();
                    if last_error_log.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                        tracing::error!(error = %e, "accept failed");
                        last_error_log = Some(now);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Some(held) = self.admit(&tcp, peer.ip(), &open) else {
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
            let io = Held { io: tcp, _held: held };
            let router = self.router.clone();
            let deadline = self.request_deadline;
            let stop = shutdown.clone();
            match self.tls.clone() {
                None => connections.spawn(serve_connection(io, peer, router, deadline, stop)),
                Some(tls) => connections.spawn(async move {
                    match tokio::time::timeout(deadline, tls.accept(io)).await {
                        Ok(Ok(io)) => serve_connection(io, peer, router, deadline, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, peer = %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }),
            };
        }
        connections.close();
        if tokio::time::timeout(drain, connections.wait()).await.is_err() {
            tracing::warn!("some HTTP connections did not finish in time");
        }
    }

    /// The places a new connection takes, or `None` (and a canned answer)
    /// if it may not have them.
    fn admit(&self, tcp: &TcpStream, source: IpAddr, open: &Arc<AtomicUsize>) -> Option<Places> {
        if open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            self.guard.refused(Limit::Connections, source, "");
            refuse_now(
                tcp,
                503,
                "Service Unavailable",
                "unavailable",
                "the server is full; retry later",
            );
            return None;
        }
        let total = Total {
            open: open.clone(),
            metrics: self.metrics.clone(),
        };
        self.metrics.tcp_connections.inc();
        if is_trusted_proxy(source, &self.trusted_proxies) {
            return Some(Places {
                _address: None,
                _total: total,
            });
        }
        let Some(permit) = self.guard.connection(source) else {
            refuse_now(
                tcp,
                429,
                "Too Many Requests",
                "too_many_connections",
                "too many open connections from your address",
            );
            return None;
        };
        Some(Places {
            _address: Some(permit),
            _total: total,
        })
    }
}

async fn serve_connection<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    deadline: Duration,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        // The body must arrive by the same deadline as the head.
        let mut request = request.map(|body| DeadlineBody::new(body, deadline));
        request.extensions_mut().insert(TcpPeer(peer));
        router.clone().oneshot(request)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(deadline);
    let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, peer = %peer, "connection ended");
            }
        }
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, peer = %peer, "connection ended");
            }
        }
    }
}

/// Writes a whole canned answer if the socket takes it at once (a fresh
/// socket's send buffer is empty), then the caller drops the socket.
fn refuse_now(tcp: &TcpStream, status: u16, reason: &str, code: &str, message: &str) {
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nretry-after: 10\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(answer.as_bytes());
}

/// The places one connection holds: one of the server's, one of its address's.
struct Places {
    _address: Option<OpenPermit<AddressKey>>,
    _total: Total,
}

struct Total {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Total {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.tcp_connections.dec();
    }
}

/// A socket with the places it holds: they are given back when it is dropped.
struct Held<IO> {
    io: IO,
    _held: Places,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Held<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Held<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A request body that fails once its deadline has passed, however it trickles in.
struct DeadlineBody {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(body: Incoming, within: Duration) -> Self {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(within)),
        }
    }
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the request deadline")]
struct BodyDeadline;

impl hyper::body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyDeadline))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Files kept back from connections for the store, its pools, Redis, the
/// listener and the runtime.
const RESERVED_FILES: usize = 256;

/// The most connections this process can hold: its open-file limit, less
/// [`RESERVED_FILES`].
pub fn default_max_connections() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|n| n.parse::<usize>().ok()))
        })
        .unwrap_or(1024);
    limit.saturating_sub(RESERVED_FILES).max(64)
}
