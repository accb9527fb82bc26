//! psql and pgbench through the gateway, and what the audit log says about them.

use std::process::Command;

use crate::support::{pg, Gateway};

#[test]
fn psql_statements_are_proxied_and_each_is_audited() {
    pg().create_db("psql_basic");
    let gw = Gateway::start("psql_basic", "");
    let token = gw.user_token("alice");
    let conn = gw.conninfo("psql_basic", "alice", &token);

    let (ok, out, err) = gw.psql(&conn, &["-c", "CREATE TABLE t(id int primary key, v text)"]);
    assert!(ok, "{err}");
    // One Query message with three statements; the second fails and aborts the third.
    let (ok, out2, err2) = gw.psql(&conn, &["-c", "INSERT INTO t VALUES (1, 'a'); INSERT INTO t VALUES (1, 'dup'); INSERT INTO t VALUES (3, 'c')"]);
    assert!(!ok);
    assert!(err2.contains("duplicate key"), "{err2}");
    let _ = (out, out2);
    // Transactions, and a result set.
    let (ok, out, err) = gw.psql(
        &conn,
        &[
            "-c",
            "BEGIN; INSERT INTO t VALUES (2, 'b'); COMMIT;",
            "-c",
            "SELECT id, v FROM t ORDER BY id",
        ],
    );
    assert!(ok, "{err}");
    // One Query message is one implicit transaction: the failed string rolled back entirely.
    assert_eq!(out.trim(), "2|b");

    gw.wait_sessions_closed();
    let statements: Vec<_> = gw.all_statements();
    let texts: Vec<&str> = statements
        .iter()
        .map(|s| s["statement"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "CREATE TABLE t(id int primary key, v text)",
            "INSERT INTO t VALUES (1, 'a')",
            "INSERT INTO t VALUES (1, 'dup')",
            "INSERT INTO t VALUES (3, 'c')",
            "BEGIN",
            "INSERT INTO t VALUES (2, 'b')",
            "COMMIT",
            "SELECT id, v FROM t ORDER BY id",
        ]
    );
    let by_text = |t: &str| statements.iter().find(|s| s["statement"] == t).unwrap();
    assert_eq!(by_text("INSERT INTO t VALUES (1, 'a')")["status"], "ok");
    let dup = by_text("INSERT INTO t VALUES (1, 'dup')");
    assert_eq!(dup["status"], "error");
    assert_eq!(dup["error"]["code"], "23505");
    assert_eq!(
        by_text("INSERT INTO t VALUES (3, 'c')")["status"],
        "not_executed"
    );
    let select = by_text("SELECT id, v FROM t ORDER BY id");
    assert_eq!(select["rows"], 1);
    assert_eq!(select["tag"], "SELECT 1");
    assert!(select["duration_ms"].as_f64().unwrap() >= 0.0);
    for s in &statements {
        assert!(s["time"].is_string() && s["params"].is_array(), "{s}");
    }

    // Session records: who, from where, when.
    let sessions = gw.sessions();
    assert_eq!(sessions.len(), 3);
    for s in &sessions {
        assert_eq!(s["user"], "alice");
        assert_eq!(s["connection"], "psql_basic");
        assert!(s["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(s["start"].is_string() && s["end"].is_string());
    }
    let detail = gw.session(sessions[0]["id"].as_str().unwrap());
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"session_open"));
    assert_eq!(kinds.last(), Some(&"session_close"));
    for e in detail["events"].as_array().unwrap() {
        for key in [
            "time",
            "kind",
            "statement",
            "params",
            "rows",
            "duration_ms",
            "error",
        ] {
            assert!(e.get(key).is_some(), "{key} missing in {e}");
        }
    }

    // Human-readable output exists too.
    let text = gw.cli_ok(&["sessions", "show", sessions[0]["id"].as_str().unwrap()]);
    assert!(text.contains("SELECT id, v FROM t ORDER BY id"), "{text}");
    assert!(gw.verify().status.success());
}

#[test]
fn psql_over_tls_copy_both_ways_and_notices() {
    pg().create_db("psql_copy");
    let gw = Gateway::start("psql_copy", "");
    let token = gw.user_token("bob");
    let conn = format!(
        "{} sslmode=require",
        gw.conninfo("psql_copy", "bob", &token)
    );
    let csv = gw.dir.path().join("in.csv");
    let data: String = (1..=5000).map(|i| format!("{i},name {i}\n")).collect();
    std::fs::write(&csv, &data).unwrap();
    let out_csv = gw.dir.path().join("out.csv");
    let script = format!(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n\
         CREATE TABLE people(id int, name text);\n\
         \\copy people FROM '{}' WITH (FORMAT csv)\n\
         \\copy (SELECT * FROM people ORDER BY id) TO '{}' WITH (FORMAT csv)\n\
         DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$;\n\
         SELECT count(*) FROM people;\n",
        csv.display(),
        out_csv.display()
    );
    let (ok, out, err) = gw.psql(&conn, &["-c", "SHOW ssl"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "on");
    let (ok, stdout, stderr) = gw.psql_script(&conn, &["-v", "ON_ERROR_STOP=1"], &script);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("hello from the server"),
        "notice must reach the client: {stderr}"
    );
    assert!(stdout.contains("5000"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&out_csv).unwrap(), data);

    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let copy_in = statements
        .iter()
        .find(|s| s["statement"].as_str().unwrap().contains("FROM STDIN"))
        .expect("COPY FROM audited");
    assert_eq!(copy_in["rows"], 5000);
    let copy_out = statements
        .iter()
        .find(|s| s["statement"].as_str().unwrap().contains("TO STDOUT"))
        .expect("COPY TO audited");
    assert_eq!(copy_out["rows"], 5000);
    // The client connected with TLS and that is on record.
    let detail = gw.session(gw.sessions()[0]["id"].as_str().unwrap());
    assert_eq!(detail["events"][0]["tls"], true);
}

/// pgbench in all three query modes through the gateway; every transaction's
/// statements are on record.
#[test]
fn pgbench_simple_extended_prepared() {
    pg().create_db("bench_it");
    let init = Command::new("pgbench")
        .env("PGPASSWORD", crate::support::PG_PASSWORD)
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &pg().port.to_string(),
            "bench_it",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let gw = Gateway::start("bench_it", "");
    let token = gw.user_token("bench");
    for mode in ["simple", "extended", "prepared"] {
        let out = Command::new("pgbench")
            .env("PGPASSWORD", &token)
            .args(["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "50"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &gw.pg_port.to_string(),
                "-U",
                "bench",
                "bench_it",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench -M {mode}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 200/200"),
            "{stdout}"
        );
    }
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    // TPC-B-like: BEGIN, 3 UPDATEs, SELECT, INSERT, END per transaction; 600 transactions.
    let updates = statements
        .iter()
        .filter(|s| {
            s["statement"]
                .as_str()
                .unwrap()
                .starts_with("UPDATE pgbench_accounts")
        })
        .count();
    assert_eq!(updates, 600);
    let history = statements
        .iter()
        .filter(|s| {
            s["statement"]
                .as_str()
                .unwrap()
                .starts_with("INSERT INTO pgbench_history")
        })
        .count();
    assert_eq!(history, 600);
    assert!(
        statements.iter().all(|s| s["status"] == "ok"),
        "every statement succeeded"
    );
    // Extended and prepared modes carry their values as parameters, joined to the SQL.
    let with_params = statements
        .iter()
        .filter(|s| s["statement"].as_str().unwrap().contains("$1"))
        .count();
    assert_eq!(with_params, 2 * 200 * 5);
    let sample = statements
        .iter()
        .find(|s| {
            s["statement"]
                .as_str()
                .unwrap()
                .starts_with("UPDATE pgbench_accounts SET abalance = abalance + $1")
        })
        .unwrap();
    assert_eq!(sample["params"].as_array().unwrap().len(), 2);
    let rows: i64 = pg()
        .psql_admin("bench_it", "SELECT count(*) FROM pgbench_history")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rows, 600);
    assert!(gw.verify().status.success());
}

/// psycopg 3: binary results, pipeline mode with an error, executemany, prepared
/// statements, server-side cursors, COPY both ways.
/// Masking rules that cover every session but match nothing in these tests' data: every
/// result is planned and scanned, every Execute described by the gateway — and the client
/// must see exactly what it would see without them.
const MASKING_WITHOUT_HITS: &str =
    "masking:\n  - { columns: [\"*.no_such_table.x\"], detectors: [email, us_ssn, credit_card] }";

#[test]
fn psycopg3_through_the_gateway() {
    psycopg3_check("psycopg_db", "");
}

#[test]
fn psycopg3_through_a_masked_session() {
    psycopg3_check("psycopg_masked", MASKING_WITHOUT_HITS);
}

fn psycopg3_check(db: &str, extra_yaml: &str) {
    pg().create_db(db);
    let gw = Gateway::start_with(db, "", extra_yaml);
    let token = gw.user_token("pat");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/psycopg_check.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .env("SLUICE_DSN", gw.conninfo(db, "pat", &token))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        seen["binary_row"],
        serde_json::json!([1, "rex", 12.5, "2020-01-02"])
    );
    assert_eq!(seen["pipeline_error"], "23505");
    assert_eq!(
        seen["count_after_pipeline"], 51,
        "the failed pipeline rolled back"
    );
    assert_eq!(seen["server_side_rows"], 51);
    assert_eq!(seen["copy_out_rows"], 51);
    assert_eq!(seen["final_count"], 551);

    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let inserts = statements
        .iter()
        .filter(|s| {
            s["statement"] == "INSERT INTO pets VALUES ($1, $2, $3, $4)" && s["status"] == "ok"
        })
        .count();
    assert_eq!(
        inserts, 51,
        "one record per executed row, joined with its parameters"
    );
    let dup = statements
        .iter()
        .find(|s| s["statement"] == "INSERT INTO pets VALUES (1, 'duplicate', 1, '2020-01-01')")
        .unwrap();
    assert_eq!(dup["error"]["code"], "23505");
    let after = statements
        .iter()
        .find(|s| s["statement"] == "INSERT INTO pets VALUES (101, 'b', 1, '2020-01-01')")
        .unwrap();
    assert_eq!(after["status"], "not_executed");
    assert!(statements.iter().any(|s| s["statement"]
        .as_str()
        .unwrap()
        .starts_with("FETCH FORWARD 7")));
    assert!(gw.verify().status.success());
}

/// PostgreSQL JDBC: named server-side statements, binary transfer, batches, a fetchSize
/// cursor (PortalSuspended), and an error inside a batch.
#[test]
fn jdbc_through_the_gateway() {
    jdbc_check("jdbc_db", "");
}

#[test]
fn jdbc_through_a_masked_session() {
    jdbc_check("jdbc_masked", MASKING_WITHOUT_HITS);
}

fn jdbc_check(db: &str, extra_yaml: &str) {
    let jar = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(jar).exists(),
        "install libpostgresql-jdbc-java (scripts/test does)"
    );
    pg().create_db(db);
    let gw = Gateway::start_with(db, "", extra_yaml);
    let token = gw.user_token("jay");
    let classes = gw.dir.path().join("classes");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/JdbcCheck.java");
    let javac = Command::new("javac")
        .args(["-cp", jar, "-d"])
        .arg(&classes)
        .arg(source)
        .output()
        .unwrap();
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );
    let url = format!("jdbc:postgresql://127.0.0.1:{}/{db}", gw.pg_port);
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{jar}:{}", classes.display()))
        .args(["JdbcCheck", &url, "jay", &token])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["batch=200", "cursor=200", "batch_error=23505", "count=200"]
    );

    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let inserts = statements
        .iter()
        .filter(|s| {
            s["statement"] == "INSERT INTO orders VALUES ($1, $2, $3)" && s["status"] == "ok"
        })
        .count();
    assert_eq!(inserts, 200);
    let fetches: Vec<_> = statements
        .iter()
        .filter(|s| s["statement"] == "SELECT id FROM orders ORDER BY id")
        .collect();
    assert!(
        fetches.len() >= 7,
        "a fetchSize cursor runs one Execute per 30 rows"
    );
    let rows: u64 = fetches.iter().map(|s| s["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 200);
    let dup = statements
        .iter()
        .find(|s| s["error"]["code"] == "23505")
        .unwrap();
    assert_eq!(dup["params"][0], "1");
    assert!(gw.verify().status.success());
}

/// pg_dump through the gateway, restored through the gateway into another connection
/// with psql; clients verify the gateway's generated certificate (verify-full).
#[test]
fn pg_dump_and_restore_through_the_gateway_with_verified_tls() {
    pg().create_db("dump_src");
    pg().create_db("dump_dst");
    pg().psql_admin(
        "dump_src",
        "CREATE TABLE a(id int primary key, t text); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CREATE TABLE b(id int references a, n numeric); INSERT INTO b SELECT g, g * 1.5 FROM generate_series(1, 5000) g;
         CREATE VIEW v AS SELECT a.t, b.n FROM a JOIN b USING (id);",
    );
    let extra = format!(
        "  - {{ name: dump_dst, kind: postgres, address: 127.0.0.1:{}, database: dump_dst, user: postgres, password: env:SLUICE_TEST_TARGET_PASSWORD }}\n",
        pg().port
    );
    let gw = Gateway::start("dump_src", &extra);
    let token = gw.user_token("dora");
    let ca = gw.data_dir().join("tls/server.crt");
    let verified = |db: &str| {
        format!(
            "{} sslmode=verify-full sslrootcert={}",
            gw.conninfo(db, "dora", &token)
                .replace("host=127.0.0.1", "host=localhost"),
            ca.display()
        )
    };
    let dump = Command::new("pg_dump")
        .args(["--no-owner", "--no-privileges", "-d"])
        .arg(verified("dump_src"))
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let script = String::from_utf8(dump.stdout).unwrap();
    assert!(script.contains("COPY public.a"));
    let (ok, _, err) = gw.psql_script(
        &verified("dump_dst"),
        &["-v", "ON_ERROR_STOP=1", "-q"],
        &script,
    );
    assert!(ok, "{err}");
    let count = pg().psql_admin("dump_dst", "SELECT (SELECT count(*) FROM a) || '/' || (SELECT count(*) FROM b) || '/' || (SELECT count(*) FROM v)");
    assert_eq!(count.trim(), "20000/5000/5000");
    gw.wait_sessions_closed();
    let statements = gw.all_statements();
    let copies: Vec<_> = statements
        .iter()
        .filter(|s| {
            s["statement"]
                .as_str()
                .unwrap()
                .starts_with("COPY public.a")
        })
        .collect();
    assert_eq!(copies.len(), 2, "dumped and restored");
    assert!(copies.iter().all(|c| c["rows"] == 20000));
    assert!(gw.verify().status.success());
}
