//! The MCP endpoint driven by the official Python SDK (`tests/mcp/client.py`) over
//! streamable HTTP and through `sluice mcp` over stdio, against a real PostgreSQL: list,
//! describe with masked columns marked, queries with masking and row limits, a policy
//! denial, a held query approved through the CLI and retried, and the link from prompt to
//! statement (also from psql's sqlcommenter comments) that `sluice sessions search` follows.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{http, http_with, pg, sluice_bin, Gateway};

const CONFIG: &str = r#"policies:
  - { name: no-drop, match: { statement: [drop] }, action: deny, message: "dropping tables is not allowed" }
  - { name: deletes-need-review, match: { statement: [delete] }, action: review, reviewers: [user:dora] }
masking:
  - name: pii
    columns: ["*.customers.email"]
    detectors: [credit_card]
"#;

const SCHEMA: &str = "CREATE TABLE customers(id int PRIMARY KEY, name text, email text, note text);
INSERT INTO customers SELECT i, 'name' || i, 'c' || i || '@example.com', CASE WHEN i = 1 THEN 'card 4111 1111 1111 1111' ELSE 'ok' END FROM generate_series(1, 300) i;";

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// One running Python MCP client.
struct McpClient {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    tools: Vec<String>,
}

fn client_script() -> String {
    format!("{}/tests/mcp/client.py", env!("CARGO_MANIFEST_DIR"))
}

impl McpClient {
    fn http(gw: &Gateway, token: &str) -> McpClient {
        let mut cmd = Command::new("python3");
        cmd.arg(client_script())
            .arg("http")
            .arg(format!("http://127.0.0.1:{}/mcp", gw.api_port))
            .arg(token);
        McpClient::spawn(cmd)
    }

    /// Through `sluice mcp`, as Cursor or Claude Code would run it (token in the env).
    fn stdio(gw: &Gateway, token: &str) -> McpClient {
        let mut cmd = Command::new("python3");
        cmd.arg(client_script())
            .args(["stdio", sluice_bin(), "mcp", "--config"])
            .arg(&gw.config)
            .env("SLUICE_TOKEN", token);
        McpClient::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> McpClient {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with the mcp SDK (scripts/test installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut client = McpClient {
            child,
            stdin,
            lines,
            tools: Vec::new(),
        };
        let hello = client.next();
        assert_eq!(hello["server"], "sluice", "{hello}");
        client.tools = serde_json::from_value(hello["tools"].clone()).unwrap();
        client
    }

    fn next(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the MCP client answers (its errors are on stderr)");
        serde_json::from_str(&line).unwrap()
    }

    fn call_with_meta(&mut self, tool: &str, args: Value, meta: Value) -> Value {
        let request = json!({ "tool": tool, "args": args, "meta": meta });
        writeln!(self.stdin, "{request}").unwrap();
        self.next()
    }

    fn call(&mut self, tool: &str, args: Value) -> Value {
        self.call_with_meta(tool, args, Value::Null)
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection the test user is not allowed on: never listed, never usable.
const FORBIDDEN: &str = "  - { name: secret-db, kind: postgres, address: 127.0.0.1:1, database: x, user: x, password: x, allow: [group:dba] }\n";

fn setup(db: &str) -> (Gateway, String) {
    pg().create_db(db);
    pg().psql_admin(db, SCHEMA);
    let gw = Gateway::start_with(db, FORBIDDEN, CONFIG);
    let token = gw.user_token("cody");
    (gw, token)
}

fn search(gw: &Gateway, args: &[&str]) -> Vec<Value> {
    let out = gw.cli(&[&["sessions", "search"], args, &["--json"]].concat());
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// Like [`search`], once every hit has its result on record (result events are written
/// within 20 ms of the answer, not before the client has it).
fn search_settled(gw: &Gateway, args: &[&str]) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hits = search(gw, args);
        if !hits.is_empty() && hits.iter().all(|h| !h["status"].is_null()) {
            return hits;
        }
        assert!(std::time::Instant::now() < deadline, "{hits:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `POST /mcp` with `headers` (lines ending in `\r\n`) and a JSON-RPC message.
fn post_mcp(gw: &Gateway, headers: &str, message: &Value) -> (u16, String, String) {
    let accept = "Accept: application/json, text/event-stream\r\n";
    http_with(
        gw.api_port,
        "POST",
        "/mcp",
        &format!("{accept}{headers}"),
        Some(message),
    )
}

/// The `Mcp-Session-Id` of a response's header block.
fn session_id(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("mcp-session-id")
                .then(|| value.trim().to_owned())
        })
        .expect("an MCP session id")
}

/// Every audit event, in order, from all segments.
fn audit_events(gw: &Gateway) -> Vec<Value> {
    let mut segments: Vec<_> = std::fs::read_dir(gw.data_dir().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    segments.sort();
    segments
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs the tool tour every transport must pass; `actor` is how the caller is recorded.
fn tour(gw: &Gateway, db: &str, client: &mut McpClient, prompt: &str, actor: &str) {
    assert_eq!(
        client.tools,
        [
            "list_connections",
            "describe_connection",
            "query",
            "review_status"
        ]
    );

    let list = client.call("list_connections", json!({}));
    assert_eq!(list["is_error"], false, "{list}");
    let names: Vec<&str> = list["structured"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [db],
        "the connection the test user may not use is not listed"
    );

    let described = client.call(
        "describe_connection",
        json!({ "connection": db, "schema": "public" }),
    );
    assert_eq!(described["is_error"], false, "{described}");
    let table = &described["structured"]["tables"][0];
    assert_eq!(table["name"], "customers");
    let columns = table["columns"].as_array().unwrap();
    let email = columns.iter().find(|c| c["name"] == "email").unwrap();
    assert_eq!(email["masked"], "redact", "{described}");
    let id = columns.iter().find(|c| c["name"] == "id").unwrap();
    assert_eq!(id["type"], "integer");
    assert!(id.get("masked").is_none());
    assert_eq!(
        described["structured"]["masking_detectors"],
        json!(["credit_card"])
    );

    // A query with parameters: masking applies, numbers stay numbers, the row limit holds.
    let rows = client.call_with_meta(
        "query",
        json!({
            "connection": db,
            "sql": "SELECT id, email, note FROM customers WHERE id >= $1 ORDER BY id",
            "params": [1],
            "max_rows": 5,
            "prompt": prompt,
            "intent": "look at the first customers",
        }),
        json!({ "traceparent": TRACEPARENT, "sluice/conversation_id": "conv-7" }),
    );
    assert_eq!(rows["is_error"], false, "{rows}");
    let s = &rows["structured"];
    assert_eq!(s["row_count"], 5);
    assert_eq!(s["truncated"], true);
    assert!(s["note"].as_str().unwrap().contains("first 5 rows"));
    assert_eq!(s["rows"][0], json!([1, "[redacted]", "card [redacted]"]));
    assert_eq!(s["rows"][4][0], 5);

    let all = client.call(
        "query",
        json!({ "connection": db, "sql": "SELECT count(*) AS n FROM customers" }),
    );
    assert_eq!(all["structured"]["rows"], json!([[300]]), "{all}");
    assert_eq!(all["structured"]["command"], "SELECT 1");
    assert_eq!(all["structured"]["truncated"], false);

    // Policy: a denial names its rule and reason, and nothing ran.
    let drop = client.call(
        "query",
        json!({ "connection": db, "sql": "DROP TABLE customers" }),
    );
    assert_eq!(drop["is_error"], true);
    assert_eq!(drop["structured"]["status"], "denied");
    assert!(
        drop["structured"]["message"]
            .as_str()
            .unwrap()
            .contains("\"no-drop\": dropping tables is not allowed"),
        "{drop}"
    );
    assert_eq!(
        pg().psql_admin(db, "SELECT count(*) FROM customers").trim(),
        "300"
    );

    // SQL errors come back as errors with their SQLSTATE; bad arguments are refused.
    let bad = client.call(
        "query",
        json!({ "connection": db, "sql": "SELECT * FROM nowhere" }),
    );
    assert_eq!(bad["structured"]["code"], "42P01", "{bad}");
    let unknown = client.call(
        "query",
        json!({ "connection": db, "sql": "SELECT 1", "colour": "red" }),
    );
    assert_eq!(unknown["structured"]["status"], "invalid_arguments");
    // Bounds: a long cell is cut and marked; a statement over its time is cancelled in the
    // target, and the session answers again afterwards.
    let wide = client.call(
        "query",
        json!({ "connection": db, "sql": "SELECT repeat('x', 100000) AS w" }),
    );
    let cell = wide["structured"]["rows"][0][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cell.len() < 17 * 1024, "{}", cell.len());
    assert!(cell.ends_with("bytes cut]"), "{}", &cell[cell.len() - 40..]);
    let started = std::time::Instant::now();
    let slow = client.call(
        "query",
        json!({ "connection": db, "sql": "SELECT pg_sleep(30)", "timeout_seconds": 1 }),
    );
    assert_eq!(slow["structured"]["code"], "57014", "{slow}");
    // Cancelled (the message says so; giving up after the 10 s grace says otherwise).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(slow["structured"]["message"]
        .as_str()
        .unwrap()
        .contains("was cancelled"));
    assert_eq!(
        pg().psql_admin(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active' AND datname = current_database()"
        )
        .trim(),
        "0",
        "the statement was cancelled in the target"
    );

    // COPY through the query tool: out runs (no rows to show), in is aborted, not hung.
    let copy_out = client.call(
        "query",
        json!({ "connection": db, "sql": "COPY customers TO STDOUT" }),
    );
    assert_eq!(copy_out["structured"]["command"], "COPY 300", "{copy_out}");
    let copy_in = client.call(
        "query",
        json!({ "connection": db, "sql": "COPY customers FROM STDIN" }),
    );
    assert_eq!(copy_in["is_error"], true, "{copy_in}");
    assert!(copy_in["structured"]["message"]
        .as_str()
        .unwrap()
        .contains("needs a client that sends data"));
    let elsewhere = client.call(
        "query",
        json!({ "connection": "secret-db", "sql": "SELECT 1" }),
    );
    assert_eq!(elsewhere["is_error"], true, "{elsewhere}");

    // The prompt leads to the statement, masked, with the call's context.
    let hits = search_settled(gw, &["--prompt", "first customers"]);
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0];
    assert_eq!(
        hit["statement"],
        "SELECT id, email, note FROM customers WHERE id >= $1 ORDER BY id"
    );
    assert_eq!(hit["params"], json!(["1"]));
    assert_eq!(hit["actor"], actor);
    assert_eq!(hit["status"], "ok");
    let ctx = &hit["context"];
    assert_eq!(ctx["client"], "sluice-test-agent");
    assert_eq!(ctx["client_version"], "1.2.3");
    assert_eq!(ctx["intent"], "look at the first customers");
    assert_eq!(ctx["conversation"], "conv-7");
    assert_eq!(ctx["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert!(ctx["tool_call"].as_str().is_some_and(|t| !t.is_empty()));
    let prompt_stored = ctx["prompt"].as_str().unwrap();
    assert!(!prompt_stored.contains("4111"), "{prompt_stored}");
    assert!(prompt_stored.contains("[credit_card]"), "{prompt_stored}");
    // And back: the tool call and the trace find the same statement.
    let by_call = search(gw, &["--tool-call", ctx["tool_call"].as_str().unwrap()]);
    assert!(by_call.iter().any(|h| h["statement"] == hit["statement"]));
    let by_trace = search(gw, &["--trace", TRACEPARENT]);
    assert_eq!(by_trace.len(), 1);
    assert_eq!(by_trace[0]["session"], hit["session"]);
    // The session replay shows the prompt beside the statement it caused, and the session
    // says where it came from.
    let detail = gw.session(hit["session"].as_str().unwrap());
    assert!(detail["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("mcp:127.0.0.1:"));
    assert_eq!(
        detail["events"][0]["context"]["client"],
        "sluice-test-agent"
    );
    let shown = gw.cli_ok(&["sessions", "show", hit["session"].as_str().unwrap()]);
    assert!(shown.contains("prompt: "), "{shown}");
    assert!(shown.contains("look at the first customers"), "{shown}");
}

#[test]
fn python_sdk_over_streamable_http() {
    let db = "mcp_http";
    let (gw, _) = setup(db);
    // As an AI agent would run: a service account's API key.
    let token = gw
        .cli_ok(&[
            "service-accounts",
            "add",
            "cursor-bot",
            "--group",
            "engineers",
        ])
        .trim()
        .to_owned();
    let mut client = McpClient::http(&gw, &token);
    tour(
        &gw,
        db,
        &mut client,
        "list customers; charge card 4111 1111 1111 1111 later",
        "agent",
    );
    assert!(
        !gw.everything_written().contains(&token),
        "the token leaked into the gateway's files"
    );
}

#[test]
fn python_sdk_through_sluice_mcp_over_stdio() {
    let db = "mcp_stdio";
    let (gw, token) = setup(db);
    let mut client = McpClient::stdio(&gw, &token);
    tour(
        &gw,
        db,
        &mut client,
        "show me customers, my card is 4111 1111 1111 1111",
        "human",
    );
}

#[test]
fn a_held_query_is_approved_through_the_cli_and_then_runs_once() {
    let db = "mcp_review";
    let (gw, token) = setup(db);
    gw.cli_ok(&["users", "add", "dora"]);
    let dora = gw
        .cli_ok(&["tokens", "issue", "dora", "--ttl", "1h"])
        .trim()
        .to_owned();
    let mut client = McpClient::stdio(&gw, &token);
    let delete = json!({
        "connection": db,
        "sql": "DELETE FROM customers WHERE id = $1",
        "params": [7],
        "prompt": "remove customer seven",
    });

    // Held: the answer comes at once, with the review id, and nothing ran.
    let held = client.call("query", delete.clone());
    assert_eq!(held["is_error"], true);
    assert_eq!(held["structured"]["status"], "pending_review", "{held}");
    let review = held["structured"]["review_id"].as_str().unwrap().to_owned();
    assert!(held["structured"]["message"]
        .as_str()
        .unwrap()
        .contains("deletes-need-review"));
    let status = client.call("review_status", json!({ "review_id": review }));
    assert_eq!(status["structured"]["status"], "pending", "{status}");
    assert_eq!(
        pg().psql_admin(db, "SELECT count(*) FROM customers").trim(),
        "300"
    );
    // A retry before the decision is the same review, not a second one.
    let again = client.call("query", delete.clone());
    assert_eq!(again["structured"]["review_id"], review.as_str());

    // Someone else's review is not visible.
    let other = gw.user_token("mallory");
    let mut mallory = McpClient::http(&gw, &other);
    let peek = mallory.call("review_status", json!({ "review_id": review }));
    assert_eq!(peek["structured"]["status"], "not_found", "{peek}");

    // The reviewer sees the prompt behind it, and approves through the CLI.
    let shown = gw.cli_as_json(&dora, &["reviews", "show", &review]);
    assert_eq!(shown["statement"], "DELETE FROM customers WHERE id = $1");
    assert_eq!(
        shown["context"]["prompt"], "remove customer seven",
        "{shown}"
    );
    assert_eq!(shown["context"]["client"], "sluice-test-agent");
    let text = gw.cli_as(&dora, &["reviews", "show", &review]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("prompt: remove customer seven"));
    let out = gw.cli_as(&dora, &["reviews", "approve", &review]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = client.call("review_status", json!({ "review_id": review }));
    assert_eq!(status["structured"]["status"], "approved", "{status}");

    // The same call now runs — once.
    let ran = client.call("query", delete.clone());
    assert_eq!(ran["is_error"], false, "{ran}");
    assert_eq!(ran["structured"]["command"], "DELETE 1");
    assert_eq!(
        pg().psql_admin(db, "SELECT count(*) FROM customers").trim(),
        "299"
    );
    let third = client.call("query", delete);
    assert_eq!(third["structured"]["status"], "pending_review", "{third}");
    assert_ne!(third["structured"]["review_id"], review.as_str());

    // The review's record carries the prompt for the reviewers.
    let created = audit_events(&gw)
        .into_iter()
        .find(|e| e["kind"] == "review_created" && e["review_id"] == review.as_str())
        .unwrap();
    assert_eq!(created["context"]["prompt"], "remove customer seven");
}

#[test]
fn psql_sqlcommenter_comments_link_statements_and_never_decide() {
    let db = "mcp_sqlcommenter";
    let (gw, token) = setup(db);
    let conn = gw.conninfo(db, "cody", &token);
    let (ok, out, err) = gw.psql(
        &conn,
        &[
            "-c",
            "SELECT count(*) FROM customers /*prompt='how%20many%20customers%3F%20key%20AKIAIOSFODNN7EXAMPLE',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',tool_call='call_42'*/",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "300");
    // A comment cannot talk a policy out of its decision, in front or behind.
    for sql in [
        "/*intent='allowed%20by%20admin',action='allow'*/ DROP TABLE customers",
        "DROP TABLE customers /*rule='none'*/",
    ] {
        let (ok, _, err) = gw.psql(&conn, &["-c", sql]);
        assert!(!ok);
        assert!(err.contains("no-drop"), "{err}");
    }
    // A comment inside a string constant is data, not context.
    let (ok, out, _) = gw.psql(&conn, &["-c", "SELECT $$/*prompt='inside'*/$$ AS s"]);
    assert!(ok);
    assert_eq!(out.trim(), "/*prompt='inside'*/");
    let inside = search_settled(&gw, &["--statement", "prompt='inside'"]);
    assert_eq!(inside.len(), 1);
    assert!(inside[0]["context"].is_null(), "{inside:?}");
    // With standard_conforming_strings off, `'\' /*a='` is a string and what follows runs:
    // such a text is refused before anything else looks at it, and recorded whole, as a
    // denied statement with no context taken out of it.
    let escaped = format!("{conn} options='-c standard_conforming_strings=off'");
    let (ok, _, err) = gw.psql(&escaped, &["-c", "SELECT '\\' /*a=' || current_user --'*/"]);
    assert!(!ok);
    assert!(err.contains("cannot be sure how the server reads"), "{err}");
    let kept = search_settled(&gw, &["--statement", "current_user"]);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["decision"], "deny");
    assert_eq!(kept[0]["status"], "not_executed");
    assert!(kept[0]["statement"].as_str().unwrap().contains("/*a="));
    assert!(kept[0]["context"].is_null());

    let hits = search_settled(&gw, &["--tool-call", "call_42"]);
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0];
    assert_eq!(hit["statement"], "SELECT count(*) FROM customers");
    assert_eq!(hit["context"]["client"], "psql");
    assert_eq!(
        hit["context"]["prompt"],
        "how many customers? key [aws_access_key]"
    );
    assert_eq!(
        hit["context"]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let denied = search(&gw, &["--prompt", "allowed by admin"]);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["decision"], "deny");
    assert_eq!(denied[0]["statement"], "DROP TABLE customers");
    // Over the API: a user finds their own statements, an auditor anyone's, another user
    // none of them (and may not ask for them).
    let api = |token: &str, query: &str| {
        let (status, _, body) = http(
            gw.api_port,
            "GET",
            &format!("/api/v1/statements?{query}"),
            Some(token),
            None,
        );
        let found: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, found)
    };
    let (status, own) = api(&token, "tool_call=call_42");
    assert_eq!(status, 200);
    assert_eq!(
        own[0]["statement"], "SELECT count(*) FROM customers",
        "{own}"
    );
    gw.cli_ok(&["users", "add", "aude"]);
    gw.cli_ok(&["users", "set-role", "aude", "auditor"]);
    let aude = gw
        .cli_ok(&["tokens", "issue", "aude", "--ttl", "1h"])
        .trim()
        .to_owned();
    let (_, audited) = api(&aude, "trace=4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(audited.as_array().map(Vec::len), Some(1), "{audited}");
    let mallory = gw.user_token("mallory");
    let (_, theirs) = api(&mallory, "tool_call=call_42");
    assert_eq!(theirs, json!([]));
    let (status, _) = api(&mallory, "user=cody&tool_call=call_42");
    assert_eq!(status, 403);
    // Nothing found: exit 1.
    let none = gw.cli(&["sessions", "search", "--tool-call", "nope"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(!gw.everything_written().contains("AKIAIOSFODNN7EXAMPLE"));
}

#[test]
fn the_endpoint_refuses_missing_wrong_and_read_only_callers_and_browsers() {
    let db = "mcp_refusals";
    let (gw, token) = setup(db);
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "curl", "version": "1" } }
    });
    let accept = "Accept: application/json, text/event-stream\r\n";
    let (status, head, _) = http_with(gw.api_port, "POST", "/mcp", accept, Some(&init));
    assert_eq!(status, 401, "{head}");
    let (status, _, body) = post_mcp(&gw, "Authorization: Bearer slu_wrong_token\r\n", &init);
    assert_eq!(status, 401);
    assert!(!body.contains("slu_wrong_token"));
    // Auditors read; they do not run queries.
    gw.cli_ok(&["users", "add", "audrey"]);
    gw.cli_ok(&["users", "set-role", "audrey", "auditor"]);
    let audrey = gw
        .cli_ok(&["tokens", "issue", "audrey", "--ttl", "1h"])
        .trim()
        .to_owned();
    let (status, _, _) = post_mcp(&gw, &format!("Authorization: Bearer {audrey}\r\n"), &init);
    assert_eq!(status, 403);
    // A web page cannot drive it with someone's token.
    let (status, _, _) = post_mcp(
        &gw,
        &format!("Authorization: Bearer {token}\r\nOrigin: https://evil.example\r\n"),
        &init,
    );
    assert_eq!(status, 403);
    // The caller with a good token gets a session.
    let (status, head, _) = post_mcp(&gw, &format!("Authorization: Bearer {token}\r\n"), &init);
    assert_eq!(status, 200, "{head}");
    let session = session_id(&head);
    // The session is its opener's: another user's token cannot use or end it.
    let other = gw.user_token("oscar");
    let list = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" });
    for (method, body) in [("POST", Some(&list)), ("DELETE", None), ("GET", None)] {
        let (status, _, _) = http_with(
            gw.api_port,
            method,
            "/mcp",
            &format!("{accept}Authorization: Bearer {other}\r\nMcp-Session-Id: {session}\r\n"),
            body,
        );
        assert_eq!(status, 404, "{method} with someone else's session");
    }
    let (status, _, body) = http_with(
        gw.api_port,
        "POST",
        "/mcp",
        &format!(
            "{accept}Authorization: Bearer {token}\r\nMcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\n"
        ),
        Some(&list),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("list_connections"), "{body}");
    // The sessionless protocol (2026-07-28): no handshake, the client named on each request.
    let call = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {
            "name": "query",
            "arguments": { "connection": db, "sql": "SELECT 42 AS answer", "prompt": "sessionless" },
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": { "name": "future-agent", "version": "3.0" },
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    });
    let (status, _, body) = http_with(
        gw.api_port,
        "POST",
        "/mcp",
        &format!(
            "{accept}Authorization: Bearer {token}\r\nMcp-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: query\r\n"
        ),
        Some(&call),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[[42]]"), "{body}");
    let hits = search_settled(&gw, &["--prompt", "sessionless"]);
    assert_eq!(hits[0]["context"]["client"], "future-agent", "{hits:?}");
    assert_eq!(hits[0]["context"]["client_version"], "3.0");
    let (status, _, _) = http(gw.api_port, "GET", "/healthz", None, None);
    assert_eq!(status, 200, "other routes still answer");
}

#[test]
fn a_withdrawn_call_cancels_its_statement_in_the_target() {
    let db = "mcp_cancel";
    let (gw, token) = setup(db);
    let headers = |session: Option<&str>| {
        let mut h = format!(
            "Accept: application/json, text/event-stream\r\nAuthorization: Bearer {token}\r\nMcp-Protocol-Version: 2025-06-18\r\n"
        );
        if let Some(s) = session {
            h.push_str(&format!("Mcp-Session-Id: {s}\r\n"));
        }
        h
    };
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "raw", "version": "1" } }
    });
    let (status, head, _) = http_with(gw.api_port, "POST", "/mcp", &headers(None), Some(&init));
    assert_eq!(status, 200, "{head}");
    let session = session_id(&head);
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    http_with(
        gw.api_port,
        "POST",
        "/mcp",
        &headers(Some(&session)),
        Some(&initialized),
    );
    // The call runs in the background: its answer never comes once withdrawn.
    let call = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": { "name": "query", "arguments": {
            "connection": db, "sql": "SELECT pg_sleep(60)", "timeout_seconds": 120 } }
    });
    let (port, call_headers) = (gw.api_port, headers(Some(&session)));
    std::thread::spawn(move || http_with(port, "POST", "/mcp", &call_headers, Some(&call)));
    let sleeping = || {
        pg().psql_admin(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active' AND datname = current_database()",
        )
        .trim()
        .to_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sleeping() != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the statement never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cancel = json!({
        "jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": { "requestId": 7, "reason": "the user pressed stop" }
    });
    let (status, _, _) = http_with(
        gw.api_port,
        "POST",
        "/mcp",
        &headers(Some(&session)),
        Some(&cancel),
    );
    assert!(status == 202 || status == 200, "{status}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sleeping() != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the withdrawn statement still runs in the target"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // On the record: the statement, and how it ended.
    let hits = search_settled(&gw, &["--statement", "pg_sleep(60)"]);
    assert_eq!(hits[0]["status"], "error", "{hits:?}");
    assert_eq!(hits[0]["error"]["code"], "57014");
}
