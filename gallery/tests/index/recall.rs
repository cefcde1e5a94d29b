//! Index search finds (almost) every mate exact search finds, and its scores are exact.

use crate::common::*;
use biomatch_datasets::parse_subject_id;
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{AnnParams, IdentifyOptions, SearchMode};

fn recall_case(n: u64, seed: u64, families: Option<u64>, probes: usize) {
    eprintln!("recall test: n={n} seed={seed} families={families:?} probes={probes}");
    let dir = tempfile::tempdir().unwrap();
    let pop = population(n, seed, families);
    let g = filled(dir.path(), &pop);
    let report =
        ann::build(g.store(), &model(), &BuildParams { shards: 3, ..BuildParams::default() })
            .unwrap();
    assert_eq!(report.manifest.vectors, n);
    assert_eq!(report.manifest.factory, ann::default_factory(n));
    let idx = g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap();
    eprintln!(
        "index {}: {:.1} bytes/template resident",
        idx.manifest.factory,
        idx.bytes_per_template()
    );

    let set = pop.probes(probes, probes / 4, seed + 100).unwrap();
    let mated: Vec<_> = set.mated.iter().map(|p| probe(p.vector.clone())).collect();
    let nonmated: Vec<_> = set.nonmated.iter().map(|p| probe(p.vector.clone())).collect();
    let opts = IdentifyOptions { max_results: 10, ..Default::default() };
    let (exact, path) = g.identify_batch(&mated, &opts, SearchMode::Exact).unwrap();
    assert_eq!(path.kind, "exact");
    let (approx, path) =
        g.identify_batch(&mated, &opts, SearchMode::Index(AnnParams::default())).unwrap();
    assert_eq!(path.kind, "index");
    assert_eq!(path.generation, Some(1));

    let mut exact_found = 0;
    let mut both = 0;
    for ((e, a), truth) in exact.iter().zip(&approx).zip(&set.mated) {
        let hit = |c: &Vec<biomatch_core::Candidate>| {
            c.iter().any(|c| parse_subject_id(&c.subject_id) == Some(truth.identity))
        };
        if hit(e) {
            exact_found += 1;
            both += usize::from(hit(a));
        }
    }
    let recall = both as f64 / exact_found as f64;
    eprintln!("recall_vs_exact = {both}/{exact_found} = {recall:.4}");
    assert!(
        exact_found as f64 >= 0.95 * probes as f64,
        "exact search itself should find most mates"
    );
    assert!(recall >= 0.995, "recall_vs_exact {recall} < 0.995");

    // Re-rank is exact: every score the index path returns equals the exact 1:1 score.
    for (a, p) in approx.iter().zip(&mated).chain(
        g.identify_batch(&nonmated, &opts, SearchMode::Index(AnnParams::default()))
            .unwrap()
            .0
            .iter()
            .zip(&nonmated),
    ) {
        for c in a {
            let s = g.store().verify(&c.subject_id, p).unwrap();
            assert_eq!(
                c.score.to_bits(),
                s.to_bits(),
                "re-ranked score differs from the exact score"
            );
        }
        assert!(a.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

#[test]
fn index_recall_vs_exact_on_100k() {
    recall_case(100_000, 2026, None, 1000);
}

#[test]
fn index_recall_vs_exact_on_a_clustered_population() {
    // Families of look-alikes crowd the neighbourhood of each mate.
    recall_case(100_000, 77, Some(5_000), 500);
}
