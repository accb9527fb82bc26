//! Time-boxed access: a user asks for a connection (or for one `review` rule to be lifted)
//! for a while, with a reason; a reviewer of that connection approves; the grant holds from
//! the approval for the asked duration. Sessions that need the grant end when it does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sluice_audit::{AuditWriter, Event, EventBody};
use sluice_core::Identity;
use sluice_policy::{Action, Policy, Principal};
use sluice_store::{AccessRow, NewAccessRequest, Store, StoreError};

use crate::reviews::now_ms;

/// The longest window anyone may ask for.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("access request \"{0}\" does not exist")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{user} may not decide access requests for connection \"{connection}\"")]
    NotAReviewer { user: String, connection: String },
    #[error("access request \"{0}\": a requester cannot approve their own request")]
    SelfApproval(String),
    #[error("access request \"{id}\" is {status}, not pending")]
    NotPending { id: String, status: String },
    #[error("the access request could not be recorded: {0}")]
    Unavailable(String),
}

impl From<StoreError> for AccessError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AccessRequestNotFound(id) => AccessError::NotFound(id),
            StoreError::AccessRequestNotPending { id, status } => {
                AccessError::NotPending { id, status }
            }
            StoreError::SelfApproval(id) => AccessError::SelfApproval(id),
            other => AccessError::Unavailable(other.to_string()),
        }
    }
}

/// What a user asks for.
pub struct AccessAsk {
    pub connection: String,
    pub duration: Duration,
    pub reason: String,
    pub lift_rule: Option<String>,
}

pub struct Access {
    store: Arc<Store>,
    audit: AuditWriter,
    policy: Arc<Policy>,
    /// Connection name → who may approve its access requests.
    reviewers: HashMap<String, Vec<Principal>>,
}

impl Access {
    pub fn new(
        store: Arc<Store>,
        audit: AuditWriter,
        policy: Arc<Policy>,
        reviewers: HashMap<String, Vec<Principal>>,
    ) -> Access {
        Access {
            store,
            audit,
            policy,
            reviewers,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AccessError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| AccessError::Unavailable(e.to_string()))?
            .map_err(AccessError::from)
    }

    async fn record(&self, body: EventBody) -> Result<(), AccessError> {
        self.audit
            .append_durable(vec![Event::now(None, body)])
            .await
            .map(|_| ())
            .map_err(|e| AccessError::Unavailable(e.to_string()))
    }

    /// Files a request by `who`.
    pub async fn request(&self, who: &Identity, ask: AccessAsk) -> Result<AccessRow, AccessError> {
        let Some(reviewers) = self.reviewers.get(&ask.connection) else {
            return Err(AccessError::Invalid(format!(
                "connection \"{}\" does not exist",
                ask.connection
            )));
        };
        if reviewers.is_empty() {
            return Err(AccessError::Invalid(format!(
                "connection \"{}\" has no access_reviewers, so nobody could approve a request",
                ask.connection
            )));
        }
        if ask.duration < Duration::from_secs(1) || ask.duration > MAX_WINDOW {
            return Err(AccessError::Invalid(
                "the window must be at least 1s and at most 7 days".into(),
            ));
        }
        if ask.reason.trim().is_empty() {
            return Err(AccessError::Invalid("a reason is required".into()));
        }
        if let Some(rule) = &ask.lift_rule {
            let liftable = self.policy.rules().iter().any(|r| {
                r.name == *rule
                    && matches!(r.action, Action::Review(_))
                    && r.covers_connection(&ask.connection)
            });
            if !liftable {
                return Err(AccessError::Invalid(format!(
                    "\"{rule}\" is not a review rule covering connection \"{}\"",
                    ask.connection
                )));
            }
        }
        let bytes: [u8; 6] = rand::thread_rng().gen();
        let new = NewAccessRequest {
            id: format!("a-{}", hex::encode(bytes)),
            created_ms: now_ms(),
            requester: who.user.clone(),
            connection: ask.connection.clone(),
            lift_rule: ask.lift_rule.clone(),
            reason: ask.reason.clone(),
            duration_ms: ask.duration.as_millis() as i64,
        };
        self.record(EventBody::AccessRequested {
            request_id: new.id.clone(),
            requester: who.user.clone(),
            connection: ask.connection,
            lift_rule: ask.lift_rule,
            duration_s: ask.duration.as_secs(),
            reason: ask.reason,
        })
        .await?;
        let id = new.id.clone();
        self.blocking(move |s| s.insert_access_request(&new))
            .await?;
        self.get(&id).await
    }

    pub async fn get(&self, id: &str) -> Result<AccessRow, AccessError> {
        let key = id.to_owned();
        self.blocking(move |s| s.get_access_request(&key)).await
    }

    pub async fn list(
        &self,
        status: Option<String>,
        limit: u32,
    ) -> Result<Vec<AccessRow>, AccessError> {
        self.blocking(move |s| s.list_access_requests(status.as_deref(), limit))
            .await
    }

    /// Approves or denies request `id` as `who`, a reviewer of its connection.
    /// Whether `who` is among the connection's access reviewers.
    pub fn may_decide(&self, connection: &str, who: &Identity) -> bool {
        self.reviewers
            .get(connection)
            .is_some_and(|list| list.iter().any(|p| p.covers(who)))
    }

    pub async fn decide(
        &self,
        id: &str,
        who: &Identity,
        approve: bool,
        reason: Option<String>,
    ) -> Result<AccessRow, AccessError> {
        let row = self.get(id).await?;
        if approve && row.requester == who.user {
            return Err(AccessError::SelfApproval(id.to_owned()));
        }
        if !self.may_decide(&row.connection, who) {
            return Err(AccessError::NotAReviewer {
                user: who.user.clone(),
                connection: row.connection,
            });
        }
        let (key, user, why) = (id.to_owned(), who.user.clone(), reason.clone());
        let row = if approve {
            self.blocking(move |s| s.approve_access_request(&key, &user, why.as_deref(), now_ms()))
                .await?
        } else {
            self.blocking(move |s| s.deny_access_request(&key, &user, why.as_deref(), now_ms()))
                .await?
        };
        self.record(EventBody::AccessDecided {
            request_id: row.id.clone(),
            status: row.status.clone(),
            by: who.user.clone(),
            reason,
            ends: row.ends_ms.map(crate::views::rfc3339_ms),
        })
        .await?;
        Ok(row)
    }

    /// The grant of `connection` to `user` in force now, if any.
    pub async fn grant(
        &self,
        user: &str,
        connection: &str,
    ) -> Result<Option<AccessRow>, AccessError> {
        let (user, connection) = (user.to_owned(), connection.to_owned());
        self.blocking(move |s| s.active_access(&user, &connection, None, now_ms()))
            .await
    }

    /// The grant lifting review rule `rule` for `user` on `connection` in force now, if any.
    pub async fn lift(
        &self,
        user: &str,
        connection: &str,
        rule: &str,
    ) -> Result<Option<AccessRow>, AccessError> {
        let (user, connection, rule) = (user.to_owned(), connection.to_owned(), rule.to_owned());
        self.blocking(move |s| s.active_access(&user, &connection, Some(&rule), now_ms()))
            .await
    }
}
