//! Per-statement policy.
//!
//! [`classify`] reads what a SQL statement does from its parse tree; [`Rule`]s match on those
//! facts; [`Policy::judge`] decides one statement for one identity on one connection. Nothing
//! here knows a wire protocol, a socket or the audit log: the gateway's pipeline asks, records
//! the verdict and tells the protocol frontend what to do.

mod classify;
mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_core::Identity;

pub use classify::{
    classify, Facts, Kind, NotUnderstood, Operation, PathChange, SessionEffect, TableName,
};
pub use rules::{Action, MatchSpec, ModeOverride, Review, ReviewMode, Rule, RuleSpec, SearchPath};
pub use sluice_core::Principal;

/// Classifications kept, by statement fingerprint. When full, the cache starts over: simpler
/// than LRU, and a working set of distinct statement shapes this large is rare.
const CACHE_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {rule:?}: {what}")]
    Invalid { rule: String, what: String },
    #[error("two policies are named {0:?}; names must be unique")]
    Duplicate(String),
}

/// What to do with a statement sluice cannot understand, on a connection that has rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unparsed {
    /// Refuse it (the default: fail closed).
    #[default]
    Deny,
    /// Let it through (recorded as not understood).
    Allow,
}

/// The decision on one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// A `deny` rule matched.
    Deny {
        rule: String,
        message: Option<String>,
    },
    /// A `review` rule matched (and no `deny` rule did).
    Review {
        rule: String,
        message: Option<String>,
        review: Review,
        /// The mode for this identity.
        mode: ReviewMode,
        /// What reviewers must see besides the statement: the definitions a prepared
        /// statement it runs may have (`EXECUTE p` alone says nothing).
        runs: Vec<String>,
        /// What else decides what the statement does: the session's `search_path`. An
        /// approval is for the statement in this context only.
        context: String,
    },
    /// The statement could not be judged and the connection refuses such statements.
    NotUnderstood {
        reason: String,
    },
}

impl Verdict {
    /// The text the client sees for a refusal (`None` for allow and review).
    pub fn refusal(&self) -> Option<String> {
        match self {
            Verdict::Allow | Verdict::Review { .. } => None,
            Verdict::Deny { rule, message } => Some(match message {
                Some(message) => format!("statement denied by sluice policy \"{rule}\": {message}"),
                None => format!("statement denied by sluice policy \"{rule}\""),
            }),
            Verdict::NotUnderstood { reason } => Some(format!(
                "statement refused: {reason}; this connection has policies, so sluice runs only statements it understands"
            )),
        }
    }
}

/// What policy follows in one session: its SQL-level prepared statements (`PREPARE name AS
/// …`), so that `EXECUTE name` is judged as what it runs, and its `search_path`, so that a
/// rule on `secret.*` still sees `keys` after `SET search_path = secret`.
#[derive(Debug, Default)]
pub struct SessionPolicy {
    prepared: HashMap<String, Prepared>,
    search_path: SearchPath,
}

/// What a prepared-statement name may run. SQL `PREPARE` and the extended protocol's Parse
/// share one namespace in the server, and a definition the server rejected (a duplicate
/// name, an aborted transaction) cannot be told from one it kept, so a name carries every
/// definition seen for it and is judged as all of them.
#[derive(Debug, Default, Clone)]
struct Prepared {
    facts: Facts,
    texts: Vec<String>,
}

impl Prepared {
    fn add(&mut self, facts: &Facts, text: &str) {
        let mut facts = facts.clone();
        facts.effects.clear();
        self.facts.absorb(&facts);
        if !self.texts.iter().any(|t| t == text) {
            self.texts.push(text.to_owned());
        }
    }
}

/// One statement to judge, with what the protocol knows about it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub sql: &'a str,
    /// The extended protocol's Parse of a named prepared statement with this text.
    pub defines: Option<&'a str>,
    /// The extended protocol's Execute of a named prepared statement (its text is `sql`).
    pub runs: Option<&'a str>,
}

impl<'a> Subject<'a> {
    pub fn sql(sql: &'a str) -> Subject<'a> {
        Subject {
            sql,
            defines: None,
            runs: None,
        }
    }
}

impl SessionPolicy {
    /// A session whose client set these parameters at startup (PostgreSQL: `search_path`
    /// itself, or `options` that may set it).
    pub fn with_startup_settings(settings: &[(String, String)]) -> SessionPolicy {
        // PostgreSQL reads `-` as `_` in option names (`--search-path=x`, `-c search-path=x`),
        // and names are case-insensitive: any spelling that could set it counts.
        let mentions_path = |text: &str| {
            text.to_ascii_lowercase()
                .replace('-', "_")
                .contains("search_path")
        };
        let sets_path = settings
            .iter()
            .any(|(key, value)| mentions_path(key) || mentions_path(value));
        SessionPolicy {
            search_path: if sets_path {
                SearchPath::Unknown
            } else {
                SearchPath::default()
            },
            ..SessionPolicy::default()
        }
    }
}

/// All rules, validated, with the classification cache.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    unparsed: HashMap<String, Unparsed>,
    cache: Mutex<HashMap<String, Result<Arc<Facts>, NotUnderstood>>>,
}

impl Policy {
    /// Validates `specs`. `connections` are the configured connection names with what each does
    /// with statements it cannot understand.
    pub fn new(
        specs: &[RuleSpec],
        connections: &[(String, Unparsed)],
    ) -> Result<Policy, PolicyError> {
        let known = |name: &str| connections.iter().any(|(c, _)| c == name);
        let mut rules: Vec<Rule> = Vec::with_capacity(specs.len());
        for spec in specs {
            if rules.iter().any(|r| r.name == spec.name) {
                return Err(PolicyError::Duplicate(spec.name.clone()));
            }
            rules.push(Rule::from_spec(spec, &known)?);
        }
        Ok(Policy {
            rules,
            unparsed: connections.iter().cloned().collect(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any rule covers `connection`: only then are its statements parsed.
    pub fn governs(&self, connection: &str) -> bool {
        self.rules.iter().any(|r| r.covers_connection(connection))
    }

    /// Decides `sql` (one statement as the client sent it) for `identity` on `connection`,
    /// and updates the session's prepared statements.
    pub fn judge(
        &self,
        identity: &Identity,
        connection: &str,
        sql: &str,
        session: &mut SessionPolicy,
    ) -> Verdict {
        self.judge_subject(identity, connection, Subject::sql(sql), session)
    }

    /// Like [`judge`](Self::judge), for a statement the protocol defines or runs by name.
    pub fn judge_subject(
        &self,
        identity: &Identity,
        connection: &str,
        subject: Subject<'_>,
        session: &mut SessionPolicy,
    ) -> Verdict {
        if !self.governs(connection) {
            return Verdict::Allow;
        }
        let not_understood = |reason: String| match self.unparsed.get(connection) {
            Some(Unparsed::Allow) => Verdict::Allow,
            _ => Verdict::NotUnderstood { reason },
        };
        let facts = match self.facts(subject.sql) {
            Ok(facts) => facts,
            Err(reason) => return not_understood(reason.to_string()),
        };
        // `EXECUTE name` (or a protocol Execute by name) is judged as every definition the
        // name may have.
        let mut absorbed: Option<Facts> = None;
        let mut runs: Vec<String> = Vec::new();
        let mut names: Vec<&str> = subject.runs.into_iter().collect();
        for effect in &facts.effects {
            if let SessionEffect::Execute(name) = effect {
                if !session.prepared.contains_key(name) {
                    return not_understood(format!(
                        "prepared statement \"{name}\" was not prepared through sluice in this session"
                    ));
                }
                names.push(name);
            }
        }
        for name in names {
            if let Some(prepared) = session.prepared.get(name) {
                absorbed
                    .get_or_insert_with(|| facts.as_ref().clone())
                    .absorb(&prepared.facts);
                runs.extend(prepared.texts.iter().filter(|t| *t != subject.sql).cloned());
            }
        }
        let judged = absorbed.as_ref().unwrap_or(&facts);
        let mut verdict = self.decide(identity, connection, judged, &session.search_path);
        // SQL handed to a function as text is invisible to the rules: unless one already
        // refuses the statement, it counts as not understood.
        if let Some(function) = &judged.dynamic {
            if !matches!(verdict, Verdict::Deny { .. }) {
                return not_understood(
                    NotUnderstood::DynamicFunction(function.clone()).to_string(),
                );
            }
        }
        // `PREPARE name AS …` runs nothing: a review waits for the `EXECUTE` that runs it,
        // which is judged as the prepared statement. (A deny refuses it at once.)
        if matches!(verdict, Verdict::Review { .. }) && facts.kind() == Some(Kind::Prepare) {
            verdict = Verdict::Allow;
        }
        if let Verdict::Review {
            runs: verdict_runs,
            context,
            ..
        } = &mut verdict
        {
            *verdict_runs = runs;
            *context = session.search_path.describe();
        }
        // Definitions are recorded even when the statement is refused or held: a stale one
        // only makes a later EXECUTE be judged more strictly.
        if let Some(name) = subject.defines {
            session
                .prepared
                .entry(name.to_owned())
                .or_default()
                .add(&facts, subject.sql);
        }
        if !matches!(
            verdict,
            Verdict::Deny { .. } | Verdict::NotUnderstood { .. }
        ) {
            for effect in &facts.effects {
                match effect {
                    SessionEffect::Prepare(name) => session
                        .prepared
                        .entry(name.clone())
                        .or_default()
                        .add(&facts, subject.sql),
                    SessionEffect::SearchPath(change) => session.search_path.apply(change),
                    // Kept: the server ignores a DEALLOCATE in an aborted transaction, which
                    // sluice cannot see; a name keeps every definition it may still have.
                    SessionEffect::Deallocate(_)
                    | SessionEffect::DeallocateAll
                    | SessionEffect::Execute(_) => {}
                }
            }
        }
        verdict
    }

    /// The strictest rule that applies and matches: the first `deny` in file order, else the
    /// first `review`.
    pub fn decide(
        &self,
        identity: &Identity,
        connection: &str,
        facts: &Facts,
        search_path: &SearchPath,
    ) -> Verdict {
        self.strictest(identity, connection, |rule| {
            rule.matches(facts, search_path)
        })
    }

    /// Decides an API call (AWS, HTTP) for `identity` on `connection`: by its
    /// `service:Action` and resource. A call that also reads something (a copy's source) is
    /// judged as well as a `GetObject`-style read of that: the stricter verdict wins, so a
    /// copy cannot take out what a rule keeps from being read.
    pub fn judge_call(
        &self,
        identity: &Identity,
        connection: &str,
        call: &sluice_core::ApiCall,
    ) -> Verdict {
        if !self.governs(connection) {
            return Verdict::Allow;
        }
        // A call sluice could not name cannot be matched against the rules: on a connection
        // with rules it counts as not understood, like an unparsable statement.
        if call.action == UNKNOWN_ACTION {
            return match self.unparsed.get(connection) {
                Some(Unparsed::Allow) => Verdict::Allow,
                _ => Verdict::NotUnderstood {
                    reason: format!(
                        "sluice cannot tell which {} action this request is",
                        call.service
                    ),
                },
            };
        }
        let action = call.qualified_action();
        let read = call.source.as_ref().map(|source| {
            (
                format!("{}:{}", call.service, read_action(&call.service)),
                source,
            )
        });
        self.strictest(identity, connection, |rule| {
            rule.matches_call(&action, &call.resource)
                || read
                    .as_ref()
                    .is_some_and(|(action, source)| rule.matches_call(action, source))
        })
    }

    fn strictest(
        &self,
        identity: &Identity,
        connection: &str,
        matches: impl Fn(&Rule) -> bool,
    ) -> Verdict {
        let mut verdict = Verdict::Allow;
        for rule in self.rules.iter().filter(|rule| {
            rule.covers_connection(connection) && rule.applies_to(identity) && matches(rule)
        }) {
            match &rule.action {
                Action::Deny => {
                    return Verdict::Deny {
                        rule: rule.name.clone(),
                        message: rule.message.clone(),
                    }
                }
                Action::Review(review) => {
                    if verdict == Verdict::Allow {
                        verdict = Verdict::Review {
                            rule: rule.name.clone(),
                            message: rule.message.clone(),
                            mode: review.mode_for(identity),
                            review: review.clone(),
                            runs: Vec::new(),
                            context: String::new(),
                        };
                    }
                }
            }
        }
        verdict
    }

    /// Classifies `sql`, through the cache. Statements that differ only in constants, case,
    /// comments or spacing share a fingerprint and so a classification: none of those can
    /// change what a statement does.
    fn facts(&self, sql: &str) -> Result<Arc<Facts>, NotUnderstood> {
        let key = sluice_sql::fingerprint(sql);
        if let Some(hit) = lock(&self.cache).get(&key) {
            return hit.clone();
        }
        let classified = classify(sql).map(Arc::new);
        // A `SET search_path` is the one classification that depends on a constant (the
        // schema named in quotes), so it must not be shared with other constants.
        let constant_dependent = classified.as_ref().is_ok_and(|facts| {
            facts
                .effects
                .iter()
                .any(|e| matches!(e, SessionEffect::SearchPath(PathChange::Set(_))))
        });
        // Nor is a refusal to understand: the parser's message quotes the statement, and
        // another one of the same shape (another user's) must not be answered with it.
        if constant_dependent || classified.is_err() {
            return classified;
        }
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, classified.clone());
        classified
    }
}

/// The action name of a call whose action could not be told.
pub const UNKNOWN_ACTION: &str = "Unknown";

/// The action that reads one object of `service`, for judging a copy's source.
fn read_action(service: &str) -> &'static str {
    match service {
        "s3" => "GetObject",
        _ => "Read",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
