//! PostgreSQL wire protocol for the sluice gateway.
//!
//! * [`codec`]: framing and the few message bodies the gateway reads or builds (no I/O).
//! * [`frontend`]: the client-facing listener — TLS, startup, token authentication, cancel.
//! * `session`: the two-direction proxy loop that turns statements into requests for the
//!   [`sluice_core::Pipeline`] and matches the server's answers to them.
//! * [`upstream`]: connecting and authenticating to the target (SCRAM, MD5, cleartext, TLS).
//!
//! This crate knows wire formats and nothing of policy, audit storage or configuration.

pub mod catalog;
pub mod client_text;
pub mod codec;
pub mod frontend;
pub mod inprocess;
pub mod local;
mod params;
mod session;
pub mod stream;
pub mod tls;
pub mod upstream;

pub use frontend::{Connector, Frontend, FrontendConfig, InProcess};

/// Locks a mutex whose state stays consistent between operations: recovering from a
/// poisoned lock is better than dropping every later session or outcome.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
pub use tls::TlsMode;
pub use upstream::{CancelKey, Upstream, UpstreamError, UpstreamOptions};
