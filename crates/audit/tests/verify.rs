//! The verifier accepts an intact log and names the first problem of a tampered one.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use sluice_audit::{verify, AuditWriter, VerifyError, VerifyErrorKind, WriterOptions};

use common::{read_lines, segment_path, statement, write_lines};

/// A log of `count` statements; with `per_segment`, one segment per that many events.
fn write_log(dir: &Path, count: u64, per_segment: Option<u64>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let opts = WriterOptions {
        segment_bytes: if per_segment.is_some() { 1 } else { u64::MAX },
        ..WriterOptions::default()
    };
    let writer = AuditWriter::open(dir, opts).unwrap();
    let batch = per_segment.unwrap_or(count);
    runtime.block_on(async {
        for start in (1..=count).step_by(batch as usize) {
            let events = (start..(start + batch).min(count + 1))
                .map(statement)
                .collect();
            writer.append_durable(events).await.unwrap();
        }
    });
}

fn problem(dir: &Path) -> VerifyError {
    verify(dir).unwrap_err()
}

#[test]
fn good_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10, Some(3));
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.events, 10);
    assert_eq!(report.segments, 4);
    let last = read_lines(dir.path(), 4).pop().unwrap();
    assert!(last.ends_with(&format!("\"hash\":\"{}\"}}", report.head_hash)));
}

#[test]
fn empty_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.events, report.segments), (0, 0));
    assert_eq!(report.head_hash, sluice_audit::GENESIS_HASH);
    assert!(matches!(
        problem(&dir.path().join("missing")).kind,
        VerifyErrorKind::Unreadable { .. }
    ));
}

#[test]
fn edited_field_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, None);
    let mut lines = read_lines(dir.path(), 1);
    lines[2] = lines[2].replace("SELECT 3", "SELECT 4");
    write_lines(dir.path(), 1, &lines);
    let err = problem(dir.path());
    assert_eq!(
        err,
        VerifyError {
            segment: "audit-000001.jsonl".into(),
            line: 3,
            seq: Some(3),
            kind: VerifyErrorKind::Changed,
        }
    );
    assert_eq!(
        err.to_string(),
        "event seq 3 (audit-000001.jsonl line 3) was changed: its hash does not match its content"
    );
}

#[test]
fn edited_hash_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3, None);
    let mut lines = read_lines(dir.path(), 1);
    // The last hex digit of the hash sits just before the closing `"}`.
    let digit = lines[2].len() - 3;
    let other = if &lines[2][digit..digit + 1] == "0" {
        "1"
    } else {
        "0"
    };
    lines[2].replace_range(digit..digit + 1, other);
    write_lines(dir.path(), 1, &lines);
    let err = problem(dir.path());
    assert_eq!((err.line, err.seq), (3, Some(3)));
    assert_eq!(err.kind, VerifyErrorKind::Changed);
}

#[test]
fn deleted_line_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, None);
    let mut lines = read_lines(dir.path(), 1);
    lines.remove(1);
    write_lines(dir.path(), 1, &lines);
    let err = problem(dir.path());
    assert_eq!((err.line, err.seq), (2, Some(3)));
    assert_eq!(
        err.kind,
        VerifyErrorKind::Dropped {
            expected_seq: 2,
            found_seq: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "events were dropped: expected seq 2 at audit-000001.jsonl line 2 but found seq 3, so 1 event(s) are missing"
    );
}

#[test]
fn deleted_last_line_of_segment_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 6, Some(3));
    let mut lines = read_lines(dir.path(), 1);
    lines.pop();
    write_lines(dir.path(), 1, &lines);
    let err = problem(dir.path());
    assert_eq!((err.segment.as_str(), err.line), ("audit-000002.jsonl", 1));
    assert_eq!(
        err.kind,
        VerifyErrorKind::Dropped {
            expected_seq: 3,
            found_seq: 4
        }
    );
}

#[test]
fn swapped_lines_are_reordered() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, None);
    let mut lines = read_lines(dir.path(), 1);
    lines.swap(1, 2);
    write_lines(dir.path(), 1, &lines);
    let err = problem(dir.path());
    assert_eq!((err.line, err.seq), (2, Some(3)));
    assert_eq!(err.kind, VerifyErrorKind::Reordered);
    assert_eq!(
        err.to_string(),
        "event seq 3 (audit-000001.jsonl line 2) is out of order: events were moved or duplicated"
    );
}

#[test]
fn duplicated_line_is_reordered() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3, None);
    let mut lines = read_lines(dir.path(), 1);
    lines.insert(2, lines[1].clone());
    write_lines(dir.path(), 1, &lines);
    let err = problem(dir.path());
    assert_eq!((err.line, err.seq), (3, Some(2)));
    assert_eq!(err.kind, VerifyErrorKind::Reordered);
}

#[test]
fn deleted_middle_segment_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 9, Some(3));
    fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let err = problem(dir.path());
    assert_eq!((err.segment.as_str(), err.line), ("audit-000003.jsonl", 1));
    assert_eq!(
        err.kind,
        VerifyErrorKind::Dropped {
            expected_seq: 4,
            found_seq: 7
        }
    );
}

#[test]
fn changed_prev_is_broken_link() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 4, None);
    let mut lines = read_lines(dir.path(), 1);
    let prev_of_second = lines[0].rsplit("\"hash\":\"").next().unwrap()[..64].to_string();
    lines[1] = lines[1].replace(&prev_of_second, &"a".repeat(64));
    write_lines(dir.path(), 1, &lines);
    let err = problem(dir.path());
    assert_eq!((err.line, err.seq), (2, Some(2)));
    assert_eq!(err.kind, VerifyErrorKind::BrokenLink);
    assert!(err
        .to_string()
        .contains("is not linked to the event before it"));
}

#[test]
fn garbage_line_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3, None);
    let mut lines = read_lines(dir.path(), 1);
    lines[1] = "{\"seq\":2,\"oops\":true}".to_string();
    write_lines(dir.path(), 1, &lines);
    let err = problem(dir.path());
    assert_eq!((err.line, err.seq), (2, None));
    assert!(
        matches!(err.kind, VerifyErrorKind::Malformed { .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with("audit-000001.jsonl line 2 is not a valid audit record"));
}

#[test]
fn torn_line_in_earlier_segment_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 4, Some(2));
    let path = segment_path(dir.path(), 1);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, &text[..text.len() - 10]).unwrap();
    let err = problem(dir.path());
    assert_eq!((err.segment.as_str(), err.line), ("audit-000001.jsonl", 2));
    assert!(
        matches!(err.kind, VerifyErrorKind::Malformed { .. }),
        "{err}"
    );
}
