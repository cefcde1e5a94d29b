//! The binary vector file (`.bmvec`): one format that every tool and bench reads and writes.
//!
//! All integers and floats are little-endian. Layout (also in `datasets/FORMAT.md`):
//!
//! | offset      | size            | field                                                   |
//! |-------------|-----------------|---------------------------------------------------------|
//! | 0           | 8               | magic `b"BMVEC\0\0\x01"`                                |
//! | 8           | 4               | format version, `u32` (= 1)                             |
//! | 12          | 4               | `dim`, `u32`, in `1..=65536`                            |
//! | 16          | 8               | `count`, `u64`: number of records                       |
//! | 24          | 4               | `flags`, `u32`: bit 0 = every vector is unit length; other bits must be 0 |
//! | 28          | 4               | `meta_len`, `u32`, at most 16 MiB                       |
//! | 32          | `meta_len`      | metadata: UTF-8 JSON (any value; generators store their config and what the file holds) |
//! | 32+meta_len | `count × (12 + 4·dim)` | records: `label: u64` (the identity), `sample: u32`, `dim × f32` |
//! | end − 4     | 4               | CRC-32 (IEEE, as `crc32fast`) of every byte before it, `u32` |
//!
//! The file length is therefore exactly `32 + meta_len + count·(12 + 4·dim) + 4`; the reader checks
//! that before allocating anything proportional to `count`, so a lying header yields an error, not a
//! huge allocation. Files are written atomically: a temporary file in the destination directory,
//! fsynced, renamed over the destination, then the directory is fsynced.

use crate::error::DatasetError;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// First eight bytes of every vector file.
pub const MAGIC: [u8; 8] = *b"BMVEC\0\0\x01";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Flag: every vector in the file has unit L2 norm (within 1e-4); set by the writer on inspection.
pub const FLAG_UNIT_NORM: u32 = 1;
/// Flags this build understands.
pub const KNOWN_FLAGS: u32 = FLAG_UNIT_NORM;
/// Largest dimension accepted.
pub const MAX_FILE_DIM: usize = 1 << 16;
/// Largest metadata blob accepted.
pub const MAX_META_LEN: u32 = 16 << 20;

/// Bytes before the metadata.
const FIXED_HEADER: usize = 32;
const COUNT_OFFSET: u64 = 16;
const FOOTER: u64 = 4;

/// Bytes per record of dimension `dim`.
pub fn record_size(dim: usize) -> u64 {
    12 + 4 * dim as u64
}

/// A vector file read into memory: records are stored column-wise, vectors in one row-major
/// buffer (`vectors[i * dim..(i + 1) * dim]` is record `i`).
#[derive(Clone, PartialEq)]
pub struct VectorFile {
    pub meta: serde_json::Value,
    pub dim: usize,
    pub flags: u32,
    pub labels: Vec<u64>,
    pub samples: Vec<u32>,
    pub vectors: Vec<f32>,
}

impl fmt::Debug for VectorFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorFile")
            .field("meta", &self.meta)
            .field("dim", &self.dim)
            .field("flags", &self.flags)
            .field("count", &self.len())
            .finish_non_exhaustive()
    }
}

impl VectorFile {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The vector of record `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    /// `(label, sample, vector)` for every record, in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, u32, &[f32])> + '_ {
        (0..self.len()).map(|i| (self.labels[i], self.samples[i], self.vector(i)))
    }

    /// Whether the writer found every vector unit length.
    pub fn unit_norm(&self) -> bool {
        self.flags & FLAG_UNIT_NORM != 0
    }
}

fn header_bytes(dim: usize, count: u64, flags: u32, meta: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(FIXED_HEADER + meta.len());
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&(dim as u32).to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    h.extend_from_slice(meta);
    h
}

/// Write `records` (`(label, sample, vector)`, every vector of length `dim` with finite values) to
/// `path` with metadata `meta`, atomically: on error or crash the destination is either absent or
/// its previous content. Returns the number of records written.
pub fn write_vectors<I, V>(
    path: impl AsRef<Path>,
    meta: &serde_json::Value,
    dim: usize,
    records: I,
) -> Result<u64, DatasetError>
where
    I: IntoIterator<Item = (u64, u32, V)>,
    V: AsRef<[f32]>,
{
    let path = path.as_ref();
    let bad_header = |reason: String| DatasetError::BadHeader { path: path.to_owned(), reason };
    if !(1..=MAX_FILE_DIM).contains(&dim) {
        return Err(bad_header(format!("dimension {dim} not in 1..={MAX_FILE_DIM}")));
    }
    let meta = serde_json::to_vec(meta)
        .map_err(|source| DatasetError::BadMetadata { path: path.to_owned(), source })?;
    if meta.len() > MAX_META_LEN as usize {
        return Err(bad_header(format!("metadata of {} bytes exceeds {MAX_META_LEN}", meta.len())));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io = DatasetError::io(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".bmvec-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(DatasetError::io(dir))?;

    // The header is written with a placeholder count and flags, patched at the end; its CRC is
    // computed then and combined with the running CRC of the records.
    let mut body_crc = crc32fast::Hasher::new();
    let mut count = 0u64;
    let mut unit = true;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        w.write_all(&header_bytes(dim, 0, 0, &meta)).map_err(&io)?;
        let mut buf = Vec::with_capacity(record_size(dim) as usize);
        for (label, sample, vector) in records {
            let vector = vector.as_ref();
            if vector.len() != dim {
                return Err(DatasetError::DimensionMismatch {
                    index: count,
                    expected: dim,
                    got: vector.len(),
                });
            }
            if let Some(component) = vector.iter().position(|v| !v.is_finite()) {
                return Err(DatasetError::NonFinite { index: count, component });
            }
            let norm2: f64 = vector.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            unit &= (norm2 - 1.0).abs() <= 2e-4;
            buf.clear();
            buf.extend_from_slice(&label.to_le_bytes());
            buf.extend_from_slice(&sample.to_le_bytes());
            for v in vector {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            body_crc.update(&buf);
            w.write_all(&buf).map_err(&io)?;
            count += 1;
        }
        w.flush().map_err(&io)?;
    }
    let flags = if unit { FLAG_UNIT_NORM } else { 0 };
    let header = header_bytes(dim, count, flags, &meta);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.combine(&body_crc);
    let file = tmp.as_file_mut();
    file.seek(SeekFrom::Start(COUNT_OFFSET)).map_err(&io)?;
    file.write_all(&header[COUNT_OFFSET as usize..FIXED_HEADER - 4]).map_err(&io)?;
    file.seek(SeekFrom::End(0)).map_err(&io)?;
    file.write_all(&crc.finalize().to_le_bytes()).map_err(&io)?;
    file.sync_all().map_err(&io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    sync_dir(dir)?;
    Ok(count)
}

/// Make a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), DatasetError> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(DatasetError::io(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Read and fully validate a vector file (magic, version, flags, sizes against the file length,
/// CRC, metadata JSON).
pub fn read_vectors(path: impl AsRef<Path>) -> Result<VectorFile, DatasetError> {
    let path = path.as_ref();
    let io = DatasetError::io(path);
    let owned = || path.to_owned();
    let file = File::open(path).map_err(&io)?;
    let actual = file.metadata().map_err(&io)?.len();
    let truncated = |expected| DatasetError::Truncated { path: owned(), expected, actual };
    let min = FIXED_HEADER as u64 + FOOTER;
    if actual < FIXED_HEADER as u64 {
        // Too short for a header: still say "not ours" if even the magic is wrong.
        let mut head = Vec::new();
        File::open(path).map_err(&io)?.take(8).read_to_end(&mut head).map_err(&io)?;
        if !MAGIC.starts_with(&head) {
            return Err(DatasetError::BadMagic { path: owned() });
        }
        return Err(truncated(min));
    }
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; FIXED_HEADER];
    r.read_exact(&mut header).map_err(&io)?;
    if header[..8] != MAGIC {
        return Err(DatasetError::BadMagic { path: owned() });
    }
    let version = u32_at(&header, 8);
    if version != FORMAT_VERSION {
        return Err(DatasetError::UnsupportedVersion {
            path: owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let bad_header = |reason: String| DatasetError::BadHeader { path: owned(), reason };
    let dim = u32_at(&header, 12) as usize;
    if !(1..=MAX_FILE_DIM).contains(&dim) {
        return Err(bad_header(format!("dimension {dim} not in 1..={MAX_FILE_DIM}")));
    }
    let count = u64_at(&header, 16);
    let flags = u32_at(&header, 24);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DatasetError::UnsupportedFlags { path: owned(), flags: flags & !KNOWN_FLAGS });
    }
    let meta_len = u32_at(&header, 28);
    if meta_len > MAX_META_LEN {
        return Err(bad_header(format!("metadata length {meta_len} exceeds {MAX_META_LEN}")));
    }
    let record = record_size(dim);
    let expected = count
        .checked_mul(record)
        .and_then(|body| body.checked_add(FIXED_HEADER as u64 + u64::from(meta_len) + FOOTER))
        .ok_or_else(|| bad_header(format!("record count {count} overflows")))?;
    if actual < expected {
        return Err(truncated(expected));
    }
    if actual > expected {
        return Err(DatasetError::TrailingData { path: owned(), expected, actual });
    }
    // From here every allocation is bounded by the file length.
    let n = usize::try_from(count).map_err(|_| bad_header(format!("count {count} too large")))?;

    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    let mut meta = vec![0u8; meta_len as usize];
    r.read_exact(&mut meta).map_err(&io)?;
    crc.update(&meta);

    let mut labels = Vec::with_capacity(n);
    let mut samples = Vec::with_capacity(n);
    let mut vectors = Vec::with_capacity(n * dim);
    let record = record as usize;
    let per_chunk = ((1 << 20) / record).max(1);
    let mut chunk = vec![0u8; per_chunk * record];
    let mut left = n;
    while left > 0 {
        let take = left.min(per_chunk);
        let bytes = &mut chunk[..take * record];
        r.read_exact(bytes).map_err(&io)?;
        crc.update(bytes);
        for rec in bytes.chunks_exact(record) {
            labels.push(u64_at(rec, 0));
            samples.push(u32_at(rec, 8));
            vectors.extend(
                rec[12..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        left -= take;
    }
    let mut footer = [0u8; 4];
    r.read_exact(&mut footer).map_err(&io)?;
    let stored = u32::from_le_bytes(footer);
    let computed = crc.finalize();
    if stored != computed {
        return Err(DatasetError::ChecksumMismatch { path: owned(), stored, computed });
    }
    let meta = serde_json::from_slice(&meta)
        .map_err(|source| DatasetError::BadMetadata { path: owned(), source })?;
    Ok(VectorFile { meta, dim, flags, labels, samples, vectors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn records(n: u64, dim: usize) -> Vec<(u64, u32, Vec<f32>)> {
        (0..n)
            .map(|i| {
                let v: Vec<f32> = (0..dim).map(|k| ((i as usize * 31 + k) as f32).sin()).collect();
                (i * 3 + 1, (i % 4) as u32, v)
            })
            .collect()
    }

    fn write_small(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.join("small.bmvec");
        let n = write_vectors(&path, &json!({"content": "test"}), 5, records(7, 5)).unwrap();
        assert_eq!(n, 7);
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.bmvec");
        let meta = json!({"population": {"seed": 3}, "content": "enrolment"});
        let recs = records(1000, 16);
        write_vectors(&path, &meta, 16, recs.iter().map(|(l, s, v)| (*l, *s, v.as_slice())))
            .unwrap();
        let f = read_vectors(&path).unwrap();
        assert_eq!(f.meta, meta);
        assert_eq!((f.dim, f.len(), f.flags), (16, 1000, 0));
        assert!(!f.unit_norm());
        for ((l, s, v), (rl, rs, rv)) in recs.iter().zip(f.iter()) {
            assert_eq!((*l, *s), (rl, rs));
            assert_eq!(v.as_slice(), rv);
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, 32 + serde_json::to_vec(&meta).unwrap().len() as u64 + 1000 * 76 + 4);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn empty_file_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.bmvec");
        write_vectors(&path, &json!(null), 3, records(4, 3)).unwrap();
        write_vectors(&path, &json!(null), 3, Vec::<(u64, u32, Vec<f32>)>::new()).unwrap();
        let f = read_vectors(&path).unwrap();
        assert!(f.is_empty());
        assert!(f.unit_norm(), "vacuously unit length");
    }

    #[test]
    fn population_enrolment_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enrol.bmvec");
        let p = crate::Population::new(crate::PopulationConfig {
            identities: 300,
            dim: 32,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.write_enrolment(&path).unwrap(), 300);
        let f = read_vectors(&path).unwrap();
        assert!(f.unit_norm());
        assert_eq!(f.meta["content"], "enrolment");
        let config: crate::PopulationConfig =
            serde_json::from_value(f.meta["population"].clone()).unwrap();
        assert_eq!(&config, p.config());
        for (label, sample, v) in f.iter() {
            assert_eq!(sample, 0);
            assert_eq!(v, p.sample(label, 0).as_slice());
        }
    }

    #[test]
    fn writer_rejects_bad_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.bmvec");
        let err = write_vectors(&path, &json!({}), 3, [(0, 0, vec![1.0f32, 0.0])]).unwrap_err();
        assert!(matches!(err, DatasetError::DimensionMismatch { index: 0, expected: 3, got: 2 }));
        let recs = [(0, 0, vec![1.0f32, 0.0]), (1, 0, vec![f32::NAN, 0.0])];
        let err = write_vectors(&path, &json!({}), 2, recs).unwrap_err();
        assert!(matches!(err, DatasetError::NonFinite { index: 1, component: 0 }));
        assert!(write_vectors(&path, &json!({}), 0, records(0, 0)).is_err());
        // Nothing was created, not even a temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = write_small(dir.path());
        for len in 0..bytes.len() {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let err = read_vectors(&path).unwrap_err();
            assert!(
                matches!(err, DatasetError::Truncated { .. } | DatasetError::BadMagic { .. }),
                "len {len}: {err}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(matches!(read_vectors(&path), Err(DatasetError::TrailingData { .. })));
    }

    #[test]
    fn every_bit_flip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = write_small(dir.path());
        for at in 0..bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = bytes.clone();
                b[at] ^= 1 << bit;
                std::fs::write(&path, &b).unwrap();
                assert!(read_vectors(&path).is_err(), "flip at byte {at} bit {bit} went unnoticed");
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_vectors(&path).is_ok());
    }

    #[test]
    fn lying_header_does_not_allocate() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = write_small(dir.path());
        for count in [u64::MAX, u64::MAX / 76, 1 << 40] {
            let mut b = bytes.clone();
            b[16..24].copy_from_slice(&count.to_le_bytes());
            std::fs::write(&path, &b).unwrap();
            let err = read_vectors(&path).unwrap_err();
            assert!(
                matches!(err, DatasetError::Truncated { .. } | DatasetError::BadHeader { .. }),
                "{err}"
            );
        }
        let patch = |at: usize, v: u32| {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            std::fs::write(&path, &b).unwrap();
            read_vectors(&path).unwrap_err()
        };
        assert!(matches!(patch(8, 2), DatasetError::UnsupportedVersion { found: 2, .. }));
        assert!(matches!(patch(12, 0), DatasetError::BadHeader { .. }));
        assert!(matches!(patch(12, u32::MAX), DatasetError::BadHeader { .. }));
        assert!(matches!(patch(24, 6), DatasetError::UnsupportedFlags { flags: 6, .. }));
        assert!(matches!(patch(28, u32::MAX), DatasetError::BadHeader { .. }));
    }

    #[test]
    fn not_a_vector_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"hello, world, this is not a vector file at all").unwrap();
        assert!(matches!(read_vectors(&path), Err(DatasetError::BadMagic { .. })));
        assert!(matches!(read_vectors(dir.path().join("missing")), Err(DatasetError::Io { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn round_trips_arbitrary_records(
            dim in 1usize..20,
            recs in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u64>()), 0..50),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.bmvec");
            let recs: Vec<(u64, u32, Vec<f32>)> = recs
                .into_iter()
                .map(|(l, s, seed)| {
                    let v = (0..dim).map(|k| ((seed >> (k % 48)) as u16) as f32 - 30_000.0).collect();
                    (l, s, v)
                })
                .collect();
            let written = write_vectors(&path, &json!({"dim": dim}), dim, recs.clone()).unwrap();
            prop_assert_eq!(written, recs.len() as u64);
            let f = read_vectors(&path).unwrap();
            let back: Vec<(u64, u32, Vec<f32>)> =
                f.iter().map(|(l, s, v)| (l, s, v.to_vec())).collect();
            prop_assert_eq!(back, recs);
        }
    }
}
