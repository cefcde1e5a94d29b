//! The `/v1` handlers. Each checks the caller's role, maps the request DTO to domain values
//! ([`crate::samples`]), makes one engine call on the blocking pool, notes what the audit
//! record should say ([`Caller::note`]; `middleware::envelope` writes it, and stored writes are
//! journaled with the write itself) and answers. The use cases themselves — enrollment,
//! verification, identification, fusion — live in `biomatch-engine`.

use crate::api::*;
use crate::config::Role;
use crate::error::{ApiError, ErrorCode};
use crate::middleware::{blocking, ApiJson, Caller};
use crate::samples::{
    base64_field, extract_face_image, extract_finger_image, extractor_unavailable, fingerprint,
    samples,
};
use crate::state::{mcc_model, AppState};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use base64::Engine as _;
use biomatch_core::calibration::fpir_from_mosip;
use biomatch_core::fusion::score_of_fmr;
use biomatch_core::{FingerPosition, Modality, SubjectId};
use biomatch_engine::{
    AuditContext, CandidateView, DedupParams, IdentifyParams, ModalityScore, SearchKind,
    SubjectView, UniqueEnrollment,
};
use biomatch_fingerprint::iso;
use biomatch_models::face::quality::CaptureUse;
use std::sync::Arc;

type St = State<Arc<AppState>>;

fn subject_out(v: SubjectView) -> SubjectOut {
    SubjectOut {
        subject_id: v.subject.to_string(),
        seq: v.seq,
        templates: v
            .templates
            .into_iter()
            .map(|(m, model)| TemplateInfoOut { modality: m.to_string(), model: model.to_string() })
            .collect(),
    }
}

fn score_out(s: &ModalityScore) -> ModalityScoreOut {
    ModalityScoreOut {
        modality: s.modality.to_string(),
        score: s.score,
        fmr: s.fmr,
        threshold: s.threshold,
    }
}

fn audit_context(caller: &Caller) -> AuditContext {
    AuditContext {
        key_id: caller.key.id.clone(),
        request_id: caller.request_id.clone(),
        client_request_id: caller.client_request_id.clone(),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => Ok(Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 128)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Idempotency-Key must be 1..=128 visible ASCII characters",
                    )
                })?
                .to_owned(),
        )),
    }
}

/// `?dedup=true` (enroll-if-unique) or `?dedup=false`/absent (plain enrollment).
fn dedup_query(query: Option<&str>) -> Result<bool, ApiError> {
    let mut dedup = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("dedup", "true")) => dedup = true,
            Some(("dedup", "false")) => dedup = false,
            Some(("dedup", _)) | None if pair.starts_with("dedup") => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    "dedup must be `true` or `false`",
                ))
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    "the only query parameter of this endpoint is `dedup`",
                ))
            }
        }
    }
    Ok(dedup)
}

#[utoipa::path(post, path = "/v1/subjects", request_body = EnrollRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes retries of this enrollment safe"),
        ("dedup" = Option<bool>, Query, description = "enroll-if-unique: enroll only if no enrolled subject matches at `target_fpir` (atomically with every other enrollment); otherwise 409 `duplicate` with the candidates")),
    responses((status = 201, body = SubjectOut), (status = 200, body = SubjectOut, description = "a retry found this enrollment already stored"),
        (status = 409, body = DuplicateBody, description = "`duplicate` (with `?dedup=true`): enrolled subjects match, nothing was stored; or `already_enrolled` (then without `candidates`)"),
        (status = 422, body = FaceQualityBody, description = "`face_quality` (with `failures`): nothing was stored; or another image / template error (then an ErrorBody)"),
        (status = 503, body = ErrorBody, description = "with Retry-After: store_unavailable (nothing was stored) or write_in_doubt (retry with the same Idempotency-Key to resolve it)"),
        (status = 507, body = ErrorBody, description = "insufficient_storage: the disk is full, nothing was stored")))]
pub async fn enroll(
    State(state): St,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<SubjectOut>), ApiError> {
    caller.require(Role::Enroll)?;
    let dedup = dedup_query(query.as_deref())?;
    if !dedup && req.has_dedup_fields() {
        return Err(ApiError::bad_request(
            "target_fpir and max_results apply with ?dedup=true only",
        ));
    }
    let sid = req.subject_id.clone();
    caller.note_subjects(vec![sid.clone()]);
    let key = idempotency_key(&headers)?;
    let ctx = audit_context(&caller);
    let retry = key.is_some();
    let r = enroll_inner(&state, req, key, retry, ctx, dedup).await;
    match &r {
        Ok(EnrollOutcome::Created(out)) if state.config.cluster.enabled => {
            // A cluster's write is in the log and the replicas' stores; this node's audit log
            // records the request (durably, before the answer leaves).
            caller.note("enroll", vec![out.subject_id.clone()], format!("log:{}", out.seq));
            caller.about_stored_write();
        }
        Ok(EnrollOutcome::Created(_)) => {
            // The engine's journal made the audit record durable with the enrollment.
            caller.journaled();
        }
        Ok(EnrollOutcome::Replayed(out) | EnrollOutcome::Cached(out)) => {
            caller.note(
                if dedup { "enroll_if_unique" } else { "enroll" },
                vec![out.subject_id.clone()],
                format!("replayed:{}", out.seq),
            );
            caller.about_stored_write();
        }
        Err(e) if e.code == ErrorCode::Duplicate => {
            // The audit record names the subject and the candidates it was refused for.
            let mut subjects = vec![sid];
            subjects.extend(e.candidates.iter().flatten().map(|c| c.subject_id.clone()));
            caller.note(
                "enroll_if_unique",
                subjects,
                format!("duplicate:{}", e.candidates.as_ref().map_or(0, Vec::len)),
            );
        }
        Err(_) => {}
    }
    r.map(EnrollOutcome::into_response)
}

/// What an enrollment answered.
#[derive(Clone, Debug)]
pub enum EnrollOutcome {
    /// Stored now (201).
    Created(SubjectOut),
    /// A retry the engine found already stored (200: e.g. answered by a server that died).
    Replayed(SubjectOut),
    /// A retry whose answer this process remembers (its Idempotency-Key): the same 201 again.
    Cached(SubjectOut),
}

impl EnrollOutcome {
    pub fn into_response(self) -> (StatusCode, Json<SubjectOut>) {
        match self {
            EnrollOutcome::Created(o) | EnrollOutcome::Cached(o) => (StatusCode::CREATED, Json(o)),
            EnrollOutcome::Replayed(o) => (StatusCode::OK, Json(o)),
        }
    }
}

/// An enrollment, plain or enroll-if-unique (`dedup`), as `POST /v1/subjects` runs it and the
/// job queue reruns it: samples decoded, the Idempotency-Key's answer replayed, one engine call
/// on the blocking pool. A `duplicate` is the error [`ApiError::duplicate`].
/// `retry`: an identical enrollment already stored answers `Replayed` (the client sent an
/// Idempotency-Key, `key`; or a job reruns).
pub async fn enroll_inner(
    state: &Arc<AppState>,
    req: EnrollRequest,
    key: Option<String>,
    retry: bool,
    ctx: AuditContext,
    dedup: bool,
) -> Result<EnrollOutcome, ApiError> {
    let subject = SubjectId::new(req.subject_id)?;
    let params = DedupParams {
        target_fpir: req.target_fpir.unwrap_or(state.config.dedup.target_fpir),
        max_results: req.max_results.unwrap_or(state.config.dedup.max_results),
        mode: SearchKind::Auto,
    };
    let samples = samples(state, &req.face, &req.fingers, CaptureUse::Enroll).await?;
    let fp = fingerprint(&subject, &samples);
    if let Some(k) = &key {
        let seen = state.idempotency.lock().get(k).cloned();
        if let Some((seen_fp, out)) = seen {
            if seen_fp != fp {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyKeyReused,
                    "this Idempotency-Key was used for a different request",
                ));
            }
            return Ok(EnrollOutcome::Cached(out));
        }
    }
    let r = if let Some(node) = state.cluster() {
        if dedup {
            return Err(ApiError::new(
                ErrorCode::NotSupported,
                "enroll-if-unique (?dedup=true) is not available on a cluster yet: it needs one \
                 serialisation point across the shards; identify, then enroll",
            ));
        }
        // The Idempotency-Key, scoped by the caller, is the log message's id: a retry through
        // any node within the log's de-duplication window is the same write.
        let msg_id = key.as_ref().map(|k| format!("{}:{k}", ctx.key_id));
        UniqueEnrollment::Enrolled(node?.enroll(subject, &samples, retry, msg_id).await?)
    } else {
        let engine = state.engine()?.clone();
        blocking(move || {
            Ok(if dedup {
                engine.enroll_if_unique(subject, samples, &params, retry, Some(ctx))
            } else {
                engine.enroll(subject, samples, retry, Some(ctx)).map(UniqueEnrollment::Enrolled)
            })
        })
        .await??
    };
    match r {
        UniqueEnrollment::Enrolled(e) if e.created => {
            let out = subject_out(e.view);
            if let Some(k) = key {
                state.idempotency.lock().put(k, fp, out.clone());
            }
            Ok(EnrollOutcome::Created(out))
        }
        // A retry of an enrollment that had landed (e.g. answered by a server that died).
        UniqueEnrollment::Enrolled(e) => Ok(EnrollOutcome::Replayed(subject_out(e.view))),
        UniqueEnrollment::Duplicate(d) => {
            Err(ApiError::duplicate(d.candidates.iter().map(candidate_out).collect()))
        }
    }
}

#[utoipa::path(post, path = "/v1/subjects/batch", request_body = BatchEnrollRequest,
    responses((status = 200, body = BatchEnrollResponse), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "with Retry-After: store_unavailable (nothing was stored) or write_in_doubt (send the batch again: its stored items answer 409)"),
        (status = 507, body = ErrorBody, description = "insufficient_storage: the disk is full, nothing was stored")))]
pub async fn enroll_batch(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<BatchEnrollRequest>,
) -> Result<Json<BatchEnrollResponse>, ApiError> {
    caller.require(Role::Enroll)?;
    if req.subjects.iter().any(EnrollRequest::has_dedup_fields) {
        return Err(ApiError::bad_request(
            "target_fpir and max_results apply to POST /v1/subjects?dedup=true only",
        ));
    }
    let max = state.config.limits.max_batch;
    if req.subjects.is_empty() || req.subjects.len() > max {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("subjects must list 1..={max} enrollments"),
        ));
    }
    // Per item: its samples, or why it cannot be enrolled.
    let mut results: Vec<Option<BatchItemOut>> = Vec::with_capacity(req.subjects.len());
    let mut items = Vec::new();
    for r in req.subjects {
        let id = r.subject_id.clone();
        let item = match SubjectId::new(r.subject_id) {
            Ok(s) => samples(&state, &r.face, &r.fingers, CaptureUse::Enroll).await.map(|x| (s, x)),
            Err(e) => Err(e.into()),
        };
        match item {
            Ok(x) => {
                items.push(x);
                results.push(None);
            }
            Err(e) => results.push(Some(BatchItemOut::refused(id, &e))),
        }
    }
    let subjects: Vec<SubjectId> = items.iter().map(|(s, _)| s.clone()).collect();
    let written: Vec<Result<u64, biomatch_engine::EngineError>> =
        if let Some(node) = state.cluster() {
            // Each item is its own log write, all in flight together.
            let node = node?.clone();
            let writes = items.into_iter().map(|(s, x)| {
                let node = node.clone();
                async move { node.enroll(s, &x, false, None).await.map(|e| e.view.seq) }
            });
            futures_util::future::join_all(writes).await
        } else {
            let engine = state.engine()?.clone();
            let ctx = audit_context(&caller);
            blocking(move || Ok(engine.enroll_batch(items, Some(ctx))?)).await?
        };
    let mut written = subjects.into_iter().zip(written);
    let mut out = Vec::with_capacity(results.len());
    let mut refused = Vec::new();
    for r in results {
        out.push(match r {
            Some(x) => x,
            None => {
                let (s, w) = written.next().expect("one result per written item");
                match w {
                    Ok(seq) => BatchItemOut {
                        subject_id: s.to_string(),
                        status: 201,
                        seq: Some(seq),
                        code: None,
                        message: None,
                    },
                    Err(e) => {
                        let e = ApiError::from(e);
                        refused.push((s.to_string(), e.code));
                        BatchItemOut::refused(s.to_string(), &e)
                    }
                }
            }
        });
    }
    // Each stored item has its journal record; this request's record names the refused ones.
    let stored = out.iter().filter(|o| o.status == 201).count();
    let codes: Vec<String> = refused.iter().map(|(_, c)| c.to_string()).collect();
    if stored > 0 {
        caller.about_stored_write();
    }
    caller.note(
        "enroll_batch",
        refused.into_iter().map(|(s, _)| s).collect(),
        format!("stored:{stored};refused:{}", codes.join(",")),
    );
    Ok(Json(BatchEnrollResponse { results: out }))
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
    caller.note_subjects(vec![subject.to_string()]);
    if let Some(node) = state.cluster() {
        return Ok(Json(subject_out(node?.subject(&subject).await?)));
    }
    Ok(Json(subject_out(state.engine()?.subject(&subject)?)))
}

#[utoipa::path(delete, path = "/v1/subjects/{id}", params(("id" = String, Path)),
    responses((status = 200, body = DeleteOut), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "with Retry-After: store_unavailable (nothing was deleted) or write_in_doubt (retry to resolve it: 200 or 404)"),
        (status = 507, body = ErrorBody, description = "insufficient_storage: the disk is full, nothing was stored")))]
pub async fn delete_subject(
    State(state): St,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeleteOut>, ApiError> {
    caller.require(Role::Enroll)?;
    let subject = SubjectId::new(id)?;
    caller.note_subjects(vec![subject.to_string()]);
    if let Some(node) = state.cluster() {
        let seq = node?.delete(subject.clone()).await?;
        caller.note("delete", vec![subject.to_string()], format!("log:{seq}"));
        caller.about_stored_write();
        return Ok(Json(DeleteOut { subject_id: subject.to_string(), deleted: true, seq }));
    }
    let engine = state.engine()?.clone();
    let (s2, ctx) = (subject.clone(), audit_context(&caller));
    let seq = blocking(move || Ok(engine.delete(&s2, Some(ctx))?)).await?;
    // The engine's journal made the audit record durable with the delete.
    caller.journaled();
    Ok(Json(DeleteOut { subject_id: subject.to_string(), deleted: true, seq }))
}

#[utoipa::path(post, path = "/v1/verify", request_body = VerifyRequest,
    responses((status = 200, body = VerifyResponse), (status = 404, body = ErrorBody),
        (status = 422, body = FaceQualityBody, description = "`face_quality` (with `failures`), `presentation_attack`, or another image / template error (then an ErrorBody)")))]
pub async fn verify(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    caller.require(Role::Verify)?;
    caller.note_subjects(vec![req.subject_id.clone()]);
    let v = verify_inner(&state, req).await?;
    caller.note("verify", vec![v.subject_id.clone()], v.decision.clone());
    Ok(Json(v))
}

async fn verify_inner(
    state: &Arc<AppState>,
    req: VerifyRequest,
) -> Result<VerifyResponse, ApiError> {
    let subject = SubjectId::new(req.subject_id)?;
    let target = req.target_fmr.unwrap_or(state.config.search.default_target_fmr);
    let samples = samples(state, &req.face, &req.fingers, CaptureUse::Verify).await?;
    let v = if let Some(node) = state.cluster() {
        node?.verify(&subject, &samples, target).await?
    } else {
        let engine = state.engine()?.clone();
        blocking(move || {
            let probe = engine.prepare(samples)?;
            Ok(engine.verify(&subject, &probe, target)?)
        })
        .await?
    };
    Ok(VerifyResponse {
        subject_id: v.subject.to_string(),
        decision: if v.is_match { "match" } else { "no_match" }.into(),
        is_match: v.is_match,
        score: score_of_fmr(v.fmr),
        fmr: v.fmr,
        target_fmr: v.target_fmr,
        threshold: score_of_fmr(v.target_fmr),
        scores: v.scores.iter().map(score_out).collect(),
    })
}

#[utoipa::path(post, path = "/v1/identify", request_body = IdentifyRequest,
    responses((status = 200, body = IdentifyResponse),
        (status = 422, body = FaceQualityBody, description = "`face_quality` (with `failures`), or another image / template error (then an ErrorBody)")))]
pub async fn identify(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<IdentifyRequest>,
) -> Result<Json<IdentifyResponse>, ApiError> {
    caller.require(Role::Identify)?;
    let r = identify_inner(&state, req).await?;
    caller.note(
        "identify",
        r.candidates.iter().map(|c| c.subject_id.clone()).collect(),
        format!("candidates:{}", r.candidates.len()),
    );
    Ok(Json(r))
}

fn candidate_out(c: &CandidateView) -> CandidateOut {
    CandidateOut {
        subject_id: c.subject.to_string(),
        score: score_of_fmr(c.fmr),
        fmr: c.fmr,
        scores: c.scores.iter().map(score_out).collect(),
    }
}

pub async fn identify_inner(
    state: &Arc<AppState>,
    req: IdentifyRequest,
) -> Result<IdentifyResponse, ApiError> {
    let cfg = &state.config;
    let samples = samples(state, &req.face, &req.fingers, CaptureUse::Identify).await?;
    let target_fpir = match req.fpir_choice().map_err(ApiError::bad_request)? {
        Some(FpirIn::Rate(f)) => Some(f),
        Some(FpirIn::Mosip(m)) => Some(fpir_from_mosip(m)),
        None => req.threshold.is_none().then_some(cfg.search.default_target_fpir),
    };
    let subset = match req.gallery {
        None => None,
        Some(ids) => {
            if ids.is_empty() || ids.len() > cfg.limits.max_gallery_subset {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!("gallery must list 1..={} subject ids", cfg.limits.max_gallery_subset),
                ));
            }
            Some(ids.into_iter().map(SubjectId::new).collect::<Result<Vec<_>, _>>()?)
        }
    };
    let params = IdentifyParams {
        max_results: req.max_results.unwrap_or(cfg.search.default_max_results),
        threshold: req.threshold,
        target_fpir,
        subset,
        mode: match req.search {
            SearchKindIn::Auto => SearchKind::Auto,
            SearchKindIn::Exact => SearchKind::Exact,
            SearchKindIn::Index => SearchKind::Index,
        },
        keep_shortlist: false,
    };
    let r = if let Some(node) = state.cluster() {
        node?.identify(&samples, &params).await?
    } else {
        let engine = state.engine()?.clone();
        blocking(move || {
            let probe = engine.prepare(samples)?;
            Ok(engine.identify(&probe, &params)?)
        })
        .await?
    };
    Ok(IdentifyResponse {
        candidates: r.candidates.iter().map(candidate_out).collect(),
        gallery_size: r.gallery_size,
        target_fpir: r.target_fpir,
        search: r.search,
        index_generation: r.index_generation,
        finger_search: r
            .finger_search
            .iter()
            .map(|(m, i)| FingerSearchOut {
                modality: m.to_string(),
                gallery_fingers: i.gallery_fingers,
                compared: i.compared,
                preselected: i.preselected,
            })
            .collect(),
    })
}

#[utoipa::path(post, path = "/v1/extract", request_body = ExtractRequest,
    responses((status = 200, body = ExtractResponse), (status = 422, body = ErrorBody)))]
pub async fn extract(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<ExtractRequest>,
) -> Result<Json<ExtractResponse>, ApiError> {
    caller.require_any(&[Role::Verify, Role::Enroll, Role::Identify])?;
    if req.modality().map_err(ApiError::bad_request)? == ExtractModality::Finger {
        return extract_finger(&state, &req.image).await.map(Json);
    }
    let modality = Modality::Face;
    state.gallery()?;
    let bytes = base64_field(modality, "image", &req.image)?;
    let Some(x) = state.extractor_for(modality).cloned() else {
        return Err(extractor_unavailable("this server has no face extractor; send templates"));
    };
    let e = extract_face_image(&state, x, bytes, None).await?;
    let q = &state.config.extractors.face.quality;
    let uses = match &e.quality.measures {
        Some(m) => CaptureUse::ALL
            .iter()
            .map(|&u| {
                let failures = q.failures(u, m);
                UseVerdictOut {
                    purpose: u.as_str().to_string(),
                    passes: failures.is_empty(),
                    failures,
                }
            })
            .collect(),
        None => Vec::new(),
    };
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
            measures: e.quality.measures.clone(),
            uses,
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
        return Err(extractor_unavailable("this server has no fingerprint extractor"));
    };
    let e = extract_finger_image(state, x, bytes, None).await?;
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
