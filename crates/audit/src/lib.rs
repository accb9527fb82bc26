//! Append-only, hash-chained audit log with group commit, reader and verifier.
//!
//! The log lives in a directory of segments `audit-000001.jsonl`, `audit-000002.jsonl`, … with
//! one JSON record per line (see `EVENTS.md` for the event schema and the line format). Every
//! record carries the hash of the one before it, so edits, deletions and reordering are
//! detected by [`verify`].
//!
//! One [`AuditWriter`] per directory and process: callers chain and `write` their records under
//! one lock (so the lock's order is the chain's order), and a background thread runs one
//! `fdatasync` for everything written so far (group commit). [`verify_with_anchor`] also
//! checks the log still reaches a head noted outside it.

mod error;
mod event;
mod lines;
mod reader;
mod record;
mod recover;
mod segment;
mod verify;
mod writer;

pub use error::AuditError;
pub use event::{
    rfc3339_micros, AgentContext, CallInfo, ErrorInfo, Event, EventBody, MaskedInfo, ReviewRef,
    TransferInfo,
};
pub use reader::{read_all, read_from, RecordView, Records};
pub use record::{Record, GENESIS_HASH};
pub use verify::{verify, verify_with_anchor, Anchor, VerifyError, VerifyErrorKind, VerifyReport};
pub use writer::{AuditWriter, Durability, Position, WriterOptions};
