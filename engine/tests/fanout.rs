//! 1:N across shards: one engine over every subject against three engines over a hash
//! partition of the same subjects (`ann::generation::shard_of`), each answering
//! `identify_part`, the parts sent through JSON as between nodes, then `merge_parts`. The merged
//! answer must be the single engine's: the same candidates in the same order with the same
//! scores and FMRs, the same N.
//!
//! Synthetic templates of two vector modalities (a face and a second face-like embedding stored
//! at a finger position), calibrated on their own impostor scores. A *family* of subjects
//! captured around one centre gives probes with many near candidates, so that the cut and the
//! truncation at `max_results` decide; planted mates give probes with one strong candidate.
//! Then faces with synthetic minutiae fingers (`testkit::fingers`, a stand-in MCC table), the
//! finger search exhaustive with the wrong-position check for every subject: one finger, two,
//! a face and fingers.
//!
//! Each data set also shows what a simpler merge would get wrong (shards truncated at
//! `max_results` by fused score, or before an unknown finger floor; a candidate's scores in its
//! shard's order; fingers read at another position), so the checks are not vacuous.

use biomatch_core::finger::{FingerTemplate, Minutia};
use biomatch_core::fusion::score_of_fmr;
use biomatch_core::{CalibrationTable, FingerPosition, Modality, ModelId, SubjectId, Template};
use biomatch_engine::{
    mcc_model, merge_parts, Engine, EngineModel, ErrorCode, Identification, IdentifyParams,
    IdentifyPart, ModelKind, ProbeKinds, Samples, ScoreSource, SearchKind, Settings,
};
use biomatch_gallery::ann::generation::shard_of;
use biomatch_gallery::{
    finger_code_spec, FingerGallery, FingerSearchParams, Gallery, ModelSpec, Store, StoreOptions,
};
use biomatch_testkit::fingers::{finger_template, HEIGHT, WIDTH};
use biomatch_testkit::{vectors, SplitMix64};
use std::sync::Arc;

const DIM: usize = 64;
const SUBJECTS: usize = 300;
const SHARDS: usize = 3;
/// Subjects `S000..` captured around one centre on both modalities (the near candidates of a
/// family probe).
const FAMILY: usize = 30;
/// Then subjects near the centre on the face only, then on the second modality only: they fill
/// the single engine's per-modality lists, so that the family's balanced members, fused best,
/// are left out of its pool but not out of every shard's.
const TWINS: usize = 15;
/// Every subject `i` with `i % 10 == 9` has no second modality (fill-in finds nothing).
const FACE_ONLY_EVERY: usize = 10;

fn face_model() -> ModelId {
    ModelId::new("test-face", "1").unwrap()
}

fn second_model() -> ModelId {
    ModelId::new("test-second", "1").unwrap()
}

/// Where the second modality's templates are stored.
fn second() -> Modality {
    Modality::Finger(FingerPosition::new(2).unwrap())
}

fn id(i: usize) -> SubjectId {
    SubjectId::new(format!("S{i:03}")).unwrap()
}

/// A model's table from the scores of random pairs of its templates.
fn calibration(model: ModelId, seed: u64) -> CalibrationTable {
    let mut rng = SplitMix64::new(seed);
    let mut impostors: Vec<f32> = (0..50_000)
        .map(|_| {
            let (a, b) = (vectors::unit(&mut rng, DIM), vectors::unit(&mut rng, DIM));
            a.iter().zip(&b).map(|(x, y)| x * y).sum()
        })
        .collect();
    CalibrationTable::from_impostor_scores(model, &mut impostors).unwrap()
}

/// A probe or enrollment: a face, and the second modality when given.
fn samples(face: &[f32], other: Option<&[f32]>) -> Samples {
    let mut vectors =
        vec![(Modality::Face, Template::new(face_model(), DIM, face.to_vec()).unwrap())];
    if let Some(v) = other {
        vectors.push((second(), Template::new(second_model(), DIM, v.to_vec()).unwrap()));
    }
    Samples { vectors, fingers: Vec::new() }
}

/// One engine over every subject, and one per shard over its subjects.
struct Cluster {
    single: Engine,
    shards: Vec<Engine>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Engines of `models` (and minutiae fingers searched with `fingers`, calibrated with its
    /// table), the single one enrolling every subject of `items`, each shard those
    /// `shard_of` routes to it.
    fn new(
        models: Vec<EngineModel>,
        fingers: Option<(FingerSearchParams, CalibrationTable)>,
        items: &[(SubjectId, Samples)],
    ) -> Cluster {
        let mut dirs = Vec::new();
        let mut engine = |keep: &dyn Fn(&SubjectId) -> bool| {
            let dir = tempfile::tempdir().unwrap();
            let mut specs: Vec<ModelSpec> =
                models.iter().map(|m| ModelSpec { model: m.id.clone(), dim: m.dim }).collect();
            specs.extend(fingers.as_ref().map(|_| finger_code_spec()));
            let store = Store::open(dir.path(), StoreOptions::new(specs)).unwrap();
            dirs.push(dir);
            let gallery = Arc::new(Gallery::new(Arc::new(store)));
            let fingers = fingers.as_ref().map(|(params, table)| {
                (Arc::new(FingerGallery::shipped(params.clone()).unwrap()), table.clone())
            });
            let e = Engine::new(gallery, fingers, models.clone(), Settings::default(), None);
            let mine = items.iter().filter(|(id, _)| keep(id)).cloned().collect();
            for r in e.enroll_batch(mine, None).unwrap() {
                r.unwrap();
            }
            e
        };
        let single = engine(&|_| true);
        let shards: Vec<Engine> =
            (0..SHARDS).map(|s| engine(&|id| shard_of(id, SHARDS) == s)).collect();
        assert!(shards.iter().all(|e| e.subject_count() > items.len() / SHARDS / 2));
        Cluster { single, shards, _dirs: dirs }
    }

    /// The shards' parts, each through JSON as a node sends it.
    fn parts(&self, probe: &Samples, p: &IdentifyParams) -> Vec<IdentifyPart> {
        self.shards
            .iter()
            .map(|e| {
                let part = e.identify_part(&e.prepare(probe.clone()).unwrap(), p).unwrap();
                serde_json::from_str(&serde_json::to_string(&part).unwrap()).unwrap()
            })
            .collect()
    }

    /// The probe's kinds, through JSON.
    fn kinds(&self, probe: &Samples) -> ProbeKinds {
        let kinds = self.single.prepare(probe.clone()).unwrap().kinds();
        serde_json::from_str(&serde_json::to_string(&kinds).unwrap()).unwrap()
    }

    fn merge(
        &self,
        parts: Vec<IdentifyPart>,
        probe: &Samples,
        p: &IdentifyParams,
    ) -> Identification {
        merge_parts(parts, &self.kinds(probe), p, |m| self.single.calibration(m)).unwrap()
    }

    /// Fan out, merge, and check the answer is the single engine's; returns it and the parts.
    fn check(
        &self,
        probe: &Samples,
        p: &IdentifyParams,
        what: &str,
    ) -> (Identification, Vec<IdentifyPart>) {
        let single = self.single.identify(&self.single.prepare(probe.clone()).unwrap(), p).unwrap();
        let parts = self.parts(probe, p);
        let merged = self.merge(parts.clone(), probe, p);
        assert_eq!(merged, single, "{what}: the merged answer differs from the single engine's");
        (single, parts)
    }
}

fn face_calibrated() -> EngineModel {
    EngineModel {
        id: face_model(),
        dim: DIM,
        kind: ModelKind::Face,
        calibration: calibration(face_model(), 7),
    }
}

/// Two vector modalities: a family, its twins, and unrelated subjects.
struct World {
    cluster: Cluster,
    faces: Vec<Vec<f32>>,
    others: Vec<Option<Vec<f32>>>,
    /// The family's centre, per modality.
    centre: (Vec<f32>, Vec<f32>),
}

impl std::ops::Deref for World {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl World {
    fn new() -> World {
        let second = EngineModel {
            id: second_model(),
            dim: DIM,
            kind: ModelKind::Finger,
            calibration: calibration(second_model(), 8),
        };
        let mut rng = SplitMix64::new(11);
        let centre = (vectors::unit(&mut rng, DIM), vectors::unit(&mut rng, DIM));
        let mut faces = Vec::new();
        let mut others = Vec::new();
        for i in 0..SUBJECTS {
            // Near the centre with independent noise per modality: the two modalities rank
            // the family differently, and fusion reorders it again.
            let near =
                |c: &[f32], noise: f32, rng: &mut SplitMix64| vectors::capture(c, rng, noise);
            let r = &mut rng;
            let (face, other) = match i {
                i if i < FAMILY => (near(&centre.0, 1.2, r), near(&centre.1, 1.2, r)),
                i if i < FAMILY + TWINS => (near(&centre.0, 1.0, r), vectors::unit(r, DIM)),
                i if i < FAMILY + 2 * TWINS => (vectors::unit(r, DIM), near(&centre.1, 1.0, r)),
                _ => (vectors::unit(r, DIM), vectors::unit(r, DIM)),
            };
            faces.push(face);
            others.push((i % FACE_ONLY_EVERY != FACE_ONLY_EVERY - 1).then_some(other));
        }
        let items: Vec<(SubjectId, Samples)> =
            (0..SUBJECTS).map(|i| (id(i), samples(&faces[i], others[i].as_deref()))).collect();
        let cluster = Cluster::new(vec![face_calibrated(), second], None, &items);
        World { cluster, faces, others, centre }
    }

    /// [`Cluster::check`], and N is `identify`'s here (no fingers: the subset, else every
    /// subject).
    fn check(
        &self,
        probe: &Samples,
        p: &IdentifyParams,
        what: &str,
    ) -> (Identification, Vec<IdentifyPart>) {
        let (r, parts) = self.cluster.check(probe, p, what);
        assert_eq!(r.gallery_size, p.subset.as_ref().map_or(SUBJECTS, Vec::len) as u64, "{what}");
        (r, parts)
    }

    /// A probe of the family's centre (another capture of it), face only or both modalities.
    fn family_probe(&self, rng: &mut SplitMix64, both: bool) -> Samples {
        let face = vectors::capture(&self.centre.0, rng, 0.3);
        let other = vectors::capture(&self.centre.1, rng, 0.3);
        samples(&face, both.then_some(other.as_slice()))
    }

    /// Another capture of subject `i`: its face, and its second modality when it has one and
    /// `both`.
    fn mate_probe(&self, i: usize, rng: &mut SplitMix64, both: bool) -> Samples {
        let face = vectors::capture(&self.faces[i], rng, 0.3);
        let other = match (&self.others[i], both) {
            (Some(v), true) => Some(vectors::capture(v, rng, 0.3)),
            // Without one enrolled, the probe still carries a second sample.
            (None, true) => Some(vectors::unit(rng, DIM)),
            (_, false) => None,
        };
        samples(&face, other.as_deref())
    }
}

fn params(max_results: usize, target_fpir: Option<f64>, threshold: Option<f32>) -> IdentifyParams {
    IdentifyParams {
        max_results,
        threshold,
        target_fpir,
        subset: None,
        mode: SearchKind::Exact,
        keep_shortlist: false,
    }
}

fn subjects(r: &Identification) -> Vec<SubjectId> {
    r.candidates.iter().map(|c| c.subject.clone()).collect()
}

#[test]
fn face_only_under_a_target_fpir_merges_to_the_single_engines_answer() {
    let w = World::new();
    let mut rng = SplitMix64::new(21);
    // Planted mates (a family member, ordinary subjects): found first.
    for i in [3, 57, 123, 250, 299] {
        let probe = w.mate_probe(i, &mut rng, false);
        let (r, _) = w.check(&probe, &params(10, Some(1e-3), None), &format!("mate of {i}"));
        assert_eq!(r.candidates.first().map(|c| c.subject.clone()), Some(id(i)), "mate of {i}");
    }
    // Many near candidates: the cut and the truncation at 3 both decide.
    for round in 0..5 {
        let probe = w.family_probe(&mut rng, false);
        for fpir in [1e-1, 1e-2, 1e-3] {
            let p = params(3, Some(fpir), None);
            let (r, parts) = w.check(&probe, &p, &format!("family {round} at {fpir}"));
            if fpir == 1e-1 {
                assert_eq!(r.candidates.len(), 3, "family {round}: truncated at 3");
                let wide = w.check(&probe, &params(50, Some(fpir), None), "family, wide").0;
                assert!(wide.candidates.len() > 3, "family {round}: more than 3 pass the cut");
                // A single vector modality: each shard truncated at max_results before the cut.
                assert!(parts.iter().all(|x| x.candidates.len() <= 3));
            }
        }
        // No cut at all; and `auto` (no index: exact).
        w.check(&probe, &params(3, None, None), "family, no cut");
        let auto = IdentifyParams { mode: SearchKind::Auto, ..params(5, Some(1e-2), None) };
        w.check(&probe, &auto, "family, auto");
    }
    // A stranger: most likely nobody passes; still the same answer.
    let stranger = samples(&vectors::unit(&mut rng, DIM), None);
    w.check(&stranger, &params(10, Some(1e-3), None), "stranger");
}

#[test]
fn face_only_under_a_raw_threshold_merges_to_the_single_engines_answer() {
    let w = World::new();
    let mut rng = SplitMix64::new(22);
    for round in 0..5 {
        let probe = w.family_probe(&mut rng, false);
        for (max, t) in [(3, 0.4), (3, 0.6), (20, 0.5), (5, 0.9)] {
            let (r, _) = w.check(&probe, &params(max, None, Some(t)), &format!("family {round}"));
            assert!(r.candidates.iter().all(|c| c.scores[0].score >= t));
            assert_eq!(r.target_fpir, None);
        }
    }
    let probe = w.mate_probe(200, &mut rng, false);
    let (r, _) = w.check(&probe, &params(10, None, Some(0.8)), "mate of 200");
    assert_eq!(subjects(&r), vec![id(200)]);
}

/// What a merge of each shard's best `max_results` by fused score would answer (the design
/// `merge_parts` does not use): the single engine's pool is not the union of the shards' pools.
fn naive_merge(parts: &[IdentifyPart], p: &IdentifyParams, n: u64) -> Vec<SubjectId> {
    let f = p.target_fpir.unwrap();
    let mut all: Vec<_> = parts
        .iter()
        .flat_map(|x| x.candidates.iter().take(p.max_results))
        .filter(|c| c.fmr <= f / n as f64)
        .collect();
    let raw_sum =
        |c: &biomatch_engine::PartCandidate| c.scores.iter().map(|s| s.score).sum::<f32>();
    all.sort_by(|a, b| {
        score_of_fmr(b.fmr)
            .total_cmp(&score_of_fmr(a.fmr))
            .then_with(|| raw_sum(b).total_cmp(&raw_sum(a)))
            .then_with(|| a.subject.cmp(&b.subject))
    });
    all.into_iter().take(p.max_results).map(|c| c.subject.clone()).collect()
}

#[test]
fn two_modalities_with_fill_in_merge_to_the_single_engines_answer() {
    let w = World::new();
    let mut rng = SplitMix64::new(23);
    // Planted mates, one of them without the second modality enrolled (filled in: nothing).
    for i in [5, 19, 88, 149, 271] {
        let probe = w.mate_probe(i, &mut rng, true);
        let (r, _) = w.check(&probe, &params(10, Some(1e-3), None), &format!("mate of {i}"));
        assert_eq!(r.candidates.first().map(|c| c.subject.clone()), Some(id(i)), "mate of {i}");
        let enrolled = w.others[i].is_some();
        assert_eq!(r.candidates[0].scores.len(), 1 + usize::from(enrolled), "mate of {i}");
    }
    // Many near candidates on both modalities; fusion reorders them.
    let (mut naive_wrong, mut filled_face) = (0, 0);
    for round in 0..12 {
        let probe = w.family_probe(&mut rng, true);
        for (max, fpir) in [(3, 1e-1), (3, 1e-3), (3, 1e-6), (1, 1e-1), (1, 1e-3)] {
            let p = params(max, Some(fpir), None);
            let (r, parts) = w.check(&probe, &p, &format!("family {round}: {max} at {fpir}"));
            assert_eq!(r.candidates.len(), max, "family {round}: truncated at {max}");
            if fpir == 1e-1 {
                // Filled in: the family's candidates have both scores but the face-only ones.
                assert!(r.candidates.iter().any(|c| c.scores.len() == 2));
            }
            naive_wrong += usize::from(naive_merge(&parts, &p, r.gallery_size) != subjects(&r));
            // Found by the second modality's search only: its face score is filled in after.
            filled_face +=
                r.candidates.iter().filter(|c| c.scores[0].modality != Modality::Face).count();
        }
        w.check(&probe, &params(3, None, None), "family, no cut");
        w.check(&probe, &params(10, Some(1e-2), None), "family, ten results");
    }
    // The data exercise what a per-shard truncation by fused score would get wrong, and
    // candidates whose scores the merge must list as the single engine's searches found them.
    assert!(naive_wrong > 0, "no family probe tells the pool apart from the shards' pools");
    assert!(filled_face > 0, "no candidate was found by the second modality only");
}

#[test]
fn a_subset_sent_whole_to_every_shard_merges_to_the_single_engines_answer() {
    let w = World::new();
    let mut rng = SplitMix64::new(24);
    // Half the family, some others, and ids enrolled nowhere: N counts them all.
    let mut subset: Vec<SubjectId> = (0..FAMILY).step_by(2).chain(100..140).map(id).collect();
    subset.push(SubjectId::new("nobody").unwrap());
    subset.push(SubjectId::new("nobody-else").unwrap());
    for both in [false, true] {
        let probe = w.family_probe(&mut rng, both);
        for max in [3, 10] {
            let p =
                IdentifyParams { subset: Some(subset.clone()), ..params(max, Some(1e-1), None) };
            let (r, parts) = w.check(&probe, &p, &format!("subset, both = {both}"));
            assert_eq!(r.gallery_size, subset.len() as u64);
            assert!(parts.iter().all(|x| x.subset_len == Some(subset.len())));
            assert!(r.candidates.iter().all(|c| subset.contains(&c.subject)));
            assert!(!r.candidates.is_empty());
        }
    }
}

#[test]
fn parts_count_their_shards_and_report_mixed_searches() {
    let w = World::new();
    let mut rng = SplitMix64::new(25);
    let probe = w.family_probe(&mut rng, true);
    let p = params(5, Some(1e-2), None);
    let parts = w.parts(&probe, &p);
    assert_eq!(parts.iter().map(|x| x.subjects).sum::<usize>(), SUBJECTS);
    assert!(parts.iter().all(|x| x.finger_subjects == 0 && x.search == "exact"));
    let merged = w.merge(parts.clone(), &probe, &p);
    assert_eq!((merged.search.as_str(), merged.index_generation), ("exact", None));
    // One shard searched through an index: the search is "mixed", no one generation.
    let mut mixed = parts.clone();
    (mixed[1].search, mixed[1].index_generation) = ("index".to_owned(), Some(4));
    let m = w.merge(mixed.clone(), &probe, &p);
    assert_eq!((m.search.as_str(), m.index_generation), ("mixed", None));
    assert_eq!(m.candidates, merged.candidates);
    for x in &mut mixed {
        (x.search, x.index_generation) = ("index".to_owned(), Some(4));
    }
    let m = w.merge(mixed, &probe, &p);
    assert_eq!((m.search.as_str(), m.index_generation), ("index", Some(4)));
}

#[test]
fn bad_parameters_are_refused_with_identifys_errors() {
    let w = World::new();
    let mut rng = SplitMix64::new(26);
    let face = w.mate_probe(10, &mut rng, false);
    let both = w.mate_probe(10, &mut rng, true);
    let cases = [
        (&face, params(0, Some(1e-3), None), ErrorCode::InvalidParameter),
        (&face, params(1001, Some(1e-3), None), ErrorCode::InvalidParameter),
        (&face, params(5, Some(1e-3), Some(0.5)), ErrorCode::BadRequest),
        (&both, params(5, None, Some(0.5)), ErrorCode::BadRequest),
        (&face, params(5, None, Some(f32::NAN)), ErrorCode::InvalidParameter),
        (&face, params(5, Some(0.0), None), ErrorCode::InvalidRate),
        (&both, params(5, Some(1.5), None), ErrorCode::InvalidRate),
    ];
    for (i, (probe, p, code)) in cases.iter().enumerate() {
        let prepared = w.single.prepare((*probe).clone()).unwrap();
        let identify = w.single.identify(&prepared, p).unwrap_err().code();
        let part = w.shards[0].identify_part(&prepared, p).unwrap_err().code();
        let merge = merge_parts(Vec::new(), &prepared.kinds(), p, |m| w.single.calibration(m));
        assert_eq!((identify, part, merge.unwrap_err().code()), (*code, *code, *code), "case {i}");
    }
    // The merge's own checks.
    let p = params(5, Some(1e-3), None);
    let kinds = w.kinds(&face);
    let cal = |m: &ModelId| w.single.calibration(m);
    let err = |r: biomatch_engine::Result<Identification>| r.unwrap_err().code();
    assert_eq!(err(merge_parts(Vec::new(), &kinds, &p, cal)), ErrorCode::BadRequest);
    let parts = w.parts(&face, &p);
    let twice = vec![parts[0].clone(), parts[0].clone()];
    assert!(!parts[0].candidates.is_empty());
    assert_eq!(err(merge_parts(twice, &kinds, &p, cal)), ErrorCode::BadRequest);
    let other = IdentifyParams { max_results: 6, ..p.clone() };
    assert_eq!(err(merge_parts(parts.clone(), &kinds, &other, cal)), ErrorCode::BadRequest);
    let raw = IdentifyParams { target_fpir: None, threshold: Some(0.5), ..p.clone() };
    assert_eq!(err(merge_parts(parts.clone(), &kinds, &raw, cal)), ErrorCode::BadRequest);
    let unknown = |_: &ModelId| -> biomatch_engine::Result<&'static CalibrationTable> {
        Err(biomatch_engine::EngineError::invalid(ErrorCode::UnknownModel, "no table"))
    };
    assert_eq!(err(merge_parts(parts, &kinds, &p, unknown)), ErrorCode::UnknownModel);
}

/// Another impression of finger `t`: each minutia kept with probability `keep`, moved by up to
/// `shift` pixels and turned by up to 3 ISO units.
fn impression(t: &FingerTemplate, rng: &mut SplitMix64, keep: f32, shift: f32) -> FingerTemplate {
    let mut out = t.clone();
    out.minutiae.clear();
    for m in &t.minutiae {
        let mut jitter = |v: u16, size: u16| {
            (f32::from(v) + rng.uniform(-shift, shift)).clamp(20.0, f32::from(size - 20)) as u16
        };
        let (x, y) = (jitter(m.x, WIDTH), jitter(m.y, HEIGHT));
        let angle = m.angle.wrapping_add(rng.below(7) as u8).wrapping_sub(3);
        if rng.chance(keep) {
            out.minutiae.push(Minutia { x, y, angle, ..*m });
        }
    }
    out
}

/// A stand-in table for MCC scores (the merge is exact under any table): impostor scores about
/// 0.001 with a Pareto tail (FMR 1 % at 0.013, 0.1 % at 0.045), so that the near fingers (0.01
/// to 0.05 here) get gently graded FMRs and mates (0.4 and more) tiny ones.
fn mcc_calibration() -> CalibrationTable {
    let mut rng = SplitMix64::new(9);
    let mut scores: Vec<f32> =
        (0..20_000).map(|_| 0.00109 * (1.0 - rng.uniform(0.0, 1.0)).powf(-0.539)).collect();
    CalibrationTable::from_impostor_scores(mcc_model(), &mut scores).unwrap()
}

/// Faces and minutiae fingers (right index 2, left index 7): every third subject holds no
/// fingers, the others both, or only one of them; the first `NEAR` are near one face and one
/// index finger (impressions of a master), the last `FACE_TWINS` nearer that face only.
struct FingerWorld {
    cluster: Cluster,
    people: Vec<(Vec<f32>, Vec<FingerTemplate>)>,
    centre: Vec<f32>,
    master: FingerTemplate,
}

impl FingerWorld {
    const SUBJECTS: usize = 90;
    const NEAR: usize = 18;
    /// The last subjects: nearer the face, but with unrelated fingers (found by the face only,
    /// their fingers filled in: by the finger search too on their own shard).
    const FACE_TWINS: usize = 6;

    fn new() -> FingerWorld {
        let mut rng = SplitMix64::new(31);
        let centre = vectors::unit(&mut rng, DIM);
        let master = finger_template(1, 2, 40);
        let mut people = Vec::new();
        for i in 0..Self::SUBJECTS {
            let near = i < Self::NEAR;
            let face = if near {
                vectors::capture(&centre, &mut rng, 1.2)
            } else if i >= Self::SUBJECTS - Self::FACE_TWINS {
                vectors::capture(&centre, &mut rng, 0.6)
            } else {
                vectors::unit(&mut rng, DIM)
            };
            let index = if near {
                impression(&master, &mut rng, 0.6, 8.0)
            } else {
                finger_template(100 + i as u64, 2, 40)
            };
            let other = finger_template(200 + i as u64, 7, 40);
            let fingers = match i % 6 {
                0 | 3 => Vec::new(),
                1 | 4 => vec![index, other],
                2 => vec![index],
                _ => vec![other],
            };
            people.push((face, fingers));
        }
        let items: Vec<(SubjectId, Samples)> = people
            .iter()
            .enumerate()
            .map(|(i, (face, fingers))| {
                let mut s = samples(face, None);
                s.fingers = fingers.clone();
                (id(i), s)
            })
            .collect();
        // Exhaustive on every node, the wrong-position check for every subject and every
        // score: finger scores that do not depend on the shard (see `fanout`'s module docs),
        // and best-of-m readings (one or two fingers held) that reorder the raw scores.
        let search = FingerSearchParams { swap_top: 10_000, swap_below: 1.0, ..Default::default() };
        let cluster =
            Cluster::new(vec![face_calibrated()], Some((search, mcc_calibration())), &items);
        FingerWorld { cluster, people, centre, master }
    }

    fn finger_subjects(&self) -> u64 {
        self.people.iter().filter(|(_, f)| !f.is_empty()).count() as u64
    }

    fn probe(face: Option<Vec<f32>>, fingers: Vec<FingerTemplate>) -> Samples {
        Samples {
            vectors: face
                .map(|v| vec![(Modality::Face, Template::new(face_model(), DIM, v).unwrap())])
                .unwrap_or_default(),
            fingers,
        }
    }

    /// Another impression of the master finger.
    fn near_finger(&self, rng: &mut SplitMix64) -> FingerTemplate {
        impression(&self.master, rng, 0.85, 3.0)
    }
}

#[test]
fn faces_and_minutiae_fingers_merge_to_the_single_engines_answer() {
    let w = FingerWorld::new();
    let (c, all, fingered) = (&w.cluster, FingerWorld::SUBJECTS as u64, w.finger_subjects());
    let mut rng = SplitMix64::new(32);
    let (mut elsewhere, mut filled) = (0, 0);
    let mut run = |s: &Samples, p: &IdentifyParams, n: u64, what: &str| {
        let (r, parts) = c.check(s, p, what);
        assert_eq!(r.gallery_size, n, "{what}");
        let scores = || parts.iter().flat_map(|x| &x.candidates).flat_map(|x| &x.scores);
        elsewhere += scores()
            .filter(|s| {
                matches!(s.source, ScoreSource::FingerSearch { matched, .. }
                    if Modality::Finger(matched) != s.modality)
            })
            .count();
        filled +=
            scores().filter(|s| s.source == ScoreSource::FillIn && s.model == mcc_model()).count();
        r
    };
    for round in 0..2 {
        // One finger: N is the subjects holding fingers.
        let one = FingerWorld::probe(None, vec![w.near_finger(&mut rng)]);
        for (max, fpir) in [(3, 1e-1), (1, 1e-2), (10, 1e-3)] {
            run(&one, &params(max, Some(fpir), None), fingered, "one finger");
        }
        run(&one, &params(3, None, Some(0.3)), fingered, "one finger, raw threshold");
        // A face and a finger: N is every subject.
        let face = vectors::capture(&w.centre, &mut rng, 0.3);
        let both = FingerWorld::probe(Some(face), vec![w.near_finger(&mut rng)]);
        for (max, fpir) in [(3, 1e-1), (1, 1e-3), (5, 0.5)] {
            run(&both, &params(max, Some(fpir), None), all, "face and finger");
        }
        // A mate: its face and both fingers, then its fingers only.
        let i = 6 * round + 4;
        let (face, fingers) = &w.people[i];
        let mate = FingerWorld::probe(
            Some(vectors::capture(face, &mut rng, 0.3)),
            fingers.iter().map(|f| impression(f, &mut rng, 0.85, 3.0)).collect(),
        );
        // Uncut: the weak candidates too, filled in (some of them ranked by their fingers on
        // their shard only, there read at another position).
        for max in [3, 8] {
            run(&mate, &params(max, None, None), all, "mate, uncut");
            run(&both, &params(max, None, None), all, "face and finger, uncut");
        }
        let r = run(&mate, &params(5, Some(1e-3), None), all, "mate: face and two fingers");
        assert_eq!(
            r.candidates.first().map(|x| (x.subject.clone(), x.scores.len())),
            Some((id(i), 3))
        );
        let only = FingerWorld::probe(None, mate.fingers.clone());
        let r = run(&only, &params(5, Some(1e-3), None), fingered, "mate: two fingers");
        assert_eq!(r.candidates.first().map(|x| x.subject.clone()), Some(id(i)));
        // A subject without fingers: its finger is filled in as nothing.
        let j = 6 * round + 30;
        let bare = FingerWorld::probe(
            Some(vectors::capture(&w.people[j].0, &mut rng, 0.3)),
            vec![w.near_finger(&mut rng)],
        );
        let r = run(&bare, &params(5, Some(1e-3), None), all, "face, no fingers enrolled");
        assert_eq!(
            r.candidates.first().map(|x| (x.subject.clone(), x.scores.len())),
            Some((id(j), 1))
        );
    }
    // The wrong-position check matched other fingers, and fingers were filled in.
    assert!(elsewhere > 0 && filled > 0, "elsewhere {elsewhere}, filled {filled}");
}

#[test]
fn one_finger_under_a_target_fpir_keeps_what_any_floor_could_return() {
    let w = FingerWorld::new();
    let c = &w.cluster;
    let fingered = w.finger_subjects();
    let cal = c.single.calibration(&mcc_model()).unwrap();
    let mut rng = SplitMix64::new(33);
    let mut truncation_wrong = 0;
    for round in 0..2 {
        let probe = FingerWorld::probe(None, vec![w.near_finger(&mut rng)]);
        // Floors between the candidates' raw scores, wherever the target FPIR puts them.
        let prepared = c.single.prepare(probe.clone()).unwrap();
        let wide = c.single.identify(&prepared, &params(40, None, None)).unwrap();
        let mut raws: Vec<f32> = wide.candidates.iter().map(|x| x.scores[0].score).collect();
        raws.sort_by(|a, b| b.total_cmp(a));
        raws.dedup();
        let floors: Vec<f32> = raws.windows(2).map(|x| (x[0] + x[1]) / 2.0).take(8).collect();
        for max in [1, 2] {
            let parts = c.parts(&probe, &params(max, Some(0.5), None));
            for &t in &floors {
                let fpir = cal.fmr_at(t) * fingered as f64;
                if !(fpir > 0.0 && fpir < 1.0) {
                    continue;
                }
                let p = params(max, Some(fpir), None);
                let single = c.single.identify(&prepared, &p).unwrap();
                let merged = c.merge(parts.clone(), &probe, &p);
                assert_eq!(merged, single, "round {round}, {max} at floor {t}");
                // What parts truncated at `max` before the cut would answer.
                let mut cut = parts.clone();
                for x in &mut cut {
                    x.candidates.truncate(max);
                }
                truncation_wrong += usize::from(c.merge(cut, &probe, &p) != single);
            }
        }
    }
    // Best-of-m readings reorder the raw scores: the floor decides what a shard must keep.
    assert!(truncation_wrong > 0, "no floor tells the kept subjects apart from the best `max`");
}
