//! Identities: tokens (issue, hash, verify, revoke), local passwords (argon2), JWT
//! validation against a key set (OpenID Connect ID tokens, workload tokens), refresh
//! handles and the sealing of secrets kept for them.
//!
//! A token looks like `slu_<id>_<secret>`: `id` is 8 public lowercase alphanumeric
//! characters (shown by `sluice tokens list`, used by `sluice tokens revoke`), `secret` is
//! 32 random base62 characters. The store keeps only a SHA-256 hash of the whole string;
//! the clear token exists once, in the [`IssuedToken`] returned at issuance.

mod agent_keys;
mod error;
mod format;
pub mod jwt;
mod passwords;
mod refresh;
mod seal;
mod tokens;
mod ttl;

pub use agent_keys::{agent_key_hash, new_agent_key, NewAgentKey};
pub use error::AuthError;
pub use passwords::{hash_password, verify_password, MIN_PASSWORD_CHARS};
pub use refresh::Refreshes;
pub use seal::Sealer;
pub use tokens::{IssuedToken, Tokens, Verified};
pub use ttl::parse_ttl;
