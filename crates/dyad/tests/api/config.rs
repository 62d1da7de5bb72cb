//! `dyad serve --config`: the layers (defaults, file, environment, flags),
//! `--print-config`, and errors that point at the file and line.

use std::path::Path;
use std::process::{Command, Output};

use crate::helpers::ServerProcess;

/// `dyad serve ARGS` with only the given `DYAD_*` variables set.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dyad"));
    for (name, _) in std::env::vars() {
        if name.starts_with("DYAD_") {
            command.env_remove(name);
        }
    }
    command
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The settings `--print-config` shows for `args` and `env`.
fn printed(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut args = args.to_vec();
    args.push("--print-config");
    let out = serve(&args, env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().parse().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "dyad.toml",
        "# a comment\nrate_limit = 5\nrate_burst = 6\nmax_batch = 7\nedit_window = \"1h\"\n\
         database = \"postgres://chat:hunter2@db.example:5432/chat\"\n",
    );
    let env = [("DYAD_RATE_LIMIT", "8"), ("DYAD_RATE_BURST", "9")];
    let shown = printed(&["--config", &file, "--rate-limit", "10"], &env);
    let int = |key: &str| shown[key].as_integer().unwrap();
    assert_eq!(int("rate_limit"), 10, "flag");
    assert_eq!(int("rate_burst"), 9, "environment");
    assert_eq!(int("max_batch"), 7, "file");
    assert_eq!(shown["edit_window"].as_str(), Some("1h"), "file");
    assert_eq!(int("max_frame_bytes"), 65536, "default");
    assert_eq!(shown["listen"].as_str(), Some("127.0.0.1:8080"), "default");
    // Secrets are masked; the rest of the URL is shown.
    assert_eq!(
        shown["database"].as_str(),
        Some("postgres://chat:****@db.example:5432/chat")
    );

    // What it prints is a config file that gives the same settings.
    let again = write(dir.path(), "printed.toml", &toml::to_string(&shown).unwrap());
    assert_eq!(printed(&["--config", &again], &[]), shown);
    // With no file and nothing set: the defaults.
    let defaults = printed(&[], &[]);
    assert_eq!(defaults["rate_limit"].as_integer(), Some(20));
    assert_eq!(defaults["database"].as_str(), Some("sqlite://dyad-data/dyad.db"));
}

#[test]
fn a_bad_key_or_value_stops_start_up_naming_the_key_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |text: &str| {
        let file = write(dir.path(), "bad.toml", text);
        let out = serve(&["--config", &file], &[]);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(out.stdout.is_empty(), "nothing served");
        (file, String::from_utf8(out.stderr).unwrap())
    };
    let (file, error) = refused("listen = \"127.0.0.1:0\"\n\nrate_limt = 5\n");
    assert!(
        error.contains(&format!("{file}:3: rate_limt: unknown field")),
        "{error}"
    );
    let (file, error) = refused("# limits\nrate_limit = \"fast\"\n");
    assert!(
        error.contains(&format!("{file}:2: rate_limit: invalid type")),
        "{error}"
    );
    let (file, error) = refused("abuse_limits = \"maybe\"\n");
    assert!(
        error.contains(&format!("{file}:1: abuse_limits: unknown variant")),
        "{error}"
    );
    let (file, error) = refused("rate_limit = 1\n  edit_window = \"forever\"\n");
    assert!(error.contains(&format!("{file}:2: edit_window:")), "{error}");
    let (_, error) = refused("listen = \n");
    assert!(error.contains("line 1, column 10"), "{error}");
    let (_, error) = refused("redis = \"redis://127.0.0.1:6379/\"\n");
    assert!(error.contains("redis and node_id go together"), "{error}");

    let out = serve(&["--config", "/nonexistent/dyad.toml"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dyad.toml not found"));
    // A bad environment variable is named too.
    let out = serve(&["--print-config"], &[("DYAD_RATE_LIMIT", "fast")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fast"));
}

#[tokio::test]
async fn a_server_runs_on_the_settings_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-file.db");
    let file = write(
        dir.path(),
        "dyad.toml",
        &format!(
            "database = \"sqlite://{}\"\nregistration = \"closed\"\nlog = \"warn\"\n",
            db.display()
        ),
    );
    let server = ServerProcess::start_with(&[], &["--config", &file]).await;
    assert!(db.exists(), "the file's database is the one opened");
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/users", server.base))
        .json(&serde_json::json!({"username": "mallory", "password": "a long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "the file closed registration");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_fields_of_their_spans() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dyad"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log",
            "debug",
        ])
        .args(["--database", &format!("sqlite://{}", dir.path().join("d.db").display())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = stdout.next_line().await.unwrap().unwrap();
    let base = line.strip_prefix("dyad listening on ").unwrap().to_owned();
    let mut alice = dyad_client::Client::new(&base);
    alice.register("alice", crate::helpers::PASSWORD).await.unwrap();
    let alice_id = alice.login("alice", crate::helpers::PASSWORD).await.unwrap().user_id;
    let _conn = alice.connect().await.unwrap();

    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen_serving = false;
    loop {
        let line = tokio::time::timeout(crate::helpers::WAIT, stderr.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["timestamp"].is_string() && event["level"].is_string(), "{line}");
        match event["fields"]["message"].as_str() {
            Some("serving") => {
                assert!(event["fields"]["addr"].is_string(), "{line}");
                seen_serving = true;
            }
            // Inside the connection's span: its fields come with the line.
            Some("connected") => {
                assert_eq!(event["span"]["name"], "session", "{line}");
                assert_eq!(event["span"]["user_id"], alice_id.to_string(), "{line}");
                assert!(event["spans"].is_array(), "{line}");
                break;
            }
            _ => {}
        }
    }
    assert!(seen_serving);
}
