//! Metadata store (SQLite): users, groups, tokens, session index, reviews, AWS keys and the
//! AWS signatures already used.
//!
//! The gateway process and the CLI (`sluice users add`, `sluice tokens issue`,
//! `sluice sessions list`) open the same database file concurrently, so every connection
//! runs in WAL mode with a busy timeout. The schema is versioned with `PRAGMA user_version`
//! and migrated when the store is opened.
//!
//! Every method takes `&self` and blocks on SQLite; async callers should use
//! `tokio::task::spawn_blocking`.

mod access;
mod agents;
mod anchor;
mod aws_keys;
mod db;
mod error;
mod refresh;
mod reviews;
mod sessions;
mod statement_index;
mod tokens;
mod used_signatures;
mod users;

pub use access::{AccessRow, NewAccessRequest};
pub use agents::AgentRow;
pub use aws_keys::AwsKeyRow;
pub use db::Store;
pub use error::StoreError;
pub use refresh::RefreshHandle;
pub use reviews::{Approval, NewReview, ReviewRow};
pub use sessions::{SessionFilter, SessionRow};
pub use statement_index::{IndexEntry, IndexPosition, MAX_INDEXED_TEXT};
pub use tokens::{NewToken, TokenKind, TokenRecord};
pub use users::{NewUser, Origin, User};
