//! The review service: files reviews for held statements, takes reviewers' decisions (from
//! the HTTP API), and wakes the sessions waiting on them.
//!
//! Reviews live in the store, so a decision made through any gateway process counts; this
//! process's waiters are woken at once, others notice within a second.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use sha2::{Digest, Sha256};
use sluice_audit::{AuditWriter, Event, EventBody};
use sluice_core::{AgentContext, Identity};
use sluice_policy::Principal;
use sluice_store::{NewReview, ReviewRow, Store, StoreError};
use tokio::sync::Notify;

use crate::views::review_json;
use crate::webhooks::Notifier;

/// How often a waiter looks at the store even without a wake-up (a decision made through
/// another gateway process).
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("review \"{0}\" does not exist")]
    NotFound(String),
    #[error("{user} is not a reviewer of review \"{id}\"")]
    NotAReviewer { id: String, user: String },
    #[error("review \"{0}\": a requester cannot approve their own review")]
    SelfApproval(String),
    #[error("review \"{id}\" is {status}, not pending")]
    NotPending { id: String, status: String },
    #[error("review \"{0}\": already approved by this reviewer")]
    AlreadyApproved(String),
    #[error("the review could not be recorded: {0}")]
    Unavailable(String),
}

impl From<StoreError> for ReviewError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ReviewNotFound(id) => ReviewError::NotFound(id),
            StoreError::ReviewNotPending { id, status } => ReviewError::NotPending { id, status },
            StoreError::SelfApproval(id) => ReviewError::SelfApproval(id),
            StoreError::AlreadyApproved(id) => ReviewError::AlreadyApproved(id),
            other => ReviewError::Unavailable(other.to_string()),
        }
    }
}

/// How a wait for a review ended.
pub enum Waited {
    Approved(ReviewRow),
    Denied(ReviewRow),
    Expired(ReviewRow),
    Withdrawn(ReviewRow),
}

/// What the pipeline knows about a statement it holds.
pub struct HeldStatement<'a> {
    pub session_id: &'a str,
    pub statement_id: u64,
    pub identity: &'a Identity,
    pub connection: &'a str,
    pub rule: &'a str,
    pub mode: &'a str,
    pub statement: &'a str,
    /// The session context the approval is bound to.
    pub context: &'a str,
    pub params: &'a [Option<String>],
    /// Who may approve, as principals (`group:dba`).
    pub reviewer_names: Vec<String>,
    pub min_approvals: u32,
    pub timeout: Duration,
    pub approval_window: Duration,
    pub agent_context: Option<&'a AgentContext>,
}

pub struct Reviews {
    store: Arc<Store>,
    audit: AuditWriter,
    notifier: Notifier,
    /// Where the API serves a review, for the notice a held client gets.
    api_base: String,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SHA-256 (hex) of the statement's normal form, the session context that decides what it
/// touches (its `search_path`) and its parameters: what a `fail`-mode retry must match
/// exactly to use an approval.
pub fn statement_hash(statement: &str, context: &str, params: &[Option<String>]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(sluice_sql::normalize(statement).as_bytes());
    hasher.update(b"\0");
    hasher.update(context.as_bytes());
    hasher.update(b"\0");
    for param in params {
        match param {
            // Length-prefixed so that no two parameter lists hash alike.
            Some(value) => {
                hasher.update(b"v");
                hasher.update((value.len() as u64).to_be_bytes());
                hasher.update(value.as_bytes());
            }
            None => hasher.update(b"n"),
        }
    }
    hex::encode(hasher.finalize())
}

fn review_id() -> String {
    let bytes: [u8; 6] = rand::thread_rng().gen();
    format!("r-{}", hex::encode(bytes))
}

impl Reviews {
    pub fn new(
        store: Arc<Store>,
        audit: AuditWriter,
        notifier: Notifier,
        api_base: String,
    ) -> Reviews {
        Reviews {
            store,
            audit,
            notifier,
            api_base,
            wakers: Mutex::new(HashMap::new()),
        }
    }

    pub fn url(&self, id: &str) -> String {
        format!("{}/api/v1/reviews/{id}", self.api_base)
    }

    fn waker(&self, id: &str) -> Arc<Notify> {
        lock(&self.wakers)
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    fn wake(&self, id: &str) {
        if let Some(waker) = lock(&self.wakers).get(id) {
            waker.notify_waiters();
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ReviewError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?
            .map_err(ReviewError::from)
    }

    /// Files a review (or finds the pending one for the same statement, so a retry does not
    /// file a second) and records it in the audit log.
    pub async fn file(&self, held: &HeldStatement<'_>) -> Result<ReviewRow, ReviewError> {
        let hash = statement_hash(held.statement, held.context, held.params);
        let (requester, connection, hash_q, now) = (
            held.identity.user.clone(),
            held.connection.to_owned(),
            hash.clone(),
            now_ms(),
        );
        // A `fail`-mode retry (from any session) finds the review it filed before; a held
        // statement always gets its own, tied to its session.
        if held.mode == "fail" {
            if let Some(existing) = self
                .blocking(move |s| s.pending_review_for(&requester, &connection, &hash_q, now))
                .await?
            {
                return Ok(existing);
            }
        }
        let new = NewReview {
            id: review_id(),
            created_ms: now,
            expires_ms: now + held.timeout.as_millis() as i64,
            requester: held.identity.user.clone(),
            actor: held.identity.actor.as_str().to_owned(),
            connection: held.connection.to_owned(),
            session_id: held.session_id.to_owned(),
            rule: held.rule.to_owned(),
            mode: held.mode.to_owned(),
            statement: held.statement.to_owned(),
            params: serde_json::to_string(held.params).unwrap_or_else(|_| "[]".into()),
            statement_hash: hash.clone(),
            reviewers: serde_json::to_string(&held.reviewer_names).unwrap_or_else(|_| "[]".into()),
            min_approvals: held.min_approvals,
            use_window_ms: held.approval_window.as_millis() as i64,
            context: held
                .agent_context
                .and_then(|c| serde_json::to_string(c).ok()),
        };
        let event = Event::now(
            Some(held.session_id.to_owned()),
            EventBody::ReviewCreated {
                review_id: new.id.clone(),
                statement_id: held.statement_id,
                rule: held.rule.to_owned(),
                mode: held.mode.to_owned(),
                requester: held.identity.user.clone(),
                connection: held.connection.to_owned(),
                statement: held.statement.to_owned(),
                params: held.params.to_vec(),
                statement_hash: hash,
                reviewers: held.reviewer_names.clone(),
                min_approvals: held.min_approvals,
                timeout_s: held.timeout.as_secs(),
                context: held.agent_context.cloned().map(Box::new),
            },
        );
        // On record before anyone can act on it.
        self.audit
            .append_durable(vec![event])
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let id = new.id.clone();
        self.blocking(move |s| s.insert_review(&new)).await?;
        let key = id.clone();
        let review = self
            .blocking(move |s| s.get_review(&key))
            .await?
            .ok_or_else(|| ReviewError::Unavailable("the new review vanished".into()))?;
        self.notifier
            .review_event("review_created", &review_json(&review), &self.url(&id));
        Ok(review)
    }

    /// Waits until review `id` is decided, expires, or `withdrawn` resolves.
    pub async fn wait(
        &self,
        id: &str,
        withdrawn: Pin<Box<dyn Future<Output = ()> + Send + '_>>,
    ) -> Result<Waited, ReviewError> {
        let waker = self.waker(id);
        tokio::pin!(withdrawn);
        let result = loop {
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let key = id.to_owned();
            let review = self
                .blocking(move |s| s.get_review(&key))
                .await?
                .ok_or_else(|| ReviewError::NotFound(id.to_owned()))?;
            match review.status.as_str() {
                "approved" | "used" => break Waited::Approved(review),
                "denied" => break Waited::Denied(review),
                "expired" => break Waited::Expired(review),
                "withdrawn" => break Waited::Withdrawn(review),
                _ => {}
            }
            let left = review.expires_ms - now_ms();
            if left <= 0 {
                let review = self.close(id, "expired").await?;
                break match review.status.as_str() {
                    "approved" | "used" => Waited::Approved(review),
                    "denied" => Waited::Denied(review),
                    _ => Waited::Expired(review),
                };
            }
            let pause = RECHECK.min(Duration::from_millis(left as u64));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(pause) => {}
                () = &mut withdrawn => {
                    // Withdrawn by its client, it does not run, even if a reviewer approved
                    // it a moment before: the client was told its cancel took.
                    let review = self.close(id, "withdrawn").await?;
                    break match review.status.as_str() {
                        "denied" => Waited::Denied(review),
                        _ => Waited::Withdrawn(review),
                    };
                }
            }
        };
        lock(&self.wakers).remove(id);
        Ok(result)
    }

    /// Ends a pending review undecided and records that.
    async fn close(&self, id: &str, status: &'static str) -> Result<ReviewRow, ReviewError> {
        let key = id.to_owned();
        let review = self
            .blocking(move |s| s.close_review(&key, status, now_ms()))
            .await?;
        if review.status == status {
            self.record_decision(&review).await;
        }
        Ok(review)
    }

    /// The statement a `fail`-mode approval let through did not run: the approval is
    /// given back.
    pub fn give_back(&self, id: String) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.unuse_review(&id) {
                tracing::error!(review = %id, error = %e, "cannot give an approval back");
            }
        });
    }

    /// The held statement of approved review `id` is let through: its approval is spent.
    pub async fn mark_used(&self, id: &str) {
        let key = id.to_owned();
        if let Err(e) = self
            .blocking(move |s| s.mark_review_used(&key, now_ms()))
            .await
        {
            tracing::error!(review = %id, error = %e, "cannot mark a review used");
        }
    }

    /// Withdraws the held reviews of session `session_id` (or of every session, at start-up):
    /// nobody waits for them, so no late approval may seem to count.
    pub async fn withdraw_held(&self, session_id: Option<String>) {
        let withdrawn = self
            .blocking(move |s| s.withdraw_held_reviews(session_id.as_deref(), now_ms()))
            .await;
        match withdrawn {
            Ok(rows) => {
                for row in rows {
                    self.record_decision(&row).await;
                    self.wake(&row.id);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot withdraw held reviews"),
        }
    }

    /// `fail` mode: uses an approval of exactly this statement, if there is one.
    pub async fn use_approval(
        &self,
        identity: &Identity,
        connection: &str,
        statement: &str,
        context: &str,
        params: &[Option<String>],
    ) -> Result<Option<ReviewRow>, ReviewError> {
        let hash = statement_hash(statement, context, params);
        let (user, connection) = (identity.user.clone(), connection.to_owned());
        self.blocking(move |s| s.use_approved_review(&user, &connection, &hash, now_ms()))
            .await
    }

    pub async fn get(&self, id: &str) -> Result<ReviewRow, ReviewError> {
        let key = id.to_owned();
        self.blocking(move |s| s.get_review(&key))
            .await?
            .ok_or_else(|| ReviewError::NotFound(id.to_owned()))
    }

    pub async fn list(
        &self,
        status: Option<String>,
        limit: u32,
    ) -> Result<Vec<ReviewRow>, ReviewError> {
        self.blocking(move |s| s.list_reviews(status.as_deref(), limit, now_ms()))
            .await
    }

    /// Records `who`'s approval; the review is approved once enough reviewers approved.
    pub async fn approve(
        &self,
        id: &str,
        who: &Identity,
        reason: Option<String>,
    ) -> Result<ReviewRow, ReviewError> {
        let review = self.get(id).await?;
        if review.requester == who.user {
            return Err(ReviewError::SelfApproval(id.to_owned()));
        }
        if !is_reviewer(&review, who) {
            return Err(ReviewError::NotAReviewer {
                id: id.to_owned(),
                user: who.user.clone(),
            });
        }
        let (key, user) = (id.to_owned(), who.user.clone());
        let review = self
            .blocking(move |s| s.approve_review(&key, &user, reason.as_deref(), now_ms()))
            .await?;
        if review.status == "approved" {
            self.record_decision(&review).await;
            self.wake(id);
        }
        Ok(review)
    }

    /// Denies a review: a reviewer, or the requester withdrawing their own.
    pub async fn deny(
        &self,
        id: &str,
        who: &Identity,
        reason: Option<String>,
    ) -> Result<ReviewRow, ReviewError> {
        let review = self.get(id).await?;
        if review.requester != who.user && !is_reviewer(&review, who) {
            return Err(ReviewError::NotAReviewer {
                id: id.to_owned(),
                user: who.user.clone(),
            });
        }
        let (key, user) = (id.to_owned(), who.user.clone());
        let review = self
            .blocking(move |s| s.deny_review(&key, &user, reason.as_deref(), now_ms()))
            .await?;
        self.record_decision(&review).await;
        self.wake(id);
        Ok(review)
    }

    async fn record_decision(&self, review: &ReviewRow) {
        let event = Event::now(
            Some(review.session_id.clone()),
            EventBody::ReviewDecided {
                review_id: review.id.clone(),
                status: review.status.clone(),
                by: review.decided_by.clone(),
                reason: review.reason.clone(),
            },
        );
        if let Err(e) = self.audit.append_durable(vec![event]).await {
            tracing::error!(review = %review.id, error = %e, "cannot record a review decision");
        }
        self.notifier.review_event(
            "review_decided",
            &review_json(review),
            &self.url(&review.id),
        );
    }
}

pub(crate) fn is_reviewer(review: &ReviewRow, who: &Identity) -> bool {
    let reviewers: Vec<String> = serde_json::from_str(&review.reviewers).unwrap_or_default();
    reviewers
        .iter()
        .filter_map(|p| Principal::parse(p).ok())
        .any(|p| p.covers(who))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
