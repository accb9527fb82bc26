//! Remote agents: a name, the hash of its key, and the tunnels the gateway last reported.

use rusqlite::{params, OptionalExtension, Row};

use crate::db::Store;
use crate::error::StoreError;

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub name: String,
    pub key_id: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    /// JSON array of the agent's live tunnels as the gateway last wrote them.
    pub state: String,
    /// When the gateway wrote `state`.
    pub state_ms: Option<i64>,
}

const COLUMNS: &str = "name, key_id, created_ms, revoked_ms, state, state_ms";

/// The gateway rewrites each agent's state every 2 s; one older than this was left by a
/// gateway that stopped.
const STATE_FRESH_MS: i64 = 10_000;

impl AgentRow {
    /// Whether `state` was written recently enough to describe the agent now.
    pub fn state_is_fresh(&self, now_ms: i64) -> bool {
        self.state_ms.is_some_and(|at| now_ms - at < STATE_FRESH_MS)
    }

    /// Whether the agent has a live tunnel to a running gateway now.
    pub fn connected(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none() && self.state_is_fresh(now_ms) && self.state.trim() != "[]"
    }
}

fn agent_from_row(row: &Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        name: row.get(0)?,
        key_id: row.get(1)?,
        created_ms: row.get(2)?,
        revoked_ms: row.get(3)?,
        state: row.get(4)?,
        state_ms: row.get(5)?,
    })
}

impl Store {
    /// Registers an agent, or gives a revoked one a new key (how a key is rotated: revoke,
    /// then add again). Fails with [`StoreError::AgentExists`] if the name is in use.
    pub fn add_agent(
        &self,
        name: &str,
        key_id: &str,
        key_hash: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO agents (name, key_id, key_hash, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE
                 SET key_id = ?2, key_hash = ?3, created_ms = ?4, revoked_ms = NULL, state = '[]'
                 WHERE agents.revoked_ms IS NOT NULL",
                params![name, key_id, key_hash, now_ms],
            )?;
            if inserted == 0 {
                return Err(StoreError::AgentExists(name.to_owned()));
            }
            Ok(())
        })
    }

    /// The agent whose key has this hash.
    pub fn agent_by_key_hash(&self, hash: &str) -> Result<Option<AgentRow>, StoreError> {
        self.read(|tx| {
            let sql = format!("SELECT {COLUMNS} FROM agents WHERE key_hash = ?1");
            Ok(tx.query_row(&sql, [hash], agent_from_row).optional()?)
        })
    }

    pub fn list_agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        self.read(|tx| {
            let sql = format!("SELECT {COLUMNS} FROM agents ORDER BY name");
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt
                .query_map([], agent_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Revokes an agent's key. Returns `false` if there is no such active agent.
    pub fn revoke_agent(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE agents SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                params![name, now_ms],
            )?;
            Ok(updated > 0)
        })
    }

    /// Records the live tunnels of every agent (`(name, state JSON)`); agents not listed
    /// have none.
    pub fn set_agent_states(
        &self,
        states: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("UPDATE agents SET state = '[]', state_ms = ?1", [now_ms])?;
            let mut stmt =
                tx.prepare("UPDATE agents SET state = ?2, state_ms = ?3 WHERE name = ?1")?;
            for (name, state) in states {
                stmt.execute(params![name, state, now_ms])?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn add_find_state_revoke() {
        let store = Store::open_in_memory().unwrap();
        store.add_agent("edge", "k1", "hash-1", 1).unwrap();
        assert!(matches!(
            store.add_agent("edge", "k2", "hash-2", 2),
            Err(StoreError::AgentExists(_))
        ));
        let found = store.agent_by_key_hash("hash-1").unwrap().unwrap();
        assert_eq!((found.name.as_str(), found.state.as_str()), ("edge", "[]"));
        store
            .set_agent_states(&[("edge".into(), "[{\"since\":1}]".into())], 5)
            .unwrap();
        assert_eq!(store.list_agents().unwrap()[0].state_ms, Some(5));
        assert!(store.revoke_agent("edge", 9).unwrap());
        assert!(!store.revoke_agent("edge", 9).unwrap());
        assert_eq!(
            store
                .agent_by_key_hash("hash-1")
                .unwrap()
                .unwrap()
                .revoked_ms,
            Some(9)
        );
        assert_eq!(store.agent_by_key_hash("nope").unwrap(), None);
        // A revoked name takes a new key; the old one stays unknown.
        store.add_agent("edge", "k3", "hash-3", 10).unwrap();
        assert_eq!(store.agent_by_key_hash("hash-1").unwrap(), None);
        let renewed = store.agent_by_key_hash("hash-3").unwrap().unwrap();
        assert_eq!((renewed.name.as_str(), renewed.revoked_ms), ("edge", None));
        assert!(matches!(
            store.add_agent("edge", "k4", "hash-4", 11),
            Err(StoreError::AgentExists(_))
        ));
    }
}
