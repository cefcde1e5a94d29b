//! The durable template store: enroll, delete, get, scan, checkpoint.
//!
//! Durability: a write is appended to the WAL and fsynced *before* it is applied to the in-memory
//! state and acknowledged. Readers (searches) take a read lock on the state; writers serialise on
//! the writer mutex (which owns the WAL) and take the state's write lock only for the in-memory
//! apply, so a search never waits for an fsync, and every search that starts after a write was
//! acknowledged sees it.
//!
//! Checkpoint: when the WAL grows past `checkpoint_wal_bytes`, the rows it added are sealed into new
//! immutable segments, deletes into a new tombstone file, a fresh WAL is created and the manifest
//! is swapped atomically to name them. See `manifest.rs` for why every crash point is safe.

use crate::error::{GalleryError, Result};
use crate::fsutil;
use crate::manifest::{self, ColumnManifest, Manifest, SegmentRef, MANIFEST_FILE};
use crate::segment::{self, RowMeta, Segment};
use crate::state::{Column, State, SubjectEntry, DELETED};
use crate::wal::{self, WalRecord, WalTemplate, WalWriter};
use biomatch_core::{Modality, ModelId, SubjectId, Template};
use half::f16;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

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
}

impl StoreOptions {
    pub fn new(models: Vec<ModelSpec>) -> Self {
        Self { models, checkpoint_wal_bytes: 64 << 20 }
    }
}

/// One subject's templates to enroll.
#[derive(Clone, Debug)]
pub struct Enrollment {
    pub subject: SubjectId,
    pub templates: Vec<(Modality, Template)>,
}

/// Metadata of an enrolled subject (never biometric data).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SubjectInfo {
    pub subject_id: SubjectId,
    /// Sequence number of the enrollment.
    pub seq: u64,
    pub templates: Vec<TemplateInfo>,
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
    pub columns: Vec<ColumnStats>,
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
}

/// The embedded, crash-safe gallery store. `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    opts: StoreOptions,
    pub(crate) state: RwLock<State>,
    writer: Mutex<Writer>,
    recovery: Recovery,
    /// Holds the exclusive advisory lock on `LOCK` for the store's lifetime (`None`: read-only).
    _lock: Option<std::fs::File>,
}

const LOCK_FILE: &str = "LOCK";

fn is_store_file(name: &str) -> bool {
    (name.starts_with("seg-") || name.starts_with("wal-") || name.starts_with("del-"))
        || name.ends_with(".tmp")
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
            if let Some(n) = names
                .iter()
                .find(|n| n.starts_with("seg-") || n.starts_with("wal-") || n.starts_with("del-"))
            {
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
        for (ci, cm) in manifest.columns.iter().enumerate() {
            let mut col = Column::new(cm.model.clone(), cm.dim);
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
                col.meta.extend(meta);
                col.segments.push(seg);
            }
            col.mem_first_row = col.rows();
            columns.push(col);
        }
        if let Some(del) = &manifest.tombstones {
            let path = dir.join(del);
            for (c, row) in manifest::read_tombstones(&path)? {
                let col = columns.get_mut(c as usize).filter(|col| row < col.rows()).ok_or_else(
                    || GalleryError::corrupt(&path, "tombstone names a row that does not exist"),
                )?;
                col.delete_row(row);
            }
        }
        let mut state = State { columns, subjects: Default::default(), last_seq: 0 };
        state.index_loaded_rows();
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
        if scan.discarded > 0 {
            tracing::warn!(
                file = %wal_path.display(),
                bytes = scan.discarded,
                "discarded a torn, unacknowledged tail of the write-ahead log"
            );
        }
        if !writable {
            return Ok(Store {
                dir,
                opts,
                state: RwLock::new(state),
                writer: Mutex::new(Writer { wal: None, manifest, poisoned: false }),
                recovery,
                _lock: None,
            });
        }
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

        Ok(Store {
            dir,
            opts,
            state: RwLock::new(state),
            writer: Mutex::new(Writer { wal: Some(wal), manifest, poisoned: false }),
            recovery,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening the store repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Turn validated templates into a WAL record, or say why they cannot be enrolled.
    fn prepare(state: &State, seq: u64, e: &Enrollment) -> Result<WalRecord> {
        if e.templates.is_empty() {
            return Err(GalleryError::EmptyEnrollment);
        }
        if state.subjects.contains_key(&e.subject) {
            return Err(GalleryError::AlreadyEnrolled(e.subject.clone()));
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
        Ok(WalRecord::Enroll { seq, subject: e.subject.clone(), templates })
    }

    /// Log `records` durably, then apply them. Called with the writer lock held.
    fn commit(&self, w: &mut Writer, records: &[WalRecord]) -> Result<()> {
        if w.poisoned {
            return Err(GalleryError::Poisoned);
        }
        if records.is_empty() {
            return Ok(());
        }
        let frames: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
        let Some(wal) = w.wal.as_mut() else {
            return Err(GalleryError::ReadOnly);
        };
        if let Err(e) = wal.append(&frames) {
            if matches!(e, GalleryError::Poisoned) {
                w.poisoned = true;
            }
            return Err(e);
        }
        let mut st = self.state.write();
        for r in records {
            // Validated against this same state under the writer lock just before logging.
            st.apply(r).expect("a validated record applies");
        }
        drop(st);
        if w.wal.as_ref().is_some_and(|wal| wal.len() > self.opts.checkpoint_wal_bytes) {
            // The records are durable whatever happens here; a failed checkpoint is retried later.
            if let Err(e) = self.checkpoint_locked(w) {
                tracing::error!(error = %e, "checkpoint failed; the write-ahead log keeps the data");
            }
        }
        Ok(())
    }

    /// Enroll one subject. Returns the enrollment's sequence number once it is durable.
    pub fn enroll(&self, e: &Enrollment) -> Result<u64> {
        let mut w = self.writer.lock();
        let rec = {
            let st = self.state.read();
            Self::prepare(&st, st.last_seq + 1, e)?
        };
        let seq = rec.seq();
        self.commit(&mut w, std::slice::from_ref(&rec))?;
        Ok(seq)
    }

    /// Enroll many subjects with one fsync. Each item gets its own result (invalid items are
    /// refused without affecting the others); an I/O failure fails the whole batch (outer `Err`),
    /// and then nothing of it was applied.
    pub fn enroll_batch(&self, batch: &[Enrollment]) -> Result<Vec<Result<u64>>> {
        let mut w = self.writer.lock();
        let mut records = Vec::with_capacity(batch.len());
        let mut out = Vec::with_capacity(batch.len());
        {
            let st = self.state.read();
            let mut seq = st.last_seq;
            let mut in_batch = HashSet::new();
            for e in batch {
                let r = if !in_batch.insert(&e.subject) {
                    Err(GalleryError::DuplicateInBatch(e.subject.clone()))
                } else {
                    Self::prepare(&st, seq + 1, e)
                };
                match r {
                    Ok(rec) => {
                        seq += 1;
                        out.push(Ok(seq));
                        records.push(rec);
                    }
                    Err(e) => out.push(Err(e)),
                }
            }
        }
        self.commit(&mut w, &records)?;
        Ok(out)
    }

    /// Delete a subject (a tombstone, honoured by every search that starts after this returns).
    pub fn delete(&self, subject: &SubjectId) -> Result<u64> {
        let mut w = self.writer.lock();
        let seq = {
            let st = self.state.read();
            if !st.subjects.contains_key(subject) {
                return Err(GalleryError::UnknownSubject(subject.clone()));
            }
            st.last_seq + 1
        };
        self.commit(&mut w, &[WalRecord::Delete { seq, subject: subject.clone() }])?;
        Ok(seq)
    }

    /// Metadata of an enrolled subject.
    pub fn get(&self, subject: &SubjectId) -> Result<SubjectInfo> {
        let st = self.state.read();
        let e = st
            .subjects
            .get(subject)
            .ok_or_else(|| GalleryError::UnknownSubject(subject.clone()))?;
        Ok(SubjectInfo {
            subject_id: subject.clone(),
            seq: e.seq,
            templates: e
                .templates
                .iter()
                .map(|&(modality, c, _)| TemplateInfo {
                    modality,
                    model: st.columns[c as usize].model.clone(),
                })
                .collect(),
        })
    }

    /// The stored (fp16-rounded) template of a subject, as f32.
    pub fn template(&self, subject: &SubjectId, modality: Modality) -> Result<(ModelId, Vec<f32>)> {
        let st = self.state.read();
        let (c, row) = lookup(&st, subject, modality)?;
        let col = &st.columns[c as usize];
        Ok((col.model.clone(), crate::kernel::to_f32(col.vector(row))))
    }

    pub fn contains(&self, subject: &SubjectId) -> bool {
        self.state.read().subjects.contains_key(subject)
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
                    if col.state[row as usize] != DELETED {
                        rows.push(row);
                    }
                }
                f(ScanBatch { col, rows, first, vectors: vecs });
            }
        }
        Ok(ScanSummary { last_seq: st.last_seq, rows: col.rows(), live: col.live })
    }

    /// Seal the WAL into segments now (normally automatic).
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
        let old = w.manifest.clone();
        let mut next = old.clone();
        next.generation += 1;
        next.wal = Manifest::wal_name(next.generation);
        let mut new_files: Vec<PathBuf> = Vec::new();
        let result = (|| -> Result<Vec<(usize, Segment)>> {
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
                    &col.meta[col.mem_first_row as usize..],
                )?;
                let (seg, _) = Segment::open(&path, ci as u16, col.dim)?;
                next.columns[ci].segments.push(SegmentRef {
                    file: name,
                    first_row: seg.first_row,
                    rows: seg.rows,
                });
                sealed.push((ci, seg));
            }
            let deleted: Vec<(u16, u64)> = st
                .columns
                .iter()
                .enumerate()
                .flat_map(|(ci, col)| {
                    col.state
                        .iter()
                        .enumerate()
                        .filter(|(_, &s)| s == DELETED)
                        .map(move |(r, _)| (ci as u16, r as u64))
                })
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
            let wal = WalWriter::create(&wal_path)?;
            if let Err(e) = next.write(&self.dir) {
                // The rename may or may not have happened: the files on disk are consistent either
                // way, but this process no longer knows which WAL is current. Stop writing; a
                // reopen resolves it from the manifest.
                w.poisoned = true;
                new_files.clear();
                return Err(e);
            }
            w.wal = Some(wal);
            Ok(sealed)
        })();
        let sealed = match result {
            Ok(s) => s,
            Err(e) => {
                // The old manifest still names the old, intact files: just drop what was written.
                for p in new_files {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        {
            let mut st = self.state.write();
            for (ci, seg) in sealed {
                let col = &mut st.columns[ci];
                col.mem_first_row = seg.first_row + seg.rows;
                col.mem = Vec::new();
                col.segments.push(seg);
            }
        }
        w.manifest = next;
        let new_named: HashSet<&str> = w.manifest.files().collect();
        for f in old.files().filter(|f| !new_named.contains(f)) {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        fsutil::sync_dir(&self.dir)
    }

    pub fn stats(&self) -> StoreStats {
        let wal_bytes = self.writer.lock().wal.as_ref().map_or(0, WalWriter::len);
        let st = self.state.read();
        StoreStats {
            subjects: st.subjects.len(),
            last_seq: st.last_seq,
            wal_bytes,
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
    let e: &SubjectEntry =
        st.subjects.get(subject).ok_or_else(|| GalleryError::UnknownSubject(subject.clone()))?;
    e.templates
        .iter()
        .find(|t| t.0 == modality)
        .map(|&(_, c, r)| (c, r))
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

    pub fn meta(&self, row: u64) -> &'a RowMeta {
        &self.col.meta[row as usize]
    }
}
