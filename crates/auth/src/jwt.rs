//! JSON Web Token validation against a provider's key set (JWKS): OpenID Connect ID
//! tokens and workload tokens (e.g. a CI provider's OIDC token).
//!
//! `jsonwebtoken` checks signatures and the registered claims; this module decides which
//! algorithms and keys are acceptable at all, so a forged header cannot pick them:
//! only asymmetric algorithms (an `HS256` token "signed" with the public key, or an
//! unsecured `alg: none` token, is refused before any key is looked at), the key chosen
//! by `kid` from the provider's set, and the key's own `alg` when it states one.

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Why a token was refused. Texts name the check that failed, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a well-formed JWT")]
    Malformed,
    #[error("token algorithm {0:?} is not accepted (only RS*, PS*, ES*, EdDSA)")]
    Algorithm(String),
    #[error("token signed with an unknown key id {0:?}")]
    UnknownKey(Option<String>),
    #[error("token signature does not verify")]
    Signature,
    #[error("token issuer {found:?} is not the expected {expected:?}")]
    Issuer { expected: String, found: String },
    #[error("token audience does not include {0:?}")]
    Audience(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf/iat in the future)")]
    NotYetValid,
    #[error("token lacks the {0:?} claim")]
    MissingClaim(String),
    #[error("token rejected: {0}")]
    Invalid(String),
}

/// What a valid token must say.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Verifies `token` with a key from `keys` and the expectations; returns its claims.
pub fn validate(
    token: &str,
    keys: &JwkSet,
    expect: &Expectations,
) -> Result<Map<String, Value>, JwtError> {
    let header = raw_header(token)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed)?;
    let alg = asymmetric(alg_name).ok_or_else(|| JwtError::Algorithm(alg_name.to_string()))?;
    let kid = header.get("kid").and_then(Value::as_str);
    let jwk = pick_key(keys, kid).ok_or_else(|| JwtError::UnknownKey(kid.map(str::to_owned)))?;
    if let Some(key_alg) = &jwk.common.key_algorithm {
        if format!("{key_alg:?}") != alg_name {
            return Err(JwtError::Algorithm(alg_name.to_string()));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Invalid(e.to_string()))?;

    let mut validation = Validation::new(alg);
    validation.set_issuer(&[&expect.issuer]);
    validation.set_audience(&expect.audiences);
    validation.leeway = expect.leeway.as_secs();
    validation.validate_nbf = true;
    validation.required_spec_claims = ["exp", "iss", "aud", "sub"]
        .into_iter()
        .map(String::from)
        .collect::<HashSet<_>>();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(
        |e| match e.kind() {
            ErrorKind::InvalidSignature => JwtError::Signature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidIssuer => JwtError::Issuer {
                expected: expect.issuer.clone(),
                found: String::new(),
            },
            ErrorKind::InvalidAudience => JwtError::Audience(expect.audiences.join(" or ")),
            ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
            ErrorKind::InvalidAlgorithm => JwtError::Algorithm(alg_name.to_string()),
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => JwtError::Malformed,
            other => JwtError::Invalid(format!("{other:?}")),
        },
    )?;
    let claims = data.claims;
    // Name the issuer the token claimed (the library does not).
    if let Some(found) = claims.get("iss").and_then(Value::as_str) {
        if found != expect.issuer {
            return Err(JwtError::Issuer {
                expected: expect.issuer.clone(),
                found: found.to_string(),
            });
        }
    }
    // An `iat` in the future is as suspicious as an `nbf` there.
    if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
        if iat > jsonwebtoken::get_current_timestamp() + expect.leeway.as_secs() {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(claims)
}

/// The decoded header, without trusting anything in it yet.
fn raw_header(token: &str) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

fn asymmetric(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The key named by `kid`; without a `kid`, the set's only signing key.
fn pick_key<'a>(keys: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    let signing = keys.keys.iter().filter(|k| {
        !matches!(
            k.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        )
    });
    match kid {
        Some(kid) => signing
            .clone()
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None => {
            let mut all = signing;
            let only = all.next()?;
            all.next().is_none().then_some(only)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_before_looking_at_keys() {
        let keys = JwkSet { keys: vec![] };
        let expect = Expectations {
            issuer: "https://idp".into(),
            audiences: vec!["sluice".into()],
            leeway: Duration::from_secs(60),
        };
        let enc = |v: &str| URL_SAFE_NO_PAD.encode(v);
        let none = format!("{}.{}.", enc(r#"{"alg":"none"}"#), enc(r#"{"sub":"x"}"#));
        assert_eq!(
            validate(&none, &keys, &expect),
            Err(JwtError::Algorithm("none".into()))
        );
        let hs = format!("{}.{}.c2ln", enc(r#"{"alg":"HS256"}"#), enc("{}"));
        assert_eq!(
            validate(&hs, &keys, &expect),
            Err(JwtError::Algorithm("HS256".into()))
        );
        let rs = format!(
            "{}.{}.c2ln",
            enc(r#"{"alg":"RS256","kid":"k1"}"#),
            enc("{}")
        );
        assert_eq!(
            validate(&rs, &keys, &expect),
            Err(JwtError::UnknownKey(Some("k1".into())))
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.b.c"] {
            assert_eq!(validate(bad, &keys, &expect), Err(JwtError::Malformed));
        }
    }
}
