//! The OpenAPI document: served, complete, and true. schemathesis (from
//! PyPI; `.ci/run` installs it) sends generated requests to every operation
//! and checks the answers against the document: no 5xx, only documented
//! statuses, and every 4xx with the error body.

use std::process::Stdio;

use serde_json::Value;

use crate::helpers::*;

async fn document(base: &str) -> Value {
    reqwest::get(format!("{base}/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_document_names_every_route_and_each_4xx_has_the_error_body() {
    let server = TestServer::spawn().await;
    let doc = document(&server.base).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut names: Vec<&str> = paths.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "/api/v1/blocks",
            "/api/v1/blocks/{user_id}",
            "/api/v1/conversations",
            "/api/v1/messages/{user_id}",
            "/api/v1/search",
            "/api/v1/sessions",
            "/api/v1/sessions/current",
            "/api/v1/sessions/{session_id}",
            "/api/v1/users",
            "/api/v1/users/by-username/{username}",
            "/api/v1/users/me",
            "/api/v1/users/me/password",
            "/api/v1/users/me/settings",
            "/api/v1/users/{user_id}/status",
            "/api/v1/ws",
        ]
    );
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
            }
        }
    }
    // Every documented path is routed (a made-up one is not).
    let http = reqwest::Client::new();
    for path in paths.keys() {
        let url = format!(
            "{}{}",
            server.base,
            path.replace("{user_id}", "u1")
                .replace("{username}", "x")
                .replace("{session_id}", "s1")
        );
        let body: Value = http.get(&url).send().await.unwrap().json().await.unwrap_or_default();
        assert_ne!(
            body["error"]["code"], "not_found",
            "{path} is documented but not routed"
        );
    }
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let schemathesis = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let found = std::process::Command::new(&schemathesis).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{schemathesis} not found: `pip install schemathesis` (.ci/run does)"
    );
    let _heavy = heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("dyad.db").display());
    let quiet = ["--rate-limit", "0", "--abuse-limits", "off", "--log", "error"];
    let server = ServerProcess::start_with(&quiet, &["--database", &db]).await;
    let mut alice = dyad_client::Client::new(&server.base);
    alice.register("alice", PASSWORD).await.unwrap();
    alice.register("bob", PASSWORD).await.unwrap();
    let token = alice.login("alice", PASSWORD).await.unwrap().token;
    // A fixed seed: the same cases every run, so a failure is reproducible;
    // SCHEMATHESIS_SEED explores others.
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261130".into());
    let output = tokio::process::Command::new(&schemathesis)
        .args([
            "run",
            &format!("{}/api/v1/openapi.json", server.base),
            "--header",
            &format!("Authorization: Bearer {token}"),
            // Logging out would end the token the other operations use.
            "--exclude-method",
            "DELETE",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "60",
            "--seed",
            &seed,
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), output)
        .await
        .expect("schemathesis did not finish in 5 minutes")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("passed"), "{text}");
}
