//! Finds where an existing log ends by reading only the tail of its last segment(s).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::AuditError;
use crate::record::{self, GENESIS_HASH};
use crate::segment;

/// Bytes read per step while scanning backwards for a line break.
const CHUNK: u64 = 64 * 1024;

/// Where the writer continues.
#[derive(Debug)]
pub(crate) struct Tail {
    /// Segment to append to.
    pub segment: u32,
    /// Its length (after any torn line was cut off).
    pub len: u64,
    /// Seq of the last record, 0 for an empty log.
    pub seq: u64,
    /// Hash of the last record, [`GENESIS_HASH`] for an empty log.
    pub hash: String,
}

/// Recovers the tail of the log in `dir`. A torn final line in the last segment (a write that
/// a crash interrupted, so it was never acknowledged) is truncated away.
pub(crate) fn recover(dir: &Path) -> Result<Tail, AuditError> {
    let segments = segment::list(dir)?;
    let Some(&last) = segments.last() else {
        return Ok(Tail {
            segment: 1,
            len: 0,
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        });
    };
    let len = truncate_torn_line(dir, last)?;
    for &number in segments.iter().rev() {
        if let Some((seq, hash)) = last_record(dir, number)? {
            return Ok(Tail {
                segment: last,
                len,
                seq,
                hash,
            });
        }
    }
    Ok(Tail {
        segment: last,
        len,
        seq: 0,
        hash: GENESIS_HASH.to_string(),
    })
}

/// Cuts a final line without `'\n'` off segment `number`; returns the resulting length.
fn truncate_torn_line(dir: &Path, number: u32) -> Result<u64, AuditError> {
    let path = dir.join(segment::file_name(number));
    let fail = |err| AuditError::io(format!("cannot recover {}", path.display()), err);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(fail)?;
    let len = file.metadata().map_err(fail)?.len();
    let complete = match newline_before(&mut file, len).map_err(fail)? {
        Some(newline) => newline + 1,
        None => 0,
    };
    if complete < len {
        tracing::warn!(
            segment = %path.display(),
            bytes = len - complete,
            "truncating a torn final audit line left by a crash; it was never acknowledged"
        );
        file.set_len(complete).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    Ok(complete)
}

/// Seq and hash of the last line of segment `number`, `None` if it is empty.
fn last_record(dir: &Path, number: u32) -> Result<Option<(u64, String)>, AuditError> {
    let name = segment::file_name(number);
    let path = dir.join(&name);
    let fail = |err| AuditError::io(format!("cannot read {}", path.display()), err);
    let mut file = File::open(&path).map_err(fail)?;
    let len = file.metadata().map_err(fail)?.len();
    let Some(end) = newline_before(&mut file, len).map_err(fail)? else {
        return Ok(None);
    };
    let malformed = |offset, detail| AuditError::Malformed {
        file: name.clone(),
        offset,
        detail,
    };
    if end + 1 != len {
        return Err(malformed(
            end + 1,
            "segment ends in the middle of a line, but a later segment exists".to_string(),
        ));
    }
    let start = match newline_before(&mut file, end).map_err(fail)? {
        Some(newline) => newline + 1,
        None => 0,
    };
    let line_len = usize::try_from(end - start)
        .map_err(|_| malformed(start, "line is too long".to_string()))?;
    let mut line = vec![0; line_len];
    file.seek(SeekFrom::Start(start)).map_err(fail)?;
    file.read_exact(&mut line).map_err(fail)?;
    let record = record::parse_line(&line).map_err(|detail| malformed(start, detail))?;
    Ok(Some((record.seq, record.hash)))
}

/// Offset of the last `'\n'` before byte `end`, scanning backwards in chunks.
fn newline_before(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    let mut chunk_end = end;
    let mut buf = Vec::new();
    while chunk_end > 0 {
        let chunk_start = chunk_end.saturating_sub(CHUNK);
        // At most CHUNK (64 KiB), so this conversion is lossless.
        buf.resize((chunk_end - chunk_start) as usize, 0);
        file.seek(SeekFrom::Start(chunk_start))?;
        file.read_exact(&mut buf)?;
        if let Some(index) = buf.iter().rposition(|&byte| byte == b'\n') {
            return Ok(Some(chunk_start + index as u64));
        }
        chunk_end = chunk_start;
    }
    Ok(None)
}
