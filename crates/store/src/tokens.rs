//! Access tokens. Only a hash of each token is stored, never the token itself.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension, Row};

use crate::db::Store;
use crate::error::StoreError;
use crate::users::user_exists;

/// What a token was issued for (shown in listings; verification treats all alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `sluice tokens issue`.
    Token,
    /// A service account's API key.
    ApiKey,
    /// Issued at sign-in (password or identity provider).
    Login,
    /// Exchanged for a workload's external JWT.
    Workload,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Token => "token",
            TokenKind::ApiKey => "api_key",
            TokenKind::Login => "login",
            TokenKind::Workload => "workload",
        }
    }

    fn parse(text: &str) -> TokenKind {
        match text {
            "api_key" => TokenKind::ApiKey,
            "login" => TokenKind::Login,
            "workload" => TokenKind::Workload,
            _ => TokenKind::Token,
        }
    }
}

/// A token to record at issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Public token id.
    pub id: String,
    pub user: String,
    pub kind: TokenKind,
    /// Hash of the full token string (computed by the caller).
    pub hash: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub kind: TokenKind,
    pub hash: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
}

const TOKEN_COLUMNS: &str =
    "id, user_name, hash, created_ms, expires_ms, revoked_ms, last_used_ms, kind";

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let kind: String = row.get(7)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        user: row.get(1)?,
        kind: TokenKind::parse(&kind),
        hash: row.get(2)?,
        created_ms: row.get(3)?,
        expires_ms: row.get(4)?,
        revoked_ms: row.get(5)?,
        last_used_ms: row.get(6)?,
    })
}

impl Store {
    /// Records a newly issued token. Fails with [`StoreError::UserNotFound`] if the user
    /// does not exist.
    pub fn insert_token(&self, t: &NewToken) -> Result<(), StoreError> {
        self.write(|tx| {
            if !user_exists(tx, &t.user)? {
                return Err(StoreError::UserNotFound(t.user.clone()));
            }
            tx.execute(
                "INSERT INTO tokens (id, user_name, hash, created_ms, expires_ms, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    t.id,
                    t.user,
                    t.hash,
                    t.created_ms,
                    t.expires_ms,
                    t.kind.as_str()
                ],
            )?;
            Ok(())
        })
    }

    /// Looks a token up by the hash of its full string.
    pub fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|tx| {
            let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1");
            Ok(tx.query_row(&sql, [hash], token_from_row).optional()?)
        })
    }

    /// Those of `ids` that name a token that exists and is not revoked (removing a user
    /// deletes their tokens).
    pub fn live_token_ids(&self, ids: &[String]) -> Result<HashSet<String>, StoreError> {
        self.read(|tx| {
            let mut query =
                tx.prepare_cached("SELECT 1 FROM tokens WHERE id = ?1 AND revoked_ms IS NULL")?;
            let mut live = HashSet::new();
            for id in ids {
                if query.exists([id])? {
                    live.insert(id.clone());
                }
            }
            Ok(live)
        })
    }

    /// Tokens of one user, or of all users, ordered by user then creation time.
    /// Revoked and expired tokens are included.
    pub fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|tx| {
            let sql = format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens
                 WHERE ?1 IS NULL OR user_name = ?1
                 ORDER BY user_name, created_ms, id"
            );
            let mut stmt = tx.prepare(&sql)?;
            let tokens = stmt
                .query_map([user], token_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(tokens)
        })
    }

    /// Marks a token revoked. Returns `false` if it is unknown or already revoked.
    pub fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms],
            )?;
            Ok(updated > 0)
        })
    }

    /// Revokes every active token of `user` of one kind; returns how many.
    pub fn revoke_tokens_of_kind(
        &self,
        user: &str,
        kind: TokenKind,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE tokens SET revoked_ms = ?3
                 WHERE user_name = ?1 AND kind = ?2 AND revoked_ms IS NULL",
                params![user, kind.as_str(), now_ms],
            )?)
        })
    }

    /// Records that a token was just used. An unknown id is ignored.
    pub fn touch_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE tokens SET last_used_ms = ?2 WHERE id = ?1",
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

    fn new_token(id: &str, user: &str, created_ms: i64) -> NewToken {
        NewToken {
            id: id.to_string(),
            user: user.to_string(),
            kind: TokenKind::Token,
            hash: format!("hash-{id}"),
            created_ms,
            expires_ms: created_ms + 3_600_000,
        }
    }

    #[test]
    fn insert_find_touch_revoke() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &[]).unwrap();
        let t = new_token("abcd1234", "alice", 1_000);
        store.insert_token(&t).unwrap();

        let found = store.find_token_by_hash("hash-abcd1234").unwrap().unwrap();
        assert_eq!(
            found,
            TokenRecord {
                id: t.id.clone(),
                user: t.user.clone(),
                kind: TokenKind::Token,
                hash: t.hash.clone(),
                created_ms: 1_000,
                expires_ms: 3_601_000,
                revoked_ms: None,
                last_used_ms: None,
            }
        );
        assert_eq!(store.find_token_by_hash("hash-other").unwrap(), None);

        store.touch_token("abcd1234", 2_000).unwrap();
        store.touch_token("unknown1", 2_000).unwrap();
        let found = store.find_token_by_hash("hash-abcd1234").unwrap().unwrap();
        assert_eq!(found.last_used_ms, Some(2_000));

        assert!(store.revoke_token("abcd1234", 3_000).unwrap());
        assert!(!store.revoke_token("abcd1234", 4_000).unwrap());
        assert!(!store.revoke_token("unknown1", 4_000).unwrap());
        let found = store.find_token_by_hash("hash-abcd1234").unwrap().unwrap();
        assert_eq!(found.revoked_ms, Some(3_000));
    }

    #[test]
    fn live_tokens_are_those_neither_revoked_nor_removed() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &[]).unwrap();
        store.add_user("bob", &[]).unwrap();
        for (id, user) in [
            ("aaaa0001", "alice"),
            ("aaaa0002", "alice"),
            ("bbbb0001", "bob"),
        ] {
            store.insert_token(&new_token(id, user, 1_000)).unwrap();
        }
        store.revoke_token("aaaa0002", 2_000).unwrap();
        store.remove_user("bob").unwrap();
        let ids: Vec<String> = ["aaaa0001", "aaaa0002", "bbbb0001", "unknown1"]
            .map(String::from)
            .to_vec();
        let live = store.live_token_ids(&ids).unwrap();
        assert_eq!(live, HashSet::from(["aaaa0001".to_string()]));
    }

    #[test]
    fn token_for_unknown_user_is_refused() {
        let store = Store::open_in_memory().unwrap();
        let err = store
            .insert_token(&new_token("abcd1234", "nobody", 1_000))
            .unwrap_err();
        assert!(matches!(err, StoreError::UserNotFound(ref name) if name == "nobody"));
    }

    #[test]
    fn list_by_user_and_all() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &[]).unwrap();
        store.add_user("bob", &[]).unwrap();
        store
            .insert_token(&new_token("bbbb0002", "bob", 1_000))
            .unwrap();
        store
            .insert_token(&new_token("aaaa0002", "alice", 2_000))
            .unwrap();
        store
            .insert_token(&new_token("aaaa0001", "alice", 1_000))
            .unwrap();

        let ids = |tokens: Vec<TokenRecord>| -> Vec<String> {
            tokens.into_iter().map(|t| t.id).collect()
        };
        assert_eq!(
            ids(store.list_tokens(None).unwrap()),
            ["aaaa0001", "aaaa0002", "bbbb0002"]
        );
        assert_eq!(
            ids(store.list_tokens(Some("alice")).unwrap()),
            ["aaaa0001", "aaaa0002"]
        );
        assert!(store.list_tokens(Some("carol")).unwrap().is_empty());
    }

    #[test]
    fn removing_user_removes_their_tokens() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &[]).unwrap();
        store.add_user("bob", &[]).unwrap();
        store
            .insert_token(&new_token("aaaa0001", "alice", 1_000))
            .unwrap();
        store
            .insert_token(&new_token("bbbb0001", "bob", 1_000))
            .unwrap();

        store.remove_user("alice").unwrap();
        assert_eq!(store.find_token_by_hash("hash-aaaa0001").unwrap(), None);
        assert_eq!(store.list_tokens(None).unwrap().len(), 1);

        // Re-adding the name does not bring old tokens back.
        store.add_user("alice", &[]).unwrap();
        assert!(store.list_tokens(Some("alice")).unwrap().is_empty());
    }
}
