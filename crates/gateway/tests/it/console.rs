//! The web console: driven in Debian's headless Chromium by playwright-core
//! (`tests/console/drive.mjs`) against a real gateway, real PostgreSQL and psql — sign in,
//! find a session by its statement text, replay it, approve a held statement while psql
//! waits — plus the refusals a browser-facing app owes: CSRF, cross-origin posts, roles,
//! other people's sessions, escaping, and sign-in through a real OpenID Connect provider.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    extra_connection, free_port, http_with, oidc_identity, pg, sluice_bin, Gateway, OidcProvider,
};

const POLICIES: &str = r#"policies:
  - name: deletes-need-review
    match: { statement: [delete] }
    action: review
    reviewers: [group:dba]
    timeout: 60s
  - { name: no-drop, match: { statement: [drop] }, action: deny, message: ask a DBA }
masking:
  - name: pii
    columns: ["*.customers.email"]
"#;

const PASSWORD: &str = "correct horse battery staple";
/// A statement whose text would run script in a page that did not escape it.
const XSS: &str = "SELECT '<script>alert(1)</script><img src=x onerror=alert(2)>' AS x";

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

fn add_user(gw: &Gateway, name: &str, extra: &[&str]) {
    let mut child = Command::new(sluice_bin())
        .args(["users", "add", name, "--password-stdin"])
        .args(extra)
        .arg("--config")
        .arg(&gw.config)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a `drive.mjs` scenario; `on_wait` answers each `wait NAME` line. Returns what
/// the browser saw.
fn drive(scenario: &str, args: &Value, mut on_wait: impl FnMut(&str)) -> Value {
    let dir = console_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg(dir.join("drive.mjs"))
        .arg(scenario)
        .arg(args.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node drive.mjs");
    let mut stdin = child.stdin.take().unwrap();
    let mut last = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("wait ") {
            on_wait(name);
            writeln!(stdin, "go").unwrap();
        }
        last = line;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "drive.mjs {scenario} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&last).unwrap_or_else(|_| panic!("drive.mjs {scenario} said {last:?}"))
}

fn screenshots() -> Option<String> {
    // `SLUICE_SCREENSHOTS=docs/console` refreshes the README's pictures.
    std::env::var("SLUICE_SCREENSHOTS").ok().map(|dir| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.display().to_string()
    })
}

fn psql_bg(gw: &Gateway, db: &str, user: &str, token: &str, sql: &str) -> Child {
    Command::new("psql")
        .args(["-X", "-A", "-t", "-c", sql])
        .arg(gw.conninfo(db, user, token))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the statement index has read the audit log up to session `id` (it follows
/// the log once a second, in order): the session is listed among those with `text`.
fn wait_indexed(gw: &Gateway, cookie: &str, text: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let path = format!("/console/sessions?q={text}");
    loop {
        let (_, _, body) = get(gw, &path, cookie);
        if body.contains(&format!("/console/sessions/{id}")) {
            return;
        }
        assert!(Instant::now() < deadline, "{text} never indexed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(gw: &Gateway, path: &str, cookie: &str) -> (u16, String, String) {
    http_with(
        gw.api_port,
        "GET",
        path,
        &format!("Cookie: sluice_console={cookie}\r\n"),
        None,
    )
}

/// A form post with `cookie` and extra header lines.
fn post(
    gw: &Gateway,
    path: &str,
    cookie: Option<&str>,
    headers: &str,
    form: &str,
) -> (u16, String, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.api_port)).unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: sluice_console={c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}{headers}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len(),
        port = gw.api_port,
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_owned(), body.to_owned())
}

/// An HTTP/1.1 chunked body, decoded.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// Signs in with a password; returns the session cookie's value.
fn sign_in(gw: &Gateway, user: &str) -> String {
    let form = format!("user={user}&password={}", PASSWORD.replace(' ', "+"));
    let (status, head, body) = post(gw, "/console/login", None, "", &form);
    assert_eq!(status, 303, "{head}\n{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: sluice_console="))
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(cookie.contains("Path=/console"), "{cookie}");
    cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_owned()
}

/// The `denied` events once one matches `wanted` (they are written within 20 ms of the
/// refusal, not before it is answered).
fn wait_denied(gw: &Gateway, wanted: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !denied_events(gw).iter().any(&wanted) {
        assert!(Instant::now() < deadline, "{:?}", denied_events(gw));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn denied_events(gw: &Gateway) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(gw.data_dir().join("audit")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        out.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|e| e["kind"] == "denied"),
        );
    }
    out
}

#[test]
fn sign_in_search_replay_and_approve_a_waiting_psql_in_chromium() {
    let db = "console_e2e";
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE TABLE orders(id int); INSERT INTO orders VALUES (1), (2); \
         CREATE TABLE customers(id int, email text); INSERT INTO customers VALUES (1, 'ann@example.com')",
    );
    let gw = Gateway::start_with(db, "", POLICIES);
    add_user(&gw, "rita", &["--group", "dba"]);
    add_user(&gw, "audrey", &["--role", "auditor"]);
    let eve = gw.user_token("eve");
    let eve_conn = gw.conninfo(db, "eve", &eve);

    // A session worth replaying: escaping, a denial, masking, an agent's prompt.
    let script = format!(
        "{XSS};\nSELECT pg_sleep(3);\nSELECT id FROM orders ORDER BY id;\nSELECT email FROM customers;\n\
         DROP TABLE orders;\n\
         SELECT 1 /*action='fix_report',prompt='why%20is%20the%20report%20empty'*/;\n"
    );
    let (_, out, _) = gw.psql_script(&eve_conn, &[], &script);
    assert!(out.contains("<script>alert(1)</script>"), "{out}");
    gw.wait_sessions_closed();
    let session_id = gw.sessions()[0]["id"].as_str().unwrap().to_owned();
    // The reviewer in the browser is an admin who also reviews.
    add_user(&gw, "ada", &["--group", "dba", "--role", "admin"]);
    wait_indexed(&gw, &sign_in(&gw, "ada"), "onerror", &session_id);
    // rita is a user: the search finds nothing of anyone else's.
    let (_, _, rita_list) = get(&gw, "/console/sessions?q=onerror", &sign_in(&gw, "rita"));
    assert!(
        !rita_list.contains(&session_id),
        "users see only their own sessions"
    );
    let mut psql = None;
    let mut second = None;
    let ada_token = gw.cli_ok(&["tokens", "issue", "ada"]).trim().to_owned();
    let seen = drive(
        "reviewer",
        &serde_json::json!({
            "url": format!("http://127.0.0.1:{}", gw.api_port),
            "user": "ada", "password": PASSWORD, "search": "onerror",
            "reason": "ticket 42", "shots": screenshots(),
        }),
        |name| match name {
            "held-statement" => {
                psql = Some((
                    psql_bg(&gw, db, "eve", &eve, "DELETE FROM orders WHERE id = 1"),
                    Instant::now(),
                ))
            }
            "second-held-statement" => {
                second = Some(psql_bg(&gw, db, "eve", &eve, "DELETE FROM orders"))
            }
            "deny-elsewhere" => {
                let pending =
                    gw.cli_as_json(&ada_token, &["reviews", "list", "--status", "pending"]);
                let id = pending[0]["id"]
                    .as_str()
                    .expect("the second review")
                    .to_owned();
                let denied = gw.cli_as(
                    &ada_token,
                    &["reviews", "deny", &id, "--reason", "too broad"],
                );
                assert!(denied.status.success(), "{denied:?}");
            }
            other => panic!("unexpected wait {other}"),
        },
    );
    // The second review was denied from the command line: its psql got the refusal, and
    // its card closed in place without changing size.
    let second = second.expect("a second statement was held");
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied by ada"));
    assert_eq!(
        seen["other_height_before"], seen["other_height_after"],
        "{seen}"
    );
    assert_eq!(seen["other_button"], "Closed", "{seen}");
    assert_eq!(seen["approve_y_before"], seen["approve_y_after"], "{seen}");
    assert_eq!(seen["reason_kept"], "ticket 42", "{seen}");
    assert_eq!(
        seen["queue_statements"],
        serde_json::json!(["DELETE FROM orders WHERE id = 1", "DELETE FROM orders"]),
        "oldest first, the newcomer at the end: {seen}"
    );
    assert_eq!(seen["found"], serde_json::json!([session_id]), "{seen}");
    // Statement text is shown as text: no dialog, no script but the console's own, and
    // nothing the CSP had to block.
    assert_eq!(seen["dialogs"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["console_errors"], serde_json::json!([]), "{seen}");
    assert_eq!(
        seen["scripts"],
        serde_json::json!(["/console/assets/console.js"]),
        "{seen}"
    );
    let statements: Vec<&str> = seen["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(statements[0], XSS.trim_end_matches(';'), "{seen}");
    assert!(
        statements.iter().any(|s| s.starts_with("DROP TABLE")),
        "{seen}"
    );
    assert_eq!(
        seen["prompts"],
        serde_json::json!(["why is the report empty"]),
        "{seen}"
    );
    // Replay: everything shown, then one entry per step, then all again at the end.
    let events = seen["events"].as_u64().unwrap();
    assert!(events >= 7, "{seen}");
    assert_eq!(seen["after_one_step"], 1, "{seen}");
    assert_eq!(
        seen["position_after_step"],
        format!("1 / {events}"),
        "{seen}"
    );
    assert_eq!(seen["after_two_steps"], 2, "{seen}");
    // Paused in the 3 s the session slept (played at recorded timing), and it stays put.
    assert_ne!(seen["paused_at"], format!("{events} / {events}"), "{seen}");
    assert_eq!(seen["paused_at"], seen["still_paused_at"], "{seen}");
    assert_eq!(seen["after_play"], events, "{seen}");
    assert_eq!(
        seen["position_after_play"],
        format!("{events} / {events}"),
        "{seen}"
    );

    // The review appeared in the open page and the approval released psql.
    assert_eq!(seen["queue_before"], 0, "{seen}");
    assert_eq!(seen["review_statement"], "DELETE FROM orders WHERE id = 1");
    assert!(
        // `used` once the statement ran, which may be before the page is drawn.
        ["approved", "used"]
            .iter()
            .any(|s| seen["notice"].as_str().unwrap().ends_with(&format!(" {s}"))),
        "{seen}"
    );
    let (child, started) = psql.expect("the held statement was started");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("held for review"), "{stderr}");
    eprintln!(
        "held DELETE completed {:?} after it was sent",
        started.elapsed()
    );
    assert_eq!(
        pg().psql_admin(db, "SELECT count(*) FROM orders").trim(),
        "1"
    );
    assert_eq!(seen["connections"], serde_json::json!([db]), "{seen}");
    assert!(seen["snippet"]
        .as_str()
        .unwrap()
        .contains(&format!("sluice credentials {db}")));

    // The statement record names the approver, as the console showed.
    gw.wait_sessions_closed();
    let delete = gw
        .all_statements()
        .into_iter()
        .find(|s| s["statement"] == "DELETE FROM orders WHERE id = 1")
        .unwrap();
    assert_eq!(delete["review"]["by"], "ada");

    // The same filters from the command line, for scripts.
    let listed = |args: &[&str]| -> Vec<String> {
        let list = gw.cli_json(&[&["sessions", "list", "--json"], args].concat());
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        listed(&["--text", "onerror"]),
        std::slice::from_ref(&session_id)
    );
    assert!(listed(&["--with", "denied"]).contains(&session_id));
    assert!(listed(&["--with", "masked"]).contains(&session_id));
    assert!(listed(&["--actor", "agent"]).is_empty());
    assert!(listed(&["--text", "onerror", "--since", "2999-01-01T00:00:00Z"]).is_empty());
    let shown = gw.cli_json(&["sessions", "list", "--json", "--text", "onerror"]);
    assert_eq!(
        (shown[0]["denied"].as_u64(), shown[0]["masked"].as_u64()),
        (Some(1), Some(1))
    );

    // An auditor: read-only everywhere, verifies the chain, exports the session.
    let seen = drive(
        "auditor",
        &serde_json::json!({
            "url": format!("http://127.0.0.1:{}", gw.api_port),
            "user": "audrey", "password": PASSWORD, "session": session_id,
            "shots": screenshots(),
        }),
        |_| {},
    );
    assert_eq!(seen["badge"], "read-only", "{seen}");
    assert_eq!(seen["console_errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["decide_forms"], 0, "{seen}");
    assert!(seen["reviews_listed"].as_u64().unwrap() >= 1, "{seen}");
    assert!(
        seen["verify"].as_str().unwrap().contains("intact"),
        "{seen}"
    );
    assert_eq!(seen["export_status"], 200);
    assert_eq!(seen["export_type"], "application/x-ndjson");
    // The export is the stored lines, in order, from the session's open to its close.
    let exported: Vec<&str> = seen["export"].as_str().unwrap().lines().collect();
    let log = std::fs::read_to_string(gw.data_dir().join("audit/audit-000001.jsonl")).unwrap();
    assert!(exported.len() > 5);
    for line in &exported {
        assert!(log.lines().any(|l| l == *line), "not a stored line: {line}");
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["session"], session_id.as_str());
    }
    assert!(exported[0].contains("\"kind\":\"session_open\""));
    assert!(exported
        .last()
        .unwrap()
        .contains("\"kind\":\"session_close\""));
    assert!(gw.verify().status.success());
}

#[test]
fn forged_cross_site_and_out_of_role_requests_are_refused() {
    let db = "console_refusals";
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE TABLE orders(id int); INSERT INTO orders VALUES (1)",
    );
    let locked = extra_connection(
        "locked",
        db,
        &[
            "require_access_request: true",
            "access_reviewers: [group:dba]",
        ],
    );
    let gw = Gateway::start_with(db, &locked, POLICIES);
    add_user(&gw, "rita", &["--group", "dba"]);
    add_user(&gw, "audrey", &["--role", "auditor"]);
    add_user(&gw, "mallory", &[]);
    add_user(&gw, "erin", &[]);
    let eve = gw.user_token("eve");

    // Not signed in: pages send to the sign-in page, fragments answer 401.
    let (status, head, _) = http_with(gw.api_port, "GET", "/console/reviews", "", None);
    assert_eq!(status, 303);
    assert!(head.contains("location: /console/login"), "{head}");
    let (status, _, _) = http_with(
        gw.api_port,
        "GET",
        "/console/reviews/queue",
        "X-Sluice-Fragment: 1\r\n",
        None,
    );
    assert_eq!(status, 401);
    // A made-up or tampered cookie is no session.
    let (status, _, _) = get(&gw, "/console/sessions", "slu_bogus_cookie");
    assert_eq!(status, 303);

    // Wrong password: the form again, with the reason, and no cookie.
    let (status, head, body) = post(&gw, "/console/login", None, "", "user=rita&password=nope");
    assert_eq!(status, 401);
    assert!(!head.contains("set-cookie"));
    assert!(body.contains("wrong user name or password"), "{body}");
    // A sign-in form posted from another site (login CSRF).
    let form = format!("user=rita&password={}", PASSWORD.replace(' ', "+"));
    let (status, _, _) = post(
        &gw,
        "/console/login",
        None,
        "Origin: https://evil.example\r\n",
        &form,
    );
    assert_eq!(status, 403);

    let rita = sign_in(&gw, "rita");
    let audrey = sign_in(&gw, "audrey");
    let mallory = sign_in(&gw, "mallory");

    // Every page is served under a strict CSP and cannot be framed.
    let (status, head, page) = get(&gw, "/console/reviews", &rita);
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains(
            "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'"
        ),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"));
    assert!(head.contains("x-frame-options: deny"));
    assert!(head.contains("cache-control: no-store"));
    let rita_csrf = csrf(&page);

    // A held statement to decide.
    let held = psql_bg(&gw, db, "eve", &eve, "DELETE FROM orders WHERE id = 1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let review_id = loop {
        let (_, _, queue) = get(&gw, "/console/reviews/queue", &rita);
        if let Some(at) = queue.find("id=\"review-") {
            let rest = &queue[at + 11..];
            break rest[..rest.find('"').unwrap()].to_owned();
        }
        assert!(Instant::now() < deadline, "no review in the queue");
        std::thread::sleep(Duration::from_millis(100));
    };
    let approve = format!("/console/reviews/{review_id}/approve");

    // No CSRF token, someone else's, or a cross-site Origin: refused, nothing decided.
    let (status, _, body) = post(&gw, &approve, Some(&rita), "", "reason=x");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let (_, _, mallory_page) = get(&gw, "/console/reviews", &mallory);
    let (status, _, _) = post(
        &gw,
        &approve,
        Some(&rita),
        "",
        &format!("csrf={}&reason=x", csrf(&mallory_page)),
    );
    assert_eq!(status, 403);
    let (status, _, _) = post(
        &gw,
        &approve,
        Some(&rita),
        "Origin: https://evil.example\r\n",
        &format!("csrf={rita_csrf}&reason=x"),
    );
    assert_eq!(status, 403);
    // The auditor's own valid form: auditors do not act; the refusal is on record.
    let (_, _, audrey_page) = get(&gw, "/console/reviews", &audrey);
    assert!(!audrey_page.contains("form class=\"decide\""));
    let (status, _, _) = post(
        &gw,
        &approve,
        Some(&audrey),
        "",
        &format!("csrf={}&reason=x", csrf(&audrey_page)),
    );
    assert_eq!(status, 403);
    // Someone who is not a reviewer.
    let (status, _, body) = post(
        &gw,
        &approve,
        Some(&mallory),
        "",
        &format!("csrf={}&reason=x", csrf(&mallory_page)),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not a reviewer"), "{body}");
    assert_eq!(
        pg().psql_admin(db, "SELECT count(*) FROM orders").trim(),
        "1",
        "nothing ran"
    );
    // Users see only their own sessions; auditors everything, but no audit page for users.
    let (_, _, sessions) = get(&gw, "/console/sessions", &audrey);
    let eve_session = {
        let at = sessions
            .find("href=\"/console/sessions/")
            .expect("eve's session")
            + 24;
        sessions[at..at + sessions[at..].find('"').unwrap()].to_owned()
    };
    let (status, _, _) = get(&gw, &format!("/console/sessions/{eve_session}"), &mallory);
    assert_eq!(status, 403);
    let (status, _, _) = get(
        &gw,
        &format!("/console/sessions/{eve_session}/timeline"),
        &mallory,
    );
    assert_eq!(status, 403, "nor its live-follow fragment");
    let (_, _, list) = get(&gw, "/console/sessions?user=eve", &mallory);
    assert!(
        !list.contains(&eve_session) && list.contains("No sessions match."),
        "a user's list is their own whatever it asks for"
    );
    // An auditor exports a time range: every record from then on, as stored.
    let (status, head, export) = get(&gw, "/console/audit/export?from=2000-01-01T00:00", &audrey);
    assert_eq!(status, 200, "{head}");
    let log = std::fs::read_to_string(gw.data_dir().join("audit/audit-000001.jsonl")).unwrap();
    let stored: Vec<&str> = log.lines().collect();
    let export = dechunk(&export);
    let exported: Vec<&str> = export.lines().collect();
    assert!(
        exported.len() <= stored.len()
            && exported
                .iter()
                .any(|l| l.contains("\"kind\":\"session_open\"")),
        "{} of {}: {export:?}",
        exported.len(),
        stored.len()
    );
    assert_eq!(
        exported,
        stored[..exported.len()],
        "the log's own lines, in order"
    );
    let (status, _, _) = get(&gw, "/console/audit/export?from=2999-01-01T00:00", &audrey);
    assert_eq!(status, 200);
    let (status, _, page) = get(&gw, "/console/audit/export?from=soon", &audrey);
    assert_eq!(status, 400, "{page}");
    let (status, _, _) = get(
        &gw,
        "/console/audit/export?from=2030-01-01T00:00&to=2020-01-01T00:00",
        &audrey,
    );
    assert_eq!(status, 400);
    // Positions and filters that mean nothing are the caller's mistake: 400, not 503.
    for from in [
        "abc",
        "1.1.1",
        "1.0.18446744073709551615",
        "1.4294967296.1",
        "9.0.5",
    ] {
        let (status, _, _) = get(
            &gw,
            &format!("/console/sessions/{eve_session}/timeline?from={from}"),
            &audrey,
        );
        assert_eq!(status, 400, "from={from}");
    }
    for query in ["actor=robot", "decision=bogus", "after=nonsense"] {
        let (status, _, _) = get(&gw, &format!("/console/sessions?{query}"), &audrey);
        assert_eq!(status, 400, "{query}");
    }
    // A page reached through another host name (DNS rebinding) gets nothing.
    let rebound = {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.api_port)).unwrap();
        write!(
            s,
            "GET /console/login HTTP/1.1\r\nHost: attacker.example:{}\r\nConnection: close\r\n\r\n",
            gw.api_port
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    };
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    // A crafted link cannot put a notice on the page.
    let (_, _, page) = get(&gw, "/console/reviews?done=r-0000+approved", &audrey);
    assert!(!page.contains("class=\"notice\""), "{page}");
    let (status, _, _) = get(&gw, "/console/audit", &mallory);
    assert_eq!(status, 403);
    let (status, _, _) = get(
        &gw,
        &format!("/console/audit/export?session={eve_session}"),
        &mallory,
    );
    assert_eq!(status, 403);
    wait_denied(&gw, |e| {
        e["user"] == "audrey" && e["action"] == "POST /console/reviews/ID"
    });
    wait_denied(&gw, |e| {
        e["user"] == "mallory" && e["action"] == "GET /console/sessions/ID"
    });

    // The right form from the right person decides.
    let (status, head, _) = post(
        &gw,
        &approve,
        Some(&rita),
        &format!("Origin: http://127.0.0.1:{}\r\n", gw.api_port),
        &format!("csrf={rita_csrf}&reason=ok"),
    );
    assert_eq!(status, 303, "{head}");
    let out = held.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Access requests: asked for and decided in the console, by the rules of the API.
    let erin = sign_in(&gw, "erin");
    let (_, _, erin_page) = get(&gw, "/console/access", &erin);
    let erin_csrf = csrf(&erin_page);
    let (status, head, _) = post(
        &gw,
        "/console/access",
        Some(&erin),
        "",
        &format!("csrf={erin_csrf}&connection=locked&duration=10m&reason=incident+7&lift_rule="),
    );
    assert_eq!(status, 303, "{head}");
    let (_, _, queue) = get(&gw, "/console/access/queue", &rita);
    let at = queue
        .find("id=\"access-")
        .expect("the request in rita's queue")
        + 11;
    let request = queue[at..at + queue[at..].find('"').unwrap()].to_owned();
    assert!(queue.contains("incident 7") && queue.contains("form class=\"decide\""));
    let (_, _, own) = get(&gw, "/console/access/queue", &erin);
    assert!(own.contains("incident 7") && !own.contains("form class=\"decide\""));
    let (status, _, body) = post(
        &gw,
        &format!("/console/access/{request}/approve"),
        Some(&erin),
        "",
        &format!("csrf={erin_csrf}&reason=mine"),
    );
    assert_eq!(status, 403, "nobody approves their own request: {body}");
    assert!(body.contains("cannot approve their own"), "{body}");
    let (status, _, _) = post(
        &gw,
        &format!("/console/access/{request}/approve"),
        Some(&rita),
        "",
        &format!("csrf={rita_csrf}&reason=go"),
    );
    assert_eq!(status, 303);
    let (_, _, page) = get(&gw, "/console/access", &erin);
    assert!(
        page.contains("<span class=\"status approved\">approved</span> by rita"),
        "{page}"
    );
    // The console's sign-in token is erin's token: the window is open for her psql too.
    let (ok, out, err) = gw.psql(&gw.conninfo("locked", "erin", &erin), &["-c", "SELECT 7"]);
    assert!(ok && out.trim() == "7", "{err}");

    // Signing out revokes the token behind the cookie.
    let (status, _, _) = post(
        &gw,
        "/console/logout",
        Some(&rita),
        "",
        &format!("csrf={rita_csrf}"),
    );
    assert_eq!(status, 303);
    let (status, _, _) = get(&gw, "/console/reviews", &rita);
    assert_eq!(status, 303, "the old cookie no longer works");
    assert!(gw.verify().status.success());
}

#[test]
fn sign_in_through_the_identity_provider_in_chromium() {
    let db = "console_sso";
    pg().create_db(db);
    let api_port = free_port();
    let idp = OidcProvider::start(api_port);
    let home = tempfile::tempdir().unwrap();
    let yaml = oidc_identity(&idp, home.path(), "");
    let gw = Gateway::start_on(api_port, db, "", &yaml);
    let seen = drive(
        "sso",
        &serde_json::json!({ "url": format!("http://127.0.0.1:{api_port}"), "login": "bob" }),
        |_| {},
    );
    assert_eq!(
        seen["who"], "bob@example.com · auditor · read-only",
        "{seen}"
    );
    assert_eq!(
        seen["cookie"],
        serde_json::json!([{ "httpOnly": true, "sameSite": "Lax", "path": "/console", "secure": false }]),
        "{seen}"
    );
    assert_eq!(seen["after_sign_out"], "/console/login", "{seen}");
    assert_eq!(seen["console_errors"], serde_json::json!([]), "{seen}");
    let sign_ins = denied_events(&gw);
    assert!(sign_ins.is_empty(), "{sign_ins:?}");
    assert!(gw.verify().status.success());
}

#[test]
fn an_open_session_is_followed_live_and_sessions_page_through_the_index() {
    let db = "console_follow";
    pg().create_db(db);
    let gw = Gateway::start_with(db, "", POLICIES);
    add_user(&gw, "ada", &["--role", "admin"]);
    let ada = sign_in(&gw, "ada");
    let eve = gw.user_token("eve");

    // Sixty short sessions (pgbench connects anew for each transaction), then pages of 50.
    let script = gw.dir.path().join("select.sql");
    std::fs::write(&script, "SELECT 'paging';\n").unwrap();
    let out = Command::new("pgbench")
        .args(["-n", "-C", "-c", "1", "-t", "60", "-f"])
        .arg(&script)
        .arg(gw.conninfo(db, "eve", &eve))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.wait_sessions_closed();
    let newest = gw.sessions()[0]["id"].as_str().unwrap().to_owned();
    wait_indexed(&gw, &ada, "paging", &newest);
    let ids = |page: &str| -> Vec<String> {
        page.match_indices("<td><a href=\"/console/sessions/")
            .map(|(at, m)| page[at + m.len()..].split('"').next().unwrap().to_owned())
            .collect()
    };
    let (_, _, first) = get(&gw, "/console/sessions?q=paging", &ada);
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 50);
    let next = first
        .split("id=\"next-page\" href=\"")
        .nth(1)
        .expect("a link to the next page")
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(next.contains("q=paging"), "{next}");
    let (_, _, second) = get(&gw, &next, &ada);
    let second_ids = ids(&second);
    // pgbench's 60, and nothing else has that text; no session on both pages.
    assert_eq!(second_ids.len(), 10, "{second}");
    assert!(!second.contains("next-page"));
    assert!(second_ids.iter().all(|id| !first_ids.contains(id)));
    // Filters that exclude them all.
    for query in [
        "q=paging&actor=agent",
        "q=paging&decision=denied",
        "q=paging&from=2999-01-01T00:00",
        "q=paging&connection=nope",
        "q=nothing%25like%25this",
    ] {
        let (status, _, page) = get(&gw, &format!("/console/sessions?{query}"), &ada);
        assert_eq!(status, 200);
        assert!(page.contains("No sessions match."), "{query}");
    }
    let (_, _, page) = get(&gw, "/console/sessions?from=yesterday", &ada);
    assert!(page.contains("is not a time"), "{page}");

    // An open psql session, followed in the browser while it runs statements.
    let mut psql = Command::new("psql")
        .args(["-X", "-A", "-t", "-f", "-"])
        .arg(gw.conninfo(db, "eve", &eve))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = psql.stdin.take().unwrap();
    writeln!(stdin, "SELECT 'first statement';").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let session = loop {
        if let Some(open) = gw.sessions().into_iter().find(|s| s["end"].is_null()) {
            break open["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the psql session never opened");
        std::thread::sleep(Duration::from_millis(100));
    };
    let seen = drive(
        "follow",
        &serde_json::json!({
            "url": format!("http://127.0.0.1:{}", gw.api_port),
            "user": "ada", "password": PASSWORD, "session": session,
            "first": "first statement", "second": "second statement",
        }),
        |name| match name {
            "next-statement" => {
                writeln!(stdin, "SELECT 'second statement';").unwrap();
                stdin.flush().unwrap();
            }
            "close" => writeln!(stdin, "\\q").unwrap(),
            other => panic!("unexpected wait {other}"),
        },
    );
    drop(stdin);
    assert!(psql.wait().unwrap().success());
    assert_eq!(seen["following"], "following live", "{seen}");
    assert_eq!(seen["entries_with_second"], 1, "{seen}");
    assert_eq!(seen["last_kind"], "session close", "{seen}");
    assert_eq!(
        seen["same_document"], true,
        "followed without reloading: {seen}"
    );
    assert_eq!(
        seen["live_entries"], seen["reloaded_entries"],
        "live follow shows what a reload shows: {seen}"
    );
    assert_eq!(seen["console_errors"], serde_json::json!([]), "{seen}");
}

#[test]
fn served_as_https_the_cookie_is_secure_and_host_only() {
    let db = "console_https";
    pg().create_db(db);
    // A TLS-terminating proxy in front: the public URL is https.
    let gw = Gateway::start_with(
        db,
        "",
        "identity:\n  public_url: https://sluice.example.com\n",
    );
    add_user(&gw, "ada", &["--role", "admin"]);
    let form = format!("user=ada&password={}", PASSWORD.replace(' ', "+"));
    // The browser names the public origin, which differs from the Host the proxy sends.
    let (status, head, body) = post(
        &gw,
        "/console/login",
        None,
        "Origin: https://sluice.example.com\r\nSec-Fetch-Site: same-origin\r\n",
        &form,
    );
    assert_eq!(status, 303, "{head}\n{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(cookie.starts_with("__Host-sluice_console=slu_"), "{cookie}");
    for attribute in ["Path=/;", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    let value = cookie.split(';').next().unwrap();
    let (status, _, page) = http_with(
        gw.api_port,
        "GET",
        "/console/connections",
        &format!("Cookie: {value}\r\n"),
        None,
    );
    assert_eq!(status, 200);
    // Snippets name the public URL.
    assert!(page.contains("https://sluice.example.com"), "{page}");
    // The plain-HTTP cookie name is not accepted in its place.
    let token = value.split_once('=').unwrap().1;
    let (status, _, _) = get(&gw, "/console/connections", token);
    assert_eq!(status, 303);
    // A browser saying the post comes from another site is refused.
    let (status, _, _) = post(
        &gw,
        "/console/login",
        None,
        "Sec-Fetch-Site: cross-site\r\n",
        &form,
    );
    assert_eq!(status, 403);
}
