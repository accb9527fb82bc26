//! Reading records back, from any record position onwards.

use std::path::Path;

use crate::error::AuditError;
use crate::lines::{Line, LineError, LineProblem, LogLines};
use crate::record::{self, Record};
use crate::segment;
use crate::writer::Position;

/// The fields of a record that a reader decodes for itself ([`Records::next_as`]). Field
/// names are those of the line format: `seq`, then [`Event`](crate::Event)'s.
pub trait RecordView: serde::de::DeserializeOwned {
    /// The record's `seq`.
    fn seq(&self) -> u64;
}

/// Iterator over records, in log order, across segments. It parses records but does not check
/// the hash chain (use [`verify`](crate::verify) for that). It ends after the first error, and
/// quietly before a final line that is still being appended.
pub struct Records {
    lines: LogLines,
    /// The seq the first record must have, for reads from a [`Position`].
    first_seq: Option<u64>,
    failed: bool,
    /// Where the record last returned starts, for a reader that resumes later.
    last: Option<Position>,
    /// The stored line of the record last returned, when asked for ([`Records::keep_lines`]).
    keep_lines: bool,
    last_line: Vec<u8>,
}

/// Reads records starting at `start` (a position returned by the writer), continuing through
/// all later segments. The first record is checked to be `start.seq`.
pub fn read_from(dir: &Path, start: Position) -> Result<Records, AuditError> {
    let segments: Vec<u32> = segment::list(dir)?
        .into_iter()
        .filter(|&number| number >= start.segment)
        .collect();
    if segments.first() != Some(&start.segment) {
        let path = dir.join(segment::file_name(start.segment));
        return Err(AuditError::io(
            format!("cannot open {}", path.display()),
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    Ok(Records {
        lines: LogLines::new(dir, segments, start.offset),
        first_seq: Some(start.seq),
        failed: false,
        last: None,
        keep_lines: false,
        last_line: Vec::new(),
    })
}

/// Reads every record in `dir`, oldest first.
pub fn read_all(dir: &Path) -> Result<Records, AuditError> {
    Ok(Records {
        lines: LogLines::new(dir, segment::list(dir)?, 0),
        first_seq: None,
        failed: false,
        last: None,
        keep_lines: false,
        last_line: Vec::new(),
    })
}

impl Records {
    fn decode(&mut self, line: Result<Line, LineError>) -> Result<Record, AuditError> {
        self.decode_with(line, |bytes| {
            let record = record::parse_line(bytes)?;
            Ok((record.seq, record))
        })
    }

    /// Checks and positions one line, decoding it with `parse` (which returns the line's seq
    /// and what it decoded).
    fn decode_with<T>(
        &mut self,
        line: Result<Line, LineError>,
        parse: impl FnOnce(&[u8]) -> Result<(u64, T), String>,
    ) -> Result<T, AuditError> {
        let line = line.map_err(|err| {
            let file = segment::file_name(err.segment);
            match err.problem {
                LineProblem::Io(source) => AuditError::io(format!("cannot read {file}"), source),
                LineProblem::Torn => AuditError::Malformed {
                    file,
                    offset: err.offset,
                    detail: "segment ends in the middle of a line, but a later segment exists"
                        .to_string(),
                },
            }
        })?;
        let (segment_number, offset) = (line.segment, line.offset);
        let file = || segment::file_name(line.segment);
        let (seq, decoded) = parse(&line.bytes).map_err(|detail| AuditError::Malformed {
            file: file(),
            offset: line.offset,
            detail,
        })?;
        if let Some(expected) = self.first_seq.take() {
            if seq != expected {
                return Err(AuditError::PositionMismatch {
                    file: file(),
                    offset: line.offset,
                    expected,
                    found: seq,
                });
            }
        }
        self.last = Some(Position {
            segment: segment_number,
            offset,
            seq,
        });
        if self.keep_lines {
            self.last_line = line.bytes;
        }
        Ok(decoded)
    }

    /// Like `next`, but decodes only the fields of `T` — for a reader that needs a few fields
    /// of many records, such as an index, and should not pay for building whole events. The
    /// hash is not looked at, as with `next`.
    pub fn next_as<T: RecordView>(&mut self) -> Option<Result<T, AuditError>> {
        if self.failed {
            return None;
        }
        let line = self.lines.next()?;
        let decoded = self.decode_with(line, |bytes| {
            let view: T = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
            Ok((view.seq(), view))
        });
        self.failed = decoded.is_err();
        Some(decoded)
    }

    /// Keeps each record's stored line (without its newline) for [`Records::last_line`]:
    /// for exports whose lines must still verify against their hashes.
    pub fn keep_lines(mut self) -> Records {
        self.keep_lines = true;
        self
    }

    /// The stored line of the record `next` returned last (empty unless
    /// [`Records::keep_lines`] was asked for).
    pub fn last_line(&self) -> &[u8] {
        &self.last_line
    }

    /// The position of the record `next` returned last (`None` before the first): give it
    /// to [`read_from`] to read again from that record.
    pub fn last_position(&self) -> Option<Position> {
        self.last
    }
}

impl Iterator for Records {
    type Item = Result<Record, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let line = self.lines.next()?;
        let record = self.decode(line);
        self.failed = record.is_err();
        Some(record)
    }
}
