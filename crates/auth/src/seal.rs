//! Sealing secrets the gateway must keep but never show (an identity provider's refresh
//! tokens): XChaCha20-Poly1305 with a key that lives in the data directory, not in the
//! store, so a copy of the database alone reveals nothing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::AuthError;

const NONCE_LEN: usize = 24;

/// Encrypts and decrypts with one 256-bit key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// `base64url(nonce ‖ ciphertext ‖ tag)`; `context` is bound to it (e.g. the user), so
    /// a sealed value moved to another record does not open.
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String, AuthError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = chacha20poly1305::aead::Payload {
            msg: plaintext.as_bytes(),
            aad: context.as_bytes(),
        };
        let ciphertext = self
            .cipher
            .encrypt(&nonce, payload)
            .map_err(|_| AuthError::Sealing)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<String, AuthError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| AuthError::Sealing)?;
        if bytes.len() < NONCE_LEN {
            return Err(AuthError::Sealing);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = chacha20poly1305::aead::Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| AuthError::Sealing)?;
        String::from_utf8(plain).map_err(|_| AuthError::Sealing)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal("refresh-secret", "alice").unwrap();
        assert!(!sealed.contains("refresh-secret"));
        assert_eq!(sealer.open(&sealed, "alice").unwrap(), "refresh-secret");
        assert!(sealer.open(&sealed, "bob").is_err());
        assert!(Sealer::new(&[8; 32]).open(&sealed, "alice").is_err());
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(sealer
            .open(&URL_SAFE_NO_PAD.encode(bytes), "alice")
            .is_err());
        assert!(sealer.open("!!", "alice").is_err());
    }
}
