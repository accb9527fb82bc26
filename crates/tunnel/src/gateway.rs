//! The gateway's end: accepts agents on `listen.tunnel`, keeps the connected ones, and
//! opens a stream on one of them for each target connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use sluice_core::handshakes::{Handshake, Handshakes};
use sluice_postgres::{CancelKey, Upstream, UpstreamError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::h2stream::H2Stream;
use crate::protocol::{Hello, Reply, Request, Target, Welcome};
use crate::{frame, ping, CallStream, CONNECTION_WINDOW, MAX_HEADERS, MAX_STREAMS, STREAM_WINDOW};

/// How long a new tunnel may take to finish TLS and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Tunnels still in TLS or hello at once: what unauthenticated peers can make the
/// gateway hold. More are dropped at once.
const MAX_HANDSHAKES: usize = 256;
/// Of those, what one address may hold: a host that opens sockets and says nothing cannot
/// keep every agent out.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;
/// How often dropped handshakes are reported while they go on.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// The largest hello accepted (a key and a version string).
const MAX_HELLO: usize = 4096;
/// Tunnels one agent name may keep open at once (standbys included).
const MAX_TUNNELS_PER_AGENT: usize = 16;

/// Who an agent key belongs to, and where its tunnels are put on record.
pub trait AgentRegistry: Send + Sync + 'static {
    /// The agent's name, or why the key (presented from `address`) is refused (unknown,
    /// revoked). Blocking (called off the async threads).
    fn authenticate(&self, key: &str, address: &str) -> Result<String, String>;
    /// A tunnel of agent `name`, from `address`, was accepted.
    fn connected(&self, name: &str, address: &str, version: &str);
    /// That tunnel ended, and why.
    fn disconnected(&self, name: &str, address: &str, reason: &str);
}

/// One connected agent.
pub struct Link {
    id: u64,
    pub name: String,
    pub address: String,
    pub version: String,
    pub since: SystemTime,
    sessions: AtomicUsize,
    requests: SendRequest<Bytes>,
    /// Set to close this tunnel (revocation).
    close: watch::Sender<bool>,
}

impl Link {
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }
}

/// The agents connected now, by name (several may serve one name).
#[derive(Default)]
pub struct Agents {
    links: Mutex<HashMap<String, Vec<Arc<Link>>>>,
    next_id: AtomicU64,
}

impl Agents {
    pub fn connected(&self) -> Vec<Arc<Link>> {
        lock(&self.links).values().flatten().cloned().collect()
    }

    /// Closes every tunnel of `name` (its key was revoked).
    pub fn disconnect(&self, name: &str) {
        let links = lock(&self.links).remove(name).unwrap_or_default();
        for link in links {
            let _ = link.close.send(true);
        }
    }

    /// The connected agents called `name`, least busy first (ties in random order, so
    /// bursts spread).
    fn candidates(&self, name: &str) -> Vec<Arc<Link>> {
        let mut links = lock(&self.links).get(name).cloned().unwrap_or_default();
        links.sort_by_cached_key(|l| (l.sessions(), rand::random::<u32>()));
        links
    }

    fn tunnels_of(&self, name: &str) -> usize {
        lock(&self.links).get(name).map_or(0, Vec::len)
    }

    fn add(&self, link: Arc<Link>) {
        lock(&self.links)
            .entry(link.name.clone())
            .or_default()
            .push(link);
    }

    fn remove(&self, link: &Link) {
        let mut links = lock(&self.links);
        if let Some(list) = links.get_mut(&link.name) {
            list.retain(|l| l.id != link.id);
            if list.is_empty() {
                links.remove(&link.name);
            }
        }
    }

    /// Accepts agents until the listener fails.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: TlsAcceptor,
        keys: Arc<dyn AgentRegistry>,
    ) -> std::io::Result<()> {
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let per_address = Handshakes::new(MAX_HANDSHAKES_PER_ADDRESS);
        let (mut dropped, mut last_warned) = (0u64, None);
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait and go on; the gateway's
                    // other listeners must not stop because of this one.
                    warn!(error = %e, "cannot accept an agent connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let counted = per_address.begin(addr.ip());
            let permit = handshakes.clone().try_acquire_owned();
            let (Some(counted), Ok(permit)) = (counted, permit) else {
                // Visible to the operator (agents may be locked out), but not a line per
                // dropped socket during a flood.
                dropped += 1;
                if last_warned.is_none_or(|at: Instant| at.elapsed() >= DROP_WARNING_EVERY) {
                    warn!(agent_addr = %addr, dropped, "too many tunnel handshakes at once (from this address, or in all); dropping new ones");
                    last_warned = Some(Instant::now());
                    dropped = 0;
                } else {
                    debug!(agent_addr = %addr, "tunnel handshake dropped");
                }
                continue;
            };
            let permit = (permit, counted);
            let (agents, tls, keys) = (self.clone(), tls.clone(), keys.clone());
            tokio::spawn(async move {
                if let Err(e) = agents
                    .run_tunnel(tcp, addr.to_string(), tls, keys, permit)
                    .await
                {
                    warn!(agent_addr = %addr, error = %e, "agent tunnel refused");
                }
            });
        }
    }

    async fn run_tunnel(
        &self,
        tcp: tokio::net::TcpStream,
        address: String,
        tls: TlsAcceptor,
        keys: Arc<dyn AgentRegistry>,
        handshake: (tokio::sync::OwnedSemaphorePermit, Handshake),
    ) -> Result<(), String> {
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let hello = async {
            let mut stream = tls.accept(tcp).await.map_err(|e| format!("TLS: {e}"))?;
            let hello: Hello = frame::read_limited(&mut stream, MAX_HELLO)
                .await
                .map_err(|e| format!("hello: {e}"))?;
            Ok::<_, String>((stream, hello))
        };
        let (mut stream, hello) = tokio::time::timeout(HELLO_TIMEOUT, hello)
            .await
            .map_err(|_| "no hello in time".to_string())??;
        let key = hello.key;
        let (registry, from) = (keys.clone(), address.clone());
        let checked = tokio::task::spawn_blocking(move || registry.authenticate(&key, &from))
            .await
            .map_err(|e| e.to_string())?;
        let checked = checked.and_then(|name| {
            if self.tunnels_of(&name) >= MAX_TUNNELS_PER_AGENT {
                Err(format!(
                    "agent {name} already has {MAX_TUNNELS_PER_AGENT} tunnels open"
                ))
            } else {
                Ok(name)
            }
        });
        let name = match checked {
            Ok(name) => name,
            Err(error) => {
                let _ = frame::write(
                    &mut stream,
                    &Welcome::Refused {
                        error: error.clone(),
                    },
                )
                .await;
                return Err(error);
            }
        };
        frame::write(&mut stream, &Welcome::Accepted { name: name.clone() })
            .await
            .map_err(|e| e.to_string())?;

        let (requests, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_STREAMS)
            // An agent may not push streams nobody reads, or send huge headers.
            .enable_push(false)
            .max_header_list_size(MAX_HEADERS)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
        let pings = connection
            .ping_pong()
            .ok_or_else(|| "no ping handle".to_string())?;
        let (close, mut closing) = watch::channel(false);
        let link = Arc::new(Link {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.clone(),
            address: address.clone(),
            // Shown in logs and `agents list`: printable ASCII only.
            version: hello
                .version
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(64)
                .collect(),
            since: SystemTime::now(),
            sessions: AtomicUsize::new(0),
            requests,
            close,
        });
        drop(handshake);
        self.add(link.clone());
        info!(agent = %name, agent_addr = %address, version = %link.version, "agent connected");
        keys.connected(&name, &address, &link.version);
        let why = tokio::select! {
            r = connection => match r {
                Ok(()) => "tunnel closed".to_string(),
                Err(e) => format!("tunnel failed: {e}"),
            },
            why = ping::run(pings) => why,
            _ = closing.wait_for(|c| *c) => "the agent's key was revoked".to_string(),
        };
        // Dropping the connection ends every stream on it: their sessions see an error.
        self.remove(&link);
        info!(agent = %name, agent_addr = %address, reason = %why, "agent disconnected");
        keys.disconnected(&name, &address, &why);
        Ok(())
    }

    /// Opens a target connection through agent `agent`.
    pub async fn connect(
        &self,
        agent: &str,
        target: &Target,
        client_params: &[(String, String)],
    ) -> Result<Upstream, UpstreamError> {
        let request = Request::Connect {
            target: target.clone(),
            client_params: client_params.to_vec(),
        };
        let wait = Duration::from_millis(target.connect_timeout_ms) + ping::SILENCE;
        // A tunnel that fails (lost, not yet noticed) gives way to the next agent of the
        // name; a target the agent could not open is the answer.
        for link in self.candidates(agent) {
            // Counted from the start, so a burst of sessions spreads over the agents.
            link.sessions.fetch_add(1, Ordering::Relaxed);
            let counted = Counting(link.clone());
            let reply = match tokio::time::timeout(wait, exchange(&link, &request)).await {
                Err(_) => return Err(UpstreamError::Timeout(target.address.clone())),
                Ok(Err(_)) => continue,
                Ok(Ok(reply)) => reply,
            };
            return match reply {
                (
                    stream,
                    Reply::Connected {
                        startup_frames,
                        pid,
                        key,
                        txn_status,
                    },
                ) => Ok(Upstream {
                    stream: Box::new(Counted {
                        stream,
                        _count: counted,
                    }),
                    startup_frames: BytesMut::from(&startup_frames[..]),
                    cancel: CancelKey { pid, key },
                    txn_status,
                    served_by: Some(format!("{} ({})", link.name, link.address)),
                }),
                (_, Reply::Failed { message }) => Err(UpstreamError::Remote(message)),
                (_, Reply::Done) => Err(UpstreamError::Protocol("unexpected agent reply".into())),
            };
        }
        Err(UpstreamError::AgentUnavailable(agent.to_owned()))
    }

    pub async fn cancel(
        &self,
        agent: &str,
        target: &Target,
        key: &CancelKey,
    ) -> Result<(), UpstreamError> {
        // The session's agent is not known here; a cancel is harmless on any of them
        // (every agent of a name reaches the same target).
        let link = self
            .candidates(agent)
            .into_iter()
            .next()
            .ok_or_else(|| UpstreamError::AgentUnavailable(agent.to_owned()))?;
        let request = Request::Cancel {
            target: target.clone(),
            pid: key.pid,
            key: key.key.clone(),
        };
        let (_, reply) = tokio::time::timeout(Duration::from_secs(10), exchange(&link, &request))
            .await
            .map_err(|_| UpstreamError::AgentUnavailable(agent.to_owned()))??;
        match reply {
            Reply::Failed { message } => Err(UpstreamError::Remote(message)),
            _ => Ok(()),
        }
    }
}

impl Agents {
    /// Opens a stream for one API call through agent `agent` and sends it `call`; the
    /// call's body and answer follow on the stream.
    pub async fn open_call(
        &self,
        agent: &str,
        call: serde_json::Value,
    ) -> Result<CallStream, UpstreamError> {
        let request = Request::Call { call };
        for link in self.candidates(agent) {
            link.sessions.fetch_add(1, Ordering::Relaxed);
            let counted = Counting(link.clone());
            match tokio::time::timeout(ping::SILENCE * 2, open(&link, &request)).await {
                Ok(Ok(stream)) => {
                    return Ok(Box::new(Counted {
                        stream,
                        _count: counted,
                    }))
                }
                Ok(Err(_)) | Err(_) => continue,
            }
        }
        Err(UpstreamError::AgentUnavailable(agent.to_owned()))
    }
}

/// Opens a stream on `link` and sends `request`.
async fn open(link: &Link, request: &Request) -> Result<H2Stream, UpstreamError> {
    let unavailable = |_| UpstreamError::AgentUnavailable(link.name.clone());
    let mut requests = link.requests.clone().ready().await.map_err(unavailable)?;
    let head = http::Request::post("/stream")
        .body(())
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    let (response, send) = requests.send_request(head, false).map_err(unavailable)?;
    // The request goes out first; the agent answers the HTTP response once it has read it.
    let mut stream = H2Stream::new(send, None);
    frame::write(&mut stream, request).await?;
    let response = response.await.map_err(unavailable)?;
    stream.set_recv(response.into_body());
    Ok(stream)
}

/// Opens a stream on `link`, sends `request` and reads the agent's reply.
async fn exchange(link: &Link, request: &Request) -> Result<(H2Stream, Reply), UpstreamError> {
    let mut stream = open(link, request).await?;
    let reply = frame::read::<_, Reply>(&mut stream).await?;
    Ok((stream, reply))
}

/// One session counted on its agent while it lives (from the start of its connect).
struct Counting(Arc<Link>);

impl Drop for Counting {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session's stream with its count.
struct Counted {
    stream: H2Stream,
    _count: Counting,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
