//! Upgrades keep every message: databases written by the release before
//! this one (`tests/fixtures/upgrade/`, made as its README says) open in
//! today's server, which migrates them and then shows each user the same
//! settings, devices, blocks, conversations, messages and search results
//! the old server showed.

use serde_json::Value;

use crate::helpers::ServerProcess;

const SQLITE: &[u8] = include_bytes!("../fixtures/upgrade/sqlite.db");
const SQLITE_VIEWS: &str = include_str!("../fixtures/upgrade/expected.json");
const POSTGRES: &str = include_str!("../fixtures/upgrade/postgres.sql");
const POSTGRES_VIEWS: &str = include_str!("../fixtures/upgrade/postgres.json");

/// `value` without the fields that change by being looked at: a device's
/// `last_used_at` moves when its token is used (to the minute).
fn comparable(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(k, _)| k.as_str() != "last_used_at")
                .map(|(k, v)| (k.clone(), comparable(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(comparable).collect()),
        other => other.clone(),
    }
}

/// Asks `base` every question of the fixture, with the same token, and
/// expects the old server's answer.
async fn answers_as_before(base: &str, expected: &str) {
    let views: Vec<Value> = serde_json::from_str(expected).unwrap();
    assert!(views.len() > 30);
    let http = reqwest::Client::new();
    for view in views {
        let (user, path) = (view["user"].as_str().unwrap(), view["path"].as_str().unwrap());
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(view["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), view["status"], "{user} {path}");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(comparable(&body), comparable(&view["body"]), "{user} {path}");
    }
}

#[tokio::test]
async fn a_sqlite_store_of_the_last_release_opens_with_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    std::fs::write(&db, SQLITE).unwrap();
    let server = ServerProcess::start(&["--database", &format!("sqlite://{}", db.display())]).await;
    answers_as_before(&server.base, SQLITE_VIEWS).await;
}

#[tokio::test]
async fn a_postgres_store_of_the_last_release_opens_with_everything_in_it() {
    use sqlx::Connection;
    let admin_url = dyad_store::testing::postgres_url();
    let name = format!(
        "dyad_upgrade_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    // The name is made above, not input.
    let create = format!("CREATE DATABASE {name}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&mut admin)
        .await
        .unwrap();
    let (server_part, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{server_part}/{name}");
    {
        let mut old = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(POSTGRES))
            .execute(&mut old)
            .await
            .unwrap();
        old.close().await.unwrap();
    }
    let mut server = ServerProcess::start(&["--database", &url]).await;
    answers_as_before(&server.base, POSTGRES_VIEWS).await;
    server.terminate().await;
    let drop = format!("DROP DATABASE {name} WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
        .execute(&mut admin)
        .await
        .unwrap();
}
