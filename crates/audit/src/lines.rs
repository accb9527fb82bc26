//! Streams the lines of consecutive segments, one buffered line at a time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::segment;

/// One complete line, without its `'\n'`.
pub(crate) struct Line {
    /// Segment number.
    pub segment: u32,
    /// 1-based line number, counted from where reading of this segment began.
    pub number: u64,
    /// Byte offset of the line in its segment.
    pub offset: u64,
    /// The line's bytes.
    pub bytes: Vec<u8>,
}

/// Why the next line could not be produced.
pub(crate) struct LineError {
    /// Segment number.
    pub segment: u32,
    /// Line number the problem is on.
    pub number: u64,
    /// Byte offset the problem is at.
    pub offset: u64,
    /// What went wrong.
    pub problem: LineProblem,
}

/// What went wrong reading a line.
pub(crate) enum LineProblem {
    /// Opening, seeking or reading failed.
    Io(io::Error),
    /// A segment that is not the last ends without `'\n'`.
    Torn,
}

/// The segment currently being read.
struct OpenSegment {
    number: u32,
    reader: BufReader<File>,
    line: u64,
    offset: u64,
}

/// Iterator over the lines of a list of segments, in order.
///
/// A final line without `'\n'` in the last listed segment is an append in progress (or a torn
/// write) and ends the iteration quietly. The iterator ends after its first error.
pub(crate) struct LogLines {
    dir: PathBuf,
    pending: VecDeque<u32>,
    current: Option<OpenSegment>,
    first_offset: u64,
    finished: bool,
}

impl LogLines {
    /// Reads `segments` (ascending) of `dir`, starting at `first_offset` in the first one.
    pub(crate) fn new(dir: &Path, segments: Vec<u32>, first_offset: u64) -> LogLines {
        LogLines {
            dir: dir.to_path_buf(),
            pending: segments.into(),
            current: None,
            first_offset,
            finished: false,
        }
    }

    /// Opens the next pending segment, or returns `Ok(false)` if there is none.
    fn open_next(&mut self) -> Result<bool, LineError> {
        let Some(number) = self.pending.pop_front() else {
            return Ok(false);
        };
        let offset = std::mem::take(&mut self.first_offset);
        let fail = |err| LineError {
            segment: number,
            number: 0,
            offset,
            problem: LineProblem::Io(err),
        };
        let mut file = File::open(self.dir.join(segment::file_name(number))).map_err(fail)?;
        file.seek(SeekFrom::Start(offset)).map_err(fail)?;
        self.current = Some(OpenSegment {
            number,
            reader: BufReader::new(file),
            line: 0,
            offset,
        });
        Ok(true)
    }

    /// The next line, `Ok(None)` at the end.
    fn next_line(&mut self) -> Result<Option<Line>, LineError> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let is_last = self.pending.is_empty();
            let Some(open) = self.current.as_mut() else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            let read = open
                .reader
                .read_until(b'\n', &mut bytes)
                .map_err(|err| LineError {
                    segment: open.number,
                    number: open.line + 1,
                    offset: open.offset,
                    problem: LineProblem::Io(err),
                })?;
            if read == 0 {
                self.current = None;
                continue;
            }
            open.line += 1;
            let offset = open.offset;
            open.offset += read as u64;
            if bytes.pop() == Some(b'\n') {
                return Ok(Some(Line {
                    segment: open.number,
                    number: open.line,
                    offset,
                    bytes,
                }));
            }
            if is_last {
                return Ok(None);
            }
            return Err(LineError {
                segment: open.number,
                number: open.line,
                offset,
                problem: LineProblem::Torn,
            });
        }
    }
}

impl Iterator for LogLines {
    type Item = Result<Line, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let next = self.next_line().transpose();
        if !matches!(next, Some(Ok(_))) {
            self.finished = true;
        }
        next
    }
}
