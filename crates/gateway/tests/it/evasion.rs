//! Attempts to make the target run something other than what the audit log says.

use std::io::Write;

use bytes::{BufMut, BytesMut};

use crate::bad_input::{error_code, logged_in, read_messages};
use crate::support::{pg, Gateway};

pub(crate) fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

pub(crate) fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    msg(out, b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
}

pub(crate) fn bind(out: &mut BytesMut, portal: &str, statement: &str) {
    msg(
        out,
        b'B',
        format!("{portal}\0{statement}\0\0\0\0\0\0\0").as_bytes(),
    );
}

pub(crate) fn execute(out: &mut BytesMut, portal: &str) {
    msg(out, b'E', format!("{portal}\0\0\0\0\0").as_bytes());
}

pub(crate) fn query(out: &mut BytesMut, sql: &str) {
    msg(out, b'Q', format!("{sql}\0").as_bytes());
}

pub(crate) fn sync(out: &mut BytesMut) {
    msg(out, b'S', b"");
}

/// The events of the gateway's (only, or newest) session.
fn first_session_events(gw: &Gateway) -> Vec<serde_json::Value> {
    let id = gw.sessions()[0]["id"].as_str().unwrap().to_owned();
    gw.session(&id)["events"].as_array().unwrap().clone()
}

/// A database with a two-row `victim` table behind a fresh gateway, and a token for eve.
fn victim_gateway(db: &str) -> (Gateway, String) {
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE TABLE victim(id int); INSERT INTO victim VALUES (1), (2)",
    );
    let gw = Gateway::start(db, "");
    let token = gw.user_token("eve");
    (gw, token)
}

fn rows(db: &str) -> String {
    pg().psql_admin(db, "SELECT count(*) FROM victim")
        .trim()
        .to_owned()
}

#[test]
fn standard_conforming_strings_off_cannot_hide_a_statement() {
    let (gw, token) = victim_gateway("evade_scs");
    // With standard_conforming_strings off the server reads '\'; --' as one string and
    // would run the DELETE that a standard lexer takes for a comment.
    let out = std::process::Command::new("psql")
        .env("PGOPTIONS", "-c standard_conforming_strings=off")
        .args(["-X", "-A", "-t"])
        .arg(gw.conninfo("evade_scs", "eve", &token))
        .args(["-c", "SELECT '\\'; --'; DELETE FROM victim"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot be sure how the server reads this text"),
        "{stderr}"
    );
    assert_eq!(rows("evade_scs"), "2", "nothing was deleted");
    // One statement either way, but a subquery the policy parser would read as a comment.
    let hidden = "SELECT '\\' -- ', (SELECT count(*) FROM victim)";
    let out = std::process::Command::new("psql")
        .env("PGOPTIONS", "-c standard_conforming_strings=off")
        .args(["-X", "-A", "-t"])
        .arg(gw.conninfo("evade_scs", "eve", &token))
        .args(["-c", hidden])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be sure"));
    // The same text through the extended protocol's Parse.
    let mut s = logged_in(&gw, "evade_scs", "eve", &token);
    let mut out = BytesMut::new();
    parse(&mut out, "", hidden);
    sync(&mut out);
    s.write_all(&out).unwrap();
    let answer = read_messages(&mut s, b'Z');
    let (code, message) = error_code(&answer).unwrap();
    assert_eq!(code, "42501");
    assert!(message.contains("cannot be sure"), "{message}");
    drop(s);
    // Both attempts are on record, denied, and did not run.
    gw.wait_sessions_closed();
    let refused: Vec<_> = gw
        .sessions()
        .iter()
        .flat_map(|s| {
            let detail = gw.session(s["id"].as_str().unwrap());
            detail["events"].as_array().cloned().unwrap_or_default()
        })
        .filter(|e| e["statement"] == hidden)
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    for e in &refused {
        assert_eq!(e["decision"], "deny");
        assert_eq!(e["status"], "not_executed");
    }
    // The Query as a statement, the Parse as the definition it tried to make.
    let mut kinds: Vec<&str> = refused
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["prepare", "statement"]);
    // The setting the client asked for is on the session's record.
    gw.wait_sessions_closed();
    let first = gw.sessions().last().cloned().unwrap();
    let detail = gw.session(first["id"].as_str().unwrap());
    assert_eq!(
        detail["events"][0]["settings"]["options"],
        "-c standard_conforming_strings=off"
    );
    // Backslashes that cannot change statement boundaries still work.
    let (ok, out, err) = gw.psql(
        &gw.conninfo("evade_scs", "eve", &token),
        &["-c", "SELECT 'C:\\temp' AS p"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "C:\\temp");
}

#[test]
fn redefining_a_named_statement_cannot_change_what_is_recorded() {
    let (gw, token) = victim_gateway("evade_names");
    let mut s = logged_in(&gw, "evade_names", "eve", &token);
    let mut out = BytesMut::new();
    parse(&mut out, "s", "DELETE FROM victim");
    sync(&mut out);
    parse(&mut out, "s", "SELECT 1"); // rejected by the server: "s" already exists
    sync(&mut out);
    bind(&mut out, "", "s");
    execute(&mut out, "");
    sync(&mut out);
    s.write_all(&out).unwrap();
    for _ in 0..3 {
        read_messages(&mut s, b'Z');
    }
    drop(s);
    assert_eq!(rows("evade_names"), "0", "the server ran the DELETE");
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let executed: Vec<_> = statements
        .iter()
        .filter(|e| e["kind"] == "statement")
        .collect();
    assert_eq!(executed.len(), 1, "{statements:#?}");
    assert_eq!(executed[0]["statement"], "DELETE FROM victim");
    assert_eq!(executed[0]["statement_name"], "s");
    assert_eq!(executed[0]["rows"], 2);
    let prepared: Vec<_> = first_session_events(&gw)
        .iter()
        .filter(|e| e["kind"] == "prepare")
        .cloned()
        .collect();
    // Both definitions are on record; the server refused the second one.
    assert_eq!(prepared.len(), 2);
    assert_eq!(prepared[0]["statement"], "DELETE FROM victim");
    assert_eq!(prepared[0]["status"], "ok");
    assert_eq!(prepared[1]["statement"], "SELECT 1");
    assert_eq!(prepared[1]["error"]["code"], "42P05");
}

#[test]
fn a_query_inside_a_failed_batch_keeps_the_record_aligned() {
    let (gw, token) = victim_gateway("evade_batch");
    let mut s = logged_in(&gw, "evade_batch", "eve", &token);
    let mut out = BytesMut::new();
    parse(&mut out, "", "SELECT 1/0");
    bind(&mut out, "", "");
    execute(&mut out, "");
    query(&mut out, "DELETE FROM victim"); // discarded by the server after the error
    sync(&mut out);
    s.write_all(&out).unwrap();
    let m = read_messages(&mut s, b'Z');
    assert_eq!(error_code(&m).unwrap().0, "22012");
    let mut out = BytesMut::new();
    query(&mut out, "SELECT count(*) FROM victim");
    s.write_all(&out).unwrap();
    let m = read_messages(&mut s, b'Z');
    assert!(error_code(&m).is_none());
    drop(s);
    assert_eq!(rows("evade_batch"), "2");
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let by = |t: &str| {
        statements
            .iter()
            .find(|e| e["statement"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(by("SELECT 1/0")["error"]["code"], "22012");
    assert_eq!(by("DELETE FROM victim")["status"], "not_executed");
    let count = by("SELECT count(*) FROM victim");
    assert_eq!(count["status"], "ok");
    assert_eq!(count["rows"], 1);
}

#[test]
fn a_failed_copy_leaves_the_session_in_step() {
    pg().create_db("evade_copy");
    pg().psql_admin("evade_copy", "CREATE TABLE victim(id int)");
    let gw = Gateway::start("evade_copy", "");
    let token = gw.user_token("eve");
    // Bad data early, and enough of it that psql is still sending when the server fails.
    let csv = gw.dir.path().join("bad.csv");
    let mut data = String::from("not-a-number\n");
    data.extend((0..200_000).map(|i| format!("{i}\n")));
    std::fs::write(&csv, data).unwrap();
    let script = format!(
        "\\copy victim FROM '{}'\nSELECT 41 + 1;\nSELECT count(*) FROM victim;\n",
        csv.display()
    );
    let (_, stdout, stderr) =
        gw.psql_script(&gw.conninfo("evade_copy", "eve", &token), &[], &script);
    assert!(stderr.contains("invalid input syntax"), "{stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["42", "0"]);
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let copy = statements
        .iter()
        .find(|e| e["statement"].as_str().unwrap().contains("FROM STDIN"))
        .unwrap();
    assert_eq!(copy["error"]["code"], "22P02");
    let after = statements
        .iter()
        .find(|e| e["statement"] == "SELECT 41 + 1")
        .unwrap();
    assert_eq!(after["status"], "ok", "{after}");
    assert_eq!(after["rows"], 1);
}

fn describe_statement(out: &mut BytesMut, name: &str) {
    msg(out, b'D', format!("S{name}\0").as_bytes());
}

/// Every text the server may run is on record before the server sees it, even when the
/// gateway cannot know which definition a later Execute will use.
#[test]
fn skipped_or_deallocated_definitions_cannot_hide_a_statement() {
    let (gw, token) = victim_gateway("evade_defs");

    // An unnamed statement defined but not executed; a later redefinition that the
    // server skips (an earlier message of its batch fails); then an Execute of "".
    let mut s = logged_in(&gw, "evade_defs", "eve", &token);
    let mut out = BytesMut::new();
    parse(&mut out, "", "DELETE FROM victim WHERE id = 1");
    sync(&mut out);
    describe_statement(&mut out, "nosuch");
    parse(&mut out, "", "SELECT 1");
    sync(&mut out);
    bind(&mut out, "", "");
    execute(&mut out, "");
    sync(&mut out);
    s.write_all(&out).unwrap();
    for _ in 0..3 {
        read_messages(&mut s, b'Z');
    }

    // A named statement deallocated with SQL, then redefined under the same name.
    let mut out = BytesMut::new();
    parse(&mut out, "s", "SELECT 2");
    sync(&mut out);
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    let mut out = BytesMut::new();
    query(&mut out, "DEALLOCATE s");
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    let mut out = BytesMut::new();
    parse(&mut out, "s", "DELETE FROM victim WHERE id = 2");
    sync(&mut out);
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    let mut out = BytesMut::new();
    bind(&mut out, "", "s");
    execute(&mut out, "");
    sync(&mut out);
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    drop(s);
    assert_eq!(rows("evade_defs"), "0", "the server ran both DELETEs");

    gw.wait_sessions_closed();
    let events = first_session_events(&gw);
    let recorded = |text: &str| events.iter().any(|e| e["statement"] == text);
    assert!(recorded("DELETE FROM victim WHERE id = 1"), "{events:#?}");
    // The Execute after the skipped redefinition waited for the server to settle the
    // earlier batches, so its record carries the text that really ran.
    let first_run = events
        .iter()
        .find(|e| e["kind"] == "statement" && e["statement_name"].is_null())
        .unwrap();
    assert_eq!(
        first_run["statement"], "DELETE FROM victim WHERE id = 1",
        "{events:#?}"
    );
    assert_eq!(first_run["rows"], 1);
    assert!(recorded("DELETE FROM victim WHERE id = 2"), "{events:#?}");
    // The redefinition was accepted, so the Execute after it is recorded with its text.
    let last = events.iter().rfind(|e| e["kind"] == "statement").unwrap();
    assert_eq!(last["statement"], "DELETE FROM victim WHERE id = 2");
    assert_eq!(last["statement_name"], "s");
    assert_eq!(last["rows"], 1);
}

/// SQL that drops prepared statements (`DEALLOCATE`, `DISCARD ALL`) pipelined in one write
/// with a redefinition and its Execute: the Execute is recorded with the text the server
/// runs, in the redefinition's batch and in a later one.
#[test]
fn deallocating_with_sql_in_the_same_write_cannot_hide_a_statement() {
    let (gw, token) = victim_gateway("evade_dealloc");
    let mut s = logged_in(&gw, "evade_dealloc", "eve", &token);
    let mut out = BytesMut::new();
    parse(&mut out, "s", "SELECT 'harmless'");
    sync(&mut out);
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');

    let mut out = BytesMut::new();
    query(&mut out, "DEALLOCATE ALL");
    parse(&mut out, "s", "DELETE FROM victim WHERE id = 1");
    bind(&mut out, "", "s");
    execute(&mut out, "");
    sync(&mut out);
    query(&mut out, "DISCARD ALL");
    parse(&mut out, "s", "DELETE FROM victim WHERE id = 2");
    sync(&mut out);
    // A later batch: it waits until the server has answered the redefinition.
    bind(&mut out, "", "s");
    execute(&mut out, "");
    sync(&mut out);
    s.write_all(&out).unwrap();
    for _ in 0..5 {
        read_messages(&mut s, b'Z');
    }
    drop(s);
    assert_eq!(rows("evade_dealloc"), "0", "the server ran both DELETEs");

    gw.wait_sessions_closed();
    let events = first_session_events(&gw);
    let runs: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "statement" && e["statement_name"] == "s")
        .collect();
    assert_eq!(runs.len(), 2, "{events:#?}");
    assert_eq!(runs[0]["statement"], "DELETE FROM victim WHERE id = 1");
    assert_eq!(runs[0]["rows"], 1);
    assert_eq!(runs[1]["statement"], "DELETE FROM victim WHERE id = 2");
    assert_eq!(runs[1]["rows"], 1);
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "statement" && e["statement"] == "SELECT 'harmless'"),
        "{events:#?}"
    );
}

/// A second Parse of a name the server still has fails, and the Execute pipelined after it
/// in its batch does not run: nothing is recorded as having run.
#[test]
fn a_rejected_redefinition_runs_nothing_after_it_in_its_batch() {
    let (gw, token) = victim_gateway("evade_dup");
    let mut s = logged_in(&gw, "evade_dup", "eve", &token);
    let mut out = BytesMut::new();
    parse(&mut out, "s", "DELETE FROM victim");
    sync(&mut out);
    parse(&mut out, "s", "SELECT 1");
    bind(&mut out, "", "s");
    execute(&mut out, "");
    sync(&mut out);
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    let answer = read_messages(&mut s, b'Z');
    assert!(
        answer
            .iter()
            .any(|(tag, body)| *tag == b'E' && body.windows(5).any(|w| w == b"42P05")),
        "the server rejected the redefinition: {answer:?}"
    );
    drop(s);
    assert_eq!(rows("evade_dup"), "2", "nothing ran");
    gw.wait_sessions_closed();
    let events = first_session_events(&gw);
    let run = events
        .iter()
        .find(|e| e["kind"] == "statement" && e["statement_name"] == "s")
        .unwrap();
    assert_eq!(run["statement"], "SELECT 1", "{events:#?}");
    assert_eq!(run["status"], "not_executed", "{events:#?}");
}

/// In a single-byte client_encoding (LATIN1, WIN1252, …) non-ASCII text is read as the
/// server reads it: a rule naming a non-ASCII table applies, and the record holds the
/// characters that ran (and tells `'café'` from `'cafè'`).
#[test]
fn single_byte_encodings_are_read_as_the_server_reads_them() {
    pg().create_db("enc_latin1");
    pg().psql_admin(
        "enc_latin1",
        "CREATE TABLE \"cafés\"(id int); INSERT INTO \"cafés\" VALUES (1); CREATE TABLE t(s text)",
    );
    let gw = Gateway::start_with(
        "enc_latin1",
        "",
        "policies:\n  - { name: no-cafes, match: { tables: [\"cafés\"] }, action: deny }\n",
    );
    let token = gw.user_token("eve");
    let mut s = logged_in(&gw, "enc_latin1", "eve", &token);
    let mut out = BytesMut::new();
    query(&mut out, "SET client_encoding TO 'LATIN1'");
    msg(&mut out, b'Q', b"SELECT * FROM caf\xe9s\0");
    msg(
        &mut out,
        b'Q',
        b"INSERT INTO t VALUES ('caf\xe9'), ('caf\xe8')\0",
    );
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    let (code, message) = error_code(&read_messages(&mut s, b'Z')).expect("refused");
    assert_eq!(code, "42501", "{message}");
    assert!(error_code(&read_messages(&mut s, b'Z')).is_none());
    // A text parameter in the same encoding.
    let mut out = BytesMut::new();
    parse(&mut out, "", "INSERT INTO t VALUES ($1)");
    let mut body = b"\0\0\0\0\0\x01".to_vec();
    body.extend_from_slice(&4i32.to_be_bytes());
    body.extend_from_slice(b"\xfcber");
    body.extend_from_slice(&[0, 0]);
    msg(&mut out, b'B', &body);
    execute(&mut out, "");
    sync(&mut out);
    s.write_all(&out).unwrap();
    assert!(error_code(&read_messages(&mut s, b'Z')).is_none());
    drop(s);
    assert_eq!(
        pg().psql_admin(
            "enc_latin1",
            "SELECT string_agg(s, ',' ORDER BY s COLLATE \"C\") FROM t"
        )
        .trim(),
        "cafè,café,über"
    );
    gw.wait_sessions_closed();
    let texts = gw.statement_texts();
    let has = |text: &str| texts.iter().any(|t| t == text);
    assert!(has("SELECT * FROM cafés"), "{texts:?}");
    assert!(has("INSERT INTO t VALUES ('café'), ('cafè')"), "{texts:?}");
    let bound = gw
        .all_statements()
        .into_iter()
        .find(|e| e["statement"] == "INSERT INTO t VALUES ($1)")
        .unwrap();
    assert_eq!(bound["params"][0], "über", "{bound:#}");
}

/// In SJIS (and similar encodings) a multibyte character can end in `\`, so the server can
/// split a string differently from the gateway: non-ASCII statements are refused there,
/// even when the encoding is switched by a statement pipelined just before.
#[test]
fn multibyte_encodings_cannot_hide_a_statement() {
    let (gw, token) = victim_gateway("evade_enc");
    // 0x81 0x5C is one SJIS character: the server reads the string as closed and runs
    // the DELETE, while a UTF-8 reading sees an escaped quote.
    let mut attack = b"SELECT E'\x81\\'; DELETE FROM victim; --'".to_vec();
    attack.push(0);
    let mut s = logged_in(&gw, "evade_enc", "eve", &token);
    let mut out = BytesMut::new();
    query(&mut out, "SET client_encoding TO 'SJIS'");
    msg(&mut out, b'Q', &attack);
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    let m = read_messages(&mut s, b'Z');
    let (code, message) = error_code(&m).expect("refused");
    assert_eq!(code, "42501");
    assert!(message.contains("client_encoding SJIS"), "{message}");
    // ASCII statements still work in that encoding.
    let mut out = BytesMut::new();
    query(&mut out, "SELECT count(*) FROM victim");
    s.write_all(&out).unwrap();
    let m = read_messages(&mut s, b'Z');
    assert!(error_code(&m).is_none());
    drop(s);
    assert_eq!(rows("evade_enc"), "2", "nothing was deleted");

    // A session that starts in SJIS is held to the same rule.
    let out = std::process::Command::new("psql")
        .env("PGCLIENTENCODING", "SJIS")
        .args(["-X", "-A", "-t"])
        .arg(gw.conninfo("evade_enc", "eve", &token))
        .args(["-c", "SELECT 'é'"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("client_encoding SJIS"));

    // Both attempts are on the record, refused.
    gw.wait_sessions_closed();
    let refused: Vec<_> = gw
        .all_statements()
        .into_iter()
        .filter(|e| {
            e["decision"] == "deny"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("client_encoding SJIS"))
        })
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(refused[0]["statement"]
        .as_str()
        .unwrap()
        .contains("DELETE FROM victim"));
}

#[test]
fn a_backslash_name_cannot_move_search_path_past_a_rule() {
    let db = "evade_path";
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE SCHEMA secret; CREATE TABLE secret.keys(k text); INSERT INTO secret.keys VALUES ('k1')",
    );
    let gw = Gateway::start_with(
        db,
        "",
        "policies:\n  - { name: no-secrets, match: { tables: [\"secret.*\"] }, action: deny }\n",
    );
    let token = gw.user_token("eve");
    // With standard_conforming_strings off the server reads 'sec\x72et' as `secret`.
    let out = std::process::Command::new("psql")
        .env("PGOPTIONS", "-c standard_conforming_strings=off")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(gw.conninfo(db, "eve", &token))
        .args([
            "-c",
            "SET search_path = 'sec\\x72et'",
            "-c",
            "SELECT k FROM keys",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("k1"),
        "the secret table was read: {stdout}"
    );
    assert!(stderr.contains("no-secrets"), "{stderr}");
}
