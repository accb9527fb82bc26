//! The tunnel between the gateway and remote agents.
//!
//! The agent dials out (TLS, the gateway's certificate verified by a pinned SHA-256
//! fingerprint or a CA file), presents its key, and then both ends speak HTTP/2 over the
//! connection (the `h2` crate; the gateway is the HTTP/2 client, the agent the server):
//! the gateway opens one stream per target connection (a client session, a cancel
//! request, the masking catalog's reader), so each has its own flow-control window
//! (256 KiB) and a slow or huge session never stalls another. Both ends PING every
//! second; three seconds without an answer ends the tunnel, so a dead peer is noticed in
//! seconds. The agent reconnects with backoff and jitter.
//!
//! Enforcement stays in the gateway: the agent only opens the target connection the
//! gateway asks for, authenticates with the real credential (resolved from `env:` /
//! `file:` where the agent runs), and relays bytes.

pub mod agent;
pub mod frame;
pub mod gateway;
mod h2stream;
pub mod pin;
mod ping;
mod protocol;

pub use protocol::Target;

/// A stream the tunnel carries, as the two ends' API-call code sees it.
pub trait CallIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> CallIo for T {}

pub type CallStream = Box<dyn CallIo>;

/// Version string agents report (shown by `sluice agents list`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Per-stream window: what one stalled session may hold in memory on each side.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection window: large, so that streams stalled with full windows cannot use it up
/// and block the others (memory is bounded by the stream windows, not by this).
const CONNECTION_WINDOW: u32 = 1 << 30;
/// Sessions at once over one tunnel.
const MAX_STREAMS: u32 = 10_000;
/// Largest header block accepted (the tunnel's requests carry none to speak of).
const MAX_HEADERS: u32 = 16 * 1024;
