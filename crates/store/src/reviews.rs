//! Reviews of held statements: created when a `review` rule matches, decided by reviewers,
//! and (in `fail` mode) used once by the requester's retry.
//!
//! State changes happen in one write transaction each, so two gateways or a gateway and a
//! CLI never both approve past `min_approvals` or both use one approval.

use rusqlite::{params, OptionalExtension, Row, Transaction};

use crate::db::Store;
use crate::error::StoreError;

/// A review to create (status `pending`).
#[derive(Debug, Clone)]
pub struct NewReview {
    pub id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub requester: String,
    /// `human` or `agent`.
    pub actor: String,
    pub connection: String,
    pub session_id: String,
    pub rule: String,
    /// `hold` or `fail`.
    pub mode: String,
    pub statement: String,
    /// JSON array of the bound parameters.
    pub params: String,
    pub statement_hash: String,
    /// JSON array of principals (`group:dba`, …).
    pub reviewers: String,
    pub min_approvals: u32,
    /// `fail` mode: how long an approval may be used by a retry.
    pub use_window_ms: i64,
    /// The statement's agent context (JSON), when it had one.
    pub context: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approver: String,
    pub at_ms: i64,
    pub reason: Option<String>,
}

/// A review as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    pub id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub requester: String,
    pub actor: String,
    pub connection: String,
    pub session_id: String,
    pub rule: String,
    pub mode: String,
    pub statement: String,
    pub params: String,
    pub statement_hash: String,
    pub reviewers: String,
    pub min_approvals: u32,
    pub use_window_ms: i64,
    /// `pending`, `approved`, `denied`, `expired`, `withdrawn` or `used`.
    pub status: String,
    pub decided_ms: Option<i64>,
    /// Who decided: the approvers (comma-separated) or the denier.
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    /// `fail` mode: until when the approval may be used by a retry.
    pub use_by_ms: Option<i64>,
    pub used_ms: Option<i64>,
    pub context: Option<String>,
    pub approvals: Vec<Approval>,
}

const COLUMNS: &str = "id, created_ms, expires_ms, requester, actor, connection, session_id, rule, mode, statement, params, statement_hash, reviewers, min_approvals, use_window_ms, status, decided_ms, decided_by, reason, use_by_ms, used_ms, context";

fn from_row(row: &Row<'_>) -> rusqlite::Result<ReviewRow> {
    Ok(ReviewRow {
        id: row.get(0)?,
        created_ms: row.get(1)?,
        expires_ms: row.get(2)?,
        requester: row.get(3)?,
        actor: row.get(4)?,
        connection: row.get(5)?,
        session_id: row.get(6)?,
        rule: row.get(7)?,
        mode: row.get(8)?,
        statement: row.get(9)?,
        params: row.get(10)?,
        statement_hash: row.get(11)?,
        reviewers: row.get(12)?,
        min_approvals: row.get(13)?,
        use_window_ms: row.get(14)?,
        status: row.get(15)?,
        decided_ms: row.get(16)?,
        decided_by: row.get(17)?,
        reason: row.get(18)?,
        use_by_ms: row.get(19)?,
        used_ms: row.get(20)?,
        context: row.get(21)?,
        approvals: Vec::new(),
    })
}

fn load(tx: &Transaction<'_>, id: &str) -> Result<Option<ReviewRow>, StoreError> {
    let review = tx
        .query_row(
            &format!("SELECT {COLUMNS} FROM reviews WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?;
    let Some(mut review) = review else {
        return Ok(None);
    };
    let mut stmt = tx.prepare(
        "SELECT approver, at_ms, reason FROM review_approvals WHERE review_id = ?1 ORDER BY at_ms, approver",
    )?;
    review.approvals = stmt
        .query_map([id], |row| {
            Ok(Approval {
                approver: row.get(0)?,
                at_ms: row.get(1)?,
                reason: row.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(review))
}

/// Loads a review that must still be pending (call [`Store::expire_due`] first).
fn load_pending(tx: &Transaction<'_>, id: &str) -> Result<ReviewRow, StoreError> {
    let review = load(tx, id)?.ok_or_else(|| StoreError::ReviewNotFound(id.to_owned()))?;
    if review.status != "pending" {
        return Err(StoreError::ReviewNotPending {
            id: id.to_owned(),
            status: review.status,
        });
    }
    Ok(review)
}

impl Store {
    /// Marks review `id` expired if it is pending past its expiry.
    fn expire_due(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE reviews SET status = 'expired', decided_ms = ?2 WHERE id = ?1 AND status = 'pending' AND expires_ms <= ?2",
                params![id, now_ms],
            )?;
            Ok(())
        })
    }

    pub fn insert_review(&self, r: &NewReview) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO reviews (id, created_ms, expires_ms, requester, actor, connection, session_id, rule, mode, statement, params, statement_hash, reviewers, min_approvals, use_window_ms, status, context)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 'pending', ?16)",
                params![
                    r.id, r.created_ms, r.expires_ms, r.requester, r.actor, r.connection,
                    r.session_id, r.rule, r.mode, r.statement, r.params, r.statement_hash,
                    r.reviewers, r.min_approvals, r.use_window_ms, r.context
                ],
            )?;
            Ok(())
        })
    }

    pub fn get_review(&self, id: &str) -> Result<Option<ReviewRow>, StoreError> {
        self.read(|tx| load(tx, id))
    }

    /// Reviews, newest first, optionally only those with `status` (pending ones past their
    /// expiry at `now_ms` are expired first).
    pub fn list_reviews(
        &self,
        status: Option<&str>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        self.write(|tx| {
            // Show reviews whose time is up as expired, not pending.
            tx.execute(
                "UPDATE reviews SET status = 'expired', decided_ms = expires_ms WHERE status = 'pending' AND expires_ms <= ?1",
                [now_ms],
            )?;
            let mut stmt = tx.prepare(
                "SELECT id FROM reviews WHERE ?1 IS NULL OR status = ?1 ORDER BY created_ms DESC, id LIMIT ?2",
            )?;
            let ids: Vec<String> = stmt
                .query_map(params![status, limit], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut reviews = Vec::with_capacity(ids.len());
            for id in ids {
                reviews.extend(load(tx, &id)?);
            }
            Ok(reviews)
        })
    }

    /// Records `approver`'s approval. The review becomes `approved` once `min_approvals`
    /// distinct approvers have approved; a `fail`-mode approval may then be used for the
    /// review's `use_window_ms`. The caller checks that `approver` is a reviewer.
    pub fn approve_review(
        &self,
        id: &str,
        approver: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<ReviewRow, StoreError> {
        self.expire_due(id, now_ms)?;
        self.write(|tx| {
            let review = load_pending(tx, id)?;
            if review.requester == approver {
                return Err(StoreError::SelfApproval(id.to_owned()));
            }
            if review.approvals.iter().any(|a| a.approver == approver) {
                return Err(StoreError::AlreadyApproved(id.to_owned()));
            }
            tx.execute(
                "INSERT INTO review_approvals (review_id, approver, at_ms, reason) VALUES (?1, ?2, ?3, ?4)",
                params![id, approver, now_ms, reason],
            )?;
            if review.approvals.len() + 1 >= review.min_approvals as usize {
                let mut approvers: Vec<&str> =
                    review.approvals.iter().map(|a| a.approver.as_str()).collect();
                approvers.push(approver);
                tx.execute(
                    "UPDATE reviews SET status = 'approved', decided_ms = ?2, decided_by = ?3, reason = ?4, use_by_ms = ?5 WHERE id = ?1",
                    params![id, now_ms, approvers.join(","), reason, now_ms + review.use_window_ms],
                )?;
            }
            load(tx, id)?.ok_or_else(|| StoreError::ReviewNotFound(id.to_owned()))
        })
    }

    /// Denies a pending review. The caller checks that `by` is a reviewer (or the requester
    /// withdrawing it).
    pub fn deny_review(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<ReviewRow, StoreError> {
        self.expire_due(id, now_ms)?;
        self.write(|tx| {
            load_pending(tx, id)?;
            tx.execute(
                "UPDATE reviews SET status = 'denied', decided_ms = ?2, decided_by = ?3, reason = ?4 WHERE id = ?1",
                params![id, now_ms, by, reason],
            )?;
            load(tx, id)?.ok_or_else(|| StoreError::ReviewNotFound(id.to_owned()))
        })
    }

    /// Ends a review still pending with `status` (`expired` or `withdrawn`). Returns the
    /// review as it is afterwards (it may have been decided meanwhile).
    pub fn close_review(
        &self,
        id: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<ReviewRow, StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE reviews SET status = ?2, decided_ms = ?3 WHERE id = ?1 AND status = 'pending'",
                params![id, status, now_ms],
            )?;
            load(tx, id)?.ok_or_else(|| StoreError::ReviewNotFound(id.to_owned()))
        })
    }

    /// Gives back a `fail`-mode approval whose statement did not run after all (its batch
    /// was refused or failed before it): the requester may run it again within the window.
    pub fn unuse_review(&self, id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE reviews SET status = 'approved', used_ms = NULL WHERE id = ?1 AND status = 'used' AND mode = 'fail'",
                params![id],
            )?;
            Ok(())
        })
    }

    /// Marks an approved `hold`-mode review used: the held statement was let through.
    pub fn mark_review_used(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE reviews SET status = 'used', used_ms = ?2 WHERE id = ?1 AND status = 'approved'",
                params![id, now_ms],
            )?;
            Ok(())
        })
    }

    /// Withdraws the pending `hold`-mode reviews of session `session_id` (or of every
    /// session): nobody waits for them any more. Returns them as they are afterwards.
    pub fn withdraw_held_reviews(
        &self,
        session_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        self.write(|tx| {
            let ids: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT id FROM reviews WHERE status = 'pending' AND mode = 'hold' AND (?1 IS NULL OR session_id = ?1)",
                )?;
                let ids = stmt
                    .query_map(params![session_id], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                ids
            };
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                tx.execute(
                    "UPDATE reviews SET status = 'withdrawn', decided_ms = ?2 WHERE id = ?1",
                    params![id, now_ms],
                )?;
                rows.push(load(tx, &id)?.ok_or_else(|| StoreError::ReviewNotFound(id.clone()))?);
            }
            Ok(rows)
        })
    }

    /// Uses an approved, unused `fail`-mode review of this exact statement by `requester` on
    /// `connection`, if one is still within its use window: it is marked `used` and its id
    /// returned. Each approval passes one statement, once.
    pub fn use_approved_review(
        &self,
        requester: &str,
        connection: &str,
        statement_hash: &str,
        now_ms: i64,
    ) -> Result<Option<ReviewRow>, StoreError> {
        self.write(|tx| {
            let id: Option<String> = tx
                .query_row(
                    "SELECT id FROM reviews WHERE status = 'approved' AND mode = 'fail' AND requester = ?1
                     AND connection = ?2 AND statement_hash = ?3 AND use_by_ms > ?4
                     ORDER BY created_ms LIMIT 1",
                    params![requester, connection, statement_hash, now_ms],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(id) = id else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE reviews SET status = 'used', used_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            load(tx, &id)
        })
    }

    /// A `fail`-mode review of this exact statement by `requester` on `connection` still
    /// waiting for a decision, so that a retry does not file a second one.
    pub fn pending_review_for(
        &self,
        requester: &str,
        connection: &str,
        statement_hash: &str,
        now_ms: i64,
    ) -> Result<Option<ReviewRow>, StoreError> {
        self.read(|tx| {
            let id: Option<String> = tx
                .query_row(
                    "SELECT id FROM reviews WHERE status = 'pending' AND mode = 'fail' AND requester = ?1
                     AND connection = ?2 AND statement_hash = ?3 AND expires_ms > ?4
                     ORDER BY created_ms LIMIT 1",
                    params![requester, connection, statement_hash, now_ms],
                    |row| row.get(0),
                )
                .optional()?;
            match id {
                Some(id) => load(tx, &id),
                None => Ok(None),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn review(id: &str, mode: &str, min: u32) -> NewReview {
        NewReview {
            id: id.into(),
            created_ms: 1_000,
            expires_ms: 10_000,
            requester: "alice".into(),
            actor: "human".into(),
            connection: "prod".into(),
            session_id: "s1".into(),
            rule: "writes".into(),
            mode: mode.into(),
            statement: "delete from t where id = 1".into(),
            params: "[]".into(),
            statement_hash: "h1".into(),
            reviewers: "[\"group:dba\"]".into(),
            min_approvals: min,
            use_window_ms: 5_000,
            context: None,
        }
    }

    #[test]
    fn approvals_count_distinct_reviewers_and_never_the_requester() {
        let store = Store::open_in_memory().unwrap();
        store.insert_review(&review("r1", "hold", 2)).unwrap();
        assert!(matches!(
            store.approve_review("r1", "alice", None, 2_000),
            Err(StoreError::SelfApproval(_))
        ));
        let r = store.approve_review("r1", "bob", None, 2_000).unwrap();
        assert_eq!(r.status, "pending");
        assert!(matches!(
            store.approve_review("r1", "bob", None, 2_100),
            Err(StoreError::AlreadyApproved(_))
        ));
        let r = store
            .approve_review("r1", "carol", Some("ok"), 2_200)
            .unwrap();
        assert_eq!(r.status, "approved");
        assert_eq!(r.decided_by.as_deref(), Some("bob,carol"));
        assert_eq!(r.approvals.len(), 2);
        assert!(matches!(
            store.deny_review("r1", "dave", None, 2_300),
            Err(StoreError::ReviewNotPending { .. })
        ));
    }

    #[test]
    fn a_fail_mode_approval_is_used_once_within_its_window() {
        let store = Store::open_in_memory().unwrap();
        store.insert_review(&review("r2", "fail", 1)).unwrap();
        assert!(store
            .use_approved_review("alice", "prod", "h1", 2_000)
            .unwrap()
            .is_none());
        assert_eq!(
            store
                .pending_review_for("alice", "prod", "h1", 2_000)
                .unwrap()
                .map(|r| r.id),
            Some("r2".into())
        );
        store.approve_review("r2", "bob", None, 3_000).unwrap();
        assert!(store
            .use_approved_review("alice", "prod", "other", 3_500)
            .unwrap()
            .is_none());
        let used = store
            .use_approved_review("alice", "prod", "h1", 3_500)
            .unwrap()
            .unwrap();
        assert_eq!(used.status, "used");
        // Given back when the statement did not run, then usable once more.
        store.unuse_review("r2").unwrap();
        assert!(store
            .use_approved_review("alice", "prod", "h1", 3_550)
            .unwrap()
            .is_some());
        assert!(store
            .use_approved_review("alice", "prod", "h1", 3_600)
            .unwrap()
            .is_none());
        // Past the window an approval is worthless.
        store.insert_review(&review("r3", "fail", 1)).unwrap();
        store.approve_review("r3", "bob", None, 3_000).unwrap();
        assert!(store
            .use_approved_review("alice", "prod", "h1", 8_001)
            .unwrap()
            .is_none());
    }

    #[test]
    fn expired_reviews_cannot_be_decided() {
        let store = Store::open_in_memory().unwrap();
        store.insert_review(&review("r4", "hold", 1)).unwrap();
        assert!(matches!(
            store.approve_review("r4", "bob", None, 10_000),
            Err(StoreError::ReviewNotPending { status, .. }) if status == "expired"
        ));
        assert_eq!(store.get_review("r4").unwrap().unwrap().status, "expired");
        store.insert_review(&review("r5", "hold", 1)).unwrap();
        let r = store.close_review("r5", "withdrawn", 2_000).unwrap();
        assert_eq!(r.status, "withdrawn");
        store.insert_review(&review("r6", "hold", 1)).unwrap();
        store.insert_review(&review("r7", "fail", 1)).unwrap();
        let withdrawn = store.withdraw_held_reviews(Some("s1"), 2_500).unwrap();
        assert_eq!(
            withdrawn.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["r6"]
        );
        assert_eq!(store.get_review("r7").unwrap().unwrap().status, "pending");
        assert_eq!(
            store
                .list_reviews(Some("withdrawn"), 10, 2_600)
                .unwrap()
                .len(),
            2
        );
    }
}
