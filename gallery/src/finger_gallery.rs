//! Fingerprint 1:1 and 1:N over the store's minutiae fingers, with nothing per finger in RAM.
//!
//! Every enrolled finger has two forms in the one subject store: its minutiae (the finger
//! segments, memory-mapped) and a fixed-length **pre-selection code**
//! (`biomatch_fingerprint::code`, model [`FingerGallery::code_model`]), a vector template at the
//! finger's position in an fp16 column like faces — so the codes are searched by the same
//! machinery (exact scan of fresh rows, sharded FAISS generations built by the index builder,
//! exact re-rank) and persist like faces.
//!
//! 1:N ([`FingerGallery::identify`]) for a probe of K fingers:
//! 1. **Per-finger code lists**: each probe finger's code is searched among the codes of its
//!    position, `list_factor ×` the subject shortlist long.
//! 2. **Subject shortlist**: the per-finger code scores are summed per subject (a finger a
//!    subject was not listed for counts as that list's lowest score, so one missing or badly
//!    captured finger does not drop the subject), and the best `max(penetration · N,
//!    min_candidates)` subjects are kept (N: subjects holding fingers).
//! 3. **MCC** scores only the shortlisted subjects' fingers: their minutiae are decoded from
//!    the store's segments and their cylinders built on the fly, then compared with the
//!    probe's (prepared once). A subject's score per probe finger is the MCC similarity with its
//!    finger of the same position.
//!
//! Below `exhaustive_below` subjects (or for a subject subset) every subject is compared.
//! Scores are MCC similarities in `[0, 1]`; the engine reads them against the `mcc@1`
//! calibration and fuses them with the face.

use crate::ann::ShardedIndex;
use crate::error::{GalleryError, Result};
use crate::finger_mcc::MccFile;
use crate::gallery::{Gallery, SearchMode};
use crate::search::{IdentifyOptions, Probe, MAX_SHORTLIST};
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{FingerPosition, Modality, ModelId, SubjectId, Template};
use biomatch_fingerprint::code::CodeModel;
use biomatch_fingerprint::mcc::{Matcher, MccParams, MccTemplate};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Fingers with fewer valid MCC cylinders than this score 0 against everything: LSS-R averages
/// the best few cylinder pairs, so a template of one or two cylinders finds a good pair in
/// almost any finger (measured on the minutiae-level generator: a 7-minutia impression with one
/// cylinder scored a median 0.078 against unrelated fingers, an FMR of about 2e-9 on `mcc@1`).
pub const MIN_CYLINDERS: usize = 6;

/// MCC similarity, or 0 when either side has too few cylinders to be evidence.
fn similarity(m: &mut Matcher, probe: &MccTemplate, gallery: &MccTemplate) -> f32 {
    if probe.cylinder_count() < MIN_CYLINDERS || gallery.cylinder_count() < MIN_CYLINDERS {
        return 0.0;
    }
    m.similarity(probe, gallery)
}

/// How 1:N finger searches choose their candidates.
#[derive(Clone, Debug, PartialEq)]
pub struct FingerSearchParams {
    /// Share of the subjects holding fingers that the code pre-selection hands to MCC.
    pub penetration: f64,
    /// At least this many subjects (small galleries).
    pub min_candidates: usize,
    /// Each probe finger's code list holds this many times as many fingers as the subject
    /// shortlist has subjects (fusion across fingers reorders).
    pub list_factor: f64,
    /// Compare every subject when fewer than this hold fingers.
    pub exhaustive_below: usize,
    /// Wrong-position tolerance: for the best this many subjects of the code shortlist, a
    /// probe finger scoring below [`FingerSearchParams::swap_below`] against the subject's
    /// finger of its position is also compared with the subject's other fingers (a finger
    /// captured in the wrong slot, or two swapped), and the best is kept with its comparison
    /// count. The subject is shortlisted by its other fingers' codes.
    pub swap_top: usize,
    /// MCC score below which a finger is checked against the subject's other positions.
    pub swap_below: f32,
}

impl Default for FingerSearchParams {
    fn default() -> Self {
        Self {
            penetration: 0.005,
            min_candidates: 200,
            list_factor: 2.0,
            exhaustive_below: 2000,
            swap_top: 50,
            swap_below: 0.02,
        }
    }
}

/// How one probe finger's search was run (for the response and for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FingerSearchInfo {
    /// Gallery fingers of the probe's position, bounded by the subjects holding fingers (the
    /// store counts fingers, not fingers per position, and a subject has at most one finger of
    /// a position).
    pub gallery_fingers: usize,
    /// Fingers the MCC matcher compared.
    pub compared: usize,
    /// Whether the pre-selection codes chose them.
    pub preselected: bool,
}

/// What the subject-level pre-selection of one search did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShortlistInfo {
    /// Subjects holding fingers.
    pub gallery_subjects: usize,
    /// The subjects MCC compared, best code score first.
    pub subjects: Vec<SubjectId>,
    pub preselected: bool,
    /// MCC comparisons run.
    pub mcc_comparisons: usize,
    /// Of the subjects, those whose MCC templates came from the index generation's mapped file
    /// (the others were built from their minutiae).
    pub mapped_subjects: usize,
}

/// A finger ready to be compared: its position, MCC template and pre-selection code, built once.
#[derive(Debug, Clone)]
pub struct PreparedFinger {
    pub position: FingerPosition,
    mcc: MccTemplate,
    code: Vec<f32>,
}

/// One probe finger's MCC score against a subject.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FingerScore {
    /// The probe finger's (claimed) position.
    pub position: FingerPosition,
    /// The subject's finger it was scored against: the same position, or another one when the
    /// probe finger was captured at the wrong position (see [`FingerSearchParams::swap_top`]).
    pub matched: FingerPosition,
    pub score: f32,
    /// Fingers of the subject it was compared with to find that score (the best of several
    /// comparisons is more likely to be high by chance: read its FMR times this).
    pub comparisons: u32,
}

/// One subject's MCC scores, one per probe finger it holds the position of.
#[derive(Clone, Debug, PartialEq)]
pub struct SubjectFingerScores {
    pub subject: SubjectId,
    pub scores: Vec<FingerScore>,
}

/// Finger search over the store's minutiae fingers and their codes. `Send + Sync`; it holds
/// parameters only (start-up costs nothing per finger).
#[derive(Debug)]
pub struct FingerGallery {
    mcc: MccParams,
    code: Arc<CodeModel>,
    code_model: ModelId,
    search: FingerSearchParams,
}

fn position_of(t: &FingerTemplate, index: usize) -> Result<FingerPosition> {
    t.position.ok_or(GalleryError::MissingFingerPosition { index })
}

/// The store column of the shipped finger code model (`mpc@1`): a store that takes minutiae
/// fingers must be opened with it.
pub fn finger_code_spec() -> crate::store::ModelSpec {
    let code = biomatch_fingerprint::code::shipped();
    let spec = code.spec();
    crate::store::ModelSpec {
        model: ModelId::new(&spec.name, &spec.version).expect("the shipped code model id is valid"),
        dim: code.dim(),
    }
}

impl FingerGallery {
    /// The finger search with the default MCC parameters and the shipped code model.
    pub fn shipped(search: FingerSearchParams) -> Result<Self> {
        Self::new(MccParams::default(), biomatch_fingerprint::code::shipped(), search)
    }

    /// The finger search with these matcher and code models.
    pub fn new(mcc: MccParams, code: Arc<CodeModel>, search: FingerSearchParams) -> Result<Self> {
        let code_model = ModelId::new(&code.spec().name, &code.spec().version)
            .map_err(|e| GalleryError::Config(format!("finger code model id: {e}")))?;
        Ok(Self { mcc, code, code_model, search })
    }

    pub fn mcc_params(&self) -> &MccParams {
        &self.mcc
    }

    pub fn search_params(&self) -> &FingerSearchParams {
        &self.search
    }

    /// The model id the fingers' pre-selection codes are stored under.
    pub fn code_model(&self) -> &ModelId {
        &self.code_model
    }

    /// The length of the codes.
    pub fn code_dim(&self) -> usize {
        self.code.dim()
    }

    /// A finger's pre-selection code as the vector template the store keeps at its position;
    /// `None` for a finger too sparse to have one (no two minutiae at a usable distance: such a
    /// finger is stored, and compared by MCC when its subject is shortlisted by other
    /// modalities, but cannot shortlist it).
    pub fn code_template(&self, t: &FingerTemplate) -> Result<Option<(Modality, Template)>> {
        let position = position_of(t, 0)?;
        let v = self.code.encode(t);
        if v.iter().all(|&x| x == 0.0) {
            return Ok(None);
        }
        let template = Template::new(self.code_model.clone(), v.len(), v)?;
        Ok(Some((Modality::Finger(position), template)))
    }

    /// The comparable form of one finger (its position must be set).
    pub fn prepare(&self, t: &FingerTemplate) -> Result<PreparedFinger> {
        Ok(PreparedFinger {
            position: position_of(t, 0)?,
            mcc: MccTemplate::new(t, &self.mcc),
            code: self.code.encode(t),
        })
    }

    /// MCC similarity of a prepared probe with the subject's finger of the same position,
    /// decoded from the store.
    pub fn verify(&self, g: &Gallery, subject: &SubjectId, probe: &PreparedFinger) -> Result<f32> {
        let index = g.index(&self.code_model);
        let file = self.mcc_file(index.as_deref());
        let templates = self
            .templates(g, file, subject, &|p| p == probe.position)?
            .ok_or_else(|| GalleryError::UnknownSubject(subject.clone()))?
            .0;
        let (_, t) = templates.iter().find(|(p, _)| *p == probe.position).ok_or_else(|| {
            GalleryError::NoTemplate {
                subject: subject.clone(),
                modality: Modality::Finger(probe.position),
            }
        })?;
        Ok(similarity(&mut Matcher::new(&self.mcc), &probe.mcc, t))
    }

    /// The generation's MCC template file, when it was built with this search's parameters.
    fn mcc_file<'a>(&self, index: Option<&'a ShardedIndex>) -> Option<&'a MccFile> {
        index.and_then(|i| i.mcc.as_ref()).filter(|f| f.built_with(&self.mcc))
    }

    /// A subject's MCC templates (with their positions) and whether they came from the mapped
    /// file: from `file` when it holds the subject's current record, else built from the
    /// stored minutiae of the positions `wanted` selects. `None`: no such subject.
    #[allow(clippy::type_complexity)]
    fn templates(
        &self,
        g: &Gallery,
        file: Option<&MccFile>,
        subject: &SubjectId,
        wanted: &dyn Fn(FingerPosition) -> bool,
    ) -> Result<Option<(Vec<(FingerPosition, MccTemplate)>, bool)>> {
        let store = g.store();
        let Some((id, seq)) = store.finger_record(subject) else {
            // No fingers (or no subject): the store tells which.
            return match store.fingers(subject) {
                Ok(_) => Ok(Some((Vec::new(), false))),
                Err(GalleryError::UnknownSubject(_)) => Ok(None),
                Err(e) => Err(e),
            };
        };
        if let Some(t) = file.and_then(|f| f.get(id, seq, &self.mcc)) {
            return Ok(Some((t, true)));
        }
        match store.fingers(subject) {
            Ok(f) => Ok(Some((
                f.iter()
                    .filter(|t| t.position.is_some_and(wanted))
                    .filter_map(|t| Some((t.position?, MccTemplate::new(t, &self.mcc))))
                    .collect(),
                false,
            ))),
            Err(GalleryError::UnknownSubject(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// 1:N for a probe of one or more fingers (distinct positions): the shortlisted subjects
    /// with their MCC scores (unsorted), per-finger search info, and the shortlist.
    pub fn identify(
        &self,
        g: &Gallery,
        probe: &[PreparedFinger],
        subset: Option<&[SubjectId]>,
        mode: SearchMode,
    ) -> Result<(Vec<SubjectFingerScores>, Vec<FingerSearchInfo>, ShortlistInfo)> {
        let store = g.store();
        let (n_subjects, _) = store.finger_counts();
        let want = ((self.search.penetration * n_subjects as f64).ceil() as usize)
            .max(self.search.min_candidates);
        let exhaustive = n_subjects < self.search.exhaustive_below || want >= n_subjects;
        let (subjects, preselected) = match subset {
            Some(s) => {
                let mut s = s.to_vec();
                s.sort();
                s.dedup();
                (s, false)
            }
            None => (
                self.preselect(
                    g,
                    probe,
                    if exhaustive { n_subjects } else { want },
                    n_subjects,
                    mode,
                )?,
                !exhaustive,
            ),
        };
        // MCC on the shortlist: templates from the generation's mapped MCC file, or built
        // from the store's minutiae for fingers enrolled since (or without a generation).
        let index = g.index(&self.code_model);
        let mcc_file = self.mcc_file(index.as_deref());
        let mapped = std::sync::atomic::AtomicUsize::new(0);
        let swap_top = self.search.swap_top;
        let scored: Vec<Result<Option<SubjectFingerScores>>> = subjects
            .par_iter()
            .enumerate()
            .map_init(
                || Matcher::new(&self.mcc),
                |m, (rank, s)| {
                    let swap = rank < swap_top;
                    let wanted = |q: FingerPosition| swap || probe.iter().any(|p| p.position == q);
                    let Some((templates, from_file)) = self.templates(g, mcc_file, s, &wanted)?
                    else {
                        return Ok(None);
                    };
                    if from_file {
                        mapped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let scores: Vec<FingerScore> = probe
                        .iter()
                        .filter_map(|p| {
                            let same =
                                templates.iter().find(|(q, _)| *q == p.position).map(|(q, g)| {
                                    FingerScore {
                                        position: p.position,
                                        matched: *q,
                                        score: similarity(m, &p.mcc, g),
                                        comparisons: 1,
                                    }
                                });
                            if !swap || same.is_some_and(|s| s.score >= self.search.swap_below) {
                                return same;
                            }
                            // The best of the subject's fingers, counting every comparison.
                            let mut best: Option<FingerScore> = None;
                            for (q, g) in &templates {
                                let score = similarity(m, &p.mcc, g);
                                if best.is_none_or(|b| score > b.score) {
                                    best = Some(FingerScore {
                                        position: p.position,
                                        matched: *q,
                                        score,
                                        comparisons: 0,
                                    });
                                }
                            }
                            best.map(|b| FingerScore { comparisons: templates.len() as u32, ..b })
                        })
                        .collect();
                    Ok((!scores.is_empty())
                        .then(|| SubjectFingerScores { subject: s.clone(), scores }))
                },
            )
            .collect();
        let scored: Vec<SubjectFingerScores> =
            scored.into_iter().filter_map(Result::transpose).collect::<Result<_>>()?;
        let per_position = |p: FingerPosition| {
            scored.iter().filter(|s| s.scores.iter().any(|x| x.position == p)).count()
        };
        let info = probe
            .iter()
            .map(|p| FingerSearchInfo {
                gallery_fingers: n_subjects,
                compared: per_position(p.position),
                preselected,
            })
            .collect();
        let mcc_comparisons =
            scored.iter().flat_map(|s| &s.scores).map(|x| x.comparisons as usize).sum();
        Ok((
            scored,
            info,
            ShortlistInfo {
                gallery_subjects: n_subjects,
                subjects,
                preselected,
                mcc_comparisons,
                mapped_subjects: mapped.into_inner(),
            },
        ))
    }

    /// The best `want` subjects by summed code scores over the probe's fingers, among the
    /// `n_subjects` holding fingers.
    fn preselect(
        &self,
        g: &Gallery,
        probe: &[PreparedFinger],
        want: usize,
        n_subjects: usize,
        mode: SearchMode,
    ) -> Result<Vec<SubjectId>> {
        let store = g.store();
        if n_subjects == 0 || want == 0 {
            return Ok(Vec::new());
        }
        // The code column holds every position: a list of `k` fingers of one position takes
        // about `k × codes per subject` rows of the column.
        let per_subject = store.live_rows(&self.code_model) as f64 / n_subjects.max(1) as f64;
        let k = ((want as f64 * self.search.list_factor * per_subject.max(1.0)).ceil() as usize)
            .clamp(1, MAX_SHORTLIST);
        let lists: Vec<Vec<(SubjectId, f32)>> = probe
            .par_iter()
            // A probe finger without a code (too sparse) shortlists nothing.
            .filter(|p| p.code.iter().any(|&x| x != 0.0))
            .map(|p| {
                let q = Probe {
                    modality: Modality::Finger(p.position),
                    template: Template::new(self.code_model.clone(), p.code.len(), p.code.clone())?,
                };
                let opts = IdentifyOptions { max_results: k, threshold: None, subset: None };
                let (cands, _) = g.shortlist(&q, &opts, mode)?;
                Ok(cands.into_iter().map(|c| (c.subject_id, c.score)).collect())
            })
            .collect::<Result<_>>()?;
        // Sum per subject; a finger a subject was not listed for counts as the list's floor.
        let floors: Vec<f32> =
            lists.iter().map(|l| l.iter().map(|x| x.1).fold(f32::INFINITY, f32::min)).collect();
        let floor_sum: f32 = floors.iter().filter(|f| f.is_finite()).sum();
        let mut fused: HashMap<SubjectId, f32> = HashMap::new();
        for (l, floor) in lists.into_iter().zip(&floors) {
            for (s, score) in l {
                *fused.entry(s).or_insert(floor_sum) += score - floor;
            }
        }
        let mut ranked: Vec<(SubjectId, f32)> = fused.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(want);
        Ok(ranked.into_iter().map(|(s, _)| s).collect())
    }
}
