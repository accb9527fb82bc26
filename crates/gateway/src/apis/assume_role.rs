//! `role_arn` on a `kind: aws` connection: the agent signs with temporary credentials for
//! that role, got from STS `AssumeRole` with the connection's own credential, and renewed
//! before they expire.

use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Limited};
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Uri};
use sluice_aws::{Credentials, PayloadHash};

use super::body::BoxBody;
use super::forward::{deliver, Address, ForwardError};

/// How long asked-for credentials last.
const DURATION: Duration = Duration::from_secs(3600);
/// Credentials are renewed when they have less than this left.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// The largest STS answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The role a connection signs as.
pub struct AssumeRole {
    pub role_arn: String,
    pub external_id: Option<String>,
    pub session_name: String,
    /// `scheme://host[:port]` of STS.
    pub sts: Uri,
    cached: tokio::sync::Mutex<Option<(Credentials, SystemTime)>>,
}

impl AssumeRole {
    pub fn new(
        role_arn: String,
        external_id: Option<String>,
        session_name: String,
        sts: Uri,
    ) -> AssumeRole {
        AssumeRole {
            role_arn,
            external_id,
            session_name,
            sts,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Credentials for the role: cached ones with time left, or new ones from STS signed
    /// with `base`.
    pub async fn credentials(
        &self,
        base: &Credentials,
        region: &str,
        tls: &std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Credentials, ForwardError> {
        let mut cached = self.cached.lock().await;
        if let Some((credentials, expires)) = cached.as_ref() {
            if *expires > SystemTime::now() + RENEW_BEFORE {
                return Ok(credentials.clone());
            }
        }
        let fresh = self.ask(base, region, tls).await?;
        *cached = Some(fresh.clone());
        Ok(fresh.0)
    }

    async fn ask(
        &self,
        base: &Credentials,
        region: &str,
        tls: &std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<(Credentials, SystemTime), ForwardError> {
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", "AssumeRole")
                .append_pair("Version", "2011-06-15")
                .append_pair("RoleArn", &self.role_arn)
                .append_pair("RoleSessionName", &self.session_name)
                .append_pair("DurationSeconds", &DURATION.as_secs().to_string());
            if let Some(id) = &self.external_id {
                form.append_pair("ExternalId", id);
            }
            Bytes::from(form.finish())
        };
        let address = Address::of(&self.sts);
        let mut headers = hyper::HeaderMap::new();
        let failed = |what: String| ForwardError::Sign(format!("AssumeRole: {what}"));
        headers.insert(
            hyper::header::HOST,
            HeaderValue::from_str(&address.host_header).map_err(|e| failed(e.to_string()))?,
        );
        headers.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(hyper::header::CONTENT_LENGTH, body.len().into());
        let uri: Uri = "/"
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| failed(e.to_string()))?;
        let payload =
            PayloadHash::Sha256(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)));
        sluice_aws::sign(
            &Method::POST,
            &uri,
            &mut headers,
            &sluice_aws::SigningScope {
                credentials: base,
                region,
                service: "sts",
            },
            &payload,
            SystemTime::now(),
        )
        .map_err(|e| failed(e.to_string()))?;
        let mut request: Request<BoxBody> = Request::new(super::full(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let answer = deliver(&address, tls, request).await?;
        let status = answer.status();
        let text = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| failed(format!("unreadable answer: {e}")))?
            .to_bytes();
        let text = String::from_utf8_lossy(&text);
        if !status.is_success() {
            let code = sluice_aws::xml_text(&text, "Code").unwrap_or_default();
            tracing::error!(role = %self.role_arn, %status, code, "AssumeRole refused");
            return Err(failed(format!("STS answered {status} {code}")));
        }
        let field = |tag: &str| {
            sluice_aws::xml_text(&text, tag)
                .ok_or_else(|| failed(format!("no {tag} in the answer")))
        };
        let expires = humantime::parse_rfc3339_weak(&field("Expiration")?)
            .map_err(|e| failed(format!("Expiration: {e}")))?;
        Ok((
            Credentials {
                access_key_id: field("AccessKeyId")?,
                secret_access_key: field("SecretAccessKey")?,
                session_token: Some(field("SessionToken")?),
            },
            expires,
        ))
    }
}
