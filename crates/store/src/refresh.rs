//! Refresh handles: what a client holds to renew a sign-in through the identity provider
//! without signing in again. Only a hash of the handle is stored, beside the provider's
//! refresh token sealed by the gateway (the store never sees it in clear).

use rusqlite::{params, OptionalExtension};

use crate::db::Store;
use crate::error::StoreError;
use crate::users::user_exists;

/// A stored refresh handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshHandle {
    /// Public id.
    pub id: String,
    pub user: String,
    /// Hash of the handle string (computed by the caller).
    pub hash: String,
    /// The provider's refresh token, encrypted by the caller.
    pub sealed: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

impl Store {
    /// Records a new refresh handle. Fails with [`StoreError::UserNotFound`] if the user
    /// does not exist.
    pub fn insert_refresh(&self, h: &RefreshHandle) -> Result<(), StoreError> {
        self.write(|tx| {
            if !user_exists(tx, &h.user)? {
                return Err(StoreError::UserNotFound(h.user.clone()));
            }
            tx.execute(
                "INSERT INTO refresh_handles (id, user_name, hash, sealed, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![h.id, h.user, h.hash, h.sealed, h.created_ms, h.expires_ms],
            )?;
            Ok(())
        })
    }

    /// Spends the handle with this hash: each may be used once (the caller issues a new
    /// one). Returns `None` for an unknown or expired handle. A handle presented a second
    /// time means it was copied: every handle of that user is then deleted, their sign-in
    /// tokens revoked, and [`StoreError::RefreshReused`] returned, so whoever holds a copy
    /// is signed out too.
    pub fn spend_refresh(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Option<RefreshHandle>, StoreError> {
        let found = self.write(|tx| {
            let row = tx
                .query_row(
                    "SELECT id, user_name, hash, sealed, created_ms, expires_ms, used_ms
                     FROM refresh_handles WHERE hash = ?1",
                    [hash],
                    |row| {
                        Ok((
                            RefreshHandle {
                                id: row.get(0)?,
                                user: row.get(1)?,
                                hash: row.get(2)?,
                                sealed: row.get(3)?,
                                created_ms: row.get(4)?,
                                expires_ms: row.get(5)?,
                            },
                            row.get::<_, Option<i64>>(6)?,
                        ))
                    },
                )
                .optional()?;
            let Some((handle, used)) = row else {
                return Ok(None);
            };
            if used.is_some() {
                tx.execute(
                    "DELETE FROM refresh_handles WHERE user_name = ?1",
                    [&handle.user],
                )?;
                // Whoever copied the handle may already hold a token from it.
                tx.execute(
                    "UPDATE tokens SET revoked_ms = ?2
                     WHERE user_name = ?1 AND kind = 'login' AND revoked_ms IS NULL",
                    params![handle.user, now_ms],
                )?;
                return Ok(Some(Err(handle.user)));
            }
            tx.execute(
                "UPDATE refresh_handles SET used_ms = ?2 WHERE id = ?1",
                params![handle.id, now_ms],
            )?;
            // Spent handles are kept a while to recognise reuse, then dropped.
            tx.execute(
                "DELETE FROM refresh_handles WHERE expires_ms < ?1",
                [now_ms],
            )?;
            Ok(Some(Ok(handle)))
        })?;
        match found {
            None => Ok(None),
            Some(Err(user)) => Err(StoreError::RefreshReused(user)),
            Some(Ok(handle)) if handle.expires_ms <= now_ms => Ok(None),
            Some(Ok(handle)) => Ok(Some(handle)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn handle(id: &str, user: &str, expires_ms: i64) -> RefreshHandle {
        RefreshHandle {
            id: id.into(),
            user: user.into(),
            hash: format!("hash-{id}"),
            sealed: "sealed".into(),
            created_ms: 1_000,
            expires_ms,
        }
    }

    #[test]
    fn spend_once_and_reuse_signs_out() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &[]).unwrap();
        store
            .insert_refresh(&handle("a1", "alice", 10_000))
            .unwrap();
        store
            .insert_refresh(&handle("a2", "alice", 10_000))
            .unwrap();
        assert_eq!(
            store.spend_refresh("hash-a1", 2_000).unwrap().unwrap().id,
            "a1"
        );
        assert!(matches!(
            store.spend_refresh("hash-a1", 3_000),
            Err(StoreError::RefreshReused(ref u)) if u == "alice"
        ));
        // The reuse deleted the user's other handle too.
        assert_eq!(store.spend_refresh("hash-a2", 3_000).unwrap(), None);
        assert_eq!(store.spend_refresh("hash-none", 3_000).unwrap(), None);
    }

    #[test]
    fn expired_and_orphan_handles() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &[]).unwrap();
        store.insert_refresh(&handle("a1", "alice", 2_000)).unwrap();
        assert_eq!(store.spend_refresh("hash-a1", 2_000).unwrap(), None);
        assert!(matches!(
            store.insert_refresh(&handle("b1", "bob", 2_000)),
            Err(StoreError::UserNotFound(_))
        ));
    }
}
