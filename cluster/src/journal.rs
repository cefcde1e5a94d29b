//! The log position a shard replica has applied, persisted with the writes themselves.
//!
//! A replica applies its shard's log messages to its own store through the engine. Each store
//! write carries the message's stream sequence in its journal entry, so the position is logged
//! in the same WAL frame and fsync as the write ([`biomatch_engine::Journal`]): after a crash the
//! replica resumes exactly after the last write it stored, never applying a write twice or
//! skipping one. Messages that stored nothing (a refused enrollment, a delete of an unknown
//! subject) are not recorded; replaying them on the same state gives the same outcome again.
//! Before a checkpoint drops the WAL, the position is written to `APPLIED` (temp file, fsync,
//! rename, fsync of the directory).

use biomatch_engine::{Journal, JournalEntry};
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The request id the applier gives a log message's store write: `log:<stream seq>`.
pub fn request_id_of(seq: u64) -> String {
    format!("log:{seq}")
}

fn seq_of(request_id: &str) -> Option<u64> {
    request_id.strip_prefix("log:")?.parse().ok()
}

/// One shard replica's applied position (see the module docs).
#[derive(Debug)]
pub struct AppliedJournal {
    file: PathBuf,
    applied: AtomicU64,
    sync_lock: Mutex<()>,
}

impl AppliedJournal {
    /// The journal of the replica in `dir`, starting from its `APPLIED` file (0 without one).
    pub fn open(dir: &std::path::Path) -> Result<Self, String> {
        let file = dir.join("APPLIED");
        let applied = match std::fs::read_to_string(&file) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|e| format!("{}: not a log position ({e})", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok(Self { file, applied: AtomicU64::new(applied), sync_lock: Mutex::new(()) })
    }

    /// The last log position whose write this replica stored.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn write_file(&self) -> Result<(), String> {
        let _g = self.sync_lock.lock();
        let tmp = self.file.with_extension("tmp");
        let v = self.applied();
        let r = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{v}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)?;
            if let Some(d) = self.file.parent() {
                std::fs::File::open(d)?.sync_all()?;
            }
            Ok(())
        })();
        r.map_err(|e| format!("{}: {e}", self.file.display()))
    }
}

impl Journal for AppliedJournal {
    fn encode(&self, entries: &[JournalEntry<'_>]) -> Result<Vec<u8>, String> {
        let max = entries.iter().filter_map(|e| seq_of(&e.context.request_id)).max();
        Ok(max.map(|s| s.to_le_bytes().to_vec()).unwrap_or_default())
    }

    fn committed(&self, bytes: &[u8]) {
        if let Ok(b) = <[u8; 8]>::try_from(bytes) {
            self.applied.fetch_max(u64::from_le_bytes(b), Ordering::AcqRel);
        }
    }

    fn sync(&self) -> Result<(), String> {
        self.write_file()
    }

    fn recover(&self, logged: &[Vec<u8>]) -> Result<(), String> {
        for b in logged {
            self.committed(b);
        }
        self.write_file()
    }
}
