//! Crash safety: a child process enrolls and deletes continuously and is killed with SIGKILL at
//! random moments; after every kill the store must open with every acknowledged write in it.
//!
//! The child is this test binary re-executed on the ignored test `crash::child_process`
//! (`biomatch_testkit::crash`); it reports `ACK <i>` after each acknowledged enrollment,
//! `TRYDEL <i>` before a delete and `DEL <i>` after an acknowledged one.

use crate::common::*;
use biomatch_gallery::{IdentifyOptions, Store, StoreOptions};
use biomatch_testkit::crash::{self, Acknowledged, CrashTest};

const DIR_ENV: &str = "BIOMATCH_CRASH_DIR";
const START_ENV: &str = "BIOMATCH_CRASH_START";
const SEED: u64 = 11;

fn child_options() -> StoreOptions {
    let mut o = options();
    // Checkpoint every few dozen records, so kills also land inside checkpoints.
    o.checkpoint_wal_bytes = 6 * 1024;
    o
}

/// The writer run in the child process (ignored in a normal test run).
#[test]
#[ignore = "run by crash::kill_writer_repeatedly in a child process"]
fn child_process() {
    let dir = crash::child_env(DIR_ENV);
    let start: u64 = crash::child_env(START_ENV).parse().unwrap();
    let store = Store::open(&dir, child_options()).unwrap();
    let mut i = start;
    loop {
        // Paced so the parent's full check after each kill stays cheap; kills still land in
        // every phase (append, fsync, apply, checkpoint) because each round spans many writes.
        std::thread::sleep(std::time::Duration::from_micros(300));
        if i.is_multiple_of(5) {
            let batch: Vec<_> = (i..i + 3)
                .filter(|&j| !store.contains(&sid(j)))
                .map(|j| enrollment(SEED, j))
                .collect();
            let res = store.enroll_batch(&batch).unwrap();
            for (e, r) in batch.iter().zip(res) {
                r.unwrap();
                crash::report(format_args!("ACK {}", &e.subject.as_str()[1..]));
            }
            i += 3;
        } else {
            if !store.contains(&sid(i)) {
                store.enroll(&enrollment(SEED, i)).unwrap();
                crash::report(format_args!("ACK {i}"));
            }
            i += 1;
        }
        if i.is_multiple_of(7) && i >= 3 && store.contains(&sid(i - 3)) {
            crash::report(format_args!("TRYDEL {}", i - 3));
            store.delete(&sid(i - 3)).unwrap();
            crash::report(format_args!("DEL {}", i - 3));
        }
    }
}

#[test]
fn kill_writer_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child =
        CrashTest::new("crash::child_process", crash::seed_from_env("crash test", 20261122));
    child.env(DIR_ENV, dir.path()).kill_after_ms(30..300);
    let mut acks = Acknowledged::default();
    let mut next = 0u64;
    let mut total_reports = 0;
    let rounds = 24;
    for round in 0..rounds {
        let reports = child.env(START_ENV, next.to_string()).run_once();
        total_reports += reports.len();
        for r in &reports {
            acks.record(r);
        }
        next = next.max(acks.next());

        let store = Store::open(dir.path(), child_options())
            .unwrap_or_else(|e| panic!("round {round}: store does not open after SIGKILL: {e}"));
        let must_exist = acks.must_exist();
        for &n in &acks.enrolled {
            if acks.deleted.contains(&n) {
                assert!(!store.contains(&sid(n)), "round {round}: acknowledged delete of {n} lost");
            }
        }
        for &n in &must_exist {
            assert!(store.contains(&sid(n)), "round {round}: acknowledged enrollment {n} lost");
        }
        let probes: Vec<_> = must_exist.iter().map(|&n| probe(SEED, n)).collect();
        let found = store
            .identify_batch(&probes, &IdentifyOptions { max_results: 1, ..Default::default() })
            .unwrap();
        for (&n, c) in must_exist.iter().zip(found) {
            assert_eq!(c[0].subject_id, sid(n), "round {round}: {n} not found by identify");
            assert!(c[0].score > 0.999, "round {round}: {n} scores {}", c[0].score);
        }
        // Nothing half-written: every subject present is whole and is exactly what was written.
        let mut present = 0;
        for n in 0..next + 3 {
            if let Ok(info) = store.get(&sid(n)) {
                present += 1;
                assert_eq!(info.templates.len(), 1, "round {round}: {n} is partial");
                let want = fingers(SEED, n);
                assert_eq!(info.fingers.len(), want.len(), "round {round}: {n} fingers partial");
                assert_eq!(store.fingers(&sid(n)).unwrap(), want, "round {round}: {n} fingers");
                let s = store.verify(&sid(n), &probe(SEED, n)).unwrap();
                assert!(s > 0.999, "round {round}: {n} holds a different template ({s})");
            }
        }
        assert_eq!(present, store.len(), "round {round}: unexpected subjects in the store");
        next += 3; // step past anything durable but unacknowledged
    }
    eprintln!(
        "{rounds} SIGKILLs: {} acknowledged enrollments, {} acknowledged deletes, {total_reports} reports",
        acks.enrolled.len(),
        acks.deleted.len()
    );
    assert!(acks.enrolled.len() > rounds, "the child should make progress between kills");
}
