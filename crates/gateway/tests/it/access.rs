//! Time-boxed access requests: a connection that needs one, the window that ends open
//! sessions, and a review rule lifted for a while.

use crate::support::{extra_connection, pg, Gateway};

const POLICIES: &str = r#"policies:
  - name: deletes-need-review
    match: { statement: [delete] }
    action: review
    reviewers: [group:dba]
    timeout: 60s
"#;

fn access(gw: &Gateway, token: &str, args: &[&str]) -> std::process::Output {
    gw.cli_as(token, &[&["access"], args].concat())
}

fn access_json(gw: &Gateway, token: &str, args: &[&str]) -> serde_json::Value {
    gw.cli_as_json(token, &[&["access"], args].concat())
}

#[test]
fn a_connection_that_needs_a_request_opens_for_the_window_only() {
    let db = "acc_window";
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE TABLE victim(id int); INSERT INTO victim VALUES (1), (2)",
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
    let eve = gw.user_token("eve");
    let mallory = gw.user_token("mallory");
    gw.cli_ok(&["users", "add", "bob", "--group", "dba"]);
    let bob = gw.cli_ok(&["tokens", "issue", "bob"]).trim().to_owned();
    let eve_locked = gw.conninfo("locked", "eve", &eve);

    let (ok, _, err) = gw.psql(&eve_locked, &["-c", "select 1"]);
    assert!(
        !ok && err.contains("needs an approved access request"),
        "{err}"
    );

    let request = access_json(
        &gw,
        &eve,
        &["request", "locked", "--for", "4s", "--reason", "incident 7"],
    );
    let id = request["id"].as_str().unwrap().to_owned();
    assert_eq!(request["status"], "pending");
    let own = access(&gw, &eve, &["approve", &id]);
    assert!(String::from_utf8_lossy(&own.stderr).contains("cannot approve their own"));
    let outsider = access(&gw, &mallory, &["approve", &id]);
    assert!(String::from_utf8_lossy(&outsider.stderr).contains("may not decide"));
    let approved = access_json(&gw, &bob, &["approve", &id]);
    assert_eq!(approved["status"], "approved");

    // Inside the window: in. When it closes, the open session is ended with a reason.
    let (_, out, err) = gw.psql_script(
        &eve_locked,
        &[],
        "select 'inside';\n\\! sleep 6\nselect 'after';\n",
    );
    assert!(out.contains("inside"), "{out}\n{err}");
    assert!(!out.contains("after"), "{out}");
    assert!(
        err.contains("the access window for connection \"locked\" has closed"),
        "{err}"
    );
    let (ok, _, err) = gw.psql(&eve_locked, &["-c", "select 1"]);
    assert!(
        !ok && err.contains("needs an approved access request"),
        "{err}"
    );
    // The open connection never needed one.
    let (ok, _, err) = gw.psql(&gw.conninfo(db, "eve", &eve), &["-c", "select 1"]);
    assert!(ok, "{err}");
    assert!(gw.verify().status.success());
}

#[test]
fn an_approved_request_lifts_a_review_rule_for_a_while() {
    let db = "acc_lift";
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE TABLE victim(id int); INSERT INTO victim VALUES (1), (2)",
    );
    let reviewed = extra_connection("reviewed", db, &["access_reviewers: [group:dba]"]);
    let gw = Gateway::start_with(db, &reviewed, POLICIES);
    let eve = gw.user_token("eve");
    gw.cli_ok(&["users", "add", "bob", "--group", "dba"]);
    let bob = gw.cli_ok(&["tokens", "issue", "bob"]).trim().to_owned();
    let lift = |connection: &str, rule: &str| {
        access(
            &gw,
            &eve,
            &[
                "request",
                connection,
                "--for",
                "10m",
                "--reason",
                "cleanup",
                "--lift-rule",
                rule,
                "--json",
            ],
        )
    };

    // Lifting needs a review rule that exists, and someone who may approve.
    let out = lift("reviewed", "no-such-rule");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a review rule"));
    let out = lift(db, "deletes-need-review");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no access_reviewers"));

    let out = lift("reviewed", "deletes-need-review");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let request: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = request["id"].as_str().unwrap().to_owned();
    access_json(&gw, &bob, &["approve", &id]);
    // The lift applies to eve on `reviewed` only: the statement runs there without a hold.
    let (ok, _, err) = gw.psql(
        &gw.conninfo("reviewed", "eve", &eve),
        &["-c", "DELETE FROM victim WHERE id = 1"],
    );
    assert!(ok, "{err}");
    assert!(!err.contains("held for review"), "{err}");
    gw.wait_sessions_closed();
    let delete = gw
        .all_statements()
        .into_iter()
        .find(|s| s["statement"] == "DELETE FROM victim WHERE id = 1")
        .unwrap();
    assert_eq!(delete["decision"], "allow");
    assert_eq!(delete["access_request"], id.as_str());
    assert_eq!(
        pg().psql_admin(db, "SELECT count(*) FROM victim").trim(),
        "1"
    );
}

#[test]
fn malformed_requests_get_json_errors() {
    use std::io::{Read, Write};
    let db = "acc_malformed";
    pg().create_db(db);
    let gw = Gateway::start(db, "");
    let eve = gw.user_token("eve");
    let call = |body: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.api_port)).unwrap();
        write!(
            s,
            "POST /api/v1/access-requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {eve}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    };
    for body in [
        "{bad",
        r#"{"connection": "x"}"#,
        r#"{"connection": 1, "duration": "1h", "reason": "r"}"#,
    ] {
        let response = call(body);
        assert!(response.starts_with("HTTP/1.1 4"), "{response}");
        let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let parsed: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        assert!(parsed["error"].is_string(), "{response}");
    }
    // Unknown status filters and overlong reasons are refused the same way.
    let out = access(&gw, &eve, &["list", "--status", "bogus"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown status"));
    let long = "x".repeat(3000);
    let out = access(
        &gw,
        &eve,
        &["request", db, "--for", "1h", "--reason", &long],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("longer than 2000"));
}
