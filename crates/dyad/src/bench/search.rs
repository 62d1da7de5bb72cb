//! Search mode: full-text searches against a store filled by `dyad admin
//! fill`, each for one word of its vocabulary, common and rare alike.

use super::reads::{self, ReadArgs};
use crate::admin::{fill_word, zipf_rank};

pub async fn run(args: ReadArgs) -> anyhow::Result<()> {
    let limit = args.limit;
    reads::run(&args, move |client, _users, _me, x| async move {
        let query = vec![
            ("q", fill_word(zipf_rank(x.rotate_left(17)))),
            ("limit", limit.to_string()),
        ];
        client.search(&query).await
    })
    .await
}
