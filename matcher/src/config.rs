//! Service configuration: compiled defaults → TOML file → `BIOMATCH__*` environment variables
//! (`BIOMATCH__LISTEN=0.0.0.0:8080`, `BIOMATCH__LIMITS__MAX_CONCURRENT=32`, …), validated once at
//! start-up so a bad value stops the service with a clear message instead of failing later.

use biomatch_core::ModelId;
use biomatch_models::face::quality::{CaptureUse, FaceMeasures, QualityFailure, Thresholds};
use biomatch_models::face::FaceModel;
use biomatch_models::imageio::ImageLimits;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A role an API key may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Bank eKYC: 1:1 verify and extract.
    Verify,
    /// Issuance backend: enroll, read and delete subjects, extract.
    Enroll,
    /// Issuance backend: 1:N identify, extract.
    Identify,
    /// Operators: statistics, index build and reload.
    Admin,
}

/// An API key, stored as the SHA-256 of the secret (hex), never the secret itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Names the caller in the audit log.
    pub id: String,
    pub sha256: String,
    pub roles: Vec<Role>,
}

/// A template model the service accepts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `name@version`.
    pub id: String,
    pub dim: usize,
    /// `face` or `finger`.
    pub modality: ModalityKind,
    /// Calibration table (JSON, `core::CalibrationTable`); relative paths are under the data dir.
    /// When the file is there it overrides the table built into the binary (shipped models:
    /// `matcher/calibration/`); a model without a built-in table needs the file.
    pub calibration: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModalityKind {
    Face,
    Finger,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest request body accepted (bytes).
    pub body_bytes: usize,
    /// A request not answered within this is cancelled with 504.
    pub request_timeout_ms: u64,
    /// Requests in flight at once; beyond it the service sheds load with 503 + Retry-After.
    pub max_concurrent: usize,
    /// Seconds suggested in Retry-After when shedding load.
    pub retry_after_s: u64,
    /// Probes + subset entries accepted in one request.
    pub max_gallery_subset: usize,
    /// Most enrollments in one `POST /v1/subjects/batch` (bounded further by `body_bytes`).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Requests per second each API key may send on average (429 `rate_limited` beyond it);
    /// none: unlimited. Bursts of `per_key_burst` (default: one second's worth) pass.
    #[serde(default)]
    pub per_key_rps: Option<f64>,
    #[serde(default)]
    pub per_key_burst: Option<f64>,
    /// Open connections at once; a connection beyond it is answered 503 (`overloaded`) and
    /// closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive complete within this of its first
    /// byte, and a new connection must send its first head within this of being accepted;
    /// otherwise the connection is closed (slow-header clients).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection idle (no request begun) this long after its last response is
    /// closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A request body must arrive complete within this of the request head (408
    /// `request_timeout`, connection closed). Bodies are read in full before the request takes
    /// a `max_concurrent` slot, so slow uploads never hold one.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// After `body_grace_ms`, a body arriving slower than this on average since its start is
    /// refused at once (408 `request_timeout`); 0 turns the rate rule off.
    #[serde(default = "default_body_min_bytes_per_s")]
    pub body_min_bytes_per_s: u64,
    /// See `body_min_bytes_per_s`.
    #[serde(default = "default_body_grace_ms")]
    pub body_grace_ms: u64,
    /// An index build job running longer than this is cancelled (`POST /v1/admin/index/build`
    /// runs as a job, not under `request_timeout_ms`).
    #[serde(default = "default_index_build_timeout_s")]
    pub index_build_timeout_s: u64,
    /// Memory all image decodes in flight may hold together (MiB). Each image's cost is read from
    /// its header and reserved before decoding; requests wait (until their timeout) for budget.
    /// Must hold the costliest accepted image (`max_image_pixels` × 20 bytes + workspace).
    /// Worst-case memory of the service ≈ resident base + `decode_memory_mb` +
    /// `max_concurrent` × 2 × `body_bytes` (docs/memory.md).
    #[serde(default = "default_decode_memory_mb")]
    pub decode_memory_mb: u64,
}

fn default_max_batch() -> usize {
    1000
}
fn default_max_connections() -> usize {
    1024
}
fn default_header_read_timeout_ms() -> u64 {
    5_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_body_timeout_ms() -> u64 {
    10_000
}
fn default_body_min_bytes_per_s() -> u64 {
    16 << 10
}
fn default_body_grace_ms() -> u64 {
    2_000
}
fn default_index_build_timeout_s() -> u64 {
    4 * 3600
}

fn default_decode_memory_mb() -> u64 {
    512
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    pub default_max_results: usize,
    /// Default 1:N target FPIR (MOSIP 30 = 1e-3).
    pub default_target_fpir: f64,
    /// Default 1:1 target FMR.
    pub default_target_fmr: f64,
    /// Candidates per shard re-ranked exactly.
    pub k_prime: usize,
    /// Load the current index generation at start-up if there is one.
    pub load_index: bool,
    /// Refuse index generations needing more memory than this (MiB).
    pub memory_budget_mb: Option<u64>,
}

/// Enroll-if-unique's defaults (`[dedup]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DedupConfig {
    /// A subject matches (the enrollment is refused as `duplicate`) when its fused FMR ≤
    /// target_fpir / N; a request's `target_fpir` overrides it.
    pub target_fpir: f64,
    /// The most candidates a `duplicate` answer lists; a request's `max_results` overrides it.
    pub max_results: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { target_fpir: 1e-3, max_results: 10 }
    }
}

/// The asynchronous job queue (`[jobs]`, `crate::jobs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobsConfig {
    /// Jobs run at the same time.
    pub workers: usize,
    /// Jobs queued or running at most; one more is refused (429 `queue_full`).
    pub max_pending: usize,
    /// How long a finished job's result is kept (then deleted from memory and disk).
    pub result_ttl_s: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { workers: 2, max_pending: 1000, result_ttl_s: 3600 }
    }
}

/// The serving index generations: when a rebuild is due, and the recall-drift monitor that says
/// so (`[index]`, `[index.recall_monitor]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexConfig {
    /// A rebuild is due when a model's sampled recall (over a full monitor window) is below
    /// this; and the recall gate of a build started by the service (`POST
    /// /v1/admin/index/build`) refuses a new generation below it (0: never refused).
    pub recall_floor: f64,
    /// A rebuild is due when the rows the serving generation does not cover (its growing
    /// segment, searched exactly) exceed this share of the rows it covers.
    pub rebuild_growing_share: f64,
    pub recall_monitor: RecallMonitorConfig,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            recall_floor: 0.95,
            rebuild_growing_share: 0.1,
            recall_monitor: RecallMonitorConfig::default(),
        }
    }
}

/// The recall-drift monitor (`crate::recall_monitor`): a background thread that re-runs a few
/// probes made from stored templates through each serving generation and through exact search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecallMonitorConfig {
    pub enabled: bool,
    /// Seconds between samples.
    pub interval_s: u64,
    /// Probes per sample and model. Each sample holds the store's read lock for one exact scan
    /// of the model's column (writers wait for it): keep it small.
    pub probes_per_tick: usize,
    /// The reported recall covers the most recent samples holding at least this many probes of
    /// the serving generation (500: a recall of 0.99 known to about ±0.009).
    pub window: usize,
}

impl Default for RecallMonitorConfig {
    fn default() -> Self {
        Self { enabled: true, interval_s: 30, probes_per_tick: 4, window: 500 }
    }
}

/// The face extractor (YuNet + SFace through ONNX Runtime).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceExtractorConfig {
    /// Accept face images. Off: images get 422 `extractor_unavailable`, templates still work.
    /// On but the models or ONNX Runtime are missing: the same, with a warning at start-up.
    pub enabled: bool,
    /// Folder with yunet.onnx and sface.onnx (default: `.setup/models`, or `$BIOMATCH_MODELS_DIR`).
    pub models_dir: Option<PathBuf>,
    /// `libonnxruntime.so` (default: `.setup/onnxruntime/…`, or `$ORT_DYLIB_PATH`).
    pub ort_dylib: Option<PathBuf>,
    /// ONNX sessions per model (concurrent extractions); 0 = one per core.
    pub sessions: usize,
    pub intra_threads: usize,
    /// Use the CUDA execution provider (build with `--features cuda`).
    pub cuda: bool,
    /// The embedder face images are turned into templates with: `sface@2021dec` (default) or
    /// `dlib-resnet@v1` (`docs/face-models.md` compares them). Templates stay per model: a probe
    /// is only compared with enrolled templates of its own model.
    #[serde(default = "default_face_model")]
    pub model: String,
    /// Several faces in one image: `largest` or `reject`.
    pub multi_face: String,
    pub min_inter_eye_px: f32,
    pub max_image_bytes: usize,
    pub max_image_side: u32,
    /// Largest width × height accepted, checked from the header (default 24 MP, 6000 × 4000).
    #[serde(default = "default_face_max_pixels")]
    pub max_image_pixels: u64,
    /// The capture-quality gate (`[extractors.face.quality]`).
    #[serde(default)]
    pub quality: FaceQualityConfig,
    /// A 1:1 verification whose presentation-attack score (when a detector is attached, see
    /// `biomatch_models::face::pad`; none is built in) exceeds this is refused with 422
    /// `presentation_attack`.
    #[serde(default = "default_pad_threshold")]
    pub pad_threshold: f32,
    /// Measure eye openness (`eye_aperture`) with MediaPipe's face mesh and iris landmark
    /// models (about 9 ms a face on one core). Off: shut eyes are not refused.
    #[serde(default = "default_true")]
    pub eye_model: bool,
}

/// The face quality gate: a face image whose measures fall outside the limits of its use is
/// refused with 422 `face_quality` and the failing measures. Templates sent as vectors are not
/// gated (there is no image to measure). Each table overrides single limits of that use's
/// built-in ones (`docs/face-quality.md`), e.g. `[extractors.face.quality.verify]
/// max_yaw_deg = 15`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaceQualityConfig {
    /// Off: every decodable face is used, whatever its quality (the measures are still reported
    /// by `/v1/extract`).
    pub disabled: bool,
    /// 1:1 verification (bank eKYC).
    pub verify: Thresholds,
    /// Enrollment references.
    pub enroll: Thresholds,
    /// 1:N probes.
    pub identify: Thresholds,
}

impl FaceExtractorConfig {
    /// The shipped face model `model` names (`None`: not one of them).
    pub fn face_model(&self) -> Option<FaceModel> {
        ModelId::parse(&self.model).ok().and_then(|id| FaceModel::from_id(&id))
    }
}

impl FaceQualityConfig {
    /// The measures of `m` outside the limits of use `u` (none when the gate is disabled).
    pub fn failures(&self, u: CaptureUse, m: &FaceMeasures) -> Vec<QualityFailure> {
        if self.disabled {
            return Vec::new();
        }
        self.thresholds(u).check(m)
    }

    /// The limits in force for a use: the built-in ones with this configuration's overrides.
    pub fn thresholds(&self, u: CaptureUse) -> Thresholds {
        let o = match u {
            CaptureUse::Verify => &self.verify,
            CaptureUse::Enroll => &self.enroll,
            CaptureUse::Identify => &self.identify,
        };
        Thresholds::for_use(u).merged(o)
    }
}

fn default_true() -> bool {
    true
}

fn default_pad_threshold() -> f32 {
    0.5
}

fn default_face_model() -> String {
    "sface@2021dec".into()
}

fn default_face_max_pixels() -> u64 {
    biomatch_models::imageio::DEFAULT_MAX_PIXELS
}

fn default_finger_max_pixels() -> u64 {
    2000 * 2000
}

impl FaceExtractorConfig {
    /// The decoder's limits for face images.
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_bytes: self.max_image_bytes,
            max_side: self.max_image_side,
            max_pixels: self.max_image_pixels,
        }
    }
}

impl FingerprintConfig {
    /// The decoder's limits for finger images.
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_bytes: self.max_image_bytes,
            max_side: self.max_image_side,
            max_pixels: self.max_image_pixels,
        }
    }
}

impl Default for FaceExtractorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            models_dir: None,
            ort_dylib: None,
            sessions: 0,
            intra_threads: 1,
            cuda: false,
            model: default_face_model(),
            multi_face: "largest".into(),
            min_inter_eye_px: 20.0,
            max_image_bytes: 10 << 20,
            max_image_side: 6000,
            max_image_pixels: default_face_max_pixels(),
            quality: FaceQualityConfig::default(),
            pad_threshold: default_pad_threshold(),
            eye_model: true,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtractorsConfig {
    pub face: FaceExtractorConfig,
}

/// Fingerprints as minutiae: NIST mindtct extraction from 500-dpi images, ISO/IEC 19794-2 and
/// ANSI 378 records from clients, the MCC matcher and its pre-selection index. Minutiae fingers
/// are stored in `<data>/fingers` and scored on the `mcc@1` calibration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FingerprintConfig {
    pub enabled: bool,
    /// Calibration table of MCC scores (JSON); relative paths are under the data dir; a file
    /// named here must exist. Default: `<data>/calibration/mcc@1.json` when it is there, else the
    /// table built into the binary (`matcher/calibration/mcc@1.json`, from synthetic prints).
    pub calibration: Option<PathBuf>,
    /// 1:N: share of the subjects holding fingers that the fingers' pre-selection codes hand
    /// to the MCC matcher.
    pub penetration: f64,
    /// 1:N: at least this many subjects.
    pub min_candidates: usize,
    /// 1:N: each probe finger's code list holds this many times as many fingers as the subject
    /// shortlist has subjects.
    #[serde(default = "default_list_factor")]
    pub list_factor: f64,
    /// 1:N: compare every subject when fewer than this hold fingers.
    pub exhaustive_below: usize,
    /// Images with fewer minutiae are refused (422 too_few_minutiae).
    pub min_minutiae: usize,
    pub max_image_bytes: usize,
    pub max_image_side: u32,
    /// Largest width × height accepted, checked from the header.
    #[serde(default = "default_finger_max_pixels")]
    pub max_image_pixels: u64,
}

fn default_list_factor() -> f64 {
    2.0
}

impl Default for FingerprintConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            calibration: None,
            penetration: 0.005,
            min_candidates: 200,
            list_factor: default_list_factor(),
            exhaustive_below: 2000,
            min_minutiae: 8,
            max_image_bytes: 10 << 20,
            max_image_side: 2000,
            max_image_pixels: default_finger_max_pixels(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub listen: SocketAddr,
    /// The embedded store's directory.
    pub data: PathBuf,
    /// Audit log directory; default `<data>/audit`.
    pub audit_dir: Option<PathBuf>,
    /// Where `POST /v1/admin/dedup` runs write (one folder per run); default `<data>/dedup`.
    #[serde(default)]
    pub dedup_dir: Option<PathBuf>,
    /// The key (hex, 16..=64 bytes) that authenticates the audit log's checkpoints; default
    /// `<audit_dir>/hmac.key`, created on first start. Keep it off the data volume (a secret
    /// mount) so that someone who can edit the log cannot forge its checkpoints.
    #[serde(default)]
    pub audit_key_file: Option<PathBuf>,
    /// When the audit records of requests that stored nothing (identify, verify, reads,
    /// refusals) are made durable: `durable` (the default) before the answer leaves; `batched`
    /// by the audit thread's next fsync (its checkpoint, at most 1 s later) without the answer
    /// waiting for it. Stored writes are journaled in the store's commit either way.
    #[serde(default)]
    pub audit_reads: AuditReads,
    pub limits: Limits,
    pub search: SearchConfig,
    #[serde(default)]
    pub index: IndexConfig,
    /// Enroll-if-unique (`POST /v1/subjects?dedup=true`).
    #[serde(default)]
    pub dedup: DedupConfig,
    /// The asynchronous job queue (`/v1/jobs`).
    #[serde(default)]
    pub jobs: JobsConfig,
    pub models: Vec<ModelConfig>,
    pub extractors: ExtractorsConfig,
    pub fingerprints: FingerprintConfig,
    pub api_keys: Vec<ApiKey>,
    /// The MOSIP ABIS adapter over ActiveMQ (`[mosip]`, `crate::mosip`).
    #[serde(default)]
    pub mosip: MosipConfig,
    /// Cluster membership (`[cluster]`, `biomatch-cluster`; docs/cluster.md). Off: this node
    /// serves its own store alone.
    #[serde(default)]
    pub cluster: biomatch_cluster::ClusterConfig,
}

/// The MOSIP ABIS adapter (`[mosip]`): requests read from `inbound_queue`, responses written to
/// `outbound_queue`, over STOMP 1.2 to an ActiveMQ broker (docs/mosip-abis.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MosipConfig {
    /// Start the adapter with `biomatch serve` (once the gallery is loaded).
    pub enabled: bool,
    /// `stomp://host:port` of the broker's STOMP connector.
    pub broker_url: String,
    /// Queue MOSIP sends its requests to.
    pub inbound_queue: String,
    /// Queue MOSIP reads the responses from.
    pub outbound_queue: String,
    /// Broker login, if it requires one.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Requests the broker hands over before the earlier ones are acknowledged (PendingJobs
    /// counts them); they are still handled one at a time.
    pub prefetch: usize,
    /// A `referenceURL` must answer completely within this.
    pub fetch_timeout_ms: u64,
    /// Largest CBEFF document accepted from a `referenceURL`.
    pub max_cbeff_bytes: usize,
}

impl Default for MosipConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            broker_url: "stomp://127.0.0.1:61613".into(),
            inbound_queue: "mosip-to-abis".into(),
            outbound_queue: "abis-to-mosip".into(),
            username: None,
            password: None,
            prefetch: 16,
            fetch_timeout_ms: 10_000,
            max_cbeff_bytes: 16 << 20,
        }
    }
}

/// See [`Config::audit_reads`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditReads {
    /// Every answer waits until its record is fsynced (an answer that cannot be audited is not
    /// given).
    #[default]
    Durable,
    /// Records of requests that stored nothing are written at once and fsynced by the audit
    /// thread within [`crate::audit::CHECKPOINT_EVERY`]; a crash can lose that last second of
    /// them (never a stored write's record), and a failed write of one is logged, not answered.
    Batched,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            data: PathBuf::from("data/store"),
            audit_dir: None,
            dedup_dir: None,
            audit_key_file: None,
            audit_reads: AuditReads::Durable,
            limits: Limits {
                body_bytes: 4 << 20,
                request_timeout_ms: 10_000,
                max_concurrent: 64,
                retry_after_s: 1,
                max_gallery_subset: 100_000,
                max_batch: default_max_batch(),
                per_key_rps: None,
                per_key_burst: None,
                max_connections: default_max_connections(),
                header_read_timeout_ms: default_header_read_timeout_ms(),
                idle_timeout_ms: default_idle_timeout_ms(),
                body_timeout_ms: default_body_timeout_ms(),
                body_min_bytes_per_s: default_body_min_bytes_per_s(),
                body_grace_ms: default_body_grace_ms(),
                index_build_timeout_s: default_index_build_timeout_s(),
                decode_memory_mb: default_decode_memory_mb(),
            },
            search: SearchConfig {
                default_max_results: 10,
                default_target_fpir: 1e-3,
                default_target_fmr: 1e-4,
                k_prime: 32,
                load_index: true,
                memory_budget_mb: None,
            },
            index: IndexConfig::default(),
            dedup: DedupConfig::default(),
            jobs: JobsConfig::default(),
            models: vec![
                ModelConfig {
                    id: "sface@2021dec".into(),
                    dim: 128,
                    modality: ModalityKind::Face,
                    calibration: PathBuf::from("calibration/sface@2021dec.json"),
                },
                ModelConfig {
                    id: "synthetic-face@1".into(),
                    dim: 128,
                    modality: ModalityKind::Face,
                    calibration: PathBuf::from("calibration/synthetic-face@1.json"),
                },
            ],
            extractors: ExtractorsConfig::default(),
            fingerprints: FingerprintConfig::default(),
            api_keys: Vec::new(),
            mosip: MosipConfig::default(),
            cluster: biomatch_cluster::ClusterConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then `BIOMATCH__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(format!("config file {} does not exist", f.display()));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("BIOMATCH__").split("__"));
        let mut c: Config = fig.extract().map_err(|e| format!("invalid configuration: {e}"))?;
        c.add_extractor_model();
        c.validate()?;
        Ok(c)
    }

    /// The face extractor's model joins `models` when it is a shipped face model missing there
    /// (choosing `extractors.face.model = "dlib-resnet@v1"` is enough; its calibration table is
    /// built in).
    pub fn add_extractor_model(&mut self) {
        let f = &self.extractors.face;
        let Some(id) = f.face_model().map(FaceModel::id) else { return };
        if f.enabled && !self.models.iter().any(|m| m.id == id.to_string()) {
            self.models.push(ModelConfig {
                id: id.to_string(),
                dim: biomatch_models::face::DIM,
                modality: ModalityKind::Face,
                calibration: PathBuf::from(format!("calibration/{id}.json")),
            });
        }
    }

    /// Check every value; the service refuses to start on the first problem.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.body_bytes < 1024 || l.body_bytes > 256 << 20 {
            return Err(format!("limits.body_bytes = {} must be in 1 KiB..=256 MiB", l.body_bytes));
        }
        let positive = |v: Option<f64>| v.is_none_or(|r| r.is_finite() && r > 0.0);
        if !positive(l.per_key_rps) || !positive(l.per_key_burst) {
            return Err("limits.per_key_rps and limits.per_key_burst must be > 0".into());
        }
        if l.request_timeout_ms < 10 || l.max_concurrent == 0 || l.max_gallery_subset == 0 {
            return Err("limits: request_timeout_ms >= 10, max_concurrent >= 1 and max_gallery_subset >= 1 are required".into());
        }
        if l.max_connections == 0 || l.max_connections > 1 << 20 {
            return Err(format!(
                "limits.max_connections = {} must be in 1..=1048576",
                l.max_connections
            ));
        }
        for (name, v) in [
            ("header_read_timeout_ms", l.header_read_timeout_ms),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("body_timeout_ms", l.body_timeout_ms),
        ] {
            if !(50..=3_600_000).contains(&v) {
                return Err(format!("limits.{name} = {v} must be in 50..=3600000 (ms)"));
            }
        }
        if l.body_grace_ms > l.body_timeout_ms {
            return Err(format!(
                "limits.body_grace_ms = {} must not exceed limits.body_timeout_ms = {}",
                l.body_grace_ms, l.body_timeout_ms
            ));
        }
        if l.body_min_bytes_per_s > 1 << 30 {
            return Err("limits.body_min_bytes_per_s must be at most 1 GiB/s (0: off)".into());
        }
        if l.index_build_timeout_s == 0 {
            return Err("limits.index_build_timeout_s must be at least 1".into());
        }
        let s = &self.search;
        if !(s.default_target_fpir > 0.0 && s.default_target_fpir < 1.0) {
            return Err(format!(
                "search.default_target_fpir = {} must be in (0, 1)",
                s.default_target_fpir
            ));
        }
        if !(s.default_target_fmr > 0.0 && s.default_target_fmr < 1.0) {
            return Err(format!(
                "search.default_target_fmr = {} must be in (0, 1)",
                s.default_target_fmr
            ));
        }
        let j = &self.jobs;
        if j.workers == 0 || j.workers > 256 || j.max_pending == 0 || j.result_ttl_s == 0 {
            return Err(
                "jobs: workers in 1..=256, max_pending >= 1 and result_ttl_s >= 1 are required"
                    .into(),
            );
        }
        let d = &self.dedup;
        if !(d.target_fpir > 0.0 && d.target_fpir < 1.0) {
            return Err(format!("dedup.target_fpir = {} must be in (0, 1)", d.target_fpir));
        }
        if d.max_results == 0 || d.max_results > biomatch_gallery::MAX_RESULTS_LIMIT {
            return Err(format!(
                "dedup.max_results must be in 1..={}",
                biomatch_gallery::MAX_RESULTS_LIMIT
            ));
        }
        if s.default_max_results == 0 || s.default_max_results > biomatch_gallery::MAX_RESULTS_LIMIT
        {
            return Err("search.default_max_results must be in 1..=1000".into());
        }
        if s.k_prime == 0 || s.k_prime > 4096 {
            return Err("search.k_prime must be in 1..=4096".into());
        }
        let ix = &self.index;
        if !(0.0..=1.0).contains(&ix.recall_floor) {
            return Err(format!("index.recall_floor = {} must be in [0, 1]", ix.recall_floor));
        }
        if !(ix.rebuild_growing_share > 0.0 && ix.rebuild_growing_share <= 100.0) {
            return Err(format!(
                "index.rebuild_growing_share = {} must be in (0, 100]",
                ix.rebuild_growing_share
            ));
        }
        let rm = &ix.recall_monitor;
        if !(1..=86_400).contains(&rm.interval_s) {
            return Err(format!(
                "index.recall_monitor.interval_s = {} must be in 1..=86400",
                rm.interval_s
            ));
        }
        if !(1..=256).contains(&rm.probes_per_tick) {
            return Err(format!(
                "index.recall_monitor.probes_per_tick = {} must be in 1..=256 (each sample holds \
                 the store's read lock for an exact scan)",
                rm.probes_per_tick
            ));
        }
        if rm.window < rm.probes_per_tick || rm.window > 1_000_000 {
            return Err(format!(
                "index.recall_monitor.window = {} must be in probes_per_tick ({})..=1000000",
                rm.window, rm.probes_per_tick
            ));
        }
        if self.models.is_empty() {
            return Err("at least one model must be configured".into());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.models {
            ModelId::parse(&m.id).map_err(|e| format!("models: {e}"))?;
            if m.dim == 0 || m.dim > 4096 {
                return Err(format!("model {}: dim {} out of range", m.id, m.dim));
            }
            if !seen.insert(m.id.clone()) {
                return Err(format!("model {} is configured twice", m.id));
            }
        }
        let f = &self.extractors.face;
        if !["largest", "reject"].contains(&f.multi_face.as_str()) {
            return Err(format!(
                "extractors.face.multi_face = {:?}: use \"largest\" or \"reject\"",
                f.multi_face
            ));
        }
        if !(0.0..=1.0).contains(&f.pad_threshold) {
            return Err(format!(
                "extractors.face.pad_threshold = {} must be in [0, 1]",
                f.pad_threshold
            ));
        }
        for u in CaptureUse::ALL {
            f.quality
                .thresholds(u)
                .validate()
                .map_err(|e| format!("extractors.face.quality.{}: {e}", u.as_str()))?;
        }
        let face_model = f.face_model().map(FaceModel::id).ok_or_else(|| {
            format!(
                "extractors.face.model = {:?}: use \"sface@2021dec\" or \"dlib-resnet@v1\"",
                f.model
            )
        })?;
        if f.enabled && !self.models.iter().any(|m| m.id == face_model.to_string()) {
            return Err(format!(
                "the face extractor produces {face_model} templates: configure that model or \
                 disable the extractor"
            ));
        }
        let fp = &self.fingerprints;
        if !(fp.penetration > 0.0 && fp.penetration <= 1.0) || fp.min_candidates == 0 {
            return Err(format!(
                "fingerprints: penetration = {} must be in (0, 1] and min_candidates >= 1",
                fp.penetration
            ));
        }
        if !(fp.list_factor >= 1.0 && fp.list_factor <= 100.0) {
            return Err(format!(
                "fingerprints: list_factor = {} must be in [1, 100]",
                fp.list_factor
            ));
        }
        if fp.max_image_side < 150 || fp.max_image_bytes == 0 {
            return Err(
                "fingerprints: max_image_side >= 150 and max_image_bytes >= 1 are required".into(),
            );
        }
        if f.max_image_pixels == 0 || fp.max_image_pixels == 0 {
            return Err("max_image_pixels must be >= 1".into());
        }
        let budget = self.decode_budget_bytes();
        for (what, cost) in [
            ("extractors.face", crate::samples::face_cost_bound(&f.image_limits())),
            ("fingerprints", crate::samples::finger_cost_bound(&fp.image_limits())),
        ] {
            if cost > budget {
                return Err(format!(
                    "limits.decode_memory_mb = {} cannot hold the largest image {what} accepts \
                     ({} MiB to decode): raise it or lower {what}.max_image_pixels",
                    l.decode_memory_mb,
                    cost.div_ceil(1 << 20)
                ));
            }
        }
        self.cluster.validate()?;
        if self.cluster.enabled && self.mosip.enabled {
            return Err("the MOSIP adapter runs on a single-node service for now: set \
                        mosip.enabled = false on cluster nodes"
                .into());
        }
        let mq = &self.mosip;
        if mq.enabled {
            crate::mosip::broker_addr(&mq.broker_url)?;
            let queue_ok = |q: &str| {
                !q.is_empty() && q.len() <= 200 && q.bytes().all(|b| b.is_ascii_graphic())
            };
            if !queue_ok(&mq.inbound_queue) || !queue_ok(&mq.outbound_queue) {
                return Err("mosip.inbound_queue and mosip.outbound_queue must be 1..=200 visible ASCII characters".into());
            }
            if mq.inbound_queue == mq.outbound_queue {
                return Err("mosip.inbound_queue and mosip.outbound_queue must differ".into());
            }
            if !(1..=1000).contains(&mq.prefetch) {
                return Err(format!("mosip.prefetch = {} must be in 1..=1000", mq.prefetch));
            }
            if !(100..=600_000).contains(&mq.fetch_timeout_ms) {
                return Err(format!(
                    "mosip.fetch_timeout_ms = {} must be in 100..=600000",
                    mq.fetch_timeout_ms
                ));
            }
            if !(1024..=(256 << 20)).contains(&mq.max_cbeff_bytes) {
                return Err(format!(
                    "mosip.max_cbeff_bytes = {} must be in 1 KiB..=256 MiB",
                    mq.max_cbeff_bytes
                ));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for k in &self.api_keys {
            if k.id.is_empty() || !ids.insert(&k.id) {
                return Err(format!("api key ids must be non-empty and unique ({:?})", k.id));
            }
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("api key {}: sha256 must be 64 hex characters", k.id));
            }
            if k.roles.is_empty() {
                return Err(format!("api key {} has no roles", k.id));
            }
        }
        if self.api_keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "no api_keys are configured: refusing to listen on the non-loopback address {} \
                 (configure keys, or listen on 127.0.0.1)",
                self.listen
            ));
        }
        Ok(())
    }

    /// The decode-memory budget in bytes.
    pub fn decode_budget_bytes(&self) -> u64 {
        self.limits.decode_memory_mb.saturating_mul(1 << 20)
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.audit_dir.clone().unwrap_or_else(|| self.data.join("audit"))
    }

    pub fn dedup_dir(&self) -> PathBuf {
        self.dedup_dir.clone().unwrap_or_else(|| self.data.join("dedup"))
    }

    pub fn audit_key_file(&self) -> PathBuf {
        self.audit_key_file.clone().unwrap_or_else(|| self.audit_dir().join(crate::audit::KEY_FILE))
    }

    /// Where the fingers' store lives.
    pub fn fingers_dir(&self) -> PathBuf {
        self.data.join("fingers")
    }

    /// Where a model's calibration table lives.
    pub fn calibration_path(&self, m: &ModelConfig) -> PathBuf {
        if m.calibration.is_absolute() {
            m.calibration.clone()
        } else {
            self.data.join(&m.calibration)
        }
    }
}

/// SHA-256 of an API key secret, hex: what the config stores.
pub fn hash_key(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback_only_without_keys() {
        let c = Config::default();
        c.validate().unwrap();
        let mut open = c.clone();
        open.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(open.validate().unwrap_err().contains("non-loopback"));
        open.api_keys.push(ApiKey {
            id: "ops".into(),
            sha256: hash_key("s3cret"),
            roles: vec![Role::Admin],
        });
        open.validate().unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = Config::default();
        c.search.default_target_fpir = 2.0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.api_keys.push(ApiKey { id: "x".into(), sha256: "abc".into(), roles: vec![Role::Verify] });
        assert!(c.validate().unwrap_err().contains("sha256"));
        let mut c = Config::default();
        c.models[0].id = "no-version".into();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.limits.header_read_timeout_ms = 0;
        assert!(c.validate().unwrap_err().contains("header_read_timeout_ms"));
        let mut c = Config::default();
        c.limits.body_grace_ms = c.limits.body_timeout_ms + 1;
        assert!(c.validate().unwrap_err().contains("body_grace_ms"));
        let mut c = Config::default();
        c.mosip.enabled = true;
        c.validate().unwrap();
        c.mosip.outbound_queue = c.mosip.inbound_queue.clone();
        assert!(c.validate().unwrap_err().contains("must differ"));
        c.mosip =
            MosipConfig { enabled: true, broker_url: "stomp://x".into(), ..MosipConfig::default() };
        assert!(c.validate().unwrap_err().contains("broker_url"));
        let mut c = Config::default();
        c.limits.max_connections = 0;
        assert!(c.validate().unwrap_err().contains("max_connections"));
        // A decode budget that cannot hold the largest accepted face image.
        let mut c = Config::default();
        c.limits.decode_memory_mb = 300;
        assert!(c.validate().unwrap_err().contains("decode_memory_mb"));
        c.extractors.face.max_image_pixels = 12_000_000;
        c.validate().unwrap();
        type Edit = fn(&mut Config);
        let index_cases: [(Edit, &str); 5] = [
            (|c| c.index.recall_floor = 1.5, "index.recall_floor"),
            (|c| c.index.rebuild_growing_share = 0.0, "index.rebuild_growing_share"),
            (|c| c.index.recall_monitor.interval_s = 0, "interval_s"),
            (|c| c.index.recall_monitor.probes_per_tick = 0, "probes_per_tick"),
            (|c| c.index.recall_monitor.window = 3, "window"),
        ];
        for (f, key) in index_cases {
            let mut c = Config::default();
            f(&mut c);
            assert!(c.validate().unwrap_err().contains(key), "{key}");
        }
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("biomatch.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9999\"\n[limits]\nmax_concurrent = 7\n").unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.limits.max_concurrent, 7);
        assert_eq!(c.limits.body_bytes, Config::default().limits.body_bytes);
        assert_eq!(c.index, IndexConfig::default());
        std::fs::write(
            &f,
            "[index]\nrebuild_growing_share = 0.25\n[index.recall_monitor]\ninterval_s = 5\nwindow = 40\n",
        )
        .unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!((c.index.rebuild_growing_share, c.index.recall_floor), (0.25, 0.95));
        let m = &c.index.recall_monitor;
        assert_eq!((m.enabled, m.interval_s, m.probes_per_tick, m.window), (true, 5, 4, 40));
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
        // The eye model is on unless a file turns it off.
        assert!(Config::default().extractors.face.eye_model);
        std::fs::write(&f, "[extractors.face]\neye_model = false\n").unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert!(!c.extractors.face.eye_model);
        assert_eq!(
            c.extractors.face.pad_threshold,
            Config::default().extractors.face.pad_threshold
        );
        std::fs::write(&f, "listen = 12\n").unwrap();
        assert!(Config::load(Some(&f)).unwrap_err().contains("invalid configuration"));
    }
}
