//! Write-ahead log: every enrollment and delete is appended here and fsynced before it is
//! acknowledged.
//!
//! ## Format (`wal-<generation>.log`, little endian)
//! ```text
//! header : magic b"BMWAL\0\0\x01" (8) | format version u32 (=1) | reserved u32
//! frame* : FRAME_MAGIC u32 | payload length u32 | CRC32(payload) u32 | payload
//! payload: kind u8 (1 enroll, 2 delete, 3 attach fingers) | seq u64 | id length u8 | id bytes
//!          enroll only: template count u8, then per template:
//!          modality u8 (0 face, 1..=10 finger) | column u16 | dim u32 | dim × fp16 bits u16
//!          enroll (version 2): then the subject's minutiae fingers: a count u8 of 0 (none), or
//!          the fingers as `minutiae.rs` encodes them (count 1..=10 first)
//!          attach (version 2): the fingers as `minutiae.rs` encodes them
//! journal (version 3): kind u8 (= 4) | journal bytes (the rest of the payload, opaque)
//! ```
//! A *journal* frame carries the audit records of the writes logged with it (see
//! `store.rs`: the commit hook's journal bytes): written in the same append and made durable by
//! the same fsync as the records, so an audited write costs one fsync. It changes no state.
//! One enrollment is one record: all of a subject's templates and fingers, one sequence number,
//! one fsync. Version 1 logs (written before fingers joined the store: no finger part) are still
//! read, and so are version 2 logs (no journal frames); a writable open seals an older log at
//! once, so new frames always go to a log of the current version (3).
//! The *attach* record is written only by the conversion of a version 1 store with a separate
//! finger log (`legacy.rs`): it adds fingers to a subject enrolled without them, in one record.
//! A crash can leave a torn frame at the tail: replay stops at the first invalid frame, and if no
//! valid frame follows it the tail is cut off (it was never acknowledged, because acknowledgement
//! waits for fsync). A valid frame *after* an invalid one means the middle of the log is damaged:
//! the store then refuses to open instead of silently dropping acknowledged records.
//!
//! The header and frame layers (everything but the payload) are shared with the finger store's
//! log (`finger_store.rs`): [`LogHeader`], [`encode_header`], [`encode_frame`], [`scan_frames`]
//! and [`WalWriter`] give every frame log the same torn-tail and middle-damage rules, each log
//! with its own header magic and payload codec.

use crate::error::{GalleryError, Result};
use crate::fsutil::Reader;
use crate::minutiae;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{Modality, SubjectId};
use half::f16;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BMWAL\0\0\x01";
const VERSION: u32 = 3;
/// Length of every frame log's header: magic (8) | format version u32 | reserved u32.
pub(crate) const HEADER_LEN: u64 = 16;
const FRAME_MAGIC: u32 = 0x4C57_4D42; // "BMWL"
/// Length of a frame's header: FRAME_MAGIC u32 | payload length u32 | CRC32(payload) u32.
pub(crate) const FRAME_HEADER: usize = 12;
/// No single record comes near this; a larger length field is damage.
const MAX_PAYLOAD: usize = 16 << 20;

const KIND_ENROLL: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_ATTACH: u8 = 3;
const KIND_JOURNAL: u8 = 4;

/// Identity of one kind of frame log, written in (and checked against) its 16-byte header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogHeader {
    pub magic: &'static [u8; 8],
    /// The version new logs are written with.
    pub version: u32,
    /// The oldest version still read.
    pub min_version: u32,
    /// What the log is, for error messages ("write-ahead log").
    pub what: &'static str,
}

/// The face store's write-ahead log.
pub(crate) const WAL_HEADER: LogHeader =
    LogHeader { magic: MAGIC, version: VERSION, min_version: 1, what: "write-ahead log" };

/// The 16-byte header a frame log starts with: magic | version u32 | reserved u32 (= 0).
pub(crate) fn encode_header(header: &LogHeader) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN as usize);
    bytes.extend_from_slice(header.magic);
    bytes.extend_from_slice(&header.version.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes
}

/// Wrap a payload in a frame: FRAME_MAGIC | length | CRC32(payload) | payload.
pub(crate) fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
    frame.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// One template of an enrollment record, already in the stored representation.
#[derive(Clone, PartialEq)]
pub(crate) struct WalTemplate {
    pub modality: Modality,
    pub column: u16,
    pub vector: Vec<f16>,
}

#[derive(Clone, PartialEq)]
pub(crate) enum WalRecord {
    Enroll {
        seq: u64,
        subject: SubjectId,
        templates: Vec<WalTemplate>,
        /// Minutiae fingers (checked by `minutiae::check_fingers`); empty for none.
        fingers: Vec<FingerTemplate>,
    },
    Delete {
        seq: u64,
        subject: SubjectId,
    },
    /// Migration only: fingers of a subject enrolled without any (see the module docs).
    Attach {
        seq: u64,
        subject: SubjectId,
        fingers: Vec<FingerTemplate>,
    },
}

impl std::fmt::Debug for WalRecord {
    // Never prints vectors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalRecord::Enroll { seq, subject, templates, fingers } => write!(
                f,
                "Enroll(seq {seq}, {subject}, {} templates, {} fingers)",
                templates.len(),
                fingers.len()
            ),
            WalRecord::Delete { seq, subject } => write!(f, "Delete(seq {seq}, {subject})"),
            WalRecord::Attach { seq, subject, fingers } => {
                write!(f, "Attach(seq {seq}, {subject}, {} fingers)", fingers.len())
            }
        }
    }
}

impl WalRecord {
    pub fn seq(&self) -> u64 {
        match self {
            WalRecord::Enroll { seq, .. }
            | WalRecord::Delete { seq, .. }
            | WalRecord::Attach { seq, .. } => *seq,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let (kind, seq, subject) = match self {
            WalRecord::Enroll { seq, subject, .. } => (KIND_ENROLL, *seq, subject),
            WalRecord::Delete { seq, subject } => (KIND_DELETE, *seq, subject),
            WalRecord::Attach { seq, subject, .. } => (KIND_ATTACH, *seq, subject),
        };
        p.push(kind);
        p.extend_from_slice(&seq.to_le_bytes());
        p.push(subject.as_str().len() as u8);
        p.extend_from_slice(subject.as_str().as_bytes());
        match self {
            WalRecord::Enroll { templates, fingers, .. } => {
                p.push(templates.len() as u8);
                for t in templates {
                    p.push(t.modality.code());
                    p.extend_from_slice(&t.column.to_le_bytes());
                    p.extend_from_slice(&(t.vector.len() as u32).to_le_bytes());
                    p.extend_from_slice(bytemuck::cast_slice(&t.vector));
                }
                if fingers.is_empty() {
                    p.push(0);
                } else {
                    minutiae::encode(&mut p, fingers);
                }
            }
            WalRecord::Attach { fingers, .. } => minutiae::encode(&mut p, fingers),
            WalRecord::Delete { .. } => {}
        }
        encode_frame(&p)
    }

    /// Parse a payload of a log of `version`; `None` for anything a writer could not have made.
    fn decode(version: u32, payload: &[u8]) -> Option<WalRecord> {
        let mut r = Reader::new(payload);
        let kind = r.u8()?;
        let seq = r.u64()?;
        let id_len = r.u8()? as usize;
        let subject = SubjectId::new(std::str::from_utf8(r.take(id_len)?).ok()?).ok()?;
        let rec = match kind {
            KIND_ENROLL => {
                let n = r.u8()? as usize;
                let mut templates = Vec::with_capacity(n);
                for _ in 0..n {
                    let modality = Modality::from_code(r.u8()?).ok()?;
                    let column = r.u16()?;
                    let dim = r.u32()? as usize;
                    let bytes = r.take(dim.checked_mul(2)?)?;
                    let vector = bytes
                        .chunks_exact(2)
                        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                        .collect();
                    templates.push(WalTemplate { modality, column, vector });
                }
                let fingers = match version {
                    1 => Vec::new(),
                    _ if r.peek_u8()? == 0 => {
                        r.u8()?;
                        Vec::new()
                    }
                    _ => minutiae::decode(&mut r)?,
                };
                if templates.is_empty() && fingers.is_empty() {
                    return None;
                }
                WalRecord::Enroll { seq, subject, templates, fingers }
            }
            KIND_DELETE => WalRecord::Delete { seq, subject },
            KIND_ATTACH if version >= 2 => {
                WalRecord::Attach { seq, subject, fingers: minutiae::decode(&mut r)? }
            }
            _ => return None,
        };
        r.is_empty().then_some(rec)
    }
}

/// The CRC-checked payload of the frame at `pos`, if a whole, intact frame starts there.
fn frame_payload(bytes: &[u8], pos: usize) -> Option<&[u8]> {
    let mut r = Reader::new(bytes.get(pos..)?);
    if r.u32()? != FRAME_MAGIC {
        return None;
    }
    let len = r.u32()? as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let crc = r.u32()?;
    let payload = r.take(len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Try to parse one frame at `pos`; returns the decoded record and the frame length.
fn parse_frame<T>(
    bytes: &[u8],
    pos: usize,
    decode: &impl Fn(&[u8]) -> Option<T>,
) -> Option<(T, usize)> {
    let payload = frame_payload(bytes, pos)?;
    Some((decode(payload)?, FRAME_HEADER + payload.len()))
}

/// What replay found in a frame log.
#[derive(Debug)]
pub(crate) struct FrameScan<T> {
    pub records: Vec<T>,
    /// Length of the valid prefix (header + whole frames).
    pub valid_len: u64,
    /// Bytes of torn tail that were not replayed.
    pub discarded: u64,
}

/// One frame of a write-ahead log: a state change, or the journal bytes logged with some.
#[derive(Debug)]
enum WalFrame {
    Record(WalRecord),
    Journal(Vec<u8>),
}

/// The frame of `journal` bytes (see the module docs).
pub(crate) fn encode_journal(journal: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + journal.len());
    p.push(KIND_JOURNAL);
    p.extend_from_slice(journal);
    encode_frame(&p)
}

fn decode_frame(version: u32, payload: &[u8]) -> Option<WalFrame> {
    match payload.split_first() {
        Some((&KIND_JOURNAL, rest)) if version >= 3 => Some(WalFrame::Journal(rest.to_vec())),
        _ => WalRecord::decode(version, payload).map(WalFrame::Record),
    }
}

/// What replay found in a write-ahead log.
#[derive(Debug)]
pub(crate) struct WalScan {
    pub records: Vec<WalRecord>,
    /// The journal frames' bytes, in log order.
    pub journals: Vec<Vec<u8>>,
    /// Length of the valid prefix (header + whole frames).
    pub valid_len: u64,
    /// Bytes of torn tail that were not replayed.
    pub discarded: u64,
}

/// Read and validate a whole write-ahead log. Errors only on damage that is not a torn tail.
pub(crate) fn scan(path: &Path) -> Result<WalScan> {
    let s = scan_frames(path, &WAL_HEADER, decode_frame)?;
    let (mut records, mut journals) = (Vec::new(), Vec::new());
    for f in s.records {
        match f {
            WalFrame::Record(r) => records.push(r),
            WalFrame::Journal(j) => journals.push(j),
        }
    }
    Ok(WalScan { records, journals, valid_len: s.valid_len, discarded: s.discarded })
}

/// The format version in a write-ahead log's header (the file must exist and be one).
pub(crate) fn version_of(path: &Path) -> Result<u32> {
    let mut h = [0u8; HEADER_LEN as usize];
    File::open(path).and_then(|mut f| f.read_exact(&mut h)).map_err(GalleryError::io(path))?;
    Ok(u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")))
}

/// Read and validate a whole frame log with `header`, decoding each payload with `decode` (a frame
/// whose payload does not decode counts as invalid). Replay stops at the first invalid frame; if
/// no valid frame follows it, the rest is a torn tail (reported in `discarded`), otherwise the log
/// is damaged in the middle and this errors with [`GalleryError::Corrupt`].
pub(crate) fn scan_frames<T>(
    path: &Path,
    header: &LogHeader,
    decode: impl Fn(u32, &[u8]) -> Option<T>,
) -> Result<FrameScan<T>> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(GalleryError::io(path))?;
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != header.magic {
        return Err(GalleryError::corrupt(
            path,
            format!("not a biomatch {} (bad header)", header.what),
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(header.min_version..=header.version).contains(&version) {
        return Err(GalleryError::corrupt(
            path,
            format!("unsupported {} version {version}", header.what),
        ));
    }
    let decode = |p: &[u8]| decode(version, p);
    let mut pos = HEADER_LEN as usize;
    let mut records = Vec::new();
    while pos < bytes.len() {
        match parse_frame(&bytes, pos, &decode) {
            Some((rec, n)) => {
                records.push(rec);
                pos += n;
            }
            None => {
                // A torn tail has no valid frame after it; anything else is damage in the middle.
                if let Some(at) =
                    (pos + 1..bytes.len()).find(|&p| parse_frame(&bytes, p, &decode).is_some())
                {
                    return Err(GalleryError::corrupt(
                        path,
                        format!(
                            "invalid frame at byte {pos} followed by a valid frame at byte {at}: \
                             the log is damaged in the middle; refusing to drop acknowledged records"
                        ),
                    ));
                }
                break;
            }
        }
    }
    Ok(FrameScan { records, valid_len: pos as u64, discarded: (bytes.len() - pos) as u64 })
}

/// What the log writer needs of its file: a trait so that tests can inject I/O failures.
pub(crate) trait LogFile: Write + Seek + std::fmt::Debug {
    fn set_len(&self, len: u64) -> std::io::Result<()>;
    fn sync_data(&self) -> std::io::Result<()>;
}

impl LogFile for File {
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        File::sync_data(self)
    }
}

/// The open log that new records are appended to.
#[derive(Debug)]
pub(crate) struct WalWriter<F: LogFile = File> {
    file: F,
    path: PathBuf,
    /// End of the last durable frame.
    len: u64,
    /// A failed append may have left bytes past `len` that could not be cut off yet.
    dirty: bool,
}

impl WalWriter {
    /// Create a new, empty write-ahead log (fails if the file exists).
    pub fn create(path: &Path) -> Result<Self> {
        Self::create_with_header(path, &WAL_HEADER)
    }

    /// Create a new, empty frame log with `header`, fsynced (fails if the file exists).
    pub fn create_with_header(path: &Path, header: &LogHeader) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(GalleryError::io(path))?;
        file.write_all(&encode_header(header)).map_err(GalleryError::io(path))?;
        file.sync_all().map_err(GalleryError::io(path))?;
        Ok(Self::with_file(file, path, HEADER_LEN))
    }

    /// Reopen an existing log for appending after its valid prefix (cutting off a torn tail).
    pub fn reopen(path: &Path, valid_len: u64) -> Result<Self> {
        let mut file =
            OpenOptions::new().read(true).write(true).open(path).map_err(GalleryError::io(path))?;
        let on_disk = file.metadata().map_err(GalleryError::io(path))?.len();
        if on_disk != valid_len {
            file.set_len(valid_len).map_err(GalleryError::io(path))?;
            file.sync_all().map_err(GalleryError::io(path))?;
        }
        file.seek(SeekFrom::Start(valid_len)).map_err(GalleryError::io(path))?;
        Ok(Self::with_file(file, path, valid_len))
    }
}

impl<F: LogFile> WalWriter<F> {
    /// A writer over `file`, positioned at `len`, the end of its last durable frame.
    fn with_file(file: F, path: &Path, len: u64) -> Self {
        Self { file, path: path.to_owned(), len, dirty: false }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Append already-encoded frames and fsync.
    ///
    /// On failure the log is cut back to its previous length and that is fsynced, so a partial
    /// frame never precedes later acknowledged records, and nothing of the frames is stored:
    /// [`GalleryError::NoSpace`] (ENOSPC, EDQUOT) or [`GalleryError::WriteFailed`]. If the cut
    /// fails too, the frames may or may not be durable ([`GalleryError::InDoubt`]) and the log
    /// stays dirty: the next append first retries the cut, and fails while it cannot be made.
    pub fn append(&mut self, frames: &[u8]) -> Result<()> {
        self.repair()?;
        let res = self.file.write_all(frames).and_then(|()| self.file.sync_data());
        match res {
            Ok(()) => {
                self.len += frames.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                match self.cut_back() {
                    Ok(()) => Err(GalleryError::write(&self.path)(e)),
                    Err(undo) => {
                        tracing::error!(
                            file = %self.path.display(), error = %e, undo = %undo,
                            "write-ahead log append failed and could not be cut back"
                        );
                        Err(GalleryError::InDoubt { path: self.path.clone(), source: e })
                    }
                }
            }
        }
    }

    /// Cut off what a failed append left past the last durable frame, if anything (fsynced).
    /// `Ok` once the log is clean; the error of the cut otherwise (nothing can be appended
    /// until it succeeds).
    pub fn repair(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.cut_back().map_err(GalleryError::write(&self.path))
    }

    fn cut_back(&mut self) -> std::io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minutiae::testing::finger;
    use std::cell::{Cell, RefCell};
    use std::io::ErrorKind;

    fn rec(seq: u64) -> WalRecord {
        WalRecord::Enroll {
            seq,
            subject: SubjectId::new(format!("S{seq}")).unwrap(),
            templates: vec![WalTemplate {
                modality: Modality::Face,
                column: 0,
                vector: vec![f16::from_f32(0.5); 8],
            }],
            fingers: if seq.is_multiple_of(2) {
                vec![finger(2, 9), finger(7, 0)]
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let attach = WalRecord::Attach {
            seq: 9,
            subject: SubjectId::new("S9").unwrap(),
            fingers: vec![finger(1, 40)],
        };
        let fingers_only = WalRecord::Enroll {
            seq: 10,
            subject: SubjectId::new("S10").unwrap(),
            templates: Vec::new(),
            fingers: vec![finger(10, 3)],
        };
        for r in [rec(1), rec(2), attach, fingers_only] {
            let frame = r.encode();
            let payload = &frame[FRAME_HEADER..];
            assert_eq!(WalRecord::decode(VERSION, payload), Some(r.clone()));
            for n in 0..payload.len() {
                assert_eq!(WalRecord::decode(VERSION, &payload[..n]), None, "{r:?} cut at {n}");
            }
        }
        // A version 1 log has no finger part and no attach records.
        let v1 = rec(1).encode();
        let v1_payload = &v1[FRAME_HEADER..v1.len() - 1];
        assert_eq!(WalRecord::decode(1, v1_payload), Some(rec(1)));
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut w = WalWriter::create(&path).unwrap();
        let mut frames = rec(1).encode();
        frames
            .extend(WalRecord::Delete { seq: 2, subject: SubjectId::new("S1").unwrap() }.encode());
        w.append(&frames).unwrap();
        let full = w.len();
        // A torn third frame: only half of it reached the disk.
        let third = rec(3).encode();
        w.append(&third[..third.len() / 2]).unwrap();
        drop(w);
        let s = scan(&path).unwrap();
        assert_eq!(
            s.records,
            vec![rec(1), WalRecord::Delete { seq: 2, subject: SubjectId::new("S1").unwrap() }]
        );
        assert_eq!(s.valid_len, full);
        assert_eq!(s.discarded, (third.len() / 2) as u64);
        let w = WalWriter::reopen(&path, s.valid_len).unwrap();
        assert_eq!(w.len(), full);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
    }

    #[test]
    fn journal_frames_come_back_apart_from_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut w = WalWriter::create(&path).unwrap();
        let mut frames = encode_journal(b"{\"a\":1}\n");
        frames.extend(rec(1).encode());
        w.append(&frames).unwrap();
        w.append(&encode_journal(b"")).unwrap();
        drop(w);
        let s = scan(&path).unwrap();
        assert_eq!(s.records, vec![rec(1)]);
        assert_eq!(s.journals, vec![b"{\"a\":1}\n".to_vec(), Vec::new()]);
        // A version 2 log cannot hold journal frames: such a frame is not one a writer made.
        assert!(decode_frame(2, &encode_journal(b"x")[FRAME_HEADER..]).is_none());
    }

    #[test]
    fn damage_in_the_middle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut w = WalWriter::create(&path).unwrap();
        for s in 1..=3 {
            w.append(&rec(s).encode()).unwrap();
        }
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN as usize + 20] ^= 0xff; // inside the first payload
        std::fs::write(&path, &bytes).unwrap();
        let err = scan(&path).unwrap_err();
        assert!(matches!(err, GalleryError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn bad_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        std::fs::write(&path, b"not a log at all").unwrap();
        assert!(matches!(scan(&path), Err(GalleryError::Corrupt { .. })));
    }

    /// A log file in memory whose next operations fail as scripted; `durable` is what the last
    /// successful sync made durable.
    #[derive(Debug, Default)]
    struct Faulty {
        data: RefCell<Vec<u8>>,
        durable: RefCell<Vec<u8>>,
        pos: u64,
        /// The next writes store at most this many bytes in all, then fail with ENOSPC.
        room: Option<usize>,
        failing_syncs: Cell<u32>,
        failing_set_lens: Cell<u32>,
    }

    fn eio() -> std::io::Error {
        std::io::Error::other("injected EIO")
    }

    fn fail_next(c: &Cell<u32>) -> bool {
        let n = c.get();
        c.set(n.saturating_sub(1));
        n > 0
    }

    impl Write for Faulty {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = match self.room {
                Some(0) => return Err(ErrorKind::StorageFull.into()),
                Some(r) => {
                    let n = r.min(buf.len());
                    self.room = Some(r - n);
                    n
                }
                None => buf.len(),
            };
            let mut d = self.data.borrow_mut();
            let at = self.pos as usize;
            if d.len() < at + n {
                d.resize(at + n, 0);
            }
            d[at..at + n].copy_from_slice(&buf[..n]);
            self.pos += n as u64;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Faulty {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            let SeekFrom::Start(p) = to else { unreachable!("the writer seeks from the start") };
            self.pos = p;
            Ok(p)
        }
    }

    impl LogFile for Faulty {
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            if fail_next(&self.failing_set_lens) {
                return Err(eio());
            }
            self.data.borrow_mut().resize(len as usize, 0);
            Ok(())
        }

        fn sync_data(&self) -> std::io::Result<()> {
            if fail_next(&self.failing_syncs) {
                return Err(eio());
            }
            *self.durable.borrow_mut() = self.data.borrow().clone();
            Ok(())
        }
    }

    fn faulty_writer() -> WalWriter<Faulty> {
        let header = encode_header(&WAL_HEADER);
        let f = Faulty {
            data: RefCell::new(header.clone()),
            durable: RefCell::new(header),
            pos: HEADER_LEN,
            ..Faulty::default()
        };
        WalWriter::with_file(f, Path::new("wal-test.log"), HEADER_LEN)
    }

    /// The records a restart would replay from what the file made durable.
    fn replayed(w: &WalWriter<Faulty>) -> Vec<WalRecord> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        std::fs::write(&path, &*w.file.durable.borrow()).unwrap();
        let s = scan(&path).unwrap();
        assert_eq!(s.discarded, 0, "no torn bytes are left behind");
        s.records
    }

    #[test]
    fn a_full_disk_cuts_the_partial_frame_back_and_later_frames_follow_the_last_durable_one() {
        let mut w = faulty_writer();
        w.append(&rec(1).encode()).unwrap();
        let good = w.len();
        // ENOSPC after 10 bytes of the next frame.
        w.file.room = Some(10);
        let e = w.append(&rec(2).encode()).unwrap_err();
        assert!(matches!(e, GalleryError::NoSpace { .. }), "{e}");
        assert_eq!((w.len(), w.file.data.borrow().len() as u64), (good, good));
        assert!(!w.dirty);
        // Space is freed: the next record directly follows the last durable one.
        w.file.room = None;
        w.append(&rec(3).encode()).unwrap();
        assert_eq!(replayed(&w), vec![rec(1), rec(3)]);
    }

    #[test]
    fn a_failed_fsync_is_cut_back_and_reported_as_nothing_stored() {
        let mut w = faulty_writer();
        w.append(&rec(1).encode()).unwrap();
        w.file.failing_syncs.set(1);
        let e = w.append(&rec(2).encode()).unwrap_err();
        assert!(matches!(e, GalleryError::WriteFailed { .. }), "{e}");
        assert_eq!(replayed(&w), vec![rec(1)]);
        w.append(&rec(3).encode()).unwrap();
        assert_eq!(replayed(&w), vec![rec(1), rec(3)]);
    }

    #[test]
    fn a_cut_that_fails_leaves_the_write_in_doubt_and_blocks_appends_until_it_succeeds() {
        let mut w = faulty_writer();
        w.append(&rec(1).encode()).unwrap();
        // The fsync fails, then the cut back fails twice (its first try and one retry).
        w.file.failing_syncs.set(1);
        w.file.failing_set_lens.set(2);
        let e = w.append(&rec(2).encode()).unwrap_err();
        assert!(matches!(e, GalleryError::InDoubt { .. }), "{e}");
        assert!(w.dirty);
        // The next append retries the cut first; it fails, so nothing of rec 3 is written.
        let before = w.file.data.borrow().clone();
        let e = w.append(&rec(3).encode()).unwrap_err();
        assert!(matches!(e, GalleryError::WriteFailed { .. }), "{e}");
        assert_eq!(*w.file.data.borrow(), before);
        // Then the cut succeeds: the doubtful frame is gone, rec 4 follows rec 1.
        w.repair().unwrap();
        assert!(!w.dirty);
        w.append(&rec(4).encode()).unwrap();
        assert_eq!(replayed(&w), vec![rec(1), rec(4)]);
    }
}
