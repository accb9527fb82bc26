//! Users (people and service accounts), their roles, passwords and group memberships.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension, Row, Transaction};
use sluice_core::{ActorKind, Role};

use crate::db::Store;
use crate::error::StoreError;

/// Where a user's identity is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Created with the CLI; signs in with a token or a local password.
    Local,
    /// Created or updated at sign-in through the OpenID Connect provider, which owns the
    /// user's groups and role.
    Oidc,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Oidc => "oidc",
        }
    }

    fn parse(text: &str) -> Origin {
        if text == "oidc" {
            Origin::Oidc
        } else {
            Origin::Local
        }
    }
}

/// A user and the groups that policy rules refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// Sorted, without duplicates.
    pub groups: Vec<String>,
    /// Creation time, unix milliseconds.
    pub created_ms: i64,
    /// A person, or a service account (AI agent, CI job): recorded on every event.
    pub actor: ActorKind,
    pub role: Role,
    pub origin: Origin,
    /// Whether a local password is set (the hash itself is read only to verify).
    pub has_password: bool,
}

/// What a new user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser<'a> {
    pub name: &'a str,
    pub groups: &'a [String],
    pub actor: ActorKind,
    pub role: Role,
    pub origin: Origin,
}

impl<'a> NewUser<'a> {
    /// A local person with role `user`.
    pub fn person(name: &'a str, groups: &'a [String]) -> NewUser<'a> {
        NewUser {
            name,
            groups,
            actor: ActorKind::Human,
            role: Role::User,
            origin: Origin::Local,
        }
    }
}

const USER_COLUMNS: &str = "name, created_ms, actor, role, origin, password_hash IS NOT NULL";

/// A user row without groups.
fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let actor: String = row.get(2)?;
    let role: String = row.get(3)?;
    let origin: String = row.get(4)?;
    Ok(User {
        name: row.get(0)?,
        groups: Vec::new(),
        created_ms: row.get(1)?,
        // Unknown values (a newer sluice wrote them) read as the least privileged.
        actor: ActorKind::parse(&actor).unwrap_or(ActorKind::Agent),
        role: Role::parse(&role).unwrap_or(Role::User),
        origin: Origin::parse(&origin),
        has_password: row.get(5)?,
    })
}

impl Store {
    /// Creates a local person with role `user` and the given groups (duplicates are
    /// ignored). Fails with [`StoreError::UserExists`] if the name is taken.
    pub fn add_user(&self, name: &str, groups: &[String]) -> Result<User, StoreError> {
        self.create_user(&NewUser::person(name, groups))
    }

    /// Creates a user. Fails with [`StoreError::UserExists`] if the name is taken.
    pub fn create_user(&self, new: &NewUser<'_>) -> Result<User, StoreError> {
        let created_ms = now_ms();
        let groups = normalize(new.groups);
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO users (name, created_ms, actor, role, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO NOTHING",
                params![
                    new.name,
                    created_ms,
                    new.actor.as_str(),
                    new.role.as_str(),
                    new.origin.as_str()
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::UserExists(new.name.to_string()));
            }
            insert_groups(tx, new.name, &groups)
        })?;
        Ok(User {
            name: new.name.to_string(),
            groups,
            created_ms,
            actor: new.actor,
            role: new.role,
            origin: new.origin,
            has_password: false,
        })
    }

    /// Brings a user signing in through the identity provider up to date: creates them
    /// (when `create` is set) or replaces their groups and role with what the provider
    /// says now. `subject` (issuer and `sub`) binds the name to one provider identity for
    /// good, so a reassigned e-mail address or a recreated provider account cannot inherit
    /// it. Never taken over: a local user with a password, a service account, and — when
    /// users are created automatically — any local user (only an administrator who
    /// pre-provisions users, `create == false`, links a local name to the provider).
    pub fn sync_oidc_user(
        &self,
        name: &str,
        subject: &str,
        groups: &[String],
        role: Role,
        create: bool,
    ) -> Result<User, StoreError> {
        let groups = normalize(groups);
        self.write(|tx| {
            let existing = read_user(tx, name)?;
            let bound: Option<String> = tx
                .query_row(
                    "SELECT external_id FROM users WHERE name = ?1",
                    [name],
                    |row| row.get(0),
                )
                .optional()?
                .flatten();
            match existing {
                None if !create => return Err(StoreError::UserNotFound(name.to_string())),
                None => {
                    tx.execute(
                        "INSERT INTO users (name, created_ms, actor, role, origin, external_id)
                         VALUES (?1, ?2, 'human', ?3, 'oidc', ?4)",
                        params![name, now_ms(), role.as_str(), subject],
                    )?;
                }
                Some(user) if user.has_password || user.actor != ActorKind::Human => {
                    return Err(StoreError::UserExists(name.to_string()));
                }
                Some(_) if bound.as_deref().is_some_and(|b| b != subject) => {
                    return Err(StoreError::IdentityMismatch(name.to_string()));
                }
                Some(user) if bound.is_none() && (create || user.origin != Origin::Local) => {
                    return Err(StoreError::UserExists(name.to_string()));
                }
                Some(_) => {
                    tx.execute(
                        "UPDATE users SET role = ?2, origin = 'oidc', external_id = ?3
                         WHERE name = ?1",
                        params![name, role.as_str(), subject],
                    )?;
                    tx.execute("DELETE FROM user_groups WHERE user_name = ?1", [name])?;
                }
            }
            insert_groups(tx, name, &groups)?;
            read_user(tx, name)?.ok_or_else(|| StoreError::UserNotFound(name.to_string()))
        })
    }

    /// Looks a user up by name.
    pub fn get_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.read(|tx| read_user(tx, name))
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

            let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY name");
            let mut stmt = tx.prepare(&sql)?;
            let users = stmt
                .query_map([], user_from_row)?
                .map(|row| {
                    let mut user = row?;
                    user.groups = groups.remove(&user.name).unwrap_or_default();
                    Ok(user)
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

    /// Sets a user's role.
    pub fn set_user_role(&self, name: &str, role: Role) -> Result<(), StoreError> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE users SET role = ?2 WHERE name = ?1",
                params![name, role.as_str()],
            )?;
            if updated == 0 {
                return Err(StoreError::UserNotFound(name.to_string()));
            }
            Ok(())
        })
    }

    /// Sets (or with `None` removes) a user's password hash (a PHC string).
    pub fn set_password_hash(&self, name: &str, hash: Option<&str>) -> Result<(), StoreError> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE name = ?1",
                params![name, hash],
            )?;
            if updated == 0 {
                return Err(StoreError::UserNotFound(name.to_string()));
            }
            Ok(())
        })
    }

    /// A user's password hash, if they have one.
    pub fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            let hash: Option<Option<String>> = tx
                .query_row(
                    "SELECT password_hash FROM users WHERE name = ?1",
                    [name],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(hash.flatten())
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

/// One user with their groups.
fn read_user(tx: &Transaction<'_>, name: &str) -> Result<Option<User>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1");
    let Some(mut user) = tx.query_row(&sql, [name], user_from_row).optional()? else {
        return Ok(None);
    };
    let mut stmt =
        tx.prepare("SELECT group_name FROM user_groups WHERE user_name = ?1 ORDER BY group_name")?;
    user.groups = stmt
        .query_map([name], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(Some(user))
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
    fn roles_passwords_and_oidc_sync() {
        let store = Store::open_in_memory().unwrap();
        let svc = store
            .create_user(&NewUser {
                name: "cursor",
                groups: &groups(&["agents"]),
                actor: ActorKind::Agent,
                role: Role::User,
                origin: Origin::Local,
            })
            .unwrap();
        assert_eq!(store.get_user("cursor").unwrap(), Some(svc));
        store.add_user("alice", &[]).unwrap();
        store.set_user_role("alice", Role::Admin).unwrap();
        store
            .set_password_hash("alice", Some("$argon2id$x"))
            .unwrap();
        let alice = store.get_user("alice").unwrap().unwrap();
        assert_eq!((alice.role, alice.has_password), (Role::Admin, true));
        assert_eq!(
            store.password_hash("alice").unwrap().as_deref(),
            Some("$argon2id$x")
        );
        assert!(matches!(
            store.set_user_role("nobody", Role::Admin),
            Err(StoreError::UserNotFound(_))
        ));

        // The provider may create and update people, never take over a local password
        // user or a service account.
        let sync = |name: &str, subject: &str, g: &[&str], role: Role, create: bool| {
            store.sync_oidc_user(name, subject, &groups(g), role, create)
        };
        let bob = sync("bob", "idp bob", &["eng"], Role::Auditor, true).unwrap();
        assert_eq!(
            (bob.origin, bob.role, bob.groups.clone()),
            (Origin::Oidc, Role::Auditor, groups(&["eng"]))
        );
        let bob = sync("bob", "idp bob", &[], Role::User, false).unwrap();
        assert!(bob.groups.is_empty());
        // Another provider identity with the same name (a reassigned address): refused.
        assert!(matches!(
            sync("bob", "idp bob-2", &[], Role::User, true),
            Err(StoreError::IdentityMismatch(_))
        ));
        assert!(matches!(
            sync("alice", "idp alice", &[], Role::User, true),
            Err(StoreError::UserExists(_))
        ));
        assert!(matches!(
            sync("cursor", "idp cursor", &[], Role::User, true),
            Err(StoreError::UserExists(_))
        ));
        assert!(matches!(
            sync("dave", "idp dave", &[], Role::User, false),
            Err(StoreError::UserNotFound(_))
        ));
        // A local user without a password is linked only by an administrator's choice
        // (users not created automatically), never by auto-provisioning.
        store.add_user("erin", &[]).unwrap();
        assert!(matches!(
            sync("erin", "idp erin", &[], Role::User, true),
            Err(StoreError::UserExists(_))
        ));
        assert_eq!(
            sync("erin", "idp erin", &[], Role::User, false)
                .unwrap()
                .origin,
            Origin::Oidc
        );
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
