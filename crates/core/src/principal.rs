//! Who a rule names, and the glob matching rules use for names.

use crate::{ActorKind, Identity};

/// Who a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(String),
    Group(String),
    /// A non-human identity by name, or every non-human identity (`agent:*`).
    Agent(Option<String>),
}

impl Principal {
    pub fn parse(text: &str) -> Result<Principal, String> {
        match text.split_once(':') {
            Some(("user", name)) if !name.is_empty() => Ok(Principal::User(name.into())),
            Some(("group", name)) if !name.is_empty() => Ok(Principal::Group(name.into())),
            Some(("agent", "*")) => Ok(Principal::Agent(None)),
            Some(("agent", name)) if !name.is_empty() => Ok(Principal::Agent(Some(name.into()))),
            _ => Err(format!(
                "expected `user:NAME`, `group:NAME`, `agent:NAME` or `agent:*`, got {text:?}"
            )),
        }
    }

    pub fn covers(&self, identity: &Identity) -> bool {
        match self {
            Principal::User(name) => identity.user == *name,
            Principal::Group(group) => identity.groups.iter().any(|g| g == group),
            Principal::Agent(name) => {
                identity.actor == ActorKind::Agent
                    && name.as_ref().is_none_or(|n| identity.user == *n)
            }
        }
    }
}

/// `*` matches any run of characters; everything else matches itself, ignoring ASCII case
/// (a rule naming `Users` must not miss `users`: over-matching is the safe side).
pub fn glob(pattern: &str, text: &str) -> bool {
    // Non-ASCII bytes compare exactly, ASCII letters ignoring case.
    glob_with(pattern, text, |a, b| a.eq_ignore_ascii_case(&b))
}

/// Like [`glob`], but case-sensitive: for names where case matters (a CI token's subject
/// names a branch; `Main` is not `main`).
pub fn glob_exact(pattern: &str, text: &str) -> bool {
    glob_with(pattern, text, |a, b| a == b)
}

fn glob_with(pattern: &str, text: &str, same: impl Fn(u8, u8) -> bool) -> bool {
    // On bytes, without allocating: this runs for every table and function of every
    // statement.
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    // Iterative matcher with backtracking to the last `*`: linear-ish, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && same(pattern[p], text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("prod_*", "prod_users"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("Users", "users"));
        assert!(!glob("user", "users"));
        assert!(glob("tä*", "täble"));
        assert!(!glob("TÄ*", "täble"));
        assert!(glob_exact(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/app:ref:refs/heads/main"
        ));
        assert!(!glob_exact(
            "repo:acme/app:*main",
            "repo:acme/app:ref:refs/heads/Main"
        ));
    }

    #[test]
    fn principals() {
        let alice = Identity {
            user: "alice".into(),
            groups: vec!["dba".into()],
            credential: None,
            actor: ActorKind::Human,
        };
        let cursor = Identity {
            user: "cursor".into(),
            groups: vec![],
            credential: None,
            actor: ActorKind::Agent,
        };
        assert!(Principal::parse("group:dba")
            .unwrap_or(Principal::Agent(None))
            .covers(&alice));
        assert!(Principal::Agent(None).covers(&cursor));
        assert!(!Principal::Agent(None).covers(&alice));
        assert!(Principal::Agent(Some("cursor".into())).covers(&cursor));
        assert!(Principal::parse("role:x").is_err());
        assert!(Principal::parse("user:").is_err());
    }
}
