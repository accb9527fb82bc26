//! The statement index: what the console filters sessions by (statement text, denied,
//! held, masked) without reading the audit log. It is derived from the log by a reader
//! that follows the writer (`sluice_gateway::index`), so the hot path never waits on it;
//! [`Store::index_audit`] applies a batch and the position reached in one transaction,
//! and applying the same records twice changes nothing.

use rusqlite::{params, OptionalExtension};

use crate::db::Store;
use crate::error::StoreError;

/// Longest statement text kept in the index, in bytes (cut at a character boundary).
pub const MAX_INDEXED_TEXT: usize = 4096;

/// One audit record, as far as the index cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexEntry {
    /// A `statement` event.
    Statement {
        session: String,
        statement_id: u64,
        seq: u64,
        time_ms: i64,
        /// `allow` or `deny`.
        decision: String,
        /// Whether a review held it.
        held: bool,
        text: String,
    },
    /// A `result` event whose answer masking changed.
    Masked { session: String, statement_id: u64 },
}

/// Where the index has read the audit log up to: the last record it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexPosition {
    pub segment: u32,
    pub offset: u64,
    pub seq: u64,
}

impl Store {
    /// The last audit record the index applied, `None` before the first.
    pub fn index_position(&self) -> Result<Option<IndexPosition>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    "SELECT segment, offset, seq FROM audit_index WHERE id = 1",
                    [],
                    |row| {
                        Ok(IndexPosition {
                            segment: row.get(0)?,
                            offset: row.get(1)?,
                            seq: row.get(2)?,
                        })
                    },
                )
                .optional()?)
        })
    }

    /// Applies `entries` and records `position` as read, in one transaction. A statement
    /// already indexed (same session and statement id) is not counted again.
    pub fn index_audit(
        &self,
        entries: &[IndexEntry],
        position: IndexPosition,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO statements
                 (session_id, statement_id, seq, time_ms, decision, held, statement)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut count = tx.prepare_cached(
                "UPDATE sessions SET denied = denied + ?2, held = held + ?3 WHERE id = ?1",
            )?;
            let mut mark = tx.prepare_cached(
                "UPDATE statements SET masked = 1
                 WHERE session_id = ?1 AND statement_id = ?2 AND masked = 0",
            )?;
            let mut count_masked =
                tx.prepare_cached("UPDATE sessions SET masked = masked + 1 WHERE id = ?1")?;
            for entry in entries {
                match entry {
                    IndexEntry::Statement {
                        session,
                        statement_id,
                        seq,
                        time_ms,
                        decision,
                        held,
                        text,
                    } => {
                        let text = sluice_core::text::clip(text, MAX_INDEXED_TEXT);
                        let added = insert.execute(params![
                            session,
                            statement_id,
                            seq,
                            time_ms,
                            decision,
                            held,
                            text
                        ])?;
                        if added > 0 && (decision == "deny" || *held) {
                            count.execute(params![session, decision == "deny", held])?;
                        }
                    }
                    IndexEntry::Masked {
                        session,
                        statement_id,
                    } => {
                        if mark.execute(params![session, statement_id])? > 0 {
                            count_masked.execute([session])?;
                        }
                    }
                }
            }
            tx.execute(
                "INSERT INTO audit_index (id, segment, offset, seq) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET segment = ?1, offset = ?2, seq = ?3",
                params![position.segment, position.offset, position.seq],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{SessionFilter, SessionRow};

    fn session(id: &str, actor: &str, started_ms: i64) -> SessionRow {
        SessionRow {
            id: id.into(),
            user: "alice".into(),
            actor: actor.into(),
            connection: "prod".into(),
            protocol: "postgres".into(),
            client_addr: "127.0.0.1:1".into(),
            started_ms,
            ended_ms: None,
            end_reason: None,
            statements: 0,
            audit_segment: 1,
            audit_offset: 0,
            audit_seq: 1,
            denied: 0,
            held: 0,
            masked: 0,
        }
    }

    fn statement(session: &str, id: u64, decision: &str, held: bool, text: &str) -> IndexEntry {
        IndexEntry::Statement {
            session: session.into(),
            statement_id: id,
            seq: id,
            time_ms: 0,
            decision: decision.into(),
            held,
            text: text.into(),
        }
    }

    fn position(seq: u64) -> IndexPosition {
        IndexPosition {
            segment: 1,
            offset: seq * 100,
            seq,
        }
    }

    fn ids(store: &Store, filter: SessionFilter) -> Vec<String> {
        store
            .list_sessions(&filter)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect()
    }

    #[test]
    fn counts_filters_and_pages() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.index_position().unwrap(), None);
        store.insert_session(&session("a", "human", 1_000)).unwrap();
        store.insert_session(&session("b", "agent", 2_000)).unwrap();
        store.insert_session(&session("c", "agent", 3_000)).unwrap();
        let batch = [
            statement("a", 1, "allow", false, "SELECT * FROM payroll"),
            statement("a", 2, "deny", false, "DROP TABLE payroll"),
            statement("b", 1, "allow", true, "DELETE FROM orders WHERE id = 1"),
            IndexEntry::Masked {
                session: "b".into(),
                statement_id: 1,
            },
            statement("c", 1, "allow", false, "SELECT 100% _done_"),
        ];
        store.index_audit(&batch, position(9)).unwrap();
        // The same batch again (a reader resuming before its last commit) counts nothing twice.
        store.index_audit(&batch, position(9)).unwrap();
        assert_eq!(store.index_position().unwrap(), Some(position(9)));

        let a = store.get_session("a").unwrap().unwrap();
        assert_eq!((a.denied, a.held, a.masked), (1, 0, 0));
        let b = store.get_session("b").unwrap().unwrap();
        assert_eq!((b.denied, b.held, b.masked), (0, 1, 1));

        let by = |f: SessionFilter| ids(&store, f);
        assert_eq!(
            by(SessionFilter {
                statement: Some("payroll".into()),
                ..SessionFilter::default()
            }),
            ["a"]
        );
        // Case-insensitive, and LIKE wildcards in the text are literal.
        assert_eq!(
            by(SessionFilter {
                statement: Some("delete from".into()),
                ..SessionFilter::default()
            }),
            ["b"]
        );
        assert_eq!(
            by(SessionFilter {
                statement: Some("100%".into()),
                ..SessionFilter::default()
            }),
            ["c"]
        );
        assert!(by(SessionFilter {
            statement: Some("0_d".into()),
            ..SessionFilter::default()
        })
        .is_empty());
        assert_eq!(
            by(SessionFilter {
                denied: true,
                ..SessionFilter::default()
            }),
            ["a"]
        );
        assert_eq!(
            by(SessionFilter {
                held: true,
                masked: true,
                ..SessionFilter::default()
            }),
            ["b"]
        );
        assert_eq!(
            by(SessionFilter {
                actor: Some("agent".into()),
                ..SessionFilter::default()
            }),
            ["c", "b"]
        );
        assert_eq!(
            by(SessionFilter {
                since_ms: Some(1_500),
                until_ms: Some(3_000),
                ..SessionFilter::default()
            }),
            ["b"]
        );
        // Pages: two, then the rest after the last row of the first page.
        assert_eq!(
            by(SessionFilter {
                limit: 2,
                ..SessionFilter::default()
            }),
            ["c", "b"]
        );
        assert_eq!(
            by(SessionFilter {
                limit: 2,
                after: Some((2_000, "b".into())),
                ..SessionFilter::default()
            }),
            ["a"]
        );
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let store = Store::open_in_memory().unwrap();
        store.insert_session(&session("a", "human", 1_000)).unwrap();
        // One ASCII byte first, so the cut falls inside a two-byte character.
        let text = format!("a{}", "é".repeat(MAX_INDEXED_TEXT));
        store
            .index_audit(&[statement("a", 1, "allow", false, &text)], position(1))
            .unwrap();
        let kept: String = store
            .read(|tx| Ok(tx.query_row("SELECT statement FROM statements", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(kept.len(), MAX_INDEXED_TEXT - 1);
    }
}
