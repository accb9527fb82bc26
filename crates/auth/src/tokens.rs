//! Issuing, verifying and revoking tokens against the store.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::{Identity, Role};
use sluice_store::{NewToken, Store, StoreError, TokenKind};

use crate::error::AuthError;
use crate::format;
use crate::ttl::ttl_millis;

/// Token operations on a shared [`Store`]. Every method blocks on the store.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<Store>,
}

/// A newly issued token. `token` is the only copy of the secret in clear: show it to the
/// user once and drop it. `Debug` redacts it.
pub struct IssuedToken {
    /// Public id.
    pub id: String,
    pub user: String,
    /// The full token string, secret included.
    pub token: String,
    pub expires: SystemTime,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// A token that passed verification, and who it speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub token_id: String,
    /// The token's user with their current groups.
    pub identity: Identity,
    /// The user's current role.
    pub role: Role,
}

impl Tokens {
    /// Token operations backed by `store`.
    pub fn new(store: Arc<Store>) -> Tokens {
        Tokens { store }
    }

    /// Issues a token for `user`, valid for `ttl` (1 ms to 366 days).
    pub fn issue(&self, user: &str, ttl: Duration) -> Result<IssuedToken, AuthError> {
        self.issue_kind(user, ttl, TokenKind::Token)
    }

    /// Issues a token of a given kind (API key, sign-in, workload exchange).
    pub fn issue_kind(
        &self,
        user: &str,
        ttl: Duration,
        kind: TokenKind,
    ) -> Result<IssuedToken, AuthError> {
        let ttl_ms = ttl_millis(ttl)?;
        let generated = format::generate();
        let created_ms = unix_ms(SystemTime::now());
        let expires_ms = created_ms.saturating_add(ttl_ms);
        let new = NewToken {
            id: generated.id,
            user: user.to_string(),
            kind,
            hash: format::hash(&generated.token),
            created_ms,
            expires_ms,
        };
        // The store checks that the user exists in the same transaction as the insert.
        // A collision of the random 8-character id (36^8 values) fails the insert.
        self.store.insert_token(&new).map_err(|e| match e {
            StoreError::UserNotFound(name) => AuthError::UnknownUser(name),
            other => AuthError::Store(other),
        })?;
        Ok(IssuedToken {
            id: new.id,
            user: new.user,
            token: generated.token,
            // Rebuilt from the stored milliseconds so both agree exactly.
            expires: UNIX_EPOCH + Duration::from_millis(expires_ms.unsigned_abs()),
        })
    }

    /// Checks a presented token at time `now` and returns the identity it speaks for,
    /// with the user's current groups. Records the use on success.
    pub fn verify(&self, presented: &str, now: SystemTime) -> Result<Verified, AuthError> {
        if !format::is_well_formed(presented) {
            return Err(AuthError::Malformed);
        }
        let record = self
            .store
            .find_token_by_hash(&format::hash(presented))?
            .ok_or(AuthError::Unknown)?;
        if record.revoked_ms.is_some() {
            return Err(AuthError::Revoked {
                id: record.id,
                user: record.user,
            });
        }
        let now_ms = unix_ms(now);
        if now_ms >= record.expires_ms {
            return Err(AuthError::Expired {
                id: record.id,
                user: record.user,
            });
        }
        // Removing a user deletes their tokens, so this only fails if the removal
        // happened between the two lookups.
        let Some(user) = self.store.get_user(&record.user)? else {
            return Err(AuthError::UserRemoved {
                id: record.id,
                user: record.user,
            });
        };
        self.store.touch_token(&record.id, now_ms)?;
        Ok(Verified {
            identity: Identity {
                user: user.name,
                groups: user.groups,
                credential: Some(record.id.clone()),
                actor: user.actor,
            },
            token_id: record.id,
            role: user.role,
        })
    }

    /// Revokes the token with public id `id`. Returns `false` if it is unknown or
    /// already revoked.
    pub fn revoke(&self, id: &str) -> Result<bool, AuthError> {
        Ok(self.store.revoke_token(id, unix_ms(SystemTime::now()))?)
    }
}

/// `t` in unix milliseconds, clamped to `0..=i64::MAX`.
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A `Tokens` over an in-memory store with user `alice` in groups `dba`, `dev`.
    fn setup() -> (Arc<Store>, Tokens) {
        let store = Arc::new(Store::open_in_memory().unwrap());
        store
            .add_user("alice", &["dev".to_string(), "dba".to_string()])
            .unwrap();
        let tokens = Tokens::new(store.clone());
        (store, tokens)
    }

    #[test]
    fn issue_then_verify() {
        let (store, tokens) = setup();
        let issued = tokens.issue("alice", HOUR).unwrap();
        assert_eq!(issued.user, "alice");
        assert!(issued.token.starts_with(&format!("slu_{}_", issued.id)));
        let until_expiry = issued.expires.duration_since(SystemTime::now()).unwrap();
        assert!(until_expiry > HOUR - Duration::from_secs(60) && until_expiry <= HOUR);

        let now = SystemTime::now();
        let verified = tokens.verify(&issued.token, now).unwrap();
        assert_eq!(
            verified,
            Verified {
                token_id: issued.id.clone(),
                identity: Identity {
                    user: "alice".to_string(),
                    groups: vec!["dba".to_string(), "dev".to_string()],
                    credential: Some(issued.id.clone()),
                    actor: sluice_core::ActorKind::Human,
                },
                role: Role::User,
            }
        );

        // Only the hash is stored, and the use was recorded.
        let records = store.list_tokens(Some("alice")).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].hash, format::hash(&issued.token));
        assert_ne!(records[0].hash, issued.token);
        assert_eq!(records[0].last_used_ms, Some(unix_ms(now)));
    }

    #[test]
    fn verify_sees_current_groups() {
        let (store, tokens) = setup();
        let issued = tokens.issue("alice", HOUR).unwrap();
        store
            .set_user_groups("alice", &["audit".to_string()])
            .unwrap();
        let verified = tokens.verify(&issued.token, SystemTime::now()).unwrap();
        assert_eq!(verified.identity.groups, ["audit"]);
    }

    #[test]
    fn issue_checks_user_and_ttl() {
        let (_store, tokens) = setup();
        assert!(matches!(
            tokens.issue("bob", HOUR),
            Err(AuthError::UnknownUser(ref name)) if name == "bob"
        ));
        for ttl in [Duration::ZERO, Duration::from_secs(367 * 86400)] {
            assert!(matches!(
                tokens.issue("alice", ttl),
                Err(AuthError::InvalidTtl(_))
            ));
        }
    }

    #[test]
    fn expired() {
        let (_store, tokens) = setup();
        let issued = tokens.issue("alice", Duration::from_secs(60)).unwrap();
        assert!(tokens.verify(&issued.token, SystemTime::now()).is_ok());
        let err = tokens
            .verify(&issued.token, SystemTime::now() + HOUR)
            .unwrap_err();
        assert!(matches!(err, AuthError::Expired { ref user, .. } if user == "alice"));
        // Expiry is exclusive: the token is dead at exactly `expires`.
        assert!(matches!(
            tokens.verify(&issued.token, issued.expires),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn revoked() {
        let (_store, tokens) = setup();
        let issued = tokens.issue("alice", HOUR).unwrap();
        let other = tokens.issue("alice", HOUR).unwrap();
        assert!(tokens.revoke(&issued.id).unwrap());
        assert!(!tokens.revoke(&issued.id).unwrap());
        assert!(!tokens.revoke("zzzzzzzz").unwrap());

        let err = tokens.verify(&issued.token, SystemTime::now()).unwrap_err();
        assert!(matches!(err, AuthError::Revoked { ref id, .. } if *id == issued.id));
        assert!(tokens.verify(&other.token, SystemTime::now()).is_ok());
    }

    #[test]
    fn unknown() {
        let (_store, tokens) = setup();
        let never_issued = format::generate().token;
        assert!(matches!(
            tokens.verify(&never_issued, SystemTime::now()),
            Err(AuthError::Unknown)
        ));

        // Right id, wrong secret.
        let issued = tokens.issue("alice", HOUR).unwrap();
        let mut forged = issued.token.clone();
        let last = if forged.ends_with('a') { "b" } else { "a" };
        forged.replace_range(forged.len() - 1.., last);
        assert!(matches!(
            tokens.verify(&forged, SystemTime::now()),
            Err(AuthError::Unknown)
        ));
    }

    #[test]
    fn malformed() {
        let (_store, tokens) = setup();
        let issued = tokens.issue("alice", HOUR).unwrap();
        let t = &issued.token;
        let huge = format!("slu_{}", "a".repeat(1024 * 1024));
        let inputs = [
            String::new(),
            "slu_".to_string(),
            t.replacen("slu_", "tok_", 1),
            t[..t.len() - 1].to_string(),
            format!("{t}x"),
            format!(" {}", &t[1..]),
            format!("{}é", &t[..t.len() - 2]),
            t.to_uppercase(),
            huge,
        ];
        for input in &inputs {
            let shown = &input[..input.len().min(50)];
            assert!(
                matches!(
                    tokens.verify(input, SystemTime::now()),
                    Err(AuthError::Malformed)
                ),
                "{shown:?}"
            );
        }
    }

    #[test]
    fn user_removed_after_issue() {
        let (store, tokens) = setup();
        let issued = tokens.issue("alice", HOUR).unwrap();
        assert!(store.remove_user("alice").unwrap());
        // Removal deleted the token with the user.
        assert!(matches!(
            tokens.verify(&issued.token, SystemTime::now()),
            Err(AuthError::Unknown)
        ));
        // Re-creating the user does not revive the old token.
        store.add_user("alice", &[]).unwrap();
        assert!(matches!(
            tokens.verify(&issued.token, SystemTime::now()),
            Err(AuthError::Unknown)
        ));
    }

    #[test]
    fn debug_redacts_the_token() {
        let (_store, tokens) = setup();
        let issued = tokens.issue("alice", HOUR).unwrap();
        let debug = format!("{issued:?}");
        assert!(debug.contains(&issued.id));
        assert!(!debug.contains(secret_of(&issued.token)));
    }

    /// The secret part of a token string.
    fn secret_of(token: &str) -> &str {
        &token[13..]
    }

    /// One number per variant; the exhaustive match makes a new variant fail to compile
    /// here until the message test below covers it.
    fn variant_index(e: &AuthError) -> usize {
        match e {
            AuthError::Malformed => 0,
            AuthError::Unknown => 1,
            AuthError::Expired { .. } => 2,
            AuthError::Revoked { .. } => 3,
            AuthError::UserRemoved { .. } => 4,
            AuthError::UnknownUser(_) => 5,
            AuthError::InvalidTtl(_) => 6,
            AuthError::Store(_) => 7,
            AuthError::WeakPassword(_) => 8,
            AuthError::PasswordHash(_) => 9,
            AuthError::Sealing => 10,
            AuthError::RefreshReused(_) => 11,
        }
    }

    #[test]
    fn error_messages_never_contain_the_token() {
        let (store, tokens) = setup();
        let now = SystemTime::now();
        let expired = tokens.issue("alice", HOUR).unwrap();
        let revoked = tokens.issue("alice", HOUR).unwrap();
        tokens.revoke(&revoked.id).unwrap();
        let unknown = format::generate().token;
        let malformed = format!("{}!", &expired.token[..44]);

        let cases: Vec<(String, AuthError)> = vec![
            (
                malformed.clone(),
                tokens.verify(&malformed, now).unwrap_err(),
            ),
            (unknown.clone(), tokens.verify(&unknown, now).unwrap_err()),
            (
                expired.token.clone(),
                tokens.verify(&expired.token, now + 2 * HOUR).unwrap_err(),
            ),
            (
                revoked.token.clone(),
                tokens.verify(&revoked.token, now).unwrap_err(),
            ),
            (
                // Only reachable through a race with user removal; built directly.
                expired.token.clone(),
                AuthError::UserRemoved {
                    id: expired.id.clone(),
                    user: "alice".to_string(),
                },
            ),
            (
                expired.token.clone(),
                tokens.issue("bob", HOUR).unwrap_err(),
            ),
            (
                expired.token.clone(),
                tokens.issue("alice", Duration::ZERO).unwrap_err(),
            ),
            (
                expired.token.clone(),
                AuthError::Store(store.set_user_groups("bob", &[]).unwrap_err()),
            ),
            (
                expired.token.clone(),
                crate::hash_password("short").unwrap_err(),
            ),
            (
                expired.token.clone(),
                AuthError::PasswordHash("salt".into()),
            ),
            (expired.token.clone(), AuthError::Sealing),
            (
                expired.token.clone(),
                AuthError::RefreshReused("alice".into()),
            ),
        ];

        let mut seen = [false; 12];
        for (token, err) in &cases {
            seen[variant_index(err)] = true;
            let message = err.to_string();
            assert!(!message.contains(token.as_str()), "{message}");
            // No 6-character run of the secret appears either.
            let secret = secret_of(token);
            for start in 0..=secret.len() - 6 {
                let part = &secret[start..start + 6];
                assert!(!message.contains(part), "{message} contains {part}");
            }
        }
        assert!(seen.iter().all(|s| *s), "uncovered variants: {seen:?}");
    }
}
