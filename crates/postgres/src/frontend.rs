//! The client-facing side: accepting connections, TLS, startup, authentication with a
//! sluice token, cancel requests, and handing the session to the proxy loop.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rand::Rng;
use sluice_core::handshakes::{Handshake, Handshakes};
use sluice_core::{AgentContext, AuthFailure, Pipeline, SessionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::catalog::Catalog;
use crate::codec::{self, FirstPacket, Startup};
use crate::lock;
use crate::session;
use crate::stream::BoxStream;
use crate::upstream::{CancelKey, Upstream, UpstreamError};

/// Opens authenticated target connections; implemented by the agent.
pub trait Connector: Send + Sync + 'static {
    /// Connects to the target behind `connection`, forwarding the client's startup
    /// parameters (never `user` or `database`).
    fn connect(
        &self,
        connection: &str,
        client_params: &[(String, String)],
    ) -> impl Future<Output = Result<Upstream, UpstreamError>> + Send;

    /// Sends a CancelRequest for a running query to the target behind `connection`.
    fn cancel(
        &self,
        connection: &str,
        key: &CancelKey,
    ) -> impl Future<Output = Result<(), UpstreamError>> + Send;
}

pub struct FrontendConfig {
    /// TLS for clients; `None` turns SSLRequest down.
    pub tls: Option<TlsAcceptor>,
    /// Largest Query/Parse/Bind message accepted (CopyData streams whatever its size).
    pub max_message_bytes: usize,
    /// Client connections served at once, authenticated or not; more are refused with
    /// SQLSTATE 53300 so that a flood cannot exhaust the gateway.
    pub max_connections: usize,
    /// The masking rules; `None` (or no rule covering a session) leaves results untouched.
    pub masking: Option<Arc<sluice_mask::Masking>>,
}

/// Where a client's cancel key leads.
struct CancelTarget {
    connection: String,
    upstream: CancelKey,
    /// Withdraws a statement the session holds for review.
    held: Arc<session::CancelSignal>,
}

/// The PostgreSQL frontend of the gateway.
pub struct Frontend<P, C> {
    pipeline: Arc<P>,
    connector: Arc<C>,
    config: FrontendConfig,
    cancels: Mutex<HashMap<(i32, i32), CancelTarget>>,
    /// One catalog reader per target connection, for masking (made on first use).
    catalogs: Mutex<HashMap<String, Arc<Catalog>>>,
    /// `max_connections` sessions at once, network and in-process clients together.
    slots: Arc<tokio::sync::Semaphore>,
    /// Connections from each address that have not authenticated yet.
    handshakes: Handshakes,
    large_messages: Arc<session::LargeMessages>,
}

/// Startup parameters the gateway owns and does not forward.
const GATEWAY_PARAMS: &[&str] = &["user", "database", "replication"];

/// Largest password message accepted before authentication.
const MAX_PASSWORD_MESSAGE: usize = 4096;

/// How long a client may take from connecting to presenting its token, TLS and all, so
/// idle unauthenticated sockets cannot pile up. Shorter than PostgreSQL's 60 s
/// `authentication_timeout`: a token comes with the startup, not typed at a prompt (psql
/// asks for a password before it connects again).
const AUTHENTICATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Unauthenticated connections one address may hold at once: a host that opens sockets
/// and sends nothing can take this many of the `max_connections` slots, not all of them.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;

/// Who is on the other end of a session's client stream.
struct Client {
    addr: String,
    tls: bool,
    /// TLS, loopback or in-process: a token may be presented in clear text.
    trusted_path: bool,
    agent_context: Option<AgentContext>,
    fail_fast_reviews: bool,
    /// When it must have presented its token.
    deadline: tokio::time::Instant,
    /// Counts it against its address until it has authenticated (network clients).
    handshake: Option<Handshake>,
}

/// How an in-process client cancels its running statement: a CancelRequest with the key
/// the session's BackendKeyData gave it, as any PostgreSQL client sends one.
pub trait CancelSession: Send + Sync {
    fn cancel_session(
        &self,
        pid: i32,
        key: [u8; 4],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

impl<P: Pipeline, C: Connector> CancelSession for Frontend<P, C> {
    fn cancel_session(
        &self,
        pid: i32,
        key: [u8; 4],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move { self.cancel(pid, &key).await })
    }
}

/// A client in this process (see [`Frontend::serve_in_process`]).
pub struct InProcess {
    /// What the session records as the client address, e.g. `mcp:127.0.0.1:50312`.
    pub client_addr: String,
    pub agent_context: Option<AgentContext>,
    pub fail_fast_reviews: bool,
}

/// Errors ending a connection before its session started; each becomes a FATAL
/// ErrorResponse (when the client can still read one) in [`Frontend::handle`].
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// The end of a connection that did not become a session.
enum Early {
    /// Send this FATAL error, then close.
    Refuse(BoxStream, Refusal),
    /// Close without a word (cancel requests, clients that hang up at the password prompt).
    Close,
}

type SessionMasking = Option<(Arc<sluice_mask::SessionMasking>, Arc<Catalog>)>;

impl<P: Pipeline, C: Connector> Frontend<P, C> {
    /// The masking that covers a session, with its target's catalog reader.
    fn session_masking(&self, info: &SessionInfo) -> Result<SessionMasking, String> {
        let Some(masking) = &self.config.masking else {
            return Ok(None);
        };
        let Some(session) = masking
            .for_session(&info.connection, &info.identity)
            .map_err(|e| format!("sluice cannot mask this session's results: {e}"))?
        else {
            return Ok(None);
        };
        let catalog = lock(&self.catalogs)
            .entry(info.connection.clone())
            .or_insert_with(|| {
                let connector = self.connector.clone();
                let connection = info.connection.clone();
                Arc::new(Catalog::new(Box::new(move || {
                    let connector = connector.clone();
                    let connection = connection.clone();
                    Box::pin(async move {
                        connector
                            .connect(&connection, &[])
                            .await
                            .map(|u| u.stream)
                            .map_err(|e| e.to_string())
                    })
                })))
            })
            .clone();
        Ok(Some((session, catalog)))
    }

    pub fn new(pipeline: Arc<P>, connector: Arc<C>, config: FrontendConfig) -> Self {
        Frontend {
            pipeline,
            connector,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            handshakes: Handshakes::new(MAX_HANDSHAKES_PER_ADDRESS),
            large_messages: Arc::new(session::LargeMessages::new(config.max_message_bytes)),
            config,
            cancels: Mutex::new(HashMap::new()),
            catalogs: Mutex::new(HashMap::new()),
        }
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(handshake) = self.handshakes.begin(peer.ip()) else {
                tokio::spawn(self.clone().refuse_busy(tcp, peer));
                continue;
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tokio::spawn(self.clone().refuse_busy(tcp, peer));
                continue;
            };
            let fe = self.clone();
            tokio::spawn(async move {
                fe.handle(tcp, peer, handshake).await;
                drop(slot);
            });
        }
    }

    /// Turns away a client over the connection limit the way PostgreSQL does: encryption
    /// is declined (no TLS handshakes for a flood), the startup packet is read, then
    /// "too many clients". A CancelRequest is still honoured: cancelling is how an
    /// overloaded system gets relief.
    async fn refuse_busy(self: Arc<Self>, mut tcp: TcpStream, peer: SocketAddr) {
        warn!(%peer, "connection refused: too many connections");
        let answer = async {
            for _ in 0..3 {
                let body = read_first_packet(&mut tcp).await.ok()?;
                match codec::parse_first_packet(&body).ok()? {
                    FirstPacket::SslRequest | FirstPacket::GssEncRequest => {
                        tcp.write_all(b"N").await.ok()?;
                    }
                    FirstPacket::Cancel { pid, key } => {
                        self.cancel(pid, &key).await;
                        return None;
                    }
                    FirstPacket::Startup(_) => break,
                }
            }
            let mut out = BytesMut::new();
            codec::error_response(
                &mut out,
                "FATAL",
                "53300",
                "sorry, too many clients already",
            );
            tcp.write_all(&out).await.ok()?;
            tcp.shutdown().await.ok()
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), answer).await;
    }

    /// Serves one session whose client lives in this process (the MCP endpoint's tool
    /// calls): `stream` starts with a plain startup packet (no encryption to negotiate), then
    /// the session runs exactly as for a network client — token, policy, masking, audit.
    pub async fn serve_in_process(self: Arc<Self>, stream: BoxStream, origin: InProcess) {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            warn!(client = %origin.client_addr, "session refused: too many connections");
            let refusal = Refusal::new("53300", "sorry, too many clients already");
            self.finish_early(Err(Early::Refuse(stream, refusal)), "in-process")
                .await;
            return;
        };
        let result = async {
            let mut stream = stream;
            let deadline = tokio::time::Instant::now() + AUTHENTICATION_TIMEOUT;
            let first = tokio::time::timeout_at(deadline, read_first_packet(&mut stream))
                .await
                .map_err(|_| Early::Close)?;
            let body = match first {
                Ok(body) => body,
                Err(Some(refusal)) => return Err(Early::Refuse(stream, refusal)),
                Err(None) => return Err(Early::Close),
            };
            let Ok(FirstPacket::Startup(startup)) = codec::parse_first_packet(&body) else {
                return Err(Early::Refuse(
                    stream,
                    Refusal::new("08P01", "expected a startup packet"),
                ));
            };
            let client = Client {
                addr: origin.client_addr,
                tls: false,
                trusted_path: true,
                agent_context: origin.agent_context,
                fail_fast_reviews: origin.fail_fast_reviews,
                deadline,
                handshake: None,
            };
            self.session(stream, startup, client).await
        }
        .await;
        self.finish_early(result, "in-process").await;
    }

    async fn handle(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, handshake: Handshake) {
        let _ = tcp.set_nodelay(true);
        let result = self.startup(tcp, peer, handshake).await;
        self.finish_early(result, &peer.to_string()).await;
    }

    /// Answers a connection that ended before its session started.
    async fn finish_early(&self, result: Result<(), Early>, peer: &str) {
        match result {
            Ok(()) => {}
            Err(Early::Close) => {}
            Err(Early::Refuse(mut stream, refusal)) => {
                debug!(%peer, code = refusal.code, message = ?refusal.message, "connection refused");
                let mut out = BytesMut::new();
                codec::error_response(&mut out, "FATAL", refusal.code, &refusal.message);
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
            }
        }
    }

    async fn startup(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        handshake: Handshake,
    ) -> Result<(), Early> {
        let deadline = tokio::time::Instant::now() + AUTHENTICATION_TIMEOUT;
        let negotiated = tokio::time::timeout_at(deadline, self.negotiate(tcp))
            .await
            .map_err(|_| Early::Close)?;
        let (stream, tls, startup) = match negotiated {
            Ok(Negotiated::Startup(stream, tls, startup)) => (stream, tls, startup),
            Ok(Negotiated::Cancel { pid, key }) => {
                self.cancel(pid, &key).await;
                return Err(Early::Close);
            }
            Err(e) => return Err(e),
        };
        let client = Client {
            addr: peer.to_string(),
            tls,
            trusted_path: tls || peer.ip().is_loopback(),
            agent_context: None,
            fail_fast_reviews: false,
            deadline,
            handshake: Some(handshake),
        };
        self.session(stream, startup, client).await
    }

    /// Everything after the startup packet: protocol version, token, target, the session.
    async fn session(
        &self,
        mut stream: BoxStream,
        startup: codec::Startup,
        client: Client,
    ) -> Result<(), Early> {
        let major = startup.version >> 16;
        let minor = startup.version & 0xffff;
        if major != 3 {
            return Err(Early::Refuse(
                stream,
                Refusal::new(
                    "0A000",
                    format!("unsupported frontend protocol {major}.{minor}: sluice speaks 3.0"),
                ),
            ));
        }
        let protocol_options: Vec<&str> = startup
            .params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("_pq_."))
            .collect();
        if minor > 0 || !protocol_options.is_empty() {
            let mut out = BytesMut::new();
            codec::negotiate_protocol_version(&mut out, &protocol_options);
            if stream.write_all(&out).await.is_err() {
                return Err(Early::Close);
            }
        }

        let Some(user) = startup
            .param("user")
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
        else {
            return Err(Early::Refuse(
                stream,
                Refusal::new("28000", "no user name specified in the startup packet"),
            ));
        };
        // As in PostgreSQL, the database defaults to the user name.
        let connection = startup.param("database").unwrap_or(&user).to_owned();
        if startup
            .param("replication")
            .is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0"))
        {
            return Err(Early::Refuse(
                stream,
                Refusal::new(
                    "42501",
                    "replication connections are not allowed through sluice",
                ),
            ));
        }
        if !client.trusted_path {
            return Err(Early::Refuse(
                stream,
                Refusal::new(
                    "28000",
                    "sluice accepts tokens only over TLS from non-loopback addresses: connect with sslmode=require",
                ),
            ));
        }

        let password =
            tokio::time::timeout_at(client.deadline, self.read_password(&mut stream)).await;
        let token = match password {
            Ok(Ok(Some(token))) => token,
            Ok(Ok(None)) => return Err(Early::Close),
            Ok(Err(refusal)) => return Err(Early::Refuse(stream, refusal)),
            Err(_) => {
                return Err(Early::Refuse(
                    stream,
                    Refusal::new("08006", "authentication timed out"),
                ))
            }
        };
        let client_addr = client.addr;
        let identity = match self
            .pipeline
            .authenticate(&user, &token, &connection, &client_addr, "postgres")
            .await
        {
            Ok(identity) => identity,
            Err(failure) => return Err(Early::Refuse(stream, auth_refusal(&failure))),
        };
        drop(token);
        drop(client.handshake);

        let forwarded: Vec<(String, String)> = startup
            .params
            .into_iter()
            .filter(|(k, _)| !GATEWAY_PARAMS.contains(&k.as_str()) && !k.starts_with("_pq_."))
            .collect();
        let application_name = forwarded
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone());
        // Encoding and application name are routine; anything else (options, search_path,
        // role, …) is recorded with the session.
        let client_settings = forwarded
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "application_name" | "client_encoding"))
            .cloned()
            .collect();
        let upstream = match self.connector.connect(&connection, &forwarded).await {
            Ok(u) => u,
            Err(e) => {
                warn!(%connection, error = %e, "cannot open target connection");
                return Err(Early::Refuse(stream, upstream_refusal(&connection, &e)));
            }
        };

        let info = Arc::new(SessionInfo {
            id: session_id(),
            identity,
            connection: connection.clone(),
            protocol: "postgres",
            client_addr,
            tls: client.tls,
            application_name,
            client_settings,
            agent_context: client.agent_context,
            fail_fast_reviews: client.fail_fast_reviews,
            served_by: upstream.served_by.clone(),
        });
        let masking = match self.session_masking(&info) {
            Ok(m) => m,
            Err(e) => return Err(Early::Refuse(stream, Refusal::new("XX000", e))),
        };
        let end = Arc::new(session::SessionEnd::default());
        if let Err(e) = self.pipeline.session_opened(&info, end.clone()).await {
            return Err(Early::Refuse(stream, Refusal::new("57P03", e.to_string())));
        }

        let cancel = Arc::new(session::CancelSignal::default());
        let upstream_cancel = upstream.cancel.clone();
        let (pid, key) = self.register_cancel(&connection, upstream.cancel.clone(), cancel.clone());
        let mut out = BytesMut::new();
        codec::auth_request(&mut out, 0);
        out.extend_from_slice(&upstream.startup_frames);
        codec::backend_key_data(&mut out, pid, key);
        codec::ready_for_query(&mut out, upstream.txn_status);
        let reason = if let Err(e) = stream.write_all(&out).await {
            Some(format!("connection error: {e}"))
        } else {
            info!(session = %info.id, user = %info.identity.user, %connection, "session started");
            let encoding = client_encoding(&upstream.startup_frames);
            let cancel_target = {
                let (connector, connection) = (self.connector.clone(), connection.clone());
                let key = upstream_cancel.clone();
                Box::pin(async move {
                    if let Err(e) = connector.cancel(&connection, &key).await {
                        warn!(%connection, error = %e, "cancel request to the target failed");
                    }
                })
            };
            session::run(
                self.pipeline.clone(),
                info.clone(),
                stream,
                upstream.stream,
                session::Start {
                    txn_status: upstream.txn_status,
                    client_encoding: encoding.as_deref(),
                    max_message: self.config.max_message_bytes,
                    cancel,
                    end: end.clone(),
                    masking,
                    cancel_target,
                    large_messages: self.large_messages.clone(),
                },
            )
            .await
        };
        lock(&self.cancels).remove(&(pid, key));
        // Ended by the gateway (an access window closed): a statement still running in the
        // backend must not finish on its own, so it is cancelled.
        if end.was_ended() {
            if let Err(e) = self.connector.cancel(&connection, &upstream_cancel).await {
                warn!(%connection, error = %e, "cancel request to the target failed");
            }
        }
        info!(session = %info.id, reason = reason.as_deref().unwrap_or("client closed"), "session ended");
        self.pipeline.session_closed(&info, reason);
        Ok(())
    }

    /// Reads the untyped first packets: SSL/GSS negotiation, then a startup or cancel.
    async fn negotiate(&self, tcp: TcpStream) -> Result<Negotiated, Early> {
        let mut gss_declined = false;
        // PostgreSQL 17 "direct SSL": a TLS ClientHello (record type 0x16) instead of SSLRequest.
        let mut first = [0u8; 1];
        let mut conn = match (tcp.peek(&mut first).await, &self.config.tls) {
            (Ok(1), Some(acceptor)) if first[0] == 0x16 => Conn::Tls(Box::new(
                acceptor.accept(tcp).await.map_err(|_| Early::Close)?,
            )),
            _ => Conn::Plain(tcp),
        };
        loop {
            let read = match &mut conn {
                Conn::Plain(s) => read_first_packet(s).await,
                Conn::Tls(s) => read_first_packet(s.as_mut()).await,
            };
            let body = match read {
                Ok(body) => body,
                Err(Some(refusal)) => return Err(Early::Refuse(conn.boxed(), refusal)),
                Err(None) => return Err(Early::Close),
            };
            let packet = match codec::parse_first_packet(&body) {
                Ok(p) => p,
                Err(e) => {
                    return Err(Early::Refuse(
                        conn.boxed(),
                        Refusal::new("08P01", format!("invalid startup packet: {e}")),
                    ))
                }
            };
            conn = match (packet, conn) {
                (FirstPacket::SslRequest, Conn::Plain(mut tcp)) => match &self.config.tls {
                    Some(acceptor) => {
                        tcp.write_all(b"S").await.map_err(|_| Early::Close)?;
                        // We have read exactly the 8-byte SSLRequest, so nothing sent in
                        // plaintext ahead of the handshake can leak into the TLS session
                        // (CVE-2021-23222): such bytes fail the handshake instead.
                        Conn::Tls(Box::new(
                            acceptor.accept(tcp).await.map_err(|_| Early::Close)?,
                        ))
                    }
                    None => {
                        tcp.write_all(b"N").await.map_err(|_| Early::Close)?;
                        Conn::Plain(tcp)
                    }
                },
                (FirstPacket::GssEncRequest, Conn::Plain(mut tcp)) if !gss_declined => {
                    gss_declined = true;
                    tcp.write_all(b"N").await.map_err(|_| Early::Close)?;
                    Conn::Plain(tcp)
                }
                (FirstPacket::SslRequest | FirstPacket::GssEncRequest, conn) => {
                    return Err(Early::Refuse(
                        conn.boxed(),
                        Refusal::new("08P01", "unexpected encryption request"),
                    ))
                }
                (FirstPacket::Cancel { pid, key }, _) => {
                    return Ok(Negotiated::Cancel { pid, key })
                }
                (FirstPacket::Startup(startup), conn) => {
                    let tls = matches!(conn, Conn::Tls(_));
                    return Ok(Negotiated::Startup(conn.boxed(), tls, startup));
                }
            };
        }
    }

    /// Asks for the token as a cleartext password. `Ok(None)`: the client hung up, as psql
    /// does when it has no password yet and will prompt for one.
    async fn read_password(&self, stream: &mut BoxStream) -> Result<Option<String>, Refusal> {
        let mut out = BytesMut::new();
        codec::auth_request(&mut out, 3);
        if stream.write_all(&out).await.is_err() {
            return Ok(None);
        }
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).await.is_err() {
            return Ok(None);
        }
        let h = codec::parse_header(&header)
            .map_err(|e| Refusal::new("08P01", format!("invalid password message: {e}")))?
            .ok_or_else(|| Refusal::new("08P01", "invalid password message"))?;
        if h.tag != b'p' {
            return Err(Refusal::new(
                "08P01",
                format!(
                    "expected a password message, got type {}",
                    h.tag.escape_ascii()
                ),
            ));
        }
        if h.body_len > MAX_PASSWORD_MESSAGE {
            return Err(Refusal::new("08P01", "password message too long"));
        }
        let mut body = vec![0u8; h.body_len];
        if stream.read_exact(&mut body).await.is_err() {
            return Ok(None);
        }
        let mut pos = 0;
        let token = codec::read_cstr(&body, &mut pos, "password")
            .map_err(|_| Refusal::new("08P01", "invalid password message"))?;
        // As PostgreSQL: the string and its terminator are the whole message.
        if pos != body.len() {
            return Err(Refusal::new("08P01", "invalid password packet size"));
        }
        Ok(Some(token.to_owned()))
    }

    fn register_cancel(
        &self,
        connection: &str,
        upstream: CancelKey,
        held: Arc<session::CancelSignal>,
    ) -> (i32, i32) {
        let mut cancels = lock(&self.cancels);
        let mut rng = rand::thread_rng();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(slot) = cancels.entry(key) {
                slot.insert(CancelTarget {
                    connection: connection.to_owned(),
                    upstream,
                    held,
                });
                return key;
            }
        }
    }

    async fn cancel(&self, pid: i32, key: &[u8]) {
        let Ok(key) = <[u8; 4]>::try_from(key) else {
            return;
        };
        let target = {
            let cancels = lock(&self.cancels);
            cancels.get(&(pid, i32::from_be_bytes(key))).and_then(|t| {
                // A statement held for review is withdrawn; one running is cancelled below.
                // Nothing is kept for a later hold.
                (!t.held.withdraw_held()).then(|| (t.connection.clone(), t.upstream.clone()))
            })
        };
        // Unknown keys are ignored silently, as PostgreSQL does.
        if let Some((connection, upstream)) = target {
            if let Err(e) = self.connector.cancel(&connection, &upstream).await {
                warn!(%connection, error = %e, "cancel request to the target failed");
            }
        }
    }
}

/// The client socket while encryption is being negotiated.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    fn boxed(self) -> BoxStream {
        match self {
            Conn::Plain(s) => Box::new(s),
            Conn::Tls(s) => s,
        }
    }
}

enum Negotiated {
    Startup(BoxStream, bool, Startup),
    Cancel { pid: i32, key: Vec<u8> },
}

/// Reads one untyped packet; `Err(None)` when the client went away.
async fn read_first_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Vec<u8>, Option<Refusal>> {
    let len = stream.read_i32().await.map_err(|_| None)?;
    if len < 8 || len as usize > codec::MAX_STARTUP_PACKET {
        return Err(Some(Refusal::new(
            "08P01",
            format!("invalid startup packet length {len}"),
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await.map_err(|_| None)?;
    Ok(body)
}

fn auth_refusal(failure: &AuthFailure) -> Refusal {
    let code = match failure {
        AuthFailure::BadCredentials(_) | AuthFailure::Expired(_) => "28P01",
        AuthFailure::NotAllowed { .. } | AuthFailure::AccessRequired(_) => "28000",
        AuthFailure::UnknownConnection(_) | AuthFailure::WrongKind { .. } => "3D000",
        AuthFailure::Unavailable(_) => "57P03",
    };
    Refusal::new(code, failure.to_string())
}

/// What the client is told when the target cannot be reached: the kind of failure, not
/// the gateway's internals (addresses, variable names, file paths stay in its log).
fn upstream_refusal(connection: &str, e: &UpstreamError) -> Refusal {
    // A target that is full or starting up says so with a code clients and poolers retry
    // on; it is passed on as it is.
    let code = match e {
        UpstreamError::Rejected { code, .. } => ["53000", "53100", "53200", "53300", "57P03"]
            .into_iter()
            .find(|retryable| code == retryable)
            .unwrap_or("08001"),
        _ => "08001",
    };
    Refusal::new(
        code,
        format!(
            "cannot open connection \"{connection}\": {}",
            refusal_detail(e)
        ),
    )
}

/// The part of a connect refusal a client may see; remote agents send theirs the same way.
pub fn refusal_detail(e: &UpstreamError) -> String {
    match e {
        // The target's own words would name the account the gateway logs in with.
        UpstreamError::Rejected { code, .. } if code.starts_with("28") => {
            format!("the target refused the gateway's credentials (SQLSTATE {code})")
        }
        // Full or starting up: said in the gateway's words, as the target's name the role.
        UpstreamError::Rejected { code, .. } if code.starts_with("53") || code == "57P03" => {
            format!("the target cannot take the connection now (SQLSTATE {code})")
        }
        // No such database, a bad startup setting the client gave.
        UpstreamError::Rejected { code, message } => {
            format!("the target refused the connection: {message} (SQLSTATE {code})")
        }
        UpstreamError::Connect { .. } | UpstreamError::Timeout(_) => {
            "the target is unreachable".to_owned()
        }
        UpstreamError::Tls(_) | UpstreamError::TlsUnavailable => {
            "TLS to the target failed".to_owned()
        }
        UpstreamError::NoRoute(_) => "no agent serves it".to_owned(),
        UpstreamError::AgentUnavailable(agent) => format!("agent {agent} is not connected"),
        // Already a summary like the ones above, made by the remote agent.
        UpstreamError::Remote(summary) => summary.clone(),
        _ => "the gateway could not log in to the target (see the gateway log)".to_owned(),
    }
}

/// The client_encoding the target reported at startup.
fn client_encoding(frames: &[u8]) -> Option<String> {
    let mut pos = 0;
    while let Ok(Some(h)) = codec::parse_header(&frames[pos..]) {
        let body = frames.get(pos + 5..pos + 5 + h.body_len)?;
        if h.tag == b'S' {
            if let Some(("client_encoding", value)) = codec::parse_parameter_status(body) {
                return Some(value.to_owned());
            }
        }
        pos += 5 + h.body_len;
    }
    None
}

fn session_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
