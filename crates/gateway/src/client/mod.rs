//! The verbs a person runs on their own machine against a gateway: `login`, `logout`,
//! `whoami`, `credentials`, `connect`. They speak only to the gateway's API (and, for
//! `connect`, its PostgreSQL listener), never to its data directory.

pub mod cache;
pub mod mcp;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::api_client::ApiClient;
use crate::signin::challenge;
use cache::Saved;

/// How a person signs in.
pub enum LoginMethod {
    /// The identity provider in a browser; the device flow when no browser can be opened.
    Browser {
        force_device: bool,
        login_hint: Option<String>,
    },
    /// A local password, read from stdin.
    Password { user: String },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn login(gateway: &str, method: LoginMethod, json_out: bool) -> Result<ExitCode> {
    let gateway = gateway.trim_end_matches('/');
    let api = ApiClient::anonymous(gateway)?;
    let grant = runtime()?.block_on(async {
        match method {
            LoginMethod::Password { user } => {
                let mut password = String::new();
                std::io::stdin()
                    .read_line(&mut password)
                    .context("reading the password from stdin")?;
                let password = password.trim_end_matches(['\r', '\n']);
                call(
                    &api,
                    Method::POST,
                    "/auth/password",
                    Some(json!({ "user": user, "password": password })),
                )
                .await
            }
            LoginMethod::Browser {
                force_device,
                login_hint,
            } => {
                if force_device || !can_open_browser() {
                    device_flow(&api).await
                } else {
                    browser_flow(gateway, &api, login_hint.as_deref()).await
                }
            }
        }
    })?;
    let saved = Saved::from_grant(gateway, &grant)?;
    cache::save(&saved)?;
    let groups: Vec<&str> = grant["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if json_out {
        crate::commands::print_json(&json!({
            "gateway": saved.gateway, "user": saved.user, "role": saved.role,
            "groups": groups, "expires": grant["expires"],
        }))?;
    } else {
        eprintln!(
            "signed in to {} as {} (role {}, groups: {}); token valid until {}",
            saved.gateway,
            saved.user,
            saved.role,
            groups.join(", "),
            grant["expires"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logout() -> Result<ExitCode> {
    if cache::remove()? {
        eprintln!("signed out (local credentials removed)");
    } else {
        eprintln!("not signed in");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn whoami(json_out: bool) -> Result<ExitCode> {
    let me = runtime()?.block_on(async {
        let saved = cache::current().await?;
        let api = ApiClient::new(&saved.gateway, saved.token.clone())?;
        call(&api, Method::GET, "/api/v1/whoami", None).await
    })?;
    if json_out {
        crate::commands::print_json(&me)?;
    } else {
        println!(
            "{} ({}, role {}) groups: {}",
            me["user"].as_str().unwrap_or("?"),
            me["actor"].as_str().unwrap_or("?"),
            me["role"].as_str().unwrap_or("?"),
            me["groups"]
                .as_array()
                .map(|g| g
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Output shapes of `sluice credentials`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CredentialFormat {
    /// `export PGHOST=…` lines for a shell.
    Env,
    /// One `postgresql://` URI.
    Uri,
    /// An object with every part.
    Json,
}

pub fn credentials(
    connection: &str,
    format: CredentialFormat,
    ca: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let (saved, target) = runtime()?.block_on(resolve(connection))?;
    let (host, port) = target.host_port;
    // Off loopback the token must only go to the real gateway: verify its certificate
    // (libpq's `require` would encrypt to anyone).
    let sslmode = if is_loopback(&host) {
        "prefer"
    } else {
        "verify-full"
    };
    let rootcert = ca
        .map(|p| std::fs::canonicalize(p).with_context(|| format!("--ca {}", p.display())))
        .transpose()?
        .map(|p| p.display().to_string());
    let encode = |s: &str| {
        url::form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    let uri = format!(
        "postgresql://{}:{}@{}:{port}/{}?sslmode={sslmode}{}",
        encode(&saved.user),
        encode(&saved.token),
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        },
        encode(connection),
        rootcert
            .as_ref()
            .map(|r| format!("&sslrootcert={}", encode(r)))
            .unwrap_or_default()
    );
    match format {
        CredentialFormat::Env => {
            let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
            println!("export PGHOST={}", quote(&host));
            println!("export PGPORT={port}");
            println!("export PGDATABASE={}", quote(connection));
            println!("export PGUSER={}", quote(&saved.user));
            println!("export PGPASSWORD={}", quote(&saved.token));
            println!("export PGSSLMODE={sslmode}");
            if let Some(root) = &rootcert {
                println!("export PGSSLROOTCERT={}", quote(root));
            }
        }
        CredentialFormat::Uri => println!("{uri}"),
        CredentialFormat::Json => crate::commands::print_json(&json!({
            "host": host, "port": port, "database": connection, "user": saved.user,
            "password": saved.token, "sslmode": sslmode, "sslrootcert": rootcert, "uri": uri,
            "expires": humantime::format_rfc3339_seconds(saved.expires_at()).to_string(),
        }))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice connect`: serves a local port until interrupted.
pub fn connect(
    connection: &str,
    listen: SocketAddr,
    ca: Option<&std::path::Path>,
) -> Result<ExitCode> {
    if !listen.ip().is_loopback() {
        bail!("--listen must be a loopback address: the local port accepts clients without a password");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (saved, target) = resolve(connection).await?;
        let (host, port) = target.host_port.clone();
        let tls = if is_loopback(&host) && ca.is_none() {
            None
        } else {
            Some(tls_connector(&host, ca)?)
        };
        let (tx, rx) = tokio::sync::watch::channel((saved.user.clone(), saved.token.clone()));
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "serving {connection} as {} on {local}; e.g. psql \"host={} port={} dbname={connection}\"  (Ctrl-C to stop)",
            saved.user,
            local.ip(),
            local.port()
        );
        // Keep the token fresh for new client connections.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                match cache::current().await {
                    Ok(s) => {
                        let _ = tx.send((s.user, s.token));
                    }
                    Err(e) => eprintln!("warning: {e:#}"),
                }
            }
        });
        let target = Arc::new(sluice_postgres::local::LocalTarget {
            gateway: if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") },
            tls,
            connection: connection.to_owned(),
            credentials: rx,
        });
        tokio::select! {
            r = sluice_postgres::local::serve(listener, target) => r.context("local listener failed")?,
            _ = tokio::signal::ctrl_c() => eprintln!("stopped"),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

struct Target {
    host_port: (String, u16),
}

/// The saved sign-in and where the connection's clients connect, checked with the
/// gateway (it exists, and the user may use it).
async fn resolve(connection: &str) -> Result<(Saved, Target)> {
    let saved = cache::current().await?;
    let api = ApiClient::new(&saved.gateway, saved.token.clone())?;
    let list = call(&api, Method::GET, "/api/v1/connections", None).await?;
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == connection))
        .ok_or_else(|| anyhow!("the gateway has no connection {connection:?}"))?;
    if entry["allowed"] != true {
        bail!(
            "{} may not use {connection:?} (its allow list, or your role)",
            saved.user
        );
    }
    let listen: SocketAddr = entry["listen"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| anyhow!("the gateway did not say where {connection:?} listens"))?;
    // A wildcard listener is reached at the host the API was reached at.
    let host = if listen.ip().is_unspecified() {
        url::Url::parse(&saved.gateway)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "127.0.0.1".into())
    } else {
        listen.ip().to_string()
    };
    Ok((
        saved,
        Target {
            host_port: (host, listen.port()),
        },
    ))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn tls_connector(
    host: &str,
    ca: Option<&std::path::Path>,
) -> Result<(
    tokio_rustls::TlsConnector,
    rustls_pki_types::ServerName<'static>,
)> {
    let config = crate::tls::client_config(ca)?;
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .context("the gateway's host name")?;
    Ok((tokio_rustls::TlsConnector::from(config), name))
}

/// One API call; a refusal becomes an error with the gateway's message.
async fn call(api: &ApiClient, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let (status, answer) = api.call(method, path, body).await?;
    if !status.is_success() {
        bail!(
            "{} ({status})",
            answer["error"].as_str().unwrap_or("request failed")
        );
    }
    Ok(answer)
}

/// Whether a browser can be opened here: `$BROWSER`, or a desktop session.
fn can_open_browser() -> bool {
    std::env::var_os("BROWSER").is_some_and(|b| !b.is_empty())
        || std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some()
        || cfg!(target_os = "macos")
}

fn open_browser(url: &str) -> Result<()> {
    let program = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| {
            if cfg!(target_os = "macos") {
                "open".into()
            } else {
                "xdg-open".into()
            }
        });
    std::process::Command::new(&program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    Ok(())
}

/// The authorization code flow through the gateway, with a loopback listener for the
/// browser's last redirect and a PKCE pair of our own for the one-time code it carries.
async fn browser_flow(gateway: &str, api: &ApiClient, login_hint: Option<&str>) -> Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot open a loopback port for the browser's redirect")?;
    let port = listener.local_addr()?.port();
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let mut start = url::Url::parse(&format!("{gateway}/auth/oidc/start"))?;
    start
        .query_pairs_mut()
        .append_pair("cli_port", &port.to_string())
        .append_pair("challenge", &challenge(&verifier));
    if let Some(hint) = login_hint {
        start.query_pairs_mut().append_pair("login_hint", hint);
    }
    eprintln!("opening your browser to sign in; if it does not open, visit:\n  {start}");
    if let Err(e) = open_browser(start.as_str()) {
        eprintln!("({e:#})");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let query = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (mut stream, _) = tokio::time::timeout(left, listener.accept())
            .await
            .map_err(|_| anyhow!("no sign-in within 5 minutes"))??;
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap_or(Ok(0))?;
        let request = String::from_utf8_lossy(&buf[..n]);
        let target = request
            .lines()
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .unwrap_or("");
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let params: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
        let (status, text) = if params.contains_key("code") {
            (
                "200 OK",
                "Signed in to sluice. You can close this tab and return to the terminal.",
            )
        } else {
            ("400 Bad Request", "Sign-in failed; see the terminal.")
        };
        let body = format!("<!doctype html><meta charset=utf-8><title>sluice</title><p>{text}</p>");
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        break params;
    };
    if let Some(error) = query.get("error") {
        bail!("sign-in failed: {error}");
    }
    let code = query
        .get("code")
        .ok_or_else(|| anyhow!("the redirect carried no code"))?;
    call(
        api,
        Method::POST,
        "/auth/cli/exchange",
        Some(json!({ "code": code, "verifier": verifier })),
    )
    .await
}

/// RFC 8628 through the gateway: show the code, poll until the person has approved.
async fn device_flow(api: &ApiClient) -> Result<Value> {
    let started = call(api, Method::POST, "/auth/device", Some(json!({}))).await?;
    let handle = started["handle"].as_str().unwrap_or_default().to_owned();
    let uri = started["verification_uri"].as_str().unwrap_or("?");
    let code = started["user_code"].as_str().unwrap_or("?");
    eprintln!("to sign in, visit {uri} and enter the code {code}");
    if let Some(complete) = started["verification_uri_complete"].as_str() {
        eprintln!("  (or open {complete})");
    }
    let interval = Duration::from_secs(started["interval"].as_u64().unwrap_or(5).clamp(1, 60));
    let deadline =
        Instant::now() + Duration::from_secs(started["expires_in"].as_u64().unwrap_or(600));
    while Instant::now() < deadline {
        tokio::time::sleep(interval).await;
        let (status, answer) = api
            .call(
                Method::POST,
                "/auth/device/poll",
                Some(json!({ "handle": handle })),
            )
            .await?;
        match status.as_u16() {
            200 => return Ok(answer),
            202 => continue,
            // Polled too soon (a slow clock, a restart): wait a little longer.
            429 => tokio::time::sleep(Duration::from_secs(5)).await,
            _ => bail!(
                "sign-in failed: {}",
                answer["error"].as_str().unwrap_or("refused")
            ),
        }
    }
    bail!("the device code expired before sign-in finished")
}
