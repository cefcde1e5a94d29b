//! Identify running while other threads enroll and delete.

use crate::common::*;
use biomatch_gallery::IdentifyOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn identify_during_enroll_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.checkpoint_wal_bytes = 64 * 1024; // checkpoints happen during the test too
    let store = Arc::new(biomatch_gallery::Store::open(dir.path(), opts).unwrap());
    for i in 0..2000 {
        store.enroll(&enrollment(5, i)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let opts = IdentifyOptions { max_results: 5, ..Default::default() };

    // Background searchers, checking nothing panics and results are well-formed.
    let searchers: Vec<_> = (0..2)
        .map(|t| {
            let (store, stop, opts) = (store.clone(), stop.clone(), opts.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let c = store.identify(&probe(5, (n * 7 + t) % 3000), &opts).unwrap();
                    assert!(c.len() <= 5);
                    assert!(c.windows(2).all(|w| w[0].score >= w[1].score));
                    n += 1;
                }
                n
            })
        })
        .collect();

    // Writers: one enrolls new subjects and checks each is found right after enroll returns;
    // one deletes and checks a deleted subject is never returned after delete returned.
    let enroller = {
        let (store, opts) = (store.clone(), opts.clone());
        std::thread::spawn(move || {
            for i in 2000..2600 {
                store.enroll(&enrollment(5, i)).unwrap();
                let c = store.identify(&probe(5, i), &opts).unwrap();
                assert_eq!(c[0].subject_id, sid(i), "enrolled subject {i} not found at once");
            }
        })
    };
    let deleter = {
        let (store, opts) = (store.clone(), opts.clone());
        std::thread::spawn(move || {
            for i in (0..2000).step_by(4) {
                store.delete(&sid(i)).unwrap();
                let c = store.identify(&probe(5, i), &opts).unwrap();
                assert!(c.iter().all(|c| c.subject_id != sid(i)), "deleted subject {i} returned");
                assert!(store.verify(&sid(i), &probe(5, i)).is_err());
            }
        })
    };
    enroller.join().unwrap();
    deleter.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let searches: u64 = searchers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(searches > 0);
    assert_eq!(store.len(), 2600 - 500);
    for i in (0..2000).step_by(4) {
        let c = store.identify(&probe(5, i), &opts).unwrap();
        assert!(c.iter().all(|c| c.subject_id != sid(i)));
    }
}

/// Concurrent writers share fsyncs: every write is acknowledged and durable, and the log took
/// fewer appends (one fsync each) than there were writes.
#[test]
fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()));
    let threads = 8;
    let per = 150u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = store.clone();
            s.spawn(move || {
                for k in 0..per {
                    let i = t * 10_000 + k;
                    store.enroll(&enrollment(4, i)).unwrap();
                    if k.is_multiple_of(3) {
                        store.delete(&sid(i)).unwrap();
                    }
                }
            });
        }
    });
    let stats = store.stats();
    let writes = threads * (per + per.div_ceil(3));
    assert_eq!(stats.wal_writes, writes);
    assert!(stats.wal_appends < writes, "{} appends for {writes} writes", stats.wal_appends);
    eprintln!("group commit: {writes} writes in {} appends", stats.wal_appends);
    drop(store);
    let store = open(dir.path());
    for t in 0..threads {
        for k in 0..per {
            let i = t * 10_000 + k;
            assert_eq!(store.contains(&sid(i)), !k.is_multiple_of(3), "subject {i}");
            if !k.is_multiple_of(3) {
                assert_eq!(store.fingers(&sid(i)).unwrap(), fingers(4, i));
            }
        }
    }
}
