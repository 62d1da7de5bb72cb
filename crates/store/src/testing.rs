//! Test support, shared by this crate's tests, benches and examples and the
//! server's tests: a scratch PostgreSQL schema per test, so tests run in
//! parallel on one database, and numbered accounts to provision. Not part of
//! the store's API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dyad_protocol::domain::{ClientMsgId, MessageBody};
use sqlx::{Connection, PgConnection};

use crate::backend;
use crate::{ProvisionedAccount, StoreResult};

/// The database tests use: `DYAD_TEST_POSTGRES`, else the machine's local
/// PostgreSQL (trust auth, database `test`).
pub fn postgres_url() -> String {
    std::env::var("DYAD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Creates an empty schema and returns a URL whose connections use it.
/// Schemas left by earlier runs (older than an hour) are dropped on the way.
pub async fn scratch_postgres_url() -> StoreResult<String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = postgres_url();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let name = format!(
        "dyad_t_{now}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = PgConnection::connect(&base).await.map_err(backend)?;
    let old: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'dyad\\_t\\_%'")
            .fetch_all(&mut conn)
            .await
            .map_err(backend)?;
    for schema in old {
        let created = schema
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        if created + 3600 < now {
            // Identifiers cannot be bound; these names come from pg_namespace
            // and match the pattern above.
            let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .map_err(backend)?;
        }
    }
    let sql = format!("CREATE SCHEMA \"{name}\"");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .map_err(backend)?;
    let separator = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{separator}options[search_path]={name}"))
}

/// Accounts `u0`, `u1`, … with distinct token hashes and one shared
/// password hash, for benches that provision users straight into a store.
pub fn numbered_accounts(n: usize) -> Vec<ProvisionedAccount> {
    (0..n)
        .map(|i| ProvisionedAccount {
            username: format!("u{i}"),
            password_hash: "h".into(),
            token_hash: {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&(i as u64).to_le_bytes());
                h
            },
            created_at: 0,
            expires_at: 1,
        })
        .collect()
}

/// A message text for tests and benches; panics on text no client could send.
pub fn body(text: impl Into<String>) -> MessageBody {
    MessageBody::parse(text.into(), usize::MAX).unwrap_or_else(|code| panic!("not a message body: {code}"))
}

/// An idempotency key for tests and benches; panics on one no client could send.
pub fn key(key: impl Into<String>) -> ClientMsgId {
    ClientMsgId::parse(key.into()).unwrap_or_else(|code| panic!("not a client_msg_id: {code}"))
}

/// The ids of a batch's stored messages, in order; panics at any other
/// outcome.
pub fn stored_ids(outcomes: &[crate::WriteOutcome]) -> Vec<dyad_protocol::MessageId> {
    outcomes
        .iter()
        .map(|o| match o {
            crate::WriteOutcome::Stored { message, .. } => message.id,
            other => panic!("not stored: {other:?}"),
        })
        .collect()
}
