//! The driver of the read benches (history, search): a few clients send
//! requests back to back against a filled store; latency per request.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use dyad_client::protocol::rest::HistoryPage;
use dyad_client::{Client, ClientError};
use serde::Serialize;

use super::report::{Latency, Percentiles};
use super::{Target, procstat};
use crate::admin::BenchUser;

/// What every read bench takes.
#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub target: Target,
    /// Users to read as (in pairs, as `dyad admin fill` made them).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct ReadReport {
    requests: usize,
    errors: usize,
    messages_returned: usize,
    requests_per_second: f64,
    latency_ms: Percentiles,
}

/// One request: `(client as the user, the users, the user's index, a
/// random number)` to the page it answered.
pub trait Request: Fn(Client, Arc<Vec<BenchUser>>, usize, u64) -> Self::Fut + Clone + Send + 'static {
    /// The request's future.
    type Fut: Future<Output = Result<HistoryPage, ClientError>> + Send;
}

impl<F, Fut> Request for F
where
    F: Fn(Client, Arc<Vec<BenchUser>>, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<HistoryPage, ClientError>> + Send,
{
    type Fut = Fut;
}

pub async fn run(args: &ReadArgs, request: impl Request) -> anyhow::Result<()> {
    let (servers, users) = args.target.prepare(args.users).await?;
    let users = Arc::new(users);
    let latency = Arc::new(Latency::new()?);
    let concurrency = args.concurrency.max(1);
    let per_task = args.requests.div_ceil(concurrency);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (latency, users, request) = (latency.clone(), users.clone(), request.clone());
        let url = servers.urls[t % servers.urls.len()].clone();
        let n = args.users;
        tasks.push(tokio::spawn(async move {
            let (mut errors, mut returned) = (0usize, 0usize);
            // One HTTP connection pool per task, shared by its requests.
            let base = Client::new(&url);
            // A cheap deterministic spread of users and queries per task.
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
            for _ in 0..per_task {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let me = (x % n as u64) as usize;
                let client = base.clone().with_token(users[me].token.clone(), users[me].id);
                let at = Instant::now();
                match request(client, users.clone(), me, x).await {
                    Ok(page) => returned += page.messages.len(),
                    Err(_) => errors += 1,
                }
                latency.record(at.elapsed());
            }
            (errors, returned)
        }));
    }
    let (mut errors, mut returned) = (0, 0);
    for task in tasks {
        let (e, r) = task.await?;
        errors += e;
        returned += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let report = ReadReport {
        requests: per_task * concurrency,
        errors,
        messages_returned: returned,
        requests_per_second: (per_task * concurrency) as f64 / elapsed,
        latency_ms: latency.summary(),
    };
    let rss = servers.pid.and_then(|p| procstat::status_bytes(p, "VmHWM:"));
    servers.stop().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let p = &report.latency_ms;
        println!(
            "{} requests ({} errors, {} messages) at {:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            report.requests,
            report.errors,
            report.messages_returned,
            report.requests_per_second,
            p.p50,
            p.p90,
            p.p99,
            p.p999,
            p.max
        );
        if let Some(rss) = rss {
            println!("server peak RSS {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
        }
    }
    Ok(())
}
