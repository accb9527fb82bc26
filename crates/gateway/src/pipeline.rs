//! The session pipeline: authentication, decisions and the audit record for every
//! request, whichever protocol carried it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_audit::{
    AuditWriter, CallInfo, ErrorInfo, Event, EventBody, MaskedInfo, ReviewRef, TransferInfo,
};
use sluice_auth::{AuthError, Tokens};
use sluice_core::{
    AgentContext, AuthFailure, Decision, HoldChannel, Identity, Outcome, OutcomeStatus, Pipeline,
    RecordError, Request, RequestKind, Role, SessionControl, SessionInfo,
};
use sluice_policy::{Policy, Principal, Review, ReviewMode, SessionPolicy, Subject, Verdict};
use sluice_store::ReviewRow;
use sluice_store::{SessionRow, Store};
use tracing::{error, warn};

use crate::access::Access;
use crate::context::ContextScrubber;
use crate::metrics::Metrics;
use crate::reviews::{HeldStatement, Reviews, Waited};

pub struct GatewayPipeline {
    audit: AuditWriter,
    store: Arc<Store>,
    tokens: Tokens,
    /// Connection name → who may use it (`None`: every authenticated user).
    allow: HashMap<String, Option<Vec<Principal>>>,
    /// Connection name → its kind.
    kinds: HashMap<String, &'static str>,
    policy: Arc<Policy>,
    reviews: Arc<Reviews>,
    access: Arc<Access>,
    /// Connections whose sessions need an approved access request.
    requires_access: HashSet<String>,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, OpenSession>>,
    /// Approvals spent on requests whose outcome is still to come, in all sessions: while
    /// none are, outcomes need not look (they are on every statement's path).
    spent_pending: AtomicUsize,
    /// Session ends whose records are still being written.
    closing: Arc<AtomicUsize>,
    /// Agent context on statements: taken from sqlcommenter comments, masked.
    context: ContextScrubber,
}

/// What the pipeline keeps per open session.
struct OpenSession {
    /// Statements seen, for the session-close record.
    statements: u64,
    /// The session's SQL-level prepared statements, as policy saw them.
    policy: SessionPolicy,
    /// Ends the session when the access grant it relies on runs out.
    grant_timer: Option<tokio::task::AbortHandle>,
    /// Requests let through by a `fail`-mode approval, until their outcome: one that does
    /// not run gives its approval back.
    spent_approvals: HashMap<u64, String>,
    /// Ends the session from the gateway's side (access window, revoked token, shutdown).
    control: Arc<dyn SessionControl>,
    /// The token it signed in with (see [`GatewayPipeline::end_revoked_sessions`]).
    credential: Option<String>,
}

/// What the pipeline is built from.
pub struct Parts {
    pub audit: AuditWriter,
    pub store: Arc<Store>,
    /// Connection name → who may use it (`None`: every authenticated user).
    pub allow: HashMap<String, Option<Vec<Principal>>>,
    pub policy: Arc<Policy>,
    pub reviews: Arc<Reviews>,
    pub access: Arc<Access>,
    /// Connections whose sessions need an approved access request.
    pub requires_access: HashSet<String>,
    pub metrics: Arc<Metrics>,
    /// Connection name → its kind (`postgres`, `aws`, `http`), which is also the protocol
    /// its sessions speak.
    pub kinds: HashMap<String, &'static str>,
}

impl GatewayPipeline {
    pub fn new(parts: Parts) -> GatewayPipeline {
        GatewayPipeline {
            context: ContextScrubber::new(),
            tokens: Tokens::new(parts.store.clone()),
            audit: parts.audit,
            store: parts.store,
            allow: parts.allow,
            kinds: parts.kinds,
            policy: parts.policy,
            reviews: parts.reviews,
            access: parts.access,
            requires_access: parts.requires_access,
            metrics: parts.metrics,
            sessions: Mutex::new(HashMap::new()),
            spent_pending: AtomicUsize::new(0),
            closing: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Records a failed authentication (also for frontends that check a signature themselves).
    pub(crate) fn auth_failed(
        &self,
        user: &str,
        connection: &str,
        client_addr: &str,
        protocol: &str,
        failure: &AuthFailure,
    ) {
        self.metrics.auth_failures.inc();
        self.audit.append(Event::now(
            None,
            EventBody::AuthFailure {
                user: user.to_owned(),
                connection: connection.to_owned(),
                protocol: protocol.to_owned(),
                client_addr: client_addr.to_owned(),
                reason: failure.to_string(),
            },
        ));
    }

    /// Ends every open session whose token was revoked, or deleted with its user, since it
    /// signed in; checks every [`CREDENTIAL_CHECK`], forever.
    pub async fn end_revoked_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CREDENTIAL_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let open: Vec<(String, Arc<dyn SessionControl>)> = self
                .sessions()
                .values()
                .filter_map(|s| Some((s.credential.clone()?, s.control.clone())))
                .collect();
            if open.is_empty() {
                continue;
            }
            let ids: Vec<String> = open.iter().map(|(id, _)| id.clone()).collect();
            let store = self.store.clone();
            let live = match tokio::task::spawn_blocking(move || store.live_token_ids(&ids)).await {
                Ok(Ok(live)) => live,
                // A store that cannot answer ends nothing: sign-in fails meanwhile anyway.
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot check the tokens of open sessions");
                    continue;
                }
                Err(_) => continue,
            };
            for (credential, control) in open {
                if !live.contains(&credential) {
                    control.end(&format!(
                        "terminating connection: the sluice token this session signed in with (id {credential}) was revoked"
                    ));
                }
            }
        }
    }

    /// Whether `identity` needs an access grant for `connection` (`None`: no such
    /// connection): the connection requires one, or its `allow` list leaves them out.
    fn needs_grant(&self, connection: &str, identity: &Identity) -> Option<bool> {
        let allow = self.allow.get(connection)?;
        let listed = allow.as_ref().is_none_or(|list| allowed(list, identity));
        Some(self.requires_access.contains(connection) || !listed)
    }

    /// Ends `session` when the access grants it relies on run out (a newer grant extends it).
    fn watch_grant(
        &self,
        session: &SessionInfo,
        control: Arc<dyn SessionControl>,
    ) -> tokio::task::AbortHandle {
        let access = self.access.clone();
        let user = session.identity.user.clone();
        let connection = session.connection.clone();
        tokio::spawn(async move {
            loop {
                let grant = match access.grant(&user, &connection).await {
                    Ok(grant) => grant,
                    Err(e) => {
                        error!(error = %e, "access grants unavailable; ending the session");
                        None
                    }
                };
                let Some(grant) = grant else {
                    control.end(&format!(
                        "terminating connection: the access window for connection \"{connection}\" has closed; request access again with sluice access request {connection}"
                    ));
                    return;
                };
                let left = grant.ends_ms.unwrap_or(0) - now_ms();
                tokio::time::sleep(std::time::Duration::from_millis(left.max(0) as u64 + 1)).await;
            }
        })
        .abort_handle()
    }

    /// Verifies a sluice token (off the async threads: it reads the store). `who` names the
    /// caller in the refusal (never the token).
    pub(crate) async fn verify_token(
        &self,
        token: &str,
        who: &str,
    ) -> Result<(Identity, Role), AuthFailure> {
        let tokens = self.tokens.clone();
        let presented = token.to_owned();
        let verified =
            tokio::task::spawn_blocking(move || tokens.verify(&presented, SystemTime::now()))
                .await
                .map_err(|e| AuthFailure::Unavailable(e.to_string()))?;
        match verified {
            Ok(v) => Ok((v.identity, v.role)),
            Err(AuthError::Expired { .. }) => Err(AuthFailure::Expired(who.to_owned())),
            Err(AuthError::Store(e)) => {
                error!(error = %e, "token store unavailable");
                Err(AuthFailure::Unavailable("metadata store error".into()))
            }
            Err(_) => Err(AuthFailure::BadCredentials(who.to_owned())),
        }
    }

    /// Whether `identity` (of `role`, already authenticated) may open a session on
    /// `connection`: its role uses connections, the connection's `allow` list names it, or
    /// an approved access request lets it in for its window.
    pub async fn admit(
        &self,
        identity: Identity,
        role: Role,
        connection: &str,
    ) -> Result<Identity, AuthFailure> {
        let user = identity.user.clone();
        // Auditors read the record; they do not use the connections.
        if !role.acts() {
            return Err(AuthFailure::NotAllowed {
                user,
                connection: connection.to_owned(),
            });
        }
        match self.needs_grant(connection, &identity) {
            None => Err(AuthFailure::UnknownConnection(connection.to_owned())),
            Some(false) => Ok(identity),
            Some(true) => match self.access.grant(&user, connection).await {
                Ok(Some(_)) => Ok(identity),
                Ok(None) if self.requires_access.contains(connection) => {
                    Err(AuthFailure::AccessRequired(connection.to_owned()))
                }
                Ok(None) => Err(AuthFailure::NotAllowed {
                    user,
                    connection: connection.to_owned(),
                }),
                Err(e) => {
                    error!(error = %e, "access grants unavailable");
                    Err(AuthFailure::Unavailable("metadata store error".into()))
                }
            },
        }
    }

    /// Ends every open session, telling each client `message` (the gateway is stopping).
    pub fn end_all_sessions(&self, message: &str) {
        for open in self.sessions().values() {
            open.control.end(message);
        }
    }

    /// Sessions open now, or whose end is still being recorded.
    pub fn sessions_ending(&self) -> usize {
        self.sessions().len() + self.closing.load(Ordering::Relaxed)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpenSession>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Judges each request against the policy, in order (a `PREPARE` earlier in the batch
    /// defines what a later `EXECUTE` runs).
    fn judge(&self, session: &SessionInfo, requests: &[Request]) -> Vec<Verdict> {
        if !self.policy.governs(&session.connection) {
            // No rule covers the connection: nothing to parse or follow, one lock.
            if let Some(open) = self.sessions().get_mut(&session.id) {
                open.statements += requests.len() as u64;
            }
            return vec![Verdict::Allow; requests.len()];
        }
        // Taken out of the map so that parsing runs without holding the map's lock; a
        // session's requests come one batch at a time, so nothing else touches it meanwhile.
        let mut state = match self.sessions().get_mut(&session.id) {
            Some(open) => {
                open.statements += requests.len() as u64;
                std::mem::take(&mut open.policy)
            }
            None => SessionPolicy::with_startup_settings(&session.client_settings),
        };
        let verdicts = requests
            .iter()
            .map(|r| {
                // Refused by the frontend: not judged (and not followed: it never runs).
                if r.refusal.is_some() {
                    return Verdict::Allow;
                }
                if let Some(call) = &r.call {
                    return self
                        .policy
                        .judge_call(&session.identity, &session.connection, call);
                }
                let name = r.statement_name.as_deref();
                let subject = Subject {
                    sql: &r.text,
                    defines: name.filter(|_| r.kind == RequestKind::Prepare),
                    runs: name.filter(|_| r.kind == RequestKind::Execute),
                };
                self.policy.judge_subject(
                    &session.identity,
                    &session.connection,
                    subject,
                    &mut state,
                )
            })
            .collect();
        if let Some(open) = self.sessions().get_mut(&session.id) {
            open.policy = state;
        }
        verdicts
    }
}

/// How a `fail`-mode refusal starts; [`held_review_id`] reads the id back out of it.
const HELD_FOR_REVIEW: &str = "statement held for review ";

/// How often open sessions' tokens are checked for revocation.
const CREDENTIAL_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The review id in a `fail`-mode refusal's message, for callers (the MCP tools) that
/// answer with it as a field of its own.
pub fn held_review_id(message: &str) -> Option<&str> {
    // Only at the start: a database error quoting data must not pass for a review.
    message
        .strip_prefix(HELD_FOR_REVIEW)?
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .filter(|id| !id.is_empty())
}

/// A `review` verdict, borrowed.
struct Held<'a> {
    rule: &'a str,
    /// Definitions of the prepared statement the request runs, for the reviewers.
    runs: &'a [String],
    /// The session state the approval is bound to (`search_path`).
    context: &'a str,
    message: Option<&'a str>,
    review: &'a Review,
    mode: ReviewMode,
    /// What the agent said about the statement, shown to reviewers.
    agent_context: Option<&'a AgentContext>,
}

impl GatewayPipeline {
    /// The approved access request lifting review rule `rule` for this session's user and
    /// connection right now, if any.
    async fn lifted(&self, session: &SessionInfo, rule: &str) -> Option<String> {
        match self
            .access
            .lift(&session.identity.user, &session.connection, rule)
            .await
        {
            Ok(grant) => grant.map(|g| g.id),
            Err(e) => {
                // Without the store the rule stays in force: fail closed.
                error!(error = %e, "access grants unavailable");
                None
            }
        }
    }

    /// Files a review for `request` and decides it: in `hold` mode after waiting for the
    /// decision, in `fail` mode at once (unless an approval of this exact statement waits
    /// to be used).
    async fn review(
        &self,
        session: &SessionInfo,
        request: &Request,
        held: &Held<'_>,
        hold: &dyn HoldChannel,
    ) -> (Decision, Option<ReviewRef>) {
        let unavailable = |e: crate::reviews::ReviewError| {
            error!(session = %session.id, error = %e, "cannot file a review; refusing the statement");
            (
                Decision::Deny {
                    reason: format!(
                        "statement needs review by policy \"{}\", but sluice cannot file the review: {e}",
                        held.rule
                    ),
                },
                None,
            )
        };
        // What the reviewers see and approve: the statement, and what a prepared statement
        // it runs may be.
        let reviewed = if held.runs.is_empty() {
            request.text.clone()
        } else {
            format!(
                "{}\n-- runs a prepared statement defined as:\n{}",
                request.text,
                held.runs.join(";\n")
            )
        };
        if held.mode == ReviewMode::Fail && request.call.as_ref().is_some_and(|c| c.body_unbound) {
            // Run again later, it could carry another body under the same approval.
            return (
                Decision::Deny {
                    reason: format!(
                        "needs review by policy \"{}\", which is given for a call run again later, but this call's body is not bound by a hash: send it with a signed payload hash, or have the rule hold it for review (mode: wait)",
                        held.rule
                    ),
                },
                None,
            );
        }
        if held.mode == ReviewMode::Fail {
            match self
                .reviews
                .use_approval(
                    &session.identity,
                    &session.connection,
                    &reviewed,
                    held.context,
                    &request.params,
                )
                .await
            {
                Ok(Some(row)) => return (Decision::Allow, Some(review_ref(&row))),
                Ok(None) => {}
                Err(e) => return unavailable(e),
            }
        }
        let statement = HeldStatement {
            session_id: &session.id,
            statement_id: request.id,
            identity: &session.identity,
            connection: &session.connection,
            rule: held.rule,
            mode: held.mode.as_str(),
            statement: &reviewed,
            context: held.context,
            params: &request.params,
            reviewer_names: held.review.reviewers.iter().map(principal_name).collect(),
            min_approvals: held.review.min_approvals,
            timeout: held.review.timeout,
            approval_window: held.review.approval_window,
            agent_context: held.agent_context,
        };
        // Held from before the review is filed: a cancel as soon as it shows withdraws it.
        let withdrawn = hold.withdrawn();
        let row = match self.reviews.file(&statement).await {
            Ok(row) => row,
            Err(e) => return unavailable(e),
        };
        let why = match held.message {
            Some(message) => format!("policy \"{}\": {message}", held.rule),
            None => format!("policy \"{}\"", held.rule),
        };
        if held.mode == ReviewMode::Fail {
            return (
                Decision::Deny {
                    reason: format!(
                        "{HELD_FOR_REVIEW}{id} ({why}); once a reviewer approves it (sluice reviews approve {id}), run the same statement again",
                        id = row.id
                    ),
                },
                Some(review_ref(&row)),
            );
        }
        hold.notice(&format!(
            "statement held for review {id} ({why}); waiting up to {timeout} for approval: sluice reviews approve {id}, or {url}; cancel the query to withdraw it",
            id = row.id,
            timeout = humantime::format_duration(held.review.timeout),
            url = self.reviews.url(&row.id),
        ));
        let waited = match self.reviews.wait(&row.id, withdrawn).await {
            Ok(waited) => waited,
            Err(e) => return unavailable(e),
        };
        match waited {
            Waited::Approved(row) => {
                self.reviews.mark_used(&row.id).await;
                (Decision::Allow, Some(review_ref(&row)))
            }
            Waited::Denied(row) => (
                Decision::Deny {
                    reason: format!(
                        "review {} denied by {}{}",
                        row.id,
                        row.decided_by.as_deref().unwrap_or("a reviewer"),
                        row.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                },
                Some(review_ref(&row)),
            ),
            Waited::Expired(row) => (
                Decision::Deny {
                    reason: format!(
                        "review {} was not decided in time; the statement did not run",
                        row.id
                    ),
                },
                Some(review_ref(&row)),
            ),
            Waited::Withdrawn(row) => (
                Decision::Withdrawn {
                    reason: format!(
                        "canceling statement held for review {}: withdrawn by the client",
                        row.id
                    ),
                },
                Some(review_ref(&row)),
            ),
        }
    }
}

fn principal_name(p: &Principal) -> String {
    match p {
        Principal::User(u) => format!("user:{u}"),
        Principal::Group(g) => format!("group:{g}"),
        Principal::Agent(Some(a)) => format!("agent:{a}"),
        Principal::Agent(None) => "agent:*".to_owned(),
    }
}

fn review_ref(row: &ReviewRow) -> ReviewRef {
    ReviewRef {
        id: row.id.clone(),
        status: row.status.clone(),
        by: row.decided_by.clone(),
        at: row.decided_ms.map(|ms| {
            let time = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
            humantime::format_rfc3339_millis(time).to_string()
        }),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn allowed(allow: &[Principal], identity: &Identity) -> bool {
    allow.iter().any(|p| p.covers(identity))
}

impl Pipeline for GatewayPipeline {
    async fn authenticate(
        &self,
        user: &str,
        secret: &str,
        connection: &str,
        client_addr: &str,
        protocol: &'static str,
    ) -> Result<Identity, AuthFailure> {
        if let Some(kind) = self.kinds.get(connection).filter(|k| **k != protocol) {
            let failure = AuthFailure::WrongKind {
                connection: connection.to_owned(),
                kind: (*kind).to_owned(),
                protocol: protocol.to_owned(),
            };
            self.auth_failed(user, connection, client_addr, protocol, &failure);
            return Err(failure);
        }
        let result = match self.verify_token(secret, user).await {
            Err(failure) => Err(failure),
            // The token must belong to the user named in the startup packet, so that the
            // name a client shows everywhere is the one that was authenticated.
            Ok((identity, _)) if identity.user != user => {
                Err(AuthFailure::BadCredentials(user.to_owned()))
            }
            Ok((identity, role)) => self.admit(identity, role, connection).await,
        };
        if let Err(failure) = &result {
            self.auth_failed(user, connection, client_addr, protocol, failure);
        }
        result
    }

    async fn session_opened(
        &self,
        session: &SessionInfo,
        control: Arc<dyn SessionControl>,
    ) -> Result<(), RecordError> {
        let event = Event::now(
            Some(session.id.clone()),
            EventBody::SessionOpen {
                user: session.identity.user.clone(),
                actor: session.identity.actor.as_str().to_owned(),
                connection: session.connection.clone(),
                protocol: session.protocol.to_owned(),
                client_addr: session.client_addr.clone(),
                tls: session.tls,
                application_name: session.application_name.clone(),
                settings: session.client_settings.clone(),
                context: self.context.session(session),
                served_by: session.served_by.clone(),
            },
        );
        let positions = self
            .audit
            .append_durable(vec![event])
            .await
            .map_err(|e| RecordError(e.to_string()))?;
        let position = positions
            .first()
            .ok_or_else(|| RecordError("the audit log returned no position".into()))?;
        let row = SessionRow {
            id: session.id.clone(),
            user: session.identity.user.clone(),
            actor: session.identity.actor.as_str().to_owned(),
            connection: session.connection.clone(),
            protocol: session.protocol.to_owned(),
            client_addr: session.client_addr.clone(),
            started_ms: now_ms(),
            ended_ms: None,
            end_reason: None,
            statements: 0,
            audit_segment: position.segment,
            audit_offset: position.offset,
            audit_seq: position.seq,
            denied: 0,
            held: 0,
            masked: 0,
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.insert_session(&row))
            .await
            .map_err(|e| RecordError(e.to_string()))?
            .map_err(|e| RecordError(format!("session index: {e}")))?;
        let grant_timer = (self.needs_grant(&session.connection, &session.identity) == Some(true))
            .then(|| self.watch_grant(session, control.clone()));
        self.sessions().insert(
            session.id.clone(),
            OpenSession {
                statements: 0,
                policy: SessionPolicy::with_startup_settings(&session.client_settings),
                grant_timer,
                spent_approvals: HashMap::new(),
                control,
                credential: session.identity.credential.clone(),
            },
        );
        self.metrics.session_opened(session.protocol);
        Ok(())
    }

    async fn requests(
        &self,
        session: &SessionInfo,
        mut requests: Vec<Request>,
        hold: &dyn HoldChannel,
    ) -> Vec<Decision> {
        let n = requests.len();
        // Before policy: a sqlcommenter comment is information, never part of a decision.
        let contexts: Vec<Option<Box<AgentContext>>> = requests
            .iter_mut()
            .map(|r| match r.refusal {
                Some(_) => None,
                None => self.context.take(session, r),
            })
            .collect();
        let verdicts = self.judge(session, &requests);
        let mut decisions = Vec::with_capacity(n);
        let mut review_refs = Vec::with_capacity(n);
        let mut lifts = Vec::with_capacity(n);
        for ((request, verdict), agent_context) in requests.iter().zip(&verdicts).zip(&contexts) {
            if let Some(reason) = &request.refusal {
                decisions.push(Decision::Deny {
                    reason: reason.clone(),
                });
                review_refs.push(None);
                lifts.push(None);
                continue;
            }
            let (decision, review) = match verdict {
                // A protocol-level Parse runs nothing: the review happens when an Execute
                // runs the statement (each is judged on its own).
                Verdict::Review { .. } if request.kind == RequestKind::Prepare => {
                    (Decision::Allow, None)
                }
                Verdict::Review {
                    rule,
                    message,
                    review,
                    mode,
                    runs,
                    context,
                } => {
                    let held = Held {
                        rule,
                        runs,
                        context,
                        message: message.as_deref(),
                        review,
                        // A client that cannot wait (an MCP tool call) gets the review id now.
                        mode: if session.fail_fast_reviews {
                            ReviewMode::Fail
                        } else {
                            *mode
                        },
                        agent_context: agent_context.as_deref(),
                    };
                    match self.lifted(session, rule).await {
                        Some(grant) => {
                            lifts.push(Some(grant));
                            decisions.push(Decision::Allow);
                            review_refs.push(None);
                            continue;
                        }
                        None => self.review(session, request, &held, hold).await,
                    }
                }
                other => match other.refusal() {
                    None => (Decision::Allow, None),
                    Some(reason) => (Decision::Deny { reason }, None),
                },
            };
            if let Some(spent) = review.as_ref().filter(|r| r.status == "used") {
                if let Some(open) = self.sessions().get_mut(&session.id) {
                    open.spent_approvals.insert(request.id, spent.id.clone());
                    self.spent_pending.fetch_add(1, Ordering::Relaxed);
                }
            }
            decisions.push(decision);
            review_refs.push(review);
            lifts.push(None);
        }
        let events = requests
            .into_iter()
            .zip(&verdicts)
            .zip(&decisions)
            .zip(review_refs)
            .zip(lifts)
            .zip(contexts)
            .map(
                |(((((r, verdict), decision), review), access_request), context)| {
                    let (decision, reason) = match decision {
                        Decision::Allow => ("allow", None),
                        Decision::Deny { reason } | Decision::Withdrawn { reason } => {
                            ("deny", Some(reason.clone()))
                        }
                    };
                    let rule = match verdict {
                        Verdict::Deny { rule, .. } | Verdict::Review { rule, .. } => {
                            Some(rule.clone())
                        }
                        Verdict::Allow | Verdict::NotUnderstood { .. } => None,
                    };
                    Event::now(
                        Some(session.id.clone()),
                        EventBody::Statement {
                            call: r.call.map(|c| {
                                Box::new(CallInfo {
                                    service: c.service,
                                    action: c.action,
                                    resource: c.resource,
                                    source: c.source,
                                })
                            }),
                            statement_id: r.id,
                            user: session.identity.user.clone(),
                            actor: session.identity.actor.as_str().into(),
                            connection: session.connection.clone(),
                            statement: r.text,
                            params: r.params,
                            decision: decision.into(),
                            rule,
                            prepare: r.kind == RequestKind::Prepare,
                            statement_name: r.statement_name,
                            reason,
                            review,
                            access_request,
                            context,
                        },
                    )
                },
            )
            .collect();
        match self.audit.append_durable(events).await {
            Ok(_) => {
                let refused = decisions
                    .iter()
                    .filter(|d| !matches!(d, Decision::Allow))
                    .count() as u64;
                self.metrics.statements_refused.inc_by(refused);
                self.metrics.statements_allowed.inc_by(n as u64 - refused);
                decisions
            }
            Err(e) => {
                // Fail closed: nothing runs unrecorded.
                error!(error = %e, session = %session.id, "audit append failed; refusing statements");
                self.metrics.statements_refused.inc_by(n as u64);
                vec![
                    Decision::Deny {
                        reason: "sluice cannot record this statement (audit log unavailable), so it was not run".into()
                    };
                    n
                ]
            }
        }
    }

    fn outcome(&self, session: &SessionInfo, outcome: Outcome) {
        if self.spent_pending.load(Ordering::Relaxed) > 0 {
            let spent = self
                .sessions()
                .get_mut(&session.id)
                .and_then(|open| open.spent_approvals.remove(&outcome.request_id));
            if let Some(review) = spent {
                self.spent_pending.fetch_sub(1, Ordering::Relaxed);
                if matches!(outcome.status, OutcomeStatus::NotExecuted { .. }) {
                    self.reviews.give_back(review);
                }
            }
        }
        let duration_ms = outcome.duration.as_secs_f64() * 1000.0;
        let masked: Vec<MaskedInfo> = outcome
            .masked
            .into_iter()
            .map(|m| MaskedInfo {
                column: m.column,
                detector: m.detector,
                style: m.style,
                values: m.values,
            })
            .collect();
        let transfer = outcome.transfer.map(|t| TransferInfo {
            status: t.status,
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
        });
        let body = match outcome.status {
            OutcomeStatus::Ok { tag, rows } => EventBody::Result {
                transfer,
                statement_id: outcome.request_id,
                status: "ok".into(),
                tag: Some(tag),
                rows,
                duration_ms,
                error: None,
                masked,
            },
            OutcomeStatus::Error {
                code,
                message,
                rows,
            } => EventBody::Result {
                transfer,
                statement_id: outcome.request_id,
                status: "error".into(),
                tag: None,
                rows,
                duration_ms,
                error: Some(ErrorInfo { code, message }),
                masked,
            },
            OutcomeStatus::NotExecuted { reason } => EventBody::Result {
                transfer,
                statement_id: outcome.request_id,
                status: "not_executed".into(),
                tag: None,
                rows: 0,
                duration_ms,
                error: Some(ErrorInfo {
                    code: String::new(),
                    message: reason,
                }),
                masked,
            },
        };
        self.audit
            .append(Event::now(Some(session.id.clone()), body));
    }

    fn session_closed(&self, session: &SessionInfo, reason: Option<String>) {
        let statements = match self.sessions().remove(&session.id) {
            Some(open) => {
                if let Some(timer) = open.grant_timer {
                    timer.abort();
                }
                self.spent_pending
                    .fetch_sub(open.spent_approvals.len(), Ordering::Relaxed);
                open.statements
            }
            None => 0,
        };
        let event = Event::now(
            Some(session.id.clone()),
            EventBody::SessionClose {
                reason: reason.clone(),
                statements,
            },
        );
        self.metrics.session_closed();
        let audit = self.audit.clone();
        let store = self.store.clone();
        let reviews = self.reviews.clone();
        let id = session.id.clone();
        let closing = self.closing.clone();
        closing.fetch_add(1, Ordering::Relaxed);
        // The close record is written (after every record of the session, which were
        // appended before it) before the index says the session ended, so a session shown
        // as ended is complete in the log.
        tokio::spawn(async move {
            let record = async {
                // A statement held when the session ended (the client left, an access window
                // closed) will never run.
                reviews.withdraw_held(Some(id.clone())).await;
                if let Err(e) = audit.append_durable(vec![event]).await {
                    // The index keeps it open; the next start closes it as "gateway restarted".
                    error!(session = %id, error = %e, "cannot record the session's end");
                    return;
                }
                let ended = tokio::task::spawn_blocking(move || {
                    store.end_session(&id, now_ms(), reason.as_deref(), statements)
                })
                .await;
                if !matches!(ended, Ok(Ok(()))) {
                    warn!("cannot mark a session ended in the index");
                }
            };
            record.await;
            closing.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
