//! Errors of the writer and the reader. Verification failures have their own type in `verify`.

use std::io;
use std::sync::Arc;

/// Why an audit log operation failed.
///
/// The type is `Clone` because one failed group commit fails every submission in the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// An event could not be serialized (e.g. a time before 1970 or a non-finite duration).
    #[error("cannot serialize audit event: {0}")]
    Encode(String),
    /// A stored line is not a valid audit record.
    #[error("{file} at byte {offset} is not a valid audit record: {detail}")]
    Malformed {
        /// Segment file name.
        file: String,
        /// Byte offset of the line in the segment.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// A read started at a position that does not hold the expected record.
    #[error("{file} at byte {offset} holds seq {found}, not the requested seq {expected}")]
    PositionMismatch {
        /// Segment file name.
        file: String,
        /// Byte offset the read started at.
        offset: u64,
        /// The seq the position names.
        expected: u64,
        /// The seq found there.
        found: u64,
    },
    /// The writer thread is no longer running, so nothing can be recorded.
    #[error("the audit writer has stopped")]
    WriterStopped,
}

impl AuditError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        AuditError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}
