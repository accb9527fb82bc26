//! Masking of sensitive values, one cell (or one text) at a time.
//!
//! The config's `masking:` rules say who and which connections they cover, which columns
//! (`schema.table.column` globs) and which content detectors they mask, and how (`style`).
//! [`Masking`] compiles them once; [`Masking::for_session`] picks the rules that apply to a
//! session's identity and connection; [`SessionMasking::plan`] decides, per result column,
//! what to do with its cells; [`ResultPlan::mask_cell`] does it and counts what it masked.
//!
//! This crate knows no wire format: a protocol frontend says where a column comes from
//! ([`ColumnOrigin`]) and what kind of value it carries ([`CellKind`]), and re-encodes the
//! cells this crate changes.

pub mod detect;
mod style;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sluice_core::{glob, Identity, MaskCount, Principal};

pub use detect::{CustomDetector, DetectorSet, Hit, BUILTIN};
pub use style::Style;

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("unknown detector {0:?} (built-in: {list}; or define it with `name` and `regex` or `words`)", list = BUILTIN.join(", "))]
    UnknownDetector(String),
    #[error("detector {name:?}: {reason}")]
    BadPattern { name: String, reason: String },
    #[error("masking rule {rule}: {reason}")]
    BadRule { rule: String, reason: String },
}

/// One rule as written under `masking:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRuleSpec {
    /// Shown in errors; optional.
    #[serde(default)]
    pub name: Option<String>,
    /// Connection globs; empty or absent: all connections.
    #[serde(default)]
    pub connections: Vec<String>,
    /// Who the rule applies to (`user:`, `group:`, `agent:NAME`, `agent:*`); empty: everyone.
    #[serde(default)]
    pub applies_to: Vec<String>,
    /// Who is exempt, in the same notation (for example `group:auditors`).
    #[serde(default)]
    pub except: Vec<String>,
    /// `schema.table.column` globs (`*` matches any run of characters, ASCII case ignored).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Built-in detector names, or `{name, regex}` / `{name, words}` for your own.
    #[serde(default)]
    pub detectors: Vec<DetectorSpec>,
    /// Fields of JSON answers (HTTP APIs, Lambda results), by path: `email`,
    /// `users[*].email`, `*.card.number` (`*` any key, `[*]` any array element).
    #[serde(default)]
    pub fields: Vec<String>,
    /// `redact` (default), `partial`, `hash` or `null`.
    #[serde(default)]
    pub style: Option<String>,
    /// `partial`: how many trailing letters and digits stay visible (default 4).
    #[serde(default)]
    pub keep: Option<usize>,
    /// `redact`: the marker written in place of the value (default `[redacted]`).
    #[serde(default)]
    pub marker: Option<String>,
}

/// A detector as written in a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DetectorSpec {
    Builtin(String),
    Regex { name: String, regex: String },
    Words { name: String, words: Vec<String> },
}

impl DetectorSpec {
    fn name(&self) -> &str {
        match self {
            DetectorSpec::Builtin(n)
            | DetectorSpec::Regex { name: n, .. }
            | DetectorSpec::Words { name: n, .. } => n,
        }
    }
}

/// Where a result column's values come from, when the target can tell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnOrigin {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl ColumnOrigin {
    fn label(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// What kind of value a column carries, as the frontend knows it from the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// Text: a masked span is rewritten in place.
    Text,
    /// A JSON document: spans inside strings are rewritten in place; a span outside a
    /// string and a whole value become a JSON string.
    Json,
    /// Text with structure a rewrite could break (arrays, composites, unknown types): a
    /// detector hit makes the whole value NULL.
    Structured,
    /// Numbers, dates, binary data…: never scanned; a column rule makes the value NULL.
    Opaque,
}

/// Where a result column comes from, as far as the frontend could tell.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A table column (views already followed to their base table).
    Column(&'a ColumnOrigin),
    /// Computed by the statement (an expression, a function's result).
    Computed,
    /// Computed by a view whose definition mentions these names: judged like a computed
    /// column of a statement that mentions them too.
    InView(&'a [String]),
    /// The frontend could not find out (the catalog was unreachable): column rules apply
    /// as if the column matched the first of them — failing closed.
    Unknown,
}

/// A result column as the frontend describes it.
#[derive(Debug, Clone, Copy)]
pub struct ResultColumn<'a> {
    pub origin: Origin<'a>,
    pub kind: CellKind,
}

/// What happened to one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Unchanged.
    Keep,
    /// Now SQL NULL.
    Null,
    /// Replaced by what was written to `out`.
    Replaced,
}

/// A pattern part that matches anything.
fn is_any(part: &str) -> bool {
    part.bytes().all(|b| b == b'*')
}

/// Whether one of `identifiers` matches the pattern part.
fn named(part: &str, identifiers: &[String]) -> bool {
    identifiers.iter().any(|m| glob(part, m))
}

#[derive(Debug)]
struct ColumnPattern {
    parts: [String; 3],
}

impl ColumnPattern {
    fn parse(text: &str) -> Result<ColumnPattern, String> {
        let parts: Vec<&str> = text.split('.').collect();
        match parts.as_slice() {
            [s, t, c] if !s.is_empty() && !t.is_empty() && !c.is_empty() => Ok(ColumnPattern {
                parts: [(*s).to_owned(), (*t).to_owned(), (*c).to_owned()],
            }),
            _ => Err(format!(
                "column {text:?} must be `schema.table.column` (globs allowed, e.g. `*.users.email`)"
            )),
        }
    }

    /// Whether a statement naming `identifiers` may compute text from matching columns.
    /// A rule that names its table covers every computed value of a statement that names
    /// that table: a whole row can carry the column without naming it (`row_to_json(u)`,
    /// `u::text`, `SELECT u FROM users u`). Naming the column is enough too (it may be
    /// read through a view). A rule for any table (`*.*.ssn`) covers statements that
    /// name the column; `schema.*.*` those that name the schema.
    fn reaches(&self, identifiers: &[String]) -> bool {
        let [schema, table, column] = &self.parts;
        if !is_any(table) {
            named(table, identifiers) || (!is_any(column) && named(column, identifiers))
        } else if !is_any(column) {
            named(column, identifiers)
        } else if !is_any(schema) {
            named(schema, identifiers)
        } else {
            true
        }
    }

    /// Whether a statement naming `identifiers` names the column itself (or, for a rule
    /// covering every column, its table): then even a computed number or date may carry
    /// it (`ascii(substr(email, 1, 1))`, `replace(ssn, '-', '')::bigint`). Counting rows
    /// of the table (`count(*)`) does not name the column.
    fn names_column(&self, identifiers: &[String]) -> bool {
        let [_, table, column] = &self.parts;
        if !is_any(column) {
            named(column, identifiers)
        } else {
            self.reaches(identifiers) && (is_any(table) || named(table, identifiers))
        }
    }

    fn matches(&self, o: &ColumnOrigin) -> bool {
        glob(&self.parts[0], &o.schema)
            && glob(&self.parts[1], &o.table)
            && glob(&self.parts[2], &o.column)
    }
}

#[derive(Debug)]
struct Rule {
    connections: Vec<String>,
    applies_to: Vec<Principal>,
    except: Vec<Principal>,
    columns: Vec<ColumnPattern>,
    fields: Vec<FieldPattern>,
    detectors: Vec<String>,
    style: Style,
}

/// A JSON field path as written in a rule: `users[*].email`.
#[derive(Debug, Clone)]
struct FieldPattern {
    text: String,
    steps: Vec<FieldStep>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldStep {
    /// An object key, a glob (`*` any run of characters).
    Key(String),
    /// Any element of an array.
    AnyItem,
}

/// One step of where a JSON value sits: an object key or an array index.
#[derive(Debug, Clone, Copy)]
pub enum JsonStep<'a> {
    Key(&'a str),
    Item,
}

impl FieldPattern {
    fn parse(text: &str) -> Result<FieldPattern, String> {
        let bad = || format!("`fields`: {text:?} is not a path like users[*].email");
        let mut steps = Vec::new();
        for part in text.trim_start_matches("$.").split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(at) => (&part[..at], &part[at..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                steps.push(FieldStep::Key(key.to_owned()));
            } else if rest.is_empty() {
                return Err(bad());
            }
            while !rest.is_empty() {
                rest = rest.strip_prefix("[*]").ok_or_else(bad)?;
                steps.push(FieldStep::AnyItem);
            }
        }
        if steps.is_empty() {
            return Err(bad());
        }
        Ok(FieldPattern {
            text: text.to_owned(),
            steps,
        })
    }

    fn matches(&self, path: &[JsonStep<'_>]) -> bool {
        self.steps.len() == path.len()
            && self
                .steps
                .iter()
                .zip(path)
                .all(|(want, at)| match (want, at) {
                    (FieldStep::Key(pattern), JsonStep::Key(key)) => glob(pattern, key),
                    (FieldStep::AnyItem, JsonStep::Item) => true,
                    _ => false,
                })
    }
}

impl Rule {
    fn covers(&self, connection: &str, identity: &Identity) -> bool {
        (self.connections.is_empty() || self.connections.iter().any(|c| glob(c, connection)))
            && (self.applies_to.is_empty() || self.applies_to.iter().any(|p| p.covers(identity)))
            && !self.except.iter().any(|p| p.covers(identity))
    }
}

/// All masking rules of the config, compiled.
#[derive(Debug)]
pub struct Masking {
    rules: Vec<Rule>,
    custom: HashMap<String, CustomDetector>,
    key: Vec<u8>,
    /// Detector sets by the detectors they hold: sessions with the same rules share one.
    compiled: Mutex<HashMap<Vec<String>, Arc<DetectorSet>>>,
}

impl Masking {
    /// Compiles `specs`; `key` keys the `hash` style (keep it secret and stable, so equal
    /// values hash alike across sessions).
    pub fn new(specs: &[MaskRuleSpec], key: Vec<u8>) -> Result<Masking, MaskError> {
        let mut rules = Vec::new();
        let mut custom: HashMap<String, CustomDetector> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let label = spec.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let bad = |reason: String| MaskError::BadRule {
                rule: label.clone(),
                reason,
            };
            if spec.columns.is_empty() && spec.detectors.is_empty() && spec.fields.is_empty() {
                return Err(bad(
                    "names none of `columns`, `fields` and `detectors`".into()
                ));
            }
            let fields = spec
                .fields
                .iter()
                .map(|f| FieldPattern::parse(f).map_err(&bad))
                .collect::<Result<Vec<_>, _>>()?;
            let principals = |list: &[String], key: &str| {
                list.iter()
                    .map(|p| Principal::parse(p).map_err(|e| bad(format!("`{key}`: {e}"))))
                    .collect::<Result<Vec<_>, _>>()
            };
            let columns = spec
                .columns
                .iter()
                .map(|c| ColumnPattern::parse(c).map_err(&bad))
                .collect::<Result<Vec<_>, _>>()?;
            let style = Style::from_spec(spec.style.as_deref(), spec.keep, spec.marker.as_deref())
                .map_err(&bad)?;
            let mut detectors = Vec::new();
            for d in &spec.detectors {
                let name = d.name().to_owned();
                let defined = match d {
                    DetectorSpec::Builtin(n) => {
                        if !BUILTIN.contains(&n.as_str()) && !custom.contains_key(n) {
                            return Err(bad(MaskError::UnknownDetector(n.clone()).to_string()));
                        }
                        None
                    }
                    DetectorSpec::Regex { name, regex } => Some(CustomDetector::Regex {
                        name: name.clone(),
                        pattern: regex.clone(),
                    }),
                    DetectorSpec::Words { name, words } => Some(CustomDetector::Words {
                        name: name.clone(),
                        words: words.clone(),
                    }),
                };
                if let Some(def) = defined {
                    if BUILTIN.contains(&name.as_str()) {
                        return Err(bad(format!(
                            "detector {name:?} is built in; give yours another name"
                        )));
                    }
                    match custom.get(&name) {
                        Some(existing) if *existing != def => {
                            return Err(bad(format!(
                                "detector {name:?} is defined twice, differently"
                            )))
                        }
                        _ => {
                            // Compile it alone now, so a bad pattern names its rule.
                            DetectorSet::new(&[], std::slice::from_ref(&def))?;
                            custom.insert(name.clone(), def);
                        }
                    }
                }
                if !detectors.contains(&name) {
                    detectors.push(name);
                }
            }
            rules.push(Rule {
                connections: spec.connections.clone(),
                applies_to: principals(&spec.applies_to, "applies_to")?,
                except: principals(&spec.except, "except")?,
                columns,
                fields,
                detectors,
                style,
            });
        }
        Ok(Masking {
            rules,
            custom,
            key,
            compiled: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any rule exists at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The masking that applies to `identity` on `connection`, or `None` when no rule does
    /// (then results pass untouched).
    pub fn for_session(
        &self,
        connection: &str,
        identity: &Identity,
    ) -> Result<Option<Arc<SessionMasking>>, MaskError> {
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        let mut detector_styles: Vec<(String, Style)> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.covers(connection, identity)) {
            for c in &rule.columns {
                columns.push((c.parts.clone(), rule.style.clone()));
            }
            for f in &rule.fields {
                fields.push((f.clone(), rule.style.clone()));
            }
            for d in &rule.detectors {
                // The first rule naming a detector decides its style.
                if !detector_styles.iter().any(|(n, _)| n == d) {
                    detector_styles.push((d.clone(), rule.style.clone()));
                }
            }
        }
        if columns.is_empty() && fields.is_empty() && detector_styles.is_empty() {
            return Ok(None);
        }
        let names: Vec<String> = detector_styles.iter().map(|(n, _)| n.clone()).collect();
        let detectors = self.detector_set(&names)?;
        // Ids of the compiled set follow its names; map each id to its style.
        let styles = detectors
            .names()
            .iter()
            .map(|n| {
                detector_styles
                    .iter()
                    .find(|(d, _)| d == n)
                    .map_or(Style::default(), |(_, s)| s.clone())
            })
            .collect();
        Ok(Some(Arc::new(SessionMasking {
            columns: columns
                .into_iter()
                .map(|(parts, style)| (ColumnPattern { parts }, style))
                .collect(),
            fields,
            detectors,
            detector_styles: styles,
            key: self.key.clone(),
        })))
    }

    fn detector_set(&self, names: &[String]) -> Result<Arc<DetectorSet>, MaskError> {
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(set) = compiled.get(names) {
            return Ok(set.clone());
        }
        let builtins: Vec<String> = names
            .iter()
            .filter(|n| BUILTIN.contains(&n.as_str()))
            .cloned()
            .collect();
        let custom: Vec<CustomDetector> = names
            .iter()
            .filter_map(|n| self.custom.get(n).cloned())
            .collect();
        let set = Arc::new(DetectorSet::new(&builtins, &custom)?);
        compiled.insert(names.to_vec(), set.clone());
        Ok(set)
    }
}

/// The masking rules that apply to one session.
#[derive(Debug)]
pub struct SessionMasking {
    columns: Vec<(ColumnPattern, Style)>,
    /// JSON field rules, in rule order.
    fields: Vec<(FieldPattern, Style)>,
    detectors: Arc<DetectorSet>,
    /// Style of each detector, by detector id.
    detector_styles: Vec<Style>,
    key: Vec<u8>,
}

/// What to do with one result column's cells.
#[derive(Debug, Clone)]
enum Action {
    Pass,
    /// Run the detectors over each cell.
    Detect,
    /// A column rule masks every non-NULL cell; `label` indexes the plan's counters.
    Rule {
        style: Style,
        label: usize,
    },
}

impl SessionMasking {
    /// The style a column rule masks `origin` with, if one does (first rule wins, as for
    /// results): what a schema description marks as masked.
    pub fn column_style(&self, origin: &ColumnOrigin) -> Option<&'static str> {
        self.columns
            .iter()
            .find(|(pattern, _)| pattern.matches(origin))
            .map(|(_, style)| style.name())
    }

    /// The detectors that run over this session's text cells.
    pub fn detector_names(&self) -> &[String] {
        self.detectors.names()
    }

    /// Decides what to do with each column of a result. `statement` is the statement's
    /// text, when known: a computed column (no origin) of a statement that may derive it
    /// from a masked column is masked as that column — `lower(email)` must not reveal
    /// what `email` would not (see [`ColumnPattern::reaches`] and
    /// [`ColumnPattern::names_column`]). Returns `None` when no cell can need masking.
    pub fn plan(
        self: &Arc<Self>,
        columns: &[ResultColumn<'_>],
        statement: Option<&str>,
    ) -> Option<ResultPlan> {
        let mut labels: Vec<(String, Option<String>, &'static str)> = Vec::new();
        let mentioned = statement.map(sluice_sql::identifiers).unwrap_or_default();
        // EXECUTE and FETCH run a statement whose text this one does not show, and a
        // frontend's placeholder (`<unknown prepared statement …>`) or a missing text
        // shows nothing: computed columns are masked as if it named every masked column
        // (failing closed).
        let hidden = statement.is_none_or(|s| {
            s.starts_with('<')
                || sluice_sql::first_word_is(s, "execute")
                || sluice_sql::first_word_is(s, "fetch")
        });
        let mut actions = Vec::with_capacity(columns.len());
        for c in columns {
            let rule = match c.origin {
                Origin::Column(o) => self
                    .columns
                    .iter()
                    .find(|(p, _)| p.matches(o))
                    .map(|(_, s)| (o.label(), s)),
                Origin::Computed | Origin::InView(_) => {
                    let view_names: &[String] = match c.origin {
                        Origin::InView(names) => names,
                        _ => &[],
                    };
                    let named = |test: &dyn Fn(&[String]) -> bool| {
                        test(&mentioned) || (!view_names.is_empty() && test(view_names))
                    };
                    self.columns
                        .iter()
                        .find(|(p, _)| {
                            hidden
                                || if c.kind == CellKind::Opaque {
                                    named(&|ids| p.names_column(ids))
                                } else {
                                    named(&|ids| p.reaches(ids))
                                }
                        })
                        .map(|(p, s)| (format!("(computed from {})", p.parts.join(".")), s))
                }
                Origin::Unknown => self
                    .columns
                    .first()
                    .map(|(_, s)| ("(origin unknown)".to_owned(), s)),
            };
            let action = match rule {
                Some((label, style)) => {
                    labels.push((label, None, style.name()));
                    Action::Rule {
                        style: style.clone(),
                        label: labels.len() - 1,
                    }
                }
                None if !self.detectors.is_empty() && c.kind != CellKind::Opaque => Action::Detect,
                None => Action::Pass,
            };
            actions.push(action);
        }
        if actions.iter().all(|a| matches!(a, Action::Pass)) {
            return None;
        }
        let detector_base = labels.len();
        for (id, name) in self.detectors.names().iter().enumerate() {
            let style = self.detector_styles.get(id).map_or("redact", Style::name);
            labels.push((String::new(), Some(name.clone()), style));
        }
        Some(ResultPlan {
            kinds: columns.iter().map(|c| c.kind).collect(),
            actions,
            counts: vec![0; labels.len()],
            labels,
            detector_base,
            masking: self.clone(),
            hits: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Whether a statement may read values that column rules mask — then the texts of its
    /// errors and notices may quote them, and are masked by [`mask_quoted`]. A statement
    /// whose text is hidden (see [`SessionMasking::plan`]) may.
    pub fn statement_reaches(&self, statement: Option<&str>) -> bool {
        if self.columns.is_empty() {
            return false;
        }
        let Some(sql) = statement.filter(|s| {
            !(s.starts_with('<')
                || sluice_sql::first_word_is(s, "execute")
                || sluice_sql::first_word_is(s, "fetch"))
        }) else {
            return true;
        };
        let names = sluice_sql::identifiers(sql);
        self.columns.iter().any(|(p, _)| p.reaches(&names))
    }

    /// Whether any `fields` rule applies (JSON answers need their paths followed only then).
    pub fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Masks a JSON value at `path` whole when a `fields` rule names it: returns the value's
    /// replacement (a styled string, or JSON null for the `null` style) and the count.
    /// `text` gives the value as text (a string's content, a number's digits, a document);
    /// it is asked for only when a rule names the path.
    pub fn mask_field(
        &self,
        path: &[JsonStep<'_>],
        text: impl FnOnce() -> String,
    ) -> Option<(Option<String>, MaskCount)> {
        let (pattern, style) = self.fields.iter().find(|(p, _)| p.matches(path))?;
        let count = MaskCount {
            column: Some(format!("json:{}", pattern.text)),
            detector: None,
            style: style.name().to_owned(),
            values: 1,
        };
        if matches!(style, Style::Null) {
            return Some((None, count));
        }
        let mut out = Vec::new();
        style.write_span(text().as_bytes(), &self.key, false, &mut out);
        Some((Some(String::from_utf8_lossy(&out).into_owned()), count))
    }

    /// Masks what the detectors find in a free text (an error message, a notice detail).
    /// Returns the masked text and what was masked, or `None` when nothing was found.
    /// Works on bytes: the text may be in any ASCII-compatible client encoding (the
    /// markers written are ASCII).
    pub fn mask_text(&self, text: &[u8]) -> Option<(Vec<u8>, Vec<MaskCount>)> {
        let mut hits = Vec::new();
        self.detectors.find(text, &mut hits);
        if hits.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut counts = vec![0u64; self.detectors.names().len()];
        let mut at = 0;
        for h in &hits {
            out.extend_from_slice(&text[at..h.start]);
            let style = self.style_of(h.detector);
            // A message has no NULL: the null style writes the default marker instead.
            let style = if matches!(style, Style::Null) {
                &Style::DEFAULT_REDACT
            } else {
                style
            };
            style.write_span(&text[h.start..h.end], &self.key, false, &mut out);
            if let Some(c) = counts.get_mut(usize::from(h.detector)) {
                *c += 1;
            }
            at = h.end;
        }
        out.extend_from_slice(&text[at..]);
        let counts = counts
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(id, n)| MaskCount {
                column: None,
                detector: self.detectors.names().get(id).cloned(),
                style: self.style_of(id as u16).name().to_owned(),
                values: n,
            })
            .collect();
        Some((out, counts))
    }

    fn style_of(&self, detector: u16) -> &Style {
        self.detector_styles
            .get(usize::from(detector))
            .unwrap_or(&Style::DEFAULT_REDACT)
    }
}

/// The masking of one result: what to do per column, and how much was masked so far.
#[derive(Debug)]
pub struct ResultPlan {
    kinds: Vec<CellKind>,
    actions: Vec<Action>,
    /// Counter labels: column rules first (label, -, style), then one per detector.
    labels: Vec<(String, Option<String>, &'static str)>,
    counts: Vec<u64>,
    detector_base: usize,
    masking: Arc<SessionMasking>,
    hits: Vec<Hit>,
    scratch: Vec<u8>,
}

impl ResultPlan {
    /// How many columns the plan was made for.
    pub fn columns(&self) -> usize {
        self.actions.len()
    }

    /// Whether cells of column `col` may need masking (so must be looked at).
    pub fn inspects(&self, col: usize) -> bool {
        !matches!(self.actions.get(col), None | Some(Action::Pass))
    }

    /// Masks one non-NULL cell of column `col`. On [`Cell::Replaced`] the new value is in
    /// `out` (cleared first).
    pub fn mask_cell(&mut self, col: usize, value: &[u8], out: &mut Vec<u8>) -> Cell {
        let kind = self.kinds.get(col).copied().unwrap_or(CellKind::Opaque);
        match self.actions.get(col) {
            None | Some(Action::Pass) => Cell::Keep,
            Some(Action::Rule { style, label }) => {
                if let Some(c) = self.counts.get_mut(*label) {
                    *c += 1;
                }
                match (kind, style) {
                    (CellKind::Opaque | CellKind::Structured, _) | (_, Style::Null) => Cell::Null,
                    (CellKind::Json, _) => {
                        out.clear();
                        style.write_json_value(value, &self.masking.key, out);
                        Cell::Replaced
                    }
                    (CellKind::Text, _) => {
                        out.clear();
                        style.write_span(value, &self.masking.key, false, out);
                        Cell::Replaced
                    }
                }
            }
            Some(Action::Detect) => self.detect(kind, value, out),
        }
    }

    fn detect(&mut self, kind: CellKind, value: &[u8], out: &mut Vec<u8>) -> Cell {
        self.hits.clear();
        if kind == CellKind::Json && value.contains(&b'\\') {
            // Escapes become blanks of the same length, so that `\n123-45-6789` is seen
            // as a separate value and offsets stay those of the document.
            blank_json_escapes(value, &mut self.scratch);
            self.masking.detectors.find(&self.scratch, &mut self.hits);
        } else {
            self.masking.detectors.find(value, &mut self.hits);
        }
        if self.hits.is_empty() {
            return Cell::Keep;
        }
        for h in &self.hits {
            if let Some(c) = self
                .counts
                .get_mut(self.detector_base + usize::from(h.detector))
            {
                *c += 1;
            }
        }
        let null = kind == CellKind::Structured
            || self
                .hits
                .iter()
                .any(|h| matches!(self.masking.style_of(h.detector), Style::Null));
        if null {
            return Cell::Null;
        }
        out.clear();
        let json = kind == CellKind::Json;
        let mut at = 0;
        for h in &self.hits {
            let (start, end, quote) = if json {
                json_span(value, h.start, h.end)
            } else {
                (h.start, h.end, false)
            };
            if start < at {
                continue; // widened by the previous span to cover this one
            }
            out.extend_from_slice(&value[at..start]);
            // A bare JSON token (a number) replaced by text must become a string.
            if quote {
                out.push(b'"');
            }
            self.masking.style_of(h.detector).write_span(
                &value[start..end],
                &self.masking.key,
                json,
                out,
            );
            if quote {
                out.push(b'"');
            }
            at = end;
        }
        out.extend_from_slice(&value[at..]);
        Cell::Replaced
    }

    /// What was masked so far, by column and by detector (values never included).
    pub fn counts(&self) -> Vec<MaskCount> {
        self.labels
            .iter()
            .zip(&self.counts)
            .filter(|(_, n)| **n > 0)
            .map(|((column, detector, style), n)| MaskCount {
                column: detector.is_none().then(|| column.clone()),
                detector: detector.clone(),
                style: (*style).to_owned(),
                values: *n,
            })
            .collect()
    }
}

/// The marker that replaces values quoted in an error text, or a whole text.
pub const TEXT_MARKER: &str = "[redacted]";

/// `text` with what it quotes masked: the contents of `"…"` and, with `parentheses`, of
/// `(…)` — how PostgreSQL's messages quote values (`invalid input syntax for type
/// integer: "…"`, `Failing row contains (…)`, `Key (…)=(…)`). `None` when it quotes
/// nothing.
pub fn mask_quoted(text: &[u8], parentheses: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < text.len() {
        let close = match text[i] {
            b'"' => b'"',
            b'(' if parentheses => b')',
            b => {
                out.push(b);
                i += 1;
                continue;
            }
        };
        // The closing byte that matches (the last one for parentheses: values can hold them).
        let rest = &text[i + 1..];
        let end = if close == b')' {
            rest.iter().rposition(|&b| b == close)
        } else {
            rest.iter().position(|&b| b == close)
        };
        match end {
            Some(n) => {
                out.push(text[i]);
                out.extend_from_slice(TEXT_MARKER.as_bytes());
                out.push(close);
                changed = true;
                i += n + 2;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// A copy of a JSON document with each backslash escape (`\n`, `\u0040`) inside its
/// strings replaced by as many spaces.
fn blank_json_escapes(v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(v);
    let mut inside = false;
    let mut i = 0;
    while i < out.len() {
        match out[i] {
            b'\\' if inside => {
                let len = if out.get(i + 1) == Some(&b'u') { 6 } else { 2 };
                let end = (i + len).min(out.len());
                out[i..end].fill(b' ');
                i = end;
            }
            b'"' => {
                inside = !inside;
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// Adjusts a detector's span in a JSON document so that replacing it keeps the document
/// valid: a span starting inside an escape sequence (`\n`, `\u0040`) takes the whole
/// escape, one ending inside an escape takes it to its end, and one inside a string
/// never runs past the string's closing quote. A span outside any string (a number) is
/// replaced by a string, taking a leading minus sign with it. Returns the span and whether
/// the replacement must be quoted.
fn json_span(v: &[u8], start: usize, end: usize) -> (usize, usize, bool) {
    let escape_len = |i: usize| if v.get(i + 1) == Some(&b'u') { 6 } else { 2 };
    let (mut s, mut e) = (start, end);
    let mut inside = false;
    let mut i = 0;
    while i < s {
        if inside && v[i] == b'\\' {
            let len = escape_len(i);
            if i + len > s {
                s = i;
                break;
            }
            i += len;
            continue;
        }
        if v[i] == b'"' {
            inside = !inside;
        }
        i += 1;
    }
    if !inside {
        if s > 0 && v[s - 1] == b'-' {
            s -= 1;
        }
        return (s, e, true);
    }
    let mut j = s;
    while j < e {
        match v[j] {
            b'\\' => j += escape_len(j),
            b'"' => {
                e = j;
                break;
            }
            _ => j += 1,
        }
    }
    (s, e.max(j).min(v.len()), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ActorKind;

    fn session(yaml: &str) -> Arc<SessionMasking> {
        let specs: Vec<MaskRuleSpec> = serde_yaml_ng::from_str(yaml).unwrap_or_default();
        let masking = Masking::new(&specs, b"key".to_vec()).unwrap_or_else(|e| panic!("{e}"));
        let who = Identity {
            user: "u".into(),
            groups: vec![],
            credential: None,
            actor: ActorKind::Human,
        };
        masking
            .for_session("db", &who)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("covered"))
    }

    fn mask(plan: &mut ResultPlan, col: usize, value: &str) -> Option<String> {
        let mut out = Vec::new();
        match plan.mask_cell(col, value.as_bytes(), &mut out) {
            Cell::Keep => Some(value.to_owned()),
            Cell::Null => None,
            Cell::Replaced => Some(String::from_utf8_lossy(&out).into_owned()),
        }
    }

    #[test]
    fn json_stays_json() {
        let s = session("- { detectors: [email, credit_card, private_key] }");
        let col = [ResultColumn {
            origin: Origin::Computed,
            kind: CellKind::Json,
        }];
        let mut plan = s
            .plan(&col, Some("SELECT doc"))
            .unwrap_or_else(|| panic!("plan"));
        for (input, expected) in [
            (r#"{"d": -4111111111111111}"#, r#"{"d": "[redacted]"}"#),
            (r#"{"n": 4111111111111111}"#, r#"{"n": "[redacted]"}"#),
            (
                r#"{"s": "x\n4111 1111 1111 1111"}"#,
                r#"{"s": "x\n[redacted]"}"#,
            ),
            (
                r#"{"a": "Alice\nalice@example.com"}"#,
                r#"{"a": "Alice\n[redacted]"}"#,
            ),
            (
                r#"{"a": "x alice@example.com", "b": 1}"#,
                r#"{"a": "x [redacted]", "b": 1}"#,
            ),
            (
                r#"{"k": "-----BEGIN PRIVATE KEY-----\nMIIB", "z": 2}"#,
                r#"{"k": "[redacted]", "z": 2}"#,
            ),
        ] {
            assert_eq!(
                mask(&mut plan, 0, input).as_deref(),
                Some(expected),
                "{input}"
            );
        }
    }

    #[test]
    fn computed_columns_follow_what_the_statement_names() {
        let s = session(r#"- { columns: ["*.users.email", "*.*.ssn"] }"#);
        let text = ResultColumn {
            origin: Origin::Computed,
            kind: CellKind::Text,
        };
        let number = ResultColumn {
            origin: Origin::Computed,
            kind: CellKind::Opaque,
        };
        let planned = |sql: &str, c: ResultColumn<'_>| s.plan(&[c], Some(sql)).is_some();
        assert!(planned("SELECT lower(x) FROM users", text));
        assert!(planned("SELECT lower(email) FROM v_users", text));
        assert!(planned("SELECT ascii(email) FROM users", number));
        assert!(!planned("SELECT count(*) FROM users", number));
        assert!(planned(
            "SELECT replace(ssn, '-', '')::bigint FROM people",
            number
        ));
        assert!(!planned("SELECT upper(name) FROM people", text));
        assert!(planned("EXECUTE p", number));
        assert!(planned("FETCH ALL FROM c", text));
        assert!(planned("<unknown prepared statement \"s\">", text));
        assert!(s.plan(&[number], None).is_some());
    }
}
