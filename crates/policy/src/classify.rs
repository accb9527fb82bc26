//! What a SQL statement does, read from its parse tree: the facts rules match on.
//!
//! The statement is parsed with `sqlparser` (PostgreSQL dialect) and walked once. Every
//! statement in the tree counts, not only the outermost one: the writes inside a CTE
//! (`WITH d AS (DELETE …) SELECT …`), the statement under `EXPLAIN [ANALYZE]` and under
//! `PREPARE … AS`, the query of `COPY (…) TO`, `CREATE TABLE … AS`. A statement the parser
//! cannot read, or dynamic SQL it cannot see into (`DO` blocks, `EXECUTE IMMEDIATE`), is
//! [`NotUnderstood`]: the caller decides whether that is refused.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_relations, CopySource, Expr, FromTable, Function, Ident, ObjectName, ObjectNamePart,
    Query, Reset, Set, SetExpr, Statement, TableFactor, TableObject, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Statements longer than this many tokens are not parsed: a parse tree that deep (a chain of
/// 100 000 `+` is one) costs more than it is worth and could exhaust the stack.
const MAX_TOKENS: usize = 20_000;

/// What kind of operation a statement (or a statement inside it) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Create,
    Alter,
    Drop,
    Truncate,
    Grant,
    Revoke,
    Copy,
    Call,
    Set,
    Transaction,
    Explain,
    Prepare,
    Execute,
    Deallocate,
    /// Parsed and understood, but none of the above: `SHOW`, `VACUUM`, `LISTEN`, `LOCK`, …
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Merge => "merge",
            Kind::Create => "create",
            Kind::Alter => "alter",
            Kind::Drop => "drop",
            Kind::Truncate => "truncate",
            Kind::Grant => "grant",
            Kind::Revoke => "revoke",
            Kind::Copy => "copy",
            Kind::Call => "call",
            Kind::Set => "set",
            Kind::Transaction => "transaction",
            Kind::Explain => "explain",
            Kind::Prepare => "prepare",
            Kind::Execute => "execute",
            Kind::Deallocate => "deallocate",
            Kind::Other => "other",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table (or other relation) name as the server resolves it: unquoted parts folded to
/// lower case, quoted parts exactly as written. `schema` is `None` when the statement does not
/// name one (the session's `search_path` decides, so rules treat it as any schema).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One operation in a statement: the statement itself or one nested in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub kind: Kind,
    /// What it acts on: the target of a write or DDL statement, every relation a query reads.
    pub tables: Vec<TableName>,
    /// For `UPDATE` and `DELETE`: whether a `WHERE` clause limits the rows. A clause that
    /// refers to no column at all (`WHERE true`, `WHERE 1 = 1`) limits nothing and counts as
    /// absent. `None` for other kinds.
    pub has_where: Option<bool>,
}

/// What a statement does to the session's SQL-level prepared statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// `PREPARE name AS …`: the facts of the prepared statement are this statement's.
    Prepare(String),
    /// `EXECUTE name`: runs what was prepared under `name`.
    Execute(String),
    /// `DEALLOCATE name`.
    Deallocate(String),
    /// `DEALLOCATE ALL`, `DISCARD ALL`.
    DeallocateAll,
    /// `SET search_path …`, `RESET search_path`, `set_config(…)`: where unqualified table
    /// names resolve from now on.
    SearchPath(PathChange),
}

/// A change of the session's `search_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// Set to these schemas (names resolved like identifiers).
    Set(Vec<String>),
    /// Back to the default.
    Reset,
    /// Changed to something sluice cannot tell (`SET LOCAL`, `set_config`, an expression).
    Unknown,
}

/// Everything rules can match on, for one statement text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The outermost statement first, then the ones nested in it, in tree order.
    pub operations: Vec<Operation>,
    /// Every relation the statement names anywhere.
    pub tables: BTreeSet<TableName>,
    /// Every function it calls (`CALL` included), by name as resolved (`schema.name` when a
    /// schema is written).
    pub functions: BTreeSet<String>,
    pub effects: Vec<SessionEffect>,
    /// A function it calls runs SQL given as text (`dblink`, `query_to_xml`, …), which
    /// policy cannot see into: the statement is judged by its rules, then treated as not
    /// understood.
    pub dynamic: Option<String>,
}

impl Facts {
    /// The kind of the outermost statement (`None` for an empty statement).
    pub fn kind(&self) -> Option<Kind> {
        self.operations.first().map(|op| op.kind)
    }

    /// Adds `other`'s facts (a prepared statement run by `EXECUTE`) to these.
    pub fn absorb(&mut self, other: &Facts) {
        self.operations.extend(other.operations.iter().cloned());
        self.tables.extend(other.tables.iter().cloned());
        self.functions.extend(other.functions.iter().cloned());
        if self.dynamic.is_none() {
            self.dynamic.clone_from(&other.dynamic);
        }
    }
}

/// Why a statement could not be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotUnderstood {
    #[error("sluice cannot parse this statement: {0}")]
    Parse(String),
    #[error("sluice cannot see into dynamic SQL ({0})")]
    Dynamic(&'static str),
    #[error("sluice cannot see into dynamic SQL (the SQL text given to {0})")]
    DynamicFunction(String),
    #[error(
        "the statement is too long for sluice's policy parser (more than {MAX_TOKENS} tokens)"
    )]
    TooLong,
    #[error(
        "sluice does not decode Unicode-escaped identifiers (U&\"…\"); write the name plainly"
    )]
    UnicodeIdentifier,
    #[error("this text holds several statements where sluice expected one; send them separately")]
    SeveralStatements,
}

/// Functions that run SQL given to them as text, which policy cannot see into.
const DYNAMIC_SQL_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
    // contrib: tablefunc, xml2 and pageinspect take SQL or table names as text.
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    "xpath_table",
    "get_raw_page",
];

/// Reads the facts of `sql`, one statement.
pub fn classify(sql: &str) -> Result<Facts, NotUnderstood> {
    if sluice_sql::significant_tokens(sql) > MAX_TOKENS {
        return Err(NotUnderstood::TooLong);
    }
    if sluice_sql::first_word_is(sql, "do") {
        return Err(NotUnderstood::Dynamic("a DO block"));
    }
    // sqlparser reads `U&"pg\005fread_file"` as `U & "…"`: the name the server runs would
    // never be seen.
    if sluice_sql::has_unicode_identifier(sql) {
        return Err(NotUnderstood::UnicodeIdentifier);
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|err| NotUnderstood::Parse(err.to_string()))?;
    // The gateway splits statements the way the server does; a text the parser reads as
    // several is one where the two disagree, and the server's reading is unknown.
    if statements.len() > 1 {
        return Err(NotUnderstood::SeveralStatements);
    }
    let mut walk = Walk::default();
    for statement in &statements {
        if let ControlFlow::Break(reason) = statement.visit(&mut walk) {
            return Err(reason);
        }
    }
    let mut facts = walk.facts;
    // What an operation acts on is touched by the statement too (COPY's table, …).
    let acted_on: Vec<TableName> = facts
        .operations
        .iter()
        .flat_map(|op| op.tables.iter().cloned())
        .collect();
    facts.tables.extend(acted_on);
    // Writing system catalogs rewires what names mean (a table moved out of its schema, a
    // schema renamed); TOAST tables hold other tables' values out of sight of table rules.
    let catalog = |t: &TableName| {
        t.schema.as_deref() == Some("pg_catalog")
            || (t.schema.is_none() && t.name.starts_with("pg_"))
    };
    if facts.operations.iter().any(|op| {
        matches!(
            op.kind,
            Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge | Kind::Copy
        ) && op.tables.iter().any(catalog)
            && !(op.kind == Kind::Update && op.tables.iter().all(|t| t.name == "pg_settings"))
    }) {
        return Err(NotUnderstood::Dynamic("a write to the system catalogs"));
    }
    if facts
        .tables
        .iter()
        .any(|t| t.schema.as_deref() == Some("pg_toast"))
    {
        return Err(NotUnderstood::Dynamic("a direct read of a TOAST table"));
    }
    facts.dynamic = facts
        .functions
        .iter()
        .find(|f| {
            let bare = f.rsplit('.').next().unwrap_or(f);
            DYNAMIC_SQL_FUNCTIONS.contains(&bare)
        })
        .cloned();
    // `set_config(…)` anywhere, or a write to `pg_settings`, moves `search_path` in ways
    // not followed here.
    let sets_config = facts
        .functions
        .iter()
        .any(|f| f.rsplit('.').next() == Some("set_config"));
    let writes_settings = facts
        .operations
        .iter()
        .any(|op| op.kind != Kind::Select && op.tables.iter().any(|t| t.name == "pg_settings"));
    if sets_config || writes_settings {
        facts
            .effects
            .push(SessionEffect::SearchPath(PathChange::Unknown));
    }
    Ok(facts)
}

/// One pass over the tree, collecting facts.
#[derive(Default)]
struct Walk {
    facts: Facts,
}

impl Visitor for Walk {
    type Break = NotUnderstood;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<NotUnderstood> {
        let operation = operation(statement)?;
        if let Some(effect) = effect(statement) {
            self.facts.effects.push(effect);
        }
        self.facts.operations.push(operation);
        if let Some(upsert) = upsert_update(statement) {
            self.facts.operations.push(upsert);
        }
        self.facts.operations.extend(merge_actions(statement));
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<NotUnderstood> {
        self.set_expr(query.body.as_ref());
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<NotUnderstood> {
        self.facts.tables.insert(table_name(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<NotUnderstood> {
        // A set-returning function in FROM (`FROM dblink(…)`) is a function call too.
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.facts.functions.insert(function_name(name));
            }
            TableFactor::Function { name, .. } => {
                self.facts.functions.insert(function_name(name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<NotUnderstood> {
        if let Expr::Function(Function { name, .. }) = expr {
            self.facts.functions.insert(function_name(name));
        }
        ControlFlow::Continue(())
    }
}

impl Walk {
    /// What the visitor does not reach by itself in a query body: `SELECT … INTO
    /// new_table` (anywhere in a UNION) creates a table, and `TABLE name` reads one.
    /// Nested queries (`(…)`) are visited as queries of their own.
    fn set_expr(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(select) => {
                if let Some(into) = &select.into {
                    let tables: Vec<TableName> =
                        into.targets.iter().filter_map(expr_table_name).collect();
                    self.facts.operations.push(Operation {
                        kind: Kind::Create,
                        tables,
                        has_where: None,
                    });
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            SetExpr::Table(table) => {
                if let Some(name) = &table.table_name {
                    self.facts.tables.insert(TableName {
                        schema: table.schema_name.as_ref().map(ident),
                        name: ident(name),
                    });
                }
            }
            _ => {}
        }
    }
}

/// The operation `statement` itself performs (not counting statements nested in it).
fn operation(statement: &Statement) -> ControlFlow<NotUnderstood, Operation> {
    let op = |kind: Kind, tables: Vec<TableName>| Operation {
        kind,
        tables,
        has_where: None,
    };
    let operation = match statement {
        Statement::Query(query) => op(Kind::Select, relations(query.as_ref())),
        Statement::Insert(insert) => match &insert.table {
            TableObject::TableName(name) => op(Kind::Insert, vec![table_name(name)]),
            TableObject::TableFunction(_) | TableObject::TableQuery(_) => {
                op(Kind::Insert, relations(&insert.table))
            }
        },
        Statement::Update(update) => Operation {
            kind: Kind::Update,
            tables: relations(&update.table.relation),
            has_where: Some(limits_rows(
                update.selection.as_ref(),
                &Targets {
                    names: target_names(&update.table.relation),
                    others: update.from.is_some() || !update.table.joins.is_empty(),
                },
            )),
        },
        Statement::Delete(delete) => {
            let mut tables: Vec<TableName> = delete.tables.iter().map(table_name).collect();
            match &delete.from {
                FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => {
                    for table in from {
                        tables.extend(relations(&table.relation));
                    }
                }
            }
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
            let targets = Targets {
                names: from
                    .iter()
                    .flat_map(|t| target_names(&t.relation))
                    .collect(),
                others: delete.using.is_some()
                    || from.len() > 1
                    || from.iter().any(|t| !t.joins.is_empty()),
            };
            Operation {
                kind: Kind::Delete,
                tables,
                has_where: Some(limits_rows(delete.selection.as_ref(), &targets)),
            }
        }
        // MERGE's ON decides which rows its UPDATE/DELETE clauses reach: `ON true` is all.
        Statement::Merge(merge) => Operation {
            kind: Kind::Merge,
            tables: relations(&merge.table),
            has_where: Some(limits_rows(Some(&merge.on), &merge_targets(merge))),
        },
        Statement::Drop { names, .. } => op(Kind::Drop, names.iter().map(table_name).collect()),
        Statement::Truncate(truncate) => op(
            Kind::Truncate,
            truncate
                .table_names
                .iter()
                .map(|target| table_name(&target.name))
                .collect(),
        ),
        Statement::Copy { source, .. } => match source {
            CopySource::Table { table_name: t, .. } => op(Kind::Copy, vec![table_name(t)]),
            CopySource::Query(query) => op(Kind::Copy, relations(query.as_ref())),
        },
        Statement::Call(function) => op(Kind::Call, vec![table_name(&function.name)]),
        Statement::Explain { .. } | Statement::ExplainTable { .. } => op(Kind::Explain, Vec::new()),
        Statement::Prepare { .. } => op(Kind::Prepare, Vec::new()),
        Statement::Execute {
            immediate: true, ..
        } => return ControlFlow::Break(NotUnderstood::Dynamic("EXECUTE IMMEDIATE")),
        Statement::Execute { name: None, .. } => {
            return ControlFlow::Break(NotUnderstood::Dynamic("EXECUTE without a name"))
        }
        Statement::Execute { .. } => op(Kind::Execute, Vec::new()),
        Statement::Deallocate { .. } => op(Kind::Deallocate, Vec::new()),
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => op(Kind::Transaction, Vec::new()),
        Statement::Set(_) | Statement::Reset(_) => op(Kind::Set, Vec::new()),
        Statement::Grant(grant) => op(Kind::Grant, granted(grant.objects.as_ref())),
        Statement::GrantRole(_) | Statement::AlterDefaultPrivileges(_) => {
            op(Kind::Grant, Vec::new())
        }
        Statement::Revoke(revoke) => op(Kind::Revoke, granted(revoke.objects.as_ref())),
        Statement::RevokeRole(_) => op(Kind::Revoke, Vec::new()),
        // Rewrites the view's contents: maintenance that needs ownership, like DDL.
        Statement::RefreshMaterializedView(_) => op(Kind::Alter, relations(statement)),
        Statement::Load { .. } => {
            return ControlFlow::Break(NotUnderstood::Dynamic("LOAD of a server library"))
        }
        Statement::Declare { .. } | Statement::Fetch { .. } => {
            op(Kind::Select, relations(statement))
        }
        other => {
            let kind = ddl_kind(other).unwrap_or(Kind::Other);
            op(kind, relations(other))
        }
    };
    ControlFlow::Continue(operation)
}

/// `INSERT … ON CONFLICT DO UPDATE` updates the rows it conflicts with: one per `VALUES`
/// row, but every row of the table when it inserts `SELECT * FROM` that table. Its update
/// counts as limited when the rows come from `VALUES` or its own `WHERE` limits it.
fn upsert_update(statement: &Statement) -> Option<Operation> {
    use sqlparser::ast::{OnConflictAction, OnInsert};
    let Statement::Insert(insert) = statement else {
        return None;
    };
    let Some(OnInsert::OnConflict(conflict)) = &insert.on else {
        return None;
    };
    let OnConflictAction::DoUpdate(update) = &conflict.action else {
        return None;
    };
    let from_values = insert
        .source
        .as_ref()
        .is_some_and(|q| matches!(q.body.as_ref(), SetExpr::Values(_)));
    let tables = match &insert.table {
        TableObject::TableName(name) => vec![table_name(name)],
        other => relations(other),
    };
    let targets = Targets {
        names: tables.iter().map(|t| t.name.clone()).collect(),
        others: false,
    };
    Some(Operation {
        kind: Kind::Update,
        tables,
        has_where: Some(from_values || limits_rows(update.selection.as_ref(), &targets)),
    })
}

/// The tables a GRANT or REVOKE is on (`ALL TABLES IN SCHEMA s` as `s.*`).
fn granted(objects: Option<&sqlparser::ast::GrantObjects>) -> Vec<TableName> {
    use sqlparser::ast::GrantObjects;
    match objects {
        Some(GrantObjects::Tables(names)) => names.iter().map(table_name).collect(),
        Some(
            GrantObjects::AllTablesInSchema { schemas }
            | GrantObjects::AllSequencesInSchema { schemas },
        ) => schemas
            .iter()
            .map(|s| TableName {
                schema: Some(table_name(s).name),
                name: "*".into(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The writes a MERGE's clauses make, each limited as far as `ON` and its own `AND`
/// condition limit it (`ON true … THEN DELETE` deletes every row).
fn merge_actions(statement: &Statement) -> Vec<Operation> {
    use sqlparser::ast::MergeAction;
    let Statement::Merge(merge) = statement else {
        return Vec::new();
    };
    let tables = relations(&merge.table);
    let targets = merge_targets(merge);
    let on_limits = limits_rows(Some(&merge.on), &targets);
    merge
        .clauses
        .iter()
        .filter_map(|clause| {
            let kind = match clause.action {
                MergeAction::Insert(_) => Kind::Insert,
                MergeAction::Update(_) => Kind::Update,
                MergeAction::Delete { .. } => Kind::Delete,
                MergeAction::DoNothing { .. } => return None,
            };
            let has_where = (kind != Kind::Insert)
                .then(|| on_limits || limits_rows(clause.predicate.as_ref(), &targets));
            Some(Operation {
                kind,
                tables: tables.clone(),
                has_where,
            })
        })
        .collect()
}

/// `CREATE …`, `ALTER …`, `DROP …` statements other than the ones matched by name above,
/// told apart by the variant's name so that new variants in `sqlparser` land in the right
/// group without a change here.
fn ddl_kind(statement: &Statement) -> Option<Kind> {
    let debug = format!("{statement:?}");
    let variant = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    if variant.starts_with("Create") {
        Some(Kind::Create)
    } else if variant.starts_with("Alter") || variant == "RenameTable" || variant == "Comment" {
        Some(Kind::Alter)
    } else if variant.starts_with("Drop") {
        Some(Kind::Drop)
    } else {
        None
    }
}

/// What a statement does to SQL-level prepared statements.
fn effect(statement: &Statement) -> Option<SessionEffect> {
    match statement {
        Statement::Prepare { name, .. } => Some(SessionEffect::Prepare(ident(name))),
        Statement::Execute {
            name: Some(name), ..
        } => Some(SessionEffect::Execute(table_name(name).name)),
        Statement::Deallocate { name, .. } => {
            if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                Some(SessionEffect::DeallocateAll)
            } else {
                Some(SessionEffect::Deallocate(ident(name)))
            }
        }
        // DISCARD PLANS keeps prepared statements; only DISCARD ALL drops them.
        Statement::Discard { object_type } => object_type
            .to_string()
            .eq_ignore_ascii_case("all")
            .then_some(SessionEffect::DeallocateAll),
        Statement::Set(set) => search_path_set(set).map(SessionEffect::SearchPath),
        Statement::Reset(reset) => match &reset.reset {
            Reset::ALL => Some(SessionEffect::SearchPath(PathChange::Reset)),
            Reset::ConfigurationParameter(name) if is_search_path(name) => {
                Some(SessionEffect::SearchPath(PathChange::Reset))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Setting names ignore case even when quoted (`SET "Search_Path"` is `search_path`).
fn is_search_path(name: &ObjectName) -> bool {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => id.value.eq_ignore_ascii_case("search_path"),
        Some(other) => other.to_string().eq_ignore_ascii_case("search_path"),
        None => false,
    }
}

/// What a `SET` does to `search_path`, if it touches it.
fn search_path_set(set: &Set) -> Option<PathChange> {
    match set {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } if is_search_path(variable) => {
            if scope.is_some() {
                // `SET LOCAL` ends with the transaction, which policy does not follow.
                return Some(PathChange::Unknown);
            }
            let mut schemas = Vec::new();
            for value in values {
                match value {
                    Expr::Identifier(id)
                        if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") =>
                    {
                        return Some(PathChange::Reset)
                    }
                    Expr::Identifier(id) => schemas.push(ident(id)),
                    // A backslash means another name with standard_conforming_strings off
                    // (`'sec\x72et'` is `secret`), which a client may have turned off.
                    Expr::Value(value) => match &value.value {
                        Value::SingleQuotedString(text)
                            if !text.contains(',') && !text.contains('\\') =>
                        {
                            schemas.push(text.clone())
                        }
                        _ => return Some(PathChange::Unknown),
                    },
                    _ => return Some(PathChange::Unknown),
                }
            }
            Some(PathChange::Set(schemas))
        }
        Set::SingleAssignment { .. } => None,
        Set::ParenthesizedAssignments { variables, .. } => variables
            .iter()
            .any(is_search_path)
            .then_some(PathChange::Unknown),
        Set::MultipleAssignments { assignments } => assignments
            .iter()
            .any(|a| is_search_path(&a.name))
            .then_some(PathChange::Unknown),
        // The default path starts with "$user": a new role can bring the schema named
        // after it onto the path.
        Set::SetRole {
            role_name: Some(role),
            ..
        } => Some(role_path(role)),
        Set::SetSessionAuthorization(param) => match &param.kind {
            sqlparser::ast::SetSessionAuthorizationParamKind::User(user) => Some(role_path(user)),
            sqlparser::ast::SetSessionAuthorizationParamKind::Default => None,
        },
        _ => None,
    }
}

/// The path a new role brings: its own schema, unless the name holds a backslash, which
/// names another role when standard_conforming_strings is off.
fn role_path(role: &Ident) -> PathChange {
    if role.value.contains('\\') {
        PathChange::Unknown
    } else {
        PathChange::Set(vec![ident(role)])
    }
}

/// Every relation named inside `node`.
fn relations<V: Visit>(node: &V) -> Vec<TableName> {
    let mut found = Vec::new();
    let _ = visit_relations(node, |relation| {
        let name = table_name(relation);
        if !found.contains(&name) {
            found.push(name);
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// How a written table can be referred to in its statement's conditions.
struct Targets {
    /// Its name, or its alias when it has one (PostgreSQL then accepts only the alias).
    names: Vec<String>,
    /// Other tables are in scope (FROM, USING, a join, MERGE's source), so an unqualified
    /// column may be theirs.
    others: bool,
}

fn merge_targets(merge: &sqlparser::ast::Merge) -> Targets {
    Targets {
        names: target_names(&merge.table),
        others: true,
    }
}

/// Whether a WHERE clause (or MERGE's ON) can limit the rows of the written table: it
/// exists, is not true whatever the row (`true OR id = 1`, `id = id`, `id IN (id)`), and
/// names a column that may be the target's — a qualified one, or an unqualified one when no
/// other table is in scope, outside subqueries unless qualified (a correlation). This is a
/// guard against accidents (a forgotten WHERE), not against a writer set on touching every
/// row: `WHERE id > -1` limits nothing either.
fn limits_rows(selection: Option<&Expr>, targets: &Targets) -> bool {
    let Some(selection) = selection else {
        return false;
    };
    if always_true(selection, targets) {
        return false;
    }
    let mut refs = TargetRefs {
        targets,
        depth: 0,
        found: false,
    };
    let _ = selection.visit(&mut refs);
    refs.found
}

/// Finds a reference to the written table's columns in a condition.
struct TargetRefs<'a> {
    targets: &'a Targets,
    /// Subqueries entered.
    depth: usize,
    found: bool,
}

impl Visitor for TargetRefs<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        let hit = match expr {
            Expr::Identifier(_) => self.depth == 0 && !self.targets.others,
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [.., qualifier, _column] => self.targets.names.contains(&ident(qualifier)),
                _ => self.depth == 0 && !self.targets.others,
            },
            _ => false,
        };
        if hit {
            self.found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// A column reference as `(qualifier, column)`, looking through parentheses.
fn column_ref(expr: &Expr) -> Option<(Option<String>, String)> {
    match expr {
        Expr::Nested(inner) => column_ref(inner),
        Expr::Identifier(id) => Some((None, ident(id))),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [.., qualifier, column] => Some((Some(ident(qualifier)), ident(column))),
            [column] => Some((None, ident(column))),
            [] => None,
        },
        _ => None,
    }
}

/// Whether `a` and `b` name the same column of the written table (`id`, `(id)`, `t.id`,
/// `"id"`). Constants never count, so the answer does not depend on them (the
/// classification cache shares one answer among statements that differ only in constants).
fn same_column(a: &Expr, b: &Expr, targets: &Targets) -> bool {
    let (Some((qa, ca)), Some((qb, cb))) = (column_ref(a), column_ref(b)) else {
        return false;
    };
    if ca != cb {
        return false;
    }
    match (qa, qb) {
        (Some(x), Some(y)) => x == y,
        // One side unqualified: the same column only if no other table could own it.
        _ => !targets.others,
    }
}

/// Whether `expr` holds for every row, as far as a syntactic look can tell: constants with
/// no column (`1 = 1`), a column compared with itself, and `OR`/`AND`/`NOT` of such.
fn always_true(expr: &Expr, targets: &Targets) -> bool {
    use sqlparser::ast::{BinaryOperator, UnaryOperator};
    match expr {
        Expr::Nested(inner) => always_true(inner, targets),
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Or => always_true(left, targets) || always_true(right, targets),
            BinaryOperator::And => always_true(left, targets) && always_true(right, targets),
            BinaryOperator::Eq | BinaryOperator::GtEq | BinaryOperator::LtEq
                if same_column(left, right, targets) =>
            {
                true
            }
            _ => !mentions_column(expr),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr: inner,
        } => always_false(inner, targets),
        Expr::In {
            expr: column,
            target: sqlparser::ast::InTarget::List(list),
            negated: false,
            ..
        } if list.iter().any(|item| same_column(column, item, targets)) => true,
        Expr::Between {
            expr: column,
            negated: false,
            low,
            high,
        } if same_column(column, low, targets) && same_column(column, high, targets) => true,
        Expr::IsNotDistinctFrom(a, b) if same_column(a, b, targets) => true,
        _ => !mentions_column(expr),
    }
}

/// Whether `expr` is false for every row: the literal `false`, a column unequal to
/// itself, `NOT` of an always-true.
fn always_false(expr: &Expr, targets: &Targets) -> bool {
    use sqlparser::ast::BinaryOperator;
    match expr {
        Expr::Nested(inner) => always_false(inner, targets),
        Expr::Value(v) => matches!(v.value, Value::Boolean(false)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::NotEq | BinaryOperator::Lt | BinaryOperator::Gt,
            right,
        } => same_column(left, right, targets),
        Expr::UnaryOp {
            op: sqlparser::ast::UnaryOperator::Not,
            expr: inner,
        } => always_true(inner, targets),
        _ => false,
    }
}

fn mentions_column(expr: &Expr) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(expr, |e| {
        if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// The name the written table goes by in its statement: its alias if it has one (then
/// PostgreSQL accepts only the alias), else its name.
fn target_names(factor: &TableFactor) -> Vec<String> {
    match factor {
        TableFactor::Table { name, alias, .. } => match alias {
            Some(alias) => vec![ident(&alias.name)],
            None => vec![table_name(name).name],
        },
        _ => Vec::new(),
    }
}

/// An identifier as the server resolves it: unquoted, ASCII letters fold to lower case
/// (PostgreSQL leaves other letters alone in UTF-8), quoted, as written.
fn ident(ident: &sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(id) => ident(id),
            other => other.to_string(),
        })
        .collect()
}

/// `[catalog.]schema.table` or `table`.
fn table_name(name: &ObjectName) -> TableName {
    let mut parts = parts(name);
    let table = parts.pop().unwrap_or_default();
    TableName {
        schema: parts.pop(),
        name: table,
    }
}

/// The table an identifier expression names (`SELECT … INTO schema.t`).
fn expr_table_name(expr: &Expr) -> Option<TableName> {
    let idents: Vec<String> = match expr {
        Expr::Identifier(id) => vec![ident(id)],
        Expr::CompoundIdentifier(ids) => ids.iter().map(ident).collect(),
        _ => return None,
    };
    let mut idents = idents;
    let name = idents.pop()?;
    Some(TableName {
        schema: idents.pop(),
        name,
    })
}

fn function_name(name: &ObjectName) -> String {
    parts(name).join(".")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<Kind> {
        classify(sql)
            .unwrap()
            .operations
            .iter()
            .map(|op| op.kind)
            .collect()
    }

    fn t(schema: Option<&str>, name: &str) -> TableName {
        TableName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    #[test]
    fn plain_statements() {
        assert_eq!(kinds("select 1"), [Kind::Select]);
        assert_eq!(kinds("INSERT INTO t VALUES (1)"), [Kind::Insert]);
        assert_eq!(kinds("update t set a = 1 where id = 2"), [Kind::Update]);
        assert_eq!(kinds("DELETE FROM t"), [Kind::Delete]);
        assert_eq!(kinds("drop table t"), [Kind::Drop]);
        assert_eq!(kinds("TRUNCATE t"), [Kind::Truncate]);
        assert_eq!(kinds("alter table t add column b int"), [Kind::Alter]);
        assert_eq!(kinds("create table t (a int)"), [Kind::Create]);
        assert_eq!(kinds("create index i on t (a)"), [Kind::Create]);
        assert_eq!(kinds("grant select on t to bob"), [Kind::Grant]);
        assert_eq!(kinds("revoke select on t from bob"), [Kind::Revoke]);
        assert_eq!(kinds("set search_path = x"), [Kind::Set]);
        assert_eq!(kinds("begin"), [Kind::Transaction]);
        assert_eq!(kinds("commit"), [Kind::Transaction]);
        assert_eq!(kinds("copy t to stdout"), [Kind::Copy]);
        assert_eq!(kinds("call p(1)"), [Kind::Call]);
        assert_eq!(kinds("show search_path"), [Kind::Other]);
        assert_eq!(classify("").unwrap().kind(), None);
    }

    #[test]
    fn nested_statements_count() {
        assert_eq!(
            kinds("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
            [Kind::Select, Kind::Delete]
        );
        assert_eq!(
            kinds("explain analyze delete from t"),
            [Kind::Explain, Kind::Delete]
        );
        assert_eq!(
            kinds("prepare p (int) as delete from t where id = $1"),
            [Kind::Prepare, Kind::Delete]
        );
        assert_eq!(
            kinds("select * into t2 from t"),
            [Kind::Select, Kind::Create]
        );
        let facts = classify("create table t2 as select * from secret.t").unwrap();
        assert_eq!(facts.kind(), Some(Kind::Create));
        assert!(facts.tables.contains(&t(Some("secret"), "t")));
    }

    #[test]
    fn names_are_resolved_like_the_server_does() {
        let facts = classify(r#"DELETE FROM "Public"."Users" WHERE id = 1"#).unwrap();
        assert_eq!(facts.operations[0].tables, [t(Some("Public"), "Users")]);
        let facts = classify("delete from PUBLIC.USERS where id = 1").unwrap();
        assert_eq!(facts.operations[0].tables, [t(Some("public"), "users")]);
        let facts = classify("update db.s.t set a = 1 where b = 2").unwrap();
        assert_eq!(facts.operations[0].tables, [t(Some("s"), "t")]);
    }

    #[test]
    fn where_clauses() {
        let has_where = |sql: &str| classify(sql).unwrap().operations[0].has_where;
        assert_eq!(has_where("delete from t where id = 1"), Some(true));
        assert_eq!(has_where("delete from t"), Some(false));
        assert_eq!(has_where("update t set a = 1 where true"), Some(false));
        assert_eq!(has_where("update t set a = 1 where 1 = 1"), Some(false));
        assert_eq!(has_where("update t set a = 1 where t.a > 0"), Some(true));
        assert_eq!(has_where("select 1"), None);
    }

    #[test]
    fn functions_anywhere() {
        let facts = classify("select pg_terminate_backend(pid) from pg_stat_activity").unwrap();
        assert!(facts.functions.contains("pg_terminate_backend"));
        let facts = classify("select * from dblink('host=x', 'select 1') as r(a int)").unwrap();
        assert!(facts.functions.contains("dblink"));
        assert_eq!(facts.dynamic.as_deref(), Some("dblink"));
        let facts = classify("SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')").unwrap();
        assert!(facts.functions.contains("pg_catalog.pg_read_file"));
        let facts = classify("select 1 where exists (select lo_export(1, '/tmp/x'))").unwrap();
        assert!(facts.functions.contains("lo_export"));
    }

    #[test]
    fn prepared_statements_at_sql_level() {
        let facts = classify("PREPARE Wipe AS DELETE FROM t").unwrap();
        assert_eq!(facts.effects, [SessionEffect::Prepare("wipe".into())]);
        let facts = classify("execute wipe").unwrap();
        assert_eq!(facts.effects, [SessionEffect::Execute("wipe".into())]);
        assert_eq!(
            classify("deallocate all").unwrap().effects,
            [SessionEffect::DeallocateAll]
        );
        assert_eq!(
            classify("DEALLOCATE PREPARE wipe").unwrap().effects,
            [SessionEffect::Deallocate("wipe".into())]
        );
        assert_eq!(
            classify("discard all").unwrap().effects,
            [SessionEffect::DeallocateAll]
        );
    }

    #[test]
    fn search_path_changes() {
        let change = |sql: &str| classify(sql).unwrap().effects;
        assert_eq!(
            change("SET search_path TO Secret, \"App\""),
            [SessionEffect::SearchPath(PathChange::Set(vec![
                "secret".into(),
                "App".into()
            ]))]
        );
        assert_eq!(
            change("set search_path = 'x'"),
            [SessionEffect::SearchPath(PathChange::Set(vec!["x".into()]))]
        );
        assert_eq!(
            change("set search_path to default"),
            [SessionEffect::SearchPath(PathChange::Reset)]
        );
        assert_eq!(
            change("reset all"),
            [SessionEffect::SearchPath(PathChange::Reset)]
        );
        assert_eq!(
            change("set local search_path = x"),
            [SessionEffect::SearchPath(PathChange::Unknown)]
        );
        // With standard_conforming_strings off these name `secret`.
        for sql in [
            r"set search_path = 'sec\x72et'",
            r"set role 'sec\x72et'",
            r"set session authorization 'sec\x72et'",
        ] {
            assert_eq!(
                change(sql),
                [SessionEffect::SearchPath(PathChange::Unknown)],
                "{sql}"
            );
        }
        assert_eq!(
            change("select set_config('search_path', 'x', false)"),
            [SessionEffect::SearchPath(PathChange::Unknown)]
        );
        assert!(change("set work_mem = '1MB'").is_empty());
        assert_eq!(
            change(r#"SET "Search_Path" = secret"#),
            [SessionEffect::SearchPath(PathChange::Set(vec![
                "secret".into()
            ]))]
        );
        assert_eq!(
            change("select * from set_config('search_path', 'secret', false)"),
            [SessionEffect::SearchPath(PathChange::Unknown)]
        );
        assert_eq!(
            change("update pg_settings set setting = 'secret' where name = 'search_path'"),
            [SessionEffect::SearchPath(PathChange::Unknown)]
        );
    }

    #[test]
    fn what_cannot_be_understood() {
        assert!(matches!(
            classify("DO $$ BEGIN EXECUTE 'drop table t'; END $$"),
            Err(NotUnderstood::Dynamic(_))
        ));
        assert!(matches!(
            classify("/* x */ do 'begin null; end'"),
            Err(NotUnderstood::Dynamic(_))
        ));
        assert!(matches!(classify("selec 1"), Err(NotUnderstood::Parse(_))));
        let deep = format!("select 1{}", "+1".repeat(MAX_TOKENS));
        assert_eq!(classify(&deep), Err(NotUnderstood::TooLong));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod stack_tests {
    use super::*;

    /// The longest statements still parsed must not exhaust a tokio worker's 2 MiB stack:
    /// a left-deep chain of operators builds a tree as deep as the chain is long.
    #[test]
    fn longest_accepted_statements_fit_a_worker_stack() {
        let chains = [
            format!("select 1{}", "+1".repeat(MAX_TOKENS / 2 - 2)),
            format!("select 1{}", " or true".repeat(MAX_TOKENS / 2 - 2)),
            format!("select 1{}", "::int".repeat(MAX_TOKENS / 2 - 2)),
            format!("select {}1", "-".repeat(MAX_TOKENS - 3)),
            format!("select {}1", "not ".repeat(MAX_TOKENS - 3)),
        ];
        for sql in chains {
            let outcome = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || classify(&sql).is_ok())
                .unwrap()
                .join();
            assert!(outcome.is_ok(), "classification overflowed the stack");
        }
    }
}
