//! From request DTOs to the engine's [`Samples`]: base64 decoding, template and minutiae-record
//! checks against the configured models, and image extraction on the blocking pool. Nothing here
//! compares anything; that is the engine's work.
//!
//! Every image goes through [`extract_face_image`] or [`extract_finger_image`]: its header is read and its
//! limits checked on the request's task (no pixels allocated), the decode's memory is reserved
//! from the service's [`DecodeBudget`](crate::decode_budget::DecodeBudget), and the extraction
//! runs on the blocking pool holding that reservation.

use crate::api::{check_samples, FingerIn, FingerSource, SampleIn, SampleSource};
use crate::error::{ApiError, ErrorCode};
use crate::middleware::blocking;
use crate::state::AppState;
use base64::Engine as _;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{FingerPosition, Modality, ModelId, Template};
use biomatch_engine::Samples;
use biomatch_fingerprint::iso;
use biomatch_models::face::quality::CaptureUse;
use biomatch_models::imageio::{self, ImageHeader, ImageLimits};
use biomatch_models::{ExtractError, ExtractOptions, Extraction};
use std::sync::Arc;

/// Per-image heap of the face pipeline besides the decoded image: the 640×640×3 f32 letterbox
/// tensor (4.7 MiB), the aligned crop and the detector's outputs.
pub const FACE_WORKSPACE: u64 = 8 << 20;

/// Heap of the finger pipeline per pixel besides the decoded image: the PGM handed to mindtct
/// and mindtct's padded and binarised copies.
pub const FINGER_WORKSPACE_PER_PIXEL: u64 = 5;

fn face_cost(h: &ImageHeader) -> u64 {
    h.decode_cost + FACE_WORKSPACE
}

fn finger_cost(h: &ImageHeader) -> u64 {
    h.decode_cost + u64::from(h.width) * u64::from(h.height) * FINGER_WORKSPACE_PER_PIXEL
}

/// The most a face image accepted under `limits` reserves.
pub fn face_cost_bound(limits: &ImageLimits) -> u64 {
    limits.worst_decode_cost() + FACE_WORKSPACE
}

/// The most a finger image accepted under `limits` reserves.
pub fn finger_cost_bound(limits: &ImageLimits) -> u64 {
    let side = u64::from(limits.max_side);
    let px = limits.max_pixels.min(side * side);
    limits.worst_decode_cost() + px * FINGER_WORKSPACE_PER_PIXEL
}

/// Check the image's header against `limits`, reserve its cost from the decode budget (waiting,
/// cancellably, while other decodes hold it), then run `f` on the blocking pool.
async fn with_decode_budget<T, F>(
    state: &AppState,
    limits: &ImageLimits,
    bytes: Vec<u8>,
    cost: fn(&ImageHeader) -> u64,
    f: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&[u8]) -> Result<T, ExtractError> + Send + 'static,
{
    let header = imageio::probe(&bytes, limits)?;
    let need = cost(&header);
    let permit = state.decode_budget.acquire(need).await.map_err(|total| {
        ApiError::new(
            ErrorCode::ImageTooLarge,
            format!(
                "the image ({}x{} pixels) needs {} MiB to decode; this service decodes at most \
                 {} MiB at once",
                header.width,
                header.height,
                need.div_ceil(1 << 20),
                total >> 20
            ),
        )
    })?;
    blocking(move || {
        let _reserved = permit;
        Ok(f(&bytes)?)
    })
    .await
}

/// A face template from image bytes, within the decode budget, measured for the gate of
/// `purpose` (`None`: for every use, as `/v1/extract` reports them; the eye model runs only
/// where a use in force checks `eye_aperture`).
pub async fn extract_face_image(
    state: &AppState,
    x: Arc<dyn biomatch_models::Extractor>,
    bytes: Vec<u8>,
    purpose: Option<CaptureUse>,
) -> Result<Extraction, ApiError> {
    let f = &state.config.extractors.face;
    let eye_state = match purpose {
        None => true,
        Some(u) => !f.quality.disabled && f.quality.thresholds(u).min_eye_aperture.is_some(),
    };
    let options = ExtractOptions { eye_state };
    let limits = f.image_limits();
    with_decode_budget(state, &limits, bytes, face_cost, move |b| {
        x.extract_with(b, Modality::Face, options)
    })
    .await
}

/// The quality gate: refuse a face extraction whose measures fall outside the limits of
/// `purpose` with 422 `face_quality` naming them, and a 1:1 probe the presentation-attack
/// detector (when one is attached) scores over `pad_threshold` with 422 `presentation_attack`;
/// nothing else happens to the request.
pub fn gate_face(state: &AppState, e: &Extraction, purpose: CaptureUse) -> Result<(), ApiError> {
    let f = &state.config.extractors.face;
    if let (CaptureUse::Verify, Some(score)) = (purpose, e.quality.attack_score) {
        if score > f.pad_threshold {
            return Err(ApiError::new(
                ErrorCode::PresentationAttack,
                format!(
                    "the face looks like a photo, screen or mask held up to the camera (attack \
                     score {score:.2} > {:.2}); present your own face",
                    f.pad_threshold
                ),
            ));
        }
    }
    let Some(m) = &e.quality.measures else { return Ok(()) };
    let failures = f.quality.failures(purpose, m);
    if failures.is_empty() {
        return Ok(());
    }
    state.metrics.face_quality_refused(purpose, &failures);
    Err(ApiError::face_quality(purpose, failures))
}

/// Finger minutiae from image bytes, within the decode budget.
pub async fn extract_finger_image(
    state: &AppState,
    x: Arc<biomatch_models::finger::FingerExtractor>,
    bytes: Vec<u8>,
    position: Option<FingerPosition>,
) -> Result<biomatch_models::finger::FingerExtraction, ApiError> {
    let limits = x.limits.image;
    with_decode_budget(state, &limits, bytes, finger_cost, move |b| x.extract(b, position)).await
}

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

pub fn base64_field(modality: Modality, field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes())
        .map_err(|_| ApiError::bad_request(format!("{modality}: `{field}` is not valid base64")))
}

/// The error for an image request when no extractor for it is loaded.
pub fn extractor_unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::ExtractorUnavailable, what.to_string())
}

/// Validate one sample: a template of a configured model, or decodable base64 image bytes.
fn sample(state: &AppState, modality: Modality, s: SampleSource<'_>) -> Result<Pending, ApiError> {
    match s {
        SampleSource::Image(img) => {
            let bytes = base64_field(modality, "image", img)?;
            if state.extractor_for(modality).is_none() {
                return Err(extractor_unavailable(format!(
                    "{modality}: this server has no {modality} extractor; send a template"
                )));
            }
            Ok(Pending::Image(bytes))
        }
        SampleSource::Template(t) => {
            let got = ModelId::parse(&t.model)?;
            match state.models_for(modality).find(|m| m.id == got) {
                Some(m) => Ok(Pending::Ready(Template::new(got, m.dim, t.vector.clone())?)),
                None => {
                    let accepted: Vec<String> =
                        state.models_for(modality).map(|m| m.id.to_string()).collect();
                    let code = if state.models_for(modality).any(|m| m.id.name() == got.name()) {
                        ErrorCode::ModelMismatch
                    } else {
                        ErrorCode::UnknownModel
                    };
                    Err(ApiError::new(
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
    let source = f.source(&m.to_string()).map_err(ApiError::bad_request)?;
    if let FingerSource::Template(t) = source {
        return sample(state, m, SampleSource::Template(t)).map(PendingFinger::Vector);
    }
    if state.finger_calibration.is_none() {
        return Err(ApiError::new(
            ErrorCode::FingerprintsUnavailable,
            format!("{m}: this server does not accept minutiae fingerprints"),
        ));
    }
    let minutiae = match source {
        FingerSource::Image(img) => {
            if state.finger_extractor.is_none() {
                return Err(extractor_unavailable(format!(
                    "{m}: this server has no fingerprint extractor; send minutiae"
                )));
            }
            return Ok(PendingFinger::Image(base64_field(m, "image", img)?));
        }
        FingerSource::Minutiae(r) => r,
        FingerSource::Template(_) => unreachable!("returned above"),
    };
    let bytes = base64_field(m, "minutiae", minutiae)?;
    let (_, mut t) = iso::parse_record(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidMinutiaeRecord, format!("{m}: {e}")))?;
    if t.position.is_some_and(|p| p != position) {
        return Err(ApiError::new(
            ErrorCode::FingerPositionMismatch,
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
pub async fn samples(
    state: &Arc<AppState>,
    face: &Option<SampleIn>,
    fingers: &[FingerIn],
    purpose: CaptureUse,
) -> Result<Samples, ApiError> {
    check_samples(face, fingers).map_err(ApiError::bad_request)?;
    let mut pending = Vec::new();
    if let Some(f) = face {
        let source = f.source("face").map_err(ApiError::bad_request)?;
        pending.push((Modality::Face, sample(state, Modality::Face, source)?));
    }
    let mut finger_pending = Vec::new();
    for f in fingers {
        let m = Modality::Finger(FingerPosition::new(f.position)?);
        match finger_sample(state, f)? {
            PendingFinger::Vector(p) => pending.push((m, p)),
            other => finger_pending.push((m, other)),
        }
    }
    let mut out = Samples::default();
    for (m, p) in pending {
        let t = match p {
            Pending::Ready(t) => t,
            Pending::Image(bytes) => {
                let x = state.extractor_for(m).expect("checked in sample()").clone();
                let e = extract_face_image(state, x, bytes, Some(purpose)).await?;
                gate_face(state, &e, purpose)?;
                e.template
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
                extract_finger_image(state, x, bytes, Some(pos)).await?.template
            }
            PendingFinger::Vector(_) => unreachable!("vectors are pending above"),
        };
        t.validate().map_err(|e| ApiError::new(ErrorCode::InvalidTemplate, e.to_string()))?;
        out.fingers.push(t);
    }
    Ok(out)
}

/// A digest of what an enrollment request asks for, to recognise a retried request.
pub fn fingerprint(subject: &biomatch_core::SubjectId, samples: &Samples) -> [u8; 32] {
    use sha2::Digest;
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
