//! SigV4 for header-signed and presigned (query-string) requests: reading what the client
//! signed, rebuilding the canonical request, checking the signature, and signing again.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, Uri};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm accepted (SigV4A's ECDSA variant is not).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// SHA-256 of the empty string, in hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// How far a header-signed request's time may be from the gateway's clock (as AWS allows).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The longest validity a presigned URL may ask for (as AWS allows).
pub const MAX_PRESIGNED: Duration = Duration::from_secs(7 * 24 * 3600);

/// What RFC 3986 leaves unencoded; SigV4 encodes everything else.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same, keeping path separators.
const ENCODE_PATH: &AsciiSet = &ENCODE.remove(b'/');

/// Why a request's signature was not accepted. Each maps to the error code AWS would send,
/// so the CLI and SDKs show it the way they show AWS's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("the request is not signed with AWS Signature Version 4 (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to a key from `sluice aws-keys issue`)")]
    Missing,
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    #[error("the difference between the request time and the gateway's time is too large")]
    Skewed,
    #[error("the presigned URL has expired")]
    Expired,
    #[error("the request signature does not match the one computed with your sluice key; check the secret and the signing method")]
    Mismatch,
    #[error("{0} is not supported")]
    Unsupported(String),
}

impl SigError {
    /// The AWS error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            SigError::Missing => "MissingAuthenticationToken",
            SigError::Malformed(_) => "AuthorizationHeaderMalformed",
            SigError::Skewed => "RequestTimeTooSkewed",
            SigError::Expired => "AccessDenied",
            SigError::Mismatch => "SignatureDoesNotMatch",
            SigError::Unsupported(_) => "NotImplemented",
        }
    }
}

/// What the client declared as its body's hash (`x-amz-content-sha256`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadHash {
    /// The hex SHA-256 of the whole body.
    Sha256(String),
    /// `UNSIGNED-PAYLOAD`.
    Unsigned,
    /// `aws-chunked` with a signature per chunk (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`), and
    /// with signed trailing headers when `trailer` (`…-PAYLOAD-TRAILER`).
    StreamingSigned { trailer: bool },
    /// `aws-chunked` without chunk signatures, with trailing checksum headers
    /// (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`).
    StreamingUnsigned,
}

impl PayloadHash {
    pub fn parse(value: &str) -> Result<PayloadHash, SigError> {
        Ok(match value {
            "UNSIGNED-PAYLOAD" => PayloadHash::Unsigned,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => PayloadHash::StreamingSigned { trailer: false },
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => {
                PayloadHash::StreamingSigned { trailer: true }
            }
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => PayloadHash::StreamingUnsigned,
            hash if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                PayloadHash::Sha256(hash.to_ascii_lowercase())
            }
            other if other.starts_with("STREAMING-") => {
                return Err(SigError::Unsupported(format!("payload signing {other:?}")))
            }
            _ => {
                return Err(SigError::Malformed(
                    "x-amz-content-sha256 is neither a SHA-256 nor a known payload mode".into(),
                ))
            }
        })
    }

    /// The value as it goes into the canonical request.
    pub fn as_str(&self) -> &str {
        match self {
            PayloadHash::Sha256(hash) => hash,
            PayloadHash::Unsigned => "UNSIGNED-PAYLOAD",
            PayloadHash::StreamingSigned { trailer: false } => "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            PayloadHash::StreamingSigned { trailer: true } => {
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
            }
            PayloadHash::StreamingUnsigned => "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        }
    }

    /// Whether the body is `aws-chunked`.
    pub fn is_streaming(&self) -> bool {
        matches!(
            self,
            PayloadHash::StreamingSigned { .. } | PayloadHash::StreamingUnsigned
        )
    }
}

/// What a request says about its own signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    pub access_key: String,
    /// The credential scope's date, `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
    /// The request time, `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// Lowercase, as listed.
    pub signed_headers: Vec<String>,
    /// Lowercase hex.
    pub signature: String,
    /// Presigned URLs: how many seconds after `amz_date` the URL stays valid.
    pub expires: Option<u64>,
    /// `None` when the client did not declare one (services other than S3): the body's
    /// SHA-256 must then be computed before the signature can be checked.
    pub payload: Option<PayloadHash>,
}

impl SignatureInfo {
    /// `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }

    /// Whether the signature came in the query string.
    pub fn presigned(&self) -> bool {
        self.expires.is_some()
    }
}

/// Reads the signature of a request from its `Authorization` header or, for a presigned URL,
/// its query string.
pub fn parse(uri: &Uri, headers: &HeaderMap) -> Result<SignatureInfo, SigError> {
    let declared = match header(headers, "x-amz-content-sha256")? {
        Some(value) => Some(PayloadHash::parse(value)?),
        None => None,
    };
    if let Some(auth) = headers.get(http::header::AUTHORIZATION) {
        let auth = auth
            .to_str()
            .map_err(|_| SigError::Malformed("the Authorization header is not text".into()))?;
        return parse_header(auth, headers, declared);
    }
    let query = query_pairs(uri.query().unwrap_or(""));
    let find = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let Some(algorithm) = find("X-Amz-Algorithm") else {
        if find("AWSAccessKeyId").is_some() {
            return Err(SigError::Unsupported(
                "a Signature Version 2 presigned URL (use Signature Version 4: for the AWS CLI v1, `aws configure set default.s3.signature_version s3v4`)".into(),
            ));
        }
        return Err(SigError::Missing);
    };
    if algorithm != ALGORITHM {
        return Err(SigError::Unsupported(format!("algorithm {algorithm:?}")));
    }
    let need = |name: &str| {
        find(name).ok_or_else(|| SigError::Malformed(format!("the presigned URL has no {name}")))
    };
    let (access_key, date, region, service) = credential(&need("X-Amz-Credential")?)?;
    let expires: u64 = need("X-Amz-Expires")?
        .parse()
        .map_err(|_| SigError::Malformed("X-Amz-Expires is not a number of seconds".into()))?;
    Ok(SignatureInfo {
        access_key,
        date,
        region,
        service,
        amz_date: need("X-Amz-Date")?,
        signed_headers: signed_header_list(&need("X-Amz-SignedHeaders")?)?,
        signature: signature_hex(&need("X-Amz-Signature")?)?,
        expires: Some(expires),
        // A presigned URL cannot know the body it will be used with.
        payload: Some(declared.unwrap_or(PayloadHash::Unsigned)),
    })
}

fn parse_header(
    auth: &str,
    headers: &HeaderMap,
    payload: Option<PayloadHash>,
) -> Result<SignatureInfo, SigError> {
    let Some(rest) = auth.strip_prefix(ALGORITHM) else {
        let scheme = auth.split_whitespace().next().unwrap_or("");
        return Err(SigError::Unsupported(format!(
            "authorization scheme {scheme:?} (use Signature Version 4)"
        )));
    };
    let (mut credential_field, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        match part.split_once('=') {
            Some(("Credential", v)) => credential_field = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let missing =
        |what: &str| SigError::Malformed(format!("the Authorization header has no {what}"));
    let (access_key, date, region, service) =
        credential(credential_field.ok_or_else(|| missing("Credential"))?)?;
    let amz_date = header(headers, "x-amz-date")?
        .ok_or_else(|| SigError::Malformed("the request has no X-Amz-Date header".into()))?
        .to_owned();
    Ok(SignatureInfo {
        access_key,
        date,
        region,
        service,
        amz_date,
        signed_headers: signed_header_list(signed.ok_or_else(|| missing("SignedHeaders"))?)?,
        signature: signature_hex(signature.ok_or_else(|| missing("Signature"))?)?,
        expires: None,
        payload,
    })
}

/// `AKID/YYYYMMDD/region/service/aws4_request`.
fn credential(text: &str) -> Result<(String, String, String, String), SigError> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"]
            if !key.is_empty()
                && date.len() == 8
                && date.bytes().all(|b| b.is_ascii_digit())
                && !region.is_empty()
                && !service.is_empty() =>
        {
            Ok((
                (*key).to_owned(),
                (*date).to_owned(),
                (*region).to_owned(),
                (*service).to_owned(),
            ))
        }
        _ => Err(SigError::Malformed(
            "the credential is not KEY/YYYYMMDD/REGION/SERVICE/aws4_request".into(),
        )),
    }
}

fn signed_header_list(text: &str) -> Result<Vec<String>, SigError> {
    let list: Vec<String> = text.split(';').map(str::to_ascii_lowercase).collect();
    if list.iter().any(String::is_empty) || !list.iter().any(|h| h == "host") {
        return Err(SigError::Malformed(
            "SignedHeaders must list host and no empty names".into(),
        ));
    }
    Ok(list)
}

fn signature_hex(text: &str) -> Result<String, SigError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(SigError::Malformed(
            "the signature is not 64 hex digits".into(),
        ))
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SigError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| SigError::Malformed(format!("the {name} header is not text")))
        })
        .transpose()
}

/// The time a request says it was signed at.
pub fn request_time(info: &SignatureInfo) -> Option<SystemTime> {
    parse_amz_date(&info.amz_date).ok()
}

/// A request whose signature checked out: what chunk signatures chain from.
#[derive(Clone)]
pub struct Verified {
    pub(crate) key: [u8; 32],
    pub(crate) seed: String,
    pub(crate) amz_date: String,
    pub(crate) scope: String,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Checks `info` (from [`parse`]) against the request and `secret`. `payload` is the hash
/// to sign with when the client declared none (the body's SHA-256, computed by the caller).
pub fn verify(
    info: &SignatureInfo,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    secret: &str,
    payload: Option<&PayloadHash>,
    now: SystemTime,
) -> Result<Verified, SigError> {
    let time = parse_amz_date(&info.amz_date)?;
    if !info.amz_date.starts_with(&info.date) {
        return Err(SigError::Malformed(
            "the credential's date is not the request's date".into(),
        ));
    }
    match info.expires {
        None => {
            let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
            if skew > MAX_SKEW {
                return Err(SigError::Skewed);
            }
        }
        Some(expires) => {
            if Duration::from_secs(expires) > MAX_PRESIGNED || expires == 0 {
                return Err(SigError::Malformed(
                    "X-Amz-Expires must be between 1 and 604800 seconds".into(),
                ));
            }
            if time > now + MAX_SKEW {
                return Err(SigError::Skewed);
            }
            if now > time + Duration::from_secs(expires) {
                return Err(SigError::Expired);
            }
        }
    }
    // Every x-amz-* header must be signed: otherwise a captured request could be replayed
    // with one added (x-amz-copy-source turns a PutObject into a copy of another object).
    let unsigned = headers
        .keys()
        .map(|k| k.as_str())
        .find(|name| name.starts_with("x-amz-") && !info.signed_headers.iter().any(|s| s == name));
    if let Some(name) = unsigned {
        return Err(SigError::Malformed(format!(
            "header {name} is present but not signed"
        )));
    }
    let payload =
        info.payload.as_ref().or(payload).ok_or_else(|| {
            SigError::Malformed("no payload hash to check the signature with".into())
        })?;
    let canonical = canonical_request(
        method,
        uri,
        headers,
        &info.signed_headers,
        payload.as_str(),
        &info.service,
        info.presigned(),
    )?;
    let key = signing_key(secret, &info.date, &info.region, &info.service);
    let to_sign = string_to_sign(&info.amz_date, &info.scope(), &canonical);
    let presented = hex::decode(&info.signature).map_err(|_| SigError::Mismatch)?;
    let mut mac = hmac(&key);
    mac.update(to_sign.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&presented)
        .map_err(|_| SigError::Mismatch)?;
    Ok(Verified {
        key,
        seed: info.signature.clone(),
        amz_date: info.amz_date.clone(),
        scope: info.scope(),
    })
}

/// An AWS credential the agent signs with.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Who signs, for which region and service.
#[derive(Debug, Clone, Copy)]
pub struct SigningScope<'a> {
    pub credentials: &'a Credentials,
    pub region: &'a str,
    pub service: &'a str,
}

/// Headers never signed when signing again: they are per hop, or set by the HTTP client.
const NOT_SIGNED: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "expect",
    "keep-alive",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-amzn-trace-id",
    "amz-sdk-invocation-id",
    "amz-sdk-request",
];

/// Signs a request in place with `credentials`: sets `x-amz-date`, `x-amz-content-sha256`
/// (S3), `x-amz-security-token` (temporary credentials) and `authorization`. `headers` must
/// already hold the target's `host`.
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    scope: &SigningScope<'_>,
    payload: &PayloadHash,
    now: SystemTime,
) -> Result<(), SigError> {
    let SigningScope {
        credentials,
        region,
        service,
    } = *scope;
    let amz_date = format_amz_date(now);
    let date = amz_date[..8].to_owned();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        HeaderValue::from_str(value)
            .map(|value| {
                headers.insert(name, value);
            })
            .map_err(|_| SigError::Malformed(format!("{name} cannot be a header value")))
    };
    set(headers, "x-amz-date", &amz_date)?;
    if service == "s3" {
        set(headers, "x-amz-content-sha256", payload.as_str())?;
    }
    headers.remove("x-amz-security-token");
    if let Some(token) = &credentials.session_token {
        set(headers, "x-amz-security-token", token)?;
    }
    let mut signed: Vec<String> = headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| !NOT_SIGNED.contains(&k.as_str()))
        .collect();
    signed.sort();
    signed.dedup();
    let canonical = canonical_request(
        method,
        uri,
        headers,
        &signed,
        payload.as_str(),
        service,
        false,
    )?;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let key = signing_key(&credentials.secret_access_key, &date, region, service);
    let mut mac = hmac(&key);
    mac.update(string_to_sign(&amz_date, &scope, &canonical).as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    set(
        headers,
        "authorization",
        &format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
            credentials.access_key_id,
            signed.join(";")
        ),
    )
}

/// The canonical request of SigV4.
pub fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed_headers: &[String],
    payload: &str,
    service: &str,
    presigned: bool,
) -> Result<String, SigError> {
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    // S3 signs the path as sent; every other service signs it encoded once more.
    let path = if service == "s3" {
        path.to_owned()
    } else {
        utf8_percent_encode(path, ENCODE_PATH).to_string()
    };
    let mut query: Vec<(String, String)> = query_pairs(uri.query().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| !(presigned && k.as_slice() == b"X-Amz-Signature"))
        .map(|(k, v)| (encode(&k), encode(&v)))
        .collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut canonical_headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                v.to_str()
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                    .map_err(|_| SigError::Malformed(format!("the {name} header is not text")))
            })
            .collect::<Result<_, _>>()?;
        if values.is_empty() {
            return Err(SigError::Malformed(format!(
                "signed header {name} is not in the request"
            )));
        }
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(&values.join(","));
        canonical_headers.push('\n');
    }
    Ok(format!(
        "{}\n{path}\n{}\n{canonical_headers}\n{}\n{payload}",
        method.as_str(),
        query.join("&"),
        signed_headers.join(";"),
    ))
}

/// Query parameters, percent-decoded, in order. A parameter without `=` has an empty value.
fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode_str(k).collect(),
                percent_decode_str(v).collect(),
            )
        })
        .collect()
}

fn encode(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, ENCODE).to_string()
}

pub(crate) fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let step = |key: &[u8], data: &str| -> [u8; 32] {
        let mut mac = hmac(key);
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().into()
    };
    let k = step(format!("AWS4{secret}").as_bytes(), date);
    let k = step(&k, region);
    let k = step(&k, service);
    step(&k, "aws4_request")
}

pub(crate) fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

/// `YYYYMMDDTHHMMSSZ` to a time.
fn parse_amz_date(text: &str) -> Result<SystemTime, SigError> {
    let bad = || SigError::Malformed(format!("{text:?} is not a YYYYMMDDTHHMMSSZ time"));
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).map_err(|_| bad())
}

fn format_amz_date(time: SystemTime) -> String {
    // "2026-11-27T02:51:28Z" -> "20261127T025128Z"
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A request as the AWS CLI sent it (captured from aws-cli 1.46.3 / botocore 1.43.62,
    /// `aws s3api list-objects-v2 --bucket bkt --prefix "x y"`, key AKIDEXAMPLE / secret
    /// `secret`).
    fn captured_list() -> (Method, Uri, HeaderMap) {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("host", "127.0.0.1:9911"),
            ("accept-encoding", "identity"),
            ("x-amz-date", "20261127T025130Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=52ac22ceea57efa5b7da1fd99b5d2a1d5bffce3bd9f80b248fda351a08d09a07"),
        ] {
            headers.append(k, HeaderValue::from_static(v));
        }
        let uri: Uri = "/bkt?list-type=2&prefix=x%20y&encoding-type=url"
            .parse()
            .unwrap();
        (Method::GET, uri, headers)
    }

    fn at(amz: &str) -> SystemTime {
        parse_amz_date(amz).unwrap()
    }

    #[test]
    fn a_request_the_aws_cli_signed_verifies_and_any_change_breaks_it() {
        let (method, uri, headers) = captured_list();
        let info = parse(&uri, &headers).unwrap();
        assert_eq!(info.access_key, "AKIDEXAMPLE");
        assert_eq!(info.service, "s3");
        let now = at("20261127T025200Z");
        verify(&info, &method, &uri, &headers, "secret", None, now).unwrap();

        assert_eq!(
            verify(&info, &method, &uri, &headers, "Secret", None, now).unwrap_err(),
            SigError::Mismatch
        );
        let other: Uri = "/bkt?list-type=2&prefix=x%20z&encoding-type=url"
            .parse()
            .unwrap();
        assert_eq!(
            verify(&info, &method, &other, &headers, "secret", None, now).unwrap_err(),
            SigError::Mismatch
        );
        assert_eq!(
            verify(&info, &Method::DELETE, &uri, &headers, "secret", None, now).unwrap_err(),
            SigError::Mismatch
        );
        let mut added = headers.clone();
        added.insert("x-amz-copy-source", HeaderValue::from_static("other/key"));
        assert!(matches!(
            verify(&info, &method, &uri, &added, "secret", None, now).unwrap_err(),
            SigError::Malformed(m) if m.contains("x-amz-copy-source")
        ));
        assert_eq!(
            verify(
                &info,
                &method,
                &uri,
                &headers,
                "secret",
                None,
                at("20261127T031000Z")
            )
            .unwrap_err(),
            SigError::Skewed
        );
    }

    #[test]
    fn what_sign_produces_verify_accepts() {
        let creds = Credentials {
            access_key_id: "AKIAREAL".into(),
            secret_access_key: "real/secret+key".into(),
            session_token: Some("token".into()),
        };
        let uri: Uri = "/2015-03-31/functions/billing%3Aprod/invocations?Qualifier=a b"
            .replace(' ', "%20")
            .parse()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "host",
            HeaderValue::from_static("lambda.eu-west-1.amazonaws.com"),
        );
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let now = SystemTime::now();
        let payload = PayloadHash::Sha256(hex::encode(Sha256::digest(b"{}")));
        let scope = SigningScope {
            credentials: &creds,
            region: "eu-west-1",
            service: "lambda",
        };
        sign(&Method::POST, &uri, &mut headers, &scope, &payload, now).unwrap();
        let info = parse(&uri, &headers).unwrap();
        assert_eq!(info.access_key, "AKIAREAL");
        assert!(info
            .signed_headers
            .contains(&"x-amz-security-token".to_string()));
        verify(
            &info,
            &Method::POST,
            &uri,
            &headers,
            "real/secret+key",
            Some(&payload),
            now,
        )
        .unwrap();
        let other = PayloadHash::Sha256(hex::encode(Sha256::digest(b"{ }")));
        assert_eq!(
            verify(
                &info,
                &Method::POST,
                &uri,
                &headers,
                "real/secret+key",
                Some(&other),
                now
            )
            .unwrap_err(),
            SigError::Mismatch
        );
    }

    #[test]
    fn presigned_urls_expire_and_bad_headers_are_named() {
        let uri: Uri = "/bkt/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261127%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261127T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=0000000000000000000000000000000000000000000000000000000000000000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("gw"));
        let info = parse(&uri, &headers).unwrap();
        assert_eq!(info.expires, Some(60));
        assert_eq!(info.payload, Some(PayloadHash::Unsigned));
        assert_eq!(
            verify(
                &info,
                &Method::GET,
                &uri,
                &headers,
                "s",
                None,
                at("20261127T000200Z")
            )
            .unwrap_err(),
            SigError::Expired
        );
        assert_eq!(
            verify(
                &info,
                &Method::GET,
                &uri,
                &headers,
                "s",
                None,
                at("20261127T000030Z")
            )
            .unwrap_err(),
            SigError::Mismatch
        );

        let bare: Uri = "/bkt/key".parse().unwrap();
        assert_eq!(parse(&bare, &headers).unwrap_err(), SigError::Missing);
        headers.insert("authorization", HeaderValue::from_static("AWS AK:sig"));
        assert!(matches!(
            parse(&bare, &headers).unwrap_err(),
            SigError::Unsupported(_)
        ));
        headers.insert(
            "authorization",
            HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AK/2026/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"),
        );
        assert!(matches!(
            parse(&bare, &headers).unwrap_err(),
            SigError::Malformed(_)
        ));
    }
}
