//! A provider's signing keys (JWKS), fetched on first use, at least hourly, and again
//! when a token names a key id the cached set lacks (key rotation) — at most once per
//! `REFETCH_EVERY`, so a stream of tokens with made-up key ids cannot make the gateway
//! hammer the provider.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use sluice_auth::jwt::{self, Expectations, JwkSet, JwtError};
use tokio::sync::Mutex;

use crate::http_client::HttpClient;

const REFETCH_EVERY: Duration = Duration::from_secs(30);
/// Keys are read again at least this often, so one the provider withdrew (rotation
/// after a compromise) stops being trusted.
const MAX_AGE: Duration = Duration::from_secs(3600);

pub struct KeySet {
    http: HttpClient,
    /// Fixed, or read from the issuer's discovery document on first use.
    jwks_uri: Mutex<Option<String>>,
    issuer: String,
    cached: Mutex<Option<(JwkSet, Instant)>>,
}

impl KeySet {
    pub fn new(http: HttpClient, issuer: &str, jwks_uri: Option<String>) -> KeySet {
        KeySet {
            http,
            jwks_uri: Mutex::new(jwks_uri),
            issuer: issuer.to_owned(),
            cached: Mutex::new(None),
        }
    }

    /// Sets the key set URL found in a discovery document read elsewhere.
    pub async fn set_uri(&self, uri: String) {
        *self.jwks_uri.lock().await = Some(uri);
    }

    /// Validates `token` against the current keys, fetching them once more if it names an
    /// unknown key id.
    pub async fn validate(
        &self,
        token: &str,
        expect: &Expectations,
    ) -> Result<Map<String, Value>, ValidateError> {
        let keys = self.keys(false).await.map_err(ValidateError::Keys)?;
        match jwt::validate(token, &keys, expect) {
            Err(JwtError::UnknownKey(_)) => {
                let keys = self.keys(true).await.map_err(ValidateError::Keys)?;
                jwt::validate(token, &keys, expect).map_err(ValidateError::Token)
            }
            other => other.map_err(ValidateError::Token),
        }
    }

    async fn keys(&self, refetch: bool) -> Result<JwkSet> {
        let mut cached = self.cached.lock().await;
        if let Some((keys, at)) = cached.as_ref() {
            let fresh = at.elapsed() < MAX_AGE;
            if fresh && (!refetch || at.elapsed() < REFETCH_EVERY) {
                return Ok(keys.clone());
            }
        }
        let uri = self.uri().await?;
        let response = self
            .http
            .get(&uri)
            .await
            .with_context(|| format!("fetching the key set of {}", self.issuer))?;
        if !response.status.is_success() {
            bail!(
                "the key set of {} answered {}",
                self.issuer,
                response.status
            );
        }
        let keys: JwkSet = serde_json::from_slice(&response.body)
            .with_context(|| format!("the key set of {} is not a JWKS", self.issuer))?;
        *cached = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    async fn uri(&self) -> Result<String> {
        let mut uri = self.jwks_uri.lock().await;
        if let Some(uri) = uri.as_ref() {
            return Ok(uri.clone());
        }
        let doc = discover(&self.http, &self.issuer).await?;
        let found = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .with_context(|| format!("the discovery document of {} has no jwks_uri", self.issuer))?
            .to_owned();
        *uri = Some(found.clone());
        Ok(found)
    }
}

/// Why a token did not validate: the token, or our access to the keys.
#[derive(Debug)]
pub enum ValidateError {
    Token(JwtError),
    Keys(anyhow::Error),
}

impl std::fmt::Display for ValidateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValidateError::Token(e) => write!(f, "{e}"),
            ValidateError::Keys(e) => write!(f, "cannot check the token: {e:#}"),
        }
    }
}

/// The issuer's OpenID discovery document, checked to be the issuer's own.
pub async fn discover(http: &HttpClient, issuer: &str) -> Result<Map<String, Value>> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let response = http
        .get(&url)
        .await
        .with_context(|| format!("reading the discovery document of {issuer}"))?;
    if !response.status.is_success() {
        bail!(
            "the discovery document of {issuer} answered {}",
            response.status
        );
    }
    let doc: Map<String, Value> = serde_json::from_slice(&response.body)
        .with_context(|| format!("the discovery document of {issuer} is not JSON"))?;
    // OpenID Connect Discovery §4.3: the document must name the issuer it was read from.
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        bail!("the discovery document at {url} names another issuer");
    }
    Ok(doc)
}
