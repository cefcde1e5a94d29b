//! Reopen, checkpoint and damaged-file behaviour.

use crate::common::*;
use biomatch_gallery::{GalleryError, IdentifyOptions, Store, StoreOptions};
use std::path::Path;

fn small_wal() -> StoreOptions {
    let mut o = options();
    o.checkpoint_wal_bytes = 4096;
    o
}

fn files(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn top1(store: &Store, i: u64) -> Option<String> {
    store
        .identify(&probe(7, i), &IdentifyOptions { max_results: 1, ..Default::default() })
        .unwrap()
        .first()
        .map(|c| c.subject_id.to_string())
}

#[test]
fn reopen_keeps_enrollments_and_deletes_across_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), small_wal()).unwrap();
        for i in 0..200 {
            store.enroll(&enrollment(7, i)).unwrap();
        }
        for i in (0..200).step_by(10) {
            store.delete(&sid(i)).unwrap();
        }
        let st = store.stats();
        assert!(st.columns[0].segments > 1, "checkpoints should have sealed segments: {st:?}");
        assert!(st.columns[0].unsealed_rows < 200);
    }
    assert_eq!(files(dir.path(), "wal-").len(), 1, "old logs are removed by checkpoints");
    let store = Store::open(dir.path(), small_wal()).unwrap();
    assert_eq!(store.len(), 180);
    for i in 0..200 {
        let found = top1(&store, i);
        if i % 10 == 0 {
            assert!(!store.contains(&sid(i)));
            assert_ne!(found, Some(sid(i).to_string()));
        } else {
            assert_eq!(found, Some(sid(i).to_string()));
        }
    }
    // A deleted subject may enroll again and is found again.
    store.enroll(&enrollment(7, 0)).unwrap();
    store.checkpoint().unwrap();
    drop(store);
    let store = Store::open(dir.path(), small_wal()).unwrap();
    assert_eq!(top1(&store, 0), Some(sid(0).to_string()));
    assert_eq!(store.len(), 181);
}

#[test]
fn stored_templates_round_trip_in_fp16() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.enroll(&enrollment(3, 1)).unwrap();
    store.checkpoint().unwrap();
    let (m, v) = store.template(&sid(1), biomatch_core::Modality::Face).unwrap();
    assert_eq!(m, model());
    for (a, b) in v.iter().zip(template(3, 1).vector()) {
        assert!((a - b).abs() <= 1e-3, "{a} vs {b}");
    }
}

#[test]
fn torn_wal_tail_is_repaired_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 0..5 {
            store.enroll(&enrollment(7, i)).unwrap();
        }
    }
    let wal = files(dir.path(), "wal-").pop().unwrap();
    let len = std::fs::metadata(&wal).unwrap().len();
    // Append half a frame, as a crash during an unacknowledged write would leave.
    let mut bytes = std::fs::read(&wal).unwrap();
    let tail = bytes[bytes.len() - 40..].to_vec();
    bytes.extend_from_slice(&tail);
    std::fs::write(&wal, &bytes).unwrap();
    let store = open(dir.path());
    assert_eq!(store.recovery().wal_torn_bytes_discarded, 40);
    assert_eq!(store.len(), 5);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), len);
    store.enroll(&enrollment(7, 5)).unwrap();
    drop(store);
    assert_eq!(open(dir.path()).len(), 6);
}

#[test]
fn damaged_files_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 0..50 {
            store.enroll(&enrollment(7, i)).unwrap();
        }
        store.delete(&sid(3)).unwrap();
        store.checkpoint().unwrap();
        store.enroll(&enrollment(7, 60)).unwrap();
        store.enroll(&enrollment(7, 61)).unwrap();
    }
    let copy = |name: &str| {
        let d = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
        let target = files(d.path(), name).pop().unwrap();
        (d, target)
    };
    let expect_corrupt = |d: &Path, what: &str| match Store::open(d, options()) {
        Err(GalleryError::Corrupt { path, reason }) => {
            assert!(!reason.is_empty());
            eprintln!("{what}: {} — {reason}", path.display());
        }
        Err(e) => panic!("{what}: unexpected error {e}"),
        Ok(_) => panic!("{what}: a damaged store opened"),
    };

    // Truncated segment.
    let (d, seg) = copy("seg-");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 100).unwrap();
    expect_corrupt(d.path(), "truncated segment");

    // One flipped bit inside a segment's vector block.
    let (d, seg) = copy("seg-");
    let mut b = std::fs::read(&seg).unwrap();
    b[100] ^= 0x01;
    std::fs::write(&seg, &b).unwrap();
    expect_corrupt(d.path(), "flipped bit in segment");

    // Damaged manifest.
    let (d, m) = copy("MANIFEST");
    let mut b = std::fs::read(&m).unwrap();
    let n = b.len() / 2;
    b[n] ^= 0x20;
    std::fs::write(&m, &b).unwrap();
    expect_corrupt(d.path(), "damaged manifest");

    // Damaged tombstones.
    let (d, del) = copy("del-");
    std::fs::write(&del, b"BMDEL\0\0\x01garbage").unwrap();
    expect_corrupt(d.path(), "damaged tombstones");

    // Damage in the middle of the WAL (a valid frame follows it).
    let (d, wal) = copy("wal-");
    let mut b = std::fs::read(&wal).unwrap();
    b[16 + 30] ^= 0xff;
    std::fs::write(&wal, &b).unwrap();
    expect_corrupt(d.path(), "damaged WAL");

    // Missing manifest beside data files.
    let (d, m) = copy("MANIFEST");
    std::fs::remove_file(m).unwrap();
    expect_corrupt(d.path(), "missing manifest");

    // The undamaged original still opens with everything.
    let store = open(dir.path());
    assert_eq!(store.len(), 51);
}

#[test]
fn leftovers_of_an_interrupted_checkpoint_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.enroll(&enrollment(7, 1)).unwrap();
    }
    // What a checkpoint killed before its manifest swap leaves behind.
    for f in ["seg-00-00000009.bms", "seg-00-00000009.tmp", "wal-00000002.log", "MANIFEST.tmp"] {
        std::fs::write(dir.path().join(f), b"partial").unwrap();
    }
    let store = open(dir.path());
    let mut removed = store.recovery().leftover_files_removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["MANIFEST.tmp", "seg-00-00000009.bms", "seg-00-00000009.tmp", "wal-00000002.log"]
    );
    assert_eq!(store.len(), 1);
}

#[test]
fn a_read_only_snapshot_next_to_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let writer = open(dir.path());
    for i in 0..50 {
        writer.enroll(&enrollment(7, i)).unwrap();
    }
    writer.checkpoint().unwrap();
    writer.enroll(&enrollment(7, 50)).unwrap(); // only in the WAL
    writer.delete(&sid(3)).unwrap();
    let ro = Store::open_read_only(dir.path(), options()).unwrap();
    assert_eq!(ro.len(), 50);
    assert!(ro.contains(&sid(50)) && !ro.contains(&sid(3)));
    assert_eq!(top1(&ro, 10), Some(sid(10).to_string()));
    assert!(matches!(ro.enroll(&enrollment(7, 99)), Err(GalleryError::ReadOnly)));
    assert!(matches!(ro.delete(&sid(1)), Err(GalleryError::ReadOnly)));
    assert!(matches!(ro.checkpoint(), Err(GalleryError::ReadOnly)));
    // The writer is unaffected and its files unchanged by the reader.
    writer.enroll(&enrollment(7, 51)).unwrap();
    drop(writer);
    assert_eq!(open(dir.path()).len(), 51);
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(Store::open_read_only(empty.path(), options()), Err(GalleryError::Config(_))));
}

/// A subject's face and fingers are one record: both survive a reopen, a checkpoint into
/// finger segments, a delete and tombstones, in every order.
#[test]
fn fingers_travel_with_the_face() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 0..40 {
            store.enroll(&enrollment(7, i)).unwrap();
        }
        store.checkpoint().unwrap(); // 0..40 sealed: fp16 segment + finger segment
        for i in 40..60 {
            store.enroll(&enrollment(7, i)).unwrap(); // WAL only
        }
        store.delete(&sid(3)).unwrap(); // sealed finger record deleted
        store.delete(&sid(41)).unwrap(); // unsealed finger record deleted
        let s = store.stats();
        assert_eq!((s.fingers.subjects, s.fingers.fingers), (28, 56));
    }
    for round in 0..3 {
        let store = open(dir.path());
        for i in 0..60 {
            let gone = i == 3 || i == 41;
            assert_eq!(store.contains(&sid(i)), !gone, "round {round}: {i}");
            if !gone {
                assert_eq!(store.fingers(&sid(i)).unwrap(), fingers(7, i), "round {round}: {i}");
                let info = store.get(&sid(i)).unwrap();
                assert_eq!(info.fingers.len(), fingers(7, i).len());
                assert_eq!(info.templates.len(), 1);
            }
        }
        let s = store.stats();
        assert_eq!((s.fingers.subjects, s.fingers.fingers), (28, 56), "round {round}");
        let mut seen = 0;
        for (_, f) in store.finger_record_range(0..store.finger_records()).unwrap() {
            seen += f.len();
        }
        assert_eq!(seen, 56);
        if round == 0 {
            store.checkpoint().unwrap();
        }
    }
    // A subject with fingers only.
    let store = open(dir.path());
    let mut e = enrollment(7, 101);
    e.templates.clear();
    store.enroll(&e).unwrap();
    store.checkpoint().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.fingers(&sid(101)).unwrap(), fingers(7, 101));
    assert!(store.get(&sid(101)).unwrap().templates.is_empty());
}

/// A hook that journals each write as a line `<seq> <subject>` and counts checkpoints.
#[derive(Debug, Default)]
struct LineJournal {
    applied: parking_lot::Mutex<Vec<u8>>,
    checkpoints: std::sync::atomic::AtomicUsize,
    refuse_checkpoint: std::sync::atomic::AtomicBool,
}

impl biomatch_gallery::CommitHook for LineJournal {
    fn before_log(
        &self,
        group: &[biomatch_gallery::Committed<'_>],
    ) -> Result<Option<Vec<u8>>, String> {
        let lines: String =
            group.iter().map(|c| format!("{} {}\n", c.seq, c.op.subject())).collect();
        Ok(Some(lines.into_bytes()))
    }
    fn applied(&self, _: &[biomatch_gallery::Committed<'_>], journal: Option<&[u8]>) {
        self.applied.lock().extend_from_slice(journal.expect("journal bytes are handed back"));
    }
    fn failed(&self, _: &[biomatch_gallery::Committed<'_>], _: &GalleryError) {}
    fn before_checkpoint(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.refuse_checkpoint.load(SeqCst) {
            return Err("journal not durable".into());
        }
        self.checkpoints.fetch_add(1, SeqCst);
        Ok(())
    }
}

fn recovered(store: &Store) -> Vec<u8> {
    let mut got = Vec::new();
    store
        .recover_journal(|blobs| {
            got = blobs.concat();
            Ok(())
        })
        .unwrap();
    got
}

#[test]
fn journal_bytes_are_logged_with_their_writes_and_recovered_until_a_hook_confirms_them() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let mut o = options();
    o.auto_checkpoint = false;
    let expected = "1 P000000\n2 P000001\n3 P000000\n";
    {
        let store = Store::open(dir.path(), o.clone()).unwrap();
        let hook = std::sync::Arc::new(LineJournal::default());
        store.set_commit_hook(hook.clone());
        store.enroll(&enrollment(7, 0)).unwrap();
        store.enroll(&enrollment(7, 1)).unwrap();
        store.delete(&sid(0)).unwrap();
        // A refused write logs no journal bytes.
        assert!(store.delete(&sid(0)).is_err());
        assert_eq!(String::from_utf8(hook.applied.lock().clone()).unwrap(), expected);
        // "Crash": the hook never confirmed anything.
    }
    {
        // Reopened without a hook: the log's journal bytes come back, and a checkpoint (which
        // no hook confirms) carries them into the new log.
        let store = Store::open(dir.path(), o.clone()).unwrap();
        store.checkpoint().unwrap();
        assert_eq!(store.stats().subjects, 1);
    }
    {
        let store = Store::open(dir.path(), o.clone()).unwrap();
        assert_eq!(String::from_utf8(recovered(&store)).unwrap(), expected);
        // Taken once: a second call has nothing to hand over.
        assert!(recovered(&store).is_empty());
        // A hook that cannot make its journal durable stops the checkpoint; the log keeps all.
        let hook = std::sync::Arc::new(LineJournal::default());
        store.set_commit_hook(hook.clone());
        store.enroll(&enrollment(7, 2)).unwrap();
        hook.refuse_checkpoint.store(true, SeqCst);
        assert!(matches!(store.checkpoint(), Err(GalleryError::Journal(_))));
        hook.refuse_checkpoint.store(false, SeqCst);
        store.checkpoint().unwrap();
        assert_eq!(hook.checkpoints.load(SeqCst), 1);
        // Nothing journaled since: the next checkpoint does not ask.
        store.checkpoint().unwrap();
        assert_eq!(hook.checkpoints.load(SeqCst), 1);
    }
    // Everything was confirmed (recovered, then checkpointed through the hook): nothing is left.
    let store = Store::open(dir.path(), o).unwrap();
    assert!(recovered(&store).is_empty());
    assert!(store.contains(&sid(1)) && store.contains(&sid(2)) && !store.contains(&sid(0)));
}
