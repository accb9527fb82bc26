//! How the console's session queries scale: fills a fresh store with SESSIONS sessions of
//! STATEMENTS_PER_SESSION indexed statements each (default 100 000 × 20 = 2 million) and
//! times the queries the sessions page makes. Run by `bench/console-index.sh`:
//!
//!     cargo run --release -p sluice-store --example index_scale [-- SESSIONS PER_SESSION]
//!
//! Prints one line per query: its median and worst time over 20 runs.

use std::time::{Duration, Instant};

use sluice_store::{IndexEntry, IndexPosition, SessionFilter, SessionRow, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let sessions: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let per_session: u64 = args.next().map_or(Ok(20), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("sluice.db"))?;

    let started = Instant::now();
    let mut batch = Vec::new();
    let mut seq = 0;
    for s in 0..sessions {
        let id = format!("{s:016x}");
        store.insert_session(&SessionRow {
            id: id.clone(),
            user: format!("user{}", s % 50),
            actor: if s % 10 == 0 { "agent" } else { "human" }.into(),
            connection: format!("db{}", s % 5),
            protocol: "postgres".into(),
            client_addr: "10.0.0.1:5000".into(),
            started_ms: 1_700_000_000_000 + s as i64 * 1000,
            ended_ms: Some(1_700_000_000_000 + s as i64 * 1000 + 500),
            end_reason: None,
            statements: per_session,
            audit_segment: 1,
            audit_offset: 0,
            audit_seq: seq + 1,
            denied: 0,
            held: 0,
            masked: 0,
        })?;
        for n in 1..=per_session {
            seq += 1;
            // One session in 1000 has a denied statement; one statement in all has the
            // needle (in the oldest session, so a text search must scan everything).
            let denied = s % 1000 == 7 && n == 1;
            let text = if s == 0 && n == 1 {
                "SELECT * FROM ledger WHERE note = 'needle'".to_owned()
            } else {
                format!(
                    "SELECT id, total FROM orders WHERE customer_id = {} AND day = {n}",
                    s * 7
                )
            };
            batch.push(IndexEntry::Statement {
                session: id.clone(),
                statement_id: n,
                seq,
                time_ms: 0,
                decision: if denied { "deny" } else { "allow" }.into(),
                held: false,
                text,
            });
        }
        if batch.len() >= 5000 {
            let at = IndexPosition {
                segment: 1,
                offset: seq,
                seq,
            };
            store.index_audit(&batch, at)?;
            batch.clear();
        }
    }
    let at = IndexPosition {
        segment: 1,
        offset: seq,
        seq,
    };
    store.index_audit(&batch, at)?;
    println!(
        "indexed {sessions} sessions, {seq} statements in {:.1} s ({:.0} statements/s)",
        started.elapsed().as_secs_f64(),
        seq as f64 / started.elapsed().as_secs_f64()
    );

    let page = |f: SessionFilter| SessionFilter { limit: 51, ..f };
    let middle = 1_700_000_000_000 + (sessions / 2) as i64 * 1000;
    let queries: Vec<(&str, SessionFilter)> = vec![
        ("newest page", page(SessionFilter::default())),
        (
            "page in the middle (keyset)",
            page(SessionFilter {
                after: Some((middle, format!("{:016x}", sessions / 2))),
                ..SessionFilter::default()
            }),
        ),
        (
            "one user",
            page(SessionFilter {
                user: Some("user7".into()),
                ..SessionFilter::default()
            }),
        ),
        (
            "agents on one connection",
            page(SessionFilter {
                actor: Some("agent".into()),
                connection: Some("db0".into()),
                ..SessionFilter::default()
            }),
        ),
        (
            "with a denied statement",
            page(SessionFilter {
                denied: true,
                ..SessionFilter::default()
            }),
        ),
        (
            "statement text, common",
            page(SessionFilter {
                statement: Some("customer_id".into()),
                ..SessionFilter::default()
            }),
        ),
        (
            "statement text, in one statement (full scan)",
            page(SessionFilter {
                statement: Some("needle".into()),
                ..SessionFilter::default()
            }),
        ),
    ];
    for (name, filter) in queries {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..20 {
            let t = Instant::now();
            rows = store.list_sessions(&filter)?.len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{name:<46} {rows:>3} rows  median {:>9}  worst {:>9}",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
