//! Errors returned by the store.

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file or its directory could not be created or secured.
    #[error("cannot prepare store file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite reported an error (including lock contention beyond the busy timeout).
    #[error("store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer sluice with a schema this build does not know.
    #[error("store schema version {found} is newer than the supported version {supported}")]
    SchemaTooNew { found: usize, supported: usize },
    #[error("user \"{0}\" already exists")]
    UserExists(String),
    #[error("user \"{0}\" does not exist")]
    UserNotFound(String),
    #[error("session \"{0}\" does not exist")]
    SessionNotFound(String),
    #[error("review \"{0}\" does not exist")]
    ReviewNotFound(String),
    #[error("review \"{id}\" is {status}, not pending")]
    ReviewNotPending { id: String, status: String },
    #[error("\"{0}\": a requester cannot approve their own request")]
    SelfApproval(String),
    #[error("review \"{0}\": already approved by this reviewer")]
    AlreadyApproved(String),
    #[error(
        "a refresh handle of user \"{0}\" was used twice: all of their refresh handles are revoked"
    )]
    RefreshReused(String),
    #[error("agent \"{0}\" already exists (to give it a new key: sluice agents revoke {0}, then add it again)")]
    AgentExists(String),
    #[error("user \"{0}\" belongs to another identity at the provider")]
    IdentityMismatch(String),
    #[error("access request \"{0}\" does not exist")]
    AccessRequestNotFound(String),
    #[error("access request \"{id}\" is {status}, not pending")]
    AccessRequestNotPending { id: String, status: String },
}
