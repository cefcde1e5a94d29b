//! The `/v1` handlers. Each checks the caller's role first, validates its input into domain
//! types, runs the gallery work on the blocking pool, writes the audit record where required,
//! and only then answers.

use crate::api::*;
use crate::audit::AuditRecord;
use crate::config::Role;
use crate::error::ApiError;
use crate::middleware::{blocking, ApiJson, Caller};
use crate::state::{mcc_model, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use base64::Engine;
use biomatch_core::calibration::fpir_from_mosip;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::fusion::{fuse_fmr, score_of_fmr};
use biomatch_core::{CalibrationTable, FingerPosition, Modality, ModelId, SubjectId, Template};
use biomatch_fingerprint::iso;
use biomatch_gallery::{
    AnnParams, Enrollment, FingerGallery, GalleryError, IdentifyOptions, Probe, SearchMode, Store,
};
use sha2::Digest;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

type St = State<Arc<AppState>>;

/// A sample after validation: a template, or image bytes for the extractor.
enum Pending {
    Ready(Template),
    Image(Vec<u8>),
}

/// A finger sample after validation.
enum PendingFinger {
    Vector(Pending),
    Minutiae(FingerTemplate),
    Image(Vec<u8>),
}

/// The validated samples of a request: fixed-length templates (face, finger models) and minutiae
/// fingers (each with its position set).
#[derive(Clone, Default)]
struct Samples {
    vectors: Vec<(Modality, Template)>,
    fingers: Vec<FingerTemplate>,
}

impl Samples {
    fn len(&self) -> usize {
        self.vectors.len() + self.fingers.len()
    }
}

fn base64_field(modality: Modality, field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes())
        .map_err(|_| ApiError::bad_request(format!("{modality}: `{field}` is not valid base64")))
}

/// Validate one sample: a template of a configured model, or decodable base64 image bytes.
fn sample(
    state: &AppState,
    modality: Modality,
    image: &Option<String>,
    template: &Option<TemplateIn>,
) -> Result<Pending, ApiError> {
    match (image, template) {
        (Some(_), Some(_)) | (None, None) => Err(ApiError::bad_request(format!(
            "{modality}: give exactly one of `image` or `template`"
        ))),
        (Some(img), None) => {
            let bytes = base64_field(modality, "image", img)?;
            if state.extractor_for(modality).is_none() {
                return Err(ApiError::invalid(
                    "extraction_unavailable",
                    format!("{modality}: this server has no {modality} extractor; send a template"),
                ));
            }
            Ok(Pending::Image(bytes))
        }
        (None, Some(t)) => {
            let got = ModelId::parse(&t.model)?;
            match state.models_for(modality).find(|m| m.id == got) {
                Some(m) => Ok(Pending::Ready(Template::new(got, m.dim, t.vector.clone())?)),
                None => {
                    let accepted: Vec<String> =
                        state.models_for(modality).map(|m| m.id.to_string()).collect();
                    let code = if state.models_for(modality).any(|m| m.id.name() == got.name()) {
                        "model_mismatch"
                    } else {
                        "unknown_model"
                    };
                    Err(ApiError::invalid(
                        code,
                        format!(
                            "{modality} templates must come from one of [{}]; got {got}",
                            accepted.join(", ")
                        ),
                    ))
                }
            }
        }
    }
}

/// Validate one finger sample.
fn finger_sample(state: &AppState, f: &FingerIn) -> Result<PendingFinger, ApiError> {
    let position = FingerPosition::new(f.position)?;
    let m = Modality::Finger(position);
    let given = [f.image.is_some(), f.minutiae.is_some(), f.template.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::bad_request(format!(
            "{m}: give exactly one of `image`, `minutiae` or `template`"
        )));
    }
    if f.template.is_some() {
        return sample(state, m, &None, &f.template).map(PendingFinger::Vector);
    }
    if state.finger_calibration.is_none() {
        return Err(ApiError::invalid(
            "fingerprints_unavailable",
            format!("{m}: this server does not accept minutiae fingerprints"),
        ));
    }
    if let Some(img) = &f.image {
        if state.finger_extractor.is_none() {
            return Err(ApiError::invalid(
                "extraction_unavailable",
                format!("{m}: this server has no fingerprint extractor; send minutiae"),
            ));
        }
        return Ok(PendingFinger::Image(base64_field(m, "image", img)?));
    }
    let bytes = base64_field(m, "minutiae", f.minutiae.as_deref().unwrap_or_default())?;
    let (_, mut t) = iso::parse_record(&bytes)
        .map_err(|e| ApiError::invalid("invalid_minutiae_record", format!("{m}: {e}")))?;
    if t.position.is_some_and(|p| p != position) {
        return Err(ApiError::invalid(
            "finger_position_mismatch",
            format!(
                "{m}: the record says finger position {}",
                t.position.map_or(0, FingerPosition::code)
            ),
        ));
    }
    t.position = Some(position);
    Ok(PendingFinger::Minutiae(t))
}

/// The samples of a request; at least one, no modality twice. Images are turned into templates
/// on the blocking pool.
async fn samples(
    state: &Arc<AppState>,
    face: &Option<SampleIn>,
    fingers: &[FingerIn],
) -> Result<Samples, ApiError> {
    let mut pending = Vec::new();
    if let Some(f) = face {
        pending.push((Modality::Face, sample(state, Modality::Face, &f.image, &f.template)?));
    }
    let mut seen = HashSet::new();
    let mut finger_pending = Vec::new();
    for f in fingers {
        if !seen.insert(f.position) {
            return Err(ApiError::bad_request(format!(
                "finger position {} given twice",
                f.position
            )));
        }
        let m = Modality::Finger(FingerPosition::new(f.position)?);
        match finger_sample(state, f)? {
            PendingFinger::Vector(p) => pending.push((m, p)),
            other => finger_pending.push((m, other)),
        }
    }
    if pending.is_empty() && finger_pending.is_empty() {
        return Err(ApiError::bad_request("give at least one sample (`face` or `fingers`)"));
    }
    let mut out = Samples::default();
    for (m, p) in pending {
        let t = match p {
            Pending::Ready(t) => t,
            Pending::Image(bytes) => {
                let x = state.extractor_for(m).expect("checked in sample()").clone();
                blocking(move || Ok(x.extract(&bytes, m)?.template)).await?
            }
        };
        out.vectors.push((m, t));
    }
    for (m, p) in finger_pending {
        let t = match p {
            PendingFinger::Minutiae(t) => t,
            PendingFinger::Image(bytes) => {
                let x = state.finger_extractor.clone().expect("checked in finger_sample()");
                let Modality::Finger(pos) = m else { unreachable!("finger modality") };
                blocking(move || Ok(x.extract(&bytes, Some(pos))?.template)).await?
            }
            PendingFinger::Vector(_) => unreachable!("vectors are pending above"),
        };
        state.check_finger(&t)?;
        out.fingers.push(t);
    }
    Ok(out)
}

/// What the two stores hold for a subject (templates listed, never their content).
fn subject_out(
    store: &Store,
    fingers: Option<&Arc<FingerGallery>>,
    subject: &SubjectId,
) -> Result<SubjectOut, ApiError> {
    let info = match store.get(subject) {
        Ok(i) => Some(i),
        Err(GalleryError::UnknownSubject(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let finger_seq = fingers.and_then(|f| f.store().seq_of(subject));
    let Some(seq) = info.as_ref().map(|i| i.seq).or(finger_seq) else {
        return Err(GalleryError::UnknownSubject(subject.clone()).into());
    };
    let mut templates: Vec<TemplateInfoOut> = info
        .into_iter()
        .flat_map(|i| i.templates)
        .map(|t| TemplateInfoOut { modality: t.modality.to_string(), model: t.model.to_string() })
        .collect();
    if let Some(f) = fingers {
        templates.extend(f.positions(subject).into_iter().map(|p| TemplateInfoOut {
            modality: Modality::Finger(p).to_string(),
            model: mcc_model().to_string(),
        }));
    }
    Ok(SubjectOut { subject_id: subject.to_string(), seq, templates })
}

/// A digest of what an enrollment request asks for, to recognise a retried request.
fn fingerprint(subject: &SubjectId, samples: &Samples) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(subject.as_str().as_bytes());
    for (m, t) in &samples.vectors {
        h.update([m.code()]);
        h.update(t.model().to_string().as_bytes());
        for v in t.vector() {
            h.update(v.to_le_bytes());
        }
    }
    for t in &samples.fingers {
        h.update(iso::to_iso(t));
    }
    h.finalize().into()
}

async fn audit(
    state: &AppState,
    caller: &Caller,
    op: &str,
    subjects: Vec<String>,
    outcome: String,
) -> Result<(), ApiError> {
    let rec = AuditRecord::now(&caller.key.id, op, &caller.request_id, subjects, outcome);
    state.audit.append(rec).await.map_err(ApiError::internal)
}

fn outcome_of<T>(r: &Result<T, ApiError>, ok: impl FnOnce(&T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => format!("error:{}", e.code),
    }
}

#[utoipa::path(post, path = "/v1/subjects", request_body = EnrollRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes retries of this enrollment safe")),
    responses((status = 201, body = SubjectOut), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn enroll(
    State(state): St,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<SubjectOut>), ApiError> {
    caller.require(Role::Enroll)?;
    let subject = SubjectId::new(req.subject_id)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 128)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Idempotency-Key must be 1..=128 visible ASCII characters",
                    )
                })?
                .to_owned(),
        ),
    };
    let samples = samples(&state, &req.face, &req.fingers).await?;
    let fp = fingerprint(&subject, &samples);
    if let Some(k) = &key {
        if let Some((seen_fp, out)) = state.idempotency.lock().get(k) {
            if *seen_fp == fp {
                return Ok((StatusCode::CREATED, Json(out.clone())));
            }
            return Err(ApiError::invalid(
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            ));
        }
    }
    let g = state.gallery()?.clone();
    let fingers = if samples.fingers.is_empty() {
        state.fingers().cloned()
    } else {
        Some(state.fingers_or_err()?.clone())
    };
    let retry = key.is_some();
    let (st, s2) = (state.clone(), subject.clone());
    let r = blocking(move || {
        let _one_at_a_time = st.enroll_lock.lock();
        let store = g.store();
        let fg = fingers.as_ref();
        let exists = store.contains(&s2) || fg.is_some_and(|f| f.contains(&s2));
        if exists {
            // A retry whose first attempt succeeded (e.g. before a restart): same templates →
            // same answer.
            if retry && same_enrollment(store, fg, &s2, &samples) {
                return subject_out(store, fg, &s2);
            }
            return Err(GalleryError::AlreadyEnrolled(s2).into());
        }
        if let (Some(f), false) = (fg, samples.fingers.is_empty()) {
            f.enroll(&s2, &samples.fingers)?;
        }
        if !samples.vectors.is_empty() {
            let e = Enrollment { subject: s2.clone(), templates: samples.vectors.clone() };
            if let Err(err) = store.enroll(&e) {
                // Both stores or neither: take the fingers back.
                if let (Some(f), false) = (fg, samples.fingers.is_empty()) {
                    if let Err(undo) = f.delete(&s2) {
                        tracing::error!(error = %undo, "could not undo the fingers of a failed enrollment");
                    }
                }
                return Err(err.into());
            }
        }
        subject_out(store, fg, &s2)
    })
    .await;
    let outcome = outcome_of(&r, |o| format!("enrolled:{}", o.seq));
    audit(&state, &caller, "enroll", vec![subject.to_string()], outcome).await?;
    let out = r?;
    if let Some(k) = key {
        state.idempotency.lock().put(k, fp, out.clone());
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// Whether the stored enrollment holds exactly these samples (fp16 rounding tolerated).
fn same_enrollment(
    store: &Store,
    fingers: Option<&Arc<FingerGallery>>,
    subject: &SubjectId,
    samples: &Samples,
) -> bool {
    let stored_fingers = fingers.and_then(|f| f.store().get(subject));
    let fingers_same = match stored_fingers {
        None => samples.fingers.is_empty(),
        Some(have) => {
            have.len() == samples.fingers.len()
                && samples.fingers.iter().all(|t| have.iter().any(|h| h == t))
        }
    };
    let vectors_same = if samples.vectors.is_empty() {
        !store.contains(subject)
    } else {
        same_templates(
            store,
            &Enrollment { subject: subject.clone(), templates: samples.vectors.clone() },
        )
    };
    fingers_same && vectors_same
}

/// Whether the stored enrollment holds exactly these templates (fp16 rounding tolerated).
fn same_templates(store: &Store, e: &Enrollment) -> bool {
    let Ok(info) = store.get(&e.subject) else { return false };
    info.templates.len() == e.templates.len()
        && e.templates.iter().all(|(m, t)| {
            store.template(&e.subject, *m).is_ok_and(|(model, v)| {
                &model == t.model() && v.iter().zip(t.vector()).all(|(a, b)| (a - b).abs() <= 1e-3)
            })
        })
}

#[utoipa::path(get, path = "/v1/subjects/{id}", params(("id" = String, Path)),
    responses((status = 200, body = SubjectOut), (status = 404, body = ErrorBody)))]
pub async fn get_subject(
    State(state): St,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SubjectOut>, ApiError> {
    caller.require(Role::Enroll)?;
    let subject = SubjectId::new(id)?;
    let g = state.gallery()?;
    Ok(Json(subject_out(g.store(), state.fingers(), &subject)?))
}

#[utoipa::path(delete, path = "/v1/subjects/{id}", params(("id" = String, Path)),
    responses((status = 200, body = DeleteOut), (status = 404, body = ErrorBody)))]
pub async fn delete_subject(
    State(state): St,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeleteOut>, ApiError> {
    caller.require(Role::Enroll)?;
    let subject = SubjectId::new(id)?;
    let g = state.gallery()?.clone();
    let (st, s2) = (state.clone(), subject.clone());
    let r = blocking(move || {
        let _one_at_a_time = st.enroll_lock.lock();
        let fingers = st.fingers().filter(|f| f.contains(&s2));
        let in_store = g.store().contains(&s2);
        if !in_store && fingers.is_none() {
            return Err(GalleryError::UnknownSubject(s2).into());
        }
        let mut seq = 0;
        if let Some(f) = fingers {
            seq = f.delete(&s2)?;
        }
        if in_store {
            seq = g.store().delete(&s2)?;
        }
        Ok(seq)
    })
    .await;
    audit(
        &state,
        &caller,
        "delete",
        vec![subject.to_string()],
        outcome_of(&r, |s| format!("deleted:{s}")),
    )
    .await?;
    Ok(Json(DeleteOut { subject_id: subject.to_string(), deleted: true, seq: r? }))
}

/// One modality's score in an identify answer, read against its calibration.
fn scored(modality: Modality, score: f32, cal: &CalibrationTable) -> ModalityScoreOut {
    ModalityScoreOut {
        modality: modality.to_string(),
        score,
        fmr: cal.fmr_at(score),
        threshold: None,
    }
}

/// Add a candidate's score for a modality it was not returned for; a candidate lacking that
/// modality just gets no score for it.
fn fill_in(
    scores: &mut Vec<ModalityScoreOut>,
    modality: Modality,
    cal: &CalibrationTable,
    verified: Result<f32, GalleryError>,
) -> Result<(), ApiError> {
    match verified {
        Ok(score) => scores.push(scored(modality, score, cal)),
        Err(GalleryError::NoTemplate { .. } | GalleryError::UnknownSubject(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn check_rate(name: &str, v: f64) -> Result<f64, ApiError> {
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(ApiError::invalid("invalid_rate", format!("{name} must be in (0, 1); got {v}")))
    }
}

#[utoipa::path(post, path = "/v1/verify", request_body = VerifyRequest,
    responses((status = 200, body = VerifyResponse), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn verify(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    caller.require(Role::Verify)?;
    let r = verify_inner(&state, req).await;
    let subjects = r.as_ref().map(|v| vec![v.subject_id.clone()]).unwrap_or_default();
    audit(&state, &caller, "verify", subjects, outcome_of(&r, |v| v.decision.clone())).await?;
    r.map(Json)
}

async fn verify_inner(
    state: &Arc<AppState>,
    req: VerifyRequest,
) -> Result<VerifyResponse, ApiError> {
    let subject = SubjectId::new(req.subject_id)?;
    let target =
        check_rate("target_fmr", req.target_fmr.unwrap_or(state.config.search.default_target_fmr))?;
    let samples = samples(state, &req.face, &req.fingers).await?;
    let g = state.gallery()?.clone();
    let fingers =
        if samples.fingers.is_empty() { None } else { Some(state.fingers_or_err()?.clone()) };
    let (st, s2) = (state.clone(), subject.clone());
    let raw = blocking(move || {
        let known_fingers = st.fingers().is_some_and(|f| f.contains(&s2));
        let mut out = Vec::with_capacity(samples.len());
        for (modality, template) in samples.vectors {
            let score = match g.store().verify(&s2, &Probe { modality, template: template.clone() })
            {
                // Known by its fingers only: this modality is what it lacks.
                Err(GalleryError::UnknownSubject(_)) if known_fingers => {
                    Err(GalleryError::NoTemplate { subject: s2.clone(), modality })
                }
                r => r,
            }?;
            out.push((modality, template.model().clone(), score));
        }
        for t in samples.fingers {
            let f = fingers.as_ref().expect("fingers checked");
            let modality = Modality::Finger(t.position.expect("set by finger_sample"));
            let score = match f.verify(&s2, &t) {
                Err(GalleryError::UnknownSubject(_)) if g.store().contains(&s2) => {
                    Err(GalleryError::NoTemplate { subject: s2.clone(), modality })
                }
                r => r,
            }?;
            out.push((modality, mcc_model(), score));
        }
        Ok::<_, ApiError>(out)
    })
    .await?;
    let mut scores = Vec::with_capacity(raw.len());
    for (modality, model, score) in raw {
        let cal = state.calibration(&model)?;
        scores.push(ModalityScoreOut {
            modality: modality.to_string(),
            score,
            fmr: cal.fmr_at(score),
            threshold: Some(cal.threshold_for_fmr(target)?),
        });
    }
    let fmr = fuse_fmr(scores.iter().map(|s| s.fmr));
    let is_match = fmr <= target;
    Ok(VerifyResponse {
        subject_id: subject.to_string(),
        decision: if is_match { "match" } else { "no_match" }.into(),
        is_match,
        score: score_of_fmr(fmr),
        fmr,
        target_fmr: target,
        threshold: score_of_fmr(target),
        scores,
    })
}

#[utoipa::path(post, path = "/v1/identify", request_body = IdentifyRequest,
    responses((status = 200, body = IdentifyResponse), (status = 422, body = ErrorBody)))]
pub async fn identify(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<IdentifyRequest>,
) -> Result<Json<IdentifyResponse>, ApiError> {
    caller.require(Role::Identify)?;
    let r = identify_inner(&state, req).await;
    let subjects = r
        .as_ref()
        .map(|v| v.candidates.iter().map(|c| c.subject_id.clone()).collect())
        .unwrap_or_default();
    audit(
        &state,
        &caller,
        "identify",
        subjects,
        outcome_of(&r, |v| format!("candidates:{}", v.candidates.len())),
    )
    .await?;
    r.map(Json)
}

async fn identify_inner(
    state: &Arc<AppState>,
    req: IdentifyRequest,
) -> Result<IdentifyResponse, ApiError> {
    let cfg = &state.config;
    let max_results = req.max_results.unwrap_or(cfg.search.default_max_results);
    if max_results == 0 || max_results > biomatch_gallery::MAX_RESULTS_LIMIT {
        return Err(ApiError::invalid(
            "invalid_parameter",
            format!("max_results must be in 1..={}", biomatch_gallery::MAX_RESULTS_LIMIT),
        ));
    }
    let samples = samples(state, &req.face, &req.fingers).await?;
    if req.threshold.is_some() && (req.target_fpir.is_some() || req.mosip_target_fpir.is_some()) {
        return Err(ApiError::bad_request("give either `threshold` or a target FPIR, not both"));
    }
    if req.threshold.is_some() && samples.len() > 1 {
        return Err(ApiError::bad_request(
            "a raw `threshold` applies to single-modality probes only; use target_fpir",
        ));
    }
    if let Some(t) = req.threshold.filter(|t| !t.is_finite()) {
        return Err(ApiError::invalid("invalid_parameter", format!("threshold {t} is not finite")));
    }
    let target_fpir = match (req.target_fpir, req.mosip_target_fpir) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give target_fpir or mosip_target_fpir, not both"))
        }
        (Some(f), None) => Some(check_rate("target_fpir", f)?),
        (None, Some(m)) => Some(check_rate("mosip_target_fpir", fpir_from_mosip(m))?),
        (None, None) => req.threshold.is_none().then_some(cfg.search.default_target_fpir),
    };
    let subset = match req.gallery {
        None => None,
        Some(ids) => {
            if ids.is_empty() || ids.len() > cfg.limits.max_gallery_subset {
                return Err(ApiError::invalid(
                    "invalid_parameter",
                    format!("gallery must list 1..={} subject ids", cfg.limits.max_gallery_subset),
                ));
            }
            Some(ids.into_iter().map(SubjectId::new).collect::<Result<Vec<_>, _>>()?)
        }
    };
    let ann = AnnParams { k_prime: cfg.search.k_prime, nprobe: None };
    let mode = match req.search {
        SearchKindIn::Auto => SearchMode::Auto(ann),
        SearchKindIn::Exact => SearchMode::Exact,
        SearchKindIn::Index => SearchMode::Index(ann),
    };
    let g = state.gallery()?.clone();
    let fingers = if samples.fingers.is_empty() {
        state.fingers().cloned()
    } else {
        Some(state.fingers_or_err()?.clone())
    };
    let state2 = state.clone();
    blocking(move || {
        let store = g.store();
        let nf = fingers.as_ref().map_or(0, |f| f.len());
        let n = match &subset {
            Some(s) => s.len(),
            None if samples.vectors.is_empty() => nf,
            None if samples.fingers.is_empty() => store.len(),
            None => store.len().max(nf),
        } as u64;
        let single = samples.len() == 1;
        // Single modality: the candidate threshold applies directly to the raw score.
        let raw_threshold = |cal: &CalibrationTable| -> Result<Option<f32>, ApiError> {
            Ok(match (single, req.threshold, target_fpir) {
                (true, Some(t), _) => Some(t),
                (true, None, Some(f)) => Some(cal.threshold_for_fpir(f, n.max(1))?),
                _ => None,
            })
        };
        let k = if single {
            max_results
        } else {
            (max_results * 3).min(biomatch_gallery::MAX_RESULTS_LIMIT)
        };
        let mut per_subject: BTreeMap<SubjectId, Vec<ModalityScoreOut>> = BTreeMap::new();
        let mut path = None;
        let mut finger_search = Vec::new();
        for (modality, template) in &samples.vectors {
            let cal = state2.calibration(template.model())?;
            let threshold = raw_threshold(cal)?;
            let opts = IdentifyOptions { max_results: k, threshold, subset: subset.clone() };
            let probe = Probe { modality: *modality, template: template.clone() };
            let (cands, p) = g.identify(&probe, &opts, mode)?;
            path = Some((p.kind.to_owned(), p.generation));
            for c in cands {
                per_subject.entry(c.subject_id).or_default().push(scored(*modality, c.score, cal));
            }
        }
        let cal_f = state2.calibration(&mcc_model());
        for t in &samples.fingers {
            let f = fingers.as_ref().expect("checked before");
            let cal = cal_f.as_ref().map_err(Clone::clone)?;
            let modality = Modality::Finger(t.position.expect("set by finger_sample"));
            let (cands, info) = f.identify(t, k, raw_threshold(cal)?, subset.as_deref())?;
            finger_search.push(FingerSearchOut {
                modality: modality.to_string(),
                gallery_fingers: info.gallery_fingers,
                compared: info.compared,
                preselected: info.preselected,
            });
            path.get_or_insert_with(|| {
                ((if info.preselected { "index" } else { "exact" }).to_owned(), None)
            });
            for (subject, score) in cands {
                per_subject.entry(subject).or_default().push(scored(modality, score, cal));
            }
        }
        // Fill in the modalities a candidate was not returned for, then fuse.
        let mut candidates = Vec::with_capacity(per_subject.len());
        for (subject, mut scores) in per_subject {
            if !single {
                for (modality, template) in &samples.vectors {
                    if scores.iter().any(|s| s.modality == modality.to_string()) {
                        continue;
                    }
                    let cal = state2.calibration(template.model())?;
                    let probe = Probe { modality: *modality, template: template.clone() };
                    fill_in(&mut scores, *modality, cal, store.verify(&subject, &probe))?;
                }
                for t in &samples.fingers {
                    let modality = Modality::Finger(t.position.expect("set by finger_sample"));
                    if scores.iter().any(|s| s.modality == modality.to_string()) {
                        continue;
                    }
                    let (f, cal) =
                        (fingers.as_ref().expect("checked"), cal_f.as_ref().map_err(Clone::clone)?);
                    fill_in(&mut scores, modality, cal, f.verify(&subject, t))?;
                }
            }
            let fmr = fuse_fmr(scores.iter().map(|s| s.fmr));
            if !single {
                if let Some(f) = target_fpir {
                    if fmr > f / n.max(1) as f64 {
                        continue;
                    }
                }
            }
            candidates.push(CandidateOut {
                subject_id: subject.to_string(),
                score: score_of_fmr(fmr),
                fmr,
                scores,
            });
        }
        candidates.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| {
                    b.scores
                        .iter()
                        .map(|s| s.score)
                        .sum::<f32>()
                        .total_cmp(&a.scores.iter().map(|s| s.score).sum::<f32>())
                })
                .then_with(|| a.subject_id.cmp(&b.subject_id))
        });
        candidates.truncate(max_results);
        let (search, index_generation) = path.expect("at least one probe");
        Ok(IdentifyResponse {
            candidates,
            gallery_size: n,
            target_fpir: if req.threshold.is_some() { None } else { target_fpir },
            search,
            index_generation,
            finger_search,
        })
    })
    .await
}

#[utoipa::path(post, path = "/v1/extract", request_body = ExtractRequest,
    responses((status = 200, body = ExtractResponse), (status = 422, body = ErrorBody)))]
pub async fn extract(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<ExtractRequest>,
) -> Result<Json<ExtractResponse>, ApiError> {
    caller.require_any(&[Role::Verify, Role::Enroll, Role::Identify])?;
    match req.modality.as_deref().unwrap_or("face") {
        "face" => {}
        "finger" => return extract_finger(&state, &req.image).await.map(Json),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown modality {other:?}; use face or finger"
            )))
        }
    }
    let modality = Modality::Face;
    state.gallery()?;
    let Pending::Image(bytes) = sample(&state, modality, &Some(req.image), &None)? else {
        unreachable!("an image sample")
    };
    let x = state.extractor_for(modality).expect("checked in sample()").clone();
    let e = blocking(move || Ok(x.extract(&bytes, modality)?)).await?;
    Ok(Json(ExtractResponse {
        modality: e.modality.to_string(),
        model: e.template.model().to_string(),
        vector: Some(e.template.vector().to_vec()),
        quality: Some(QualityOut {
            detector_score: e.quality.detector_score,
            inter_eye_px: e.quality.inter_eye_px,
            sharpness: e.quality.sharpness,
            faces: e.quality.faces,
            bbox: e.quality.bbox,
        }),
        minutiae: None,
        finger_quality: None,
    }))
}

/// Minutiae of a finger image, as an ISO/IEC 19794-2 record the client can send back.
async fn extract_finger(state: &Arc<AppState>, image: &str) -> Result<ExtractResponse, ApiError> {
    state.gallery()?;
    let m = Modality::Finger(FingerPosition::new(1)?);
    let bytes = base64_field(m, "image", image)?;
    let Some(x) = state.finger_extractor.clone() else {
        return Err(ApiError::invalid(
            "extraction_unavailable",
            "this server has no fingerprint extractor",
        ));
    };
    let e = blocking(move || Ok(x.extract(&bytes, None)?)).await?;
    Ok(ExtractResponse {
        modality: "finger".into(),
        model: mcc_model().to_string(),
        vector: None,
        quality: None,
        minutiae: Some(base64::engine::general_purpose::STANDARD.encode(iso::to_iso(&e.template))),
        finger_quality: Some(FingerQualityOut {
            minutiae: e.quality.minutiae,
            mean_reliability: e.quality.mean_reliability,
            contrast: e.quality.contrast,
        }),
    })
}
