//! `dyad serve`: flags and environment variables to a running server.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dyad_server::Config;
use dyad_server::config::{AbuseLimits, ClusterConfig};
use tracing_subscriber::EnvFilter;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 30s, 500ms or 5m)"))
}

/// Flags of `dyad serve`. Each also reads the environment variable named.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "DYAD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Message store: sqlite://PATH (default; relative paths are relative to
    /// the working directory) or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "DYAD_DATABASE", default_value = "sqlite://dyad-data/dyad.db")]
    database: String,
    /// How long a user stays online after their last connection closes.
    #[arg(long, env = "DYAD_PRESENCE_GRACE", default_value = "30s", value_parser = duration)]
    presence_grace: Duration,
    /// How often the server pings each WebSocket; two silent intervals close it.
    #[arg(long, env = "DYAD_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = duration)]
    heartbeat_interval: Duration,
    /// Flood control: messages per second per user (all its connections); 0 turns it off.
    #[arg(long, env = "DYAD_RATE_LIMIT", default_value_t = 20)]
    rate_limit: u32,
    /// Flood control: burst capacity per user.
    #[arg(long, env = "DYAD_RATE_BURST", default_value_t = 40)]
    rate_burst: u32,
    /// Longest message, in characters.
    #[arg(long, env = "DYAD_MAX_MESSAGE_CHARS", default_value_t = 4096)]
    max_message_chars: usize,
    /// How long after sending its sender may edit a message.
    #[arg(long, env = "DYAD_EDIT_WINDOW", default_value = "48h", value_parser = duration)]
    edit_window: Duration,
    /// Largest WebSocket frame, in bytes.
    #[arg(long, env = "DYAD_MAX_FRAME_BYTES", default_value_t = 65536)]
    max_frame_bytes: usize,
    /// Frames queued for one connection before it counts as a slow consumer
    /// and is disconnected (its messages stay pending).
    #[arg(long, env = "DYAD_OUTBOUND_QUEUE", default_value_t = 1024)]
    outbound_queue: usize,
    /// How long a session token lives.
    #[arg(long, env = "DYAD_TOKEN_TTL", default_value = "30days", value_parser = duration)]
    token_ttl: Duration,
    /// Size of each WebSocket's read and write buffers, in bytes.
    #[arg(long, env = "DYAD_WS_BUFFER_BYTES", default_value_t = 1024)]
    ws_buffer_bytes: usize,
    /// Most writes the group commit puts in one transaction.
    #[arg(long, env = "DYAD_MAX_BATCH", default_value_t = 1024)]
    max_batch: usize,
    /// Joins a cluster: presence and routing between nodes over this Redis
    /// (redis://HOST:PORT/). Needs a postgres:// database shared by the nodes,
    /// and --node-id.
    #[arg(long, env = "DYAD_REDIS", requires = "node_id")]
    redis: Option<String>,
    /// This node's name in the cluster (unique per node).
    #[arg(long, env = "DYAD_NODE_ID", requires = "redis")]
    node_id: Option<String>,
    /// Put before every Redis key and channel name, so that several clusters
    /// can share one Redis.
    #[arg(long, env = "DYAD_REDIS_PREFIX", default_value = "")]
    redis_prefix: String,
    /// How long a node's users stay online in Redis without its heartbeat
    /// (a node that dies takes its users offline after this).
    #[arg(long, env = "DYAD_PRESENCE_TTL", default_value = "5m", value_parser = duration)]
    presence_ttl: Duration,
    /// The per-address limits (registrations, login attempts, open TCP
    /// connections, hashing places) and the per-user WebSocket limit: `off`
    /// for load tests from one address.
    #[arg(long, env = "DYAD_ABUSE_LIMITS", default_value = "on", value_parser = ["on", "off"])]
    abuse_limits: String,
    /// Registrations per source address per hour.
    #[arg(long, env = "DYAD_REGISTRATIONS_PER_HOUR", default_value_t = 10)]
    registrations_per_hour: u32,
    /// Login attempts per source address per minute.
    #[arg(long, env = "DYAD_LOGINS_PER_MINUTE", default_value_t = 30)]
    logins_per_minute: u32,
    /// Open TCP connections per source address.
    #[arg(long, env = "DYAD_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    connections_per_address: u32,
    /// Open WebSockets per user.
    #[arg(long, env = "DYAD_WEBSOCKETS_PER_USER", default_value_t = 32)]
    websockets_per_user: u32,
    /// Most TCP connections open at once (default: the open-file limit less
    /// 256 for the store, its pools and the runtime).
    #[arg(long, env = "DYAD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Time a client has to send a complete request (and so to finish a
    /// WebSocket handshake).
    #[arg(long, env = "DYAD_REQUEST_DEADLINE", default_value = "10s", value_parser = duration)]
    request_deadline: Duration,
    /// Time one write to a WebSocket may take before the client counts as a
    /// slow consumer and its socket is dropped.
    #[arg(long, env = "DYAD_WRITE_DEADLINE", default_value = "10s", value_parser = duration)]
    write_deadline: Duration,
    /// Whether anyone may register (`closed`: accounts are made with `dyad admin user add`).
    #[arg(long, env = "DYAD_REGISTRATION", default_value = "open", value_parser = ["open", "closed"])]
    registration: String,
    /// A reverse proxy in front of the server (repeatable): requests from it
    /// count against the address its X-Forwarded-For names.
    #[arg(long = "trusted-proxy", env = "DYAD_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<IpAddr>,
    /// An origin besides the server's own whose pages may open WebSockets,
    /// e.g. https://chat.example.com (repeatable).
    #[arg(long = "allowed-origin", env = "DYAD_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Serve HTTPS and wss:// with this certificate chain (PEM, leaf first);
    /// needs --tls-key.
    #[arg(long, env = "DYAD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "DYAD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log filter, e.g. info or dyad_server=debug.
    #[arg(long, env = "DYAD_LOG", default_value = "info")]
    log: String,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let cluster = match (&self.redis, &self.node_id) {
            (Some(redis), Some(node_id)) => {
                if !self.database.starts_with("postgres") {
                    anyhow::bail!("--redis needs a postgres:// --database that every node shares");
                }
                Some(ClusterConfig {
                    redis_url: redis.clone(),
                    node_id: node_id.clone(),
                    prefix: self.redis_prefix.clone(),
                    presence_ttl: self.presence_ttl,
                })
            }
            _ => None,
        };
        Ok(Config {
            presence_grace: self.presence_grace,
            heartbeat_interval: self.heartbeat_interval,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            max_message_chars: self.max_message_chars,
            edit_window: self.edit_window,
            max_frame_bytes: self.max_frame_bytes,
            outbound_queue: self.outbound_queue,
            token_ttl: self.token_ttl,
            ws_buffer_bytes: self.ws_buffer_bytes,
            max_batch: self.max_batch,
            cluster,
            abuse: AbuseLimits {
                enabled: self.abuse_limits == "on",
                registrations_per_hour: self.registrations_per_hour,
                logins_per_minute: self.logins_per_minute,
                connections_per_address: self.connections_per_address,
                websockets_per_user: self.websockets_per_user,
                ..AbuseLimits::default()
            },
            trusted_proxies: self.trusted_proxies.clone(),
            allowed_origins: self.allowed_origins.clone(),
            registration_open: self.registration == "open",
            max_connections: self
                .max_connections
                .unwrap_or_else(dyad_server::listener::default_max_connections),
            request_deadline: self.request_deadline,
            write_deadline: self.write_deadline,
            session_check: Config::default().session_check,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(dyad_server::tls::server_config(cert, key).context("--tls-cert/--tls-key")?)
                }
                _ => None,
            },
        })
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log).context("bad --log filter")?;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let config = args.config()?;
    let store = dyad_store::open(&args.database)
        .await
        .with_context(|| format!("opening {}", args.database))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // One line on stdout that scripts (and the crash test) can read.
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    println!("dyad listening on {scheme}://{addr}");
    tracing::info!(%addr, database = %args.database, node = args.node_id.as_deref().unwrap_or("-"), "serving");
    dyad_server::serve(listener, config, store, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
