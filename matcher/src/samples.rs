//! From request DTOs to the engine's [`Samples`]: base64 decoding, template and minutiae-record
//! checks against the configured models, and image extraction on the blocking pool. Nothing here
//! compares anything; that is the engine's work.

use crate::api::{FingerIn, SampleIn, TemplateIn};
use crate::error::{ApiError, ErrorCode};
use crate::middleware::blocking;
use crate::state::AppState;
use base64::Engine as _;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{FingerPosition, Modality, ModelId, Template};
use biomatch_engine::Samples;
use biomatch_fingerprint::iso;
use std::collections::HashSet;
use std::sync::Arc;

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
                return Err(extractor_unavailable(format!(
                    "{modality}: this server has no {modality} extractor; send a template"
                )));
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
        return Err(ApiError::new(
            ErrorCode::FingerprintsUnavailable,
            format!("{m}: this server does not accept minutiae fingerprints"),
        ));
    }
    if let Some(img) = &f.image {
        if state.finger_extractor.is_none() {
            return Err(extractor_unavailable(format!(
                "{m}: this server has no fingerprint extractor; send minutiae"
            )));
        }
        return Ok(PendingFinger::Image(base64_field(m, "image", img)?));
    }
    let bytes = base64_field(m, "minutiae", f.minutiae.as_deref().unwrap_or_default())?;
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
