//! AWS access keys issued by sluice. A client signs requests with the secret (SigV4), so
//! the gateway needs the secret itself to check them: it is kept sealed (encrypted and bound
//! to the key id and user by the caller), never in the clear.

use rusqlite::{params, OptionalExtension, Row};

use crate::db::Store;
use crate::error::StoreError;
use crate::users::user_exists;

/// A stored AWS key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKeyRow {
    /// The access key id, public.
    pub id: String,
    pub user: String,
    /// The one connection the key is for; `None`: any AWS connection serving the service
    /// the request is signed for.
    pub connection: Option<String>,
    /// The secret access key, sealed.
    pub sealed_secret: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
}

const COLUMNS: &str =
    "id, user_name, sealed_secret, created_ms, expires_ms, revoked_ms, last_used_ms, connection";

fn from_row(row: &Row<'_>) -> rusqlite::Result<AwsKeyRow> {
    Ok(AwsKeyRow {
        id: row.get(0)?,
        user: row.get(1)?,
        sealed_secret: row.get(2)?,
        created_ms: row.get(3)?,
        expires_ms: row.get(4)?,
        revoked_ms: row.get(5)?,
        last_used_ms: row.get(6)?,
        connection: row.get(7)?,
    })
}

impl Store {
    /// Records a newly issued key ([`StoreError::UserNotFound`] for an unknown user).
    pub fn insert_aws_key(&self, key: &AwsKeyRow) -> Result<(), StoreError> {
        self.write(|tx| {
            if !user_exists(tx, &key.user)? {
                return Err(StoreError::UserNotFound(key.user.clone()));
            }
            tx.execute(
                "INSERT INTO aws_keys
                 (id, user_name, sealed_secret, created_ms, expires_ms, connection)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key.id,
                    key.user,
                    key.sealed_secret,
                    key.created_ms,
                    key.expires_ms,
                    key.connection
                ],
            )?;
            Ok(())
        })
    }

    /// One key by its access key id.
    pub fn get_aws_key(&self, id: &str) -> Result<Option<AwsKeyRow>, StoreError> {
        self.read(|tx| {
            let sql = format!("SELECT {COLUMNS} FROM aws_keys WHERE id = ?1");
            Ok(tx.query_row(&sql, [id], from_row).optional()?)
        })
    }

    /// Keys of one user or of everyone, oldest first; revoked and expired ones included.
    pub fn list_aws_keys(&self, user: Option<&str>) -> Result<Vec<AwsKeyRow>, StoreError> {
        self.read(|tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM aws_keys WHERE ?1 IS NULL OR user_name = ?1
                 ORDER BY user_name, created_ms, id"
            );
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt
                .query_map([user], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Marks a key revoked; `false` if it is unknown or already revoked.
    pub fn revoke_aws_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE aws_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms],
            )?;
            Ok(updated > 0)
        })
    }

    /// Notes that a key was used (at most what the caller asks; not on every request).
    pub fn touch_aws_key(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE aws_keys SET last_used_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_listed_and_revoked() {
        let store = Store::open_in_memory().unwrap();
        let key = AwsKeyRow {
            id: "SLUICEAKEXAMPLE".into(),
            user: "alice".into(),
            connection: Some("aws".into()),
            sealed_secret: "sealed".into(),
            created_ms: 1,
            expires_ms: 2,
            revoked_ms: None,
            last_used_ms: None,
        };
        assert!(matches!(
            store.insert_aws_key(&key),
            Err(StoreError::UserNotFound(_))
        ));
        store.add_user("alice", &[]).unwrap();
        store.insert_aws_key(&key).unwrap();
        assert_eq!(
            store.get_aws_key("SLUICEAKEXAMPLE").unwrap(),
            Some(key.clone())
        );
        assert_eq!(store.list_aws_keys(Some("bob")).unwrap(), vec![]);
        assert!(store.revoke_aws_key("SLUICEAKEXAMPLE", 5).unwrap());
        assert!(!store.revoke_aws_key("SLUICEAKEXAMPLE", 6).unwrap());
        store.touch_aws_key("SLUICEAKEXAMPLE", 7).unwrap();
        let row = store.get_aws_key("SLUICEAKEXAMPLE").unwrap().unwrap();
        assert_eq!((row.revoked_ms, row.last_used_ms), (Some(5), Some(7)));
    }
}
