//! `sluice mcp`: a stdio MCP server for clients configured with a command (Cursor's
//! `mcp.json`, Claude Code) that relays each JSON-RPC message to the gateway's `/mcp`
//! endpoint as the signed-in user, and writes back what the gateway answers — JSON or an
//! event stream. The tools and all decisions stay in the gateway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::header::{HeaderName, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::http_client::{HttpClient, HttpResponse};
use crate::mcp::SESSION_HEADER;

/// A tool call may run a long query; the gateway ends stuck ones itself.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest line read from the MCP client.
const MAX_LINE: usize = 4 * 1024 * 1024;
const VERSION_HEADER: &str = "mcp-protocol-version";

/// The HTTP side: where to post, as whom, and the MCP session once the gateway gave one.
struct Upstream {
    http: HttpClient,
    url: String,
    token: String,
    session: Mutex<Option<String>>,
    protocol_version: Mutex<Option<String>>,
    /// The client's `initialize`, replayed when the gateway has forgotten the session
    /// (restarted, or the session idled out), so the client need not notice.
    initialize: Mutex<Option<String>>,
}

impl Upstream {
    fn remember_session(&self, response: &HttpResponse) {
        if let Some(session) = response
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            if let Ok(mut s) = self.session.lock() {
                *s = Some(session.to_owned());
            }
        }
    }

    /// Posts `line`; when the gateway no longer knows the session, opens a new one with the
    /// client's own `initialize` and posts `line` again, once.
    async fn post_resuming(&self, line: &str, initialize: bool) -> Result<HttpResponse> {
        let response = self.post(line).await?;
        let had_session = self.session.lock().map(|s| s.is_some()).unwrap_or(false);
        if response.status != hyper::StatusCode::NOT_FOUND || initialize || !had_session {
            return Ok(response);
        }
        let Some(hello) = self.initialize.lock().ok().and_then(|i| i.clone()) else {
            return Ok(response);
        };
        if let Ok(mut s) = self.session.lock() {
            *s = None;
        }
        let reopened = self.post(&hello).await?;
        if !reopened.status.is_success() {
            return Ok(response);
        }
        self.remember_session(&reopened);
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        self.post(&initialized.to_string()).await?;
        self.post(line).await
    }

    async fn post(&self, body: &str) -> Result<HttpResponse> {
        let mut headers: Vec<(HeaderName, String)> = vec![
            (AUTHORIZATION, format!("Bearer {}", self.token)),
            (CONTENT_TYPE, "application/json".into()),
            (ACCEPT, "application/json, text/event-stream".into()),
        ];
        let lock = |m: &Mutex<Option<String>>| m.lock().map(|g| g.clone()).unwrap_or_default();
        if let Some(session) = lock(&self.session) {
            headers.push((HeaderName::from_static(SESSION_HEADER), session));
        }
        if let Some(version) = lock(&self.protocol_version) {
            headers.push((HeaderName::from_static(VERSION_HEADER), version));
        }
        self.http
            .send(Method::POST, &self.url, headers, body.as_bytes().to_vec())
            .await
    }

    /// Relays one message; returns what to write back to the MCP client.
    async fn relay(&self, line: &str) -> Vec<String> {
        let message: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return vec![rpc_error(
                    &Value::Null,
                    -32700,
                    &format!("parse error: {e}"),
                )]
            }
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let is_request = message.get("method").is_some() && !id.is_null();
        let initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        if initialize {
            if let Ok(mut saved) = self.initialize.lock() {
                *saved = Some(line.to_owned());
            }
        }
        let response = match self.post_resuming(line, initialize).await {
            Ok(r) => r,
            Err(e) => {
                return if is_request {
                    vec![rpc_error(
                        &id,
                        -32000,
                        &format!("sluice gateway unreachable: {e:#}"),
                    )]
                } else {
                    Vec::new()
                };
            }
        };
        self.remember_session(&response);
        if !response.status.is_success() {
            let detail = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&response.body).trim().to_owned());
            // JSON-RPC errors the gateway's MCP layer wrote are passed on as they are.
            if let Ok(v) = serde_json::from_slice::<Value>(&response.body) {
                if v.get("jsonrpc").is_some() {
                    return vec![v.to_string()];
                }
            }
            return if is_request {
                vec![rpc_error(
                    &id,
                    -32001,
                    &format!(
                        "sluice gateway refused the request ({}): {detail}",
                        response.status
                    ),
                )]
            } else {
                Vec::new()
            };
        }
        let event_stream = response
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let out = if event_stream {
            sse_messages(&String::from_utf8_lossy(&response.body))
        } else if response.body.is_empty() {
            Vec::new()
        } else {
            vec![String::from_utf8_lossy(&response.body).into_owned()]
        };
        if initialize {
            let version = out
                .iter()
                .filter_map(|m| serde_json::from_str::<Value>(m).ok())
                .find_map(|v| v["result"]["protocolVersion"].as_str().map(str::to_owned));
            if let Ok(mut v) = self.protocol_version.lock() {
                *v = version;
            }
        }
        out
    }

    /// Ends the MCP session at the gateway.
    async fn close(&self) {
        let session = self.session.lock().ok().and_then(|s| s.clone());
        if let Some(session) = session {
            let headers = vec![
                (AUTHORIZATION, format!("Bearer {}", self.token)),
                (HeaderName::from_static(SESSION_HEADER), session),
            ];
            let _ = self
                .http
                .send(Method::DELETE, &self.url, headers, Vec::new())
                .await;
        }
    }
}

/// The `data:` payloads of an event stream, one JSON message each (comments, priming
/// events and keep-alives carry none).
fn sse_messages(stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    for event in stream.split("\n\n").flat_map(|e| e.split("\r\n\r\n")) {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let data = data.join("\n");
        if !data.trim().is_empty() {
            out.push(data);
        }
    }
    out
}

enum Line {
    Message(String),
    TooLong,
    NotUtf8,
    End,
}

/// The next line from the MCP client, trimmed. A line that is not UTF-8, or longer than
/// [`MAX_LINE`] (skipped whole), is answered with an error rather than passed on altered.
async fn read_message<R: tokio::io::AsyncBufRead + Unpin>(input: &mut R) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = (&mut *input)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
        // Skip the rest of the line.
        loop {
            let mut rest = Vec::new();
            let n = (&mut *input)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut rest)
                .await?;
            if n == 0 || rest.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Line::TooLong);
    }
    match String::from_utf8(buf) {
        Ok(text) => Ok(Line::Message(text.trim().to_owned())),
        Err(_) => Ok(Line::NotUtf8),
    }
}

fn rpc_error(id: &Value, code: i64, message: &str) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }).to_string()
}

/// Runs the bridge until the MCP client closes stdin.
pub fn run(gateway: &str, token: String) -> Result<std::process::ExitCode> {
    let base = crate::api_client::check_gateway(gateway)?;
    let ca = std::env::var_os("SLUICE_CA_FILE").map(std::path::PathBuf::from);
    let upstream = Arc::new(Upstream {
        http: HttpClient::new(ca.as_deref())?.with_timeout(CALL_TIMEOUT),
        url: format!("{base}/mcp"),
        token,
        session: Mutex::new(None),
        protocol_version: Mutex::new(None),
        initialize: Mutex::new(None),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(line) = rx.recv().await {
                // One message per line: a newline inside would split it.
                let line = line.replace('\n', " ");
                if stdout
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .is_err()
                    || stdout.flush().await.is_err()
                {
                    break;
                }
            }
        });
        let mut stdin = BufReader::with_capacity(64 * 1024, tokio::io::stdin());
        let mut calls = tokio::task::JoinSet::new();
        loop {
            let message = match read_message(&mut stdin).await.context("reading stdin")? {
                Line::End => break,
                Line::TooLong => {
                    let _ = tx.send(rpc_error(
                        &Value::Null,
                        -32600,
                        &format!("message longer than {MAX_LINE} bytes"),
                    ));
                    continue;
                }
                Line::NotUtf8 => {
                    let _ = tx.send(rpc_error(&Value::Null, -32700, "message is not UTF-8"));
                    continue;
                }
                Line::Message(m) => m,
            };
            if message.is_empty() {
                continue;
            }
            // The handshake first (it brings the session id); everything else may overlap.
            let initialize = message.contains("\"initialize\"")
                && serde_json::from_str::<Value>(&message)
                    .is_ok_and(|v| v["method"] == "initialize");
            let (up, tx) = (upstream.clone(), tx.clone());
            let call = async move {
                for out in up.relay(&message).await {
                    let _ = tx.send(out);
                }
            };
            if initialize {
                call.await;
            } else {
                calls.spawn(call);
            }
        }
        while calls.join_next().await.is_some() {}
        upstream.close().await;
        drop(tx);
        let _ = writer.await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_bounded_and_utf8_only() {
        let mut input = format!("{{\"a\":1}}\n{}\n", "x".repeat(MAX_LINE + 10)).into_bytes();
        input.extend_from_slice(b"\xff\xfe not utf-8\nlast");
        let mut reader = BufReader::new(&input[..]);
        assert!(
            matches!(read_message(&mut reader).await.unwrap(), Line::Message(m) if m == "{\"a\":1}")
        );
        assert!(matches!(
            read_message(&mut reader).await.unwrap(),
            Line::TooLong
        ));
        assert!(matches!(
            read_message(&mut reader).await.unwrap(),
            Line::NotUtf8
        ));
        assert!(
            matches!(read_message(&mut reader).await.unwrap(), Line::Message(m) if m == "last")
        );
        assert!(matches!(
            read_message(&mut reader).await.unwrap(),
            Line::End
        ));
    }

    #[test]
    fn event_streams_yield_their_data() {
        let stream = "id: 0\nretry: 3000\ndata: \n\n: keep-alive\n\nevent: message\ndata: {\"a\":1}\n\ndata: {\"b\":\ndata: 2}\n\n";
        assert_eq!(sse_messages(stream), vec!["{\"a\":1}", "{\"b\":\n2}"]);
    }
}
