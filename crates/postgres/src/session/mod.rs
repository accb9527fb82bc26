//! The proxy loop of one authenticated session.
//!
//! * [`client::ClientToServer`] reads frontend messages, turns each statement execution
//!   (and each named prepared statement) into a [`sluice_core::Request`], waits until the
//!   pipeline has decided and durably recorded them, then forwards. For every message the
//!   server will answer it first queues an [`queue::Expect`].
//! * [`server::ServerToClient`] forwards the target's bytes as they arrive (whole read
//!   buffers, untouched), walking only frame headers, and settles the queue as answers
//!   complete — which yields each statement's outcome. Gateway-built answers (a refusal)
//!   sit in the queue and are written exactly when everything before them has been
//!   answered, so the client sees responses in protocol order.
//! * [`queue::State`] is the shared bookkeeping (pure, unit-tested); [`names::Names`]
//!   tracks prepared statements and portals as the server has them.

mod client;
mod mask;
mod names;
mod queue;
mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use sluice_core::{HoldChannel, Pipeline, SessionControl, SessionInfo};
use tokio::sync::Notify;

use self::client::{C2sEnd, ClientToServer};
use self::queue::State;
use self::server::ServerToClient;
use crate::stream::BoxStream;
use crate::{codec, lock};

const READ_BUFFER: usize = 64 << 10;

/// How long a queued FATAL error may wait for earlier answers before the session is cut.
const FATAL_DELIVERY: Duration = Duration::from_secs(30);

/// How long the server's remaining answers are read (and recorded) after the client left.
const DRAIN: Duration = Duration::from_secs(10);

/// How long the answers are read after the gateway cancelled what the target still ran
/// for a client that left.
const DRAIN_AFTER_CANCEL: Duration = Duration::from_secs(5);

/// Memory all sessions together may hold for large client messages (Query, Parse, Bind of
/// more than 1 MiB) while they are read whole; each may be up to `max_message_bytes`.
pub(crate) struct LargeMessages {
    available: Arc<tokio::sync::Semaphore>,
    budget: usize,
}

impl LargeMessages {
    /// Bytes all sessions may hold at once: [`LARGE_MESSAGE_BUDGET`], or one largest
    /// message if that is more.
    pub(crate) fn new(max_message: usize) -> Self {
        let budget = LARGE_MESSAGE_BUDGET
            .max(max_message)
            .min(tokio::sync::Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        LargeMessages {
            available: Arc::new(tokio::sync::Semaphore::new(budget)),
            budget,
        }
    }
}

const LARGE_MESSAGE_BUDGET: usize = 256 << 20;

/// State both directions share.
struct Shared {
    state: Mutex<State>,
    /// NoticeResponse frames for the client that do not answer anything (a statement held
    /// for review says so); written at the next frame boundary.
    notices: Mutex<BytesMut>,
    /// Wakes the server-to-client direction when an injection may be due.
    wake: Notify,
    /// Wakes the client-to-server direction when answers were settled.
    progress: Notify,
}

/// The frontend's side of [`SessionControl`]: the pipeline asks the session to end; the
/// server-to-client direction writes the FATAL error at the next frame boundary and stops.
#[derive(Default)]
pub(crate) struct SessionEnd {
    message: Mutex<Option<String>>,
    due: Notify,
}

impl SessionControl for SessionEnd {
    fn end(&self, message: &str) {
        *lock(&self.message) = Some(message.to_owned());
        // A stored permit: the session ends even if it was not listening at that moment.
        self.due.notify_one();
    }
}

impl SessionEnd {
    fn message(&self) -> Option<String> {
        lock(&self.message).clone()
    }

    /// Whether the pipeline asked to end the session.
    pub(crate) fn was_ended(&self) -> bool {
        lock(&self.message).is_some()
    }
}

/// Where a CancelRequest for a session lands. A statement held for review is withdrawn,
/// and the target is left alone: it is not running anything for this session, and a cancel
/// sent to it could arrive during the client's next statement. Otherwise the cancel is for
/// the statement the target runs.
#[derive(Default)]
pub(crate) struct CancelSignal {
    wake: Notify,
    /// A statement is held for review now.
    holding: AtomicBool,
    /// The statement held now was withdrawn by a CancelRequest.
    cancelled: AtomicBool,
}

impl CancelSignal {
    /// Withdraws the statement held for review; false when none is held.
    pub(crate) fn withdraw_held(&self) -> bool {
        if !self.holding.load(Ordering::SeqCst) {
            return false;
        }
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        true
    }
}

/// Marks the session as holding a statement until dropped.
struct Holding(Arc<CancelSignal>);

impl Holding {
    fn begin(signal: &Arc<CancelSignal>) -> Self {
        signal.cancelled.store(false, Ordering::SeqCst);
        signal.holding.store(true, Ordering::SeqCst);
        Holding(signal.clone())
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.holding.store(false, Ordering::SeqCst);
    }
}

/// The client side of a held statement: notices go out through the server-to-client
/// direction, a CancelRequest for this session withdraws.
struct ClientHold {
    shared: Arc<Shared>,
    cancel: Arc<CancelSignal>,
    /// The client closed its connection while a statement was held.
    client_gone: AtomicBool,
    /// What is held now is withdrawn (the client left, or queued too much behind it).
    withdrawing: AtomicBool,
}

impl ClientHold {
    /// Whether the client left (or queued too much) while a statement was held.
    fn is_client_gone(&self) -> bool {
        self.client_gone.load(Ordering::SeqCst)
    }

    /// The client left: whatever is held is withdrawn, now or when the hold begins.
    fn client_left(&self) {
        self.client_gone.store(true, Ordering::SeqCst);
        self.withdraw_held();
    }

    /// Withdraws what is held in the current read (the client queued too much behind it).
    fn withdraw_held(&self) {
        self.withdrawing.store(true, Ordering::SeqCst);
        self.cancel.wake.notify_waiters();
    }

    /// The current read is decided: a later hold starts afresh (unless the client is gone).
    fn decided(&self) {
        if !self.is_client_gone() {
            self.withdrawing.store(false, Ordering::SeqCst);
        }
    }
}

impl HoldChannel for ClientHold {
    fn notice(&self, message: &str) {
        codec::notice_response(&mut lock(&self.shared.notices), "01000", message);
        self.shared.wake.notify_one();
    }

    fn withdrawn(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // The hold begins now, not at the first poll: a cancel that arrives in between
        // withdraws it rather than going to the target.
        let holding = Holding::begin(&self.cancel);
        Box::pin(async move {
            let notified = holding.0.wake.notified();
            tokio::pin!(notified);
            // Registered before the flags are read, so a withdrawal in between is not missed.
            notified.as_mut().enable();
            if self.withdrawing.load(Ordering::SeqCst) || holding.0.cancelled.load(Ordering::SeqCst)
            {
                return;
            }
            notified.await;
        })
    }
}

/// A portal name no client can know, fresh for each refusal (`sluice-refused-` and 128
/// random bits): a refused extended-protocol message is replaced by an Execute of it, so
/// that the server fails the batch (see `Expect::Refused`). Fresh each time, so a name seen
/// in the server's log is never used again.
pub(super) fn refusal_portal() -> String {
    use rand::Rng;
    let bits: u128 = rand::thread_rng().gen();
    format!("sluice-refused-{bits:032x}")
}

/// Whether `text` contains any of `words`, ASCII case-insensitively, without copying it
/// (this runs for every statement).
fn mentions_any(text: &str, words: &[&[u8]]) -> bool {
    words.iter().any(|word| {
        text.as_bytes()
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
    })
}

fn io_reason(e: std::io::Error) -> String {
    format!("connection error: {e}")
}

/// How a session starts out, besides its two streams.
pub(crate) struct Start<'a> {
    /// The transaction status of the target's first ReadyForQuery.
    pub txn_status: u8,
    pub client_encoding: Option<&'a str>,
    /// Largest Query/Parse/Bind accepted from the client.
    pub max_message: usize,
    /// Signalled when the client sends a CancelRequest for this session.
    pub cancel: Arc<CancelSignal>,
    /// Set when the pipeline ends the session.
    pub end: Arc<SessionEnd>,
    /// The masking that covers this session, and the catalog of its target.
    pub masking: Option<(
        Arc<sluice_mask::SessionMasking>,
        Arc<crate::catalog::Catalog>,
    )>,
    /// Sends a CancelRequest for this session to the target.
    pub cancel_target: Pin<Box<dyn Future<Output = ()> + Send>>,
    pub large_messages: Arc<LargeMessages>,
}

/// Runs the session until either side closes. Returns why it ended.
pub(crate) async fn run<P: Pipeline>(
    pipeline: Arc<P>,
    info: Arc<SessionInfo>,
    client: BoxStream,
    upstream: BoxStream,
    start: Start<'_>,
) -> Option<String> {
    let Start {
        txn_status,
        client_encoding,
        max_message,
        cancel,
        end,
        masking,
        cancel_target,
        large_messages,
    } = start;
    let (client_r, client_w) = tokio::io::split(client);
    let (up_r, up_w) = tokio::io::split(upstream);
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new(txn_status, client_encoding)),
        notices: Mutex::new(BytesMut::new()),
        wake: Notify::new(),
        progress: Notify::new(),
    });
    let hold = ClientHold {
        shared: shared.clone(),
        cancel,
        client_gone: AtomicBool::new(false),
        withdrawing: AtomicBool::new(false),
    };
    let c2s = ClientToServer {
        pipeline: pipeline.clone(),
        info: info.clone(),
        shared: shared.clone(),
        hold,
        client: client_r,
        masked: masking.is_some(),
        upstream: up_w,
        next_request: 1,
        max_message,
        skip_until_sync: false,
        waiting_since: None,
        batches: 0,
        scans: 0,
        encoding_barrier: None,
        large_messages,
    };
    let s2c = ServerToClient {
        pipeline: pipeline.clone(),
        info: info.clone(),
        shared: shared.clone(),
        upstream: up_r,
        client: client_w,
        client_gone: false,
        end,
        masker: masking.map(|(m, catalog)| mask::Masker::new(m, catalog)),
        out: BytesMut::new(),
    };
    // Both directions are futures of this one task rather than two spawned tasks: a
    // round trip then wakes one task instead of two (measured: most of the proxy's cost
    // was scheduler wakeups). `select!` polls both, so a direction blocked on a full
    // socket never stops the other one from draining.
    let c2s = c2s.run();
    let s2c = s2c.run();
    tokio::pin!(c2s, s2c);
    let reason = tokio::select! {
        r = &mut c2s => {
            // Let the server direction deliver a queued FATAL error, or read and record
            // the answers still owed after the client left — but not forever.
            let (reason, wait, client_left) = match r {
                Ok(()) => (None, DRAIN, true),
                Err(C2sEnd::Io(e)) => (Some(e), DRAIN, true),
                Err(C2sEnd::Fatal(m)) => (Some(m), FATAL_DELIVERY, false),
            };
            let drained = tokio::time::timeout(wait, &mut s2c).await.is_ok();
            if !drained && client_left && lock(&shared.state).owed() > 0 {
                // The target still runs what the client left behind, and would finish it
                // (and commit it) unrecorded: cancel it, and record how it ended.
                cancel_target.await;
                let _ = tokio::time::timeout(DRAIN_AFTER_CANCEL, &mut s2c).await;
            }
            reason
        }
        r = &mut s2c => Some(r.err().unwrap_or_else(|| "the target closed the connection".into())),
    };
    // Whatever is still owed an answer ended with the session; record that. Neither
    // direction is polled again, so nothing else records it.
    let outcomes = lock(&shared.state).drain();
    for o in outcomes {
        pipeline.outcome(&info, o);
    }
    reason
}
