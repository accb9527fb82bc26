//! Local identities: token issuance, hashing, verification, revocation.
//!
//! A token looks like `slu_<id>_<secret>`: `id` is 8 public lowercase alphanumeric
//! characters (shown by `sluice tokens list`, used by `sluice tokens revoke`), `secret` is
//! 32 random base62 characters. The store keeps only a SHA-256 hash of the whole string;
//! the clear token exists once, in the [`IssuedToken`] returned at issuance.

mod error;
mod format;
mod tokens;
mod ttl;

pub use error::AuthError;
pub use tokens::{IssuedToken, Tokens, Verified};
pub use ttl::parse_ttl;
