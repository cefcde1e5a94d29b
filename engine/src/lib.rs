//! biomatch-engine: the use cases — enroll, verify, identify, delete — over the one subject store
//! (`biomatch-gallery`) and its search structures (the sharded vector index, the finger search).
//!
//! Everything that calls the matching logic goes through [`Engine`]: the HTTP service (its
//! handlers map DTOs to engine calls and back), the index builder and the evaluation tools.
//! What lives here:
//! - **prepared probes** ([`Engine::prepare`]): a probe's templates are checked and its fingers'
//!   MCC templates built once per request, then compared with every candidate;
//! - **enrollment** as one store write (face and fingers in one record, one fsync shared with
//!   concurrent writers through the store's group commit), with the audit journal written in the
//!   same commit group before the log ([`Journal`]) and the finger search following the commit;
//! - **verification**: per-modality scores read against their calibration tables, fused
//!   (product of FMRs), decided against a target FMR;
//! - **identification**: per-modality candidate lists, over-fetch, fill-in of the modalities a
//!   candidate was not returned for, fusion, the FPIR cut (FMR ≤ target FPIR / N) and ranking.
//!
//! Errors: one enum, [`EngineError`], whose [`ErrorCode`] the HTTP layer maps to a status.
//! The engine does CPU work on the caller's thread (and rayon): call it off async threads.

pub mod backlog;
pub mod dedup;
pub mod error;
pub mod fanout;

pub use dedup::{DedupParams, UniqueEnrollment};
pub use error::{EngineError, ErrorCode, Result};
pub use fanout::{
    merge_parts, IdentifyPart, PartCandidate, PartFingerSearch, PartScore, ProbeKinds, ScoreSource,
    VectorKind,
};

use biomatch_core::finger::FingerTemplate;
use biomatch_core::fusion::{fuse_fmr, score_of_fmr};
use biomatch_core::{CalibrationTable, FingerPosition, Modality, ModelId, SubjectId, Template};
use biomatch_gallery::{
    AnnParams, CommitHook, Committed, Enrollment, FingerGallery, FingerScore, FingerSearchInfo,
    Gallery, GalleryError, IdentifyOptions, Note, PreparedFinger, Probe, SearchMode, Store,
    SubjectFingerScores, WriteOp, MAX_RESULTS_LIMIT,
};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The id minutiae fingers are scored under: minutiae compared by MCC.
pub fn mcc_model() -> ModelId {
    ModelId::new("mcc", "1").expect("valid model id")
}

/// What a model's templates are captured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Face,
    Finger,
}

impl ModelKind {
    pub fn of(modality: Modality) -> Self {
        match modality {
            Modality::Face => ModelKind::Face,
            Modality::Finger(_) => ModelKind::Finger,
        }
    }
}

/// A vector-template model the engine accepts, with its calibration.
#[derive(Clone, Debug)]
pub struct EngineModel {
    pub id: ModelId,
    pub dim: usize,
    pub kind: ModelKind,
    pub calibration: CalibrationTable,
}

/// Tunables of the engine's searches.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Candidates per shard for exact re-ranking of indexed searches.
    pub k_prime: usize,
    /// IVF lists probed per shard (`None`: the generation's own, else half of the lists).
    pub nprobe: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        let a = AnnParams::default();
        Self { k_prime: a.k_prime, nprobe: a.nprobe }
    }
}

impl Settings {
    /// The parameters of an indexed search under these settings.
    pub fn ann_params(&self) -> AnnParams {
        AnnParams { k_prime: self.k_prime, nprobe: self.nprobe }
    }
}

/// Who asked for a write, for the audit journal.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditContext {
    pub key_id: String,
    /// The server-assigned request id.
    pub request_id: String,
    /// The request id the client sent, if any.
    pub client_request_id: Option<String>,
}

/// One write of a commit group that is about to be stored, for the journal.
#[derive(Clone, Debug)]
pub struct JournalEntry<'a> {
    pub context: &'a AuditContext,
    /// `"enroll"` or `"delete"`.
    pub operation: &'static str,
    pub subject: &'a SubjectId,
    /// The write's sequence number in the store.
    pub seq: u64,
}

/// The audit journal of the writes. Its records of a commit group are logged in the store
/// together with the group (same append, same fsync: an audited write costs one fsync, and a
/// stored write never lacks its record); the journal copies them into its own log afterwards,
/// and makes that copy durable before a checkpoint drops them from the store's log.
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// The bytes recording `entries`; an error fails the whole group (nothing is stored).
    fn encode(&self, entries: &[JournalEntry<'_>]) -> std::result::Result<Vec<u8>, String>;
    /// Bytes from `encode` are now durable in the store: add them to the journal's own log (it
    /// need not be durable there before [`sync`](Self::sync)). Must not block on I/O.
    fn committed(&self, bytes: &[u8]);
    /// Make every record handed to `committed` so far durable in the journal's own log.
    fn sync(&self) -> std::result::Result<(), String>;
    /// The journal bytes found in the store's log at open (a crash may have lost their copy in
    /// the journal's own log): durably add the records the journal's log lacks.
    fn recover(&self, logged: &[Vec<u8>]) -> std::result::Result<(), String>;
}

/// What the engine attaches to each store write.
struct WriteNote {
    audit: Option<AuditContext>,
}

/// The store's commit hook: the journal sees each group before it is logged. (The finger
/// search needs no hook: its codes and minutiae are in the store's own records.)
#[derive(Debug)]
struct Hook {
    journal: Option<Arc<dyn Journal>>,
    /// The recently committed enrollments, for enroll-if-unique's re-check ([`dedup`]).
    recent: Arc<dedup::RecentCommits>,
}

fn note_of<'a>(c: &'a Committed<'_>) -> Option<&'a WriteNote> {
    c.note.and_then(|n| n.downcast_ref::<WriteNote>())
}

impl Hook {
    fn journal(&self, group: &[Committed<'_>]) -> Result<Option<Vec<u8>>, String> {
        let Some(j) = &self.journal else { return Ok(None) };
        let entries: Vec<JournalEntry<'_>> = group
            .iter()
            .filter_map(|c| {
                let ctx = note_of(c)?.audit.as_ref()?;
                Some(JournalEntry {
                    context: ctx,
                    operation: match c.op {
                        WriteOp::Enroll(_) => "enroll",
                        WriteOp::Delete(_) => "delete",
                    },
                    subject: c.op.subject(),
                    seq: c.seq,
                })
            })
            .collect();
        if entries.is_empty() {
            return Ok(None);
        }
        j.encode(&entries).map(Some)
    }
}

impl CommitHook for Hook {
    fn before_log(&self, group: &[Committed<'_>]) -> std::result::Result<Option<Vec<u8>>, String> {
        self.journal(group)
    }

    fn applied(&self, group: &[Committed<'_>], journal: Option<&[u8]>) {
        self.recent.record(group);
        if let (Some(j), Some(bytes)) = (&self.journal, journal) {
            j.committed(bytes);
        }
    }

    /// Nothing was stored; the caller's answer (an error) is audited by whoever answers it.
    fn failed(&self, _group: &[Committed<'_>], _error: &GalleryError) {}

    fn before_checkpoint(&self) -> std::result::Result<(), String> {
        self.journal.as_ref().map_or(Ok(()), |j| j.sync())
    }
}

/// A request's samples after DTO decoding and extraction: vector templates (at most one per
/// modality) and minutiae fingers (each with its position set, at most one per position).
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub vectors: Vec<(Modality, Template)>,
    pub fingers: Vec<FingerTemplate>,
}

impl Samples {
    pub fn len(&self) -> usize {
        self.vectors.len() + self.fingers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A probe checked and prepared once (fingers' MCC templates built), compared many times.
#[derive(Debug)]
pub struct PreparedProbe {
    vectors: Vec<(Modality, Template)>,
    fingers: Vec<PreparedFinger>,
}

impl PreparedProbe {
    /// Modalities in the probe.
    pub fn len(&self) -> usize {
        self.vectors.len() + self.fingers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What is enrolled for a subject (never biometric data).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubjectView {
    pub subject: SubjectId,
    pub seq: u64,
    /// Each modality with the model its template is compared under.
    pub templates: Vec<(Modality, ModelId)>,
}

/// The result of an enrollment.
#[derive(Clone, Debug, PartialEq)]
pub struct Enrolled {
    pub view: SubjectView,
    /// False when a retry found the same enrollment already stored.
    pub created: bool,
}

/// One modality's score, read against its calibration.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModalityScore {
    pub modality: Modality,
    pub score: f32,
    pub fmr: f64,
    /// The raw-score threshold of the target FMR (verification only).
    pub threshold: Option<f32>,
}

/// A 1:1 decision.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    pub subject: SubjectId,
    pub is_match: bool,
    /// Fused FMR (product of the modalities').
    pub fmr: f64,
    pub target_fmr: f64,
    pub scores: Vec<ModalityScore>,
}

/// Parameters of a 1:N search (serialisable: a cluster node sends them to the others).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IdentifyParams {
    pub max_results: usize,
    /// A raw-score threshold (single-modality probes only); excludes `target_fpir`.
    pub threshold: Option<f32>,
    /// Candidates must have FMR ≤ target_fpir / N.
    pub target_fpir: Option<f64>,
    /// Search only these subjects.
    pub subset: Option<Vec<SubjectId>>,
    pub mode: SearchKind,
    /// Return the finger pre-selection's subject shortlist in
    /// [`FingerShortlist::shortlisted`] (evaluation tools; costs a copy of every id).
    pub keep_shortlist: bool,
}

/// Which vector search to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchKind {
    #[default]
    Auto,
    Exact,
    Index,
}

/// One candidate of a 1:N search.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateView {
    pub subject: SubjectId,
    /// Fused FMR.
    pub fmr: f64,
    pub scores: Vec<ModalityScore>,
}

/// The result of a 1:N search.
#[derive(Clone, Debug, PartialEq)]
pub struct Identification {
    /// Best first: fused score (−log10 FMR), then the sum of raw scores, then subject id.
    pub candidates: Vec<CandidateView>,
    /// N used for the FPIR cut.
    pub gallery_size: u64,
    pub target_fpir: Option<f64>,
    /// `"exact"` or `"index"`.
    pub search: String,
    pub index_generation: Option<u64>,
    pub finger_search: Vec<(Modality, FingerSearchInfo)>,
    /// The subject-level finger pre-selection, when the probe has fingers.
    pub finger_shortlist: Option<FingerShortlist>,
}

/// What the subject-level finger pre-selection of a 1:N search did (serialisable: a shard's
/// part of a cluster's 1:N carries it, [`fanout`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FingerShortlist {
    /// Subjects holding fingers (the pre-selection's gallery).
    pub gallery_subjects: usize,
    /// Subjects whose fingers the MCC matcher compared.
    pub subjects: usize,
    /// Whether the fixed-length finger codes chose them (false: every subject was compared).
    pub preselected: bool,
    /// MCC comparisons run for the search.
    pub mcc_comparisons: usize,
    /// Subjects whose MCC templates were read from the index generation's mapped file (the
    /// others' were built from their minutiae: enrolled since the build, or no generation).
    pub mapped_subjects: usize,
    /// The shortlisted subjects, when [`IdentifyParams::keep_shortlist`] asked for them.
    pub shortlisted: Vec<SubjectId>,
}

/// The matching engine. `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    gallery: Arc<Gallery>,
    fingers: Option<Arc<FingerGallery>>,
    models: Vec<EngineModel>,
    finger_calibration: Option<CalibrationTable>,
    settings: Settings,
    journal: Option<Arc<dyn Journal>>,
    /// Enroll-if-unique's serialisation: plain enrollments hold it shared across their store
    /// write, an enroll-if-unique holds it exclusively across its re-check and its commit
    /// ([`dedup`]).
    dedup_lock: parking_lot::RwLock<()>,
    recent: Arc<dedup::RecentCommits>,
}

impl Engine {
    /// The engine over a loaded gallery and (when fingerprints are on) its finger search, which
    /// must have been built from the same store. Registers the store's commit hook: the
    /// journal sees every write first; the finger search follows every commit.
    pub fn new(
        gallery: Arc<Gallery>,
        fingers: Option<(Arc<FingerGallery>, CalibrationTable)>,
        models: Vec<EngineModel>,
        settings: Settings,
        journal: Option<Arc<dyn Journal>>,
    ) -> Self {
        let (fingers, finger_calibration) = match fingers {
            Some((f, c)) => (Some(f), Some(c)),
            None => (None, None),
        };
        let recent = Arc::new(dedup::RecentCommits::new(dedup::RECENT_CAPACITY));
        gallery
            .store()
            .set_commit_hook(Arc::new(Hook { journal: journal.clone(), recent: recent.clone() }));
        Self {
            gallery,
            fingers,
            models,
            finger_calibration,
            settings,
            journal,
            dedup_lock: parking_lot::RwLock::new(()),
            recent,
        }
    }

    /// Hand the journal records found in the store's log at open to the engine's journal (see
    /// [`Journal::recover`]). Call once after [`new`](Self::new), before serving writes; without
    /// a journal the store keeps them.
    pub fn recover_journal(&self) -> Result<()> {
        let Some(journal) = &self.journal else { return Ok(()) };
        Ok(self.store().recover_journal(|logged| journal.recover(logged))?)
    }

    pub fn gallery(&self) -> &Arc<Gallery> {
        &self.gallery
    }

    pub fn store(&self) -> &Arc<Store> {
        self.gallery.store()
    }

    pub fn fingers(&self) -> Option<&Arc<FingerGallery>> {
        self.fingers.as_ref()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn models(&self) -> &[EngineModel] {
        &self.models
    }

    /// The calibration table scores of `model` are read with (`mcc@1` for minutiae fingers).
    pub fn calibration(&self, model: &ModelId) -> Result<&CalibrationTable> {
        if *model == mcc_model() {
            if let Some(t) = &self.finger_calibration {
                return Ok(t);
            }
        }
        self.models.iter().find(|m| &m.id == model).map(|m| &m.calibration).ok_or_else(|| {
            EngineError::invalid(ErrorCode::UnknownModel, format!("no calibration for {model}"))
        })
    }

    fn finger_search(&self) -> Result<&Arc<FingerGallery>> {
        self.fingers.as_ref().ok_or_else(|| {
            EngineError::invalid(
                ErrorCode::FingerprintsUnavailable,
                "this server does not accept minutiae fingerprints (fingerprints.enabled = false)",
            )
        })
    }

    /// Check a probe's samples and prepare them for comparison (MCC templates built once).
    pub fn prepare(&self, samples: Samples) -> Result<PreparedProbe> {
        if samples.is_empty() {
            return Err(EngineError::invalid(
                ErrorCode::BadRequest,
                "give at least one sample (`face` or `fingers`)",
            ));
        }
        let fingers = self.prepare_fingers(&samples.fingers)?;
        Ok(PreparedProbe { vectors: samples.vectors, fingers })
    }

    /// Enroll a subject: all its samples in one durable record. With `retry` (the client sent
    /// an Idempotency-Key), an identical enrollment already stored is answered as found
    /// (`created: false`) instead of `already_enrolled`.
    pub fn enroll(
        &self,
        subject: SubjectId,
        samples: Samples,
        retry: bool,
        audit: Option<AuditContext>,
    ) -> Result<Enrolled> {
        let note = self.write_note(audit);
        let e = self.enrollment(subject, samples)?;
        // Held shared across the write: an enroll-if-unique's re-check sees this enrollment.
        let _shared = self.dedup_lock.read();
        self.commit_enrollment(e, note, retry)
    }

    /// Store an enrollment record; with `retry`, an identical one already stored is answered as
    /// found (`created: false`).
    fn commit_enrollment(&self, e: Enrollment, note: Note, retry: bool) -> Result<Enrolled> {
        let subject = e.subject.clone();
        // Only a retry needs the samples again after the store took them.
        let retried = retry.then(|| e.clone());
        match self.store().write(WriteOp::Enroll(e), Some(note)) {
            Ok(_) => Ok(Enrolled { view: self.subject(&subject)?, created: true }),
            Err(GalleryError::AlreadyEnrolled(_))
                if retried.as_ref().is_some_and(|e| self.same_enrollment(e)) =>
            {
                Ok(Enrolled { view: self.subject(&subject)?, created: false })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Enroll many subjects in one commit group (one fsync). Each gets its own result; an I/O
    /// failure fails them all.
    pub fn enroll_batch(
        &self,
        items: Vec<(SubjectId, Samples)>,
        audit: Option<AuditContext>,
    ) -> Result<Vec<Result<u64>>> {
        let mut ops = Vec::with_capacity(items.len());
        let mut refused = Vec::with_capacity(items.len());
        // The fingers' codes are CPU work: derived in parallel, before the one commit.
        let records: Vec<Result<Enrollment>> = items
            .into_par_iter()
            .map(|(subject, samples)| self.enrollment(subject, samples))
            .collect();
        for record in records {
            match record {
                Ok(e) => {
                    ops.push((WriteOp::Enroll(e), Some(self.write_note(audit.clone()))));
                    refused.push(None);
                }
                Err(err) => refused.push(Some(err)),
            }
        }
        let mut written = {
            let _shared = self.dedup_lock.read();
            self.store().write_batch(ops)?.into_iter()
        };
        Ok(refused
            .into_iter()
            .map(|r| match r {
                Some(err) => Err(err),
                None => written.next().expect("one result per write").map_err(Into::into),
            })
            .collect())
    }

    fn write_note(&self, audit: Option<AuditContext>) -> Note {
        Box::new(WriteNote { audit })
    }

    /// The store record of an enrollment: the samples plus, for each minutiae finger, its
    /// pre-selection code as a vector template at the finger's position.
    fn enrollment(&self, subject: SubjectId, samples: Samples) -> Result<Enrollment> {
        let mut templates = samples.vectors;
        if !samples.fingers.is_empty() {
            let fg = self.finger_search()?;
            for t in &samples.fingers {
                let Some((m, code)) = fg.code_template(t)? else { continue };
                if templates.iter().any(|(have, _)| *have == m) {
                    return Err(EngineError::invalid(
                        ErrorCode::BadRequest,
                        format!("{m} is given twice (a template and minutiae)"),
                    ));
                }
                templates.push((m, code));
            }
        }
        Ok(Enrollment { subject, templates, fingers: samples.fingers })
    }

    /// The fingers' MCC templates, or `fingerprints_unavailable` when there are fingers and
    /// this engine has no finger search.
    fn prepare_fingers(&self, fingers: &[FingerTemplate]) -> Result<Vec<PreparedFinger>> {
        if fingers.is_empty() {
            return Ok(Vec::new());
        }
        let fg = self.finger_search()?;
        Ok(fingers.iter().map(|t| fg.prepare(t)).collect::<Result<Vec<_>, _>>()?)
    }

    /// Whether the stored enrollment holds exactly these samples (fp16 rounding tolerated).
    fn same_enrollment(&self, e: &Enrollment) -> bool {
        let store = self.store();
        let Ok(info) = store.get(&e.subject) else { return false };
        let Ok(stored_fingers) = store.fingers(&e.subject) else { return false };
        let fingers_same = stored_fingers.len() == e.fingers.len()
            && e.fingers.iter().all(|t| stored_fingers.contains(t));
        fingers_same
            && info.templates.len() == e.templates.len()
            && e.templates.iter().all(|(m, t)| {
                store.template(&e.subject, *m).is_ok_and(|(model, v)| {
                    &model == t.model()
                        && v.iter().zip(t.vector()).all(|(a, b)| (a - b).abs() <= 1e-3)
                })
            })
    }

    /// Delete a subject (every later search honours it).
    pub fn delete(&self, subject: &SubjectId, audit: Option<AuditContext>) -> Result<u64> {
        let note: Note = Box::new(WriteNote { audit });
        Ok(self.store().write(WriteOp::Delete(subject.clone()), Some(note))?)
    }

    /// What is enrolled for a subject.
    pub fn subject(&self, subject: &SubjectId) -> Result<SubjectView> {
        let info = self.store().get(subject)?;
        // The fingers' pre-selection codes are derived data, not samples: not listed.
        let code = self.fingers.as_ref().map(|f| f.code_model().clone());
        let mut templates: Vec<(Modality, ModelId)> = info
            .templates
            .into_iter()
            .filter(|t| Some(&t.model) != code.as_ref())
            .map(|t| (t.modality, t.model))
            .collect();
        templates.extend(info.fingers.into_iter().map(|p| (Modality::Finger(p), mcc_model())));
        Ok(SubjectView { subject: info.subject_id, seq: info.seq, templates })
    }

    /// The samples stored for a subject, as a probe: its vector templates (the fingers'
    /// pre-selection codes left out — they are derived again from the minutiae) and its
    /// minutiae fingers. What a 1:N "identify by reference" (MOSIP's Identify by `referenceId`)
    /// searches with.
    pub fn stored_samples(&self, subject: &SubjectId) -> Result<Samples> {
        let store = self.store();
        let info = store.get(subject)?;
        let code = self.fingers.as_ref().map(|f| f.code_model().clone());
        let mut out = Samples::default();
        for t in info.templates.into_iter().filter(|t| Some(&t.model) != code.as_ref()) {
            let (model, vector) = store.template(subject, t.modality)?;
            let dim = vector.len();
            out.vectors.push((t.modality, Template::new(model, dim, vector)?));
        }
        // Without a finger search the fingers could not be compared: not part of the probe.
        if !info.fingers.is_empty() && self.fingers.is_some() {
            out.fingers = store.fingers(subject)?;
        }
        Ok(out)
    }

    /// Subjects enrolled (live).
    pub fn subject_count(&self) -> usize {
        self.store().len()
    }

    /// 1:1: score every modality of the probe against the subject's, fuse, decide.
    pub fn verify(
        &self,
        subject: &SubjectId,
        probe: &PreparedProbe,
        target_fmr: f64,
    ) -> Result<Verification> {
        check_rate("target_fmr", target_fmr)?;
        let store = self.store();
        let mut scores = Vec::with_capacity(probe.len());
        for (modality, template) in &probe.vectors {
            let score = store
                .verify(subject, &Probe { modality: *modality, template: template.clone() })?;
            scores.push(self.scored(*modality, template.model(), score, Some(target_fmr))?);
        }
        for f in &probe.fingers {
            let modality = Modality::Finger(f.position);
            let score = match self.finger_search()?.verify(&self.gallery, subject, f) {
                // Enrolled without fingers: this modality is what it lacks.
                Err(GalleryError::UnknownSubject(_)) if store.contains(subject) => {
                    Err(GalleryError::NoTemplate { subject: subject.clone(), modality })
                }
                r => r,
            }?;
            scores.push(self.scored(modality, &mcc_model(), score, Some(target_fmr))?);
        }
        let fmr = fuse_fmr(scores.iter().map(|s| s.fmr));
        Ok(Verification {
            subject: subject.clone(),
            is_match: fmr <= target_fmr,
            fmr,
            target_fmr,
            scores,
        })
    }

    fn scored(
        &self,
        modality: Modality,
        model: &ModelId,
        score: f32,
        target_fmr: Option<f64>,
    ) -> Result<ModalityScore> {
        let cal = self.calibration(model)?;
        let threshold = match target_fmr {
            Some(t) => Some(cal.threshold_for_fmr(t)?),
            None => None,
        };
        Ok(ModalityScore { modality, score, fmr: cal.fmr_at(score), threshold })
    }

    /// 1:N: candidates from every modality of the probe, filled in, fused, cut at the target
    /// FPIR, ranked.
    pub fn identify(&self, probe: &PreparedProbe, p: &IdentifyParams) -> Result<Identification> {
        self.identify_at(probe, p, None)
    }

    /// [`identify`](Self::identify), with the FPIR cut made for a gallery of `gallery_size`
    /// subjects instead of the searched one's (a re-check over a subset keeps the threshold of
    /// the full search it completes).
    fn identify_at(
        &self,
        probe: &PreparedProbe,
        p: &IdentifyParams,
        gallery_size: Option<u64>,
    ) -> Result<Identification> {
        check_identify_params(probe.len(), p)?;
        let store = self.store();
        let n = gallery_size.unwrap_or(cut_gallery_size(
            p.subset.as_ref().map(Vec::len),
            !probe.vectors.is_empty(),
            !probe.fingers.is_empty(),
            store.len(),
            store.finger_counts().0,
        ));
        let single = probe.len() == 1;
        // Single modality: the candidate threshold applies directly to the raw score.
        let threshold =
            |cal: &CalibrationTable| raw_threshold(single, p.threshold, p.target_fpir, n, cal);
        let pool = self.search_pool(probe, p, &threshold, FingerKeep::Best)?;
        // Fill in the modalities a candidate was not returned for, then fuse and cut.
        let mut candidates = Vec::with_capacity(pool.per_subject.len());
        for (subject, mut scores) in pool.per_subject {
            if !single {
                self.fill_in(&subject, probe, &mut scores)?;
            }
            let scores: Vec<ModalityScore> = scores.into_iter().map(|s| s.score).collect();
            let fmr = fuse_fmr(scores.iter().map(|s| s.fmr));
            if !single && !passes_fpir_cut(fmr, p.target_fpir, n) {
                continue;
            }
            candidates.push(CandidateView { subject, fmr, scores });
        }
        candidates.sort_by(rank_candidates);
        candidates.truncate(p.max_results);
        Ok(Identification {
            candidates,
            gallery_size: n,
            target_fpir: reported_target_fpir(p),
            search: pool.search,
            index_generation: pool.index_generation,
            finger_search: pool.finger_search,
            finger_shortlist: pool.shortlist,
        })
    }

    /// The searches of a 1:N probe, before fill-in, fusion and the FPIR cut: each vector
    /// modality's best [`list_depth`] subjects through the gallery (raw scores at or above
    /// `threshold(its calibration)` only), and the subjects the finger search ranks best by
    /// their fused finger FMR (kept as `keep` says); per subject, the scores found, in search
    /// order.
    fn search_pool(
        &self,
        probe: &PreparedProbe,
        p: &IdentifyParams,
        threshold: &dyn Fn(&CalibrationTable) -> Result<Option<f32>>,
        keep: FingerKeep,
    ) -> Result<Pool> {
        // Several modalities: over-fetch per modality, since fusion reorders.
        let k = list_depth(probe.len() == 1, p.max_results);
        let ann = self.settings.ann_params();
        let mode = match p.mode {
            SearchKind::Auto => SearchMode::Auto(ann),
            SearchKind::Exact => SearchMode::Exact,
            SearchKind::Index => SearchMode::Index(ann),
        };
        let mut per_subject: BTreeMap<SubjectId, Vec<PoolScore>> = BTreeMap::new();
        let mut path: Option<(String, Option<u64>)> = None;
        let mut finger_search = Vec::new();
        for (i, (modality, template)) in probe.vectors.iter().enumerate() {
            let cal = self.calibration(template.model())?;
            let opts = IdentifyOptions {
                max_results: k,
                threshold: threshold(cal)?,
                subset: p.subset.clone(),
            };
            let q = Probe { modality: *modality, template: template.clone() };
            let (cands, sp) = self.gallery.identify(&q, &opts, mode)?;
            path = Some((sp.kind.to_owned(), sp.generation));
            for c in cands {
                per_subject.entry(c.subject_id).or_default().push(PoolScore {
                    score: ModalityScore {
                        modality: *modality,
                        score: c.score,
                        fmr: cal.fmr_at(c.score),
                        threshold: None,
                    },
                    sample: ProbeSample::Vector(i),
                    source: ScoreSource::Search,
                });
            }
        }
        let mut shortlist: Option<FingerShortlist> = None;
        if !probe.fingers.is_empty() {
            let fg = self.finger_search()?;
            let cal = self.calibration(&mcc_model())?;
            let floor = threshold(cal)?;
            let (scored, infos, sl) =
                fg.identify(&self.gallery, &probe.fingers, p.subset.as_deref(), mode)?;
            for (f, info) in probe.fingers.iter().zip(infos) {
                finger_search.push((Modality::Finger(f.position), info));
            }
            path.get_or_insert_with(|| {
                ((if sl.preselected { "index" } else { "exact" }).to_owned(), None)
            });
            // The best `k` subjects by their fused finger FMR go on to fusion with the face.
            let fmr_of = |x: &FingerScore| best_of_fmr(cal, x.score, x.comparisons);
            let mut ranked: Vec<(f64, SubjectFingerScores)> = scored
                .into_iter()
                .filter(|s| floor.is_none_or(|t| s.scores.iter().any(|x| x.score >= t)))
                .map(|s| (fuse_fmr(s.scores.iter().map(fmr_of)), s))
                .collect();
            ranked.sort_by(|a, b| finger_order((a.0, &a.1.subject), (b.0, &b.1.subject)));
            match keep {
                FingerKeep::Best => ranked.truncate(k),
                FingerKeep::EveryFloor => fanout::keep_for_every_floor(&mut ranked, k),
            }
            for (_, s) in ranked {
                let e = per_subject.entry(s.subject).or_default();
                for x in s.scores {
                    e.push(PoolScore {
                        score: ModalityScore {
                            modality: Modality::Finger(x.position),
                            score: x.score,
                            fmr: fmr_of(&x),
                            threshold: None,
                        },
                        sample: ProbeSample::Finger,
                        source: ScoreSource::FingerSearch {
                            comparisons: x.comparisons,
                            matched: x.matched,
                        },
                    });
                }
            }
            shortlist = Some(FingerShortlist {
                gallery_subjects: sl.gallery_subjects,
                subjects: sl.subjects.len(),
                preselected: sl.preselected,
                mcc_comparisons: sl.mcc_comparisons,
                mapped_subjects: sl.mapped_subjects,
                shortlisted: if p.keep_shortlist { sl.subjects } else { Vec::new() },
            });
        }
        let (search, index_generation) = path.expect("at least one modality was searched");
        Ok(Pool { per_subject, search, index_generation, finger_search, shortlist })
    }

    /// Score a candidate on the probe's modalities it was not returned for; a candidate
    /// lacking a modality just gets no score for it.
    fn fill_in(
        &self,
        subject: &SubjectId,
        probe: &PreparedProbe,
        scores: &mut Vec<PoolScore>,
    ) -> Result<()> {
        let has = |scores: &[PoolScore], m: Modality| scores.iter().any(|s| s.score.modality == m);
        for (i, (modality, template)) in probe.vectors.iter().enumerate() {
            if has(scores, *modality) {
                continue;
            }
            let q = Probe { modality: *modality, template: template.clone() };
            if let Some(score) = absent_is_none(self.store().verify(subject, &q))? {
                scores.push(PoolScore {
                    score: self.scored(*modality, template.model(), score, None)?,
                    sample: ProbeSample::Vector(i),
                    source: ScoreSource::FillIn,
                });
            }
        }
        for f in &probe.fingers {
            if !has(scores, Modality::Finger(f.position)) {
                self.fill_in_finger(subject, f, scores)?;
            }
        }
        Ok(())
    }

    /// The 1:1 MCC score of probe finger `f` against the subject's finger at its position, as
    /// a fill-in score; nothing when the subject has no finger there.
    fn fill_in_finger(
        &self,
        subject: &SubjectId,
        f: &PreparedFinger,
        scores: &mut Vec<PoolScore>,
    ) -> Result<()> {
        let modality = Modality::Finger(f.position);
        if let Some(score) =
            absent_is_none(self.finger_search()?.verify(&self.gallery, subject, f))?
        {
            scores.push(PoolScore {
                score: self.scored(modality, &mcc_model(), score, None)?,
                sample: ProbeSample::Finger,
                source: ScoreSource::FillIn,
            });
        }
        Ok(())
    }

    /// For a maintenance thread, off the request path: while writes are failing, probe whether
    /// they can be made durable again ([`Store::probe_writes`]: readiness follows without a
    /// restart once space is freed); then run a checkpoint if the store's log is due for one
    /// (not while writes fail: it would fail too, and a failed one is retried later). Returns
    /// whether a checkpoint ran.
    pub fn maintain(&self) -> Result<bool> {
        let store = self.store();
        if !store.probe_writes() {
            return Ok(false);
        }
        Ok(store.checkpoint_if_due()?)
    }

    /// Resident bytes per live finger: the loaded finger-code generation's index structures
    /// (codes, ids, quantizer tables) plus the store's resident metadata (row owners and states,
    /// subject table, finger record flags), all counted against the fingers; without a
    /// generation, the metadata only. MCC templates, minutiae and the fp16 codes are not
    /// resident: they are read from mapped files per search. 0 without fingers.
    pub fn finger_resident_bytes_per_finger(&self) -> f64 {
        let Some(fg) = &self.fingers else { return 0.0 };
        let (_, fingers) = self.store().finger_counts();
        if fingers == 0 {
            return 0.0;
        }
        match self.gallery.index(fg.code_model()) {
            Some(i) => i.resident_bytes_per_template(),
            None => self.store().metadata_bytes() as f64 / fingers as f64,
        }
    }

    /// Finger positions a subject holds.
    pub fn finger_positions(&self, subject: &SubjectId) -> Result<Vec<FingerPosition>> {
        Ok(self.store().get(subject)?.fingers)
    }
}

/// A modality the subject does not have is no error during fill-in.
fn absent_is_none(r: Result<f32, GalleryError>) -> Result<Option<f32>> {
    match r {
        Ok(s) => Ok(Some(s)),
        Err(GalleryError::NoTemplate { .. } | GalleryError::UnknownSubject(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn check_rate(name: &str, v: f64) -> Result<f64> {
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(EngineError::invalid(
            ErrorCode::InvalidRate,
            format!("{name} must be in (0, 1); got {v}"),
        ))
    }
}

/// The checks of a 1:N search's parameters for a probe of `probe_len` samples (shared by
/// [`Engine::identify`], [`Engine::identify_part`] and [`merge_parts`]: the same errors).
fn check_identify_params(probe_len: usize, p: &IdentifyParams) -> Result<()> {
    if p.max_results == 0 || p.max_results > MAX_RESULTS_LIMIT {
        return Err(EngineError::invalid(
            ErrorCode::InvalidParameter,
            format!("max_results must be in 1..={MAX_RESULTS_LIMIT}"),
        ));
    }
    if probe_len == 0 {
        return Err(EngineError::invalid(ErrorCode::BadRequest, "the probe has no samples"));
    }
    if p.threshold.is_some() && p.target_fpir.is_some() {
        return Err(EngineError::invalid(
            ErrorCode::BadRequest,
            "give either `threshold` or a target FPIR, not both",
        ));
    }
    if p.threshold.is_some() && probe_len > 1 {
        return Err(EngineError::invalid(
            ErrorCode::BadRequest,
            "a raw `threshold` applies to single-modality probes only; use target_fpir",
        ));
    }
    if let Some(t) = p.threshold.filter(|t| !t.is_finite()) {
        return Err(EngineError::invalid(
            ErrorCode::InvalidParameter,
            format!("threshold {t} is not finite"),
        ));
    }
    if let Some(f) = p.target_fpir {
        check_rate("target_fpir", f)?;
    }
    Ok(())
}

/// N of the FPIR cut: the subset's length when the search is restricted to one; else the
/// subjects the probe's samples are searched among: every live subject for vector templates,
/// the subjects holding fingers for minutiae fingers, the larger of the two for both.
fn cut_gallery_size(
    subset: Option<usize>,
    vectors: bool,
    fingers: bool,
    subjects: usize,
    finger_subjects: usize,
) -> u64 {
    (match subset {
        Some(s) => s,
        None if !vectors => finger_subjects,
        None if !fingers => subjects,
        None => subjects.max(finger_subjects),
    }) as u64
}

/// The raw-score threshold a modality's search of a 1:N search applies: a single-modality
/// probe's `threshold`, or the score at FMR = `target_fpir` / N read on the modality's
/// calibration; none for several modalities (they are cut on the fused FMR).
fn raw_threshold(
    single: bool,
    threshold: Option<f32>,
    target_fpir: Option<f64>,
    n: u64,
    cal: &CalibrationTable,
) -> Result<Option<f32>> {
    Ok(match (single, threshold, target_fpir) {
        (true, Some(t), _) => Some(t),
        (true, None, Some(f)) => Some(cal.threshold_for_fpir(f, n.max(1))?),
        _ => None,
    })
}

/// Whether a candidate of a several-modality probe with fused FMR `fmr` survives the FPIR cut:
/// FMR ≤ target FPIR / N (no target: every candidate does).
fn passes_fpir_cut(fmr: f64, target_fpir: Option<f64>, n: u64) -> bool {
    target_fpir.is_none_or(|f| fmr <= f / n.max(1) as f64)
}

/// The target FPIR an identification reports (none when a raw threshold decided).
fn reported_target_fpir(p: &IdentifyParams) -> Option<f64> {
    if p.threshold.is_some() {
        None
    } else {
        p.target_fpir
    }
}

/// How many subjects each modality's search of a 1:N search returns: `max_results` for a
/// single modality, three times that (bounded) for several, since fusion reorders.
fn list_depth(single: bool, max_results: usize) -> usize {
    if single {
        max_results
    } else {
        (max_results * 3).min(MAX_RESULTS_LIMIT)
    }
}

/// The FMR of a finger search's score: a best-of-`comparisons` score (the wrong-position
/// check) is read as that many times its FMR.
fn best_of_fmr(cal: &CalibrationTable, score: f32, comparisons: u32) -> f64 {
    (cal.fmr_at(score) * f64::from(comparisons.max(1))).min(1.0)
}

/// The finger search's ranking of subjects: fused finger FMR, then subject id.
fn finger_order(a: (f64, &SubjectId), b: (f64, &SubjectId)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

/// The order of a 1:N search's candidates, best first: fused score (−log10 FMR), then the sum
/// of raw scores, then subject id (see [`Identification::candidates`]).
fn rank_candidates(a: &CandidateView, b: &CandidateView) -> std::cmp::Ordering {
    let raw_sum = |c: &CandidateView| c.scores.iter().map(|s| s.score).sum::<f32>();
    score_of_fmr(b.fmr)
        .total_cmp(&score_of_fmr(a.fmr))
        .then_with(|| raw_sum(b).total_cmp(&raw_sum(a)))
        .then_with(|| a.subject.cmp(&b.subject))
}

/// What the searches of a 1:N probe found ([`Engine::search_pool`]).
#[derive(Debug)]
struct Pool {
    /// Per subject, its scores in search order (vector modalities in probe order, then its
    /// fingers).
    per_subject: BTreeMap<SubjectId, Vec<PoolScore>>,
    search: String,
    index_generation: Option<u64>,
    finger_search: Vec<(Modality, FingerSearchInfo)>,
    shortlist: Option<FingerShortlist>,
}

/// A score of a 1:N candidate, with the probe sample it compares and where it came from.
#[derive(Clone, Debug)]
struct PoolScore {
    score: ModalityScore,
    sample: ProbeSample,
    source: ScoreSource,
}

/// A sample of the probe: its `i`-th vector template, or one of its minutiae fingers (scored
/// under [`mcc_model`]).
#[derive(Clone, Copy, Debug)]
enum ProbeSample {
    Vector(usize),
    Finger,
}

/// Which of the finger search's ranked subjects a 1:N search keeps.
#[derive(Clone, Copy, Debug)]
enum FingerKeep {
    /// The best [`list_depth`] ([`Engine::identify`]).
    Best,
    /// Those among the best [`list_depth`] for some raw-score floor not yet known
    /// ([`fanout::keep_for_every_floor`]).
    EveryFloor,
}
