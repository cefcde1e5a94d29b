//! Copying a shard replica from an active replica: a new replica (a node that joined, or the
//! replacement of a dead one) starts from the copy and replays the log only from the copy's
//! position, instead of from the log's start.
//!
//! The copy is physical: the replica's directory as it is — `MANIFEST`, the sealed fp16 and
//! finger segments, the tombstones, the write-ahead log up to its length when the copy began,
//! `APPLIED`, and the index generations under `index/` — listed by the source, then read in
//! chunks over NATS request/reply. It is consistent without stopping writes because:
//!
//! - the source holds its checkpoints for the shard from the listing to the end of the copy
//!   (a lease of [`HOLD`], renewed by every chunk): the manifest, segments and tombstones it
//!   listed are neither replaced nor removed meanwhile, and segments are immutable;
//! - the write-ahead log is append-only: its first `len` bytes, listed, stay as they are; a
//!   frame cut at `len` is a torn tail, which the store cuts off at open;
//! - the replica's applied position is recovered at open from the copied log's journal frames
//!   (and `APPLIED`): exactly the last write the copy holds, so the replay from the log resumes
//!   right after it.
//!
//! Index builds do not run on cluster nodes, so `index/` does not change during a copy.

use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes per chunk: base64 in JSON stays under NATS's default 1 MiB payload.
pub const CHUNK: u64 = 512 * 1024;
/// How long a listing holds the source's checkpoints without a chunk request.
pub const HOLD: Duration = Duration::from_secs(30);

/// One file of a replica's directory: its path relative to the directory and the bytes to copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub len: u64,
}

/// The files to copy from a replica's directory: everything but the store's `LOCK` and
/// temporary files, relative paths, sorted.
pub fn list(dir: &Path) -> std::io::Result<Vec<FileEntry>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name == "LOCK" || name.ends_with(".tmp") || name.contains(".tmp.") {
                continue;
            }
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(root, &p, out)?;
            } else if ft.is_file() {
                let rel =
                    p.strip_prefix(root).expect("below the root").to_string_lossy().to_string();
                out.push(FileEntry { path: rel, len: e.metadata()?.len() });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The files of a store's directory to copy while it keeps taking writes: [`list`], with the
/// write-ahead log cut to `wal_len` (`Store::wal_durable_len`: the end of its last durable
/// commit group, read after checkpoints were held).
pub fn list_store(dir: &Path, wal_len: Option<u64>) -> std::io::Result<Vec<FileEntry>> {
    let mut files = list(dir)?;
    for f in &mut files {
        if f.path.starts_with("wal-") {
            f.len = wal_len.unwrap_or(0).min(f.len);
        }
    }
    Ok(files)
}

/// The path of a listed file below `dir`, refusing anything that leaves it.
pub fn resolve(dir: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let ok =
        !rel.is_empty() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    ok.then(|| dir.join(p))
}

/// `len` bytes of `rel` below `dir` from `offset` (fewer at the file's end).
pub fn read_chunk(dir: &Path, rel: &str, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let path = resolve(dir, rel).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("not a replica file: {rel}"))
    })?;
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len.min(CHUNK) as usize);
    f.take(len.min(CHUNK)).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Make the copied files durable: each file and each directory fsynced.
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        } else {
            std::fs::File::open(e.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use biomatch_core::{Modality, ModelId, SubjectId, Template};
    use biomatch_gallery::{Enrollment, ModelSpec, Store, StoreOptions, WriteOp};

    /// A live store — sealed segments, tombstones, writes in its log and a group being written
    /// past the durable end — copied chunk by chunk opens with exactly its durable writes.
    #[test]
    fn a_copy_of_a_live_store_opens_with_its_durable_writes() {
        let model = ModelId::new("m", "1").unwrap();
        let opts = || {
            let mut o = StoreOptions::new(vec![ModelSpec { model: model.clone(), dim: 8 }]);
            o.auto_checkpoint = false;
            o
        };
        let sid = |i: usize| SubjectId::new(format!("s{i}")).unwrap();
        let enroll = |i: usize| {
            let mut v = vec![0.0f32; 8];
            v[i % 8] = 0.6;
            v[(i + 3) % 8] = 0.8;
            let t = Template::new(model.clone(), 8, v).unwrap();
            WriteOp::Enroll(Enrollment::new(sid(i), vec![(Modality::Face, t)]))
        };
        let src = tempfile::tempdir().unwrap();
        let store = Store::open(src.path(), opts()).unwrap();
        for i in 0..50 {
            store.write(enroll(i), None).unwrap();
        }
        store.checkpoint().unwrap();
        store.write(WriteOp::Delete(sid(3)), None).unwrap();
        for i in 50..60 {
            store.write(enroll(i), None).unwrap();
        }
        // A group being appended while the copy is listed: bytes past the durable end.
        let wal =
            list(src.path()).unwrap().into_iter().find(|f| f.path.starts_with("wal-")).unwrap();
        {
            use std::io::Write;
            let mut f =
                std::fs::OpenOptions::new().append(true).open(src.path().join(&wal.path)).unwrap();
            f.write_all(b"BMWF\x10\x00\x00\x00half a frame").unwrap();
        }
        let files = list_store(src.path(), store.wal_durable_len()).unwrap();
        assert!(files.iter().any(|f| f.path.starts_with("seg-")), "{files:?}");
        let listed = files.iter().find(|f| f.path.starts_with("wal-")).unwrap();
        assert_eq!(listed.len, wal.len, "the listing cuts the log at its durable end");
        let dst = tempfile::tempdir().unwrap();
        for f in &files {
            let out = resolve(dst.path(), &f.path).unwrap();
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            let mut bytes = Vec::new();
            while (bytes.len() as u64) < f.len {
                let n = (f.len - bytes.len() as u64).min(CHUNK);
                bytes.extend(read_chunk(src.path(), &f.path, bytes.len() as u64, n).unwrap());
            }
            std::fs::write(out, bytes).unwrap();
        }
        sync_tree(dst.path()).unwrap();
        let copy = Store::open(dst.path(), opts()).unwrap();
        assert_eq!(copy.recovery().wal_torn_bytes_discarded, 0, "only whole groups copied");
        assert_eq!(copy.len(), 59);
        assert!(!copy.contains(&sid(3)));
        assert!(copy.contains(&sid(0)) && copy.contains(&sid(59)));
    }

    #[test]
    fn listing_skips_the_lock_and_temporary_files_and_paths_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("MANIFEST"), b"m").unwrap();
        std::fs::write(d.path().join("LOCK"), b"").unwrap();
        std::fs::write(d.path().join("seg.tmp"), b"x").unwrap();
        std::fs::create_dir_all(d.path().join("index/m@1/gen-1")).unwrap();
        std::fs::write(d.path().join("index/m@1/gen-1/shard-0.faiss"), b"abc").unwrap();
        let l = list(d.path()).unwrap();
        let names: Vec<&str> = l.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["MANIFEST", "index/m@1/gen-1/shard-0.faiss"]);
        assert_eq!(l[1].len, 3);
        assert_eq!(read_chunk(d.path(), "index/m@1/gen-1/shard-0.faiss", 1, 10).unwrap(), b"bc");
        assert!(resolve(d.path(), "../etc/passwd").is_none());
        assert!(resolve(d.path(), "/etc/passwd").is_none());
        assert!(read_chunk(d.path(), "../x", 0, 1).is_err());
    }
}
