//! The durable subject store: enroll, delete, get, scan, checkpoint.
//!
//! One subject is one record: its face and other vector templates and its minutiae fingers are
//! logged together in one WAL record, under one sequence number, made durable by one fsync.
//!
//! Durability: a write is appended to the WAL and fsynced *before* it is applied to the in-memory
//! state and acknowledged. Readers (searches) take a read lock on the state; writers take the
//! state's write lock only for the in-memory apply, so a search never waits for an fsync, and
//! every search that starts after a write was acknowledged sees it.
//!
//! **Group commit** (leader/follower): a writer queues its write and takes the writer mutex (which
//! owns the WAL). Whoever gets the mutex while its write is still queued becomes the leader: it
//! takes *every* queued write, validates them in order, logs them with one append and one fsync,
//! applies them and hands each writer its result; writers whose write a leader already committed
//! just read their result. So concurrent writers share one fsync, and each is answered only after
//! the fsync that covers its write. When the previous group was shared, a leader first waits up
//! to [`COMMIT_DELAY`] for as many writers to queue (an adaptive commit delay, like PostgreSQL's
//! `commit_delay`); a lone writer never waits. A [`CommitHook`] sees each group before it is logged (the
//! service makes the group's audit records durable there, so no enrollment is ever stored
//! without its audit record) and after it is applied (the finger search structures follow).
//!
//! Checkpoint: when the WAL grows past `checkpoint_wal_bytes`, the rows it added are sealed into new
//! immutable segments (fp16 columns; minutiae in variable-length finger segments), deletes into a
//! new tombstone file, a fresh WAL is created and the manifest is swapped atomically to name them.
//! See `manifest.rs` for why every crash point is safe. With `auto_checkpoint` off the owner runs
//! [`Store::checkpoint_if_due`] off the request path instead.

use crate::error::{GalleryError, Result};
use crate::finger_segment::{self, FingerSegment, FINGER_COLUMN};
use crate::fsutil;
use crate::manifest::{self, ColumnManifest, Manifest, SegmentRef, MANIFEST_FILE};
use crate::minutiae;
use crate::segment::{self, RowMeta, Segment};
use crate::state::{Column, Fingers, State, DELETED};
use crate::wal::{self, WalRecord, WalTemplate, WalWriter};
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{FingerPosition, Modality, ModelId, SubjectId, Template};
use half::f16;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::any::Any;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A model the gallery accepts, with its template dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub model: ModelId,
    pub dim: usize,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Models whose templates are accepted. Models already on disk stay readable even if absent.
    pub models: Vec<ModelSpec>,
    /// Seal the WAL into segments once it is larger than this.
    pub checkpoint_wal_bytes: u64,
    /// Checkpoint inside the write that passes `checkpoint_wal_bytes` (true), or leave it to the
    /// owner's [`Store::checkpoint_if_due`] off the request path (false).
    pub auto_checkpoint: bool,
}

impl StoreOptions {
    pub fn new(models: Vec<ModelSpec>) -> Self {
        Self { models, checkpoint_wal_bytes: 64 << 20, auto_checkpoint: true }
    }
}

/// One subject's templates to enroll: vector templates (one per modality) and minutiae fingers
/// (one per finger position, each with its position set). At least one of either.
#[derive(Clone, Debug)]
pub struct Enrollment {
    pub subject: SubjectId,
    pub templates: Vec<(Modality, Template)>,
    pub fingers: Vec<FingerTemplate>,
}

impl Enrollment {
    /// An enrollment of vector templates only.
    pub fn new(subject: SubjectId, templates: Vec<(Modality, Template)>) -> Self {
        Self { subject, templates, fingers: Vec::new() }
    }
}

/// One write for the group commit.
#[derive(Clone, Debug)]
pub enum WriteOp {
    Enroll(Enrollment),
    Delete(SubjectId),
}

impl WriteOp {
    pub fn subject(&self) -> &SubjectId {
        match self {
            WriteOp::Enroll(e) => &e.subject,
            WriteOp::Delete(s) => s,
        }
    }
}

/// What a writer attaches to its write for the [`CommitHook`] (audit context, prepared search
/// structures); the store never looks inside.
pub type Note = Box<dyn Any + Send + Sync>;

/// A write of a commit group that passed validation, with its sequence number.
#[derive(Debug)]
pub struct Committed<'a> {
    pub seq: u64,
    pub op: &'a WriteOp,
    pub note: Option<&'a Note>,
}

/// Sees every commit group (see the module docs). Called by the committing thread with the writer
/// lock held, in sequence order: keep it short.
pub trait CommitHook: Send + Sync + std::fmt::Debug {
    /// Before the group is logged: the journal bytes (audit records) to log with it, if any. They
    /// are written in the same append as the group's records and made durable by the same fsync
    /// (a journal frame, see `wal.rs`). An error fails every write of the group; nothing is logged.
    fn before_log(&self, group: &[Committed<'_>]) -> std::result::Result<Option<Vec<u8>>, String>;
    /// After the group (and its journal bytes) is durable and applied, before any of its writers
    /// gets its answer.
    fn applied(&self, group: &[Committed<'_>], journal: Option<&[u8]>);
    /// `before_log` passed but the group could not be made durable: none of it is stored.
    fn failed(&self, group: &[Committed<'_>], error: &GalleryError);
    /// Before a checkpoint replaces the log: every journal byte handed to `applied` so far must be
    /// durable outside the store, because the new log will not hold it. An error stops the
    /// checkpoint (the log keeps everything; it is retried later).
    fn before_checkpoint(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// One writer's place in the commit queue.
struct Ticket {
    ops: Vec<(WriteOp, Option<Note>)>,
    /// Whether the ops are one bulk batch (a repeated subject is `DuplicateInBatch`).
    batch: bool,
    result: Mutex<Option<Result<Vec<Result<u64>>>>>,
}

/// Metadata of an enrolled subject (never biometric data).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SubjectInfo {
    pub subject_id: SubjectId,
    /// Sequence number of the enrollment.
    pub seq: u64,
    pub templates: Vec<TemplateInfo>,
    /// Positions of the subject's minutiae fingers, ascending.
    pub fingers: Vec<FingerPosition>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TemplateInfo {
    pub modality: Modality,
    pub model: ModelId,
}

/// What `open` had to do to the files, for the operator.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Recovery {
    pub wal_records_replayed: u64,
    pub wal_torn_bytes_discarded: u64,
    pub leftover_files_removed: Vec<String>,
}

/// Counts for monitoring.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StoreStats {
    pub subjects: usize,
    pub last_seq: u64,
    pub wal_bytes: u64,
    /// Log appends since open, each made durable by one fsync (group commit: one per group).
    pub wal_appends: u64,
    /// Writes those appends carried; `wal_writes / wal_appends` is the group-commit factor.
    pub wal_writes: u64,
    pub columns: Vec<ColumnStats>,
    pub fingers: FingerStats,
}

/// Counts of the minutiae fingers.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FingerStats {
    /// Subjects holding fingers.
    pub subjects: usize,
    /// Live finger templates.
    pub fingers: usize,
    /// Finger records ever written (deleted ones included until they are compacted away).
    pub records: u64,
    pub segments: usize,
    pub unsealed_records: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ColumnStats {
    pub model: ModelId,
    pub dim: usize,
    pub rows: u64,
    pub live: usize,
    pub sealed_rows: u64,
    pub segments: usize,
    /// Rows added since the last checkpoint (held in memory and in the WAL).
    pub unsealed_rows: u64,
}

#[derive(Debug)]
struct Writer {
    /// `None` in a read-only store.
    wal: Option<WalWriter>,
    manifest: Manifest,
    poisoned: bool,
    /// Journal frames found in the log at open that no hook has taken yet (see
    /// [`Store::recover_journal`]); a checkpoint carries them over into the new log.
    journal_backlog: Vec<Vec<u8>>,
    /// Journal bytes went to `applied` since the last checkpoint (see `before_checkpoint`).
    journal_since_checkpoint: bool,
    /// After a failed checkpoint: not before this instant, and the wait after the next failure.
    checkpoint_retry: Option<(std::time::Instant, std::time::Duration)>,
}

/// Why writes cannot be made durable right now ([`Store::write_fault`]). Messages name a file
/// and an OS error, never biometric data.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "message")]
pub enum WriteFault {
    /// The disk or quota is full (ENOSPC, EDQUOT).
    NoSpace(String),
    /// Another I/O error (EIO, a failed fsync, a log that could not be cut back yet).
    Io(String),
    /// A failed checkpoint left this process unsure which log is current: writes are refused
    /// until the store is reopened.
    Poisoned,
}

/// While writes fail, [`Store::probe_writes`] checks that this much can be written and fsynced.
const PROBE_BYTES: usize = 64 << 10;
/// The probe's file (a `.tmp`: removed at open if a crash leaves it behind).
const PROBE_FILE: &str = "write-probe.tmp";
/// The first wait after a failed checkpoint; it doubles with each failure, up to the maximum.
const CHECKPOINT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const CHECKPOINT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The embedded, crash-safe gallery store. `Send + Sync`: share it behind an `Arc`.
pub struct Store {
    dir: PathBuf,
    opts: StoreOptions,
    pub(crate) state: RwLock<State>,
    writer: Mutex<Writer>,
    /// Writes waiting for a leader (group commit).
    queue: Mutex<Vec<Arc<Ticket>>>,
    /// Signalled when a write is queued (the leader may be waiting for company).
    queued: parking_lot::Condvar,
    /// Tickets in the last commit group.
    last_group: std::sync::atomic::AtomicUsize,
    hook: OnceLock<Arc<dyn CommitHook>>,
    /// Log appends (each one fsync) and the writes they carried, for monitoring.
    appends: std::sync::atomic::AtomicU64,
    appended_writes: std::sync::atomic::AtomicU64,
    /// Set when a write could not be made durable, cleared by the next one that is (or by a
    /// successful [`Store::probe_writes`]). Apart from the writer lock, so readiness checks never
    /// wait for an fsync.
    fault: Mutex<Option<WriteFault>>,
    recovery: Recovery,
    /// Holds the exclusive advisory lock on `LOCK` for the store's lifetime (`None`: read-only).
    _lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Store {
    // Counts only: never templates.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("read_only", &self._lock.is_none())
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

const LOCK_FILE: &str = "LOCK";

fn is_store_file(name: &str) -> bool {
    (name.starts_with("seg-")
        || name.starts_with("wal-")
        || name.starts_with("del-")
        || name.starts_with("fng-"))
        || name.ends_with(".tmp")
}

/// The longest a commit leader waits for the writers of the previous group to queue again.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(300);
/// A leader waits for at most this many tickets.
const MAX_GROUP_WAIT_FOR: usize = 64;

/// A copy of a commit failure for each writer of the group.
fn share(e: &GalleryError) -> GalleryError {
    match e {
        GalleryError::Io { path, source } => GalleryError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        GalleryError::Poisoned => GalleryError::Poisoned,
        GalleryError::NoSpace { path, source } => GalleryError::NoSpace {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        GalleryError::WriteFailed { path, source } => GalleryError::WriteFailed {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        GalleryError::InDoubt { path, source } => GalleryError::InDoubt {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        GalleryError::ReadOnly => GalleryError::ReadOnly,
        GalleryError::Journal(m) => GalleryError::Journal(m.clone()),
        other => GalleryError::Journal(other.to_string()),
    }
}

impl Store {
    /// Open the store in `dir`, creating it if the directory is empty or missing.
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        Self::open_impl(dir.as_ref(), opts, false)
    }

    /// Open a consistent snapshot of a store that another process (the service) may be writing:
    /// no lock, no repair, no file is created, changed or removed; writes are refused with
    /// [`GalleryError::ReadOnly`]. For offline tools such as the index builder. The snapshot
    /// holds every write acknowledged before the open started.
    pub fn open_read_only(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref();
        if !dir.join(MANIFEST_FILE).exists() {
            return Err(GalleryError::Config(format!(
                "{} is not a store (no MANIFEST)",
                dir.display()
            )));
        }
        // A checkpoint in the writer may remove the WAL or tombstone file the manifest we read
        // named; the next manifest names the files that replaced them.
        let mut last = None;
        for _ in 0..10 {
            match Self::open_impl(dir, opts.clone(), true) {
                Err(GalleryError::Io { path, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    last = Some(GalleryError::Io { path, source });
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn open_impl(dir: &Path, opts: StoreOptions, read_only: bool) -> Result<Store> {
        let dir = dir.to_owned();
        if read_only {
            return Self::load(dir, opts, None);
        }
        std::fs::create_dir_all(&dir).map_err(GalleryError::io(&dir))?;
        // One process owns a store: a second writer would interleave WAL frames.
        let Some(lock) = fsutil::try_lock_exclusive(&dir.join(LOCK_FILE))? else {
            return Err(GalleryError::Locked(dir));
        };
        Self::load(dir, opts, Some(lock))
    }

    /// Load the state; `lock` is `Some` for the owning writer (which may repair and write).
    fn load(dir: PathBuf, opts: StoreOptions, lock: Option<std::fs::File>) -> Result<Store> {
        let writable = lock.is_some();
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(GalleryError::io(&dir))? {
            let e = e.map_err(GalleryError::io(&dir))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        if writable && !names.iter().any(|n| n == MANIFEST_FILE) {
            if let Some(n) = names.iter().find(|n| {
                n.starts_with("seg-")
                    || n.starts_with("wal-")
                    || n.starts_with("del-")
                    || n.starts_with("fng-")
            }) {
                return Err(GalleryError::corrupt(
                    dir.join(n),
                    "data files exist but the MANIFEST is missing; refusing to start an empty store over them",
                ));
            }
            let m = Manifest {
                generation: 1,
                checkpoint_seq: 0,
                next_segment: 1,
                wal: Manifest::wal_name(1),
                tombstones: None,
                columns: Vec::new(),
                fingers: Vec::new(),
            };
            WalWriter::create(&dir.join(&m.wal))?;
            m.write(&dir)?;
        }
        let mut manifest = Manifest::read(&dir)?;

        // Reconcile the configured models with the columns on disk.
        let mut new_columns = false;
        for spec in &opts.models {
            match manifest.columns.iter().find(|c| c.model == spec.model) {
                Some(c) if c.dim != spec.dim => {
                    return Err(GalleryError::Config(format!(
                        "model {} is configured with dim {} but stored with dim {}",
                        spec.model, spec.dim, c.dim
                    )))
                }
                Some(_) => {}
                None => {
                    if manifest.columns.len() >= u16::MAX as usize {
                        return Err(GalleryError::Config("too many models".into()));
                    }
                    manifest.columns.push(ColumnManifest {
                        model: spec.model.clone(),
                        dim: spec.dim,
                        segments: Vec::new(),
                    });
                    new_columns = true;
                }
            }
        }

        // Sealed segments and tombstones.
        let mut columns = Vec::with_capacity(manifest.columns.len());
        let mut loaded_meta: Vec<Vec<RowMeta>> = Vec::with_capacity(manifest.columns.len());
        for (ci, cm) in manifest.columns.iter().enumerate() {
            let mut col = Column::new(cm.model.clone(), cm.dim);
            let mut col_meta = Vec::new();
            for sref in &cm.segments {
                let path = dir.join(&sref.file);
                let (seg, meta) = Segment::open(&path, ci as u16, cm.dim)?;
                if seg.first_row != col.rows()
                    || seg.rows != sref.rows
                    || sref.first_row != seg.first_row
                {
                    return Err(GalleryError::corrupt(
                        &path,
                        "segment rows disagree with the manifest",
                    ));
                }
                col.state.extend(meta.iter().map(|m| m.modality.code()));
                col.live += meta.len();
                col_meta.extend(meta);
                col.segments.push(seg);
            }
            col.mem_first_row = col.rows();
            columns.push(col);
            loaded_meta.push(col_meta);
        }
        let mut fingers = Fingers::default();
        let mut finger_meta = Vec::new();
        for sref in &manifest.fingers {
            let path = dir.join(&sref.file);
            let (seg, meta) = FingerSegment::open(&path)?;
            if seg.first_record != fingers.records()
                || seg.records != sref.rows
                || sref.first_row != seg.first_record
            {
                return Err(GalleryError::corrupt(
                    &path,
                    "finger segment records disagree with the manifest",
                ));
            }
            fingers.live.extend(std::iter::repeat_n(true, meta.len()));
            fingers.live_count += meta.len();
            finger_meta.extend(meta);
            fingers.segments.push((seg, path));
        }
        fingers.mem_first = fingers.records();
        if let Some(del) = &manifest.tombstones {
            let path = dir.join(del);
            let missing =
                || GalleryError::corrupt(&path, "tombstone names a row that does not exist");
            for (c, row) in manifest::read_tombstones(&path)? {
                if c == FINGER_COLUMN {
                    if row >= fingers.records() {
                        return Err(missing());
                    }
                    // Deleted records hold no live fingers yet (counted by index_loaded_fingers).
                    if fingers.live[row as usize] {
                        fingers.live[row as usize] = false;
                        fingers.live_count -= 1;
                    }
                    continue;
                }
                let col = columns
                    .get_mut(c as usize)
                    .filter(|col| row < col.rows())
                    .ok_or_else(missing)?;
                col.delete_row(row);
            }
        }
        let mut state = State { columns, fingers, subjects: Default::default(), last_seq: 0 };
        state.index_loaded_rows(loaded_meta);
        state.index_loaded_fingers(finger_meta)?;
        crate::fsutil::release_freed_heap();
        state.last_seq = state.last_seq.max(manifest.checkpoint_seq);

        // Replay the WAL (idempotently: records already sealed are skipped).
        let wal_path = dir.join(&manifest.wal);
        let scan = wal::scan(&wal_path)?;
        let mut recovery =
            Recovery { wal_torn_bytes_discarded: scan.discarded, ..Recovery::default() };
        for rec in scan.records.iter().filter(|r| r.seq() > manifest.checkpoint_seq) {
            state.apply(rec).map_err(|why| GalleryError::corrupt(&wal_path, why))?;
            recovery.wal_records_replayed += 1;
        }
        state.shrink();
        if scan.discarded > 0 {
            tracing::warn!(
                file = %wal_path.display(),
                bytes = scan.discarded,
                "discarded a torn, unacknowledged tail of the write-ahead log"
            );
        }
        let make = |wal, manifest, lock| Store {
            dir: dir.clone(),
            opts: opts.clone(),
            state: RwLock::new(State::default()),
            writer: Mutex::new(Writer {
                wal,
                manifest,
                poisoned: false,
                journal_backlog: Vec::new(),
                journal_since_checkpoint: false,
                checkpoint_retry: None,
            }),
            queue: Mutex::new(Vec::new()),
            queued: parking_lot::Condvar::new(),
            last_group: Default::default(),
            hook: OnceLock::new(),
            appends: Default::default(),
            appended_writes: Default::default(),
            fault: Mutex::new(None),
            recovery: Recovery::default(),
            _lock: lock,
        };
        if !writable {
            let mut store = make(None, manifest, None);
            *store.state.get_mut() = state;
            store.recovery = recovery;
            return Ok(store);
        }
        let wal_version = wal::version_of(&wal_path)?;
        let wal = WalWriter::reopen(&wal_path, scan.valid_len)?;
        if new_columns {
            manifest.write(&dir)?;
        }

        // Leftovers of an interrupted checkpoint: files the manifest does not name.
        let named: HashSet<&str> = manifest.files().collect();
        for n in names.iter().filter(|n| is_store_file(n) && !named.contains(n.as_str())) {
            std::fs::remove_file(dir.join(n)).map_err(GalleryError::io(dir.join(n)))?;
            recovery.leftover_files_removed.push(n.clone());
        }
        if !recovery.leftover_files_removed.is_empty() {
            fsutil::sync_dir(&dir)?;
            tracing::info!(files = ?recovery.leftover_files_removed, "removed files of an interrupted checkpoint");
        }

        let mut store = make(Some(wal), manifest, lock);
        *store.state.get_mut() = state;
        store.writer.get_mut().journal_backlog = scan.journals;
        store.recovery = recovery;
        if wal_version < wal::WAL_HEADER.version {
            // A log of an older format: seal it, so that new frames go to a log of this version.
            let mut w = store.writer.lock();
            store.checkpoint_locked(&mut w)?;
            drop(w);
            tracing::info!(version = wal_version, "sealed a write-ahead log of an older format");
        }
        Ok(store)
    }

    /// Hand the journal frames found in the log at open to `take` (the audit log adds those it
    /// lacks). Once `take` succeeds they are no longer carried over by checkpoints; if it fails,
    /// they stay and the error is returned. Nothing to hand over: `take` is not called.
    pub fn recover_journal(
        &self,
        take: impl FnOnce(&[Vec<u8>]) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let mut w = self.writer.lock();
        if w.journal_backlog.is_empty() {
            return Ok(());
        }
        take(&w.journal_backlog).map_err(GalleryError::Journal)?;
        w.journal_backlog.clear();
        Ok(())
    }

    /// Set the hook that sees every commit group (once; later calls are ignored).
    pub fn set_commit_hook(&self, hook: Arc<dyn CommitHook>) {
        let _ = self.hook.set(hook);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening the store repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Turn validated templates into a WAL record, or say why they cannot be enrolled (the
    /// caller checked that the subject is not enrolled).
    fn prepare(state: &State, seq: u64, e: &Enrollment) -> Result<WalRecord> {
        if e.templates.is_empty() && e.fingers.is_empty() {
            return Err(GalleryError::EmptyEnrollment);
        }
        // A vector template at a finger position the minutiae also hold is allowed: it is the
        // finger's fixed-length pre-selection code (the engine derives one per finger).
        if !e.fingers.is_empty() {
            minutiae::check_fingers(&e.fingers)?;
        }
        let mut seen = HashSet::new();
        let mut templates = Vec::with_capacity(e.templates.len());
        for (modality, t) in &e.templates {
            if !seen.insert(*modality) {
                return Err(GalleryError::DuplicateModality(*modality));
            }
            let column = state.column_of(t.model())?;
            let dim = state.columns[column as usize].dim;
            if t.dim() != dim {
                return Err(GalleryError::WrongDimension {
                    model: t.model().clone(),
                    expected: dim,
                    got: t.dim(),
                });
            }
            templates.push(WalTemplate {
                modality: *modality,
                column,
                vector: crate::kernel::to_f16(t.vector()),
            });
        }
        Ok(WalRecord::Enroll {
            seq,
            subject: e.subject.clone(),
            templates,
            fingers: e.fingers.clone(),
        })
    }

    /// Submit writes and wait until a commit group covering them is durable (or failed).
    fn submit(&self, ops: Vec<(WriteOp, Option<Note>)>, batch: bool) -> Result<Vec<Result<u64>>> {
        let ticket = Arc::new(Ticket { ops, batch, result: Mutex::new(None) });
        self.queue.lock().push(ticket.clone());
        self.queued.notify_one();
        let mut w = self.writer.lock();
        if let Some(r) = ticket.result.lock().take() {
            return r; // A leader before us committed it.
        }
        let group = {
            let mut q = self.queue.lock();
            // Adaptive commit delay: when the last group was shared, the writers that made it
            // are likely on their way back; wait a moment (bounded) for as many to queue, so
            // they share this fsync too. A lone writer never waits.
            use std::sync::atomic::Ordering::Relaxed;
            let want = self.last_group.load(Relaxed).min(MAX_GROUP_WAIT_FOR);
            if want > 1 && q.len() < want {
                let deadline = std::time::Instant::now() + COMMIT_DELAY;
                while q.len() < want && !self.queued.wait_until(&mut q, deadline).timed_out() {}
            }
            self.last_group.store(q.len(), Relaxed);
            std::mem::take(&mut *q)
        };
        self.commit_group(&mut w, &group);
        drop(w);
        let r = ticket.result.lock().take();
        r.expect("the leader answered its own ticket")
    }

    /// Validate, log (one append, one fsync), apply and answer a group of tickets. Called with the
    /// writer lock held.
    fn commit_group(&self, w: &mut Writer, group: &[Arc<Ticket>]) {
        let answer_all = |e: &GalleryError| {
            for t in group {
                *t.result.lock() = Some(Err(share(e)));
            }
        };
        if w.poisoned {
            return answer_all(&GalleryError::Poisoned);
        }
        if w.wal.is_none() {
            return answer_all(&GalleryError::ReadOnly);
        }
        // 1. Validate in order against the state and the group's earlier writes.
        let mut results: Vec<Vec<Result<u64>>> = Vec::with_capacity(group.len());
        let mut records = Vec::new();
        let mut accepted: Vec<(usize, usize)> = Vec::new();
        {
            let st = self.state.read();
            let mut seq = st.last_seq;
            let mut enrolled: HashSet<&SubjectId> = HashSet::new();
            let mut deleted: HashSet<&SubjectId> = HashSet::new();
            for (ti, t) in group.iter().enumerate() {
                let mut mine: HashSet<&SubjectId> = HashSet::new();
                let mut out = Vec::with_capacity(t.ops.len());
                for (oi, (op, _)) in t.ops.iter().enumerate() {
                    let s = op.subject();
                    let exists =
                        enrolled.contains(s) || (st.subjects.contains(s) && !deleted.contains(s));
                    let r = match op {
                        WriteOp::Enroll(_) if t.batch && mine.contains(s) => {
                            Err(GalleryError::DuplicateInBatch(s.clone()))
                        }
                        WriteOp::Enroll(_) if exists => {
                            Err(GalleryError::AlreadyEnrolled(s.clone()))
                        }
                        WriteOp::Enroll(e) => Self::prepare(&st, seq + 1, e),
                        WriteOp::Delete(_) if !exists => {
                            Err(GalleryError::UnknownSubject(s.clone()))
                        }
                        WriteOp::Delete(_) => {
                            Ok(WalRecord::Delete { seq: seq + 1, subject: s.clone() })
                        }
                    };
                    mine.insert(s);
                    match r {
                        Ok(rec) => {
                            seq += 1;
                            match op {
                                WriteOp::Enroll(_) => {
                                    enrolled.insert(s);
                                }
                                WriteOp::Delete(_) => {
                                    enrolled.remove(s);
                                    deleted.insert(s);
                                }
                            }
                            records.push(rec);
                            accepted.push((ti, oi));
                            out.push(Ok(seq));
                        }
                        Err(e) => out.push(Err(e)),
                    }
                }
                results.push(out);
            }
        }
        let committed: Vec<Committed<'_>> = accepted
            .iter()
            .zip(&records)
            .map(|(&(ti, oi), rec)| {
                let (op, note) = &group[ti].ops[oi];
                Committed { seq: rec.seq(), op, note: note.as_ref() }
            })
            .collect();
        // 2. The hook (audit) first, then the log: one append, one fsync for the whole group.
        let hook = self.hook.get();
        let mut journal = None;
        let logged = if records.is_empty() {
            Ok(())
        } else {
            let pre = match hook {
                Some(h) => h.before_log(&committed).map_err(GalleryError::Journal),
                None => Ok(None),
            };
            pre.and_then(|j| {
                let mut frames: Vec<u8> = j.as_deref().map(wal::encode_journal).unwrap_or_default();
                frames.extend(records.iter().flat_map(|r| r.encode()));
                journal = j;
                let wal = w.wal.as_mut().expect("checked writable");
                wal.append(&frames).inspect_err(|e| {
                    if let Some(h) = hook {
                        h.failed(&committed, e);
                    }
                })
            })
        };
        if let Err(e) = logged {
            self.set_fault(&e);
            // Nothing of the group is stored: every write it accepted fails with the cause.
            for &(ti, oi) in &accepted {
                results[ti][oi] = Err(share(&e));
            }
        } else if !records.is_empty() {
            self.clear_fault();
            use std::sync::atomic::Ordering::Relaxed;
            self.appends.fetch_add(1, Relaxed);
            self.appended_writes.fetch_add(records.len() as u64, Relaxed);
            // 3. Apply, let the hook follow, answer.
            let mut st = self.state.write();
            for r in &records {
                // Validated against this same state under the writer lock just before logging.
                st.apply(r).expect("a validated record applies");
            }
            drop(st);
            w.journal_since_checkpoint |= journal.is_some();
            if let Some(h) = hook {
                h.applied(&committed, journal.as_deref());
            }
        }
        for (t, r) in group.iter().zip(results) {
            *t.result.lock() = Some(Ok(r));
        }
        if self.opts.auto_checkpoint && self.checkpoint_due(w) {
            // The records are durable whatever happens here; a failed checkpoint is retried later.
            if let Err(e) = self.checkpoint_locked(w) {
                tracing::error!(error = %e, "checkpoint failed; the write-ahead log keeps the data");
            }
        }
    }

    /// Whether the log has outgrown `checkpoint_wal_bytes` (and the wait after a failed
    /// checkpoint is over).
    fn checkpoint_due(&self, w: &Writer) -> bool {
        w.wal.as_ref().is_some_and(|wal| wal.len() > self.opts.checkpoint_wal_bytes)
            && w.checkpoint_retry.is_none_or(|(at, _)| std::time::Instant::now() >= at)
    }

    /// Why writes cannot be made durable right now, if they cannot: set when a write fails
    /// (the log's append or fsync, or the commit hook's journal for want of space), cleared
    /// when a later write succeeds or [`Store::probe_writes`] does. Never waits for a write.
    pub fn write_fault(&self) -> Option<WriteFault> {
        self.fault.lock().clone()
    }

    /// Whether writes can be made durable now. Does no I/O unless a [`WriteFault`] is set; then
    /// it cuts back what a failed append left in the log (if anything) and writes, fsyncs and
    /// removes a probe file of 64 KiB in the store's directory: success clears the fault, so the
    /// store reports itself writable again without a restart once space is freed. For the
    /// owner's maintenance thread. The commit hook's own files (the service's audit journal)
    /// are not probed: on another disk, a fault they caused clears here and is set again by the
    /// next write they refuse.
    pub fn probe_writes(&self) -> bool {
        if self.fault.lock().is_none() {
            return true;
        }
        let mut w = self.writer.lock();
        if w.poisoned {
            return false;
        }
        let Some(wal) = w.wal.as_mut() else { return true };
        match wal.repair().and_then(|()| self.write_probe()) {
            Ok(()) => {
                self.clear_fault();
                true
            }
            Err(e) => {
                self.set_fault(&e);
                false
            }
        }
    }

    fn write_probe(&self) -> Result<()> {
        use std::io::Write;
        let path = self.dir.join(PROBE_FILE);
        let r = std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&vec![0u8; PROBE_BYTES]).and_then(|()| f.sync_data()));
        let _ = std::fs::remove_file(&path);
        r.map_err(GalleryError::write(&path))
    }

    /// Record that a write could not be made durable (storage faults only).
    fn set_fault(&self, e: &GalleryError) {
        let fault = match e {
            GalleryError::NoSpace { .. } => WriteFault::NoSpace(e.to_string()),
            GalleryError::WriteFailed { .. } | GalleryError::InDoubt { .. } => {
                WriteFault::Io(e.to_string())
            }
            GalleryError::Poisoned => WriteFault::Poisoned,
            _ => return,
        };
        let mut f = self.fault.lock();
        if f.is_none() {
            tracing::error!(fault = ?fault, "writes cannot be made durable");
        }
        *f = Some(fault);
    }

    fn clear_fault(&self) {
        if let Some(fault) = self.fault.lock().take() {
            tracing::warn!(was = ?fault, "writes are durable again");
        }
    }

    /// One write through the group commit, with a note for the [`CommitHook`].
    pub fn write(&self, op: WriteOp, note: Option<Note>) -> Result<u64> {
        let mut r = self.submit(vec![(op, note)], false)?;
        r.pop().expect("one result per write")
    }

    /// Several writes in one commit group (one fsync); each gets its own result, an I/O failure
    /// fails them all (outer `Err`, nothing applied). A subject repeated in the batch is refused.
    pub fn write_batch(&self, ops: Vec<(WriteOp, Option<Note>)>) -> Result<Vec<Result<u64>>> {
        self.submit(ops, true)
    }

    /// Enroll one subject. Returns the enrollment's sequence number once it is durable.
    pub fn enroll(&self, e: &Enrollment) -> Result<u64> {
        self.write(WriteOp::Enroll(e.clone()), None)
    }

    /// Enroll many subjects with one fsync. Each item gets its own result (invalid items are
    /// refused without affecting the others); an I/O failure fails the whole batch (outer `Err`),
    /// and then nothing of it was applied.
    pub fn enroll_batch(&self, batch: &[Enrollment]) -> Result<Vec<Result<u64>>> {
        self.write_batch(batch.iter().map(|e| (WriteOp::Enroll(e.clone()), None)).collect())
    }

    /// Delete a subject (a tombstone, honoured by every search that starts after this returns).
    pub fn delete(&self, subject: &SubjectId) -> Result<u64> {
        self.write(WriteOp::Delete(subject.clone()), None)
    }

    /// Attach minutiae fingers to a subject enrolled without any (or to a new subject), as one
    /// record. Only for converting a store of the earlier two-store layout (`legacy.rs`).
    pub(crate) fn attach_fingers_batch(
        &self,
        items: Vec<(SubjectId, Vec<FingerTemplate>)>,
    ) -> Result<usize> {
        let mut w = self.writer.lock();
        if w.poisoned {
            return Err(GalleryError::Poisoned);
        }
        let mut records = Vec::new();
        {
            let st = self.state.read();
            let mut seq = st.last_seq;
            for (subject, fingers) in items {
                if st.finger_record(&subject).is_some() {
                    continue; // Converted before (an interrupted conversion is re-run).
                }
                minutiae::check_fingers(&fingers)?;
                seq += 1;
                records.push(WalRecord::Attach { seq, subject, fingers });
            }
        }
        if records.is_empty() {
            return Ok(0);
        }
        let frames: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
        w.wal.as_mut().ok_or(GalleryError::ReadOnly)?.append(&frames)?;
        let mut st = self.state.write();
        for r in &records {
            st.apply(r).expect("a validated record applies");
        }
        Ok(records.len())
    }

    /// Metadata of an enrolled subject.
    pub fn get(&self, subject: &SubjectId) -> Result<SubjectInfo> {
        let st = self.state.read();
        let slot = st
            .subjects
            .find(subject)
            .ok_or_else(|| GalleryError::UnknownSubject(subject.clone()))?;
        Ok(SubjectInfo {
            subject_id: subject.clone(),
            seq: st.subjects.seq(slot),
            templates: st
                .templates_of(slot)
                .into_iter()
                .map(|(modality, c, _)| TemplateInfo {
                    modality,
                    model: st.columns[c as usize].model.clone(),
                })
                .collect(),
            fingers: st
                .subjects
                .fingers(slot)
                .map(|(_, bits)| {
                    (1..=10u8)
                        .filter(|p| bits & (1 << p) != 0)
                        .map(|p| FingerPosition::new(p).expect("1..=10"))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The id of a subject's finger record and its enrollment sequence number (`None`: no
    /// such subject, or it has no fingers). Record ids are dense from 0 and never reused.
    pub fn finger_record(&self, subject: &SubjectId) -> Option<(u64, u64)> {
        let st = self.state.read();
        let slot = st.subjects.find(subject)?;
        st.subjects.fingers(slot).map(|(id, _)| (id, st.subjects.seq(slot)))
    }

    /// Finger records ever written (ids `0..n`, deleted ones included).
    pub fn finger_records(&self) -> u64 {
        self.state.read().fingers.records()
    }

    /// For every finger record id, the sequence number of the live subject holding it (`None`:
    /// deleted), in one pass under one read lock. For offline builders.
    pub fn finger_record_seqs(&self) -> Vec<Option<u64>> {
        let st = self.state.read();
        let mut out = vec![None; st.fingers.records() as usize];
        for slot in st.subjects.live() {
            if let Some((id, _)) = st.subjects.fingers(slot) {
                out[id as usize] = Some(st.subjects.seq(slot));
            }
        }
        out
    }

    /// The fingers of the live records among ids `range` (clamped to the records there are),
    /// under one read lock: offline builders walk the records a chunk at a time, so writers are
    /// never held up for long.
    pub fn finger_record_range(
        &self,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<(u64, Vec<FingerTemplate>)>> {
        let st = self.state.read();
        let end = range.end.min(st.fingers.records());
        (range.start..end)
            .filter(|&id| st.fingers.live[id as usize])
            .map(|id| Ok((id, st.fingers.get(id)?)))
            .collect()
    }

    /// Subjects holding minutiae fingers, and their live fingers.
    pub fn finger_counts(&self) -> (usize, usize) {
        let st = self.state.read();
        (st.fingers.live_count, st.fingers.live_fingers)
    }

    /// Live rows (templates) of `model`'s column; 0 for a model the store does not hold.
    pub fn live_rows(&self, model: &ModelId) -> usize {
        let st = self.state.read();
        st.column_of(model).map_or(0, |c| st.columns[c as usize].live)
    }

    /// The minutiae fingers of a subject (empty if it has none).
    pub fn fingers(&self, subject: &SubjectId) -> Result<Vec<FingerTemplate>> {
        let st = self.state.read();
        let slot = st
            .subjects
            .find(subject)
            .ok_or_else(|| GalleryError::UnknownSubject(subject.clone()))?;
        match st.subjects.fingers(slot) {
            Some((id, _)) => st.fingers.get(id),
            None => Ok(Vec::new()),
        }
    }

    /// Sequence number of the subject's enrollment, if enrolled.
    pub fn seq_of(&self, subject: &SubjectId) -> Option<u64> {
        let st = self.state.read();
        st.subjects.find(subject).map(|i| st.subjects.seq(i))
    }

    /// The stored (fp16-rounded) template of a subject, as f32.
    pub fn template(&self, subject: &SubjectId, modality: Modality) -> Result<(ModelId, Vec<f32>)> {
        let st = self.state.read();
        let (c, row) = lookup(&st, subject, modality)?;
        let col = &st.columns[c as usize];
        Ok((col.model.clone(), crate::kernel::to_f32(col.vector(row))))
    }

    /// Every live subject with its enrollment sequence number, in sequence order (the order
    /// enrollments were acknowledged: stable across reopen, and a subject enrolled later always
    /// sorts after). For offline walks of the whole store, such as the backlog deduplication;
    /// one copy of every id under one read lock.
    pub fn subjects_by_seq(&self) -> Vec<(u64, SubjectId)> {
        let st = self.state.read();
        let mut out: Vec<(u64, SubjectId)> =
            st.subjects.live().map(|i| (st.subjects.seq(i), st.subjects.id(i))).collect();
        drop(st);
        out.sort_unstable_by_key(|(seq, _)| *seq);
        out
    }

    pub fn contains(&self, subject: &SubjectId) -> bool {
        self.state.read().subjects.contains(subject)
    }

    pub fn len(&self) -> usize {
        self.state.read().subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visit every live row of `model` in row order, in batches of up to `batch` rows, under one
    /// consistent snapshot (writers wait until the scan ends). For rebuilds: the vectors come
    /// straight from the memory-mapped segments, read sequentially.
    pub fn scan(
        &self,
        model: &ModelId,
        batch: usize,
        mut f: impl FnMut(ScanBatch<'_>),
    ) -> Result<ScanSummary> {
        let st = self.state.read();
        let c = st.column_of(model)?;
        let col = &st.columns[c as usize];
        let batch = batch.max(1);
        for (first, vecs) in col.blocks() {
            let n = vecs.len() / col.dim.max(1);
            for start in (0..n).step_by(batch) {
                let end = (start + batch).min(n);
                let mut rows = Vec::with_capacity(end - start);
                for i in start..end {
                    let row = first + i as u64;
                    if col.is_live(row) {
                        rows.push(row);
                    }
                }
                f(ScanBatch { st: &st, col, rows, first, vectors: vecs });
            }
        }
        Ok(ScanSummary { last_seq: st.last_seq, rows: col.rows(), live: col.live })
    }

    /// Checkpoint if the WAL has passed `checkpoint_wal_bytes` (for owners that run checkpoints
    /// off the request path). Returns whether one ran.
    pub fn checkpoint_if_due(&self) -> Result<bool> {
        let mut w = self.writer.lock();
        if w.wal.is_none() || w.poisoned || !self.checkpoint_due(&w) {
            return Ok(false);
        }
        self.checkpoint_locked(&mut w).map(|()| true)
    }

    /// Seal the WAL into segments now (normally automatic).
    /// The write-ahead log's length up to the end of its last durable commit group (`None`:
    /// read-only): a copy of the log's first bytes up to here holds whole groups — a journal
    /// frame never without the records it was logged with. Waits for a group being committed.
    pub fn wal_durable_len(&self) -> Option<u64> {
        self.writer.lock().wal.as_ref().map(|w| w.len())
    }

    pub fn checkpoint(&self) -> Result<()> {
        let mut w = self.writer.lock();
        if w.wal.is_none() {
            return Err(GalleryError::ReadOnly);
        }
        if w.poisoned {
            return Err(GalleryError::Poisoned);
        }
        self.checkpoint_locked(&mut w)
    }

    fn checkpoint_locked(&self, w: &mut Writer) -> Result<()> {
        if w.journal_since_checkpoint {
            // The new log will not hold the journal bytes logged so far: they must be durable
            // where the hook keeps them first.
            if let Some(h) = self.hook.get() {
                h.before_checkpoint().map_err(GalleryError::Journal)?;
            }
        }
        let old = w.manifest.clone();
        let mut next = old.clone();
        next.generation += 1;
        next.wal = Manifest::wal_name(next.generation);
        let mut new_files: Vec<PathBuf> = Vec::new();
        type Sealed = (Vec<(usize, Segment)>, Option<(FingerSegment, PathBuf)>);
        let result = (|| -> Result<Sealed> {
            let st = self.state.read();
            next.checkpoint_seq = st.last_seq;
            let mut sealed = Vec::new();
            for (ci, col) in st.columns.iter().enumerate() {
                if col.mem_rows() == 0 {
                    continue;
                }
                let name = Manifest::segment_name(ci, next.next_segment);
                next.next_segment += 1;
                let path = self.dir.join(&name);
                new_files.push(path.clone());
                segment::write(
                    &path,
                    ci as u16,
                    col.dim,
                    col.mem_first_row,
                    &col.mem,
                    &st.row_meta(ci, col.mem_first_row..col.rows()),
                )?;
                let (seg, _) = Segment::open(&path, ci as u16, col.dim)?;
                next.columns[ci].segments.push(SegmentRef {
                    file: name,
                    first_row: seg.first_row,
                    rows: seg.rows,
                });
                sealed.push((ci, seg));
            }
            let mut sealed_fingers = None;
            if st.fingers.mem_records() > 0 {
                let name = Manifest::finger_segment_name(next.next_segment);
                next.next_segment += 1;
                let path = self.dir.join(&name);
                new_files.push(path.clone());
                finger_segment::write(&path, st.fingers.mem_first, &st.fingers.mem)?;
                let (seg, _) = FingerSegment::open(&path)?;
                next.fingers.push(SegmentRef {
                    file: name,
                    first_row: seg.first_record,
                    rows: seg.records,
                });
                sealed_fingers = Some((seg, path));
            }
            let deleted: Vec<(u16, u64)> = st
                .columns
                .iter()
                .enumerate()
                .flat_map(|(ci, col)| {
                    col.state
                        .iter()
                        .enumerate()
                        .filter(|(_, &s)| s & DELETED != 0)
                        .map(move |(r, _)| (ci as u16, r as u64))
                })
                .chain(
                    st.fingers
                        .live
                        .iter()
                        .enumerate()
                        .filter(|(_, &l)| !l)
                        .map(|(r, _)| (FINGER_COLUMN, r as u64)),
                )
                .collect();
            drop(st);
            next.tombstones = None;
            if !deleted.is_empty() {
                let name = Manifest::del_name(next.generation);
                let path = self.dir.join(&name);
                new_files.push(path.clone());
                manifest::write_tombstones(&path, &deleted)?;
                next.tombstones = Some(name);
            }
            let wal_path = self.dir.join(&next.wal);
            new_files.push(wal_path.clone());
            let mut wal = WalWriter::create(&wal_path)?;
            if !w.journal_backlog.is_empty() {
                // Journal bytes no hook has taken yet (a store opened without one): keep them.
                let frames: Vec<u8> =
                    w.journal_backlog.iter().flat_map(|j| wal::encode_journal(j)).collect();
                wal.append(&frames)?;
            }
            if let Err(e) = next.write(&self.dir) {
                // Still the old manifest on disk (its new copy was not renamed into place, as
                // when the disk is full): the old files are intact and named, a clean failure.
                // Otherwise the rename may or may not have happened: the files on disk are
                // consistent either way, but this process no longer knows which WAL is current.
                // Stop writing; a reopen resolves it from the manifest.
                if !Manifest::read(&self.dir).is_ok_and(|m| m == old) {
                    w.poisoned = true;
                    self.set_fault(&GalleryError::Poisoned);
                    new_files.clear();
                }
                return Err(e);
            }
            w.wal = Some(wal);
            Ok((sealed, sealed_fingers))
        })();
        let (sealed, sealed_fingers) = match result {
            Ok(s) => s,
            Err(e) => {
                // The old manifest still names the old, intact files: just drop what was written.
                // The log keeps every record; the next try waits a little longer each time.
                // Files are written under a `.tmp` name first: give their space back too.
                for p in new_files {
                    let _ = std::fs::remove_file(p.with_extension("tmp"));
                    let _ = std::fs::remove_file(p);
                }
                let wait = w.checkpoint_retry.map_or(CHECKPOINT_RETRY, |(_, d)| d);
                w.checkpoint_retry =
                    Some((std::time::Instant::now() + wait, (wait * 2).min(CHECKPOINT_RETRY_MAX)));
                return Err(e.no_space_typed());
            }
        };
        w.checkpoint_retry = None;
        {
            let mut st = self.state.write();
            for (ci, seg) in sealed {
                let col = &mut st.columns[ci];
                col.mem_first_row = seg.first_row + seg.rows;
                col.mem = Vec::new();
                col.segments.push(seg);
            }
            if let Some((seg, path)) = sealed_fingers {
                let f = &mut st.fingers;
                f.mem_first = seg.first_record + seg.records;
                f.mem = Vec::new();
                f.segments.push((seg, path));
            }
        }
        w.manifest = next;
        w.journal_since_checkpoint = false;
        let new_named: HashSet<&str> = w.manifest.files().collect();
        for f in old.files().filter(|f| !new_named.contains(f)) {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        fsutil::sync_dir(&self.dir)
    }

    pub fn stats(&self) -> StoreStats {
        let wal_bytes = self.writer.lock().wal.as_ref().map_or(0, WalWriter::len);
        let st = self.state.read();
        let f = &st.fingers;
        StoreStats {
            fingers: FingerStats {
                subjects: f.live_count,
                fingers: f.live_fingers,
                records: f.records(),
                segments: f.segments.len(),
                unsealed_records: f.mem_records(),
            },
            subjects: st.subjects.len(),
            last_seq: st.last_seq,
            wal_bytes,
            wal_appends: self.appends.load(std::sync::atomic::Ordering::Relaxed),
            wal_writes: self.appended_writes.load(std::sync::atomic::Ordering::Relaxed),
            columns: st
                .columns
                .iter()
                .map(|c| ColumnStats {
                    model: c.model.clone(),
                    dim: c.dim,
                    rows: c.rows(),
                    live: c.live,
                    sealed_rows: c.mem_first_row,
                    segments: c.segments.len(),
                    unsealed_rows: c.mem_rows(),
                })
                .collect(),
        }
    }

    /// Estimated heap bytes of the store's in-memory metadata (row metadata + subject index).
    pub fn metadata_bytes(&self) -> u64 {
        self.state.read().metadata_bytes()
    }

    /// A read snapshot for searches: holds the read lock while alive.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }
}

/// Find a subject's template of one modality.
pub(crate) fn lookup(st: &State, subject: &SubjectId, modality: Modality) -> Result<(u16, u64)> {
    let slot =
        st.subjects.find(subject).ok_or_else(|| GalleryError::UnknownSubject(subject.clone()))?;
    st.templates_of(slot)
        .into_iter()
        .find(|t| t.0 == modality)
        .map(|(_, c, r)| (c, r))
        .ok_or_else(|| GalleryError::NoTemplate { subject: subject.clone(), modality })
}

/// What a [`Store::scan`] covered: every row below `rows` (all writes up to `last_seq`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScanSummary {
    pub last_seq: u64,
    /// Row ids `0..rows` were visited (deleted ones skipped).
    pub rows: u64,
    /// Live rows visited.
    pub live: usize,
}

/// A batch of live rows handed to [`Store::scan`]'s visitor.
#[derive(Debug)]
pub struct ScanBatch<'a> {
    st: &'a State,
    col: &'a Column,
    rows: Vec<u64>,
    first: u64,
    vectors: &'a [f16],
}

impl<'a> ScanBatch<'a> {
    /// Row ids of the live rows in this batch, ascending.
    pub fn rows(&self) -> &[u64] {
        &self.rows
    }

    pub fn vector(&self, row: u64) -> &'a [f16] {
        let d = self.col.dim;
        let i = (row - self.first) as usize * d;
        &self.vectors[i..i + d]
    }

    /// The subject a (live) row of this batch belongs to.
    pub fn subject(&self, row: u64) -> SubjectId {
        self.st.subjects.id(self.col.subject[row as usize])
    }

    /// The modality a row's template was captured from.
    pub fn modality(&self, row: u64) -> Modality {
        let code = crate::state::modality_code(self.col.state[row as usize]);
        Modality::from_code(code).expect("a valid modality code")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minutiae::testing::finger;

    fn opts() -> StoreOptions {
        StoreOptions::new(vec![ModelSpec { model: ModelId::new("m", "1").unwrap(), dim: 4 }])
    }

    fn face(s: &str) -> Enrollment {
        let t =
            Template::new(ModelId::new("m", "1").unwrap(), 4, vec![0.5, 0.5, 0.5, 0.5]).unwrap();
        Enrollment::new(SubjectId::new(s).unwrap(), vec![(Modality::Face, t)])
    }

    /// A store whose log was written before fingers joined the store (WAL version 1) opens with
    /// every record, and that log is sealed at once so that new frames go to a version 2 log.
    #[test]
    fn a_version_1_log_opens_and_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), opts()).unwrap();
            for id in ["A", "B", "C"] {
                s.enroll(&face(id)).unwrap();
            }
            s.delete(&SubjectId::new("A").unwrap()).unwrap();
        }
        let m = Manifest::read(dir.path()).unwrap();
        let path = dir.path().join(&m.wal);
        let v1 = wal::LogHeader { version: 1, ..wal::WAL_HEADER };
        let mut bytes = wal::encode_header(&v1);
        for r in wal::scan(&path).unwrap().records {
            let frame = r.encode();
            match r {
                // A version 1 enrollment has no finger part (the trailing count byte 0).
                WalRecord::Enroll { .. } => {
                    bytes.extend(wal::encode_frame(&frame[wal::FRAME_HEADER..frame.len() - 1]))
                }
                _ => bytes.extend(frame),
            }
        }
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(wal::version_of(&path).unwrap(), 1);

        let s = Store::open(dir.path(), opts()).unwrap();
        assert!(!s.contains(&SubjectId::new("A").unwrap()));
        assert!(
            s.contains(&SubjectId::new("B").unwrap()) && s.contains(&SubjectId::new("C").unwrap())
        );
        let m2 = Manifest::read(dir.path()).unwrap();
        assert_ne!(m2.wal, m.wal, "the version 1 log was sealed");
        assert_eq!(wal::version_of(&dir.path().join(&m2.wal)).unwrap(), wal::WAL_HEADER.version);
        let mut d = face("D");
        d.fingers = vec![finger(3, 30)];
        s.enroll(&d).unwrap();
        drop(s);
        let s = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.fingers(&SubjectId::new("D").unwrap()).unwrap(), vec![finger(3, 30)]);
    }

    /// The group's validation sees the group's own earlier writes.
    #[test]
    fn a_batch_sees_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), opts()).unwrap();
        s.enroll(&face("A")).unwrap();
        let a = SubjectId::new("A").unwrap();
        let r = s
            .write_batch(vec![
                (WriteOp::Delete(a.clone()), None),
                (WriteOp::Enroll(face("B")), None),
                (WriteOp::Enroll(face("B")), None),
                (WriteOp::Delete(SubjectId::new("Z").unwrap()), None),
            ])
            .unwrap();
        assert!(r[0].is_ok() && r[1].is_ok());
        assert!(matches!(r[2], Err(GalleryError::DuplicateInBatch(_))));
        assert!(matches!(r[3], Err(GalleryError::UnknownSubject(_))));
        assert!(!s.contains(&a));
        // Re-enrolling a subject deleted in the same group is allowed (not through a batch).
        let r = s.write(WriteOp::Enroll(face("A")), None);
        assert!(r.is_ok());
    }
}
