//! Errors of token issuance and verification.

use sluice_store::StoreError;

/// Why a token operation failed.
///
/// The texts may be shown to clients and written to logs, so they never contain the
/// presented token or any part of its secret. The public token id may appear.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Not shaped like a sluice token.
    #[error("malformed token")]
    Malformed,
    /// Well-formed, but no such token was issued (or its user was removed).
    #[error("unknown token")]
    Unknown,
    #[error("token {id} of user \"{user}\" has expired")]
    Expired { id: String, user: String },
    #[error("token {id} of user \"{user}\" has been revoked")]
    Revoked { id: String, user: String },
    /// The token's user disappeared while the token was being checked.
    #[error("user \"{user}\" of token {id} no longer exists")]
    UserRemoved { id: String, user: String },
    /// A token was requested for a user that does not exist.
    #[error("user \"{0}\" does not exist")]
    UnknownUser(String),
    /// A token lifetime was unparsable or out of range.
    #[error("invalid token lifetime: {0}")]
    InvalidTtl(String),
    #[error("passwords must have at least {0} characters")]
    WeakPassword(usize),
    #[error("cannot hash password: {0}")]
    PasswordHash(String),
    /// A sealed secret would not open (wrong key, tampered, or not sealed by sluice).
    #[error("sealed secret could not be opened")]
    Sealing,
    #[error("a refresh handle of user \"{0}\" was used twice; all their refresh handles are revoked, sign in again")]
    RefreshReused(String),
    /// The store failed (I/O, lock timeout, corruption).
    #[error("token store unavailable: {0}")]
    Store(#[from] StoreError),
}
