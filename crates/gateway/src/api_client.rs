//! The HTTP client of the CLI verbs that act for a person through the gateway's API
//! (`sluice reviews approve` …), so that every decision is made, checked and recorded by
//! the gateway as the token's holder.
//!
//! hyper's connection API over one TCP stream: the API is plain HTTP/1.1 on loopback, so a
//! full client (pooling, TLS, redirects) would add nothing.

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Clone)]
pub struct ApiClient {
    /// `host:port`.
    authority: String,
    /// Absent for the sign-in routes.
    token: Option<String>,
}

impl ApiClient {
    /// For the sign-in routes, which take no token.
    pub fn anonymous(gateway: &str) -> Result<ApiClient> {
        let mut client = ApiClient::new(gateway, "-".into())?;
        client.token = None;
        Ok(client)
    }

    /// `gateway` is `http://host:port` (a trailing `/` is fine).
    pub fn new(gateway: &str, token: String) -> Result<ApiClient> {
        let authority = gateway
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--gateway must be an http:// URL, got {gateway:?}"))?
            .trim_end_matches('/');
        if authority.contains('@') {
            // Never echoed: what precedes `@` is a credential.
            bail!("--gateway must be http://HOST:PORT, without user or password");
        }
        if authority.is_empty() || authority.contains('/') {
            bail!("--gateway must be http://HOST:PORT, got {gateway:?}");
        }
        if token.trim().is_empty() {
            bail!("no token: run `sluice login`, or pass --token or set SLUICE_TOKEN");
        }
        Ok(ApiClient {
            authority: authority.to_owned(),
            token: Some(token),
        })
    }

    /// Sends one request; returns the status and the JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let stream = TcpStream::connect(&self.authority).await.with_context(|| {
            format!("cannot reach the gateway API at http://{}", self.authority)
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the gateway API")?;
        tokio::spawn(connection);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .context("building the API request")?;
        let response = sender
            .send_request(request)
            .await
            .context("calling the gateway API")?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the gateway API's answer")?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }
}
