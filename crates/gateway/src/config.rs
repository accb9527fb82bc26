//! The configuration file: the only place that knows its format.
//!
//! One YAML file (see `sluice.example.yaml`), strict: unknown keys and bad values are
//! errors naming the key. A few settings can be overridden by environment variables
//! (`SLUICE_DATA_DIR`, `SLUICE_LISTEN_POSTGRES`, `SLUICE_LISTEN_API`,
//! `SLUICE_AUDIT_DURABILITY`) so the same file works across environments.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sluice_mask::MaskRuleSpec;
use sluice_policy::{Policy, Principal, RuleSpec, Unparsed};

/// Used when no `--config` is given: a working single-process install against the
/// PostgreSQL on this machine.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default-config.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub connections: Vec<Connection>,
    /// Per-statement rules, checked in order; the first that matches decides.
    #[serde(default)]
    pub policies: Vec<RuleSpec>,
    #[serde(default)]
    pub notifications: Notifications,
    /// Masking of sensitive values in results, per connection and identity.
    #[serde(default)]
    pub masking: Vec<MaskRuleSpec>,
    /// Sign-in: token lifetimes, an OpenID Connect provider, trusted workload issuers.
    #[serde(default)]
    pub identity: IdentityConfig,
}

/// How people and machines prove who they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Lifetime of the sluice token issued at sign-in (password or identity provider).
    #[serde(default = "default_login_ttl", with = "humantime_serde_compat")]
    pub login_ttl: Duration,
    /// How long a sign-in through the identity provider can be renewed without signing in
    /// again (each renewal asks the provider, so a disabled account stops at once).
    #[serde(default = "default_refresh_ttl", with = "humantime_serde_compat")]
    pub refresh_ttl: Duration,
    /// The gateway API's address as browsers reach it, e.g. `https://sluice.example.com`;
    /// the identity provider redirects to `PUBLIC_URL/auth/oidc/callback`. Default:
    /// `http://` + `listen.api`.
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// External JWTs (a CI provider's OIDC token, a cloud workload identity) exchanged
    /// for short-lived tokens of a service account.
    #[serde(default)]
    pub workload: Vec<WorkloadTrust>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            login_ttl: default_login_ttl(),
            refresh_ttl: default_refresh_ttl(),
            public_url: None,
            oidc: None,
            workload: Vec::new(),
        }
    }
}

/// An OpenID Connect provider for people (authorization code with PKCE, device flow).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; discovery is read from `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Literal, `env:NAME` or `file:PATH`; absent for a public client.
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Claim that names the sluice user (`email`, `preferred_username`, `sub`, …).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Claim with the user's groups (an array of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Provider group → sluice group. Unlisted groups are dropped unless
    /// `keep_unmapped_groups` is true (then they keep their name, and anyone who can
    /// create a group at the provider can name one like a sluice group).
    #[serde(default)]
    pub group_map: HashMap<String, String>,
    #[serde(default)]
    pub keep_unmapped_groups: bool,
    /// Only members of one of these sluice groups (exact names) may sign in (empty:
    /// anyone the provider authenticates).
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Sluice groups whose members get role `admin` / `auditor` (else `user`).
    #[serde(default)]
    pub admin_groups: Vec<String>,
    #[serde(default)]
    pub auditor_groups: Vec<String>,
    /// Create users at their first sign-in; otherwise they must exist (`sluice users add`).
    #[serde(default = "default_true")]
    pub create_users: bool,
    /// CA bundle for a provider whose certificate is not publicly trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// One trusted issuer of workload tokens, bound to a service account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadTrust {
    /// Shown in audit events.
    pub name: String,
    pub issuer: String,
    /// The token's `aud` must contain this.
    pub audience: String,
    /// Glob on the token's `sub`, e.g. `repo:acme/app:ref:refs/heads/main`.
    pub subject: String,
    /// Further claims that must equal these values (e.g. `repository_owner: acme`).
    #[serde(default)]
    pub claims: HashMap<String, String>,
    /// The service account the token is exchanged for.
    pub service_account: String,
    /// Key set URL; default: from the issuer's discovery document.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Lifetime of the sluice token given in exchange.
    #[serde(default = "default_workload_ttl", with = "humantime_serde_compat")]
    pub token_ttl: Duration,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl IdentityConfig {
    fn validate(&self) -> Result<()> {
        let day = Duration::from_secs(24 * 3600);
        if self.login_ttl < Duration::from_secs(60) || self.login_ttl > 7 * day {
            bail!("identity.login_ttl: must be between 1m and 7d");
        }
        if self.refresh_ttl > 366 * day {
            bail!("identity.refresh_ttl: at most 366d");
        }
        if let Some(url) = &self.public_url {
            check_url(url, "identity.public_url", true)?;
        }
        if let Some(oidc) = &self.oidc {
            check_url(&oidc.issuer, "identity.oidc.issuer", false)?;
            if oidc.client_id.is_empty() {
                bail!("identity.oidc.client_id: must not be empty");
            }
            if !oidc.scopes.iter().any(|s| s == "openid") {
                bail!("identity.oidc.scopes: must include openid");
            }
            for (from, to) in &oidc.group_map {
                if from.is_empty() || to.is_empty() {
                    bail!("identity.oidc.group_map: empty group name");
                }
            }
        }
        let mut names = HashSet::new();
        for (i, w) in self.workload.iter().enumerate() {
            let at = |field: &str| format!("identity.workload[{i}].{field}");
            if !names.insert(w.name.as_str()) || w.name.is_empty() {
                bail!("{}: empty or duplicate name {:?}", at("name"), w.name);
            }
            check_url(&w.issuer, &at("issuer"), false)?;
            if let Some(jwks) = &w.jwks_uri {
                check_url(jwks, &at("jwks_uri"), false)?;
            }
            if w.audience.is_empty() {
                bail!("{}: must not be empty", at("audience"));
            }
            if w.subject.is_empty() {
                bail!(
                    "{}: must not be empty (use a glob such as repo:acme/*)",
                    at("subject")
                );
            }
            if w.token_ttl < Duration::from_secs(60) || w.token_ttl > day {
                bail!("{}: must be between 1m and 24h", at("token_ttl"));
            }
        }
        Ok(())
    }
}

/// Agent names: what `sluice agents add` accepts.
pub fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
}

/// `https://…`, or `http://` on a loopback host (tests, a provider beside the gateway).
pub(crate) fn check_url(url: &str, key: &str, http_anywhere: bool) -> Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("{key}: {url:?} is not a URL"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => bail!("{key}: {url:?} has no host"),
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || http_anywhere => Ok(()),
        _ => bail!("{key}: {url:?} must be https:// (http:// only on loopback)"),
    }
}

fn default_login_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_refresh_ttl() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_workload_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile", "groups"]
        .map(String::from)
        .to_vec()
}

fn default_username_claim() -> String {
    "email".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_true() -> bool {
    true
}

/// Where review events are sent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notifications {
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
}

/// One outgoing webhook.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://` or `https://` URL (receivers' TLS certificates are verified).
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// HMAC-SHA256 signing key: literal, `env:NAME` or `file:PATH`.
    #[serde(default)]
    pub secret: Option<String>,
    /// `review_created`, `review_decided`; absent: both.
    #[serde(default)]
    pub events: Vec<String>,
}

/// Never prints the URL's path (Slack-style URLs carry a secret there) or the secret.
impl std::fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin: String = self.url.split('/').take(3).collect::<Vec<_>>().join("/");
        f.debug_struct("WebhookSpec")
            .field("url", &format!("{origin}/…"))
            .field("format", &self.format)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": …, "review": {…}, "review_url": …}`.
    #[default]
    Json,
    /// `{"text": …}`, for Slack incoming webhooks and compatible receivers.
    Slack,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "default_api")]
    pub api: SocketAddr,
    #[serde(default = "default_postgres")]
    pub postgres: SocketAddr,
    /// Where remote agents dial in (TLS with the gateway's certificate); absent: no
    /// remote agents.
    #[serde(default)]
    pub tunnel: Option<SocketAddr>,
    /// Where AWS clients send requests (`AWS_ENDPOINT_URL=http://ADDR`); needed by
    /// `kind: aws` connections.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// The host name S3 clients use for virtual-hosted addressing
    /// (`BUCKET.s3.sluice.example.com`); absent: path-style only.
    #[serde(default)]
    pub s3_virtual_host: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            api: default_api(),
            postgres: default_postgres(),
            tunnel: None,
            http: None,
            s3_virtual_host: None,
        }
    }
}

/// Certificate and key (PEM) for client-facing TLS; generated under `data_dir` if absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub durability: Durability,
}

/// When a statement may be forwarded relative to its audit record reaching the disk.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the record is fsynced (group commit): survives power loss, at the cost of
    /// one device flush of latency per statement.
    Fsync,
    /// After the record is written to the OS (the design's promise: a killed gateway
    /// loses nothing); fsync follows in groups within 20 ms.
    #[default]
    Write,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest Query/Parse/Bind message accepted from a client.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Client connections served at once (authenticated or not).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message(),
            max_connections: default_max_connections(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    /// AWS APIs (S3, Lambda, any SigV4 service): clients sign with a sluice key on
    /// `listen.http`, the agent signs again with the real credential.
    Aws,
    /// A plain HTTP API: clients send their sluice token as a bearer token to
    /// `listen.http` under `/CONNECTION/`, the agent adds the API's own credentials.
    Http,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Aws => "aws",
            Kind::Http => "http",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub name: String,
    pub kind: Kind,
    /// `embedded` (the default) or, later, the name of a remote agent.
    #[serde(default = "default_agent")]
    pub agent: String,
    /// `host:port` of the target (`kind: postgres`).
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub database: String,
    #[serde(default)]
    pub user: String,
    /// Literal, `env:NAME` or `file:PATH`; resolved by the agent at connect time.
    #[serde(default)]
    pub password: Option<String>,
    /// `kind: aws`: the region requests are signed for.
    #[serde(default)]
    pub region: Option<String>,
    /// `kind: aws`: the services it serves, by signing name (`s3`, `lambda`, `dynamodb`, …).
    #[serde(default)]
    pub services: Vec<String>,
    /// `kind: aws`: where requests go (an S3-compatible server, a VPC endpoint), e.g.
    /// `https://s3.internal:9000`. Absent: AWS's endpoint for the service and region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `kind: aws`: the real credential, resolved by the agent like `password`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
    /// `kind: aws`: sign as this role (STS AssumeRole with the credential above).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// `kind: aws` with `role_arn`: the external id the role's trust policy asks for.
    #[serde(default)]
    pub external_id: Option<String>,
    /// `kind: aws` with `role_arn`: where STS is (default `https://sts.REGION.amazonaws.com`).
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// `kind: http`: the API's base URL, e.g. `https://billing.internal/api`.
    #[serde(default)]
    pub url: Option<String>,
    /// `kind: http`: headers added to every request, e.g. `Authorization: Bearer
    /// env:API_TOKEN` (a trailing `env:NAME` / `file:PATH` is resolved by the agent).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// CA bundle for `tls: verify-full`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Who may open sessions: `user:NAME`, `group:NAME`, `agent:NAME`, `agent:*`. Absent:
    /// every authenticated user.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// What happens to a statement sluice cannot parse when policies cover this connection.
    #[serde(default)]
    pub unparsed_statements: UnparsedStatements,
    /// Sessions need an approved, time-boxed access request (`sluice access request`).
    #[serde(default)]
    pub require_access_request: bool,
    /// Who may approve access requests for this connection (`user:`, `group:`).
    #[serde(default)]
    pub access_reviewers: Vec<String>,
}

impl Connection {
    /// The first field set that belongs to another kind of connection.
    fn foreign_field(&self) -> Option<&'static str> {
        let fields = [
            ("address", Kind::Postgres, !self.address.is_empty()),
            ("database", Kind::Postgres, !self.database.is_empty()),
            ("user", Kind::Postgres, !self.user.is_empty()),
            ("password", Kind::Postgres, self.password.is_some()),
            ("region", Kind::Aws, self.region.is_some()),
            ("services", Kind::Aws, !self.services.is_empty()),
            ("endpoint", Kind::Aws, self.endpoint.is_some()),
            ("access_key_id", Kind::Aws, self.access_key_id.is_some()),
            (
                "secret_access_key",
                Kind::Aws,
                self.secret_access_key.is_some(),
            ),
            ("session_token", Kind::Aws, self.session_token.is_some()),
            ("role_arn", Kind::Aws, self.role_arn.is_some()),
            ("external_id", Kind::Aws, self.external_id.is_some()),
            ("sts_endpoint", Kind::Aws, self.sts_endpoint.is_some()),
            ("url", Kind::Http, self.url.is_some()),
            ("headers", Kind::Http, !self.headers.is_empty()),
        ];
        fields
            .into_iter()
            .find(|(_, kind, set)| *set && *kind != self.kind)
            .map(|(field, _, _)| field)
    }

    /// Who may approve access requests for this connection.
    pub fn access_reviewers(&self) -> Vec<Principal> {
        self.access_reviewers
            .iter()
            .filter_map(|p| Principal::parse(p).ok())
            .collect()
    }

    /// What policy does with statements it cannot parse on this connection.
    pub fn unparsed(&self) -> Unparsed {
        match self.unparsed_statements {
            UnparsedStatements::Deny => Unparsed::Deny,
            UnparsedStatements::Allow => Unparsed::Allow,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnparsedStatements {
    #[default]
    Deny,
    Allow,
}

/// Never prints a literal password.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self.password.as_deref().map(|p| {
            if p.starts_with("env:") || p.starts_with("file:") {
                p
            } else {
                "<literal>"
            }
        });
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &password)
            .field("tls", &self.tls)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyFull,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./sluice-data")
}
fn default_api() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_postgres() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15432))
}
fn default_agent() -> String {
    "embedded".into()
}
fn default_max_message() -> usize {
    64 << 20
}
fn default_max_connections() -> usize {
    1000
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `connect_timeout: 5s` style durations.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Reads `path` (or the embedded default), applies environment overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (
                EMBEDDED_DEFAULT.to_owned(),
                "embedded default config".to_owned(),
            ),
        };
        let mut config: Config =
            serde_yaml_ng::from_str(&text).with_context(|| format!("invalid config ({origin})"))?;
        config
            .apply_env()
            .with_context(|| format!("invalid environment override for {origin}"))?;
        config
            .validate()
            .with_context(|| format!("invalid config ({origin})"))?;
        Ok(config)
    }

    fn apply_env(&mut self) -> Result<()> {
        if let Ok(v) = std::env::var("SLUICE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Ok(v) = std::env::var("SLUICE_LISTEN_POSTGRES") {
            self.listen.postgres = v.parse().context("SLUICE_LISTEN_POSTGRES")?;
        }
        if let Ok(v) = std::env::var("SLUICE_LISTEN_API") {
            self.listen.api = v.parse().context("SLUICE_LISTEN_API")?;
        }
        if let Ok(v) = std::env::var("SLUICE_LISTEN_TUNNEL") {
            self.listen.tunnel = Some(v.parse().context("SLUICE_LISTEN_TUNNEL")?);
        }
        if let Ok(v) = std::env::var("SLUICE_LISTEN_HTTP") {
            self.listen.http = Some(v.parse().context("SLUICE_LISTEN_HTTP")?);
        }
        if let Ok(v) = std::env::var("SLUICE_AUDIT_DURABILITY") {
            self.audit.durability = match v.as_str() {
                "fsync" => Durability::Fsync,
                "write" => Durability::Write,
                other => bail!("SLUICE_AUDIT_DURABILITY: expected fsync or write, got {other:?}"),
            };
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if !self.listen.api.ip().is_loopback() {
            // The API takes bearer tokens and is served without TLS today.
            bail!("listen.api: {} is not a loopback address; the API is served without TLS, so it must stay on loopback", self.listen.api);
        }
        if self.limits.max_message_bytes < 1024 {
            bail!("limits.max_message_bytes: must be at least 1024");
        }
        if self.limits.max_connections == 0 {
            bail!("limits.max_connections: must be at least 1");
        }
        let mut names = HashSet::new();
        for (i, c) in self.connections.iter().enumerate() {
            let at = |field: &str| format!("connections[{i}].{field}");
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
            {
                bail!(
                    "{}: {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                    at("name"),
                    c.name
                );
            }
            if !names.insert(c.name.as_str()) {
                bail!("{}: duplicate connection name {:?}", at("name"), c.name);
            }
            if c.agent != "embedded" {
                if self.listen.tunnel.is_none() {
                    bail!(
                        "{}: agent {:?} is remote, so listen.tunnel must be set for it to dial in",
                        at("agent"),
                        c.agent
                    );
                }
                if !valid_agent_name(&c.agent) {
                    bail!(
                        "{}: {:?} must use only letters, digits, '-', '_' and '.'",
                        at("agent"),
                        c.agent
                    );
                }
            }
            if let Some(field) = c.foreign_field() {
                bail!(
                    "{}: kind: {} connections do not take it",
                    at(field),
                    c.kind.as_str()
                );
            }
            match c.kind {
                Kind::Postgres => {
                    match c.address.rsplit_once(':') {
                        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                        _ => bail!("{}: {:?} must be host:port", at("address"), c.address),
                    }
                    for (field, set) in [
                        ("database", c.database.is_empty()),
                        ("user", c.user.is_empty()),
                    ] {
                        if set {
                            bail!("{}: required for kind: postgres", at(field));
                        }
                    }
                }
                Kind::Aws => self.validate_aws(c, &at)?,
                Kind::Http => self.validate_http(c, &at)?,
            }
            if c.tls == UpstreamTls::VerifyFull && c.ca_file.is_none() {
                bail!("{}: tls: verify-full needs ca_file", at("ca_file"));
            }
            for p in c.allow.iter().flatten() {
                Principal::parse(p)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| at("allow"))?;
            }
            for p in &c.access_reviewers {
                match Principal::parse(p) {
                    Ok(Principal::Agent(_)) => {
                        bail!(
                            "{}: agents cannot approve access requests",
                            at("access_reviewers")
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(anyhow::Error::msg(e)).with_context(|| at("access_reviewers"))
                    }
                }
            }
            if c.require_access_request && c.access_reviewers.is_empty() {
                bail!(
                    "{}: require_access_request needs access_reviewers, or nobody could ever connect",
                    at("access_reviewers")
                );
            }
        }
        self.policy().context("policies")?;
        sluice_mask::Masking::new(&self.masking, Vec::new()).context("masking")?;
        self.identity.validate()?;
        crate::webhooks::Notifier::validate(&self.notifications.webhooks)?;
        Ok(())
    }

    fn validate_http(&self, c: &Connection, at: &dyn Fn(&str) -> String) -> Result<()> {
        if self.listen.http.is_none() {
            bail!(
                "{}: kind: http needs listen.http, where clients send their requests",
                at("kind")
            );
        }
        let Some(url) = &c.url else {
            bail!("{}: kind: http needs the API's base URL", at("url"));
        };
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("{}: {url:?} is not a URL", at("url")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.host().is_none()
            || uri.query().is_some()
        {
            bail!(
                "{}: {url:?} must be http(s)://HOST[:PORT][/PATH]",
                at("url")
            );
        }
        for (name, value) in &c.headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                bail!("{}: {name:?} is not a header name", at("headers"));
            }
            if matches!(
                name.to_ascii_lowercase().as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                bail!("{}: {name} is set by the gateway", at("headers"));
            }
            if value.contains(['\r', '\n']) {
                bail!("{}: the value of {name} has a line break", at("headers"));
            }
        }
        Ok(())
    }

    fn validate_aws(&self, c: &Connection, at: &dyn Fn(&str) -> String) -> Result<()> {
        if self.listen.http.is_none() {
            bail!(
                "{}: kind: aws needs listen.http, where AWS clients send their requests",
                at("kind")
            );
        }
        match c.region.as_deref() {
            Some(r)
                if !r.is_empty() && r.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-') => {
            }
            _ => bail!(
                "{}: kind: aws needs a region such as eu-west-1",
                at("region")
            ),
        }
        if c.services.is_empty() {
            bail!(
                "{}: name the services it serves, e.g. [s3, lambda]",
                at("services")
            );
        }
        if let Some(bad) = c.services.iter().find(|s| {
            s.is_empty()
                || !s
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        }) {
            bail!(
                "{}: {bad:?} is not a service signing name (s3, lambda, …)",
                at("services")
            );
        }
        if let Some(endpoint) = &c.endpoint {
            let uri: hyper::Uri = endpoint
                .parse()
                .with_context(|| format!("{}: {endpoint:?} is not a URL", at("endpoint")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https"))
                || uri.host().is_none()
                || !uri.path().trim_end_matches('/').is_empty()
            {
                bail!(
                    "{}: {endpoint:?} must be http(s)://HOST[:PORT], without a path",
                    at("endpoint")
                );
            }
        }
        match (&c.role_arn, &c.external_id, &c.sts_endpoint) {
            (Some(arn), _, _) if !arn.starts_with("arn:") => {
                bail!(
                    "{}: {arn:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
                    at("role_arn")
                )
            }
            (None, Some(_), _) | (None, _, Some(_)) => {
                bail!(
                    "{}: external_id and sts_endpoint go with role_arn",
                    at("role_arn")
                )
            }
            _ => {}
        }
        if let Some(sts) = &c.sts_endpoint {
            let uri: hyper::Uri = sts
                .parse()
                .with_context(|| format!("{}: {sts:?} is not a URL", at("sts_endpoint")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                bail!(
                    "{}: {sts:?} must be http(s)://HOST[:PORT]",
                    at("sts_endpoint")
                );
            }
        }
        if c.access_key_id.is_none() || c.secret_access_key.is_none() {
            bail!(
                "{}: kind: aws needs access_key_id and secret_access_key (env:NAME or file:PATH)",
                at("access_key_id")
            );
        }
        Ok(())
    }

    /// The validated policy rules.
    pub fn policy(&self) -> Result<Policy> {
        let connections: Vec<(String, Unparsed)> = self
            .connections
            .iter()
            .map(|c| (c.name.clone(), c.unparsed()))
            .collect();
        Ok(Policy::new(&self.policies, &connections)?)
    }

    /// The key of the `hash` masking style: made on first use, kept in `data_dir`, so
    /// equal values hash alike across restarts.
    pub fn masking_key(&self) -> Result<Vec<u8>> {
        self.key_file("masking.key")
    }

    /// The key that seals secrets kept in the store (identity providers' refresh tokens).
    pub fn sealing_key(&self) -> Result<[u8; 32]> {
        let key = self.key_file("sealing.key")?;
        key.get(..32)
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .context("sealing.key: too short")
    }

    /// The key of the console's CSRF tokens.
    pub fn console_key(&self) -> Result<[u8; 32]> {
        let key = self.key_file("console.key")?;
        key.get(..32)
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .context("console.key: too short")
    }

    /// A random 32-byte key kept in `data_dir/NAME` (mode 0600), made on first use.
    fn key_file(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.data_dir.join(name);
        match std::fs::read(&path) {
            Ok(key) if key.len() >= 32 => return Ok(key),
            Ok(_) => bail!("{}: too short; delete it to make a new key", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let key: [u8; 32] = rand::random();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut f) => {
                std::io::Write::write_all(&mut f, &key)
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(key.to_vec())
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }

    /// The validated masking rules, keyed for the `hash` style.
    pub fn masking(&self) -> Result<Option<std::sync::Arc<sluice_mask::Masking>>> {
        if self.masking.is_empty() {
            return Ok(None);
        }
        let masking = sluice_mask::Masking::new(&self.masking, self.masking_key()?)?;
        Ok(Some(std::sync::Arc::new(masking)))
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("sluice.db")
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.data_dir.join("audit")
    }

    /// Who may use each connection (`None`: everyone authenticated).
    pub fn allow_lists(&self) -> HashMap<String, Option<Vec<Principal>>> {
        self.connections
            .iter()
            .map(|c| {
                let allow = c.allow.as_ref().map(|list| {
                    list.iter()
                        .filter_map(|p| Principal::parse(p).ok())
                        .collect()
                });
                (c.name.clone(), allow)
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config> {
        let config: Config = serde_yaml_ng::from_str(yaml)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn the_example_config_is_valid() {
        let config = parse(include_str!("../../../sluice.example.yaml")).unwrap();
        assert!(!config.policies.is_empty());
        assert_eq!(config.notifications.webhooks.len(), 1);
        let debug = format!("{:?}", config.notifications.webhooks[0]);
        assert!(!debug.contains("/sluice"), "{debug}");
    }

    #[test]
    fn aws_connections_are_checked() {
        let ok = "listen: { http: 127.0.0.1:18080 }\nconnections:\n  - { name: a, kind: aws, region: eu-west-1, services: [s3], access_key_id: env:K, secret_access_key: env:S";
        parse(&format!("{ok} }}\n")).unwrap();
        // A remote agent may serve it, once agents can dial in.
        parse(
            &format!("{ok}, agent: vpc }}\n").replace("18080 }", "18080, tunnel: 127.0.0.1:8443 }"),
        )
        .unwrap();
        let bad = [
            (
                ok.replace("listen: { http: 127.0.0.1:18080 }", "listen: {}"),
                "listen.http",
            ),
            (format!("{ok}, agent: vpc }}"), "listen.tunnel"),
            (format!("{ok}, address: 'h:1' }}"), "connections[0].address"),
            (
                format!("{ok}, endpoint: 'http://h:9000/path' }}"),
                "without a path",
            ),
            (ok.replace("region: eu-west-1, ", ""), "region"),
            (ok.replace("services: [s3]", "services: []"), "services"),
            (
                ok.replace("services: [s3]", "services: [S3]"),
                "signing name",
            ),
            (
                ok.replace(", secret_access_key: env:S", ""),
                "secret_access_key",
            ),
            (format!("{ok}, role_arn: admin }}"), "not a role ARN"),
            (format!("{ok}, external_id: x }}"), "go with role_arn"),
            (
                format!("{ok}, role_arn: 'arn:aws:iam::1:role/r', sts_endpoint: 'ftp://x' }}"),
                "sts_endpoint",
            ),
        ];
        for (yaml, expected) in bad {
            let yaml = if yaml.ends_with('}') {
                yaml
            } else {
                format!("{yaml} }}")
            };
            let err = format!("{:#}", parse(&format!("{yaml}\n")).unwrap_err());
            assert!(err.contains(expected), "{yaml}: {err}");
        }
        let err = format!(
            "{:#}",
            parse("connections:\n  - { name: p, kind: postgres, address: 'h:1', database: d, user: u, region: x }\n")
                .unwrap_err()
        );
        assert!(err.contains("connections[0].region"), "{err}");
    }

    #[test]
    fn identity_settings_are_checked() {
        let example = parse(include_str!("../../../sluice.example.yaml")).unwrap();
        let oidc = example.identity.oidc.as_ref().unwrap();
        assert!(!format!("{oidc:?}").contains("OIDC_CLIENT_SECRET"));
        assert_eq!(example.identity.workload.len(), 1);
        let bad = [
            ("identity: { oidc: { issuer: 'http://idp.example.com', client_id: s } }", "https://"),
            ("identity: { oidc: { issuer: 'https://idp', client_id: '' } }", "client_id"),
            ("identity: { oidc: { issuer: 'https://idp', client_id: s, scopes: [email] } }", "openid"),
            ("identity: { login_ttl: 10s }", "login_ttl"),
            ("identity: { public_url: 'ftp://x' }", "public_url"),
            ("identity: { oidc: { issuer: 'https://idp', client_id: s, clientsecret: x } }", "clientsecret"),
            ("identity: { workload: [{ name: a, issuer: 'https://i', audience: x, subject: '', service_account: s }] }", "subject"),
            ("identity: { workload: [{ name: a, issuer: 'https://i', audience: x, subject: '*', service_account: s, token_ttl: 2d }] }", "token_ttl"),
            ("identity: { workload: [{ name: a, issuer: 'https://i', audience: x, subject: '*', service_account: s }, { name: a, issuer: 'https://j', audience: x, subject: '*', service_account: s }] }", "duplicate"),
        ];
        for (yaml, named) in bad {
            let err = format!("{:#}", parse(yaml).unwrap_err());
            assert!(err.contains(named), "{yaml}: {err}");
        }
        // http is fine for a provider on loopback (a test provider, a sidecar).
        parse("identity: { oidc: { issuer: 'http://127.0.0.1:9000', client_id: s } }").unwrap();
    }

    #[test]
    fn debug_never_shows_a_literal_password() {
        let c = parse("connections:\n  - {name: a, kind: postgres, address: h:1, database: d, user: u, password: hunter2}\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = parse(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(c.listen.postgres.port(), 15432);
        assert!(c.listen.postgres.ip().is_loopback());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("connections:\n  - name: a\n    kind: postgres\n    address: h:1\n    database: d\n    user: u\n    pasword: x\n")
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("pasword"), "{text}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse(
            "connections:\n  - {name: a, kind: postgres, address: nohost, database: d, user: u}\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("connections[0].address"));
        let err = parse(
            "connections:\n  - {name: a, kind: oracle, address: h:1, database: d, user: u}\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("oracle"));
        let err = parse("listen: {postgres: 'not an address'}\n").unwrap_err();
        assert!(format!("{err:#}").contains("listen"));
        let err = parse("connections:\n  - {name: a, kind: postgres, address: h:1, database: d, user: u}\n  - {name: a, kind: postgres, address: h:1, database: d, user: u}\n").unwrap_err();
        assert!(format!("{err:#}").contains("duplicate"));
        let err = parse("connections:\n  - {name: a, kind: postgres, address: h:1, database: d, user: u, allow: [everyone]}\n").unwrap_err();
        assert!(format!("{err:#}").contains("allow"));
        for (yaml, expected) in [
            (
                "masking:\n  - {name: pii, detectors: [emial]}\n",
                "masking rule pii: unknown detector \"emial\"",
            ),
            (
                "masking:\n  - {name: pii, columns: [users.email]}\n",
                "must be `schema.table.column`",
            ),
            (
                "masking:\n  - {name: pii, columns: [\"*.t.c\"], style: scramble}\n",
                "style: scramble",
            ),
            (
                "masking:\n  - {name: pii, detectors: [{name: x, regex: \"(\"}]}\n",
                "detector \"x\"",
            ),
            (
                "masking:\n  - {name: pii}\n",
                "names none of `columns`, `fields` and `detectors`",
            ),
            (
                "masking:\n  - {name: pii, columns: [\"*.t.c\"], except: [everyone]}\n",
                "except",
            ),
        ] {
            let err = format!("{:#}", parse(yaml).unwrap_err());
            assert!(
                err.contains("masking") && err.contains(expected),
                "{yaml}: {err}"
            );
        }
    }
}
