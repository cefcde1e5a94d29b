//! The manifest names the files that make up the current state of the store, and the tombstone
//! file records which sealed rows are deleted.
//!
//! ## `MANIFEST` format
//! ```text
//! magic b"BMMANI\0\x01" (8) | format version u32 (=1) | JSON body (UTF-8) | CRC32 of all before, u32
//! ```
//! The JSON body is [`Manifest`]. The manifest is replaced only by [`crate::fsutil::atomic_write`]
//! (temp file, fsync, rename, fsync directory), so after a crash it names either the old or the
//! new generation, whose files were all fsynced before the rename. Files in the directory that the
//! manifest does not name are leftovers of an interrupted checkpoint and are removed at open.
//!
//! ## Tombstone file format (`del-<generation>.bmd`)
//! ```text
//! magic b"BMDEL\0\0\x01" (8) | format version u32 (=1) | count u64
//! | count × ( column u16 | row u64 ) | CRC32 of all before, u32
//! ```

use crate::error::{GalleryError, Result};
use crate::fsutil::{self, Reader};
use biomatch_core::ModelId;
use serde::{Deserialize, Serialize};
use std::path::Path;

const MAGIC: &[u8; 8] = b"BMMANI\0\x01";
/// Version 2 added `fingers`; version 1 manifests are read as having none.
const VERSION: u32 = 2;
const DEL_MAGIC: &[u8; 8] = b"BMDEL\0\0\x01";
const DEL_VERSION: u32 = 1;

pub(crate) const MANIFEST_FILE: &str = "MANIFEST";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct SegmentRef {
    pub file: String,
    pub first_row: u64,
    pub rows: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct ColumnManifest {
    pub model: ModelId,
    pub dim: usize,
    pub segments: Vec<SegmentRef>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Manifest {
    /// Bumped by every checkpoint; names the WAL and tombstone files.
    pub generation: u64,
    /// Every record with `seq <= checkpoint_seq` is contained in the segments and tombstones.
    pub checkpoint_seq: u64,
    pub next_segment: u64,
    pub wal: String,
    pub tombstones: Option<String>,
    pub columns: Vec<ColumnManifest>,
    /// Finger segments (`fng-*.bmf`), contiguous in record id (`first_row`, `rows` count
    /// records). Absent in version 1 manifests.
    #[serde(default)]
    pub fingers: Vec<SegmentRef>,
}

impl Manifest {
    pub fn wal_name(generation: u64) -> String {
        format!("wal-{generation:08}.log")
    }

    pub fn del_name(generation: u64) -> String {
        format!("del-{generation:08}.bmd")
    }

    pub fn segment_name(column: usize, id: u64) -> String {
        format!("seg-{column:02}-{id:08}.bms")
    }

    pub fn finger_segment_name(id: u64) -> String {
        format!("fng-{id:08}.bmf")
    }

    /// Every file this manifest refers to.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.wal.as_str())
            .chain(self.tombstones.as_deref())
            .chain(self.columns.iter().flat_map(|c| c.segments.iter().map(|s| s.file.as_str())))
            .chain(self.fingers.iter().map(|s| s.file.as_str()))
    }

    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(GalleryError::io(&path))?;
        let body = fsutil::check_crc(&path, &bytes)?;
        if body.len() < 12 || &body[..8] != MAGIC {
            return Err(GalleryError::corrupt(&path, "not a biomatch manifest (bad magic)"));
        }
        let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        if !(1..=VERSION).contains(&version) {
            return Err(GalleryError::corrupt(
                &path,
                format!("unsupported manifest version {version}"),
            ));
        }
        serde_json::from_slice(&body[12..])
            .map_err(|e| GalleryError::corrupt(&path, format!("manifest body does not parse: {e}")))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&serde_json::to_vec_pretty(self).expect("manifest serialises"));
        fsutil::push_crc(&mut bytes);
        fsutil::atomic_write(&dir.join(MANIFEST_FILE), &bytes)
    }
}

pub(crate) fn write_tombstones(path: &Path, rows: &[(u16, u64)]) -> Result<()> {
    let mut bytes = Vec::with_capacity(24 + rows.len() * 10);
    bytes.extend_from_slice(DEL_MAGIC);
    bytes.extend_from_slice(&DEL_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for (c, r) in rows {
        bytes.extend_from_slice(&c.to_le_bytes());
        bytes.extend_from_slice(&r.to_le_bytes());
    }
    fsutil::push_crc(&mut bytes);
    fsutil::atomic_write(path, &bytes)
}

pub(crate) fn read_tombstones(path: &Path) -> Result<Vec<(u16, u64)>> {
    let bytes = std::fs::read(path).map_err(GalleryError::io(path))?;
    let body = fsutil::check_crc(path, &bytes)?;
    let bad = || GalleryError::corrupt(path, "malformed tombstone file");
    let mut r = Reader::new(body);
    if r.take(8) != Some(DEL_MAGIC.as_slice()) || r.u32() != Some(DEL_VERSION) {
        return Err(bad());
    }
    let n = r.u64().ok_or_else(bad)?;
    if n.checked_mul(10) != Some((body.len() - r.position()) as u64) {
        return Err(bad());
    }
    (0..n).map(|_| r.u16().zip(r.u64()).ok_or_else(bad)).collect()
}
