//! Remote agents' keys: `sla_<id>_<secret>`, the same shape and strength as user tokens
//! with their own prefix (so one is never mistaken for the other), stored as a SHA-256
//! hash.

use crate::format;

const PREFIX: &str = "sla_";

/// A new key: its public id, the key itself (show once), and the hash to store.
pub struct NewAgentKey {
    pub id: String,
    pub key: String,
    pub hash: String,
}

impl std::fmt::Debug for NewAgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAgentKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub fn new_agent_key() -> NewAgentKey {
    let generated = format::generate();
    let key = generated.token.replacen("slu_", PREFIX, 1);
    NewAgentKey {
        id: generated.id,
        hash: format::hash(&key),
        key,
    }
}

/// The stored hash of a presented key; `None` if it is not shaped like an agent key.
pub fn agent_key_hash(presented: &str) -> Option<String> {
    let rest = presented.strip_prefix(PREFIX)?;
    format::is_well_formed(&format!("slu_{rest}")).then(|| format::hash(presented))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_from_tokens() {
        let k = new_agent_key();
        assert!(k.key.starts_with(&format!("sla_{}_", k.id)));
        assert_eq!(agent_key_hash(&k.key).unwrap(), k.hash);
        assert!(agent_key_hash(&k.key.replacen("sla_", "slu_", 1)).is_none());
        assert!(agent_key_hash("sla_short").is_none());
        assert!(!format!("{k:?}").contains(&k.key));
    }
}
