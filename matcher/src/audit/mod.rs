//! The durable, tamper-evident audit log: who asked the service what, and what it answered.
//!
//! A national ID system must be able to show, after the fact, every request it answered: each
//! 1:1 verification, 1:N identification, enrollment and delete, and each refusal. Every request
//! that reaches `/v1` gets exactly one record (see `middleware::envelope`), written *durably*
//! before the response leaves the service; a request whose record cannot be made durable fails.
//! Stored writes are recorded in the same commit as the write itself (see [`journal`]).
//!
//! # What a record may contain
//!
//! Only [`AuditRecord`]'s fields: a timestamp, the API key id, the operation name, the
//! server-assigned request id (and the client's own id, if it sent one), the subject ids
//! involved, the HTTP status and an outcome code. The type has no field that could carry an
//! image, a template, a feature vector or a probe's scores, so biometric data cannot reach the
//! log through this module. Callers must still keep such data out of the free-text strings
//! (`outcome` is a short code such as `match` or `candidates:3`, never a payload).
//!
//! # On-disk format
//!
//! A log directory holds files `audit-<n>.log` (`n` zero-padded to six digits, wider when it
//! outgrows them). Each process start opens a *new* file numbered one past the highest existing
//! one, creating it with `O_CREAT | O_EXCL`, and fsyncs the directory so the file's name is
//! durable. A file is only ever appended to by the process that created it and is never
//! rewritten afterwards, so closed files are immutable and can be archived or hashed as they are.
//!
//! Every record is one line, `<crc32 hex> <JSON>\n` (see [`chain`]): the JSON starts with the
//! record's chain position `n` and `prev`, the link (truncated SHA-256) of the line before it,
//! across files. A file starts with an `audit_open` record carrying a random per-file `seed`
//! and linking to the last line of the previous file. At most every [`CHECKPOINT_EVERY`] while
//! records arrive, and when the log closes, the writer appends an `audit_checkpoint` record
//! whose `mac` is an HMAC-SHA-256 (under the audit key, see [`load_or_create_key`]) of its file,
//! position and link, fsyncs, and atomically replaces `audit-head.json`, which names the newest
//! checkpoint (with its own MAC). `biomatch audit verify` ([`verify`]) walks the chain: a
//! deleted, reordered or rewritten line breaks a link or the numbering, a file removed from the
//! middle breaks the numbering of files and the next file's first link, a tail cut below the
//! newest checkpoint no longer reaches the record the head names, and a forged checkpoint fails
//! its MAC. What a chain cannot show: lines cut after the newest checkpoint (at most
//! `CHECKPOINT_EVERY` of records; verify reports them as not yet sealed), or a whole log rolled
//! back together with an older head file — ship the head to another system for that.
//!
//! JSON escapes control characters, so a record never contains a raw newline. A crash can
//! leave a torn last line with no trailing newline; it was never acknowledged to any caller,
//! and [`read_log`] ignores it and reports its length. A complete line whose CRC or JSON does
//! not check out is corruption and is reported with its line number.
//!
//! # Durability and threading
//!
//! A dedicated OS thread (`biomatch-audit`) owns the file. Callers serialise their record, hand
//! it to the thread over a channel and wait. The thread blocks for the first queued job, drains
//! whatever else is queued (at most [`MAX_BATCH`] jobs), chains and writes the lines with one
//! `write_all`, calls `sync_data` once and then wakes every waiter of that batch: group commit,
//! so a burst of concurrent requests costs one fsync rather than one each. Records of stored
//! writes ([`journal`]) are already durable in the store's log: they are written without an
//! fsync of their own (the next fsync covers them, and [`AuditLog::sync`] forces one before the
//! store drops them from its log). If a write or fsync fails, every waiter of the batch gets
//! the error, the thread truncates the file back to the end of the last good batch and goes on
//! with later batches (journal records are kept and written again); while that truncation
//! keeps failing it refuses to write at all, so a partial line is never followed by
//! acknowledged records.
//!
//! Dropping the last handle closes the channel; the thread writes whatever was queued before the
//! drop, seals it with a checkpoint, and exits, and `Drop` joins it. Cancelling an
//! [`AuditLog::append`] future after it was first polled does not un-queue its record.

pub mod chain;
pub mod journal;
pub mod verify;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The most jobs the writer thread puts into one write + fsync.
pub const MAX_BATCH: usize = 4096;

/// How often, at most, the writer seals the records written since the last checkpoint.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

const FILE_PREFIX: &str = "audit-";
const FILE_SUFFIX: &str = ".log";
/// The file naming the newest checkpoint.
pub const HEAD_FILE: &str = "audit-head.json";
/// The default key file, in the log directory.
pub const KEY_FILE: &str = "hmac.key";

/// Operation of the record that starts every file.
pub const OP_OPEN: &str = "audit_open";
/// Operation of a checkpoint record.
pub const OP_CHECKPOINT: &str = "audit_checkpoint";

/// One audited operation. Deliberately only ids, names and short codes: no biometric data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the service answered, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// Id of the API key that made the request (never the secret itself); empty when the
    /// request presented no valid key.
    pub key_id: String,
    /// `verify`, `identify`, `enroll`, `delete`, ... (or `METHOD /route` for a request refused
    /// before its handler ran).
    pub operation: String,
    /// The server-assigned request id (unique; the client saw it in `x-request-id`).
    pub request_id: String,
    /// The `x-request-id` the client sent, if any (kept apart: clients may reuse ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// Subject ids compared against (verify) or returned (identify).
    pub subject_ids: Vec<String>,
    /// A short outcome code: `match`, `no_match`, `candidates:3`, `error:unknown_subject`, ...
    pub outcome: String,
    /// The HTTP status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The store's sequence number of a stored write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_seq: Option<u64>,
    /// The random per-file seed (on `audit_open` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// The checkpoint MAC (on `audit_checkpoint` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Wall-clock milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl AuditRecord {
    /// A record stamped with the current wall-clock time.
    pub fn now(
        key_id: impl Into<String>,
        operation: impl Into<String>,
        request_id: impl Into<String>,
        subject_ids: Vec<String>,
        outcome: impl Into<String>,
    ) -> Self {
        AuditRecord {
            time_unix_ms: now_ms(),
            key_id: key_id.into(),
            operation: operation.into(),
            request_id: request_id.into(),
            client_request_id: None,
            subject_ids,
            outcome: outcome.into(),
            status: None,
            store_seq: None,
            seed: None,
            mac: None,
        }
    }

    /// Whether the log writes this record itself (file start, checkpoint), not for a request.
    pub fn is_internal(&self) -> bool {
        self.operation == OP_OPEN || self.operation == OP_CHECKPOINT
    }

    fn json(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(self).expect("AuditRecord serialises to JSON")
    }
}

/// Errors of the audit log.
#[derive(Debug)]
pub enum AuditError {
    /// Creating, writing, syncing or reading a log file failed.
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A complete line of a log file does not verify.
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The audit key file is unusable.
    Key(String),
    /// The writer thread is gone; nothing more can be made durable through this handle.
    Closed,
}

impl AuditError {
    /// Whether the disk is full (ENOSPC / EDQUOT): nothing can be recorded until space is freed.
    pub fn is_no_space(&self) -> bool {
        match self {
            AuditError::Io { source, .. } => biomatch_gallery::is_no_space(source),
            _ => false,
        }
    }
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::Io { path, source } => {
                write!(f, "audit log I/O error on {}: {source}", path.display())
            }
            AuditError::Corrupt { path, line, reason } => {
                write!(f, "audit log {} is corrupt at line {line}: {reason}", path.display())
            }
            AuditError::Key(why) => write!(f, "audit key: {why}"),
            AuditError::Closed => f.write_str("audit log writer has stopped"),
        }
    }
}

impl std::error::Error for AuditError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuditError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.to_path_buf(), source }
}

/// Read the hex audit key at `path`, creating a random one (mode 0600) if the file is missing.
///
/// The key authenticates the log's checkpoints. Kept in the log directory (the default) it
/// detects edits by anyone who cannot read that directory's key file; for protection against
/// an attacker with the disk, point `audit_key_file` at a file on another volume or a secret
/// mount.
///
/// # Errors
/// [`AuditError::Key`] if the file exists but is not 32..=64 bytes of hex, or cannot be made.
pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>, AuditError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = hex::decode(text.trim())
                .map_err(|e| AuditError::Key(format!("{} is not hex: {e}", path.display())))?;
            if !(16..=64).contains(&key.len()) {
                return Err(AuditError::Key(format!(
                    "{} holds {} bytes; give 16..=64 bytes as hex",
                    path.display(),
                    key.len()
                )));
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            let tmp = path.with_extension("tmp");
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
            f.write_all(hex::encode(key).as_bytes()).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io_err(path))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir).map_err(io_err(dir))?;
            }
            tracing::info!(path = %path.display(), "created a new audit key");
            Ok(key.to_vec())
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// What the writer thread tells a waiter: the batch is durable, or why not.
type BatchResult = Result<(), (io::ErrorKind, Option<i32>, String)>;

/// How the writer thread wakes one waiter.
enum Reply {
    Async(tokio::sync::oneshot::Sender<BatchResult>),
    Blocking(mpsc::SyncSender<BatchResult>),
}

impl Reply {
    fn send(self, result: BatchResult) {
        // A waiter that has gone away (cancelled future) does not care; its record is written anyway.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

enum Job {
    /// Records (each a JSON object) to chain and write. `durable`: the reply waits for an fsync;
    /// otherwise (journal records, durable in the store already) there is no reply and no fsync
    /// of their own.
    Append { records: Vec<Vec<u8>>, durable: bool, reply: Option<Reply> },
    /// Make everything written so far durable.
    Sync(Reply),
}

/// Counters shared between the handle and the writer thread.
#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    batches: AtomicU64,
}

/// An open audit log. `Send + Sync`; share it in an `Arc`. Dropping it flushes and joins the
/// writer thread (which blocks for at most one final fsync).
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    path: PathBuf,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

/// Where the chain stands: the last line's position and link.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ChainHead {
    n: u64,
    link: String,
}

impl AuditLog {
    /// [`open_with_key`](Self::open_with_key) with the key in `dir/hmac.key` (created if missing).
    ///
    /// # Errors
    /// As for [`open_with_key`](Self::open_with_key).
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key = load_or_create_key(&dir.join(KEY_FILE))?;
        Self::open_with_key(dir, key)
    }

    /// Create `dir` if needed and open a new file `audit-<n>.log` in it, `n` one past the highest
    /// existing number, chained to the last line of the previous file; then start the writer.
    ///
    /// # Errors
    /// [`AuditError::Io`] if the directory or the file cannot be created, written or synced, or
    /// the thread cannot be spawned; [`AuditError::Corrupt`] if the previous file's last line
    /// does not verify.
    pub fn open_with_key(dir: &Path, key: Vec<u8>) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let files = list_files(dir)?;
        let mut head = ChainHead { n: 0, link: chain::GENESIS.to_owned() };
        for (_, p) in files.iter().rev() {
            if let Some(line) = last_complete_line(p)? {
                let e = chain::parse_line(&line).map_err(|reason| AuditError::Corrupt {
                    path: p.clone(),
                    line: 0,
                    reason: format!("last line: {reason}"),
                })?;
                head = ChainHead { n: e.n.unwrap_or(0), link: chain::link(&line) };
                break;
            }
        }
        let mut n = files.last().map_or(1, |(h, _)| h + 1);
        // Another process may race us to the same number: O_EXCL makes the loser move on.
        let (path, mut file) = loop {
            let path = dir.join(file_name(n));
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(io_err(&path)(e)),
            }
        };
        // The file's first record: its seed, chained to the previous file.
        let mut open = AuditRecord::now("", OP_OPEN, "", Vec::new(), format!("file:{n}"));
        open.seed = Some(hex::encode(rand::random::<[u8; 16]>()));
        let line = chain::format_line(head.n + 1, &head.link, &open.json());
        file.write_all(&line).and_then(|()| file.sync_data()).map_err(io_err(&path))?;
        sync_dir(dir).map_err(io_err(dir))?;
        let head = ChainHead { n: head.n + 1, link: chain::link(&line[..line.len() - 1]) };

        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = {
            let w = Writer {
                dir: dir.to_path_buf(),
                path: path.clone(),
                file_no: n,
                file,
                good_len: line.len() as u64,
                dirty: false,
                head,
                key,
                unsealed: 0,
                unsynced: false,
                pending: Vec::new(),
                last_checkpoint: Instant::now(),
            };
            let counters = Arc::clone(&counters);
            std::thread::Builder::new()
                .name("biomatch-audit".into())
                .spawn(move || w.run(&rx, &counters))
                .map_err(io_err(dir))?
        };
        tracing::info!(path = %path.display(), "audit log opened");
        Ok(AuditLog { dir: dir.to_path_buf(), path, tx: Some(tx), thread: Some(thread), counters })
    }

    /// Append `rec` and return once it is durable (written and fsynced).
    ///
    /// # Errors
    /// [`AuditError::Io`] if the write or fsync of its batch failed (the record is then not in the
    /// log), [`AuditError::Closed`] if the writer thread is gone.
    pub async fn append(&self, rec: AuditRecord) -> Result<(), AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Job::Append {
            records: vec![rec.json()],
            durable: true,
            reply: Some(Reply::Async(tx)),
        })?;
        let result = rx.await.map_err(|_| AuditError::Closed)?;
        self.check(result)
    }

    /// [`append`](Self::append) for synchronous callers. Blocks the calling thread until the
    /// record is durable: never call it from an async worker thread.
    ///
    /// # Errors
    /// As for [`append`](Self::append).
    pub fn append_blocking(&self, rec: AuditRecord) -> Result<(), AuditError> {
        self.append_all_blocking(std::slice::from_ref(&rec))
    }

    /// Append several records in one batch (all or none of them is written) and return once
    /// they are durable. Blocks like [`append_blocking`](Self::append_blocking).
    ///
    /// # Errors
    /// As for [`append`](Self::append).
    pub fn append_all_blocking(&self, recs: &[AuditRecord]) -> Result<(), AuditError> {
        self.append_json_blocking(recs.iter().map(AuditRecord::json).collect())
    }

    fn append_json_blocking(&self, records: Vec<Vec<u8>>) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Job::Append { records, durable: true, reply: Some(Reply::Blocking(tx)) })?;
        let result = rx.recv().map_err(|_| AuditError::Closed)?;
        self.check(result)
    }

    /// Append `rec` without waiting for it (`audit_reads = "batched"`): written by the next
    /// batch, fsynced by the next checkpoint (at most [`CHECKPOINT_EVERY`] later) or durable
    /// write. A failure is logged; the caller has already answered.
    pub fn append_batched(&self, rec: AuditRecord) {
        if self
            .submit(Job::Append { records: vec![rec.json()], durable: false, reply: None })
            .is_err()
        {
            tracing::error!("audit writer stopped; a read's record was not written");
        }
    }

    /// Queue records that are durable elsewhere already (the store's log): written without
    /// waiting and without an fsync of their own.
    fn append_covered(&self, records: Vec<Vec<u8>>) {
        if self.submit(Job::Append { records, durable: false, reply: None }).is_err() {
            tracing::error!("audit writer stopped; journal records stay in the store's log");
        }
    }

    /// Make every record queued so far durable. Blocks like
    /// [`append_blocking`](Self::append_blocking).
    ///
    /// # Errors
    /// As for [`append`](Self::append).
    pub fn sync(&self) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Job::Sync(Reply::Blocking(tx)))?;
        let result = rx.recv().map_err(|_| AuditError::Closed)?;
        self.check(result)
    }

    /// Records made durable by this handle so far.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Successful write + fsync batches so far; `written() / batches()` is the group-commit factor.
    pub fn batches(&self) -> u64 {
        self.counters.batches.load(Ordering::Relaxed)
    }

    /// The file this handle appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn submit(&self, job: Job) -> Result<(), AuditError> {
        let tx = self.tx.as_ref().ok_or(AuditError::Closed)?;
        tx.send(job).map_err(|_| AuditError::Closed)
    }

    fn check(&self, result: BatchResult) -> Result<(), AuditError> {
        result.map_err(|(kind, os, message)| AuditError::Io {
            path: self.path.clone(),
            source: match os {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(kind, message),
            },
        })
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the channel lets the thread drain what is queued, seal it and exit.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "audit log writer thread panicked");
            }
        }
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    path: PathBuf,
    file_no: u64,
    file: File,
    /// End of the last good write; the file is truncated back to it after a failure.
    good_len: u64,
    /// A failed write may have left bytes past `good_len` that could not be truncated away yet.
    dirty: bool,
    /// The chain after the last good write.
    head: ChainHead,
    key: Vec<u8>,
    /// Records written since the last checkpoint.
    unsealed: u64,
    /// Lines written since the last fsync.
    unsynced: bool,
    /// Journal records not written yet (a failed write): they go first in the next one.
    pending: Vec<Vec<u8>>,
    last_checkpoint: Instant,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Job>, counters: &Counters) {
        let mut batch: Vec<Job> = Vec::new();
        loop {
            let first = if self.unsealed > 0 || !self.pending.is_empty() {
                let wait = CHECKPOINT_EVERY
                    .saturating_sub(self.last_checkpoint.elapsed())
                    .max(Duration::from_millis(50));
                match rx.recv_timeout(wait) {
                    Ok(j) => Some(j),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(j) => Some(j),
                    Err(_) => break,
                }
            };
            if let Some(first) = first {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
            if !batch.is_empty() || !self.pending.is_empty() {
                self.batch(&mut batch, counters);
            }
            if self.unsealed > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                self.seal();
            }
        }
        // Closed: write what is left and seal it.
        if !self.pending.is_empty() {
            self.batch(&mut batch, counters);
        }
        if self.unsealed > 0 || self.unsynced {
            self.seal();
        }
    }

    /// Write one batch of jobs (after any journal records left from a failed write) and answer
    /// them.
    fn batch(&mut self, batch: &mut Vec<Job>, counters: &Counters) {
        // Each record, and whether it is a journal record (durable in the store already).
        let mut records: Vec<Vec<u8>> = std::mem::take(&mut self.pending);
        let mut journal: Vec<bool> = vec![true; records.len()];
        let mut durable = false;
        for job in batch.iter_mut() {
            match job {
                Job::Append { records: r, durable: d, .. } => {
                    durable |= *d;
                    journal.extend(std::iter::repeat_n(!*d, r.len()));
                    records.append(r);
                }
                Job::Sync(_) => durable = true,
            }
        }
        let reply: BatchResult = match self.write(&records, durable) {
            Ok(()) => {
                counters.written.fetch_add(records.len() as u64, Ordering::Relaxed);
                if durable {
                    counters.batches.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(),
                    jobs = batch.len(),
                    error = %e,
                    "audit log write failed; failing the batch"
                );
                // Journal records are durable in the store: keep them for the next write. The
                // others are answered with the error (their requests fail).
                self.pending =
                    records.into_iter().zip(journal).filter(|(_, j)| *j).map(|(r, _)| r).collect();
                Err((e.kind(), e.raw_os_error(), e.to_string()))
            }
        };
        for job in batch.drain(..) {
            match job {
                Job::Append { reply: Some(r), .. } | Job::Sync(r) => r.send(reply.clone()),
                Job::Append { reply: None, .. } => {}
            }
        }
    }

    /// Chain `records`, write them (and fsync when `sync`); all or nothing.
    fn write(&mut self, records: &[Vec<u8>], sync: bool) -> io::Result<()> {
        if self.dirty {
            self.file.set_len(self.good_len)?;
            self.file.sync_data()?;
            self.dirty = false;
        }
        let mut buf = Vec::new();
        let mut head = self.head.clone();
        for json in records {
            let line = chain::format_line(head.n + 1, &head.link, json);
            head = ChainHead { n: head.n + 1, link: chain::link(&line[..line.len() - 1]) };
            buf.extend_from_slice(&line);
        }
        let res = (|| {
            if !buf.is_empty() {
                self.file.write_all(&buf)?;
            }
            if sync && (self.unsynced || !buf.is_empty()) {
                self.file.sync_data()?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                self.head = head;
                self.unsealed += records.len() as u64;
                self.unsynced = !sync && (self.unsynced || !buf.is_empty());
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                if self.file.set_len(self.good_len).and_then(|()| self.file.sync_data()).is_ok() {
                    self.dirty = false;
                }
                Err(e)
            }
        }
    }

    /// Append a checkpoint record, fsync, and point the head file at it.
    fn seal(&mut self) {
        self.last_checkpoint = Instant::now();
        let n = self.head.n + 1;
        let mut rec =
            AuditRecord::now("", OP_CHECKPOINT, "", Vec::new(), format!("file:{}", self.file_no));
        rec.mac = Some(chain::mac(
            &self.key,
            &chain::checkpoint_message(self.file_no, n, &self.head.link),
        ));
        let res = self.write(&[rec.json()], true).and_then(|()| {
            let h = Head {
                file: self.file_no,
                n: self.head.n,
                link: self.head.link.clone(),
                mac: chain::mac(
                    &self.key,
                    &chain::head_message(self.file_no, self.head.n, &self.head.link),
                ),
            };
            write_head(&self.dir, &h)
        });
        match res {
            // The checkpoint record itself is not a request: not counted as unsealed.
            Ok(()) => self.unsealed = 0,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "audit checkpoint failed")
            }
        }
    }
}

/// `audit-head.json`: the newest checkpoint, so that a cut tail shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The file the checkpoint is in.
    pub file: u64,
    /// The checkpoint record's chain position.
    pub n: u64,
    /// The checkpoint line's link.
    pub link: String,
    /// HMAC of the above ([`chain::head_message`]).
    pub mac: String,
}

fn write_head(dir: &Path, h: &Head) -> io::Result<()> {
    let bytes = serde_json::to_vec(h).expect("Head serialises");
    biomatch_gallery::atomic_write(&dir.join(HEAD_FILE), &bytes).map_err(|e| match e {
        biomatch_gallery::GalleryError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    })
}

/// The head file of `dir`, if there is one.
///
/// # Errors
/// [`AuditError::Io`] if it cannot be read, [`AuditError::Corrupt`] if it is not a head.
pub fn read_head(dir: &Path) -> Result<Option<Head>, AuditError> {
    let path = dir.join(HEAD_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| AuditError::Corrupt {
            path,
            line: 1,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The last line of `path` that ends in a newline (without it), if any.
fn last_complete_line(path: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let mut window: u64 = 64 << 10;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io_err(path))?;
        // Drop a torn tail: everything after the last newline.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(None);
            }
            window *= 4;
            continue;
        };
        let body = &buf[..end];
        match body.iter().rposition(|&b| b == b'\n') {
            Some(s) => return Ok(Some(body[s + 1..].to_vec())),
            None if start == 0 => return Ok(Some(body.to_vec())),
            None => window *= 4,
        }
    }
}

fn file_name(n: u64) -> String {
    format!("{FILE_PREFIX}{n:06}{FILE_SUFFIX}")
}

/// The number of an `audit-<n>.log` file name, if it is one.
fn parse_file_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files of `dir`, by number.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_file_number) {
            files.push((n, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Make a new directory entry durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// The verified contents of one log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadLog {
    /// Every complete request record, in file order (the log's own open and checkpoint records
    /// left out).
    pub records: Vec<AuditRecord>,
    /// Length of an unterminated last line (a write torn by a crash), 0 if none.
    pub torn_tail_bytes: u64,
}

/// One verified line of a file, for [`verify`].
#[derive(Clone, Debug)]
pub struct Line {
    /// 1-based line number.
    pub line: u64,
    pub entry: chain::Entry,
    /// This line's link.
    pub link: String,
}

/// Read and verify the lines of a log file: every complete line, and the length of a torn tail.
///
/// # Errors
/// [`AuditError::Corrupt`] naming the first complete line that fails to verify;
/// [`AuditError::Io`] if the file cannot be read.
pub fn read_lines(path: &Path) -> Result<(Vec<Line>, u64), AuditError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    let mut line_no: u64 = 0;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok((lines, 0));
        }
        line_no += 1;
        let Some(body) = buf.strip_suffix(b"\n") else {
            return Ok((lines, n as u64));
        };
        let entry = chain::parse_line(body).map_err(|reason| AuditError::Corrupt {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        })?;
        lines.push(Line { line: line_no, entry, link: chain::link(body) });
    }
}

/// Read and verify a log file (see the module docs for the format). A torn last line is ignored
/// and reported.
///
/// # Errors
/// As for [`read_lines`].
pub fn read_log(path: &Path) -> Result<ReadLog, AuditError> {
    let (lines, torn) = read_lines(path)?;
    let records = lines.into_iter().map(|l| l.entry.record).filter(|r| !r.is_internal()).collect();
    Ok(ReadLog { records, torn_tail_bytes: torn })
}

/// Every request record of every log file in `dir`, oldest file first.
///
/// # Errors
/// As for [`read_lines`].
pub fn read_dir_records(dir: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let mut out = Vec::new();
    for (_, p) in list_files(dir)? {
        out.extend(read_log(&p)?.records);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, request_id: String) -> AuditRecord {
        AuditRecord::now(
            key,
            "identify",
            request_id,
            vec!["s-1".into(), "s-2".into()],
            "candidates:2",
        )
    }

    fn log_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).and_then(parse_file_number).is_some()
            })
            .collect();
        files.sort();
        files
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_durable_in_order_and_group_committed() {
        const TASKS: usize = 8;
        const PER_TASK: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path()).unwrap());

        let handles: Vec<_> = (0..TASKS)
            .map(|t| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        log.append(rec(&format!("key-{t}"), format!("{t}:{i}"))).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }

        let total = (TASKS * PER_TASK) as u64;
        assert_eq!(log.written(), total);
        let batches = log.batches();
        assert!(
            batches >= 1 && batches < total,
            "expected group commit: {batches} batches for {total} records"
        );

        let read = read_log(log.path()).unwrap();
        assert_eq!(read.torn_tail_bytes, 0);
        assert_eq!(read.records.len(), TASKS * PER_TASK);
        let mut next = [0usize; TASKS];
        for r in &read.records {
            let (t, i) = r.request_id.split_once(':').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(r.key_id, format!("key-{t}"));
            assert_eq!(i, next[t], "task {t}'s records out of order");
            next[t] += 1;
        }
        assert_eq!(next, [PER_TASK; TASKS]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trips_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let r = AuditRecord {
            time_unix_ms: 1_700_000_000_123,
            client_request_id: Some("c-1".into()),
            status: Some(404),
            store_seq: Some(9),
            ..AuditRecord::now("k\"ey\n1", "verify", "req-ü", vec![], "error:unknown_subject")
        };
        log.append(r.clone()).await.unwrap();
        let read = read_log(log.path()).unwrap();
        assert_eq!(read.records, vec![r]);
        // One line per record even when a field holds a newline (after the file's open record).
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn reopen_starts_a_new_file_and_leaves_the_old_one_intact() {
        let dir = tempfile::tempdir().unwrap();
        let first = AuditLog::open(dir.path()).unwrap();
        let first_path = first.path().to_path_buf();
        first.append_blocking(rec("k", "a".into())).unwrap();
        drop(first);
        let old_bytes = std::fs::read(&first_path).unwrap();

        let second = AuditLog::open(dir.path()).unwrap();
        assert_ne!(second.path(), first_path);
        let n = |p: &Path| parse_file_number(p.file_name().unwrap().to_str().unwrap()).unwrap();
        assert_eq!(n(second.path()), n(&first_path) + 1);
        second.append_blocking(rec("k", "b".into())).unwrap();

        assert_eq!(std::fs::read(&first_path).unwrap(), old_bytes);
        let old = read_log(&first_path).unwrap();
        assert_eq!(old.records.len(), 1);
        assert_eq!(old.records[0].request_id, "a");
        let new = read_log(second.path()).unwrap();
        assert_eq!(new.records.len(), 1);
        assert_eq!(new.records[0].request_id, "b");
        assert_eq!(log_files(dir.path()).len(), 2);
    }

    #[test]
    fn numbering_continues_after_the_highest_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("audit-41.log"), b"").unwrap();
        std::fs::write(dir.path().join("audit-7.log"), b"").unwrap();
        std::fs::write(dir.path().join("audit-x.log"), b"").unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(log.path().file_name().unwrap(), "audit-000042.log");
    }

    fn three_record_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 0..3 {
            log.append_blocking(rec("k", format!("r{i}"))).unwrap();
        }
        let path = log.path().to_path_buf();
        drop(log);
        (dir, path)
    }

    #[test]
    fn a_flipped_byte_in_a_complete_line_is_corruption_at_that_line() {
        let (_dir, path) = three_record_file();
        let clean = std::fs::read(&path).unwrap();
        let second_line_start = clean.iter().position(|&b| b == b'\n').unwrap() + 1;

        // A byte inside line 2's JSON.
        let mut bytes = clean.clone();
        bytes[second_line_start + 30] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        match read_log(&path) {
            Err(AuditError::Corrupt { line, reason, .. }) => {
                assert_eq!(line, 2);
                assert!(reason.contains("CRC mismatch"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }

        // A byte inside line 3's CRC field.
        let third_line_start = second_line_start
            + clean[second_line_start..].iter().position(|&b| b == b'\n').unwrap()
            + 1;
        let mut bytes = clean.clone();
        bytes[third_line_start] = if bytes[third_line_start] == b'0' { b'1' } else { b'0' };
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_log(&path), Err(AuditError::Corrupt { line: 3, .. })));

        // A newline flipped away merges lines 1 and 2 into one bad complete line.
        let mut bytes = clean;
        bytes[second_line_start - 1] = b' ';
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_log(&path), Err(AuditError::Corrupt { line: 1, .. })));
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_reported() {
        let (_dir, path) = three_record_file();
        let mut bytes = std::fs::read(&path).unwrap();
        // Half of a fourth record, as a crash mid-write would leave it.
        let torn = chain::format_line(99, chain::GENESIS, &rec("k", "r3".into()).json());
        let keep = torn.len() / 2;
        bytes.extend_from_slice(&torn[..keep]);
        std::fs::write(&path, &bytes).unwrap();

        let read = read_log(&path).unwrap();
        assert_eq!(read.records.len(), 3);
        assert_eq!(read.torn_tail_bytes, keep as u64);
        let ids: Vec<_> = read.records.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["r0", "r1", "r2"]);
    }

    #[test]
    fn append_blocking_works_from_plain_threads() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        log.append_blocking(rec(&format!("key-{t}"), format!("{t}:{i}"))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(log.written(), 200);
        assert_eq!(read_log(log.path()).unwrap().records.len(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_queued_before_drop_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let path = log.path().to_path_buf();
        // Queue without waiting for the replies, then drop the handle.
        for i in 0..100 {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let records = vec![rec("k", format!("{i}")).json()];
            log.submit(Job::Append { records, durable: true, reply: Some(Reply::Async(tx)) })
                .unwrap();
        }
        drop(log);
        assert_eq!(read_log(&path).unwrap().records.len(), 100);
    }

    #[test]
    fn open_on_a_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("plain");
        std::fs::write(&not_a_dir, b"x").unwrap();
        assert!(matches!(AuditLog::open(&not_a_dir), Err(AuditError::Io { .. })));
    }

    #[test]
    fn handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AuditLog>();
    }
}
