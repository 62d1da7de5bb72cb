//! History mode: paged history reads against a filled store.

use clap::Args;

use super::reads::{self, ReadArgs};
use crate::admin::FILL_EPOCH;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    reads: ReadArgs,
    /// `before` is drawn from FILL_EPOCH up to FILL_EPOCH + this (the fill's
    /// batch count); 0 asks for the newest page only.
    #[arg(long, default_value_t = 0)]
    depth: i64,
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let (limit, depth) = (args.reads.limit, args.depth);
    reads::run(&args.reads, move |client, users, me, x| async move {
        let mut query = vec![("limit", limit.to_string())];
        if depth > 0 {
            query.push(("before", (FILL_EPOCH + 1 + (x >> 20) as i64 % depth).to_string()));
        }
        client.history(users[me ^ 1].id, &query).await
    })
    .await
}
