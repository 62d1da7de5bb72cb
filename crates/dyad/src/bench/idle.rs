//! Idle mode: many authenticated WebSockets that just stay open.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use clap::Args;
use dyad_client::Connection;
use dyad_protocol::ServerEvent;
use futures_util::StreamExt;
use serde::Serialize;

use super::{Target, procstat};

/// Connections per loopback source address. Far fewer than the ~28k
/// ephemeral ports each has: the kernel's search for a free port at
/// connect() grows with the ports in use (`__inet_hash_connect`), and with
/// this many per address it costs nothing.
const PER_SOURCE: usize = 1_000;
/// 127.0.0.2 … 127.0.0.254.
const SOURCES: usize = 253;

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// How many connections (one user each).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// How long to hold them before measuring and closing.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct IdleReport {
    connections: usize,
    failed: usize,
    connect_seconds: f64,
    connects_per_second: f64,
    server_rss_before_mib: Option<f64>,
    server_rss_after_mib: Option<f64>,
    server_bytes_per_connection: Option<f64>,
    still_open_after_hold: usize,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections <= SOURCES * PER_SOURCE,
        "at most {} connections from one load generator",
        SOURCES * PER_SOURCE
    );
    let (servers, users) = args.target.prepare(args.connections).await?;
    let rss = |pid: Option<u32>| pid.and_then(|p| procstat::status_bytes(p, "VmRSS:"));
    // Let the freshly started server settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(servers.pid);

    let started = Instant::now();
    let results: Vec<anyhow::Result<Connection>> =
        futures_util::stream::iter(users.iter().take(args.connections).enumerate().map(|(i, u)| {
            let url = servers.urls[i % servers.urls.len()].clone();
            let token = u.token.clone();
            // 127.0.0.2, 127.0.0.3, …: each source address has its own port range.
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i / PER_SOURCE) as u8));
            // A task each, so that handshakes run on every core.
            tokio::spawn(async move {
                let mut conn = Connection::open_from(&url, &token, source).await?;
                while !matches!(conn.next_event().await?, ServerEvent::PendingComplete { .. }) {}
                anyhow::Ok(conn)
            })
        }))
        .buffer_unordered(args.concurrency.max(1))
        .map(|joined| joined.map_err(anyhow::Error::from).and_then(|r| r))
        .collect()
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("first connect failure: {e}");
    }
    let mut open: Vec<Connection> = results.into_iter().filter_map(Result::ok).collect();
    eprintln!(
        "{} connections open in {connect_seconds:.2} s; holding {:?}",
        open.len(),
        args.hold
    );

    // Hold, answering the server's pings.
    let hold_until = tokio::time::Instant::now() + args.hold;
    let mut alive = 0;
    let readers = open.iter_mut().map(|c| async move {
        loop {
            match tokio::time::timeout_at(hold_until, c.next_event()).await {
                Err(_) => return true,
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return false,
            }
        }
    });
    for ok in futures_util::future::join_all(readers).await {
        alive += usize::from(ok);
    }
    let after = rss(servers.pid);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let report = IdleReport {
        connections: args.connections,
        failed,
        connect_seconds,
        connects_per_second: open.len() as f64 / connect_seconds,
        server_rss_before_mib: before.map(mib),
        server_rss_after_mib: after.map(mib),
        server_bytes_per_connection: before
            .zip(after)
            .filter(|_| !open.is_empty())
            .map(|(b, a)| (a.saturating_sub(b)) as f64 / open.len() as f64),
        still_open_after_hold: alive,
    };
    drop(open);
    servers.stop().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} connections ({} failed) in {:.2} s: {:.0} connects/s; {} still open after the hold",
            report.connections, report.failed, report.connect_seconds, report.connects_per_second, alive
        );
        if let (Some(b), Some(a), Some(per)) = (
            report.server_rss_before_mib,
            report.server_rss_after_mib,
            report.server_bytes_per_connection,
        ) {
            println!(
                "server RSS {b:.1} MiB -> {a:.1} MiB: {:.0} bytes ({:.2} KiB) per connection",
                per,
                per / 1024.0
            );
        }
    }
    Ok(())
}
