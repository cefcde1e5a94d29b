//! Fuzzes the JSON request bodies of the HTTP API: `matcher/src/api/requests.rs` compiled as it
//! is, each DTO deserialised as the service's `ApiJson` extractor does (serde_json), then run
//! through the validation the handlers apply before anything needs the service's state: the
//! shape checks of `requests.rs`, subject ids, finger positions, model ids, template vectors,
//! base64, ISO/ANSI minutiae records, and images through the bounded decoder. No input may panic.
#![no_main]

#[path = "../../matcher/src/api/requests.rs"]
#[allow(dead_code)]
mod requests;

use base64::Engine as _;
use biomatch_core::calibration::fpir_from_mosip;
use biomatch_core::{FingerPosition, ModelId, SubjectId, Template};
use biomatch_models::imageio::{self, ImageLimits};
use libfuzzer_sys::fuzz_target;
use requests::*;

const LIMITS: ImageLimits = ImageLimits { max_bytes: 1 << 20, max_side: 2048, max_pixels: 1 << 20 };

fn base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).ok()
}

fn image(s: &str) {
    if let Some(b) = base64(s) {
        let _ = imageio::decode_rgb(&b, &LIMITS);
    }
}

fn template(t: &TemplateIn) {
    if let Ok(model) = ModelId::parse(&t.model) {
        if let Ok(tpl) = Template::new(model, t.vector.len(), t.vector.clone()) {
            assert!(tpl.vector().iter().all(|v| v.is_finite()), "a template with a non-finite value");
        }
    }
}

fn samples(face: &Option<SampleIn>, fingers: &[FingerIn]) {
    let _ = check_samples(face, fingers);
    if let Some(f) = face {
        match f.source("face") {
            Ok(SampleSource::Image(i)) => image(i),
            Ok(SampleSource::Template(t)) => template(t),
            Err(e) => assert!(!e.is_empty()),
        }
    }
    for f in fingers {
        if FingerPosition::new(f.position).is_err() {
            continue;
        }
        match f.source("finger") {
            Ok(FingerSource::Image(i)) => image(i),
            Ok(FingerSource::Minutiae(m)) => {
                if let Some(b) = base64(m) {
                    if let Ok((_, t)) = biomatch_fingerprint::iso::parse_record(&b) {
                        t.validate().expect("a parsed record validates");
                    }
                }
            }
            Ok(FingerSource::Template(t)) => template(t),
            Err(e) => assert!(!e.is_empty()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<EnrollRequest>(data) {
        let _ = SubjectId::new(r.subject_id);
        samples(&r.face, &r.fingers);
    }
    if let Ok(r) = serde_json::from_slice::<BatchEnrollRequest>(data) {
        for r in r.subjects {
            let _ = SubjectId::new(r.subject_id);
            samples(&r.face, &r.fingers);
        }
    }
    if let Ok(r) = serde_json::from_slice::<VerifyRequest>(data) {
        let _ = SubjectId::new(r.subject_id);
        samples(&r.face, &r.fingers);
    }
    if let Ok(r) = serde_json::from_slice::<IdentifyRequest>(data) {
        samples(&r.face, &r.fingers);
        if let Ok(Some(FpirIn::Mosip(m))) = r.fpir_choice() {
            let _ = fpir_from_mosip(m);
        }
        for id in r.gallery.iter().flatten() {
            let _ = SubjectId::new(id.clone());
        }
    }
    if let Ok(r) = serde_json::from_slice::<ExtractRequest>(data) {
        if r.modality().is_ok() {
            image(&r.image);
        }
    }
    if let Ok(r) = serde_json::from_slice::<IndexRequest>(data) {
        if let Some(m) = &r.model {
            let _ = ModelId::parse(m);
        }
    }
});
