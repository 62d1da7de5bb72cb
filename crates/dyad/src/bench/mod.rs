//! `dyad bench`: the load generator. It measures a server from outside, the
//! way an operator would: open-loop sends at a fixed rate, latency from the
//! *scheduled* send time, every recipient acknowledging delivery, and a
//! count of what was lost, duplicated or out of order.
//!
//! Against a server it starts itself (the default) or one given by `--url`.

mod attack;
mod history;
mod idle;
mod load;
mod procstat;
mod reads;
mod report;
mod search;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::admin::{self, BenchUser};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Option<BenchMode>,
    #[command(flatten)]
    load: load::LoadArgs,
}

#[derive(Debug, Subcommand)]
enum BenchMode {
    /// Hold many authenticated idle WebSockets; report the connect rate and
    /// the server's memory per connection.
    Idle(idle::IdleArgs),
    /// Read history pages (`limit` 50 by default) as fast as a few clients
    /// can, against a store filled by `dyad admin fill`; report latency.
    History(history::HistoryArgs),
    /// Search (`GET /api/v1/search`, one word of the fill's vocabulary, of
    /// any frequency) as fast as a few clients can, against a store filled
    /// by `dyad admin fill`; report latency.
    Search(reads::ReadArgs),
    /// Run one attack against a server with its default limits while a
    /// legitimate user logs in and sends; report memory and latencies.
    Attack(attack::AttackArgs),
}

/// Where the server under test is and how to get users on it.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// A running server (e.g. http://127.0.0.1:8080). Without it, the bench
    /// starts `dyad serve` itself, on --database or else a fresh SQLite
    /// file, and stops it after.
    #[arg(long)]
    url: Option<String>,
    /// Several servers: users are spread over them so that sender and
    /// recipient sit on different nodes.
    #[arg(long, value_delimiter = ',', conflicts_with = "url")]
    nodes: Vec<String>,
    /// The store of the server(s) given by --url/--nodes, to provision users
    /// into directly (see `dyad admin provision`); without --url, the store
    /// of the server the bench starts (e.g. postgres://…).
    #[arg(long)]
    database: Option<String>,
    /// Users from `dyad admin provision --out FILE` instead of provisioning.
    #[arg(long, conflicts_with = "database")]
    tokens: Option<PathBuf>,
    /// The server's process id, to report its CPU time and peak memory
    /// (set automatically when the bench starts the server).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Extra flags for the server the bench starts (repeatable), e.g.
    /// --server-arg=--max-batch=512.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

/// A server under test, and the one the bench started, if it did.
pub struct Servers {
    pub urls: Vec<String>,
    pub pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Servers {
    /// Stops the server the bench started (SIGTERM, then waits).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                child.kill().await?;
            }
        }
        Ok(())
    }
}

impl Target {
    /// Provisions `count` users and makes sure a server is there.
    pub async fn prepare(&self, count: usize) -> anyhow::Result<(Servers, Vec<BenchUser>)> {
        let prefix = format!("bench{}", std::process::id());
        let ttl = Duration::from_secs(24 * 3600);
        let urls: Vec<String> = self.url.iter().cloned().chain(self.nodes.iter().cloned()).collect();
        if !urls.is_empty() {
            let users = match (&self.tokens, &self.database) {
                (Some(path), _) => admin::read_tokens(path)?,
                (None, Some(db)) => admin::provision(db, &prefix, count, ttl).await?,
                (None, None) => bail!("with --url or --nodes, give --database (to provision users) or --tokens"),
            };
            if users.len() < count {
                bail!("{} users needed, {} available", count, users.len());
            }
            let servers = Servers {
                urls,
                pid: self.server_pid,
                child: None,
                _dir: None,
            };
            return Ok((servers, users));
        }
        let dir = tempfile::tempdir()?;
        let database = match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", dir.path().join("bench.db").display()),
        };
        let users = admin::provision(&database, &prefix, count, ttl).await?;
        let (child, url) = spawn_server(&database, LOAD_TEST_FLAGS, &self.server_arg).await?;
        let pid = child.id();
        Ok((
            Servers {
                urls: vec![url],
                pid,
                child: Some(child),
                _dir: Some(dir),
            },
            users,
        ))
    }
}

/// Flags for a server under load: no flood control, and no per-address
/// limits (every simulated user connects from one address).
const LOAD_TEST_FLAGS: &[&str] = &["--rate-limit", "0", "--abuse-limits", "off", "--log", "warn"];

/// Starts `dyad serve` on a free port with `flags`, then `extra`.
async fn spawn_server(database: &str, flags: &[&str], extra: &[String]) -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", database])
        .args(flags)
        .args(extra)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting dyad serve")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("server did not start in 30 s")??
        .context("server exited")?;
    let url = line
        .strip_prefix("dyad listening on ")
        .context("unexpected first line from server")?
        .to_owned();
    Ok((child, url))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        Some(BenchMode::Idle(idle)) => idle::run(idle).await,
        Some(BenchMode::History(history)) => history::run(history).await,
        Some(BenchMode::Search(search)) => search::run(search).await,
        Some(BenchMode::Attack(attack)) => attack::run(attack).await,
        None => load::run(args.load).await,
    }
}
