//! Small durable-file helpers shared by every on-disk format of the store.
//!
//! Every file the store writes ends with a CRC32 over all preceding bytes; immutable files are
//! written to a temporary name in the same directory, fsynced, renamed into place, and the
//! directory is fsynced, so a crash leaves either the old state or the new one, never a mix.

use crate::error::{GalleryError, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = path.with_extension("tmp");
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        // Give the space back at once (a full disk is the usual cause); the target is untouched.
        let _ = fs::remove_file(&tmp);
        return Err(GalleryError::Io { path: tmp, source: e });
    }
    fs::rename(&tmp, path).map_err(GalleryError::io(path))?;
    sync_dir(dir)
}

/// fsync a directory so that a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(GalleryError::io(dir))
}

/// Take an exclusive advisory lock on `path` (created if missing) without waiting.
/// `Ok(None)`: another process (or handle) holds it. The lock lasts as long as the file.
pub fn try_lock_exclusive(path: &Path) -> Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(GalleryError::io(path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(GalleryError::Io { path: path.to_owned(), source: e })
        }
    }
}

/// Memory-map an immutable file and check its CRC32 footer, magic and format version. Returns
/// the map and the length of its body (everything before the footer); the header after the
/// version starts at byte 12.
pub fn map_verified(
    path: &Path,
    magic: &[u8; 8],
    version: u32,
    what: &str,
) -> Result<(memmap2::Mmap, usize)> {
    let file = File::open(path).map_err(GalleryError::io(path))?;
    // SAFETY: the store's immutable files (segments) are never written to or truncated after
    // they are renamed into place, and the map is read-only. An outside process modifying the
    // file would break this, as for any database file.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(GalleryError::io(path))?;
    let body = check_crc(path, &map)?.len();
    let mut h = Reader::new(&map[..body]);
    if h.take(8) != Some(magic.as_slice()) {
        return Err(GalleryError::corrupt(path, format!("not a biomatch {what} (bad magic)")));
    }
    match h.u32() {
        Some(v) if v == version => Ok((map, body)),
        Some(v) => Err(GalleryError::corrupt(path, format!("unsupported {what} version {v}"))),
        None => Err(GalleryError::corrupt(path, "short header")),
    }
}

/// Append the CRC32 footer of everything in `buf`.
pub fn push_crc(buf: &mut Vec<u8>) {
    let crc = crc32fast::hash(buf);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// Check and strip the CRC32 footer; returns the body.
pub fn check_crc<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8]> {
    if bytes.len() < 4 {
        return Err(GalleryError::corrupt(path, "file is shorter than its checksum"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let want = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    let got = crc32fast::hash(body);
    if want != got {
        return Err(GalleryError::corrupt(
            path,
            format!(
                "checksum mismatch (stored {want:08x}, computed {got:08x}): truncated or damaged"
            ),
        ));
    }
    Ok(body)
}

/// A little-endian cursor over a byte slice that reports truncation instead of panicking.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next byte, without consuming it.
    pub fn peek_u8(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// Hand the heap pages freed so far back to the kernel. Opening a store parses every row's
/// metadata (tens of bytes a row, small allocations) into the subject table and frees it; the
/// allocator keeps those pages, which at 10 M rows is ~0.4 GB of anonymous memory a memory cap
/// would otherwise charge for good, crowding out the page cache the re-rank reads from.
pub(crate) fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel;
    // it takes no pointers and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
