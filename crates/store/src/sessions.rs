//! The session index: one row per client session, pointing at where the session's
//! events start in the audit log. The audit log itself holds the events.

use rusqlite::types::ToSql;
use rusqlite::{params, OptionalExtension, Row};

use crate::db::Store;
use crate::error::StoreError;

/// Rows returned by [`Store::list_sessions`] when [`SessionFilter::limit`] is 0.
const DEFAULT_LIMIT: u32 = 100;

/// One indexed session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub user: String,
    /// `human` or `agent`.
    pub actor: String,
    pub connection: String,
    pub protocol: String,
    pub client_addr: String,
    pub started_ms: i64,
    /// `None` while the session is open.
    pub ended_ms: Option<i64>,
    pub end_reason: Option<String>,
    /// Statements the session ran; final once the session has ended.
    pub statements: u64,
    /// Audit log segment holding the session's first event.
    pub audit_segment: u32,
    /// Byte offset of that event within the segment.
    pub audit_offset: u64,
    /// Sequence number of that event.
    pub audit_seq: u64,
    /// Statements denied, held for review, and whose answers masking changed, as far as
    /// the statement index has read the audit log.
    pub denied: u64,
    pub held: u64,
    pub masked: u64,
}

/// Which sessions [`Store::list_sessions`] returns. All conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub connection: Option<String>,
    /// Only sessions started at or after this time (unix milliseconds).
    pub since_ms: Option<i64>,
    /// Maximum rows; 0 means 100.
    pub limit: u32,
    /// Only sessions that have not ended.
    pub open_only: bool,
    /// `human` or `agent`.
    pub actor: Option<String>,
    /// Only sessions started before this time (unix milliseconds).
    pub until_ms: Option<i64>,
    /// Only sessions with a statement containing this text (case-insensitive for ASCII).
    pub statement: Option<String>,
    /// Only sessions with a denied / held / masked statement.
    pub denied: bool,
    pub held: bool,
    pub masked: bool,
    /// Keyset pagination: only sessions listed after this one (its start and id), in the
    /// newest-first order — the last row of the previous page.
    pub after: Option<(i64, String)>,
}

const SESSION_COLUMNS: &str = "id, user_name, actor, connection, protocol, client_addr, \
     started_ms, ended_ms, end_reason, statements, audit_segment, audit_offset, audit_seq, \
     denied, held, masked";

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: row.get(0)?,
        user: row.get(1)?,
        actor: row.get(2)?,
        connection: row.get(3)?,
        protocol: row.get(4)?,
        client_addr: row.get(5)?,
        started_ms: row.get(6)?,
        ended_ms: row.get(7)?,
        end_reason: row.get(8)?,
        statements: row.get(9)?,
        audit_segment: row.get(10)?,
        audit_offset: row.get(11)?,
        audit_seq: row.get(12)?,
        denied: row.get(13)?,
        held: row.get(14)?,
        masked: row.get(15)?,
    })
}

impl Store {
    /// Indexes a new session.
    pub fn insert_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        self.write(|tx| {
            let sql = format!(
                "INSERT INTO sessions ({SESSION_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            );
            tx.execute(
                &sql,
                params![
                    s.id,
                    s.user,
                    s.actor,
                    s.connection,
                    s.protocol,
                    s.client_addr,
                    s.started_ms,
                    s.ended_ms,
                    s.end_reason,
                    s.statements,
                    s.audit_segment,
                    s.audit_offset,
                    s.audit_seq,
                    s.denied,
                    s.held,
                    s.masked,
                ],
            )?;
            Ok(())
        })
    }

    /// Records how a session ended. Fails with [`StoreError::SessionNotFound`] if it was
    /// never indexed.
    pub fn end_session(
        &self,
        id: &str,
        ended_ms: i64,
        reason: Option<&str>,
        statements: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE sessions SET ended_ms = ?2, end_reason = ?3, statements = ?4
                 WHERE id = ?1",
                params![id, ended_ms, reason, statements],
            )?;
            if updated == 0 {
                return Err(StoreError::SessionNotFound(id.to_string()));
            }
            Ok(())
        })
    }

    /// Looks a session up by id.
    pub fn get_session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        self.read(|tx| {
            let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
            Ok(tx.query_row(&sql, [id], session_from_row).optional()?)
        })
    }

    /// Sessions matching `filter`, newest first.
    pub fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRow>, StoreError> {
        // Only fixed clause texts are joined into the SQL; every value is a parameter.
        let mut clauses: Vec<&str> = Vec::new();
        let mut args: Vec<&dyn ToSql> = Vec::new();
        if let Some(user) = &filter.user {
            clauses.push("user_name = ?");
            args.push(user);
        }
        if let Some(connection) = &filter.connection {
            clauses.push("connection = ?");
            args.push(connection);
        }
        if let Some(since_ms) = &filter.since_ms {
            clauses.push("started_ms >= ?");
            args.push(since_ms);
        }
        if filter.open_only {
            clauses.push("ended_ms IS NULL");
        }
        if let Some(actor) = &filter.actor {
            clauses.push("actor = ?");
            args.push(actor);
        }
        if let Some(until_ms) = &filter.until_ms {
            clauses.push("started_ms < ?");
            args.push(until_ms);
        }
        if filter.denied {
            clauses.push("denied > 0");
        }
        if filter.held {
            clauses.push("held > 0");
        }
        if filter.masked {
            clauses.push("masked > 0");
        }
        let pattern = filter.statement.as_deref().map(like_pattern);
        if let Some(pattern) = &pattern {
            clauses.push(
                "EXISTS (SELECT 1 FROM statements st WHERE st.session_id = sessions.id \
                 AND st.statement LIKE ? ESCAPE '\\')",
            );
            args.push(pattern);
        }
        if let Some((started_ms, id)) = &filter.after {
            clauses.push("(started_ms, id) < (?, ?)");
            args.push(started_ms);
            args.push(id);
        }
        let limit = if filter.limit == 0 {
            DEFAULT_LIMIT
        } else {
            filter.limit
        };
        args.push(&limit);

        let where_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions {where_sql}
             ORDER BY started_ms DESC, id DESC LIMIT ?"
        );
        self.read(|tx| {
            let mut stmt = tx.prepare(&sql)?;
            let sessions = stmt
                .query_map(args.as_slice(), session_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(sessions)
        })
    }

    /// Ends every session still open, returning how many there were. The gateway calls
    /// this at start-up for sessions a crash left open.
    pub fn end_open_sessions(&self, ended_ms: i64, reason: &str) -> Result<u64, StoreError> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE sessions SET ended_ms = ?1, end_reason = ?2 WHERE ended_ms IS NULL",
                params![ended_ms, reason],
            )?;
            Ok(updated as u64)
        })
    }
}

/// A LIKE pattern matching `text` anywhere, its wildcards taken literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn session(id: &str, user: &str, connection: &str, started_ms: i64) -> SessionRow {
        SessionRow {
            id: id.to_string(),
            user: user.to_string(),
            actor: "human".to_string(),
            connection: connection.to_string(),
            protocol: "postgres".to_string(),
            client_addr: "127.0.0.1:5000".to_string(),
            started_ms,
            ended_ms: None,
            end_reason: None,
            statements: 0,
            audit_segment: 3,
            audit_offset: 4096,
            audit_seq: 77,
            denied: 0,
            held: 0,
            masked: 0,
        }
    }

    fn ids(sessions: Vec<SessionRow>) -> Vec<String> {
        sessions.into_iter().map(|s| s.id).collect()
    }

    /// s1..s4: alice/prod, bob/prod, alice/staging, bob/staging, started 1000..4000.
    fn populated() -> Store {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_session(&session("s1", "alice", "prod", 1_000))
            .unwrap();
        store
            .insert_session(&session("s2", "bob", "prod", 2_000))
            .unwrap();
        store
            .insert_session(&session("s3", "alice", "staging", 3_000))
            .unwrap();
        store
            .insert_session(&session("s4", "bob", "staging", 4_000))
            .unwrap();
        store
    }

    #[test]
    fn insert_get_end() {
        let store = Store::open_in_memory().unwrap();
        let s = session("s1", "alice", "prod", 1_000);
        store.insert_session(&s).unwrap();
        assert_eq!(store.get_session("s1").unwrap(), Some(s.clone()));
        assert_eq!(store.get_session("nope").unwrap(), None);

        store
            .end_session("s1", 5_000, Some("client closed"), 12)
            .unwrap();
        let ended = store.get_session("s1").unwrap().unwrap();
        assert_eq!(
            ended,
            SessionRow {
                ended_ms: Some(5_000),
                end_reason: Some("client closed".to_string()),
                statements: 12,
                ..s
            }
        );

        let err = store.end_session("nope", 5_000, None, 0).unwrap_err();
        assert!(matches!(err, StoreError::SessionNotFound(ref id) if id == "nope"));
    }

    #[test]
    fn duplicate_session_id_is_refused() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_session(&session("s1", "alice", "prod", 1_000))
            .unwrap();
        assert!(store
            .insert_session(&session("s1", "bob", "prod", 2_000))
            .is_err());
    }

    #[test]
    fn list_newest_first_with_filters() {
        let store = populated();
        let list = |filter: SessionFilter| ids(store.list_sessions(&filter).unwrap());

        assert_eq!(list(SessionFilter::default()), ["s4", "s3", "s2", "s1"]);
        assert_eq!(
            list(SessionFilter {
                user: Some("alice".into()),
                ..Default::default()
            }),
            ["s3", "s1"]
        );
        assert_eq!(
            list(SessionFilter {
                connection: Some("prod".into()),
                ..Default::default()
            }),
            ["s2", "s1"]
        );
        assert_eq!(
            list(SessionFilter {
                since_ms: Some(2_000),
                ..Default::default()
            }),
            ["s4", "s3", "s2"]
        );
        assert_eq!(
            list(SessionFilter {
                limit: 2,
                ..Default::default()
            }),
            ["s4", "s3"]
        );
        assert_eq!(
            list(SessionFilter {
                user: Some("bob".into()),
                connection: Some("staging".into()),
                ..Default::default()
            }),
            ["s4"]
        );
        assert!(list(SessionFilter {
            user: Some("carol".into()),
            ..Default::default()
        })
        .is_empty());

        store.end_session("s4", 5_000, None, 1).unwrap();
        assert_eq!(
            list(SessionFilter {
                open_only: true,
                ..Default::default()
            }),
            ["s3", "s2", "s1"]
        );
    }

    #[test]
    fn default_limit_is_100() {
        let store = Store::open_in_memory().unwrap();
        for i in 0..105 {
            store
                .insert_session(&session(&format!("s{i}"), "alice", "prod", i))
                .unwrap();
        }
        let all = store.list_sessions(&SessionFilter::default()).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[0].id, "s104");
    }

    #[test]
    fn end_open_sessions_ends_only_open_ones() {
        let store = populated();
        store.end_session("s1", 1_500, Some("done"), 3).unwrap();

        assert_eq!(
            store.end_open_sessions(9_000, "gateway restarted").unwrap(),
            3
        );
        for id in ["s2", "s3", "s4"] {
            let s = store.get_session(id).unwrap().unwrap();
            assert_eq!(s.ended_ms, Some(9_000));
            assert_eq!(s.end_reason.as_deref(), Some("gateway restarted"));
        }
        let s1 = store.get_session("s1").unwrap().unwrap();
        assert_eq!(s1.ended_ms, Some(1_500));
        assert_eq!(s1.end_reason.as_deref(), Some("done"));

        assert_eq!(store.end_open_sessions(9_500, "again").unwrap(), 0);
    }

    #[test]
    fn sessions_outlive_their_user() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &[]).unwrap();
        store
            .insert_session(&session("s1", "alice", "prod", 1_000))
            .unwrap();
        store.remove_user("alice").unwrap();
        assert!(store.get_session("s1").unwrap().is_some());
    }
}
