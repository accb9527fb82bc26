//! Protocol-neutral vocabulary shared by the protocol frontends and the gateway pipeline.
//!
//! A frontend (PostgreSQL today; MySQL, HTTP/AWS and SSH later) turns wire traffic into
//! these types and hands them to a [`Pipeline`]. The pipeline decides, records and — later —
//! masks, without knowing which wire format carried the request. Nothing here does I/O.

pub mod context;
pub mod handshakes;
mod principal;
pub mod text;

pub use context::AgentContext;
pub use principal::{glob, glob_exact, Principal};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Whether a person or a non-human caller (AI agent, CI job, service account) acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Human,
    Agent,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Human => "human",
            ActorKind::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<ActorKind> {
        match text {
            "human" => Some(ActorKind::Human),
            "agent" => Some(ActorKind::Agent),
            _ => None,
        }
    }
}

/// What an identity may do with sluice itself (not with the data behind it: that is
/// `allow:` lists and policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Uses the connections their groups allow; sees their own sessions and the reviews
    /// they asked for or may decide.
    User,
    /// Reads sessions, reviews and the audit log; nothing else (no sessions of their own,
    /// no decisions).
    Auditor,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "auditor" => Some(Role::Auditor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// May read every session, review and audit record.
    pub fn reads_everything(self) -> bool {
        matches!(self, Role::Auditor | Role::Admin)
    }

    /// May open sessions, ask for access and decide reviews (as far as the rules allow).
    pub fn acts(self) -> bool {
        matches!(self, Role::User | Role::Admin)
    }
}

/// Who is asking: established by the frontend's authentication step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub actor: ActorKind,
    /// The id of the sluice token that established it, when one did: its sessions end
    /// when that token is revoked.
    pub credential: Option<String>,
}

/// One client session through the gateway, as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Random, unique id (hex); also the key of the session index.
    pub id: String,
    pub identity: Identity,
    /// The sluice connection name (for PostgreSQL: the `database` of the startup packet).
    pub connection: String,
    /// Wire protocol name, e.g. `postgres`.
    pub protocol: &'static str,
    pub client_addr: String,
    pub tls: bool,
    /// Client-supplied program name (`application_name` for PostgreSQL), if any.
    pub application_name: Option<String>,
    /// Other settings the client asked for at startup (PostgreSQL: `options`,
    /// `search_path`, `DateStyle`, …), which can change what its statements mean.
    pub client_settings: Vec<(String, String)>,
    /// Agent context that holds for the whole session (an MCP tool call's), merged into
    /// each statement's own.
    pub agent_context: Option<AgentContext>,
    /// The client cannot wait on a held statement (an MCP tool call): a review answers at
    /// once with its id, and the same statement passes once approved (`fail` mode).
    pub fail_fast_reviews: bool,
    /// The remote agent that opened the target connection (`NAME (ADDRESS)`); `None` when
    /// the gateway opened it itself.
    pub served_by: Option<String>,
}

/// One statement (or API call) a client asked to run, already split and with secrets redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Position of this request within its session, starting at 1.
    pub id: u64,
    pub kind: RequestKind,
    /// The statement text as it will be recorded (secrets such as passwords redacted).
    pub text: String,
    /// Bound parameter values rendered as text (`None` for SQL NULL).
    pub params: Vec<Option<String>>,
    /// The prepared statement it defines or runs, when it has a name.
    pub statement_name: Option<String>,
    /// Set when the frontend refuses the request itself because its text cannot be read
    /// safely: the pipeline records it, denied with this reason, and never judges it.
    pub refusal: Option<String>,
    /// For an API call (AWS, HTTP) rather than a statement: what it does. Policy judges
    /// these by action and resource instead of parsing `text`.
    pub call: Option<ApiCall>,
}

/// One API call, named protocol-neutrally: `s3` / `GetObject` / `bucket/key`, or `http` /
/// `DELETE` / `/v1/users/7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    pub service: String,
    pub action: String,
    pub resource: String,
    /// What else the call reads (a copy's source), judged as a read of it.
    pub source: Option<String>,
    /// The call sends a body that neither its text nor its params pin down (no hash of it
    /// is known before it is sent): an approval given for it could not say what it approved.
    pub body_unbound: bool,
}

impl ApiCall {
    /// `service:action`, the way policies and the record name it.
    pub fn qualified_action(&self) -> String {
        format!("{}:{}", self.service, self.action)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// The statement runs now.
    Execute,
    /// A named prepared statement is defined; it runs later through executions that name
    /// it. Recorded so that every text the target can run is on record before it is sent.
    Prepare,
}

/// What the pipeline decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused; the reason is shown to the client and recorded.
    Deny {
        reason: String,
    },
    /// The client withdrew the request while it was held for review.
    Withdrawn {
        reason: String,
    },
}

/// How the pipeline reaches the client of a session while it holds one of its requests
/// for review. Implemented by each protocol frontend.
pub trait HoldChannel: Send + Sync {
    /// Tells the client something without ending the request (PostgreSQL: a NoticeResponse).
    fn notice(&self, message: &str);

    /// Resolves when the client withdraws the request (PostgreSQL: a CancelRequest).
    fn withdrawn(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// How a request ended at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeStatus {
    /// Completed; `tag` is the protocol's completion tag (e.g. `INSERT 0 1`).
    Ok { tag: String, rows: u64 },
    /// The target (or the gateway) reported an error.
    Error {
        code: String,
        message: String,
        rows: u64,
    },
    /// Never ran: refused, or skipped because an earlier statement in the batch failed.
    NotExecuted { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub request_id: u64,
    pub status: OutcomeStatus,
    pub duration: Duration,
    /// What masking changed in the answer, by column and by detector.
    pub masked: Vec<MaskCount>,
    /// For an API call: the answer's status and the bytes each way.
    pub transfer: Option<Transfer>,
}

/// What an API call moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// The HTTP status of the answer.
    pub status: u16,
    /// Request body bytes forwarded to the target.
    pub bytes_in: u64,
    /// Answer body bytes sent back to the client.
    pub bytes_out: u64,
}

/// How many values one column rule or one detector masked in an answer (never the values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskCount {
    /// `schema.table.column` for a column rule.
    pub column: Option<String>,
    /// The detector's name for a content detector.
    pub detector: Option<String>,
    /// `redact`, `partial`, `hash` or `null`.
    pub style: String,
    pub values: u64,
}

/// Why authentication failed. The text is safe to show to the client: it never contains
/// the presented secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("password authentication failed for user \"{0}\"")]
    BadCredentials(String),
    #[error("token for user \"{0}\" has expired")]
    Expired(String),
    #[error("user \"{user}\" may not use connection \"{connection}\"")]
    NotAllowed { user: String, connection: String },
    #[error("connection \"{0}\" does not exist")]
    UnknownConnection(String),
    #[error(
        "connection \"{connection}\" is a kind: {kind} connection, not reached over {protocol}"
    )]
    WrongKind {
        connection: String,
        kind: String,
        protocol: String,
    },
    #[error("connection \"{0}\" needs an approved access request: sluice access request {0} --for 1h --reason \"…\"")]
    AccessRequired(String),
    #[error("authentication is unavailable: {0}")]
    Unavailable(String),
}

/// How the pipeline ends a session on its own initiative (an access window closed).
/// Implemented by each protocol frontend.
pub trait SessionControl: Send + Sync {
    /// Ends the session, telling the client `message` (PostgreSQL: a FATAL ErrorResponse,
    /// SQLSTATE 57P01, at the next message boundary).
    fn end(&self, message: &str);
}

/// Raised when the gateway cannot record a session; the frontend must then refuse it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct RecordError(pub String);

/// The protocol-neutral services a frontend calls for every session.
///
/// Frontends call these in order: `authenticate`, `session_opened`, then any number of
/// `requests`/`outcome`, then `session_closed`. The implementation owns policy and audit;
/// the frontend owns the wire.
pub trait Pipeline: Send + Sync + 'static {
    /// Checks the presented secret for `user` on `connection`. Failures are recorded by
    /// the implementation.
    fn authenticate(
        &self,
        user: &str,
        secret: &str,
        connection: &str,
        client_addr: &str,
        protocol: &'static str,
    ) -> impl Future<Output = Result<Identity, AuthFailure>> + Send;

    /// Records the new session; `control` lets the pipeline end it later.
    fn session_opened(
        &self,
        session: &SessionInfo,
        control: std::sync::Arc<dyn SessionControl>,
    ) -> impl Future<Output = Result<(), RecordError>> + Send;

    /// Decides and records a batch of requests. Resolves only once every request event is
    /// durable, so the frontend may forward the allowed ones as soon as it returns.
    /// Returns one decision per request, in order. A request held for review keeps it
    /// pending until the review is decided; `hold` reaches the client meanwhile.
    fn requests(
        &self,
        session: &SessionInfo,
        requests: Vec<Request>,
        hold: &dyn HoldChannel,
    ) -> impl Future<Output = Vec<Decision>> + Send;

    /// Records how a request ended. Does not wait for the disk.
    fn outcome(&self, session: &SessionInfo, outcome: Outcome);

    fn session_closed(&self, session: &SessionInfo, reason: Option<String>);
}
