//! Rules as written in the config file, their validation, and matching against [`Facts`].

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use sluice_core::{glob, Identity, Principal};

use crate::classify::{Facts, Kind, PathChange, TableName};
use crate::PolicyError;

/// One rule as written under `policies:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// Connections the rule covers; empty or absent: all of them.
    #[serde(default)]
    pub connections: Vec<String>,
    /// Who the rule applies to (`user:NAME`, `group:NAME`, `agent:NAME`, `agent:*`);
    /// empty or absent: everyone.
    #[serde(default)]
    pub applies_to: Vec<String>,
    /// Who the rule never applies to, in the same notation.
    #[serde(default)]
    pub except: Vec<String>,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    pub action: String,
    /// Shown to the client with the refusal.
    #[serde(default)]
    pub message: Option<String>,
    /// `review` rules: who may approve (`user:`, `group:` principals).
    #[serde(default)]
    pub reviewers: Vec<String>,
    /// `review` rules: `hold` (the client waits; default) or `fail` (the client gets an
    /// error with the review id at once; the same statement passes once after approval).
    #[serde(default)]
    pub mode: Option<String>,
    /// `review` rules: a different mode for some identities.
    #[serde(default)]
    pub mode_overrides: Vec<ModeOverride>,
    /// `review` rules: distinct approvals needed (default 1).
    #[serde(default)]
    pub min_approvals: Option<u32>,
    /// `review` rules: how long a review waits for a decision (default 15m).
    #[serde(default)]
    pub timeout: Option<String>,
    /// `review` rules in `fail` mode: how long an approval may be used (default 10m).
    #[serde(default)]
    pub approval_window: Option<String>,
}

/// `{ principal: agent:*, mode: fail }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeOverride {
    pub principal: String,
    pub mode: String,
}

/// The `match:` of a rule. Every criterion given must hold; within a list, any entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Statement kinds: select, insert, update, delete, merge, ddl (= create, alter, drop,
    /// truncate), create, alter, drop, truncate, grant, revoke, copy, call, set, transaction,
    /// explain, prepare, execute, deallocate, other.
    #[serde(default)]
    pub statement: Vec<String>,
    /// Table globs, `schema.table` or `table` (any schema); `*` matches any run of characters.
    #[serde(default)]
    pub tables: Vec<String>,
    /// `absent` or `present`: whether an UPDATE/DELETE limits its rows with a WHERE clause.
    #[serde(default, rename = "where")]
    pub where_clause: Option<String>,
    /// Function globs, `name` or `schema.name`.
    #[serde(default)]
    pub functions: Vec<String>,
    /// API actions of AWS and HTTP connections, `service:Action` globs: `s3:DeleteObject`,
    /// `s3:Put*`, `lambda:Invoke`, `http:DELETE`.
    #[serde(default)]
    pub actions: Vec<String>,
    /// What an API call acts on, globs: `prod-*` (a bucket), `prod-*/*` (its objects),
    /// `billing-*` (a function), `/admin/*` (an HTTP path).
    #[serde(default)]
    pub resources: Vec<String>,
}

/// How a client waits for a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewMode {
    /// The statement is parked; the client waits for the decision.
    Hold,
    /// The client gets an error with the review id at once; after approval the same
    /// statement passes once.
    Fail,
}

impl ReviewMode {
    fn parse(text: &str) -> Result<ReviewMode, String> {
        match text {
            "hold" => Ok(ReviewMode::Hold),
            "fail" => Ok(ReviewMode::Fail),
            other => Err(format!("expected `hold` or `fail`, got {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewMode::Hold => "hold",
            ReviewMode::Fail => "fail",
        }
    }
}

/// What a `review` rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub reviewers: Vec<Principal>,
    pub mode: ReviewMode,
    pub mode_overrides: Vec<(Principal, ReviewMode)>,
    pub min_approvals: u32,
    pub timeout: Duration,
    pub approval_window: Duration,
}

impl Review {
    /// The mode for `identity`: the first override that covers it, else the rule's.
    pub fn mode_for(&self, identity: &Identity) -> ReviewMode {
        self.mode_overrides
            .iter()
            .find(|(p, _)| p.covers(identity))
            .map_or(self.mode, |(_, mode)| *mode)
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Deny,
    Review(Review),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Deny => f.write_str("deny"),
            Action::Review(_) => f.write_str("review"),
        }
    }
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub connections: Vec<String>,
    pub applies_to: Vec<Principal>,
    pub except: Vec<Principal>,
    pub action: Action,
    pub message: Option<String>,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
struct Matcher {
    kinds: BTreeSet<Kind>,
    tables: Vec<TablePattern>,
    where_present: Option<bool>,
    functions: Vec<String>,
    actions: Vec<String>,
    resources: Vec<String>,
}

impl Matcher {
    fn has_sql_criteria(&self) -> bool {
        !self.kinds.is_empty()
            || !self.tables.is_empty()
            || self.where_present.is_some()
            || !self.functions.is_empty()
    }

    fn has_call_criteria(&self) -> bool {
        !self.actions.is_empty() || !self.resources.is_empty()
    }
}

/// Where a session's unqualified table names may resolve (every schema it may have put on
/// its `search_path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchPath {
    /// These schemas (after `pg_catalog`, which the server always searches first).
    Known(Vec<String>),
    /// Changed in a way sluice cannot follow: an unqualified name may be in any schema.
    Unknown,
}

impl Default for SearchPath {
    /// sluice assumes the server's default, `"$user", public`, finds tables in `public`.
    fn default() -> Self {
        SearchPath::Known(vec!["public".into()])
    }
}

impl SearchPath {
    /// Adds what `change` may put on the path. Schemas are never taken off: a `SET` undone
    /// by a `ROLLBACK` (or a `RESET` that is) cannot be seen from here, so the path is every
    /// schema the session may have on it.
    pub(crate) fn apply(&mut self, change: &PathChange) {
        let added = match change {
            PathChange::Set(schemas) => schemas.clone(),
            PathChange::Reset => SearchPath::default().schemas().to_vec(),
            PathChange::Unknown => {
                *self = SearchPath::Unknown;
                return;
            }
        };
        if let SearchPath::Known(schemas) = self {
            for schema in added {
                if !schemas.contains(&schema) {
                    schemas.push(schema);
                }
            }
        }
    }

    /// The path as part of a review's context (`search_path: public, secret`).
    pub fn describe(&self) -> String {
        match self {
            SearchPath::Known(schemas) => format!("search_path: {}", schemas.join(", ")),
            SearchPath::Unknown => "search_path: unknown".to_owned(),
        }
    }

    fn schemas(&self) -> &[String] {
        match self {
            SearchPath::Known(schemas) => schemas,
            SearchPath::Unknown => &[],
        }
    }

    /// Whether an unqualified name may resolve into a schema matching `pattern`.
    fn may_reach(&self, pattern: &str) -> bool {
        match self {
            SearchPath::Unknown => true,
            SearchPath::Known(schemas) => {
                glob(pattern, "pg_catalog") || schemas.iter().any(|s| glob(pattern, s))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct TablePattern {
    schema: Option<String>,
    table: String,
}

impl TablePattern {
    fn matches(&self, table: &TableName, path: &SearchPath) -> bool {
        let schema_ok = match (&self.schema, &table.schema) {
            (None, _) => true,
            (Some(pattern), None) => path.may_reach(pattern),
            (Some(pattern), Some(schema)) => glob(pattern, schema),
        };
        schema_ok && glob(&self.table, &table.name)
    }
}

impl Rule {
    /// Validates `spec`; `known_connection` tells which connection names exist.
    pub fn from_spec(
        spec: &RuleSpec,
        known_connection: &dyn Fn(&str) -> bool,
    ) -> Result<Rule, PolicyError> {
        let invalid = |what: String| PolicyError::Invalid {
            rule: spec.name.clone(),
            what,
        };
        if spec.name.trim().is_empty() {
            return Err(invalid("`name` must not be empty".into()));
        }
        for connection in &spec.connections {
            if !known_connection(connection) {
                return Err(invalid(format!(
                    "`connections` names {connection:?}, which is not a configured connection"
                )));
            }
        }
        let principals = |list: &[String], key: &str| {
            list.iter()
                .map(|p| Principal::parse(p).map_err(|e| invalid(format!("`{key}`: {e}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        let applies_to = principals(&spec.applies_to, "applies_to")?;
        let except = principals(&spec.except, "except")?;
        let action = match spec.action.as_str() {
            "deny" => {
                if !spec.reviewers.is_empty()
                    || spec.mode.is_some()
                    || !spec.mode_overrides.is_empty()
                    || spec.min_approvals.is_some()
                    || spec.timeout.is_some()
                    || spec.approval_window.is_some()
                {
                    return Err(invalid(
                        "`reviewers`, `mode`, `mode_overrides`, `min_approvals`, `timeout` and `approval_window` belong to `action: review` rules".into(),
                    ));
                }
                Action::Deny
            }
            "review" => Action::Review(review(spec).map_err(invalid)?),
            other => {
                return Err(invalid(format!(
                    "`action` must be `deny` or `review`, got {other:?}"
                )))
            }
        };
        let mut kinds = BTreeSet::new();
        for name in &spec.matcher.statement {
            kinds.extend(
                kind_selector(name).map_err(|e| invalid(format!("`match.statement`: {e}")))?,
            );
        }
        let tables = spec
            .matcher
            .tables
            .iter()
            .map(|t| table_pattern(t).map_err(|e| invalid(format!("`match.tables`: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let where_present = match spec.matcher.where_clause.as_deref() {
            None => None,
            Some("absent") => Some(false),
            Some("present") => Some(true),
            Some(other) => {
                return Err(invalid(format!(
                    "`match.where` must be `absent` or `present`, got {other:?}"
                )))
            }
        };
        let functions = spec
            .matcher
            .functions
            .iter()
            .map(|f| {
                let f = f.trim();
                if f.is_empty() {
                    Err(invalid("`match.functions` has an empty entry".into()))
                } else {
                    Ok(f.to_ascii_lowercase())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let globs = |list: &[String], key: &str| {
            list.iter()
                .map(|g| match g.trim() {
                    "" => Err(invalid(format!("`match.{key}` has an empty entry"))),
                    g => Ok(g.to_owned()),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let actions = globs(&spec.matcher.actions, "actions")?;
        if let Some(bad) = actions.iter().find(|a| !a.contains(':')) {
            return Err(invalid(format!(
                "`match.actions`: {bad:?} must be service:Action (e.g. s3:DeleteObject)"
            )));
        }
        let matcher = Matcher {
            kinds,
            tables,
            where_present,
            functions,
            actions,
            resources: globs(&spec.matcher.resources, "resources")?,
        };
        if matcher.has_sql_criteria() && matcher.has_call_criteria() {
            return Err(invalid(
                "`match` mixes SQL criteria (statement, tables, where, functions) with API criteria (actions, resources); write two rules".into(),
            ));
        }
        Ok(Rule {
            name: spec.name.clone(),
            connections: spec.connections.clone(),
            applies_to,
            except,
            action,
            message: spec.message.clone(),
            matcher,
        })
    }

    /// Whether the rule covers `connection` at all.
    pub fn covers_connection(&self, connection: &str) -> bool {
        self.connections.is_empty() || self.connections.iter().any(|c| c == connection)
    }

    /// Whether the rule applies to `identity`.
    pub fn applies_to(&self, identity: &Identity) -> bool {
        let named =
            self.applies_to.is_empty() || self.applies_to.iter().any(|p| p.covers(identity));
        named && !self.except.iter().any(|p| p.covers(identity))
    }

    /// Whether an API call matches: its `service:Action` against `actions`, what it acts
    /// on against `resources`. Rules with SQL criteria never match a call.
    pub fn matches_call(&self, action: &str, resource: &str) -> bool {
        let m = &self.matcher;
        !m.has_sql_criteria()
            && (m.actions.is_empty() || m.actions.iter().any(|p| action_matches(p, action)))
            // An unknown resource (`*`) may be any: a rule naming resources matches it.
            && (m.resources.is_empty()
                || resource == "*"
                || m.resources.iter().any(|p| glob(p, resource)))
    }

    /// Whether the statement described by `facts`, run in a session with `path`, matches.
    /// Rules with API criteria never match a statement.
    pub fn matches(&self, facts: &Facts, path: &SearchPath) -> bool {
        let m = &self.matcher;
        if m.has_call_criteria() {
            return false;
        }
        let tables_ok = |tables: &[&TableName]| {
            m.tables.is_empty()
                || tables
                    .iter()
                    .any(|t| m.tables.iter().any(|p| p.matches(t, path)))
        };
        let functions_ok = m.functions.is_empty()
            || facts
                .functions
                .iter()
                .any(|f| m.functions.iter().any(|p| function_matches(p, f)));
        if !functions_ok {
            return false;
        }
        if m.kinds.is_empty() {
            // Tables anywhere in the statement; WHERE on any UPDATE or DELETE in it.
            let where_ok = m.where_present.is_none_or(|want| {
                facts
                    .operations
                    .iter()
                    .any(|op| op.has_where.is_some_and(|has| has == want))
            });
            return where_ok && tables_ok(&facts.tables.iter().collect::<Vec<_>>());
        }
        // One operation of a named kind must meet the other criteria itself, so that
        // "DELETE without WHERE on users" is not met by a DELETE with WHERE next to a read.
        facts.operations.iter().any(|op| {
            m.kinds.contains(&op.kind)
                && m.where_present
                    .is_none_or(|want| op.has_where == Some(want))
                && tables_ok(&op.tables.iter().collect::<Vec<_>>())
        })
    }
}

/// `s3:Put*` against `s3:PutObject`: the service exactly (case-insensitive, as AWS treats
/// it), the action as a glob.
fn action_matches(pattern: &str, action: &str) -> bool {
    match (pattern.split_once(':'), action.split_once(':')) {
        (Some((ps, pa)), Some((s, a))) => ps.eq_ignore_ascii_case(s) && glob(pa, a),
        _ => false,
    }
}

/// The review settings of a `review` rule.
fn review(spec: &RuleSpec) -> Result<Review, String> {
    let reviewers = spec
        .reviewers
        .iter()
        .map(|p| match Principal::parse(p) {
            Ok(Principal::Agent(_)) => Err(format!(
                "`reviewers`: {p:?}: agents cannot approve reviews; name users or groups"
            )),
            Ok(principal) => Ok(principal),
            Err(e) => Err(format!("`reviewers`: {e}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if reviewers.is_empty() {
        return Err("`action: review` needs `reviewers` (e.g. [group:dba])".into());
    }
    let mode = spec
        .mode
        .as_deref()
        .map_or(Ok(ReviewMode::Hold), ReviewMode::parse)
        .map_err(|e| format!("`mode`: {e}"))?;
    let mode_overrides = spec
        .mode_overrides
        .iter()
        .map(|o| {
            let principal =
                Principal::parse(&o.principal).map_err(|e| format!("`mode_overrides`: {e}"))?;
            let mode = ReviewMode::parse(&o.mode).map_err(|e| format!("`mode_overrides`: {e}"))?;
            Ok((principal, mode))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let min_approvals = spec.min_approvals.unwrap_or(1);
    if min_approvals == 0 {
        return Err("`min_approvals` must be at least 1".into());
    }
    let duration = |value: &Option<String>, key: &str, default: Duration| match value {
        None => Ok(default),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(format!("`{key}` must be longer than zero")),
            Err(e) => Err(format!("`{key}`: {text:?}: {e}")),
        },
    };
    Ok(Review {
        reviewers,
        mode,
        mode_overrides,
        min_approvals,
        timeout: duration(&spec.timeout, "timeout", Duration::from_secs(15 * 60))?,
        approval_window: duration(
            &spec.approval_window,
            "approval_window",
            Duration::from_secs(10 * 60),
        )?,
    })
}

/// The kinds a `match.statement` entry stands for.
fn kind_selector(name: &str) -> Result<Vec<Kind>, String> {
    let kinds = match name.trim().to_ascii_lowercase().as_str() {
        "select" => vec![Kind::Select],
        "insert" => vec![Kind::Insert],
        "update" => vec![Kind::Update],
        "delete" => vec![Kind::Delete],
        "merge" => vec![Kind::Merge],
        "ddl" => vec![Kind::Create, Kind::Alter, Kind::Drop, Kind::Truncate],
        "create" => vec![Kind::Create],
        "alter" => vec![Kind::Alter],
        "drop" => vec![Kind::Drop],
        "truncate" => vec![Kind::Truncate],
        "grant" => vec![Kind::Grant],
        "revoke" => vec![Kind::Revoke],
        "copy" => vec![Kind::Copy],
        "call" => vec![Kind::Call],
        "set" => vec![Kind::Set],
        "transaction" => vec![Kind::Transaction],
        "explain" => vec![Kind::Explain],
        "prepare" => vec![Kind::Prepare],
        "execute" => vec![Kind::Execute],
        "deallocate" => vec![Kind::Deallocate],
        "other" => vec![Kind::Other],
        _ => {
            return Err(format!(
                "unknown statement kind {name:?} (known: select, insert, update, delete, merge, ddl, create, alter, drop, truncate, grant, revoke, copy, call, set, transaction, explain, prepare, execute, deallocate, other; DO blocks are never understood, see `unparsed_statements`)"
            ))
        }
    };
    Ok(kinds)
}

fn table_pattern(text: &str) -> Result<TablePattern, String> {
    let text = text.trim();
    let parts: Vec<&str> = text.split('.').collect();
    match parts.as_slice() {
        [table] if !table.is_empty() => Ok(TablePattern {
            schema: None,
            table: table.to_ascii_lowercase(),
        }),
        [schema, table] if !schema.is_empty() && !table.is_empty() => Ok(TablePattern {
            schema: Some(schema.to_ascii_lowercase()),
            table: table.to_ascii_lowercase(),
        }),
        _ => Err(format!("expected `schema.table` or `table`, got {text:?}")),
    }
}

/// `name` patterns match a function by name in any schema; `schema.name` patterns need the
/// statement to name that schema.
fn function_matches(pattern: &str, function: &str) -> bool {
    if pattern.contains('.') {
        glob(pattern, function)
    } else {
        let bare = function.rsplit('.').next().unwrap_or(function);
        glob(pattern, bare)
    }
}
