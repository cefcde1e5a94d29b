//! Integration tests of the finger template store: round trips, persistence, compaction, torn and
//! damaged logs, bad input, locking, and a SIGKILL crash test.
//!
//! The crash test re-executes this binary on the ignored test `crash_child_process`, which enrolls
//! and deletes in a loop and prints `ACK <i> <seq>` after each acknowledged enrollment,
//! `TRYDEL <i>` before a delete and `DEL <i> <seq>` after an acknowledged one.

use biomatch_core::finger::{FingerTemplate, Minutia, MinutiaKind};
use biomatch_core::{FingerPosition, Modality, SubjectId};
use biomatch_gallery::finger_store::DEFAULT_COMPACT_MIN_DEAD_BYTES;
use biomatch_gallery::{FingerStore, FingerStoreOptions, GalleryError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const LOG: &str = "fingers.log";

fn sid(i: u64) -> SubjectId {
    SubjectId::new(format!("F{i:06}")).unwrap()
}

/// A deterministic, valid finger template for `(seed, i, position)` with `n` minutiae.
fn finger(seed: u64, i: u64, position: u8, n: usize) -> FingerTemplate {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 4) ^ position as u64,
    );
    let (w, h) = (rng.random_range(200..=800u16), rng.random_range(200..=1000u16));
    let minutiae = (0..n)
        .map(|_| Minutia {
            x: rng.random_range(0..w),
            y: rng.random_range(0..h),
            angle: rng.random(),
            kind: [MinutiaKind::Other, MinutiaKind::RidgeEnding, MinutiaKind::Bifurcation]
                [rng.random_range(0..3)],
            quality: rng.random_range(0..=100),
        })
        .collect();
    let pos = Some(FingerPosition::new(position).unwrap());
    FingerTemplate::new(w, h, 197, pos, rng.random_range(0..=100), minutiae).unwrap()
}

/// The fingers subject `i` is enrolled with: 1..=10 of them, at varying positions.
fn fingers(seed: u64, i: u64) -> Vec<FingerTemplate> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ i.wrapping_mul(31));
    let count = rng.random_range(1..=10usize);
    let first = rng.random_range(1..=10u8);
    (0..count as u8)
        .map(|k| finger(seed, i, (first - 1 + k) % 10 + 1, rng.random_range(0..=60)))
        .collect()
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG)
}

fn small_compaction(bytes: u64) -> FingerStoreOptions {
    FingerStoreOptions { compact_min_dead_bytes: bytes }
}

#[test]
fn enroll_get_delete_reenroll() {
    let dir = tempfile::tempdir().unwrap();
    let store = FingerStore::open(dir.path()).unwrap();
    assert!(store.is_empty());
    assert_eq!(store.last_seq(), 0);

    let a = fingers(1, 1);
    let b = fingers(1, 2);
    assert_eq!(store.enroll(&sid(1), &a).unwrap(), 1);
    assert_eq!(store.enroll(&sid(2), &b).unwrap(), 2);
    assert_eq!(&*store.get(&sid(1)).unwrap(), a.as_slice());
    assert_eq!(&*store.get(&sid(2)).unwrap(), b.as_slice());
    assert!(store.contains(&sid(1)) && !store.contains(&sid(3)));
    assert_eq!(store.get(&sid(3)), None);
    assert_eq!(store.len(), 2);

    assert_eq!(store.delete(&sid(1)).unwrap(), 3);
    assert_eq!(store.get(&sid(1)), None);
    assert!(!store.contains(&sid(1)));
    assert_eq!(store.len(), 1);

    // Re-enrollment after a delete, with different fingers.
    let a2 = fingers(2, 1);
    assert_ne!(a, a2);
    assert_eq!(store.enroll(&sid(1), &a2).unwrap(), 4);
    assert_eq!(&*store.get(&sid(1)).unwrap(), a2.as_slice());
    assert_eq!(store.last_seq(), 4);

    // The snapshot is in enrollment order and shares the stored templates.
    let snap = store.snapshot();
    assert_eq!(snap.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), vec![sid(2), sid(1)]);
    assert!(Arc::ptr_eq(&snap[1].1, &store.get(&sid(1)).unwrap()));
    let stats = store.stats();
    assert_eq!((stats.subjects, stats.fingers, stats.last_seq), (2, a2.len() + b.len(), 4));
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let expected: BTreeMap<SubjectId, Vec<FingerTemplate>>;
    {
        let store = FingerStore::open(dir.path()).unwrap();
        for i in 0..20 {
            store.enroll(&sid(i), &fingers(3, i)).unwrap();
        }
        for i in (0..20).step_by(3) {
            store.delete(&sid(i)).unwrap();
        }
        store.enroll(&sid(0), &fingers(4, 0)).unwrap();
        expected = store.snapshot().into_iter().map(|(s, f)| (s, f.to_vec())).collect();
        assert_eq!(store.last_seq(), 28);
    }
    let store = FingerStore::open(dir.path()).unwrap();
    let got: BTreeMap<_, _> = store.snapshot().into_iter().map(|(s, f)| (s, f.to_vec())).collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 20 - 7 + 1);
    assert_eq!(&*store.get(&sid(0)).unwrap(), fingers(4, 0).as_slice());
    assert_eq!(store.last_seq(), 28);
    assert_eq!(store.recovery().records_replayed, 28);
    assert_eq!(store.recovery().torn_bytes_discarded, 0);
    // Writes go on from the recovered sequence number.
    assert_eq!(store.enroll(&sid(100), &fingers(3, 100)).unwrap(), 29);
}

#[test]
fn compact_keeps_exactly_the_live_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let store = FingerStore::open(dir.path()).unwrap();
    for i in 0..30 {
        store.enroll(&sid(i), &fingers(5, i)).unwrap();
    }
    for i in 0..30 {
        if i % 3 != 0 {
            store.delete(&sid(i)).unwrap();
        }
    }
    // The last write is a delete: its sequence number must survive the compaction.
    let last = store.last_seq();
    let before = store.stats();
    assert!(before.log_bytes > 2 * before.live_bytes, "{before:?}");
    store.compact().unwrap();
    let after = store.stats();
    assert_eq!(after.live_bytes, before.live_bytes);
    // Header + live frames + a 21-byte sequence mark.
    assert_eq!(after.log_bytes, 16 + after.live_bytes + 21);
    assert_eq!(std::fs::metadata(log_path(dir.path())).unwrap().len(), after.log_bytes);
    assert_eq!(store.last_seq(), last);
    let live: Vec<SubjectId> = (0..30).filter(|i| i % 3 == 0).map(sid).collect();
    assert_eq!(store.snapshot().into_iter().map(|(s, _)| s).collect::<Vec<_>>(), live);

    // Writes after the compaction land in the new log.
    assert_eq!(store.enroll(&sid(1), &fingers(6, 1)).unwrap(), last + 1);
    store.delete(&sid(0)).unwrap();
    drop(store);

    let store = FingerStore::open(dir.path()).unwrap();
    assert_eq!(store.last_seq(), last + 2);
    let mut want: BTreeMap<SubjectId, Vec<FingerTemplate>> =
        (3..30).step_by(3).map(|i| (sid(i), fingers(5, i))).collect();
    want.insert(sid(1), fingers(6, 1));
    let got: BTreeMap<_, _> = store.snapshot().into_iter().map(|(s, f)| (s, f.to_vec())).collect();
    assert_eq!(got, want);
    assert!(store.recovery().leftover_files_removed.is_empty());
    let files: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, BTreeSet::from(["LOCK".to_owned(), LOG.to_owned()]));
}

#[test]
fn compact_of_an_empty_store_keeps_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = FingerStore::open(dir.path()).unwrap();
    store.compact().unwrap();
    assert_eq!(store.stats().log_bytes, 16);
    store.enroll(&sid(1), &fingers(7, 1)).unwrap();
    store.delete(&sid(1)).unwrap();
    store.compact().unwrap();
    drop(store);
    let store = FingerStore::open(dir.path()).unwrap();
    assert!(store.is_empty());
    assert_eq!(store.last_seq(), 2);
    assert_eq!(store.enroll(&sid(1), &fingers(7, 1)).unwrap(), 3);
}

#[test]
fn leftover_compaction_file_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FingerStore::open(dir.path()).unwrap();
        store.enroll(&sid(1), &fingers(8, 1)).unwrap();
    }
    // A compaction killed before its rename: a partial temporary file next to the intact log.
    std::fs::write(dir.path().join("fingers.log.tmp"), b"BMFNG\0\0\x01partial").unwrap();
    let ro = FingerStore::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.len(), 1);
    assert!(dir.path().join("fingers.log.tmp").exists(), "read-only open must not remove files");
    drop(ro);
    let store = FingerStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery().leftover_files_removed, vec!["fingers.log.tmp".to_owned()]);
    assert!(!dir.path().join("fingers.log.tmp").exists());
    assert_eq!(&*store.get(&sid(1)).unwrap(), fingers(8, 1).as_slice());
}

#[test]
fn automatic_compaction_bounds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = FingerStore::open_with(dir.path(), small_compaction(8 << 10)).unwrap();
    for i in 0..5 {
        store.enroll(&sid(i), &fingers(9, i)).unwrap();
    }
    let mut shrank = 0;
    let mut prev = store.stats().log_bytes;
    // Churn one subject: every cycle adds dead bytes.
    for round in 0..80u64 {
        store.enroll(&sid(99), &fingers(10, round)).unwrap();
        store.delete(&sid(99)).unwrap();
        let s = store.stats();
        let dead = s.log_bytes - 16 - s.live_bytes;
        assert!(dead <= s.live_bytes.max(8 << 10) + 21, "round {round}: {s:?} left uncompacted");
        if s.log_bytes < prev {
            shrank += 1;
        }
        prev = s.log_bytes;
    }
    assert!(shrank >= 3, "the log should have been compacted several times ({shrank})");
    let last = store.last_seq();
    drop(store);
    let store = FingerStore::open(dir.path()).unwrap();
    assert_eq!(store.last_seq(), last);
    assert_eq!(store.len(), 5);
    for i in 0..5 {
        assert_eq!(&*store.get(&sid(i)).unwrap(), fingers(9, i).as_slice());
    }
}

#[test]
fn automatic_compaction_waits_for_the_default_threshold() {
    assert_eq!(FingerStoreOptions::default().compact_min_dead_bytes, 4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let store = FingerStore::open(dir.path()).unwrap();
    // Ten fingers of 255 minutiae: about 15 KiB per enrollment.
    let big: Vec<FingerTemplate> = (1..=10).map(|p| finger(11, 0, p, 255)).collect();
    store.enroll(&sid(0), &big).unwrap();
    let mut compacted_at = None;
    for round in 0..400u64 {
        let before = store.stats();
        store.enroll(&sid(1), &big).unwrap();
        store.delete(&sid(1)).unwrap();
        let after = store.stats();
        if after.log_bytes < before.log_bytes {
            compacted_at = Some((round, before.log_bytes - 16 - before.live_bytes));
            break;
        }
    }
    let (round, dead_before) = compacted_at.expect("no automatic compaction after 400 cycles");
    // It fired on the first write that took the dead bytes past 4 MiB, not earlier.
    assert!(dead_before <= DEFAULT_COMPACT_MIN_DEAD_BYTES, "round {round}: {dead_before}");
    assert!(
        dead_before + 2 * 15_500 > DEFAULT_COMPACT_MIN_DEAD_BYTES,
        "round {round}: {dead_before}"
    );
    assert_eq!(store.stats().log_bytes, 16 + store.stats().live_bytes + 21);
    assert_eq!(&*store.get(&sid(0)).unwrap(), big.as_slice());
}

#[test]
fn torn_tail_is_cut_and_complete_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut ends = vec![];
    {
        let store = FingerStore::open(dir.path()).unwrap();
        for i in 0..6 {
            store.enroll(&sid(i), &fingers(12, i)).unwrap();
            ends.push(store.stats().log_bytes);
        }
    }
    let path = log_path(dir.path());
    // Cut inside the last frame: its header, its payload, one byte short.
    for cut in [ends[4] + 5, ends[4] + 40, ends[5] - 1] {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(cut).unwrap();
        drop(f);

        let ro = FingerStore::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.len(), 5);
        assert_eq!(ro.recovery().torn_bytes_discarded, cut - ends[4]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), cut, "read-only open repaired");
        drop(ro);

        let store = FingerStore::open(dir.path()).unwrap();
        assert_eq!(store.recovery().torn_bytes_discarded, cut - ends[4]);
        assert_eq!(store.recovery().records_replayed, 5);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ends[4], "torn tail not cut off");
        for i in 0..5 {
            assert_eq!(&*store.get(&sid(i)).unwrap(), fingers(12, i).as_slice());
        }
        assert!(!store.contains(&sid(5)));
        // The store goes on writing after the repair, and the next open sees a clean log.
        assert_eq!(store.enroll(&sid(5), &fingers(12, 5)).unwrap(), 6);
        drop(store);
        let store = FingerStore::open(dir.path()).unwrap();
        assert_eq!(store.recovery().torn_bytes_discarded, 0);
        assert_eq!(store.len(), 6);
        assert_eq!(store.stats().log_bytes, ends[5]);
    }
}

#[test]
fn damage_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut ends = vec![16];
    {
        let store = FingerStore::open(dir.path()).unwrap();
        for i in 0..4 {
            store.enroll(&sid(i), &fingers(13, i)).unwrap();
            ends.push(store.stats().log_bytes);
        }
    }
    let path = log_path(dir.path());
    let clean = std::fs::read(&path).unwrap();
    // A flipped byte in the frame header, the payload and a minutia of the second record.
    for at in [ends[1] + 1, ends[1] + 20, ends[2] - 3] {
        let mut bytes = clean.clone();
        bytes[at as usize] ^= 0x5a;
        std::fs::write(&path, &bytes).unwrap();
        let err = FingerStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, GalleryError::Corrupt { .. }), "byte {at}: {err}");
        assert!(err.to_string().contains("damaged in the middle"), "{err}");
        let err = FingerStore::open_read_only(dir.path()).unwrap_err();
        assert!(matches!(err, GalleryError::Corrupt { .. }), "byte {at}: {err}");
        // Nothing was cut off or rewritten.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
    // A bad header is refused too.
    let mut bytes = clean.clone();
    bytes[0] = b'X';
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(FingerStore::open(dir.path()), Err(GalleryError::Corrupt { .. })));
    std::fs::write(&path, &clean).unwrap();
    assert_eq!(FingerStore::open(dir.path()).unwrap().len(), 4);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FingerStore::open(dir.path()).unwrap();
    let ok = fingers(14, 1);
    store.enroll(&sid(1), &ok).unwrap();
    let log_len = store.stats().log_bytes;

    let err = store.enroll(&sid(2), &[]).unwrap_err();
    assert!(matches!(err, GalleryError::EmptyEnrollment), "{err}");

    let dup = vec![finger(14, 2, 3, 10), finger(14, 2, 7, 10), finger(14, 3, 3, 5)];
    let err = store.enroll(&sid(2), &dup).unwrap_err();
    assert!(
        matches!(err, GalleryError::DuplicateModality(Modality::Finger(p)) if p.code() == 3),
        "{err}"
    );

    let mut missing = vec![finger(14, 2, 1, 10), finger(14, 2, 2, 10)];
    missing[1].position = None;
    let err = store.enroll(&sid(2), &missing).unwrap_err();
    assert!(matches!(err, GalleryError::MissingFingerPosition { index: 1 }), "{err}");

    // Deserialised templates bypass FingerTemplate::new; the store re-validates them.
    let mut invalid = vec![finger(14, 2, 4, 10)];
    invalid[0].minutiae[3].y = invalid[0].height;
    let err = store.enroll(&sid(2), &invalid).unwrap_err();
    assert!(matches!(err, GalleryError::InvalidFinger { index: 0, .. }), "{err}");
    let mut invalid = vec![finger(14, 2, 4, 10), finger(14, 2, 5, 3)];
    invalid[1].resolution_ppcm = 3;
    assert!(matches!(
        store.enroll(&sid(2), &invalid),
        Err(GalleryError::InvalidFinger { index: 1, .. })
    ));

    let err = store.enroll(&sid(1), &fingers(14, 9)).unwrap_err();
    assert!(matches!(&err, GalleryError::AlreadyEnrolled(s) if *s == sid(1)), "{err}");
    let err = store.delete(&sid(2)).unwrap_err();
    assert!(matches!(&err, GalleryError::UnknownSubject(s) if *s == sid(2)), "{err}");

    for e in [GalleryError::EmptyEnrollment, GalleryError::MissingFingerPosition { index: 0 }] {
        assert!(e.is_user_error());
    }
    // Nothing was logged or applied.
    assert_eq!(store.stats().log_bytes, log_len);
    assert_eq!(store.last_seq(), 1);
    assert_eq!(store.len(), 1);
    assert_eq!(&*store.get(&sid(1)).unwrap(), ok.as_slice());
    assert!(!store.contains(&sid(2)));
}

#[test]
fn a_locked_directory_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = FingerStore::open(dir.path()).unwrap();
    store.enroll(&sid(1), &fingers(15, 1)).unwrap();
    let err = FingerStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, GalleryError::Locked(_)), "{err}");
    // A read-only reader takes no lock and sees the acknowledged write.
    assert_eq!(FingerStore::open_read_only(dir.path()).unwrap().len(), 1);
    drop(store);
    assert_eq!(FingerStore::open(dir.path()).unwrap().len(), 1);
}

#[test]
fn read_only_open_refuses_writes_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("fingers");
    let err = FingerStore::open_read_only(&missing).unwrap_err();
    assert!(matches!(err, GalleryError::Config(_)), "{err}");
    assert!(!missing.exists(), "read-only open created the directory");

    {
        let store = FingerStore::open(&missing).unwrap();
        store.enroll(&sid(1), &fingers(16, 1)).unwrap();
        store.enroll(&sid(2), &fingers(16, 2)).unwrap();
        store.delete(&sid(2)).unwrap();
    }
    let before = std::fs::read(log_path(&missing)).unwrap();
    let ro = FingerStore::open_read_only(&missing).unwrap();
    assert_eq!(ro.len(), 1);
    assert_eq!(&*ro.get(&sid(1)).unwrap(), fingers(16, 1).as_slice());
    assert_eq!(ro.last_seq(), 3);
    assert!(matches!(ro.enroll(&sid(3), &fingers(16, 3)), Err(GalleryError::ReadOnly)));
    assert!(matches!(ro.enroll(&sid(1), &fingers(16, 3)), Err(GalleryError::ReadOnly)));
    assert!(matches!(ro.delete(&sid(1)), Err(GalleryError::ReadOnly)));
    assert!(matches!(ro.compact(), Err(GalleryError::ReadOnly)));
    assert_eq!(ro.len(), 1);
    assert_eq!(std::fs::read(log_path(&missing)).unwrap(), before);
    assert_eq!(ro.stats().log_bytes, before.len() as u64);
}

#[test]
fn concurrent_writers_and_readers() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FingerStore>();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FingerStore::open_with(dir.path(), small_compaction(16 << 10)).unwrap());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let store = &store;
            s.spawn(move || {
                for k in 0..10 {
                    let i = t * 100 + k;
                    store.enroll(&sid(i), &fingers(17, i)).unwrap();
                    if k % 2 == 1 {
                        store.delete(&sid(i - 1)).unwrap();
                    }
                }
            });
        }
        s.spawn(|| {
            for _ in 0..50 {
                // Every snapshot is whole: each subject holds exactly what was enrolled for it.
                for (s, f) in store.snapshot() {
                    let i: u64 = s.as_str()[1..].parse().unwrap();
                    assert_eq!(&*f, fingers(17, i).as_slice());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
    });
    assert_eq!(store.len(), 20);
    assert_eq!(store.last_seq(), 60);
    drop(store);
    let store = FingerStore::open(dir.path()).unwrap();
    let want: Vec<SubjectId> =
        (0..4).flat_map(|t| (1..10).step_by(2).map(move |k| sid(t * 100 + k))).collect();
    let mut got: Vec<SubjectId> = store.snapshot().into_iter().map(|(s, _)| s).collect();
    got.sort();
    assert_eq!(got, want);
}

// ---- crash test ----

const DIR_ENV: &str = "BIOMATCH_FINGER_CRASH_DIR";
const START_ENV: &str = "BIOMATCH_FINGER_CRASH_START";
const CRASH_SEED: u64 = 23;

fn child_options() -> FingerStoreOptions {
    // Compact every few dozen records, so kills also land inside compactions.
    small_compaction(8 << 10)
}

/// The writer run in the child process (ignored in a normal test run).
#[test]
#[ignore = "run by kill_writer_repeatedly in a child process"]
fn crash_child_process() {
    let dir = std::env::var(DIR_ENV).expect("child needs a store directory");
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let store = FingerStore::open_with(Path::new(&dir), child_options()).unwrap();
    let out = std::io::stdout();
    let mut i = start;
    let mut log_bytes = store.stats().log_bytes;
    loop {
        if !store.contains(&sid(i)) {
            let seq = store.enroll(&sid(i), &fingers(CRASH_SEED, i)).unwrap();
            let mut o = out.lock();
            writeln!(o, "ACK {i} {seq}").unwrap();
            o.flush().unwrap();
        }
        // Delete most subjects a little later, so the log keeps dying and compacting.
        if i >= 2 && !i.is_multiple_of(20) && store.contains(&sid(i - 2)) {
            let mut o = out.lock();
            writeln!(o, "TRYDEL {}", i - 2).unwrap();
            o.flush().unwrap();
            let seq = store.delete(&sid(i - 2)).unwrap();
            writeln!(o, "DEL {} {seq}", i - 2).unwrap();
            o.flush().unwrap();
        }
        let now = store.stats().log_bytes;
        if now < log_bytes {
            let mut o = out.lock();
            writeln!(o, "COMPACTED").unwrap();
            o.flush().unwrap();
        }
        log_bytes = now;
        i += 1;
    }
}

#[test]
fn kill_writer_repeatedly() {
    let kill_seed: u64 =
        std::env::var("BIOMATCH_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261123);
    eprintln!("finger crash test seed: {kill_seed} (set BIOMATCH_TEST_SEED to replay)");
    let mut rng = ChaCha8Rng::seed_from_u64(kill_seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked = BTreeSet::new();
    let mut tried_delete = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    let mut max_acked_seq = 0u64;
    let mut next = 0u64;
    let mut compactions = 0;
    let mut killed_in_compaction = 0;
    let rounds = 12;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(START_ENV, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(50..600)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for l in &lines {
            if l == "COMPACTED" {
                compactions += 1;
                continue;
            }
            let mut parts = l.split(' ');
            let (Some(what), Some(Ok(n))) = (parts.next(), parts.next().map(str::parse::<u64>))
            else {
                continue;
            };
            let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
            match what {
                "ACK" => {
                    acked.insert(n);
                    next = next.max(n + 1);
                }
                "TRYDEL" => {
                    tried_delete.insert(n);
                }
                "DEL" => {
                    deleted.insert(n);
                }
                _ => continue,
            }
            max_acked_seq = max_acked_seq.max(seq.unwrap_or(0));
        }

        let store = FingerStore::open_with(dir.path(), child_options())
            .unwrap_or_else(|e| panic!("round {round}: store does not open after SIGKILL: {e}"));
        if !store.recovery().leftover_files_removed.is_empty() {
            killed_in_compaction += 1;
        }
        assert!(
            store.last_seq() >= max_acked_seq,
            "round {round}: last seq {} is behind the acknowledged {max_acked_seq}",
            store.last_seq()
        );
        for &n in &deleted {
            assert!(!store.contains(&sid(n)), "round {round}: acknowledged delete of {n} lost");
        }
        for n in acked.iter().filter(|n| !tried_delete.contains(n)) {
            assert!(store.contains(&sid(*n)), "round {round}: acknowledged enrollment {n} lost");
        }
        // Nothing partial: every subject present holds exactly the fingers written for it.
        let snap = store.snapshot();
        for (s, f) in &snap {
            let n: u64 = s.as_str()[1..].parse().unwrap();
            assert!(n < next + 1, "round {round}: {s} was never written");
            assert_eq!(&**f, fingers(CRASH_SEED, n).as_slice(), "round {round}: {s} is partial");
        }
        assert_eq!(snap.len(), store.len());
        drop(store);
        next += 1; // step past anything durable but unacknowledged
    }
    eprintln!(
        "{rounds} SIGKILLs: {} acknowledged enrollments, {} acknowledged deletes, last seq \
         {max_acked_seq}, {compactions} compactions, {killed_in_compaction} kills inside one",
        acked.len(),
        deleted.len()
    );
    assert!(compactions > 0, "the child should have compacted its log");
    assert!(acked.len() > rounds, "the child should make progress between kills");
}
