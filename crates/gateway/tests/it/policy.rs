//! Per-statement policy through the gateway: denied statements never reach the target, the
//! client gets SQLSTATE 42501 naming the rule, the session stays usable, and the audit log
//! records the decision.

use tokio_postgres::NoTls;

use crate::support::{pg, Gateway};

const POLICIES: &str = r#"policies:
  - { name: no-drop, match: { statement: [drop, truncate] }, action: deny, message: ask a DBA }
  - { name: unbounded-writes, match: { statement: [update, delete], where: absent }, action: deny }
  - { name: no-file-reads, match: { functions: ["pg_read_*"] }, action: deny }
"#;

/// A database with a two-row `victim` table behind a gateway with [`POLICIES`].
fn guarded(db: &str, extra_connections: &str) -> (Gateway, String) {
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE TABLE victim(id int); INSERT INTO victim VALUES (1), (2)",
    );
    let gw = Gateway::start_with(db, extra_connections, POLICIES);
    let token = gw.user_token("eve");
    (gw, token)
}

fn victim_rows(db: &str) -> String {
    pg().psql_admin(db, "SELECT count(*) FROM victim")
        .trim()
        .to_owned()
}

#[test]
fn psql_denials_name_the_rule_and_the_session_goes_on() {
    let (gw, token) = guarded("pol_psql", "");
    let script = r#"
DrOp /* evasive */ TABLE "victim";
SELECT 'after drop', count(*) FROM victim;
delete from victim;
WITH gone AS (DELETE FROM victim RETURNING *) SELECT count(*) FROM gone;
EXPLAIN ANALYZE DELETE FROM victim;
SELECT 1 \; TRUNCATE victim;
PREPARE wipe AS DELETE FROM victim;
EXECUTE wipe;
select pg_read_file('/etc/hostname');
DO $$ BEGIN EXECUTE 'DROP TABLE victim'; END $$;
delete from victim where id = 1;
SELECT 'end', count(*) FROM victim;
"#;
    let (_, out, err) = gw.psql_script(
        &gw.conninfo("pol_psql", "eve", &token),
        &["-v", "VERBOSITY=verbose"],
        script,
    );
    // Every refused statement got 42501 with the rule that refused it.
    for expected in [
        "42501: statement denied by sluice policy \"no-drop\": ask a DBA",
        "42501: statement denied by sluice policy \"unbounded-writes\"",
        "42501: statement denied by sluice policy \"no-file-reads\"",
        "prepared statement \"wipe\" was not prepared through sluice",
        "cannot see into dynamic SQL (a DO block)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert_eq!(err.matches("ERROR:  42501").count(), 9, "{err}");
    // The session went on after each refusal, and only the bounded delete ran.
    assert!(out.contains("after drop|2"), "{out}");
    assert!(out.contains("end|1"), "{out}");
    assert_eq!(victim_rows("pol_psql"), "1");

    // The audit log has each decision and the rule.
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let drop = statements
        .iter()
        .find(|s| s["statement"].as_str().unwrap_or_default().contains("DrOp"))
        .expect("the DROP is on record");
    assert_eq!(drop["decision"], "deny");
    assert_eq!(drop["rule"], "no-drop");
    assert_eq!(drop["status"], "not_executed");
    let bounded = statements
        .iter()
        .find(|s| s["statement"] == "delete from victim where id = 1")
        .expect("the bounded delete is on record");
    assert_eq!(bounded["decision"], "allow");
    assert_eq!(bounded["rule"], serde_json::Value::Null);
    assert_eq!(bounded["rows"], 1);
    let denied = statements
        .iter()
        .filter(|s| s["decision"] == "deny")
        .count();
    // Nine refusals; the `SELECT 1` sent with the TRUNCATE was allowed but not run.
    assert_eq!(denied, 9, "{statements:#?}");
    assert!(gw.verify().status.success());
}

#[test]
fn extended_protocol_parse_and_execute_are_judged() {
    let (gw, token) = guarded("pol_ext", "");
    let conninfo = gw.conninfo("pol_ext", "eve", &token);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            // A named Parse is judged before the server sees it.
            let err = client.prepare("DROP TABLE victim").await.unwrap_err();
            assert_eq!(err.code().unwrap().code(), "42501", "{err}");
            let message = err.as_db_error().map(|e| e.message().to_owned());
            assert!(message.unwrap_or_default().contains("no-drop"), "{err:?}");
            // Bind/Execute of an unbounded delete, with parameters.
            let err = client
                .execute("DELETE FROM victim WHERE $1::int IS NOT NULL", &[&1i32])
                .await
                .unwrap_err();
            assert_eq!(err.code().unwrap().code(), "42501", "{err}");
            // The session is still usable, in both protocols.
            let n: i64 = client
                .query_one("SELECT count(*) FROM victim WHERE id > $1", &[&0i32])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 2);
            let deleted = client
                .execute("DELETE FROM victim WHERE id = $1", &[&2i32])
                .await
                .unwrap();
            assert_eq!(deleted, 1);
            let err = client.simple_query("TRUNCATE victim").await.unwrap_err();
            assert_eq!(err.code().unwrap().code(), "42501", "{err}");
            client.simple_query("SELECT 1").await.unwrap();
        });
    assert_eq!(victim_rows("pol_ext"), "1");
}

#[test]
fn unparsed_statements_can_be_allowed_per_connection() {
    pg().create_db("pol_lenient");
    let lenient = format!(
        "  - name: lenient\n    kind: postgres\n    address: 127.0.0.1:{}\n    database: pol_lenient\n    user: postgres\n    password: env:SLUICE_TEST_TARGET_PASSWORD\n    unparsed_statements: allow\n",
        pg().port
    );
    let (gw, token) = guarded("pol_strict", &lenient);
    // The same DO block: refused on the strict connection, run on the lenient one.
    let block = "DO $$ BEGIN RAISE NOTICE 'ran'; END $$";
    let (ok, _, err) = gw.psql(&gw.conninfo("pol_strict", "eve", &token), &["-c", block]);
    assert!(!ok && err.contains("dynamic SQL"), "{err}");
    let (ok, _, err) = gw.psql(&gw.conninfo("lenient", "eve", &token), &["-c", block]);
    assert!(ok && err.contains("ran"), "{err}");
    // Rules still apply there to what can be parsed.
    let (ok, _, err) = gw.psql(
        &gw.conninfo("lenient", "eve", &token),
        &["-c", "DROP TABLE IF EXISTS nothing_here"],
    );
    assert!(!ok && err.contains("no-drop"), "{err}");
}

#[test]
fn policy_check_dry_runs_and_bad_rules_stop_the_gateway() {
    let (gw, _) = guarded("pol_check", "");
    let check = |sql: &str| {
        gw.cli(&[
            "policy",
            "check",
            "--connection",
            "pol_check",
            "--user",
            "eve",
            "--json",
            sql,
        ])
    };
    let out = check("select 1; drop table victim");
    assert_eq!(out.status.code(), Some(4));
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results[0]["decision"], "allow");
    assert_eq!(results[1]["decision"], "deny");
    assert_eq!(results[1]["rule"], "no-drop");
    assert_eq!(
        check("delete from victim where id = 1").status.code(),
        Some(0)
    );
    assert_eq!(
        victim_rows("pol_check"),
        "2",
        "policy check never runs anything"
    );

    // A rule with a mistake: the gateway refuses to start and names rule and key.
    let bad = gw.dir.path().join("bad.yaml");
    let config = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("statement: [drop, truncate]", "statement: [drop, truncat]");
    std::fs::write(&bad, config).unwrap();
    let out = std::process::Command::new(crate::support::sluice_bin())
        .args(["gateway", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no-drop") && err.contains("truncat"), "{err}");
}

#[test]
fn policy_replay_reports_what_a_candidate_would_change() {
    let (gw, token) = guarded("pol_replay", "");
    let (_, _, err) = gw.psql_script(
        &gw.conninfo("pol_replay", "eve", &token),
        &[],
        "select 1;\ndelete from victim where id = 1;\ninsert into victim values (5);\ndrop table victim;\n",
    );
    assert!(err.contains("no-drop"), "{err}");
    gw.wait_sessions_closed();
    let candidate = gw.dir.path().join("candidate.yaml");
    std::fs::write(
        &candidate,
        "policies:\n  - { name: no-inserts, match: { statement: [insert] }, action: deny }\n  - { name: review-deletes, match: { statement: [delete] }, action: review, reviewers: [group:dba] }\n",
    )
    .unwrap();
    let report = gw.cli_json(&[
        "policy",
        "replay",
        "--since",
        "1h",
        "--policies",
        candidate.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(report["statements"], 4, "{report:#}");
    let differences = report["differences"].as_array().unwrap();
    let change = |needle: &str| {
        differences
            .iter()
            .find(|d| d["statement"].as_str().unwrap_or_default().contains(needle))
            .map(|d| {
                (
                    d["recorded"].as_str().unwrap_or_default().to_owned(),
                    d["candidate"].as_str().unwrap_or_default().to_owned(),
                )
            })
    };
    assert_eq!(change("insert"), Some(("allow".into(), "deny".into())));
    assert_eq!(change("delete"), Some(("allow".into(), "review".into())));
    assert_eq!(change("drop"), Some(("deny".into(), "allow".into())));
    assert_eq!(change("select"), None);
    assert_eq!(report["changed"], 3);
    // The live log is only read.
    assert!(gw.verify().status.success());
}

#[test]
fn a_refused_message_fails_its_batch_on_the_server_too() {
    use std::io::Write;

    use bytes::BytesMut;

    use crate::bad_input::{error_code, logged_in, read_messages};
    use crate::evasion::{bind, execute, parse, sync};

    let (gw, token) = guarded("pol_batch", "");
    let mut s = logged_in(&gw, "pol_batch", "eve", &token);
    let batch = || {
        let mut out = BytesMut::new();
        parse(&mut out, "", "INSERT INTO victim VALUES (3)");
        bind(&mut out, "", "");
        execute(&mut out, "");
        parse(&mut out, "", "DROP TABLE victim");
        bind(&mut out, "", "");
        execute(&mut out, "");
        sync(&mut out);
        out
    };
    // Outside a transaction block: the INSERT of the same batch is rolled back with it, as
    // the server would do had the DROP failed there.
    s.write_all(&batch()).unwrap();
    let m = read_messages(&mut s, b'Z');
    let (code, message) = error_code(&m).expect("an error");
    assert_eq!(code, "42501");
    assert!(message.contains("no-drop"), "{message}");
    assert!(!message.contains("portal"), "{message}");
    assert_eq!(m.iter().filter(|(t, _)| *t == b'E').count(), 1);
    assert_eq!(
        m.last().map(|(t, b)| (*t, b.clone())),
        Some((b'Z', b"I".to_vec()))
    );
    assert_eq!(victim_rows("pol_batch"), "2");

    // Inside one: the transaction is failed, as after any error.
    let mut out = BytesMut::new();
    crate::evasion::msg(&mut out, b'Q', b"BEGIN\0");
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    s.write_all(&batch()).unwrap();
    let m = read_messages(&mut s, b'Z');
    assert_eq!(
        m.last().map(|(t, b)| (*t, b.clone())),
        Some((b'Z', b"E".to_vec()))
    );
    let mut out = BytesMut::new();
    crate::evasion::msg(&mut out, b'Q', b"ROLLBACK\0");
    crate::evasion::msg(&mut out, b'Q', b"SELECT count(*) FROM victim\0");
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    let m = read_messages(&mut s, b'Z');
    assert!(error_code(&m).is_none(), "{:?}", error_code(&m));
    assert_eq!(victim_rows("pol_batch"), "2");
}

#[test]
fn a_denied_statement_fails_an_open_transaction_like_any_error() {
    let (gw, token) = guarded("pol_txn", "");
    let (_, out, err) = gw.psql_script(
        &gw.conninfo("pol_txn", "eve", &token),
        &[],
        "BEGIN;\nINSERT INTO victim VALUES (3);\nDROP TABLE victim;\nSELECT 'inside';\nCOMMIT;\nSELECT 'after', count(*) FROM victim;\n",
    );
    assert!(err.contains("no-drop"), "{err}");
    // As after any error in a transaction block: the rest is refused and COMMIT rolls back.
    assert!(err.contains("current transaction is aborted"), "{err}");
    assert!(!out.contains("inside"), "{out}");
    assert_eq!(victim_rows("pol_txn"), "2");
    // The session goes on.
    assert!(out.contains("after|2"), "{out}");
}

/// Found by a red-team pass: a COPY the server failed, whose end the client never sent,
/// made the gateway take the end of the next COPY for it and lose track of the batches
/// after — until a denied DROP ran.
#[test]
fn a_failed_copy_never_ended_cannot_desync_the_gateway() {
    use std::io::Write;

    use bytes::BytesMut;

    use crate::bad_input::{error_code, logged_in, read_messages};
    use crate::evasion::{bind, execute, msg, parse, sync};

    let (gw, token) = guarded("pol_copy_desync", "");
    let mut s = logged_in(&gw, "pol_copy_desync", "eve", &token);
    let send = |s: &mut std::net::TcpStream, out: BytesMut| s.write_all(&out).unwrap();

    let mut out = BytesMut::new();
    parse(&mut out, "", "SELECT 1");
    sync(&mut out);
    send(&mut s, out);
    read_messages(&mut s, b'Z');

    // A COPY that fails on its first line; the client never sends CopyDone.
    let mut out = BytesMut::new();
    msg(&mut out, b'Q', b"COPY victim FROM STDIN\0");
    msg(&mut out, b'd', b"zz\tb\n");
    send(&mut s, out);
    read_messages(&mut s, b'Z');

    // A new COPY with its end, then batches with a denied DROP in them.
    let mut out = BytesMut::new();
    msg(&mut out, b'Q', b"COPY victim FROM STDIN\0");
    msg(&mut out, b'd', b"30\n");
    msg(&mut out, b'c', b"");
    parse(&mut out, "x", "DROP TABLE victim");
    sync(&mut out);
    parse(&mut out, "s2", "select 2");
    parse(&mut out, "", "DROP TABLE victim");
    bind(&mut out, "", "");
    execute(&mut out, "");
    sync(&mut out);
    send(&mut s, out);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.extend(read_messages(&mut s, b'Z'));
    }
    // Nothing the client sees names the gateway's internals.
    for (tag, body) in &seen {
        if *tag == b'E' {
            let text = String::from_utf8_lossy(body);
            assert!(!text.contains("sluice-refused"), "{text}");
        }
    }
    // And a later Execute of the unnamed statement is still judged as the DROP it is.
    let mut out = BytesMut::new();
    bind(&mut out, "", "");
    execute(&mut out, "");
    sync(&mut out);
    send(&mut s, out);
    let m = read_messages(&mut s, b'Z');
    let (code, _) = error_code(&m).expect("refused");
    assert_eq!(code, "42501", "{m:?}");
    assert_eq!(
        pg().psql_admin("pol_copy_desync", "SELECT count(*) FROM victim")
            .trim(),
        "3"
    );
}
