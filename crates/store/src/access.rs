//! Time-boxed access requests: a user asks for a connection (or for a review rule to be
//! lifted) for a while; once approved, the grant holds from the approval for that long.

use rusqlite::{params, OptionalExtension, Row, Transaction};

use crate::db::Store;
use crate::error::StoreError;

#[derive(Debug, Clone)]
pub struct NewAccessRequest {
    pub id: String,
    pub created_ms: i64,
    pub requester: String,
    pub connection: String,
    /// A `review` rule to lift instead of granting the connection.
    pub lift_rule: Option<String>,
    pub reason: String,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    pub id: String,
    pub created_ms: i64,
    pub requester: String,
    pub connection: String,
    pub lift_rule: Option<String>,
    pub reason: String,
    pub duration_ms: i64,
    /// `pending`, `approved`, `denied`.
    pub status: String,
    pub decided_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    /// When the grant starts and ends (set on approval).
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
}

const COLUMNS: &str = "id, created_ms, requester, connection, lift_rule, reason, duration_ms, status, decided_ms, decided_by, decision_reason, starts_ms, ends_ms";

fn from_row(row: &Row<'_>) -> rusqlite::Result<AccessRow> {
    Ok(AccessRow {
        id: row.get(0)?,
        created_ms: row.get(1)?,
        requester: row.get(2)?,
        connection: row.get(3)?,
        lift_rule: row.get(4)?,
        reason: row.get(5)?,
        duration_ms: row.get(6)?,
        status: row.get(7)?,
        decided_ms: row.get(8)?,
        decided_by: row.get(9)?,
        decision_reason: row.get(10)?,
        starts_ms: row.get(11)?,
        ends_ms: row.get(12)?,
    })
}

fn load(tx: &Transaction<'_>, id: &str) -> Result<AccessRow, StoreError> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM access_requests WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::AccessRequestNotFound(id.to_owned()))
}

fn load_pending(tx: &Transaction<'_>, id: &str) -> Result<AccessRow, StoreError> {
    let row = load(tx, id)?;
    if row.status != "pending" {
        return Err(StoreError::AccessRequestNotPending {
            id: id.to_owned(),
            status: row.status,
        });
    }
    Ok(row)
}

impl Store {
    pub fn insert_access_request(&self, r: &NewAccessRequest) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO access_requests (id, created_ms, requester, connection, lift_rule, reason, duration_ms, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
                params![r.id, r.created_ms, r.requester, r.connection, r.lift_rule, r.reason, r.duration_ms],
            )?;
            Ok(())
        })
    }

    pub fn get_access_request(&self, id: &str) -> Result<AccessRow, StoreError> {
        self.read(|tx| load(tx, id))
    }

    /// Requests, newest first, optionally only those with `status`.
    pub fn list_access_requests(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AccessRow>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(&format!(
                "SELECT {COLUMNS} FROM access_requests WHERE ?1 IS NULL OR status = ?1 ORDER BY created_ms DESC, id LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![status, limit], from_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Approves a pending request: the grant runs from `now_ms` for its duration. The
    /// caller checks that `by` may approve; nobody approves their own request.
    pub fn approve_access_request(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<AccessRow, StoreError> {
        self.write(|tx| {
            let row = load_pending(tx, id)?;
            if row.requester == by {
                return Err(StoreError::SelfApproval(id.to_owned()));
            }
            tx.execute(
                "UPDATE access_requests SET status = 'approved', decided_ms = ?2, decided_by = ?3, decision_reason = ?4, starts_ms = ?2, ends_ms = ?5 WHERE id = ?1",
                params![id, now_ms, by, reason, now_ms + row.duration_ms],
            )?;
            load(tx, id)
        })
    }

    pub fn deny_access_request(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<AccessRow, StoreError> {
        self.write(|tx| {
            load_pending(tx, id)?;
            tx.execute(
                "UPDATE access_requests SET status = 'denied', decided_ms = ?2, decided_by = ?3, decision_reason = ?4 WHERE id = ?1",
                params![id, now_ms, by, reason],
            )?;
            load(tx, id)
        })
    }

    /// The approved grant of `connection` to `user` in force at `now_ms` that ends last;
    /// with `lift_rule`, a grant lifting that rule instead.
    pub fn active_access(
        &self,
        user: &str,
        connection: &str,
        lift_rule: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<AccessRow>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM access_requests WHERE status = 'approved' AND requester = ?1
                         AND connection = ?2 AND lift_rule IS ?3 AND starts_ms <= ?4 AND ends_ms > ?4
                         ORDER BY ends_ms DESC LIMIT 1"
                    ),
                    params![user, connection, lift_rule, now_ms],
                    from_row,
                )
                .optional()?)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(id: &str, lift: Option<&str>) -> NewAccessRequest {
        NewAccessRequest {
            id: id.into(),
            created_ms: 1_000,
            requester: "eve".into(),
            connection: "prod".into(),
            lift_rule: lift.map(str::to_owned),
            reason: "incident 7".into(),
            duration_ms: 30_000,
        }
    }

    #[test]
    fn a_grant_holds_from_approval_for_its_duration() {
        let store = Store::open_in_memory().unwrap();
        store.insert_access_request(&request("a1", None)).unwrap();
        assert!(store
            .active_access("eve", "prod", None, 2_000)
            .unwrap()
            .is_none());
        assert!(matches!(
            store.approve_access_request("a1", "eve", None, 2_000),
            Err(StoreError::SelfApproval(_))
        ));
        let row = store
            .approve_access_request("a1", "bob", Some("ok"), 5_000)
            .unwrap();
        assert_eq!((row.starts_ms, row.ends_ms), (Some(5_000), Some(35_000)));
        assert!(store
            .active_access("eve", "prod", None, 34_999)
            .unwrap()
            .is_some());
        assert!(store
            .active_access("eve", "prod", None, 35_000)
            .unwrap()
            .is_none());
        assert!(store
            .active_access("eve", "other", None, 6_000)
            .unwrap()
            .is_none());
        assert!(store
            .active_access("eve", "prod", Some("r"), 6_000)
            .unwrap()
            .is_none());
        assert!(matches!(
            store.deny_access_request("a1", "bob", None, 6_000),
            Err(StoreError::AccessRequestNotPending { .. })
        ));
    }

    #[test]
    fn lifts_are_separate_from_connection_grants() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_access_request(&request("a2", Some("writes")))
            .unwrap();
        store
            .approve_access_request("a2", "bob", None, 2_000)
            .unwrap();
        assert!(store
            .active_access("eve", "prod", None, 3_000)
            .unwrap()
            .is_none());
        assert!(store
            .active_access("eve", "prod", Some("writes"), 3_000)
            .unwrap()
            .is_some());
        store.insert_access_request(&request("a3", None)).unwrap();
        store
            .deny_access_request("a3", "bob", Some("no"), 2_000)
            .unwrap();
        assert_eq!(
            store
                .list_access_requests(Some("denied"), 10)
                .unwrap()
                .len(),
            1
        );
    }
}
