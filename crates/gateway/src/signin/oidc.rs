//! The OpenID Connect relying party: discovery, the authorization code flow with PKCE
//! and nonce, the device authorization flow (RFC 8628), refresh, and the ID token checks
//! that turn a provider's answer into a sluice user with groups and a role.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use sluice_auth::jwt::Expectations;
use sluice_core::Role;
use tokio::sync::Mutex;

use super::keys::{discover, KeySet};
use crate::config::OidcConfig;
use crate::http_client::{HttpClient, HttpResponse};

/// Clock skew tolerated between the provider and the gateway.
const LEEWAY: Duration = Duration::from_secs(60);

pub struct Provider {
    pub issuer: String,
    client_id: String,
    /// Resolved at start; never logged (no `Debug`).
    client_secret: Option<String>,
    scopes: String,
    username_claim: String,
    groups_claim: String,
    group_map: HashMap<String, String>,
    keep_unmapped_groups: bool,
    allowed_groups: Vec<String>,
    admin_groups: Vec<String>,
    auditor_groups: Vec<String>,
    pub create_users: bool,
    http: HttpClient,
    endpoints: Mutex<Option<Endpoints>>,
    keys: KeySet,
}

#[derive(Clone)]
struct Endpoints {
    authorization: String,
    token: String,
    device: Option<String>,
}

/// Who the provider says signed in, as sluice sees them.
#[derive(Debug, Clone)]
pub struct Person {
    pub name: String,
    /// Issuer and `sub`: the provider identity the name is bound to.
    pub subject: String,
    pub groups: Vec<String>,
    pub role: Role,
}

/// What a token endpoint gave.
pub struct Tokens {
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
}

/// A started device authorization.
pub struct DeviceStart {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub interval: u64,
    pub expires_in: u64,
}

pub enum DevicePoll {
    Pending,
    SlowDown,
    Done(Tokens),
}

impl Provider {
    pub fn new(config: &OidcConfig, client_secret: Option<String>) -> Result<Provider> {
        let http = HttpClient::new(config.ca_file.as_deref())?;
        Ok(Provider {
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            scopes: config.scopes.join(" "),
            username_claim: config.username_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            group_map: config.group_map.clone(),
            keep_unmapped_groups: config.keep_unmapped_groups,
            allowed_groups: config.allowed_groups.clone(),
            admin_groups: config.admin_groups.clone(),
            auditor_groups: config.auditor_groups.clone(),
            create_users: config.create_users,
            keys: KeySet::new(http.clone(), &config.issuer, None),
            http,
            endpoints: Mutex::new(None),
        })
    }

    /// The provider's endpoints, read from discovery on first use (so a provider that is
    /// down when the gateway starts does not stop it).
    async fn endpoints(&self) -> Result<Endpoints> {
        let mut cached = self.endpoints.lock().await;
        if let Some(e) = cached.as_ref() {
            return Ok(e.clone());
        }
        let doc = discover(&self.http, &self.issuer).await?;
        // The client secret and codes go to these: https only (http on loopback).
        let url = |key: &str| {
            doc.get(key)
                .and_then(Value::as_str)
                .filter(|u| crate::config::check_url(u, key, false).is_ok())
                .map(str::to_owned)
        };
        let endpoints = Endpoints {
            authorization: url("authorization_endpoint")
                .context("discovery: no authorization_endpoint")?,
            token: url("token_endpoint").context("discovery: no token_endpoint")?,
            device: url("device_authorization_endpoint"),
        };
        if let Some(jwks) = url("jwks_uri") {
            self.keys.set_uri(jwks).await;
        }
        *cached = Some(endpoints.clone());
        Ok(endpoints)
    }

    /// Where to send the browser.
    pub async fn authorize_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
        login_hint: Option<&str>,
    ) -> Result<String> {
        let endpoints = self.endpoints().await?;
        let mut url = url::Url::parse(&endpoints.authorization)
            .context("discovery: authorization_endpoint is not a URL")?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &self.scopes)
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(hint) = login_hint {
                q.append_pair("login_hint", hint);
            }
        }
        Ok(url.into())
    }

    pub async fn redeem_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Tokens> {
        let endpoints = self.endpoints().await?;
        let response = self
            .token_request(
                &endpoints.token,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                    ("code_verifier", verifier),
                ],
            )
            .await?;
        tokens(&response)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens> {
        let endpoints = self.endpoints().await?;
        let response = self
            .token_request(
                &endpoints.token,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("scope", &self.scopes),
                ],
            )
            .await?;
        tokens(&response)
    }

    pub async fn device_start(&self) -> Result<DeviceStart> {
        let endpoints = self.endpoints().await?;
        let url = endpoints
            .device
            .context("the identity provider does not offer the device flow")?;
        let response = self.token_request(&url, &[("scope", &self.scopes)]).await?;
        let body = ok_json(&response)?;
        let text = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("device authorization answer lacks {key}"))
        };
        Ok(DeviceStart {
            device_code: text("device_code")?,
            user_code: text("user_code")?,
            verification_uri: text("verification_uri").or_else(|_| text("verification_url"))?,
            verification_uri_complete: text("verification_uri_complete").ok(),
            interval: body.get("interval").and_then(Value::as_u64).unwrap_or(5),
            expires_in: body
                .get("expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(600),
        })
    }

    pub async fn device_poll(&self, device_code: &str) -> Result<DevicePoll> {
        let endpoints = self.endpoints().await?;
        let response = self
            .token_request(
                &endpoints.token,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code),
                ],
            )
            .await?;
        if !response.status.is_success() {
            let error = response
                .json()
                .ok()
                .and_then(|b| b.get("error").and_then(Value::as_str).map(str::to_owned));
            match error.as_deref() {
                Some("authorization_pending") => return Ok(DevicePoll::Pending),
                Some("slow_down") => return Ok(DevicePoll::SlowDown),
                _ => {}
            }
        }
        Ok(DevicePoll::Done(tokens(&response)?))
    }

    /// Client authentication: HTTP Basic with the secret, or `client_id` in the body for a
    /// public client.
    async fn token_request(&self, url: &str, form: &[(&str, &str)]) -> Result<HttpResponse> {
        match &self.client_secret {
            Some(secret) => {
                self.http
                    .post_form(url, form, Some((&self.client_id, secret)))
                    .await
            }
            None => {
                let mut form = form.to_vec();
                form.push(("client_id", &self.client_id));
                self.http.post_form(url, &form, None).await
            }
        }
    }

    /// Checks an ID token (signature by the provider's keys, issuer, audience, expiry,
    /// `nonce` when one was sent, `azp`) and maps its claims to a sluice user.
    pub async fn person(&self, id_token: &str, nonce: Option<&str>) -> Result<Person> {
        self.endpoints().await?;
        let expect = Expectations {
            issuer: self.issuer.clone(),
            audiences: vec![self.client_id.clone()],
            leeway: LEEWAY,
        };
        let claims = self
            .keys
            .validate(id_token, &expect)
            .await
            .map_err(|e| anyhow!("ID token refused: {e}"))?;
        if let Some(nonce) = nonce {
            if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
                bail!("ID token refused: its nonce does not match this sign-in");
            }
        }
        if let Some(azp) = claims.get("azp").and_then(Value::as_str) {
            if azp != self.client_id {
                bail!("ID token refused: issued to another client (azp)");
            }
        }
        self.map_claims(&claims)
    }

    fn map_claims(&self, claims: &Map<String, Value>) -> Result<Person> {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .context("the ID token has no subject")?;
        // An address the provider has not verified names nobody (some providers let
        // anyone register any address).
        if self.username_claim == "email" {
            let verified = match claims.get("email_verified") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s == "true",
                Some(_) => false,
            };
            if !verified {
                bail!("the provider has not verified this e-mail address (email_verified)");
            }
        }
        let name = claims
            .get(&self.username_claim)
            .and_then(Value::as_str)
            .with_context(|| {
                format!(
                    "the ID token has no {:?} claim to name the user (identity.oidc.username_claim)",
                    self.username_claim
                )
            })?;
        if name.is_empty() || name.len() > 63 || name.chars().any(char::is_control) {
            bail!("the user name from the provider must be 1-63 printable characters");
        }
        let provider_groups: Vec<String> = match claims.get(&self.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        let mut groups: Vec<String> = provider_groups
            .iter()
            .filter_map(|g| match self.group_map.get(g) {
                Some(mapped) => Some(mapped.clone()),
                None if self.keep_unmapped_groups => Some(g.clone()),
                None => None,
            })
            .collect();
        groups.sort();
        groups.dedup();
        // Exact names: a provider group that merely resembles one (case, wildcards) grants
        // nothing.
        let member = |list: &[String]| list.iter().any(|g| groups.contains(g));
        if !self.allowed_groups.is_empty() && !member(&self.allowed_groups) {
            bail!("{name} is not in a group allowed to sign in (identity.oidc.allowed_groups)");
        }
        let role = if member(&self.admin_groups) {
            Role::Admin
        } else if member(&self.auditor_groups) {
            Role::Auditor
        } else {
            Role::User
        };
        Ok(Person {
            name: name.to_owned(),
            subject: format!("{} {sub}", self.issuer),
            groups,
            role,
        })
    }
}

/// The JSON body of a successful answer, or an error naming the provider's `error`.
fn ok_json(response: &HttpResponse) -> Result<Value> {
    let body = response.json().ok();
    if !response.status.is_success() {
        let field = |k: &str| {
            body.as_ref()
                .and_then(|b| b.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match (field("error"), field("error_description")) {
            (Some(e), Some(d)) => bail!("the identity provider refused: {e} ({d})"),
            (Some(e), None) => bail!("the identity provider refused: {e}"),
            _ => bail!("the identity provider answered {}", response.status),
        }
    }
    body.context("the identity provider's answer is not JSON")
}

fn tokens(response: &HttpResponse) -> Result<Tokens> {
    let body = ok_json(response)?;
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Tokens {
        id_token: text("id_token"),
        refresh_token: text("refresh_token"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider(yaml: &str) -> Provider {
        let config: OidcConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Provider::new(&config, None).unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn claims_map_to_users_groups_and_roles() {
        let p = provider(
            "{ issuer: 'https://idp', client_id: c, group_map: { idp-admins: admins, eng: engineers }, admin_groups: [admins], auditor_groups: [auditors] }",
        );
        let person = p
            .map_claims(&claims(json!({
                "sub": "u1", "email": "a@x.io", "email_verified": true,
                "groups": ["eng", "idp-admins", "auditors", "ADMINS"]
            })))
            .unwrap();
        assert_eq!(person.name, "a@x.io");
        assert_eq!(person.subject, "https://idp u1");
        // Unmapped provider groups (auditors, ADMINS) grant nothing by default.
        assert_eq!(person.groups, ["admins", "engineers"]);
        assert_eq!(person.role, Role::Admin);

        // A provider group that only resembles a sluice group grants nothing either.
        let p = provider(
            "{ issuer: 'https://idp', client_id: c, keep_unmapped_groups: true, admin_groups: [admins] }",
        );
        let person = p
            .map_claims(&claims(
                json!({ "sub": "u2", "email": "b@x.io", "groups": ["ADMINS", "admins-x"] }),
            ))
            .unwrap();
        assert_eq!(person.role, Role::User);

        for bad in [
            json!({ "sub": "u3", "email": "c@x.io", "email_verified": false }),
            json!({ "sub": "u3", "email": "c@x.io", "email_verified": "false" }),
            json!({ "sub": "u3" }),
            json!({ "email": "c@x.io" }),
            json!({ "sub": "u3", "email": "" }),
        ] {
            assert!(p.map_claims(&claims(bad.clone())).is_err(), "{bad}");
        }
        let gated = provider("{ issuer: 'https://idp', client_id: c, allowed_groups: [engineers], group_map: { eng: engineers } }");
        assert!(gated
            .map_claims(&claims(
                json!({ "sub": "u4", "email": "d@x.io", "groups": "eng" })
            ))
            .is_ok());
        let err = gated
            .map_claims(&claims(
                json!({ "sub": "u5", "email": "e@x.io", "groups": ["ops"] }),
            ))
            .unwrap_err();
        assert!(err.to_string().contains("allowed_groups"), "{err}");
    }
}
