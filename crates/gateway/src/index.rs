//! Keeps the store's statement index up to date with the audit log: a reader that
//! follows the writer once a second, so the console can filter millions of statements
//! without reading the log, and the statement path never waits on the index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use sluice_audit::{EventBody, Position, Record};
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
    let mut records = match last {
        Some(p) => sluice_audit::read_from(
            audit_dir,
            Position {
                segment: p.segment,
                offset: p.offset,
                seq: p.seq,
            },
        ),
        None => sluice_audit::read_all(audit_dir),
    }
    .context("opening the audit log")?;
    if last.is_some() {
        // Positioned on the last record applied: read past it.
        records
            .next()
            .transpose()
            .context("reading the audit log")?;
    }
    let mut entries = Vec::new();
    let mut read = 0;
    loop {
        let record = records
            .next()
            .transpose()
            .context("reading the audit log")?;
        if let Some(record) = &record {
            entries.extend(entry(record));
            read += 1;
        }
        if read > 0 && (record.is_none() || read == BATCH) {
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
        if record.is_none() {
            return Ok(());
        }
    }
}

/// What one audit record adds to the index, if anything.
fn entry(record: &Record) -> Option<IndexEntry> {
    let session = record.event.session.clone()?;
    match &record.event.body {
        EventBody::Statement {
            statement_id,
            statement,
            decision,
            review,
            ..
        } => Some(IndexEntry::Statement {
            session,
            statement_id: *statement_id,
            seq: record.seq,
            time_ms: record
                .event
                .time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            decision: decision.clone(),
            held: review.is_some(),
            text: statement.clone(),
        }),
        EventBody::Result {
            statement_id,
            masked,
            ..
        } if !masked.is_empty() => Some(IndexEntry::Masked {
            session,
            statement_id: *statement_id,
        }),
        _ => None,
    }
}
