//! Users and their group memberships.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension, Transaction};

use crate::db::Store;
use crate::error::StoreError;

/// A local user and the groups that policy rules refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// Sorted, without duplicates.
    pub groups: Vec<String>,
    /// Creation time, unix milliseconds.
    pub created_ms: i64,
}

impl Store {
    /// Creates a user with the given groups (duplicates are ignored).
    ///
    /// Fails with [`StoreError::UserExists`] if the name is taken.
    pub fn add_user(&self, name: &str, groups: &[String]) -> Result<User, StoreError> {
        let created_ms = now_ms();
        let groups = normalize(groups);
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO users (name, created_ms) VALUES (?1, ?2)
                 ON CONFLICT (name) DO NOTHING",
                params![name, created_ms],
            )?;
            if inserted == 0 {
                return Err(StoreError::UserExists(name.to_string()));
            }
            insert_groups(tx, name, &groups)
        })?;
        Ok(User {
            name: name.to_string(),
            groups,
            created_ms,
        })
    }

    /// Looks a user up by name.
    pub fn get_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.read(|tx| {
            let created_ms: Option<i64> = tx
                .query_row(
                    "SELECT created_ms FROM users WHERE name = ?1",
                    [name],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(created_ms) = created_ms else {
                return Ok(None);
            };
            let mut stmt = tx.prepare(
                "SELECT group_name FROM user_groups WHERE user_name = ?1 ORDER BY group_name",
            )?;
            let groups = stmt
                .query_map([name], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(Some(User {
                name: name.to_string(),
                groups,
                created_ms,
            }))
        })
    }

    /// All users, ordered by name.
    pub fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.read(|tx| {
            let mut groups: HashMap<String, Vec<String>> = HashMap::new();
            let mut stmt = tx.prepare(
                "SELECT user_name, group_name FROM user_groups ORDER BY user_name, group_name",
            )?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            for row in rows {
                let (user, group): (String, String) = row?;
                groups.entry(user).or_default().push(group);
            }

            let mut stmt = tx.prepare("SELECT name, created_ms FROM users ORDER BY name")?;
            let users = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .map(|row| {
                    let (name, created_ms): (String, i64) = row?;
                    Ok(User {
                        groups: groups.remove(&name).unwrap_or_default(),
                        name,
                        created_ms,
                    })
                })
                .collect::<Result<Vec<User>, StoreError>>()?;
            Ok(users)
        })
    }

    /// Replaces a user's groups. Fails with [`StoreError::UserNotFound`] if there is no
    /// such user.
    pub fn set_user_groups(&self, name: &str, groups: &[String]) -> Result<(), StoreError> {
        let groups = normalize(groups);
        self.write(|tx| {
            if !user_exists(tx, name)? {
                return Err(StoreError::UserNotFound(name.to_string()));
            }
            tx.execute("DELETE FROM user_groups WHERE user_name = ?1", [name])?;
            insert_groups(tx, name, &groups)
        })
    }

    /// Removes a user together with their groups and tokens. Returns `false` if there was
    /// no such user. Sessions stay indexed under the name.
    pub fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let deleted = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
            Ok(deleted > 0)
        })
    }
}

/// Whether a user with this name exists.
pub(crate) fn user_exists(tx: &Transaction<'_>, name: &str) -> Result<bool, StoreError> {
    let found = tx
        .query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))
        .optional()?;
    Ok(found.is_some())
}

fn insert_groups(tx: &Transaction<'_>, name: &str, groups: &[String]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare("INSERT INTO user_groups (user_name, group_name) VALUES (?1, ?2)")?;
    for group in groups {
        stmt.execute(params![name, group])?;
    }
    Ok(())
}

/// Sorted and deduplicated, as stored and returned.
fn normalize(groups: &[String]) -> Vec<String> {
    let mut groups = groups.to_vec();
    groups.sort();
    groups.dedup();
    groups
}

/// The current time in unix milliseconds (0 if the clock is before 1970).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn add_get_list_remove() {
        let store = Store::open_in_memory().unwrap();
        let alice = store
            .add_user("alice", &groups(&["ops", "dba", "ops"]))
            .unwrap();
        assert_eq!(alice.groups, groups(&["dba", "ops"]));
        assert!(alice.created_ms > 0);
        store.add_user("bob", &[]).unwrap();

        assert_eq!(store.get_user("alice").unwrap(), Some(alice.clone()));
        assert_eq!(store.get_user("carol").unwrap(), None);

        let users = store.list_users().unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0], alice);
        assert_eq!(users[1].name, "bob");
        assert!(users[1].groups.is_empty());

        assert!(store.remove_user("alice").unwrap());
        assert!(!store.remove_user("alice").unwrap());
        assert_eq!(store.get_user("alice").unwrap(), None);
        assert_eq!(store.list_users().unwrap().len(), 1);
    }

    #[test]
    fn duplicate_user_is_refused() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &groups(&["dev"])).unwrap();
        let err = store.add_user("alice", &groups(&["ops"])).unwrap_err();
        assert!(matches!(err, StoreError::UserExists(ref name) if name == "alice"));
        // The failed attempt changed nothing.
        assert_eq!(
            store.get_user("alice").unwrap().unwrap().groups,
            groups(&["dev"])
        );
    }

    #[test]
    fn set_groups_replaces_them() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &groups(&["dev"])).unwrap();
        store
            .set_user_groups("alice", &groups(&["ops", "audit"]))
            .unwrap();
        assert_eq!(
            store.get_user("alice").unwrap().unwrap().groups,
            groups(&["audit", "ops"])
        );
        store.set_user_groups("alice", &[]).unwrap();
        assert!(store.get_user("alice").unwrap().unwrap().groups.is_empty());

        let err = store.set_user_groups("nobody", &[]).unwrap_err();
        assert!(matches!(err, StoreError::UserNotFound(ref name) if name == "nobody"));
    }

    #[test]
    fn removed_user_can_be_added_again_without_old_groups() {
        let store = Store::open_in_memory().unwrap();
        store.add_user("alice", &groups(&["dba"])).unwrap();
        store.remove_user("alice").unwrap();
        let alice = store.add_user("alice", &[]).unwrap();
        assert!(alice.groups.is_empty());
        assert!(store.get_user("alice").unwrap().unwrap().groups.is_empty());
    }
}
