//! The single writer: a dedicated thread that group-commits everything queued to it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

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
    /// loss. `fdatasync` still runs once per batch, but nobody waits for it.
    Write,
}

/// Settings of an [`AuditWriter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// When appends are acknowledged.
    pub durability: Durability,
    /// A new segment is started before a batch once the current one holds at least this many
    /// bytes. A batch is never split, so segments may overshoot by one batch.
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

/// Acknowledgement of an append: the positions of its records, in order.
type AppendAck = oneshot::Sender<Result<Vec<Position>, AuditError>>;
/// Acknowledgement of a flush.
type FlushAck = oneshot::Sender<Result<(), AuditError>>;

/// Work for the writer thread.
enum Request {
    /// Records to add; `ack` is `None` for fire-and-forget appends.
    Append {
        events: Vec<EncodedEvent>,
        ack: Option<AppendAck>,
    },
    /// Answer once everything queued before is durable.
    Flush(FlushAck),
}

/// Last seq and hash written.
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    hash: String,
}

/// State the writer thread publishes to handles.
struct Shared {
    head: Mutex<Head>,
    syncs: AtomicU64,
}

impl Shared {
    fn head(&self) -> Head {
        self.head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_head(&self, head: &Head) {
        *self
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = head.clone();
    }
}

/// Owner of the queue and the thread; dropping the last handle drops this.
struct Inner {
    queue: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    /// Closes the queue and waits for the thread to write out what was queued.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the audit writer thread panicked");
            }
        }
    }
}

/// Handle to the audit log writer of one directory. Cheap to clone; when the last clone is
/// dropped, the writer finishes everything queued and its thread exits (the drop waits for it).
///
/// Only one writer may be open on a directory at a time.
#[derive(Clone)]
pub struct AuditWriter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = self.inner.shared.head();
        f.debug_struct("AuditWriter")
            .field("seq", &head.seq)
            .field("hash", &head.hash)
            .finish()
    }
}

impl AuditWriter {
    /// Opens (creating if needed) the log in `dir`, recovers its head from the tail of the last
    /// segment — truncating a torn final line — and starts the writer thread.
    pub fn open(dir: &Path, opts: WriterOptions) -> Result<AuditWriter, AuditError> {
        fs::create_dir_all(dir).map_err(|err| {
            AuditError::io(
                format!("cannot create audit directory {}", dir.display()),
                err,
            )
        })?;
        let tail = recover::recover(dir)?;
        let file = open_segment(dir, tail.segment)?;
        let head = Head {
            seq: tail.seq,
            hash: tail.hash,
        };
        let shared = Arc::new(Shared {
            head: Mutex::new(head.clone()),
            syncs: AtomicU64::new(0),
        });
        let mut thread = WriterThread {
            dir: dir.to_path_buf(),
            opts,
            file,
            segment: tail.segment,
            len: tail.len,
            head,
            dirty: false,
            unreported: None,
            shared: Arc::clone(&shared),
        };
        let (queue, requests) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("sluice-audit-writer".to_string())
            .spawn(move || thread.run(&requests))
            .map_err(|err| AuditError::io("cannot start the audit writer thread", err))?;
        Ok(AuditWriter {
            inner: Arc::new(Inner {
                queue: Some(queue),
                thread: Some(handle),
                shared,
            }),
        })
    }

    /// Appends `events` as consecutive records and resolves once they are written (and synced,
    /// with [`Durability::Fsync`]), returning their positions in order. Submissions are recorded
    /// in the order they are made. On error none of the events is acknowledged.
    pub async fn append_durable(&self, events: Vec<Event>) -> Result<Vec<Position>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events
            .iter()
            .map(record::encode_event)
            .collect::<Result<Vec<_>, _>>()?;
        let (ack, done) = oneshot::channel();
        self.submit(Request::Append {
            events,
            ack: Some(ack),
        })?;
        done.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Queues `event` without waiting; it is ordered after everything submitted before it.
    /// Failures are logged (and reported by the next [`flush`](Self::flush)).
    pub fn append(&self, event: Event) {
        let submitted = record::encode_event(&event).and_then(|encoded| {
            self.submit(Request::Append {
                events: vec![encoded],
                ack: None,
            })
        });
        if let Err(err) = submitted {
            tracing::error!(error = %err, "audit event dropped");
        }
    }

    /// Waits until everything submitted so far is written and synced. Fails if anything failed
    /// since the previous flush without its submitter being told (fire-and-forget appends, or a
    /// failed sync after a [`Durability::Write`] acknowledgement).
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.submit(Request::Flush(ack))?;
        done.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Seq and hash of the last record written (0 and 64 zeros for an empty log).
    pub fn head(&self) -> (u64, String) {
        let head = self.inner.shared.head();
        (head.seq, head.hash)
    }

    /// Number of `fdatasync` calls made so far: one per group commit.
    pub fn syncs(&self) -> u64 {
        self.inner.shared.syncs.load(Ordering::Relaxed)
    }

    fn submit(&self, request: Request) -> Result<(), AuditError> {
        let queue = self.inner.queue.as_ref().ok_or(AuditError::WriterStopped)?;
        queue.send(request).map_err(|_| AuditError::WriterStopped)
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

/// An append of one batch whose acknowledgement is still outstanding.
struct PendingAppend {
    ack: Option<AppendAck>,
    positions: Vec<Position>,
}

/// State owned by the writer thread.
struct WriterThread {
    dir: PathBuf,
    opts: WriterOptions,
    file: File,
    segment: u32,
    /// Length of the segment up to the last successfully written batch.
    len: u64,
    head: Head,
    /// A failed write may have left bytes beyond `len` that must be cut off first.
    dirty: bool,
    /// A failure whose submitter was not told; the next flush reports it.
    unreported: Option<AuditError>,
    shared: Arc<Shared>,
}

impl WriterThread {
    /// Group-commits until every handle is gone and the queue is drained.
    fn run(&mut self, requests: &mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            batch.extend(requests.try_iter());
            self.commit(batch);
        }
    }

    /// Writes a batch with one write and one sync, then answers every request in it.
    fn commit(&mut self, batch: Vec<Request>) {
        let writes = batch
            .iter()
            .any(|request| matches!(request, Request::Append { .. }));
        // A batch of flushes only writes nothing, so it must not rotate or fail on the file.
        let prepared = if writes { self.prepare() } else { Ok(()) };
        if let Err(err) = prepared {
            let (appends, flushes) = split_batch(batch);
            self.fail(appends, flushes, err);
            return;
        }
        let before = self.head.clone();
        let mut appends = Vec::new();
        let mut flushes = Vec::new();
        let mut buf = Vec::new();
        for request in batch {
            match request {
                Request::Append { events, ack } => {
                    let mut positions = Vec::with_capacity(events.len());
                    for event in &events {
                        let seq = self.head.seq + 1;
                        positions.push(Position {
                            segment: self.segment,
                            offset: self.len + buf.len() as u64,
                            seq,
                        });
                        let hash = record::append_line(seq, &self.head.hash, event, &mut buf);
                        self.head = Head { seq, hash };
                    }
                    appends.push(PendingAppend { ack, positions });
                }
                Request::Flush(ack) => flushes.push(ack),
            }
        }
        if buf.is_empty() {
            // Only flushes: every earlier batch was synced before this one was taken.
            self.answer_flushes(flushes, Ok(()));
            return;
        }
        if let Err(err) = self.file.write_all(&buf) {
            self.head = before;
            self.dirty = true;
            let err = AuditError::io(format!("cannot write {}", self.path()), err);
            self.fail(appends, flushes, err);
            return;
        }
        self.len += buf.len() as u64;
        self.shared.set_head(&self.head);
        if self.opts.durability == Durability::Write {
            for append in &mut appends {
                if let Some(ack) = append.ack.take() {
                    let _ = ack.send(Ok(std::mem::take(&mut append.positions)));
                }
            }
        }
        let synced = self.file.sync_data();
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        match synced {
            Ok(()) => {
                for append in appends {
                    if let Some(ack) = append.ack {
                        let _ = ack.send(Ok(append.positions));
                    }
                }
                self.answer_flushes(flushes, Ok(()));
            }
            // The records stay in the log (they are complete and chained), but nobody may
            // rely on them being durable.
            Err(err) => {
                let err = AuditError::io(format!("cannot sync {}", self.path()), err);
                self.fail(appends, flushes, err);
            }
        }
    }

    /// Cuts off what a failed write left behind, then starts a new segment if this one is full.
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
        if self.len > 0 && self.len >= self.opts.segment_bytes {
            let next = self.segment.checked_add(1).ok_or_else(|| {
                AuditError::io(
                    "cannot start a new audit segment",
                    std::io::Error::other("segment numbers exhausted"),
                )
            })?;
            self.file = open_segment(&self.dir, next)?;
            self.segment = next;
            self.len = 0;
        }
        Ok(())
    }

    /// Fails every outstanding request of a batch with `err`.
    fn fail(&mut self, appends: Vec<PendingAppend>, flushes: Vec<FlushAck>, err: AuditError) {
        tracing::error!(error = %err, "audit log batch failed");
        let mut silent = false;
        for append in appends {
            match append.ack {
                Some(ack) => {
                    let _ = ack.send(Err(err.clone()));
                }
                // Fire-and-forget, or already acknowledged after write(2).
                None => silent = true,
            }
        }
        if silent {
            self.unreported = Some(err.clone());
        }
        self.answer_flushes(flushes, Err(err));
    }

    /// Answers flushes with `result`, or with a failure not yet reported to anyone.
    fn answer_flushes(&mut self, flushes: Vec<FlushAck>, result: Result<(), AuditError>) {
        if flushes.is_empty() {
            return;
        }
        let unreported = self.unreported.take();
        let result = result.and_then(|()| unreported.map_or(Ok(()), Err));
        for ack in flushes {
            let _ = ack.send(result.clone());
        }
    }

    fn path(&self) -> String {
        self.dir
            .join(segment::file_name(self.segment))
            .display()
            .to_string()
    }
}

/// Separates a batch that was not written into its acknowledgements.
fn split_batch(batch: Vec<Request>) -> (Vec<PendingAppend>, Vec<FlushAck>) {
    let mut appends = Vec::new();
    let mut flushes = Vec::new();
    for request in batch {
        match request {
            Request::Append { ack, .. } => appends.push(PendingAppend {
                ack,
                positions: Vec::new(),
            }),
            Request::Flush(ack) => flushes.push(ack),
        }
    }
    (appends, flushes)
}
