//! Opening an authenticated connection to the target PostgreSQL server.
//!
//! Runs where the agent runs: it is the only code that ever sees the target's password.
//! Supports SCRAM-SHA-256 (via `postgres-protocol`), MD5 and cleartext, over plain TCP or
//! TLS negotiated with SSLRequest.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec;
use crate::stream::BoxStream;
use crate::tls::{self, TlsMode};

/// Everything needed to reach and log in to one target.
#[derive(Clone)]
pub struct UpstreamOptions {
    /// `host:port`.
    pub address: String,
    pub database: String,
    pub user: String,
    /// Resolved from its `env:`/`file:` reference by the agent; `Err` says why it is
    /// unavailable, which matters only if the target asks for a password.
    pub password: Option<Result<String, String>>,
    pub tls: TlsMode,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for UpstreamOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamOptions")
            .field("address", &self.address)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// The key a CancelRequest to the target must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelKey {
    pub pid: i32,
    pub key: Vec<u8>,
}

/// An authenticated target connection, positioned right after the first ReadyForQuery.
pub struct Upstream {
    pub stream: BoxStream,
    /// ParameterStatus and NoticeResponse frames from the target's startup, to replay to the client.
    pub startup_frames: BytesMut,
    pub cancel: CancelKey,
    /// Transaction status of the first ReadyForQuery (normally `I`).
    pub txn_status: u8,
    /// The remote agent that opened it (`NAME (ADDRESS)`); `None`: this process did.
    pub served_by: Option<String>,
}

/// Errors safe to show to a client: none carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    Timeout(String),
    #[error("i/o error talking to the target: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS to the target failed: {0}")]
    Tls(String),
    #[error("the target does not support TLS, but the connection requires it")]
    TlsUnavailable,
    #[error("the target asked for a password but the connection has none configured")]
    MissingPassword,
    #[error("the target asked for a password, but it is unavailable: {0}")]
    PasswordUnavailable(String),
    #[error("the target rejected the gateway's login (SQLSTATE {code}): {message}")]
    Rejected { code: String, message: String },
    #[error("the target asked for a {0} password over a connection whose server is not verified; use tls: verify-full, or tls: disable to accept that risk")]
    UnsafeAuth(&'static str),
    #[error("the target asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    #[error("protocol error from the target: {0}")]
    Protocol(String),
    #[error("no agent can serve connection \"{0}\"")]
    NoRoute(String),
    #[error("agent {0} is not connected")]
    AgentUnavailable(String),
    /// What the remote agent reported about the target (already a safe summary).
    #[error("{0}")]
    Remote(String),
}

/// Largest single message accepted from the target during startup.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// Connects, negotiates TLS, logs in and reads up to the first ReadyForQuery.
/// `client_params` are forwarded startup parameters (never `user`/`database`).
pub async fn connect(
    opts: &UpstreamOptions,
    client_params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(opts.connect_timeout, connect_inner(opts, client_params))
        .await
        .map_err(|_| UpstreamError::Timeout(opts.address.clone()))?
}

async fn connect_inner(
    opts: &UpstreamOptions,
    client_params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let (mut stream, binding) = open_stream(opts).await?;

    let mut params: Vec<(&str, &str)> = vec![("user", &opts.user), ("database", &opts.database)];
    params.extend(client_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut out = BytesMut::new();
    codec::startup_message(&mut out, &params);
    stream.write_all(&out).await?;

    let mut buf = BytesMut::with_capacity(8192);
    authenticate(&mut stream, &mut buf, opts, binding).await?;

    // After AuthenticationOk: ParameterStatus*, BackendKeyData, ReadyForQuery.
    let mut startup_frames = BytesMut::new();
    let mut cancel = None;
    loop {
        let (tag, body) = read_message(&mut stream, &mut buf).await?;
        match tag {
            b'S' | b'N' => {
                put_frame(&mut startup_frames, tag, &body);
            }
            b'K' => {
                if body.len() < 8 {
                    return Err(UpstreamError::Protocol("short BackendKeyData".into()));
                }
                let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                cancel = Some(CancelKey {
                    pid,
                    key: body[4..].to_vec(),
                });
            }
            b'Z' => {
                let txn_status = body.first().copied().unwrap_or(b'I');
                let cancel = cancel.unwrap_or(CancelKey {
                    pid: 0,
                    key: Vec::new(),
                });
                if !buf.is_empty() {
                    return Err(UpstreamError::Protocol(
                        "unexpected data after ReadyForQuery".into(),
                    ));
                }
                return Ok(Upstream {
                    stream,
                    startup_frames,
                    cancel,
                    txn_status,
                    served_by: None,
                });
            }
            b'E' => return Err(rejected(&body)),
            b'v' => {
                // NegotiateProtocolVersion: we only ask for 3.0 and no _pq_ options, so
                // this only lists options we did not send; carry on.
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message '{}' during startup",
                    other as char
                )))
            }
        }
    }
}

/// What the connection's TLS offers SCRAM.
enum Binding {
    /// Plain TCP: channel binding is impossible.
    NoTls,
    /// TLS, with `tls-server-end-point` data when the certificate allows it.
    Tls(Option<Vec<u8>>),
}

/// Opens the connection, with TLS as the connection's mode asks.
async fn open_stream(opts: &UpstreamOptions) -> Result<(BoxStream, Binding), UpstreamError> {
    let mut tcp =
        TcpStream::connect(&opts.address)
            .await
            .map_err(|source| UpstreamError::Connect {
                address: opts.address.clone(),
                source,
            })?;
    tcp.set_nodelay(true)?;
    if opts.tls == TlsMode::Disable {
        return Ok((Box::new(tcp), Binding::NoTls));
    }
    let mut out = BytesMut::new();
    codec::ssl_request(&mut out);
    tcp.write_all(&out).await?;
    // Read exactly one byte: anything the server sends after it belongs to TLS, and a
    // server that sends more in plaintext is refused by the handshake (CVE-2021-23222).
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {
            let host = opts
                .address
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&opts.address);
            let tls = tls::connect_upstream(tcp, host, &opts.tls)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            let binding = tls::server_end_point(&tls);
            Ok((Box::new(tls), Binding::Tls(binding)))
        }
        b'N' if opts.tls == TlsMode::Prefer => Ok((Box::new(tcp), Binding::NoTls)),
        b'N' => Err(UpstreamError::TlsUnavailable),
        _ => Err(UpstreamError::Protocol(
            "unexpected answer to SSLRequest".into(),
        )),
    }
}

async fn authenticate(
    stream: &mut BoxStream,
    buf: &mut BytesMut,
    opts: &UpstreamOptions,
    binding: Binding,
) -> Result<(), UpstreamError> {
    let password = || match &opts.password {
        Some(Ok(p)) => Ok(p.as_str()),
        Some(Err(why)) => Err(UpstreamError::PasswordUnavailable(why.clone())),
        None => Err(UpstreamError::MissingPassword),
    };
    let mut scram: Option<sasl::ScramSha256> = None;
    let mut scram_verified = false;
    loop {
        let (tag, body) = read_message(stream, buf).await?;
        match tag {
            b'R' => {}
            b'E' => return Err(rejected(&body)),
            b'N' => continue,
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message '{}' during authentication",
                    other as char
                )))
            }
        }
        let mut pos = 0;
        let code = codec::read_i32(&body, &mut pos, "Authentication")
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let mut out = BytesMut::new();
        match code {
            // A server that started SCRAM must prove itself (SASLFinal) before it may
            // declare the login done; otherwise anyone in the middle could.
            0 if scram.as_ref().is_some_and(|_| !scram_verified) => {
                return Err(UpstreamError::Protocol(
                    "the target ended SCRAM without proving it knows the password".into(),
                ))
            }
            0 => return Ok(()),
            3 | 5 if !password_may_be_revealed(&opts.tls) => {
                return Err(UpstreamError::UnsafeAuth(if code == 3 {
                    "cleartext"
                } else {
                    "MD5"
                }))
            }
            3 => codec::password_message(&mut out, password()?.as_bytes()),
            5 => {
                let salt: [u8; 4] = body
                    .get(4..8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| UpstreamError::Protocol("short MD5 salt".into()))?;
                let hash = md5_hash(opts.user.as_bytes(), password()?.as_bytes(), salt);
                codec::password_message(&mut out, hash.as_bytes());
            }
            10 => {
                let mechanisms = sasl_mechanisms(&body[4..]);
                if !mechanisms.contains(&sasl::SCRAM_SHA_256) {
                    return Err(UpstreamError::UnsupportedAuth(format!(
                        "SASL {}",
                        mechanisms.join(", ")
                    )));
                }
                // Over TLS, bind the login to this TLS session (SCRAM-SHA-256-PLUS) so that
                // a man in the middle of an unverified TLS connection cannot relay it.
                let (mechanism, channel_binding) = match &binding {
                    Binding::Tls(Some(end_point))
                        if mechanisms.contains(&sasl::SCRAM_SHA_256_PLUS) =>
                    {
                        tracing::debug!("SCRAM with tls-server-end-point channel binding");
                        (
                            sasl::SCRAM_SHA_256_PLUS,
                            sasl::ChannelBinding::tls_server_end_point(end_point.clone()),
                        )
                    }
                    // The gateway could bind but the server offered no -PLUS: say so ('y'),
                    // so a server that really did offer it detects the downgrade.
                    Binding::Tls(Some(_)) => {
                        (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested())
                    }
                    // No binding data (plain TCP, or a certificate algorithm RFC 5929
                    // leaves undefined): the gateway cannot bind ('n').
                    Binding::Tls(None) | Binding::NoTls => {
                        (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported())
                    }
                };
                let s = sasl::ScramSha256::new(password()?.as_bytes(), channel_binding);
                codec::sasl_initial_response(&mut out, mechanism, s.message());
                scram = Some(s);
            }
            11 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASLContinue before SASL".into()))?;
                s.update(&body[4..])
                    .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                codec::sasl_response(&mut out, s.message());
            }
            12 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASLFinal before SASL".into()))?;
                s.finish(&body[4..])
                    .map_err(|e| UpstreamError::Protocol(format!("SCRAM server proof: {e}")))?;
                scram_verified = true;
                continue;
            }
            other => {
                return Err(UpstreamError::UnsupportedAuth(format!(
                    "authentication code {other}"
                )))
            }
        }
        stream.write_all(&out).await?;
    }
}

/// Cleartext and MD5 hand the password (or a hash that logs in as well) to whoever
/// answers: only to a verified server, or where the operator chose plain TCP explicitly.
/// A man in the middle can otherwise answer `N` to SSLRequest (`prefer`) or terminate
/// TLS itself (`require`) and ask for it. SCRAM never reveals the password.
fn password_may_be_revealed(mode: &TlsMode) -> bool {
    matches!(mode, TlsMode::Disable | TlsMode::VerifyFull { .. })
}

fn sasl_mechanisms(body: &[u8]) -> Vec<&str> {
    body.split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .filter_map(|m| std::str::from_utf8(m).ok())
        .collect()
}

fn rejected(body: &[u8]) -> UpstreamError {
    let fields = codec::parse_error_fields(body);
    UpstreamError::Rejected {
        code: fields.code,
        message: fields.message,
    }
}

fn put_frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Reads one whole typed message (small ones only: startup and auth).
async fn read_message(
    stream: &mut BoxStream,
    buf: &mut BytesMut,
) -> Result<(u8, BytesMut), UpstreamError> {
    loop {
        if let Some(h) =
            codec::parse_header(buf).map_err(|e| UpstreamError::Protocol(e.to_string()))?
        {
            if h.body_len > MAX_STARTUP_MESSAGE {
                return Err(UpstreamError::Protocol(format!(
                    "startup message of {} bytes is too large",
                    h.body_len
                )));
            }
            if buf.len() >= 5 + h.body_len {
                buf.advance(5);
                let body = buf.split_to(h.body_len);
                return Ok((h.tag, body));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Protocol(
                "the target closed the connection during startup".into(),
            ));
        }
    }
}

/// Sends a CancelRequest for `key` to the target on a new connection.
pub async fn send_cancel(opts: &UpstreamOptions, key: &CancelKey) -> Result<(), UpstreamError> {
    let fut = async {
        let (mut stream, _) = open_stream(opts).await?;
        let mut out = BytesMut::new();
        codec::cancel_request(&mut out, key.pid, &key.key);
        stream.write_all(&out).await?;
        stream.flush().await?;
        // The server closes the connection without answering.
        let mut sink = [0u8; 1];
        let _ = stream.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(opts.connect_timeout, fut)
        .await
        .map_err(|_| UpstreamError::Timeout(opts.address.clone()))?
}
