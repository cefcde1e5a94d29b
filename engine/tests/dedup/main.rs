//! Enroll-if-unique under concurrency: synthetic face vectors, a calibration table from their
//! own impostor scores, a store in a temporary directory.

use biomatch_core::{CalibrationTable, Modality, ModelId, SubjectId, Template};
use biomatch_engine::{
    DedupParams, Engine, EngineModel, ErrorCode, ModelKind, Samples, SearchKind, Settings,
    UniqueEnrollment,
};
use biomatch_gallery::{Gallery, ModelSpec, Store, StoreOptions};
use biomatch_testkit::{vectors, SplitMix64};
use std::sync::{Arc, Barrier};

const DIM: usize = 64;
const BACKGROUND: usize = 100;
const PAIRS: usize = 16;

fn model() -> ModelId {
    ModelId::new("test-face", "1").unwrap()
}

fn unit(rng: &mut SplitMix64) -> Vec<f32> {
    vectors::unit(rng, DIM)
}

/// Another capture of the same person: cosine ≈ 0.95 to `v`.
fn capture(v: &[f32], rng: &mut SplitMix64) -> Vec<f32> {
    vectors::capture(v, rng, 0.3)
}

fn samples(v: Vec<f32>) -> Samples {
    Samples {
        vectors: vec![(Modality::Face, Template::new(model(), DIM, v).unwrap())],
        fingers: Vec::new(),
    }
}

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    let store =
        Store::open(dir, StoreOptions::new(vec![ModelSpec { model: model(), dim: DIM }])).unwrap();
    let mut rng = SplitMix64::new(7);
    let mut impostors: Vec<f32> = (0..20_000)
        .map(|_| {
            let (a, b) = (unit(&mut rng), unit(&mut rng));
            a.iter().zip(&b).map(|(x, y)| x * y).sum()
        })
        .collect();
    let calibration = CalibrationTable::from_impostor_scores(model(), &mut impostors).unwrap();
    let m = EngineModel { id: model(), dim: DIM, kind: ModelKind::Face, calibration };
    let e = Engine::new(
        Arc::new(Gallery::new(Arc::new(store))),
        None,
        vec![m],
        Settings::default(),
        None,
    );
    let mut rng = SplitMix64::new(11);
    let items = (0..BACKGROUND)
        .map(|i| (SubjectId::new(format!("bg{i}")).unwrap(), samples(unit(&mut rng))))
        .collect();
    for r in e.enroll_batch(items, None).unwrap() {
        r.unwrap();
    }
    Arc::new(e)
}

fn params() -> DedupParams {
    DedupParams { target_fpir: 1e-6, max_results: 10, mode: SearchKind::Auto }
}

fn id(s: &str) -> SubjectId {
    SubjectId::new(s.to_owned()).unwrap()
}

fn duplicate_names(r: &UniqueEnrollment, other: &str) -> bool {
    match r {
        UniqueEnrollment::Duplicate(d) => d.candidates.iter().any(|c| c.subject == id(other)),
        UniqueEnrollment::Enrolled(_) => false,
    }
}

#[test]
fn sixteen_concurrent_duplicate_pairs_enroll_one_each() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut rng = SplitMix64::new(99);
    // Each pair: one person, two captures, two ids; all 32 requests released at once.
    let mut requests = Vec::new();
    for p in 0..PAIRS {
        let person = unit(&mut rng);
        for side in ["a", "b"] {
            requests.push((format!("p{p}{side}"), capture(&person, &mut rng)));
        }
    }
    let barrier = Arc::new(Barrier::new(requests.len()));
    let handles: Vec<_> = requests
        .into_iter()
        .map(|(name, v)| {
            let (engine, barrier) = (engine.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let r = engine.enroll_if_unique(id(&name), samples(v), &params(), false, None);
                (name, r.unwrap())
            })
        })
        .collect();
    let results: std::collections::BTreeMap<String, UniqueEnrollment> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    for p in 0..PAIRS {
        let (a, b) = (format!("p{p}a"), format!("p{p}b"));
        let (ra, rb) = (&results[&a], &results[&b]);
        let enrolled =
            |r: &UniqueEnrollment| matches!(r, UniqueEnrollment::Enrolled(e) if e.created);
        match (enrolled(ra), enrolled(rb)) {
            (true, false) => assert!(duplicate_names(rb, &a), "{b} must name {a}: {rb:?}"),
            (false, true) => assert!(duplicate_names(ra, &b), "{a} must name {b}: {ra:?}"),
            other => panic!("pair {p}: exactly one must be enrolled, got {other:?}"),
        }
        assert_eq!(
            engine.store().contains(&id(&a)) as u8 + engine.store().contains(&id(&b)) as u8,
            1,
            "pair {p} in the store"
        );
        for r in [ra, rb] {
            if let UniqueEnrollment::Duplicate(d) = r {
                assert!(d.candidates.iter().all(|c| !c.subject.as_str().starts_with("bg")));
            }
        }
    }
    assert_eq!(engine.store().len(), BACKGROUND + PAIRS);
}

#[test]
fn plain_enrollments_racing_dedup_ones_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut rng = SplitMix64::new(5);
    let mut handles = Vec::new();
    let barrier = Arc::new(Barrier::new(2 * PAIRS));
    for p in 0..PAIRS {
        let person = unit(&mut rng);
        let (va, vb) = (capture(&person, &mut rng), capture(&person, &mut rng));
        let (e, bar) = (engine.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || {
            bar.wait();
            let r = e.enroll(id(&format!("plain{p}")), samples(va), false, None).unwrap();
            (p, Some(r.view.seq), None)
        }));
        let (e, bar) = (engine.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || {
            bar.wait();
            let r =
                e.enroll_if_unique(id(&format!("dedup{p}")), samples(vb), &params(), false, None);
            (p, None, Some(r.unwrap()))
        }));
    }
    let mut plain = [0u64; PAIRS];
    let mut dedup: Vec<Option<UniqueEnrollment>> = vec![None; PAIRS];
    for h in handles {
        match h.join().unwrap() {
            (p, Some(seq), None) => plain[p] = seq,
            (p, None, Some(r)) => dedup[p] = Some(r),
            _ => unreachable!(),
        }
    }
    for p in 0..PAIRS {
        match dedup[p].take().unwrap() {
            // Enrolled: only correct if the plain enrollment committed after it.
            UniqueEnrollment::Enrolled(e) => assert!(
                e.view.seq < plain[p],
                "pair {p}: dedup{p} (seq {}) enrolled after plain{p} (seq {}) committed",
                e.view.seq,
                plain[p]
            ),
            d => assert!(duplicate_names(&d, &format!("plain{p}")), "pair {p}: {d:?}"),
        }
    }
}

#[test]
fn a_retry_is_answered_as_the_earlier_success_not_as_its_own_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let mut rng = SplitMix64::new(3);
    let v = unit(&mut rng);
    let first = engine.enroll_if_unique(id("x1"), samples(v.clone()), &params(), true, None);
    let UniqueEnrollment::Enrolled(e) = first.unwrap() else { panic!("x1 is unique") };
    assert!(e.created);
    let again = engine.enroll_if_unique(id("x1"), samples(v.clone()), &params(), true, None);
    match again.unwrap() {
        UniqueEnrollment::Enrolled(r) => {
            assert!(!r.created);
            assert_eq!(r.view.seq, e.view.seq);
        }
        d => panic!("a retry must not be its own duplicate: {d:?}"),
    }
    // Without the retry flag (no Idempotency-Key) the id is simply taken.
    let err = engine.enroll_if_unique(id("x1"), samples(v.clone()), &params(), false, None);
    assert_eq!(err.unwrap_err().code(), ErrorCode::AlreadyEnrolled);
    // Another id for the same person is a duplicate naming x1, and nothing is stored.
    let dup =
        engine.enroll_if_unique(id("x2"), samples(capture(&v, &mut rng)), &params(), true, None);
    assert!(duplicate_names(&dup.unwrap(), "x1"));
    assert!(!engine.store().contains(&id("x2")));
    // A bad rate is refused before anything is searched or stored.
    let bad = DedupParams { target_fpir: 0.0, ..params() };
    let err = engine.enroll_if_unique(id("x3"), samples(unit(&mut rng)), &bad, false, None);
    assert_eq!(err.unwrap_err().code(), ErrorCode::InvalidRate);
    assert!(!engine.store().contains(&id("x3")));
}
