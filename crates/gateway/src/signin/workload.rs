//! Workload identity: an external JWT (a CI provider's OIDC token, a cloud workload
//! token) checked against a trusted issuer's keys and exchanged for a short-lived token
//! of the service account that trust names.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use sluice_auth::jwt::Expectations;
use sluice_core::glob_exact;

use super::keys::KeySet;
use crate::config::WorkloadTrust;
use crate::http_client::HttpClient;

const LEEWAY: Duration = Duration::from_secs(60);

pub struct Trust {
    pub name: String,
    issuer: String,
    audience: String,
    subject: String,
    claims: HashMap<String, String>,
    pub service_account: String,
    pub token_ttl: Duration,
    keys: KeySet,
}

/// A token that passed a trust.
pub struct Accepted<'a> {
    pub trust: &'a Trust,
    /// `issuer` + `sub`, for the record.
    pub subject: String,
    /// The sluice token's lifetime: the trust's, but never past the external token's
    /// own expiry (a leaked short-lived CI token must not become a long-lived one).
    pub ttl: Duration,
}

impl Trust {
    pub fn new(config: &WorkloadTrust) -> Result<Trust> {
        let http = HttpClient::new(config.ca_file.as_deref())?;
        Ok(Trust {
            name: config.name.clone(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            subject: config.subject.clone(),
            claims: config.claims.clone(),
            service_account: config.service_account.clone(),
            token_ttl: config.token_ttl,
            keys: KeySet::new(http, &config.issuer, config.jwks_uri.clone()),
        })
    }
}

/// Finds the trust that accepts `token`. Errors say which check failed, never the token.
pub async fn accept<'a>(trusts: &'a [Trust], token: &str) -> Result<Accepted<'a>, String> {
    // The unverified issuer only picks which trusts to try; each then verifies everything.
    let claimed = unverified_issuer(token).ok_or("not a well-formed JWT")?;
    let candidates: Vec<&Trust> = trusts.iter().filter(|t| t.issuer == claimed).collect();
    if candidates.is_empty() {
        return Err(format!("no workload trust for issuer {claimed:?}"));
    }
    let mut last = String::new();
    for trust in candidates {
        let expect = Expectations {
            issuer: trust.issuer.clone(),
            audiences: vec![trust.audience.clone()],
            leeway: LEEWAY,
        };
        let claims = match trust.keys.validate(token, &expect).await {
            Ok(claims) => claims,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        match matches(trust, &claims) {
            Ok(sub) => {
                let left = claims
                    .get("exp")
                    .and_then(Value::as_u64)
                    .map(|exp| exp.saturating_sub(unix_now()))
                    .unwrap_or(0);
                return Ok(Accepted {
                    trust,
                    subject: format!("{} {}", trust.issuer, sub),
                    ttl: trust.token_ttl.min(Duration::from_secs(left.max(60))),
                });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn matches(trust: &Trust, claims: &Map<String, Value>) -> Result<String, String> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("token has no subject")?;
    if !glob_exact(&trust.subject, sub) {
        return Err(format!(
            "subject {sub:?} is not allowed by workload trust {:?}",
            trust.name
        ));
    }
    for (claim, want) in &trust.claims {
        let found = claims.get(claim).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        if found.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "claim {claim:?} does not have the value workload trust {:?} requires",
                trust.name
            ));
        }
    }
    Ok(sub.to_owned())
}

fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
