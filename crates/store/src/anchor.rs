//! Where the audit log was last known to be durable, kept outside the log.

use rusqlite::{params, OptionalExtension};

use crate::db::Store;
use crate::error::StoreError;

impl Store {
    /// Records that audit records up to `seq` (whose hash is `hash`) are durable. Only
    /// ever moves forward.
    pub fn set_audit_anchor(&self, seq: u64, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit_anchor (id, seq, hash, updated_ms) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET seq = ?1, hash = ?2, updated_ms = ?3
                 WHERE excluded.seq >= audit_anchor.seq",
                params![seq, hash, now_ms],
            )?;
            Ok(())
        })
    }

    /// The last recorded anchor: seq and hash.
    pub fn audit_anchor(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    "SELECT seq, hash FROM audit_anchor WHERE id = 1",
                    [],
                    |row| Ok((row.get::<_, u64>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()?)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::db::Store;

    #[test]
    fn anchor_only_moves_forward() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.audit_anchor().unwrap(), None);
        store.set_audit_anchor(5, "h5", 1).unwrap();
        store.set_audit_anchor(3, "h3", 2).unwrap();
        assert_eq!(store.audit_anchor().unwrap(), Some((5, "h5".into())));
        store.set_audit_anchor(9, "h9", 3).unwrap();
        assert_eq!(store.audit_anchor().unwrap(), Some((9, "h9".into())));
    }
}
