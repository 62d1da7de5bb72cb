//! `dyad admin`: operator commands that work on the store directly.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use dyad_protocol::UserId;
use dyad_server::accounts::{hash_password, random_token, token_hash};
use dyad_server::clock::now_ms;
use dyad_server::domain::{ClientMsgId, MessageBody, Password, Username};
use dyad_server::errors::ApiError;
use dyad_store::ProvisionedAccount;

/// The password every provisioned account gets (they are for load tests).
pub const PROVISIONED_PASSWORD: &str = "dyad-bench-password";
/// Accounts written per transaction.
const CHUNK: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create many users with a session token each, straight into the store
    /// (for load tests: 100,000 users take seconds, not the hours that
    /// hashing a password per login would).
    Provision(ProvisionArgs),
    /// Fill a store with messages between provisioned pairs of users (for
    /// measuring history reads and restarts on a big store).
    Fill(FillArgs),
    /// Manage one account (with or without a running server).
    #[command(subcommand)]
    User(UserCommand),
    /// Copy a SQLite store to a new file while the server keeps running: a
    /// consistent snapshot holding every message acked before it began.
    /// (PostgreSQL: use pg_dump or continuous archiving; docs/OPERATIONS.md.)
    Backup(BackupArgs),
    /// Put a backup in place of a SQLite store; the server must be stopped.
    Restore(RestoreArgs),
    /// Move a SQLite store into an empty PostgreSQL database: every account,
    /// session, setting, block and message, with the same ids. Stop the
    /// server first; start it (or a cluster) on the new database after.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The SQLite store to copy (sqlite://PATH).
    #[arg(long)]
    from: String,
    /// The empty PostgreSQL database to fill (postgres://USER@HOST:PORT/DB).
    #[arg(long)]
    to: String,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The new file to write (it must not exist).
    path: PathBuf,
    /// The store to copy.
    #[arg(long, env = "DYAD_DATABASE", default_value = "sqlite://dyad-data/dyad.db")]
    database: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup to put back (checked before anything is touched).
    backup: PathBuf,
    /// The store to restore into.
    #[arg(long, env = "DYAD_DATABASE", default_value = "sqlite://dyad-data/dyad.db")]
    database: String,
    /// Overwrite a store that exists (it must not be open in a server).
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account, e.g. on a server with `--registration closed`; the
    /// password is read from stdin (or asked for at a terminal).
    Add(UserArgs),
    /// Set a new password (read from stdin, or asked for) and end every
    /// session of the user.
    ResetPassword(UserArgs),
    /// Delete an account: its sessions end, its name becomes free, and
    /// messages to it are refused; the people it talked to keep the history.
    Delete(UserArgs),
}

#[derive(Debug, Args)]
pub struct UserArgs {
    /// The username.
    name: String,
    /// The store the server uses.
    #[arg(long, env = "DYAD_DATABASE", default_value = "sqlite://dyad-data/dyad.db")]
    database: String,
}

#[derive(Debug, Args)]
pub struct FillArgs {
    /// The store to fill (the server should not be running).
    #[arg(long, env = "DYAD_DATABASE", default_value = "sqlite://dyad-data/dyad.db")]
    database: String,
    /// Users, in pairs: FILL-0 and FILL-1 chat, FILL-2 and FILL-3, …
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Where to write the users' tokens.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The store the server uses.
    #[arg(long, env = "DYAD_DATABASE", default_value = "sqlite://dyad-data/dyad.db")]
    database: String,
    /// How many users: PREFIX-0, PREFIX-1, … (existing ones get a new token).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Username prefix.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Where to write `user_id<TAB>username<TAB>token` lines.
    #[arg(long)]
    out: PathBuf,
    /// How long the tokens live.
    #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// A provisioned user and its bearer token.
#[derive(Debug, Clone)]
pub struct BenchUser {
    pub id: UserId,
    pub username: String,
    pub token: String,
}

/// Messages per transaction when filling.
const FILL_BATCH: usize = 4096;
/// The fill's clock starts here (ms since the epoch) and moves 1 ms per batch,
/// so that `before` values between it and the end land at every depth.
pub const FILL_EPOCH: i64 = 1_700_000_000_000;

/// Distinct words in the fill's text.
pub const VOCABULARY: u64 = 20_000;
/// Words per filled message (after "fill message N").
const FILL_WORDS: usize = 8;

/// Word `rank` of the fill's vocabulary (0 is the most common): syllables
/// spelled from the rank's digits, so every rank has its own word.
pub fn fill_word(rank: u64) -> String {
    const SYLLABLES: [&str; 20] = [
        "ka", "lo", "mi", "nu", "pe", "ra", "so", "ti", "vu", "ze", "bo", "da", "fe", "gi", "ho", "ju", "ke", "li",
        "mo", "na",
    ];
    let mut word = String::new();
    let mut r = rank + 1;
    while r > 0 {
        word.push_str(SYLLABLES[(r % 20) as usize]);
        r /= 20;
    }
    word
}

/// A rank drawn from `x` (a random number) log-uniformly, as word use
/// roughly goes (Zipf): rank 0 about as often as ranks 1-2, those as 3-6…
pub fn zipf_rank(x: u64) -> u64 {
    let u = (x >> 11) as f64 / (1u64 << 53) as f64;
    ((VOCABULARY as f64).powf(u) as u64)
        .saturating_sub(1)
        .min(VOCABULARY - 1)
}

/// The text of filled message `i`.
fn fill_text(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut text = format!("fill message {i}");
    for _ in 0..FILL_WORDS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push(' ');
        text.push_str(&fill_word(zipf_rank(x)));
    }
    text
}

/// `dyad admin user …`: the names and passwords obey the same rules as
/// registration over the API.
async fn user(command: UserCommand) -> anyhow::Result<()> {
    let (UserCommand::Add(args) | UserCommand::ResetPassword(args) | UserCommand::Delete(args)) = &command;
    let name = Username::parse(&args.name).map_err(|_| anyhow::anyhow!("{}", ApiError::InvalidUsername))?;
    let open = || async {
        dyad_store::open(&args.database)
            .await
            .with_context(|| format!("opening {}", args.database))
    };
    match &command {
        UserCommand::Add(_) => {
            let hash = new_password_hash()?;
            match open().await?.create_user(name.as_str(), &hash, now_ms()).await {
                Ok(user) => println!("added {} ({})", user.username, user.id),
                Err(dyad_store::StoreError::UsernameTaken) => anyhow::bail!("{} is taken", name.as_str()),
                Err(e) => return Err(e.into()),
            }
        }
        UserCommand::ResetPassword(_) => {
            let hash = new_password_hash()?;
            let store = open().await?;
            let user = existing(&*store, &name).await?;
            store.reset_password(user.id, &hash).await?;
            println!(
                "reset the password of {}; every session of theirs has ended",
                user.username
            );
        }
        UserCommand::Delete(_) => {
            let store = open().await?;
            let user = existing(&*store, &name).await?;
            store.delete_user(user.id, now_ms()).await?;
            println!(
                "deleted {} ({}); every session of theirs has ended",
                user.username, user.id
            );
        }
    }
    Ok(())
}

/// Reads a new password (stdin, or asked for at a terminal) and hashes it.
fn new_password_hash() -> anyhow::Result<String> {
    let password = crate::term::read_password(!std::io::stdin().is_terminal())?;
    let password = Password::parse(&password).map_err(|_| anyhow::anyhow!("{}", ApiError::InvalidPassword))?;
    Ok(hash_password(password.as_bytes())?)
}

async fn existing(store: &dyn dyad_store::MessageStore, name: &Username) -> anyhow::Result<dyad_store::UserRecord> {
    store
        .user_by_username(name.as_str())
        .await?
        .with_context(|| format!("no user {}", name.as_str()))
}

async fn fill(args: FillArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.users >= 2 && args.users.is_multiple_of(2), "--users must be even");
    let users = provision(&args.database, "fill", args.users, Duration::from_secs(30 * 24 * 3600)).await?;
    write_tokens(&args.out, &users)?;
    let store = dyad_store::open_exclusive(&args.database).await?;
    let started = std::time::Instant::now();
    let mut written = 0usize;
    let mut batch_no = 0i64;
    while written < args.messages {
        let n = FILL_BATCH.min(args.messages - written);
        let ops = (written..written + n)
            .map(|i| {
                let from = i % users.len();
                let invalid = |code| anyhow::anyhow!("fill message {i}: {code}");
                Ok(dyad_store::WriteOp::Send(dyad_store::NewMessage {
                    sender_id: users[from].id,
                    recipient_id: users[from ^ 1].id,
                    body: MessageBody::parse(fill_text(i), usize::MAX).map_err(invalid)?,
                    client_msg_id: Some(ClientMsgId::parse(format!("fill-{i}")).map_err(invalid)?),
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        store.write_batch(ops, FILL_EPOCH + batch_no).await?;
        written += n;
        batch_no += 1;
        if batch_no % 250 == 0 {
            eprintln!(
                "{written} messages, {:.0}/s",
                written as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "filled {} messages in {:.1} s; tokens in {}",
        written,
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::User(command) => user(command).await,
        AdminCommand::Fill(args) => fill(args).await,
        AdminCommand::Backup(args) => {
            let started = std::time::Instant::now();
            let source = sqlite_path(&args.database)?;
            let summary = dyad_store::sqlite::backup::backup(source, &args.path)
                .with_context(|| format!("backing up {} to {}", source.display(), args.path.display()))?;
            println!(
                "backed up {} messages and {} users ({} bytes, schema version {}) to {} in {:.2} s",
                summary.messages,
                summary.users,
                summary.bytes,
                summary.schema_version,
                args.path.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        AdminCommand::Migrate(args) => migrate(args).await,
        AdminCommand::Restore(args) => {
            let dest = sqlite_path(&args.database)?;
            let summary = dyad_store::sqlite::backup::restore(&args.backup, dest, args.replace)
                .with_context(|| format!("restoring {} to {}", args.backup.display(), dest.display()))?;
            println!(
                "restored {} messages and {} users (schema version {}) to {}",
                summary.messages,
                summary.users,
                summary.schema_version,
                dest.display()
            );
            Ok(())
        }
        AdminCommand::Provision(args) => {
            let started = std::time::Instant::now();
            let users = provision(&args.database, &args.prefix, args.users, args.ttl).await?;
            write_tokens(&args.out, &users)?;
            eprintln!(
                "provisioned {} users in {:.2} s into {}; tokens in {}",
                users.len(),
                started.elapsed().as_secs_f64(),
                args.database,
                args.out.display()
            );
            Ok(())
        }
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let source = sqlite_path(&args.from)?;
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        anyhow::bail!("--to takes a postgres:// URL");
    }
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new_spinner();
    let copied = dyad_store::postgres::import::from_sqlite(source, &args.to, |table, n| {
        bar.set_message(format!("{table}: {n}"));
        bar.tick();
    })
    .await
    .with_context(|| format!("migrating {} to PostgreSQL", source.display()))?;
    bar.finish_and_clear();
    println!(
        "migrated {} users, {} sessions, {} conversations and {} messages in {:.1} s",
        copied.users,
        copied.sessions,
        copied.conversations,
        copied.messages,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The file of a `sqlite://` store; PostgreSQL has its own tools.
fn sqlite_path(database: &str) -> anyhow::Result<&std::path::Path> {
    match database.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(std::path::Path::new(path)),
        _ => anyhow::bail!(
            "backup and restore here are for SQLite stores; for PostgreSQL use pg_dump and pg_restore, \
             or continuous archiving (docs/OPERATIONS.md)"
        ),
    }
}

/// Creates (or reuses) `count` users named `PREFIX-i`, each with a new token.
pub async fn provision(database: &str, prefix: &str, count: usize, ttl: Duration) -> anyhow::Result<Vec<BenchUser>> {
    let store = dyad_store::open(database)
        .await
        .with_context(|| format!("opening {database}"))?;
    let hash = hash_password(PROVISIONED_PASSWORD.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = now_ms();
    let expires_at = now + ttl.as_millis() as i64;
    let mut users = Vec::with_capacity(count);
    for start in (0..count).step_by(CHUNK) {
        let mut chunk = Vec::new();
        let mut tokens = Vec::new();
        for i in start..(start + CHUNK).min(count) {
            let token = random_token().map_err(|e| anyhow::anyhow!("{e}"))?;
            chunk.push(ProvisionedAccount {
                username: format!("{prefix}-{i}"),
                password_hash: hash.clone(),
                token_hash: token_hash(&token),
                created_at: now,
                expires_at,
            });
            tokens.push(token);
        }
        let names: Vec<String> = chunk.iter().map(|a| a.username.clone()).collect();
        let ids = store.provision(chunk).await?;
        for ((id, username), token) in ids.into_iter().zip(names).zip(tokens) {
            users.push(BenchUser { id, username, token });
        }
    }
    Ok(users)
}

pub fn write_tokens(path: &PathBuf, users: &[BenchUser]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for u in users {
        writeln!(out, "{}\t{}\t{}", u.id, u.username, u.token)?;
    }
    out.flush()?;
    Ok(())
}

pub fn read_tokens(path: &PathBuf) -> anyhow::Result<Vec<BenchUser>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split('\t');
            let (Some(id), Some(name), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
                anyhow::bail!("bad tokens line: {line:?}");
            };
            let id = id.parse().map_err(|_| anyhow::anyhow!("bad user id {id:?}"))?;
            Ok(BenchUser {
                id,
                username: name.to_owned(),
                token: token.to_owned(),
            })
        })
        .collect()
}
