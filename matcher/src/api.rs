//! Request and response bodies of the JSON API (`/v1`). The OpenAPI document is generated from
//! these types. Responses never contain biometric data: no images, no template vectors.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod requests;
pub use requests::*;

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
    /// The capture-quality measures (pose, occlusion, exposure, eyes, expression; see
    /// `docs/face-quality.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub measures: Option<biomatch_models::face::quality::FaceMeasures>,
    /// Per use (`verify`, `enroll`, `identify`): whether this capture passes the quality gate,
    /// and the failing measures when it does not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<UseVerdictOut>,
}

/// Whether a face capture passes the quality gate of one use.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UseVerdictOut {
    #[serde(rename = "use")]
    pub purpose: String,
    pub passes: bool,
    #[schema(value_type = Vec<Object>)]
    pub failures: Vec<biomatch_models::face::quality::QualityFailure>,
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

/// 422 `face_quality`: a face image outside the quality gate's limits for the request's use;
/// the error body plus each failing measure (`docs/face-quality.md`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FaceQualityBody {
    pub code: biomatch_engine::ErrorCode,
    pub message: String,
    pub request_id: String,
    #[schema(value_type = Vec<Object>)]
    pub failures: Vec<biomatch_models::face::quality::QualityFailure>,
}

/// 409 `duplicate` of `POST /v1/subjects?dedup=true`: the error body plus the enrolled subjects
/// that matched (the candidates of `/v1/identify`, best first; never the request's own id).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DuplicateBody {
    pub code: biomatch_engine::ErrorCode,
    pub message: String,
    pub request_id: String,
    pub candidates: Vec<CandidateOut>,
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

/// A serving index generation in `GET /v1/admin/stats`: the generation and what the
/// recall-drift monitor says of it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IndexStatsOut {
    #[serde(flatten)]
    pub index: IndexOut,
    pub recall_monitor: RecallMonitorOut,
}

/// The recall-drift monitor's view of a serving generation: its recall sampled against exact
/// search in the background (probes made from stored templates, see `index.recall_monitor`), its
/// growing segment, and whether a rebuild is due.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RecallMonitorOut {
    /// The serving generation; every figure below is of its samples only (a reload or a build
    /// starts over).
    pub generation: u64,
    /// Probes in the window: the most recent samples holding at least `window` probes.
    pub probes: usize,
    /// Probes whose exact best match the index returned in its top `k`.
    pub hits: usize,
    /// `hits / probes`; null before the first sample of this generation.
    pub recall: Option<f64>,
    /// Mean share of exact search's top `k` the index returned.
    pub recall_at_k: Option<f64>,
    /// The lowest recall of a shard with probes (noisier than `recall`: a shard has a share of
    /// the probes).
    pub worst_shard: Option<f64>,
    /// Per shard, in shard order.
    pub shards: Vec<ShardRecallOut>,
    /// `index.recall_monitor.window`: `recall` counts towards `rebuild_due` once `probes`
    /// reaches it.
    pub window: usize,
    /// The search parameters measured (the service's): candidate list length compared,
    /// candidates per shard re-ranked, IVF lists probed (null: not an IVF index).
    pub k: Option<usize>,
    pub k_prime: Option<usize>,
    pub nprobe: Option<usize>,
    /// Unix time (seconds) of the newest sample in the window, and how long it took.
    pub last_sample_at: Option<f64>,
    pub last_sample_seconds: Option<f64>,
    /// Rows of the model's column the generation does not cover (enrolled since its build,
    /// searched exactly), and the rows it covers.
    pub growing_rows: u64,
    pub covered_rows: u64,
    /// A rebuild is due: `rebuild_reasons` says why.
    pub rebuild_due: bool,
    pub rebuild_reasons: Vec<RebuildReason>,
}

/// One shard's part of the window: the probes whose exact best match lives in that shard.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ShardRecallOut {
    pub shard: usize,
    pub probes: usize,
    pub hits: usize,
    /// Null without probes.
    pub recall: Option<f64>,
}

/// Why a rebuild of an index generation is due.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RebuildReason {
    /// The recall over a full window is below `index.recall_floor`.
    RecallBelowFloor,
    /// `growing_rows` exceeds `index.rebuild_growing_share` × `covered_rows`.
    GrowingShare,
}
