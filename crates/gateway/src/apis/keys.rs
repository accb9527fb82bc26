//! sluice-issued AWS key pairs: an access key id and a secret access key, bound to a user
//! (and optionally one connection), short-lived and revocable. SigV4 needs the secret itself
//! to check a signature, so it is kept sealed (XChaCha20-Poly1305 under `sealing.key`, bound
//! to the key id and user): a copied database alone does not give it away.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::distributions::Uniform;
use rand::rngs::OsRng;
use rand::Rng;
use sluice_auth::Sealer;
use sluice_store::{AwsKeyRow, Store, StoreError};

/// Access key ids start with this (AWS's own start with `AKIA`/`ASIA`), so a log reader can
/// tell a sluice key from an AWS one.
pub const KEY_PREFIX: &str = "SLUICE";
/// The longest a key may live.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A key pair just issued: the only time the secret is shown.
pub struct IssuedKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub user: String,
    pub connection: Option<String>,
    pub expires: SystemTime,
}

/// A key as a request presents it, opened.
pub struct KeyInUse {
    pub user: String,
    pub connection: Option<String>,
    pub secret: String,
}

/// Why a presented key is not usable (safe to show: it names the key id only).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the access key id {0} does not exist")]
    Unknown(String),
    #[error("the access key {0} has expired; issue a new one with `sluice aws-keys issue`")]
    Expired(String),
    #[error("the access key {0} has been revoked")]
    Revoked(String),
    #[error("the metadata store is unavailable")]
    Store(#[from] StoreError),
    #[error("the key lookup did not complete")]
    Unavailable,
    #[error("the key cannot be opened (was sealing.key replaced?)")]
    Sealing,
}

fn random(alphabet: &[u8], len: usize) -> String {
    let pick = Uniform::from(0..alphabet.len());
    (0..len)
        .map(|_| char::from(alphabet[OsRng.sample(pick)]))
        .collect()
}

/// What the sealed secret is bound to.
fn seal_context(id: &str, user: &str) -> String {
    format!("aws-key:{id}:{user}")
}

/// Issues a key pair for `user` (who must exist), valid for `ttl`.
pub fn issue(
    store: &Store,
    sealer: &Sealer,
    user: &str,
    connection: Option<&str>,
    ttl: Duration,
) -> Result<IssuedKey> {
    if ttl.is_zero() || ttl > MAX_TTL {
        bail!("--ttl must be between 1s and 30d");
    }
    const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 20 characters like AWS's: the prefix and 14 random ones (70 bits).
    let id = format!("{KEY_PREFIX}{}", random(UPPER_DIGITS, 14));
    let secret = random(SECRET, 40);
    let created = SystemTime::now();
    let expires = created + ttl;
    let sealed = sealer
        .seal(&secret, &seal_context(&id, user))
        .context("cannot seal the secret")?;
    store
        .insert_aws_key(&AwsKeyRow {
            id: id.clone(),
            user: user.to_owned(),
            connection: connection.map(str::to_owned),
            sealed_secret: sealed,
            created_ms: crate::views::unix_ms(created),
            expires_ms: crate::views::unix_ms(expires),
            revoked_ms: None,
            last_used_ms: None,
        })
        .map_err(|e| match e {
            StoreError::UserNotFound(name) => {
                anyhow::anyhow!("no user {name:?}; add it with `sluice users add {name}`")
            }
            other => other.into(),
        })?;
    Ok(IssuedKey {
        access_key_id: id,
        secret_access_key: secret,
        user: user.to_owned(),
        connection: connection.map(str::to_owned),
        expires: UNIX_EPOCH + Duration::from_millis(crate::views::unix_ms(expires).unsigned_abs()),
    })
}

/// Opens the key a request presents: its user, connection and secret.
pub async fn open(
    store: &Arc<Store>,
    sealer: &Arc<Sealer>,
    id: &str,
) -> Result<KeyInUse, KeyError> {
    let (store, sealer, key_id) = (store.clone(), sealer.clone(), id.to_owned());
    tokio::task::spawn_blocking(move || {
        let row = store
            .get_aws_key(&key_id)?
            .ok_or_else(|| KeyError::Unknown(key_id.clone()))?;
        let now = crate::views::unix_ms(SystemTime::now());
        if row.revoked_ms.is_some() {
            return Err(KeyError::Revoked(key_id));
        }
        if row.expires_ms <= now {
            return Err(KeyError::Expired(key_id));
        }
        let secret = sealer
            .open(&row.sealed_secret, &seal_context(&row.id, &row.user))
            .map_err(|_| KeyError::Sealing)?;
        // Noted at most once a minute per key: not a write per request.
        if row.last_used_ms.is_none_or(|t| now - t > 60_000) {
            let _ = store.touch_aws_key(&row.id, now);
        }
        Ok(KeyInUse {
            user: row.user,
            connection: row.connection,
            secret,
        })
    })
    .await
    .map_err(|_| KeyError::Unavailable)?
}

/// A stored key as listings show it (never the secret).
pub fn key_json(key: &AwsKeyRow, now_ms: i64) -> serde_json::Value {
    use crate::views::{credential_state, rfc3339_ms};
    serde_json::json!({
        "access_key_id": key.id, "user": key.user, "connection": key.connection,
        "state": credential_state(key.revoked_ms, key.expires_ms, now_ms),
        "created": rfc3339_ms(key.created_ms), "expires": rfc3339_ms(key.expires_ms),
        "last_used": key.last_used_ms.map(rfc3339_ms),
    })
}
