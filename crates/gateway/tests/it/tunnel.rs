//! Remote agents: a real `sluice agent` process dialling a real gateway over TLS, serving
//! a connection whose credential only the agent can resolve; failures of either side;
//! keys and certificates; one session's large result against another's small queries.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{pg, sluice_bin, Gateway, PG_BIN, PG_PASSWORD};

/// The variable only the agent has: the gateway cannot resolve the remote connection's
/// password.
const AGENT_ENV: &str = "SLUICE_TEST_AGENT_PG_PASSWORD";

/// A gateway with the embedded connection `db` and `remote_db` served by agent `edge`.
fn gateway(db: &str) -> Gateway {
    pg().create_db(db);
    let remote = format!(
        "\x20 - name: remote_db\n\
         \x20   kind: postgres\n\
         \x20   agent: edge\n\
         \x20   address: 127.0.0.1:{port}\n\
         \x20   database: {db}\n\
         \x20   user: postgres\n\
         \x20   password: env:{AGENT_ENV}\n\
         \x20   tls: require\n",
        port = pg().port
    );
    Gateway::start_with_tunnel(db, &remote)
}

/// A running `sluice agent` process.
pub(crate) struct Agent {
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    /// Its environment besides the key (the credentials it resolves).
    env: Vec<(String, String)>,
}

impl Agent {
    fn start(gw: &Gateway, key: &str, fingerprint: &str) -> Agent {
        Agent::start_at(gw, gw.tunnel_port, key, fingerprint)
    }

    fn start_at(gw: &Gateway, port: u16, key: &str, fingerprint: &str) -> Agent {
        Agent::start_with(gw, port, key, fingerprint, &[])
    }

    fn start_with(gw: &Gateway, port: u16, key: &str, fingerprint: &str, extra: &[&str]) -> Agent {
        let env = [(AGENT_ENV, PG_PASSWORD)];
        Agent::start_env(gw, port, key, fingerprint, extra, &env)
    }

    /// An agent with `env` (and nothing else of the test's environment that matters).
    pub(crate) fn start_env(
        gw: &Gateway,
        port: u16,
        key: &str,
        fingerprint: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = gw.dir.path().join(format!("agent-{port}-{n}.log"));
        let mut agent = Agent {
            child: None,
            log,
            args: vec![
                "agent".into(),
                "--gateway".into(),
                format!("https://127.0.0.1:{port}"),
                "--fingerprint".into(),
                fingerprint.into(),
            ]
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        agent.spawn(key);
        agent
    }

    fn spawn(&mut self, key: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(sluice_bin())
            .args(&self.args)
            .env("SLUICE_AGENT_KEY", key)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SLUICE_LOG", "info,sluice_tunnel=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `sluice agents add NAME --json`: (key, fingerprint).
pub(crate) fn add_agent(gw: &Gateway, name: &str) -> (String, String) {
    let added = gw.cli_json(&["agents", "add", name, "--json"]);
    (
        added["key"].as_str().unwrap().to_owned(),
        added["fingerprint"].as_str().unwrap().to_owned(),
    )
}

pub(crate) fn agent_state(gw: &Gateway, name: &str) -> Value {
    gw.cli_json(&["agents", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap()
}

/// Waits until `check` holds, up to `limit`; returns how long it took.
pub(crate) fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} within {limit:?}");
}

fn remote_ok(gw: &Gateway, token: &str) -> bool {
    gw.psql(
        &gw.conninfo("remote_db", "rita", token),
        &["-c", "SELECT 1"],
    )
    .0
}

#[test]
fn remote_agent_serves_psql_and_pgbench() {
    let gw = gateway("tunnel_db");
    let token = gw.user_token("rita");
    let (key, fingerprint) = add_agent(&gw, "edge");
    assert!(key.starts_with("sla_"));
    assert_eq!(agent_state(&gw, "edge")["state"], "disconnected");

    // No agent yet: a clear error, and the embedded connection is unaffected.
    let (ok, _, err) = gw.psql(
        &gw.conninfo("remote_db", "rita", &token),
        &["-c", "SELECT 1"],
    );
    assert!(!ok && err.contains("agent edge is not connected"), "{err}");
    assert!(
        gw.psql(
            &gw.conninfo("tunnel_db", "rita", &token),
            &["-c", "SELECT 1"]
        )
        .0
    );

    let _agent = Agent::start(&gw, &key, &fingerprint);
    wait_until(Duration::from_secs(10), "the agent connects", || {
        remote_ok(&gw, &token)
    });
    let (ok, out, err) = gw.psql(
        &gw.conninfo("remote_db", "rita", &token),
        &["-c", "SELECT current_database(), current_user"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "tunnel_db|postgres");

    // pgbench through the remote agent, simple and prepared.
    let conninfo = gw.conninfo("remote_db", "rita", &token);
    let pgbench = |args: &[&str]| {
        let out = Command::new(format!("{PG_BIN}/pgbench"))
            .args(args)
            .arg(&conninfo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    pgbench(&["-i", "-s", "1", "-q"]);
    let out = pgbench(&["-S", "-c", "4", "-j", "2", "-T", "3", "-M", "prepared"]);
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let out = pgbench(&["-c", "2", "-T", "2", "-M", "extended"]);
    assert!(out.contains("number of failed transactions: 0"), "{out}");

    let state = agent_state(&gw, "edge");
    assert_eq!(state["state"], "connected", "{state}");
    assert_eq!(state["version"], env!("CARGO_PKG_VERSION"));
    assert!(state["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    let text = gw.cli_ok(&["agents", "list"]);
    assert!(text.starts_with("edge\tconnected"), "{text}");

    // Statements through the agent are audited like any other.
    gw.wait_sessions_closed();
    assert!(gw
        .all_statements()
        .iter()
        .any(|s| s["statement"] == "SELECT current_database(), current_user"));
    // Each session's record names the agent (and its address) that served it; embedded
    // ones name none.
    for session in gw.sessions() {
        let events = gw.session(session["id"].as_str().unwrap())["events"].clone();
        let open = &events[0];
        assert_eq!(open["kind"], "session_open");
        match session["connection"].as_str() {
            Some("remote_db") => assert!(
                open["served_by"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("edge (127.0.0.1:")),
                "{open}"
            ),
            _ => assert!(open["served_by"].is_null(), "{open}"),
        }
    }
    // The credential never reached the gateway: it could not resolve it, and nothing
    // it wrote contains it.
    assert!(!gw.everything_written().contains(PG_PASSWORD));
}

#[test]
fn agent_and_gateway_failures_recover() {
    let mut gw = gateway("tunnel_fail_db");
    let token = gw.user_token("rita");
    let (key, fingerprint) = add_agent(&gw, "edge");
    let mut agent = Agent::start(&gw, &key, &fingerprint);
    wait_until(Duration::from_secs(10), "the agent connects", || {
        remote_ok(&gw, &token)
    });

    // Kill the agent in the middle of a query: the client hears of it within 5 s.
    let conninfo = gw.conninfo("remote_db", "rita", &token);
    let mut slow = Command::new("psql")
        .args(["-X", "-q", "-c", "SELECT pg_sleep(60)"])
        .arg(&conninfo)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    agent.kill9();
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = slow.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the client was not told within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    slow.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("the connection to the target was lost"),
        "the client was not told why: {err}"
    );

    // Others go on: the embedded connection works, the remote one says why it cannot.
    assert!(
        gw.psql(
            &gw.conninfo("tunnel_fail_db", "rita", &token),
            &["-c", "SELECT 1"]
        )
        .0
    );
    let (ok, _, err) = gw.psql(&conninfo, &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("agent edge is not connected"), "{err}");

    // The agent comes back: new sessions work within 5 s.
    agent.spawn(&key);
    wait_until(
        Duration::from_secs(5),
        "sessions after the agent restarts",
        || remote_ok(&gw, &token),
    );

    // The gateway restarts, again and again: the agent reconnects by itself each time,
    // promptly (a tunnel the gateway accepted starts the backoff afresh).
    for _ in 0..4 {
        gw.restart();
        wait_until(
            Duration::from_secs(5),
            "the agent reconnects to a restarted gateway",
            || remote_ok(&gw, &token),
        );
    }
    // A stopped gateway has no tunnels: `agents list` says so at once.
    wait_until(Duration::from_secs(5), "agents list shows it", || {
        agent_state(&gw, "edge")["state"] == "connected"
    });
    gw.stop();
    assert_eq!(agent_state(&gw, "edge")["state"], "disconnected");
}

#[test]
fn agent_keys_and_certificates_are_checked() {
    let gw = gateway("tunnel_keys_db");
    let token = gw.user_token("rita");
    let (key, fingerprint) = add_agent(&gw, "edge");

    // A fingerprint that cannot be one is a usage error, not a retry loop.
    let out = Command::new(sluice_bin())
        .args(["agent", "--gateway"])
        .arg(format!("https://127.0.0.1:{}", gw.tunnel_port))
        .args(["--fingerprint", "abc"])
        .env("SLUICE_AGENT_KEY", &key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));

    // A wrong key.
    let forged = format!("sla_{}_{}", &key[4..12], "x".repeat(32));
    let wrong = Agent::start(&gw, &forged, &fingerprint);
    wait_until(Duration::from_secs(10), "the wrong key is refused", || {
        wrong.log().contains("unknown agent key")
    });
    assert!(!remote_ok(&gw, &token));

    // A man in the middle: another server (another gateway, its own certificate) at the
    // address the agent dials. The pinned fingerprint does not match: no key is sent.
    let other = gateway("tunnel_mitm_db");
    let mitm = Agent::start_at(&gw, other.tunnel_port, &key, &fingerprint);
    wait_until(
        Duration::from_secs(10),
        "the other certificate is refused",
        || mitm.log().contains("does not match the pinned fingerprint"),
    );
    assert!(!other.log().contains("agent connected"));

    // The real one connects; revoking its key closes the tunnel and keeps it out.
    let agent = Agent::start(&gw, &key, &fingerprint);
    wait_until(Duration::from_secs(10), "the agent connects", || {
        remote_ok(&gw, &token)
    });
    gw.cli_ok(&["agents", "revoke", "edge"]);
    wait_until(
        Duration::from_secs(10),
        "the revoked agent is cut off",
        || !remote_ok(&gw, &token),
    );
    wait_until(
        Duration::from_secs(10),
        "the revoked key is refused",
        || agent.log().contains("has been revoked"),
    );
    assert_eq!(agent_state(&gw, "edge")["state"], "revoked");
    // A name in use cannot be added again; a revoked one can, with a new key (rotation):
    // the new key serves the same connections, the old one stays refused.
    let taken = gw.cli(&["agents", "add", "other-edge"]);
    assert!(taken.status.success());
    let again = gw.cli(&["agents", "add", "other-edge"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let (new_key, _) = add_agent(&gw, "edge");
    drop(agent);
    let renewed = Agent::start(&gw, &new_key, &fingerprint);
    wait_until(Duration::from_secs(10), "the new key serves", || {
        remote_ok(&gw, &token)
    });
    wait_until(Duration::from_secs(5), "agents list shows it", || {
        agent_state(&gw, "edge")["state"] == "connected"
    });
    drop(renewed);
    // The tunnels are on the audit record: accepted, cut off by the revocation, and the
    // revoked key's attempts (once a minute).
    let records = || -> Vec<serde_json::Value> {
        sluice_audit::read_all(&gw.data_dir().join("audit"))
            .unwrap()
            .map(|r| serde_json::to_value(r.unwrap().event).unwrap())
            .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("agent_")))
            .collect()
    };
    wait_until(Duration::from_secs(5), "agent records", || {
        records().iter().any(|e| e["kind"] == "agent_disconnected")
    });
    let records = records();
    let of = |kind: &str| records.iter().filter(|e| e["kind"] == kind).count();
    assert!(of("agent_connected") >= 2, "{records:#?}");
    assert_eq!(of("agent_refused"), 1, "{records:#?}");
    assert!(
        records.iter().any(|e| e["kind"] == "agent_disconnected"
            && e["agent"] == "edge"
            && e["reason"] == "the agent's key was revoked"),
        "{records:#?}"
    );
    assert!(records
        .iter()
        .all(|e| e["address"].as_str().unwrap().starts_with("127.0.0.1:")));
    assert!(gw.verify().status.success());
    // Keys never show up in the gateway's files.
    assert!(!gw.everything_written().contains(&key));
    assert!(!gw.everything_written().contains(&new_key));
}

/// A host that opens tunnel sockets and says nothing holds at most 16 handshake slots: an
/// agent from elsewhere still gets in.
#[test]
fn idle_sockets_from_one_address_cannot_keep_agents_out() {
    let gw = gateway("tunnel_flood_db");
    // Started before its agent was added: the gateway says so.
    assert!(gw
        .log()
        .contains("the connection names an agent that is not registered"));
    let token = gw.user_token("rita");
    let (key, fingerprint) = add_agent(&gw, "edge");
    let idle: Vec<_> = (0..300)
        .map(|_| crate::support::connect_from("127.0.0.2", gw.tunnel_port))
        .collect();
    let _agent = Agent::start(&gw, &key, &fingerprint);
    wait_until(Duration::from_secs(10), "the agent connects", || {
        remote_ok(&gw, &token)
    });
    assert!(gw.log().contains("too many tunnel handshakes"));
    drop(idle);
}

#[test]
fn a_large_slow_result_does_not_stall_other_sessions() {
    let gw = gateway("tunnel_hol_db");
    let token = gw.user_token("rita");
    let (key, fingerprint) = add_agent(&gw, "edge");
    let _agent = Agent::start(&gw, &key, &fingerprint);
    wait_until(Duration::from_secs(10), "the agent connects", || {
        remote_ok(&gw, &token)
    });

    // Session A pulls ~300 MB with COPY, which psql writes out as it arrives, into a
    // reader that does not read for 8 s: psql stops reading its socket, the gateway stops
    // reading A's stream, and A's window in the tunnel fills and stays full.
    let conninfo = gw.conninfo("remote_db", "rita", &token);
    let mut big = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "psql -X -q -c \"COPY (SELECT repeat('x', 1000) FROM generate_series(1, 300000)) TO STDOUT\" '{conninfo}' | (sleep 8; cat > /dev/null)"
        ))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // Session B's small queries go through meanwhile, each at its usual speed.
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        let (ok, out, err) = gw.psql(&conninfo, &["-c", &format!("SELECT {i}")]);
        assert!(ok, "{err}");
        assert_eq!(out.trim(), i.to_string());
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        big.try_wait().unwrap().is_none(),
        "the large result finished too early to prove anything"
    );
    // Far above a normal round trip (~10-50 ms here), far below the 8 s A is stalled.
    assert!(
        slowest < Duration::from_secs(3),
        "slowest small query took {slowest:?}"
    );
    assert!(big.wait().unwrap().success());
}

#[test]
fn several_agents_serve_one_connection() {
    let gw = gateway("tunnel_ha_db");
    let token = gw.user_token("rita");
    let (key, fingerprint) = add_agent(&gw, "edge");
    let mut first = Agent::start(&gw, &key, &fingerprint);
    wait_until(Duration::from_secs(10), "the first agent connects", || {
        remote_ok(&gw, &token)
    });
    // A second agent process with the same key, as a standby beside the first.
    let second = Agent::start_at(&gw, gw.tunnel_port, &key, &fingerprint);
    wait_until(Duration::from_secs(10), "both agents are listed", || {
        agent_state(&gw, "edge")["tunnels"]
            .as_array()
            .map_or(0, Vec::len)
            == 2
    });
    // One goes away: sessions keep working through the other, with no pause.
    first.kill9();
    wait_until(
        Duration::from_secs(5),
        "the gateway notices the lost agent",
        || {
            agent_state(&gw, "edge")["tunnels"]
                .as_array()
                .map_or(0, Vec::len)
                == 1
        },
    );
    for _ in 0..5 {
        assert!(remote_ok(&gw, &token));
    }
    assert!(second.log().contains("connected to the gateway"));
}

#[test]
fn an_agent_opens_only_the_targets_it_allows() {
    let gw = gateway("tunnel_allow_db");
    let token = gw.user_token("rita");
    let (key, fingerprint) = add_agent(&gw, "edge");
    let agent = Agent::start_with(
        &gw,
        gw.tunnel_port,
        &key,
        &fingerprint,
        &["--allow-target", "10.0.0.*:5432"],
    );
    wait_until(Duration::from_secs(10), "the agent connects", || {
        agent_state(&gw, "edge")["state"] == "connected"
    });
    let (ok, _, err) = gw.psql(
        &gw.conninfo("remote_db", "rita", &token),
        &["-c", "SELECT 1"],
    );
    assert!(
        !ok && err.contains("this agent does not serve that target"),
        "{err}"
    );
    assert!(agent
        .log()
        .contains("not among this agent's --allow-target"));
    drop(agent);
    // A secret reference the agent was not told to resolve: refused the same way.
    let agent = Agent::start_with(
        &gw,
        gw.tunnel_port,
        &key,
        &fingerprint,
        &["--allow-secret", "env:SOMETHING_ELSE_*"],
    );
    wait_until(
        Duration::from_secs(10),
        "the agent refuses the secret",
        || {
            let (ok, _, err) = gw.psql(
                &gw.conninfo("remote_db", "rita", &token),
                &["-c", "SELECT 1"],
            );
            !ok && err.contains("this agent does not serve that target")
        },
    );
    assert!(agent.log().contains("--allow-secret"));
    drop(agent);
    let port = pg().port.to_string();
    let allowed = format!("127.0.0.1:{port}");
    let secret = format!("env:{AGENT_ENV}");
    let _agent = Agent::start_with(
        &gw,
        gw.tunnel_port,
        &key,
        &fingerprint,
        &["--allow-target", &allowed, "--allow-secret", &secret],
    );
    wait_until(Duration::from_secs(10), "the allowed target works", || {
        remote_ok(&gw, &token)
    });
}
