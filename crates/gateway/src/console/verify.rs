//! The audit page's chain check: `sluice audit verify` run inside the gateway on request,
//! one at a time, its last result kept for the page.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use sluice_store::Store;

/// The last check, and whether one is running.
#[derive(Default, Clone)]
pub struct VerifyStatus {
    pub running: bool,
    pub started: Option<SystemTime>,
    pub finished: Option<SystemTime>,
    /// `Ok(summary)` for an intact log, `Err(the first problem)` otherwise.
    pub outcome: Option<Result<String, String>>,
    /// Who asked for it.
    pub by: Option<String>,
}

/// Starts a check unless one is running; `false` when one was.
pub fn start(
    console: Arc<super::ConsoleState>,
    audit_dir: PathBuf,
    store: Arc<Store>,
    by: &str,
) -> bool {
    {
        let mut status = lock(&console);
        if status.running {
            return false;
        }
        *status = VerifyStatus {
            running: true,
            started: Some(SystemTime::now()),
            by: Some(by.to_owned()),
            ..status.clone()
        };
    }
    tokio::task::spawn_blocking(move || {
        let anchor = store
            .audit_anchor()
            .ok()
            .flatten()
            .map(|(seq, hash)| sluice_audit::Anchor { seq, hash });
        // A panic must not leave the check marked as running for good.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sluice_audit::verify_with_anchor(&audit_dir, anchor.as_ref())
        }));
        let outcome = match checked {
            Ok(Ok(report)) => Ok(format!(
                "intact: {} events in {} segment(s), head {}",
                report.events, report.segments, report.head_hash
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the check stopped unexpectedly; see the gateway's log".to_owned()),
        };
        let mut status = lock(&console);
        status.running = false;
        status.finished = Some(SystemTime::now());
        status.outcome = Some(outcome);
    });
    true
}

pub fn current(console: &super::ConsoleState) -> VerifyStatus {
    lock(console).clone()
}

fn lock(console: &super::ConsoleState) -> std::sync::MutexGuard<'_, VerifyStatus> {
    console
        .verify
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
