//! The HTTP client of the CLI verbs that act for a person through the gateway's API
//! (`sluice reviews approve`, `sluice login` …), so that every decision is made, checked
//! and recorded by the gateway as the token's holder.
//!
//! `https://` (verified against the public roots, or `SLUICE_CA_FILE`) anywhere, and
//! `http://` only to a loopback address: tokens and passwords never cross a network in
//! clear.

use anyhow::{bail, Context, Result};
use hyper::{Method, StatusCode};

use crate::http_client::HttpClient;

#[derive(Clone)]
pub struct ApiClient {
    /// `scheme://host:port`, without a trailing `/`.
    base: String,
    /// Absent for the sign-in routes.
    token: Option<String>,
    http: HttpClient,
}

impl ApiClient {
    /// For the sign-in routes, which take no token.
    pub fn anonymous(gateway: &str) -> Result<ApiClient> {
        let base = check_gateway(gateway)?;
        let ca = std::env::var_os("SLUICE_CA_FILE").map(std::path::PathBuf::from);
        Ok(ApiClient {
            base,
            token: None,
            http: HttpClient::new(ca.as_deref())?,
        })
    }

    /// `gateway` is `http(s)://host:port` (a trailing `/` is fine).
    pub fn new(gateway: &str, token: String) -> Result<ApiClient> {
        let mut client = ApiClient::anonymous(gateway)?;
        if token.trim().is_empty() {
            bail!("no token: run `sluice login`, or pass --token or set SLUICE_TOKEN");
        }
        client.token = Some(token);
        Ok(client)
    }

    /// Sends one request; returns the status and the JSON body (`null` if not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let mut headers = vec![(hyper::header::CONTENT_TYPE, "application/json".to_owned())];
        if let Some(token) = &self.token {
            headers.push((hyper::header::AUTHORIZATION, format!("Bearer {token}")));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let response = self
            .http
            .send(
                method,
                &format!("{}{path}", self.base),
                headers,
                body.into_bytes(),
            )
            .await
            .with_context(|| format!("cannot reach the gateway API at {}", self.base))?;
        let json = serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
        Ok((response.status, json))
    }
}

/// The gateway URL, checked: a scheme, a host, no credentials, no path; `http://` only
/// to loopback.
pub(crate) fn check_gateway(gateway: &str) -> Result<String> {
    let trimmed = gateway.trim_end_matches('/');
    let Ok(url) = url::Url::parse(trimmed) else {
        bail!("--gateway must be a URL like https://sluice.example.com, got {gateway:?}");
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Never echoed: it is a credential.
        bail!("--gateway must not carry a user or password");
    }
    if url.path() != "/" && !url.path().is_empty() || url.query().is_some() {
        bail!("--gateway must be scheme://HOST[:PORT] without a path, got {gateway:?}");
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => bail!("--gateway has no host: {gateway:?}"),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => bail!(
            "--gateway: http:// only to a loopback address; use https:// so tokens are not sent in clear"
        ),
        _ => bail!("--gateway must be an http(s):// URL, got {gateway:?}"),
    }
    Ok(trimmed.to_owned())
}
