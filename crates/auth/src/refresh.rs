//! Refresh handles for sign-ins through an identity provider: `slr_<43 random chars>`,
//! stored as a SHA-256 hash beside the provider's sealed refresh token, each spendable
//! once.

use std::time::{Duration, SystemTime};

use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};
use sluice_store::{RefreshHandle, Store, StoreError};

use crate::error::AuthError;
use crate::seal::Sealer;
use crate::tokens::unix_ms;

const PREFIX: &str = "slr_";
const SECRET_LEN: usize = 43;

/// Issues and spends refresh handles.
#[derive(Clone)]
pub struct Refreshes {
    store: std::sync::Arc<Store>,
    sealer: Sealer,
}

impl Refreshes {
    pub fn new(store: std::sync::Arc<Store>, sealer: Sealer) -> Refreshes {
        Refreshes { store, sealer }
    }

    /// A new handle for `user` that keeps `provider_refresh` (sealed) for `ttl`.
    pub fn issue(
        &self,
        user: &str,
        provider_refresh: &str,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let secret: String = (0..SECRET_LEN)
            .map(|_| char::from(OsRng.sample(Alphanumeric)))
            .collect();
        let handle = format!("{PREFIX}{secret}");
        let now = unix_ms(SystemTime::now());
        let record = RefreshHandle {
            id: secret[..8].to_ascii_lowercase(),
            user: user.to_string(),
            hash: hash(&handle),
            sealed: self.sealer.seal(provider_refresh, user)?,
            created_ms: now,
            expires_ms: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        };
        self.store.insert_refresh(&record).map_err(|e| match e {
            StoreError::UserNotFound(name) => AuthError::UnknownUser(name),
            other => AuthError::Store(other),
        })?;
        Ok(handle)
    }

    /// Spends a handle: returns its user and the provider's refresh token. Unknown,
    /// expired and reused handles are refused (a reuse also revokes the user's others).
    pub fn spend(&self, presented: &str) -> Result<(String, String), AuthError> {
        if !presented.starts_with(PREFIX) || presented.len() != PREFIX.len() + SECRET_LEN {
            return Err(AuthError::Malformed);
        }
        match self
            .store
            .spend_refresh(&hash(presented), unix_ms(SystemTime::now()))
        {
            Ok(Some(h)) => {
                let provider = self.sealer.open(&h.sealed, &h.user)?;
                Ok((h.user, provider))
            }
            Ok(None) => Err(AuthError::Unknown),
            Err(StoreError::RefreshReused(user)) => Err(AuthError::RefreshReused(user)),
            Err(e) => Err(AuthError::Store(e)),
        }
    }
}

fn hash(handle: &str) -> String {
    hex::encode(Sha256::digest(handle.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn issue_spend_reuse() {
        let store = std::sync::Arc::new(Store::open_in_memory().unwrap());
        store.add_user("alice", &[]).unwrap();
        let r = Refreshes::new(store, Sealer::new(&[1; 32]));
        let h = r
            .issue("alice", "idp-refresh", Duration::from_secs(60))
            .unwrap();
        assert!(h.starts_with("slr_"));
        assert_eq!(r.spend(&h).unwrap(), ("alice".into(), "idp-refresh".into()));
        assert!(matches!(r.spend(&h), Err(AuthError::RefreshReused(_))));
        assert!(matches!(r.spend("slr_x"), Err(AuthError::Malformed)));
        let other = format!("slr_{}", "a".repeat(43));
        assert!(matches!(r.spend(&other), Err(AuthError::Unknown)));
    }
}
