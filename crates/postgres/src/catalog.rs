//! Where result columns come from: the target's catalog, read over a connection of the
//! gateway's own (one per target connection, opened on first use and reused).
//!
//! A RowDescription names each column's table by OID and column number; masking rules
//! name `schema.table.column`. This module turns the one into the other — through views
//! (their stored query tree records each output column's origin) — and knows each type's
//! category, so the masker can tell text from numbers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use sluice_mask::ColumnOrigin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec;
use crate::lock;
use crate::stream::BoxStream;

/// Opens an authenticated connection to the target.
pub type Connect =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<BoxStream, String>> + Send>> + Send + Sync>;

/// How long names read from the catalog are trusted (a renamed column is seen after this).
const TTL: Duration = Duration::from_secs(30);
/// Longest wait for one catalog answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest catalog message accepted (a view's stored query tree can be long).
const MAX_MESSAGE: usize = 64 << 20;
/// The catalog connection's search_path between describes.
const SEARCH_CATALOG_ONLY: &str = "SET search_path = pg_catalog";
/// Views over views are followed this deep.
const MAX_VIEW_DEPTH: usize = 16;

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub table: u32,
    pub column: i16,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// A type's category (`pg_type.typcategory`: `S` string, `N` numeric, `A` array, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    pub category: u8,
}

#[derive(Debug)]
struct Table {
    schema: String,
    name: String,
    columns: HashMap<i16, String>,
    /// For a view: each output column's origin (table OID, column), when it has one.
    view: Option<HashMap<i16, (u32, i16)>>,
    /// For a view: the names its definition mentions.
    definition_names: Vec<String>,
}

/// Where a result column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A table column.
    Column(ColumnOrigin),
    /// Computed by the statement.
    Computed,
    /// Computed by a view whose definition (with those of the views it was read through)
    /// mentions these names.
    InView(Vec<String>),
}

/// The catalog of one target connection.
pub struct Catalog {
    connect: Connect,
    conn: tokio::sync::Mutex<Option<BoxStream>>,
    tables: std::sync::Mutex<HashMap<u32, (Instant, Arc<Table>)>>,
    types: std::sync::Mutex<(Option<Instant>, HashMap<u32, TypeInfo>)>,
}

impl Catalog {
    pub fn new(connect: Connect) -> Catalog {
        Catalog {
            connect,
            conn: tokio::sync::Mutex::new(None),
            tables: std::sync::Mutex::new(HashMap::new()),
            types: std::sync::Mutex::new((None, HashMap::new())),
        }
    }

    /// Where each `(table OID, column number)` comes from. Views are followed to the base
    /// table column.
    pub async fn origins(&self, fields: &[(u32, i16)]) -> Result<Vec<Resolved>, String> {
        let mut out = Vec::with_capacity(fields.len());
        for &(table, column) in fields {
            out.push(self.origin(table, column).await?);
        }
        Ok(out)
    }

    async fn origin(&self, mut table: u32, mut column: i16) -> Result<Resolved, String> {
        // The names in the definitions of the views passed through: a column a view
        // computes may derive from any of them.
        let mut view_names: Vec<String> = Vec::new();
        let computed = |names: Vec<String>| {
            if names.is_empty() {
                Resolved::Computed
            } else {
                Resolved::InView(names)
            }
        };
        for _ in 0..MAX_VIEW_DEPTH {
            if table == 0 || column <= 0 {
                return Ok(computed(view_names));
            }
            let Some(t) = self.table(table).await? else {
                return Ok(computed(view_names));
            };
            match &t.view {
                Some(view) => {
                    view_names.extend(t.definition_names.iter().cloned());
                    match view.get(&column) {
                        Some(&(next_table, next_column)) => {
                            (table, column) = (next_table, next_column)
                        }
                        None => return Ok(computed(view_names)),
                    }
                }
                None => {
                    return Ok(match t.columns.get(&column) {
                        Some(c) => Resolved::Column(ColumnOrigin {
                            schema: t.schema.clone(),
                            table: t.name.clone(),
                            column: c.clone(),
                        }),
                        None => computed(view_names),
                    })
                }
            }
        }
        Err("views nest too deeply to trace their columns".into())
    }

    async fn table(&self, oid: u32) -> Result<Option<Arc<Table>>, String> {
        if let Some((at, t)) = lock(&self.tables).get(&oid) {
            if at.elapsed() < TTL {
                return Ok(Some(t.clone()));
            }
        }
        let rows = self
            .query(&format!(
                "SELECT n.nspname, t.relname, c.relkind, a.attnum, a.attname, \
                 CASE WHEN c.relkind IN ('v', 'm') AND a.attnum = 1 THEN \
                 (SELECT r.ev_action::text FROM pg_catalog.pg_rewrite r \
                  WHERE r.ev_class = c.oid AND r.rulename = '_RETURN') END, \
                 CASE WHEN c.relkind IN ('v', 'm') AND a.attnum = 1 THEN \
                 pg_catalog.pg_get_viewdef(c.oid) END \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_class t ON t.oid = CASE WHEN c.relispartition \
                  THEN pg_catalog.pg_partition_root(c.oid) ELSE c.oid END \
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                 WHERE c.oid = {oid} AND a.attnum > 0 AND NOT a.attisdropped"
            ))
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let text =
            |row: &Vec<Option<String>>, i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let mut table = Table {
            schema: text(first, 0),
            name: text(first, 1),
            columns: HashMap::new(),
            view: None,
            definition_names: Vec::new(),
        };
        let relkind = text(first, 2);
        for row in &rows {
            if let Ok(n) = text(row, 3).parse::<i16>() {
                table.columns.insert(n, text(row, 4));
            }
            if let Some(Some(tree)) = row.get(5) {
                table.view = Some(view_origins(tree));
            }
            if let Some(Some(definition)) = row.get(6) {
                table.definition_names = sluice_sql::identifiers(definition);
            }
        }
        if matches!(relkind.as_str(), "v" | "m") && table.view.is_none() {
            // A view whose query tree could not be read: its columns have no known origin.
            table.view = Some(HashMap::new());
        }
        let table = Arc::new(table);
        lock(&self.tables).insert(oid, (Instant::now(), table.clone()));
        Ok(Some(table))
    }

    /// The category of each type; unknown types are read again from the catalog.
    pub async fn types(&self, oids: &[u32]) -> Result<HashMap<u32, TypeInfo>, String> {
        let stale = {
            let types = lock(&self.types);
            let fresh = types.0.is_some_and(|at| at.elapsed() < TTL);
            !oids.iter().all(|o| types.1.contains_key(o)) && !fresh || types.0.is_none()
        };
        if stale {
            let rows = self
                .query("SELECT oid, typcategory FROM pg_catalog.pg_type")
                .await?;
            let mut map = HashMap::with_capacity(rows.len());
            for row in rows {
                let (Some(Some(oid)), Some(Some(cat))) = (row.first(), row.get(1)) else {
                    continue;
                };
                if let Ok(oid) = oid.parse::<u32>() {
                    let category = cat.bytes().next().unwrap_or(b'X');
                    map.insert(oid, TypeInfo { category });
                }
            }
            *lock(&self.types) = (Some(Instant::now()), map);
        }
        let types = lock(&self.types);
        Ok(oids
            .iter()
            .filter_map(|o| types.1.get(o).map(|t| (*o, *t)))
            .collect())
    }

    /// The columns `sql` would return, without running it (Parse and Describe).
    pub async fn describe(&self, sql: &str) -> Result<Vec<Field>, String> {
        let mut out = BytesMut::new();
        codec::put_parse(&mut out, sql);
        codec::put_describe(&mut out, b'S', "");
        codec::sync(&mut out);
        // The statement is described with the role's own search_path, as a session sees it.
        let mut request = BytesMut::new();
        codec::put_query(&mut request, "SET search_path TO DEFAULT");
        request.extend_from_slice(&out);
        codec::put_query(&mut request, SEARCH_CATALOG_ONLY);
        let mut fields = Vec::new();
        self.exchange(&request, 3, |tag, body| {
            if tag == b'T' {
                fields = parse_row_description(body);
            }
        })
        .await?;
        Ok(fields)
    }

    /// Whether any of `names` is the name of relations in more than one schema (temporary
    /// ones included): then an unqualified name in a session may not mean what it means on
    /// this connection, whose `search_path` is the default one.
    pub async fn ambiguous(&self, names: &[String]) -> Result<bool, String> {
        // The names travel as a bound parameter (a text[] literal), never inside SQL text.
        let mut array = String::from("{");
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push('"');
            for c in n.chars() {
                if matches!(c, '"' | '\\') {
                    array.push('\\');
                }
                array.push(c);
            }
            array.push('"');
        }
        array.push('}');
        let mut out = BytesMut::new();
        codec::put_parse(
            &mut out,
            "SELECT relname FROM pg_catalog.pg_class \
             WHERE relkind IN ('r', 'v', 'm', 'p', 'f') AND relname = ANY($1::text[]) \
             GROUP BY relname HAVING count(*) > 1",
        );
        codec::put_bind_text(&mut out, &array);
        codec::put_execute(&mut out, "");
        codec::sync(&mut out);
        let mut rows = 0;
        self.exchange(&out, 1, |tag, _| {
            if tag == b'D' {
                rows += 1;
            }
        })
        .await?;
        Ok(rows > 0)
    }

    /// Runs a simple query; rows as text.
    async fn query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let mut out = BytesMut::new();
        codec::put_query(&mut out, sql);
        let mut rows = Vec::new();
        self.exchange(&out, 1, |tag, body| {
            if tag == b'D' {
                rows.push(parse_text_row(body));
            }
        })
        .await?;
        Ok(rows)
    }

    /// Sends `request`, hands every answer frame to `each` up to ReadyForQuery; an
    /// ErrorResponse becomes the error. One reconnect on a broken connection.
    async fn exchange(
        &self,
        request: &[u8],
        readies: usize,
        mut each: impl FnMut(u8, &[u8]),
    ) -> Result<(), String> {
        let mut conn = self.conn.lock().await;
        for attempt in 0..2 {
            if conn.is_none() {
                let mut stream = (self.connect)().await?;
                // The catalog is read with pg_catalog's own operators and functions only:
                // a role's search_path (which any session as that role can change) must
                // not redirect `=` in these queries.
                let mut set = BytesMut::new();
                codec::put_query(&mut set, SEARCH_CATALOG_ONLY);
                match tokio::time::timeout(
                    QUERY_TIMEOUT,
                    round_trip(&mut stream, &set, 1, &mut |_, _| {}),
                )
                .await
                {
                    Ok(Ok(None)) => *conn = Some(stream),
                    _ => return Err("cannot set up the catalog connection".into()),
                }
            }
            let Some(stream) = conn.as_mut() else {
                continue;
            };
            match tokio::time::timeout(
                QUERY_TIMEOUT,
                round_trip(stream, request, readies, &mut each),
            )
            .await
            {
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(error))) => return Err(error),
                Ok(Err(e)) if attempt == 0 => {
                    tracing::debug!(error = %e, "catalog connection broken; reconnecting");
                    *conn = None;
                }
                Ok(Err(e)) => {
                    *conn = None;
                    return Err(e);
                }
                Err(_) => {
                    *conn = None;
                    return Err("the target's catalog did not answer in time".into());
                }
            }
        }
        Err("the target's catalog is unavailable".into())
    }
}

/// One request/answer exchange; `Ok(Some(message))` when the server reported an error.
async fn round_trip(
    stream: &mut BoxStream,
    request: &[u8],
    mut readies: usize,
    each: &mut impl FnMut(u8, &[u8]),
) -> Result<Option<String>, String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut error = None;
    loop {
        while let Some(h) = codec::parse_header(&buf).map_err(|e| e.to_string())? {
            if h.body_len > MAX_MESSAGE {
                return Err("catalog answer too large".into());
            }
            if buf.len() < 5 + h.body_len {
                break;
            }
            let body = &buf[5..5 + h.body_len];
            match h.tag {
                b'E' => {
                    error.get_or_insert(codec::parse_error_fields(body).message);
                }
                b'Z' => {
                    readies -= 1;
                    if readies == 0 {
                        return Ok(error);
                    }
                }
                tag => each(tag, body),
            }
            buf.advance(5 + h.body_len);
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the catalog connection closed".into());
        }
    }
}

fn parse_text_row(body: &[u8]) -> Vec<Option<String>> {
    let mut row = Vec::new();
    let mut pos = 0;
    let Ok(n) = codec::read_i16(body, &mut pos, "DataRow") else {
        return row;
    };
    for _ in 0..n {
        let Ok(len) = codec::read_i32(body, &mut pos, "DataRow") else {
            break;
        };
        if len < 0 {
            row.push(None);
            continue;
        }
        let end = pos + len as usize;
        let Some(value) = body.get(pos..end) else {
            break;
        };
        row.push(Some(String::from_utf8_lossy(value).into_owned()));
        pos = end;
    }
    row
}

/// The columns of a RowDescription body.
pub fn parse_row_description(body: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut pos = 0;
    let Ok(n) = codec::read_i16(body, &mut pos, "RowDescription") else {
        return fields;
    };
    for _ in 0..n {
        let parsed = (|| {
            codec::read_cstr_lossy(body, &mut pos, "RowDescription").ok()?;
            let table = codec::read_i32(body, &mut pos, "RowDescription").ok()? as u32;
            let column = codec::read_i16(body, &mut pos, "RowDescription").ok()?;
            let type_oid = codec::read_i32(body, &mut pos, "RowDescription").ok()? as u32;
            codec::read_i16(body, &mut pos, "RowDescription").ok()?;
            codec::read_i32(body, &mut pos, "RowDescription").ok()?;
            let format = codec::read_i16(body, &mut pos, "RowDescription").ok()?;
            Some(Field {
                table,
                column,
                type_oid,
                format,
            })
        })();
        match parsed {
            Some(f) => fields.push(f),
            None => break,
        }
    }
    fields
}

/// Each output column's origin from a view's stored query tree (`pg_rewrite.ev_action`,
/// PostgreSQL's node text format): the top-level query's target entries carry `resno`,
/// `resorigtbl` and `resorigcol` — set by the parser for plain column references, traced
/// through subqueries; computed columns have none.
fn view_origins(tree: &str) -> HashMap<i16, (u32, i16)> {
    let tokens = node_tokens(tree);
    let mut origins = HashMap::new();
    let mut depth = 0usize; // `{` nesting
    let mut in_targets = false;
    let mut entry: (Option<i16>, Option<u32>, Option<i16>, bool) = (None, None, None, false);
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => {
                depth += 1;
                if depth == 2 && in_targets {
                    entry = (None, None, None, false);
                }
            }
            "}" => {
                if depth == 2 && in_targets {
                    if let (Some(resno), Some(tbl), Some(col), false) = entry {
                        if tbl != 0 {
                            origins.insert(resno, (tbl, col));
                        }
                    }
                }
                depth = depth.saturating_sub(1);
                if depth == 0 && in_targets {
                    break;
                }
            }
            _ if depth == 1 && t.starts_with(':') => {
                if in_targets {
                    break; // the next field of the top-level query: the targets are done
                }
                in_targets = t == ":targetList";
            }
            _ if depth == 2 && in_targets && t.starts_with(':') => {
                let value = tokens.get(i + 1).map(String::as_str).unwrap_or("");
                match t {
                    ":resno" => entry.0 = value.parse().ok(),
                    ":resorigtbl" => entry.1 = value.parse().ok(),
                    ":resorigcol" => entry.2 = value.parse().ok(),
                    ":resjunk" => entry.3 = value == "true",
                    _ => {}
                }
            }
            _ => {}
        }
        i += 1;
    }
    origins
}

/// Splits node text into `{`, `}`, `(`, `)` and atoms (backslash escapes kept inside atoms).
fn node_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '}' | '(' | ')' => tokens.push(c.to_string()),
            c if c.is_whitespace() => {}
            _ => {
                let mut atom = String::new();
                let mut c = c;
                loop {
                    if c == '\\' {
                        if let Some(next) = chars.next() {
                            atom.push(next);
                        }
                    } else {
                        atom.push(c);
                    }
                    match chars.peek() {
                        Some(&n) if !n.is_whitespace() && !matches!(n, '{' | '}' | '(' | ')') => {
                            c = n;
                            chars.next();
                        }
                        _ => break,
                    }
                }
                tokens.push(atom);
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_targets_are_read_from_the_top_level_query_only() {
        // Shape of PostgreSQL 15's ev_action for
        // CREATE VIEW v AS SELECT id, (SELECT 1) AS one, email AS e FROM users.
        let tree = "({QUERY :commandType 1 :rtable ({RANGETBLENTRY :relid 16385}) \
            :jointree {FROMEXPR} :targetList ({TARGETENTRY :expr {VAR :varno 1} :resno 1 \
            :resname id :ressortgroupref 0 :resorigtbl 16385 :resorigcol 1 :resjunk false} \
            {TARGETENTRY :expr {SUBLINK :subselect {QUERY :targetList ({TARGETENTRY :resno 1 \
            :resorigtbl 99 :resorigcol 9 :resjunk false})}} :resno 2 :resname one \
            :resorigtbl 0 :resorigcol 0 :resjunk false} {TARGETENTRY :expr {VAR :varno 1} \
            :resno 3 :resname e :resorigtbl 16385 :resorigcol 2 :resjunk false}) \
            :override 0 :onConflict <>})";
        let o = view_origins(tree);
        assert_eq!(o.get(&1), Some(&(16385, 1)));
        assert_eq!(o.get(&2), None);
        assert_eq!(o.get(&3), Some(&(16385, 2)));
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn escaped_names_stay_one_token() {
        assert_eq!(
            node_tokens(r"{A :resname my\ \{col :x 1}"),
            ["{", "A", ":resname", "my {col", ":x", "1", "}"]
        );
    }
}
