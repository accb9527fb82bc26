//! SIGKILL loses no acknowledged event: a child process appends until it is killed.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_audit::{verify, AuditWriter, Durability, WriterOptions};

const DIR_VAR: &str = "SLUICE_AUDIT_CRASH_DIR";
const MODE_VAR: &str = "SLUICE_AUDIT_CRASH_MODE";

/// Runs only as the child of `kill_loses_no_acknowledged_event`: appends from 8 tasks and prints
/// `acked <seq>` after each acknowledgement, until killed (or after 30 s as a safety net).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let durability = match std::env::var(MODE_VAR).as_deref() {
        Ok("write") => Durability::Write,
        _ => Durability::Fsync,
    };
    let opts = WriterOptions {
        durability,
        segment_bytes: 16 * 1024,
    };
    let writer = AuditWriter::open(Path::new(&dir), opts).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let mut id = task * 1_000_000;
                while Instant::now() < deadline {
                    id += 1;
                    let events = vec![common::statement(id), common::statement(id)];
                    let positions = writer.append_durable(events).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {}", positions[1].seq).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

fn kill_and_check(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir.path())
        .env(MODE_VAR, mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked = 0;
    let mut count = 0;
    for line in stdout.lines() {
        if let Some(seq) = line.unwrap().strip_prefix("acked ") {
            acked = acked.max(seq.parse::<u64>().unwrap());
            count += 1;
            if count == 500 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(count, 500, "child stopped early");

    let report = verify(dir.path()).unwrap();
    assert!(
        report.events >= acked,
        "{} events on disk, {acked} acknowledged",
        report.events
    );
    assert!(report.segments > 1, "rotation was exercised");
    let writer = AuditWriter::open(dir.path(), WriterOptions::default()).unwrap();
    assert_eq!(writer.head().0, report.events);
    drop(writer);
}

#[test]
fn kill_loses_no_acknowledged_event_fsync() {
    kill_and_check("fsync");
}

#[test]
fn kill_loses_no_acknowledged_event_write() {
    kill_and_check("write");
}
