//! What the conformance suites share: the machine's Redis, under a prefix
//! of their own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dyad_server::cluster::{ClusterConfig, Shared};

/// The Redis every cluster test uses (CI starts it).
pub fn redis_url() -> String {
    std::env::var("DYAD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A prefix no other test run uses, so that runs sharing a Redis never
/// hear each other.
fn fresh_prefix(suite: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("test-{suite}-{}-{nanos}:", std::process::id())
}

/// `n` nodes of a fresh cluster on the machine's Redis: what each shares.
pub async fn redis_nodes(suite: &str, n: usize) -> Vec<Shared> {
    let prefix = fresh_prefix(suite);
    let mut nodes = Vec::new();
    for i in 0..n {
        let shared = Shared::join(&node(&prefix, i))
            .await
            .unwrap_or_else(|e| panic!("Redis at {} is needed: {e}", redis_url()));
        nodes.push(shared);
    }
    nodes
}

/// Node `node` of a cluster whose keys and channels start with `prefix`.
fn node(prefix: &str, node: usize) -> ClusterConfig {
    ClusterConfig {
        redis_url: redis_url(),
        node_id: format!("n{node}"),
        prefix: prefix.to_owned(),
        presence_ttl: Duration::from_secs(30),
    }
}
