//! History mode: paged history reads against a filled store.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use dyad_client::Client;
use serde::Serialize;

use super::report::{Latency, Percentiles};
use super::{Target, procstat};
use crate::admin::FILL_EPOCH;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    target: Target,
    /// Users to read as (in pairs, as `dyad admin fill` made them).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// `before` is drawn from FILL_EPOCH up to FILL_EPOCH + this (the fill's
    /// batch count); 0 asks for the newest page only.
    #[arg(long, default_value_t = 0)]
    depth: i64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct HistoryReport {
    requests: usize,
    errors: usize,
    messages_returned: usize,
    requests_per_second: f64,
    latency_ms: Percentiles,
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let (servers, users) = args.target.prepare(args.users).await?;
    let latency = Arc::new(Latency::new()?);
    let per_task = args.requests.div_ceil(args.concurrency.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.concurrency.max(1) {
        let (latency, users, url) = (
            latency.clone(),
            users.clone(),
            servers.urls[t % servers.urls.len()].clone(),
        );
        let (limit, depth, n) = (args.limit, args.depth, args.users);
        tasks.push(tokio::spawn(async move {
            let (mut errors, mut returned) = (0usize, 0usize);
            // One HTTP connection pool per task, shared by its requests.
            let base = Client::new(&url);
            // A cheap deterministic spread of users and depths per task.
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
            for _ in 0..per_task {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let me = (x % n as u64) as usize;
                let client = base.clone().with_token(users[me].token.clone(), users[me].id);
                let mut query = vec![("limit", limit.to_string())];
                if depth > 0 {
                    query.push(("before", (FILL_EPOCH + 1 + (x >> 20) as i64 % depth).to_string()));
                }
                let at = Instant::now();
                match client.history(users[me ^ 1].id, &query).await {
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
    let report = HistoryReport {
        requests: per_task * args.concurrency.max(1),
        errors,
        messages_returned: returned,
        requests_per_second: (per_task * args.concurrency.max(1)) as f64 / elapsed,
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
