//! The durable store of fingerprint minutiae templates: each subject's fingers (1 to 10, one per
//! finger position) in one directory of its own (the service uses `<store dir>/fingers/`).
//!
//! Finger templates are variable-length minutiae sets, so they do not fit the face store's
//! fixed-dimension fp16 columns. The whole store lives in memory (a few KiB per subject) and on
//! disk in one CRC-framed log that reuses the write-ahead log's header and frame layers
//! (`wal.rs`): the same torn-tail and middle-damage rules, a different header magic and payload.
//!
//! Durability: a write is appended to the log and fsynced *before* it is applied in memory and
//! acknowledged; if the append or its fsync fails, nothing is applied. All fingers of a subject
//! travel in one record, so an enrollment is atomic. Readers take a read lock on the in-memory
//! state; writers serialise on the writer mutex (which owns the log) and take the write lock only
//! for the in-memory apply, so a reader never waits for an fsync.
//!
//! Compaction rewrites only the live enrollments into a new log — written to `fingers.log.tmp`,
//! fsynced, renamed over `fingers.log`, directory fsynced — so a crash leaves either the old log or
//! the new one. It runs on demand ([`FingerStore::compact`]) and after a write once the dead bytes
//! (deleted enrollments, delete records) exceed `max(live bytes, compact_min_dead_bytes)`.
//!
//! ## Files (in the store's directory)
//! ```text
//! LOCK             exclusive advisory lock of the owning process
//! fingers.log      the log
//! fingers.log.tmp  a compaction in progress (removed by the next writable open)
//! ```
//!
//! ## Format of `fingers.log` (little endian)
//! ```text
//! header : magic b"BMFNG\0\0\x01" (8) | format version u32 (=1) | reserved u32
//! frame* : FRAME_MAGIC u32 | payload length u32 | CRC32(payload) u32 | payload   (as in wal.rs)
//! payload: kind u8 (1 enroll, 2 delete, 3 sequence mark) | seq u64 (> 0)
//!          enroll, delete: id length u8 | id bytes (a valid SubjectId)
//!          enroll only   : finger count u8 (1..=10), then per finger:
//!              position u8 (1..=10) | width u16 | height u16 | resolution_ppcm u16 |
//!              quality u8 | minutia count u8 | count × minutia
//!          minutia (6 bytes): x u16 with the kind in its two high bits (ISO 19794-2 style:
//!              0 other, 1 ridge ending, 2 bifurcation) | y u16 | angle u8 | quality u8
//! ```
//! Sequence numbers increase strictly through the log. A compacted log holds the live enrollments
//! in sequence order, followed by a sequence mark carrying the store's last sequence number when
//! that is higher (the last write was a delete), so sequence numbers never go back or repeat.
//! Decoding is bounds-checked and refuses anything a writer could not have produced (unknown kind,
//! kind bits 3, bad counts, duplicate or missing positions, a template failing
//! [`FingerTemplate::validate`], trailing bytes); such a frame counts as invalid.

use crate::error::{GalleryError, Result};
use crate::fsutil::{self, Reader};
use crate::wal::{self, LogHeader, WalWriter, FRAME_HEADER, HEADER_LEN};
use biomatch_core::finger::{FingerTemplate, Minutia, MinutiaKind, MAX_MINUTIAE};
use biomatch_core::{FingerPosition, Modality, SubjectId};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most fingers one subject may hold (one per position 1..=10).
pub const MAX_FINGERS: usize = 10;
/// Default floor of the automatic compaction trigger.
pub const DEFAULT_COMPACT_MIN_DEAD_BYTES: u64 = 4 << 20;

const LOCK_FILE: &str = "LOCK";
const LOG_FILE: &str = "fingers.log";
const TMP_FILE: &str = "fingers.log.tmp";
const HEADER: LogHeader =
    LogHeader { magic: b"BMFNG\0\0\x01", version: 1, what: "finger template log" };

const KIND_ENROLL: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_SEQ: u8 = 3;
const MINUTIA_BYTES: usize = 6;
const X_MASK: u16 = 0x3fff;

// The minutia count is stored in one byte, and x shares its u16 with the two kind bits.
const _: () = assert!(MAX_MINUTIAE <= u8::MAX as usize);
const _: () = assert!(biomatch_core::finger::MAX_IMAGE_SIDE <= X_MASK + 1);

/// How to open a finger store.
#[derive(Clone, Debug)]
pub struct FingerStoreOptions {
    /// Compact automatically after a write once the log's dead bytes exceed
    /// `max(live bytes, compact_min_dead_bytes)`.
    pub compact_min_dead_bytes: u64,
}

impl Default for FingerStoreOptions {
    fn default() -> Self {
        Self { compact_min_dead_bytes: DEFAULT_COMPACT_MIN_DEAD_BYTES }
    }
}

/// What opening the store found and repaired, for the operator.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FingerRecovery {
    /// Records (enrollments, deletes, sequence marks) replayed from the log.
    pub records_replayed: u64,
    /// Bytes of a torn, never-acknowledged tail that were not replayed (and, in a writable open,
    /// cut off).
    pub torn_bytes_discarded: u64,
    /// Files of an interrupted compaction that a writable open removed.
    pub leftover_files_removed: Vec<String>,
}

/// Counts for monitoring.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FingerStoreStats {
    pub subjects: usize,
    pub fingers: usize,
    pub last_seq: u64,
    /// Length of the log, header included.
    pub log_bytes: u64,
    /// Bytes of the log's frames that hold live enrollments.
    pub live_bytes: u64,
}

/// One log record.
#[derive(Clone, PartialEq)]
enum Record {
    Enroll {
        seq: u64,
        subject: SubjectId,
        fingers: Vec<FingerTemplate>,
    },
    Delete {
        seq: u64,
        subject: SubjectId,
    },
    /// Carries the last sequence number across a compaction that dropped the records up to it.
    Seq {
        seq: u64,
    },
}

impl std::fmt::Debug for Record {
    // Never prints minutiae.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Record::Enroll { seq, subject, fingers } => {
                write!(f, "Enroll(seq {seq}, {subject}, {} fingers)", fingers.len())
            }
            Record::Delete { seq, subject } => write!(f, "Delete(seq {seq}, {subject})"),
            Record::Seq { seq } => write!(f, "Seq({seq})"),
        }
    }
}

impl Record {
    fn seq(&self) -> u64 {
        match self {
            Record::Enroll { seq, .. } | Record::Delete { seq, .. } | Record::Seq { seq } => *seq,
        }
    }

    /// The payload (not yet framed).
    fn encode(&self) -> Vec<u8> {
        match self {
            Record::Enroll { seq, subject, fingers } => encode_enroll(*seq, subject, fingers),
            Record::Delete { seq, subject } => {
                let mut p = Vec::with_capacity(10 + subject.as_str().len());
                p.push(KIND_DELETE);
                p.extend_from_slice(&seq.to_le_bytes());
                push_subject(&mut p, subject);
                p
            }
            Record::Seq { seq } => {
                let mut p = Vec::with_capacity(9);
                p.push(KIND_SEQ);
                p.extend_from_slice(&seq.to_le_bytes());
                p
            }
        }
    }

    /// Parse a payload; `None` for anything a writer could not have produced.
    fn decode(payload: &[u8]) -> Option<Record> {
        let mut r = Reader::new(payload);
        let kind = r.u8()?;
        let seq = r.u64()?;
        if seq == 0 {
            return None;
        }
        let rec = match kind {
            KIND_ENROLL => {
                let subject = read_subject(&mut r)?;
                let n = r.u8()? as usize;
                if !(1..=MAX_FINGERS).contains(&n) {
                    return None;
                }
                let mut fingers = Vec::with_capacity(n);
                for _ in 0..n {
                    fingers.push(decode_finger(&mut r)?);
                }
                check_fingers(&fingers).ok()?;
                Record::Enroll { seq, subject, fingers }
            }
            KIND_DELETE => Record::Delete { seq, subject: read_subject(&mut r)? },
            KIND_SEQ => Record::Seq { seq },
            _ => return None,
        };
        r.is_empty().then_some(rec)
    }
}

fn push_subject(p: &mut Vec<u8>, subject: &SubjectId) {
    // SubjectId::MAX_LEN (64) fits the length byte.
    p.push(subject.as_str().len() as u8);
    p.extend_from_slice(subject.as_str().as_bytes());
}

fn read_subject(r: &mut Reader<'_>) -> Option<SubjectId> {
    let len = r.u8()? as usize;
    SubjectId::new(std::str::from_utf8(r.take(len)?).ok()?).ok()
}

/// Enrollment payload of already-checked fingers (see [`check_fingers`]).
fn encode_enroll(seq: u64, subject: &SubjectId, fingers: &[FingerTemplate]) -> Vec<u8> {
    let minutiae: usize = fingers.iter().map(|f| f.minutiae.len()).sum();
    let mut p = Vec::with_capacity(
        11 + subject.as_str().len() + fingers.len() * 9 + minutiae * MINUTIA_BYTES,
    );
    p.push(KIND_ENROLL);
    p.extend_from_slice(&seq.to_le_bytes());
    push_subject(&mut p, subject);
    p.push(fingers.len() as u8);
    for f in fingers {
        p.push(f.position.map_or(0, FingerPosition::code));
        p.extend_from_slice(&f.width.to_le_bytes());
        p.extend_from_slice(&f.height.to_le_bytes());
        p.extend_from_slice(&f.resolution_ppcm.to_le_bytes());
        p.push(f.quality);
        p.push(f.minutiae.len() as u8);
        for m in &f.minutiae {
            // Validated: x < width <= MAX_IMAGE_SIDE, so the two high bits are free.
            debug_assert!(m.x <= X_MASK);
            let kind = match m.kind {
                MinutiaKind::Other => 0u16,
                MinutiaKind::RidgeEnding => 1,
                MinutiaKind::Bifurcation => 2,
            };
            p.extend_from_slice(&((kind << 14) | (m.x & X_MASK)).to_le_bytes());
            p.extend_from_slice(&m.y.to_le_bytes());
            p.push(m.angle);
            p.push(m.quality);
        }
    }
    p
}

fn decode_finger(r: &mut Reader<'_>) -> Option<FingerTemplate> {
    let position = FingerPosition::new(r.u8()?).ok()?;
    let width = r.u16()?;
    let height = r.u16()?;
    let resolution_ppcm = r.u16()?;
    let quality = r.u8()?;
    let count = r.u8()? as usize;
    let bytes = r.take(count * MINUTIA_BYTES)?;
    let minutiae = bytes
        .chunks_exact(MINUTIA_BYTES)
        .map(|c| {
            let xk = u16::from_le_bytes([c[0], c[1]]);
            let kind = match xk >> 14 {
                0 => MinutiaKind::Other,
                1 => MinutiaKind::RidgeEnding,
                2 => MinutiaKind::Bifurcation,
                _ => return None,
            };
            let y = u16::from_le_bytes([c[2], c[3]]);
            Some(Minutia { x: xk & X_MASK, y, angle: c[4], kind, quality: c[5] })
        })
        .collect::<Option<Vec<_>>>()?;
    let t = FingerTemplate {
        width,
        height,
        resolution_ppcm,
        position: Some(position),
        quality,
        minutiae,
    };
    t.validate().ok()?;
    Some(t)
}

/// Check one subject's fingers: 1..=10 templates, each valid and with a position, positions
/// distinct (which also caps the count at 10).
fn check_fingers(fingers: &[FingerTemplate]) -> Result<()> {
    if fingers.is_empty() {
        return Err(GalleryError::EmptyEnrollment);
    }
    let mut seen = [false; MAX_FINGERS + 1];
    for (index, f) in fingers.iter().enumerate() {
        let Some(position) = f.position else {
            return Err(GalleryError::MissingFingerPosition { index });
        };
        f.validate().map_err(|source| GalleryError::InvalidFinger { index, source })?;
        let slot = &mut seen[position.code() as usize];
        if *slot {
            return Err(GalleryError::DuplicateModality(Modality::Finger(position)));
        }
        *slot = true;
    }
    Ok(())
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    fingers: Arc<[FingerTemplate]>,
    /// Bytes of the enrollment's frame in the log.
    frame_len: u64,
}

#[derive(Default)]
struct State {
    subjects: HashMap<SubjectId, Entry>,
    last_seq: u64,
    /// Sum of `frame_len` over `subjects`.
    live_bytes: u64,
}

impl State {
    /// Apply a record whose frame is `frame_len` bytes; `Err` says why it cannot follow the state
    /// (which, in replay, means the log is corrupt).
    fn apply(&mut self, rec: Record, frame_len: u64) -> std::result::Result<(), String> {
        let seq = rec.seq();
        if seq <= self.last_seq {
            return Err(format!("record seq {seq} does not follow {}", self.last_seq));
        }
        match rec {
            Record::Enroll { seq, subject, fingers } => {
                if self.subjects.contains_key(&subject) {
                    return Err(format!("enrollment of {subject}, who is already enrolled"));
                }
                self.live_bytes += frame_len;
                self.subjects.insert(subject, Entry { seq, fingers: fingers.into(), frame_len });
            }
            Record::Delete { subject, .. } => {
                let e = self
                    .subjects
                    .remove(&subject)
                    .ok_or_else(|| format!("delete of {subject}, who is not enrolled"))?;
                self.live_bytes -= e.frame_len;
            }
            Record::Seq { .. } => {}
        }
        self.last_seq = seq;
        Ok(())
    }
}

#[derive(Debug)]
struct Writer {
    /// `None` in a read-only store.
    log: Option<WalWriter>,
    /// Length of the log's valid prefix when it was opened (reported by a read-only store).
    opened_len: u64,
    poisoned: bool,
}

impl Writer {
    fn check_writable(&self) -> Result<()> {
        if self.log.is_none() {
            return Err(GalleryError::ReadOnly);
        }
        if self.poisoned {
            return Err(GalleryError::Poisoned);
        }
        Ok(())
    }
}

/// The durable finger template store. `Send + Sync`: share it behind an `Arc`.
pub struct FingerStore {
    dir: PathBuf,
    opts: FingerStoreOptions,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    recovery: FingerRecovery,
    /// Holds the exclusive advisory lock on `LOCK` for the store's lifetime (`None`: read-only).
    _lock: Option<File>,
}

impl std::fmt::Debug for FingerStore {
    // Counts only: never templates.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.read();
        f.debug_struct("FingerStore")
            .field("dir", &self.dir)
            .field("read_only", &self._lock.is_none())
            .field("subjects", &st.subjects.len())
            .field("last_seq", &st.last_seq)
            .field("recovery", &self.recovery)
            .finish()
    }
}

impl FingerStore {
    /// Open the store in `dir` (created if missing) with default options, taking the directory's
    /// exclusive lock: [`GalleryError::Locked`] if another process (or store) holds it.
    pub fn open(dir: &Path) -> Result<FingerStore> {
        Self::open_with(dir, FingerStoreOptions::default())
    }

    /// [`FingerStore::open`] with explicit options.
    pub fn open_with(dir: &Path, opts: FingerStoreOptions) -> Result<FingerStore> {
        std::fs::create_dir_all(dir).map_err(GalleryError::io(dir))?;
        // One process owns a store: a second writer would interleave frames.
        let Some(lock) = fsutil::try_lock_exclusive(&dir.join(LOCK_FILE))? else {
            return Err(GalleryError::Locked(dir.to_owned()));
        };
        let mut recovery = FingerRecovery::default();
        let tmp = dir.join(TMP_FILE);
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(GalleryError::io(&tmp))?;
            fsutil::sync_dir(dir)?;
            recovery.leftover_files_removed.push(TMP_FILE.to_owned());
            tracing::info!(file = %tmp.display(), "removed the file of an interrupted compaction");
        }
        let path = dir.join(LOG_FILE);
        if !path.exists() {
            write_log(dir, &[])?;
        }
        Self::load(dir, opts, Some(lock), recovery)
    }

    /// Open the store in `dir` for reading only: no lock, nothing created, repaired or removed;
    /// writes are refused with [`GalleryError::ReadOnly`]. For offline tools; the snapshot holds
    /// every write acknowledged before the open started, even while the service is writing.
    pub fn open_read_only(dir: &Path) -> Result<FingerStore> {
        if !dir.join(LOG_FILE).exists() {
            return Err(GalleryError::Config(format!(
                "{} is not a finger store (no {LOG_FILE})",
                dir.display()
            )));
        }
        Self::load(dir, FingerStoreOptions::default(), None, FingerRecovery::default())
    }

    fn load(
        dir: &Path,
        opts: FingerStoreOptions,
        lock: Option<File>,
        mut recovery: FingerRecovery,
    ) -> Result<FingerStore> {
        let path = dir.join(LOG_FILE);
        let scan = wal::scan_frames(&path, &HEADER, |p| Record::decode(p).map(|r| (r, p.len())))?;
        let mut state = State::default();
        for (rec, len) in scan.records {
            state
                .apply(rec, (FRAME_HEADER + len) as u64)
                .map_err(|why| GalleryError::corrupt(&path, why))?;
            recovery.records_replayed += 1;
        }
        recovery.torn_bytes_discarded = scan.discarded;
        if scan.discarded > 0 {
            tracing::warn!(
                file = %path.display(),
                bytes = scan.discarded,
                "discarded a torn, unacknowledged tail of the finger template log"
            );
        }
        // A writable open cuts the torn tail off before anything is appended.
        let log = match lock {
            Some(_) => Some(WalWriter::reopen(&path, scan.valid_len)?),
            None => None,
        };
        Ok(FingerStore {
            dir: dir.to_owned(),
            opts,
            state: RwLock::new(state),
            writer: Mutex::new(Writer { log, opened_len: scan.valid_len, poisoned: false }),
            recovery,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening the store found and repaired.
    pub fn recovery(&self) -> &FingerRecovery {
        &self.recovery
    }

    /// Enroll all `fingers` of `subject` in one durable record. Returns the record's sequence
    /// number once it is fsynced. The fingers are kept in the given order.
    pub fn enroll(&self, subject: &SubjectId, fingers: &[FingerTemplate]) -> Result<u64> {
        check_fingers(fingers)?;
        let mut w = self.writer.lock();
        w.check_writable()?;
        let seq = {
            let st = self.state.read();
            if st.subjects.contains_key(subject) {
                return Err(GalleryError::AlreadyEnrolled(subject.clone()));
            }
            st.last_seq + 1
        };
        self.commit(
            &mut w,
            Record::Enroll { seq, subject: subject.clone(), fingers: fingers.to_vec() },
        )
    }

    /// Delete all fingers of `subject`. Returns the delete's sequence number once it is fsynced.
    pub fn delete(&self, subject: &SubjectId) -> Result<u64> {
        let mut w = self.writer.lock();
        w.check_writable()?;
        let seq = {
            let st = self.state.read();
            if !st.subjects.contains_key(subject) {
                return Err(GalleryError::UnknownSubject(subject.clone()));
            }
            st.last_seq + 1
        };
        self.commit(&mut w, Record::Delete { seq, subject: subject.clone() })
    }

    /// Log `rec` durably, then apply it. Called with the writer lock held, `rec` validated against
    /// the current state.
    fn commit(&self, w: &mut Writer, rec: Record) -> Result<u64> {
        w.check_writable()?;
        let Some(log) = w.log.as_mut() else {
            return Err(GalleryError::ReadOnly);
        };
        let frame = wal::encode_frame(&rec.encode());
        if let Err(e) = log.append(&frame) {
            if matches!(e, GalleryError::Poisoned) {
                w.poisoned = true;
            }
            return Err(e);
        }
        let seq = rec.seq();
        self.state
            .write()
            .apply(rec, frame.len() as u64)
            .expect("a record validated under the writer lock applies");
        let (log_len, live) = (log.len(), self.state.read().live_bytes);
        let dead = log_len.saturating_sub(HEADER_LEN + live);
        if dead > live.max(self.opts.compact_min_dead_bytes) {
            // The write is durable whatever happens here; a failed compaction is retried later.
            if let Err(e) = self.compact_locked(w) {
                tracing::error!(error = %e, "finger log compaction failed; the log keeps the data");
            }
        }
        Ok(seq)
    }

    /// The fingers of `subject`, in the order they were enrolled.
    pub fn get(&self, subject: &SubjectId) -> Option<Arc<[FingerTemplate]>> {
        self.state.read().subjects.get(subject).map(|e| e.fingers.clone())
    }

    /// The sequence number of the subject's enrollment.
    pub fn seq_of(&self, subject: &SubjectId) -> Option<u64> {
        self.state.read().subjects.get(subject).map(|e| e.seq)
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

    /// Every enrolled subject with its fingers, in enrollment (sequence) order, under one
    /// consistent view: for building search structures. Cheap: the templates are shared.
    pub fn snapshot(&self) -> Vec<(SubjectId, Arc<[FingerTemplate]>)> {
        let st = self.state.read();
        let mut all: Vec<(u64, SubjectId, Arc<[FingerTemplate]>)> =
            st.subjects.iter().map(|(s, e)| (e.seq, s.clone(), e.fingers.clone())).collect();
        drop(st);
        all.sort_unstable_by_key(|(seq, ..)| *seq);
        all.into_iter().map(|(_, s, f)| (s, f)).collect()
    }

    /// Sequence number of the last acknowledged write (0 for a store never written).
    pub fn last_seq(&self) -> u64 {
        self.state.read().last_seq
    }

    pub fn stats(&self) -> FingerStoreStats {
        let w = self.writer.lock();
        let log_bytes = w.log.as_ref().map_or(w.opened_len, WalWriter::len);
        let st = self.state.read();
        FingerStoreStats {
            subjects: st.subjects.len(),
            fingers: st.subjects.values().map(|e| e.fingers.len()).sum(),
            last_seq: st.last_seq,
            log_bytes,
            live_bytes: st.live_bytes,
        }
    }

    /// Rewrite the log with only the live enrollments, atomically (normally automatic).
    pub fn compact(&self) -> Result<()> {
        let mut w = self.writer.lock();
        w.check_writable()?;
        self.compact_locked(&mut w)
    }

    fn compact_locked(&self, w: &mut Writer) -> Result<()> {
        // The writer lock is held: the state cannot change under us, and readers go on.
        let (frames, live_bytes) = {
            let st = self.state.read();
            let mut live: Vec<(&SubjectId, &Entry)> = st.subjects.iter().collect();
            live.sort_unstable_by_key(|(_, e)| e.seq);
            let mut frames = Vec::with_capacity(st.live_bytes as usize + 32);
            for (subject, e) in &live {
                let frame = wal::encode_frame(&encode_enroll(e.seq, subject, &e.fingers));
                debug_assert_eq!(frame.len() as u64, e.frame_len);
                frames.extend_from_slice(&frame);
            }
            if live.last().is_none_or(|(_, e)| e.seq < st.last_seq) && st.last_seq > 0 {
                frames.extend(wal::encode_frame(&Record::Seq { seq: st.last_seq }.encode()));
            }
            (frames, st.live_bytes)
        };
        let path = self.dir.join(LOG_FILE);
        // Before the rename the old log is intact and current: a failure just leaves it in use.
        // After it the old writer's file is unlinked, so from here on a failure poisons the store
        // (a reopen finds whichever log the directory names, both complete).
        write_log(&self.dir, &frames).inspect_err(|e| {
            if matches!(e, GalleryError::Poisoned) {
                w.poisoned = true;
            }
        })?;
        let new_len = HEADER_LEN + frames.len() as u64;
        match WalWriter::reopen(&path, new_len) {
            Ok(log) => w.log = Some(log),
            Err(e) => {
                w.poisoned = true;
                return Err(e);
            }
        }
        tracing::info!(log_bytes = new_len, live_bytes, "compacted the finger template log");
        Ok(())
    }
}

/// Write a complete log (header + `frames`) to the temporary file, fsync it, rename it over the
/// log and fsync the directory. `Err(Poisoned)` when the rename happened but could not be made
/// durable; any other error leaves the previous log in place.
fn write_log(dir: &Path, frames: &[u8]) -> Result<()> {
    let tmp = dir.join(TMP_FILE);
    let path = dir.join(LOG_FILE);
    let written = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(GalleryError::io(&tmp))?;
        let mut bytes = wal::encode_header(&HEADER);
        bytes.extend_from_slice(frames);
        f.write_all(&bytes).map_err(GalleryError::io(&tmp))?;
        f.sync_all().map_err(GalleryError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(GalleryError::io(&path))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsutil::sync_dir(dir).map_err(|e| {
        tracing::error!(error = %e, "could not fsync the directory after replacing the finger log");
        GalleryError::Poisoned
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(p: u8) -> Option<FingerPosition> {
        Some(FingerPosition::new(p).unwrap())
    }

    fn finger(p: u8, n: usize) -> FingerTemplate {
        let minutiae = (0..n)
            .map(|i| Minutia {
                x: (i * 7 % 400) as u16,
                y: (i * 13 % 500) as u16,
                angle: (i * 31) as u8,
                kind: [MinutiaKind::Other, MinutiaKind::RidgeEnding, MinutiaKind::Bifurcation]
                    [i % 3],
                quality: (i % 101) as u8,
            })
            .collect();
        FingerTemplate::new(400, 500, 197, pos(p), 60, minutiae).unwrap()
    }

    fn sid(s: &str) -> SubjectId {
        SubjectId::new(s).unwrap()
    }

    fn enroll_rec() -> Record {
        Record::Enroll { seq: 7, subject: sid("A-1"), fingers: vec![finger(1, 30), finger(6, 0)] }
    }

    #[test]
    fn records_round_trip() {
        for rec in [
            enroll_rec(),
            Record::Enroll { seq: 1, subject: sid("x"), fingers: vec![finger(10, 255)] },
            Record::Delete { seq: u64::MAX, subject: sid("A-1") },
            Record::Seq { seq: 42 },
        ] {
            let p = rec.encode();
            assert_eq!(Record::decode(&p), Some(rec.clone()), "{rec:?}");
        }
        // 11 header bytes + id + 2 × 9 finger bytes + 30 × 6 minutia bytes.
        assert_eq!(enroll_rec().encode().len(), 1 + 8 + 1 + 3 + 1 + 2 * 9 + 30 * 6);
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let p = enroll_rec().encode();
        for n in 0..p.len() {
            assert_eq!(Record::decode(&p[..n]), None, "prefix of {n} bytes");
        }
        let mut longer = p.clone();
        longer.push(0);
        assert_eq!(Record::decode(&longer), None);
    }

    #[test]
    fn nonsense_fields_are_refused() {
        let p = enroll_rec().encode();
        let id_end = 1 + 8 + 1 + 3;
        let first_finger = id_end + 1;
        let first_minutia = first_finger + 9;
        let patch = |at: usize, v: &[u8]| {
            let mut q = p.clone();
            q[at..at + v.len()].copy_from_slice(v);
            Record::decode(&q)
        };
        assert_eq!(patch(0, &[9]), None, "unknown kind");
        assert_eq!(patch(1, &0u64.to_le_bytes()), None, "seq 0");
        assert_eq!(patch(10, b" "), None, "subject id not printable");
        assert_eq!(patch(id_end, &[0]), None, "no fingers");
        assert_eq!(patch(id_end, &[11]), None, "more than 10 fingers");
        assert_eq!(patch(first_finger, &[0]), None, "position 0");
        assert_eq!(patch(first_finger, &[11]), None, "position 11");
        assert_eq!(patch(first_finger, &[6]), None, "duplicate position");
        assert_eq!(patch(first_finger + 1, &0u16.to_le_bytes()), None, "zero width");
        assert_eq!(patch(first_finger + 5, &10u16.to_le_bytes()), None, "resolution 10");
        assert_eq!(patch(first_finger + 7, &[101]), None, "finger quality 101");
        assert_eq!(patch(first_finger + 8, &[31]), None, "minutia count too high");
        assert_eq!(patch(first_minutia + 1, &[0xc0]), None, "minutia kind 3");
        assert_eq!(patch(first_minutia, &400u16.to_le_bytes()), None, "x outside the image");
        assert_eq!(patch(first_minutia + 2, &500u16.to_le_bytes()), None, "y outside");
        assert_eq!(patch(first_minutia + 5, &[200]), None, "minutia quality 200");
        // Changing a field to another valid value still decodes (the CRC guards integrity).
        assert!(patch(first_minutia + 4, &[3]).is_some());
    }

    #[test]
    fn check_fingers_reports_the_rule_broken() {
        assert!(matches!(check_fingers(&[]), Err(GalleryError::EmptyEnrollment)));
        let mut no_pos = finger(2, 3);
        no_pos.position = None;
        assert!(matches!(
            check_fingers(&[finger(1, 3), no_pos]),
            Err(GalleryError::MissingFingerPosition { index: 1 })
        ));
        let mut bad = finger(3, 3);
        bad.minutiae[2].x = 400;
        assert!(matches!(
            check_fingers(&[finger(1, 3), bad]),
            Err(GalleryError::InvalidFinger { index: 1, .. })
        ));
        let dup = check_fingers(&[finger(4, 3), finger(5, 1), finger(4, 2)]).unwrap_err();
        assert!(
            matches!(dup, GalleryError::DuplicateModality(Modality::Finger(p)) if p.code() == 4),
            "{dup}"
        );
        let all: Vec<_> = (1..=10).map(|p| finger(p, 5)).collect();
        check_fingers(&all).unwrap();
    }

    #[test]
    fn replay_refuses_records_that_cannot_follow() {
        let mut st = State::default();
        st.apply(enroll_rec(), 100).unwrap();
        assert_eq!(st.live_bytes, 100);
        assert!(st.apply(Record::Seq { seq: 7 }, 21).is_err(), "seq must increase");
        assert!(st.apply(Record::Delete { seq: 8, subject: sid("nobody") }, 20).is_err());
        let again = Record::Enroll { seq: 9, subject: sid("A-1"), fingers: vec![finger(2, 1)] };
        assert!(st.apply(again, 50).is_err(), "enroll of an enrolled subject");
        st.apply(Record::Delete { seq: 10, subject: sid("A-1") }, 20).unwrap();
        assert_eq!((st.live_bytes, st.last_seq, st.subjects.len()), (0, 10, 0));
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_records(at in 0usize..1000, v in any::<u8>(), cut in 0usize..1000) {
            let mut p = enroll_rec().encode();
            let at = at % p.len();
            p[at] = v;
            p.truncate(p.len() - cut % p.len());
            if let Some(rec) = Record::decode(&p) {
                // Whatever decodes re-encodes to the same bytes: no two encodings of one record.
                prop_assert_eq!(rec.encode(), p);
            }
        }
    }
}
