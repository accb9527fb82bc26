//! The token string: generation, shape check and hashing.

use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};

const PREFIX: &str = "slu_";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;
/// `slu_` + id + `_` + secret.
const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh token: its public id and the full token string.
pub(crate) struct Generated {
    pub id: String,
    pub token: String,
}

/// Creates a new random token from the operating system's CSPRNG.
pub(crate) fn generate() -> Generated {
    let id: String = (0..ID_LEN)
        .map(|_| char::from(ID_ALPHABET[OsRng.gen_range(0..ID_ALPHABET.len())]))
        .collect();
    // Alphanumeric draws uniformly from the 62 characters [A-Za-z0-9]: ~190 bits.
    let secret: String = (0..SECRET_LEN)
        .map(|_| char::from(OsRng.sample(Alphanumeric)))
        .collect();
    let token = format!("{PREFIX}{id}_{secret}");
    Generated { id, token }
}

/// Whether `presented` has the exact shape of a sluice token. Checks the length first,
/// so arbitrarily long input is rejected without scanning it.
pub(crate) fn is_well_formed(presented: &str) -> bool {
    if presented.len() != TOKEN_LEN {
        return false;
    }
    let Some(rest) = presented.strip_prefix(PREFIX) else {
        return false;
    };
    let Some((id, secret)) = rest.split_at_checked(ID_LEN) else {
        return false;
    };
    let Some(secret) = secret.strip_prefix('_') else {
        return false;
    };
    id.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The stored form of a token: hex SHA-256 of the full token string.
///
/// A single fast hash is right here (unlike for passwords): the secret carries ~190 bits
/// of entropy, so brute-forcing a leaked hash is infeasible however fast the hash is, and
/// verification stays cheap on every connection. Lookup by hash also means the secret is
/// never compared byte by byte with stored data.
pub(crate) fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        for g in [&a, &b] {
            assert_eq!(g.token.len(), 45);
            assert!(g.token.starts_with(&format!("slu_{}_", g.id)));
            assert!(is_well_formed(&g.token), "{}", g.id);
        }
        assert_ne!(a.id, b.id);
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn shape_check() {
        let good = format!("slu_abcd1234_{}", "aZ0".repeat(10) + "xy");
        assert!(is_well_formed(&good));

        let multibyte = format!("slu_abcd1234_{}é", "a".repeat(30));
        assert_eq!(multibyte.len(), TOKEN_LEN);
        let bad = [
            String::new(),
            "slu_".to_string(),
            good.replacen("slu_", "sla_", 1),
            good[..good.len() - 1].to_string(),
            format!("{good}a"),
            good.replacen("abcd1234", "ABCD1234", 1),
            good.replacen("abcd1234_", "abcd1234-", 1),
            good.replacen("aZ0", "a-0", 1),
            multibyte,
            format!("ésl_abcd1234_{}", "a".repeat(31)),
        ];
        for s in &bad {
            assert!(!is_well_formed(s), "{s:?}");
        }
    }

    #[test]
    fn hash_is_hex_sha256_of_whole_token() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
