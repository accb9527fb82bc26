//! Opening the database: file creation, connection settings and schema migrations.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::error::StoreError;

/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ordered schema migrations. Entry `i` upgrades the schema from version `i` to `i + 1`;
/// the current version is kept in `PRAGMA user_version`. Append only; never edit an entry
/// that has shipped.
const MIGRATIONS: &[&str] = &[
    // Version 1: users, groups, tokens, session index.
    "
    CREATE TABLE users (
        name       TEXT    NOT NULL PRIMARY KEY,
        created_ms INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE user_groups (
        user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        group_name TEXT NOT NULL,
        PRIMARY KEY (user_name, group_name)
    ) STRICT;

    CREATE TABLE tokens (
        id           TEXT    NOT NULL PRIMARY KEY,
        user_name    TEXT    NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        hash         TEXT    NOT NULL UNIQUE,
        created_ms   INTEGER NOT NULL,
        expires_ms   INTEGER NOT NULL,
        revoked_ms   INTEGER,
        last_used_ms INTEGER
    ) STRICT;
    CREATE INDEX tokens_by_user ON tokens(user_name);

    -- No foreign key to users: the session index must outlive removed users.
    CREATE TABLE sessions (
        id            TEXT    NOT NULL PRIMARY KEY,
        user_name     TEXT    NOT NULL,
        actor         TEXT    NOT NULL,
        connection    TEXT    NOT NULL,
        protocol      TEXT    NOT NULL,
        client_addr   TEXT    NOT NULL,
        started_ms    INTEGER NOT NULL,
        ended_ms      INTEGER,
        end_reason    TEXT,
        statements    INTEGER NOT NULL DEFAULT 0,
        audit_segment INTEGER NOT NULL,
        audit_offset  INTEGER NOT NULL,
        audit_seq     INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX sessions_by_start ON sessions(started_ms);
    CREATE INDEX sessions_by_user ON sessions(user_name, started_ms);
    CREATE INDEX sessions_by_connection ON sessions(connection, started_ms);
    ",
    // Version 2: where the audit log was known to be durable, kept outside the log so
    // that removing its newest records is detected.
    "
    CREATE TABLE audit_anchor (
        id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        seq        INTEGER NOT NULL,
        hash       TEXT    NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT;
    ",
    // Version 3: reviews of held statements and who approved them.
    "
    CREATE TABLE reviews (
        id             TEXT    NOT NULL PRIMARY KEY,
        created_ms     INTEGER NOT NULL,
        expires_ms     INTEGER NOT NULL,
        requester      TEXT    NOT NULL,
        actor          TEXT    NOT NULL,
        connection     TEXT    NOT NULL,
        session_id     TEXT    NOT NULL,
        rule           TEXT    NOT NULL,
        mode           TEXT    NOT NULL,
        statement      TEXT    NOT NULL,
        params         TEXT    NOT NULL,
        statement_hash TEXT    NOT NULL,
        reviewers      TEXT    NOT NULL,
        min_approvals  INTEGER NOT NULL,
        use_window_ms  INTEGER NOT NULL,
        status         TEXT    NOT NULL,
        decided_ms     INTEGER,
        decided_by     TEXT,
        reason         TEXT,
        use_by_ms      INTEGER,
        used_ms        INTEGER
    ) STRICT;
    CREATE INDEX reviews_by_status ON reviews(status, created_ms);
    CREATE INDEX reviews_by_hash ON reviews(statement_hash, requester, connection);
    CREATE TABLE review_approvals (
        review_id  TEXT    NOT NULL REFERENCES reviews(id),
        approver   TEXT    NOT NULL,
        at_ms      INTEGER NOT NULL,
        reason     TEXT,
        PRIMARY KEY (review_id, approver)
    ) STRICT;
    ",
    // Version 4: time-boxed access requests.
    "
    CREATE TABLE access_requests (
        id          TEXT    NOT NULL PRIMARY KEY,
        created_ms  INTEGER NOT NULL,
        requester   TEXT    NOT NULL,
        connection  TEXT    NOT NULL,
        lift_rule   TEXT,
        reason      TEXT    NOT NULL,
        duration_ms INTEGER NOT NULL,
        status      TEXT    NOT NULL,
        decided_ms  INTEGER,
        decided_by  TEXT,
        decision_reason TEXT,
        starts_ms   INTEGER,
        ends_ms     INTEGER
    ) STRICT;
    CREATE INDEX access_by_requester ON access_requests(requester, connection, status);
    ",
    // Version 5: identity. Who a user is (person or service account), what they may do
    // (role), where they come from (local or an OpenID Connect provider), an optional
    // argon2 password, the provider identity (issuer + subject) a user is bound to; what
    // each token is for; refresh handles for sign-ins through an
    // identity provider (the provider's refresh token sealed with the gateway's key).
    "
    ALTER TABLE users ADD COLUMN actor TEXT NOT NULL DEFAULT 'human';
    ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'user';
    ALTER TABLE users ADD COLUMN origin TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE users ADD COLUMN password_hash TEXT;
    ALTER TABLE users ADD COLUMN external_id TEXT;
    ALTER TABLE tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'token';
    CREATE TABLE refresh_handles (
        id         TEXT    NOT NULL PRIMARY KEY,
        user_name  TEXT    NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        hash       TEXT    NOT NULL UNIQUE,
        sealed     TEXT    NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        used_ms    INTEGER
    ) STRICT;
    CREATE INDEX refresh_by_user ON refresh_handles(user_name);
    ",
    // Version 6: remote agents, their key hashes, and what the gateway last saw of their
    // tunnels (for `sluice agents list`, which reads the store, not the gateway).
    "
    CREATE TABLE agents (
        name       TEXT    NOT NULL PRIMARY KEY,
        key_id     TEXT    NOT NULL,
        key_hash   TEXT    NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER,
        state      TEXT    NOT NULL DEFAULT '[]',
        state_ms   INTEGER
    ) STRICT;
    ",
    // Version 7: the agent context (JSON) of a held statement, so reviewers see the prompt.
    "
    ALTER TABLE reviews ADD COLUMN context TEXT;
    ",
    // Version 8: the statement index the console filters sessions by, filled from the
    // audit log behind the writer (the log stays the record; this is a derived index),
    // per-session counts of denied, held and masked statements, and how far it has read.
    "
    ALTER TABLE sessions ADD COLUMN denied INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN masked INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX sessions_by_actor ON sessions(actor, started_ms);
    -- Few sessions have a denied, held or masked statement: their own small indexes.
    CREATE INDEX sessions_denied ON sessions(started_ms) WHERE denied > 0;
    CREATE INDEX sessions_held ON sessions(started_ms) WHERE held > 0;
    CREATE INDEX sessions_masked ON sessions(started_ms) WHERE masked > 0;

    CREATE TABLE statements (
        session_id   TEXT    NOT NULL,
        statement_id INTEGER NOT NULL,
        seq          INTEGER NOT NULL,
        time_ms      INTEGER NOT NULL,
        decision     TEXT    NOT NULL,
        held         INTEGER NOT NULL,
        masked       INTEGER NOT NULL DEFAULT 0,
        statement    TEXT    NOT NULL,
        PRIMARY KEY (session_id, statement_id)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE audit_index (
        id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        segment INTEGER NOT NULL,
        offset  INTEGER NOT NULL,
        seq     INTEGER NOT NULL
    ) STRICT;
    ",
    // v9: AWS access keys; the secret is sealed, a SigV4 check needs it.
    "
    CREATE TABLE aws_keys (
        id            TEXT    NOT NULL PRIMARY KEY,
        user_name     TEXT    NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        sealed_secret TEXT    NOT NULL,
        created_ms    INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL,
        revoked_ms    INTEGER,
        last_used_ms  INTEGER,
        connection    TEXT
    ) STRICT;
    CREATE INDEX aws_keys_by_user ON aws_keys(user_name);
    ",
    // v10: header-signed AWS requests already served, kept while they would be accepted,
    // so a captured request cannot be sent again, not even after a restart.
    "
    CREATE TABLE used_signatures (
        signature TEXT    NOT NULL PRIMARY KEY,
        until_ms  INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX used_signatures_by_until ON used_signatures(until_ms);
    ",
];

/// Handle to the metadata database.
///
/// One SQLite connection behind a mutex: `Send + Sync`, shareable through an `Arc`.
/// Several processes may each hold a `Store` on the same file.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to the current
    /// schema. Missing parent directories are created; on unix the file is restricted to
    /// mode 0600 because it holds token hashes.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        prepare_file(path)?;
        Store::init(Connection::open(path)?)
    }

    /// Opens a private in-memory database with the current schema (for tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets readers proceed while another process writes. The pragma answers with
        // the resulting mode ("memory" for in-memory databases), which needs no check.
        // Switching a fresh file to WAL needs it to itself, and SQLite answers BUSY at once
        // instead of waiting when another process (the gateway and a CLI command on a new
        // install) opens it at the same moment: retry within the busy timeout.
        let started = std::time::Instant::now();
        loop {
            match conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            {
                Ok(_) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // NORMAL is durable against application crashes and is the usual pairing with WAL.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` in a read transaction, so all its queries see one consistent snapshot.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Deferred, f)
    }

    /// Runs `f` in a write transaction and commits it if `f` succeeds.
    ///
    /// The write lock is taken at the start (IMMEDIATE): a transaction that read first and
    /// upgraded later could fail with `SQLITE_BUSY` without waiting if another process
    /// wrote in between.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(TransactionBehavior::Immediate, f)
    }

    fn transaction<T>(
        &self,
        behavior: TransactionBehavior,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(behavior)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Locks the connection.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held cannot leave a half-applied write behind: an
        // unfinished transaction is rolled back when dropped. A poisoned lock is usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates the parent directory and the file (mode 0600 on unix) and tightens the mode
/// of an existing file that is readable by group or others.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        }
    }
    Ok(())
}

/// Applies the migrations the database has not seen yet, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE takes the write lock up front, so two processes opening a fresh file at
    // the same time serialize here and the second one sees the first one's version.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn user_version(store: &Store) -> usize {
        store
            .conn()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn migrations_are_idempotent_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(user_version(&store), MIGRATIONS.len());
        store.add_user("alice", &["dba".to_string()]).unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        assert_eq!(user_version(&store), MIGRATIONS.len());
        assert_eq!(store.list_users().unwrap().len(), 1);
    }

    #[test]
    fn connection_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("sluice.db")).unwrap();
        let conn = store.conn();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |row| row.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let busy: i64 = conn
            .pragma_query_value(None, "busy_timeout", |row| row.get(0))
            .unwrap();
        assert_eq!(busy, 5000);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.db");
        let store = Store::open(&path).unwrap();
        store
            .conn()
            .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .unwrap();
        drop(store);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::SchemaTooNew { .. })
        ));
    }

    #[test]
    fn creates_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/sluice.db");
        Store::open(&path).unwrap();
        assert!(path.is_file());
    }

    #[cfg(unix)]
    #[test]
    fn file_mode_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.db");
        Store::open(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // An existing file readable by others is tightened on open.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Store::open(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn concurrent_writers_on_one_file_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.db");
        let writers: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|prefix| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&path).unwrap();
                    for i in 0..30 {
                        store.add_user(&format!("{prefix}{i}"), &[]).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(Store::open(&path).unwrap().list_users().unwrap().len(), 90);
    }

    #[test]
    fn two_handles_on_one_file_see_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.db");
        let gateway = Store::open(&path).unwrap();
        let cli = Store::open(&path).unwrap();

        cli.add_user("alice", &["dev".to_string()]).unwrap();
        assert!(gateway.get_user("alice").unwrap().is_some());

        gateway.add_user("bob", &[]).unwrap();
        let names: Vec<String> = cli
            .list_users()
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["alice", "bob"]);

        assert!(cli.remove_user("bob").unwrap());
        assert!(gateway.get_user("bob").unwrap().is_none());
    }
}
