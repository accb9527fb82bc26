//! Review holds through the gateway: a statement parked inside a live psql or
//! tokio-postgres session until a reviewer decides through `sluice reviews`, and the `fail`
//! mode whose approval lets the same statement pass once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::support::{pg, sluice_bin, Gateway};

const POLICIES: &str = r#"policies:
  - name: deletes-need-review
    match: { statement: [delete] }
    action: review
    reviewers: [group:dba]
    timeout: 60s
  - name: inserts-time-out
    match: { statement: [insert] }
    action: review
    reviewers: [group:dba]
    timeout: 2s
  - name: updates-fail-fast
    match: { statement: [update] }
    action: review
    mode: fail
    reviewers: [user:bob]
    approval_window: 60s
"#;

struct Setup {
    gw: Gateway,
    db: &'static str,
    eve: String,
    bob: String,
    mallory: String,
}

fn setup(db: &'static str) -> Setup {
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE TABLE victim(id int); INSERT INTO victim VALUES (1), (2)",
    );
    let gw = Gateway::start_with(db, "", POLICIES);
    let eve = gw.user_token("eve");
    gw.cli_ok(&["users", "add", "bob", "--group", "dba"]);
    let bob = gw
        .cli_ok(&["tokens", "issue", "bob", "--ttl", "1h"])
        .trim()
        .to_owned();
    let mallory = gw.user_token("mallory");
    Setup {
        gw,
        db,
        eve,
        bob,
        mallory,
    }
}

impl Setup {
    /// `sluice reviews ARGS` as the holder of `token`.
    fn reviews(&self, token: &str, args: &[&str]) -> std::process::Output {
        self.gw.cli_as(token, &[&["reviews"], args].concat())
    }

    fn reviews_json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        self.gw.cli_as_json(token, &[&["reviews"], args].concat())
    }

    /// Waits for the one pending review and returns it.
    fn pending_review(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.reviews_json(&self.bob, &["list"]);
            if let Some(first) = list.as_array().and_then(|a| a.first()) {
                return first.clone();
            }
            assert!(Instant::now() < deadline, "no review was filed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn psql_bg(&self, sql: &str) -> std::process::Child {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "VERBOSITY=verbose", "-c", sql])
            .arg(self.gw.conninfo(self.db, "eve", &self.eve))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn rows(&self) -> String {
        pg().psql_admin(self.db, "SELECT count(*) FROM victim")
            .trim()
            .to_owned()
    }
}

fn finish(child: std::process::Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_held_statement_runs_once_a_reviewer_approves_and_never_by_its_requester() {
    let s = setup("rev_approve");
    let psql = s.psql_bg("DELETE FROM victim WHERE id = 1");
    let review = s.pending_review();
    let id = review["id"].as_str().unwrap().to_owned();
    assert_eq!(review["statement"], "DELETE FROM victim WHERE id = 1");
    assert_eq!(review["requester"], "eve");
    assert_eq!(review["rule"], "deletes-need-review");
    assert_eq!(s.rows(), "2", "nothing ran while held");

    // The requester cannot approve, nor can someone who is not a reviewer.
    let own = s.reviews(&s.eve, &["approve", &id]);
    assert_eq!(own.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&own.stderr).contains("cannot approve their own"));
    let outsider = s.reviews(&s.mallory, &["approve", &id]);
    assert_eq!(outsider.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&outsider.stderr).contains("not a reviewer"));
    let bad_token = s.reviews("slu_bogus_token", &["approve", &id]);
    assert_eq!(bad_token.status.code(), Some(1));

    let approved = s.reviews_json(&s.bob, &["approve", &id, "--reason", "ticket 42"]);
    assert_eq!(approved["status"], "approved");
    let (ok, err) = finish(psql);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("statement held for review {id}")),
        "{err}"
    );
    assert_eq!(s.rows(), "1");

    // The audit log tells who approved the statement that ran.
    s.gw.wait_sessions_closed();
    let statement =
        s.gw.all_statements()
            .into_iter()
            .find(|e| e["statement"] == "DELETE FROM victim WHERE id = 1")
            .unwrap();
    assert_eq!(statement["decision"], "allow");
    assert_eq!(statement["rule"], "deletes-need-review");
    assert_eq!(statement["review"]["id"], id.as_str());
    assert_eq!(statement["review"]["by"], "bob");
    assert_eq!(statement["rows"], 1);
    assert!(s.gw.verify().status.success());
}

#[test]
fn denial_timeout_and_cancel_end_a_hold_without_running_it() {
    let s = setup("rev_deny");
    // Denied by a reviewer.
    let psql = s.psql_bg("DELETE FROM victim");
    let id = s.pending_review()["id"].as_str().unwrap().to_owned();
    let denied = s.reviews_json(&s.bob, &["deny", &id, "--reason", "too broad"]);
    assert_eq!(denied["status"], "denied");
    let (ok, err) = finish(psql);
    assert!(!ok);
    assert!(
        err.contains(&format!("42501: review {id} denied by bob: too broad")),
        "{err}"
    );

    // Nobody decides within the rule's 2 s.
    let started = Instant::now();
    let (ok, err) = finish(s.psql_bg("INSERT INTO victim VALUES (3)"));
    assert!(!ok);
    assert!(err.contains("was not decided in time"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // A CancelRequest withdraws the held statement.
    let conninfo = s.gw.conninfo(s.db, "eve", &s.eve);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let cancel = client.cancel_token();
        let held = tokio::spawn(async move {
            let result = client
                .execute("DELETE FROM victim WHERE id = $1", &[&2i32])
                .await;
            (result, client)
        });
        // Wait until the review exists, then cancel.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pending = s.reviews_json(&s.bob, &["list"]);
            if pending.as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            assert!(Instant::now() < deadline, "no review was filed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cancel.cancel_query(NoTls).await.unwrap();
        let (result, client) = held.await.unwrap();
        // The session is still usable after the withdrawal, and the cancel did not go on
        // to the target, where it would cancel this next statement instead.
        let n: i64 = client
            .query_one("SELECT count(*) FROM victim, pg_sleep(0.5)", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        result.unwrap_err()
    });
    assert_eq!(err.code().unwrap().code(), "57014", "{err:?}");
    let withdrawn = s.reviews_json(&s.bob, &["list", "--status", "withdrawn"]);
    assert_eq!(withdrawn.as_array().map(Vec::len), Some(1));
    assert_eq!(s.rows(), "2");
}

#[test]
fn fail_mode_approval_lets_the_same_statement_pass_exactly_once() {
    let s = setup("rev_fail");
    let conninfo = s.gw.conninfo(s.db, "eve", &s.eve);
    let run = |sql: &str| {
        s.gw.psql(&conninfo, &["-v", "VERBOSITY=verbose", "-c", sql])
    };
    // Refused at once with the review id.
    let (ok, _, err) = run("UPDATE victim SET id = 20 WHERE id = 2");
    assert!(!ok);
    assert!(err.contains("42501: statement held for review r-"), "{err}");
    let id = s.pending_review()["id"].as_str().unwrap().to_owned();
    // A retry before approval files no second review.
    let (ok, _, _) = run("update victim set id = 20 where id = 2");
    assert!(!ok);
    assert_eq!(
        s.reviews_json(&s.bob, &["list"]).as_array().map(Vec::len),
        Some(1)
    );
    s.reviews_json(&s.bob, &["approve", &id]);
    // A different statement does not ride on the approval.
    let (ok, _, _) = run("UPDATE victim SET id = 30 WHERE id = 2");
    assert!(!ok);
    // The approved one passes (case and spacing do not matter), once.
    let (ok, _, err) = run("update  VICTIM set id = 20 where id = 2");
    assert!(ok, "{err}");
    let (ok, _, err) = run("UPDATE victim SET id = 20 WHERE id = 2");
    assert!(!ok && err.contains("held for review"), "{err}");
    assert_eq!(
        pg().psql_admin(
            s.db,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM victim"
        )
        .trim(),
        "1,20"
    );
    let used = s.reviews_json(&s.bob, &["show", &id]);
    assert_eq!(used["status"], "used");
}

/// One request a receiver got: headers (lower-case names; the request line first) and body.
type Received = (Vec<(String, String)>, Vec<u8>);

/// A tiny HTTP receiver: records each request and answers 500 to the first one, 200 after.
fn webhook_receiver() -> (u16, std::sync::mpsc::Receiver<Received>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            headers.push(("request-line".to_owned(), line.trim().to_owned()));
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let Some((k, v)) = line.trim_end().split_once(':') else {
                    break;
                };
                headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = tx.send((headers, body));
        }
    });
    (port, rx)
}

#[test]
fn review_events_reach_signed_webhooks_with_retries() {
    use hmac::Mac;
    let (port, received) = webhook_receiver();
    let db = "rev_hooks";
    pg().create_db(db);
    pg().psql_admin(
        db,
        "CREATE TABLE victim(id int); INSERT INTO victim VALUES (1)",
    );
    let yaml = format!(
        "{POLICIES}notifications:\n  webhooks:\n    - url: http://127.0.0.1:{port}/hooks/T0KENPATH\n      secret: whsec-s3cret\n"
    );
    let gw = Gateway::start_with(db, "", &yaml);
    let eve = gw.user_token("eve");
    gw.cli_ok(&["users", "add", "bob", "--group", "dba"]);
    let bob = gw.cli_ok(&["tokens", "issue", "bob"]).trim().to_owned();
    let (ok, _, _) = gw.psql(
        &gw.conninfo(db, "eve", &eve),
        &["-c", "UPDATE victim SET id = 2 WHERE id = 1"],
    );
    assert!(!ok);

    let next = || {
        received
            .recv_timeout(Duration::from_secs(20))
            .expect("a webhook request")
    };
    let header = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    // The first delivery fails with 500 and is retried with the same body.
    let (first_headers, first_body) = next();
    let (headers, body) = next();
    assert_eq!(first_body, body);
    assert_eq!(
        header(&headers, "request-line"),
        "POST /hooks/T0KENPATH HTTP/1.1"
    );
    assert_eq!(header(&headers, "x-sluice-event"), "review_created");
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = event["review"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        event["review"]["statement"],
        "UPDATE victim SET id = 2 WHERE id = 1"
    );
    // The signature is HMAC-SHA256 over "<timestamp>.<body>".
    for (headers, body) in [(&first_headers, &first_body), (&headers, &body)] {
        let timestamp = header(headers, "x-sluice-timestamp");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"whsec-s3cret").unwrap();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(header(headers, "x-sluice-signature"), expected);
    }

    let out = Command::new(sluice_bin())
        .args(["reviews", "approve", &id, "--config"])
        .arg(&gw.config)
        .env("SLUICE_TOKEN", &bob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (headers, body) = next();
    assert_eq!(header(&headers, "x-sluice-event"), "review_decided");
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["review"]["status"], "approved");
    assert_eq!(event["review"]["decided_by"], "bob");
    // Neither the signing key nor the URL's secret path is ever logged.
    let log = gw.log();
    assert!(log.contains("webhook delivered"), "{log}");
    assert!(
        !log.contains("whsec-s3cret") && !log.contains("T0KENPATH"),
        "{log}"
    );
}

#[test]
fn a_client_that_hangs_up_withdraws_its_held_statement() {
    let s = setup("rev_hangup");
    let mut psql = s.psql_bg("DELETE FROM victim WHERE id = 1");
    let id = s.pending_review()["id"].as_str().unwrap().to_owned();
    psql.kill().unwrap();
    let _ = psql.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let review = s.reviews_json(&s.bob, &["show", &id]);
        if review["status"] == "withdrawn" {
            break;
        }
        assert!(Instant::now() < deadline, "still {}", review["status"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    // A late approval cannot make it run for nobody.
    let late = s.reviews(&s.bob, &["approve", &id]);
    assert!(!late.status.success());
    assert!(String::from_utf8_lossy(&late.stderr).contains("withdrawn"));
    assert_eq!(s.rows(), "2");
}

#[test]
fn a_prepared_statement_is_reviewed_once_when_it_runs() {
    let s = setup("rev_prepared");
    let conninfo = s.gw.conninfo(s.db, "eve", &s.eve);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // Preparing runs nothing, so nothing is held yet.
        let delete = client
            .prepare("DELETE FROM victim WHERE id = $1")
            .await
            .unwrap();
        assert_eq!(
            s.reviews_json(&s.bob, &["list", "--status", "all"]),
            serde_json::json!([])
        );
        let run = tokio::spawn(async move { client.execute(&delete, &[&1i32]).await });
        let id = loop {
            let list = s.reviews_json(&s.bob, &["list"]);
            if let Some(first) = list.as_array().and_then(|a| a.first()) {
                break first["id"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let review = s.reviews_json(&s.bob, &["approve", &id]);
        assert_eq!(review["params"], serde_json::json!(["1"]));
        assert_eq!(run.await.unwrap().unwrap(), 1);
    });
    assert_eq!(
        s.reviews_json(&s.bob, &["list", "--status", "all"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(s.rows(), "1");
}

#[test]
fn an_approval_spent_on_a_statement_that_did_not_run_is_given_back() {
    let s = setup("rev_giveback");
    let conninfo = s.gw.conninfo(s.db, "eve", &s.eve);
    let run = |sql: &str| s.gw.psql(&conninfo, &["-c", sql]);
    let (ok, _, _) = run("UPDATE victim SET id = 20 WHERE id = 2");
    assert!(!ok);
    let id = s.pending_review()["id"].as_str().unwrap().to_owned();
    s.reviews_json(&s.bob, &["approve", &id]);
    // Sent with a statement that is refused (held, then not decided within 2 s), the
    // approved one does not run...
    let (ok, _, err) = run("UPDATE victim SET id = 20 WHERE id = 2; INSERT INTO victim VALUES (9)");
    assert!(!ok, "{err}");
    // ...so its approval is still there for the statement alone, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _, _) = run("UPDATE victim SET id = 20 WHERE id = 2");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the approval was not given back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, _, _) = run("UPDATE victim SET id = 20 WHERE id = 2");
    assert!(!ok);
}
