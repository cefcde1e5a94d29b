//! Immutable segment files: a column of fp16 templates plus per-row metadata.
//!
//! ## Format (`seg-<column>-<id>.bms`, little endian)
//! ```text
//! header (64 bytes): magic b"BMSEG\0\0\x01" (8) | format version u32 (=1) | dim u32 | rows u64
//!                    | first_row u64 | meta_offset u64 | meta_len u64 | column u16 | zero padding
//! vectors          : rows × dim × fp16, row-major, starting at byte 64 (so the memory map can be
//!                    viewed as `&[f16]`: template `r` is `vectors[r*dim .. (r+1)*dim]`)
//! meta             : rows × ( seq u64 | modality u8 | id length u8 | id bytes )
//! footer           : CRC32 of every preceding byte, u32
//! ```
//! The vector block is what re-ranking reads by row (through the memory map, no copy) and what a
//! rebuild scans sequentially; the metadata is loaded into memory at open. A segment is never
//! modified after it is renamed into place; deletes of its rows live in the tombstone file.

use crate::error::{GalleryError, Result};
use crate::fsutil::{self, Reader};
use biomatch_core::{Modality, SubjectId};
use half::f16;
use memmap2::Mmap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"BMSEG\0\0\x01";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;

/// Who a stored row belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct RowMeta {
    pub seq: u64,
    pub modality: Modality,
    pub subject: SubjectId,
}

/// An open, verified, memory-mapped segment.
#[derive(Debug)]
pub(crate) struct Segment {
    map: Mmap,
    pub dim: usize,
    pub rows: u64,
    pub first_row: u64,
}

impl Segment {
    /// The fp16 vector block, `rows × dim` values.
    pub fn vectors(&self) -> &[f16] {
        let bytes = &self.map[HEADER_LEN..HEADER_LEN + self.rows as usize * self.dim * 2];
        // The map is page-aligned and HEADER_LEN is even, so the cast cannot fail (checked at open).
        bytemuck::cast_slice(bytes)
    }

    /// Map and verify a segment file; returns it with its row metadata.
    pub fn open(
        path: &Path,
        expect_column: u16,
        expect_dim: usize,
    ) -> Result<(Segment, Vec<RowMeta>)> {
        let (map, body_len) = fsutil::map_verified(path, MAGIC, VERSION, "segment")?;
        let body = &map[..body_len];
        let bad = |why: &str| GalleryError::corrupt(path, why.to_owned());
        let mut h = Reader::new(&body[12..]);
        let (dim, rows, first_row, meta_off, meta_len, column) =
            match (h.u32(), h.u64(), h.u64(), h.u64(), h.u64(), h.u16()) {
                (Some(a), Some(b), Some(c), Some(d), Some(e), Some(f)) => {
                    (a as usize, b, c, d, e, f)
                }
                _ => return Err(bad("short header")),
            };
        if column != expect_column || dim != expect_dim {
            return Err(bad(&format!(
                "segment holds column {column} dim {dim}; the manifest expects column {expect_column} dim {expect_dim}"
            )));
        }
        let vec_len =
            (rows as usize).checked_mul(dim * 2).ok_or_else(|| bad("row count overflow"))?;
        if meta_off as usize != HEADER_LEN + vec_len
            || (meta_off as usize).checked_add(meta_len as usize) != Some(body.len())
        {
            return Err(bad("section offsets disagree with the file length"));
        }
        let mut r = Reader::new(&body[meta_off as usize..]);
        let mut meta = Vec::with_capacity(rows as usize);
        for _ in 0..rows {
            let row = (|| {
                let seq = r.u64()?;
                let modality = Modality::from_code(r.u8()?).ok()?;
                let n = r.u8()? as usize;
                let subject = SubjectId::new(std::str::from_utf8(r.take(n)?).ok()?).ok()?;
                Some(RowMeta { seq, modality, subject })
            })()
            .ok_or_else(|| bad("row metadata is malformed"))?;
            meta.push(row);
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes after row metadata"));
        }
        // Past the checksum, the vectors are read at random (re-ranking a few rows per query):
        // no read-around on a page fault, so that a node whose page cache holds only part of
        // the column (a memory cap) reads 4 KiB per missing row instead of 128 KiB that evict
        // other rows. Sequential scans (exact search, a rebuild) read rows already cached or
        // pay a fault per page. Advice only: an error changes nothing but speed.
        let _ = map.advise(memmap2::Advice::Random);
        let seg = Segment { map, dim, rows, first_row };
        if bytemuck::try_cast_slice::<u8, f16>(&seg.map[HEADER_LEN..HEADER_LEN + vec_len]).is_err()
        {
            return Err(bad("vector block is misaligned"));
        }
        Ok((seg, meta))
    }
}

/// Write a segment atomically (temp name, fsync, rename, fsync directory), streaming the CRC.
pub(crate) fn write(
    path: &Path,
    column: u16,
    dim: usize,
    first_row: u64,
    vectors: &[f16],
    meta: &[RowMeta],
) -> Result<()> {
    assert_eq!(vectors.len(), meta.len() * dim, "segment vectors and metadata disagree");
    let tmp = path.with_extension("tmp");
    let io = GalleryError::io(&tmp);
    let mut meta_bytes = Vec::with_capacity(meta.len() * 32);
    for m in meta {
        meta_bytes.extend_from_slice(&m.seq.to_le_bytes());
        meta_bytes.push(m.modality.code());
        meta_bytes.push(m.subject.as_str().len() as u8);
        meta_bytes.extend_from_slice(m.subject.as_str().as_bytes());
    }
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(dim as u32).to_le_bytes());
    header.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    header.extend_from_slice(&first_row.to_le_bytes());
    header.extend_from_slice(&((HEADER_LEN + vectors.len() * 2) as u64).to_le_bytes());
    header.extend_from_slice(&(meta_bytes.len() as u64).to_le_bytes());
    header.extend_from_slice(&column.to_le_bytes());
    header.resize(HEADER_LEN, 0);

    let write_all = || -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut crc = crc32fast::Hasher::new();
        for part in [&header[..], bytemuck::cast_slice(vectors), &meta_bytes[..]] {
            crc.update(part);
            w.write_all(part)?;
        }
        w.write_all(&crc.finalize().to_le_bytes())?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    };
    write_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(GalleryError::io(path))?;
    fsutil::sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))
}
