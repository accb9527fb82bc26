//! The local end of `sluice connect`: a PostgreSQL listener on loopback for clients that
//! cannot carry a sluice token (GUI tools, ORMs configured without a password). Each
//! client's startup is rewritten to the signed-in user and the chosen connection, the
//! gateway's password request is answered with the current token, and from the
//! gateway's AuthenticationOk on the bytes are relayed untouched.
//!
//! The local listener offers no TLS (it is loopback only) and declines SSLRequest and
//! GSSENCRequest; the gateway leg uses TLS when a connector is given.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::codec::{self, FirstPacket, MAX_STARTUP_PACKET};

/// Where and as whom local clients are connected.
pub struct LocalTarget {
    /// The gateway's PostgreSQL listener, `host:port`.
    pub gateway: String,
    /// TLS for the gateway leg (required unless the gateway is on loopback).
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The sluice connection every local client is sent to.
    pub connection: String,
    /// The current `(user, token)`; the caller keeps it fresh.
    pub credentials: watch::Receiver<(String, String)>,
}

/// Serves local clients until the listener fails.
pub async fn serve(listener: TcpListener, target: Arc<LocalTarget>) -> io::Result<()> {
    loop {
        let (client, addr) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(client, &target).await {
                debug!(client = %addr, error = %e, "local connection ended");
            }
        });
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn handle(mut client: TcpStream, target: &LocalTarget) -> io::Result<()> {
    client.set_nodelay(true)?;
    let startup = loop {
        let body = read_packet(&mut client).await?;
        match codec::parse_first_packet(&body).map_err(invalid)? {
            FirstPacket::SslRequest | FirstPacket::GssEncRequest => client.write_all(b"N").await?,
            FirstPacket::Cancel { .. } => {
                // The key is the gateway's: pass the request on as it came.
                let mut gateway = open_gateway(target).await?;
                let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
                packet.extend_from_slice(&body);
                gateway.write_all(&packet).await?;
                return gateway.shutdown().await;
            }
            FirstPacket::Startup(startup) => break startup,
        }
    };
    let (user, token) = target.credentials.borrow().clone();
    let mut params: Vec<(&str, &str)> = vec![("user", &user), ("database", &target.connection)];
    params.extend(
        startup
            .params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let mut gateway = open_gateway(target).await?;
    let mut out = BytesMut::new();
    codec::startup_message(&mut out, &params);
    gateway.write_all(&out).await?;

    // Answer the gateway's password request; relay anything else (an error) to the client.
    let mut header = [0u8; 5];
    gateway.read_exact(&mut header).await?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body_len = len
        .checked_sub(4)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| invalid("bad message length from the gateway"))?;
    if body_len > MAX_STARTUP_PACKET {
        return Err(invalid("oversized message from the gateway"));
    }
    let mut body = vec![0; body_len];
    gateway.read_exact(&mut body).await?;
    let cleartext = header[0] == b'R' && body.get(..4) == Some(&3i32.to_be_bytes()[..]);
    if !cleartext {
        client.write_all(&header).await?;
        client.write_all(&body).await?;
        warn!("the gateway did not ask for a password; relaying its answer");
    } else {
        let mut out = BytesMut::new();
        codec::password_message(&mut out, token.as_bytes());
        gateway.write_all(&out).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut gateway).await?;
    Ok(())
}

async fn open_gateway(target: &LocalTarget) -> io::Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(&target.gateway).await?;
    tcp.set_nodelay(true)?;
    let Some((connector, name)) = &target.tls else {
        return Ok(Box::new(tcp));
    };
    let mut tcp = tcp;
    let mut out = BytesMut::new();
    codec::ssl_request(&mut out);
    tcp.write_all(&out).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(io::Error::other("the gateway does not offer TLS"));
    }
    let tls = connector.connect(name.clone(), tcp).await?;
    Ok(Box::new(tls))
}

/// One length-prefixed packet of the startup phase (without its length).
async fn read_packet(client: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = client.read_i32().await?;
    let len = usize::try_from(len).map_err(invalid)?;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(invalid("bad startup packet length"));
    }
    let mut body = vec![0; len - 4];
    client.read_exact(&mut body).await?;
    Ok(body)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}
