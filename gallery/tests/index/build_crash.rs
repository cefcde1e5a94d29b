//! A build killed with SIGKILL at any moment leaves the previous generation serving.
//!
//! The builder runs in a child process (this test binary re-executed on the ignored test
//! `build_crash::builder_process`, `biomatch_testkit::crash`), reporting `BUILT <generation>`
//! after each completed build.

use crate::common::*;
use biomatch_datasets::parse_subject_id;
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{AnnParams, Gallery, IdentifyOptions, SearchMode, Store};
use biomatch_testkit::crash::{self, CrashTest};
use std::sync::Arc;

const DIR_ENV: &str = "BIOMATCH_BUILD_CRASH_DIR";
const N: u64 = 30_000;
const SEED: u64 = 31;

#[test]
#[ignore = "run by build_crash::killed_builds_leave_a_serving_generation in a child process"]
fn builder_process() {
    let dir = crash::child_env(DIR_ENV);
    let store = Store::open(&dir, options()).unwrap();
    loop {
        let r = ann::build(&store, &model(), &BuildParams { shards: 4, ..BuildParams::default() })
            .unwrap();
        crash::report(format_args!("BUILT {}", r.manifest.generation));
    }
}

#[test]
fn killed_builds_leave_a_serving_generation() {
    let dir = tempfile::tempdir().unwrap();
    let pop = population(N, SEED, None);
    {
        let g = filled(dir.path(), &pop);
        ann::build(g.store(), &model(), &BuildParams { shards: 4, ..BuildParams::default() })
            .unwrap();
    }
    let probes: Vec<_> = pop.probes(50, 0, 3).unwrap().mated;
    let mut child =
        CrashTest::new("build_crash::builder_process", crash::seed_from_env("build-crash test", 7));
    child.env(DIR_ENV, dir.path()).kill_after_ms(150..1500);
    let mut last_built = 1u64;
    for round in 0..6 {
        for r in child.run_once() {
            if let ("BUILT", Some(g)) = (r.tag(), r.arg(0)) {
                last_built = g;
            }
        }
        let g = Gallery::new(Arc::new(Store::open(dir.path(), options()).unwrap()));
        let idx = g
            .load_index(&model(), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: no generation loads after the kill: {e}"))
            .expect("a generation is current");
        let gen = idx.manifest.generation;
        // The kill may land after the CURRENT swap but before the child printed.
        assert!(
            gen == last_built || gen == last_built + 1,
            "round {round}: generation {gen} after {last_built}"
        );
        assert_eq!(idx.manifest.vectors, N);
        let opts = IdentifyOptions { max_results: 5, ..Default::default() };
        let mated: Vec<_> = probes.iter().map(|p| probe(p.vector.clone())).collect();
        let (res, path) =
            g.identify_batch(&mated, &opts, SearchMode::Index(AnnParams::default())).unwrap();
        assert_eq!(path.generation, Some(gen));
        let found = res
            .iter()
            .zip(&probes)
            .filter(|(c, p)| {
                c.first().and_then(|c| parse_subject_id(&c.subject_id)) == Some(p.identity)
            })
            .count();
        assert!(found >= 49, "round {round}: only {found}/50 mates found on generation {gen}");
        eprintln!("round {round}: killed after generation {last_built}; serving generation {gen}");
        // What is current on disk is the truth the next round starts from (the child may have
        // swapped CURRENT without living to print it).
        last_built = gen;
    }
}
