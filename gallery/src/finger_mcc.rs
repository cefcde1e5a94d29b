//! The MCC templates of a store's fingers, built once by the index builder and kept next to the
//! finger-code index generation, so that a 1:N search reads the shortlisted fingers' cylinders
//! from a memory map instead of building them (about 0.3 ms per finger) or holding them in RAM.
//!
//! ## Format (`mcc.bin` in the generation directory, little endian)
//! ```text
//! header (48 bytes): magic b"BMMCC\0\0\x01" (8) | format version u32 (=1) | reserved u32
//!                    | MCC parameters hash u64 | records u64 | index_offset u64 | reserved u64
//! records          : from byte 48, one per finger record id 0..records (empty when the record
//!                    was deleted at build time): seq u64 | fingers u8 | per finger: position u8,
//!                    length u32, `MccTemplate::to_bytes` | CRC32 of the record's bytes u32
//! index            : (records + 1) × u64 at index_offset: each record's offset, then the offset
//!                    just past the last one (= index_offset)
//! footer           : CRC32 of the header and the index, u32
//! ```
//! At open only the header and index are read and checked (the records of a large gallery are
//! gigabytes: reading them all would make start-up proportional to the gallery); each record's
//! own CRC is checked when it is read, and a record that fails (or was built with other MCC
//! parameters, or for another enrollment of the record id) is not used: the caller builds the
//! templates from the store's minutiae instead.

use crate::error::{GalleryError, Result};
use crate::fsutil::Reader;
use crate::store::Store;
use biomatch_core::FingerPosition;
use biomatch_fingerprint::mcc::{MccParams, MccTemplate};
use memmap2::Mmap;
use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"BMMCC\0\0\x01";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
/// The file name inside a generation directory.
pub const MCC_FILE: &str = "mcc.bin";
/// Records decoded and built per step of a build (the store's read lock is held only while a
/// step's minutiae are copied out).
const BUILD_CHUNK: u64 = 8192;

/// A stable hash of MCC parameters: templates are only reused with the parameters they were
/// built with.
pub fn params_hash(p: &MccParams) -> u64 {
    let text = format!("{p:?}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Build the file for every finger record of `store` at `path` (fsynced). Returns the records
/// written and the file's size.
/// `stop` is asked between chunks; when it says so the build ends with
/// [`GalleryError::Cancelled`] (the caller removes the file).
pub fn write(
    store: &Store,
    path: &Path,
    params: &MccParams,
    stop: &dyn Fn() -> bool,
) -> Result<(u64, u64)> {
    let seqs = store.finger_record_seqs();
    let records = seqs.len() as u64;
    let file = std::fs::File::create(path).map_err(GalleryError::io(path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut head = Vec::with_capacity(HEADER_LEN);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&params_hash(params).to_le_bytes());
    head.extend_from_slice(&records.to_le_bytes());
    // The index offset is patched in below.
    head.extend_from_slice(&0u64.to_le_bytes());
    head.extend_from_slice(&0u64.to_le_bytes());
    out.write_all(&head).map_err(GalleryError::io(path))?;
    let mut offsets = Vec::with_capacity(records as usize + 1);
    let mut pos = HEADER_LEN as u64;
    let mut start = 0;
    while start < records {
        if stop() {
            return Err(GalleryError::Cancelled);
        }
        let end = (start + BUILD_CHUNK).min(records);
        let live = store.finger_record_range(start..end)?;
        let built: Vec<(u64, Vec<u8>)> = live
            .into_par_iter()
            .map(|(id, fingers)| {
                let mut b = Vec::with_capacity(8 + 1 + fingers.len() * 2800 + 4);
                b.extend_from_slice(&seqs[id as usize].unwrap_or(u64::MAX).to_le_bytes());
                let usable: Vec<_> = fingers.iter().filter(|t| t.position.is_some()).collect();
                b.push(usable.len() as u8);
                for t in usable {
                    let m = MccTemplate::new(t, params).to_bytes();
                    b.push(t.position.map_or(0, FingerPosition::code));
                    b.extend_from_slice(&(m.len() as u32).to_le_bytes());
                    b.extend_from_slice(&m);
                }
                let crc = crc32fast::hash(&b);
                b.extend_from_slice(&crc.to_le_bytes());
                (id, b)
            })
            .collect();
        let mut built = built.into_iter().peekable();
        for id in start..end {
            offsets.push(pos);
            if built.peek().is_some_and(|(b, _)| *b == id) {
                let (_, bytes) = built.next().expect("peeked");
                out.write_all(&bytes).map_err(GalleryError::io(path))?;
                pos += bytes.len() as u64;
            }
        }
        start = end;
    }
    offsets.push(pos);
    let index_offset = pos;
    let mut tail = Vec::with_capacity(offsets.len() * 8);
    offsets.iter().for_each(|o| tail.extend_from_slice(&o.to_le_bytes()));
    out.write_all(&tail).map_err(GalleryError::io(path))?;
    let mut file = out.into_inner().map_err(|e| GalleryError::io(path)(e.into_error()))?;
    // Patch the index offset, then append the CRC of header + index.
    head[32..40].copy_from_slice(&index_offset.to_le_bytes());
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0)).map_err(GalleryError::io(path))?;
    file.write_all(&head).map_err(GalleryError::io(path))?;
    let mut h = crc32fast::Hasher::new();
    h.update(&head);
    h.update(&tail);
    file.seek(SeekFrom::End(0)).map_err(GalleryError::io(path))?;
    file.write_all(&h.finalize().to_le_bytes()).map_err(GalleryError::io(path))?;
    file.sync_all().map_err(GalleryError::io(path))?;
    Ok((records, index_offset + tail.len() as u64 + 4))
}

/// An open `mcc.bin`: header and index checked, records read on demand.
#[derive(Debug)]
pub struct MccFile {
    map: Mmap,
    params_hash: u64,
    records: u64,
    index_offset: usize,
}

impl MccFile {
    /// Map the file and check its header and index (not its records: see the module docs).
    pub fn open(path: &Path) -> Result<MccFile> {
        let bad = |why: &str| GalleryError::corrupt(path, why.to_owned());
        let file = std::fs::File::open(path).map_err(GalleryError::io(path))?;
        // SAFETY: the file belongs to a published, immutable index generation: nothing writes
        // to it after its build renamed the generation into place (a rebuild writes a new
        // generation directory), and every read below is bounds-checked against the map.
        let map = unsafe { Mmap::map(&file) }.map_err(GalleryError::io(path))?;
        if map.len() < HEADER_LEN + 12 || &map[..8] != MAGIC {
            return Err(bad("not an MCC template file"));
        }
        let mut h = Reader::new(&map[8..HEADER_LEN]);
        let (version, _, hash, records, index_offset) =
            match (h.u32(), h.u32(), h.u64(), h.u64(), h.u64()) {
                (Some(v), Some(r), Some(p), Some(n), Some(o)) => (v, r, p, n, o as usize),
                _ => return Err(bad("short header")),
            };
        if version != VERSION {
            return Err(bad("unsupported MCC template file version"));
        }
        let index_len = (records as usize)
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| bad("record count overflow"))?;
        if index_offset < HEADER_LEN || index_offset.checked_add(index_len + 4) != Some(map.len()) {
            return Err(bad("section offsets disagree with the file length"));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&map[..HEADER_LEN]);
        crc.update(&map[index_offset..index_offset + index_len]);
        let stored = u32::from_le_bytes(map[map.len() - 4..].try_into().expect("4 bytes"));
        if crc.finalize() != stored {
            return Err(bad("header or index checksum mismatch"));
        }
        let f = MccFile { map, params_hash: hash, records, index_offset };
        let mut prev = HEADER_LEN as u64;
        for i in 0..=records as usize {
            let o = f.offset(i);
            if o < prev || o > index_offset as u64 {
                return Err(bad("record index is not increasing"));
            }
            prev = o;
        }
        Ok(f)
    }

    fn offset(&self, i: usize) -> u64 {
        let at = self.index_offset + i * 8;
        u64::from_le_bytes(self.map[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Records the file covers (ids `0..records`).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether the templates were built with these parameters.
    pub fn built_with(&self, params: &MccParams) -> bool {
        self.params_hash == params_hash(params)
    }

    /// The MCC templates of finger record `id` as built for the enrollment with sequence
    /// number `seq`, each with its position; `None` when the file does not hold them (a record
    /// added after the build, another enrollment, a damaged record).
    pub fn get(
        &self,
        id: u64,
        seq: u64,
        params: &MccParams,
    ) -> Option<Vec<(FingerPosition, MccTemplate)>> {
        if id >= self.records {
            return None;
        }
        let (start, end) =
            (self.offset(id as usize) as usize, self.offset(id as usize + 1) as usize);
        if end < start + 13 {
            return None;
        }
        let bytes = &self.map[start..end];
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            tracing::warn!(record = id, "MCC template record fails its checksum; rebuilding it");
            return None;
        }
        let mut r = Reader::new(body);
        if r.u64()? != seq {
            return None;
        }
        let n = r.u8()?;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let position = FingerPosition::new(r.u8()?).ok()?;
            let len = r.u32()? as usize;
            out.push((position, MccTemplate::from_bytes(r.take(len)?, params)?));
        }
        r.is_empty().then_some(out)
    }
}
