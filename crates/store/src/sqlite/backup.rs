//! Online backups of a SQLite store, and putting one back.
//!
//! A backup is `VACUUM INTO`: one read transaction, so one consistent
//! snapshot, which WAL lets run beside a server that keeps writing. What a
//! backup holds is every transaction committed before it began, and every
//! message acked before it began was committed before its ack.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::schema;
use crate::{StoreResult, backend};

/// What a backup (or a database) holds, as checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Its schema version.
    pub schema_version: usize,
    /// Accounts, deleted ones included.
    pub users: i64,
    /// Messages, deleted ones included (their text is gone).
    pub messages: i64,
    /// Its size on disk.
    pub bytes: u64,
}

/// Copies the database at `source` into `dest`, a new file, while a server
/// may keep writing; then checks the copy.
pub fn backup(source: &Path, dest: &Path) -> StoreResult<Summary> {
    if !source.is_file() {
        return Err(backend(format!("{}: no such database", source.display())));
    }
    create_owner_only(dest)?;
    let copied = (|| {
        let conn = read_only(source)?;
        schema::version(&conn).map_err(backend)?;
        let dest_name = dest.to_str().ok_or_else(|| backend("the backup path is not UTF-8"))?;
        conn.execute("VACUUM INTO ?1", [dest_name]).map_err(backend)?;
        verify(dest)
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    copied
}

/// Checks that `path` is a whole dyad database this build can open, and
/// says what it holds.
pub fn verify(path: &Path) -> StoreResult<Summary> {
    let conn = read_only(path)?;
    let schema_version = schema::version(&conn).map_err(backend)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(backend)?;
    if check != "ok" {
        return Err(backend(format!("{} is damaged: {check}", path.display())));
    }
    let count = |table: &str| -> StoreResult<i64> {
        // The table names are the two below, not input.
        let sql = format!("SELECT count(*) FROM {table}");
        conn.query_row(&sql, [], |r| r.get(0)).map_err(backend)
    };
    Ok(Summary {
        schema_version,
        users: count("users")?,
        messages: count("messages")?,
        bytes: std::fs::metadata(path).map_err(backend)?.len(),
    })
}

/// Puts the backup at `backup` in place of the database at `dest`, which
/// no server may have open. An existing database is replaced only if
/// `replace`.
pub fn restore(backup: &Path, dest: &Path, replace: bool) -> StoreResult<Summary> {
    let summary = verify(backup)?;
    if dest.exists() {
        if !replace {
            return Err(backend(format!(
                "{} exists: stop the server, and pass --replace to overwrite it",
                dest.display()
            )));
        }
        not_in_use(dest)?;
    }
    let staged = dest.with_extension("restoring");
    let _ = std::fs::remove_file(&staged);
    create_owner_only(&staged)?;
    std::fs::copy(backup, &staged).map_err(|e| backend(format!("copying to {}: {e}", staged.display())))?;
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(backend)?;
    // The old database's WAL would be replayed into the new file.
    for suffix in ["-wal", "-shm"] {
        let stale = format!("{}{suffix}", dest.display());
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(backend(format!("removing {stale}: {e}"))),
        }
    }
    std::fs::rename(&staged, dest).map_err(backend)?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(backend)?;
    }
    Ok(summary)
}

/// Fails if a connection (a running server) has the database open: leaving
/// WAL mode needs every other connection gone.
fn not_in_use(path: &Path) -> StoreResult<()> {
    let conn = Connection::open(path).map_err(backend)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| backend(format!("{} is in use ({e}): stop the server first", path.display())))?;
    if mode != "delete" {
        return Err(backend(format!("{} is in use: stop the server first", path.display())));
    }
    Ok(())
}

fn read_only(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| backend(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
    Ok(conn)
}

/// Creates `path` empty and readable by its owner only (it will hold every
/// message); refuses if it exists.
fn create_owner_only(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| backend(format!("{}: {e}", path.display())))
}
