//! A small HTTP(S) client: the gateway's calls to identity providers (discovery, JWKS,
//! token and device endpoints) and the CLI's calls to the gateway's API. One request per
//! connection, a time limit and a size limit on answers, certificates verified against
//! the bundled Mozilla roots or a given CA file; redirects are not followed.
//!
//! hyper's connection API with tokio-rustls rather than a full client crate: the calls
//! are rare (sign-ins, key rotation), need no pooling, and the gateway already carries
//! both.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest answer read (discovery documents and key sets are a few KiB; API lists are
/// capped at 1000 entries).
const MAX_BODY: usize = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct HttpClient {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

/// A status, the headers and the whole body.
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the answer is not JSON")
    }
}

impl HttpClient {
    /// Verifies servers against `ca_file` (PEM) when given, else the Mozilla roots.
    pub fn new(ca_file: Option<&Path>) -> Result<HttpClient> {
        Ok(HttpClient {
            tls: crate::tls::client_config(ca_file)?,
            timeout: TIMEOUT,
        })
    }

    /// The same client with another limit on each whole exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    pub async fn get(&self, url: &str) -> Result<HttpResponse> {
        self.send(Method::GET, url, Vec::new(), Vec::new()).await
    }

    /// POSTs an `application/x-www-form-urlencoded` body, with HTTP Basic client
    /// authentication when `basic` is given (RFC 6749 §2.3.1: both parts form-encoded).
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<HttpResponse> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut headers = vec![(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".to_owned(),
        )];
        if let Some((id, secret)) = basic {
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            headers.push((
                hyper::header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
                ),
            ));
        }
        self.send(Method::POST, url, headers, body.into_bytes())
            .await
    }

    /// One request with these headers and body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: Vec<(hyper::header::HeaderName, String)>,
        body: Vec<u8>,
    ) -> Result<HttpResponse> {
        // Never echo the URL's query in errors: it may carry a code.
        let uri: Uri = url.parse().map_err(|_| anyhow!("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("only http:// and https:// URLs are supported"),
        };
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("URL has no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map_or(host.clone(), |a| a.as_str().to_owned());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "sluice");
        if !headers
            .iter()
            .any(|(name, _)| name == hyper::header::ACCEPT)
        {
            request = request.header(hyper::header::ACCEPT, "application/json");
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let exchange = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .with_context(|| format!("cannot connect to {host}:{port}"))?;
            if https {
                let name = ServerName::try_from(host.clone()).context("server name")?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS with {host}"))?;
                exchange(tls, request).await
            } else {
                exchange(tcp, request).await
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| anyhow!("{host}:{port} did not answer within {:?}", self.timeout))?
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<HttpResponse>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.context("sending")?;
    let (parts, body) = response.into_parts();
    let (status, headers) = (parts.status, parts.headers);
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer: {e}"))?
        .to_bytes();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}
