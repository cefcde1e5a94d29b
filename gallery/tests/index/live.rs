//! Enroll and delete while searching a loaded sealed index.

use crate::common::*;
use biomatch_datasets::subject_id;
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{AnnParams, IdentifyOptions, SearchMode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn live_updates_against_a_loaded_index() {
    let dir = tempfile::tempdir().unwrap();
    let n = 30_000;
    let pop = Arc::new(population(n + 2_000, 9, None));
    let g = {
        let base = population(n, 9, None); // same seed: identities 0..n are the same vectors
        filled(dir.path(), &base)
    };
    ann::build(g.store(), &model(), &BuildParams { shards: 2, ..BuildParams::default() }).unwrap();
    g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap();
    let mode = SearchMode::Index(AnnParams::default());
    let opts = IdentifyOptions { max_results: 5, ..Default::default() };
    let stop = Arc::new(AtomicBool::new(false));

    let searchers: Vec<_> = (0..2u64)
        .map(|t| {
            let (g, stop, pop, opts) = (g.clone(), stop.clone(), pop.clone(), opts.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let (c, path) =
                        g.identify(&probe(pop.sample(i % (n + 2000), 1)), &opts, mode).unwrap();
                    assert_eq!(path.kind, "index");
                    assert!(c.windows(2).all(|w| w[0].score >= w[1].score));
                    i += 7;
                }
            })
        })
        .collect();
    let enroller = {
        let (g, pop, opts) = (g.clone(), pop.clone(), opts.clone());
        std::thread::spawn(move || {
            for i in n..n + 2000 {
                g.store().enroll(&enrollment(i, pop.sample(i, 0))).unwrap();
                let (c, _) = g.identify(&probe(pop.sample(i, 1)), &opts, mode).unwrap();
                assert_eq!(c[0].subject_id, subject_id(i), "new subject {i} not found at once");
            }
        })
    };
    let deleter = {
        let (g, pop, opts) = (g.clone(), pop.clone(), opts.clone());
        std::thread::spawn(move || {
            for i in (0..n).step_by(15) {
                g.store().delete(&subject_id(i)).unwrap();
                let (c, _) = g.identify(&probe(pop.sample(i, 0)), &opts, mode).unwrap();
                assert!(c.iter().all(|c| c.subject_id != subject_id(i)), "deleted {i} returned");
            }
        })
    };
    enroller.join().unwrap();
    deleter.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for s in searchers {
        s.join().unwrap();
    }
    // A rebuild absorbs the growing segment and drops the tombstoned rows physically.
    let report =
        ann::build(g.store(), &model(), &BuildParams { shards: 2, ..BuildParams::default() })
            .unwrap();
    assert_eq!(report.manifest.vectors as usize, g.store().len());
    let idx = g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap();
    assert_eq!(idx.manifest.generation, 2);
    let (c, _) = g.identify(&probe(pop.sample(n + 5, 1)), &opts, mode).unwrap();
    assert_eq!(c[0].subject_id, subject_id(n + 5));
}
