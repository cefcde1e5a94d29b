//! Exact search equals a brute-force f64 reference.

use crate::common::*;
use biomatch_core::{Modality, SubjectId};
use biomatch_gallery::{IdentifyOptions, Probe};

/// Reference: score every enrolled subject in f64 against the fp16-rounded stored template.
fn brute_force(
    gallery: &[(SubjectId, Vec<f32>)],
    probe: &[f32],
    k: usize,
    threshold: Option<f32>,
) -> Vec<(SubjectId, f64)> {
    let mut all: Vec<(SubjectId, f64)> = gallery
        .iter()
        .map(|(s, v)| {
            (s.clone(), v.iter().zip(probe).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum())
        })
        .filter(|(_, s)| threshold.is_none_or(|t| *s >= f64::from(t) - 1e-6))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

#[test]
fn identify_equals_brute_force() {
    let seed = 4242;
    eprintln!("exact-search test seed: {seed}");
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.checkpoint_wal_bytes = 256 * 1024; // mix sealed segments and WAL rows
    let store = biomatch_gallery::Store::open(dir.path(), opts).unwrap();
    let n = 6000u64;
    let batch: Vec<_> = (0..n).map(|i| enrollment(seed, i)).collect();
    for chunk in batch.chunks(500) {
        for r in store.enroll_batch(chunk).unwrap() {
            r.unwrap();
        }
    }
    for i in (0..n).step_by(13) {
        store.delete(&sid(i)).unwrap();
    }
    assert!(store.stats().columns[0].segments >= 1);
    let gallery: Vec<(SubjectId, Vec<f32>)> = (0..n)
        .filter(|i| i % 13 != 0)
        .map(|i| (sid(i), store.template(&sid(i), Modality::Face).unwrap().1))
        .collect();

    // Probes: noisy copies of enrolled subjects, deleted ones, and strangers.
    let probes: Vec<Probe> = (0..60u64)
        .map(|j| {
            let base = raw(seed, j * 97 % n);
            let noise = raw(seed + 1, j);
            let v: Vec<f32> = base.iter().zip(&noise).map(|(a, b)| a + 0.6 * b).collect();
            Probe {
                modality: Modality::Face,
                template: biomatch_core::Template::new(model(), DIM, v).unwrap(),
            }
        })
        .chain((0..20).map(|j| probe(seed + 2, j)))
        .collect();
    for (k, threshold) in [(1, None), (10, None), (50, Some(0.3f32))] {
        let o = IdentifyOptions { max_results: k, threshold, subset: None };
        let got = store.identify_batch(&probes, &o).unwrap();
        for (p, g) in probes.iter().zip(got) {
            let want = brute_force(&gallery, p.template.vector(), k, threshold);
            assert_eq!(g.len(), want.len(), "k={k} t={threshold:?}");
            for (c, (s, score)) in g.iter().zip(&want) {
                assert_eq!(&c.subject_id, s, "k={k} t={threshold:?}");
                assert!((f64::from(c.score) - score).abs() < 1e-5, "{} vs {score}", c.score);
            }
            // The single-probe path agrees with the batch path.
            assert_eq!(store.identify(p, &o).unwrap(), g);
        }
    }

    // Gallery-restricted identify: only the subset is searched, unknown ids are skipped.
    let subset: Vec<SubjectId> = (0..300).map(|i| sid(i * 3)).chain([sid(n + 5)]).collect();
    let restricted: Vec<(SubjectId, Vec<f32>)> =
        gallery.iter().filter(|(s, _)| subset.contains(s)).cloned().collect();
    let o = IdentifyOptions { max_results: 20, threshold: None, subset: Some(subset) };
    for p in &probes {
        let g = store.identify(p, &o).unwrap();
        let want = brute_force(&restricted, p.template.vector(), 20, None);
        let got: Vec<_> = g.iter().map(|c| c.subject_id.clone()).collect();
        let want: Vec<_> = want.into_iter().map(|w| w.0).collect();
        assert_eq!(got, want);
    }

    // 1:1 verify equals the reference score.
    for (s, v) in gallery.iter().step_by(500) {
        let p = Probe {
            modality: Modality::Face,
            template: biomatch_core::Template::new(model(), DIM, v.clone()).unwrap(),
        };
        let score = store.verify(s, &p).unwrap();
        let want: f64 =
            v.iter().zip(p.template.vector()).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        assert!((f64::from(score) - want).abs() < 1e-5);
    }
}
