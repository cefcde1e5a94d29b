//! 1:N identification across shards: a cluster's coordinator fans a probe out to several
//! engines, each holding a disjoint set of the subjects (a logical shard), and merges their
//! answers into the [`Identification`] one engine holding every subject would give.
//!
//! 1. Each shard runs [`Engine::identify_part`] with the request's probe and parameters. It
//!    searches as [`Engine::identify`] does, but makes no cut that depends on N (the
//!    cluster-wide gallery size, which one shard does not know), and answers an
//!    [`IdentifyPart`]: its candidates with their scores, each tagged with the search that
//!    found it or as read by fill-in (fill-in is local: a candidate's subject lives in that
//!    shard), and the counts N is computed from.
//! 2. The coordinator calls [`merge_parts`] with the parts, the probe's [`ProbeKinds`]
//!    ([`PreparedProbe::kinds`]), the same parameters and the models' calibration tables. It
//!    computes N from the summed counts, rebuilds each search's candidate list as the single
//!    engine's search would have returned it, lists each candidate's scores as that engine
//!    would, and fuses, cuts, ranks and truncates as [`Engine::identify`] does (the same
//!    functions: N, the raw threshold, the FPIR cut, the finger FMR and ranking, the candidate
//!    order are each written once, in `lib.rs`).
//!
//! Parts and [`ProbeKinds`] are plain serde types: they travel between nodes as JSON. The merge
//! reads every FMR again from the `f32` scores with its own calibration tables (the parts'
//! `f64` FMRs are informational), so a lossy `f64` decoding on the way (serde_json without
//! `float_roundtrip`) cannot change an answer; the coordinator's tables must be the shards'.
//!
//! # Why the merged answer is the single engine's
//!
//! `identify` on one engine over S (here S = S₁ ⊔ … ⊔ S_K, the shards) does, in order:
//! (a) for each *list* — each vector modality's gallery search, and the finger search — ranks
//! the subjects by the list's key (vector: raw score, best first; fingers: fused finger FMR,
//! then subject id) and keeps the first `d` passing the list's floor `t` (`d` = `max_results`
//! for a single-modality probe, 3 · `max_results` for several; `t` = the raw `threshold`, or
//! the score at FMR = `target_fpir` / N, for a single modality, none for several);
//! (b) pools the lists' subjects, each with the scores its lists found it with (vector lists
//! in probe order, then the finger list); (c) for several modalities, appends what fill-in
//! reads for the probe's other samples (vector modalities, then fingers), and fuses; (d) for
//! several modalities, drops fused FMR > `target_fpir` / N; (e) sorts by the candidate order
//! and keeps `max_results`.
//!
//! Every score, list key and fill-in reading of a subject depends only on the probe and that
//! subject's own templates, so a shard computes them as the single engine does. The merge
//! needs, per list, the single engine's first `d` of F ∩ S (F: the subjects passing the floor,
//! ≺: the list's order). **Prefix lemma**: if each shard j sends a set P_j ⊆ S_j holding every
//! member of first_d(F ∩ S) that lies in S_j, then first_d(F ∩ ⋃P_j) = first_d(F ∩ S) —
//! first_d(F ∩ S) is contained in F ∩ ⋃P_j ⊆ F ∩ S and is a ≺-prefix of the larger set, hence
//! of the smaller. What each shard sends for a list:
//!
//! - *The floor is known to the shard* (a raw `threshold`, or none: several modalities, or no
//!   target): the first `d` of F ∩ S_j. A member s of first_d(F ∩ S) in S_j has fewer than `d`
//!   subjects of F ∩ S before it, so fewer than `d` of F ∩ S_j: it is among them.
//! - *A single vector modality under a target FPIR* (the floor depends on N): the first `d` of
//!   S_j, unfloored. The floor "score ≥ t" is monotone in the list's order (the key *is* the
//!   raw score), so every subject of S_j ranked before a member s of first_d(F ∩ S) scores at
//!   least score(s) ≥ t: it is in F ∩ S before s, and there are fewer than `d` such. This is
//!   the case where a shard truncates at `max_results` before the cut, and the merge's
//!   cut-then-truncate equals the single engine's: the candidate order is monotone in the raw
//!   score too (its key is the score's FMR, non-increasing in the score, ties broken by the
//!   score).
//! - *A single finger under a target FPIR*: the finger key is not monotone in the raw score (a
//!   best-of-m score from the wrong-position check is read as m times its FMR), so the shard
//!   keeps every subject that is among the first `d` for *some* floor: those with fewer than
//!   `d` subjects of S_j ranked before them scoring at least as high (the highest floor they
//!   pass is their own best score). A member s of first_d(F ∩ S) has fewer than `d` subjects of
//!   F ∩ S before it, and those of S_j scoring at least score(s) ≥ t are among them.
//!
//! The merge then takes, per list, the first `d` of F ∩ (the parts' subjects found by that
//! list), which by the lemma is the single engine's list; their union is its pool. A shard's
//! lists are deeper in its smaller population, so it may have found a candidate by more
//! searches than the single engine: the merge lists, for each pooled candidate, the scores of
//! the lists that hold it *in the rebuilt lists*, then fill-in's readings — which a part
//! carries: a vector search's score is the value fill-in reads (one kernel), a finger search's
//! score is when it compared the same position ([`ScoreSource::FingerSearch`]'s `matched`),
//! and otherwise the part adds the reading ([`ScoreSource::FillIn`]). The order matters: it is
//! the order of the fused FMR's product and of the raw-score sum that breaks ties. So (c) gives
//! the same scores in the same order, the same fused FMRs, and (d) and (e) run on the same set
//! with the same functions. ∎
//!
//! For several modalities a part therefore carries its whole pool (at most (vector modalities
//! \+ 1) · 3 · `max_results` candidates), *not* its best `max_results` by fused score. The
//! FPIR cut is monotone in the fused order, but the single engine fuses only the subjects its
//! own lists returned, and a shard's lists (the best 3k *of that shard*) hold subjects the
//! single engine never considers: truncating a shard at `max_results` could push out a subject
//! the single engine returns in favour of one it never saw, and the merge could not tell them
//! apart. (Also, the fused order compares −log10 FMR as `f32`: two FMRs on either side of
//! `target_fpir` / N can tie in it, so the cut is not quite monotone in that order.)
//!
//! # What is not exact
//!
//! - **Ties**: a vector list breaks equal raw scores at its `d`-th place by store row in the
//!   single engine and by subject id in the merge (rows are per store). Only bit-equal scores of
//!   two subjects are affected.
//! - **Approximate searches**: the answer is the single engine's when every node's searches are
//!   exact (`SearchKind::Exact`, or `Auto` without an index). An index generation's recall is
//!   its own; the finger pre-selection's depth, max(0.5 % of the node's finger subjects, 200),
//!   is per node; and the finger search's wrong-position check runs on the first `swap_top`
//!   subjects of *the node's* pre-selection ranking, so a finger score can depend on which
//!   shard the subject is in unless the finger search is exhaustive on every node and
//!   `swap_top` is 0 or covers every subject holding fingers.
//! - **What the search reports**: `search` is the parts' common kind, or `"mixed"` when they
//!   differ (say `"index"` on one shard and `"exact"` on another); `index_generation` is the
//!   parts' common generation, else none (a generation number is per node). `finger_search`
//!   sums each probe finger's gallery fingers and comparisons (pre-selected if any part was);
//!   `finger_shortlist` sums its counts and concatenates the shortlisted ids in part order (not
//!   one ranking). For exhaustive finger searches these are the single engine's, but for the
//!   shortlisted ids' order.
//! - **A subset search**: N is the length of the merge's `subset` (the request's), whether the
//!   coordinator sent each shard the whole subset (ids a shard does not hold are skipped) or
//!   only its own ids; a part's [`IdentifyPart::subset_len`] is informational.

use crate::{
    best_of_fmr, check_identify_params, cut_gallery_size, finger_order, list_depth, mcc_model,
    passes_fpir_cut, rank_candidates, raw_threshold, reported_target_fpir, CandidateView, Engine,
    EngineError, ErrorCode, FingerKeep, FingerShortlist, Identification, IdentifyParams,
    ModalityScore, PoolScore, PreparedProbe, ProbeSample, Result, Samples,
};
use biomatch_core::fusion::fuse_fmr;
use biomatch_core::{CalibrationTable, FingerPosition, Modality, ModelId, SubjectId, Template};
use biomatch_gallery::{FingerSearchInfo, SubjectFingerScores};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What a probe holds, for [`merge_parts`]: its vector templates' modalities and models and
/// its minutiae fingers' positions, in probe order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeKinds {
    pub vectors: Vec<VectorKind>,
    pub fingers: Vec<FingerPosition>,
}

/// A vector template of a probe: where it was captured and the model that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorKind {
    pub modality: Modality,
    pub model: ModelId,
}

impl ProbeKinds {
    /// Samples in the probe.
    pub fn len(&self) -> usize {
        self.vectors.len() + self.fingers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn vector_kinds(vectors: &[(Modality, Template)]) -> Vec<VectorKind> {
    vectors
        .iter()
        .map(|(modality, t)| VectorKind { modality: *modality, model: t.model().clone() })
        .collect()
}

impl PreparedProbe {
    /// What this probe holds, for [`merge_parts`] (a coordinator without the probe's engine
    /// can have a node send it).
    pub fn kinds(&self) -> ProbeKinds {
        ProbeKinds {
            vectors: vector_kinds(&self.vectors),
            fingers: self.fingers.iter().map(|f| f.position).collect(),
        }
    }
}

impl ProbeKinds {
    /// What a probe of `samples` holds (its fingers with their positions): for a coordinator
    /// that has the samples, not a prepared probe.
    pub fn of_samples(samples: &Samples) -> ProbeKinds {
        ProbeKinds {
            vectors: vector_kinds(&samples.vectors),
            fingers: samples.fingers.iter().filter_map(|f| f.position).collect(),
        }
    }
}

/// Where a shard's score of a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum ScoreSource {
    /// Its vector modality's gallery search returned the candidate with this score (the value
    /// fill-in reads too: one kernel).
    Search,
    /// The finger search ranked the candidate among its best, comparing the probe finger with
    /// the subject's finger at `matched`: the best of `comparisons` comparisons (more than one:
    /// the wrong-position check), read as that many times its FMR.
    FingerSearch { comparisons: u32, matched: FingerPosition },
    /// Read as fill-in reads a modality the candidate was not found by: the subject's template
    /// of that modality (for a finger: of the same position) compared with the probe's.
    FillIn,
}

/// One score of a shard's candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartScore {
    pub modality: Modality,
    /// The model the score is read with (`mcc@1` for a minutiae finger).
    pub model: ModelId,
    pub score: f32,
    /// The score's FMR on the shard (informational: [`merge_parts`] reads it again).
    pub fmr: f64,
    pub source: ScoreSource,
}

/// A shard's candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartCandidate {
    pub subject: SubjectId,
    /// Fused FMR of the scores `identify` on this shard alone would give it (informational).
    pub fmr: f64,
    /// The scores the shard's searches found the candidate with ([`ScoreSource::Search`],
    /// [`ScoreSource::FingerSearch`]) and, for a probe of several samples, what fill-in reads
    /// for each other sample the subject holds ([`ScoreSource::FillIn`]: a vector modality no
    /// search found it by; a probe finger the finger search did not compare with the same
    /// position). The single engine may find a candidate by fewer searches than its shard did
    /// and fill in the rest: the merge takes whichever its lists decide.
    pub scores: Vec<PartScore>,
}

/// How one probe finger's search ran on a shard ([`FingerSearchInfo`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartFingerSearch {
    pub modality: Modality,
    pub gallery_fingers: usize,
    pub compared: usize,
    pub preselected: bool,
}

/// One shard's answer to a 1:N search, for [`merge_parts`]: uncut candidates and the counts
/// N is computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentifyPart {
    /// Best first, in the order of [`Identification::candidates`]. A single vector modality:
    /// the best `max_results` (a raw `threshold` applied); a single finger under a target FPIR:
    /// every subject among the best `max_results` for some raw floor; several modalities: every
    /// subject one of the searches returned (up to 3 · `max_results` per search), filled in
    /// (see the [module docs](self)).
    pub candidates: Vec<PartCandidate>,
    /// Live subjects in the shard's store.
    pub subjects: usize,
    /// Subjects holding minutiae fingers in the shard's store.
    pub finger_subjects: usize,
    /// The subset's length when the search was restricted to one.
    pub subset_len: Option<usize>,
    /// The parameters the part was searched with, checked by [`merge_parts`].
    pub max_results: usize,
    pub threshold: Option<f32>,
    pub target_fpir: Option<f64>,
    /// `"exact"` or `"index"`, as [`Identification::search`].
    pub search: String,
    pub index_generation: Option<u64>,
    pub finger_search: Vec<PartFingerSearch>,
    pub finger_shortlist: Option<FingerShortlist>,
}

impl Engine {
    /// 1:N for one shard of a cluster's subjects: [`identify`](Self::identify)'s searches and
    /// fill-in, without the cuts that depend on N (the cluster's gallery size); see
    /// [`IdentifyPart::candidates`] for what is kept. [`merge_parts`] over every shard's part
    /// gives the answer of one engine holding them all. Refuses the parameters `identify`
    /// refuses, with the same errors.
    pub fn identify_part(&self, probe: &PreparedProbe, p: &IdentifyParams) -> Result<IdentifyPart> {
        check_identify_params(probe.len(), p)?;
        let store = self.store();
        let (subjects, finger_subjects) = (store.len(), store.finger_counts().0);
        let single = probe.len() == 1;
        // Only the floor that does not depend on N: the caller's raw threshold.
        let threshold = |cal: &CalibrationTable| raw_threshold(single, p.threshold, None, 0, cal);
        let keep = if single && p.threshold.is_none() && p.target_fpir.is_some() {
            FingerKeep::EveryFloor
        } else {
            FingerKeep::Best
        };
        let pool = self.search_pool(probe, p, &threshold, keep)?;
        let mut ranked = Vec::with_capacity(pool.per_subject.len());
        for (subject, mut scores) in pool.per_subject {
            if !single {
                self.fill_in(&subject, probe, &mut scores)?;
            }
            let view = CandidateView {
                subject,
                fmr: fuse_fmr(scores.iter().map(|s| s.score.fmr)),
                scores: scores.iter().map(|s| s.score.clone()).collect(),
            };
            if !single {
                self.fill_in_other_positions(&view.subject, probe, &mut scores)?;
            }
            ranked.push((view, scores));
        }
        ranked.sort_by(|a, b| rank_candidates(&a.0, &b.0));
        let candidates = ranked
            .into_iter()
            .map(|(view, scores)| PartCandidate {
                subject: view.subject,
                fmr: view.fmr,
                scores: scores
                    .into_iter()
                    .map(|s| PartScore {
                        modality: s.score.modality,
                        model: match s.sample {
                            ProbeSample::Vector(i) => probe.vectors[i].1.model().clone(),
                            ProbeSample::Finger => mcc_model(),
                        },
                        score: s.score.score,
                        fmr: s.score.fmr,
                        source: s.source,
                    })
                    .collect(),
            })
            .collect();
        Ok(IdentifyPart {
            candidates,
            subjects,
            finger_subjects,
            subset_len: p.subset.as_ref().map(Vec::len),
            max_results: p.max_results,
            threshold: p.threshold,
            target_fpir: p.target_fpir,
            search: pool.search,
            index_generation: pool.index_generation,
            finger_search: pool
                .finger_search
                .into_iter()
                .map(|(modality, i)| PartFingerSearch {
                    modality,
                    gallery_fingers: i.gallery_fingers,
                    compared: i.compared,
                    preselected: i.preselected,
                })
                .collect(),
            finger_shortlist: pool.shortlist,
        })
    }

    /// What fill-in would read for each probe finger the finger search scored against another
    /// position of the subject (the wrong-position check): if the single engine does not rank
    /// the subject by its fingers, it fills them in, same position only.
    fn fill_in_other_positions(
        &self,
        subject: &SubjectId,
        probe: &PreparedProbe,
        scores: &mut Vec<PoolScore>,
    ) -> Result<()> {
        for f in &probe.fingers {
            let modality = Modality::Finger(f.position);
            let elsewhere = scores.iter().any(|s| match s.source {
                ScoreSource::FingerSearch { matched, .. } => {
                    s.score.modality == modality && matched != f.position
                }
                ScoreSource::Search | ScoreSource::FillIn => false,
            });
            if elsewhere {
                self.fill_in_finger(subject, f, scores)?;
            }
        }
        Ok(())
    }
}

/// The FMR of a shard's score, read again: as the search that found it reads it.
fn found_fmr<'c>(
    s: &PartScore,
    calibration: &dyn Fn(&ModelId) -> Result<&'c CalibrationTable>,
) -> Result<f64> {
    let cal = calibration(&s.model)?;
    Ok(match s.source {
        ScoreSource::FingerSearch { comparisons, .. } => best_of_fmr(cal, s.score, comparisons),
        ScoreSource::Search | ScoreSource::FillIn => cal.fmr_at(s.score),
    })
}

/// A shard's score as the single engine lists it: found by a search (`filled` false), or read
/// by fill-in (`filled`: its plain FMR).
fn modality_score<'c>(
    s: &PartScore,
    filled: bool,
    calibration: &dyn Fn(&ModelId) -> Result<&'c CalibrationTable>,
) -> Result<ModalityScore> {
    let fmr =
        if filled { calibration(&s.model)?.fmr_at(s.score) } else { found_fmr(s, calibration)? };
    Ok(ModalityScore { modality: s.modality, score: s.score, fmr, threshold: None })
}

/// The score vector modality `v`'s search found a candidate with.
fn search_score<'a>(scores: &'a [PartScore], v: &VectorKind) -> Option<&'a PartScore> {
    scores
        .iter()
        .find(|s| s.source == ScoreSource::Search && s.modality == v.modality && s.model == v.model)
}

/// The scores the finger search found a candidate with, in probe-finger order.
fn finger_search_scores(scores: &[PartScore]) -> impl Iterator<Item = &PartScore> {
    scores.iter().filter(|s| matches!(s.source, ScoreSource::FingerSearch { .. }))
}

/// What fill-in reads for vector modality `v` of a candidate: its search score (the same
/// value), else its fill-in score.
fn plain_vector<'a>(scores: &'a [PartScore], v: &VectorKind) -> Option<&'a PartScore> {
    search_score(scores, v).or_else(|| {
        scores.iter().find(|s| {
            s.source == ScoreSource::FillIn && s.modality == v.modality && s.model == v.model
        })
    })
}

/// What fill-in reads for the probe finger at `position`: the fill-in score, else a finger
/// search score of the same position (the same comparison).
fn plain_finger(scores: &[PartScore], position: FingerPosition) -> Option<&PartScore> {
    let (modality, mcc) = (Modality::Finger(position), mcc_model());
    let of = |s: &&PartScore| s.modality == modality && s.model == mcc;
    scores.iter().filter(of).find(|s| s.source == ScoreSource::FillIn).or_else(|| {
        scores.iter().filter(of).find(|s| {
            matches!(s.source, ScoreSource::FingerSearch { matched, .. } if matched == position)
        })
    })
}

/// Merge the [`IdentifyPart`]s of every shard (disjoint sets of subjects) into the
/// [`Identification`] one engine holding all their subjects gives for the same probe (`probe`:
/// its [`PreparedProbe::kinds`]) and parameters: N from the parts' summed counts (subjects and
/// finger subjects summed separately, then combined as one engine combines its own), each
/// search's list rebuilt, each pooled candidate's scores listed as that engine lists them
/// (found, then filled in), fused, cut at the target FPIR, ranked and truncated as
/// [`Engine::identify`] does. `calibration` gives a model's table, as [`Engine::calibration`]
/// does (the shards' tables). See the [module docs](self) for why the answer is the single
/// engine's, and where it is not.
///
/// Errors: `identify`'s for the parameters; `bad_request` for no parts, a part searched with
/// other parameters (`max_results`, `threshold`, whether a target FPIR or a subset was given),
/// or a subject in two parts; `unknown_model` for a model without calibration.
pub fn merge_parts<'c>(
    parts: Vec<IdentifyPart>,
    probe: &ProbeKinds,
    p: &IdentifyParams,
    calibration: impl Fn(&ModelId) -> Result<&'c CalibrationTable>,
) -> Result<Identification> {
    let calibration: &dyn Fn(&ModelId) -> Result<&'c CalibrationTable> = &calibration;
    check_identify_params(probe.len(), p)?;
    if parts.is_empty() {
        return Err(EngineError::invalid(ErrorCode::BadRequest, "no parts to merge"));
    }
    for (i, part) in parts.iter().enumerate() {
        if part.max_results != p.max_results
            || part.threshold != p.threshold
            || part.target_fpir.is_some() != p.target_fpir.is_some()
            || part.subset_len.is_some() != p.subset.is_some()
        {
            return Err(EngineError::invalid(
                ErrorCode::BadRequest,
                format!("part {i} was searched with other parameters than the merge's"),
            ));
        }
    }
    let n = cut_gallery_size(
        p.subset.as_ref().map(Vec::len),
        !probe.vectors.is_empty(),
        !probe.fingers.is_empty(),
        parts.iter().map(|x| x.subjects).sum(),
        parts.iter().map(|x| x.finger_subjects).sum(),
    );
    let single = probe.len() == 1;
    let d = list_depth(single, p.max_results);
    let (search, index_generation) = merged_path(&parts);
    let finger_search = merged_finger_search(&parts, probe);
    let finger_shortlist = merged_shortlist(&parts);

    let mut all: BTreeMap<SubjectId, Vec<PartScore>> = BTreeMap::new();
    for c in parts.into_iter().flat_map(|x| x.candidates) {
        if all.contains_key(&c.subject) {
            return Err(EngineError::invalid(
                ErrorCode::BadRequest,
                format!("subject {} is in two parts: shards must be disjoint", c.subject),
            ));
        }
        all.insert(c.subject, c.scores);
    }

    // Each search's list as the single engine's returns it: the first `d` passing its floor.
    let mut vector_lists: Vec<BTreeSet<&SubjectId>> = Vec::with_capacity(probe.vectors.len());
    for v in &probe.vectors {
        let floor = raw_threshold(single, p.threshold, p.target_fpir, n, calibration(&v.model)?)?;
        let mut list: Vec<(f32, &SubjectId)> = all
            .iter()
            .filter_map(|(id, scores)| search_score(scores, v).map(|s| (s.score, id)))
            .filter(|(score, _)| floor.is_none_or(|t| *score >= t))
            .collect();
        list.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        vector_lists.push(list.into_iter().take(d).map(|(_, id)| id).collect());
    }
    let mut finger_list: BTreeSet<&SubjectId> = BTreeSet::new();
    if !probe.fingers.is_empty() {
        let floor =
            raw_threshold(single, p.threshold, p.target_fpir, n, calibration(&mcc_model())?)?;
        let mut list: Vec<(f64, &SubjectId)> = Vec::new();
        for (id, scores) in &all {
            let found: Vec<&PartScore> = finger_search_scores(scores).collect();
            if found.is_empty() || !floor.is_none_or(|t| found.iter().any(|s| s.score >= t)) {
                continue;
            }
            let fmrs =
                found.iter().map(|s| found_fmr(s, calibration)).collect::<Result<Vec<_>>>()?;
            list.push((fuse_fmr(fmrs), id));
        }
        list.sort_by(|a, b| finger_order(*a, *b));
        finger_list = list.into_iter().take(d).map(|(_, id)| id).collect();
    }

    // The lists' union, each candidate's scores as `identify` lists them: found by the vector
    // searches in probe order, by the finger search, then filled in (vectors, then fingers).
    let pooled: BTreeSet<&SubjectId> =
        vector_lists.iter().flatten().chain(&finger_list).copied().collect();
    let mut candidates = Vec::with_capacity(pooled.len());
    for id in pooled {
        let found = &all[id];
        let mut scores: Vec<ModalityScore> = Vec::new();
        for (v, list) in probe.vectors.iter().zip(&vector_lists) {
            if list.contains(id) {
                let s = search_score(found, v).expect("listed by its search");
                scores.push(modality_score(s, false, calibration)?);
            }
        }
        if finger_list.contains(id) {
            for s in finger_search_scores(found) {
                scores.push(modality_score(s, false, calibration)?);
            }
        }
        if !single {
            let has =
                |scores: &[ModalityScore], m: Modality| scores.iter().any(|s| s.modality == m);
            for v in &probe.vectors {
                if !has(&scores, v.modality) {
                    if let Some(s) = plain_vector(found, v) {
                        scores.push(modality_score(s, true, calibration)?);
                    }
                }
            }
            for &position in &probe.fingers {
                if !has(&scores, Modality::Finger(position)) {
                    if let Some(s) = plain_finger(found, position) {
                        scores.push(modality_score(s, true, calibration)?);
                    }
                }
            }
        }
        let fmr = fuse_fmr(scores.iter().map(|s| s.fmr));
        if !single && !passes_fpir_cut(fmr, p.target_fpir, n) {
            continue;
        }
        candidates.push(CandidateView { subject: id.clone(), fmr, scores });
    }
    candidates.sort_by(rank_candidates);
    candidates.truncate(p.max_results);
    Ok(Identification {
        candidates,
        gallery_size: n,
        target_fpir: reported_target_fpir(p),
        search,
        index_generation,
        finger_search,
        finger_shortlist,
    })
}

/// The parts' common search kind and generation; `"mixed"` and none where they differ.
fn merged_path(parts: &[IdentifyPart]) -> (String, Option<u64>) {
    let first = &parts[0];
    let search = if parts.iter().all(|x| x.search == first.search) {
        first.search.clone()
    } else {
        "mixed".to_owned()
    };
    let generation = if parts.iter().all(|x| x.index_generation == first.index_generation) {
        first.index_generation
    } else {
        None
    };
    (search, generation)
}

/// Per probe finger, the parts' finger searches summed.
fn merged_finger_search(
    parts: &[IdentifyPart],
    probe: &ProbeKinds,
) -> Vec<(Modality, FingerSearchInfo)> {
    probe
        .fingers
        .iter()
        .map(|&position| {
            let modality = Modality::Finger(position);
            let mut info = FingerSearchInfo { gallery_fingers: 0, compared: 0, preselected: false };
            for x in parts.iter().flat_map(|x| &x.finger_search).filter(|x| x.modality == modality)
            {
                info.gallery_fingers += x.gallery_fingers;
                info.compared += x.compared;
                info.preselected |= x.preselected;
            }
            (modality, info)
        })
        .collect()
}

/// The parts' finger pre-selections summed (shortlisted ids concatenated in part order).
fn merged_shortlist(parts: &[IdentifyPart]) -> Option<FingerShortlist> {
    let mut lists = parts.iter().filter_map(|x| x.finger_shortlist.as_ref()).peekable();
    lists.peek()?;
    let mut out = FingerShortlist::default();
    for s in lists {
        out.gallery_subjects += s.gallery_subjects;
        out.subjects += s.subjects;
        out.preselected |= s.preselected;
        out.mcc_comparisons += s.mcc_comparisons;
        out.mapped_subjects += s.mapped_subjects;
        out.shortlisted.extend(s.shortlisted.iter().cloned());
    }
    Some(out)
}

/// Keep, of the finger search's ranking (best first), the subjects that are among its first
/// `k` passing *some* raw-score floor (one of their scores at least the floor). The highest
/// floor a subject passes is its own best score, so it is kept iff fewer than `k` subjects
/// ranked before it score at least as high.
pub(crate) fn keep_for_every_floor(ranked: &mut Vec<(f64, SubjectFingerScores)>, k: usize) {
    if k == 0 {
        ranked.clear();
        return;
    }
    // The best scores of the subjects ranked so far: the highest `k`, ascending.
    let mut highest: Vec<f32> = Vec::with_capacity(k + 1);
    ranked.retain(|(_, s)| {
        let best = s.scores.iter().map(|x| x.score).fold(f32::NEG_INFINITY, f32::max);
        let kept = highest.len() < k || highest[0] < best;
        highest.insert(highest.partition_point(|h| *h < best), best);
        if highest.len() > k {
            highest.remove(0);
        }
        kept
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use biomatch_gallery::FingerScore;
    use biomatch_testkit::SplitMix64;

    /// The subjects of `ranked` among the first `k` of those passing `floor`.
    fn first_k_at(ranked: &[(f64, SubjectFingerScores)], k: usize, floor: f32) -> Vec<SubjectId> {
        ranked
            .iter()
            .filter(|(_, s)| s.scores.iter().any(|x| x.score >= floor))
            .take(k)
            .map(|(_, s)| s.subject.clone())
            .collect()
    }

    #[test]
    fn every_floor_keeps_exactly_the_subjects_some_floor_ranks_in_the_first_k() {
        let mut rng = SplitMix64::new(5);
        let position = FingerPosition::new(2).unwrap();
        for round in 0..200 {
            let n = 1 + rng.below(40);
            let k = 1 + rng.below(6);
            // Keys not monotone in the scores (best-of-m), a few equal scores.
            let mut ranked: Vec<(f64, SubjectFingerScores)> = (0..n)
                .map(|i| {
                    let score = (rng.below(20) as f32) / 20.0;
                    let key = rng.uniform(0.0, 1.0) as f64;
                    let scores =
                        vec![FingerScore { position, matched: position, score, comparisons: 1 }];
                    (
                        key,
                        SubjectFingerScores {
                            subject: SubjectId::new(format!("s{i:02}")).unwrap(),
                            scores,
                        },
                    )
                })
                .collect();
            ranked.sort_by(|a, b| finger_order((a.0, &a.1.subject), (b.0, &b.1.subject)));
            let mut want: BTreeSet<SubjectId> = BTreeSet::new();
            for floor in ranked.iter().map(|(_, s)| s.scores[0].score) {
                want.extend(first_k_at(&ranked, k, floor));
            }
            let mut kept = ranked.clone();
            keep_for_every_floor(&mut kept, k);
            let got: BTreeSet<SubjectId> = kept.iter().map(|(_, s)| s.subject.clone()).collect();
            assert_eq!(got, want, "round {round}: n = {n}, k = {k}");
            // Order kept: still the ranking's.
            assert!(kept.windows(2).all(|w| finger_order(
                (w[0].0, &w[0].1.subject),
                (w[1].0, &w[1].1.subject)
            )
            .is_lt()));
        }
    }
}
