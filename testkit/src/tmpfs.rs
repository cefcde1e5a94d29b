//! A small tmpfs of its own for one test: a disk that really fills up (writes fail with ENOSPC)
//! and gets space back when a file on it is deleted.
//!
//! Mounting needs root (CI runs the tests as root on Linux). [`Tmpfs::mount`] panics with a
//! message that says so when it cannot mount; dropping the [`Tmpfs`] unmounts it, also when the
//! test panics (drop the processes using it first: a busy mount is detached lazily instead).
//!
//! ```no_run
//! use biomatch_testkit::tmpfs::Tmpfs;
//!
//! let fs = Tmpfs::mount(4 << 20);
//! let filler = fs.fill("filler", 64 << 10); // leave about 64 KiB free
//! // ... writes on fs.path() fail with ENOSPC once the 64 KiB are used ...
//! std::fs::remove_file(filler).unwrap(); // space is back
//! ```

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// A mounted tmpfs, unmounted (and its mount point removed) on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `bytes` (rounded up to whole pages) on a fresh directory under the
    /// system temp directory. Panics, saying why, if it cannot be mounted (not root, no mount
    /// permission in this container, no `mount` command).
    pub fn mount(bytes: u64) -> Tmpfs {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "biomatch-tmpfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create mount point {}: {e}", dir.display()));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "tmpfs"])
            .arg(&dir)
            .output();
        let failure = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => Some(format!("cannot run `mount`: {e}")),
        };
        if let Some(why) = failure {
            let _ = fs::remove_dir(&dir);
            panic!(
                "this test needs a small tmpfs to fill up and could not mount one on {} ({why}); \
                 it must run as root on Linux (as CI does), with permission to mount",
                dir.display()
            );
        }
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Write a file `name` of zeros until the tmpfs is full, then cut it so that about `leave`
    /// bytes are free again; returns its path (delete it to free the space it holds).
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.dir.join(name);
        let mut f = File::create(&path).expect("create the filler file");
        let chunk = vec![0u8; 16 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        f.set_len(written.saturating_sub(leave)).expect("cut the filler file");
        f.sync_all().expect("sync the filler file");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let plain = Command::new("umount").arg(&self.dir).status();
        if !plain.is_ok_and(|s| s.success()) {
            // Still in use (a process the test could not stop): detach it now, freed when idle.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = fs::remove_dir(&self.dir);
    }
}
