//! Identity: OpenID Connect sign-in (code flow through `sluice login` with a browser
//! stand-in, device flow, refresh), workload JWT exchange with forged tokens, roles,
//! service accounts, local passwords, `sluice credentials` and `sluice connect` — against
//! a real OpenID Connect provider (`oidc-provider`, tests/oidc) and a real PostgreSQL.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::{
    drive, free_port, http, http_with, oidc_dir, oidc_identity, pg, sluice_bin, Gateway,
    OidcProvider, OIDC_SECRET,
};

/// A gateway whose identity provider is `idp`, and a private home for the CLI.
struct Setup {
    idp: OidcProvider,
    gw: Gateway,
    home: tempfile::TempDir,
}

fn setup(db: &str, extra_identity: &str) -> Setup {
    pg().create_db(db);
    let api_port = free_port();
    let idp = OidcProvider::start(api_port);
    let home = tempfile::tempdir().unwrap();
    let yaml = oidc_identity(&idp, home.path(), extra_identity);
    let gw = Gateway::start_on(api_port, db, "", &yaml);
    Setup { idp, gw, home }
}

impl Setup {
    fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gw.api_port)
    }

    /// `sluice ARGS` as the person whose config dir is `home`.
    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(sluice_bin());
        cmd.args(args)
            .env("SLUICE_HOME", self.home.path().join("sluice"))
            .env_remove("SLUICE_TOKEN")
            .env_remove("BROWSER")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        cmd
    }

    /// A `$BROWSER` that follows the sign-in as `drive.mjs` (logging in as the hint).
    fn browser(&self) -> std::path::PathBuf {
        let script = self.home.path().join("browser.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec node {} code \"$1\" >> {} 2>&1\n",
                oidc_dir().join("drive.mjs").display(),
                self.home.path().join("browser.log").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// `sluice login` through the browser stand-in; returns its JSON output.
    fn login_browser(&self, login_hint: &str) -> Value {
        let out = self
            .cli(&[
                "login",
                "--gateway",
                &self.gateway_url(),
                "--login-hint",
                login_hint,
                "--json",
            ])
            .env("BROWSER", self.browser())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "login: {}\nbrowser: {}\ngateway: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.home.path().join("browser.log")).unwrap_or_default(),
            self.gw.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn saved(&self) -> Value {
        let path = self.home.path().join("sluice/credentials.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).output().unwrap();
        assert!(
            out.status.success(),
            "sluice {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every audit event of a kind.
    fn events(&self, kind: &str) -> Vec<Value> {
        audit_events(&self.gw.data_dir())
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }
}

fn audit_events(data_dir: &Path) -> Vec<Value> {
    // Events outside statements are buffered for up to 20 ms before they are written.
    std::thread::sleep(Duration::from_millis(200));
    let mut events = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(data_dir.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        // Lossy: the gateway may be appending, and a torn last line (even one cut inside a
        // multi-byte character) must not hide the whole file.
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()).into_owned();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                // Records wrap the event; accept both shapes.
                events.push(if v.get("event").is_some() {
                    v["event"].clone()
                } else {
                    v
                });
            }
        }
    }
    events
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn oidc_browser_login_then_credentials_connect_and_api() {
    let s = setup("oidc_db", "");
    let grant = s.login_browser("alice");
    assert_eq!(grant["user"], "alice@example.com");
    assert_eq!(grant["role"], "user");
    // idp-engineers mapped; everyone, not in the map, dropped.
    assert_eq!(grant["groups"], json!(["engineers"]));

    // The cache is private.
    use std::os::unix::fs::PermissionsExt;
    let dir = s.home.path().join("sluice");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let file = dir.join("credentials.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved = s.saved();
    let token = saved["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("slu_"));
    assert!(saved["refresh_token"].as_str().unwrap().starts_with("slr_"));

    // whoami as the gateway sees it.
    let me: Value = serde_json::from_str(&s.run_ok(&["whoami", "--json"])).unwrap();
    assert_eq!(me["user"], "alice@example.com");
    assert_eq!(me["actor"], "human");

    // `sluice credentials`: a URI psql takes as is, and an env block.
    let uri = s.run_ok(&["credentials", "oidc_db", "--format", "uri"]);
    let (ok, out, err) = s.gw.psql(uri.trim(), &["-c", "SELECT current_database()"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "oidc_db");
    let env = s.run_ok(&["credentials", "oidc_db"]);
    assert!(env.contains("export PGUSER='alice@example.com'"), "{env}");
    assert!(
        env.contains(&format!("export PGPORT={}", s.gw.pg_port)),
        "{env}"
    );
    let unknown = s.cli(&["credentials", "nope"]).output().unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no connection \"nope\""));

    // `sluice connect`: a client with no password at all gets in as alice.
    let port = free_port();
    let mut connect = s
        .cli(&[
            "connect",
            "oidc_db",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(connect.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("serving oidc_db as alice@example.com"),
        "{first}"
    );
    let (ok, out, err) = s.gw.psql(
        &format!("host=127.0.0.1 port={port} dbname=whatever user=whoever sslmode=disable"),
        &["-c", "SELECT 40 + 2"],
    );
    let _ = connect.kill();
    let _ = connect.wait();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42");

    // Both sessions are alice's, recorded as a person.
    s.gw.wait_sessions_closed();
    let sessions = s.gw.sessions();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(sessions.iter().all(|x| x["user"] == "alice@example.com"));
    let statements = s.gw.all_statements();
    assert!(statements.iter().any(|x| x["statement"] == "SELECT 40 + 2"));
    assert!(statements.iter().all(|x| x["actor"] == "human"));

    // API verbs use the saved sign-in.
    let reviews = s.run_ok(&["reviews", "list", "--json", "--gateway", &s.gateway_url()]);
    assert_eq!(serde_json::from_str::<Value>(&reviews).unwrap(), json!([]));

    // The sign-in is on record; nothing secret is anywhere the gateway writes.
    let signins = s.events("sign_in");
    assert_eq!(signins.len(), 1);
    assert_eq!(signins[0]["method"], "oidc");
    assert_eq!(signins[0]["user"], "alice@example.com");
    let written = s.gw.everything_written();
    for secret in [
        OIDC_SECRET,
        &token,
        saved["refresh_token"].as_str().unwrap(),
    ] {
        assert!(
            !written.contains(secret),
            "a secret leaked into the gateway's files"
        );
    }
    // The provider's refresh token is sealed in the store, not kept in clear.
    let db = std::fs::read(s.gw.data_dir().join("sluice.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(OIDC_SECRET));

    // bob's provider account now claims alice's (verified) address, as after an address
    // is reassigned: the name stays bound to alice's provider identity.
    s.idp.admin(
        "/accounts/bob",
        &json!({ "groups": [], "email": "alice@example.com" }),
    );
    let out = s
        .cli(&[
            "login",
            "--gateway",
            &s.gateway_url(),
            "--login-hint",
            "bob",
        ])
        .env("BROWSER", s.browser())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bound to another account"), "{err}");

    let out = s.cli(&["logout"]).output().unwrap();
    assert!(out.status.success());
    assert!(!file.exists());
    let out = s.cli(&["whoami"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed in"));
}

#[test]
fn oidc_refresh_follows_the_provider_and_refuses_reuse() {
    let s = setup("oidc_refresh_db", "");
    s.login_browser("bob");
    assert_eq!(s.saved()["role"], "auditor");

    // The provider moves bob: the next renewal carries the new groups and role.
    s.idp
        .admin("/accounts/bob", &json!({ "groups": ["idp-engineers"] }));
    let first = s.saved()["refresh_token"].as_str().unwrap().to_owned();
    // Make the saved token look expired: any CLI verb renews it first.
    let mut saved = s.saved();
    saved["expires"] = json!(now() - 10);
    std::fs::write(
        s.home.path().join("sluice/credentials.json"),
        serde_json::to_vec(&saved).unwrap(),
    )
    .unwrap();
    let me: Value = serde_json::from_str(&s.run_ok(&["whoami", "--json"])).unwrap();
    assert_eq!(me["role"], "user");
    assert_eq!(me["groups"], json!(["engineers"]));
    let renewed = s.saved();
    assert_ne!(renewed["token"], saved["token"]);
    let second = renewed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let user = s.gw.cli_json(&["users", "list", "--json"]);
    let bob = user
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob@example.com")
        .unwrap();
    assert_eq!(bob["groups"], json!(["engineers"]));
    assert_eq!(bob["origin"], "oidc");

    let token = renewed["token"].as_str().unwrap().to_owned();
    let whoami = |token: &str| http(s.gw.api_port, "GET", "/api/v1/whoami", Some(token), None).0;
    assert_eq!(whoami(&token), 200);

    // A spent refresh token presented again: refused; every handle of bob and his
    // sign-in tokens are revoked (whoever copied the handle is out too).
    let (status, _, body) = http(
        s.gw.api_port,
        "POST",
        "/auth/refresh",
        None,
        Some(&json!({ "refresh_token": first })),
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("used twice"), "{body}");
    let (status, _, body) = http(
        s.gw.api_port,
        "POST",
        "/auth/refresh",
        None,
        Some(&json!({ "refresh_token": second })),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(whoami(&token), 401);

    // Signed in again; then the provider stops vouching for the name (the account now
    // has another address): the renewal is refused and the live token revoked at once.
    s.login_browser("bob");
    let saved = s.saved();
    let token = saved["token"].as_str().unwrap().to_owned();
    assert_eq!(whoami(&token), 200);
    s.idp.admin(
        "/accounts/bob",
        &json!({ "groups": ["idp-engineers"], "email": "robert@example.com" }),
    );
    let (status, _, body) = http(
        s.gw.api_port,
        "POST",
        "/auth/refresh",
        None,
        Some(&json!({ "refresh_token": saved["refresh_token"] })),
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("names another user"), "{body}");
    assert_eq!(whoami(&token), 401);
    let failures = s.events("sign_in_failure");
    assert!(failures.iter().any(|e| e["method"] == "refresh"));
    assert!(s.events("sign_in").iter().any(|e| e["method"] == "refresh"));
}

#[test]
fn oidc_device_flow_for_a_headless_machine() {
    let s = setup("oidc_device_db", "");
    // No BROWSER, no DISPLAY: `sluice login` falls back to the device flow by itself.
    let mut login = s
        .cli(&["login", "--gateway", &s.gateway_url(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(login.stderr.take().unwrap()).lines();
    let mut complete = None;
    for line in lines.by_ref().take(4) {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("(or open ") {
            complete = Some(rest.trim_end_matches(')').to_owned());
            break;
        }
    }
    let complete = complete.expect("a verification URI");
    let (ok, out, err) = drive(&["device", &complete, "carol"]);
    assert!(ok, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = login.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "login did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut login.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{stdout}");
    let grant: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(grant["user"], "carol@example.com");
    assert_eq!(grant["groups"], json!([]));
    assert_eq!(s.events("sign_in")[0]["method"], "device");
    // An unknown device handle is refused.
    let (status, _, _) = http(
        s.gw.api_port,
        "POST",
        "/auth/device/poll",
        None,
        Some(&json!({ "handle": "made-up" })),
    );
    assert_eq!(status, 401);
}

#[test]
fn oidc_callback_and_cli_code_are_single_use() {
    let s = setup("oidc_replay_db", "\x20   allowed_groups: [engineers]\n");
    let verifier = "v".repeat(43);
    let challenge = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let cli_port = free_port();
    let start = format!(
        "{}/auth/oidc/start?cli_port={cli_port}&challenge={challenge}&login_hint=alice",
        s.gateway_url()
    );
    let callback_prefix = format!("{}/auth/oidc/callback", s.gateway_url());
    let cookies = s.home.path().join("cookies.json");
    // Follows the sign-in up to the gateway's callback; returns its path and the cookie
    // the gateway gave the browser at the start.
    let to_callback = |start: &str| {
        let (ok, callback, err) = drive(&[
            "code",
            start,
            "--stop-at",
            &callback_prefix,
            "--dump-cookies",
            cookies.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let path = callback
            .trim()
            .strip_prefix(&s.gateway_url())
            .unwrap()
            .to_owned();
        let jar: Value = serde_json::from_slice(&std::fs::read(&cookies).unwrap()).unwrap();
        let cookie = jar[format!("127.0.0.1:{}", s.gw.api_port)]["sluice_login"]
            .as_str()
            .expect("the sign-in cookie")
            .to_owned();
        (path, format!("Cookie: sluice_login={cookie}\r\n"))
    };
    let location = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap()
            .to_owned()
    };
    let (path, cookie) = to_callback(&start);
    assert!(path.contains("code=") && path.contains("state="), "{path}");

    // The callback must come from the browser that started the sign-in: a provider URL
    // handed to someone else (whose browser lacks the cookie) gets nowhere.
    let (status, _, body) = http(s.gw.api_port, "GET", &path, None, None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("started in another browser"), "{body}");
    // That attempt used the state up.
    let (status, _, body) = http_with(s.gw.api_port, "GET", &path, &cookie, None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("already used"), "{body}");

    let (path, cookie) = to_callback(&start);
    // First use: a redirect to the CLI's loopback port with a one-time code.
    let (status, head, _) = http_with(s.gw.api_port, "GET", &path, &cookie, None);
    assert_eq!(status, 303, "{head}");
    let prefix = format!("http://127.0.0.1:{cli_port}/callback?code=");
    let code = location(&head)
        .strip_prefix(&prefix)
        .expect("loopback redirect")
        .to_owned();
    // Replayed callback (same state and provider code): refused.
    let (status, _, body) = http_with(s.gw.api_port, "GET", &path, &cookie, None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("already used"), "{body}");

    // The one-time code needs the verifier of the challenge, and works once.
    let exchange = |code: &str, verifier: &str| {
        http(
            s.gw.api_port,
            "POST",
            "/auth/cli/exchange",
            None,
            Some(&json!({ "code": code, "verifier": verifier })),
        )
    };
    assert_eq!(exchange(&code, &"w".repeat(43)).0, 401);
    // A wrong verifier burnt the code: whoever intercepted it cannot retry either.
    let (status, _, body) = exchange(&code, &verifier);
    assert_eq!(status, 401, "{body}");

    // Once more, properly.
    let (path, cookie) = to_callback(&start);
    let (_, head, _) = http_with(s.gw.api_port, "GET", &path, &cookie, None);
    let code = location(&head).strip_prefix(&prefix).unwrap().to_owned();
    let (status, head, body) = exchange(&code, &verifier);
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert_eq!(exchange(&code, &verifier).0, 401);

    // carol is in no allowed group: the provider authenticates her, sluice refuses.
    let start = start.replace("login_hint=alice", "login_hint=carol");
    let (path, cookie) = to_callback(&start);
    let (_, head, _) = http_with(s.gw.api_port, "GET", &path, &cookie, None);
    assert!(head.contains("error="), "{head}");
    assert!(head.contains("allowed_groups"), "{head}");
    assert!(s
        .events("sign_in_failure")
        .iter()
        .any(|e| e["reason"].as_str().unwrap().contains("allowed_groups")));
}

#[test]
fn workload_tokens_are_exchanged_and_forgeries_refused() {
    pg().create_db("workload_db");
    let api_port = free_port();
    let idp = OidcProvider::start(api_port);
    let yaml = format!(
        "identity:\n\
         \x20 workload:\n\
         \x20   - name: ci\n\
         \x20     issuer: {issuer}\n\
         \x20     audience: sluice-ci\n\
         \x20     subject: \"repo:acme/app:*\"\n\
         \x20     claims: {{ repository_owner: acme }}\n\
         \x20     service_account: ci-bot\n\
         \x20     token_ttl: 10m\n",
        issuer = idp.issuer
    );
    let gw = Gateway::start_on(
        api_port,
        "workload_db",
        "\x20 - name: agents_only\n\
         \x20   kind: postgres\n\
         \x20   address: 127.0.0.1:1\n\
         \x20   database: x\n\
         \x20   user: x\n\
         \x20   allow: [agent:cursor]\n",
        &yaml,
    );
    gw.cli_ok(&["service-accounts", "add", "ci-bot", "--group", "ci"]);
    let claims = |over: Value| {
        let mut c = json!({
            "iss": idp.issuer, "aud": "sluice-ci", "sub": "repo:acme/app:ref:refs/heads/main",
            "repository_owner": "acme", "iat": now(), "exp": now() + 300,
        });
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let exchange = |jwt: &str| {
        http(
            gw.api_port,
            "POST",
            "/auth/workload",
            None,
            Some(&json!({ "token": jwt })),
        )
    };

    let good = idp.sign("provider", json!({}), claims(json!({})));
    let (status, _, body) = exchange(&good);
    assert_eq!(status, 200, "{body}");
    let grant: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(grant["user"], "ci-bot");
    assert_eq!(grant["actor"], "agent");
    // Never longer than the external token itself (5 minutes here, the trust allows 10).
    let expires = humantime::parse_rfc3339(grant["expires"].as_str().unwrap()).unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(301), "{left:?}");
    let token = grant["token"].as_str().unwrap();
    let (ok, _, err) = gw.psql(
        &gw.conninfo("workload_db", "ci-bot", token),
        &["-c", "SELECT 1"],
    );
    assert!(ok, "{err}");

    let cases: Vec<(String, &str)> = vec![
        (idp.sign("rogue", json!({}), claims(json!({}))), "signature"),
        (
            idp.sign("none", json!({}), claims(json!({}))),
            "none\\\" is not accepted",
        ),
        (
            idp.sign("provider", json!({ "alg": "HS256" }), claims(json!({}))),
            "HS256\\\" is not accepted",
        ),
        (
            idp.sign(
                "provider",
                json!({}),
                claims(json!({ "iss": "https://evil.example" })),
            ),
            "no workload trust for issuer",
        ),
        (
            idp.sign("provider", json!({}), claims(json!({ "aud": "other" }))),
            "audience",
        ),
        (
            idp.sign(
                "provider",
                json!({}),
                claims(json!({ "exp": now() - 3600, "iat": now() - 7200 })),
            ),
            "expired",
        ),
        (
            idp.sign(
                "provider",
                json!({}),
                claims(json!({ "nbf": now() + 3600 })),
            ),
            "not valid yet",
        ),
        (
            idp.sign(
                "provider",
                json!({ "kid": "unknown-kid" }),
                claims(json!({})),
            ),
            "unknown key id",
        ),
        (
            idp.sign(
                "provider",
                json!({}),
                claims(json!({ "sub": "repo:evil/app:ref:main" })),
            ),
            "is not allowed",
        ),
        (
            idp.sign(
                "provider",
                json!({}),
                claims(json!({ "repository_owner": "evil" })),
            ),
            "repository_owner",
        ),
        ("not.a.jwt".to_owned(), "well-formed"),
    ];
    for (jwt, expected) in &cases {
        let (status, _, body) = exchange(jwt);
        assert_eq!(status, 401, "{expected}: {body}");
        assert!(body.contains(expected), "{expected}: {body}");
    }
    // A tampered payload under a valid signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims(json!({ "sub": "repo:acme/app:ref:refs/heads/evil" })).to_string())
    };
    let (status, _, body) = exchange(&parts.join("."));
    assert_eq!(status, 401);
    assert!(body.contains("signature"), "{body}");

    // The service account is an agent on every record, and an allow list naming
    // another agent keeps it out (audited).
    gw.wait_sessions_closed();
    assert!(gw.all_statements().iter().all(|x| x["actor"] == "agent"));
    let (ok, _, err) = gw.psql(
        &gw.conninfo("agents_only", "ci-bot", token),
        &["-c", "SELECT 1"],
    );
    assert!(!ok && err.contains("may not use connection"), "{err}");
    // Refusals are recorded without waiting for the disk; on a loaded machine they may take
    // longer than audit_events' pause to be written.
    let failures = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["kind"] == "sign_in_failure")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut events = audit_events(&gw.data_dir());
    while failures(&events) < cases.len() + 1 && std::time::Instant::now() < deadline {
        events = audit_events(&gw.data_dir());
    }
    assert_eq!(failures(&events), cases.len() + 1);
    let signin = events.iter().find(|e| e["kind"] == "sign_in").unwrap();
    assert_eq!(signin["method"], "workload");
    assert!(signin["subject"]
        .as_str()
        .unwrap()
        .ends_with("repo:acme/app:ref:refs/heads/main"));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "auth_failure" && e["connection"] == "agents_only"));
    assert!(!gw.everything_written().contains(&good));
}

#[test]
fn roles_service_accounts_and_passwords() {
    pg().create_db("roles_db");
    let gw = Gateway::start_with(
        "roles_db",
        "\x20 - name: cursor_only\n\
         \x20   kind: postgres\n\
         \x20   address: 127.0.0.1:{port}\n\
         \x20   database: roles_db\n\
         \x20   user: postgres\n\
         \x20   password: env:SLUICE_TEST_TARGET_PASSWORD\n\
         \x20   allow: [agent:cursor]\n"
            .replace("{port}", &pg().port.to_string())
            .as_str(),
        "",
    );
    let user = gw.user_token("uma");
    gw.cli_ok(&["users", "add", "audrey", "--role", "auditor"]);
    let auditor = gw.cli_ok(&["tokens", "issue", "audrey"]).trim().to_owned();

    // A user reads their own sessions only, and no metrics.
    assert!(
        gw.psql(&gw.conninfo("roles_db", "uma", &user), &["-c", "SELECT 1"])
            .0
    );
    gw.wait_sessions_closed();
    let (status, _, body) = http(gw.api_port, "GET", "/api/v1/sessions", Some(&user), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, _, body) = http(
        gw.api_port,
        "GET",
        "/api/v1/sessions?user=audrey",
        Some(&user),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        http(gw.api_port, "GET", "/metrics", Some(&user), None).0,
        403
    );

    // An auditor reads everything, acts on nothing, and opens no sessions.
    let (status, _, body) = http(gw.api_port, "GET", "/api/v1/sessions", Some(&auditor), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http(gw.api_port, "GET", "/metrics", Some(&auditor), None).0,
        200
    );
    let ask = json!({ "connection": "roles_db", "duration": "1h", "reason": "look" });
    let (status, _, body) = http(
        gw.api_port,
        "POST",
        "/api/v1/access-requests",
        Some(&auditor),
        Some(&ask),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("auditors can read but not act"), "{body}");
    let (status, _, _) = http(
        gw.api_port,
        "POST",
        "/api/v1/reviews/r-1/approve",
        Some(&auditor),
        Some(&json!({})),
    );
    assert_eq!(status, 403);
    let (ok, _, err) = gw.psql(
        &gw.conninfo("roles_db", "audrey", &auditor),
        &["-c", "SELECT 1"],
    );
    assert!(!ok && err.contains("may not use connection"), "{err}");
    let denied: Vec<Value> = audit_events(&gw.data_dir())
        .into_iter()
        .filter(|e| e["kind"] == "denied")
        .collect();
    assert_eq!(denied.len(), 4, "{denied:?}");
    assert!(denied
        .iter()
        .any(|e| e["user"] == "audrey" && e["action"] == "POST /api/v1/access-requests"));

    // Service accounts: an API key, marked as an agent everywhere, allowed by `agent:`.
    let key = gw
        .cli_ok(&["service-accounts", "add", "cursor", "--group", "agents"])
        .trim()
        .to_owned();
    assert!(key.starts_with("slu_"));
    let other = gw
        .cli_ok(&["service-accounts", "add", "claude"])
        .trim()
        .to_owned();
    let (ok, out, err) = gw.psql(
        &gw.conninfo("cursor_only", "cursor", &key),
        &["-c", "SELECT 7"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "7");
    let (ok, _, err) = gw.psql(
        &gw.conninfo("cursor_only", "claude", &other),
        &["-c", "SELECT 7"],
    );
    assert!(!ok && err.contains("may not use connection"), "{err}");
    let (ok, _, _) = gw.psql(
        &gw.conninfo("cursor_only", "uma", &user),
        &["-c", "SELECT 7"],
    );
    assert!(!ok);
    gw.wait_sessions_closed();
    let cursor_session = gw
        .sessions()
        .into_iter()
        .find(|x| x["user"] == "cursor")
        .unwrap();
    assert_eq!(cursor_session["actor"], "agent");
    let accounts = gw.cli_json(&["service-accounts", "list", "--json"]);
    assert_eq!(accounts.as_array().unwrap().len(), 2);
    let keys = gw.cli_json(&["tokens", "list", "--user", "cursor", "--json"]);
    assert_eq!(keys[0]["kind"], "api_key");

    // Local passwords: argon2, checked by `sluice login --user`, locked after failures.
    let add = |name: &str, password: &str| {
        let mut child = Command::new(sluice_bin())
            .args(["users", "add", name, "--password-stdin", "--config"])
            .arg(&gw.config)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let weak = add("pat", "short");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 12 characters"));
    assert!(add("pat", "correct horse battery").status.success());
    assert!(
        !String::from_utf8_lossy(&std::fs::read(gw.data_dir().join("sluice.db")).unwrap())
            .contains("correct horse battery")
    );
    let home = tempfile::tempdir().unwrap();
    let login = |password: &str| {
        let mut child = Command::new(sluice_bin())
            .args([
                "login",
                "--gateway",
                &format!("http://127.0.0.1:{}", gw.api_port),
                "--user",
                "pat",
            ])
            .env("SLUICE_HOME", home.path())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = login("correct horse battery");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let saved: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("credentials.json")).unwrap())
            .unwrap();
    let token = saved["token"].as_str().unwrap();
    assert!(
        gw.psql(&gw.conninfo("roles_db", "pat", token), &["-c", "SELECT 1"])
            .0
    );
    for _ in 0..5 {
        let bad = login("wrong horse battery");
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong user name or password"));
    }
    // Locked now, even with the right password; unknown users look the same as wrong ones.
    let locked = login("correct horse battery");
    assert!(String::from_utf8_lossy(&locked.stderr).contains("too many failed sign-ins"));
    let (status, _, body) = http(
        gw.api_port,
        "POST",
        "/auth/password",
        None,
        Some(&json!({ "user": "nobody", "password": "whatever-it-is" })),
    );
    assert_eq!(status, 401);
    assert!(body.contains("wrong user name or password"));
    let written = gw.everything_written();
    assert!(!written.contains("correct horse battery") && !written.contains("wrong horse battery"));
}
