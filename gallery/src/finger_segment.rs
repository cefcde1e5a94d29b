//! Immutable finger segment files: the minutiae fingers of the subjects enrolled in one
//! checkpoint interval, variable-length records addressed by a dense record id.
//!
//! ## Format (`fng-<id>.bmf`, little endian)
//! ```text
//! header (48 bytes): magic b"BMFSG\0\0\x01" (8) | format version u32 (=1) | reserved u32
//!                    | records u64 | first_record u64 | index_offset u64 | reserved u64
//! records          : back to back from byte 48, each:
//!                    seq u64 | id length u8 | id bytes | fingers (as `minutiae.rs` encodes them)
//! index            : (records + 1) × u64 at index_offset: the byte offset of each record in the
//!                    file, then the offset just past the last one (= index_offset)
//! footer           : CRC32 of every preceding byte, u32
//! ```
//! The file is memory-mapped and checked (CRC, header, index) at open; a record's fingers are
//! decoded from the map when they are asked for, so sealed fingers need no heap to be durable.
//! A segment is never modified after it is renamed into place; deletes of its records live in
//! the store's tombstone file (column [`FINGER_COLUMN`]).

use crate::error::{GalleryError, Result};
use crate::fsutil::{self, Reader};
use crate::minutiae;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::SubjectId;
use memmap2::Mmap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"BMFSG\0\0\x01";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;

/// The column number finger records use in the tombstone file (vector columns count from 0).
pub(crate) const FINGER_COLUMN: u16 = u16::MAX;

/// One subject's fingers as stored: who, when, what.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FingerRecord {
    pub seq: u64,
    pub subject: SubjectId,
    pub fingers: Vec<FingerTemplate>,
}

/// An open, verified, memory-mapped finger segment.
#[derive(Debug)]
pub(crate) struct FingerSegment {
    map: Mmap,
    pub records: u64,
    pub first_record: u64,
    index_offset: usize,
}

impl FingerSegment {
    /// Map and verify a segment; returns it with each record's (seq, subject).
    pub fn open(path: &Path) -> Result<(FingerSegment, Vec<(u64, SubjectId)>)> {
        let (map, body_len) = fsutil::map_verified(path, MAGIC, VERSION, "finger segment")?;
        let bad = |why: &str| GalleryError::corrupt(path, why.to_owned());
        let mut h = Reader::new(&map[12..body_len]);
        let (records, first_record, index_offset) = match (h.u32(), h.u64(), h.u64(), h.u64()) {
            (Some(_), Some(n), Some(first), Some(off)) => (n, first, off as usize),
            _ => return Err(bad("short header")),
        };
        let index_len = (records as usize)
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| bad("record count overflow"))?;
        if index_offset < HEADER_LEN || index_offset.checked_add(index_len) != Some(body_len) {
            return Err(bad("section offsets disagree with the file length"));
        }
        let seg = FingerSegment { map, records, first_record, index_offset };
        let mut meta = Vec::with_capacity(records as usize);
        let mut prev = HEADER_LEN;
        for i in 0..records as usize {
            let (start, end) = (seg.offset(i), seg.offset(i + 1));
            if start != prev || end <= start || end > index_offset {
                return Err(bad("record index is not increasing"));
            }
            prev = end;
            let mut r = Reader::new(&seg.map[start..end]);
            let head = (|| {
                let seq = r.u64()?;
                let n = r.u8()? as usize;
                let subject = SubjectId::new(std::str::from_utf8(r.take(n)?).ok()?).ok()?;
                Some((seq, subject))
            })();
            meta.push(head.ok_or_else(|| bad("record header is malformed"))?);
        }
        if prev != index_offset {
            return Err(bad("records do not fill the record section"));
        }
        Ok((seg, meta))
    }

    fn offset(&self, i: usize) -> usize {
        let at = self.index_offset + i * 8;
        u64::from_le_bytes(self.map[at..at + 8].try_into().expect("8 bytes")) as usize
    }

    /// The fingers of record `record` (a record id of this segment), decoded from the map.
    pub fn fingers(&self, record: u64, path_hint: &Path) -> Result<Vec<FingerTemplate>> {
        let i = (record - self.first_record) as usize;
        let mut r = Reader::new(&self.map[self.offset(i)..self.offset(i + 1)]);
        let fingers = (|| {
            r.u64()?;
            let n = r.u8()? as usize;
            r.take(n)?;
            let f = minutiae::decode(&mut r)?;
            r.is_empty().then_some(f)
        })();
        fingers.ok_or_else(|| {
            GalleryError::corrupt(path_hint, format!("finger record {record} does not decode"))
        })
    }
}

/// Write a finger segment atomically (temp name, fsync, rename, fsync directory).
pub(crate) fn write(path: &Path, first_record: u64, records: &[FingerRecord]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut data = Vec::with_capacity(records.len() * 600);
    let mut index = Vec::with_capacity((records.len() + 1) * 8);
    for rec in records {
        index.extend_from_slice(&((HEADER_LEN + data.len()) as u64).to_le_bytes());
        data.extend_from_slice(&rec.seq.to_le_bytes());
        data.push(rec.subject.as_str().len() as u8);
        data.extend_from_slice(rec.subject.as_str().as_bytes());
        minutiae::encode(&mut data, &rec.fingers);
    }
    let index_offset = (HEADER_LEN + data.len()) as u64;
    index.extend_from_slice(&index_offset.to_le_bytes());
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(records.len() as u64).to_le_bytes());
    header.extend_from_slice(&first_record.to_le_bytes());
    header.extend_from_slice(&index_offset.to_le_bytes());
    header.resize(HEADER_LEN, 0);
    let write_all = || -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut crc = crc32fast::Hasher::new();
        for part in [&header[..], &data[..], &index[..]] {
            crc.update(part);
            w.write_all(part)?;
        }
        w.write_all(&crc.finalize().to_le_bytes())?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    };
    write_all().map_err(GalleryError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(GalleryError::io(path))?;
    fsutil::sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minutiae::testing::finger;

    fn recs() -> Vec<FingerRecord> {
        (0..5)
            .map(|i| FingerRecord {
                seq: 10 + i,
                subject: SubjectId::new(format!("S-{i}")).unwrap(),
                fingers: (1..=(i as u8 % 3 + 1)).map(|p| finger(p, 20 + i as usize)).collect(),
            })
            .collect()
    }

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fng-00000001.bmf");
        write(&path, 7, &recs()).unwrap();
        let (seg, meta) = FingerSegment::open(&path).unwrap();
        assert_eq!((seg.first_record, seg.records), (7, 5));
        for (i, r) in recs().into_iter().enumerate() {
            assert_eq!(meta[i], (r.seq, r.subject.clone()));
            assert_eq!(seg.fingers(7 + i as u64, &path).unwrap(), r.fingers);
        }
        drop(seg);
        let bytes = std::fs::read(&path).unwrap();
        for at in [0, 20, HEADER_LEN + 3, bytes.len() - 10, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            std::fs::write(&path, &b).unwrap();
            assert!(matches!(FingerSegment::open(&path), Err(GalleryError::Corrupt { .. })));
        }
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(FingerSegment::open(&path), Err(GalleryError::Corrupt { .. })));
    }

    #[test]
    fn empty_segment_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fng.bmf");
        write(&path, 0, &[]).unwrap();
        let (seg, meta) = FingerSegment::open(&path).unwrap();
        assert_eq!((seg.records, meta.len()), (0, 0));
    }
}
