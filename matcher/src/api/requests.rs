//! The request bodies of the JSON API and the checks of their shape that need no service state
//! (which fields go together, duplicates). What needs the configuration — models, extractors,
//! limits — is checked in `samples.rs` and the handlers.
//!
//! This file depends on `serde` and `utoipa` only: the JSON fuzz target (`fuzz/`) compiles it
//! as it is, without the service.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A template computed by the client's own extractor.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateIn {
    /// `name@version` of the extractor; must be a model the gallery accepts.
    pub model: String,
    pub vector: Vec<f32>,
}

/// One biometric sample: exactly one of `image` (base64 JPEG/PNG) or `template`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleIn {
    pub image: Option<String>,
    pub template: Option<TemplateIn>,
}

/// A finger sample with its ISO/ANSI finger position (1 = right thumb … 10 = left little):
/// exactly one of `image` (base64 PNG/JPEG, 500 dpi: minutiae by NIST mindtct), `minutiae`
/// (base64 ISO/IEC 19794-2:2005 or ANSI/INCITS 378-2004 finger minutiae record from the client's
/// own extractor; its first view is used) or `template` (a fixed-length vector of a configured
/// finger model). Minutiae fingers are compared by the MCC matcher (`mcc@1`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FingerIn {
    pub position: u8,
    pub image: Option<String>,
    pub minutiae: Option<String>,
    pub template: Option<TemplateIn>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub subject_id: String,
    pub face: Option<SampleIn>,
    #[serde(default)]
    pub fingers: Vec<FingerIn>,
    /// With `?dedup=true` only: a subject matches when its fused FMR ≤ target_fpir / N
    /// (default `dedup.target_fpir`).
    #[serde(default)]
    pub target_fpir: Option<f64>,
    /// With `?dedup=true` only: the most candidates a `duplicate` answer lists (default
    /// `dedup.max_results`).
    #[serde(default)]
    pub max_results: Option<usize>,
}

impl EnrollRequest {
    /// Whether the request sets parameters that only an enroll-if-unique reads.
    pub fn has_dedup_fields(&self) -> bool {
        self.target_fpir.is_some() || self.max_results.is_some()
    }
}

/// `POST /v1/subjects/batch`: many enrollments in one request, stored with one fsync. Each
/// item is answered on its own (an invalid item does not affect the others).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchEnrollRequest {
    pub subjects: Vec<EnrollRequest>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub subject_id: String,
    pub face: Option<SampleIn>,
    #[serde(default)]
    pub fingers: Vec<FingerIn>,
    /// Decide at this false-match rate (default from the configuration, e.g. 1e-4).
    pub target_fmr: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, ToSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SearchKindIn {
    /// The index when one is loaded, else exact.
    #[default]
    Auto,
    Exact,
    Index,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifyRequest {
    pub face: Option<SampleIn>,
    #[serde(default)]
    pub fingers: Vec<FingerIn>,
    pub max_results: Option<usize>,
    /// Raw score threshold (single-modality probes only). Excludes `target_fpir`.
    pub threshold: Option<f32>,
    /// Target false-positive identification rate (FPIR ≈ N·FMR).
    pub target_fpir: Option<f64>,
    /// The same in MOSIP's encoding, round(−10·log10 FPIR): 30 = 1/1000.
    pub mosip_target_fpir: Option<u32>,
    /// Search only these subjects.
    pub gallery: Option<Vec<String>>,
    #[serde(default)]
    pub search: SearchKindIn,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractRequest {
    /// Base64 JPEG or PNG.
    pub image: String,
    /// `face` (default) or `finger`.
    pub modality: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IndexRequest {
    /// `name@version`; default: every configured model.
    pub model: Option<String>,
    /// FAISS factory string for a build (default chosen by gallery size). Checked before the
    /// build is queued: a string FAISS cannot build at the model's dimension, or a layout that
    /// does not keep ids (wrap it as `IDMap,…`), is 422 `invalid_factory`.
    pub factory: Option<String>,
    pub shards: Option<usize>,
    /// Build only: answer when the build is over (200 with the generations, as before jobs)
    /// instead of 202 with the job at once. The job runs on if the caller goes away.
    #[serde(default)]
    pub wait: bool,
}

/// What a face sample carries.
#[derive(Clone, Copy, Debug)]
pub enum SampleSource<'a> {
    /// Base64 JPEG/PNG.
    Image(&'a str),
    Template(&'a TemplateIn),
}

/// What a finger sample carries.
#[derive(Clone, Copy, Debug)]
pub enum FingerSource<'a> {
    /// Base64 PNG/JPEG.
    Image(&'a str),
    /// Base64 ISO/ANSI record.
    Minutiae(&'a str),
    Template(&'a TemplateIn),
}

impl SampleIn {
    /// Exactly one of `image` or `template`; `what` names the sample in the message.
    pub fn source(&self, what: &str) -> Result<SampleSource<'_>, String> {
        match (&self.image, &self.template) {
            (Some(i), None) => Ok(SampleSource::Image(i)),
            (None, Some(t)) => Ok(SampleSource::Template(t)),
            _ => Err(format!("{what}: give exactly one of `image` or `template`")),
        }
    }
}

impl FingerIn {
    /// Exactly one of `image`, `minutiae` or `template`; `what` names the finger.
    pub fn source(&self, what: &str) -> Result<FingerSource<'_>, String> {
        match (&self.image, &self.minutiae, &self.template) {
            (Some(i), None, None) => Ok(FingerSource::Image(i)),
            (None, Some(m), None) => Ok(FingerSource::Minutiae(m)),
            (None, None, Some(t)) => Ok(FingerSource::Template(t)),
            _ => Err(format!("{what}: give exactly one of `image`, `minutiae` or `template`")),
        }
    }
}

/// The samples of a request: at least one, no finger position twice.
pub fn check_samples(face: &Option<SampleIn>, fingers: &[FingerIn]) -> Result<(), String> {
    if face.is_none() && fingers.is_empty() {
        return Err("give at least one sample (`face` or `fingers`)".into());
    }
    let mut seen = [false; 256];
    for f in fingers {
        if std::mem::replace(&mut seen[usize::from(f.position)], true) {
            return Err(format!("finger position {} given twice", f.position));
        }
    }
    Ok(())
}

/// The modality `POST /v1/extract` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtractModality {
    Face,
    Finger,
}

impl ExtractRequest {
    /// `face` (the default) or `finger`.
    pub fn modality(&self) -> Result<ExtractModality, String> {
        match self.modality.as_deref().unwrap_or("face") {
            "face" => Ok(ExtractModality::Face),
            "finger" => Ok(ExtractModality::Finger),
            other => Err(format!("unknown modality {other:?}; use face or finger")),
        }
    }
}

impl IdentifyRequest {
    /// The FPIR asked for, if any: `target_fpir`, or MOSIP's encoding, not both. (The MOSIP value
    /// is returned as given; `biomatch_core::calibration::fpir_from_mosip` converts it.)
    pub fn fpir_choice(&self) -> Result<Option<FpirIn>, String> {
        match (self.target_fpir, self.mosip_target_fpir) {
            (Some(_), Some(_)) => Err("give target_fpir or mosip_target_fpir, not both".into()),
            (Some(f), None) => Ok(Some(FpirIn::Rate(f))),
            (None, Some(m)) => Ok(Some(FpirIn::Mosip(m))),
            (None, None) => Ok(None),
        }
    }
}

/// A target FPIR as the request gave it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FpirIn {
    Rate(f64),
    Mosip(u32),
}
