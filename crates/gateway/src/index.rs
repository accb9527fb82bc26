//! Keeps the store's statement index up to date with the audit log: a reader that
//! follows the writer once a second, so the console can filter millions of statements
//! without reading the log, and the statement path never waits on the index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::de::IgnoredAny;
use serde::Deserialize;
use sluice_audit::{Position, RecordView};
use sluice_store::{IndexEntry, IndexPosition, Store};
use tracing::warn;

/// Records applied per store transaction.
const BATCH: usize = 5_000;
/// How often the reader looks for new records.
const INTERVAL: Duration = Duration::from_secs(1);

/// Follows the audit log in `audit_dir` into `store`, forever.
pub async fn follow(audit_dir: PathBuf, store: Arc<Store>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        let (dir, store) = (audit_dir.clone(), store.clone());
        match tokio::task::spawn_blocking(move || catch_up(&dir, &store)).await {
            Ok(Ok(())) => warned = false,
            Ok(Err(e)) if !warned => {
                warn!(error = format!("{e:#}"), "cannot index the audit log");
                warned = true;
            }
            _ => {}
        }
    }
}

/// Applies every record after the last one indexed; returns at the log's end.
pub fn catch_up(audit_dir: &Path, store: &Store) -> Result<()> {
    let last = store
        .index_position()
        .context("reading the index position")?;
    let mut records = match last.map(|p| resume(audit_dir, p)) {
        Some(Ok(records)) => records,
        Some(Err(e)) => {
            // The log no longer holds the record the index stopped at (replaced, or cut
            // back after a crash): start over. Applying a record twice changes nothing.
            warn!(
                error = format!("{e:#}"),
                "re-indexing the audit log from its start"
            );
            sluice_audit::read_all(audit_dir).context("opening the audit log")?
        }
        None => sluice_audit::read_all(audit_dir).context("opening the audit log")?,
    };
    let mut entries = Vec::new();
    let mut read = 0;
    loop {
        let record = records
            .next_as::<IndexedFields>()
            .transpose()
            .context("reading the audit log")?;
        let at_end = record.is_none();
        if let Some(record) = record {
            entries.extend(entry(record));
            read += 1;
        }
        if read > 0 && (at_end || read == BATCH) {
            if let Some(p) = records.last_position() {
                let position = IndexPosition {
                    segment: p.segment,
                    offset: p.offset,
                    seq: p.seq,
                };
                store
                    .index_audit(&entries, position)
                    .context("writing the statement index")?;
            }
            entries.clear();
            read = 0;
        }
        if at_end {
            return Ok(());
        }
    }
}

/// The log from the record the index applied last, positioned after it.
fn resume(audit_dir: &Path, last: IndexPosition) -> Result<sluice_audit::Records> {
    let position = Position {
        segment: last.segment,
        offset: last.offset,
        seq: last.seq,
    };
    let mut records = sluice_audit::read_from(audit_dir, position)?;
    match records.next() {
        Some(Ok(_)) => Ok(records),
        Some(Err(e)) => Err(e.into()),
        None => anyhow::bail!("the log ends before seq {}", last.seq),
    }
}

/// The fields of an audit record the index uses. Decoding only these, instead of whole
/// events, keeps the follower's cost per statement small: it runs beside the statement path
/// on the same cores.
#[derive(Deserialize)]
struct IndexedFields {
    seq: u64,
    #[serde(with = "sluice_audit::rfc3339_micros")]
    time: std::time::SystemTime,
    session: Option<String>,
    kind: String,
    statement_id: Option<u64>,
    statement: Option<String>,
    decision: Option<String>,
    review: Option<IgnoredAny>,
    /// Present only when something was masked.
    masked: Option<IgnoredAny>,
}

impl RecordView for IndexedFields {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// What one audit record adds to the index, if anything.
fn entry(record: IndexedFields) -> Option<IndexEntry> {
    let session = record.session?;
    let statement_id = record.statement_id?;
    match record.kind.as_str() {
        "statement" => Some(IndexEntry::Statement {
            session,
            statement_id,
            seq: record.seq,
            time_ms: crate::views::unix_ms(record.time),
            decision: record.decision?,
            held: record.review.is_some(),
            text: record.statement?,
        }),
        "result" if record.masked.is_some() => Some(IndexEntry::Masked {
            session,
            statement_id,
        }),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_audit::{AuditWriter, Event, EventBody, MaskedInfo, WriterOptions};
    use sluice_store::{SessionFilter, SessionRow};

    fn statement(session: &str, id: u64, text: &str, decision: &str) -> Event {
        Event::now(
            Some(session.into()),
            EventBody::Statement {
                call: None,
                statement_id: id,
                user: "eve".into(),
                actor: "human".into(),
                connection: "prod".into(),
                statement: text.into(),
                params: vec![],
                decision: decision.into(),
                rule: None,
                prepare: false,
                statement_name: None,
                reason: None,
                review: None,
                access_request: None,
                context: None,
            },
        )
    }

    fn masked_result(session: &str, id: u64) -> Event {
        Event::now(
            Some(session.into()),
            EventBody::Result {
                transfer: None,
                statement_id: id,
                status: "ok".into(),
                tag: None,
                rows: 1,
                duration_ms: 1.0,
                error: None,
                masked: vec![MaskedInfo {
                    column: Some("public.users.email".into()),
                    detector: None,
                    style: "redact".into(),
                    values: 1,
                }],
            },
        )
    }

    fn unmasked_result(session: &str, id: u64) -> Event {
        let mut event = masked_result(session, id);
        if let EventBody::Result { masked, .. } = &mut event.body {
            masked.clear();
        }
        event
    }

    fn session(id: &str) -> SessionRow {
        SessionRow {
            id: id.into(),
            user: "eve".into(),
            actor: "human".into(),
            connection: "prod".into(),
            protocol: "postgres".into(),
            client_addr: "127.0.0.1:1".into(),
            started_ms: 1,
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

    fn with_text(store: &Store, text: &str) -> Vec<String> {
        let filter = SessionFilter {
            statement: Some(text.into()),
            ..SessionFilter::default()
        };
        let rows = store.list_sessions(&filter).unwrap();
        rows.into_iter().map(|s| s.id).collect()
    }

    #[tokio::test]
    async fn follows_the_log_resumes_after_its_last_record_and_starts_over_on_a_new_log() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit");
        let store = Store::open_in_memory().unwrap();
        store.insert_session(&session("s1")).unwrap();
        store.insert_session(&session("s2")).unwrap();
        let writer = AuditWriter::open(&audit, WriterOptions::default()).unwrap();
        writer
            .append_durable(vec![
                statement("s1", 1, "SELECT 'first'", "allow"),
                statement("s1", 2, "DROP TABLE t", "deny"),
            ])
            .await
            .unwrap();
        catch_up(&audit, &store).unwrap();
        assert_eq!(with_text(&store, "first"), ["s1"]);
        assert_eq!(store.index_position().unwrap().unwrap().seq, 2);

        // Only what came after is read: the counts do not grow twice.
        writer
            .append_durable(vec![
                statement("s2", 1, "SELECT email FROM users", "allow"),
                masked_result("s2", 1),
                unmasked_result("s1", 1),
            ])
            .await
            .unwrap();
        catch_up(&audit, &store).unwrap();
        catch_up(&audit, &store).unwrap();
        assert_eq!(store.index_position().unwrap().unwrap().seq, 5);
        let s1 = store.get_session("s1").unwrap().unwrap();
        let s2 = store.get_session("s2").unwrap().unwrap();
        assert_eq!((s1.denied, s1.masked), (1, 0));
        assert_eq!((s2.denied, s2.masked), (0, 1));

        // A log that no longer holds the last indexed record is read from its start.
        drop(writer);
        std::fs::remove_dir_all(&audit).unwrap();
        let writer = AuditWriter::open(&audit, WriterOptions::default()).unwrap();
        writer
            .append_durable(vec![statement(
                "s2",
                2,
                "SELECT 'after the new log'",
                "allow",
            )])
            .await
            .unwrap();
        catch_up(&audit, &store).unwrap();
        assert_eq!(with_text(&store, "after the new log"), ["s2"]);
        assert_eq!(store.index_position().unwrap().unwrap().seq, 1);
    }
}
