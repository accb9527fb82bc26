//! `kind: http` through the gateway: curl with a sluice token as its bearer token, a
//! small real HTTP API (`tests/http/api_server.py`) that accepts only the API token sluice
//! injects, policies on method and path, masking of the JSON answer, and the record.

use std::process::{Child, Command};

use serde_json::Value;

use crate::support::{free_port, pg, spawn_ready, Gateway};

pub(crate) const API_TOKEN: &str = "api-token-only-the-agent-knows";

pub(crate) struct Api {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn api() -> Api {
    let port = free_port();
    let child = spawn_ready(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/http/api_server.py"
            ))
            .args([&port.to_string(), API_TOKEN]),
    );
    Api { child, port }
}

/// curl through the gateway: (status, body).
fn curl(gw: &Gateway, token: &str, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--path-as-is", "-X", method, "-w", "\n%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(extra)
        .arg(format!("http://127.0.0.1:{}{path}", gw.http_port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

/// A successful GET with a sluice token as bearer token: its JSON answer.
pub(crate) fn get_json(url: &str, token: &str, extra: &[&str]) -> Value {
    let out = Command::new("curl")
        .args(["-s", "--fail-with-body", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{url}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hits(api: &Api) -> Vec<String> {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{}/hits", api.port)])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_http_api_behind_the_gateway_gets_its_own_token_and_only_allowed_calls() {
    let db = "http_api";
    pg().create_db(db);
    let api = api();
    let connections = format!(
        "  - name: billing\n    kind: http\n    url: http://127.0.0.1:{}/api\n    headers:\n      Authorization: Bearer env:TEST_API_TOKEN\n      X-Team: platform\n",
        api.port
    );
    let yaml = r#"policies:
  - { name: no-admin, connections: [billing], match: { actions: ["http:*"], resources: ["/admin/*"] }, action: deny }
  - { name: no-deletes, match: { actions: ["http:DELETE"], resources: ["/v1/*"] }, action: deny }
  - { name: charges, connections: [billing], match: { actions: ["http:POST"], resources: ["/v1/charges"] }, action: review, mode: fail, reviewers: [user:bob] }
masking:
  - { connections: [billing], detectors: [email] }
  - { connections: [billing], fields: ["team"], style: hash }
"#;
    std::env::set_var("TEST_API_TOKEN", API_TOKEN);
    let gw = Gateway::start_with_http(db, &connections, yaml);
    let token = gw.user_token("alice");

    // An allowed call: the API gets its own token (not the client's) and the injected
    // header; the e-mail in its JSON answer is masked.
    let (status, body) = curl(&gw, &token, "GET", "/billing/v1/users/7", &[]);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["auth_ok"], true);
    // The same port speaks https:// with the gateway's certificate, so the token need not
    // cross the network in the clear.
    let ca = gw.data_dir().join("tls/server.crt");
    let url = format!("https://localhost:{}/billing/v1/users/7", gw.http_port);
    let over_tls = get_json(&url, &token, &["--cacert", ca.to_str().unwrap()]);
    assert_eq!(over_tls["auth_ok"], true, "{over_tls}");
    let forwarded: Vec<&str> = answer["forwarded_headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert!(forwarded.contains(&"x-team"), "{forwarded:?}");
    // A field named by path is masked whole (here keyed-hashed); the detector caught the
    // e-mail elsewhere.
    assert!(
        answer["team"].as_str().unwrap().starts_with("hmac:"),
        "{answer}"
    );
    assert_eq!(answer["email"], "[redacted]");
    assert!(!body.contains(&token));

    // A credential in the query reaches the API but not the record.
    let (status, body) = curl(
        &gw,
        &token,
        "GET",
        "/billing/v1/users/8?api_key=leak-me-123",
        &[],
    );
    assert_eq!(status, 200, "{body}");

    // A POST with a body is passed on.
    let (status, body) = curl(
        &gw,
        &token,
        "POST",
        "/billing/v1/invoices?draft=1",
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"amount\": 12}",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["path"], "/api/v1/invoices?draft=1");
    assert_eq!(answer["body"], "{\"amount\": 12}");

    // Refused by policy, by path encoding tricks, or without a valid token: the API never
    // sees them.
    let before = hits(&api).len();
    let (status, body) = curl(&gw, &token, "POST", "/billing/admin/reset", &[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no-admin"), "{body}");
    let (status, body) = curl(&gw, &token, "POST", "/billing/%61dmin/reset", &[]);
    assert_eq!(status, 403, "{body}");
    let (status, body) = curl(&gw, &token, "GET", "/billing/v1/../admin/reset", &[]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = curl(&gw, &token, "POST", "/billing//admin/reset", &[]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = curl(
        &gw,
        &token,
        "POST",
        "/billing/v1/users/7",
        &["-H", "X-HTTP-Method-Override: DELETE"],
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = curl(
        &gw,
        &token,
        "POST",
        "/billing/v1/users/7",
        &["--data-urlencode", "_method=DELETE"],
    );
    assert_eq!(status, 400, "{body}");
    // However the override is spelled: form parsers decode field names, and some
    // frameworks trust what proxies say the path was.
    for extra in [
        &["--data-binary", "%5Fmethod=DELETE"][..],
        &["--data-binary", "a=1&_%6Dethod=DELETE"],
        &["-H", "X-Forwarded-Uri: /admin/reset"],
        &["-H", "X-Original-Method: DELETE"],
    ] {
        let (status, body) = curl(&gw, &token, "POST", "/billing/v1/users/7", extra);
        assert_eq!(status, 400, "{extra:?}: {body}");
    }
    let (status, body) = curl(
        &gw,
        &token,
        "POST",
        "/billing/v1/users/7?_METHOD=DELETE",
        &[],
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = curl(&gw, &token, "CONNECT", "/billing/v1/users/7", &[]);
    assert_eq!(status, 405, "{body}");
    let (status, body) = curl(&gw, &token, "delete", "/billing/v1/users/7", &[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no-deletes"), "{body}");
    // A fail-mode review binds what it approves: a streamed JSON body (no hash known
    // before it is sent) could change under the approval, so it is refused outright; a
    // form (read whole, its hash recorded) is held for review.
    let (status, body) = curl(
        &gw,
        &token,
        "POST",
        "/billing/v1/charges",
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"amount":5}"#,
        ],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not bound by a hash"), "{body}");
    let (status, body) = curl(
        &gw,
        &token,
        "POST",
        "/billing/v1/charges",
        &["--data-urlencode", "amount=5"],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("held for review r-"), "{body}");
    let (status, _) = curl(&gw, "slu_wrong_token", "GET", "/billing/v1/users/7", &[]);
    assert_eq!(status, 401);
    let (status, body) = curl(&gw, &token, "GET", "/nosuch/v1", &[]);
    assert_eq!(status, 404, "{body}");
    assert_eq!(hits(&api).len(), before, "{:?}", hits(&api));

    // The connection is not a database: psql is told so.
    let (ok, _, err) = gw.psql(
        &gw.conninfo("billing", "alice", &token),
        &["-c", "SELECT 1"],
    );
    assert!(!ok);
    assert!(err.contains("is a kind: http connection"), "{err}");

    // The record.
    gw.wait_sessions_closed();
    let calls: Vec<Value> = gw
        .all_statements()
        .into_iter()
        .filter(|s| s.get("call").is_some())
        .collect();
    let texts: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            (
                c["statement"].as_str().unwrap().to_owned(),
                c["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("http:GET /v1/users/7", "allow"),
        ("http:POST /v1/invoices", "allow"),
        ("http:POST /admin/reset", "deny"),
        ("http:DELETE /v1/users/7", "deny"),
    ] {
        assert!(
            texts.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not in {texts:?}"
        );
    }
    let get = calls
        .iter()
        .find(|c| c["statement"] == "http:GET /v1/users/7")
        .unwrap();
    assert_eq!(get["transfer"]["status"], 200);
    assert_eq!(get["masked"][0]["detector"], "email");
    assert!(gw.verify().status.success());
    let written = gw.everything_written();
    assert!(!written.contains(API_TOKEN), "the API token was written");
    assert!(!written.contains(&token), "the sluice token was written");
    assert!(
        !written.contains("leak-me-123"),
        "a query credential was written"
    );
    assert!(written.contains("api_key=[redacted]"));
}

/// Revoking the token a call was made with stops its answer mid-stream within seconds, as
/// it ends a PostgreSQL session.
#[test]
fn revoking_the_token_stops_an_answer_still_streaming() {
    let db = "http_api_revoke";
    pg().create_db(db);
    let api = api();
    let connections = format!(
        "  - name: files\n    kind: http\n    url: http://127.0.0.1:{}/api\n    headers:\n      Authorization: Bearer env:TEST_API_TOKEN\n",
        api.port
    );
    std::env::set_var("TEST_API_TOKEN", API_TOKEN);
    let gw = Gateway::start_with_http(db, &connections, "");
    let token = gw.user_token("dora");
    let started = std::time::Instant::now();
    // 30 MB at 1 MB/s: half a minute, unless it is stopped.
    let mut download = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--limit-rate", "1M", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!(
            "http://127.0.0.1:{}/files/big/30000000",
            gw.http_port
        ))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let id = token.split('_').nth(1).unwrap();
    gw.cli_ok(&["tokens", "revoke", id]);
    let status = download.wait().unwrap();
    assert!(!status.success(), "the download completed");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "stopped after {:?}",
        started.elapsed()
    );
}
