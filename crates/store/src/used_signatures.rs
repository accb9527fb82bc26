//! Header-signed AWS requests already served: a signature is accepted once while its
//! request time is within the accepted skew, so it is remembered exactly that long.

use rusqlite::params;

use crate::db::Store;
use crate::error::StoreError;

impl Store {
    /// Notes that `signature` was used, to be refused again until `until_ms`. Returns false
    /// when it was used before and is still remembered. Forgets the signatures whose time is
    /// over.
    pub fn use_signature(
        &self,
        signature: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM used_signatures WHERE until_ms <= ?1",
                params![now_ms],
            )?;
            let inserted = tx.execute(
                "INSERT INTO used_signatures (signature, until_ms) VALUES (?1, ?2)
                 ON CONFLICT(signature) DO NOTHING",
                params![signature, until_ms],
            )?;
            Ok(inserted == 1)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::db::Store;

    #[test]
    fn a_signature_is_used_once_while_remembered() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.use_signature("sig-a", 100, 10).unwrap());
        assert!(!store.use_signature("sig-a", 120, 50).unwrap());
        assert!(store.use_signature("sig-b", 100, 50).unwrap());
        // Its time over, it is forgotten (the request itself would be refused as too old).
        assert!(store.use_signature("sig-a", 300, 100).unwrap());
        assert!(!store.use_signature("sig-a", 300, 200).unwrap());
    }
}
