//! Masking of results through the gateway, with psql and tokio-postgres against a real
//! PostgreSQL: column rules (aliases, joins, views, computed columns), detectors, styles,
//! binary format, COPY, error details, exempt groups, bounded memory on a huge result.

use futures_util::{pin_mut, StreamExt, TryStreamExt};
use tokio_postgres::NoTls;

use crate::support::{pg, Gateway};

const MASKING: &str = r#"masking:
  - name: pii
    except: [group:auditors]
    columns: ["*.users.email", "*.*.ssn"]
  - name: accounts
    columns: ["public.accounts.token"]
  - name: cards
    columns: ["public.users.card"]
    style: partial
    keep: 4
  - name: names
    applies_to: [group:engineers]
    columns: ["*.users.name"]
    style: hash
  - name: free-text
    except: [group:auditors]
    detectors: [email, phone, credit_card, us_ssn, { name: project, words: [bluebird] }]
"#;

const SCHEMA: &str = r#"
CREATE TABLE users(id int PRIMARY KEY, name text, email text UNIQUE, ssn text, card text,
                   notes text, profile jsonb, tags text[], age int);
INSERT INTO users VALUES
 (1, 'Alice', 'alice@example.com', '123-45-6789', '4111 1111 1111 1111',
  'call +1 415 555 2671 about Bluebird', '{"email": "alice@example.com", "n": 1}', '{x,y}', 30),
 (2, 'Bob', 'bob@example.org', '234-56-7890', '5500 0000 0000 0004',
  'nothing to see', '{"n": 2}', '{z}', 41),
 (3, 'Alice', 'alice2@example.net', NULL, NULL, NULL, NULL, NULL, 52);
CREATE TABLE orders(id int, user_id int, total numeric);
INSERT INTO orders VALUES (10, 1, 9.5), (11, 2, 20);
CREATE VIEW contacts AS SELECT id, email AS contact, upper(name) AS shout FROM users;
CREATE TABLE accounts(id int, token text) PARTITION BY RANGE (id);
CREATE TABLE accounts_2024 PARTITION OF accounts FOR VALUES FROM (0) TO (100);
INSERT INTO accounts VALUES (1, 'tok-1');
CREATE VIEW contacts2 AS SELECT contact FROM contacts;
CREATE VIEW digits AS SELECT id, replace(ssn, '-', '') AS ssn_digits, length(ssn) AS n FROM users;
"#;

fn masked_gateway(db: &str) -> (Gateway, String) {
    pg().create_db(db);
    pg().psql_admin(db, SCHEMA);
    let gw = Gateway::start_with(db, "", MASKING);
    let token = gw.user_token("erin");
    (gw, token)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn psql_sees_masked_columns_through_aliases_joins_views_and_computations() {
    let (gw, token) = masked_gateway("mask_psql");
    let conn = gw.conninfo("mask_psql", "erin", &token);
    let q = |sql: &str| {
        let (ok, out, err) = gw.psql(&conn, &["-c", sql]);
        assert!(ok, "{sql}: {err}");
        out.trim().to_owned()
    };
    assert_eq!(
        q("SELECT email, ssn, age FROM users WHERE id = 1"),
        "[redacted]|[redacted]|30"
    );
    assert_eq!(q("SELECT email AS e FROM users WHERE id = 2"), "[redacted]");
    assert_eq!(
        q("SELECT o.id, u.email, o.total FROM orders o JOIN users u ON u.id = o.user_id ORDER BY o.id"),
        "10|[redacted]|9.5\n11|[redacted]|20"
    );
    assert_eq!(q("SELECT contact FROM contacts WHERE id = 1"), "[redacted]");
    assert_eq!(q("SELECT * FROM contacts2 LIMIT 1"), "[redacted]");
    assert_eq!(
        q("SELECT e FROM (SELECT email AS e FROM users) s LIMIT 1"),
        "[redacted]"
    );
    // Computed from a masked column: masked as that column.
    assert_eq!(
        q("SELECT lower(email) FROM users WHERE id = 1"),
        "[redacted]"
    );
    assert_eq!(
        q("SELECT replace(email, '@', ' at ') FROM users WHERE id = 1"),
        "[redacted]"
    );
    // Whole rows carry masked columns without naming them.
    assert_eq!(
        q("SELECT row_to_json(u) FROM users u WHERE id = 1"),
        "\"[redacted]\""
    );
    assert_eq!(q("SELECT u::text FROM users u WHERE id = 2"), "[redacted]");
    assert_eq!(q("SELECT count(*) FROM users"), "3");
    // Every computed text value of a statement reading a table with masked columns is
    // masked, constants too (a quote in a string does not hide the names after it).
    assert_eq!(
        q(r#"SELECT '"', lower(email) FROM users WHERE id = 1"#),
        "[redacted]|[redacted]"
    );
    assert_eq!(q("SELECT 'x' || total FROM orders WHERE id = 10"), "x9.5");
    // A partition is masked as its partitioned table.
    assert_eq!(q("SELECT token FROM accounts_2024"), "[redacted]");
    // A column a view computes from a masked column is masked too (NULL for a number).
    assert_eq!(
        q("SELECT ssn_digits, n FROM digits WHERE id = 1"),
        "[redacted]|"
    );
    // partial keeps the shape and the last four digits.
    assert_eq!(
        q("SELECT card FROM users WHERE id = 1"),
        "**** **** **** 1111"
    );
    // Detectors rewrite only what they find in free text.
    assert_eq!(
        q("SELECT notes FROM users WHERE id = 1"),
        "call [redacted] about [redacted]"
    );
    assert_eq!(q("SELECT notes FROM users WHERE id = 2"), "nothing to see");
    assert_eq!(
        q("SELECT 'mail me: ' || 'x.y@corp.example'"),
        "mail me: [redacted]"
    );
    // JSON stays valid JSON.
    assert_eq!(
        q("SELECT profile FROM users WHERE id = 1"),
        r#"{"n": 1, "email": "[redacted]"}"#
    );
    // hash: equal values stay equal, and are not the value.
    let names = q("SELECT name FROM users ORDER BY id");
    let names: Vec<&str> = names.lines().collect();
    assert!(
        names[0].starts_with("hmac:") && names[0].len() == 21,
        "{names:?}"
    );
    assert_eq!(names[0], names[2]);
    assert_ne!(names[0], names[1]);
    // Rows of other tables pass untouched.
    assert_eq!(q("SELECT total FROM orders ORDER BY id"), "9.5\n20");

    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let first = statements
        .iter()
        .find(|s| s["statement"] == "SELECT email, ssn, age FROM users WHERE id = 1")
        .unwrap();
    let masked = first["masked"].as_array().unwrap();
    assert!(masked.iter().any(|m| m["column"] == "public.users.email"
        && m["style"] == "redact"
        && m["values"] == 1));
    assert!(masked
        .iter()
        .any(|m| m["column"] == "public.users.ssn" && m["values"] == 1));
    let notes = statements
        .iter()
        .find(|s| s["statement"] == "SELECT notes FROM users WHERE id = 1")
        .unwrap();
    let detectors: Vec<&str> = notes["masked"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["detector"].as_str())
        .collect();
    assert!(
        detectors.contains(&"phone") && detectors.contains(&"project"),
        "{notes}"
    );
    // Counts only: no masked value reached the audit log or the gateway's log.
    let written = gw.everything_written();
    for secret in [
        "alice@example.com",
        "123-45-6789",
        "4111 1111 1111 1111",
        "415 555 2671",
    ] {
        assert!(!written.contains(secret), "{secret} was written");
    }
}

#[test]
fn auditors_are_exempt_and_other_rules_still_apply() {
    let (gw, _) = masked_gateway("mask_exempt");
    gw.cli_ok(&["users", "add", "ada", "--group", "auditors"]);
    let token = gw.cli_ok(&["tokens", "issue", "ada"]).trim().to_owned();
    let (ok, out, err) = gw.psql(
        &gw.conninfo("mask_exempt", "ada", &token),
        &[
            "-c",
            "SELECT email, ssn, name, card, notes FROM users WHERE id = 1",
        ],
    );
    assert!(ok, "{err}");
    // The card rule names no exemption; the name rule covers engineers only.
    assert_eq!(
        out.trim(),
        "alice@example.com|123-45-6789|Alice|**** **** **** 1111|call +1 415 555 2671 about Bluebird"
    );
}

#[test]
fn tokio_postgres_binary_results_and_reused_statements_are_masked() {
    let (gw, token) = masked_gateway("mask_binary");
    runtime().block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&gw.conninfo("mask_binary", "erin", &token), NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        // Prepared once (Parse + Describe), executed twice: the executions carry no
        // RowDescription of their own; binary format throughout.
        let stmt = client
            .prepare("SELECT id, email, age, notes, tags, profile::text FROM users WHERE id = $1")
            .await
            .unwrap();
        for _ in 0..2 {
            let row = client.query_one(&stmt, &[&1i32]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 1);
            assert_eq!(row.get::<_, &str>(1), "[redacted]");
            assert_eq!(row.get::<_, i32>(2), 30);
            assert_eq!(row.get::<_, &str>(3), "call [redacted] about [redacted]");
            assert_eq!(row.get::<_, Vec<String>>(4), vec!["x", "y"]);
        }
        // Binary jsonb keeps its version byte and stays parseable JSON.
        let row = client
            .query_one("SELECT profile FROM users WHERE id = 1", &[])
            .await
            .unwrap();
        let raw: RawJsonb = row.get(0);
        assert_eq!(raw.0, r#"{"n": 1, "email": "[redacted]"}"#);
        // A computed array that carries a masked column: NULL (arrays are not rewritten).
        let row = client
            .query_one("SELECT ARRAY[name, email] FROM users WHERE id = 2", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<Vec<String>>>(0), None);
        // Rows streamed from a portal in chunks are masked too.
        let rows: Vec<tokio_postgres::Row> = client
            .query_raw(
                "SELECT email FROM users ORDER BY id",
                std::iter::empty::<i32>(),
            )
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.get::<_, &str>(0) == "[redacted]"));
    });
}

/// jsonb in binary: the version byte, then JSON text.
struct RawJsonb(String);

impl<'a> tokio_postgres::types::FromSql<'a> for RawJsonb {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match raw.split_first() {
            Some((1, json)) => Ok(RawJsonb(String::from_utf8(json.to_vec())?)),
            _ => Err("not jsonb version 1".into()),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }
}

#[test]
fn copy_out_is_masked_in_text_csv_and_binary() {
    let (gw, token) = masked_gateway("mask_copy");
    let conn = gw.conninfo("mask_copy", "erin", &token);
    let (ok, out, err) = gw.psql(&conn, &["-c", "COPY users (id, email, notes) TO STDOUT"]);
    assert!(ok, "{err}");
    let first = out.lines().next().unwrap();
    assert_eq!(first, "1\t[redacted]\tcall [redacted] about [redacted]");
    assert!(out.contains("3\t[redacted]\t\\N"), "{out}");
    let (ok, out, err) = gw.psql(
        &conn,
        &["-c", "COPY (SELECT email AS e, card, notes FROM users ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "e,card,notes");
    assert_eq!(
        lines[1],
        "[redacted],**** **** **** 1111,call [redacted] about [redacted]"
    );
    // A whole table, binary: no clear value in the bytes.
    runtime().block_on(async {
        let (client, conn) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
        tokio::spawn(conn);
        let stream = client
            .copy_out("COPY users TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        pin_mut!(stream);
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("PGCOPY"));
        assert!(text.contains("[redacted]"));
        for secret in ["alice@example.com", "123-45-6789", "1111 1111 1111"] {
            assert!(!text.contains(secret), "{secret} in binary COPY output");
        }
    });
}

#[test]
fn error_details_do_not_echo_masked_values() {
    let (gw, token) = masked_gateway("mask_errors");
    let (ok, _, err) = gw.psql(
        &gw.conninfo("mask_errors", "erin", &token),
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "INSERT INTO users(id, email) VALUES (9, 'alice@example.com')",
        ],
    );
    assert!(!ok);
    assert!(err.contains("23505"), "{err}");
    assert!(err.contains("Key ([redacted]) already exists"), "{err}");
    assert!(!err.contains("alice@example.com"), "{err}");
    // Values no detector knows, quoted back by errors and notices of statements that read
    // masked columns: a cast error, a check failure, a notice printing them.
    let (_, out, err) = gw.psql_script(
        &gw.conninfo("mask_errors", "erin", &token),
        &["-v", "VERBOSITY=verbose"],
        r#"
SELECT name::int FROM users WHERE id = 1;
UPDATE users SET id = NULL WHERE id = 2;
DO $$ DECLARE r record; BEGIN FOR r IN SELECT name, card FROM users LOOP RAISE NOTICE 'n=% c=%', r.name, r.card; END LOOP; END $$;
LISTEN ch;
SELECT pg_notify('ch', name) FROM users WHERE id = 2;
"#,
    );
    let all = format!("{out}\n{err}");
    assert!(
        all.contains("invalid input syntax for type integer: \"[redacted]\""),
        "{all}"
    );
    assert!(all.contains("23502"), "{all}");
    for secret in ["Alice", "Bob", "4111 1111", "5500 0000"] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    gw.wait_sessions_closed();
    // The statement is on record as written; the server's error that echoed the value is not.
    let statements = gw.all_statements();
    let error = &statements[0]["error"];
    assert_eq!(error["code"], "23505");
    assert!(!error.to_string().contains("alice@example.com"), "{error}");
}

#[test]
fn a_huge_masked_result_streams_in_bounded_memory() {
    pg().create_db("mask_large");
    let gw = Gateway::start_with("mask_large", "", MASKING);
    let token = gw.user_token("erin");
    let baseline = gw.peak_rss_kib();
    let (rows, masked) = runtime().block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&gw.conninfo("mask_large", "erin", &token), NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        let stream = client
            .query_raw(
                "SELECT g, 'user' || g || '@example.com', repeat('x', 60) FROM generate_series(1, 2000000) g",
                std::iter::empty::<i32>(),
            )
            .await
            .unwrap();
        pin_mut!(stream);
        let (mut rows, mut masked) = (0u64, 0u64);
        while let Some(row) = stream.next().await {
            let row = row.unwrap();
            if row.get::<_, &str>(1) == "[redacted]" {
                masked += 1;
            }
            rows += 1;
        }
        (rows, masked)
    });
    assert_eq!(rows, 2_000_000);
    assert_eq!(masked, 2_000_000);
    let peak = gw.peak_rss_kib();
    assert!(
        peak < baseline + 64 * 1024,
        "gateway peak RSS grew from {baseline} KiB to {peak} KiB"
    );
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let counts = statements[0]["masked"].as_array().unwrap();
    assert!(counts
        .iter()
        .any(|m| m["detector"] == "email" && m["values"] == 2_000_000));
}

#[test]
fn cursors_returning_clauses_and_notifications_are_masked() {
    let (gw, token) = masked_gateway("mask_more");
    let (ok, out, err) = gw.psql_script(
        &gw.conninfo("mask_more", "erin", &token),
        &[],
        r#"
BEGIN;
DECLARE c CURSOR FOR SELECT id, email FROM users ORDER BY id;
FETCH 1 FROM c;
CLOSE c;
UPDATE users SET age = age + 1 WHERE id = 2 RETURNING email, age;
ROLLBACK;
LISTEN ch;
NOTIFY ch, 'write to carol@example.com';
"#,
    );
    assert!(ok, "{err}");
    assert!(out.contains("1|[redacted]"), "{out}");
    assert!(out.contains("[redacted]|42"), "{out}");
    // The session's last statement read masked columns: the payload is masked whole.
    assert!(out.contains("payload \"[redacted]\""), "{out}");
    for secret in ["alice@example.com", "bob@example.org", "carol@example.com"] {
        assert!(!out.contains(secret), "{secret}: {out}");
    }
}

/// Ways out found by a red-team pass; each must stay closed.
#[test]
fn computed_values_encodings_and_side_channels_stay_masked() {
    let (gw, token) = masked_gateway("mask_redteam");
    pg().psql_admin(
        "mask_redteam",
        "CREATE SCHEMA hr2; CREATE TABLE hr2.users(salary int, ssn text, email text);
         INSERT INTO hr2.users VALUES (1, '321-54-9876', 'zed@example.com');",
    );
    let conn = gw.conninfo("mask_redteam", "erin", &token);
    let (ok, out, err) = gw.psql_script(
        &conn,
        &["-v", "VERBOSITY=verbose"],
        r#"
SELECT convert_to(email, 'UTF8'), ascii(substr(email, 1, 1)), replace(ssn, '-', '')::bigint FROM users WHERE id = 1;
PREPARE p AS SELECT translate(ssn, '-', '/') FROM users WHERE id = 1;
EXECUTE p;
BEGIN;
DECLARE c CURSOR FOR SELECT replace(email, '@', ' AT ') FROM users WHERE id = 1;
FETCH ALL FROM c;
COMMIT;
COPY users (id, email, ssn) TO STDOUT (FORMAT csv, HEADER 'false');
SET search_path = hr2, public;
COPY users TO STDOUT;
RESET search_path;
LISTEN ch;
SELECT count(pg_notify('ch', g || ' ' || email)) FROM users, generate_series(1, 3000) g WHERE id = 1;
DO $$ BEGIN RAISE NOTICE 'n' USING COLUMN = (SELECT string_agg(email, ';') FROM users); END $$;
SET client_encoding = 'LATIN1';
SELECT (chr(233) || ' ' || email)::int FROM users WHERE id = 1;
"#,
    );
    let all = format!("{out}\n{err}");
    for secret in [
        "alice@example.com",
        "bob@example.org",
        "123-45-6789",
        "123/45/6789",
        "123456789",
        "alice AT example.com",
        "321-54-9876",
        "zed@example.com",
        "\\x616c696365",
    ] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    assert!(!ok || err.contains("invalid input syntax"), "{err}");
    // The notifications did arrive, masked.
    assert!(out.contains("Asynchronous notification \"ch\""), "{out}");
}

/// SQL that redefines a name the protocol defined (`DEALLOCATE` + `PREPARE`, `CLOSE` +
/// `DECLARE`) makes the gateway forget what it knew of it: running it by name is recorded
/// as unknown, and its computed columns are masked as if it named every masked column.
#[test]
fn names_redefined_with_sql_are_not_run_under_their_old_text() {
    use crate::bad_input::{error_code, logged_in, read_messages};
    use crate::evasion::{bind, execute, parse, query, sync};
    use std::io::Write;
    let (gw, token) = masked_gateway("mask_redefine");
    let mut s = logged_in(&gw, "mask_redefine", "erin", &token);
    let mut out = bytes::BytesMut::new();
    parse(&mut out, "s", "SELECT 'hello'::text AS one");
    sync(&mut out);
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    // In one write, and in the next: both are forgotten at once.
    let mut out = bytes::BytesMut::new();
    query(
        &mut out,
        "DEALLOCATE s; PREPARE s AS SELECT lower(email) AS one FROM users",
    );
    bind(&mut out, "", "s");
    execute(&mut out, "");
    sync(&mut out);
    query(&mut out, "BEGIN");
    parse(&mut out, "", "SELECT 'benign'::text AS x");
    bind(&mut out, "cur", "");
    sync(&mut out);
    query(
        &mut out,
        "CLOSE cur; DECLARE cur CURSOR FOR SELECT lower(email) AS x FROM users",
    );
    execute(&mut out, "cur");
    sync(&mut out);
    s.write_all(&out).unwrap();
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.extend(read_messages(&mut s, b'Z'));
    }
    assert!(error_code(&answers).is_none(), "{:?}", error_code(&answers));
    let rows: Vec<String> = answers
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(
        rows.iter().all(|r| !r.contains("@example")),
        "an email came through: {rows:?}"
    );
    drop(s);
    gw.wait_sessions_closed();
    let texts = gw.statement_texts();
    let has = |text: &str| texts.iter().any(|t| t == text);
    for stale in ["SELECT 'hello'::text AS one", "SELECT 'benign'::text AS x"] {
        assert!(!has(stale), "{texts:?}");
    }
    assert!(has("<unknown prepared statement \"s\">"), "{texts:?}");
    assert!(has("FETCH ALL FROM \"cur\""), "{texts:?}");
}
