//! The audit log's promises: nothing executed goes unrecorded (even under kill -9),
//! tampering is detected, and secrets never reach it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::support::{pg, Gateway};

/// Kill the gateway with SIGKILL in the middle of an INSERT load: every row the target
/// committed must have its INSERT in the audit log.
#[test]
fn kill_9_under_insert_load_loses_no_executed_statement() {
    pg().create_db("kill_db");
    pg().psql_admin(
        "kill_db",
        "CREATE TABLE load(id int8 primary key, via text)",
    );
    let mut gw = Gateway::start("kill_db", "");
    let token = gw.user_token("ivan");
    let conninfo = gw.conninfo("kill_db", "ivan", &token);
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for worker in 0..8i64 {
        let conninfo = conninfo.clone();
        let stop = stop.clone();
        tasks.push(rt.spawn(async move {
            let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let id = worker * 10_000_000 + i;
                // Half the workers use the simple protocol (value in the text), half the
                // extended protocol (value as a bind parameter).
                let r = if worker % 2 == 0 {
                    client
                        .simple_query(&format!("INSERT INTO load VALUES ({id}, 'simple')"))
                        .await
                        .map(|_| ())
                } else {
                    client
                        .execute("INSERT INTO load VALUES ($1, 'extended')", &[&id])
                        .await
                        .map(|_| ())
                };
                if r.is_err() {
                    break; // the gateway is gone
                }
                i += 1;
            }
            i
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    gw.kill9();
    stop.store(true, Ordering::Relaxed);
    let acknowledged: i64 = rt.block_on(async {
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        n
    });
    assert!(acknowledged > 100, "the load ran ({acknowledged} inserts)");

    // The log is intact after the crash.
    let verify = gw.verify();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let mut audited = HashSet::new();
    for record in sluice_audit::read_all(&gw.data_dir().join("audit")).unwrap() {
        if let sluice_audit::EventBody::Statement {
            statement,
            params,
            prepare: false,
            ..
        } = record.unwrap().event.body
        {
            if let Some(v) = statement
                .strip_prefix("INSERT INTO load VALUES (")
                .and_then(|r| r.strip_suffix(", 'simple')"))
            {
                audited.insert(v.parse::<i64>().unwrap());
            } else if statement == "INSERT INTO load VALUES ($1, 'extended')" {
                audited.insert(params[0].as_deref().unwrap().parse::<i64>().unwrap());
            }
        }
    }
    let in_table: Vec<i64> = pg()
        .psql_admin("kill_db", "SELECT id FROM load")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(in_table.len() as i64 >= acknowledged);
    let missing: Vec<_> = in_table.iter().filter(|id| !audited.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} rows have no audit record, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // The gateway comes back, continues the chain, and the log still verifies.
    gw.restart();
    let (ok, _, err) = gw.psql(&conninfo, &["-c", "SELECT count(*) FROM load"]);
    assert!(ok, "{err}");
    gw.wait_sessions_closed();
    assert!(gw.verify().status.success());
    let ended = gw
        .sessions()
        .iter()
        .filter(|s| s["end_reason"] == "gateway restarted")
        .count();
    assert_eq!(ended, 8, "sessions cut by the crash are closed at restart");
}

#[test]
fn verify_names_changed_dropped_and_reordered_events() {
    pg().create_db("tamper_db");
    let mut gw = Gateway::start("tamper_db", "");
    let token = gw.user_token("judy");
    let conn = gw.conninfo("tamper_db", "judy", &token);
    for i in 0..5 {
        assert!(gw.psql(&conn, &["-c", &format!("SELECT {i}")]).0);
    }
    gw.wait_sessions_closed();
    gw.stop();
    let out = gw.verify();
    assert!(out.status.success());
    let segment = gw.data_dir().join("audit/audit-000001.jsonl");
    let original = std::fs::read_to_string(&segment).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let target = lines
        .iter()
        .position(|l| l.contains("\"SELECT 2\""))
        .unwrap();
    let seq = target + 1;

    let check = |content: String, expect: &str| {
        std::fs::write(&segment, content).unwrap();
        let out = gw.verify();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(3), "{stdout}");
        assert!(stdout.contains(expect), "expected {expect:?} in {stdout}");
    };
    // Changed: an auditor-visible field edited.
    check(
        original.replace("\"SELECT 2\"", "\"SELECT 9\""),
        &format!("seq {seq}"),
    );
    // Dropped: a line removed.
    let mut dropped = lines.clone();
    dropped.remove(target);
    check(dropped.join("\n") + "\n", "dropped");
    // Reordered: two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(target, target + 1);
    check(swapped.join("\n") + "\n", "out of order");
    // The newest events removed: the chain alone is still valid, the gateway's anchor
    // (kept in the metadata store) is not reached.
    let truncated = lines[..lines.len() - 3].join("\n") + "\n";
    check(truncated, "dropped from the end");
    // JSON output for scripts.
    let out = gw.cli(&["audit", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    std::fs::write(&segment, original).unwrap();
    assert!(gw.verify().status.success());
}

#[test]
fn passwords_in_statements_are_redacted_before_anything_is_written() {
    pg().create_db("redact_db");
    let gw = Gateway::start("redact_db", "");
    let token = gw.user_token("ken");
    let conn = gw.conninfo("redact_db", "ken", &token);
    let (ok, _, err) = gw.psql(&conn, &["-c", "CREATE ROLE redact_probe LOGIN PASSWORD 'Sup3r-Secret-One'; ALTER ROLE redact_probe WITH ENCRYPTED PASSWORD 'Sup3r-Secret-Two'"]);
    assert!(ok, "{err}");
    // Through the extended protocol as well.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (client, c) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
        tokio::spawn(c);
        client
            .execute("ALTER USER redact_probe PASSWORD 'Sup3r-Secret-Three'", &[])
            .await
            .unwrap();
        client
            .batch_execute("DROP ROLE redact_probe")
            .await
            .unwrap();
    });
    gw.wait_sessions_closed();
    let written = gw.everything_written();
    for secret in ["Sup3r-Secret-One", "Sup3r-Secret-Two", "Sup3r-Secret-Three"] {
        assert!(
            !written.contains(secret),
            "{secret} reached the log or data directory"
        );
    }
    let statements = gw.all_statements();
    assert!(statements
        .iter()
        .any(|s| s["statement"] == "CREATE ROLE redact_probe LOGIN PASSWORD '***'"));
    assert!(statements
        .iter()
        .any(|s| s["statement"] == "ALTER USER redact_probe PASSWORD '***'"));
}

#[test]
fn stopping_the_gateway_tells_connected_clients_and_records_their_end() {
    use std::process::{Command, Stdio};
    pg().create_db("stop_notice");
    let mut gw = Gateway::start("stop_notice", "");
    let token = gw.user_token("eve");
    let mut psql = Command::new("psql")
        .args(["-X", "-A", "-t", "-f", "-"])
        .arg(gw.conninfo("stop_notice", "eve", &token))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = psql.stdin.take().unwrap();
        stdin
            .write_all(b"select 'in';\n\\! sleep 4\nselect 'after';\n")
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    gw.stop();
    let out = psql.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("terminating connection due to administrator command"),
        "{stderr}"
    );
    // Its end is on record before the gateway exits, and the log verifies.
    assert!(gw.verify().status.success());
    let sessions = gw.sessions();
    assert!(
        sessions.iter().all(|s| !s["end"].is_null()),
        "{sessions:#?}"
    );
}
