//! Who may connect: tokens, expiry, revocation, allow lists, upstream auth methods.

use crate::support::{pg, Gateway};

#[test]
fn tokens_wrong_expired_revoked_and_foreign_are_refused_and_audited() {
    pg().create_db("auth_db");
    let gw = Gateway::start("auth_db", "");
    let token = gw.user_token("frank");
    let good = gw.conninfo("auth_db", "frank", &token);
    assert!(gw.psql(&good, &["-c", "SELECT 1"]).0);

    let (ok, _, err) = gw.psql(
        &gw.conninfo("auth_db", "frank", "slu_notatoken"),
        &["-c", "SELECT 1"],
    );
    assert!(
        !ok && err.contains("password authentication failed for user \"frank\""),
        "{err}"
    );

    // A valid token presented under another user name.
    let other = gw.user_token("grace");
    let (ok, _, err) = gw.psql(
        &gw.conninfo("auth_db", "frank", &other),
        &["-c", "SELECT 1"],
    );
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );

    // Expired.
    let short = gw
        .cli_ok(&["tokens", "issue", "frank", "--ttl", "1s"])
        .trim()
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (ok, _, err) = gw.psql(
        &gw.conninfo("auth_db", "frank", &short),
        &["-c", "SELECT 1"],
    );
    assert!(!ok && err.contains("expired"), "{err}");

    // Revoked, while the gateway runs.
    let list = gw.cli_json(&["tokens", "list", "--user", "frank", "--json"]);
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "active")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.cli_ok(&["tokens", "revoke", &id]);
    let (ok, _, err) = gw.psql(&good, &["-c", "SELECT 1"]);
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );

    // Unknown connection (after a valid token, so names are not revealed to strangers).
    let (ok, _, err) = gw.psql(&gw.conninfo("nope", "grace", &other), &["-c", "SELECT 1"]);
    assert!(
        !ok && err.contains("connection \"nope\" does not exist"),
        "{err}"
    );

    // Every failure is in the audit log, and no token appears anywhere.
    let records: Vec<serde_json::Value> = sluice_audit::read_all(&gw.data_dir().join("audit"))
        .unwrap()
        .map(|r| serde_json::to_value(r.unwrap().event).unwrap())
        .collect();
    let failures = records
        .iter()
        .filter(|e| e["kind"] == "auth_failure")
        .count();
    assert!(failures >= 5, "{failures} auth failures recorded");
    let written = gw.everything_written();
    for secret in [&token, &other, &short] {
        let secret_part = &secret[secret.len() - 20..];
        assert!(
            !written.contains(secret_part),
            "a token leaked into the logs or data"
        );
    }
    assert!(
        !written.contains(crate::support::PG_PASSWORD),
        "the target password leaked"
    );
}

#[test]
fn allow_lists_and_upstream_auth_methods() {
    pg().create_db("auth_methods");
    let target = pg().port;
    let extra = format!(
        "  - {{ name: via-md5, kind: postgres, address: 127.0.0.1:{target}, database: auth_methods, user: md5user, password: md5-pass-1, tls: disable }}\n\
         \x20 - {{ name: via-clear, kind: postgres, address: 127.0.0.1:{target}, database: auth_methods, user: clearuser, password: clear-pass-1, tls: disable }}\n\
         \x20 - {{ name: via-tls, kind: postgres, address: 127.0.0.1:{target}, database: auth_methods, user: tlsonly, password: tls-pass-1, tls: require }}\n\
         \x20 - {{ name: tls-refused, kind: postgres, address: 127.0.0.1:{target}, database: auth_methods, user: tlsonly, password: tls-pass-1, tls: disable }}\n\
         \x20 - {{ name: bad-password, kind: postgres, address: 127.0.0.1:{target}, database: auth_methods, user: postgres, password: wrong-Target-Pass }}\n\
         \x20 - {{ name: md5-unverified, kind: postgres, address: 127.0.0.1:{target}, database: auth_methods, user: md5user, password: md5-pass-1, tls: prefer }}\n\
         \x20 - {{ name: no-secret, kind: postgres, address: 127.0.0.1:{target}, database: auth_methods, user: postgres, password: env:SLUICE_TEST_SURELY_UNSET_VAR }}\n\
         \x20 - {{ name: down, kind: postgres, address: 127.0.0.1:1, database: x, user: postgres, connect_timeout: 2s }}\n\
         \x20 - {{ name: no-database, kind: postgres, address: 127.0.0.1:{target}, database: surely_no_such_db, user: postgres, password: env:SLUICE_TEST_TARGET_PASSWORD }}\n\
         \x20 - {{ name: admins-only, kind: postgres, address: 127.0.0.1:{target}, database: auth_methods, user: postgres, password: env:SLUICE_TEST_TARGET_PASSWORD, allow: [group:dba] }}\n"
    );
    let gw = Gateway::start("auth_methods", &extra);
    let token = gw.user_token("heidi");
    let run = |conn: &str| {
        gw.psql(
            &gw.conninfo(conn, "heidi", &token),
            &[
                "-c",
                "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            ],
        )
    };

    let (ok, out, err) = run("via-md5");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "md5user|f");
    let (ok, out, err) = run("via-clear");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "clearuser|f");
    let (ok, out, err) = run("via-tls");
    assert!(ok, "{err}");
    // PostgreSQL offers SCRAM-SHA-256-PLUS over TLS; the gateway binds its login to the
    // TLS session, and the server accepting it proves the binding data is right.
    assert!(gw
        .log()
        .contains("SCRAM with tls-server-end-point channel binding"));
    assert_eq!(out.trim(), "tlsonly|t", "TLS to the target");
    let (ok, out, err) = run("auth_methods");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "postgres|t", "SCRAM, TLS preferred by default");

    let (ok, _, err) = run("tls-refused");
    assert!(
        !ok && err.contains("cannot open connection \"tls-refused\""),
        "{err}"
    );
    let (ok, _, err) = run("bad-password");
    assert!(
        !ok && err.contains("the target refused the gateway's credentials (SQLSTATE 28P01)"),
        "{err}"
    );
    assert!(!err.contains("wrong-Target-Pass"));
    // Any other refusal says what it was, not "credentials".
    let (ok, _, err) = run("no-database");
    assert!(
        !ok && err.contains(
            "the target refused the connection: database \"surely_no_such_db\" does not exist (SQLSTATE 3D000)"
        ),
        "{err}"
    );
    // MD5 would hand a replayable hash to whoever answers; only to a verified server or
    // over a connection explicitly configured as plain.
    let (ok, _, err) = run("md5-unverified");
    assert!(
        !ok && err.contains("cannot open connection \"md5-unverified\""),
        "{err}"
    );
    assert!(gw
        .log()
        .contains("asked for a MD5 password over a connection whose server is not verified"));
    // The secret is resolved when the target asks for it: unavailable, it is a clear
    // failure in the log, and the client is not told the variable's name.
    let (ok, _, err) = run("no-secret");
    assert!(
        !ok && err.contains("cannot open connection \"no-secret\""),
        "{err}"
    );
    assert!(!err.contains("SLUICE_TEST_SURELY_UNSET_VAR"), "{err}");
    assert!(gw
        .log()
        .contains("environment variable SLUICE_TEST_SURELY_UNSET_VAR is not set"));
    let (ok, _, err) = run("down");
    assert!(
        !ok && err.contains("cannot open connection \"down\": the target is unreachable"),
        "{err}"
    );
    assert!(
        !err.contains("127.0.0.1:1"),
        "internal addresses stay in the log: {err}"
    );
    let (ok, _, err) = run("admins-only");
    assert!(
        !ok && err.contains("may not use connection \"admins-only\""),
        "{err}"
    );

    // The gateway kept serving through all of that.
    assert!(run("auth_methods").0);
    let written = gw.everything_written();
    for secret in [
        "md5-pass-1",
        "clear-pass-1",
        "tls-pass-1",
        "wrong-Target-Pass",
    ] {
        assert!(!written.contains(secret), "{secret} leaked");
    }
}

fn http_get(port: u16, path: &str, bearer: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    (status, response)
}

#[test]
fn api_routes_need_a_token_and_metrics_count_traffic() {
    pg().create_db("api_db");
    let gw = Gateway::start("api_db", "");
    let token = gw.user_token("olivia");
    assert!(
        gw.psql(
            &gw.conninfo("api_db", "olivia", &token),
            &["-c", "SELECT 1; SELECT 2"]
        )
        .0
    );
    let bad = format!("{} sslmode=disable", gw.conninfo("api_db", "olivia", "bad"));
    assert!(!gw.psql(&bad, &["-c", "SELECT 1"]).0);

    assert_eq!(http_get(gw.api_port, "/healthz", None).0, 200);
    // Metrics are for auditors and admins.
    let (status, body) = http_get(gw.api_port, "/metrics", Some(&token));
    assert_eq!(status, 403, "{body}");
    gw.cli_ok(&["users", "set-role", "olivia", "admin"]);
    let (status, body) = http_get(gw.api_port, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        http_get(gw.api_port, "/metrics", Some("slu_wrong_token")).0,
        401
    );
    let (status, body) = http_get(gw.api_port, "/metrics", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sluice_statements_allowed_total 2"), "{body}");
    assert!(body.contains("sluice_auth_failures_total 1"), "{body}");
    assert!(
        body.contains("sluice_sessions_total{protocol=\"postgres\"} 1"),
        "{body}"
    );
    let (status, body) = http_get(gw.api_port, "/api/v1/sessions", Some(&token));
    assert_eq!(status, 200);
    assert!(body.contains("\"user\":\"olivia\""), "{body}");
    assert_eq!(http_get(gw.api_port, "/api/v1/sessions", None).0, 401);
}

/// A token revoked, or deleted with its user, ends the sessions it opened within seconds;
/// another token of the same user keeps its session.
#[test]
fn revoking_a_token_or_removing_its_user_ends_its_open_sessions() {
    pg().create_db("auth_revoke");
    let gw = std::sync::Arc::new(Gateway::start("auth_revoke", ""));
    let revoked = gw.user_token("frank");
    let kept = gw.cli_ok(&["tokens", "issue", "frank"]).trim().to_owned();
    let removed = gw.user_token("grace");
    let script = "select 'inside';\n\\! sleep 6\nselect 'after';\n";
    let sessions: Vec<_> = [("frank", &revoked), ("frank", &kept), ("grace", &removed)]
        .into_iter()
        .map(|(user, token)| {
            let (gw, conninfo) = (gw.clone(), gw.conninfo("auth_revoke", user, token));
            std::thread::spawn(move || gw.psql_script(&conninfo, &[], script))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(2000));
    // The token's id is the part between the prefix and the secret.
    let id = revoked.split('_').nth(1).unwrap();
    gw.cli_ok(&["tokens", "revoke", id]);
    gw.cli_ok(&["users", "remove", "grace"]);
    let results: Vec<_> = sessions.into_iter().map(|s| s.join().unwrap()).collect();
    for (i, (_, out, err)) in results.iter().enumerate() {
        assert!(out.contains("inside"), "session {i}: {out}\n{err}");
    }
    for i in [0, 2] {
        let (_, out, err) = &results[i];
        assert!(!out.contains("after"), "session {i} went on: {out}");
        assert!(
            err.contains("this session signed in with") && err.contains("was revoked"),
            "session {i}: {err}"
        );
    }
    let (ok, out, err) = &results[1];
    assert!(*ok && out.contains("after"), "{out}\n{err}");
    gw.wait_sessions_closed();
    let sessions = gw.sessions();
    let ended_by_revocation = sessions
        .iter()
        .filter(|s| {
            s["end_reason"]
                .as_str()
                .is_some_and(|r| r.contains("was revoked"))
        })
        .count();
    assert_eq!(ended_by_revocation, 2, "{sessions:#?}");
    assert!(gw.verify().status.success());
}
