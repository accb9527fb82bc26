//! Hostile and broken clients: each gets a clear error or a clean close, and the
//! gateway keeps serving everyone else with the audit log intact.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use sluice_postgres::codec;

use crate::support::{connect_from, pg, Gateway};

pub fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", gw.pg_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads messages until the server closes or `stop` tag is seen; returns (tag, body) pairs.
pub fn read_messages(s: &mut TcpStream, stop: u8) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut header = [0u8; 5];
        if s.read_exact(&mut header).is_err() {
            return out;
        }
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        if s.read_exact(&mut body).is_err() {
            return out;
        }
        let tag = header[0];
        out.push((tag, body));
        if tag == stop {
            return out;
        }
    }
}

pub fn error_code(messages: &[(u8, Vec<u8>)]) -> Option<(String, String)> {
    messages.iter().find(|(t, _)| *t == b'E').map(|(_, b)| {
        let f = codec::parse_error_fields(b);
        (f.code, f.message)
    })
}

/// A raw client logged in through the gateway, positioned after ReadyForQuery.
pub fn logged_in(gw: &Gateway, db: &str, user: &str, token: &str) -> TcpStream {
    log_in(connect(gw), db, user, token)
}

fn log_in(mut s: TcpStream, db: &str, user: &str, token: &str) -> TcpStream {
    let mut out = BytesMut::new();
    codec::startup_message(&mut out, &[("user", user), ("database", db)]);
    s.write_all(&out).unwrap();
    let m = read_messages(&mut s, b'R');
    assert_eq!(m.last().unwrap().0, b'R');
    let mut out = BytesMut::new();
    codec::password_message(&mut out, token.as_bytes());
    s.write_all(&out).unwrap();
    let m = read_messages(&mut s, b'Z');
    assert_eq!(m.last().unwrap().0, b'Z', "{:?}", error_code(&m));
    s
}

#[test]
fn malformed_and_oversized_input_is_refused_cleanly() {
    pg().create_db("bad_db");
    let gw = Gateway::start("bad_db", "");
    let token = gw.user_token("mallory");

    // A 2 GiB startup packet length before authentication.
    let mut s = connect(&gw);
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).unwrap();
    let (code, msg) = error_code(&read_messages(&mut s, 0)).unwrap();
    assert_eq!(code, "08P01");
    assert!(msg.contains("invalid startup packet length"), "{msg}");

    // Garbage, truncated packets, and a client that hangs up mid-packet.
    let mut s = connect(&gw);
    s.write_all(b"\0\0\0\x10GET / HTTP/1.1\r\n").unwrap();
    assert!(error_code(&read_messages(&mut s, 0)).is_some());
    let mut s = connect(&gw);
    s.write_all(&[0, 0, 0, 40, 0, 3]).unwrap();
    drop(s);
    // A startup packet with an unterminated parameter.
    let mut s = connect(&gw);
    s.write_all(&[0, 0, 0, 13, 0, 3, 0, 0, b'u', b's', b'e', b'r', b'x'])
        .unwrap();
    let (code, _) = error_code(&read_messages(&mut s, 0)).unwrap();
    assert_eq!(code, "08P01");
    // Password message that is far too long.
    let mut s = connect(&gw);
    let mut out = BytesMut::new();
    codec::startup_message(&mut out, &[("user", "mallory"), ("database", "bad_db")]);
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'R');
    s.write_all(&[b'p', 0x10, 0, 0, 0]).unwrap();
    let (code, msg) = error_code(&read_messages(&mut s, 0)).unwrap();
    assert_eq!(code, "08P01", "{msg}");

    // After login: a 2 GiB Query length.
    let mut s = logged_in(&gw, "bad_db", "mallory", &token);
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b'S']).unwrap();
    let (code, msg) = error_code(&read_messages(&mut s, 0)).unwrap();
    assert_eq!(code, "08P01");
    assert!(msg.contains("exceeds the gateway's limit"), "{msg}");

    // After login: a length below the minimum, and an unknown message type.
    let mut s = logged_in(&gw, "bad_db", "mallory", &token);
    s.write_all(&[b'Q', 0, 0, 0, 2]).unwrap();
    assert_eq!(error_code(&read_messages(&mut s, 0)).unwrap().0, "08P01");
    let mut s = logged_in(&gw, "bad_db", "mallory", &token);
    s.write_all(&[b'Y', 0, 0, 0, 4]).unwrap();
    let (code, msg) = error_code(&read_messages(&mut s, 0)).unwrap();
    assert_eq!(code, "08P01");
    assert!(msg.contains("invalid frontend message type"), "{msg}");

    // A Bind whose parameter claims more bytes than the message holds.
    let mut s = logged_in(&gw, "bad_db", "mallory", &token);
    let mut out = BytesMut::new();
    out.extend_from_slice(b"P\0\0\0\x11\0SELECT $1\0\0\0");
    out.extend_from_slice(&[
        b'B', 0, 0, 0, 20, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x7f, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    s.write_all(&out).unwrap();
    let m = read_messages(&mut s, 0);
    assert_eq!(error_code(&m).unwrap().0, "08P01");

    // A client that vanishes in the middle of a large result.
    let mut s = logged_in(&gw, "bad_db", "mallory", &token);
    let sql = "SELECT repeat('y', 1000) FROM generate_series(1, 200000)\0";
    let mut out = BytesMut::new();
    out.extend_from_slice(b"Q");
    out.extend_from_slice(&((sql.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(sql.as_bytes());
    s.write_all(&out).unwrap();
    let mut some = [0u8; 65536];
    s.read_exact(&mut some).unwrap();
    drop(s);

    // Everyone else is still served, and the log verifies.
    let (ok, out, err) = gw.psql(
        &gw.conninfo("bad_db", "mallory", &token),
        &["-c", "SELECT 42"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42");
    gw.wait_sessions_closed();
    let verify = gw.verify();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let vanished = gw
        .all_statements()
        .into_iter()
        .find(|s| {
            s["statement"]
                .as_str()
                .unwrap()
                .starts_with("SELECT repeat('y'")
        })
        .unwrap();
    // The gateway told the server to finish and end the backend, and kept reading its
    // answers after the client left, so the statement's real outcome is on record.
    assert_eq!(vanished["status"], "ok", "{vanished}");
    assert_eq!(vanished["rows"], 200000, "{vanished}");
}

#[test]
fn protocol_negotiation_and_encryption_requests() {
    pg().create_db("nego_db");
    let gw = Gateway::start("nego_db", "");
    let token = gw.user_token("nina");

    // GSSENCRequest is declined with 'N'; the client may then go on in plaintext.
    let mut s = connect(&gw);
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    // Protocol 3.2 with a _pq_ option: NegotiateProtocolVersion, then a normal login.
    let mut out = BytesMut::new();
    codec::startup_message(
        &mut out,
        &[
            ("user", "nina"),
            ("database", "nego_db"),
            ("_pq_.unknown", "1"),
        ],
    );
    out[7] = 2; // minor version 2
    s.write_all(&out).unwrap();
    let m = read_messages(&mut s, b'R');
    assert_eq!(m[0].0, b'v', "NegotiateProtocolVersion first");
    assert_eq!(&m[0].1[..4], &196608i32.to_be_bytes());
    let mut out = BytesMut::new();
    codec::password_message(&mut out, token.as_bytes());
    s.write_all(&out).unwrap();
    let m = read_messages(&mut s, b'Z');
    assert_eq!(m.last().unwrap().0, b'Z');
    // Server parameters reach the client.
    assert!(m
        .iter()
        .any(|(t, b)| *t == b'S' && b.starts_with(b"server_version\0")));

    // Plaintext sent right after SSLRequest must not be taken as post-TLS data.
    let mut s = connect(&gw);
    let mut out = BytesMut::new();
    codec::ssl_request(&mut out);
    codec::startup_message(&mut out, &[("user", "nina"), ("database", "nego_db")]);
    s.write_all(&out).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"S");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        !rest.windows(1).any(|w| w == b"R"),
        "no authentication request may follow injected plaintext"
    );

    // Replication connections are refused.
    let mut s = connect(&gw);
    let mut out = BytesMut::new();
    codec::startup_message(
        &mut out,
        &[
            ("user", "nina"),
            ("database", "nego_db"),
            ("replication", "database"),
        ],
    );
    s.write_all(&out).unwrap();
    assert_eq!(error_code(&read_messages(&mut s, 0)).unwrap().0, "42501");
}

#[test]
fn a_connection_flood_is_turned_away_and_others_are_served_after_it() {
    pg().create_db("flood_db");
    let gw = Gateway::start_with("flood_db", "", "limits: { max_connections: 3 }");
    let token = gw.user_token("fred");
    let conn = gw.conninfo("flood_db", "fred", &token);
    // Three sockets that never authenticate take every slot.
    let idle: Vec<TcpStream> = (0..3).map(|_| connect(&gw)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, _, err) = gw.psql(&conn, &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("too many clients"), "{err}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, out, err) = gw.psql(&conn, &["-c", "SELECT 1"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1");
}

/// A client that leaves while its statement runs: the gateway records the answers for a
/// while, then cancels what the target still runs, so nothing finishes (and commits)
/// unrecorded; the record says how it ended.
#[test]
fn a_statement_left_running_by_a_client_that_left_is_cancelled_and_recorded() {
    pg().create_db("orphan_db");
    pg().psql_admin("orphan_db", "CREATE TABLE t(x int)");
    let gw = Gateway::start("orphan_db", "");
    let token = gw.user_token("olive");
    let mut s = logged_in(&gw, "orphan_db", "olive", &token);
    let mut out = BytesMut::new();
    crate::evasion::query(&mut out, "INSERT INTO t SELECT 777 FROM pg_sleep(60)");
    s.write_all(&out).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(s);
    // 10 s of reading what the target still owes, then the cancel.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let result = loop {
        let sessions = gw.sessions();
        if let Some(id) = sessions
            .iter()
            .find(|s| !s["end"].is_null())
            .and_then(|s| s["id"].as_str())
        {
            let events = gw.session(id)["events"].as_array().unwrap().clone();
            break events
                .into_iter()
                .find(|e| e["kind"] == "statement")
                .unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{sessions:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(result["status"], "error", "{result:#}");
    assert_eq!(result["error"]["code"], "57014", "{result:#}");
    assert_eq!(
        pg().psql_admin("orphan_db", "SELECT count(*) FROM t")
            .trim(),
        "0",
        "the INSERT did not finish on its own"
    );
    assert!(gw.verify().status.success());
}

/// A backend the target ends (pg_terminate_backend, a shutdown) ends the session with the
/// target's FATAL error for the client, and the record says the target closed it.
#[test]
fn a_session_the_target_ends_is_recorded_as_ended_by_the_target() {
    pg().create_db("terminated_db");
    let gw = Gateway::start("terminated_db", "");
    let token = gw.user_token("tess");
    let mut s = logged_in(&gw, "terminated_db", "tess", &token);
    let mut out = BytesMut::new();
    crate::evasion::query(&mut out, "SELECT 'tess-session', pg_backend_pid()");
    s.write_all(&out).unwrap();
    read_messages(&mut s, b'Z');
    pg().psql_admin(
        "terminated_db",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%tess-session%' AND pid <> pg_backend_pid()",
    );
    let (code, _) = error_code(&read_messages(&mut s, 0)).unwrap();
    assert_eq!(code, "57P01");
    gw.wait_sessions_closed();
    let sessions = gw.sessions();
    assert_eq!(
        sessions[0]["end_reason"], "the target closed the connection",
        "{sessions:#?}"
    );
}

/// Large statements from many sessions at once are all served (they take turns within
/// the memory budget for large messages), and each session's buffer shrinks after one.
#[test]
fn large_statements_from_many_sessions_at_once_are_all_served() {
    pg().create_db("large_db");
    let gw = std::sync::Arc::new(Gateway::start("large_db", ""));
    let token = gw.user_token("lars");
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (gw, token) = (gw.clone(), token.clone());
            std::thread::spawn(move || {
                let mut s = logged_in(&gw, "large_db", "lars", &token);
                let filler = "x".repeat(3 << 20);
                let mut out = BytesMut::new();
                crate::evasion::query(
                    &mut out,
                    &format!("SELECT {i} AS n, length('{filler}') AS len"),
                );
                // Twice in a row: the second one reuses or re-takes its share.
                let first = out.clone();
                out.extend_from_slice(&first);
                s.write_all(&out).unwrap();
                for _ in 0..2 {
                    let answer = read_messages(&mut s, b'Z');
                    assert!(error_code(&answer).is_none(), "{:?}", error_code(&answer));
                    let row = answer.iter().find(|(tag, _)| *tag == b'D').unwrap();
                    assert!(row.1.ends_with(b"3145728"), "session {i}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(gw.verify().status.success());
}

/// A password message is the token and its terminator, nothing after it (as PostgreSQL).
#[test]
fn a_password_message_with_bytes_after_the_token_is_refused() {
    pg().create_db("pwjunk_db");
    let gw = Gateway::start("pwjunk_db", "");
    let token = gw.user_token("pat");
    let mut s = connect(&gw);
    let mut out = BytesMut::new();
    codec::startup_message(&mut out, &[("user", "pat"), ("database", "pwjunk_db")]);
    s.write_all(&out).unwrap();
    assert_eq!(read_messages(&mut s, b'R').last().unwrap().0, b'R');
    let mut out = BytesMut::new();
    codec::password_message(&mut out, format!("{token}\0junk").as_bytes());
    s.write_all(&out).unwrap();
    let (code, message) = error_code(&read_messages(&mut s, 0)).unwrap();
    assert_eq!(code, "08P01");
    assert!(
        message.contains("invalid password packet size"),
        "{message}"
    );
    // The same token alone still signs in.
    drop(logged_in(&gw, "pwjunk_db", "pat", &token));
}

/// Sockets that never authenticate take at most 64 slots per address: one host cannot
/// lock everyone else out, and its own slots come back once they authenticate or leave.
#[test]
fn one_address_cannot_hold_every_slot_unauthenticated() {
    pg().create_db("handshake_db");
    let gw = Gateway::start("handshake_db", "");
    let token = gw.user_token("hal");
    let conn = gw.conninfo("handshake_db", "hal", &token);
    let idle: Vec<TcpStream> = (0..64).map(|_| connect(&gw)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _, err) = gw.psql(&conn, &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("too many clients"), "{err}");
    // Another address is served meanwhile.
    let mut other = log_in(
        connect_from("127.0.0.2", gw.pg_port),
        "handshake_db",
        "hal",
        &token,
    );
    let mut out = BytesMut::new();
    crate::evasion::query(&mut out, "SELECT 41 + 1");
    other.write_all(&out).unwrap();
    let answer = read_messages(&mut other, b'Z');
    assert!(
        answer
            .iter()
            .any(|(tag, body)| *tag == b'D' && body.ends_with(b"42")),
        "{answer:?}"
    );
    // An authenticated session does not count against its address.
    let _session = logged_in_after_freeing_one(&gw, idle, &token);
    drop(other);
}

/// Frees one of `idle`'s handshake slots, takes it with a session that authenticates, and
/// shows the address has room again for one more.
fn logged_in_after_freeing_one(gw: &Gateway, mut idle: Vec<TcpStream>, token: &str) -> TcpStream {
    idle.pop();
    std::thread::sleep(Duration::from_millis(300));
    let session = logged_in(gw, "handshake_db", "hal", token);
    let conn = gw.conninfo("handshake_db", "hal", token);
    let (ok, _, err) = gw.psql(&conn, &["-c", "SELECT 1"]);
    assert!(ok, "a slot came back once the session authenticated: {err}");
    drop(idle);
    session
}

#[test]
fn a_second_gateway_on_the_same_data_or_port_refuses_to_start() {
    pg().create_db("twice_db");
    let gw = Gateway::start("twice_db", "");
    // Same config: the data directory is locked (and the ports are taken).
    let out = std::process::Command::new(crate::support::sluice_bin())
        .args(["gateway", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another sluice gateway is already using data_dir"),
        "{stderr}"
    );
    // Another data directory, same PostgreSQL port: a clear error naming the key.
    let out = std::process::Command::new(crate::support::sluice_bin())
        .args(["gateway", "--config"])
        .arg(&gw.config)
        .env("SLUICE_DATA_DIR", gw.dir.path().join("other-data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(listen.postgres)"), "{stderr}");
    // The first gateway is unaffected.
    let token = gw.user_token("tim");
    assert!(
        gw.psql(&gw.conninfo("twice_db", "tim", &token), &["-c", "SELECT 1"])
            .0
    );
}
