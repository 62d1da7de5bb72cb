//! `dyad serve`: defaults, a config file, environment variables and flags,
//! layered into a running server.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use dyad_server::Config;
use dyad_server::config::{AbuseLimits, ClusterConfig};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 30s, 500ms or 5m)"))
}

/// Flags of `dyad serve`: where its settings come from, and what to do with
/// them.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file: one `key = value` line per
    /// setting, each key a flag's name with `_` for `-` (docs/OPERATIONS.md).
    /// Flags beat environment variables, which beat the file, which beats
    /// the defaults.
    #[arg(long, env = "DYAD_SERVER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in effect (as a config file, secrets masked) and
    /// exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    settings: Settings,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Switch {
    On,
    Off,
}

/// Who may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Registration {
    /// Anyone, with `POST /api/v1/users`.
    Open,
    /// Only the operator, with `dyad admin user add`.
    Closed,
}

/// Every setting of a server, each a flag, an environment variable and a
/// key of the config file. A layer leaves out what it does not set (`None`);
/// `Settings::defaults()` is the bottom layer.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8080].
    #[arg(long, env = "DYAD_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Message store: sqlite://PATH (relative paths are relative to the
    /// working directory) or postgres://USER@HOST:PORT/DB [default:
    /// sqlite://dyad-data/dyad.db].
    #[arg(long, env = "DYAD_DATABASE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    /// How long a user stays online after their last connection closes [default: 30s].
    #[arg(long, env = "DYAD_PRESENCE_GRACE", value_parser = duration)]
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    presence_grace: Option<Duration>,
    /// How often the server pings each WebSocket; two silent intervals close it [default: 30s].
    #[arg(long, env = "DYAD_HEARTBEAT_INTERVAL", value_parser = duration)]
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    heartbeat_interval: Option<Duration>,
    /// Flood control: messages per second per user (all its connections); 0
    /// turns it off [default: 20].
    #[arg(long, env = "DYAD_RATE_LIMIT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<u32>,
    /// Flood control: burst capacity per user [default: 40].
    #[arg(long, env = "DYAD_RATE_BURST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_burst: Option<u32>,
    /// Longest message, in characters [default: 4096].
    #[arg(long, env = "DYAD_MAX_MESSAGE_CHARS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message_chars: Option<usize>,
    /// How long after sending its sender may edit a message [default: 48h].
    #[arg(long, env = "DYAD_EDIT_WINDOW", value_parser = duration)]
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    edit_window: Option<Duration>,
    /// Largest WebSocket frame, in bytes [default: 65536].
    #[arg(long, env = "DYAD_MAX_FRAME_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_frame_bytes: Option<usize>,
    /// Frames queued for one connection before it counts as a slow consumer
    /// and is disconnected (its messages stay pending) [default: 1024].
    #[arg(long, env = "DYAD_OUTBOUND_QUEUE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound_queue: Option<usize>,
    /// How long a session token lives [default: 30days].
    #[arg(long, env = "DYAD_TOKEN_TTL", value_parser = duration)]
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    token_ttl: Option<Duration>,
    /// Size of each WebSocket's read and write buffers, in bytes [default: 1024].
    #[arg(long, env = "DYAD_WS_BUFFER_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ws_buffer_bytes: Option<usize>,
    /// Most writes the group commit puts in one transaction [default: 1024].
    #[arg(long, env = "DYAD_MAX_BATCH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_batch: Option<usize>,
    /// Joins a cluster: presence and routing between nodes over this Redis
    /// (redis://HOST:PORT/). Needs a postgres:// database shared by the
    /// nodes, and --node-id.
    #[arg(long, env = "DYAD_REDIS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<String>,
    /// This node's name in the cluster (unique per node).
    #[arg(long, env = "DYAD_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// Put before every Redis key and channel name, so that several clusters
    /// can share one Redis [default: none].
    #[arg(long, env = "DYAD_REDIS_PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_prefix: Option<String>,
    /// How long a node's users stay online in Redis without its heartbeat
    /// (a node that dies takes its users offline after this) [default: 5m].
    #[arg(long, env = "DYAD_PRESENCE_TTL", value_parser = duration)]
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    presence_ttl: Option<Duration>,
    /// The per-address limits (registrations, login attempts, open TCP
    /// connections, hashing places) and the per-user WebSocket limit: `off`
    /// for load tests from one address [default: on].
    #[arg(long, env = "DYAD_ABUSE_LIMITS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    abuse_limits: Option<Switch>,
    /// Registrations per source address per hour [default: 10].
    #[arg(long, env = "DYAD_REGISTRATIONS_PER_HOUR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    registrations_per_hour: Option<u32>,
    /// Login attempts per source address per minute [default: 30].
    #[arg(long, env = "DYAD_LOGINS_PER_MINUTE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    logins_per_minute: Option<u32>,
    /// Open TCP connections per source address [default: 256].
    #[arg(long, env = "DYAD_CONNECTIONS_PER_ADDRESS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    connections_per_address: Option<u32>,
    /// Open WebSockets per user [default: 32].
    #[arg(long, env = "DYAD_WEBSOCKETS_PER_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    websockets_per_user: Option<u32>,
    /// Most TCP connections open at once [default: the open-file limit less
    /// 256 for the store, its pools and the runtime].
    #[arg(long, env = "DYAD_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    /// Time a client has to send a complete request (and so to finish a
    /// WebSocket handshake) [default: 10s].
    #[arg(long, env = "DYAD_REQUEST_DEADLINE", value_parser = duration)]
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    request_deadline: Option<Duration>,
    /// Time one write to a WebSocket may take before the client counts as a
    /// slow consumer and its socket is dropped [default: 10s].
    #[arg(long, env = "DYAD_WRITE_DEADLINE", value_parser = duration)]
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    write_deadline: Option<Duration>,
    /// Whether anyone may register (`closed`: accounts are made with `dyad
    /// admin user add`) [default: open].
    #[arg(long, env = "DYAD_REGISTRATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    registration: Option<Registration>,
    /// A reverse proxy in front of the server (repeatable): requests from it
    /// count against the address its X-Forwarded-For names.
    #[arg(long = "trusted-proxy", env = "DYAD_TRUSTED_PROXIES", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    trusted_proxies: Option<Vec<IpAddr>>,
    /// An origin besides the server's own whose pages may open WebSockets,
    /// e.g. https://chat.example.com (repeatable).
    #[arg(long = "allowed-origin", env = "DYAD_ALLOWED_ORIGINS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_origins: Option<Vec<String>>,
    /// Serve HTTPS and wss:// with this certificate chain (PEM, leaf first);
    /// needs --tls-key.
    #[arg(long, env = "DYAD_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "DYAD_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Log filter, e.g. info or dyad_server=debug [default: info].
    #[arg(long, env = "DYAD_LOG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
    /// Log lines as text for people or as one JSON object per line, with
    /// the fields of the event and its spans, for a log pipeline [default:
    /// text].
    #[arg(long, env = "DYAD_LOG_FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// The bottom layer: every setting that has a default.
    fn defaults() -> Settings {
        let d = Config::default();
        let limits = AbuseLimits::default();
        Settings {
            listen: Some("127.0.0.1:8080".into()),
            database: Some("sqlite://dyad-data/dyad.db".into()),
            presence_grace: Some(d.presence_grace),
            heartbeat_interval: Some(d.heartbeat_interval),
            rate_limit: Some(d.rate_limit),
            rate_burst: Some(d.rate_burst),
            max_message_chars: Some(d.max_message_chars),
            edit_window: Some(d.edit_window),
            max_frame_bytes: Some(d.max_frame_bytes),
            outbound_queue: Some(d.outbound_queue),
            token_ttl: Some(d.token_ttl),
            ws_buffer_bytes: Some(d.ws_buffer_bytes),
            max_batch: Some(d.max_batch),
            redis_prefix: Some(String::new()),
            presence_ttl: Some(ClusterConfig::DEFAULT_PRESENCE_TTL),
            abuse_limits: Some(Switch::On),
            registrations_per_hour: Some(limits.registrations_per_hour),
            logins_per_minute: Some(limits.logins_per_minute),
            connections_per_address: Some(limits.connections_per_address),
            websockets_per_user: Some(limits.websockets_per_user),
            request_deadline: Some(d.request_deadline),
            write_deadline: Some(d.write_deadline),
            registration: Some(Registration::Open),
            trusted_proxies: Some(Vec::new()),
            allowed_origins: Some(Vec::new()),
            log: Some("info".into()),
            log_format: Some(LogFormat::Text),
            ..Settings::default()
        }
    }

    /// The settings in effect: the defaults, then `file`, then what the
    /// environment and the flags (`self`) set.
    fn layered(&self, file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(Settings::defaults()));
        if let Some(path) = file {
            if !path.is_file() {
                anyhow::bail!("config file {} not found", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment
            .merge(Serialized::globals(self))
            .extract()
            .map_err(|e| anyhow::anyhow!(explain(e)))
    }

    /// The same settings with the passwords in URLs replaced by `****`.
    fn masked(&self) -> Settings {
        Settings {
            database: self.database.as_deref().map(mask_password),
            redis: self.redis.as_deref().map(mask_password),
            ..self.clone()
        }
    }

    fn config(&self) -> anyhow::Result<Config> {
        let d = Config::default();
        let database = self.database.as_deref().unwrap_or_default();
        let cluster = match (&self.redis, &self.node_id) {
            (Some(redis), Some(node_id)) => {
                if !database.starts_with("postgres") {
                    anyhow::bail!("redis needs a postgres:// database that every node shares");
                }
                Some(ClusterConfig {
                    redis_url: redis.clone(),
                    node_id: node_id.clone(),
                    prefix: self.redis_prefix.clone().unwrap_or_default(),
                    presence_ttl: self.presence_ttl.unwrap_or(ClusterConfig::DEFAULT_PRESENCE_TTL),
                })
            }
            (None, None) => None,
            _ => anyhow::bail!("redis and node_id go together: set both to join a cluster"),
        };
        let limits = AbuseLimits::default();
        Ok(Config {
            presence_grace: self.presence_grace.unwrap_or(d.presence_grace),
            heartbeat_interval: self.heartbeat_interval.unwrap_or(d.heartbeat_interval),
            rate_limit: self.rate_limit.unwrap_or(d.rate_limit),
            rate_burst: self.rate_burst.unwrap_or(d.rate_burst),
            max_message_chars: self.max_message_chars.unwrap_or(d.max_message_chars),
            edit_window: self.edit_window.unwrap_or(d.edit_window),
            max_frame_bytes: self.max_frame_bytes.unwrap_or(d.max_frame_bytes),
            outbound_queue: self.outbound_queue.unwrap_or(d.outbound_queue),
            token_ttl: self.token_ttl.unwrap_or(d.token_ttl),
            ws_buffer_bytes: self.ws_buffer_bytes.unwrap_or(d.ws_buffer_bytes),
            max_batch: self.max_batch.unwrap_or(d.max_batch),
            cluster,
            abuse: AbuseLimits {
                enabled: self.abuse_limits != Some(Switch::Off),
                registrations_per_hour: self.registrations_per_hour.unwrap_or(limits.registrations_per_hour),
                logins_per_minute: self.logins_per_minute.unwrap_or(limits.logins_per_minute),
                connections_per_address: self.connections_per_address.unwrap_or(limits.connections_per_address),
                websockets_per_user: self.websockets_per_user.unwrap_or(limits.websockets_per_user),
                ..limits
            },
            trusted_proxies: self.trusted_proxies.clone().unwrap_or_default(),
            allowed_origins: self.allowed_origins.clone().unwrap_or_default(),
            registration_open: self.registration != Some(Registration::Closed),
            max_connections: self
                .max_connections
                .unwrap_or_else(dyad_server::listener::default_max_connections),
            request_deadline: self.request_deadline.unwrap_or(d.request_deadline),
            write_deadline: self.write_deadline.unwrap_or(d.write_deadline),
            session_check: d.session_check,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(dyad_server::tls::server_config(cert, key).context("tls_cert/tls_key")?)
                }
                (None, None) => None,
                _ => anyhow::bail!("tls_cert and tls_key go together: set both to serve HTTPS"),
            },
        })
    }
}

/// A configuration error as one line per problem, each naming the key and,
/// when it came from a file, the file and the line.
fn explain(error: figment::Error) -> String {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = match &e.kind {
                figment::error::Kind::UnknownField(name, _) => Some(name.clone()),
                _ => e.path.last().cloned(),
            };
            let file = e.metadata.as_ref().and_then(|m| match &m.source {
                Some(figment::Source::File(path)) => Some(path.clone()),
                _ => None,
            });
            let place = match (&file, &key) {
                (Some(path), Some(key)) => {
                    let line = std::fs::read_to_string(path).ok().and_then(|text| line_of(&text, key));
                    match line {
                        Some(n) => format!("{}:{n}: ", path.display()),
                        None => format!("{}: ", path.display()),
                    }
                }
                (Some(path), None) => format!("{}: ", path.display()),
                (None, _) => String::new(),
            };
            match key {
                Some(key) => format!("{place}{key}: {}", e.kind),
                None => format!("{place}{}", e.kind),
            }
        })
        .collect();
    format!("bad configuration: {}", lines.join("; "))
}

/// The line (from 1) where `key` is set in a flat TOML file.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let rest = ["\"", "'", ""].iter().find_map(|quote| {
                let rest = line.strip_prefix(quote)?.strip_prefix(key)?;
                rest.strip_prefix(quote)
            });
            rest.is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// `scheme://user:secret@host/…` with the secret replaced by `****`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_string(),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings.layered(args.config.as_deref())?;
    if args.print_config {
        print!("{}", toml::to_string(&settings.masked())?);
        return Ok(());
    }
    let log = settings.log.as_deref().unwrap_or("info");
    let mut filter = EnvFilter::try_new(log).context("bad log filter")?;
    // The key index's engine (fjall) logs every file it opens at `info`:
    // only its warnings, unless the filter names it.
    for (engine, quiet) in [("fjall", "fjall=warn"), ("lsm_tree", "lsm_tree=warn")] {
        if !log.contains(engine) {
            filter = filter.add_directive(quiet.parse().context("log filter")?);
        }
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        Some(LogFormat::Json) => logs.json().with_current_span(true).with_span_list(true).init(),
        _ => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let config = settings.config()?;
    let database = settings.database.as_deref().unwrap_or_default();
    let listen = settings.listen.as_deref().unwrap_or_default();
    let store = dyad_store::open_exclusive(database)
        .await
        .with_context(|| format!("opening {}", mask_password(database)))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    // One line on stdout that scripts (and the crash test) can read.
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    println!("dyad listening on {scheme}://{addr}");
    let node = settings.node_id.as_deref().unwrap_or("-");
    tracing::info!(%addr, database = %mask_password(database), node, "serving");
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
