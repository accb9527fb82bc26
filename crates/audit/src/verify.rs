//! Checks a whole log: every record parses, seqs are contiguous from 1, every `prev` is the
//! hash of the record before, and every hash matches its line. Streams in constant memory.

use std::fmt;
use std::iter::Peekable;
use std::path::Path;

use crate::lines::{LineError, LineProblem, LogLines};
use crate::record::{self, GENESIS_HASH};
use crate::segment;

/// Summary of an intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records.
    pub events: u64,
    /// Number of segment files.
    pub segments: u32,
    /// Hash of the last record (64 zeros for an empty log).
    pub head_hash: String,
}

/// The first problem found in a log, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// Segment file name (the directory, if it could not be listed).
    pub segment: String,
    /// 1-based line number in the segment (0 if the problem is not on a line).
    pub line: u64,
    /// Seq of the offending record, if it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: VerifyErrorKind,
}

/// What is wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyErrorKind {
    /// The record's hash does not match its content: it was edited.
    Changed,
    /// Seqs jump forward: records (or a whole segment) were removed.
    Dropped {
        /// The seq that should have come next.
        expected_seq: u64,
        /// The seq found instead.
        found_seq: u64,
    },
    /// Seqs go backwards or repeat: records were moved or duplicated.
    Reordered,
    /// The record's `prev` is not the hash of the record before it.
    BrokenLink,
    /// The line is not a valid audit record.
    Malformed {
        /// Why it could not be read.
        detail: String,
    },
    /// The log could not be read (I/O error).
    Unreadable {
        /// The I/O error.
        detail: String,
    },
    /// The log ends before a record the gateway had recorded as durable (kept outside the
    /// log): the newest events were removed.
    Truncated {
        /// The last seq in the log.
        last_seq: u64,
        /// The seq the gateway recorded.
        anchored_seq: u64,
    },
    /// The record at the anchored seq is not the one the gateway recorded.
    AnchorMismatch,
}

/// The newest durable record as the gateway noted it outside the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = format!("{} line {}", self.segment, self.line);
        let what = match self.seq {
            Some(seq) => format!("event seq {seq} ({at})"),
            None => at.clone(),
        };
        match &self.kind {
            VerifyErrorKind::Changed => write!(
                f,
                "{what} was changed: its hash does not match its content"
            ),
            VerifyErrorKind::Dropped {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "events were dropped: expected seq {expected_seq} at {at} but found seq {found_seq}, so {} event(s) are missing",
                found_seq.saturating_sub(*expected_seq)
            ),
            VerifyErrorKind::Reordered => write!(
                f,
                "{what} is out of order: events were moved or duplicated"
            ),
            VerifyErrorKind::BrokenLink => write!(
                f,
                "{what} is not linked to the event before it: its prev is not that event's hash"
            ),
            VerifyErrorKind::Malformed { detail } => {
                write!(f, "{at} is not a valid audit record: {detail}")
            }
            VerifyErrorKind::Unreadable { detail } => {
                write!(f, "could not read {}: {detail}", self.segment)
            }
            VerifyErrorKind::Truncated {
                last_seq,
                anchored_seq,
            } => write!(
                f,
                "events were dropped from the end: the log ends at seq {last_seq} but the gateway recorded seq {anchored_seq} as written, so {} event(s) are missing",
                anchored_seq.saturating_sub(*last_seq)
            ),
            VerifyErrorKind::AnchorMismatch => write!(
                f,
                "{what} is not the event the gateway recorded at that position: the log was rewritten"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Verifies the log in `dir` and returns the first problem. A final line without `'\n'` in
/// the last segment is an append in progress and is not checked.
pub fn verify(dir: &Path) -> Result<VerifyReport, VerifyError> {
    verify_with_anchor(dir, None)
}

/// [`verify`], also checking that the log still holds the record `anchor` names (the
/// gateway keeps it outside the log), which catches removal of the newest records.
pub fn verify_with_anchor(
    dir: &Path,
    anchor: Option<&Anchor>,
) -> Result<VerifyReport, VerifyError> {
    let segments = segment::list(dir).map_err(|err| VerifyError {
        segment: dir.display().to_string(),
        line: 0,
        seq: None,
        kind: VerifyErrorKind::Unreadable {
            detail: err.to_string(),
        },
    })?;
    let segment_count = u32::try_from(segments.len()).unwrap_or(u32::MAX);
    let mut lines = LogLines::new(dir, segments, 0).peekable();
    let mut events = 0;
    let mut prev_hash = GENESIS_HASH.to_string();
    while let Some(line) = lines.next() {
        let line = line.map_err(line_error)?;
        let problem = |seq, kind| VerifyError {
            segment: segment::file_name(line.segment),
            line: line.number,
            seq,
            kind,
        };
        let record = record::parse_line(&line.bytes)
            .map_err(|detail| problem(None, VerifyErrorKind::Malformed { detail }))?;
        let seq = Some(record.seq);
        let expected_seq = events + 1;
        if record.seq < expected_seq {
            return Err(problem(seq, VerifyErrorKind::Reordered));
        }
        if record.seq > expected_seq {
            let kind = if next_seq(&mut lines).is_some_and(|next| next < record.seq) {
                // The missing seq follows: lines were swapped, not lost.
                VerifyErrorKind::Reordered
            } else {
                VerifyErrorKind::Dropped {
                    expected_seq,
                    found_seq: record.seq,
                }
            };
            return Err(problem(seq, kind));
        }
        if record.prev != prev_hash {
            return Err(problem(seq, VerifyErrorKind::BrokenLink));
        }
        let actual = record::content_hash(&line.bytes)
            .map_err(|detail| problem(seq, VerifyErrorKind::Malformed { detail }))?;
        if actual != record.hash {
            return Err(problem(seq, VerifyErrorKind::Changed));
        }
        if anchor.is_some_and(|a| a.seq == record.seq && a.hash != record.hash) {
            return Err(problem(seq, VerifyErrorKind::AnchorMismatch));
        }
        events = record.seq;
        prev_hash = record.hash;
    }
    if let Some(a) = anchor.filter(|a| a.seq > events) {
        return Err(VerifyError {
            segment: dir.display().to_string(),
            line: 0,
            seq: None,
            kind: VerifyErrorKind::Truncated {
                last_seq: events,
                anchored_seq: a.seq,
            },
        });
    }
    Ok(VerifyReport {
        events,
        segments: segment_count,
        head_hash: prev_hash,
    })
}

/// Seq of the next line, if there is one and it can be read.
fn next_seq(lines: &mut Peekable<LogLines>) -> Option<u64> {
    match lines.peek() {
        Some(Ok(next)) => record::peek_seq(&next.bytes),
        _ => None,
    }
}

fn line_error(err: LineError) -> VerifyError {
    let kind = match err.problem {
        LineProblem::Io(source) => VerifyErrorKind::Unreadable {
            detail: source.to_string(),
        },
        LineProblem::Torn => VerifyErrorKind::Malformed {
            detail: "the segment ends in the middle of a line, but a later segment exists"
                .to_string(),
        },
    };
    VerifyError {
        segment: segment::file_name(err.segment),
        line: err.number,
        seq: None,
        kind,
    }
}
