//! Finger 1:N through the finger codes: exact and through an index generation (whose MCC
//! templates are read from its mapped `mcc.bin`), wrong-position tolerance, a damaged MCC
//! record, deletes after the build.

use biomatch_core::finger::FingerTemplate;
use biomatch_core::{FingerPosition, SubjectId};
use biomatch_datasets::finger::fast::{fast_impression, fast_master, FastFingerConfig};
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::finger_mcc::MCC_FILE;
use biomatch_gallery::{
    finger_code_spec, AnnParams, Enrollment, FingerGallery, FingerSearchParams, Gallery,
    SearchMode, Store, StoreOptions, SubjectFingerScores,
};
use std::sync::Arc;

const SUBJECTS: u64 = 400;
const POSITIONS: [u8; 2] = [2, 7];

fn print(subject: u64, position: u8, impression: u32) -> FingerTemplate {
    let cfg = FastFingerConfig::default();
    let f = subject * 10 + u64::from(position) - 1;
    let mut t = fast_impression(&cfg, &fast_master(&cfg, f), f, impression);
    t.position = Some(FingerPosition::new(position).unwrap());
    t
}

fn id(i: u64) -> SubjectId {
    SubjectId::new(format!("F{i:05}")).unwrap()
}

fn search_params() -> FingerSearchParams {
    // Pre-select (not exhaustive) even in this small gallery: 10 % of the subjects.
    FingerSearchParams {
        penetration: 0.1,
        min_candidates: 10,
        exhaustive_below: 50,
        ..Default::default()
    }
}

/// A store of SUBJECTS subjects with two fingers each, their codes added as the engine does.
fn gallery(dir: &std::path::Path) -> (Arc<Store>, FingerGallery) {
    let store = Arc::new(Store::open(dir, StoreOptions::new(vec![finger_code_spec()])).unwrap());
    let fg = FingerGallery::shipped(search_params()).unwrap();
    let batch: Vec<Enrollment> = (0..SUBJECTS)
        .map(|i| {
            let fingers: Vec<FingerTemplate> = POSITIONS.iter().map(|&p| print(i, p, 0)).collect();
            let templates = fingers.iter().filter_map(|t| fg.code_template(t).unwrap()).collect();
            Enrollment { subject: id(i), templates, fingers }
        })
        .collect();
    for r in store.enroll_batch(&batch).unwrap() {
        r.unwrap();
    }
    store.checkpoint().unwrap();
    (store, fg)
}

fn top(scored: &[SubjectFingerScores]) -> (SubjectId, f32) {
    scored
        .iter()
        .map(|s| (s.subject.clone(), s.scores.iter().map(|x| x.score).sum::<f32>()))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

#[test]
fn two_finger_probes_find_their_mates_exact_and_through_a_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (store, fg) = gallery(dir.path());
    let probes: Vec<u64> = (0..SUBJECTS).step_by(20).collect();
    let prepared = |i: u64| -> Vec<_> {
        POSITIONS.iter().map(|&p| fg.prepare(&print(i, p, 1)).unwrap()).collect()
    };

    // Without a generation: codes scanned exactly, MCC templates built from minutiae.
    let g = Gallery::new(store.clone());
    let mut exact = Vec::new();
    for &i in &probes {
        let (scored, info, sl) = fg.identify(&g, &prepared(i), None, SearchMode::Exact).unwrap();
        assert!(sl.preselected);
        assert_eq!(sl.subjects.len(), 40, "10 % of the subjects are shortlisted");
        assert_eq!(sl.mapped_subjects, 0);
        assert_eq!(info.len(), 2);
        assert_eq!(top(&scored).0, id(i), "probe {i}");
        exact.push(scored);
    }

    // A generation of the code model: its MCC file is written and mapped.
    let report = ann::build(&store, fg.code_model(), &BuildParams::default()).unwrap();
    assert!(report.manifest.extra.iter().any(|f| f.file == MCC_FILE));
    g.load_index(fg.code_model(), &LoadOptions::default()).unwrap().unwrap();
    let mode = SearchMode::Index(AnnParams::default());
    for (&i, before) in probes.iter().zip(&exact) {
        let (scored, _, sl) = fg.identify(&g, &prepared(i), None, mode).unwrap();
        assert_eq!(sl.mapped_subjects, sl.subjects.len(), "every template from mcc.bin");
        assert_eq!(top(&scored).0, id(i));
        // Mapped templates score exactly as built ones.
        let mate = |v: &[SubjectFingerScores]| v.iter().find(|s| s.subject == id(i)).cloned();
        assert_eq!(mate(&scored), mate(before));
    }

    // A deleted subject is never returned, though the generation and its file still hold it.
    store.delete(&id(0)).unwrap();
    let (scored, _, _) = fg.identify(&g, &prepared(0), None, mode).unwrap();
    assert!(scored.iter().all(|s| s.subject != id(0)));
    // Enrolled after the build: found, its templates built from minutiae.
    let late: Vec<FingerTemplate> = POSITIONS.iter().map(|&p| print(9999, p, 0)).collect();
    let templates = late.iter().filter_map(|t| fg.code_template(t).unwrap()).collect();
    store.enroll(&Enrollment { subject: id(9999), templates, fingers: late }).unwrap();
    let (scored, _, sl) = fg.identify(&g, &prepared(9999), None, mode).unwrap();
    assert_eq!(top(&scored).0, id(9999));
    assert!(sl.mapped_subjects < sl.subjects.len());
}

#[test]
fn a_finger_at_the_wrong_position_still_counts_for_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let (store, fg) = gallery(dir.path());
    let g = Gallery::new(store);
    let i = 123;
    // Finger 2 where it belongs; the subject's finger 7 sent as position 8.
    let mut wrong = print(i, 7, 1);
    wrong.position = Some(FingerPosition::new(8).unwrap());
    let probe = vec![fg.prepare(&print(i, 2, 1)).unwrap(), fg.prepare(&wrong).unwrap()];
    let (scored, _, _) = fg.identify(&g, &probe, None, SearchMode::Exact).unwrap();
    let mate = scored.iter().find(|s| s.subject == id(i)).expect("shortlisted by finger 2");
    let eight = mate.scores.iter().find(|x| x.position.code() == 8).expect("scored");
    assert_eq!(eight.matched.code(), 7);
    assert_eq!(eight.comparisons, 2, "compared with both of the subject's fingers");
    assert!(eight.score >= fg.search_params().swap_below, "{eight:?}");
    // An impostor's finger at a position the subject lacks gets its best over both, too.
    let other = scored.iter().find(|s| s.subject != id(i)).unwrap();
    assert!(other.scores.iter().all(|x| x.comparisons >= 1));
}

#[test]
fn a_damaged_mcc_record_is_rebuilt_from_minutiae() {
    let dir = tempfile::tempdir().unwrap();
    let (store, fg) = gallery(dir.path());
    let report = ann::build(&store, fg.code_model(), &BuildParams::default()).unwrap();
    let path = report.dir.join(MCC_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    // A byte inside the first record (the header is 48 bytes; record 0 follows it).
    bytes[48 + 40] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let g = Gallery::new(store);
    g.load_index(fg.code_model(), &LoadOptions::default()).unwrap().unwrap();
    let probe: Vec<_> = POSITIONS.iter().map(|&p| fg.prepare(&print(0, p, 1)).unwrap()).collect();
    let (scored, _, sl) =
        fg.identify(&g, &probe, None, SearchMode::Index(AnnParams::default())).unwrap();
    assert_eq!(top(&scored).0, id(0), "found from its minutiae");
    assert_eq!(sl.mapped_subjects, sl.subjects.len() - 1, "only the damaged record was rebuilt");
}

#[test]
fn a_finger_too_sparse_for_a_code_is_stored_and_searched_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, fg) = gallery(dir.path());
    let mut sparse = print(7, 2, 1);
    sparse.minutiae.truncate(1);
    assert!(fg.code_template(&sparse).unwrap().is_none());
    // As a probe finger it shortlists nothing; the other finger still finds the subject.
    let g = Gallery::new(store);
    let probe = vec![fg.prepare(&sparse).unwrap(), fg.prepare(&print(7, 7, 1)).unwrap()];
    let (scored, _, _) = fg.identify(&g, &probe, None, SearchMode::Exact).unwrap();
    assert_eq!(top(&scored).0, id(7));
    let mate = scored.iter().find(|s| s.subject == id(7)).unwrap();
    let two = mate.scores.iter().find(|x| x.position.code() == 2).unwrap();
    assert_eq!(two.score, 0.0, "too few cylinders to be evidence");
}
