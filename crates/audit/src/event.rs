//! The audit event schema: one variant per event kind. This is the single place that decides
//! how an event looks on disk; `EVENTS.md` documents it field by field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
pub use sluice_core::AgentContext;

/// One audited occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened, stored as RFC 3339 UTC with microseconds (finer digits are dropped).
    #[serde(with = "rfc3339_micros")]
    pub time: SystemTime,
    /// The session it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub session: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// An event stamped with the current time, truncated to the microseconds that are stored,
    /// so that the event reads back equal to itself.
    pub fn now(session: Option<String>, body: EventBody) -> Event {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let micros = Duration::new(
            since_epoch.as_secs(),
            since_epoch.subsec_micros().saturating_mul(1_000),
        );
        Event {
            time: UNIX_EPOCH + micros,
            session,
            body,
        }
    }
}

fn human() -> std::borrow::Cow<'static, str> {
    std::borrow::Cow::Borrowed("human")
}

/// The kind-specific part of an event; `kind` on disk names the variant in snake_case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A client session was authenticated and opened.
    SessionOpen {
        /// Database user the session acts as.
        user: String,
        /// `"human"` or `"agent"`.
        actor: String,
        /// Name of the configured connection (target database).
        connection: String,
        /// Wire protocol, e.g. `"postgres"`.
        protocol: String,
        /// Client socket address.
        client_addr: String,
        /// Whether the client connection uses TLS.
        tls: bool,
        /// Client-supplied application name.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        application_name: Option<String>,
        /// Other settings the client asked for at startup (e.g. `options: -c role=x`).
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        settings: Vec<(String, String)>,
        /// The agent context the whole session runs under (an MCP tool call's).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        context: Option<Box<AgentContext>>,
        /// The remote agent that opened the target connection (`NAME (ADDRESS)`), when
        /// not the gateway itself.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        served_by: Option<String>,
    },
    /// A session ended.
    SessionClose {
        /// Why it ended, if not a normal client disconnect.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        reason: Option<String>,
        /// Number of statements the session submitted.
        statements: u64,
    },
    /// A client failed to authenticate.
    AuthFailure {
        /// User name the client claimed.
        user: String,
        /// Connection the client asked for.
        connection: String,
        /// Wire protocol.
        protocol: String,
        /// Client socket address.
        client_addr: String,
        /// Why authentication failed.
        reason: String,
    },
    /// Someone signed in and was given a sluice token (password, identity provider,
    /// refresh, workload token exchange).
    SignIn {
        user: String,
        /// `"human"` or `"agent"`.
        actor: String,
        /// `password`, `oidc`, `device`, `refresh` or `workload`.
        method: String,
        /// The user's groups as of this sign-in.
        groups: Vec<String>,
        /// `admin`, `auditor` or `user`.
        role: String,
        /// Public id of the token issued.
        token_id: String,
        /// Client address as the API saw it.
        client_addr: String,
        /// For `workload`: the external token's issuer and subject.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        subject: Option<String>,
    },
    /// A sign-in was refused.
    SignInFailure {
        /// The user claimed or established before the refusal; empty when none was.
        user: String,
        method: String,
        client_addr: String,
        /// Why (never a credential).
        reason: String,
    },
    /// An authenticated caller was refused by their role or a rule (API or CLI verb).
    Denied {
        user: String,
        actor: String,
        role: String,
        /// What they tried, e.g. `GET /api/v1/sessions`.
        action: String,
        reason: String,
    },
    /// A remote agent's tunnel was accepted (its key checked).
    AgentConnected {
        agent: String,
        /// Where the tunnel came from, `ip:port`.
        address: String,
        /// The version the agent reported.
        version: String,
    },
    /// A remote agent's tunnel ended.
    AgentDisconnected {
        agent: String,
        address: String,
        /// Closed, failed, silent (heartbeats), or the key was revoked.
        reason: String,
    },
    /// A tunnel presented the key of a registered agent and was refused (the key is
    /// revoked). Unknown keys are only logged.
    AgentRefused {
        agent: String,
        address: String,
        reason: String,
    },
    /// A request, recorded before it is forwarded.
    Statement {
        /// Position of the statement within its session, from 1; with `session` it identifies the statement.
        statement_id: u64,
        /// Database user.
        user: String,
        /// `"human"` or `"agent"` (a service account): on every statement, so no reader
        /// has to join with the session to tell them apart. Borrowed when written (no
        /// allocation per statement), owned when read back.
        #[serde(default = "human")]
        actor: std::borrow::Cow<'static, str>,
        /// Connection name.
        connection: String,
        /// The statement text.
        statement: String,
        /// Bound parameters as text; `None` is SQL NULL.
        params: Vec<Option<String>>,
        /// `"allow"` or `"deny"`.
        decision: String,
        /// The policy rule that decided, when one did.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        rule: Option<String>,
        /// `true` when this defines a named prepared statement rather than running it.
        #[serde(skip_serializing_if = "std::ops::Not::not", default)]
        prepare: bool,
        /// The named prepared statement this defines or runs.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        statement_name: Option<String>,
        /// Why the policy decided so.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        reason: Option<String>,
        /// The review that held this statement, when one did.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        review: Option<ReviewRef>,
        /// The approved access request that lifted the matching review rule.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        access_request: Option<String>,
        /// What the agent or tool said about why (prompt, tool call, trace), when it did.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        context: Option<Box<AgentContext>>,
        /// For an API call (AWS, HTTP): service, action and resource.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        call: Option<Box<CallInfo>>,
    },
    /// A statement was held for review.
    ReviewCreated {
        review_id: String,
        /// The `statement_id` of the held statement within its session.
        statement_id: u64,
        rule: String,
        /// `"hold"` or `"fail"`.
        mode: String,
        requester: String,
        connection: String,
        statement: String,
        params: Vec<Option<String>>,
        /// SHA-256 (hex) of the normalized statement text and its parameters.
        statement_hash: String,
        reviewers: Vec<String>,
        min_approvals: u32,
        /// How long the review waits for a decision, in seconds.
        timeout_s: u64,
        /// The held statement's agent context, so reviewers see the prompt behind it.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        context: Option<Box<AgentContext>>,
    },
    /// A user asked for time-boxed access to a connection (or for a review rule to be lifted).
    AccessRequested {
        request_id: String,
        requester: String,
        connection: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        lift_rule: Option<String>,
        duration_s: u64,
        reason: String,
    },
    /// An access request was approved or denied.
    AccessDecided {
        request_id: String,
        /// `"approved"` or `"denied"`.
        status: String,
        by: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        reason: Option<String>,
        /// When an approved grant ends (RFC 3339).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        ends: Option<String>,
    },
    /// A review was decided or ended undecided.
    ReviewDecided {
        review_id: String,
        /// `"approved"`, `"denied"`, `"expired"` or `"withdrawn"`.
        status: String,
        /// Who decided (approvers comma-separated); absent when nobody did.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        by: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        reason: Option<String>,
    },
    /// How a statement ended.
    Result {
        /// The `statement_id` of the `Statement` event this completes.
        statement_id: u64,
        /// `"ok"`, `"error"` or `"not_executed"`.
        status: String,
        /// Command tag returned by the database, e.g. `"SELECT 3"`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        tag: Option<String>,
        /// Rows returned or affected.
        rows: u64,
        /// Wall time from forwarding to completion, in milliseconds. Must be finite.
        #[serde(serialize_with = "finite_f64")]
        duration_ms: f64,
        /// The database error, when `status` is `"error"`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        error: Option<ErrorInfo>,
        /// What masking changed in the answer, by column and by detector (counts only).
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        masked: Vec<MaskedInfo>,
        /// For an API call: the HTTP status and the bytes each way.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        transfer: Option<TransferInfo>,
    },
}

/// What an API call does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallInfo {
    /// `s3`, `lambda`, `http`, …
    pub service: String,
    /// The API action (`GetObject`) or HTTP method.
    pub action: String,
    /// What it acts on (`bucket/key`, a function, a path).
    pub resource: String,
    /// What else it reads (a copy's source).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
}

/// What an API call moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferInfo {
    /// HTTP status of the answer.
    pub status: u16,
    /// Request body bytes forwarded to the target.
    pub bytes_in: u64,
    /// Answer body bytes sent to the client.
    pub bytes_out: u64,
}

/// The review behind a statement's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewRef {
    pub id: String,
    /// `"approved"`, `"denied"`, `"expired"`, `"withdrawn"`, or `"pending"` (fail mode: the
    /// statement was refused and the review filed).
    pub status: String,
    /// Who decided (approvers comma-separated).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub by: Option<String>,
    /// When it was decided (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub at: Option<String>,
}

/// How many values one column rule or detector masked in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInfo {
    /// `schema.table.column`, for a column rule.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub column: Option<String>,
    /// The detector's name, for a content detector.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detector: Option<String>,
    /// `redact`, `partial`, `hash` or `null`.
    pub style: String,
    pub values: u64,
}

/// An error reported by the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// SQLSTATE code, e.g. `"42P01"`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// Refuses NaN and infinities, which JSON cannot represent (serde_json would write `null`,
/// a record that could never be read back).
fn finite_f64<S: serde::Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else {
        Err(serde::ser::Error::custom(format!(
            "duration_ms must be finite, got {value}"
        )))
    }
}

/// `SystemTime` as RFC 3339 UTC with exactly six fractional digits (for `#[serde(with)]`).
pub mod rfc3339_micros {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::{de, ser, Deserialize, Deserializer, Serializer};

    /// First second of year 10000, which RFC 3339 cannot express.
    const YEAR_10000: u64 = 253_402_300_800;

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        // humantime panics before 1970 and fails after 9999; check both first.
        match time.duration_since(UNIX_EPOCH) {
            Ok(since) if since.as_secs() < YEAR_10000 => {
                serializer.collect_str(&humantime::format_rfc3339_micros(*time))
            }
            _ => Err(ser::Error::custom(
                "event time must be between 1970 and 9999",
            )),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text)
            .map_err(|err| de::Error::custom(format!("invalid time {text:?}: {err}")))
    }
}
