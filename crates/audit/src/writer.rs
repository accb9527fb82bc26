//! The writer: records are chained and written by the calling task under one lock (the
//! lock's order is the chain's order), and one background thread runs fdatasync for
//! everything written so far (group commit by sequence number).
//!
//! Writing inline instead of handing every record to a writer thread matters on the
//! statement path: a thread handoff costs two context switches per record, which was
//! most of the gateway's CPU under load.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::AuditError;
use crate::event::Event;
use crate::record::{self, EncodedEvent};
use crate::recover;
use crate::segment;

/// When `append_durable` resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the batch was written and `fdatasync`ed: survives power loss.
    #[default]
    Fsync,
    /// After the batch was written (`write(2)`): survives the process being killed, not power
    /// loss. `fdatasync` still runs in the background within [`DEFERRED_SYNC`], but nobody
    /// waits for it.
    Write,
}

/// Settings of an [`AuditWriter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// When appends are acknowledged.
    pub durability: Durability,
    /// A new segment is started before a write once the current one holds at least this many
    /// bytes. A write is never split, so segments may overshoot by one write.
    pub segment_bytes: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            durability: Durability::Fsync,
            segment_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Where a record's line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// Segment number (`audit-NNNNNN.jsonl`).
    pub segment: u32,
    /// Byte offset of the line in the segment.
    pub offset: u64,
    /// The record's seq.
    pub seq: u64,
}

/// How long records nobody waits on (fire-and-forget appends, and everything in `Write`
/// mode) may stay unwritten or unsynced.
pub const DEFERRED_SYNC: Duration = Duration::from_millis(20);

/// Fire-and-forget records are buffered up to this size before being written inline.
const MAX_PENDING: usize = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Last seq and hash chained.
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    hash: String,
}

/// The open segment and the chain. Everything here changes under one lock.
struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    segment: u32,
    /// Length of the segment up to the last successful write.
    len: u64,
    /// Head of the chain, including records still in `pending`.
    head: Head,
    /// Head of the chain as far as it is in the file.
    written_head: Head,
    /// Chained lines of fire-and-forget records not written yet.
    pending: Vec<u8>,
    /// Fire-and-forget records handed over while another caller held the lock; the next
    /// holder chains them before anything else.
    handoff: mpsc::Receiver<EncodedEvent>,
    /// Seq of the last record that reached the file.
    written_seq: u64,
    /// A failed write may have left bytes beyond `len` that must be cut off first.
    dirty: bool,
    /// A failure whose submitter was not told; the next flush reports it.
    unreported: Option<AuditError>,
    /// An fdatasync failed. After that, a later successful sync proves nothing (the
    /// kernel may have dropped the dirty pages), so every later append fails until the
    /// log is reopened — the gateway then refuses statements instead of running them
    /// unrecorded.
    sync_failed: Option<AuditError>,
}

impl Log {
    /// Chains records handed over while the lock was busy, in the order they came.
    fn take_handoffs(&mut self) {
        while let Ok(event) = self.handoff.try_recv() {
            let mut line = Vec::with_capacity(512);
            self.chain(std::slice::from_ref(&event), &mut line);
            self.pending.extend_from_slice(&line);
        }
    }

    fn path(&self) -> String {
        self.dir
            .join(segment::file_name(self.segment))
            .display()
            .to_string()
    }

    /// Chains `events` after everything before them; returns where each line will start.
    fn chain(&mut self, events: &[EncodedEvent], out: &mut Vec<u8>) -> Vec<Position> {
        let mut positions = Vec::with_capacity(events.len());
        for event in events {
            let seq = self.head.seq + 1;
            positions.push(Position {
                segment: self.segment,
                offset: self.len + (self.pending.len() + out.len()) as u64,
                seq,
            });
            let hash = record::append_line(seq, &self.head.hash, event, out);
            self.head = Head { seq, hash };
        }
        positions
    }

    /// Writes pending lines followed by `lines` (already chained after them).
    fn write(&mut self, lines: &[u8]) -> Result<(), AuditError> {
        if let Some(err) = &self.sync_failed {
            // Nothing more is written; do not let buffered records pile up either.
            self.pending.clear();
            self.head = self.written_head.clone();
            return Err(err.clone());
        }
        if let Err(err) = self.prepare() {
            // Nothing of this write counts; rewind the chain to what is in the file.
            self.pending.clear();
            self.head = self.written_head.clone();
            return Err(err);
        }
        let result = if self.pending.is_empty() {
            self.file.write_all(lines)
        } else {
            self.pending.extend_from_slice(lines);
            self.file.write_all(&self.pending)
        };
        let written = if self.pending.is_empty() {
            lines.len()
        } else {
            self.pending.len()
        };
        match result {
            Ok(()) => {
                self.len += written as u64;
                self.pending.clear();
                self.written_seq = self.head.seq;
                self.written_head = self.head.clone();
                Ok(())
            }
            Err(err) => {
                // Nothing of this write counts: cut it off before the next one and rewind
                // the chain to what is in the file.
                self.dirty = true;
                self.pending.clear();
                self.head = self.written_head.clone();
                Err(AuditError::io(format!("cannot write {}", self.path()), err))
            }
        }
    }

    /// Cuts off what a failed write left behind, then starts a new segment if this one is
    /// full (after making it durable).
    fn prepare(&mut self) -> Result<(), AuditError> {
        if self.dirty {
            self.file.set_len(self.len).map_err(|err| {
                AuditError::io(
                    format!("cannot cut a failed write off {}", self.path()),
                    err,
                )
            })?;
            self.dirty = false;
        }
        if self.len > 0 && self.len >= self.segment_bytes {
            let next = self.segment.checked_add(1).ok_or_else(|| {
                AuditError::io(
                    "cannot start a new audit segment",
                    std::io::Error::other("segment numbers exhausted"),
                )
            })?;
            if let Err(err) = self.file.sync_data() {
                // Sticky, as for the sync thread: a later success would prove nothing.
                let err = AuditError::io(format!("cannot sync {}", self.path()), err);
                self.sync_failed = Some(err.clone());
                return Err(err);
            }
            self.file = open_segment(&self.dir, next)?;
            self.segment = next;
            self.len = 0;
        }
        Ok(())
    }
}

/// Progress of the background sync, published to waiters.
#[derive(Debug, Clone, Default)]
struct SyncStatus {
    /// Every record up to this seq is on stable storage.
    synced_seq: u64,
    /// Hash of the record at `synced_seq`.
    synced_hash: String,
    /// A sync failed: nothing after `synced_seq` will ever be confirmed.
    error: Option<AuditError>,
}

/// What the sync thread is asked to do.
#[derive(Default)]
struct SyncRequest {
    requested: bool,
    closing: bool,
}

struct Inner {
    durability: Durability,
    log: Arc<Mutex<Log>>,
    /// Where `append` leaves a record instead of waiting for a busy lock: waiting would
    /// put the session's thread to sleep (a futex round trip) for a record nobody awaits.
    handoff: mpsc::Sender<EncodedEvent>,
    request: Arc<(Mutex<SyncRequest>, Condvar)>,
    status: watch::Sender<SyncStatus>,
    syncs: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    /// Writes and syncs what is pending, then stops the sync thread.
    fn drop(&mut self) {
        {
            let (request, wake) = &*self.request;
            lock(request).closing = true;
            wake.notify_one();
        }
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("the audit sync thread panicked");
            }
        }
    }
}

/// Handle to the audit log writer of one directory. Cheap to clone; when the last clone is
/// dropped, pending records are written and synced (the drop waits for it).
///
/// Only one writer may be open on a directory at a time.
#[derive(Clone)]
pub struct AuditWriter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (seq, hash) = self.head();
        f.debug_struct("AuditWriter")
            .field("seq", &seq)
            .field("hash", &hash)
            .finish()
    }
}

impl AuditWriter {
    /// Opens (creating if needed) the log in `dir`, recovers its head from the tail of the last
    /// segment — truncating a torn final line — and starts the sync thread.
    pub fn open(dir: &Path, opts: WriterOptions) -> Result<AuditWriter, AuditError> {
        fs::create_dir_all(dir).map_err(|err| {
            AuditError::io(
                format!("cannot create audit directory {}", dir.display()),
                err,
            )
        })?;
        let tail = recover::recover(dir)?;
        let file = open_segment(dir, tail.segment)?;
        let tail_hash = tail.hash.clone();
        let (handoff, handoff_rx) = mpsc::channel();
        let head = Head {
            seq: tail.seq,
            hash: tail.hash,
        };
        let log = Arc::new(Mutex::new(Log {
            dir: dir.to_path_buf(),
            segment_bytes: opts.segment_bytes,
            file,
            segment: tail.segment,
            len: tail.len,
            written_head: head.clone(),
            head,
            pending: Vec::new(),
            handoff: handoff_rx,
            written_seq: tail.seq,
            dirty: false,
            unreported: None,
            sync_failed: None,
        }));
        let (status, _) = watch::channel(SyncStatus {
            synced_seq: tail.seq,
            synced_hash: tail_hash,
            error: None,
        });
        let request = Arc::new((Mutex::new(SyncRequest::default()), Condvar::new()));
        let syncs = Arc::new(AtomicU64::new(0));
        let syncer = Syncer {
            log: Arc::clone(&log),
            request: Arc::clone(&request),
            status: status.clone(),
            syncs: Arc::clone(&syncs),
        };
        let thread = std::thread::Builder::new()
            .name("sluice-audit-sync".to_string())
            .spawn(move || syncer.run())
            .map_err(|err| AuditError::io("cannot start the audit sync thread", err))?;
        Ok(AuditWriter {
            inner: Arc::new(Inner {
                durability: opts.durability,
                log,
                handoff,
                request,
                status,
                syncs,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Appends `events` as consecutive records and resolves once they are written (and synced,
    /// with [`Durability::Fsync`]), returning their positions in order. Appends are recorded
    /// in the order they are made. On error none of the events is acknowledged.
    pub async fn append_durable(&self, events: Vec<Event>) -> Result<Vec<Position>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events
            .iter()
            .map(record::encode_event)
            .collect::<Result<Vec<_>, _>>()?;
        let (positions, seq) = {
            let mut log = lock(&self.inner.log);
            log.take_handoffs();
            // Rotate before chaining so the positions name the segment the lines land in.
            log.prepare()?;
            let mut lines = Vec::with_capacity(events.len() * 512);
            let positions = log.chain(&events, &mut lines);
            log.write(&lines)?;
            (positions, log.written_seq)
        };
        if self.inner.durability == Durability::Fsync {
            self.wait_synced(seq).await?;
        }
        Ok(positions)
    }

    /// Queues `event` without waiting; it is ordered after everything appended before it and
    /// reaches the file with the next write, or within [`DEFERRED_SYNC`]. Failures are logged
    /// (and reported by the next [`flush`](Self::flush)).
    pub fn append(&self, event: Event) {
        let encoded = match record::encode_event(&event) {
            Ok(encoded) => encoded,
            Err(err) => {
                tracing::error!(error = %err, "audit event dropped");
                return;
            }
        };
        let mut log = match self.inner.log.try_lock() {
            Ok(log) => log,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // The holder (or the next one) chains it; the receiver lives as long as
                // the log, so the send cannot fail while this handle exists.
                let _ = self.inner.handoff.send(encoded);
                return;
            }
        };
        log.take_handoffs();
        let mut line = Vec::with_capacity(512);
        log.chain(std::slice::from_ref(&encoded), &mut line);
        log.pending.extend_from_slice(&line);
        if log.pending.len() >= MAX_PENDING {
            if let Err(err) = log.write(&[]) {
                tracing::error!(error = %err, "audit events dropped");
                log.unreported = Some(err);
            }
        }
    }

    /// Waits until everything appended so far is written and synced. Fails if anything failed
    /// since the previous flush without its submitter being told (fire-and-forget appends, or a
    /// failed sync after a [`Durability::Write`] acknowledgement).
    pub async fn flush(&self) -> Result<(), AuditError> {
        let seq = {
            let mut log = lock(&self.inner.log);
            log.take_handoffs();
            if !log.pending.is_empty() {
                log.write(&[])?;
            }
            if let Some(err) = log.unreported.take() {
                return Err(err);
            }
            log.written_seq
        };
        self.wait_synced(seq).await
    }

    /// Asks the sync thread for a sync and waits until `seq` is durable.
    async fn wait_synced(&self, seq: u64) -> Result<(), AuditError> {
        let mut status = self.inner.status.subscribe();
        {
            let (request, wake) = &*self.inner.request;
            lock(request).requested = true;
            wake.notify_one();
        }
        loop {
            {
                let current = status.borrow_and_update();
                if current.synced_seq >= seq {
                    return Ok(());
                }
                if let Some(err) = &current.error {
                    return Err(err.clone());
                }
            }
            status
                .changed()
                .await
                .map_err(|_| AuditError::WriterStopped)?;
        }
    }

    /// Seq and hash of the last record appended (0 and 64 zeros for an empty log).
    pub fn head(&self) -> (u64, String) {
        let log = lock(&self.inner.log);
        (log.head.seq, log.head.hash.clone())
    }

    /// Seq and hash of the newest record known to be on stable storage. The gateway keeps
    /// it outside the log so that `verify` can tell when the newest records were removed.
    pub fn synced_head(&self) -> (u64, String) {
        let status = self.inner.status.borrow();
        (status.synced_seq, status.synced_hash.clone())
    }

    /// Number of `fdatasync` calls made so far: one per group commit.
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }
}

/// The background thread: writes buffered records and syncs everything written, when asked
/// and at least every [`DEFERRED_SYNC`].
struct Syncer {
    log: Arc<Mutex<Log>>,
    request: Arc<(Mutex<SyncRequest>, Condvar)>,
    status: watch::Sender<SyncStatus>,
    syncs: Arc<AtomicU64>,
}

impl Syncer {
    fn run(self) {
        let mut synced = self.status.borrow().synced_seq;
        loop {
            let closing = {
                let (request, wake) = &*self.request;
                let mut r = lock(request);
                if !r.requested && !r.closing {
                    r = wake
                        .wait_timeout(r, DEFERRED_SYNC)
                        .map(|(r, _)| r)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                }
                r.requested = false;
                r.closing
            };
            // Take a handle on the current segment and what it holds; sync outside the lock
            // so appends go on meanwhile.
            let target = {
                let mut log = lock(&self.log);
                log.take_handoffs();
                if !log.pending.is_empty() {
                    if let Err(err) = log.write(&[]) {
                        tracing::error!(error = %err, "audit events dropped");
                        log.unreported = Some(err);
                    }
                }
                if log.written_seq > synced && log.sync_failed.is_none() {
                    Some((
                        log.file.try_clone(),
                        log.written_seq,
                        log.written_head.hash.clone(),
                        log.path(),
                    ))
                } else {
                    None
                }
            };
            if let Some((file, seq, hash, path)) = target {
                let result = file.and_then(|f| f.sync_data());
                self.syncs.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(()) => {
                        synced = seq;
                        self.status.send_modify(|s| {
                            s.synced_seq = seq;
                            s.synced_hash = hash;
                        });
                    }
                    Err(err) => {
                        let err = AuditError::io(format!("cannot sync {path}"), err);
                        tracing::error!(error = %err, seq, "audit log sync failed; refusing further appends");
                        {
                            let mut log = lock(&self.log);
                            log.unreported = Some(err.clone());
                            log.sync_failed = Some(err.clone());
                        }
                        self.status.send_modify(|s| s.error = Some(err));
                    }
                }
            }
            if closing {
                return;
            }
        }
    }
}

/// Opens segment `number` for appending, creating it if needed, and makes its directory entry
/// durable.
fn open_segment(dir: &Path, number: u32) -> Result<File, AuditError> {
    let path = dir.join(segment::file_name(number));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|err| AuditError::io(format!("cannot open {}", path.display()), err))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| AuditError::io(format!("cannot sync directory {}", dir.display()), err))?;
    Ok(file)
}
