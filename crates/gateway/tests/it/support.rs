//! Test harness: one real PostgreSQL per test process (initdb into a temp dir, SCRAM
//! auth, TLS on), and a real `sluice gateway` process per test.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Superuser password of the test server; used as the target credential.
pub const PG_PASSWORD: &str = "t4rget-Secret-9f1c";

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on port {port}");
}

/// What a command is, for messages: program and arguments, never its environment
/// (which carries passwords).
fn describe(cmd: &Command) -> String {
    let args: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

fn run(cmd: &mut Command) -> String {
    let what = describe(cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PostgreSQL server for this test process.
pub struct TestPg {
    pub port: u16,
    /// Keeps the server alive: the wrapper stops PostgreSQL when this pipe closes, which
    /// happens when the test process exits, however it exits.
    _guard: std::sync::Mutex<Child>,
}

pub fn pg() -> &'static TestPg {
    static PG: OnceLock<TestPg> = OnceLock::new();
    PG.get_or_init(start_pg)
}

fn start_pg() -> TestPg {
    let dir = tempfile::Builder::new()
        .prefix("sluice-test-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let data = dir.join("data");
    run(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
    std::fs::write(dir.join("pw"), PG_PASSWORD).expect("write pwfile");
    run(Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir.join("pw")));
    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/initdb"))
        .args(["-A", "scram-sha-256", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data)
        .arg(format!("--pwfile={}", dir.join("pw").display())));
    // Self-signed certificate so connections with `tls: require` can be tested.
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-out",
        ])
        .arg(data.join("server.crt"))
        .arg("-keyout")
        .arg(data.join("server.key")));
    run(Command::new("chown")
        .args(["postgres:postgres"])
        .arg(data.join("server.crt"))
        .arg(data.join("server.key")));
    run(Command::new("chmod")
        .arg("600")
        .arg(data.join("server.key")));
    // Roles with other password methods; `tlsonly` may only log in over TLS.
    let hba = "local all all trust\n\
               hostssl all tlsonly 127.0.0.1/32 scram-sha-256\n\
               host all tlsonly 127.0.0.1/32 reject\n\
               host all md5user 127.0.0.1/32 md5\n\
               host all clearuser 127.0.0.1/32 password\n\
               host all all 127.0.0.1/32 scram-sha-256\n";
    std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    let port = free_port();
    let script = format!(
        "{PG_BIN}/postgres -D {data} -p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c ssl=on -c max_connections=200 \
         -c log_min_messages=warning >{dir}/postgres.log 2>&1 & pid=$!; cat >/dev/null; kill -INT $pid; wait $pid",
        data = data.display(),
        dir = dir.display(),
    );
    let child = Command::new("runuser")
        .args(["-u", "postgres", "--", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start postgres");
    wait_for_port(port, "postgres");
    let pg = TestPg {
        port,
        _guard: std::sync::Mutex::new(child),
    };
    pg.psql_admin(
        "postgres",
        "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'md5-pass-1'; \
         SET password_encryption = 'scram-sha-256'; CREATE ROLE clearuser LOGIN SUPERUSER PASSWORD 'clear-pass-1'; \
         CREATE ROLE tlsonly LOGIN SUPERUSER PASSWORD 'tls-pass-1';",
    );
    pg
}

impl TestPg {
    /// Runs SQL directly against the server (not through sluice), as the superuser.
    pub fn psql_admin(&self, db: &str, sql: &str) -> String {
        run(Command::new("psql")
            .env("PGPASSWORD", PG_PASSWORD)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql]))
    }

    /// A fresh database for one test, so tests can run in parallel.
    pub fn create_db(&self, name: &str) {
        self.psql_admin(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        self.psql_admin("postgres", &format!("CREATE DATABASE {name}"));
    }
}

/// A running `sluice gateway` process with its own data directory.
pub struct Gateway {
    pub pg_port: u16,
    pub api_port: u16,
    /// Where remote agents dial in (only listened on when started with a tunnel).
    pub tunnel_port: u16,
    /// Where AWS clients send requests (only listened on when started with it).
    pub http_port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
}

/// Which optional listeners a test gateway opens.
#[derive(Clone, Copy)]
enum Listeners {
    Base,
    Tunnel,
    Http,
    TunnelAndHttp,
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

impl Gateway {
    /// Starts a gateway with one connection `name` → database `db` on the test server,
    /// plus any extra YAML under `connections:`.
    pub fn start(db: &str, extra_connections: &str) -> Gateway {
        Gateway::start_with(db, extra_connections, "")
    }

    /// Like [`Gateway::start`], with more top-level YAML (e.g. `limits:`).
    pub fn start_with(db: &str, extra_connections: &str, extra_yaml: &str) -> Gateway {
        Gateway::start_on(free_port(), db, extra_connections, extra_yaml)
    }

    /// Like [`Gateway::start_with`], with the API on a port chosen beforehand (e.g. one an
    /// identity provider already redirects to).
    pub fn start_on(api_port: u16, db: &str, extra_connections: &str, extra_yaml: &str) -> Gateway {
        Gateway::start_full(api_port, db, extra_connections, extra_yaml, Listeners::Base)
    }

    /// Like [`Gateway::start`], also accepting remote agents on `tunnel_port`.
    pub fn start_with_tunnel(db: &str, extra_connections: &str) -> Gateway {
        Gateway::start_full(free_port(), db, extra_connections, "", Listeners::Tunnel)
    }

    /// Like [`Gateway::start_with`], also accepting AWS clients on `http_port`.
    pub fn start_with_http(db: &str, extra_connections: &str, extra_yaml: &str) -> Gateway {
        Gateway::start_full(
            free_port(),
            db,
            extra_connections,
            extra_yaml,
            Listeners::Http,
        )
    }

    /// Like [`Gateway::start_with_http`], also accepting remote agents on `tunnel_port`.
    pub fn start_with_tunnel_and_http(
        db: &str,
        extra_connections: &str,
        extra_yaml: &str,
    ) -> Gateway {
        Gateway::start_full(
            free_port(),
            db,
            extra_connections,
            extra_yaml,
            Listeners::TunnelAndHttp,
        )
    }

    fn start_full(
        api_port: u16,
        db: &str,
        extra_connections: &str,
        extra_yaml: &str,
        listeners: Listeners,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg_port = free_port();
        let tunnel_port = free_port();
        let http_port = free_port();
        let tunnel_listen = match listeners {
            Listeners::Tunnel => format!(", tunnel: 127.0.0.1:{tunnel_port}"),
            Listeners::Http => format!(", http: 127.0.0.1:{http_port}"),
            Listeners::TunnelAndHttp => {
                format!(", tunnel: 127.0.0.1:{tunnel_port}, http: 127.0.0.1:{http_port}")
            }
            Listeners::Base => String::new(),
        };
        let config = dir.path().join("sluice.yaml");
        let yaml = format!(
            "listen: {{ api: 127.0.0.1:{api_port}, postgres: 127.0.0.1:{pg_port}{tunnel_listen} }}\n\
             data_dir: {data}\n\
             {extra_yaml}\n\
             connections:\n\
             \x20 - name: {db}\n\
             \x20   kind: postgres\n\
             \x20   address: 127.0.0.1:{target}\n\
             \x20   database: {db}\n\
             \x20   user: postgres\n\
             \x20   password: env:SLUICE_TEST_TARGET_PASSWORD\n\
             {extra_connections}",
            data = dir.path().join("data").display(),
            target = pg().port,
        );
        std::fs::write(&config, yaml).expect("write config");
        let mut gw = Gateway {
            pg_port,
            api_port,
            tunnel_port,
            http_port,
            dir,
            config,
            child: None,
        };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        // Ports come from `free_port`, which another process may take before the gateway
        // binds: when its listener's port turns out taken, move it and start again.
        for attempt in 0..3 {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("gateway log");
            let mut child = Command::new(sluice_bin())
                .args(["gateway", "--config"])
                .arg(&self.config)
                .env("SLUICE_TEST_TARGET_PASSWORD", PG_PASSWORD)
                .env("SLUICE_LOG", "info,sluice_postgres=debug")
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("start sluice gateway");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", self.pg_port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().expect("gateway status").is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = self.log();
            if attempt == 2 || !log.contains("in use") {
                panic!("sluice gateway did not start:\n{log}");
            }
            let moved = free_port();
            let config = std::fs::read_to_string(&self.config).expect("config");
            let config = config.replace(
                &format!("postgres: 127.0.0.1:{}", self.pg_port),
                &format!("postgres: 127.0.0.1:{moved}"),
            );
            std::fs::write(&self.config, config).expect("config");
            self.pg_port = moved;
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway running").id()
    }

    /// Runs a `sluice` CLI command against this gateway's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(sluice_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run sluice")
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "sluice {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sluice ARGS` as the holder of `token` (verbs that act through the API).
    pub fn cli_as(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new(sluice_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("SLUICE_TOKEN", token)
            .output()
            .expect("run sluice")
    }

    /// `sluice ARGS --json` as the holder of `token`, which must succeed.
    pub fn cli_as_json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        let out = self.cli_as(token, &[args, &["--json"]].concat());
        assert!(
            out.status.success(),
            "sluice {args:?}: {}\ngateway log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("valid JSON")
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(args)).expect("valid JSON")
    }

    /// Adds `user` and returns a fresh token for them.
    pub fn user_token(&self, user: &str) -> String {
        self.cli_ok(&["users", "add", user, "--group", "engineers"]);
        self.cli_ok(&["tokens", "issue", user, "--ttl", "1h"])
            .trim()
            .to_owned()
    }

    pub fn conninfo(&self, db: &str, user: &str, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user={user} password={token}",
            self.pg_port
        )
    }

    /// Runs psql through the gateway; returns (success, stdout, stderr).
    pub fn psql(&self, conninfo: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t"])
            .arg(conninfo)
            .args(args)
            .output()
            .expect("run psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a psql script (stdin) through the gateway; returns (success, stdout, stderr).
    pub fn psql_script(
        &self,
        conninfo: &str,
        flags: &[&str],
        script: &str,
    ) -> (bool, String, String) {
        use std::io::Write;
        let mut child = Command::new("psql")
            .args(["-X", "-A", "-t"])
            .args(flags)
            .arg(conninfo)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .expect("write the psql script");
        }
        let out = child.wait_with_output().expect("psql finished");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn sessions(&self) -> Vec<serde_json::Value> {
        match self.cli_json(&["sessions", "list", "--json", "--limit", "1000"]) {
            serde_json::Value::Array(a) => a,
            other => panic!("sessions list is not an array: {other}"),
        }
    }

    pub fn session(&self, id: &str) -> serde_json::Value {
        self.cli_json(&["sessions", "show", id, "--json"])
    }

    /// Every statement event of every session, oldest session first.
    /// The text of every statement event, oldest session first.
    pub fn statement_texts(&self) -> Vec<String> {
        self.all_statements()
            .iter()
            .filter_map(|e| e["statement"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn all_statements(&self) -> Vec<serde_json::Value> {
        let mut sessions = self.sessions();
        sessions.reverse();
        let mut out = Vec::new();
        for s in sessions {
            let id = s["id"].as_str().expect("session id").to_owned();
            let detail = self.session(&id);
            for e in detail["events"].as_array().expect("events") {
                if e["kind"] == "statement" {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// Waits until the session index shows no open session (results are recorded
    /// asynchronously after the client has its answer).
    pub fn wait_sessions_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.sessions().iter().all(|s| !s["end"].is_null()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sessions still open: {:?}", self.sessions());
    }

    pub fn verify(&self) -> std::process::Output {
        self.cli(&["audit", "verify"])
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every file under the data directory plus the log, as text, for secret scans.
    pub fn everything_written(&self) -> String {
        let mut all = self.log();
        collect_text(&self.data_dir(), &mut all);
        all
    }

    /// Peak resident memory of the gateway process in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

fn collect_text(dir: &Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_text(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
    }
}

/// YAML for one more connection under `connections:`: `name` → database `db` on the test
/// server, with more keys (each `key: value`) appended.
pub fn extra_connection(name: &str, db: &str, keys: &[&str]) -> String {
    let mut yaml = format!(
        "  - name: {name}\n    kind: postgres\n    address: 127.0.0.1:{}\n    database: {db}\n    user: postgres\n    password: env:SLUICE_TEST_TARGET_PASSWORD\n",
        pg().port
    );
    for key in keys {
        yaml.push_str(&format!("    {key}\n"));
    }
    yaml
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; returns the status, the headers and the body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json_body: Option<&serde_json::Value>,
) -> (u16, String, String) {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_with(port, method, path, &auth, json_body)
}

/// Like [`http`], with extra header lines (each ending in `\r\n`).
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    auth: &str,
    json_body: Option<&serde_json::Value>,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    let body = json_body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read");
    let status = response[9..12].parse().expect("status");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_owned(), body.to_owned())
}

/// The `oidc-provider` harness in `tests/oidc` (a real OpenID Connect provider on
/// loopback); stopped when dropped (its stdin closes).
pub struct OidcProvider {
    pub issuer: String,
    child: Child,
}

pub const OIDC_SECRET: &str = "oidc-Client-Secret-7d2e9b";

pub fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl OidcProvider {
    /// Starts the provider for a client whose redirect URI is the gateway callback on
    /// `api_port`.
    pub fn start(api_port: u16) -> OidcProvider {
        use std::io::BufRead;
        let dir = oidc_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "run `npm ci` in {} (scripts/test does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .env("OIDC_PORT", "0")
            .env("OIDC_CLIENT_SECRET", OIDC_SECRET)
            .env(
                "OIDC_REDIRECT_URIS",
                format!("http://127.0.0.1:{api_port}/auth/oidc/callback"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node provider.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("provider's first line");
        let ready: serde_json::Value = serde_json::from_str(&line).expect("provider's JSON line");
        OidcProvider {
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
            child,
        }
    }

    pub fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// POSTs JSON to an admin endpoint (`/test/...`) and returns the JSON answer.
    pub fn admin(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let (status, _, answer) = http(
            self.port(),
            "POST",
            &format!("/test{path}"),
            None,
            Some(body),
        );
        assert_eq!(status, 200, "{path}: {answer}");
        serde_json::from_str(&answer).expect("admin JSON")
    }

    /// A JWT signed by `key` (`provider`, `rogue`, `none`) with these header overrides
    /// and claims.
    pub fn sign(&self, key: &str, header: serde_json::Value, claims: serde_json::Value) -> String {
        let answer = self.admin(
            "/sign",
            &serde_json::json!({ "header": header, "claims": claims, "key": key }),
        );
        answer["jwt"].as_str().expect("jwt").to_owned()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `identity:` YAML for a gateway that trusts `idp` (its client secret written to a
/// file in `dir`), mapping the provider's groups `idp-engineers` and `idp-auditors`, the
/// latter to role auditor; `extra` is appended under `identity:`.
pub fn oidc_identity(idp: &OidcProvider, dir: &Path, extra: &str) -> String {
    let secret_file = dir.join("oidc-secret");
    std::fs::write(&secret_file, OIDC_SECRET).expect("write the client secret");
    format!(
        "identity:\n\
         \x20 login_ttl: 1h\n\
         \x20 oidc:\n\
         \x20   issuer: {issuer}\n\
         \x20   client_id: sluice\n\
         \x20   client_secret: file:{secret}\n\
         \x20   group_map: {{ idp-engineers: engineers, idp-auditors: auditors }}\n\
         \x20   auditor_groups: [auditors]\n\
         {extra}",
        issuer = idp.issuer,
        secret = secret_file.display(),
    )
}

/// Runs `drive.mjs ARGS` (the browser stand-in); returns (success, stdout, stderr).
pub fn drive(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("node")
        .arg(oidc_dir().join("drive.mjs"))
        .args(args)
        .output()
        .expect("run drive.mjs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts a test peer that prints `ready` on its first line once it listens.
pub fn spawn_ready(command: &mut Command) -> Child {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the test peer");
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().expect("peer stdout"))
        .read_line(&mut ready)
        .expect("read the peer's first line");
    assert_eq!(ready.trim(), "ready", "the test peer did not start");
    child
}

/// A TCP connection to 127.0.0.1:`port` from another loopback address (`127.0.0.2`, say):
/// a second client host.
pub fn connect_from(source: &str, port: u16) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        socket.connect(addr).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}
