//! Request and response bodies of the JSON API (`/v1`). The OpenAPI document is generated from
//! these types. Responses never contain biometric data: no images, no template vectors.

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
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct TemplateInfoOut {
    /// `face`, or `finger1` … `finger10`.
    pub modality: String,
    pub model: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct SubjectOut {
    pub subject_id: String,
    /// Sequence number of the enrollment in the store.
    pub seq: u64,
    pub templates: Vec<TemplateInfoOut>,
}

/// `POST /v1/subjects/batch`: many enrollments in one request, stored with one fsync. Each
/// item is answered on its own (an invalid item does not affect the others).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchEnrollRequest {
    pub subjects: Vec<EnrollRequest>,
}

/// One item's answer in a batch: `status` is what the single-subject endpoint would have
/// answered (201, or a 4xx with `code` and `message`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct BatchItemOut {
    pub subject_id: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<biomatch_engine::ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl BatchItemOut {
    pub fn refused(subject_id: String, e: &crate::error::ApiError) -> Self {
        Self {
            subject_id,
            status: e.status.as_u16(),
            seq: None,
            code: Some(e.code),
            message: Some(e.message.clone()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchEnrollResponse {
    pub results: Vec<BatchItemOut>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DeleteOut {
    pub subject_id: String,
    pub deleted: bool,
    pub seq: u64,
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

/// One modality's comparison.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ModalityScoreOut {
    pub modality: String,
    /// Raw similarity (cosine for face templates).
    pub score: f32,
    /// Estimated false-match rate at this score (from the model's calibration table), within the
    /// table's range [1e-12, 0.1]: 0.1 reads "0.1 or more", 1e-12 "1e-12 or less".
    pub fmr: f64,
    /// The raw score this modality alone needs at the target rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyResponse {
    pub subject_id: String,
    /// `match` or `no_match`.
    pub decision: String,
    pub is_match: bool,
    /// Calibrated, fused score: −log10 of the estimated false-match rate (higher = stronger).
    pub score: f32,
    /// Estimated false-match rate of this comparison (product over modalities).
    pub fmr: f64,
    /// The rate the decision was taken at, and the fused score it corresponds to.
    pub target_fmr: f64,
    pub threshold: f32,
    pub scores: Vec<ModalityScoreOut>,
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

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct CandidateOut {
    pub subject_id: String,
    /// Calibrated, fused score: −log10 of the estimated false-match rate.
    pub score: f32,
    pub fmr: f64,
    pub scores: Vec<ModalityScoreOut>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IdentifyResponse {
    pub candidates: Vec<CandidateOut>,
    /// Subjects searched (the gallery, or the subset).
    pub gallery_size: u64,
    /// The FPIR the candidate threshold was set for (absent with a raw threshold).
    pub target_fpir: Option<f64>,
    /// `exact` or `index` (the first probe's path; fingers: `index` when pre-selected).
    pub search: String,
    pub index_generation: Option<u64>,
    /// How each minutiae finger probe was searched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finger_search: Vec<FingerSearchOut>,
}

/// One finger probe's 1:N search.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct FingerSearchOut {
    pub modality: String,
    /// Gallery fingers of the probe's position.
    pub gallery_fingers: usize,
    /// Fingers the MCC matcher compared.
    pub compared: usize,
    /// Whether the pre-selection index chose them (else every finger was compared).
    pub preselected: bool,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractRequest {
    /// Base64 JPEG or PNG.
    pub image: String,
    /// `face` (default) or `finger`.
    pub modality: Option<String>,
}

/// Quality signals of an extraction.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct QualityOut {
    pub detector_score: f32,
    pub inter_eye_px: f32,
    /// Variance of the Laplacian of the aligned crop (low = blurred).
    pub sharpness: f32,
    /// Faces found (the largest is used).
    pub faces: usize,
    /// x, y, width, height in the image.
    pub bbox: [f32; 4],
}

/// Quality signals of a fingerprint extraction.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FingerQualityOut {
    /// Minutiae in the template.
    pub minutiae: usize,
    /// Mean mindtct reliability of the minutiae, 0..=1.
    pub mean_reliability: f32,
    /// Grey-level standard deviation of the image.
    pub contrast: f32,
}

/// A template extracted from an image, returned to the caller who sent the image: a face vector,
/// or a finger's minutiae as an ISO/IEC 19794-2:2005 record.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ExtractResponse {
    pub modality: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityOut>,
    /// Base64 ISO/IEC 19794-2:2005 record (fingers): send it back as a finger's `minutiae`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minutiae: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finger_quality: Option<FingerQualityOut>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: biomatch_engine::ErrorCode,
    pub message: String,
    pub request_id: String,
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

/// Where an index build job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildJobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

/// Why a build job failed or was cancelled.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BuildJobError {
    pub code: biomatch_engine::ErrorCode,
    pub message: String,
}

/// An index build job (`POST /v1/admin/index/build`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BuildJobOut {
    pub job_id: String,
    pub status: BuildJobStatus,
    /// The models the job builds, in order.
    pub models: Vec<String>,
    pub factory: Option<String>,
    /// Of a running job: `waiting` (another build of the model holds its lock), `snapshot`,
    /// `train`, `add`, `publish`.
    pub stage: Option<String>,
    /// Share of the job done, 0..=1.
    pub progress: f64,
    /// A cancel was asked for (`DELETE`); a running build stops at its next check.
    pub cancel_requested: bool,
    /// The generations built and loaded so far (all of them once `done`).
    pub result: Vec<IndexOut>,
    pub error: Option<BuildJobError>,
    /// Unix times, seconds.
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IndexOut {
    pub model: String,
    pub generation: u64,
    pub factory: String,
    pub shards: usize,
    pub vectors: u64,
    pub covered_seq: u64,
    pub bytes_per_template: f64,
}
