//! Sign-in: how people and machines get a sluice token other than `sluice tokens issue`.
//!
//! - a local password (argon2) — `POST /auth/password`;
//! - the OpenID Connect provider in a browser — the CLI opens
//!   `/auth/oidc/start?cli_port=…&challenge=…`; the gateway (the provider's confidential
//!   client) runs the code flow with PKCE and nonce against `/auth/oidc/callback`, then
//!   hands a one-time code to the CLI's loopback listener, which redeems it with its own
//!   PKCE verifier at `/auth/cli/exchange` (so a code seen by another local process is
//!   useless);
//! - the device flow for headless machines — `/auth/device`, `/auth/device/poll`;
//! - renewal — `/auth/refresh` spends a refresh handle and asks the provider again, so
//!   changed groups apply and a disabled account stops;
//! - workload tokens — `/auth/workload` exchanges a trusted external JWT for a
//!   short-lived token of a service account.
//!
//! Every sign-in and every refusal is an audit event.

mod keys;
mod oidc;
pub mod routes;
mod workload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sluice_agent::SecretRef;
use sluice_audit::{AuditWriter, Event, EventBody};
use sluice_auth::{verify_password, AuthError, Refreshes, Sealer, Tokens};
use sluice_core::ActorKind;
use sluice_store::{Store, StoreError, TokenKind, User};
use tracing::warn;

use crate::config::Config;
use oidc::{DevicePoll, Person, Provider};
use workload::Trust;

/// How long a browser sign-in may take from start to callback.
const LOGIN_WINDOW: Duration = Duration::from_secs(600);
/// How long the CLI has to redeem its one-time code.
const HANDOFF_WINDOW: Duration = Duration::from_secs(60);
/// Sign-ins in flight at once (each unauthenticated start takes a slot until it ends or
/// expires): a bound on what anonymous callers can make the gateway hold.
const MAX_PENDING: usize = 10_000;
/// Failed password sign-ins per user within `LOCKOUT_WINDOW` before further attempts
/// are refused without checking.
const MAX_FAILURES: u32 = 5;
const LOCKOUT_WINDOW: Duration = Duration::from_secs(300);
/// Password checks at once: each costs argon2's 19 MiB and a core for tens of ms, so
/// a flood of anonymous attempts queues here instead of exhausting memory.
const PASSWORD_CHECKS: usize = 2;
/// How long an attempt waits for a check slot before it is told to come back later.
const PASSWORD_QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Longest user name and password accepted at sign-in.
const MAX_NAME: usize = 63;
const MAX_PASSWORD: usize = 1024;
/// Longest attacker-supplied text (a claimed name, a refusal naming a token's header)
/// copied into an audit event.
const MAX_RECORDED: usize = 200;

pub struct SignIn {
    store: Arc<Store>,
    tokens: Tokens,
    refreshes: Refreshes,
    audit: AuditWriter,
    login_ttl: Duration,
    refresh_ttl: Duration,
    redirect_uri: String,
    oidc: Option<Provider>,
    trusts: Vec<Trust>,
    /// Whether the browser cookie that binds a sign-in to its browser needs `Secure`.
    secure_cookie: bool,
    public_origin: String,
    pending: Mutex<Pending>,
    /// Password attempts per user name (counted before the check, so parallel guesses
    /// cannot outrun the limit) and when the count started.
    attempts: Mutex<HashMap<String, (u32, Instant)>>,
    password_checks: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Pending {
    /// By `state`.
    logins: HashMap<String, Login>,
    /// By one-time code.
    handoffs: HashMap<String, Handoff>,
    /// By the handle given to the CLI.
    devices: HashMap<String, Device>,
}

struct Login {
    nonce: String,
    verifier: String,
    /// Also set as a cookie in the browser that started the sign-in; the callback must
    /// come from that browser (a provider URL sent to someone else gets nowhere).
    browser_key: String,
    target: LoginFor,
    started: Instant,
}

/// Who gets the result of a browser sign-in.
enum LoginFor {
    /// `sluice login`: a one-time code on its loopback port, redeemed with its verifier.
    Cli { port: u16, challenge: String },
    /// The web console in the same browser: a console session cookie.
    Console,
}

/// Where a browser sign-in ends.
pub enum CallbackEnd {
    /// Send the browser to this URL (the CLI's loopback listener).
    Cli(String),
    /// The console signed in (or was refused): its cookie is set by the route.
    Console(Result<Granted, Refusal>),
}

struct Handoff {
    granted: Granted,
    cli_challenge: String,
    made: Instant,
}

struct Device {
    device_code: String,
    expires: Instant,
    /// The provider's polling interval, kept by the gateway for it.
    interval: Duration,
    last_poll: Option<Instant>,
}

/// A sign-in's result as the client gets it.
#[derive(Clone)]
pub struct Granted {
    pub token: String,
    pub token_id: String,
    pub user: String,
    pub actor: ActorKind,
    pub role: sluice_core::Role,
    pub groups: Vec<String>,
    pub expires: SystemTime,
    pub refresh_token: Option<String>,
}

impl Granted {
    pub fn json(&self) -> Value {
        json!({
            "token": self.token,
            "token_id": self.token_id,
            "user": self.user,
            "actor": self.actor.as_str(),
            "role": self.role.as_str(),
            "groups": self.groups,
            "expires": humantime::format_rfc3339_seconds(self.expires).to_string(),
            "refresh_token": self.refresh_token,
        })
    }
}

/// A refusal: the status and a message for the client (never a credential).
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn unauthorized(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::UNAUTHORIZED, message)
    }

    fn unavailable(e: impl std::fmt::Display) -> Refusal {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl SignIn {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        tokens: Tokens,
        audit: AuditWriter,
    ) -> Result<SignIn> {
        let identity = &config.identity;
        let oidc = match &identity.oidc {
            Some(c) => {
                // Resolved here: the gateway is the provider's client, not an agent.
                let secret = c
                    .client_secret
                    .as_deref()
                    .map(|s| SecretRef::parse(s).resolve())
                    .transpose()
                    .context("identity.oidc.client_secret")?;
                Some(Provider::new(c, secret)?)
            }
            None => None,
        };
        let trusts = identity
            .workload
            .iter()
            .map(Trust::new)
            .collect::<Result<Vec<_>>>()?;
        let public = identity
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen.api));
        let secure_cookie = public.starts_with("https://");
        Ok(SignIn {
            refreshes: Refreshes::new(store.clone(), Sealer::new(&config.sealing_key()?)),
            store,
            tokens,
            audit,
            login_ttl: identity.login_ttl,
            refresh_ttl: identity.refresh_ttl,
            redirect_uri: format!("{}/auth/oidc/callback", public.trim_end_matches('/')),
            oidc,
            trusts,
            secure_cookie,
            public_origin: url::Url::parse(&public)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_default(),
            pending: Mutex::new(Pending::default()),
            attempts: Mutex::new(HashMap::new()),
            password_checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS),
        })
    }

    fn provider(&self) -> Result<&Provider, Refusal> {
        self.oidc.as_ref().ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "this gateway has no identity provider (identity.oidc)",
            )
        })
    }

    /// `POST /auth/password`.
    pub async fn password(
        &self,
        user: &str,
        password: &str,
        addr: &str,
    ) -> Result<Granted, Refusal> {
        if user.is_empty() || user.len() > MAX_NAME || password.len() > MAX_PASSWORD {
            return Err(self.refused(
                user,
                "password",
                addr,
                Refusal::unauthorized("wrong user name or password"),
            ));
        }
        if !self.begin_attempt(user) {
            return Err(self.refused(
                user,
                "password",
                addr,
                Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed sign-ins; try again in a few minutes",
                ),
            ));
        }
        let Ok(Ok(_permit)) =
            tokio::time::timeout(PASSWORD_QUEUE_WAIT, self.password_checks.acquire()).await
        else {
            return Err(Refusal::unavailable("busy checking passwords; try again"));
        };
        let store = self.store.clone();
        let (name, pw) = (user.to_owned(), password.to_owned());
        let checked = tokio::task::spawn_blocking(move || {
            let hash = store.password_hash(&name)?;
            Ok::<_, StoreError>(verify_password(hash.as_deref(), &pw))
        })
        .await;
        match checked {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                return Err(self.refused(
                    user,
                    "password",
                    addr,
                    Refusal::unauthorized("wrong user name or password"),
                ));
            }
            _ => return Err(Refusal::unavailable("metadata store unavailable")),
        }
        lock(&self.attempts).remove(user);
        let user = self.user(user).await?;
        self.grant(&user, "password", addr, None, None, self.login_ttl)
            .await
    }

    /// `GET /auth/oidc/start`: where to send the browser.
    pub async fn browser_start(
        &self,
        cli_port: u16,
        cli_challenge: &str,
        login_hint: Option<&str>,
    ) -> Result<(String, String), Refusal> {
        if cli_port < 1024 || cli_challenge.len() != 43 {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "cli_port must be 1024-65535 and challenge a base64url SHA-256",
            ));
        }
        let target = LoginFor::Cli {
            port: cli_port,
            challenge: cli_challenge.to_owned(),
        };
        self.start_login(target, login_hint).await
    }

    /// `GET /console/login/oidc`: a browser sign-in for the console itself.
    pub async fn console_start(&self) -> Result<(String, String), Refusal> {
        self.start_login(LoginFor::Console, None).await
    }

    /// Whether console sign-in through the identity provider is offered.
    pub fn has_provider(&self) -> bool {
        self.oidc.is_some()
    }

    /// Whether cookies must be `Secure` (the gateway's public URL is https).
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookie
    }

    /// The gateway's public origin (`scheme://host[:port]`), which browsers name in
    /// `Origin` when the gateway sits behind a proxy that rewrites `Host`.
    pub fn public_origin(&self) -> &str {
        &self.public_origin
    }

    /// Revokes a sign-in token (the console's sign-out).
    pub async fn sign_out(&self, token_id: &str) {
        let (tokens, id) = (self.tokens.clone(), token_id.to_owned());
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || tokens.revoke(&id)).await {
            warn!(error = %e, "cannot revoke a console token at sign-out");
        }
    }

    async fn start_login(
        &self,
        target: LoginFor,
        login_hint: Option<&str>,
    ) -> Result<(String, String), Refusal> {
        let provider = self.provider()?;
        let (state, nonce, verifier) = (random(), random(), random());
        let url = provider
            .authorize_url(
                &self.redirect_uri,
                &state,
                &nonce,
                &challenge(&verifier),
                login_hint,
            )
            .await
            .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
        let browser_key = random();
        let mut pending = lock(&self.pending);
        pending.expire();
        make_room(&mut pending.logins, |l| l.started);
        pending.logins.insert(
            state,
            Login {
                nonce,
                verifier,
                browser_key: browser_key.clone(),
                target,
                started: Instant::now(),
            },
        );
        Ok((url, browser_key))
    }

    /// The cookie that binds a sign-in to the browser that started it.
    pub fn browser_cookie(&self, key: &str) -> String {
        format!(
            "{BROWSER_COOKIE}={key}; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age={}{}",
            LOGIN_WINDOW.as_secs(),
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }

    /// `GET /auth/oidc/callback`: redeems the code and says where the sign-in ends (the
    /// CLI's loopback listener, with a one-time code or the error; or the console).
    pub async fn callback(
        &self,
        code: Option<&str>,
        state: &str,
        browser_key: Option<&str>,
        provider_error: Option<&str>,
        addr: &str,
    ) -> Result<CallbackEnd, Refusal> {
        let provider = self.provider()?;
        // Taken out at once: a state (and the code with it) is good for one callback.
        let login = lock(&self.pending).logins.remove(state);
        let Some(login) = login.filter(|l| l.started.elapsed() < LOGIN_WINDOW) else {
            return Err(self.refused(
                "",
                "oidc",
                addr,
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "unknown, expired or already used sign-in (state); start again",
                ),
            ));
        };
        if browser_key != Some(login.browser_key.as_str()) {
            return Err(self.refused(
                "",
                "oidc",
                addr,
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "this sign-in was started in another browser; start it again from `sluice login`",
                ),
            ));
        }
        let result = async {
            if let Some(e) = provider_error {
                return Err(Refusal::unauthorized(format!(
                    "the identity provider refused: {e}"
                )));
            }
            let code = code.ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "no code"))?;
            let tokens = provider
                .redeem_code(code, &login.verifier, &self.redirect_uri)
                .await
                .map_err(|e| Refusal::unauthorized(format!("{e:#}")))?;
            let id_token = tokens
                .id_token
                .ok_or_else(|| Refusal::unauthorized("the provider returned no ID token"))?;
            let person = provider
                .person(&id_token, Some(&login.nonce))
                .await
                .map_err(|e| Refusal::unauthorized(format!("{e:#}")))?;
            // The console renews nothing: its sign-in keeps no provider refresh token.
            let refresh = match login.target {
                LoginFor::Cli { .. } => tokens.refresh_token.as_deref(),
                LoginFor::Console => None,
            };
            self.person_signs_in(&person, "oidc", addr, refresh).await
        }
        .await
        .map_err(|refusal| self.refused("", "oidc", addr, refusal));
        let LoginFor::Cli { port, challenge } = login.target else {
            return Ok(CallbackEnd::Console(result));
        };
        let back = |query: &str| format!("http://127.0.0.1:{port}/callback?{query}");
        match result {
            Ok(granted) => {
                let code = random();
                lock(&self.pending).handoffs.insert(
                    code.clone(),
                    Handoff {
                        granted,
                        cli_challenge: challenge,
                        made: Instant::now(),
                    },
                );
                Ok(CallbackEnd::Cli(back(&format!("code={code}"))))
            }
            Err(refusal) => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("error", &refusal.message)
                    .finish();
                Ok(CallbackEnd::Cli(back(&query)))
            }
        }
    }

    /// `POST /auth/cli/exchange`: the CLI proves it started the sign-in.
    pub fn cli_exchange(&self, code: &str, verifier: &str) -> Result<Granted, Refusal> {
        let handoff = lock(&self.pending).handoffs.remove(code);
        let Some(handoff) = handoff.filter(|h| h.made.elapsed() < HANDOFF_WINDOW) else {
            return Err(Refusal::unauthorized(
                "unknown, expired or already used code",
            ));
        };
        if challenge(verifier) != handoff.cli_challenge {
            return Err(Refusal::unauthorized(
                "the verifier does not match the challenge",
            ));
        }
        Ok(handoff.granted)
    }

    /// `POST /auth/device`.
    pub async fn device_start(&self) -> Result<Value, Refusal> {
        let provider = self.provider()?;
        let started = provider
            .device_start()
            .await
            .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
        let handle = random();
        let mut pending = lock(&self.pending);
        pending.expire();
        make_room(&mut pending.devices, |d| d.expires);
        pending.devices.insert(
            handle.clone(),
            Device {
                device_code: started.device_code,
                expires: Instant::now() + Duration::from_secs(started.expires_in.min(1800)),
                interval: Duration::from_secs(started.interval.clamp(1, 60)),
                last_poll: None,
            },
        );
        Ok(json!({
            "handle": handle,
            "user_code": started.user_code,
            "verification_uri": started.verification_uri,
            "verification_uri_complete": started.verification_uri_complete,
            "interval": started.interval,
            "expires_in": started.expires_in,
        }))
    }

    /// `POST /auth/device/poll`: `None` while the person has not finished.
    pub async fn device_poll(&self, handle: &str, addr: &str) -> Result<Option<Granted>, Refusal> {
        let provider = self.provider()?;
        let device_code = {
            let mut pending = lock(&self.pending);
            match pending.devices.get_mut(handle) {
                Some(d) if d.expires > Instant::now() => {
                    // The provider's pace is kept here, so a client polling too fast
                    // cannot get the gateway's client throttled at the provider.
                    if d.last_poll.is_some_and(|at| at.elapsed() < d.interval) {
                        return Err(Refusal::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "slow_down: poll at the interval given",
                        ));
                    }
                    d.last_poll = Some(Instant::now());
                    d.device_code.clone()
                }
                _ => {
                    return Err(Refusal::unauthorized(
                        "unknown or expired device sign-in; start again",
                    ))
                }
            }
        };
        let polled = provider.device_poll(&device_code).await;
        let tokens = match polled {
            Ok(DevicePoll::Pending) => return Ok(None),
            Ok(DevicePoll::SlowDown) => {
                if let Some(d) = lock(&self.pending).devices.get_mut(handle) {
                    d.interval += Duration::from_secs(5);
                }
                return Ok(None);
            }
            Ok(DevicePoll::Done(tokens)) => tokens,
            Err(e) => {
                lock(&self.pending).devices.remove(handle);
                let refusal = Refusal::unauthorized(format!("{e:#}"));
                return Err(self.refused("", "device", addr, refusal));
            }
        };
        lock(&self.pending).devices.remove(handle);
        let result = async {
            let id_token = tokens
                .id_token
                .ok_or_else(|| Refusal::unauthorized("the provider returned no ID token"))?;
            let person = provider
                .person(&id_token, None)
                .await
                .map_err(|e| Refusal::unauthorized(format!("{e:#}")))?;
            self.person_signs_in(&person, "device", addr, tokens.refresh_token.as_deref())
                .await
        }
        .await;
        result
            .map(Some)
            .map_err(|refusal| self.refused("", "device", addr, refusal))
    }

    /// `POST /auth/refresh`.
    pub async fn refresh(&self, handle: &str, addr: &str) -> Result<Granted, Refusal> {
        let refreshes = self.refreshes.clone();
        let presented = handle.to_owned();
        let spent = tokio::task::spawn_blocking(move || refreshes.spend(&presented))
            .await
            .map_err(Refusal::unavailable)?;
        let (user, provider_refresh) = match spent {
            Ok(found) => found,
            Err(AuthError::Store(e)) => return Err(Refusal::unavailable(e)),
            Err(e @ AuthError::RefreshReused(_)) => {
                let user = match &e {
                    AuthError::RefreshReused(u) => u.clone(),
                    _ => String::new(),
                };
                return Err(self.refused(
                    &user,
                    "refresh",
                    addr,
                    Refusal::unauthorized(e.to_string()),
                ));
            }
            Err(_) => {
                return Err(self.refused(
                    "",
                    "refresh",
                    addr,
                    Refusal::unauthorized("unknown or expired refresh token; sign in again"),
                ))
            }
        };
        // Err((refusal, revoke)): `revoke` when the provider (or the mapping of what it
        // says) refused the person, whose sign-in tokens then stop at once rather than at
        // their expiry; not when the provider merely could not be reached.
        let result = async {
            let provider = self.provider().map_err(|r| (r, false))?;
            let tokens = provider.refresh(&provider_refresh).await.map_err(|e| {
                let text = format!("{e:#}");
                if text.starts_with("the identity provider refused") {
                    (
                        Refusal::unauthorized(format!("{text}; sign in again")),
                        true,
                    )
                } else {
                    (Refusal::unavailable(text), false)
                }
            })?;
            let id_token = tokens.id_token.ok_or_else(|| {
                (
                    Refusal::unauthorized(
                        "the provider returned no ID token on refresh; sign in again",
                    ),
                    false,
                )
            })?;
            let person = provider
                .person(&id_token, None)
                .await
                .map_err(|e| (Refusal::unauthorized(format!("{e:#}")), true))?;
            if person.name != user {
                return Err((
                    Refusal::unauthorized("the provider now names another user; sign in again"),
                    true,
                ));
            }
            // A provider that does not rotate refresh tokens keeps the old one valid.
            let next = tokens.refresh_token.unwrap_or(provider_refresh);
            self.person_signs_in(&person, "refresh", addr, Some(&next))
                .await
                .map_err(|r| {
                    let revoke = r.status == StatusCode::FORBIDDEN;
                    (r, revoke)
                })
        }
        .await;
        match result {
            Ok(granted) => Ok(granted),
            Err((refusal, revoke)) => {
                if revoke {
                    let (store, name) = (self.store.clone(), user.clone());
                    let revoked = tokio::task::spawn_blocking(move || {
                        store.revoke_tokens_of_kind(&name, TokenKind::Login, now_ms())
                    })
                    .await;
                    if !matches!(revoked, Ok(Ok(_))) {
                        warn!(user = %user, "cannot revoke the sign-in tokens of a refused user");
                    }
                }
                Err(self.refused(&user, "refresh", addr, refusal))
            }
        }
    }

    /// `POST /auth/workload`.
    pub async fn workload(&self, token: &str, addr: &str) -> Result<Granted, Refusal> {
        if self.trusts.is_empty() {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "this gateway trusts no workload issuers (identity.workload)",
            ));
        }
        let accepted = match workload::accept(&self.trusts, token).await {
            Ok(a) => a,
            Err(message) => {
                return Err(self.refused("", "workload", addr, Refusal::unauthorized(message)))
            }
        };
        let account = self.user(&accepted.trust.service_account).await?;
        if account.actor != ActorKind::Agent {
            let refusal = Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "workload trust {:?} names {:?}, which is not a service account",
                    accepted.trust.name, account.name
                ),
            );
            return Err(self.refused(&account.name, "workload", addr, refusal));
        }
        let subject = accepted.subject.clone();
        self.grant(
            &account,
            "workload",
            addr,
            Some(subject),
            None,
            accepted.ttl,
        )
        .await
    }

    /// Brings the user's record up to date with the provider and grants a token.
    async fn person_signs_in(
        &self,
        person: &Person,
        method: &str,
        addr: &str,
        provider_refresh: Option<&str>,
    ) -> Result<Granted, Refusal> {
        let provider = self.provider()?;
        let store = self.store.clone();
        let (p, create) = (person.clone(), provider.create_users);
        let synced = tokio::task::spawn_blocking(move || {
            store.sync_oidc_user(&p.name, &p.subject, &p.groups, p.role, create)
        })
        .await
        .map_err(Refusal::unavailable)?;
        let user = match synced {
            Ok(user) => user,
            Err(StoreError::UserNotFound(name)) => {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!("{name} has no sluice account and identity.oidc.create_users is off"),
                ))
            }
            Err(StoreError::IdentityMismatch(name)) => {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!("{name} is bound to another account at the identity provider"),
                ))
            }
            Err(StoreError::UserExists(name)) => {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!("{name} is a local account; the provider cannot sign in as it (an administrator can link it: identity.oidc.create_users: false)"),
                ))
            }
            Err(e) => return Err(Refusal::unavailable(e)),
        };
        self.grant(&user, method, addr, None, provider_refresh, self.login_ttl)
            .await
    }

    async fn user(&self, name: &str) -> Result<User, Refusal> {
        let store = self.store.clone();
        let key = name.to_owned();
        match tokio::task::spawn_blocking(move || store.get_user(&key)).await {
            Ok(Ok(Some(user))) => Ok(user),
            Ok(Ok(None)) => Err(Refusal::unauthorized(format!("no user {name:?}"))),
            _ => Err(Refusal::unavailable("metadata store unavailable")),
        }
    }

    /// Issues the token (and refresh handle) and records the sign-in.
    async fn grant(
        &self,
        user: &User,
        method: &str,
        addr: &str,
        subject: Option<String>,
        provider_refresh: Option<&str>,
        ttl: Duration,
    ) -> Result<Granted, Refusal> {
        let (tokens, refreshes) = (self.tokens.clone(), self.refreshes.clone());
        let name = user.name.clone();
        let kind = if method == "workload" {
            TokenKind::Workload
        } else {
            TokenKind::Login
        };
        let provider_refresh = provider_refresh.map(str::to_owned);
        let refresh_ttl = self.refresh_ttl;
        let issued = tokio::task::spawn_blocking(move || {
            let token = tokens.issue_kind(&name, ttl, kind)?;
            let refresh = provider_refresh
                .map(|r| refreshes.issue(&name, &r, refresh_ttl))
                .transpose()?;
            Ok::<_, AuthError>((token, refresh))
        })
        .await
        .map_err(Refusal::unavailable)?;
        let (token, refresh_token) = issued.map_err(|e| {
            warn!(error = %e, "cannot issue a sign-in token");
            Refusal::unavailable("cannot issue a token")
        })?;
        self.audit.append(Event::now(
            None,
            EventBody::SignIn {
                user: user.name.clone(),
                actor: user.actor.as_str().into(),
                method: method.into(),
                groups: user.groups.clone(),
                role: user.role.as_str().into(),
                token_id: token.id.clone(),
                client_addr: addr.into(),
                subject,
            },
        ));
        Ok(Granted {
            token_id: token.id,
            token: token.token,
            user: user.name.clone(),
            actor: user.actor,
            role: user.role,
            groups: user.groups.clone(),
            expires: token.expires,
            refresh_token,
        })
    }

    /// Records a refusal and hands it back.
    fn refused(&self, user: &str, method: &str, addr: &str, refusal: Refusal) -> Refusal {
        self.audit.append(Event::now(
            None,
            EventBody::SignInFailure {
                user: clip(user),
                method: method.into(),
                client_addr: addr.into(),
                reason: clip(&refusal.message),
            },
        ));
        refusal
    }

    /// Counts a password attempt for `user` before it is checked; `false` when the user
    /// name is locked out. A successful check clears the count.
    fn begin_attempt(&self, user: &str) -> bool {
        let mut attempts = lock(&self.attempts);
        if attempts.len() >= MAX_PENDING {
            attempts.retain(|_, (_, since)| since.elapsed() < LOCKOUT_WINDOW);
            if attempts.len() >= MAX_PENDING {
                // Still full of live entries: start over rather than grow without bound
                // (each entry cost its sender a password check).
                attempts.clear();
            }
        }
        let entry = attempts
            .entry(user.to_owned())
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= LOCKOUT_WINDOW {
            *entry = (0, Instant::now());
        }
        if entry.0 >= MAX_FAILURES {
            return false;
        }
        entry.0 += 1;
        true
    }
}

/// When `map` is full, the entry that is oldest (or closest to expiry) by `age` gives way,
/// so a flood of anonymous starts cannot lock everyone out for the whole sign-in window.
fn make_room<V>(map: &mut HashMap<String, V>, age: impl Fn(&V) -> Instant) {
    if map.len() < MAX_PENDING {
        return;
    }
    let oldest = map
        .iter()
        .min_by_key(|(_, v)| age(v))
        .map(|(k, _)| k.clone());
    if let Some(oldest) = oldest {
        map.remove(&oldest);
    }
}

impl Pending {
    fn expire(&mut self) {
        let now = Instant::now();
        self.logins
            .retain(|_, l| l.started.elapsed() < LOGIN_WINDOW);
        self.handoffs
            .retain(|_, h| h.made.elapsed() < HANDOFF_WINDOW);
        self.devices.retain(|_, d| d.expires > now);
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `text` cut to `MAX_RECORDED` bytes (on a character boundary) for the record.
fn clip(text: &str) -> String {
    let kept = sluice_core::text::clip(text, MAX_RECORDED);
    if kept.len() == text.len() {
        return text.to_owned();
    }
    format!("{kept}…")
}

/// The cookie naming the browser a sign-in started in.
pub const BROWSER_COOKIE: &str = "sluice_login";

/// 256 random bits, base64url: states, nonces, verifiers, one-time codes.
fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The PKCE S256 challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
