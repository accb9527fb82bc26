//! A byte stream that may be plain TCP, TLS, or (later) a tunnel stream from a remote agent.

use tokio::io::{AsyncRead, AsyncWrite};

/// Anything the session loop can read from and write to.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

/// Boxed so that client, upstream and tunnel streams share one session implementation;
/// one virtual call per read or write is noise next to the syscall behind it.
pub type BoxStream = Box<dyn AsyncStream>;
