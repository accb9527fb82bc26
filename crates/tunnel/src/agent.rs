//! The agent's end (`sluice agent`): dials the gateway, keeps the tunnel up (reconnecting
//! with backoff and jitter), and serves each stream the gateway opens by connecting to
//! the target with the real credential and relaying.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use rand::Rng;
use rustls_pki_types::ServerName;
use sluice_core::glob_exact;
use sluice_postgres::{upstream, CancelKey};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use crate::h2stream::H2Stream;
use crate::protocol::{Hello, Reply, Request, Welcome};
use crate::{
    frame, ping, CallStream, CONNECTION_WINDOW, MAX_HEADERS, MAX_STREAMS, STREAM_WINDOW, VERSION,
};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Where the gateway is and how to trust it.
pub struct AgentOptions {
    /// `host:port` of the gateway's tunnel listener.
    pub address: String,
    /// The name the gateway's certificate is checked against (with a CA file).
    pub server_name: String,
    pub key: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// `host:port` patterns of the targets this agent may open (empty: any the gateway
    /// names). Limits what a compromised gateway could reach, or send credentials to.
    pub allowed_targets: Vec<String>,
    /// Patterns of the secret references (`env:NAME`, `file:PATH`) this agent may resolve
    /// for the gateway (empty: any). Without it a compromised gateway could name any
    /// variable or file the agent can read.
    pub allowed_secrets: Vec<String>,
    /// Makes the API calls (AWS, HTTP) the gateway sends; `None`: this agent serves
    /// PostgreSQL only.
    pub calls: Option<Arc<dyn CallService>>,
}

/// Makes one API call the gateway sent through the tunnel: reads `call` and the upload from
/// `stream`, opens only what `permits` allows, writes the answer back.
pub trait CallService: Send + Sync {
    fn serve<'a>(
        &'a self,
        call: serde_json::Value,
        stream: CallStream,
        permits: Arc<Permits>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Why one tunnel ended.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot reach the gateway: {0}")]
    Connect(String),
    #[error("TLS with the gateway failed: {0}")]
    Tls(String),
    #[error("the gateway refused this agent: {0}")]
    Refused(String),
    #[error("tunnel lost: {0}")]
    Lost(String),
}

/// Keeps a tunnel to the gateway up, forever.
pub async fn run(options: AgentOptions) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (accepted, ended) = connect_once(&options).await;
        if let Err(e) = ended {
            warn!(error = %e, "agent tunnel");
        }
        // The backoff grows over failed attempts; a tunnel the gateway accepted (one that
        // was then lost, say to a gateway restart) starts it afresh, so the agent is back
        // as soon as the gateway is.
        if accepted {
            backoff = FIRST_BACKOFF;
        }
        // Full jitter on a doubling backoff, so agents restarted together do not
        // reconnect in lockstep.
        let wait = rand::thread_rng().gen_range(backoff / 2..=backoff);
        debug!(?wait, "reconnecting");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Everything from TCP connect to the end of the HTTP/2 handshake must fit in this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// One tunnel, from connecting to its end: whether the gateway accepted it, and why it
/// ended.
async fn connect_once(options: &AgentOptions) -> (bool, Result<(), TunnelError>) {
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(options)).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return (false, Err(e)),
        Err(_) => {
            let late = "the gateway did not complete the handshake in time";
            return (false, Err(TunnelError::Lost(late.into())));
        }
    };
    (true, serve(connection, options).await)
}

type Connection = h2::server::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>;

async fn handshake(options: &AgentOptions) -> Result<Connection, TunnelError> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect(&options.address),
    )
    .await
    .map_err(|_| TunnelError::Connect("timed out".into()))?
    .map_err(|e| TunnelError::Connect(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| TunnelError::Connect(e.to_string()))?;
    let name = ServerName::try_from(options.server_name.clone())
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    let mut stream = TlsConnector::from(options.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    frame::write(
        &mut stream,
        &Hello {
            key: options.key.clone(),
            version: VERSION.to_owned(),
        },
    )
    .await
    .map_err(|e| TunnelError::Lost(e.to_string()))?;
    let welcome: Welcome = frame::read(&mut stream)
        .await
        .map_err(|e| TunnelError::Lost(e.to_string()))?;
    let name = match welcome {
        Welcome::Accepted { name } => name,
        Welcome::Refused { error } => return Err(TunnelError::Refused(error)),
    };
    info!(agent = %name, gateway = %options.address, "connected to the gateway");

    h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADERS)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|e| TunnelError::Lost(format!("HTTP/2: {e}")))
}

async fn serve(mut connection: Connection, options: &AgentOptions) -> Result<(), TunnelError> {
    let pings = connection
        .ping_pong()
        .ok_or_else(|| TunnelError::Lost("no ping handle".into()))?;
    let heartbeat = ping::run(pings);
    tokio::pin!(heartbeat);
    let allowed = Arc::new(Permits {
        targets: options.allowed_targets.clone(),
        secrets: options.allowed_secrets.clone(),
    });
    loop {
        tokio::select! {
            // Accepting also drives the connection.
            inbound = connection.accept() => match inbound {
                Some(Ok((request, respond))) => {
                    let (allowed, calls) = (allowed.clone(), options.calls.clone());
                    tokio::spawn(serve_stream(request.into_body(), respond, allowed, calls));
                }
                Some(Err(e)) => return Err(TunnelError::Lost(e.to_string())),
                None => return Err(TunnelError::Lost("the gateway closed the tunnel".into())),
            },
            why = &mut heartbeat => return Err(TunnelError::Lost(why)),
        }
    }
}

/// What this agent agrees to open and resolve.
#[derive(Default)]
pub struct Permits {
    targets: Vec<String>,
    secrets: Vec<String>,
}

impl Permits {
    /// Whether `address` (`host:port`) is among `--allow-target` (or none is given).
    pub fn target(&self, address: &str) -> bool {
        self.targets.is_empty() || self.targets.iter().any(|p| address_matches(p, address))
    }

    /// Whether `reference` may be resolved: literals come from the gateway itself;
    /// `env:` and `file:` references must be among `--allow-secret` (or none is given).
    pub fn secret(&self, reference: Option<&str>) -> bool {
        let Some(reference) = reference.filter(|r| r.starts_with("env:") || r.starts_with("file:"))
        else {
            return true;
        };
        if let Some(path) = reference.strip_prefix("file:") {
            // A path is matched segment by segment, and only a plain absolute one: with
            // `..` (or `.`, or `//`) a name under an allowed directory could lead out of it.
            let plain = path.starts_with('/')
                && path[1..]
                    .split('/')
                    .all(|segment| !matches!(segment, "" | "." | ".."));
            return plain
                && (self.secrets.is_empty()
                    || self.secrets.iter().any(|p| {
                        p.strip_prefix("file:")
                            .is_some_and(|pattern| path_matches(pattern, path))
                    }));
        }
        self.secrets.is_empty() || self.secrets.iter().any(|p| glob_exact(p, reference))
    }
}

/// `host:port` against a pattern whose `*` stays within one host label or the port: `10.0.0.*:5432`
/// does not match `10.0.0.1.evil.example:5432`.
pub fn address_matches(pattern: &str, address: &str) -> bool {
    let (Some((ph, pp)), Some((ah, ap))) = (pattern.rsplit_once(':'), address.rsplit_once(':'))
    else {
        return false;
    };
    let (pl, al): (Vec<&str>, Vec<&str>) = (ph.split('.').collect(), ah.split('.').collect());
    pl.len() == al.len() && pl.iter().zip(&al).all(|(p, a)| glob_exact(p, a)) && glob_exact(pp, ap)
}

/// A file path against a pattern whose `*` stays within one path segment:
/// `/run/secrets/*` matches `/run/secrets/pg` but not `/run/secrets/a/b`.
fn path_matches(pattern: &str, path: &str) -> bool {
    let (ps, ts): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), path.split('/').collect());
    ps.len() == ts.len() && ps.iter().zip(&ts).all(|(p, t)| glob_exact(p, t))
}

async fn serve_stream(
    recv: RecvStream,
    mut respond: SendResponse<Bytes>,
    allowed: Arc<Permits>,
    calls: Option<Arc<dyn CallService>>,
) {
    let send = match respond.send_response(http::Response::new(()), false) {
        Ok(send) => send,
        Err(e) => {
            debug!(error = %e, "stream gone before it was answered");
            return;
        }
    };
    let mut stream = H2Stream::new(send, Some(recv));
    let request: Request = match frame::read(&mut stream).await {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "unreadable stream request");
            return;
        }
    };
    let target = match request {
        Request::Connect { ref target, .. } | Request::Cancel { ref target, .. } => target,
        Request::Call { call } => {
            match calls {
                Some(service) => service.serve(call, Box::new(stream), allowed).await,
                None => {
                    let message = "this agent does not serve API calls".to_owned();
                    reply(&mut stream, Reply::Failed { message }).await;
                }
            }
            return;
        }
    };
    if !allowed.secret(target.password.as_deref()) {
        warn!(target = %target.address, "refused: the target's secret is not among this agent's --allow-secret");
        let message = "this agent does not serve that target (see the agent's log)".to_owned();
        reply(&mut stream, Reply::Failed { message }).await;
        return;
    }
    if !allowed.target(&target.address) {
        warn!(target = %target.address, "refused: not among this agent's --allow-target");
        let message = "this agent does not serve that target (see the agent's log)".to_owned();
        reply(&mut stream, Reply::Failed { message }).await;
        return;
    }
    match request {
        Request::Connect {
            target,
            client_params,
        } => {
            let opts = match target.options() {
                Ok(o) => o,
                Err(e) => {
                    warn!(error = %e, "bad target from the gateway");
                    let message = "the agent cannot use the target's settings".to_owned();
                    reply(&mut stream, Reply::Failed { message }).await;
                    return;
                }
            };
            match upstream::connect(&opts, &client_params).await {
                Ok(mut up) => {
                    let reply = Reply::Connected {
                        startup_frames: up.startup_frames.to_vec(),
                        pid: up.cancel.pid,
                        key: up.cancel.key.clone(),
                        txn_status: up.txn_status,
                    };
                    if frame::write(&mut stream, &reply).await.is_err() {
                        return;
                    }
                    let relayed = tokio::io::copy_bidirectional(&mut stream, &mut up.stream).await;
                    debug!(?relayed, "session stream ended");
                }
                Err(e) => {
                    // Logged here in full; the gateway gets the same safe summary.
                    warn!(target = %opts.address, error = %e, "target connection failed");
                    // The client-safe summary; details stay in this agent's log.
                    let message = sluice_postgres::frontend::refusal_detail(&e)
                        .replace("(see the gateway log)", "(see the agent's log)");
                    reply(&mut stream, Reply::Failed { message }).await;
                }
            }
        }
        // Handed to the call service above.
        Request::Call { .. } => {}
        Request::Cancel { target, pid, key } => {
            // A cancel needs no credential: none is resolved.
            let answer = match target.options_without_password() {
                Ok(opts) => match upstream::send_cancel(&opts, &CancelKey { pid, key }).await {
                    Ok(()) => Reply::Done,
                    Err(e) => Reply::Failed {
                        message: sluice_postgres::frontend::refusal_detail(&e),
                    },
                },
                Err(message) => Reply::Failed { message },
            };
            reply(&mut stream, answer).await;
        }
    }
}

/// Sends the last message of a stream and ends it cleanly (the reply must not be lost to
/// the reset a dropped stream sends).
async fn reply(stream: &mut H2Stream, reply: Reply) {
    if frame::write(stream, &reply).await.is_ok() {
        let _ = tokio::io::AsyncWriteExt::shutdown(stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_patterns_stay_within_labels() {
        assert!(address_matches("10.0.0.*:5432", "10.0.0.7:5432"));
        assert!(!address_matches(
            "10.0.0.*:5432",
            "10.0.0.1.evil.example:5432"
        ));
        assert!(address_matches("db-*.internal:*", "db-prod.internal:6432"));
        assert!(!address_matches("db-*:5432", "db-x.evil.com:5432"));
        assert!(!address_matches("db.internal:5432", "DB.internal:5432"));
        assert!(!address_matches("nocolon", "db:5432"));
        let allowed = Permits {
            targets: vec![],
            secrets: vec!["env:PG_*".into()],
        };
        assert!(allowed.secret(Some("env:PG_PROD")));
        assert!(!allowed.secret(Some("env:AWS_SECRET_ACCESS_KEY")));
        assert!(!allowed.secret(Some("file:/root/.aws/credentials")));
        assert!(allowed.secret(Some("a literal from the gateway")));
        let files = Permits {
            targets: vec![],
            secrets: vec!["file:/run/secrets/*".into()],
        };
        assert!(files.secret(Some("file:/run/secrets/pg")));
        for escape in [
            "file:/run/secrets/../../etc/shadow",
            "file:/run/secrets/..",
            "file:/run/secrets/./pg",
            "file:/run/secrets//pg",
            "file:/run/secrets/a/b",
            "file:run/secrets/pg",
            "file:/run/secrets",
        ] {
            assert!(!files.secret(Some(escape)), "{escape}");
        }
        // Even without --allow-secret, a path must be plain.
        let open = Permits::default();
        assert!(open.secret(Some("file:/etc/sluice/pg")));
        assert!(!open.secret(Some("file:/etc/sluice/../shadow")));
        assert!(allowed.secret(None));
        assert!(allowed.target("anything:1"));
    }
}
