//! The durable audit log: who asked the service what, and what it answered.
//!
//! A national ID system must be able to show, after the fact, every 1:1 verification and 1:N
//! identification it performed. Each answer is therefore recorded here, and recorded *durably*,
//! before the response leaves the service: [`AuditLog::append`] returns only after the record has
//! been written and `fdatasync`ed. A request whose audit record cannot be made durable must fail.
//!
//! # What a record may contain
//!
//! Only [`AuditRecord`]'s fields: a timestamp, the API key id, the operation name, the request id,
//! the subject ids involved and an outcome string. The type has no field that could carry an
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
//! Every record is one line:
//!
//! ```text
//! <crc32 of the JSON bytes, 8 lowercase hex digits> <JSON of AuditRecord>\n
//! ```
//!
//! The CRC is CRC-32 (IEEE, as computed by `crc32fast`) over exactly the JSON bytes between the
//! space and the newline. JSON escapes control characters, so a record never contains a raw
//! newline. A crash can leave a torn last line with no trailing newline; it was never
//! acknowledged to any caller, and [`read_log`] ignores it and reports its length. A complete line
//! whose CRC or JSON does not check out is corruption and is reported with its line number.
//!
//! # Durability and threading
//!
//! A dedicated OS thread (`biomatch-audit`) owns the file. Callers serialise their record, hand
//! the line to it over a channel and wait. The thread blocks for the first queued line, drains
//! whatever else is queued (at most [`MAX_BATCH`] lines), writes them with one `write_all`,
//! calls `sync_data` once and then wakes every waiter of that batch: group commit, so a burst of
//! concurrent requests costs one fsync rather than one each. If the write or the fsync fails,
//! every waiter of the batch gets the error, the thread truncates the file back to the end of
//! the last durable batch and goes on with later batches; while that truncation keeps failing it
//! refuses to write at all, so a partial line can never be followed by acknowledged records.
//!
//! Dropping the last handle closes the channel; the thread writes whatever was queued before the
//! drop, fsyncs it, and exits, and `Drop` joins it. Cancelling an [`AuditLog::append`] future after
//! it was first polled does not un-queue its record.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The most lines the writer thread puts into one write + fsync.
pub const MAX_BATCH: usize = 4096;

const FILE_PREFIX: &str = "audit-";
const FILE_SUFFIX: &str = ".log";

/// One audited operation. Deliberately only ids, names and short codes: no biometric data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the service answered, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// Id of the API key that made the request (never the secret itself).
    pub key_id: String,
    /// `verify`, `identify`, `enroll`, `delete`, ...
    pub operation: String,
    /// The request id the client saw in the response.
    pub request_id: String,
    /// Subject ids compared against (verify) or returned (identify).
    pub subject_ids: Vec<String>,
    /// A short outcome code: `match`, `no_match`, `candidates:3`, `error:unknown_subject`, ...
    pub outcome: String,
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
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        AuditRecord {
            time_unix_ms,
            key_id: key_id.into(),
            operation: operation.into(),
            request_id: request_id.into(),
            subject_ids,
            outcome: outcome.into(),
        }
    }

    /// The record's line in the log format, newline included.
    fn to_line(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).expect("AuditRecord serialises to JSON");
        let crc = crc32fast::hash(&json);
        let mut line = Vec::with_capacity(json.len() + 10);
        line.extend_from_slice(format!("{crc:08x} ").as_bytes());
        line.extend_from_slice(&json);
        line.push(b'\n');
        line
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
    /// The writer thread is gone; nothing more can be made durable through this handle.
    Closed,
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

/// What the writer thread tells a waiter: the batch is durable, or why not.
type BatchResult = Result<(), (io::ErrorKind, String)>;

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

struct Job {
    /// One or more whole lines.
    line: Vec<u8>,
    records: u64,
    reply: Reply,
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
    path: PathBuf,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl AuditLog {
    /// Create `dir` if needed and open a new file `audit-<n>.log` in it, `n` one past the highest
    /// existing number, then start the writer thread.
    ///
    /// # Errors
    /// [`AuditError::Io`] if the directory or the file cannot be created or synced, or the
    /// thread cannot be spawned.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut n = highest_file_number(dir)?.map_or(1, |h| h + 1);
        // Another process may race us to the same number: O_EXCL makes the loser move on.
        let (path, file) = loop {
            let path = dir.join(file_name(n));
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(io_err(&path)(e)),
            }
        };
        sync_dir(dir).map_err(io_err(dir))?;

        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = {
            let path = path.clone();
            let counters = Arc::clone(&counters);
            std::thread::Builder::new()
                .name("biomatch-audit".into())
                .spawn(move || writer_loop(&path, file, &rx, &counters))
                .map_err(io_err(dir))?
        };
        tracing::info!(path = %path.display(), "audit log opened");
        Ok(AuditLog { path, tx: Some(tx), thread: Some(thread), counters })
    }

    /// Append `rec` and return once it is durable (written and fsynced).
    ///
    /// # Errors
    /// [`AuditError::Io`] if the write or fsync of its batch failed (the record is then not in the
    /// log), [`AuditError::Closed`] if the writer thread is gone.
    pub async fn append(&self, rec: AuditRecord) -> Result<(), AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(rec.to_line(), 1, Reply::Async(tx))?;
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
        let lines: Vec<u8> = recs.iter().flat_map(AuditRecord::to_line).collect();
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(lines, recs.len() as u64, Reply::Blocking(tx))?;
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

    fn submit(&self, line: Vec<u8>, records: u64, reply: Reply) -> Result<(), AuditError> {
        let tx = self.tx.as_ref().ok_or(AuditError::Closed)?;
        tx.send(Job { line, records, reply }).map_err(|_| AuditError::Closed)
    }

    fn check(&self, result: BatchResult) -> Result<(), AuditError> {
        result.map_err(|(kind, message)| AuditError::Io {
            path: self.path.clone(),
            source: io::Error::new(kind, message),
        })
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the channel lets the thread drain what is queued, fsync it and exit.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "audit log writer thread panicked");
            }
        }
    }
}

/// The writer thread: group commit until the channel closes.
fn writer_loop(path: &Path, mut file: File, rx: &mpsc::Receiver<Job>, counters: &Counters) {
    // End of the last durable batch; the file is truncated back to it after a failure.
    let mut good_len: u64 = 0;
    // A failed batch may have left bytes past `good_len` that could not be truncated away yet.
    let mut dirty = false;
    let mut batch: Vec<Job> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();

    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        buf.clear();
        for job in &batch {
            buf.extend_from_slice(&job.line);
        }

        let result = (|| {
            if dirty {
                file.set_len(good_len)?;
                file.sync_data()?;
                dirty = false;
            }
            file.write_all(&buf)?;
            file.sync_data()
        })();

        let reply = match result {
            Ok(()) => {
                good_len += buf.len() as u64;
                counters
                    .written
                    .fetch_add(batch.iter().map(|j| j.records).sum(), Ordering::Relaxed);
                counters.batches.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    path = %path.display(),
                    records = batch.len(),
                    error = %e,
                    "audit log write failed; failing the batch"
                );
                dirty = true;
                if file.set_len(good_len).and_then(|()| file.sync_data()).is_ok() {
                    dirty = false;
                }
                Err((e.kind(), e.to_string()))
            }
        };
        for job in batch.drain(..) {
            job.reply.send(reply.clone());
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

fn highest_file_number(dir: &Path) -> Result<Option<u64>, AuditError> {
    let mut highest = None;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_file_number) {
            highest = highest.max(Some(n));
        }
    }
    Ok(highest)
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
    /// Every complete record, in file order.
    pub records: Vec<AuditRecord>,
    /// Length of an unterminated last line (a write torn by a crash), 0 if none.
    pub torn_tail_bytes: u64,
}

/// Read and verify a log file (see the module docs for the format). A torn last line is ignored
/// and reported.
///
/// # Errors
/// [`AuditError::Corrupt`] naming the first complete line that fails to verify;
/// [`AuditError::Io`] if the file cannot be read.
pub fn read_log(path: &Path) -> Result<ReadLog, AuditError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut line = Vec::new();
    let mut line_no: u64 = 0;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if n == 0 {
            return Ok(ReadLog { records, torn_tail_bytes: 0 });
        }
        line_no += 1;
        let Some(body) = line.strip_suffix(b"\n") else {
            return Ok(ReadLog { records, torn_tail_bytes: n as u64 });
        };
        let record = parse_line(body).map_err(|reason| AuditError::Corrupt {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        })?;
        records.push(record);
    }
}

/// Verify one line (without its newline) and decode its record.
fn parse_line(body: &[u8]) -> Result<AuditRecord, String> {
    if body.len() < 10 || body[8] != b' ' {
        return Err("not `<crc32 hex> <json>`".into());
    }
    let (hex, json) = (&body[..8], &body[9..]);
    if !hex.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
        return Err("CRC field is not 8 lowercase hex digits".into());
    }
    // The field is ASCII hex, so both conversions succeed.
    let stored = std::str::from_utf8(hex)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or("CRC field is not 8 lowercase hex digits")?;
    let actual = crc32fast::hash(json);
    if stored != actual {
        return Err(format!("CRC mismatch: stored {stored:08x}, computed {actual:08x}"));
    }
    serde_json::from_slice(json).map_err(|e| format!("CRC matches but JSON is invalid: {e}"))
}

/// The engine's journal: a commit group's enroll and delete records are made durable here
/// before the store logs the writes (so no enrollment is ever stored without its audit record).
/// A group that then fails to reach the store's log gets a second record per write,
/// `error:storage`, naming the same request id.
impl biomatch_engine::Journal for AuditLog {
    fn record(
        &self,
        entries: &[biomatch_engine::JournalEntry<'_>],
    ) -> Result<(), biomatch_engine::JournalError> {
        use biomatch_engine::JournalOutcome;
        let recs: Vec<AuditRecord> = entries
            .iter()
            .map(|e| {
                let outcome = match (&e.outcome, e.operation) {
                    (JournalOutcome::Committing, "delete") => format!("deleted:{}", e.seq),
                    (JournalOutcome::Committing, _) => format!("enrolled:{}", e.seq),
                    (JournalOutcome::Failed(_), _) => "error:storage".to_owned(),
                };
                AuditRecord::now(
                    &e.context.key_id,
                    e.operation,
                    &e.context.request_id,
                    vec![e.subject.to_string()],
                    outcome,
                )
            })
            .collect();
        self.append_all_blocking(&recs).map_err(Into::into)
    }
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
            key_id: "k\"ey\n1".into(),
            operation: "verify".into(),
            request_id: "req-ü".into(),
            subject_ids: vec![],
            outcome: "error:unknown_subject".into(),
        };
        log.append(r.clone()).await.unwrap();
        let read = read_log(log.path()).unwrap();
        assert_eq!(read.records, vec![r]);
        // One line per record even when a field holds a newline.
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 1);
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
        let torn = rec("k", "r3".into()).to_line();
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
            log.submit(rec("k", format!("{i}")).to_line(), 1, Reply::Async(tx)).unwrap();
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
