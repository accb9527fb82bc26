//! The MCP tools: their schemas and what each does.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, JsonObject, Tool};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_core::AgentContext;
use sluice_mask::ColumnOrigin;
use sluice_postgres::inprocess::{InProcessClient, QueryResult, SqlError};
use sluice_postgres::InProcess;

use super::{McpCaller, McpDeps};

/// Rows a query returns unless it asks for another number, and the most it may ask for.
const DEFAULT_ROWS: usize = 100;
const MAX_ROWS: usize = 1000;
/// Columns a schema description lists at most.
const MAX_DESCRIBED_COLUMNS: usize = 5000;
const MAX_PARAMS: usize = 1000;
/// How long a statement may run unless the call asks for less or more, and the most it may ask.
const DEFAULT_TIMEOUT_S: u64 = 60;
const MAX_TIMEOUT_S: u64 = 270;

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

pub fn definitions() -> Vec<Tool> {
    let context_props = json!({
        "prompt": { "type": "string", "description": "The user's request that led to this call, verbatim. Recorded (with secrets masked) beside every statement for the audit." },
        "intent": { "type": "string", "description": "One sentence: why you are running this." }
    });
    let with_context = |mut props: Value| {
        if let (Value::Object(p), Value::Object(c)) = (&mut props, &context_props) {
            p.extend(c.clone());
        }
        props
    };
    vec![
        Tool::new(
            "list_connections",
            "List the databases (connections) you may query through sluice.",
            schema(json!({ "type": "object", "properties": {} })),
        ),
        Tool::new(
            "describe_connection",
            "Describe a connection's schema: tables and views with their columns and types. Columns that sluice masks are marked with how they are masked.",
            schema(json!({
                "type": "object",
                "properties": with_context(json!({
                    "connection": { "type": "string", "description": "Connection name from list_connections." },
                    "schema": { "type": "string", "description": "Only this schema (default: all but the system schemas)." }
                })),
                "required": ["connection"]
            })),
        ),
        Tool::new(
            "query",
            "Run one SQL statement on a connection, with $1, $2 … parameters. Policy may refuse it (the reason says which rule) or hold it for a human's review: then you get a review id; poll review_status and, once approved, call query again with exactly the same sql and params. Sensitive values in results are masked. Results hold at most max_rows rows (and 4 MiB of text; cells over 16 KiB are cut and marked) and say when they were truncated.",
            schema(json!({
                "type": "object",
                "properties": with_context(json!({
                    "connection": { "type": "string" },
                    "sql": { "type": "string", "description": "One statement." },
                    "params": {
                        "type": "array",
                        "description": "Values for $1, $2 …: strings, numbers, booleans or null.",
                        "items": { "type": ["string", "number", "boolean", "null"] }
                    },
                    "max_rows": { "type": "integer", "minimum": 1, "maximum": MAX_ROWS, "default": DEFAULT_ROWS },
                    "timeout_seconds": { "type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_S, "default": DEFAULT_TIMEOUT_S, "description": "The statement is cancelled when it runs longer." }
                })),
                "required": ["connection", "sql"]
            })),
        ),
        Tool::new(
            "review_status",
            "The status of a review that held one of your queries: pending, approved (run the same query again now), denied (with the reviewer's reason) or expired.",
            schema(json!({
                "type": "object",
                "properties": { "review_id": { "type": "string" } },
                "required": ["review_id"]
            })),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescribeArgs {
    connection: String,
    schema: Option<String>,
    prompt: Option<String>,
    intent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryArgs {
    connection: String,
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
    max_rows: Option<usize>,
    timeout_seconds: Option<u64>,
    prompt: Option<String>,
    intent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewArgs {
    review_id: String,
}

/// Runs tool `name`. Failures a model can act on (bad arguments, a refusal, an SQL error)
/// are tool results with `isError`, so the model sees them.
pub async fn call(
    deps: &McpDeps,
    caller: &McpCaller,
    name: &str,
    args: JsonObject,
    mut ctx: AgentContext,
) -> CallToolResult {
    let args = Value::Object(args);
    let bad_args =
        |e: serde_json::Error| failure("invalid_arguments", None, format!("{name}: {e}"));
    match name {
        "list_connections" => list_connections(deps, caller),
        "describe_connection" => match serde_json::from_value::<DescribeArgs>(args) {
            Ok(a) => {
                set_prompt(&mut ctx, a.prompt.as_deref(), a.intent.as_deref());
                describe(deps, caller, &a.connection, a.schema.as_deref(), ctx).await
            }
            Err(e) => bad_args(e),
        },
        "query" => match serde_json::from_value::<QueryArgs>(args) {
            Ok(a) => {
                set_prompt(&mut ctx, a.prompt.as_deref(), a.intent.as_deref());
                query(deps, caller, a, ctx).await
            }
            Err(e) => bad_args(e),
        },
        "review_status" => match serde_json::from_value::<ReviewArgs>(args) {
            Ok(a) => review_status(deps, caller, &a.review_id).await,
            Err(e) => bad_args(e),
        },
        other => failure("unknown_tool", None, format!("no tool named {other:?}")),
    }
}

fn set_prompt(ctx: &mut AgentContext, prompt: Option<&str>, intent: Option<&str>) {
    if let Some(p) = prompt {
        ctx.set("prompt", p);
    }
    if let Some(i) = intent {
        ctx.set("intent", i);
    }
}

fn failure(status: &str, code: Option<&str>, message: String) -> CallToolResult {
    CallToolResult::structured_error(json!({ "status": status, "code": code, "message": message }))
}

fn list_connections(deps: &McpDeps, caller: &McpCaller) -> CallToolResult {
    let list: Vec<Value> = deps
        .connections
        .iter()
        // The tools speak SQL.
        .filter(|c| c.kind == "postgres" && c.admits(&caller.identity))
        .map(|c| {
            json!({
                "name": c.name, "kind": c.kind, "agent": c.agent,
                "requires_access_request": c.requires_access_request,
            })
        })
        .collect();
    CallToolResult::structured(json!({ "connections": list }))
}

/// Opens a session for one tool call: the caller's own token, fail-fast reviews, the call's
/// context on every statement.
async fn open(
    deps: &McpDeps,
    caller: &McpCaller,
    connection: &str,
    ctx: AgentContext,
) -> Result<InProcessClient, SqlError> {
    // What the client calls itself, as the server would keep it: no control characters,
    // at most 63 bytes (NAMEDATALEN - 1).
    let printable: String = ctx
        .client
        .as_deref()
        .unwrap_or("mcp")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    // PostgreSQL keeps 63 bytes of application_name.
    let application_name = sluice_core::text::clip(&printable, 63).to_owned();
    InProcessClient::connect(
        deps.frontend.clone(),
        InProcess {
            client_addr: format!("mcp:{}", caller.addr),
            agent_context: Some(ctx),
            fail_fast_reviews: true,
        },
        &caller.identity.user,
        &caller.token,
        connection,
        &application_name,
    )
    .await
}

/// One statement a tool runs, and its limits.
struct Statement<'a> {
    sql: &'a str,
    params: &'a [Option<&'a str>],
    max_rows: usize,
    timeout: Duration,
}

async fn run(
    deps: &McpDeps,
    caller: &McpCaller,
    connection: &str,
    ctx: AgentContext,
    s: Statement<'_>,
) -> Result<QueryResult, SqlError> {
    let withdrawn = || {
        SqlError::new(
            "57014",
            "the call was cancelled by its client before its statement ran".into(),
        )
    };
    if caller.stop.is_cancelled() {
        return Err(withdrawn());
    }
    let mut session = open(deps, caller, connection, ctx).await?;
    if caller.stop.is_cancelled() {
        session.close().await;
        return Err(withdrawn());
    }
    let result = session
        .query(
            s.sql,
            s.params,
            s.max_rows,
            s.timeout,
            caller.stop.cancelled(),
        )
        .await;
    session.close().await;
    result
}

/// A refusal or error as the model should see it: a held statement's review id, a
/// policy's reason, or the database's error.
fn sql_failure(e: SqlError) -> CallToolResult {
    let held = e
        .from_gateway
        .then(|| crate::pipeline::held_review_id(&e.message));
    if let Some(id) = held.flatten() {
        return CallToolResult::structured_error(json!({
            "status": "pending_review",
            "review_id": id,
            "message": e.message,
            "next": "call review_status with this review_id; once it is approved, call query again with exactly the same sql and params (it then runs once)",
        }));
    }
    let status = if e.from_gateway && e.code == "42501" {
        "denied"
    } else {
        "error"
    };
    failure(status, Some(&e.code), e.message)
}

async fn query(
    deps: &McpDeps,
    caller: &McpCaller,
    a: QueryArgs,
    ctx: AgentContext,
) -> CallToolResult {
    if a.params.len() > MAX_PARAMS {
        return failure(
            "invalid_arguments",
            None,
            format!("at most {MAX_PARAMS} params"),
        );
    }
    let params: Vec<Option<String>> = a
        .params
        .iter()
        .map(|v| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
        .collect();
    let params: Vec<Option<&str>> = params.iter().map(Option::as_deref).collect();
    let max_rows = a.max_rows.unwrap_or(DEFAULT_ROWS).clamp(1, MAX_ROWS);
    let timeout = Duration::from_secs(
        a.timeout_seconds
            .unwrap_or(DEFAULT_TIMEOUT_S)
            .clamp(1, MAX_TIMEOUT_S),
    );
    let statement = Statement {
        sql: &a.sql,
        params: &params,
        max_rows,
        timeout,
    };
    match run(deps, caller, &a.connection, ctx, statement).await {
        Ok(result) => CallToolResult::structured(result_json(&a.connection, result)),
        Err(e) => sql_failure(e),
    }
}

fn result_json(connection: &str, r: QueryResult) -> Value {
    let columns: Vec<Value> = r
        .columns
        .iter()
        .map(|c| json!({ "name": c.name, "type": type_name(c.type_oid) }))
        .collect();
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            Value::Array(
                row.iter()
                    .zip(
                        r.columns
                            .iter()
                            .map(|c| c.type_oid)
                            .chain(std::iter::repeat(0)),
                    )
                    .map(|(cell, oid)| cell_json(cell.as_deref(), oid))
                    .collect(),
            )
        })
        .collect();
    let mut out = json!({
        "connection": connection,
        "command": r.tag,
        "columns": columns,
        "rows": rows,
        "row_count": r.rows.len(),
        "truncated": r.truncated,
    });
    if r.truncated {
        out["note"] = json!(format!(
            "only the first {} rows are shown (at most max_rows, and 4 MiB of text); narrow the query or raise max_rows (at most {MAX_ROWS})",
            r.rows.len()
        ));
    }
    if !r.notices.is_empty() {
        out["notices"] = json!(r.notices);
    }
    if r.copy_out {
        out["note"] = json!("COPY … TO STDOUT ran, but this tool returns no COPY data: use SELECT");
    }
    out
}

/// Numbers and booleans as JSON values; everything else as the server's text.
fn cell_json(cell: Option<&str>, type_oid: u32) -> Value {
    let Some(text) = cell else {
        return Value::Null;
    };
    match type_oid {
        16 => json!(text == "t"),
        20 | 21 | 23 | 26 => text
            .parse::<i64>()
            .map_or_else(|_| json!(text), |n| json!(n)),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map_or_else(|| json!(text), |f| json!(f)),
        _ => json!(text),
    }
}

fn type_name(oid: u32) -> String {
    let name = match oid {
        16 => "boolean",
        17 => "bytea",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamp with time zone",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return format!("oid {oid}"),
    };
    name.to_owned()
}

const DESCRIBE_SQL: &str = "SELECT c.table_schema, c.table_name, t.table_type, c.column_name, c.data_type, c.is_nullable \
     FROM information_schema.columns c \
     JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
     WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema') \
       AND ($1::text IS NULL OR c.table_schema = $1::text) \
     ORDER BY c.table_schema, c.table_name, c.ordinal_position";

async fn describe(
    deps: &McpDeps,
    caller: &McpCaller,
    connection: &str,
    only_schema: Option<&str>,
    ctx: AgentContext,
) -> CallToolResult {
    let statement = Statement {
        sql: DESCRIBE_SQL,
        params: &[only_schema],
        max_rows: MAX_DESCRIBED_COLUMNS,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT_S),
    };
    let result = match run(deps, caller, connection, ctx, statement).await {
        Ok(r) => r,
        Err(e) => return sql_failure(e),
    };
    let masking = deps
        .masking
        .as_ref()
        .and_then(|m| m.for_session(connection, &caller.identity).ok().flatten());
    let mut tables: Vec<Value> = Vec::new();
    for row in &result.rows {
        let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let (schema, table, column) = (cell(0), cell(1), cell(3));
        let origin = ColumnOrigin {
            schema: schema.clone(),
            table: table.clone(),
            column: column.clone(),
        };
        let mut col = json!({ "name": column, "type": cell(4), "nullable": cell(5) == "YES" });
        if let Some(style) = masking.as_ref().and_then(|m| m.column_style(&origin)) {
            col["masked"] = json!(style);
        }
        let same_table = tables
            .last()
            .is_some_and(|t| t["schema"] == json!(schema) && t["name"] == json!(table));
        if !same_table {
            let kind = if cell(2) == "VIEW" { "view" } else { "table" };
            tables.push(json!({ "schema": schema, "name": table, "kind": kind, "columns": [] }));
        }
        if let Some(Value::Array(columns)) = tables.last_mut().map(|t| &mut t["columns"]) {
            columns.push(col);
        }
    }
    let detectors: Vec<&String> = masking
        .as_ref()
        .map(|m| m.detector_names().iter().collect())
        .unwrap_or_default();
    CallToolResult::structured(json!({
        "connection": connection,
        "tables": tables,
        "truncated": result.truncated,
        "masking_detectors": detectors,
        "note": if detectors.is_empty() { Value::Null } else {
            json!("values these detectors find are masked in any text column")
        },
    }))
}

async fn review_status(deps: &McpDeps, caller: &McpCaller, id: &str) -> CallToolResult {
    let store = deps.store.clone();
    let key = id.to_owned();
    let row = tokio::task::spawn_blocking(move || store.get_review(&key))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let visible = row.filter(|r| {
        r.requester == caller.identity.user || crate::reviews::is_reviewer(r, &caller.identity)
    });
    let Some(review) = visible else {
        return failure("not_found", None, format!("no review {id:?} of yours"));
    };
    let mut out = crate::views::review_json(&review);
    out["next"] = json!(match review.status.as_str() {
        "pending" => "wait for a reviewer, then ask again",
        "approved" => "run the same query again with exactly the same sql and params: it runs once",
        _ => "this review will not let the query run; change course or ask a human",
    });
    CallToolResult::structured(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_a_review_refusal_reads_as_a_held_query() {
        let refusal = |from_gateway: bool| SqlError {
            code: "42501".into(),
            message: "statement held for review r-0123456789ab (policy \"x\"); once …".into(),
            from_gateway,
        };
        let s = sql_failure(refusal(true))
            .structured_content
            .unwrap_or_default();
        assert_eq!(s["status"], "pending_review");
        assert_eq!(s["review_id"], "r-0123456789ab");
        // The same words raised by a statement (RAISE … USING ERRCODE '42501') are an error.
        let s = sql_failure(refusal(false))
            .structured_content
            .unwrap_or_default();
        assert_eq!(s["status"], "error");
    }
}
