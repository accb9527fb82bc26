//! Local passwords: argon2id hashes in PHC form (`$argon2id$v=19$m=…`).

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};

use crate::error::AuthError;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Hashes a new password (argon2id, the crate's recommended cost: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::WeakPassword(MIN_PASSWORD_CHARS));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::PasswordHash(e.to_string()))
}

/// Checks a password against a stored hash, or — for a user without one — against a
/// fixed hash, so that an unknown user costs the same time as a wrong password.
pub fn verify_password(stored: Option<&str>, password: &str) -> bool {
    let Some(stored) = stored else {
        let _ = verify(DUMMY_HASH, password);
        return false;
    };
    verify(stored, password)
}

fn verify(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// The argon2id hash of a random string nobody knows, with the default cost.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2x1aWNlLWR1bW15LXNhbHQ$2nJ0bRQ6k8a8m0Jq3o0S8y3jvV1oQmQ0m2m5n3bY7Xw";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(Some(&hash), "correct horse battery"));
        assert!(!verify_password(Some(&hash), "correct horse batterY"));
        assert!(!verify_password(None, "correct horse battery"));
        assert!(!verify_password(Some("not a hash"), "x"));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(matches!(
            hash_password("short"),
            Err(AuthError::WeakPassword(12))
        ));
    }
}
